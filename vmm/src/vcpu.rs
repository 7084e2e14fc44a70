//! The vCPU run loop and the decoding of every way a guest can stop.
//!
//! `handle_exit` turns one KVM exit into a decision using only the device bus, so it is unit
//! tested with synthetic exits. `run_vcpu` is the small state machine around KVM_RUN: it runs until
//! `handle_exit` says stop, or a kick (timeout, Ctrl-C) makes KVM_RUN return EINTR.

use std::cell::Cell;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

use devices::snapshot_device::SnapshotCommand;
use devices::DeviceAction;
use kvm_bindings::kvm_run;
use kvm_ioctls::{VcpuExit, VcpuFd};

/// Port and MMIO dispatch as the vCPU loop sees it.
pub trait IoBus {
    fn pio_read(&mut self, port: u16, data: &mut [u8]);
    fn pio_write(&mut self, port: u16, data: &[u8]) -> DeviceAction;
    fn mmio_read(&mut self, addr: u64, data: &mut [u8]);
    fn mmio_write(&mut self, addr: u64, data: &[u8]) -> DeviceAction;
}

/// What the run loop cannot decide from the exit alone: work that needs the vCPU or the VM.
pub trait VcpuHooks: IoBus {
    /// The guest wrote a command to the snapshot device; the vCPU sits in that MMIO exit.
    fn snapshot_command(
        &mut self,
        vcpu: &mut VcpuFd,
        command: SnapshotCommand,
    ) -> Result<(), StopReason>;
    /// KVM's dirty ring is full: harvest it before the guest may run on.
    fn dirty_ring_full(&mut self) -> Result<(), StopReason>;
}

/// Why the guest stopped. Each has its own exit status (see `docs/PLATFORM.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// The guest wrote `code` to the debug-exit port.
    DebugExit(u32),
    /// The guest powered off (ACPI S5 or KVM system event).
    PowerOff,
    /// The guest asked for a reset (i8042, or a KVM reset event).
    Reset,
    /// KVM_EXIT_SHUTDOWN: a triple fault.
    TripleFault { rip: u64 },
    /// KVM could not emulate an instruction.
    EmulationFailure { rip: u64, instruction: Vec<u8> },
    /// Any other KVM internal error.
    InternalError { suberror: u32, rip: u64 },
    /// VM entry failed (invalid guest state).
    FailEntry { reason: u64 },
    /// An exit snapvmm has no handler for.
    UnhandledExit(String),
    /// The guest ran past `--timeout`.
    Timeout,
    /// The user pressed Ctrl-C.
    Interrupted,
    /// KVM_RUN itself failed.
    KvmRunFailed(i32),
    /// A snapshot save or restore failed, or `--verify-restores` found a difference.
    Snapshot(String),
    /// `--max-restores` restores are done.
    RestoreLimit(u64),
}

impl StopReason {
    /// The snapvmm process exit status for this stop.
    pub fn exit_status(&self) -> u8 {
        match self {
            StopReason::DebugExit(code) => (*code).min(63) as u8,
            StopReason::PowerOff | StopReason::RestoreLimit(_) => 0,
            StopReason::Reset => 65,
            StopReason::TripleFault { .. } => 66,
            StopReason::EmulationFailure { .. } | StopReason::InternalError { .. } => 67,
            StopReason::FailEntry { .. } | StopReason::UnhandledExit(_) => 67,
            StopReason::Timeout => 68,
            StopReason::KvmRunFailed(_) => 69,
            StopReason::Snapshot(_) => 71,
            StopReason::Interrupted => 130,
        }
    }
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::DebugExit(code) => write!(
                f,
                "guest exited through the debug-exit port with code {code}"
            ),
            StopReason::PowerOff => write!(f, "guest powered off"),
            StopReason::Reset => write!(f, "guest requested a reset"),
            StopReason::TripleFault { rip } => write!(f, "guest triple-faulted (rip {rip:#x})"),
            StopReason::EmulationFailure { rip, instruction } => {
                write!(
                    f,
                    "KVM emulation failure at rip {rip:#x}, instruction bytes ["
                )?;
                for (i, byte) in instruction.iter().enumerate() {
                    write!(f, "{}{byte:02x}", if i > 0 { " " } else { "" })?;
                }
                write!(f, "]")
            }
            StopReason::InternalError { suberror, rip } => {
                write!(
                    f,
                    "KVM internal error (suberror {suberror}) at rip {rip:#x}"
                )
            }
            StopReason::FailEntry { reason } => write!(
                f,
                "KVM could not enter the guest (hardware reason {reason:#x})"
            ),
            StopReason::UnhandledExit(what) => write!(f, "unhandled KVM exit: {what}"),
            StopReason::Timeout => write!(f, "guest timed out"),
            StopReason::Interrupted => write!(f, "interrupted"),
            StopReason::Snapshot(why) => write!(f, "snapshot failure: {why}"),
            StopReason::RestoreLimit(n) => write!(f, "stopped after {n} restores (--max-restores)"),
            StopReason::KvmRunFailed(errno) => {
                write!(
                    f,
                    "KVM_RUN failed: {}",
                    std::io::Error::from_raw_os_error(*errno)
                )
            }
        }
    }
}

/// What the run loop does after one exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitDecision {
    Continue,
    Stop(StopReason),
    /// KVM reported an internal error; the loop adds the vCPU's RIP and instruction bytes.
    InternalError {
        suberror: u32,
    },
    /// A snapshot-device command for the VM to carry out.
    Snapshot(SnapshotCommand),
    /// KVM's dirty ring filled up.
    DirtyRingFull,
}

const KVM_SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const KVM_EXIT_DIRTY_RING_FULL: u32 = kvm_bindings::KVM_EXIT_DIRTY_RING_FULL;
const KVM_SYSTEM_EVENT_RESET: u32 = 2;
const KVM_SYSTEM_EVENT_CRASH: u32 = 3;

fn device_decision(action: DeviceAction) -> ExitDecision {
    match action {
        DeviceAction::None => ExitDecision::Continue,
        DeviceAction::Reset => ExitDecision::Stop(StopReason::Reset),
        DeviceAction::DebugExit(code) => ExitDecision::Stop(StopReason::DebugExit(code)),
        DeviceAction::PowerOff => ExitDecision::Stop(StopReason::PowerOff),
        // The device manager follows BAR moves before the action gets here.
        DeviceAction::BarsRelocated(_) => ExitDecision::Continue,
        DeviceAction::Snapshot(command) => ExitDecision::Snapshot(command),
    }
}

/// Decides what one KVM exit means. Never panics, whatever the guest did.
pub fn handle_exit(exit: VcpuExit, bus: &mut dyn IoBus) -> ExitDecision {
    match exit {
        VcpuExit::IoIn(port, data) => {
            bus.pio_read(port, data);
            ExitDecision::Continue
        }
        VcpuExit::IoOut(port, data) => device_decision(bus.pio_write(port, data)),
        VcpuExit::MmioRead(addr, data) => {
            bus.mmio_read(addr, data);
            ExitDecision::Continue
        }
        VcpuExit::MmioWrite(addr, data) => device_decision(bus.mmio_write(addr, data)),
        // With the in-kernel LAPIC a halted vCPU waits in KVM; a HLT exit only means "run again".
        VcpuExit::Hlt | VcpuExit::IrqWindowOpen | VcpuExit::Intr => ExitDecision::Continue,
        VcpuExit::Shutdown => ExitDecision::Stop(StopReason::TripleFault { rip: 0 }),
        VcpuExit::SystemEvent(kind, _) => match kind {
            KVM_SYSTEM_EVENT_SHUTDOWN => ExitDecision::Stop(StopReason::PowerOff),
            KVM_SYSTEM_EVENT_RESET => ExitDecision::Stop(StopReason::Reset),
            KVM_SYSTEM_EVENT_CRASH => {
                ExitDecision::Stop(StopReason::UnhandledExit("guest crash event".into()))
            }
            other => ExitDecision::Stop(StopReason::UnhandledExit(format!("system event {other}"))),
        },
        VcpuExit::FailEntry(reason, _cpu) => ExitDecision::Stop(StopReason::FailEntry { reason }),
        VcpuExit::InternalError => ExitDecision::InternalError { suberror: 0 },
        VcpuExit::Unsupported(KVM_EXIT_DIRTY_RING_FULL) => ExitDecision::DirtyRingFull,
        other => ExitDecision::Stop(StopReason::UnhandledExit(format!("{other:?}"))),
    }
}

/// Set by signal handlers; read by the loop when KVM_RUN returns EINTR.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);
pub static TIMED_OUT: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// The `kvm_run` of the vCPU running on this thread, so a signal handler can make the next
    /// (or current) KVM_RUN return at once. This closes the race where a kick lands between the
    /// loop's flag check and its KVM_RUN call.
    static CURRENT_KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// Signal handler body for kicks and Ctrl-C: request an immediate exit from KVM_RUN.
pub fn request_immediate_exit() {
    let run = CURRENT_KVM_RUN.with(|cell| cell.get());
    if !run.is_null() {
        // SAFETY: the pointer is set by `run_vcpu` on this thread to its live vCPU's kvm_run
        // mapping and cleared before that vCPU can go away; a byte store is signal-safe.
        unsafe { std::ptr::write_volatile(&mut (*run).immediate_exit, 1) };
    }
}

const KVM_INTERNAL_ERROR_EMULATION: u32 = 1;

/// Runs the vCPU until the guest stops or a kick arrives.
pub fn run_vcpu(
    vcpu: &mut VcpuFd,
    hooks: &mut dyn VcpuHooks,
    read_guest: &dyn Fn(u64, &mut [u8]) -> bool,
) -> StopReason {
    CURRENT_KVM_RUN.with(|cell| cell.set(vcpu.get_kvm_run() as *mut kvm_run));
    let reason = loop {
        if let Some(reason) = pending_stop() {
            break reason;
        }
        match vcpu.run() {
            Ok(exit) => match handle_exit(exit, hooks) {
                ExitDecision::Continue => {}
                ExitDecision::Snapshot(command) => {
                    if let Err(reason) = hooks.snapshot_command(vcpu, command) {
                        break reason;
                    }
                }
                ExitDecision::DirtyRingFull => {
                    if let Err(reason) = hooks.dirty_ring_full() {
                        break reason;
                    }
                }
                ExitDecision::Stop(StopReason::TripleFault { .. }) => {
                    break StopReason::TripleFault {
                        rip: vcpu.get_regs().map(|r| r.rip).unwrap_or(0),
                    }
                }
                ExitDecision::Stop(reason) => break reason,
                ExitDecision::InternalError { .. } => {
                    break describe_internal_error(vcpu, read_guest)
                }
            },
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                vcpu.set_kvm_immediate_exit(0);
            }
            Err(e) => break StopReason::KvmRunFailed(e.errno()),
        }
    };
    CURRENT_KVM_RUN.with(|cell| cell.set(std::ptr::null_mut()));
    reason
}

fn pending_stop() -> Option<StopReason> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        Some(StopReason::Interrupted)
    } else if TIMED_OUT.load(Ordering::Relaxed) {
        Some(StopReason::Timeout)
    } else {
        None
    }
}

/// Reads KVM's internal-error details and the bytes at the guest's RIP.
fn describe_internal_error(
    vcpu: &mut VcpuFd,
    read_guest: &dyn Fn(u64, &mut [u8]) -> bool,
) -> StopReason {
    // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is the active member.
    let suberror = unsafe { vcpu.get_kvm_run().__bindgen_anon_1.internal.suberror };
    let rip = vcpu.get_regs().map(|r| r.rip).unwrap_or(0);
    if suberror != KVM_INTERNAL_ERROR_EMULATION {
        return StopReason::InternalError { suberror, rip };
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
    StopReason::EmulationFailure { rip, instruction }
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
            handle_exit(VcpuExit::IoOut(0x3f8, b"h"), &mut bus),
            ExitDecision::Continue
        );
        assert_eq!(bus.writes, vec![(0x3f8, b"h".to_vec())]);
        let mut data = [0u8; 2];
        assert_eq!(
            handle_exit(VcpuExit::IoIn(0x71, &mut data), &mut bus),
            ExitDecision::Continue
        );
        assert_eq!(data, [0x71, 0x71]);
        let mut data = [0u8; 4];
        handle_exit(VcpuExit::MmioRead(0xc000_0000, &mut data), &mut bus);
        assert_eq!(data, [0xab; 4]);
        handle_exit(VcpuExit::MmioWrite(0xc000_0000, &[1, 0, 0, 0]), &mut bus);
        assert_eq!(bus.mmio_writes.len(), 1);
    }

    #[test]
    fn device_actions_stop_the_guest() {
        let mut bus = RecordingBus {
            action: Some(DeviceAction::DebugExit(7)),
            ..Default::default()
        };
        assert_eq!(
            handle_exit(VcpuExit::IoOut(0xf4, &[7]), &mut bus),
            ExitDecision::Stop(StopReason::DebugExit(7))
        );
        bus.action = Some(DeviceAction::Reset);
        assert_eq!(
            handle_exit(VcpuExit::IoOut(0x64, &[0xfe]), &mut bus),
            ExitDecision::Stop(StopReason::Reset)
        );
        bus.action = Some(DeviceAction::PowerOff);
        let decision = handle_exit(VcpuExit::IoOut(0x604, &[0x01, 0x34]), &mut bus);
        assert_eq!(decision, ExitDecision::Stop(StopReason::PowerOff));
        assert_eq!(StopReason::PowerOff.exit_status(), 0);
    }

    #[test]
    fn guest_failures_map_to_distinct_reasons() {
        let mut bus = RecordingBus::default();
        assert_eq!(
            handle_exit(VcpuExit::Shutdown, &mut bus),
            ExitDecision::Stop(StopReason::TripleFault { rip: 0 })
        );
        assert_eq!(
            handle_exit(
                VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN, &[]),
                &mut bus
            ),
            ExitDecision::Stop(StopReason::PowerOff)
        );
        assert_eq!(
            handle_exit(VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_RESET, &[]), &mut bus),
            ExitDecision::Stop(StopReason::Reset)
        );
        assert_eq!(
            handle_exit(VcpuExit::FailEntry(0x21, 0), &mut bus),
            ExitDecision::Stop(StopReason::FailEntry { reason: 0x21 })
        );
        assert!(matches!(
            handle_exit(VcpuExit::InternalError, &mut bus),
            ExitDecision::InternalError { .. }
        ));
        assert!(matches!(
            handle_exit(VcpuExit::Unknown, &mut bus),
            ExitDecision::Stop(StopReason::UnhandledExit(_))
        ));
        assert_eq!(handle_exit(VcpuExit::Hlt, &mut bus), ExitDecision::Continue);
    }

    #[test]
    fn every_stop_has_its_own_status_and_message() {
        let reasons = [
            StopReason::PowerOff,
            StopReason::Reset,
            StopReason::TripleFault { rip: 1 },
            StopReason::EmulationFailure {
                rip: 0x1000,
                instruction: vec![0x0f, 0x0b],
            },
            StopReason::Timeout,
            StopReason::KvmRunFailed(libc::EFAULT),
            StopReason::Interrupted,
        ];
        let statuses: std::collections::BTreeSet<u8> =
            reasons.iter().map(|r| r.exit_status()).collect();
        assert_eq!(statuses.len(), reasons.len());
        assert_eq!(StopReason::DebugExit(3).exit_status(), 3);
        assert_eq!(StopReason::DebugExit(1000).exit_status(), 63);
        assert!(reasons[3].to_string().contains("[0f 0b]"));
    }
}
