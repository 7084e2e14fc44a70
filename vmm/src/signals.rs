//! Signals that stop a running vCPU: Ctrl-C (SIGINT) and the timeout kick. Both handlers only
//! set a flag and ask KVM_RUN to return at once; the vCPU loop does the rest.

use std::sync::atomic::Ordering;
use std::sync::Once;

use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use crate::vcpu::{request_immediate_exit, INTERRUPTED};

/// The real-time signal used to kick a vCPU thread out of KVM_RUN.
pub fn kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn on_interrupt(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    INTERRUPTED.store(true, Ordering::SeqCst);
    request_immediate_exit();
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    request_immediate_exit();
}

/// Installs both handlers once per process.
pub fn install() -> std::io::Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = register_signal_handler(libc::SIGINT, on_interrupt)
            .and_then(|_| register_signal_handler(kick_signal(), on_kick))
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()));
    });
    result
}

/// Identifies the calling thread for `kick`.
pub fn current_thread() -> libc::pthread_t {
    // SAFETY: pthread_self has no preconditions.
    unsafe { libc::pthread_self() }
}

/// Makes `thread` leave KVM_RUN.
pub fn kick(thread: libc::pthread_t) {
    // SAFETY: `thread` is the vCPU thread, which outlives its helper threads (they are joined
    // before the vCPU thread returns from `Vm::run`).
    unsafe { libc::pthread_kill(thread, kick_signal()) };
}

/// Helper threads block SIGINT so that Ctrl-C lands on the vCPU thread and interrupts KVM_RUN.
pub fn block_async_signals() {
    // SAFETY: plain signal-mask manipulation on the calling thread with valid sigset_t storage.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}
