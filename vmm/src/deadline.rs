//! Per-VM run deadlines: a POSIX timer that sends the kick signal to the thread running this VM's
//! vCPU (SIGEV_THREAD_ID), as nyx-lite does with a timerfd and a real-time signal. One timer per
//! VM. It is re-armed only when it would fire too late or has fired: a deadline at or after the
//! pending expiry needs no syscall, because an early expiry only kicks the vCPU and `Machine::run`
//! then re-arms for the real deadline and goes on. So a fuzzer that passes `now + timeout` to every
//! execution pays one `timer_settime` per timeout period, not one per execution, and the CLI's
//! fixed `--timeout` pays one in all.

use std::time::Instant;

use thiserror::Error;

use crate::signals;

#[derive(Debug, Error)]
pub enum DeadlineError {
    #[error("cannot create the run deadline timer: {0}")]
    Create(std::io::Error),
    #[error("cannot arm the run deadline timer: {0}")]
    Arm(std::io::Error),
}

/// The timer of one VM, bound to the thread that last ran it.
pub struct DeadlineTimer {
    timer: Option<(libc::timer_t, libc::pid_t)>,
    armed_for: Option<Instant>,
}

// SAFETY: `timer_t` is an opaque kernel handle; using it from another thread is allowed.
unsafe impl Send for DeadlineTimer {}

thread_local! {
    // Cached: it is asked once per `run`. 0: not known yet (or forgotten in a forked child).
    static THREAD_ID: std::cell::Cell<libc::pid_t> = const { std::cell::Cell::new(0) };
}

fn current_tid() -> libc::pid_t {
    THREAD_ID.with(|cached| match cached.get() {
        0 => {
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() };
            cached.set(tid);
            tid
        }
        tid => tid,
    })
}

/// In the child of a `fork` (`--jobs`: a machine is built in each job after the fork), the
/// forking thread has a new id: forget the cached one.
extern "C" fn forget_thread_id_after_fork() {
    THREAD_ID.with(|cached| cached.set(0));
}

fn forget_thread_id_on_fork() {
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    REGISTERED.call_once(|| {
        // SAFETY: registers a child handler that only writes a thread-local Cell.
        unsafe { libc::pthread_atfork(None, None, Some(forget_thread_id_after_fork)) };
    });
}

impl DeadlineTimer {
    pub fn new() -> Self {
        forget_thread_id_on_fork();
        DeadlineTimer {
            timer: None,
            armed_for: None,
        }
    }

    /// Makes the kick signal reach the calling thread at `deadline` (now, if it has passed).
    pub fn arm(&mut self, deadline: Instant) -> Result<(), DeadlineError> {
        let tid = current_tid();
        let timer = match self.timer {
            Some((timer, owner)) if owner == tid => timer,
            _ => {
                self.delete();
                let timer = create_timer(tid)?;
                self.timer = Some((timer, tid));
                timer
            }
        };
        let now = Instant::now();
        if self
            .armed_for
            .is_some_and(|fires| fires <= deadline && fires > now)
        {
            return Ok(());
        }
        let remaining = deadline.saturating_duration_since(now);
        // A zero it_value disarms: a deadline that has passed fires after one nanosecond.
        let nanos = remaining.as_nanos().max(1);
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: (nanos / 1_000_000_000).min(i64::MAX as u128) as libc::time_t,
                tv_nsec: (nanos % 1_000_000_000) as libc::c_long,
            },
        };
        // SAFETY: `timer` is a live timer created by `create_timer`; `spec` is a valid itimerspec.
        if unsafe { libc::timer_settime(timer, 0, &spec, std::ptr::null_mut()) } != 0 {
            return Err(DeadlineError::Arm(std::io::Error::last_os_error()));
        }
        self.armed_for = Some(deadline);
        Ok(())
    }

    fn delete(&mut self) {
        if let Some((timer, _)) = self.timer.take() {
            // SAFETY: `timer` was created by timer_create and is deleted once.
            unsafe { libc::timer_delete(timer) };
        }
        self.armed_for = None;
    }
}

impl Default for DeadlineTimer {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for DeadlineTimer {
    fn drop(&mut self) {
        self.delete();
    }
}

fn create_timer(tid: libc::pid_t) -> Result<libc::timer_t, DeadlineError> {
    // SAFETY: an all-zero sigevent is a valid starting point; the fields used are set below.
    let mut event: libc::sigevent = unsafe { std::mem::zeroed() };
    event.sigev_notify = libc::SIGEV_THREAD_ID;
    event.sigev_signo = signals::kick_signal();
    event.sigev_notify_thread_id = tid;
    let mut timer: libc::timer_t = std::ptr::null_mut();
    // SAFETY: valid clock id, a filled sigevent and a place for the timer id.
    if unsafe { libc::timer_create(libc::CLOCK_MONOTONIC, &mut event, &mut timer) } != 0 {
        return Err(DeadlineError::Create(std::io::Error::last_os_error()));
    }
    Ok(timer)
}
