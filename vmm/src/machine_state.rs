//! The whole machine but RAM contents, as one value: what a snapshot holds, what a snapshot on
//! disk stores, and what a QEMU migration stream maps to and from. One `validate` checks every
//! part before any of it reaches KVM or a device, whatever the state came from.

use serde::{Deserialize, Serialize};
use snapshot::vm_state::{VcpuState, VmState};
use thiserror::Error;

use crate::device_manager::{DeviceOptions, DeviceStates};
use crate::memory::{MAX_MEM_BYTES, MIN_MEM_BYTES};

#[derive(Debug, Error)]
pub enum MachineStateError {
    #[error("RAM size {0} is out of range or not page aligned")]
    RamSize(u64),
    #[error("PCI slot {0} of the snapshot device is not in 1..32")]
    Slot(u8),
    #[error("snapshot device buffer size {0} does not fit this host")]
    BufferSize(u64),
    #[error("devices: {0}")]
    Devices(String),
    #[error("KVM state: {0}")]
    Kvm(#[from] snapshot::VmStateError),
}

/// How the machine's devices were configured (the state of each is in `DeviceStates`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceLayout {
    /// PCI slot (bus 0) of the snapshot device.
    pub snapshot_slot: u8,
    /// Bytes of the snapshot device's BAR2 (input) and BAR4 (coverage).
    pub input_size: u64,
    pub coverage_size: u64,
}

impl DeviceLayout {
    pub fn of(options: &DeviceOptions) -> Self {
        DeviceLayout {
            snapshot_slot: options.snapshot_slot,
            input_size: options.snapshot_device.input_size as u64,
            coverage_size: options.snapshot_device.coverage_size as u64,
        }
    }

    /// The device options to build the machine with.
    pub fn options(&self) -> Result<DeviceOptions, MachineStateError> {
        if self.snapshot_slot == 0 || self.snapshot_slot >= 32 {
            return Err(MachineStateError::Slot(self.snapshot_slot));
        }
        let size = |v: u64| usize::try_from(v).map_err(|_| MachineStateError::BufferSize(v));
        let options = DeviceOptions {
            snapshot_slot: self.snapshot_slot,
            snapshot_device: devices::snapshot_device::SnapshotDeviceConfig {
                input_size: size(self.input_size)?,
                coverage_size: size(self.coverage_size)?,
            },
        };
        options
            .snapshot_device
            .validate()
            .map_err(|e| MachineStateError::Devices(e.to_string()))?;
        Ok(options)
    }
}

/// Everything about a machine at one instant, RAM contents aside.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MachineState {
    /// Guest RAM in bytes (laid out as `arch::layout::ram_ranges` says).
    pub mem_bytes: u64,
    pub device_layout: DeviceLayout,
    /// The boot vCPU, CPUID included.
    pub vcpu: VcpuState,
    /// Interrupt controllers, PIT, clock.
    pub vm: VmState,
    pub devices: DeviceStates,
}

impl MachineState {
    /// Checks every part: RAM size, device layout, the vCPU (CPUID, XSAVE, LAPIC, MSRs, events),
    /// the VM-wide state (irqchips, PIT) and every device's state.
    pub fn validate(&self) -> Result<(), MachineStateError> {
        if !(MIN_MEM_BYTES..=MAX_MEM_BYTES).contains(&self.mem_bytes)
            || !self.mem_bytes.is_multiple_of(4096)
        {
            return Err(MachineStateError::RamSize(self.mem_bytes));
        }
        let options = self.device_layout.options()?;
        self.vcpu.validate()?;
        self.vm.validate()?;
        self.devices
            .validate(&options)
            .map_err(|e| MachineStateError::Devices(e.to_string()))?;
        Ok(())
    }
}
