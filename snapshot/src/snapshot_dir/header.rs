//! The fixed-size header at the start of `state.bin`, and parsing of the whole state file from
//! bytes (the entry point `LoadedSnapshot::open` and the fuzz target share).

use std::path::Path;

use super::{
    PayloadKind, SnapshotDirError, FORMAT_VERSION, HEADER_LEN, MAGIC, MAX_MEMORY_LEN, MAX_STATE_LEN,
};
use crate::ram_layout::PAGE_SIZE;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Header {
    pub kind: PayloadKind,
    pub state_len: u64,
    pub memory_len: u64,
    pub state_crc: u32,
    pub memory_crc: u32,
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
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

    /// Decodes and checks a header, including its lengths against the caps, `max_memory_len`
    /// among them.
    pub fn decode(
        bytes: &[u8; HEADER_LEN],
        path: &Path,
        max_memory_len: u64,
    ) -> Result<Header, SnapshotDirError> {
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
        check_limits(header.state_len, header.memory_len, max_memory_len)?;
        Ok(header)
    }
}

/// Checks lengths against the format's caps and the caller's memory cap (the lower one wins).
pub(super) fn check_limits(
    state_len: u64,
    memory_len: u64,
    max_memory_len: u64,
) -> Result<(), SnapshotDirError> {
    if state_len > MAX_STATE_LEN {
        return Err(SnapshotDirError::TooLarge {
            what: "state",
            len: state_len,
            limit: MAX_STATE_LEN,
        });
    }
    let memory_limit = max_memory_len.min(MAX_MEMORY_LEN);
    if memory_len > memory_limit {
        return Err(SnapshotDirError::TooLarge {
            what: "memory",
            len: memory_len,
            limit: memory_limit,
        });
    }
    if memory_len & (PAGE_SIZE as u64 - 1) != 0 {
        return Err(SnapshotDirError::MisalignedMemory(memory_len));
    }
    Ok(())
}

/// A state file checked from its bytes: header, lengths, payload checksum. The memory file is not
/// looked at; `memory_len` is what it must hold.
#[derive(Debug, Clone, Copy)]
pub struct ParsedStateFile<'a> {
    pub(super) header: Header,
    payload: &'a [u8],
}

impl<'a> ParsedStateFile<'a> {
    pub fn payload_kind(&self) -> PayloadKind {
        self.header.kind
    }

    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }

    /// Bytes the memory file must hold.
    pub fn memory_len(&self) -> u64 {
        self.header.memory_len
    }
}

/// Parses the contents of a `state.bin` (`path` only names it in errors), refusing a memory
/// length above `max_memory_len`. Nothing is allocated.
pub fn parse_state_file<'a>(
    bytes: &'a [u8],
    path: &Path,
    max_memory_len: u64,
) -> Result<ParsedStateFile<'a>, SnapshotDirError> {
    let file_len = bytes.len() as u64;
    let truncated = |what, needed| SnapshotDirError::Truncated {
        path: path.to_path_buf(),
        what,
        needed,
        actual: file_len,
    };
    let (header_bytes, rest) = bytes
        .split_first_chunk::<HEADER_LEN>()
        .ok_or_else(|| truncated("the header", HEADER_LEN as u64))?;
    let header = Header::decode(header_bytes, path, max_memory_len)?;
    let needed = HEADER_LEN as u64 + header.state_len;
    if file_len < needed {
        return Err(truncated("the state payload", needed));
    }
    if file_len > needed {
        return Err(SnapshotDirError::TrailingBytes {
            path: path.to_path_buf(),
        });
    }
    // `rest` is exactly `state_len` bytes now.
    let payload = rest;
    let computed = crc32fast::hash(payload);
    if computed != header.state_crc {
        return Err(SnapshotDirError::Checksum {
            path: path.to_path_buf(),
            what: "state",
            stored: header.state_crc,
            computed,
        });
    }
    Ok(ParsedStateFile { header, payload })
}
