//! Which pages of guest RAM are known to be zero without reading them: holes of the file behind
//! them (the RAM memfd, or the snapshot file RAM is privately mapped over). Reading a hole of a
//! shared memfd through its mapping allocates a page, so an export that read every page of a
//! 1 GiB guest using 80 kB left it with 1 GiB resident; with this map it reads only data.
//!
//! A page is known zero when its file offset is a hole (SEEK_DATA/SEEK_HOLE: a swapped-out
//! page of a memfd counts as data) and, for a private mapping, when it has no private copy
//! either (`/proc/self/pagemap`: neither present nor swapped). Anything unsure is read.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use snapshot::file_extents::for_each_hole_page;
use snapshot::PAGE_SIZE;

/// One stretch of guest RAM and the file behind it.
#[derive(Debug, Clone, Copy)]
pub struct RamBacking<'a> {
    pub guest_addr: u64,
    pub len: u64,
    /// Where the VMM maps it.
    pub host_addr: u64,
    pub file: &'a File,
    pub file_offset: u64,
    /// A MAP_PRIVATE mapping: pages may have private copies the file does not show.
    pub private: bool,
}

/// Bits of known-zero pages, per stretch of guest RAM.
#[derive(Debug, Default)]
pub struct KnownZeroPages {
    regions: Vec<(u64, u64, Vec<u64>)>,
}

/// pagemap entry bits: the page is mapped, or swapped out.
const PAGEMAP_PRESENT: u64 = 1 << 63;
const PAGEMAP_SWAPPED: u64 = 1 << 62;
/// pagemap entries read per `pread`.
const PAGEMAP_CHUNK: usize = 8192;

impl KnownZeroPages {
    /// Nothing known: every page is read.
    pub fn none() -> Self {
        Self::default()
    }

    pub fn of(backings: &[RamBacking]) -> io::Result<Self> {
        let page = PAGE_SIZE as u64;
        let mut regions = Vec::with_capacity(backings.len());
        for backing in backings {
            let pages = (backing.len / page) as usize;
            let mut bits = vec![0u64; pages.div_ceil(64)];
            for_each_hole_page(
                backing.file,
                backing.file_offset,
                backing.len,
                page,
                &mut |index| bits[index as usize / 64] |= 1 << (index % 64),
            )?;
            if backing.private {
                clear_private_copies(backing.host_addr, pages, &mut bits)?;
            }
            regions.push((backing.guest_addr, backing.len, bits));
        }
        Ok(KnownZeroPages { regions })
    }

    /// Whether the page holding `gpa` is known to be zero.
    pub fn contains(&self, gpa: u64) -> bool {
        self.regions.iter().any(|(start, len, bits)| {
            gpa.checked_sub(*start).is_some_and(|offset| {
                let index = (offset / PAGE_SIZE as u64) as usize;
                offset < *len && bits[index / 64] & (1 << (index % 64)) != 0
            })
        })
    }

    /// Pages known zero, for reports and tests.
    pub fn count(&self) -> usize {
        self.regions
            .iter()
            .map(|(_, _, bits)| bits.iter().map(|w| w.count_ones() as usize).sum::<usize>())
            .sum()
    }
}

/// Clears the bits of pages of the mapping at `host_addr` that are present or swapped: those may
/// be private copies, whatever the file holds.
fn clear_private_copies(host_addr: u64, pages: usize, bits: &mut [u64]) -> io::Result<()> {
    let pagemap = File::open("/proc/self/pagemap")?;
    let mut entries = vec![0u8; PAGEMAP_CHUNK * 8];
    let mut first = 0;
    while first < pages {
        let count = (pages - first).min(PAGEMAP_CHUNK);
        // A chunk with no hole in it has nothing to clear (PAGEMAP_CHUNK is a multiple of 64).
        let words = first / 64..(first + count).div_ceil(64);
        if bits[words].iter().all(|&word| word == 0) {
            first += count;
            continue;
        }
        let vpn = host_addr / PAGE_SIZE as u64 + first as u64;
        pagemap.read_exact_at(&mut entries[..count * 8], vpn * 8)?;
        for (i, entry) in entries[..count * 8].chunks_exact(8).enumerate() {
            let entry = u64::from_ne_bytes(entry.try_into().unwrap_or([0xff; 8]));
            if entry & (PAGEMAP_PRESENT | PAGEMAP_SWAPPED) != 0 {
                let index = first + i;
                bits[index / 64] &= !(1 << (index % 64));
            }
        }
        first += count;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A memfd (or a file on disk, whose holes a private write does not fill) of 16 pages with
    /// data in pages 2 and 9.
    fn file_with_data(memfd: bool) -> File {
        let file = if memfd {
            // SAFETY: a valid NUL-terminated name.
            let fd = unsafe { libc::memfd_create(c"known-zero-test".as_ptr(), libc::MFD_CLOEXEC) };
            assert!(fd >= 0);
            // SAFETY: a fresh descriptor we own.
            unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) }
        } else {
            tempfile::tempfile().unwrap()
        };
        file.set_len(16 * PAGE_SIZE as u64).unwrap();
        for page in [2u64, 9] {
            file.write_all_at(&[7u8; PAGE_SIZE], page * PAGE_SIZE as u64)
                .unwrap();
        }
        file
    }

    fn map(file: &File, flags: libc::c_int) -> *mut u8 {
        // SAFETY: maps 16 pages of a file we own; unmapped by the test.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                16 * PAGE_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                std::os::fd::AsRawFd::as_raw_fd(file),
                0,
            )
        };
        assert_ne!(addr, libc::MAP_FAILED);
        addr as *mut u8
    }

    #[test]
    fn holes_are_known_zero_and_private_copies_are_not() {
        for (memfd, private) in [(true, true), (true, false), (false, true)] {
            let file = file_with_data(memfd);
            let addr = map(
                &file,
                if private {
                    libc::MAP_PRIVATE
                } else {
                    libc::MAP_SHARED
                },
            );
            // A private copy of page 5 (a hole in the file), and a read of page 6. Volatile: only
            // the kernel looks at these pages before the end (pagemap).
            // SAFETY: both pages lie in the 16-page mapping.
            unsafe {
                addr.add(5 * PAGE_SIZE).write_volatile(1);
                let _ = addr.add(6 * PAGE_SIZE).read_volatile();
            }
            let backing = RamBacking {
                guest_addr: 0x10_0000,
                len: 16 * PAGE_SIZE as u64,
                host_addr: addr as u64,
                file: &file,
                file_offset: 0,
                private,
            };
            let known = KnownZeroPages::of(&[backing]).unwrap();
            let gpa = |page: u64| 0x10_0000 + page * PAGE_SIZE as u64;
            assert!(!known.contains(gpa(2)) && !known.contains(gpa(9)));
            assert!(!known.contains(gpa(5)), "memfd {memfd}, private {private}");
            let zero: Vec<u64> = (0..16).filter(|&p| known.contains(gpa(p))).collect();
            // A disk filesystem may report data more coarsely than pages; a memfd does not.
            assert!(
                !memfd || known.contains(gpa(0)) && known.contains(gpa(15)),
                "memfd {memfd}, private {private}: {zero:?}"
            );
            assert!(!known.contains(0x0f_f000) && !known.contains(gpa(16)));
            // On a disk file, fault-around may map every page of the file's page cache into the
            // private mapping (present: not known zero, which only costs reading them).
            assert!(
                !memfd || known.count() > 0,
                "memfd {memfd}, private {private}"
            );
            // Every page it calls zero reads as zero (reading a hole through the mapping fills
            // it, so this comes last).
            for page in 0..16 {
                if known.contains(gpa(page)) {
                    // SAFETY: a page of the mapping.
                    let bytes = unsafe {
                        std::slice::from_raw_parts(addr.add(page as usize * PAGE_SIZE), PAGE_SIZE)
                    };
                    assert!(bytes.iter().all(|&b| b == 0), "page {page}");
                }
            }
            // SAFETY: the mapping made above.
            unsafe { libc::munmap(addr as *mut libc::c_void, 16 * PAGE_SIZE) };
        }
    }
}
