//! What `Machine::run` returns: one event per return, for the caller to act on. VMM failures are
//! never events: they are `MachineError`s.

use std::fmt;

/// Why `Machine::run` returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmEvent {
    /// The guest's SAVE (0x101) was carried out; the next `run` continues after it.
    SaveDone,
    /// The guest's RESTORE (0x102) was carried out; the next `run` continues after the SAVE.
    RestoreDone,
    /// DONE (0x104): a run ended normally with `code`. The VM stays at the DONE write until the
    /// caller restores it (or runs on).
    Done { code: u32 },
    /// CRASH (0x103): the guest found a bug; `pc` is what it attributed it to (FAULT_PC), or its
    /// RIP at the CRASH write if it gave none.
    Crash { code: u32, pc: u64 },
    /// EXCEPTION (0x106): the guest's runtime caught CPU exception `vector` at `pc`.
    Exception { vector: u32, pc: u64 },
    /// KVM_EXIT_SHUTDOWN: a triple fault. The VM can still be restored.
    TripleFault { rip: u64 },
    /// KVM could not emulate the instruction at `rip` (its bytes, when readable).
    EmulationFailure { rip: u64, instruction: Vec<u8> },
    /// Any other KVM internal error, caused by the guest's state.
    InternalError { suberror: u32, rip: u64 },
    /// VM entry failed (invalid guest state).
    EntryFailed { reason: u64 },
    /// The guest wrote `code` to the debug-exit port 0xf4.
    DebugExit { code: u32 },
    /// The guest powered off (ACPI S5 or a KVM shutdown event).
    PowerOff,
    /// The guest asked for a reset (i8042, or a KVM reset event).
    Reset,
    /// The deadline given to `run` passed.
    DeadlinePassed,
    /// `VmControl::stop` was called.
    Stopped,
    /// `VmControl::kick` was called.
    Kicked,
}

impl VmEvent {
    /// Whether the event ends a fuzz run as a crash of the target.
    pub fn is_crash(&self) -> bool {
        matches!(
            self,
            VmEvent::Crash { .. }
                | VmEvent::Exception { .. }
                | VmEvent::TripleFault { .. }
                | VmEvent::EmulationFailure { .. }
                | VmEvent::InternalError { .. }
                | VmEvent::EntryFailed { .. }
        )
    }
}

impl fmt::Display for VmEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmEvent::SaveDone => write!(f, "guest took a snapshot"),
            VmEvent::RestoreDone => write!(f, "guest restored its snapshot"),
            VmEvent::Done { code } => write!(f, "guest finished a run with code {code:#x}"),
            VmEvent::Crash { code, pc } => write!(
                f,
                "guest reported a crash (code {code:#x}) at pc {pc:#x} through the snapshot device"
            ),
            VmEvent::Exception { vector, pc } => write!(
                f,
                "guest reported CPU exception {vector} at {pc:#x} through the snapshot device"
            ),
            VmEvent::TripleFault { rip } => write!(f, "guest triple-faulted (rip {rip:#x})"),
            VmEvent::EmulationFailure { rip, instruction } => {
                write!(
                    f,
                    "KVM emulation failure at rip {rip:#x}, instruction bytes ["
                )?;
                for (i, byte) in instruction.iter().enumerate() {
                    write!(f, "{}{byte:02x}", if i > 0 { " " } else { "" })?;
                }
                write!(f, "]")
            }
            VmEvent::InternalError { suberror, rip } => write!(
                f,
                "KVM internal error (suberror {suberror}) at rip {rip:#x}"
            ),
            VmEvent::EntryFailed { reason } => write!(
                f,
                "KVM could not enter the guest (hardware reason {reason:#x})"
            ),
            VmEvent::DebugExit { code } => write!(
                f,
                "guest exited through the debug-exit port with code {code}"
            ),
            VmEvent::PowerOff => write!(f, "guest powered off"),
            VmEvent::Reset => write!(f, "guest requested a reset"),
            VmEvent::DeadlinePassed => write!(f, "guest timed out"),
            VmEvent::Stopped => write!(f, "stopped"),
            VmEvent::Kicked => write!(f, "kicked"),
        }
    }
}
