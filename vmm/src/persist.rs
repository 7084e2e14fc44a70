//! Snapshots on disk: what `--save-snapshot` writes and `--from-snapshot` resumes from. The
//! directory format (header, checksums, size caps, atomic replace) is `snapshot::snapshot_dir`;
//! this is the VM-level payload and its checks.

use serde::{Deserialize, Serialize};
use snapshot::vm_state::{VcpuState, VmState};
use thiserror::Error;

use crate::config::{MAX_MEM_BYTES, MIN_MEM_BYTES};
use crate::device_manager::{DeviceOptions, DeviceStates};

/// Bumped when the payload's shape changes; the directory format has its own version.
pub const PAYLOAD_VERSION: u32 = 2;

#[derive(Debug, Error)]
pub enum PersistError {
    #[error("snapshot directory: {0}")]
    Dir(#[from] snapshot::SnapshotDirError),
    #[error(
        "the snapshot's state is version {found}, this snapvmm reads version {PAYLOAD_VERSION}"
    )]
    Version { found: u32 },
    #[error("the snapshot is invalid: {0}")]
    Invalid(String),
}

/// Everything but RAM that a snapshot on disk holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedVm {
    pub version: u32,
    pub mem_bytes: u64,
    pub snapshot_slot: u8,
    pub input_size: u64,
    pub coverage_size: u64,
    pub vcpu: VcpuState,
    pub vm: VmState,
    pub devices: DeviceStates,
}

impl SavedVm {
    /// Checks what can be checked without KVM: version, sizes, the vCPU/VM state's own rules.
    pub fn validate(&self, memory_len: u64) -> Result<(), PersistError> {
        if self.version != PAYLOAD_VERSION {
            return Err(PersistError::Version {
                found: self.version,
            });
        }
        if !(MIN_MEM_BYTES..=MAX_MEM_BYTES).contains(&self.mem_bytes)
            || !self.mem_bytes.is_multiple_of(4096)
        {
            return Err(PersistError::Invalid(format!(
                "RAM size {} is out of range",
                self.mem_bytes
            )));
        }
        if memory_len != self.mem_bytes {
            return Err(PersistError::Invalid(format!(
                "the memory file has {memory_len} bytes for a guest of {}",
                self.mem_bytes
            )));
        }
        if self.snapshot_slot == 0 || self.snapshot_slot >= 32 {
            return Err(PersistError::Invalid(format!(
                "PCI slot {}",
                self.snapshot_slot
            )));
        }
        self.vcpu
            .validate()
            .map_err(|e| PersistError::Invalid(e.to_string()))?;
        Ok(())
    }

    /// The device options the snapshot was taken with.
    pub fn device_options(&self) -> Result<DeviceOptions, PersistError> {
        let to_usize = |v: u64| {
            usize::try_from(v).map_err(|_| PersistError::Invalid(format!("buffer size {v}")))
        };
        let options = DeviceOptions {
            snapshot_slot: self.snapshot_slot,
            snapshot_device: devices::snapshot_device::SnapshotDeviceConfig {
                input_size: to_usize(self.input_size)?,
                coverage_size: to_usize(self.coverage_size)?,
            },
        };
        options
            .snapshot_device
            .validate()
            .map_err(|e| PersistError::Invalid(e.to_string()))?;
        Ok(options)
    }
}
