//! The real-KVM lane (docs/real-kvm-lane.md), `infra` boot: one outer Linux (L1) booted by QEMU's
//! TCG with the real kvm_amd loaded and no snapvmm, which proves the lane itself: KVM works in L1,
//! failures and time-outs turn tests red with the inner output shown, and a missing QEMU or
//! missing images are clear failures.
//!
//! Needs the images of `bash guest-tools/linux/build-images.sh` and qemu-system-x86_64; without
//! them every test here fails with a message that says so. Each `real_kvm_*.rs` file is one L1
//! boot shared by its tests (`lane_support::shared`); cargo runs the files one after another.

use std::path::Path;
use std::sync::OnceLock;

use snapvmm_tests::lane::{images_dir, Job, Lane, LaneError, LaneRun};
use snapvmm_tests::lane_support::{check, shared, SECOND};

const FAILING_OUTPUT: &str = "this output of a failing inner command must be shown";

fn infra_lane() -> Lane {
    Lane::new("infra")
        .job(Job::new("kvm-check", 30 * SECOND, "kvm-check"))
        .job(Job::new(
            "failing-command",
            5 * SECOND,
            &format!("echo '{FAILING_OUTPUT}'; exit 3"),
        ))
        .job(Job::new(
            "over-budget",
            2 * SECOND,
            "echo started; sleep 60; echo never",
        ))
        .job(Job::new(
            "unterminated-output",
            5 * SECOND,
            "printf 'no newline at the end'",
        ))
        .job(Job::new("stdin-fed", 5 * SECOND, "cat").stdin(b"line one\nline two\n"))
}

fn infra() -> &'static LaneRun {
    static RUN: OnceLock<Result<LaneRun, String>> = OnceLock::new();
    shared(&RUN, infra_lane)
}

#[test]
fn l1_boots_with_real_kvm_amd() {
    let run = infra();
    assert!(
        run.problems.is_empty(),
        "L1 problems: {:?}\nlog: {}",
        run.problems,
        run.log_path.display()
    );
    let job = check(run.job("kvm-check"));
    check(job.expect_success());
    check(job.expect_output("kvm-check: OK"));
    // Nested paging on, and the userfaultfd mode snapvmm relies on (needs the 6.12 kernel).
    check(job.expect_output(" npt=Y"));
    check(job.expect_output("wp_async=1"));
    assert!(
        run.boot_lines.iter().any(|line| line.contains("kernel=6.")),
        "{:?}",
        run.boot_lines
    );
    for module in ["irqbypass", "kvm", "ccp", "kvm_amd"] {
        let line = format!("@@LANE insmod {module} rc=0");
        assert!(
            run.boot_lines.contains(&line),
            "missing `{line}` in {:?}",
            run.boot_lines
        );
    }
}

#[test]
fn failing_inner_command_is_reported_with_its_output() {
    let job = check(infra().job("failing-command"));
    let error = job
        .expect_success()
        .expect_err("status 3 must not pass as success")
        .to_string();
    assert!(error.contains("expected status 0, got status 3"), "{error}");
    assert!(
        error.contains(FAILING_OUTPUT),
        "the inner output is missing from the failure: {error}"
    );
    check(job.expect_status(3));
}

/// The lane turns a test red, with the inner command's output in the failure message.
#[test]
#[should_panic(expected = "this output of a failing inner command must be shown")]
fn failing_inner_command_turns_the_test_red() {
    let job = check(infra().job("failing-command"));
    check(job.expect_success());
}

#[test]
fn job_over_its_budget_is_killed_and_later_jobs_still_run() {
    let run = infra();
    let job = check(run.job("over-budget"));
    assert!(job.timed_out, "{job:?}");
    assert_eq!(job.status, 128 + 9, "killed with SIGKILL: {job:?}");
    assert_eq!(job.output, "started\n");
    assert!(
        job.elapsed >= 2 * SECOND && job.elapsed < 5 * SECOND,
        "{:?}",
        job.elapsed
    );
    let error = job
        .expect_success()
        .expect_err("a time-out is a failure")
        .to_string();
    assert!(error.contains("time-out"), "{error}");
    check(run.job("stdin-fed"));
}

#[test]
fn job_output_and_stdin_are_exact() {
    let run = infra();
    assert_eq!(
        check(run.job("unterminated-output")).output,
        "no newline at the end"
    );
    let fed = check(run.job("stdin-fed"));
    check(fed.expect_success());
    assert_eq!(fed.output, "line one\nline two\n");
}

#[test]
fn missing_qemu_is_a_clear_failure() {
    let error = Lane::new("no-qemu")
        .qemu(Path::new("/nonexistent/qemu-system-x86_64"))
        .run()
        .unwrap_err();
    assert!(matches!(error, LaneError::QemuMissing { .. }), "{error:?}");
    assert!(error.to_string().contains("not found"), "{error}");
}

#[test]
fn missing_images_are_a_clear_failure() {
    let empty = images_dir().join("does-not-exist");
    let error = Lane::new("no-images").images(&empty).run().unwrap_err();
    assert!(matches!(error, LaneError::ImageMissing { .. }), "{error:?}");
    assert!(error.to_string().contains("build-images.sh"), "{error}");
}
