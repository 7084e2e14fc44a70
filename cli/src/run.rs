//! `snapvmm run`'s policy on top of the library: what each event means for a plain run, and the
//! exit statuses README.md documents. Without a fuzz harness DONE means RESTORE, a CRASH or
//! EXCEPTION stops the VM (71), every SAVE is written to `--save-snapshot`, and `--max-restores`
//! and `--timeout` end the run.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use vmm::{Machine, MachineError, VmEvent};

/// What the user asked `snapvmm run` to do besides booting.
#[derive(Debug, Clone, Default)]
pub struct RunPolicy {
    pub timeout: Option<Duration>,
    pub save_dir: Option<PathBuf>,
    pub max_restores: Option<u64>,
}

/// How a run ended.
#[derive(Debug)]
pub enum RunEnd {
    /// The guest did something that ends the run.
    Event(VmEvent),
    /// `--max-restores` restores are done.
    RestoreLimit(u64),
    /// The VMM failed (a snapshot could not be taken, restored or written, KVM_RUN failed...).
    Failed(MachineError),
    /// A QMP client sent `quit`.
    Quit,
}

/// Runs `machine` under `policy` until the run ends.
pub fn drive(machine: &mut Machine, policy: &RunPolicy) -> RunEnd {
    drive_with(machine, policy, &mut |_| None)
}

/// `drive`, with `on_kick` called before the first run and whenever `run` returns `Kicked` (a
/// QMP server's requests); it may end the run.
pub fn drive_with(
    machine: &mut Machine,
    policy: &RunPolicy,
    on_kick: &mut dyn FnMut(&mut Machine) -> Option<RunEnd>,
) -> RunEnd {
    let deadline = policy.timeout.map(|timeout| Instant::now() + timeout);
    if let Some(end) = on_kick(machine) {
        return end;
    }
    loop {
        let event = match machine.run(deadline) {
            Ok(event) => event,
            Err(error) => return RunEnd::Failed(error),
        };
        let result = match &event {
            VmEvent::SaveDone => match &policy.save_dir {
                Some(dir) => machine.write_snapshot(dir),
                None => Ok(()),
            },
            VmEvent::RestoreDone => Ok(()),
            VmEvent::Kicked => match on_kick(machine) {
                Some(end) => return end,
                None => Ok(()),
            },
            // Nobody hands out a next input: a finished run rolls back for the next one.
            VmEvent::Done { .. } => machine.restore(),
            _ => return RunEnd::Event(event),
        };
        if let Err(error) = result {
            return RunEnd::Failed(error);
        }
        let restores = machine.stats().restores;
        if policy.max_restores.is_some_and(|max| restores >= max) {
            return RunEnd::RestoreLimit(restores);
        }
    }
}

/// The process exit status and the one-line message for how a run ended; `signal` is the
/// termination signal that stopped it, if one did.
pub fn describe(end: &RunEnd, signal: Option<i32>) -> (u8, String) {
    match end {
        RunEnd::RestoreLimit(n) => (0, format!("stopped after {n} restores (--max-restores)")),
        RunEnd::Quit => (0, "quit (QMP)".to_string()),
        RunEnd::Failed(error) => (failure_status(error), error.to_string()),
        RunEnd::Event(VmEvent::Stopped) => match signal {
            Some(libc::SIGTERM) => (143, "terminated (SIGTERM)".to_string()),
            _ => (130, "interrupted".to_string()),
        },
        RunEnd::Event(event) => (event_status(event), event.to_string()),
    }
}

fn event_status(event: &VmEvent) -> u8 {
    match event {
        VmEvent::DebugExit { code } => (*code).min(63) as u8,
        VmEvent::PowerOff => 0,
        VmEvent::Reset => 65,
        VmEvent::TripleFault { .. } => 66,
        VmEvent::EmulationFailure { .. }
        | VmEvent::InternalError { .. }
        | VmEvent::EntryFailed { .. } => 67,
        VmEvent::DeadlinePassed => 68,
        VmEvent::Crash { .. } | VmEvent::Exception { .. } => 71,
        VmEvent::Stopped => 130,
        // `drive` acts on these itself and never ends a run with them.
        VmEvent::SaveDone | VmEvent::RestoreDone | VmEvent::Done { .. } | VmEvent::Kicked => 0,
    }
}

fn failure_status(error: &MachineError) -> u8 {
    match error {
        MachineError::KvmRun(_) => 69,
        MachineError::UnhandledExit(_) => 67,
        _ => 71,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stop_has_its_own_status_and_message() {
        let ends = [
            RunEnd::Event(VmEvent::PowerOff),
            RunEnd::Event(VmEvent::Reset),
            RunEnd::Event(VmEvent::TripleFault { rip: 1 }),
            RunEnd::Event(VmEvent::EmulationFailure {
                rip: 0x1000,
                instruction: vec![0x0f, 0x0b],
            }),
            RunEnd::Event(VmEvent::DeadlinePassed),
            RunEnd::Failed(MachineError::KvmRun(kvm_ioctls_error(libc::EFAULT))),
            RunEnd::Event(VmEvent::Stopped),
        ];
        let statuses: std::collections::BTreeSet<u8> =
            ends.iter().map(|end| describe(end, None).0).collect();
        assert_eq!(statuses.len(), ends.len());
        assert_eq!(
            describe(&RunEnd::Event(VmEvent::DebugExit { code: 3 }), None).0,
            3
        );
        assert_eq!(
            describe(&RunEnd::Event(VmEvent::DebugExit { code: 1000 }), None).0,
            63
        );
        assert!(describe(&ends[3], None).1.contains("[0f 0b]"));
        assert_eq!(describe(&ends[6], Some(libc::SIGTERM)).0, 143);
        assert_eq!(describe(&RunEnd::RestoreLimit(5), None).0, 0);
        let crash = RunEnd::Event(VmEvent::Crash { code: 0x2a, pc: 0 });
        assert_eq!(describe(&crash, None).0, 71);
        assert!(describe(&crash, None).1.contains("crash (code 0x2a)"));
    }

    fn kvm_ioctls_error(errno: i32) -> vmm_sys_util::errno::Error {
        vmm_sys_util::errno::Error::new(errno)
    }
}
