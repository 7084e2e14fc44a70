//! Opening files named by the user (kernel, initrd, snapshot files) without trusting what they are.
//!
//! A path may name a FIFO (whose `open()` blocks until a writer appears, for ever if none does), a
//! directory, or a device such as `/dev/zero` (which reports length 0 and never ends). Everything
//! here refuses all but regular files, never blocks in `open()`, and caps what it actually reads
//! rather than what the file reports.

use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Why a host file could not be opened or read.
#[derive(Debug, Error)]
pub enum HostFileError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{what} {path} is {kind}, not a regular file")]
    NotRegular {
        what: &'static str,
        path: PathBuf,
        kind: &'static str,
    },
    #[error("{what} {path} is larger than the limit of {limit} bytes")]
    TooLarge {
        what: &'static str,
        path: PathBuf,
        limit: u64,
    },
}

/// Opens `path` read-only if it is a regular file. `what` names the file in errors ("kernel").
///
/// The type is checked before opening (so no device or FIFO is ever opened in the usual case) and
/// again on the open descriptor (so a path swapped in between is caught). The open itself uses
/// `O_NONBLOCK`, which is cleared afterwards, so even that race cannot block on a FIFO.
pub fn open_regular(path: &Path, what: &'static str) -> Result<File, HostFileError> {
    let io_err = |source| HostFileError::Io {
        what,
        path: path.to_path_buf(),
        source,
    };
    require_regular(&std::fs::metadata(path).map_err(io_err)?, path, what)?;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(io_err)?;
    require_regular(&file.metadata().map_err(io_err)?, path, what)?;
    clear_nonblocking(&file).map_err(io_err)?;
    Ok(file)
}

/// Like [`open_regular`], also refusing a file whose reported length exceeds `limit`; returns the
/// file and that length.
pub fn open_regular_capped(
    path: &Path,
    what: &'static str,
    limit: u64,
) -> Result<(File, u64), HostFileError> {
    let file = open_regular(path, what)?;
    let len = file
        .metadata()
        .map_err(|source| HostFileError::Io {
            what,
            path: path.to_path_buf(),
            source,
        })?
        .len();
    if len > limit {
        return Err(HostFileError::TooLarge {
            what,
            path: path.to_path_buf(),
            limit,
        });
    }
    Ok((file, len))
}

/// Reads a whole regular file of at most `limit` bytes. The cap applies to the bytes read, so a
/// file that grows while it is read, or reports a wrong length, cannot make this read more.
pub fn read_capped(path: &Path, what: &'static str, limit: u64) -> Result<Vec<u8>, HostFileError> {
    let (file, reported) = open_regular_capped(path, what, limit)?;
    read_to_end_capped(file, path, what, limit, reported)
}

/// Reads what is left of `file`, failing once more than `limit` bytes came out. `expected` only
/// sizes the first allocation.
pub(crate) fn read_to_end_capped(
    file: File,
    path: &Path,
    what: &'static str,
    limit: u64,
    expected: u64,
) -> Result<Vec<u8>, HostFileError> {
    let capacity = usize::try_from(expected.min(limit)).unwrap_or(0);
    let mut bytes = Vec::with_capacity(capacity);
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|source| HostFileError::Io {
            what,
            path: path.to_path_buf(),
            source,
        })?;
    if bytes.len() as u64 > limit {
        return Err(HostFileError::TooLarge {
            what,
            path: path.to_path_buf(),
            limit,
        });
    }
    Ok(bytes)
}

fn require_regular(
    metadata: &Metadata,
    path: &Path,
    what: &'static str,
) -> Result<(), HostFileError> {
    let file_type = metadata.file_type();
    if file_type.is_file() {
        return Ok(());
    }
    let kind = if file_type.is_dir() {
        "a directory"
    } else if file_type.is_fifo() {
        "a FIFO"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_block_device() {
        "a block device"
    } else if file_type.is_socket() {
        "a socket"
    } else {
        "not a file"
    };
    Err(HostFileError::NotRegular {
        what,
        path: path.to_path_buf(),
        kind,
    })
}

fn clear_nonblocking(file: &File) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: F_GETFL on a descriptor owned by `file`; no memory is passed.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: F_SETFL on a descriptor owned by `file`, with flags it just reported.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests;
