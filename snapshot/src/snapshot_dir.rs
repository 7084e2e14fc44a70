//! Snapshots on disk: a directory holding a state file and a raw memory file.
//!
//! ```text
//! <dir>/state.bin    header (64 bytes, little-endian) + state payload
//! <dir>/memory.raw   guest RAM in `RamLayout` page order, sparse where RAM was zero;
//!                    `--from-snapshot` maps it MAP_PRIVATE and faults pages in lazily
//! ```
//!
//! Header: magic `SNAPVMM\0`, format version (independent of the crate version), header length,
//! payload kind, state length, memory length, CRC-32 of the payload, CRC-32 of the memory, and a
//! CRC-32 of the header itself. Lengths are capped so a hostile file cannot make us allocate without
//! bound, and every read is checked before it is trusted.
//!
//! Saving is atomic: everything is written and fsynced in a temporary sibling directory, which then
//! replaces the target with one `renameat2(RENAME_EXCHANGE)`. A save that fails leaves the previous
//! snapshot untouched. A save only ever replaces what is recognisably a snapshot (`save_target`),
//! deletes only the files it wrote, and clears temporaries of processes that died mid-save
//! (`temp_dirs`).
//!
//! Loading opens regular files only, without blocking (`crate::host_file`), checks every declared
//! length against the caps and the files' real lengths before reading anything large, and checksums
//! memory by its data extents (`memory_checksum`).

use std::ffi::{CString, OsStr};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;
use thiserror::Error;

use crate::host_file::{self, HostFileError};
use crate::snapshot_memory::{FileMapping, SnapshotMemory};

mod header;
mod memory_checksum;
mod save_target;
mod temp_dirs;

use header::{check_limits, Header};
pub use header::{parse_state_file, ParsedStateFile};
pub use save_target::check_save_target;
use save_target::{check_replaceable, split_target};

pub const STATE_FILE: &str = "state.bin";
pub const MEMORY_FILE: &str = "memory.raw";
pub const MAGIC: [u8; 8] = *b"SNAPVMM\0";
/// Bumped whenever the layout of the files or of the state encoding changes incompatibly.
pub const FORMAT_VERSION: u32 = 1;
pub const HEADER_LEN: usize = 64;
/// Upper bound for the state payload (vCPU, device and VM state; a few hundred KiB in practice).
pub const MAX_STATE_LEN: u64 = 64 << 20;
/// Upper bound for guest RAM in a snapshot.
pub const MAX_MEMORY_LEN: u64 = 1 << 40;
/// Upper bound for the whole state file.
pub const MAX_STATE_FILE_LEN: u64 = HEADER_LEN as u64 + MAX_STATE_LEN;

/// How the state payload is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadKind {
    /// Bytes the caller encoded itself.
    Opaque,
    /// A serde value encoded with postcard.
    Postcard,
}

impl PayloadKind {
    fn to_wire(self) -> u32 {
        match self {
            PayloadKind::Opaque => 0,
            PayloadKind::Postcard => 1,
        }
    }

    fn from_wire(value: u32) -> Option<Self> {
        match value {
            0 => Some(PayloadKind::Opaque),
            1 => Some(PayloadKind::Postcard),
            _ => None,
        }
    }
}

/// Why a snapshot could not be written or read.
#[derive(Debug, Error)]
pub enum SnapshotDirError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{path} is truncated: {what} needs {needed} bytes, the file has {actual}")]
    Truncated {
        path: PathBuf,
        what: &'static str,
        needed: u64,
        actual: u64,
    },
    #[error("{path} is not a snapvmm snapshot (bad magic)")]
    BadMagic { path: PathBuf },
    #[error(
        "{path} has snapshot format version {found}; this build reads version {FORMAT_VERSION}"
    )]
    UnsupportedVersion { path: PathBuf, found: u32 },
    #[error("{path} has a corrupt header: {why}")]
    BadHeader { path: PathBuf, why: String },
    #[error("{path}: {what} checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum {
        path: PathBuf,
        what: &'static str,
        stored: u32,
        computed: u32,
    },
    #[error("{what} length {len} exceeds the limit {limit}")]
    TooLarge {
        what: &'static str,
        len: u64,
        limit: u64,
    },
    #[error("memory image length {0:#x} is not a multiple of the page size")]
    MisalignedMemory(u64),
    #[error("{path} has trailing bytes after the state payload")]
    TrailingBytes { path: PathBuf },
    #[error("the state payload is {found:?}, not {expected:?}")]
    WrongPayloadKind {
        expected: PayloadKind,
        found: PayloadKind,
    },
    #[error("encoding the state failed")]
    Encode(#[source] postcard::Error),
    #[error("decoding the state failed")]
    Decode(#[source] postcard::Error),
    #[error("{path} exists and is not a snapshot directory")]
    NotADirectory { path: PathBuf },
    #[error("{path} is not a snapvmm snapshot, refusing to replace it: {why}")]
    NotASnapshot { path: PathBuf, why: String },
    #[error("{path} is longer than the snapshot declares: {actual} bytes, not {declared}")]
    MemoryTooLong {
        path: PathBuf,
        declared: u64,
        actual: u64,
    },
    #[error("the state payload has {extra} bytes after the encoded state")]
    TrailingPayload { extra: usize },
    #[error(transparent)]
    HostFile(#[from] HostFileError),
    #[error("snapshot path {0} has no parent directory or file name")]
    BadPath(PathBuf),
}

fn io_error<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> SnapshotDirError + 'a {
    move |source| SnapshotDirError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Guest memory to be written into a snapshot.
pub trait MemoryImage {
    /// Bytes in the image; a multiple of the page size.
    fn len(&self) -> u64;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes the image to `out` (a fresh empty file, which the caller sizes to `len` afterwards) and
    /// feeds every byte, holes as zeros, to `checksum` in order. May leave holes unwritten.
    fn write_to(&self, out: &File, checksum: &mut crc32fast::Hasher) -> io::Result<()>;
}

impl MemoryImage for [u8] {
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }

    fn write_to(&self, out: &File, checksum: &mut crc32fast::Hasher) -> io::Result<()> {
        checksum.update(self);
        out.write_all_at(self, 0)
    }
}

impl MemoryImage for SnapshotMemory {
    fn len(&self) -> u64 {
        SnapshotMemory::len(self) as u64
    }

    /// Copies only the memfd's data ranges, so the file on disk is as sparse as the snapshot.
    fn write_to(&self, out: &File, checksum: &mut crc32fast::Hasher) -> io::Result<()> {
        let len = SnapshotMemory::len(self) as u64;
        let mut pos = 0u64;
        while pos < len {
            let Some((data, hole)) = memory_checksum::next_data_extent(self.file(), pos, len)?
            else {
                break;
            };
            memory_checksum::hash_zeros(checksum, data - pos);
            let bytes = self
                .as_slice()
                .get(data as usize..hole as usize)
                .ok_or_else(|| io::Error::other("data extent beyond the snapshot memory"))?;
            checksum.update(bytes);
            out.write_all_at(bytes, data)?;
            pos = hole;
        }
        memory_checksum::hash_zeros(checksum, len - pos);
        Ok(())
    }
}

/// Writes a snapshot of `state` (encoded with postcard) and `memory` to `dir`, atomically.
pub fn save_snapshot<S: Serialize, M: MemoryImage + ?Sized>(
    dir: &Path,
    state: &S,
    memory: &M,
) -> Result<(), SnapshotDirError> {
    let payload = postcard::to_allocvec(state).map_err(SnapshotDirError::Encode)?;
    save_snapshot_payload(dir, PayloadKind::Postcard, &payload, memory)
}

/// Writes a snapshot whose state is bytes the caller encoded, atomically.
pub fn save_snapshot_bytes<M: MemoryImage + ?Sized>(
    dir: &Path,
    state: &[u8],
    memory: &M,
) -> Result<(), SnapshotDirError> {
    save_snapshot_payload(dir, PayloadKind::Opaque, state, memory)
}

fn save_snapshot_payload<M: MemoryImage + ?Sized>(
    dir: &Path,
    kind: PayloadKind,
    payload: &[u8],
    memory: &M,
) -> Result<(), SnapshotDirError> {
    check_limits(payload.len() as u64, memory.len(), MAX_MEMORY_LEN)?;
    let (parent, name) = split_target(dir)?;
    check_replaceable(dir)?;
    temp_dirs::remove_stale_temps(parent, name)?;
    let temp = temp_dirs::new_temp_path(parent, name);
    fs::create_dir(&temp).map_err(io_error("creating", &temp))?;
    let result = write_contents(&temp, kind, payload, memory)
        .and_then(|()| replace_dir(&temp, dir, parent, name));
    if result.is_err() && temp.exists() {
        // Best effort: the temporary directory holds nothing anyone needs.
        let _ = temp_dirs::remove_snapshot_dir(&temp);
    }
    result
}

fn write_contents<M: MemoryImage + ?Sized>(
    temp: &Path,
    kind: PayloadKind,
    payload: &[u8],
    memory: &M,
) -> Result<(), SnapshotDirError> {
    let memory_path = temp.join(MEMORY_FILE);
    let memory_file = create_file(&memory_path)?;
    let mut memory_crc = crc32fast::Hasher::new();
    memory
        .write_to(&memory_file, &mut memory_crc)
        .map_err(io_error("writing", &memory_path))?;
    memory_file
        .set_len(memory.len())
        .map_err(io_error("sizing", &memory_path))?;
    memory_file
        .sync_all()
        .map_err(io_error("syncing", &memory_path))?;

    let header = Header {
        kind,
        state_len: payload.len() as u64,
        memory_len: memory.len(),
        state_crc: crc32fast::hash(payload),
        memory_crc: memory_crc.finalize(),
    };
    let state_path = temp.join(STATE_FILE);
    let mut state_file = create_file(&state_path)?;
    state_file
        .write_all(&header.encode())
        .map_err(io_error("writing", &state_path))?;
    state_file
        .write_all(payload)
        .map_err(io_error("writing", &state_path))?;
    state_file
        .sync_all()
        .map_err(io_error("syncing", &state_path))?;
    sync_dir(temp)
}

fn create_file(path: &Path) -> Result<File, SnapshotDirError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io_error("creating", path))
}

fn sync_dir(path: &Path) -> Result<(), SnapshotDirError> {
    File::open(path)
        .and_then(|dir| dir.sync_all())
        .map_err(io_error("syncing directory", path))
}

/// Puts the complete `temp` directory at `target`, then removes the previous snapshot (its files
/// only: something that appeared in it since it was checked is kept).
fn replace_dir(
    temp: &Path,
    target: &Path,
    parent: &Path,
    name: &OsStr,
) -> Result<(), SnapshotDirError> {
    let exists = fs::symlink_metadata(target).is_ok();
    let flags = if exists {
        libc::RENAME_EXCHANGE
    } else {
        libc::RENAME_NOREPLACE
    };
    let previous = match rename2(temp, target, flags) {
        Ok(()) if exists => Some(temp.to_path_buf()),
        Ok(()) => None,
        // Filesystems without renameat2 flags: move the old snapshot aside first. A crash between
        // the two renames leaves it in a temporary sibling, never half-written.
        Err(err) if err.raw_os_error() == Some(libc::EINVAL) && exists => {
            let aside = temp_dirs::new_temp_path(parent, name);
            fs::rename(target, &aside).map_err(io_error("moving aside", target))?;
            fs::rename(temp, target).map_err(io_error("renaming into place", target))?;
            Some(aside)
        }
        Err(err) if err.raw_os_error() == Some(libc::EINVAL) => {
            fs::rename(temp, target).map_err(io_error("renaming into place", target))?;
            None
        }
        Err(source) => {
            return Err(SnapshotDirError::Io {
                what: "renaming into place",
                path: target.to_path_buf(),
                source,
            })
        }
    };
    sync_dir(parent)?;
    match previous {
        Some(previous) => temp_dirs::remove_snapshot_dir(&previous),
        None => Ok(()),
    }
}

fn rename2(from: &Path, to: &Path, flags: libc::c_uint) -> io::Result<()> {
    let from = CString::new(from.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let to = CString::new(to.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: both paths are valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            flags,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A snapshot read back from disk: the state payload (checked) and the memory file (length checked;
/// its checksum only on `verify_memory`, since reading all of RAM would defeat lazy mapping).
#[derive(Debug)]
pub struct LoadedSnapshot {
    dir: PathBuf,
    header: Header,
    payload: Vec<u8>,
    memory: File,
}

impl LoadedSnapshot {
    /// Opens a snapshot whose memory may be as large as the format allows ([`MAX_MEMORY_LEN`]).
    /// Callers that know their RAM cap should use [`LoadedSnapshot::open_with_memory_limit`].
    pub fn open(dir: &Path) -> Result<LoadedSnapshot, SnapshotDirError> {
        Self::open_with_memory_limit(dir, MAX_MEMORY_LEN)
    }

    /// Opens a snapshot, refusing one whose header declares more than `max_memory_len` bytes of
    /// RAM before anything large is read. Only regular files are opened (a FIFO, a directory or a
    /// device is an error, and nothing blocks), and every declared length is checked against the
    /// files' real lengths.
    pub fn open_with_memory_limit(
        dir: &Path,
        max_memory_len: u64,
    ) -> Result<LoadedSnapshot, SnapshotDirError> {
        let state_path = dir.join(STATE_FILE);
        let (state_file, reported) =
            host_file::open_regular_capped(&state_path, "snapshot state", MAX_STATE_FILE_LEN)
                .map_err(too_large_state)?;
        let state_bytes = host_file::read_to_end_capped(
            state_file,
            &state_path,
            "snapshot state",
            MAX_STATE_FILE_LEN,
            reported,
        )
        .map_err(too_large_state)?;
        let parsed = parse_state_file(&state_bytes, &state_path, max_memory_len)?;
        let header = parsed.header;
        let payload = parsed.payload().to_vec();

        let memory_path = dir.join(MEMORY_FILE);
        let memory = host_file::open_regular(&memory_path, "snapshot memory")?;
        let memory_len = memory
            .metadata()
            .map_err(io_error("reading metadata of", &memory_path))?
            .len();
        if memory_len < header.memory_len {
            return Err(SnapshotDirError::Truncated {
                path: memory_path,
                what: "the memory image",
                needed: header.memory_len,
                actual: memory_len,
            });
        }
        if memory_len > header.memory_len {
            return Err(SnapshotDirError::MemoryTooLong {
                path: memory_path,
                declared: header.memory_len,
                actual: memory_len,
            });
        }
        Ok(LoadedSnapshot {
            dir: dir.to_path_buf(),
            header,
            payload,
            memory,
        })
    }

    pub fn payload_kind(&self) -> PayloadKind {
        self.header.kind
    }

    /// The raw state payload.
    pub fn state_bytes(&self) -> &[u8] {
        &self.payload
    }

    /// Decodes a state saved with `save_snapshot`; bytes left over after the value are an error.
    pub fn decode_state<S: DeserializeOwned>(&self) -> Result<S, SnapshotDirError> {
        if self.header.kind != PayloadKind::Postcard {
            return Err(SnapshotDirError::WrongPayloadKind {
                expected: PayloadKind::Postcard,
                found: self.header.kind,
            });
        }
        decode_postcard(&self.payload)
    }

    pub fn memory_len(&self) -> u64 {
        self.header.memory_len
    }

    pub fn memory_file(&self) -> &File {
        &self.memory
    }

    /// Maps the memory image copy-on-write: pages are read from disk when first touched, and writes
    /// stay in this process.
    pub fn map_memory_private(&self) -> Result<FileMapping, SnapshotDirError> {
        let len =
            usize::try_from(self.header.memory_len).map_err(|_| SnapshotDirError::TooLarge {
                what: "memory",
                len: self.header.memory_len,
                limit: usize::MAX as u64,
            })?;
        FileMapping::new(
            &self.memory,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_NORESERVE,
        )
        .map_err(io_error("mapping", &self.dir.join(MEMORY_FILE)))
    }

    /// Checks the memory image's checksum, reading only its data extents (holes count as zeros
    /// without being read, so a sparse image costs what it holds, not what it declares).
    pub fn verify_memory(&self) -> Result<(), SnapshotDirError> {
        let path = self.dir.join(MEMORY_FILE);
        let computed = memory_checksum::checksum_file(&self.memory, self.header.memory_len)
            .map_err(io_error("reading", &path))?;
        if computed != self.header.memory_crc {
            return Err(SnapshotDirError::Checksum {
                path,
                what: "memory",
                stored: self.header.memory_crc,
                computed,
            });
        }
        Ok(())
    }
}

/// Decodes a postcard payload that must hold exactly one `S`.
pub fn decode_postcard<S: DeserializeOwned>(payload: &[u8]) -> Result<S, SnapshotDirError> {
    let (value, rest) = postcard::take_from_bytes(payload).map_err(SnapshotDirError::Decode)?;
    if !rest.is_empty() {
        return Err(SnapshotDirError::TrailingPayload { extra: rest.len() });
    }
    Ok(value)
}

/// A state file longer than the format allows is reported as a state too large, whatever its
/// header says.
fn too_large_state(err: HostFileError) -> SnapshotDirError {
    match err {
        HostFileError::TooLarge { limit, .. } => SnapshotDirError::TooLarge {
            what: "state file",
            len: limit.saturating_add(1),
            limit,
        },
        other => SnapshotDirError::HostFile(other),
    }
}

#[cfg(test)]
mod hardening_tests;
#[cfg(test)]
mod tests;
