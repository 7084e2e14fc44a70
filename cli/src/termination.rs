//! Ctrl-C and SIGTERM: both stop the machine cleanly (summary printed, snapshot writes finished).
//!
//! The signals are blocked in every thread (the mask is set before any thread starts, and
//! threads inherit it) and taken by one watcher thread with `sigwait`, which then stops the
//! machine through its `VmControl`: no signal-handler restrictions, nothing process-global in
//! the library.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;

use vmm::seccomp::{self, ThreadKind};
use vmm::VmControl;

fn termination_set() -> libc::sigset_t {
    // SAFETY: sigset manipulation on a local, zero-initialised set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        set
    }
}

/// Blocks SIGINT and SIGTERM in the calling thread and every thread it starts from now on.
/// Call first thing in `main`.
pub fn block_termination_signals() {
    let set = termination_set();
    // SAFETY: a valid signal set; changes only this thread's mask.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

/// The watcher's loop: every SIGINT or SIGTERM is recorded and acted on.
fn wait_for_signals(signal: &AtomicI32, on_signal: impl Fn()) {
    let set = termination_set();
    loop {
        let mut received: libc::c_int = 0;
        // SAFETY: waits for one of the blocked signals in `set`.
        if unsafe { libc::sigwait(&set, &mut received) } == 0 {
            signal.store(received, Ordering::SeqCst);
            on_signal();
        }
    }
}

/// Which termination signal arrived, if one did.
#[derive(Clone, Default)]
pub struct Termination {
    signal: Arc<AtomicI32>,
}

impl Termination {
    /// Starts the watcher: the first SIGINT or SIGTERM stops `control`'s machine.
    pub fn watch(control: VmControl) -> Self {
        Self::watch_filtered(control, false)
    }

    /// `watch`; with `seccomp`, the watcher puts itself under its filter first (call
    /// `vmm::seccomp::prepare` before).
    pub fn watch_filtered(control: VmControl, seccomp: bool) -> Self {
        Self::watch_with(seccomp, move || control.stop())
    }

    /// Starts the watcher for a fuzzing campaign: the first SIGINT or SIGTERM sets the fuzzer's
    /// stop flag. The VM is not stopped mid-run: the run ends by itself within its timeout, so
    /// that everything found so far is filed and the output written before the fuzzer returns.
    pub fn watch_flag(stop: Arc<AtomicBool>) -> Self {
        Self::watch_with(false, move || stop.store(true, Ordering::SeqCst))
    }

    fn watch_with(seccomp: bool, on_signal: impl Fn() + Send + 'static) -> Self {
        let termination = Termination::default();
        let signal = termination.signal.clone();
        let spawned = std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                if seccomp {
                    if let Err(error) = seccomp::install(ThreadKind::SignalWatcher) {
                        // Unfiltered is not an option: the vCPU thread's install fails alike
                        // and stops the run.
                        tracing::warn!(%error, "signal watcher not started");
                        return;
                    }
                }
                wait_for_signals(&signal, on_signal)
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, "cannot watch for Ctrl-C/SIGTERM");
        }
        termination
    }

    /// The signal that stopped the machine, if any.
    pub fn signal(&self) -> Option<i32> {
        match self.signal.load(Ordering::SeqCst) {
            0 => None,
            signal => Some(signal),
        }
    }
}
