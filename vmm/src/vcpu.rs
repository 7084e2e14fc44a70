//! The vCPU's exits and what each one means.
//!
//! `handle_exit` turns one KVM exit into a decision using only the device bus, so it is unit
//! tested with synthetic exits; the loop around KVM_RUN is `Machine::run`.

use devices::snapshot_device::SnapshotCommand;
use devices::DeviceAction;
use kvm_bindings::kvm_run;
use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::event::VmEvent;
use crate::memory::GuestMemory;

/// Port and MMIO dispatch as the vCPU loop sees it.
pub trait IoBus {
    fn pio_read(&mut self, port: u16, data: &mut [u8]);
    fn pio_write(&mut self, port: u16, data: &[u8]) -> DeviceAction;
    fn mmio_read(&mut self, addr: u64, data: &mut [u8]);
    fn mmio_write(&mut self, addr: u64, data: &[u8]) -> DeviceAction;
}

/// What the run loop does after one exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitDecision {
    Continue,
    /// The guest stopped in a way the caller must hear about. A triple fault's RIP is filled in
    /// by the loop.
    Stop(VmEvent),
    /// KVM reported an internal error; the loop adds the vCPU's RIP and instruction bytes.
    InternalError {
        suberror: u32,
    },
    /// A snapshot-device command for the VM to carry out.
    Snapshot(SnapshotCommand),
    /// KVM's dirty ring filled up.
    DirtyRingFull,
    /// An exit snapvmm has no handler for: a VMM limitation, reported as an error.
    Unhandled(String),
}

const KVM_SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const KVM_EXIT_DIRTY_RING_FULL: u32 = kvm_bindings::KVM_EXIT_DIRTY_RING_FULL;
const KVM_SYSTEM_EVENT_RESET: u32 = 2;
const KVM_SYSTEM_EVENT_CRASH: u32 = 3;

fn device_decision(action: DeviceAction) -> ExitDecision {
    match action {
        DeviceAction::None => ExitDecision::Continue,
        DeviceAction::Reset => ExitDecision::Stop(VmEvent::Reset),
        DeviceAction::DebugExit(code) => ExitDecision::Stop(VmEvent::DebugExit { code }),
        DeviceAction::PowerOff => ExitDecision::Stop(VmEvent::PowerOff),
        // The device manager follows BAR moves before the action gets here.
        DeviceAction::BarsRelocated(_) => ExitDecision::Continue,
        DeviceAction::Snapshot(command) => ExitDecision::Snapshot(command),
    }
}

/// Decides what one KVM exit means. Never panics, whatever the guest did.
///
/// `io_size` is the size of one port access (KVM_EXIT_IO's `size`): a string instruction with a
/// repeat count (`rep insb`, `rep outsw`) exits once with `count` accesses in `data`, and each is
/// a separate access to the device, in order.
pub fn handle_exit(exit: VcpuExit, io_size: usize, bus: &mut dyn IoBus) -> ExitDecision {
    let io_size = io_size.max(1);
    match exit {
        VcpuExit::IoIn(port, data) => {
            for access in data.chunks_mut(io_size) {
                bus.pio_read(port, access);
            }
            ExitDecision::Continue
        }
        VcpuExit::IoOut(port, data) => {
            for access in data.chunks(io_size) {
                let decision = device_decision(bus.pio_write(port, access));
                if decision != ExitDecision::Continue {
                    return decision;
                }
            }
            ExitDecision::Continue
        }
        VcpuExit::MmioRead(addr, data) => {
            bus.mmio_read(addr, data);
            ExitDecision::Continue
        }
        VcpuExit::MmioWrite(addr, data) => device_decision(bus.mmio_write(addr, data)),
        // With the in-kernel LAPIC a halted vCPU waits in KVM; a HLT exit only means "run again".
        VcpuExit::Hlt | VcpuExit::IrqWindowOpen | VcpuExit::Intr => ExitDecision::Continue,
        VcpuExit::Shutdown => ExitDecision::Stop(VmEvent::TripleFault { rip: 0 }),
        VcpuExit::SystemEvent(kind, _) => match kind {
            KVM_SYSTEM_EVENT_SHUTDOWN => ExitDecision::Stop(VmEvent::PowerOff),
            KVM_SYSTEM_EVENT_RESET => ExitDecision::Stop(VmEvent::Reset),
            KVM_SYSTEM_EVENT_CRASH => ExitDecision::Unhandled("guest crash event".into()),
            other => ExitDecision::Unhandled(format!("system event {other}")),
        },
        VcpuExit::FailEntry(reason, _cpu) => ExitDecision::Stop(VmEvent::EntryFailed { reason }),
        VcpuExit::InternalError => ExitDecision::InternalError { suberror: 0 },
        VcpuExit::Unsupported(KVM_EXIT_DIRTY_RING_FULL) => ExitDecision::DirtyRingFull,
        other => ExitDecision::Unhandled(format!("{other:?}")),
    }
}

/// The size of one port access of the KVM_EXIT_IO in `run`.
///
/// # Safety
/// `run` must point to the live `kvm_run` of a vCPU whose last exit was KVM_EXIT_IO.
pub unsafe fn io_access_size(run: *const kvm_run) -> usize {
    // SAFETY: per the contract, `io` is the active union member; a plain read of one byte.
    unsafe { std::ptr::addr_of!((*run).__bindgen_anon_1.io.size).read() as usize }
}

const KVM_INTERNAL_ERROR_EMULATION: u32 = 1;

/// Reads KVM's internal-error details and the bytes at the guest's RIP.
pub fn describe_internal_error(vcpu: &mut VcpuFd, memory: &GuestMemory) -> VmEvent {
    use vm_memory::{Bytes, GuestAddress};
    let read_guest = |addr: u64, buf: &mut [u8]| memory.read_slice(buf, GuestAddress(addr)).is_ok();
    // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is the active member.
    let suberror = unsafe { vcpu.get_kvm_run().__bindgen_anon_1.internal.suberror };
    let rip = vcpu.get_regs().map(|r| r.rip).unwrap_or(0);
    if suberror != KVM_INTERNAL_ERROR_EMULATION {
        return VmEvent::InternalError { suberror, rip };
    }
    let linear = vcpu
        .get_sregs()
        .map(|s| s.cs.base.wrapping_add(rip))
        .unwrap_or(rip);
    let mut instruction = vec![0u8; 15];
    let readable = vcpu
        .translate_gva(linear)
        .ok()
        .filter(|t| t.valid != 0)
        .is_some_and(|t| read_guest(t.physical_address, &mut instruction));
    if !readable {
        instruction.clear();
    }
    VmEvent::EmulationFailure { rip, instruction }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct RecordingBus {
        writes: Vec<(u16, Vec<u8>)>,
        mmio_writes: Vec<(u64, Vec<u8>)>,
        action: Option<DeviceAction>,
    }

    impl IoBus for RecordingBus {
        fn pio_read(&mut self, port: u16, data: &mut [u8]) {
            data.fill(port as u8);
        }
        fn pio_write(&mut self, port: u16, data: &[u8]) -> DeviceAction {
            self.writes.push((port, data.to_vec()));
            self.action.unwrap_or(DeviceAction::None)
        }
        fn mmio_read(&mut self, _addr: u64, data: &mut [u8]) {
            data.fill(0xab);
        }
        fn mmio_write(&mut self, addr: u64, data: &[u8]) -> DeviceAction {
            self.mmio_writes.push((addr, data.to_vec()));
            DeviceAction::None
        }
    }

    #[test]
    fn port_io_reaches_the_bus() {
        let mut bus = RecordingBus::default();
        assert_eq!(
            handle_exit(VcpuExit::IoOut(0x3f8, b"h"), 1, &mut bus),
            ExitDecision::Continue
        );
        assert_eq!(bus.writes, vec![(0x3f8, b"h".to_vec())]);
        let mut data = [0u8; 2];
        assert_eq!(
            handle_exit(VcpuExit::IoIn(0x71, &mut data), 1, &mut bus),
            ExitDecision::Continue
        );
        assert_eq!(data, [0x71, 0x71]);
        let mut data = [0u8; 4];
        handle_exit(VcpuExit::MmioRead(0xc000_0000, &mut data), 1, &mut bus);
        assert_eq!(data, [0xab; 4]);
        handle_exit(VcpuExit::MmioWrite(0xc000_0000, &[1, 0, 0, 0]), 1, &mut bus);
        assert_eq!(bus.mmio_writes.len(), 1);
    }

    #[test]
    fn device_actions_stop_the_guest() {
        let mut bus = RecordingBus {
            action: Some(DeviceAction::DebugExit(7)),
            ..Default::default()
        };
        assert_eq!(
            handle_exit(VcpuExit::IoOut(0xf4, &[7]), 1, &mut bus),
            ExitDecision::Stop(VmEvent::DebugExit { code: 7 })
        );
        bus.action = Some(DeviceAction::Reset);
        assert_eq!(
            handle_exit(VcpuExit::IoOut(0x64, &[0xfe]), 1, &mut bus),
            ExitDecision::Stop(VmEvent::Reset)
        );
        bus.action = Some(DeviceAction::PowerOff);
        let decision = handle_exit(VcpuExit::IoOut(0x604, &[0x01, 0x34]), 1, &mut bus);
        assert_eq!(decision, ExitDecision::Stop(VmEvent::PowerOff));
    }

    #[test]
    fn guest_failures_map_to_distinct_reasons() {
        let mut bus = RecordingBus::default();
        assert_eq!(
            handle_exit(VcpuExit::Shutdown, 1, &mut bus),
            ExitDecision::Stop(VmEvent::TripleFault { rip: 0 })
        );
        assert_eq!(
            handle_exit(
                VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN, &[]),
                1,
                &mut bus
            ),
            ExitDecision::Stop(VmEvent::PowerOff)
        );
        assert_eq!(
            handle_exit(
                VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_RESET, &[]),
                1,
                &mut bus
            ),
            ExitDecision::Stop(VmEvent::Reset)
        );
        assert_eq!(
            handle_exit(VcpuExit::FailEntry(0x21, 0), 1, &mut bus),
            ExitDecision::Stop(VmEvent::EntryFailed { reason: 0x21 })
        );
        assert!(matches!(
            handle_exit(VcpuExit::InternalError, 1, &mut bus),
            ExitDecision::InternalError { .. }
        ));
        assert!(matches!(
            handle_exit(VcpuExit::Unknown, 1, &mut bus),
            ExitDecision::Unhandled(_)
        ));
        assert_eq!(
            handle_exit(VcpuExit::Hlt, 1, &mut bus),
            ExitDecision::Continue
        );
    }

    /// A register whose every read returns the next value of a sequence, like a FIFO.
    struct SequenceBus {
        next: u8,
        writes: Vec<Vec<u8>>,
    }

    impl IoBus for SequenceBus {
        fn pio_read(&mut self, _port: u16, data: &mut [u8]) {
            data.fill(self.next);
            self.next = self.next.wrapping_add(1);
        }
        fn pio_write(&mut self, _port: u16, data: &[u8]) -> DeviceAction {
            self.writes.push(data.to_vec());
            DeviceAction::None
        }
        fn mmio_read(&mut self, _addr: u64, _data: &mut [u8]) {}
        fn mmio_write(&mut self, _addr: u64, _data: &[u8]) -> DeviceAction {
            DeviceAction::None
        }
    }

    #[test]
    fn repeated_port_accesses_reach_the_device_one_by_one() {
        let mut bus = SequenceBus {
            next: 0x5a,
            writes: Vec::new(),
        };
        // `rep insw` with a count of 4: four 2-byte reads, in order.
        let mut data = [0u8; 8];
        handle_exit(VcpuExit::IoIn(0x3ff, &mut data), 2, &mut bus);
        assert_eq!(data, [0x5a, 0x5a, 0x5b, 0x5b, 0x5c, 0x5c, 0x5d, 0x5d]);
        handle_exit(VcpuExit::IoOut(0x3f8, &[1, 2, 3]), 1, &mut bus);
        assert_eq!(bus.writes, vec![vec![1], vec![2], vec![3]]);
    }
}
