//! What the snapshot loader fuzz target and its seed maker share: how one fuzz input holds both
//! files of a snapshot directory.
//!
//! Input layout: one flags byte, a `u32` little-endian length L of `state.bin`, L bytes of
//! `state.bin`, then the rest is `memory.raw`. Flag bit 0 asks the target to recompute the three
//! CRC-32s in the header before loading, so that mutations reach the length checks and the payload
//! decoding instead of stopping at a checksum.

/// The RAM cap the target loads with: small, so every accepted memory file is cheap to check.
pub const FUZZ_MEMORY_LIMIT: u64 = 1 << 20;

/// Flag bit: fix the header's checksums up before loading.
pub const REPAIR_CHECKSUMS: u8 = 1;

/// One fuzz input, split.
pub struct FuzzInput<'a> {
    pub flags: u8,
    pub state: &'a [u8],
    pub memory: &'a [u8],
}

/// Splits one fuzz input into flags, the state file and the memory file.
pub fn split_input(data: &[u8]) -> FuzzInput<'_> {
    let Some((&flags, rest)) = data.split_first() else {
        return FuzzInput {
            flags: 0,
            state: &[],
            memory: &[],
        };
    };
    let Some((len, rest)) = rest.split_first_chunk::<4>() else {
        return FuzzInput {
            flags,
            state: rest,
            memory: &[],
        };
    };
    let len = (u32::from_le_bytes(*len) as usize).min(rest.len());
    let (state, memory) = rest.split_at(len);
    FuzzInput {
        flags,
        state,
        memory,
    }
}

/// The inverse of [`split_input`].
pub fn join_input(flags: u8, state: &[u8], memory: &[u8]) -> Vec<u8> {
    let mut input = Vec::with_capacity(5 + state.len() + memory.len());
    input.push(flags);
    input.extend_from_slice(&(state.len() as u32).to_le_bytes());
    input.extend_from_slice(state);
    input.extend_from_slice(memory);
    input
}

/// Recomputes the payload, memory and header CRC-32s of a `state.bin` image (header layout in
/// `snapshot::snapshot_dir`: payload CRC at 40, memory CRC at 44, header CRC of bytes 0..60 at
/// 60). Does nothing to a state shorter than the header.
pub fn repair_checksums(state: &mut [u8], memory: &[u8]) {
    if state.len() < 64 {
        return;
    }
    let payload_crc = crc32fast::hash(&state[64..]);
    state[40..44].copy_from_slice(&payload_crc.to_le_bytes());
    state[44..48].copy_from_slice(&crc32fast::hash(memory).to_le_bytes());
    let header_crc = crc32fast::hash(&state[..60]);
    state[60..64].copy_from_slice(&header_crc.to_le_bytes());
}
