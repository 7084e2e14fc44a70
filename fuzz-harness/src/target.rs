//! What the engine fuzzes: one snapshot target behind a small trait, so the engine builds and is
//! tested without a VM. The VMM implements [`FuzzTarget`] for its VM; the tests implement it with
//! pure-Rust programs.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One fuzz target that runs inputs from a snapshot.
///
/// Contract, for every call of [`FuzzTarget::run`]:
/// - the target gets `input` (at most [`FuzzTarget::max_input_len`] bytes; the engine never passes
///   more) as its whole input (BAR2 + INPUT_LEN for the VM);
/// - the coverage map is all zero when the run starts: the engine zeroes every byte it finds set
///   after a run, and a fresh map is zero, so the target need not clear it (clearing it anyway is
///   harmless, only slower);
/// - the run ends by itself (DONE, CRASH, an exception, ...) or after `timeout` ([`RunOutcome::Hang`]);
/// - when `run` returns, the target is restored to its snapshot, ready for the next input;
/// - `Err` means the target itself failed (a VMM failure: KVM_RUN failed, a restore failed, ...).
///   The engine stops on it with that error; it is never filed as a crash.
pub trait FuzzTarget {
    /// Why the target could not run an input (a VMM failure, never a finding).
    type Error: std::error::Error + Send + Sync + 'static;

    /// Largest input the target takes (the size of BAR2 for the VM).
    fn max_input_len(&self) -> usize;

    /// Runs one input from the snapshot and leaves the target restored for the next one.
    fn run(&mut self, input: &[u8], timeout: Duration) -> Result<RunOutcome, Self::Error>;

    /// The coverage map of the last run: AFL-style 8-bit edge hit counters (BAR4 for the VM).
    ///
    /// The engine reads it after each run and zeroes what it read. Its length must not change
    /// between calls; the engine sizes its own maps from the first call.
    fn coverage_map(&mut self) -> &mut [u8];

    /// The target's comparison log (the snapshot device's BAR1 for the VM), if it has one; see
    /// `comparison_log` for the layout. The engine turns it on for one run per queue entry.
    fn comparison_log(&mut self) -> Option<&mut [u8]> {
        None
    }

    /// Snapshot restores the target performed so far, for the status line; `None` when the target
    /// does not count them (the engine then shows its own run count).
    fn restores(&self) -> Option<u64> {
        None
    }
}

/// How one run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RunOutcome {
    /// The target finished normally (DONE, or RESTORE with no report) with this result code.
    Normal { code: u32 },
    /// The target crashed.
    Crash(CrashInfo),
    /// The run did not finish within the timeout.
    Hang,
}

/// What is known about a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CrashInfo {
    /// How the target crashed.
    pub kind: CrashKind,
    /// The guest instruction pointer at the crash (the faulting RIP for exceptions, the RIP of the
    /// reporting instruction for CRASH, the RIP KVM reports for triple faults and emulation
    /// failures); 0 when unknown.
    pub pc: u64,
}

/// The ways a target crashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum CrashKind {
    /// The guest reported a bug itself (the device's CRASH command) with this code.
    Reported { code: u32 },
    /// A CPU exception the guest's runtime reported (vector 0-31, e.g. 14 for #PF).
    Exception { vector: u8 },
    /// A triple fault (a guest with no exception handler, or a broken one).
    TripleFault,
    /// KVM could not emulate an instruction of the guest.
    EmulationFailure,
    /// The guest ended the whole machine in the middle of a run instead of ending the run: the
    /// debug-exit port (`code` = the value written), power off (`code` 256) or reset (`code` 257).
    /// A fuzz target never does this for a good input (compare libFuzzer, which reports a target
    /// that calls `exit()` as an error).
    MachineExit { code: u32 },
}

/// [`CrashKind::MachineExit`]'s code for a power off (debug-exit codes are 0-255).
pub const POWER_OFF_CODE: u32 = 256;
/// [`CrashKind::MachineExit`]'s code for a reset.
pub const RESET_CODE: u32 = 257;

impl CrashKind {
    /// Short name used in crash file names (`kind:NAME`).
    pub fn name(&self) -> &'static str {
        match self {
            CrashKind::Reported { .. } => "crash",
            CrashKind::Exception { .. } => "exception",
            CrashKind::TripleFault => "triplefault",
            CrashKind::EmulationFailure => "emulation",
            CrashKind::MachineExit { .. } => "exit",
        }
    }

    /// The number that goes with the kind (`code:N` in file names): the CRASH code, the exception
    /// vector, or 0.
    pub fn code(&self) -> u32 {
        match self {
            CrashKind::Reported { code } | CrashKind::MachineExit { code } => *code,
            CrashKind::Exception { vector } => u32::from(*vector),
            CrashKind::TripleFault | CrashKind::EmulationFailure => 0,
        }
    }

    /// Rebuilds a kind from its name and code (as written in a crash file name).
    pub fn from_name_and_code(name: &str, code: u32) -> Option<CrashKind> {
        match name {
            "crash" => Some(CrashKind::Reported { code }),
            "exception" => u8::try_from(code)
                .ok()
                .map(|vector| CrashKind::Exception { vector }),
            "triplefault" => Some(CrashKind::TripleFault),
            "emulation" => Some(CrashKind::EmulationFailure),
            "exit" => Some(CrashKind::MachineExit { code }),
            _ => None,
        }
    }

    /// The POSIX signal number AFL++ tools expect in `sig:NN`, chosen by what the crash means:
    /// a reported bug is an abort (SIGABRT 6); exceptions map like Linux maps them to signals
    /// (#DE, #MF, #XM -> SIGFPE 8; #UD -> SIGILL 4; #DB, #BP -> SIGTRAP 5; #AC -> SIGBUS 7;
    /// everything else, #PF and #GP included -> SIGSEGV 11); a triple fault is a fatal memory or
    /// descriptor error (SIGSEGV 11); an emulation failure is an instruction the CPU could not
    /// execute (SIGILL 4); a machine exit in a run is an abnormal end of the program (SIGABRT 6).
    pub fn signal(&self) -> u8 {
        const SIGILL: u8 = 4;
        const SIGTRAP: u8 = 5;
        const SIGABRT: u8 = 6;
        const SIGBUS: u8 = 7;
        const SIGFPE: u8 = 8;
        const SIGSEGV: u8 = 11;
        match self {
            CrashKind::Reported { .. } | CrashKind::MachineExit { .. } => SIGABRT,
            CrashKind::Exception { vector } => match vector {
                0 | 16 | 19 => SIGFPE,
                6 => SIGILL,
                1 | 3 => SIGTRAP,
                17 => SIGBUS,
                _ => SIGSEGV,
            },
            CrashKind::TripleFault => SIGSEGV,
            CrashKind::EmulationFailure => SIGILL,
        }
    }
}

impl fmt::Display for CrashKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CrashKind::Reported { code } => write!(f, "CRASH code {code}"),
            CrashKind::Exception { vector } => {
                write!(
                    f,
                    "CPU exception {} (vector {vector})",
                    exception_mnemonic(*vector)
                )
            }
            CrashKind::TripleFault => write!(f, "triple fault"),
            CrashKind::EmulationFailure => write!(f, "emulation failure"),
            CrashKind::MachineExit {
                code: POWER_OFF_CODE,
            } => {
                write!(f, "the guest powered the machine off during a run")
            }
            CrashKind::MachineExit { code: RESET_CODE } => {
                write!(f, "the guest reset the machine during a run")
            }
            CrashKind::MachineExit { code } => {
                write!(
                    f,
                    "the guest wrote {code} to the debug-exit port during a run"
                )
            }
        }
    }
}

/// The x86 mnemonic of an exception vector (#PF, #GP, ...).
pub fn exception_mnemonic(vector: u8) -> &'static str {
    match vector {
        0 => "#DE",
        1 => "#DB",
        2 => "NMI",
        3 => "#BP",
        4 => "#OF",
        5 => "#BR",
        6 => "#UD",
        7 => "#NM",
        8 => "#DF",
        10 => "#TS",
        11 => "#NP",
        12 => "#SS",
        13 => "#GP",
        14 => "#PF",
        16 => "#MF",
        17 => "#AC",
        18 => "#MC",
        19 => "#XM",
        20 => "#VE",
        21 => "#CP",
        _ => "#??",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_their_names() {
        for kind in [
            CrashKind::Reported { code: 7 },
            CrashKind::Exception { vector: 14 },
            CrashKind::TripleFault,
            CrashKind::EmulationFailure,
            CrashKind::MachineExit { code: 3 },
        ] {
            assert_eq!(
                CrashKind::from_name_and_code(kind.name(), kind.code()),
                Some(kind)
            );
        }
        assert_eq!(CrashKind::from_name_and_code("exception", 300), None);
        assert_eq!(CrashKind::from_name_and_code("other", 1), None);
    }

    #[test]
    fn signals_follow_linux_conventions() {
        assert_eq!(CrashKind::Reported { code: 1 }.signal(), 6);
        assert_eq!(CrashKind::Exception { vector: 14 }.signal(), 11);
        assert_eq!(CrashKind::Exception { vector: 13 }.signal(), 11);
        assert_eq!(CrashKind::Exception { vector: 0 }.signal(), 8);
        assert_eq!(CrashKind::Exception { vector: 6 }.signal(), 4);
        assert_eq!(CrashKind::TripleFault.signal(), 11);
        assert_eq!(CrashKind::EmulationFailure.signal(), 4);
    }
}
