//! What the real-KVM lane's test files (`tests/tests/real_kvm_*.rs`, one per L1 boot) share: the
//! one L1 boot of a file that all its tests read, failures with the lane's whole message, snapvmm's
//! exit statuses, and the `snapvmm run` of a bare-metal guest inside L1.

use std::sync::OnceLock;
use std::time::Duration;

use crate::lane::{bare_metal_guest_in_l1, LaneError, LaneRun};

pub const SECOND: Duration = Duration::from_secs(1);

/// Exit statuses of snapvmm for the ways a guest stops (README.md, the boot contract).
pub const STATUS_EXIT_CODE_CLAMPED: i32 = 63;
pub const STATUS_RESET: i32 = 65;
pub const STATUS_TRIPLE_FAULT: i32 = 66;
pub const STATUS_TIMED_OUT: i32 = 68;
pub const STATUS_INTERRUPTED: i32 = 130;

/// snapvmm's own time-out for a bare-metal guest (they finish in ~0.2 s in L1).
pub const BARE_METAL_TIMEOUT_SECONDS: u32 = 20;

/// Fails the test with the lane's full message (the inner output included).
#[track_caller]
pub fn check<T>(result: Result<T, LaneError>) -> T {
    result.unwrap_or_else(|error| panic!("{error}"))
}

/// The run of `lane`, booted by the first test that asks (one L1 at a time per test process) and
/// shared by every test of the file; prints the run's timings once. A failed boot fails every test
/// that asks, with the same message.
pub fn shared(
    cell: &'static OnceLock<Result<LaneRun, String>>,
    lane: fn() -> crate::lane::Lane,
) -> &'static LaneRun {
    let run = cell.get_or_init(|| {
        let run = lane().run().map_err(|error| error.to_string())?;
        let times = &run.times;
        eprintln!(
            "lane run {}: L1 /init at uptime {:?} s, insmod {:?} s, ready after {:?}, total {:.2} s; problems: {:?}",
            run.log_path.display(),
            times.l1_uptime_at_init,
            times.insmod_seconds,
            times.ready,
            times.total.as_secs_f64(),
            run.problems
        );
        for job in &run.jobs {
            eprintln!("  job {}: status {} in {:.2} s", job.name, job.status, job.elapsed.as_secs_f64());
        }
        Ok(run)
    });
    match run {
        Ok(run) => run,
        Err(error) => panic!("{error}"),
    }
}

/// Where the bare-metal guest `name` (a guest-tools name) is inside L1.
pub fn bare_metal_path(name: &str) -> String {
    check(bare_metal_guest_in_l1(name))
}

/// `snapvmm run` of the bare-metal guest `guest` (a guest-tools name) with `args` (shell words).
pub fn bare_metal_command(guest: &str, args: &str) -> String {
    format!(
        "snapvmm run --kernel {} --timeout {BARE_METAL_TIMEOUT_SECONDS} {args}",
        bare_metal_path(guest)
    )
}
