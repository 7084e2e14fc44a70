//! The real-KVM lane (docs/real-kvm-lane.md): tests that run inside an outer Linux (L1) booted by
//! QEMU's TCG with the real kvm_amd loaded. Needs the images of
//! `bash guest-tools/linux/build-images.sh` and qemu-system-x86_64; without them every test here
//! fails with a message that says so.
//!
//! Checks share L1 boots: the `infra` run proves the lane itself (KVM works in L1, failures and
//! time-outs turn tests red with the inner output shown), the `guest` run boots the stock Debian
//! kernel with snapvmm inside L1, the `bare-metal` run runs guest-tools' bare-metal guests (the
//! suite of baremetal.rs) and the `snapshots` run the snapshot exactness suite (snapshot.rs) under
//! snapvmm on kvm_amd's TDP MMU, where those suites run on this machine's kvm_pvm shadow MMU.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use snapvmm_tests::lane::{images_dir, Job, JobOutcome, Lane, LaneError, LaneRun};

const SECOND: Duration = Duration::from_secs(1);

/// Fails the test with the lane's full message (the inner output included).
fn check<T>(result: Result<T, LaneError>) -> T {
    result.unwrap_or_else(|error| panic!("{error}"))
}

fn shared(
    cell: &'static OnceLock<Result<LaneRun, String>>,
    lane: fn() -> Lane,
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

// ---------------------------------------------------------------------------------------------
// The lane itself: one L1 boot, no snapvmm.

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

// ---------------------------------------------------------------------------------------------
// snapvmm inside L1 boots the stock Debian kernel (the same 6.12 package) with a busybox
// initramfs whose /init is guest-tools/linux/guest-init.sh.

/// The inner guest's command line; the guest init's actions follow `--`.
const GUEST_CMDLINE: &str = "console=ttyS0 quiet pci=noearly panic=-1";
/// snapvmm's own time-out for one guest run (a boot takes ~15 s in the lane), and the job's
/// budget around it.
const GUEST_TIMEOUT_SECONDS: u32 = 45;
const GUEST_BUDGET: Duration = Duration::from_secs(60);
/// Exit statuses of snapvmm (the boot contract).
const STATUS_RESET: i32 = 65;
/// What the `guest-boot` guest writes to the debug-exit port once its init ran.
const BOOT_EXIT_CODE: i32 = 7;

/// A job that boots the inner guest (the stock bzImage) with `snapvmm run`; `actions` go to the
/// guest's /init. `extra_cmdline` comes before them (e.g. a broken `rdinit=`).
fn guest_job(name: &str, extra_cmdline: &str, actions: &str) -> Job {
    Job::new(name, GUEST_BUDGET, &guest_command(extra_cmdline, actions))
}

fn guest_command(extra_cmdline: &str, actions: &str) -> String {
    snapvmm_command("$LANE_GUEST_KERNEL", extra_cmdline, actions)
}

/// `snapvmm run` of `kernel` (a path or a variable of the L1 job environment) with the guest
/// initramfs.
fn snapvmm_command(kernel: &str, extra_cmdline: &str, actions: &str) -> String {
    format!(
        "snapvmm run --kernel \"{kernel}\" --initrd \"$LANE_GUEST_INITRD\" --mem 256M \
         --timeout {GUEST_TIMEOUT_SECONDS} --cmdline '{GUEST_CMDLINE} {extra_cmdline} -- {actions}'"
    )
}

fn guest_lane() -> Lane {
    // Types on snapvmm's stdin once the guest shell runs (lane-chat waits for it); the guest
    // then leaves through the debug-exit port, so this does not depend on poweroff working.
    let typed = format!(
        "lane-chat 'expect=@@GUEST action shell' 'expect=# ' 'send=echo TYPED-$((6*7))\\n' \
         expect=TYPED-42 'send=exit\\n' -- {}",
        guest_command("", "shell exit=5")
    );
    // The guest's view of the platform in one line (its shell expands it), then poweroff; L1's
    // clock first, to compare the guest's RTC-set clock with.
    let platform = format!(
        "echo \"L1 epoch $(date +%s)\"; lane-chat 'expect=@@GUEST action shell' 'expect=# ' \
         'send=echo PLATFORM rtc=$(cat /sys/class/rtc/rtc0/name) epoch=$(date +%s) \
         ioapic=$(grep -c IO-APIC /proc/interrupts) tables= $(ls /sys/firmware/acpi/tables)\\n' \
         expect=rtc=rtc_cmos 'send=exit\\n' -- {}",
        guest_command("", "shell poweroff")
    );
    let boot_actions = format!("pci exit={BOOT_EXIT_CODE}");
    let lane = Lane::new("guest").with_snapvmm();
    // Every static Linux program of guest-tools (linux-programs/) goes into the guest initramfs.
    let lane = guest_tools::LINUX_PROGRAMS.iter().fold(lane, |lane, name| {
        match guest_tools::linux_program_path(name) {
            Some(path) => lane.guest_program(name, &path),
            None => lane,
        }
    });
    lane.job(Job::new("snapvmm-help", 10 * SECOND, "snapvmm run --help"))
        .job(guest_job("guest-boot", "", &boot_actions))
        // The same kernel as an ELF with a PVH note: snapvmm's PVH entry instead of the bzImage.
        .job(Job::new(
            "guest-boot-pvh",
            GUEST_BUDGET,
            &snapvmm_command("$LANE_GUEST_VMLINUX", "", &boot_actions),
        ))
        .job(Job::new("guest-typed-command", GUEST_BUDGET, &typed))
        // The snapshot device from a Linux user program: SAVE, change, RESTORE on real KVM.
        .job(Job::new(
            "guest-snapshot-demo",
            GUEST_BUDGET,
            &snapvmm_command(
                "$LANE_GUEST_VMLINUX",
                "",
                &format!("run=snapshot-demo {boot_actions}"),
            ),
        ))
        .job(guest_job("guest-reboot", "", "reboot"))
        // A working poweroff ends the run within a second of the action: no waiting for --timeout.
        .job(Job::new(
            "guest-poweroff",
            GUEST_BUDGET,
            &format!(
                "lane-chat 'expect=@@GUEST action poweroff' exit-within=10000 -- {}",
                guest_command("", "poweroff")
            ),
        ))
        .job(Job::new("guest-platform", GUEST_BUDGET, &platform))
        // With an initramfs the kernel runs rdinit= (default /init); init= only after a root mount.
        .job(guest_job(
            "guest-broken-init",
            "rdinit=/nonexistent init=/nonexistent",
            &boot_actions,
        ))
}

fn guest() -> &'static LaneRun {
    static RUN: OnceLock<Result<LaneRun, String>> = OnceLock::new();
    shared(&RUN, guest_lane)
}

/// What the lane accepts as a good boot: the guest's init ran and ended the run through the
/// debug-exit port with the expected code.
fn expect_guest_booted(job: &JobOutcome) -> Result<&JobOutcome, LaneError> {
    job.expect_status(BOOT_EXIT_CODE)?
        .expect_output("@@GUEST ready")
}

#[test]
fn snapvmm_runs_inside_l1() {
    let job = check(guest().job("snapvmm-help"));
    check(job.expect_success());
    check(job.expect_output("--kernel"));
}

#[test]
fn stock_linux_boots_to_userspace() {
    let job = check(guest().job("guest-boot"));
    check(expect_guest_booted(job));
    check(job.expect_output("@@GUEST action exit=7"));
}

#[test]
fn stock_linux_boots_through_the_pvh_entry() {
    let job = check(guest().job("guest-boot-pvh"));
    check(expect_guest_booted(job));
}

#[test]
fn guest_sees_the_pci_host_bridge() {
    let job = check(guest().job("guest-boot"));
    check(job.expect_output("@@GUEST action pci"));
    let devices: Vec<&str> = job.lines_with_prefix("@@GUEST pci ").collect();
    assert!(
        devices
            .iter()
            .any(|device| device.starts_with("0000:00:00.0 1b36:0008 class=0x060000")),
        "no host bridge 1b36:0008 at 00:00.0 among {devices:?}; guest output:\n{}",
        job.output
    );
}

#[test]
fn snapshot_restore_from_a_linux_guest_rolls_back_its_memory() {
    let job = check(guest().job("guest-snapshot-demo"));
    check(job.expect_output("@@GUEST action run=snapshot-demo"));
    check(job.expect_output("snapshot-demo: PASS"));
    check(job.expect_output("@@GUEST status snapshot-demo rc=0"));
    check(expect_guest_booted(job));
}

#[test]
fn command_typed_on_snapvmm_stdin_reaches_the_guest_shell() {
    let job = check(guest().job("guest-typed-command"));
    // 42 appears only if the guest shell evaluated what was typed.
    check(job.expect_output("TYPED-42"));
    check(job.expect_status(5));
}

#[test]
fn guest_reboot_makes_snapvmm_exit_with_the_reset_status() {
    let job = check(guest().job("guest-reboot"));
    check(job.expect_output("@@GUEST action reboot"));
    check(job.expect_status(STATUS_RESET));
}

#[test]
fn guest_poweroff_makes_snapvmm_exit_with_status_0() {
    let job = check(guest().job("guest-poweroff"));
    check(job.expect_output("@@GUEST action poweroff"));
    check(job.expect_status(0));
}

/// What the ACPI tables and the CMOS RTC give a stock Linux: the tables in sysfs, interrupts
/// through the IOAPIC, and a system clock set from the RTC at boot (without it, 1970).
#[test]
fn guest_finds_acpi_tables_ioapic_and_a_cmos_rtc_with_the_wall_clock() {
    let job = check(guest().job("guest-platform"));
    check(job.expect_status(0));
    let field = |line: &str, key: &str| -> Option<String> {
        line.split_whitespace()
            .find_map(|word| word.strip_prefix(key))
            .map(str::to_owned)
    };
    let l1_epoch: i64 = job
        .lines_with_prefix("L1 epoch ")
        .next()
        .and_then(|epoch| epoch.trim().parse().ok())
        .unwrap_or_else(|| panic!("no L1 epoch in:\n{}", job.output));
    // The shell's echo of the typed command starts with the prompt; its output line does not.
    let platform = job
        .lines_with_prefix("PLATFORM ")
        .find(|line| line.starts_with("rtc="))
        .unwrap_or_else(|| panic!("no PLATFORM line in:\n{}", job.output));
    assert_eq!(
        field(platform, "rtc=").as_deref(),
        Some("rtc_cmos"),
        "{platform}"
    );
    let guest_epoch: i64 = field(platform, "epoch=")
        .and_then(|epoch| epoch.parse().ok())
        .unwrap_or_else(|| panic!("{platform}"));
    // The guest booted within its job's budget after L1 printed its time.
    assert!(
        (0..=GUEST_BUDGET.as_secs() as i64).contains(&(guest_epoch - l1_epoch)),
        "guest clock {guest_epoch} vs L1 clock {l1_epoch}: {platform}"
    );
    let ioapic: u32 = field(platform, "ioapic=")
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("{platform}"));
    assert!(
        ioapic > 0,
        "no interrupt goes through the IOAPIC: {platform}"
    );
    let tables = platform.split("tables=").nth(1).unwrap_or_default();
    for table in ["APIC", "DSDT", "FACP"] {
        assert!(
            tables.split_whitespace().any(|t| t == table),
            "{table} missing: {platform}"
        );
    }
}

/// The same check that accepts the good boot rejects a boot whose init does not exist.
#[test]
fn broken_guest_boot_is_detected() {
    let run = guest();
    check(expect_guest_booted(check(run.job("guest-boot"))));
    let broken = check(run.job("guest-broken-init"));
    let error = expect_guest_booted(broken)
        .expect_err("a boot without init must fail")
        .to_string();
    assert!(
        error.contains("job `guest-broken-init`: expected status 7"),
        "{error}"
    );
    assert!(
        !broken.output.contains("@@GUEST ready"),
        "{}",
        broken.output
    );
}

/// A broken boot turns the test red, with snapvmm's output (the guest's panic) shown.
#[test]
#[should_panic(expected = "job `guest-broken-init`: expected status 7")]
fn broken_guest_boot_turns_the_test_red() {
    let broken = check(guest().job("guest-broken-init"));
    check(expect_guest_booted(broken));
}

// ---------------------------------------------------------------------------------------------
// guest-tools' bare-metal guests (the suite of tests/tests/baremetal.rs) under snapvmm inside L1:
// the same guests and the same expectations, on kvm_amd (NPT, TDP MMU) instead of kvm_pvm.

/// snapvmm's own time-out for a bare-metal guest (they finish in ~0.2 s in L1), and the job's
/// budget around it.
const BARE_METAL_TIMEOUT_SECONDS: u32 = 20;
const BARE_METAL_BUDGET: Duration = Duration::from_secs(30);
/// Exit statuses of snapvmm for the ways a guest stops (README.md).
const STATUS_EXIT_CODE_CLAMPED: i32 = 63;
const STATUS_TRIPLE_FAULT: i32 = 66;
const STATUS_TIMED_OUT: i32 = 68;
const STATUS_INTERRUPTED: i32 = 130;
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

fn bare_metal_path(name: &str) -> String {
    check(snapvmm_tests::lane::bare_metal_guest_in_l1(name))
}

/// `snapvmm run` of the bare-metal guest `guest` (a guest-tools name) with `args` (shell words).
fn bare_metal_command(guest: &str, args: &str) -> String {
    format!(
        "snapvmm run --kernel {} --timeout {BARE_METAL_TIMEOUT_SECONDS} {args}",
        bare_metal_path(guest)
    )
}

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

// ---------------------------------------------------------------------------------------------
// Snapshot exactness on real KVM (the suite of tests/tests/snapshot.rs): thousands of restores
// verified byte for byte (RAM, vCPU, devices) by snapvmm and checked by the guest itself, for
// both restore strategies, on kvm_amd with NPT (TDP MMU: no shadow-MMU resets needed), and at the
// end on kvm_amd reloaded with npt=0 (KVM's own shadow MMU: resets needed).

/// Printed by every snapshot job before snapvmm runs: the MMU snapvmm is about to detect.
const NPT_PARAMETER: &str = "/sys/module/kvm_amd/parameters/npt";
/// kvm_amd's module file inside L1 (l1-init.sh loads it from there).
const KVM_AMD_MODULE: &str = "/lib/modules/kvm_amd.ko";

/// One `snapshot-stress` run.
struct StressRun {
    job: &'static str,
    strategy: &'static str,
    page_tables: bool,
    rounds: u32,
    seed: u32,
    /// `--verify-restores`: snapvmm compares all guest RAM (and vCPU, devices) after each one.
    verify: bool,
    budget_seconds: u64,
}

impl StressRun {
    fn command(&self) -> String {
        let budget = self.budget_seconds;
        format!(
            "echo \"kvm_amd npt=$(cat {NPT_PARAMETER})\"; snapvmm run --kernel {} --mem 32M \
             --restore {} {} --timeout {} --cmdline 'rounds={} pages=16 seed={} pt={} fpu=1'",
            bare_metal_path("snapshot-stress"),
            self.strategy,
            if self.verify { "--verify-restores" } else { "" },
            budget.saturating_sub(10).max(1),
            self.rounds,
            self.seed,
            u8::from(self.page_tables),
        )
    }

    fn job(&self) -> Job {
        Job::new(
            self.job,
            Duration::from_secs(self.budget_seconds),
            &self.command(),
        )
    }
}

/// Measured in the lane (2 shared cores, QEMU 7.2 TCG, see docs/real-kvm-lane.md): a verified
/// restore of this 32 MiB guest costs 31 ms (dirty) / 39 ms (remap), 39-42 ms with page-table
/// changes; without verification 1.8 ms / 7.5 ms. Budgets are ~4x the measured time.
const TDP_STRESS: &[StressRun] = &[
    StressRun {
        job: "stress-dirty",
        strategy: "dirty",
        page_tables: false,
        rounds: 1000,
        seed: 11,
        verify: true,
        budget_seconds: 150,
    },
    StressRun {
        job: "stress-remap",
        strategy: "remap",
        page_tables: false,
        rounds: 1000,
        seed: 12,
        verify: true,
        budget_seconds: 180,
    },
    StressRun {
        job: "stress-dirty-page-tables",
        strategy: "dirty",
        page_tables: true,
        rounds: 500,
        seed: 13,
        verify: true,
        budget_seconds: 100,
    },
    StressRun {
        job: "stress-remap-page-tables",
        strategy: "remap",
        page_tables: true,
        rounds: 500,
        seed: 14,
        verify: true,
        budget_seconds: 100,
    },
    StressRun {
        job: "stress-dirty-fast",
        strategy: "dirty",
        page_tables: false,
        rounds: 5000,
        seed: 15,
        verify: false,
        budget_seconds: 60,
    },
    StressRun {
        job: "stress-remap-fast",
        strategy: "remap",
        page_tables: false,
        rounds: 2000,
        seed: 16,
        verify: false,
        budget_seconds: 60,
    },
];

/// With `npt=0` kvm_amd shadows the guest's page tables; page-table pages put back by memcpy
/// need snapvmm's shadow-MMU reset, exactly as on kvm_pvm.
const SHADOW_STRESS: &[StressRun] = &[
    StressRun {
        job: "shadow-stress-dirty-page-tables",
        strategy: "dirty",
        page_tables: true,
        rounds: 200,
        seed: 21,
        verify: true,
        budget_seconds: 60,
    },
    StressRun {
        job: "shadow-stress-remap-page-tables",
        strategy: "remap",
        page_tables: true,
        rounds: 200,
        seed: 22,
        verify: true,
        budget_seconds: 60,
    },
];

const SNAPSHOT_BUDGET: Duration = Duration::from_secs(60);

fn snapshot_job(name: &str, guest: &str, args: &str) -> Job {
    Job::new(
        name,
        SNAPSHOT_BUDGET,
        &format!(
            "echo \"kvm_amd npt=$(cat {NPT_PARAMETER})\"; {}",
            bare_metal_command(guest, args)
        ),
    )
}

/// Reloads kvm_amd with `npt=` `value` (no VM may be open).
fn reload_kvm_amd_job(name: &str, value: u8) -> Job {
    Job::new(
        name,
        30 * SECOND,
        &format!(
            "rmmod kvm_amd && insmod {KVM_AMD_MODULE} npt={value} && \
             echo \"kvm_amd npt=$(cat {NPT_PARAMETER})\""
        ),
    )
}

fn snapshots_lane() -> Lane {
    let mut lane = Lane::new("snapshots")
        .with_snapvmm()
        .bare_metal_guests()
        // Default 256 MiB: the background capture of RAM is still running at the RESTORE.
        .job(snapshot_job(
            "basic-dirty",
            "snapshot-basic",
            "--restore dirty --verify-restores",
        ))
        .job(snapshot_job(
            "basic-remap",
            "snapshot-basic",
            "--restore remap --verify-restores",
        ))
        .job(snapshot_job("commands", "snapshot-commands", ""))
        .job(snapshot_job(
            "full-vcpu-restores",
            "snapshot-stress",
            "--mem 32M --vcpu-restore full --verify-restores \
             --cmdline 'rounds=300 pages=8 seed=9 pt=1 fpu=1'",
        ));
    for run in TDP_STRESS {
        lane = lane.job(run.job());
    }
    // Last, because it changes L1's KVM: the shadow-MMU runs, then NPT back on.
    lane = lane.job(reload_kvm_amd_job("kvm-amd-without-npt", 0));
    for run in SHADOW_STRESS {
        lane = lane.job(run.job());
    }
    lane.job(reload_kvm_amd_job("kvm-amd-with-npt-again", 1))
}

fn snapshots() -> &'static LaneRun {
    static RUN: OnceLock<Result<LaneRun, String>> = OnceLock::new();
    shared(&RUN, snapshots_lane)
}

/// A counter from snapvmm's closing `snapvmm: snapshots: ...` line: the number before `label`.
fn engine_counter(job: &JobOutcome, label: &str) -> u64 {
    let line = job
        .output
        .lines()
        .find(|line| line.contains("snapvmm: snapshots:"))
        .unwrap_or_else(|| {
            panic!(
                "job {}: no snapshot summary; output:\n{}",
                job.name, job.output
            )
        });
    let at = line
        .find(label)
        .unwrap_or_else(|| panic!("job {}: no '{label}' in {line}", job.name));
    line[..at]
        .trim_end()
        .rsplit(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|number| number.parse().ok())
        .unwrap_or_else(|| panic!("job {}: no number before '{label}' in {line}", job.name))
}

/// The job ran on kvm_amd with nested paging on (`true`) or off.
fn expect_npt(job: &JobOutcome, enabled: bool) {
    check(job.expect_output(if enabled {
        "kvm_amd npt=Y"
    } else {
        "kvm_amd npt=N"
    }));
}

fn snapshot_job_outcome(name: &str) -> &'static JobOutcome {
    check(snapshots().job(name))
}

/// Checks one stress run: the guest's own checks, every restore counted (and verified), and the
/// shadow-MMU resets that the MMU calls for; prints the restore rate.
fn check_stress(run: &StressRun, npt: bool) {
    let job = snapshot_job_outcome(run.job);
    expect_npt(job, npt);
    check(job.expect_success());
    check(job.expect_output(&format!("snapshot-stress: {} rounds ok", run.rounds)));
    let rounds = u64::from(run.rounds);
    assert_eq!(engine_counter(job, "restore(s)"), rounds, "{}", job.output);
    let verified = if run.verify { rounds } else { 0 };
    assert_eq!(engine_counter(job, "verified"), verified, "{}", job.output);
    let resets = engine_counter(job, "shadow MMU resets");
    if npt {
        // NPT: the CPU walks the guest's page tables itself; a memcpy'd page table is seen at
        // once, so snapvmm (detect_shadow_mmu: npt=Y) must not pay for resets.
        assert_eq!(resets, 0, "{}", job.output);
    } else if run.page_tables {
        assert!(resets > 0, "{}", job.output);
    }
    let seconds = job.elapsed.as_secs_f64();
    eprintln!(
        "lane {}: {} restores ({}, pt={}, {}) in {seconds:.1} s: {:.0} restores/s",
        run.job,
        run.rounds,
        run.strategy,
        u8::from(run.page_tables),
        if run.verify { "verified" } else { "unverified" },
        f64::from(run.rounds) / seconds.max(0.001)
    );
}

fn tdp_stress(job: &str) -> &'static StressRun {
    TDP_STRESS
        .iter()
        .find(|run| run.job == job)
        .unwrap_or_else(|| panic!("no stress run {job}"))
}

#[test]
fn tdp_save_returns_twice_and_restore_rolls_back_ram_and_stack() {
    for name in ["basic-dirty", "basic-remap"] {
        let job = snapshot_job_outcome(name);
        expect_npt(job, true);
        check(job.expect_success());
        check(job.expect_output(
            "PASS: the global and the stack rolled back and execution continued after the SAVE",
        ));
        assert_eq!(engine_counter(job, "restore(s)"), 1, "{}", job.output);
        assert_eq!(engine_counter(job, "verified"), 1, "{}", job.output);
        // Under TCG the background copy of 256 MiB takes seconds; the guest restores within
        // milliseconds of its SAVE, so the restore meets the capture still running.
        assert!(
            engine_counter(job, "during RAM capture") >= 1,
            "{}",
            job.output
        );
        assert_eq!(
            engine_counter(job, "shadow MMU resets"),
            0,
            "{}",
            job.output
        );
    }
}

#[test]
fn tdp_crash_and_done_commands_reach_the_vmm() {
    let job = snapshot_job_outcome("commands");
    // Without a fuzz harness a CRASH stops the VM and says so.
    check(job.expect_status(71));
    check(job.expect_output("crash (code 0x2a)"));
}

#[test]
fn tdp_full_vcpu_restores_are_exact() {
    let job = snapshot_job_outcome("full-vcpu-restores");
    expect_npt(job, true);
    check(job.expect_success());
    check(job.expect_output("snapshot-stress: 300 rounds ok"));
    assert_eq!(
        engine_counter(job, "with full vCPU state"),
        300,
        "{}",
        job.output
    );
    assert_eq!(engine_counter(job, "verified"), 300, "{}", job.output);
    assert_eq!(
        engine_counter(job, "shadow MMU resets"),
        0,
        "{}",
        job.output
    );
}

#[test]
fn tdp_thousand_verified_restores_dirty_strategy() {
    check_stress(tdp_stress("stress-dirty"), true);
}

#[test]
fn tdp_thousand_verified_restores_remap_strategy() {
    check_stress(tdp_stress("stress-remap"), true);
}

#[test]
fn tdp_verified_restores_with_guest_page_table_changes_dirty_strategy() {
    check_stress(tdp_stress("stress-dirty-page-tables"), true);
}

#[test]
fn tdp_verified_restores_with_guest_page_table_changes_remap_strategy() {
    check_stress(tdp_stress("stress-remap-page-tables"), true);
}

/// Without --verify-restores: the guest-side checks at full speed.
#[test]
fn tdp_unverified_restores_at_speed_both_strategies() {
    check_stress(tdp_stress("stress-dirty-fast"), true);
    check_stress(tdp_stress("stress-remap-fast"), true);
}

/// kvm_amd with npt=0 uses KVM's shadow MMU: snapvmm detects it (detect_shadow_mmu reads the
/// npt parameter) and resets the MMU after restoring page-table pages, and the restores stay
/// exact. The counterpart of the TDP runs above, which must show 0 resets.
#[test]
fn l1_shadow_mmu_gets_resets_and_stays_exact() {
    let reload = snapshot_job_outcome("kvm-amd-without-npt");
    check(reload.expect_success());
    expect_npt(reload, false);
    for run in SHADOW_STRESS {
        check_stress(run, false);
    }
    let back = snapshot_job_outcome("kvm-amd-with-npt-again");
    check(back.expect_success());
    expect_npt(back, true);
}
