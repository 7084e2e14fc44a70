//! Per-VM control from other threads: stop the VM, or kick its vCPU out of KVM_RUN so that
//! `Machine::run` returns to its caller. Nothing here is process-global: two VMs in one process
//! each have their own `VmControl`, and a kick reaches only the thread running that VM.
//!
//! A kick is a real-time signal sent to the thread inside `Machine::run`; its handler sets
//! `immediate_exit` in that thread's `kvm_run`, so KVM_RUN returns whether the signal lands
//! before or during the ioctl. The flags say why the loop was woken.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::signals;

#[derive(Debug, Default)]
struct ControlState {
    stop: AtomicBool,
    kick: AtomicBool,
    /// The thread running the vCPU right now, if any. Kicks are sent under this lock, and the
    /// runner deregisters under it, so a signal never goes to a thread that has left `run`.
    runner: Mutex<Option<libc::pthread_t>>,
}

/// A handle to one VM that any thread may hold. Cloning it is cheap.
#[derive(Debug, Clone, Default)]
pub struct VmControl {
    state: Arc<ControlState>,
}

/// Why the run loop was woken from outside, if it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ControlRequest {
    Stop,
    Kick,
}

impl VmControl {
    pub(crate) fn new() -> Self {
        VmControl::default()
    }

    /// Asks the VM to stop: the current (or next) `run` returns `VmEvent::Stopped`.
    pub fn stop(&self) {
        self.state.stop.store(true, Ordering::SeqCst);
        self.signal_runner();
    }

    /// Makes the current (or next) `run` return `VmEvent::Kicked` without stopping anything,
    /// so the thread that owns the VM can act on something (a QMP command, say).
    pub fn kick(&self) {
        self.state.kick.store(true, Ordering::SeqCst);
        self.signal_runner();
    }

    /// Whether a stop was asked for and not yet reported by `run`.
    pub fn stop_requested(&self) -> bool {
        self.state.stop.load(Ordering::SeqCst)
    }

    fn signal_runner(&self) {
        let runner = lock(&self.state.runner);
        if let Some(thread) = *runner {
            signals::kick(thread);
        }
    }

    /// Takes the pending request, stop first.
    pub(crate) fn take_request(&self) -> Option<ControlRequest> {
        if self.state.stop.swap(false, Ordering::SeqCst) {
            Some(ControlRequest::Stop)
        } else if self.state.kick.swap(false, Ordering::SeqCst) {
            Some(ControlRequest::Kick)
        } else {
            None
        }
    }

    /// Records the calling thread as the one running the vCPU until the guard is dropped.
    pub(crate) fn enter_run(&self) -> RunnerGuard<'_> {
        *lock(&self.state.runner) = Some(signals::current_thread());
        RunnerGuard { control: self }
    }
}

/// Deregisters the vCPU thread when `run` returns.
pub(crate) struct RunnerGuard<'a> {
    control: &'a VmControl,
}

impl Drop for RunnerGuard<'_> {
    fn drop(&mut self) {
        *lock(&self.control.state.runner) = None;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_taken_once_stop_first() {
        let control = VmControl::new();
        assert_eq!(control.take_request(), None);
        control.kick();
        control.stop();
        assert!(control.stop_requested());
        assert_eq!(control.take_request(), Some(ControlRequest::Stop));
        assert_eq!(control.take_request(), Some(ControlRequest::Kick));
        assert_eq!(control.take_request(), None);
        assert!(!control.stop_requested());
    }

    #[test]
    fn clones_share_one_vm_and_separate_vms_do_not() {
        let a = VmControl::new();
        let b = VmControl::new();
        a.clone().stop();
        assert_eq!(a.take_request(), Some(ControlRequest::Stop));
        assert_eq!(b.take_request(), None);
    }
}
