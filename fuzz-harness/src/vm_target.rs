//! A snapvmm VM as a [`FuzzTarget`]: the guest is booted and run to its first SAVE (its snapshot
//! point); each run then puts the input into BAR2, runs the vCPU until the guest ends the run
//! (or the deadline passes) and restores the snapshot.
//!
//! How the VM's events become outcomes:
//!
//! | event during a run | outcome |
//! |---|---|
//! | DONE | `Normal` with its code |
//! | RESTORE (the guest rolled itself back; already restored) | `Normal { code: 0 }` |
//! | CRASH | `Crash(Reported)` with its code and pc |
//! | EXCEPTION | `Crash(Exception)` with the vector and pc (vectors past 255 are filed as 255) |
//! | triple fault | `Crash(TripleFault)` at the vCPU's rip |
//! | emulation failure, other KVM internal error | `Crash(EmulationFailure)` at the rip |
//! | debug-exit, power off, reset | `Crash(MachineExit)`: a target never ends the machine for a good input |
//! | the deadline | `Hang` |
//! | a kick | ignored, the run goes on |
//! | SAVE (a second snapshot point), VM entry failure, `stop()` | error: the campaign cannot go on |
//!
//! The VM survives every crash: after a triple fault or an emulation failure the next restore
//! writes the whole vCPU state back.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::fs::File;

use vmm::{
    EngineStats, Machine, MachineConfig, MachineError, MachineState, ResumeOptions, VmControl,
    VmEvent,
};

use crate::target::{CrashInfo, CrashKind, FuzzTarget, RunOutcome, POWER_OFF_CODE, RESET_CODE};

/// How long a guest may take from boot to its first SAVE by default.
pub const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the VM could not be set up or could not go on.
#[derive(Debug, thiserror::Error)]
pub enum VmTargetError {
    #[error("cannot boot the guest: {0}")]
    Boot(#[source] MachineError),
    #[error(
        "the guest took no snapshot within {} s of booting (a fuzz target SAVEs before its first run)",
        .0.as_secs_f64()
    )]
    NoSnapshot(Duration),
    #[error("the guest ended before taking a snapshot ({0}); it is not a fuzz target")]
    EndedBeforeSnapshot(String),
    #[error("the guest has no input buffer (BAR2 is empty)")]
    NoInputBuffer,
    #[error("cannot resume the snapshot: {0}")]
    Resume(#[source] MachineError),
    #[error("cannot take the snapshot out of the booted machine: {0}")]
    Snapshot(#[source] MachineError),
    #[error("stopped before the guest took its snapshot")]
    StoppedBeforeSnapshot,
    #[error("VM failure during a run: {0}")]
    Run(#[source] MachineError),
    #[error("cannot restore the snapshot after a run: {0}")]
    Restore(#[source] MachineError),
    #[error("the guest took a second snapshot during a run (a fuzz target SAVEs once)")]
    SnapshotDuringRun,
    #[error("during a run: {0}")]
    Unusable(String),
    #[error("the run was stopped")]
    Stopped,
}

/// A booted VM at its snapshot point, ready to run inputs.
pub struct VmTarget {
    machine: Machine,
    /// Filled with the machine's snapshot statistics when the target is dropped (the engine
    /// owns the target until the campaign ends; the caller reads them afterwards).
    final_stats: Arc<Mutex<Option<EngineStats>>>,
}

impl Drop for VmTarget {
    fn drop(&mut self) {
        if let Ok(mut slot) = self.final_stats.lock() {
            *slot = Some(self.machine.stats().clone());
        }
    }
}

impl VmTarget {
    /// Boots `config` and runs it until its first SAVE, for at most `boot_timeout`.
    pub fn boot(config: &MachineConfig, boot_timeout: Duration) -> Result<Self, VmTargetError> {
        let mut machine = Machine::boot(config).map_err(VmTargetError::Boot)?;
        let deadline = Instant::now() + boot_timeout;
        loop {
            match machine.run(Some(deadline)).map_err(VmTargetError::Boot)? {
                VmEvent::SaveDone => break,
                VmEvent::Kicked => continue,
                VmEvent::DeadlinePassed => return Err(VmTargetError::NoSnapshot(boot_timeout)),
                VmEvent::Stopped => return Err(VmTargetError::StoppedBeforeSnapshot),
                other => return Err(VmTargetError::EndedBeforeSnapshot(other.to_string())),
            }
        }
        if machine.input_capacity() == 0 {
            return Err(VmTargetError::NoInputBuffer);
        }
        Ok(Self {
            machine,
            final_stats: Arc::default(),
        })
    }

    /// A VM resumed at the snapshot point of another one (see [`VmTarget::into_snapshot`]): its
    /// RAM is a private mapping of `memory`, so the pages it does not write stay shared with
    /// every other machine resumed from the same file.
    pub fn resume(
        state: MachineState,
        memory: File,
        options: &ResumeOptions,
    ) -> Result<Self, VmTargetError> {
        let machine = Machine::resume(state, memory, options).map_err(VmTargetError::Resume)?;
        if machine.input_capacity() == 0 {
            return Err(VmTargetError::NoInputBuffer);
        }
        Ok(Self {
            machine,
            final_stats: Arc::default(),
        })
    }

    /// The snapshot point as [`VmTarget::resume`] takes it (the state and its memory file); the
    /// VM itself is gone when this returns (a KVM VM does not survive `fork`).
    pub fn into_snapshot(mut self) -> Result<(MachineState, File), VmTargetError> {
        match self.machine.snapshot_image() {
            Ok(Some(image)) => Ok(image),
            Ok(None) => Err(VmTargetError::Snapshot(MachineError::NoSnapshot)),
            Err(error) => Err(VmTargetError::Snapshot(error)),
        }
    }

    /// Where the machine's statistics land when this target is dropped.
    pub fn final_stats(&self) -> Arc<Mutex<Option<EngineStats>>> {
        self.final_stats.clone()
    }

    /// A handle to stop or kick the VM from another thread.
    pub fn control(&self) -> VmControl {
        self.machine.control()
    }

    /// The machine, e.g. for its statistics.
    pub fn machine(&self) -> &Machine {
        &self.machine
    }

    /// Runs the vCPU until the run ends; `Ok(None)` for a RESTORE the guest did itself.
    fn run_to_end(&mut self, deadline: Instant) -> Result<RunEnd, VmTargetError> {
        loop {
            let event = self
                .machine
                .run(Some(deadline))
                .map_err(VmTargetError::Run)?;
            return Ok(match event {
                VmEvent::Kicked => continue,
                VmEvent::RestoreDone => RunEnd::RestoredByGuest,
                VmEvent::SaveDone => return Err(VmTargetError::SnapshotDuringRun),
                VmEvent::Stopped => return Err(VmTargetError::Stopped),
                VmEvent::EntryFailed { .. } => {
                    return Err(VmTargetError::Unusable(event.to_string()))
                }
                other => RunEnd::Outcome(outcome_of(&other)),
            });
        }
    }
}

enum RunEnd {
    RestoredByGuest,
    Outcome(RunOutcome),
}

/// The outcome of an event that ends a run (see the table at the top of this file).
fn outcome_of(event: &VmEvent) -> RunOutcome {
    let crash = |kind, pc| RunOutcome::Crash(CrashInfo { kind, pc });
    match *event {
        VmEvent::Done { code } => RunOutcome::Normal { code },
        VmEvent::Crash { code, pc } => crash(CrashKind::Reported { code }, pc),
        VmEvent::Exception { vector, pc } => crash(
            CrashKind::Exception {
                vector: u8::try_from(vector).unwrap_or(u8::MAX),
            },
            pc,
        ),
        VmEvent::TripleFault { rip } => crash(CrashKind::TripleFault, rip),
        VmEvent::EmulationFailure { rip, .. } | VmEvent::InternalError { rip, .. } => {
            crash(CrashKind::EmulationFailure, rip)
        }
        VmEvent::DebugExit { code } => crash(CrashKind::MachineExit { code }, 0),
        VmEvent::PowerOff => crash(
            CrashKind::MachineExit {
                code: POWER_OFF_CODE,
            },
            0,
        ),
        VmEvent::Reset => crash(CrashKind::MachineExit { code: RESET_CODE }, 0),
        VmEvent::DeadlinePassed => RunOutcome::Hang,
        // Handled by the caller; listed so that a new event is a compile error here.
        VmEvent::SaveDone
        | VmEvent::RestoreDone
        | VmEvent::Stopped
        | VmEvent::Kicked
        | VmEvent::EntryFailed { .. } => RunOutcome::Normal { code: 0 },
    }
}

impl FuzzTarget for VmTarget {
    type Error = VmTargetError;

    fn max_input_len(&self) -> usize {
        self.machine.input_capacity()
    }

    fn run(&mut self, input: &[u8], timeout: Duration) -> Result<RunOutcome, Self::Error> {
        self.machine.set_input(input);
        let deadline = Instant::now() + timeout;
        match self.run_to_end(deadline)? {
            RunEnd::RestoredByGuest => Ok(RunOutcome::Normal { code: 0 }),
            RunEnd::Outcome(outcome) => {
                self.machine.restore().map_err(VmTargetError::Restore)?;
                Ok(outcome)
            }
        }
    }

    fn coverage_map(&mut self) -> &mut [u8] {
        self.machine.coverage_mut()
    }

    fn comparison_log(&mut self) -> Option<&mut [u8]> {
        Some(self.machine.comparison_log_mut())
    }

    fn restores(&self) -> Option<u64> {
        Some(self.machine.stats().restores)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_map_to_outcomes() {
        assert_eq!(
            outcome_of(&VmEvent::Done { code: 3 }),
            RunOutcome::Normal { code: 3 }
        );
        assert_eq!(outcome_of(&VmEvent::DeadlinePassed), RunOutcome::Hang);
        assert_eq!(
            outcome_of(&VmEvent::Exception {
                vector: 14,
                pc: 0x4000
            }),
            RunOutcome::Crash(CrashInfo {
                kind: CrashKind::Exception { vector: 14 },
                pc: 0x4000
            })
        );
        assert_eq!(
            outcome_of(&VmEvent::Exception { vector: 300, pc: 1 }),
            RunOutcome::Crash(CrashInfo {
                kind: CrashKind::Exception { vector: 255 },
                pc: 1
            })
        );
        assert_eq!(
            outcome_of(&VmEvent::Crash { code: 0x51, pc: 9 }),
            RunOutcome::Crash(CrashInfo {
                kind: CrashKind::Reported { code: 0x51 },
                pc: 9
            })
        );
        assert_eq!(
            outcome_of(&VmEvent::TripleFault { rip: 7 }),
            RunOutcome::Crash(CrashInfo {
                kind: CrashKind::TripleFault,
                pc: 7
            })
        );
        assert_eq!(
            outcome_of(&VmEvent::EmulationFailure {
                rip: 5,
                instruction: vec![0xcc]
            }),
            RunOutcome::Crash(CrashInfo {
                kind: CrashKind::EmulationFailure,
                pc: 5
            })
        );
        assert_eq!(
            outcome_of(&VmEvent::PowerOff),
            RunOutcome::Crash(CrashInfo {
                kind: CrashKind::MachineExit {
                    code: POWER_OFF_CODE
                },
                pc: 0
            })
        );
        assert_eq!(
            outcome_of(&VmEvent::DebugExit { code: 4 }),
            RunOutcome::Crash(CrashInfo {
                kind: CrashKind::MachineExit { code: 4 },
                pc: 0
            })
        );
    }
}
