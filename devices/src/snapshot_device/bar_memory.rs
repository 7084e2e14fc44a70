//! Host memory behind a memory BAR: a memfd mapped shared, page aligned, owned by the device. The
//! VMM maps it into the guest as a KVM memslot at the BAR's address ([`BarMemory::host_addr`]), so
//! guest accesses never exit; the host reads and writes it through bounds-checked copies.
//!
//! The memory is shared with a running guest, exactly like guest RAM: the guest may write any byte
//! at any time. The accessors therefore copy bytes through raw pointers and never hand out Rust
//! references into it (except [`BarMemory::as_slice`], whose caller promises that nothing writes
//! meanwhile); a copy taken while the guest writes may mix old and new bytes, nothing worse.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::FromRawFd;

use snapshot::FileMapping;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum BarMemoryError {
    #[error("BAR memory length {0:#x} is zero or not a multiple of the page size")]
    BadLength(usize),
    #[error("memfd_create for BAR memory failed")]
    Create(#[source] io::Error),
    #[error("sizing the BAR memory memfd to {len:#x} bytes failed")]
    Resize {
        len: usize,
        #[source]
        source: io::Error,
    },
    #[error("mapping BAR memory failed")]
    Map(#[source] io::Error),
    #[error("{len} bytes at offset {offset:#x} do not fit in {size:#x} bytes of BAR memory")]
    OutOfRange {
        offset: u64,
        len: usize,
        size: usize,
    },
}

const PAGE_SIZE: usize = snapshot::PAGE_SIZE;

/// A zero-filled, page-aligned host buffer that backs one memory BAR.
#[derive(Debug)]
pub struct BarMemory {
    /// Keeps the memfd open: another process (or a later remap) can share the same pages.
    file: File,
    mapping: FileMapping,
}

impl BarMemory {
    /// A fresh memfd named `name` of `len` bytes (a multiple of the page size), mapped read-write
    /// and shared. Its pages are allocated on first touch.
    pub fn new(name: &CStr, len: usize) -> Result<Self, BarMemoryError> {
        if len == 0 || len & (PAGE_SIZE - 1) != 0 {
            return Err(BarMemoryError::BadLength(len));
        }
        // SAFETY: memfd_create with a valid NUL-terminated name; the returned fd is checked.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(BarMemoryError::Create(io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(len as u64)
            .map_err(|source| BarMemoryError::Resize { len, source })?;
        let mapping = FileMapping::new(
            &file,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
        )
        .map_err(BarMemoryError::Map)?;
        Ok(BarMemory { file, mapping })
    }

    /// The host virtual address of the first byte: the memslot's `userspace_addr`.
    pub fn host_addr(&self) -> u64 {
        self.mapping.as_ptr() as u64
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.mapping.as_ptr()
    }

    pub fn len(&self) -> usize {
        self.mapping.len()
    }

    /// Never true (construction rejects empty buffers); here because `len` is.
    pub fn is_empty(&self) -> bool {
        self.mapping.is_empty()
    }

    /// The memfd, to share the buffer with another process.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Start of `offset..offset + len` as a byte index, if the range fits.
    fn range_start(&self, offset: u64, len: usize) -> Result<usize, BarMemoryError> {
        let out_of_range = || BarMemoryError::OutOfRange {
            offset,
            len,
            size: self.len(),
        };
        let start = usize::try_from(offset).map_err(|_| out_of_range())?;
        let end = start.checked_add(len).ok_or_else(out_of_range)?;
        if end > self.len() {
            return Err(out_of_range());
        }
        Ok(start)
    }

    /// Copies `data.len()` bytes at `offset` into `data`.
    pub fn read(&self, offset: u64, data: &mut [u8]) -> Result<(), BarMemoryError> {
        let start = self.range_start(offset, data.len())?;
        // SAFETY: `start..start + data.len()` lies inside the live mapping (checked above), and
        // `data` is a distinct Rust buffer, so the ranges cannot overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(self.as_ptr().add(start), data.as_mut_ptr(), data.len())
        };
        Ok(())
    }

    /// Copies `data` to `offset`.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<(), BarMemoryError> {
        let start = self.range_start(offset, data.len())?;
        // SAFETY: as in `read`; the mapping is writable and owned by `self`.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.as_ptr().add(start), data.len())
        };
        Ok(())
    }

    /// Sets `len` bytes at `offset` to `byte`.
    pub fn fill(&self, offset: u64, len: usize, byte: u8) -> Result<(), BarMemoryError> {
        let start = self.range_start(offset, len)?;
        // SAFETY: `start..start + len` lies inside the live, writable mapping (checked above).
        unsafe { std::ptr::write_bytes(self.as_ptr().add(start), byte, len) };
        Ok(())
    }

    /// Zeroes the whole buffer.
    pub fn clear(&self) {
        // SAFETY: exactly the live, writable mapping.
        unsafe { std::ptr::write_bytes(self.as_ptr(), 0, self.len()) };
    }

    /// A copy of the whole buffer.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut contents = vec![0u8; self.len()];
        // SAFETY: both ranges are `self.len()` bytes: the live mapping and the new vector.
        unsafe {
            std::ptr::copy_nonoverlapping(self.as_ptr(), contents.as_mut_ptr(), contents.len())
        };
        contents
    }

    /// The buffer as a slice, without a copy (for scanning a coverage map after a run).
    ///
    /// # Safety
    /// Nothing may write the buffer while the slice lives: no vCPU runs with it mapped, and no
    /// host thread calls `write`, `fill` or `clear` on it.
    pub unsafe fn as_slice(&self) -> &[u8] {
        // SAFETY: the mapping lives as long as `self`; the caller guarantees no writer meanwhile.
        unsafe { std::slice::from_raw_parts(self.as_ptr(), self.len()) }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use super::*;

    #[test]
    fn fresh_memory_is_zero_page_aligned_and_bounds_checked() {
        let memory = BarMemory::new(c"test-bar", 2 * PAGE_SIZE).unwrap();
        assert_eq!(memory.len(), 2 * PAGE_SIZE);
        assert!(!memory.is_empty());
        assert_eq!(memory.host_addr() % PAGE_SIZE as u64, 0);
        assert!(memory.to_vec().iter().all(|&byte| byte == 0));
        assert!(memory.file().as_raw_fd() >= 0);

        memory.write(0x1ffe, &[1, 2]).unwrap();
        let mut data = [0u8; 4];
        memory.read(0x1ffc, &mut data).unwrap();
        assert_eq!(data, [0, 0, 1, 2]);
        assert!(memory.write(0x1fff, &[1, 2]).is_err());
        assert!(memory.read(u64::MAX, &mut data).is_err());
        assert!(memory.fill(0x1000, usize::MAX, 0).is_err());
        assert!(
            memory.write(0x2000, &[]).is_ok(),
            "an empty range at the end fits"
        );

        memory.fill(0x10, 3, 0xaa).unwrap();
        // SAFETY: nothing else writes this test's buffer.
        let contents = unsafe { memory.as_slice() };
        assert_eq!(&contents[0xf..0x14], &[0, 0xaa, 0xaa, 0xaa, 0]);
        memory.clear();
        assert!(memory.to_vec().iter().all(|&byte| byte == 0));
    }

    #[test]
    fn bad_lengths_are_rejected() {
        for len in [0, 1, PAGE_SIZE + 1] {
            assert!(matches!(
                BarMemory::new(c"test-bar", len),
                Err(BarMemoryError::BadLength(_))
            ));
        }
    }

    #[test]
    fn writes_through_the_raw_address_are_seen_by_the_accessors() {
        // What the guest does through the memslot.
        let memory = BarMemory::new(c"test-bar", PAGE_SIZE).unwrap();
        // SAFETY: offset 100 is inside the one-page mapping; nothing else uses it.
        unsafe { (memory.host_addr() as *mut u8).add(100).write(0x5a) };
        let mut byte = [0u8];
        memory.read(100, &mut byte).unwrap();
        assert_eq!(byte, [0x5a]);
    }
}
