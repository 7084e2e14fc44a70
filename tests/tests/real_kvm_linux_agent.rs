//! The real-KVM lane (docs/real-kvm-lane.md), `linux-agent` boot: `snapvmm fuzz` fuzzes a Linux
//! user-space libFuzzer harness inside the stock Debian kernel, through the guest agent
//! (guest-tools/linux-agent/, docs/linux-targets.md), under snapvmm inside an outer Linux (L1,
//! QEMU TCG with the real kvm_amd), and finds its planted bug; `snapvmm repro` replays the crash.
//!
//! The harness is guest-tools/linux-agent/harnesses/linux-fuzz-demo.c: four magic bytes compared
//! one at a time, then a write through a NULL pointer (SIGSEGV, CRASH code 0x2000 + 11). The
//! other ways a run ends (abort, trap, exit, the input window's guard and read-only pages, a
//! stack overflow, a normal return) are replayed with `snapvmm repro` on
//! guest-tools/linux-agent/harnesses/linux-endings.c.
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
/// The harness whose input chooses how the run ends.
const ENDINGS_HARNESS: &str = "linux-endings";
/// CRASH codes of the agent (guest-tools/linux-agent/agent.h): 0x2000 + the signal number.
const SIGNAL_CODE_BASE: u32 = 0x2000;
const SIGSEGV_CODE: u32 = SIGNAL_CODE_BASE + 11;
const SIGABRT_CODE: u32 = SIGNAL_CODE_BASE + 6;
const SIGILL_CODE: u32 = SIGNAL_CODE_BASE + 4;
/// exit() during a run.
const EXIT_CODE: u32 = 0x1006;
/// `snapvmm repro`'s status for a crashing input.
const STATUS_CRASH: i32 = 71;
/// The endings replayed: (job name, the two-byte input, the line `snapvmm repro` prints, its
/// status).
const ENDINGS: &[(&str, &str, &str, i32)] = &[
    (
        "ending-abort",
        "!a",
        "crash: CRASH code 8198 ",
        STATUS_CRASH,
    ),
    ("ending-trap", "!t", "crash: CRASH code 8196 ", STATUS_CRASH),
    ("ending-exit", "!e", "crash: CRASH code 4102 ", STATUS_CRASH),
    (
        "ending-read-past-input",
        "!r",
        "crash: CRASH code 8203 ",
        STATUS_CRASH,
    ),
    (
        "ending-write-to-input",
        "!w",
        "crash: CRASH code 8203 ",
        STATUS_CRASH,
    ),
    (
        "ending-stack-overflow",
        "!s",
        "crash: CRASH code 8203 ",
        STATUS_CRASH,
    ),
    ("ending-normal", "!n", "normal end (code 0)", 0),
];
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

/// Restores of the verified campaign, each compared with the snapshot (RAM, vCPU with its LAPIC,
/// devices): a Linux guest's kernel takes interrupts and reprograms its timer during runs that
/// end at CPL3, which a restore must undo too. A comparison of the 256 MiB costs ~0.1 s under TCG.
const VERIFIED_RUNS: u32 = 150;
const VERIFY_BUDGET: Duration = Duration::from_secs(BOOT_TIMEOUT_SECONDS as u64 + 90);

/// snapvmm's target options for the guest running `harness`.
fn guest_args(harness: &str) -> String {
    let cmdline = GUEST_CMDLINE.replace(&format!("run={HARNESS}"), &format!("run={harness}"));
    format!(
        "--kernel \"$LANE_GUEST_VMLINUX\" --initrd \"$LANE_GUEST_INITRD\" --mem 256M \
         --cmdline '{cmdline}'"
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
        guest_args(HARNESS)
    )
}

/// A short campaign whose every restore is verified; its summary line is kept.
fn verify_script() -> String {
    format!(
        "snapvmm fuzz {} --out /tmp/linux-agent-verify --max-execs {VERIFIED_RUNS} \
         --verify-every 1 --boot-timeout {BOOT_TIMEOUT_SECONDS} > /tmp/linux-agent-verify.log 2>&1\n\
         status=$?\n\
         grep -a -E 'snapshots:|snapvmm:' /tmp/linux-agent-verify.log\n\
         exit $status\n",
        guest_args(HARNESS)
    )
}

/// `snapvmm repro` of the first crash the campaign filed.
fn repro_script() -> String {
    format!(
        "set -- {OUT_DIR}/default/crashes/id:*\n\
         [ -f \"$1\" ] || {{ echo 'no crash file to replay'; exit 99; }}\n\
         snapvmm repro {} --timeout-ms 5000 --boot-timeout {BOOT_TIMEOUT_SECONDS} \"$1\"\n",
        guest_args(HARNESS)
    )
}

/// `snapvmm repro` of `linux-endings` on `input`.
fn ending_script(input: &str) -> String {
    format!(
        "printf '%s' '{input}' > /tmp/ending.in\n\
         snapvmm repro {} --timeout-ms 5000 --boot-timeout {BOOT_TIMEOUT_SECONDS} /tmp/ending.in\n",
        guest_args(ENDINGS_HARNESS)
    )
}

fn linux_program(name: &str) -> std::path::PathBuf {
    guest_tools::linux_program_path(name).unwrap_or_else(|| {
        panic!(
            "guest-tools built no Linux program {name} (guest-tools/linux-agent/harnesses/): {:?}",
            guest_tools::LINUX_PROGRAMS
        )
    })
}

fn linux_agent_lane() -> Lane {
    let lane = Lane::new("linux-agent")
        .with_snapvmm()
        .guest_program(HARNESS, &linux_program(HARNESS))
        .guest_program(ENDINGS_HARNESS, &linux_program(ENDINGS_HARNESS))
        .job(Job::new("linux-agent-fuzz", FUZZ_BUDGET, &fuzz_script()))
        .job(Job::new("linux-agent-repro", REPRO_BUDGET, &repro_script()))
        .job(Job::new(
            "linux-agent-verify",
            VERIFY_BUDGET,
            &verify_script(),
        ));
    ENDINGS.iter().fold(lane, |lane, (name, input, _, _)| {
        lane.job(Job::new(name, REPRO_BUDGET, &ending_script(input)))
    })
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

/// Every restore of a Linux guest whose kernel ran during the run (timer interrupts, its
/// TSC-deadline timer armed at the SAVE) equals the snapshot: RAM, registers, LAPIC, MSRs,
/// devices.
#[test]
fn restores_of_a_linux_guest_are_exact() {
    let job = check(linux_agent().job("linux-agent-verify"));
    check(job.expect_success());
    let summary = job
        .output
        .lines()
        .find(|line| line.contains("snapshots:"))
        .unwrap_or_else(|| panic!("no snapshot summary:\n{}", job.output));
    let verified: u64 = summary
        .split(" verified")
        .next()
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no verified count in: {summary}"));
    assert!(
        verified >= u64::from(VERIFIED_RUNS),
        "only {verified} of {VERIFIED_RUNS} restores verified: {summary}"
    );
}

#[test]
fn snapvmm_repro_replays_the_linux_crash() {
    let job = check(linux_agent().job("linux-agent-repro"));
    check(job.expect_status(STATUS_CRASH));
    check(job.expect_output(&format!("crash: CRASH code {SIGSEGV_CODE} ")));
}

/// Every ending of a run, replayed: fatal signals become CRASH with 0x2000 + the signal, exit()
/// the exit code, a return a normal end.
#[test]
fn every_ending_of_a_linux_harness_run_is_reported() {
    let run = linux_agent();
    assert_eq!(
        [SIGABRT_CODE, SIGILL_CODE, EXIT_CODE, SIGSEGV_CODE],
        [8198, 8196, 4102, 8203],
        "the codes of ENDINGS"
    );
    let mut failures = Vec::new();
    for (name, input, expected, status) in ENDINGS {
        let outcome = check(run.job(name));
        if let Err(error) = outcome
            .expect_status(*status)
            .and_then(|job| job.expect_output(expected))
        {
            failures.push(format!("input {input:?}: {error}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
