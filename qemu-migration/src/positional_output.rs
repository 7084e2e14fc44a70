//! A stream written into a regular file by threads at once: a stream's RAM records have
//! known lengths, so each batch of pages has a known place in the file, and the kernel's copies
//! of the batches into the file (most of an export's time) run side by side.

use std::fs::File;
use std::io::{self, IoSlice, Seek, SeekFrom};
use std::os::fd::AsRawFd;

/// Where a stream's bytes can be written at given offsets, from several threads.
pub trait PositionalOutput: Sync {
    /// Writes some of `slices` at `offset`; returns how many bytes (as `pwritev`).
    fn write_vectored_at(&self, slices: &[IoSlice<'_>], offset: u64) -> io::Result<usize>;
    /// Moves the sequential write position (the stream's writer goes on there).
    fn seek_to(&self, offset: u64) -> io::Result<()>;
}

impl PositionalOutput for File {
    fn write_vectored_at(&self, slices: &[IoSlice<'_>], offset: u64) -> io::Result<usize> {
        let offset = libc::off_t::try_from(offset).map_err(io::Error::other)?;
        // The kernel takes at most IOV_MAX (1024) slices per call; the rest go in the next.
        let count = slices.len().min(1024) as libc::c_int;
        // SAFETY: `IoSlice` is ABI-compatible with `iovec`; the slices stay borrowed for the
        // call, and the descriptor is owned by `self`.
        let written = unsafe {
            libc::pwritev(
                self.as_raw_fd(),
                slices.as_ptr() as *const libc::iovec,
                count,
                offset,
            )
        };
        if written < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(written as usize)
    }

    fn seek_to(&self, offset: u64) -> io::Result<()> {
        let mut file = self;
        file.seek(SeekFrom::Start(offset)).map(drop)
    }
}

/// Writes all of `slices` at `offset`.
pub fn write_all_vectored_at(
    out: &dyn PositionalOutput,
    mut slices: &mut [IoSlice<'_>],
    mut offset: u64,
) -> io::Result<()> {
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        match out.write_vectored_at(slices, offset) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "the output takes no more bytes",
                ))
            }
            Ok(n) => {
                IoSlice::advance_slices(&mut slices, n);
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
