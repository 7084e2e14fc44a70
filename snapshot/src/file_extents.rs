//! Where a file holds data and where it has holes (`lseek` SEEK_DATA / SEEK_HOLE). A hole reads
//! as zeros; a filesystem without hole reporting calls the whole file data, which is always safe.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// `lseek(SEEK_DATA / SEEK_HOLE)`; `None` when there is no data (ENXIO) past `from`.
pub fn seek(file: &File, from: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    let from = libc::off_t::try_from(from).map_err(io::Error::other)?;
    // SAFETY: lseek on a descriptor owned by `file`; no memory is passed.
    let pos = unsafe { libc::lseek(file.as_raw_fd(), from, whence) };
    if pos < 0 {
        let err = io::Error::last_os_error();
        return if err.raw_os_error() == Some(libc::ENXIO) {
            Ok(None)
        } else {
            Err(err)
        };
    }
    Ok(Some(pos as u64))
}

/// The next data extent `[start, end)` of `file` at or after `pos`, clamped to `len`; `None`
/// when only holes are left.
pub fn next_data_extent(file: &File, pos: u64, len: u64) -> io::Result<Option<(u64, u64)>> {
    let start = seek(file, pos, libc::SEEK_DATA)?
        .unwrap_or(len)
        .clamp(pos, len);
    if start >= len {
        return Ok(None);
    }
    let end = seek(file, start, libc::SEEK_HOLE)?
        .unwrap_or(len)
        .clamp(start, len);
    Ok(Some((start, end)))
}

/// Calls `hole_page(i)` for every whole page `i` (counted from `offset`) of
/// `[offset, offset + len)` of `file` that lies in a hole.
pub fn for_each_hole_page(
    file: &File,
    offset: u64,
    len: u64,
    page_size: u64,
    hole_page: &mut dyn FnMut(u64),
) -> io::Result<()> {
    let end = offset.saturating_add(len);
    let mut pos = offset;
    while pos < end {
        let (data, data_end) = next_data_extent(file, pos, end)?.unwrap_or((end, end));
        // Only whole pages inside [pos, data) are holes.
        let first = (pos - offset).div_ceil(page_size);
        let last = (data - offset) / page_size;
        for page in first..last {
            hole_page(page);
        }
        pos = data_end.max(data + 1);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn hole_pages_are_never_data_pages() {
        let file = tempfile::tempfile().unwrap();
        file.set_len(16 * 4096).unwrap();
        for page in [1u64, 2, 9, 15] {
            file.write_all_at(&[1u8; 4096], page * 4096).unwrap();
        }
        // Pages 8..16 as seen from offset 8 pages.
        let mut holes = Vec::new();
        for_each_hole_page(&file, 8 * 4096, 8 * 4096, 4096, &mut |page| {
            holes.push(page)
        })
        .unwrap();
        // Filesystems may report data at a coarser granularity than pages; never finer.
        assert!(!holes.contains(&1) && !holes.contains(&7), "{holes:?}");
        assert!(holes.iter().all(|&page| page < 8));
        let file = tempfile::tempfile().unwrap();
        file.set_len(8 * 4096).unwrap();
        let mut all = Vec::new();
        for_each_hole_page(&file, 0, 8 * 4096, 4096, &mut |page| all.push(page)).unwrap();
        assert_eq!(
            all,
            (0..8).collect::<Vec<_>>(),
            "an empty file is all holes"
        );
    }
}
