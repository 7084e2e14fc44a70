//! seccomp filters for the VMM's threads, built with `seccompiler` as Firecracker does: one filter
//! per thread kind, allowing only the system calls that thread makes once set-up is over.
//!
//! - `Vcpu`: the thread that drives a `Machine` (KVM_RUN, SAVE/RESTORE, snapshots to disk, serial
//!   output, the deadline timer). The RAM capture threads it spawns at each SAVE inherit it.
//! - `StdinForwarder`: an epoll loop that reads stdin and pushes the bytes into COM1.
//! - `SignalWatcher`: `sigwait`, then `VmControl::stop` (a mutex and a real-time signal).
//!
//! A forbidden call traps (SIGSYS): the handler writes one line naming the call and the thread
//! kind and ends the process with `STATUS_SECCOMP_VIOLATION`. Killing outright (Firecracker's
//! choice) leaves the user with "Bad system call" and no hint; EPERM would let the VMM carry on
//! with a failed call it never expected, and hide the gap in the filter.
//!
//! ioctl is allowed on the vCPU thread for KVM (type 0xAE) and userfaultfd (0xAA) requests only,
//! filtered on the request's type byte rather than per request, so that a new KVM ioctl in the
//! engine does not need a filter change while terminal, socket and block ioctls stay refused.
//! No thread may map or mprotect memory executable.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::OnceLock;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use thiserror::Error;

/// Exit status when a filtered thread makes a forbidden system call.
pub const STATUS_SECCOMP_VIOLATION: i32 = 71;

#[derive(Debug, Error)]
pub enum SeccompError {
    #[error("cannot build the seccomp filters: {0}")]
    Build(String),
    #[error("cannot install the SIGSYS handler: {0}")]
    Handler(std::io::Error),
    #[error("cannot install the seccomp filter of the {kind} thread: {source}")]
    Install {
        kind: ThreadKind,
        source: seccompiler::Error,
    },
}

/// Which filter a thread gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    Vcpu,
    StdinForwarder,
    SignalWatcher,
}

impl ThreadKind {
    pub const ALL: [ThreadKind; 3] = [
        ThreadKind::Vcpu,
        ThreadKind::StdinForwarder,
        ThreadKind::SignalWatcher,
    ];

    fn name(self) -> &'static str {
        match self {
            ThreadKind::Vcpu => "vCPU",
            ThreadKind::StdinForwarder => "stdin",
            ThreadKind::SignalWatcher => "signal watcher",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for ThreadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Calls every filtered thread makes: thread exit (Rust's alternate signal stack, glibc's stack
/// release), the allocator, locks, time, the SIGSYS message itself.
const EVERY_THREAD: &[i64] = &[
    libc::SYS_brk,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_close,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_futex,
    libc::SYS_getpid,
    libc::SYS_getrandom,
    libc::SYS_gettid,
    libc::SYS_madvise,
    libc::SYS_mremap,
    libc::SYS_munmap,
    libc::SYS_nanosleep,
    libc::SYS_restart_syscall,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sched_yield,
    libc::SYS_sigaltstack,
    libc::SYS_write,
];

/// The vCPU thread and the RAM capture threads it starts.
const VCPU: &[i64] = &[
    // Guest I/O, snapshot memory files, snapshots to disk.
    libc::SYS_read,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    // A QEMU stream exported into a file: pages written at their offsets by a writer thread.
    libc::SYS_pwritev,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_lseek,
    libc::SYS_openat,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_mkdir,
    libc::SYS_mkdirat,
    libc::SYS_rename,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_rmdir,
    libc::SYS_getdents64,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_ftruncate,
    libc::SYS_fallocate,
    libc::SYS_fcntl,
    // RAM capture: memory file, userfaultfd, the copier's wake-up and its thread.
    libc::SYS_memfd_create,
    libc::SYS_userfaultfd,
    libc::SYS_eventfd2,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_sched_getaffinity,
    // The run deadline.
    libc::SYS_timer_create,
    libc::SYS_timer_settime,
    libc::SYS_timer_delete,
];

const STDIN_FORWARDER: &[i64] = &[
    libc::SYS_read,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
];

const SIGNAL_WATCHER: &[i64] = &[libc::SYS_rt_sigtimedwait, libc::SYS_tgkill];

/// ioctl request type bytes the vCPU thread may use.
const KVMIO: u64 = 0xae;
const UFFDIO: u64 = 0xaa;

fn condition(
    arg: u8,
    op: SeccompCmpOp,
    value: u64,
) -> Result<SeccompCondition, seccompiler::BackendError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value)
}

fn rule(conditions: Vec<SeccompCondition>) -> Result<SeccompRule, seccompiler::BackendError> {
    SeccompRule::new(conditions)
}

/// The rules of one thread kind: syscall number -> conditions (empty: always allowed).
fn rules(kind: ThreadKind) -> Result<BTreeMap<i64, Vec<SeccompRule>>, seccompiler::BackendError> {
    let specific = match kind {
        ThreadKind::Vcpu => VCPU,
        ThreadKind::StdinForwarder => STDIN_FORWARDER,
        ThreadKind::SignalWatcher => SIGNAL_WATCHER,
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = EVERY_THREAD
        .iter()
        .chain(specific)
        .map(|&call| (call, Vec::new()))
        .collect();
    // Memory never becomes executable.
    let no_exec = || condition(2, SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64), 0);
    rules.insert(libc::SYS_mmap, vec![rule(vec![no_exec()?])?]);
    rules.insert(libc::SYS_mprotect, vec![rule(vec![no_exec()?])?]);
    if kind == ThreadKind::Vcpu {
        let ioctl_type = |ty: u64| condition(1, SeccompCmpOp::MaskedEq(0xff00), ty << 8);
        rules.insert(
            libc::SYS_ioctl,
            vec![
                rule(vec![ioctl_type(KVMIO)?])?,
                rule(vec![ioctl_type(UFFDIO)?])?,
            ],
        );
        // Thread names of the capture threads.
        rules.insert(
            libc::SYS_prctl,
            vec![rule(vec![condition(
                0,
                SeccompCmpOp::Eq,
                libc::PR_SET_NAME as u64,
            )?])?],
        );
        // Whether the owner of a stale snapshot temporary is alive: signal 0 only.
        rules.insert(
            libc::SYS_kill,
            vec![rule(vec![condition(1, SeccompCmpOp::Eq, 0)?])?],
        );
    }
    Ok(rules)
}

/// The system calls a thread kind may make, for reports and tests.
pub fn allowed_syscalls(kind: ThreadKind) -> Vec<i64> {
    rules(kind)
        .map(|rules| rules.into_keys().collect())
        .unwrap_or_default()
}

fn build(kind: ThreadKind) -> Result<BpfProgram, String> {
    let rules = rules(kind).map_err(|e| e.to_string())?;
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| e.to_string())?;
    BpfProgram::try_from(filter).map_err(|e| e.to_string())
}

/// Every filter, built once per process.
fn programs() -> Result<&'static [BpfProgram], SeccompError> {
    static PROGRAMS: OnceLock<Result<Vec<BpfProgram>, String>> = OnceLock::new();
    PROGRAMS
        .get_or_init(|| ThreadKind::ALL.iter().map(|&kind| build(kind)).collect())
        .as_deref()
        .map_err(|e| SeccompError::Build(e.clone()))
}

thread_local! {
    /// The filter installed on this thread, for the SIGSYS message (`u8::MAX`: none).
    static FILTERED_AS: Cell<u8> = const { Cell::new(u8::MAX) };
}

/// Builds every filter and installs the SIGSYS handler. Call during set-up, before starting
/// threads that install filters: `install` then allocates nothing.
pub fn prepare() -> Result<(), SeccompError> {
    programs()?;
    install_sigsys_handler()
}

/// Puts the calling thread under `kind`'s filter for the rest of its life (threads it starts
/// from now on inherit it). Cannot be undone.
pub fn install(kind: ThreadKind) -> Result<(), SeccompError> {
    prepare()?;
    let program = programs()?
        .get(kind.index())
        .ok_or_else(|| SeccompError::Build(format!("no filter for the {kind} thread")))?;
    FILTERED_AS.with(|cell| cell.set(kind as u8));
    seccompiler::apply_filter(program).map_err(|source| SeccompError::Install { kind, source })
}

fn install_sigsys_handler() -> Result<(), SeccompError> {
    static INSTALLED: OnceLock<Result<(), i32>> = OnceLock::new();
    let result = INSTALLED.get_or_init(|| {
        // SAFETY: an all-zero sigaction is valid; the fields used are set below.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_sigsys as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        // SAFETY: a valid sigaction whose handler only calls async-signal-safe functions.
        match unsafe { libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) } {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0)),
        }
    });
    result.map_err(|errno| SeccompError::Handler(std::io::Error::from_raw_os_error(errno)))
}

/// The SIGSYS part of `siginfo_t` on x86-64 (`_sigsys` in the kernel's union).
#[repr(C)]
struct SigsysInfo {
    signo: libc::c_int,
    errno: libc::c_int,
    code: libc::c_int,
    _pad: libc::c_int,
    call_addr: *mut libc::c_void,
    syscall: libc::c_int,
    arch: libc::c_uint,
}

extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t (128 bytes) for SA_SIGINFO handlers, and for
    // a seccomp SIGSYS its union holds `_sigsys`, which `SigsysInfo` lays out.
    let syscall = unsafe { (*(info as *const SigsysInfo)).syscall };
    let kind = FILTERED_AS.with(|cell| cell.get());
    let thread = ThreadKind::ALL
        .iter()
        .find(|k| **k as u8 == kind)
        // Unmarked: a thread started by a filtered one (RAM capture), which inherited its filter.
        .map_or("inherited-filter (RAM capture)", |k| k.name());
    let mut message = MessageBuffer::new();
    message.push(b"snapvmm: seccomp refused system call ");
    message.push_number(syscall as i64);
    message.push(b" on the ");
    message.push(thread.as_bytes());
    message.push(b" thread (rerun with --no-seccomp to debug)\n");
    // SAFETY: write and _exit are async-signal-safe and allowed by every filter.
    unsafe {
        libc::write(2, message.bytes.as_ptr().cast(), message.len);
        libc::_exit(STATUS_SECCOMP_VIOLATION);
    }
}

/// A fixed-size message assembled without allocating (for the signal handler).
struct MessageBuffer {
    bytes: [u8; 160],
    len: usize,
}

impl MessageBuffer {
    fn new() -> Self {
        MessageBuffer {
            bytes: [0; 160],
            len: 0,
        }
    }

    fn push(&mut self, text: &[u8]) {
        for &byte in text {
            if let Some(slot) = self.bytes.get_mut(self.len) {
                *slot = byte;
                self.len += 1;
            }
        }
    }

    fn push_number(&mut self, value: i64) {
        if value < 0 {
            self.push(b"-");
        }
        let mut digits = [0u8; 20];
        let mut rest = value.unsigned_abs();
        let mut count = 0;
        loop {
            if let Some(slot) = digits.get_mut(count) {
                *slot = b'0' + (rest % 10) as u8;
            }
            count += 1;
            rest /= 10;
            if rest == 0 || count >= digits.len() {
                break;
            }
        }
        for index in (0..count).rev() {
            if let Some(&digit) = digits.get(index) {
                self.push(&[digit]);
            }
        }
    }

    #[cfg(test)]
    fn text(&self) -> &str {
        std::str::from_utf8(self.bytes.get(..self.len).unwrap_or_default()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_filter_builds_and_refuses_what_no_thread_needs() {
        for kind in ThreadKind::ALL {
            assert!(build(kind).is_ok(), "{kind} filter");
            let allowed = allowed_syscalls(kind);
            for forbidden in [libc::SYS_socket, libc::SYS_execve, libc::SYS_ptrace] {
                assert!(!allowed.contains(&forbidden), "{kind} allows {forbidden}");
            }
        }
        let stdin = allowed_syscalls(ThreadKind::StdinForwarder);
        assert!(!stdin.contains(&libc::SYS_openat) && !stdin.contains(&libc::SYS_ioctl));
        assert!(allowed_syscalls(ThreadKind::Vcpu).contains(&libc::SYS_ioctl));
    }

    #[test]
    fn the_violation_message_names_the_call() {
        let mut message = MessageBuffer::new();
        message.push(b"call ");
        message.push_number(41);
        message.push(b" ");
        message.push_number(0);
        message.push(b" ");
        message.push_number(-7);
        assert_eq!(message.text(), "call 41 0 -7");
        let mut long = MessageBuffer::new();
        long.push(&[b'x'; 400]);
        assert_eq!(long.len, 160);
    }
}
