//! The real-KVM lane (docs/real-kvm-lane.md), `bare-metal` boot: guest-tools' bare-metal guests
//! (the suite of tests/tests/baremetal.rs) under snapvmm inside an outer Linux (L1, QEMU TCG with
//! the real kvm_amd): the same guests and the same expectations, on kvm_amd (NPT, TDP MMU)
//! instead of this machine's kvm_pvm shadow MMU.
//!
//! Needs the images of `bash guest-tools/linux/build-images.sh` and qemu-system-x86_64; without
//! them every test here fails with a message that says so. Each `real_kvm_*.rs` file is one L1
//! boot shared by its tests (`lane_support::shared`); cargo runs the files one after another.

use std::sync::OnceLock;
use std::time::Duration;

use snapvmm_tests::lane::{Job, JobOutcome, Lane, LaneRun};
use snapvmm_tests::lane_support::{
    bare_metal_command, check, shared, BARE_METAL_TIMEOUT_SECONDS, STATUS_EXIT_CODE_CLAMPED,
    STATUS_INTERRUPTED, STATUS_RESET, STATUS_TIMED_OUT, STATUS_TRIPLE_FAULT,
};

/// The job's budget around a bare-metal guest run (snapvmm's own time-out is
/// `BARE_METAL_TIMEOUT_SECONDS`).
const BARE_METAL_BUDGET: Duration = Duration::from_secs(30);
/// Guest RAM beyond L1's own 2 GiB, with RAM above 4 GiB: guest RAM is a MAP_NORESERVE memfd and
/// memmap touches only both ends of each region.
const MEMMAP_MEMORY: &str = "5G";
/// Tiny PVH kernels for the stop statuses, and where they go inside L1.
const TINY_KERNELS: &[(&str, &[u8])] = &[
    ("spin", &[0xeb, 0xfe]),                                  // jmp .
    ("triple", &[0x0f, 0x0b]),                                // ud2 without an IDT
    ("reset", &[0xb0, 0xfe, 0xe6, 0x64, 0xeb, 0xfe]),         // i8042 reset line
    ("exit77", &[0xb8, 77, 0, 0, 0, 0xe7, 0xf4, 0xeb, 0xfe]), // out 0xf4 with 77
];
const TINY_KERNELS_IN_L1: &str = "/lane/tiny";
fn bare_metal_job(name: &str, guest: &str, args: &str) -> Job {
    Job::new(name, BARE_METAL_BUDGET, &bare_metal_command(guest, args))
}

fn tiny_kernel_job(name: &str, kernel: &str, timeout_seconds: u32) -> Job {
    Job::new(
        name,
        BARE_METAL_BUDGET,
        &format!(
            "snapvmm run --kernel {TINY_KERNELS_IN_L1}/{kernel}.elf --timeout {timeout_seconds}"
        ),
    )
}

fn bare_metal_lane() -> Lane {
    let lane = Lane::new("bare-metal").with_snapvmm().bare_metal_guests();
    let lane = TINY_KERNELS.iter().fold(lane, |lane, (name, code)| {
        lane.file(
            &format!("{TINY_KERNELS_IN_L1}/{name}.elf"),
            0o644,
            &snapvmm_tests::lane::tiny_pvh_kernel(code),
        )
    });
    // Ctrl-C: SIGINT to snapvmm while its vCPU spins in KVM_RUN (a background command of a
    // non-interactive shell starts with SIGINT ignored; snapvmm installs its own handler).
    let ctrl_c = format!(
        "snapvmm run --kernel {TINY_KERNELS_IN_L1}/spin.elf --timeout 30 & pid=$!; sleep 1; \
         kill -INT $pid; wait $pid; status=$?; echo \"snapvmm status $status\"; exit $status"
    );
    lane.job(bare_metal_job("bm-hello", "hello", ""))
        .job(Job::new(
            "bm-builtin-default",
            BARE_METAL_BUDGET,
            &format!("snapvmm run --timeout {BARE_METAL_TIMEOUT_SECONDS}"),
        ))
        .job(bare_metal_job("bm-pci-list", "pci-list", ""))
        .job(bare_metal_job(
            "bm-pci-list-slot-7",
            "pci-list",
            "--snapshot-slot 7",
        ))
        .job(bare_metal_job("bm-hello-1g", "hello", "--mem 1G"))
        .job(bare_metal_job(
            "bm-memmap-high",
            "memmap",
            &format!("--mem {MEMMAP_MEMORY}"),
        ))
        .job(bare_metal_job("bm-fault-ud2", "fault", "--cmdline ud2"))
        .job(bare_metal_job(
            "bm-fault-null-read",
            "fault",
            "--cmdline null-read",
        ))
        .job(bare_metal_job("bm-hello-pvh", "hello-pvh", ""))
        .job(bare_metal_job("bm-pvh-hello", "pvh-hello", ""))
        .job(tiny_kernel_job("bm-stop-timeout", "spin", 1))
        .job(tiny_kernel_job("bm-stop-triple-fault", "triple", 10))
        .job(tiny_kernel_job("bm-stop-reset", "reset", 10))
        .job(tiny_kernel_job("bm-stop-exit-code", "exit77", 10))
        .job(Job::new("bm-ctrl-c", BARE_METAL_BUDGET, &ctrl_c))
}

fn bare_metal() -> &'static LaneRun {
    static RUN: OnceLock<Result<LaneRun, String>> = OnceLock::new();
    shared(&RUN, bare_metal_lane)
}

fn bare_metal_job_outcome(name: &str) -> &'static JobOutcome {
    check(bare_metal().job(name))
}

#[test]
fn bare_metal_hello_runs_at_cpl3_on_tdp() {
    let job = bare_metal_job_outcome("bm-hello");
    check(job.expect_success());
    check(job.expect_output("running at CPL 3, RAM 256 MiB"));
    check(job.expect_output("debug-exit port with code 0"));
}

#[test]
fn bare_metal_builtin_default_is_hello_on_tdp() {
    let job = bare_metal_job_outcome("bm-builtin-default");
    check(job.expect_success());
    check(job.expect_output("Hello from snapvmm"));
}

#[test]
fn bare_metal_pci_list_finds_the_host_bridge_and_the_snapshot_device_on_tdp() {
    let job = bare_metal_job_outcome("bm-pci-list");
    check(job.expect_success());
    check(job.expect_output("pci 00:00.0 1b36:0008 class 060000"));
    check(job.expect_output("pci 00:04.0 1234:f987 class ff0000"));
    // Read through the mapped BAR0 from CPL3.
    check(job.expect_output("magic 0x534e4150"));

    let moved = bare_metal_job_outcome("bm-pci-list-slot-7");
    check(moved.expect_success());
    check(moved.expect_output("pci 00:07.0 1234:f987"));
    check(moved.expect_no_output("pci 00:04.0"));
}

#[test]
fn bare_metal_guest_with_one_gib_sees_its_ram_on_tdp() {
    let job = bare_metal_job_outcome("bm-hello-1g");
    check(job.expect_success());
    check(job.expect_output("RAM 1024 MiB"));
}

/// More guest RAM than L1 has, with a region above 4 GiB, written and read back at both ends.
#[test]
fn bare_metal_ram_above_four_gib_is_usable_on_tdp() {
    let job = bare_metal_job_outcome("bm-memmap-high");
    check(job.expect_success());
    let regions: Vec<&str> = job.lines_with_prefix("memmap: region ").collect();
    assert!(
        !regions.is_empty() && regions.iter().all(|region| region.ends_with(" ok")),
        "memmap regions {regions:?}:\n{}",
        job.output
    );
    let above_4g = regions.iter().any(|region| {
        region
            .split_whitespace()
            .nth(1)
            .and_then(|range| range.strip_prefix("0x"))
            .and_then(|range| range.split('-').next())
            .and_then(|start| u64::from_str_radix(start, 16).ok())
            .is_some_and(|start| start >= 1 << 32)
    });
    assert!(
        above_4g,
        "no RAM region above 4 GiB with --mem {MEMMAP_MEMORY}:\n{}",
        job.output
    );
}

#[test]
fn bare_metal_user_faults_are_reported_with_their_vector_on_tdp() {
    // Exit code 32 + vector: #UD = 6, #PF = 14.
    for (job_name, vector, name) in [
        ("bm-fault-ud2", 6, "#UD"),
        ("bm-fault-null-read", 14, "#PF"),
    ] {
        let job = bare_metal_job_outcome(job_name);
        check(job.expect_status(32 + vector));
        check(job.expect_output(&format!("vector {vector} ({name}")));
    }
}

#[test]
fn bare_metal_pvh_entry_of_the_runtime_boots_on_tdp() {
    let job = bare_metal_job_outcome("bm-hello-pvh");
    check(job.expect_success());
    check(job.expect_output("running at CPL 3"));
}

/// The independent PVH/Multiboot kernel prints under snapvmm on real KVM what it prints under
/// QEMU on the host (apart from the entry path).
#[test]
fn bare_metal_independent_pvh_kernel_prints_the_same_as_under_qemu() {
    let job = bare_metal_job_outcome("bm-pvh-hello");
    check(job.expect_success());
    check(job.expect_output("pvh-hello: entered through PVH"));
    let kernel = guest_tools::guest_path("pvh-hello").expect("guest-tools builds pvh-hello");
    let qemu = std::env::var(snapvmm_tests::lane::QEMU_ENV)
        .unwrap_or_else(|_| "qemu-system-x86_64".to_owned());
    let output = std::process::Command::new("timeout")
        .arg("60")
        .arg(&qemu)
        .args([
            "-accel",
            "tcg",
            "-m",
            "256",
            "-nodefaults",
            "-display",
            "none",
        ])
        .args(["-serial", "stdio", "-no-reboot"])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=4", "-kernel"])
        .arg(&kernel)
        .output()
        .unwrap_or_else(|error| panic!("running {qemu}: {error}"));
    let qemu_output = String::from_utf8_lossy(&output.stdout);
    // isa-debug-exit reports code C as (C << 1) | 1.
    assert_eq!(output.status.code(), Some(1), "QEMU: {qemu_output}");
    let guest_lines = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|line| !line.starts_with("snapvmm:") && !line.contains("entered through"))
            .map(str::to_owned)
            .collect()
    };
    let ours = guest_lines(&job.output);
    assert!(!ours.is_empty(), "{}", job.output);
    assert_eq!(
        ours,
        guest_lines(&qemu_output),
        "snapvmm in L1:\n{}\nQEMU:\n{qemu_output}",
        job.output
    );
}

#[test]
fn bare_metal_each_way_a_guest_stops_has_its_own_status_on_tdp() {
    let timeout = bare_metal_job_outcome("bm-stop-timeout");
    check(timeout.expect_status(STATUS_TIMED_OUT));
    check(timeout.expect_output("timed out"));
    let triple = bare_metal_job_outcome("bm-stop-triple-fault");
    check(triple.expect_status(STATUS_TRIPLE_FAULT));
    check(triple.expect_output("triple-faulted"));
    check(bare_metal_job_outcome("bm-stop-reset").expect_status(STATUS_RESET));
    // A debug-exit code above 63 is clamped.
    check(bare_metal_job_outcome("bm-stop-exit-code").expect_status(STATUS_EXIT_CODE_CLAMPED));
}

#[test]
fn bare_metal_ctrl_c_stops_a_running_guest_on_tdp() {
    let job = bare_metal_job_outcome("bm-ctrl-c");
    check(job.expect_status(STATUS_INTERRUPTED));
    check(job.expect_output("interrupted"));
}
