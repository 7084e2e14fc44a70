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
//! snapshot untouched.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::de::DeserializeOwned;
use serde::Serialize;
use thiserror::Error;

use crate::ram_layout::PAGE_SIZE;
use crate::snapshot_memory::{FileMapping, SnapshotMemory};

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
            let data = seek(self.file(), pos, libc::SEEK_DATA)?
                .unwrap_or(len)
                .min(len);
            hash_zeros(checksum, data - pos);
            if data >= len {
                break;
            }
            let hole = seek(self.file(), data, libc::SEEK_HOLE)?
                .unwrap_or(len)
                .min(len);
            let bytes = &self.as_slice()[data as usize..hole as usize];
            checksum.update(bytes);
            out.write_all_at(bytes, data)?;
            pos = hole;
        }
        Ok(())
    }
}

fn seek(file: &File, from: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    use std::os::fd::AsRawFd;
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

fn hash_zeros(checksum: &mut crc32fast::Hasher, mut len: u64) {
    static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
    while len > 0 {
        let chunk = len.min(ZEROS.len() as u64) as usize;
        checksum.update(&ZEROS[..chunk]);
        len -= chunk as u64;
    }
}

/// The fixed-size header at the start of `state.bin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    kind: PayloadKind,
    state_len: u64,
    memory_len: u64,
    state_crc: u32,
    memory_crc: u32,
}

impl Header {
    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut bytes = [0u8; HEADER_LEN];
        bytes[0..8].copy_from_slice(&MAGIC);
        bytes[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        bytes[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        bytes[16..20].copy_from_slice(&self.kind.to_wire().to_le_bytes());
        bytes[24..32].copy_from_slice(&self.state_len.to_le_bytes());
        bytes[32..40].copy_from_slice(&self.memory_len.to_le_bytes());
        bytes[40..44].copy_from_slice(&self.state_crc.to_le_bytes());
        bytes[44..48].copy_from_slice(&self.memory_crc.to_le_bytes());
        let header_crc = crc32fast::hash(&bytes[..60]);
        bytes[60..64].copy_from_slice(&header_crc.to_le_bytes());
        bytes
    }

    fn decode(bytes: &[u8; HEADER_LEN], path: &Path) -> Result<Header, SnapshotDirError> {
        let u32_at = |at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        let u64_at = |at: usize| u64::from(u32_at(at)) | (u64::from(u32_at(at + 4)) << 32);
        let bad = |why: String| SnapshotDirError::BadHeader {
            path: path.to_path_buf(),
            why,
        };
        if bytes[0..8] != MAGIC {
            return Err(SnapshotDirError::BadMagic {
                path: path.to_path_buf(),
            });
        }
        // The version is checked before the checksum so a newer format is reported as such.
        let version = u32_at(8);
        if version != FORMAT_VERSION {
            return Err(SnapshotDirError::UnsupportedVersion {
                path: path.to_path_buf(),
                found: version,
            });
        }
        let stored = u32_at(60);
        let computed = crc32fast::hash(&bytes[..60]);
        if stored != computed {
            return Err(SnapshotDirError::Checksum {
                path: path.to_path_buf(),
                what: "header",
                stored,
                computed,
            });
        }
        if u32_at(12) as usize != HEADER_LEN {
            return Err(bad(format!(
                "header length {} (expected {HEADER_LEN})",
                u32_at(12)
            )));
        }
        let kind = PayloadKind::from_wire(u32_at(16))
            .ok_or_else(|| bad(format!("unknown payload kind {}", u32_at(16))))?;
        let header = Header {
            kind,
            state_len: u64_at(24),
            memory_len: u64_at(32),
            state_crc: u32_at(40),
            memory_crc: u32_at(44),
        };
        check_limits(header.state_len, header.memory_len)?;
        Ok(header)
    }
}

fn check_limits(state_len: u64, memory_len: u64) -> Result<(), SnapshotDirError> {
    if state_len > MAX_STATE_LEN {
        return Err(SnapshotDirError::TooLarge {
            what: "state",
            len: state_len,
            limit: MAX_STATE_LEN,
        });
    }
    if memory_len > MAX_MEMORY_LEN {
        return Err(SnapshotDirError::TooLarge {
            what: "memory",
            len: memory_len,
            limit: MAX_MEMORY_LEN,
        });
    }
    if memory_len & (PAGE_SIZE as u64 - 1) != 0 {
        return Err(SnapshotDirError::MisalignedMemory(memory_len));
    }
    Ok(())
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
    check_limits(payload.len() as u64, memory.len())?;
    let (parent, name) = match (dir.parent(), dir.file_name()) {
        (Some(parent), Some(name)) => (
            if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            },
            name,
        ),
        _ => return Err(SnapshotDirError::BadPath(dir.to_path_buf())),
    };
    if dir.exists() && !dir.is_dir() {
        return Err(SnapshotDirError::NotADirectory {
            path: dir.to_path_buf(),
        });
    }
    static SAVES: AtomicU64 = AtomicU64::new(0);
    let temp = parent.join(format!(
        ".{}.tmp-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        SAVES.fetch_add(1, Ordering::Relaxed)
    ));
    fs::create_dir(&temp).map_err(io_error("creating", &temp))?;
    let result =
        write_contents(&temp, kind, payload, memory).and_then(|()| replace_dir(&temp, dir, parent));
    if result.is_err() {
        // Best effort: the temporary directory holds nothing anyone needs.
        let _ = fs::remove_dir_all(&temp);
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

/// Puts the complete `temp` directory at `target`, then removes what was there before.
fn replace_dir(temp: &Path, target: &Path, parent: &Path) -> Result<(), SnapshotDirError> {
    let exists = target.exists();
    let flags = if exists {
        libc::RENAME_EXCHANGE
    } else {
        libc::RENAME_NOREPLACE
    };
    match rename2(temp, target, flags) {
        Ok(()) => {}
        // Filesystems without renameat2 flags: move the old snapshot aside first. A crash between
        // the two renames leaves it in the `.old` sibling, never half-written.
        Err(err) if err.raw_os_error() == Some(libc::EINVAL) && exists => {
            let aside = temp.with_extension("old");
            fs::rename(target, &aside).map_err(io_error("moving aside", target))?;
            fs::rename(temp, target).map_err(io_error("renaming into place", target))?;
            fs::rename(&aside, temp).map_err(io_error("renaming", &aside))?;
        }
        Err(err) if err.raw_os_error() == Some(libc::EINVAL) => {
            fs::rename(temp, target).map_err(io_error("renaming into place", target))?;
        }
        Err(source) => {
            return Err(SnapshotDirError::Io {
                what: "renaming into place",
                path: target.to_path_buf(),
                source,
            })
        }
    }
    sync_dir(parent)?;
    if exists {
        // `temp` now holds the previous snapshot.
        fs::remove_dir_all(temp).map_err(io_error("removing the previous snapshot", temp))?;
    }
    Ok(())
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
    pub fn open(dir: &Path) -> Result<LoadedSnapshot, SnapshotDirError> {
        let state_path = dir.join(STATE_FILE);
        let mut state_file = File::open(&state_path).map_err(io_error("opening", &state_path))?;
        let file_len = state_file
            .metadata()
            .map_err(io_error("reading metadata of", &state_path))?
            .len();
        let truncated = |what, needed| SnapshotDirError::Truncated {
            path: state_path.clone(),
            what,
            needed,
            actual: file_len,
        };
        if file_len < HEADER_LEN as u64 {
            return Err(truncated("the header", HEADER_LEN as u64));
        }
        let mut header_bytes = [0u8; HEADER_LEN];
        state_file
            .read_exact(&mut header_bytes)
            .map_err(io_error("reading", &state_path))?;
        let header = Header::decode(&header_bytes, &state_path)?;
        let needed = HEADER_LEN as u64 + header.state_len;
        if file_len < needed {
            return Err(truncated("the state payload", needed));
        }
        if file_len > needed {
            return Err(SnapshotDirError::TrailingBytes { path: state_path });
        }
        // `state_len` is capped by `Header::decode`, so this allocation is bounded.
        let mut payload = vec![0u8; header.state_len as usize];
        state_file
            .read_exact(&mut payload)
            .map_err(io_error("reading", &state_path))?;
        let computed = crc32fast::hash(&payload);
        if computed != header.state_crc {
            return Err(SnapshotDirError::Checksum {
                path: state_path,
                what: "state",
                stored: header.state_crc,
                computed,
            });
        }

        let memory_path = dir.join(MEMORY_FILE);
        let memory = File::open(&memory_path).map_err(io_error("opening", &memory_path))?;
        let memory_len = memory
            .metadata()
            .map_err(io_error("reading metadata of", &memory_path))?
            .len();
        if memory_len != header.memory_len {
            return Err(SnapshotDirError::Truncated {
                path: memory_path,
                what: "the memory image",
                needed: header.memory_len,
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

    /// Decodes a state saved with `save_snapshot`.
    pub fn decode_state<S: DeserializeOwned>(&self) -> Result<S, SnapshotDirError> {
        if self.header.kind != PayloadKind::Postcard {
            return Err(SnapshotDirError::WrongPayloadKind {
                expected: PayloadKind::Postcard,
                found: self.header.kind,
            });
        }
        postcard::from_bytes(&self.payload).map_err(SnapshotDirError::Decode)
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

    /// Reads the whole memory image and checks its checksum.
    pub fn verify_memory(&self) -> Result<(), SnapshotDirError> {
        let path = self.dir.join(MEMORY_FILE);
        let mut checksum = crc32fast::Hasher::new();
        let mut buffer = vec![0u8; 1 << 20];
        let mut offset = 0u64;
        while offset < self.header.memory_len {
            let chunk = (self.header.memory_len - offset).min(buffer.len() as u64) as usize;
            self.memory
                .read_exact_at(&mut buffer[..chunk], offset)
                .map_err(io_error("reading", &path))?;
            checksum.update(&buffer[..chunk]);
            offset += chunk as u64;
        }
        let computed = checksum.finalize();
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

#[cfg(test)]
mod tests;
