//! Which guest pages are holes in their memfd: never written, so zero, and not worth copying.
//!
//! Built once per capture by walking the files with SEEK_DATA/SEEK_HOLE (each call scans only to the
//! next boundary, so the walk is linear in the file). The walk may run after the guest resumed: a page
//! still unclaimed when it is used is still write-protected, so "hole" still means "zero at SAVE",
//! and a page seen as data is copied, which is always correct.

use std::io;

use crate::file_extents::for_each_hole_page;

use crate::ram_layout::{RamLayout, PAGE_SIZE};

#[derive(Debug)]
pub(super) struct HoleMap {
    bits: Vec<u64>,
}

impl HoleMap {
    pub(super) fn build(layout: &RamLayout) -> io::Result<HoleMap> {
        let mut map = HoleMap {
            bits: vec![0; layout.total_pages().div_ceil(64)],
        };
        for (index, region) in layout.regions().iter().enumerate() {
            let Some((file, file_offset)) = region.backing_file() else {
                continue;
            };
            let first_page = layout.region_first_page(index).unwrap_or(0);
            for_each_hole_page(
                file,
                file_offset,
                region.len() as u64,
                PAGE_SIZE as u64,
                &mut |page| map.set(first_page + page as usize),
            )?;
        }
        Ok(map)
    }

    fn set(&mut self, page: usize) {
        if let Some(word) = self.bits.get_mut(page / 64) {
            *word |= 1 << (page % 64);
        }
    }

    pub(super) fn is_hole(&self, page: usize) -> bool {
        self.bits
            .get(page / 64)
            .is_some_and(|word| word & (1 << (page % 64)) != 0)
    }

    /// Splits `[first_page, first_page + pages)` into runs `(first, count, is_hole)`.
    pub(super) fn runs(&self, first_page: usize, pages: usize) -> Vec<(usize, usize, bool)> {
        let mut runs: Vec<(usize, usize, bool)> = Vec::new();
        for page in first_page..first_page + pages {
            let hole = self.is_hole(page);
            match runs.last_mut() {
                Some((_, count, kind)) if *kind == hole => *count += 1,
                _ => runs.push((page, 1, hole)),
            }
        }
        runs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ram_layout::HostRamRegion;
    use std::os::unix::fs::FileExt;
    use std::sync::Arc;

    #[test]
    fn finds_holes_of_each_region() {
        let file = tempfile::tempfile().unwrap();
        file.set_len(16 * PAGE_SIZE as u64).unwrap();
        for page in [1u64, 2, 9, 15] {
            file.write_all_at(&[1u8; PAGE_SIZE], page * PAGE_SIZE as u64)
                .unwrap();
        }
        let file = Arc::new(file);
        // Two regions over the file: pages 0..8 and 8..16 (addresses are never dereferenced).
        let regions = (0..2)
            .map(|index| {
                // SAFETY: the hole map only reads the backing file, never these addresses.
                let region =
                    unsafe { HostRamRegion::new(((index + 1) << 30) as *mut u8, 8 * PAGE_SIZE) }
                        .unwrap();
                region
                    .with_backing_file(Arc::clone(&file), (index * 8 * PAGE_SIZE) as u64)
                    .unwrap()
            })
            .collect();
        let layout = RamLayout::new(regions).unwrap();
        let map = HoleMap::build(&layout).unwrap();
        let data: Vec<usize> = (0..16).filter(|&page| !map.is_hole(page)).collect();
        // Filesystems may report data at a coarser granularity than pages; never finer.
        for page in [1, 2, 9, 15] {
            assert!(data.contains(&page), "data page {page} reported as a hole");
        }
        assert_eq!(map.runs(0, 4).iter().map(|run| run.1).sum::<usize>(), 4);
    }
}
