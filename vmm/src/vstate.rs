//! Capturing and restoring KVM's vCPU and VM state (registers, FPU, MSRs, LAPIC, irqchips, PIT,
//! clock) as the plain data of `snapshot::vm_state`.

use kvm_bindings::{
    kvm_irqchip, kvm_msr_entry, Msrs, Xsave, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Cap, Kvm, SyncReg, VcpuFd, VmFd};
use snapshot::vm_state::{snapshot_msr_indices, IrqchipState, MsrEntry, VcpuState, VmState};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum VstateError {
    #[error("KVM {what} failed: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("KVM returned {got} of {wanted} MSRs")]
    PartialMsrs { got: usize, wanted: usize },
    #[error("the saved XSAVE area is {saved} bytes but this KVM uses {current}")]
    XsaveSize { saved: usize, current: usize },
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VstateError {
    move |source| VstateError::Kvm { what, source }
}

/// Facts about this KVM that capture and restore need, probed once per VM.
#[derive(Debug, Clone)]
pub struct VcpuStateLayout {
    /// MSRs in the snapshot set that this KVM can both read and write.
    pub msr_indices: Vec<u32>,
    /// Size of the XSAVE area in bytes (KVM_CAP_XSAVE2, at least 4096).
    pub xsave_bytes: usize,
}

impl VcpuStateLayout {
    pub fn probe(kvm: &Kvm, vm_fd: &VmFd, vcpu: &VcpuFd) -> Result<Self, VstateError> {
        let supported = kvm
            .get_msr_index_list()
            .map_err(kvm_err("GET_MSR_INDEX_LIST"))?;
        let supported = supported.as_slice();
        // Keep only MSRs KVM lists and really lets us read (some are listed but refuse reads
        // depending on CPUID).
        let msr_indices = snapshot_msr_indices()
            .into_iter()
            .filter(|index| supported.contains(index))
            .filter(|index| read_msrs(vcpu, &[*index]).is_ok_and(|v| v.len() == 1))
            .collect();
        let xsave_bytes = (vm_fd.check_extension_int(Cap::Xsave2).max(0) as usize).max(4096);
        Ok(VcpuStateLayout {
            msr_indices,
            xsave_bytes,
        })
    }
}

fn read_msrs(vcpu: &VcpuFd, indices: &[u32]) -> Result<Vec<MsrEntry>, VstateError> {
    let entries: Vec<kvm_msr_entry> = indices
        .iter()
        .map(|&index| kvm_msr_entry {
            index,
            ..Default::default()
        })
        .collect();
    let mut msrs = Msrs::from_entries(&entries).map_err(|_| VstateError::PartialMsrs {
        got: 0,
        wanted: indices.len(),
    })?;
    let got = vcpu.get_msrs(&mut msrs).map_err(kvm_err("GET_MSRS"))?;
    if got != indices.len() {
        return Err(VstateError::PartialMsrs {
            got,
            wanted: indices.len(),
        });
    }
    Ok(msrs
        .as_slice()
        .iter()
        .map(|e| MsrEntry {
            index: e.index,
            value: e.data,
        })
        .collect())
}

fn xsave_entries(bytes: usize) -> usize {
    bytes.saturating_sub(4096).div_ceil(4)
}

/// Reads every piece of vCPU state. The vCPU must not be in the middle of an exit whose
/// completion is still pending (see `complete_pending_exit`).
///
/// MP_STATE is read first: KVM_GET_MP_STATE accepts pending APIC events (INIT/SIPI) into the
/// vCPU, which changes what LAPIC and VCPU_EVENTS then report (Firecracker and Cloud Hypervisor
/// read it first for the same reason).
pub fn capture_vcpu(
    vcpu: &VcpuFd,
    vcpu_id: u32,
    layout: &VcpuStateLayout,
) -> Result<VcpuState, VstateError> {
    let mut state = VcpuState::new(vcpu_id);
    state.mp_state = vcpu.get_mp_state().map_err(kvm_err("GET_MP_STATE"))?;
    state.cpuid = vcpu
        .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("GET_CPUID2"))?
        .as_slice()
        .to_vec();
    state.regs = vcpu.get_regs().map_err(kvm_err("GET_REGS"))?;
    state.sregs = vcpu.get_sregs().map_err(kvm_err("GET_SREGS"))?;
    let mut xsave =
        Xsave::new(xsave_entries(layout.xsave_bytes)).map_err(|_| VstateError::XsaveSize {
            saved: layout.xsave_bytes,
            current: layout.xsave_bytes,
        })?;
    // SAFETY: `xsave` was sized from KVM_CAP_XSAVE2, which is what KVM_GET_XSAVE2 writes.
    unsafe { vcpu.get_xsave2(&mut xsave) }.map_err(kvm_err("GET_XSAVE2"))?;
    let words: Vec<u32> = xsave
        .as_fam_struct_ref()
        .xsave
        .region
        .iter()
        .copied()
        .chain(xsave.as_slice().iter().copied())
        .collect();
    state.set_xsave_words(&words[..layout.xsave_bytes / 4]);
    state.xcrs = vcpu.get_xcrs().map_err(kvm_err("GET_XCRS"))?;
    state.msrs = read_msrs(vcpu, &layout.msr_indices)?;
    state.set_lapic(&vcpu.get_lapic().map_err(kvm_err("GET_LAPIC"))?);
    state.vcpu_events = vcpu.get_vcpu_events().map_err(kvm_err("GET_VCPU_EVENTS"))?;
    state.debug_regs = vcpu.get_debug_regs().map_err(kvm_err("GET_DEBUGREGS"))?;
    state.tsc_khz = vcpu.get_tsc_khz().ok();
    Ok(state)
}

/// Writes every piece of vCPU state back but CPUID.
///
/// KVM's ordering rules, applied here:
/// - CPUID is not set here: KVM refuses a different CPUID once the vCPU has run, so it is set
///   once, when the vCPU is created (`vm_setup::create_vcpu`), before everything below, which KVM
///   checks against it (CR4/EFER bits in SREGS, XSAVE features, MSRs).
/// - REGS and SREGS first: SREGS sets EFER, CR0/CR4 and the APIC base, which the checks of
///   later calls depend on.
/// - XSAVE before XCRS is fine: KVM validates XSAVE against the CPUID-allowed features, not XCR0.
/// - LAPIC after SREGS (the APIC base MSR travels in SREGS) and before MSRS, because writing
///   IA32_TSC_DEADLINE needs the LAPIC timer already in TSC-deadline mode.
/// - MP_STATE before VCPU_EVENTS: a change of MP state can clear pending events, so the events
///   go last but for the debug registers.
pub fn restore_vcpu_full(
    vcpu: &VcpuFd,
    state: &VcpuState,
    layout: &VcpuStateLayout,
) -> Result<(), VstateError> {
    vcpu.set_regs(&state.regs).map_err(kvm_err("SET_REGS"))?;
    vcpu.set_sregs(&state.sregs).map_err(kvm_err("SET_SREGS"))?;
    restore_xsave(vcpu, state, layout)?;
    vcpu.set_xcrs(&state.xcrs).map_err(kvm_err("SET_XCRS"))?;
    vcpu.set_lapic(&state.lapic_state())
        .map_err(kvm_err("SET_LAPIC"))?;
    let entries: Vec<kvm_msr_entry> = state
        .msrs
        .iter()
        .map(|m| kvm_msr_entry {
            index: m.index,
            data: m.value,
            ..Default::default()
        })
        .collect();
    let msrs = Msrs::from_entries(&entries).map_err(|_| VstateError::PartialMsrs {
        got: 0,
        wanted: entries.len(),
    })?;
    let written = vcpu.set_msrs(&msrs).map_err(kvm_err("SET_MSRS"))?;
    if written != entries.len() {
        return Err(VstateError::PartialMsrs {
            got: written,
            wanted: entries.len(),
        });
    }
    vcpu.set_mp_state(state.mp_state)
        .map_err(kvm_err("SET_MP_STATE"))?;
    vcpu.set_vcpu_events(&state.vcpu_events)
        .map_err(kvm_err("SET_VCPU_EVENTS"))?;
    vcpu.set_debug_regs(&state.debug_regs)
        .map_err(kvm_err("SET_DEBUGREGS"))?;
    Ok(())
}

fn restore_xsave(
    vcpu: &VcpuFd,
    state: &VcpuState,
    layout: &VcpuStateLayout,
) -> Result<(), VstateError> {
    let xsave = prepare_xsave(state, layout)?;
    set_xsave(vcpu, &xsave)
}

fn set_xsave(vcpu: &VcpuFd, xsave: &Xsave) -> Result<(), VstateError> {
    // SAFETY: `xsave` was built by `prepare_xsave` with the full XSAVE2-sized area KVM expects.
    unsafe { vcpu.set_xsave2(xsave) }.map_err(kvm_err("SET_XSAVE2"))
}

/// The saved XSAVE area in the form KVM_SET_XSAVE2 takes.
pub fn prepare_xsave(state: &VcpuState, layout: &VcpuStateLayout) -> Result<Xsave, VstateError> {
    if state.xsave.len() != layout.xsave_bytes {
        return Err(VstateError::XsaveSize {
            saved: state.xsave.len(),
            current: layout.xsave_bytes,
        });
    }
    let words = state.xsave_words();
    let mut xsave =
        Xsave::new(xsave_entries(layout.xsave_bytes)).map_err(|_| VstateError::XsaveSize {
            saved: state.xsave.len(),
            current: layout.xsave_bytes,
        })?;
    // SAFETY: the FAM struct has room for `xsave_entries` words after the 4 KiB legacy region,
    // and `words` has exactly 4096/4 + that many (checked against layout above).
    unsafe {
        let region = &mut xsave.as_mut_fam_struct().xsave.region;
        let region_len = region.len();
        region.copy_from_slice(&words[..region_len]);
        let extra = xsave.as_mut_slice();
        let extra_len = extra.len();
        extra.copy_from_slice(&words[1024..1024 + extra_len]);
    }
    Ok(xsave)
}

/// The fast restore: registers, segment/control registers and events go in through the shared
/// `kvm_run` page (KVM_CAP_SYNC_REGS) and are applied on the next KVM_RUN, for ~1 us instead of
/// three ioctls at ~5 us each here; the FPU/SSE state still needs its own ioctl because user code
/// changes it freely.
pub fn restore_vcpu_fast(
    vcpu: &mut VcpuFd,
    state: &VcpuState,
    xsave: &Xsave,
) -> Result<(), VstateError> {
    set_xsave(vcpu, xsave)?;
    let sync = vcpu.sync_regs_mut();
    sync.regs = state.regs;
    sync.sregs = state.sregs;
    sync.events = state.vcpu_events;
    vcpu.set_sync_dirty_reg(SyncReg::Register);
    vcpu.set_sync_dirty_reg(SyncReg::SystemRegister);
    vcpu.set_sync_dirty_reg(SyncReg::VcpuEvents);
    Ok(())
}

/// LAPIC register offsets the fast restore looks at.
const LAPIC_LVT_TIMER: usize = 0x320;
const LAPIC_TIMER_INITIAL_COUNT: usize = 0x380;
/// LVT mask bit, and the timer mode field (0 one-shot, 1 periodic, 2 TSC deadline).
const LVT_MASKED: u32 = 1 << 16;
const LVT_TIMER_MODE_SHIFT: u32 = 17;
const LVT_TIMER_TSC_DEADLINE: u32 = 2;

/// The LAPIC part of the fast restore: a guest kernel may have run during a round that ends at
/// CPL3 (timer interrupts, system calls) and left its LAPIC changed: pending or in-service
/// interrupts, a reprogrammed timer. One GET_LAPIC tells (the current-count register moves with
/// time and is not compared); the snapshot's LAPIC is then set again, and so it is whenever the
/// snapshot's timer is armed, whose countdown SET_LAPIC starts again from the snapshot's initial
/// count (a TSC-deadline timer's deadline is an MSR, written after the LAPIC as KVM requires).
/// Returns whether the LAPIC was set.
pub fn restore_lapic_if_changed(vcpu: &VcpuFd, state: &VcpuState) -> Result<bool, VstateError> {
    let lvtt = lapic_word(&state.lapic, LAPIC_LVT_TIMER);
    let mode = (lvtt >> LVT_TIMER_MODE_SHIFT) & 3;
    let deadline_mode = lvtt & LVT_MASKED == 0 && mode == LVT_TIMER_TSC_DEADLINE;
    let armed = deadline_mode
        || (lvtt & LVT_MASKED == 0 && lapic_word(&state.lapic, LAPIC_TIMER_INITIAL_COUNT) != 0);
    if !armed {
        let now = vcpu.get_lapic().map_err(kvm_err("GET_LAPIC"))?;
        let now = now.regs.map(|byte| byte as u8);
        if lapic_differences(&state.lapic, &now).next().is_none() {
            return Ok(false);
        }
    }
    vcpu.set_lapic(&state.lapic_state())
        .map_err(kvm_err("SET_LAPIC"))?;
    if deadline_mode {
        let deadline = state
            .msrs
            .iter()
            .find(|m| m.index == snapshot::vm_state::msr::IA32_TSC_DEADLINE)
            .map_or(0, |m| m.value);
        let msrs = Msrs::from_entries(&[kvm_msr_entry {
            index: snapshot::vm_state::msr::IA32_TSC_DEADLINE,
            data: deadline,
            ..Default::default()
        }])
        .map_err(|_| VstateError::PartialMsrs { got: 0, wanted: 1 })?;
        vcpu.set_msrs(&msrs).map_err(kvm_err("SET_MSRS"))?;
    }
    Ok(true)
}

fn get_chip(vm_fd: &VmFd, chip_id: u32) -> Result<IrqchipState, VstateError> {
    Ok(IrqchipState::from_kvm(&get_raw_chip(vm_fd, chip_id)?))
}

fn get_raw_chip(vm_fd: &VmFd, chip_id: u32) -> Result<kvm_irqchip, VstateError> {
    let mut chip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    vm_fd
        .get_irqchip(&mut chip)
        .map_err(kvm_err("GET_IRQCHIP"))?;
    Ok(chip)
}

/// The VM-wide state: interrupt controllers, PIT and clock.
pub fn capture_vm_wide(vm_fd: &VmFd) -> Result<VmState, VstateError> {
    Ok(VmState {
        pic_master: get_chip(vm_fd, KVM_IRQCHIP_PIC_MASTER)?,
        pic_slave: get_chip(vm_fd, KVM_IRQCHIP_PIC_SLAVE)?,
        ioapic: get_chip(vm_fd, KVM_IRQCHIP_IOAPIC)?,
        pit: vm_fd.get_pit2().map_err(kvm_err("GET_PIT2"))?,
        clock: vm_fd.get_clock().map_err(kvm_err("GET_CLOCK"))?,
    })
}

/// Puts the interrupt controllers and PIT back; with `skip_unchanged` (the fast path) a PIC or
/// IOAPIC still in its saved state is left alone: reading it is a copy, while setting it is not
/// (an IOAPIC write makes the vCPU rescan its interrupt routes at the next entry), and a round
/// rarely changes either controller. Setting equal values would change nothing the guest can see.
///
/// Ordering: before the vCPU's LAPIC. Setting an IOAPIC makes KVM re-inject the lines its state
/// holds, straight into the LAPIC's IRR, and a re-armed PIT may fire at once; the LAPIC written
/// afterwards is then the snapshot's exactly.
pub fn restore_interrupt_controllers(
    vm_fd: &VmFd,
    state: &VmState,
    skip_unchanged: bool,
) -> Result<(), VstateError> {
    for chip in [&state.pic_master, &state.pic_slave, &state.ioapic] {
        if skip_unchanged && chip.is_kvm(&get_raw_chip(vm_fd, chip.chip_id)?) {
            continue;
        }
        vm_fd
            .set_irqchip(&chip.to_kvm())
            .map_err(kvm_err("SET_IRQCHIP"))?;
    }
    vm_fd.set_pit2(&state.pit).map_err(kvm_err("SET_PIT2"))?;
    Ok(())
}

/// Puts the VM's clock back (kvmclock derives from it), after the vCPU's TSC.
pub fn restore_clock(vm_fd: &VmFd, state: &VmState) -> Result<(), VstateError> {
    let mut clock = state.clock;
    // Only the clock value is restored; the flags KVM reports (e.g. TSC_STABLE) are not inputs.
    clock.flags = 0;
    vm_fd.set_clock(&clock).map_err(kvm_err("SET_CLOCK"))?;
    Ok(())
}

/// Enables KVM_CAP_SYNC_REGS output so every exit leaves REGS/SREGS/EVENTS in `kvm_run`.
pub fn enable_sync_regs(vcpu: &mut VcpuFd) {
    vcpu.set_sync_valid_reg(SyncReg::Register);
    vcpu.set_sync_valid_reg(SyncReg::SystemRegister);
    vcpu.set_sync_valid_reg(SyncReg::VcpuEvents);
}

/// LAPIC registers that count on their own (timer current count) and so differ with time.
const LAPIC_TIMER_CURRENT_COUNT: usize = 0x390;

/// The 32-bit LAPIC register at `offset` of a register page (0 past its end).
fn lapic_word(regs: &[u8], offset: usize) -> u32 {
    regs.get(offset..offset + 4)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

/// The registers (offset, then, now) in which two LAPIC register pages differ; the timer's
/// current count moves with time and is left out.
fn lapic_differences<'a>(
    then: &'a [u8],
    now: &'a [u8],
) -> impl Iterator<Item = (usize, u32, u32)> + 'a {
    (0..then.len().max(now.len()))
        .step_by(4)
        .filter(|&offset| offset != LAPIC_TIMER_CURRENT_COUNT)
        .map(move |offset| (offset, lapic_word(then, offset), lapic_word(now, offset)))
        .filter(|(_, a, b)| a != b)
}

/// The parts of `now` that differ from `saved`, by name. Values that move with time alone (the
/// TSC, the LAPIC timer's current count) are not compared: a restore does not stop the clock.
pub fn vcpu_differences(saved: &VcpuState, now: &VcpuState) -> Vec<String> {
    let mut differences = Vec::new();
    let mut check = |name: &str, same: bool| {
        if !same {
            differences.push(name.to_string());
        }
    };
    check("general registers", saved.regs == now.regs);
    check("segment/control registers", saved.sregs == now.sregs);
    // XSTATE_BV (bytes 0x200..0x208) says which components hold non-initial values; KVM may
    // report a component restored from its initial values as present. The data bytes decide.
    let xstate_bv = 0x200..0x208;
    let differing: Vec<String> = saved
        .xsave
        .iter()
        .zip(&now.xsave)
        .enumerate()
        .filter(|(i, (a, b))| a != b && !xstate_bv.contains(i))
        .take(8)
        .map(|(i, (a, b))| format!("{i:#x}: {a:#04x} -> {b:#04x}"))
        .collect();
    if !differing.is_empty() || saved.xsave.len() != now.xsave.len() {
        check(
            &format!("XSAVE area (bytes {})", differing.join(", ")),
            false,
        );
    }
    check("XCRs", saved.xcrs == now.xcrs);
    check("vCPU events", saved.vcpu_events == now.vcpu_events);
    check("MP state", saved.mp_state == now.mp_state);
    check("debug registers", saved.debug_regs == now.debug_regs);
    let differing: Vec<String> = lapic_differences(&saved.lapic, &now.lapic)
        .take(8)
        .map(|(offset, a, b)| format!("{offset:#05x}: {a:#x} -> {b:#x}"))
        .collect();
    if !differing.is_empty() || saved.lapic.len() != now.lapic.len() {
        check(
            &format!("LAPIC (registers {})", differing.join(", ")),
            false,
        );
    }
    for (a, b) in saved.msrs.iter().zip(&now.msrs) {
        let moves_with_time = matches!(
            a.index,
            snapshot::vm_state::msr::IA32_TSC | snapshot::vm_state::msr::IA32_TSC_ADJUST
        );
        if !moves_with_time && (a.index != b.index || a.value != b.value) {
            check(&format!("MSR {:#x}", a.index), false);
        }
    }
    differences
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lapic_differences_name_registers_and_ignore_the_current_count() {
        let then = vec![0u8; 1024];
        let mut now = then.clone();
        now[LAPIC_TIMER_CURRENT_COUNT] = 0x55;
        assert_eq!(lapic_differences(&then, &now).count(), 0);
        now[0x212] = 0x01; // IRR of vectors 32-63 at 0x210: vector 0x30 is its bit 16
        now[LAPIC_TIMER_INITIAL_COUNT] = 0x76;
        let found: Vec<_> = lapic_differences(&then, &now).collect();
        assert_eq!(found, vec![(0x210, 0, 0x10000), (0x380, 0, 0x76)]);
    }
}
