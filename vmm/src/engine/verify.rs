//! `--verify-restores`: after a restore, compare RAM, vCPU state and device state with the
//! snapshot, byte for byte (values that move with time alone excepted, see `vcpu_differences`).

use snapshot::vm_state::VcpuState;
use snapshot::{SnapshotMemory, PAGE_SIZE};
use thiserror::Error;

use super::ram_slots::RamSlots;
use crate::device_manager::DeviceStates;
use crate::vstate::vcpu_differences;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("guest RAM differs from the snapshot at guest-physical {0:#x}")]
    Ram(u64),
    #[error("the snapshot memory is smaller than guest RAM")]
    ShortMemory,
    #[error("vCPU/device state differs from the snapshot in: {}", .0.join(", "))]
    State(Vec<String>),
}

/// Compares live RAM with the snapshot's memory.
pub fn verify_ram(slots: &RamSlots, memory: &SnapshotMemory) -> Result<(), VerifyError> {
    let saved = memory.as_slice();
    for (guest_addr, live, offset) in slots.spans() {
        let snap = saved
            .get(offset..offset + live.len())
            .ok_or(VerifyError::ShortMemory)?;
        if live != snap {
            let page = live
                .chunks(PAGE_SIZE)
                .zip(snap.chunks(PAGE_SIZE))
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            return Err(VerifyError::Ram(guest_addr + (page * PAGE_SIZE) as u64));
        }
    }
    Ok(())
}

/// Compares the vCPU and device state read back after a restore with the snapshot's.
pub fn verify_state(
    saved_vcpu: &VcpuState,
    now_vcpu: &VcpuState,
    saved_devices: &DeviceStates,
    now_devices: &DeviceStates,
) -> Result<(), VerifyError> {
    let mut differences = vcpu_differences(saved_vcpu, now_vcpu);
    if saved_devices != now_devices {
        differences.push("device state".to_string());
    }
    if differences.is_empty() {
        Ok(())
    } else {
        Err(VerifyError::State(differences))
    }
}
