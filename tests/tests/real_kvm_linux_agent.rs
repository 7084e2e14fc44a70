//! The real-KVM lane (docs/real-kvm-lane.md), `linux-agent` boot: `snapvmm fuzz` fuzzes a Linux
//! user-space libFuzzer harness inside the stock Debian kernel, through the guest agent
//! (guest-tools/linux-agent/, docs/linux-targets.md), under snapvmm inside an outer Linux (L1,
//! QEMU TCG with the real kvm_amd), and finds its planted bug; `snapvmm repro` replays the crash.
//!
//! The harness is guest-tools/linux-agent/harnesses/linux-fuzz-demo.c: four magic bytes compared
//! one at a time, then a write through a NULL pointer (SIGSEGV, CRASH code 0x2000 + 11).
//!
//! Needs the images of `bash guest-tools/linux/build-images.sh` and qemu-system-x86_64; without
//! them every test here fails with a message that says so. Each `real_kvm_*.rs` file is one L1
//! boot shared by its tests (`lane_support::shared`); cargo runs the files one after another.

use std::sync::OnceLock;
use std::time::Duration;

use snapvmm_tests::lane::{Job, JobOutcome, Lane, LaneRun};
use snapvmm_tests::lane_support::{check, shared};

/// The harness program (a guest-tools Linux program) and what its planted bug is filed as.
const HARNESS: &str = "linux-fuzz-demo";
/// SIGSEGV (11) caught by the agent: AGENT_CRASH_SIGNAL_BASE (0x2000) + 11.
const SIGSEGV_CODE: u32 = 0x2000 + 11;
/// What the input of the planted bug starts with.
const MAGIC: &str = "SNAP";
/// The inner guest's command line. The watchdogs would see time jump at every restore (the clock
/// runs on, the kernel's timestamps in RAM go back) and print soft-lockup reports; the actions
/// after `--` run the harness and, should the agent stop before its SAVE, leave through the
/// debug-exit port (so `snapvmm fuzz` says so at once instead of waiting for its boot timeout).
const GUEST_CMDLINE: &str =
    "console=ttyS0 quiet pci=noearly panic=-1 nowatchdog nosoftlockup -- run=linux-fuzz-demo exit=3";
/// Where the campaign writes inside L1 (L1's /tmp is a tmpfs, kept between jobs).
const OUT_DIR: &str = "/tmp/linux-agent-out";
/// The campaign's own limits: the guest boots to its SAVE in ~15 s inside the lane; a run costs
/// about a millisecond there (exits ~50 us, restores of a few pages). The bug is found in a few
/// thousand runs.
const BOOT_TIMEOUT_SECONDS: u32 = 90;
const MAX_TIME_SECONDS: u32 = 150;
const FUZZ_BUDGET: Duration =
    Duration::from_secs(BOOT_TIMEOUT_SECONDS as u64 + MAX_TIME_SECONDS as u64 + 30);
const REPRO_BUDGET: Duration = Duration::from_secs(BOOT_TIMEOUT_SECONDS as u64 + 30);

fn guest_args() -> String {
    format!(
        "--kernel \"$LANE_GUEST_VMLINUX\" --initrd \"$LANE_GUEST_INITRD\" --mem 256M \
         --cmdline '{GUEST_CMDLINE}'"
    )
}

/// The campaign; then every crash file's name and first bytes, and the agent's lines of the
/// guest's serial log, as `@@` lines for the test to read.
fn fuzz_script() -> String {
    format!(
        "snapvmm fuzz {} --out {OUT_DIR} --stop-on-crash --max-time {MAX_TIME_SECONDS} \
         --boot-timeout {BOOT_TIMEOUT_SECONDS} --serial-log\n\
         status=$?\n\
         echo \"@@FUZZ status=$status\"\n\
         for crash in {OUT_DIR}/default/crashes/id:*; do\n\
           [ -f \"$crash\" ] || continue\n\
           echo \"@@CRASH ${{crash##*/}}\"\n\
           echo \"@@CRASH-START $(head -c 4 \"$crash\")\"\n\
         done\n\
         grep -a 'linux-agent' {OUT_DIR}/default/serial.log | sed 's/^/@@SERIAL /'\n\
         grep -a -E 'execs_done|corpus_count|run_time' {OUT_DIR}/default/fuzzer_stats\n\
         exit $status\n",
        guest_args()
    )
}

/// `snapvmm repro` of the first crash the campaign filed.
fn repro_script() -> String {
    format!(
        "set -- {OUT_DIR}/default/crashes/id:*\n\
         [ -f \"$1\" ] || {{ echo 'no crash file to replay'; exit 99; }}\n\
         snapvmm repro {} --timeout-ms 5000 --boot-timeout {BOOT_TIMEOUT_SECONDS} \"$1\"\n",
        guest_args()
    )
}

fn linux_agent_lane() -> Lane {
    let harness = guest_tools::linux_program_path(HARNESS).unwrap_or_else(|| {
        panic!(
            "guest-tools built no Linux program {HARNESS} (guest-tools/linux-agent/harnesses/): {:?}",
            guest_tools::LINUX_PROGRAMS
        )
    });
    Lane::new("linux-agent")
        .with_snapvmm()
        .guest_program(HARNESS, &harness)
        .job(Job::new("linux-agent-fuzz", FUZZ_BUDGET, &fuzz_script()))
        .job(Job::new("linux-agent-repro", REPRO_BUDGET, &repro_script()))
}

fn linux_agent() -> &'static LaneRun {
    static RUN: OnceLock<Result<LaneRun, String>> = OnceLock::new();
    shared(&RUN, linux_agent_lane)
}

fn fuzz_job() -> &'static JobOutcome {
    check(linux_agent().job("linux-agent-fuzz"))
}

#[test]
fn the_agent_saves_with_coverage_and_comparison_log_in_the_device() {
    let job = fuzz_job();
    let agent_line = job
        .lines_with_prefix("@@SERIAL ")
        .find(|line| line.contains("; SAVE"))
        .unwrap_or_else(|| panic!("the agent never reached its SAVE:\n{}", job.output));
    for expected in [
        "coverage 65536 bytes in BAR4",
        "comparison log in BAR1",
        "pages locked",
    ] {
        assert!(
            agent_line.contains(expected),
            "{expected:?} missing: {agent_line}"
        );
    }
}

#[test]
fn snapvmm_fuzz_finds_the_linux_harness_planted_bug() {
    let job = fuzz_job();
    // --stop-on-crash ends the campaign with status 0 at the first crash; --max-time alone
    // would end it with 0 too, so the crash file is what tells them apart.
    check(job.expect_success());
    let crashes: Vec<&str> = job.lines_with_prefix("@@CRASH ").collect();
    let wanted = format!("kind:crash,code:{SIGSEGV_CODE},");
    assert!(
        crashes.iter().any(|name| name.contains(&wanted)),
        "no crash filed as {wanted} among {crashes:?}; output:\n{}",
        job.output
    );
    let starts: Vec<&str> = job.lines_with_prefix("@@CRASH-START ").collect();
    assert!(
        starts.iter().any(|start| start.trim() == MAGIC),
        "no crash input starts with {MAGIC}: {starts:?}"
    );
}

#[test]
fn snapvmm_repro_replays_the_linux_crash() {
    let job = check(linux_agent().job("linux-agent-repro"));
    check(job.expect_status(71));
    check(job.expect_output(&format!("crash: CRASH code {SIGSEGV_CODE}")));
}
