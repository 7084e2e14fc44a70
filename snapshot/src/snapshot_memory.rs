//! The snapshot's copy of guest RAM: a memfd, so that it can be read by the restore path through a
//! shared mapping, mapped `MAP_PRIVATE` as guest RAM by the remap strategy, and written to disk
//! sparsely.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::ptr::NonNull;

use thiserror::Error;

use crate::ram_layout::PAGE_SIZE;

/// Why snapshot memory could not be set up or used.
#[derive(Debug, Error)]
pub enum SnapshotMemoryError {
    #[error("snapshot memory length {0:#x} is zero or not page aligned")]
    BadLength(usize),
    #[error("memfd_create failed")]
    Create(#[source] io::Error),
    #[error("sizing the snapshot memfd failed")]
    Resize(#[source] io::Error),
    #[error("mapping snapshot memory failed")]
    Map(#[source] io::Error),
    #[error("file length {actual:#x} differs from snapshot memory length {expected:#x}")]
    FileLength { expected: u64, actual: u64 },
    #[error("querying the snapshot memory file failed")]
    Query(#[source] io::Error),
}

/// An owned `mmap` of a whole file; unmapped on drop.
#[derive(Debug)]
pub struct FileMapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; access is through raw pointers whose
// synchronisation is the user's contract, as for any shared memory.
unsafe impl Send for FileMapping {}
// SAFETY: as above; `&FileMapping` hands out only raw pointers and reads.
unsafe impl Sync for FileMapping {}

impl FileMapping {
    /// Maps `len` bytes of `file` from offset 0 with the given protection and flags.
    pub fn new(file: &File, len: usize, prot: libc::c_int, flags: libc::c_int) -> io::Result<Self> {
        // SAFETY: a fresh mapping chosen by the kernel (no MAP_FIXED), so no existing memory is touched.
        let ptr =
            unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, file.as_raw_fd(), 0) };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        NonNull::new(ptr.cast::<u8>())
            .map(|ptr| FileMapping { ptr, len })
            .ok_or_else(|| io::Error::other("mmap returned null"))
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for FileMapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping this value created and owns.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// The snapshot's copy of guest RAM, laid out in `RamLayout` page order.
#[derive(Debug)]
pub struct SnapshotMemory {
    file: File,
    len: usize,
    /// Shared read-only mapping of the whole file, read by the restore path (captures write the
    /// file with pwrite).
    mapping: FileMapping,
    /// True while the file is known to be all holes (freshly created): capture then skips zero pages
    /// without punching them.
    all_holes: bool,
}

impl SnapshotMemory {
    /// A new, zero-filled (sparse) memfd of `len` bytes.
    pub fn create(len: usize) -> Result<Self, SnapshotMemoryError> {
        if len == 0 || len & (PAGE_SIZE - 1) != 0 {
            return Err(SnapshotMemoryError::BadLength(len));
        }
        // SAFETY: memfd_create with a valid NUL-terminated name; the returned fd is checked.
        let fd = unsafe { libc::memfd_create(c"snapvmm-snapshot".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(SnapshotMemoryError::Create(io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(len as u64)
            .map_err(SnapshotMemoryError::Resize)?;
        let mapping = FileMapping::new(&file, len, libc::PROT_READ, libc::MAP_SHARED)
            .map_err(SnapshotMemoryError::Map)?;
        Ok(SnapshotMemory {
            file,
            len,
            mapping,
            all_holes: true,
        })
    }

    /// Wraps an existing file (for example a memory file loaded from disk) whose length must be `len`.
    /// Capturing into it needs the file to be open for writing.
    pub fn from_file(file: File, len: usize) -> Result<Self, SnapshotMemoryError> {
        if len == 0 || len & (PAGE_SIZE - 1) != 0 {
            return Err(SnapshotMemoryError::BadLength(len));
        }
        let actual = file.metadata().map_err(SnapshotMemoryError::Query)?.len();
        if actual != len as u64 {
            return Err(SnapshotMemoryError::FileLength {
                expected: len as u64,
                actual,
            });
        }
        let mapping = FileMapping::new(&file, len, libc::PROT_READ, libc::MAP_SHARED)
            .map_err(SnapshotMemoryError::Map)?;
        Ok(SnapshotMemory {
            file,
            len,
            mapping,
            all_holes: false,
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// Whether the file is still known to contain only holes.
    pub fn is_all_holes(&self) -> bool {
        self.all_holes
    }

    pub(crate) fn mark_written(&mut self) {
        self.all_holes = false;
    }

    /// Start of the shared mapping of the whole snapshot.
    pub fn as_ptr(&self) -> *const u8 {
        self.mapping.as_ptr()
    }

    /// The bytes of page `page`, or None past the end.
    pub fn page(&self, page: usize) -> Option<&[u8]> {
        let offset = page.checked_mul(PAGE_SIZE)?;
        if offset >= self.len {
            return None;
        }
        // SAFETY: the page lies inside the mapping, which lives as long as `self`. Snapshot memory is
        // only written by a capture, which owns the `SnapshotMemory` while it runs, so nothing writes
        // it while this shared borrow exists.
        Some(unsafe { std::slice::from_raw_parts(self.mapping.as_ptr().add(offset), PAGE_SIZE) })
    }

    /// The whole snapshot as bytes (faults in every page it is read through; for tests and export).
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: as for `page`, over the whole mapping.
        unsafe { std::slice::from_raw_parts(self.mapping.as_ptr(), self.len) }
    }

    /// A fresh copy-on-write view of the snapshot (the remap restore strategy): reads see the snapshot,
    /// writes stay private to the mapping.
    pub fn map_private(&self) -> Result<FileMapping, SnapshotMemoryError> {
        FileMapping::new(
            &self.file,
            self.len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE,
        )
        .map_err(SnapshotMemoryError::Map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn create_is_zeroed_and_private_map_is_copy_on_write() {
        assert!(matches!(
            SnapshotMemory::create(100),
            Err(SnapshotMemoryError::BadLength(100))
        ));
        let memory = SnapshotMemory::create(4 * PAGE_SIZE).unwrap();
        assert!(memory.is_all_holes());
        assert!(memory.as_slice().iter().all(|&b| b == 0));
        memory
            .file()
            .write_all_at(&[7u8; PAGE_SIZE], PAGE_SIZE as u64)
            .unwrap();
        assert_eq!(memory.page(1).unwrap()[100], 7);
        assert!(memory.page(4).is_none());

        let private = memory.map_private().unwrap();
        // SAFETY: the private mapping is 4 pages long and owned by this test.
        unsafe {
            assert_eq!(*private.as_ptr().add(PAGE_SIZE), 7);
            *private.as_ptr().add(PAGE_SIZE) = 9;
        }
        assert_eq!(
            memory.page(1).unwrap()[0],
            7,
            "private writes must not reach the snapshot"
        );
    }

    #[test]
    fn from_file_checks_length() {
        let file = tempfile::tempfile().unwrap();
        file.set_len(PAGE_SIZE as u64).unwrap();
        assert!(matches!(
            SnapshotMemory::from_file(file.try_clone().unwrap(), 2 * PAGE_SIZE),
            Err(SnapshotMemoryError::FileLength { .. })
        ));
        assert!(!SnapshotMemory::from_file(file, PAGE_SIZE)
            .unwrap()
            .is_all_holes());
    }
}
