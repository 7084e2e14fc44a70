//! The real-KVM lane (docs/real-kvm-lane.md), `qemu-trip` boot: a stock Linux guest in the middle
//! of a program moves between snapvmm and QEMU 7.2 through QEMU's migration stream, both ways,
//! on the real kvm_amd inside L1 (issue 10; docs/qemu-interchange.md).
//!
//! The guest is the Debian 6.12 kernel (the PVH `vmlinux`) with the lane's busybox initramfs,
//! whose init runs guest-tools' `tick-counter` (`linux-programs/tick-counter.c`): its start line
//! names the kernel's clockevent and clocksource (both jobs check `lapic-deadline` and
//! `kvm-clock` where the guest booted), then a line `tick N ms=T mem=ok` every 100 ms, N kept in
//! the process's memory, T from CLOCK_MONOTONIC (nanosleep needs the guest's timer interrupts and
//! clock), and a 4 MiB heap pattern checked slice by slice. QEMU (`/usr/bin/qemu-system-x86_64`
//! of this host with its shared libraries, and the two firmware files microvm needs) is
//! carried into L1 for this boot only (~50 MB); `lane-qmp` (guest-tools/linux/lane-qmp.c) is
//! L1's QMP client.
//!
//! * `linux-to-qemu`: snapvmm boots the guest with `--qmp`; after 10 ticks QMP `stop`, `migrate
//!   "exec:cat > F"`, `quit`; then `qemu-system-x86_64 -M microvm,rtc=on -accel kvm -cpu host
//!   -incoming "exec:cat F"` loads it (paused, as it was saved), `cont`, 10 more ticks.
//! * `qemu-to-linux`: QEMU boots the same kernel and initramfs on `-M microvm,rtc=on` (the
//!   machine snapvmm's export targets: the same machine both ways), after 10 ticks `stop` +
//!   `migrate`; `snapvmm run --incoming file:F --qmp ...` (paused, as saved), `cont`, 10 more
//!   ticks.
//!
//! `-M pc` as the source (SeaBIOS, then the PVH option ROM; `qemu_to_linux("pc")` with
//! `/usr/share/qemu/kvmvapic.bin` and `/usr/share/seabios/bios-256k.bin` added to L1) went on in
//! snapvmm the same way once (a 30 s job); once L1 hung inside that job (no output for its 150 s
//! budget, lane-exec never ended it, the host killed L1), and once QEMU in L1 stopped with
//! `could not load PC BIOS 'bios-256k.bin'` although the file was there: the lane runs microvm
//! only.
//!
//! Each job prints the source's serial console, a marker, and the destination's console: the two
//! together must count 1, 2, 3, ... with no gap and no repeat (the exact next value after the
//! trip), one boot (one `@@GUEST ready`, one program start), and no kernel oops, panic, BUG or
//! RCU stall.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use snapvmm_tests::lane::{Job, JobOutcome, Lane, LaneRun};
use snapvmm_tests::lane_support::{check, shared};

/// The inner guest's command line (the lane's, see real_kvm_guest.rs); the guest init's actions
/// follow `--`.
const GUEST_CMDLINE: &str = "console=ttyS0 quiet panic=-1 -- run=tick-counter";
const GUEST_MEM_MIB: u32 = 256;
/// Ticks each side must print.
const TICKS: u32 = 10;
/// One job: a guest boot (~10-15 s in L1), the save, QEMU's start, and the resumed ticks.
const JOB_BUDGET: Duration = Duration::from_secs(150);
/// Where the host's QEMU and the firmware microvm needs go inside L1 (QEMU looks for its data
/// files in `<binary>/../share/qemu`).
const QEMU_IN_L1: &str = "/usr/bin/qemu-system-x86_64";
/// microvm's qboot and the PVH loader option ROM of `-kernel vmlinux`; each goes to the same
/// path inside L1.
const QEMU_FIRMWARE: &[&str] = &[
    "/usr/share/qemu/bios-microvm.bin",
    "/usr/share/qemu/pvh.bin",
];
const HOST_QEMU: &str = "/usr/bin/qemu-system-x86_64";
/// Between the source's console and the destination's in a job's output (no newline around it:
/// the serial byte stream continues where it was cut, even inside a line).
/// The stream file inside L1 (`exec:` commands run in a shell that does not know `$D`).
const STREAM_IN_L1: &str = "/tmp/trip/vm.bin";
const MIGRATED: &str = "<<@@TRIP MIGRATED>>";
const CONSOLE_END: &str = "<<@@TRIP END>>";

/// Shell functions of both jobs (busybox ash). `wait_ticks FILE N SECS` waits until FILE holds
/// N tick lines; `fail` prints what is known and ends the job.
const SHELL_HELPERS: &str = r#"
set -u
D=/tmp/trip; rm -rf $D; mkdir -p $D
ticks() { if [ -f "$1" ]; then grep -c '^tick ' "$1" || true; else echo 0; fi; }
show() { for f in $D/*.err; do echo "@@TRIP $f:"; cat "$f"; done; }
fail() { echo "@@TRIP FAIL: $*"; show; echo "@@TRIP source console:"; cat $D/source.serial 2>/dev/null; echo "@@TRIP destination console:"; cat $D/destination.serial 2>/dev/null; exit 1; }
wait_ticks() {
  i=0
  while [ "$(ticks "$1")" -lt "$2" ]; do
    i=$((i + 1)); [ $i -gt $(($3 * 10)) ] && fail "fewer than $2 ticks in $1 after $3 s"
    sleep 0.1
  done
}
print_consoles() {
  echo "@@TRIP console:"
  cat $D/source.serial; printf '%s' 'MIGRATED_MARK'; cat $D/destination.serial; printf '%s\n' 'END_MARK'
  show
}
"#;

fn shell_helpers() -> String {
    SHELL_HELPERS
        .replace("MIGRATED_MARK", MIGRATED)
        .replace("END_MARK", CONSOLE_END)
}

fn qemu_command(machine: &str, extra: &str) -> String {
    format!(
        "{QEMU_IN_L1} -M {machine} -accel kvm -cpu host -m {GUEST_MEM_MIB} -nodefaults \
         -display none -serial file:$D/{extra} 2>$D/qemu.err &"
    )
}

/// snapvmm boots the guest, saves it stopped over QMP; QEMU loads it and goes on.
fn linux_to_qemu() -> String {
    let source = format!(
        "snapvmm run --kernel \"$LANE_GUEST_VMLINUX\" --initrd \"$LANE_GUEST_INITRD\" \
         --mem {GUEST_MEM_MIB}M --timeout 120 --cmdline '{GUEST_CMDLINE}' \
         --serial file:$D/source.serial --qmp unix:$D/s.sock,server=on,wait=off \
         >/dev/null 2>$D/snapvmm.err &"
    );
    let destination = qemu_command(
        "microvm,rtc=on",
        "destination.serial -qmp unix:$D/q.sock,server=on,wait=off -incoming \"exec:cat $D/vm.bin\"",
    );
    format!(
        r#"{helpers}
{source}
SOURCE=$!
wait_ticks $D/source.serial {TICKS} 90
lane-qmp $D/s.sock '{{"execute": "stop"}}' '{{"execute": "migrate", "arguments": {{"uri": "exec:cat > {vm}"}}}}' wait-migrate '{{"execute": "quit"}}' || fail "saving from snapvmm"
wait $SOURCE; echo "@@TRIP source status=$?"
echo "@@TRIP stream bytes=$(wc -c < $D/vm.bin)"
{destination}
DESTINATION=$!
lane-qmp $D/q.sock wait-status=paused || fail "QEMU did not load the stream"
echo "@@TRIP destination ticks before cont=$(ticks $D/destination.serial)"
lane-qmp $D/q.sock '{{"execute": "cont"}}' || fail "cont"
wait_ticks $D/destination.serial {TICKS} 60
lane-qmp $D/q.sock '{{"execute": "quit"}}'
wait $DESTINATION; echo "@@TRIP destination status=$?"
print_consoles
"#,
        vm = STREAM_IN_L1,
        helpers = shell_helpers(),
    )
}

/// QEMU boots the guest, saves it stopped; `snapvmm run --incoming` loads it and goes on.
fn qemu_to_linux(machine: &str) -> String {
    let source = qemu_command(
        machine,
        &format!(
            "source.serial -qmp unix:$D/q.sock,server=on,wait=off -kernel \"$LANE_GUEST_VMLINUX\" \
         -initrd \"$LANE_GUEST_INITRD\" -append '{GUEST_CMDLINE}'"
        ),
    );
    let destination = "snapvmm run --incoming file:$D/vm.bin --timeout 120 \
         --serial file:$D/destination.serial --qmp unix:$D/s.sock,server=on,wait=off \
         >/dev/null 2>$D/snapvmm.err &";
    format!(
        r#"{helpers}
{source}
SOURCE=$!
wait_ticks $D/source.serial {TICKS} 90
lane-qmp $D/q.sock '{{"execute": "stop"}}' '{{"execute": "migrate-set-parameters", "arguments": {{"max-bandwidth": 1099511627776}}}}' '{{"execute": "migrate", "arguments": {{"uri": "exec:cat > {vm}"}}}}' wait-migrate '{{"execute": "quit"}}' || fail "saving from QEMU"
wait $SOURCE; echo "@@TRIP source status=$?"
echo "@@TRIP stream bytes=$(wc -c < $D/vm.bin)"
{destination}
DESTINATION=$!
lane-qmp $D/s.sock wait-status=paused || fail "snapvmm did not load the stream"
echo "@@TRIP destination ticks before cont=$(ticks $D/destination.serial)"
lane-qmp $D/s.sock '{{"execute": "cont"}}' || fail "cont"
wait_ticks $D/destination.serial {TICKS} 60
lane-qmp $D/s.sock '{{"execute": "quit"}}'
wait $DESTINATION; echo "@@TRIP destination status=$?"
print_consoles
"#,
        vm = STREAM_IN_L1,
        helpers = shell_helpers(),
    )
}

/// The host's QEMU must be the 7.2 the stream format is written for, with microvm's firmware.
fn check_host_qemu() {
    let fix = "install Debian's QEMU 7.2 with `bash guest-tools/linux/build-images.sh` (as root) \
               or `apt-get install qemu-system-x86`";
    let version = std::process::Command::new(HOST_QEMU)
        .arg("--version")
        .output()
        .unwrap_or_else(|error| panic!("qemu-trip lane: cannot run {HOST_QEMU}: {error}; {fix}"));
    let version = String::from_utf8_lossy(&version.stdout);
    assert!(
        version.contains("version 7.2."),
        "qemu-trip lane: {HOST_QEMU} is not QEMU 7.2 ({}); {fix}",
        version.lines().next().unwrap_or_default()
    );
    for firmware in QEMU_FIRMWARE {
        let path = Path::new(firmware);
        assert!(
            path.is_file(),
            "qemu-trip lane: {} is missing; {fix}",
            path.display()
        );
    }
}

fn trip_lane() -> Lane {
    check_host_qemu();
    let mut lane = Lane::new("qemu-trip")
        .with_snapvmm()
        .host_file(QEMU_IN_L1, Path::new(HOST_QEMU));
    for firmware in QEMU_FIRMWARE {
        lane = lane.host_file(firmware, Path::new(firmware));
    }
    let tick_counter = guest_tools::linux_program_path("tick-counter")
        .unwrap_or_else(|| panic!("guest-tools built no tick-counter"));
    lane.guest_program("tick-counter", &tick_counter)
        .job(Job::new("linux-to-qemu", JOB_BUDGET, &linux_to_qemu()))
        .job(Job::new(
            "qemu-to-linux",
            JOB_BUDGET,
            &qemu_to_linux("microvm,rtc=on"),
        ))
}

fn trip() -> &'static LaneRun {
    static RUN: OnceLock<Result<LaneRun, String>> = OnceLock::new();
    shared(&RUN, trip_lane)
}

/// The source's and the destination's consoles of a job (carriage returns removed); the
/// destination's is cut after its last whole line (it was stopped at any moment).
fn consoles(job: &JobOutcome) -> (String, String) {
    let output = job.output.replace('\r', "");
    let console = output
        .split_once("@@TRIP console:\n")
        .map(|(_, console)| console)
        .unwrap_or_else(|| panic!("job {}: no consoles in its output:\n{output}", job.name));
    let (before, rest) = console
        .split_once(MIGRATED)
        .unwrap_or_else(|| panic!("job {}: no migration marker:\n{output}", job.name));
    let (after, _) = rest
        .split_once(CONSOLE_END)
        .unwrap_or_else(|| panic!("job {}: no end marker:\n{output}", job.name));
    let after = &after[..after.rfind('\n').map_or(0, |end| end + 1)];
    (before.to_owned(), after.to_owned())
}

/// `(N, T)` of every whole line `tick N ms=T mem=ok`.
fn ticks(text: &str) -> Vec<(u64, u64)> {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("tick ")?;
            let mut words = rest.split_whitespace();
            let n = words.next()?.parse().ok()?;
            let ms = words.next()?.strip_prefix("ms=")?.parse().ok()?;
            (words.next()? == "mem=ok").then_some((n, ms))
        })
        .collect()
}

fn head(text: &str, lines: usize) -> String {
    text.lines().take(lines).collect::<Vec<_>>().join("\n")
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The guest went on after the trip: the two consoles count 1, 2, 3, ... without a gap or a
/// repeat, each side at least [`TICKS`], the monotonic clock never went back, one boot, no
/// kernel trouble.
fn assert_guest_went_on(job: &JobOutcome) {
    check(job.expect_success());
    check(job.expect_output("@@TRIP source status=0"));
    check(job.expect_output("@@TRIP destination ticks before cont=0"));
    let (before, after) = consoles(job);
    let whole = format!("{before}{after}");
    let seen = ticks(&whole);
    let numbers: Vec<u64> = seen.iter().map(|(n, _)| *n).collect();
    let expected: Vec<u64> = (1..=numbers.len() as u64).collect();
    assert_eq!(
        numbers,
        expected,
        "job {}: the count is not continuous across the trip\nsource (tail):\n{}\ndestination (head):\n{}",
        job.name,
        tail(&before, 10),
        head(&after, 10)
    );
    let before_n = ticks(&before).len();
    assert!(
        before_n >= TICKS as usize,
        "job {}: the source counted only {before_n}:\n{before}",
        job.name
    );
    assert!(
        numbers.len() >= before_n + TICKS as usize - 1,
        "job {}: the destination counted only {} more:\n{after}",
        job.name,
        numbers.len() - before_n
    );
    let times: Vec<u64> = seen.iter().map(|(_, ms)| *ms).collect();
    assert!(
        times.windows(2).all(|pair| pair[0] <= pair[1]),
        "job {}: CLOCK_MONOTONIC went back: {times:?}",
        job.name
    );
    for (text, count) in [("@@GUEST ready", 1), ("tick-counter: start ", 1)] {
        assert_eq!(
            whole.matches(text).count(),
            count,
            "job {}: {text:?} not exactly {count} time(s) (a reboot?):\n{whole}",
            job.name
        );
    }
    for trouble in [
        "Oops",
        "Kernel panic",
        "BUG:",
        "stall",
        "MEMORY MISMATCH",
        "CLOCK WENT BACK",
    ] {
        assert!(
            !whole.contains(trouble),
            "job {}: {trouble:?} on the guest console:\n{whole}",
            job.name
        );
    }
}

/// The kernel's timer device and clock where it booted: the LAPIC timer in TSC-deadline mode
/// and kvmclock, which the trip must carry (a destination CPU model without the TSC-deadline
/// bit silences that timer: the guest never wakes from nanosleep).
fn assert_booted_on_lapic_deadline_and_kvmclock(job: &JobOutcome) {
    check(job.expect_output("clockevent=lapic-deadline clocksource=kvm-clock"));
}

#[test]
fn linux_guest_goes_on_in_qemu_after_snapvmm_saved_it() {
    let job = check(trip().job("linux-to-qemu"));
    assert_guest_went_on(job);
    // snapvmm's CPU model offers the TSC-deadline mode (KVM_CAP_TSC_DEADLINE_TIMER).
    assert_booted_on_lapic_deadline_and_kvmclock(job);
    check(job.expect_output("@@TRIP destination status=0"));
}

#[test]
fn linux_guest_goes_on_in_snapvmm_after_qemu_saved_it() {
    let job = check(trip().job("qemu-to-linux"));
    assert_guest_went_on(job);
    assert_booted_on_lapic_deadline_and_kvmclock(job);
    check(job.expect_output("@@TRIP destination status=0"));
}
