//! The kick signal: how another thread (a `VmControl`, a deadline timer) makes a vCPU thread leave
//! KVM_RUN. The handler only asks KVM for an immediate exit on the `kvm_run` of the VM running
//! on the signalled thread; what the kick meant is in that VM's own flags (see `control.rs`).
//! The process's other signals (Ctrl-C, SIGTERM) are the caller's business, not the library's.

use std::cell::Cell;
use std::sync::Once;

use kvm_bindings::kvm_run;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

thread_local! {
    /// The `kvm_run` of the vCPU running on this thread, so the signal handler can make the next
    /// (or current) KVM_RUN return at once. This closes the race where a kick lands between the
    /// loop's flag check and its KVM_RUN call.
    static CURRENT_KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// The real-time signal used to kick a vCPU thread out of KVM_RUN.
pub fn kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    request_immediate_exit();
}

/// Installs the kick handler once per process (the handler keeps no state of its own).
pub fn install_kick_handler() -> std::io::Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = register_signal_handler(kick_signal(), on_kick)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()));
    });
    result
}

/// Signal-handler body: request an immediate exit from KVM_RUN on this thread's vCPU, if any.
pub fn request_immediate_exit() {
    let run = CURRENT_KVM_RUN.with(|cell| cell.get());
    if !run.is_null() {
        // SAFETY: the pointer is set by `KvmRunBinding` on this thread to its live vCPU's kvm_run
        // mapping and cleared before that vCPU can go away; a byte store is signal-safe.
        unsafe { std::ptr::write_volatile(&mut (*run).immediate_exit, 1) };
    }
}

/// Makes the kick handler of this thread act on `run` until dropped.
pub struct KvmRunBinding;

impl KvmRunBinding {
    pub fn bind(run: *mut kvm_run) -> Self {
        CURRENT_KVM_RUN.with(|cell| cell.set(run));
        KvmRunBinding
    }
}

impl Drop for KvmRunBinding {
    fn drop(&mut self) {
        CURRENT_KVM_RUN.with(|cell| cell.set(std::ptr::null_mut()));
    }
}

/// Identifies the calling thread for `kick`.
pub fn current_thread() -> libc::pthread_t {
    // SAFETY: pthread_self has no preconditions.
    unsafe { libc::pthread_self() }
}

/// Makes `thread` leave KVM_RUN.
pub fn kick(thread: libc::pthread_t) {
    // SAFETY: callers only pass a thread registered as running a vCPU, under the lock that its
    // deregistration takes (see `VmControl`), so the thread is alive.
    unsafe { libc::pthread_kill(thread, kick_signal()) };
}
