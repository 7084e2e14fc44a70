//! Guest RAM: one memfd, mapped shared into the VMM and registered with KVM slot by slot.
//!
//! A memfd (rather than anonymous memory) lets snapshots share, copy and remap RAM by file
//! offset. The AtomicBitmap records every write the VMM itself makes through vm-memory, which
//! KVM's dirty log cannot see.

use std::ffi::CStr;
use std::fs::File;
use std::os::fd::FromRawFd;

use thiserror::Error;
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::arch::layout::{ram_ranges, RamRange};

/// Smallest guest RAM snapvmm accepts: low memory for boot structures plus room for a kernel.
pub const MIN_MEM_BYTES: u64 = 16 << 20;
/// Largest guest RAM snapvmm accepts; a hard cap so a typo cannot ask for petabytes.
pub const MAX_MEM_BYTES: u64 = 64 << 30;

/// Guest memory with the VMM's own writes tracked per page.
pub type GuestMemory = vm_memory::GuestMemoryMmap<AtomicBitmap>;

#[derive(Debug, Error)]
pub enum MemoryError {
    #[error("cannot create the guest RAM memfd: {0}")]
    Memfd(std::io::Error),
    #[error("cannot size the guest RAM memfd to {bytes} bytes: {source}")]
    Resize { bytes: u64, source: std::io::Error },
    #[error("cannot map guest RAM: {0}")]
    Map(vm_memory::mmap::FromRangesError),
}

/// Guest RAM and the memfd behind it.
pub struct GuestRam {
    pub memory: GuestMemory,
    pub file: File,
    pub ranges: Vec<RamRange>,
}

impl GuestRam {
    /// Creates `mem_bytes` of zeroed guest RAM laid out around the MMIO hole.
    pub fn new(mem_bytes: u64) -> Result<Self, MemoryError> {
        let name: &CStr = c"snapvmm-guest-ram";
        // SAFETY: memfd_create with a valid NUL-terminated name; the fd is checked below.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(MemoryError::Memfd(std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(mem_bytes)
            .map_err(|source| MemoryError::Resize {
                bytes: mem_bytes,
                source,
            })?;
        let ranges = ram_ranges(mem_bytes);
        let mut regions = Vec::with_capacity(ranges.len());
        let mut file_offset = 0;
        for range in &ranges {
            let handle = file.try_clone().map_err(MemoryError::Memfd)?;
            regions.push((
                GuestAddress(range.start),
                range.len as usize,
                Some(FileOffset::new(handle, file_offset)),
            ));
            file_offset += range.len;
        }
        let memory = GuestMemory::from_ranges_with_files(regions).map_err(MemoryError::Map)?;
        Ok(GuestRam {
            memory,
            file,
            ranges,
        })
    }

    /// Total RAM in bytes.
    pub fn size(&self) -> u64 {
        self.ranges.iter().map(|r| r.len).sum()
    }

    /// (guest address, length, host address) of every region, in slot order.
    pub fn slots(&self) -> Vec<(u64, u64, u64)> {
        self.memory
            .iter()
            .map(|region| {
                let host = region
                    .get_host_address(vm_memory::MemoryRegionAddress(0))
                    .map(|p| p as u64)
                    .unwrap_or(0);
                (region.start_addr().0, region.len(), host)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::bitmap::Bitmap;
    use vm_memory::Bytes;

    #[test]
    fn ram_is_backed_by_one_memfd_across_the_hole() {
        let ram = GuestRam::new(3 << 30 | 16 << 20).unwrap();
        assert_eq!(ram.ranges.len(), 2);
        assert_eq!(ram.file.metadata().unwrap().len(), ram.size());
        ram.memory
            .write_obj(0xabcdu32, GuestAddress(0x1_0000_0000))
            .unwrap();
        // The high region starts right after the low one in the file.
        let mut word = [0u8; 4];
        std::os::unix::fs::FileExt::read_exact_at(&ram.file, &mut word, 3 << 30).unwrap();
        assert_eq!(u32::from_le_bytes(word), 0xabcd);
        let slots = ram.slots();
        assert_eq!(slots[1].0, 0x1_0000_0000);
        assert!(slots.iter().all(|s| s.2 != 0));
    }

    #[test]
    fn vmm_writes_are_tracked_per_page() {
        let ram = GuestRam::new(16 << 20).unwrap();
        ram.memory.write_obj(1u8, GuestAddress(0x5123)).unwrap();
        let region = ram.memory.find_region(GuestAddress(0)).unwrap();
        assert!(region.bitmap().dirty_at(0x5000));
        assert!(!region.bitmap().dirty_at(0x6000));
    }
}
