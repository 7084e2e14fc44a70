//! The real-KVM lane (docs/real-kvm-lane.md), `guest` boot: snapvmm inside an outer Linux (L1,
//! QEMU TCG with the real kvm_amd) boots the stock Debian kernel (the same 6.12 package as L1) with
//! a busybox initramfs whose /init is guest-tools/linux/guest-init.sh.
//!
//! Needs the images of `bash guest-tools/linux/build-images.sh` and qemu-system-x86_64; without
//! them every test here fails with a message that says so. Each `real_kvm_*.rs` file is one L1
//! boot shared by its tests (`lane_support::shared`); cargo runs the files one after another.

use std::sync::OnceLock;
use std::time::Duration;

use snapvmm_tests::lane::{Job, JobOutcome, Lane, LaneError, LaneRun};
use snapvmm_tests::lane_support::{check, shared, SECOND, STATUS_RESET};

/// The inner guest's command line; the guest init's actions follow `--`.
const GUEST_CMDLINE: &str = "console=ttyS0 quiet pci=noearly panic=-1";
/// snapvmm's own time-out for one guest run (a boot takes ~15 s in the lane), and the job's
/// budget around it.
const GUEST_TIMEOUT_SECONDS: u32 = 45;
const GUEST_BUDGET: Duration = Duration::from_secs(60);
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
