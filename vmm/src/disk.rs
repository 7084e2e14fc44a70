//! Snapshots on disk: what `--save-snapshot` writes and `--from-snapshot` resumes from. The
//! directory format (header, checksums, size caps, atomic replace) is `snapshot::snapshot_dir`;
//! this is its payload: a version and a `MachineState`, validated whole when read.

use std::fs::File;
use std::path::Path;

use serde::{Deserialize, Serialize};
use snapshot::MemoryImage;
use thiserror::Error;

use crate::machine_state::{MachineState, MachineStateError};
use crate::memory::MAX_MEM_BYTES;

/// Bumped when the payload's shape changes; the directory format has its own version.
/// 3: one `MachineState` (CPUID in the vCPU state, VM-wide state without unused fields).
pub const PAYLOAD_VERSION: u32 = 3;

#[derive(Debug, Error)]
pub enum DiskError {
    #[error("snapshot directory: {0}")]
    Dir(#[from] snapshot::SnapshotDirError),
    #[error(
        "the snapshot's state is version {found}, this snapvmm reads version {PAYLOAD_VERSION}"
    )]
    Version { found: u32 },
    #[error("the snapshot is invalid: {0}")]
    Invalid(#[from] MachineStateError),
    #[error("the snapshot's memory file has {found} bytes for a guest of {expected}")]
    MemoryLength { found: u64, expected: u64 },
    #[error("cannot read the snapshot's memory file: {0}")]
    MemoryFile(std::io::Error),
}

#[derive(Serialize, Deserialize)]
struct Payload {
    version: u32,
    state: MachineState,
}

/// Checks before a run that `dir` can take snapshots: it is absent, empty, or a snapvmm snapshot
/// (which will be replaced); anything else is refused, so no user data is ever replaced.
pub fn check_snapshot_target(dir: &Path) -> Result<(), DiskError> {
    Ok(snapshot::check_save_target(dir)?)
}

/// Writes `state` and `memory` to `dir`, atomically: a failed write leaves a previous snapshot
/// there intact.
pub fn write_snapshot<M: MemoryImage + ?Sized>(
    dir: &Path,
    state: &MachineState,
    memory: &M,
) -> Result<(), DiskError> {
    let payload = Payload {
        version: PAYLOAD_VERSION,
        state: state.clone(),
    };
    snapshot::save_snapshot(dir, &payload, memory)?;
    Ok(())
}

/// Replaces the state of the snapshot in `dir`, keeping its memory (atomically, like a save):
/// for tools and tests that edit a saved machine, e.g. its CPU model.
pub fn replace_state(dir: &Path, state: &MachineState) -> Result<(), DiskError> {
    state.validate()?;
    let old = read_snapshot(dir)?;
    let memory = snapshot::SnapshotMemory::from_file(old.memory, state.mem_bytes as usize)
        .map_err(|e| DiskError::MemoryFile(std::io::Error::other(e.to_string())))?;
    write_snapshot(dir, state, &memory)
}

/// A snapshot read back from disk: its state, validated, and its memory file, checksummed.
pub struct SnapshotOnDisk {
    pub state: MachineState,
    pub memory: File,
}

/// Reads and checks the snapshot in `dir`: the directory format, the payload's version, the state
/// as a whole, and the memory file's length and checksum.
pub fn read_snapshot(dir: &Path) -> Result<SnapshotOnDisk, DiskError> {
    // The RAM cap bounds what the loader reads before anything large is checksummed.
    let loaded = snapshot::LoadedSnapshot::open_with_memory_limit(dir, MAX_MEM_BYTES)?;
    let payload: Payload = loaded.decode_state()?;
    if payload.version != PAYLOAD_VERSION {
        return Err(DiskError::Version {
            found: payload.version,
        });
    }
    payload.state.validate()?;
    if loaded.memory_len() != payload.state.mem_bytes {
        return Err(DiskError::MemoryLength {
            found: loaded.memory_len(),
            expected: payload.state.mem_bytes,
        });
    }
    loaded.verify_memory()?;
    let memory = loaded
        .memory_file()
        .try_clone()
        .map_err(DiskError::MemoryFile)?;
    Ok(SnapshotOnDisk {
        state: payload.state,
        memory,
    })
}
