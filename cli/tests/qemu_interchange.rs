//! QEMU 7.2 migration streams both ways, against the real `qemu-system-x86_64` on this machine's
//! /dev/kvm: guests that count on COM1 (`counter-tss` at CPL3, `counter32` in 32-bit protected
//! mode) saved by one VMM continue with the exact next number in the other, never from the start.
//! Needs QEMU 7.2 (`scripts/ensure-deps.sh test`) and /dev/kvm: a missing one fails, never skips.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use snapvmm_tests::runner::{require_kvm, Outcome};

const SNAPVMM: &str = env!("CARGO_BIN_EXE_snapvmm");
const QEMU: &str = "qemu-system-x86_64";
const BUDGET: Duration = Duration::from_secs(60);
/// Spin iterations between two `count` lines of the CPL3 guest (a few hundred lines a second).
const CPL3_DELAY: &str = "delay=1000000";

/// The machine has two shared cores: one guest pair at a time keeps timings sane.
static SERIAL: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    let guard = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    require_kvm();
    let out = Command::new(QEMU)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| {
            panic!("{QEMU} is required for these tests (scripts/ensure-deps.sh test): {e}")
        });
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(
        version.contains("version 7.2"),
        "QEMU 7.2 is required, found: {version}"
    );
    guard
}

fn guest(name: &str) -> String {
    guest_tools::guest_path(name)
        .unwrap_or_else(|| panic!("guest-tools did not build {name}"))
        .to_string_lossy()
        .into_owned()
}

fn snapvmm(args: &[&str]) -> Outcome {
    snapvmm_tests::runner::run_snapvmm(SNAPVMM.as_ref(), args, BUDGET)
}

/// A QMP client (QEMU's or snapvmm's server).
struct Qmp {
    reader: BufReader<UnixStream>,
}

impl Qmp {
    fn connect(socket: &Path) -> Qmp {
        let deadline = Instant::now() + Duration::from_secs(20);
        let stream = loop {
            if let Ok(stream) = UnixStream::connect(socket) {
                break stream;
            }
            assert!(
                Instant::now() < deadline,
                "QMP socket {socket:?} never appeared"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut qmp = Qmp {
            reader: BufReader::new(stream),
        };
        let greeting = qmp.read();
        assert!(greeting.get("QMP").is_some(), "no QMP greeting: {greeting}");
        qmp
    }

    fn read(&mut self) -> Value {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).expect("read QMP");
        assert!(n > 0, "QMP connection closed");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad QMP JSON {line:?}: {e}"))
    }

    /// Sends a command; returns the whole reply (events before it are skipped).
    fn request(&mut self, command: &str, arguments: Value) -> Value {
        let message = json!({"execute": command, "arguments": arguments, "id": command});
        writeln!(self.reader.get_mut(), "{message}").expect("write QMP");
        loop {
            let reply = self.read();
            if reply.get("event").is_none() {
                assert_eq!(
                    reply["id"],
                    json!(command),
                    "reply to another request: {reply}"
                );
                return reply;
            }
        }
    }

    fn execute(&mut self, command: &str, arguments: Value) -> Value {
        let reply = self.request(command, arguments);
        match reply.get("return") {
            Some(value) => value.clone(),
            None => panic!("QMP {command} failed: {reply}"),
        }
    }

    /// The run state, once an incoming migration is over.
    fn status(&mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let status = self.execute("query-status", json!({}))["status"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if status != "inmigrate" || Instant::now() > deadline {
                return status;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `stop`, then `migrate "exec:cat > PATH"`, waiting for `completed`.
    fn save(&mut self, path: &Path) {
        self.execute("stop", json!({}));
        self.execute(
            "migrate-set-parameters",
            json!({"max-bandwidth": 1u64 << 40}),
        );
        self.execute(
            "migrate",
            json!({"uri": format!("exec:cat > {}", path.display())}),
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let info = self.execute("query-migrate", json!({}));
            match info["status"].as_str() {
                Some("completed") => break,
                Some("failed") => panic!("migration failed: {info}"),
                _ => {}
            }
            assert!(Instant::now() < deadline, "migration did not complete");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            path.metadata().map(|m| m.len()).unwrap_or(0) > 4096,
            "completed, but the stream file is (nearly) empty"
        );
    }

    /// Sends `quit` and reads until the VMM closes the connection (closing it first could
    /// lose the command).
    fn quit(mut self) {
        let _ = writeln!(self.reader.get_mut(), "{}", json!({"execute": "quit"}));
        let _ = self
            .reader
            .get_ref()
            .set_read_timeout(Some(Duration::from_secs(20)));
        let mut line = String::new();
        while self.reader.read_line(&mut line).is_ok_and(|n| n > 0) {
            line.clear();
        }
    }
}

/// A VMM running in the background with its serial output in a file and QMP on a socket.
struct Vmm {
    child: Child,
    serial: PathBuf,
    stderr: PathBuf,
    qmp: Option<Qmp>,
}

impl Vmm {
    fn qemu(dir: &Path, name: &str, machine: &str, mem_mib: u32, args: &[&str]) -> Vmm {
        let socket = dir.join(format!("{name}.sock"));
        let serial = dir.join(format!("{name}.serial"));
        let mut command = Command::new(QEMU);
        command
            .args(["-M", machine, "-accel", "kvm", "-m", &mem_mib.to_string()])
            .args(["-nodefaults", "-display", "none", "-serial"])
            .arg(format!("file:{}", serial.display()))
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", socket.display()))
            .args(args);
        Vmm::spawn(command, dir, name, &socket, serial)
    }

    fn snapvmm(dir: &Path, name: &str, args: &[&str]) -> Vmm {
        let socket = dir.join(format!("{name}.sock"));
        let serial = dir.join(format!("{name}.serial"));
        let mut command = Command::new(SNAPVMM);
        command
            .args(["run", "--serial"])
            .arg(format!("file:{}", serial.display()))
            .arg("--qmp")
            .arg(format!("unix:{},server=on,wait=off", socket.display()))
            .args(args);
        Vmm::spawn(command, dir, name, &socket, serial)
    }

    fn spawn(mut command: Command, dir: &Path, name: &str, socket: &Path, serial: PathBuf) -> Vmm {
        let stderr = dir.join(format!("{name}.stderr"));
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("start the VMM");
        let mut vmm = Vmm {
            child,
            serial,
            stderr,
            qmp: None,
        };
        let mut qmp = Qmp::connect(socket);
        qmp.execute("qmp_capabilities", json!({}));
        vmm.qmp = Some(qmp);
        vmm
    }

    fn qmp(&mut self) -> &mut Qmp {
        self.qmp.as_mut().expect("QMP connection")
    }

    fn output(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.serial).unwrap_or_default()).into_owned()
    }

    /// Waits until the guest has printed `n` lines starting with `prefix`.
    fn wait_for_lines(&mut self, prefix: &str, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while counts(&self.output(), prefix).len() < n {
            if Instant::now() > deadline || matches!(self.child.try_wait(), Ok(Some(_))) {
                let _ = self.child.kill();
                panic!(
                    "the guest printed fewer than {n} {prefix:?} lines; serial:\n{}\nstderr:\n{}",
                    tail(&self.output()),
                    std::fs::read_to_string(&self.stderr).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends `quit` and returns the exit status and the serial output.
    fn quit(mut self) -> (i32, String) {
        if let Some(qmp) = self.qmp.take() {
            qmp.quit();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                break status.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the VMM did not quit");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        (status, self.output())
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Serial text with the guest's CR LF line ends as LF.
fn unix(text: &str) -> String {
    text.replace("\r\n", "\n")
}

/// The numbers of the lines `PREFIX N`.
fn counts(text: &str, prefix: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|line| line.strip_prefix(prefix)?.trim().parse().ok())
        .collect()
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

/// `snapvmm run` of the CPL3 counter with a QMP socket `dir/NAME.sock`, serial into
/// `dir/NAME.serial`, and no client connected (the test brings its own); `extra` after.
fn counter_with_qmp_socket(
    dir: &Path,
    name: &str,
    mem: &str,
    extra: &[&str],
) -> (KillOnDrop, PathBuf, PathBuf) {
    let socket = dir.join(format!("{name}.sock"));
    let serial = dir.join(format!("{name}.serial"));
    let kernel = guest("counter-tss");
    let child = Command::new(SNAPVMM)
        .args([
            "run",
            "--kernel",
            &kernel,
            "--mem",
            mem,
            "--cmdline",
            CPL3_DELAY,
        ])
        .arg("--serial")
        .arg(format!("file:{}", serial.display()))
        .arg("--qmp")
        .arg(format!("unix:{},server=on,wait=off", socket.display()))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    (KillOnDrop(Some(child)), socket, serial)
}

/// QEMU 7.2 (`microvm`) loads `stream`, saved stopped, waits for `cont` without running, then
/// prints `lines` lines of `prefix`; returns its serial output.
fn qemu_resumes(dir: &Path, stream: &Path, prefix: &str, lines: usize) -> String {
    let incoming = format!("exec:cat {}", stream.display());
    let mut destination = Vmm::qemu(
        dir,
        "destination",
        "microvm,rtc=on",
        64,
        &["-incoming", &incoming],
    );
    // Saved stopped: QEMU waits for `cont`, and nothing runs before it.
    assert_eq!(
        destination.qmp().status(),
        "paused",
        "{}",
        destination.stderr()
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(counts(&destination.output(), prefix), Vec::<u64>::new());
    destination.qmp().execute("cont", json!({}));
    destination.wait_for_lines(prefix, lines, Duration::from_secs(30));
    destination.quit().1
}

/// The source printed `before`, the destination `after` (the serial byte stream continues where
/// it was cut, even inside a line): together they must count 1, 2, 3, ... with no gap, no repeat
/// and one start banner, and the destination must have counted on by at least `min_more`.
fn assert_continues(before: &str, after: &str, prefix: &str, banner: &str, min_more: usize) {
    // The destination was stopped at any moment: its last line may be cut short.
    let after = match after.rfind('\n') {
        Some(end) => &after[..=end],
        None => "",
    };
    let whole = format!("{before}{after}");
    let numbers = counts(&whole, prefix);
    let expected: Vec<u64> = (1..=numbers.len() as u64).collect();
    assert_eq!(
        numbers,
        expected,
        "the count is not continuous across the migration\nbefore (tail):\n{}\nafter (head):\n{}",
        tail(before),
        after.lines().take(5).collect::<Vec<_>>().join("\n")
    );
    assert_eq!(
        whole.matches(banner).count(),
        1,
        "the guest started again (a reboot?):\n{}",
        after.lines().take(5).collect::<Vec<_>>().join("\n")
    );
    let before_n = counts(before, prefix).len();
    assert!(before_n >= 5, "the source counted only {before_n}");
    assert!(
        numbers.len() >= before_n + min_more,
        "the destination counted only {} more",
        numbers.len() - before_n
    );
}

/// snapvmm runs `guest_name`, QMP stop + migrate; QEMU's microvm loads the stream, `cont`.
fn snapvmm_to_qemu(guest_name: &str, cmdline: &str, prefix: &str, banner: &str) {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let kernel = guest(guest_name);
    let mut source = Vmm::snapvmm(
        dir.path(),
        "source",
        &["--kernel", &kernel, "--mem", "64M", "--cmdline", cmdline],
    );
    assert_eq!(source.qmp().status(), "running");
    source.wait_for_lines(prefix, 20, Duration::from_secs(30));
    let stream = dir.path().join("stream.bin");
    source.qmp().save(&stream);
    assert_eq!(source.qmp().status(), "postmigrate");
    let source_stderr = source.stderr();
    let (status, before) = source.quit();
    assert_eq!(status, 0, "snapvmm after quit: {source_stderr}");

    let after = qemu_resumes(dir.path(), &stream, prefix, 20);
    assert_continues(&before, &after, prefix, banner, 20);
}

#[test]
fn snapvmm_to_qemu_cpl3_counter() {
    snapvmm_to_qemu("counter-tss", CPL3_DELAY, "count ", "counter: start");
}

#[test]
fn snapvmm_to_qemu_protected_mode_counter() {
    snapvmm_to_qemu("counter32", "", "count32 ", "counter32: start");
}

/// QEMU runs `guest_name` on `machine`, QMP stop + migrate; `snapvmm run --incoming` continues.
fn qemu_to_snapvmm(machine: &str, guest_name: &str, prefix: &str, banner: &str, via_exec: bool) {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let kernel = guest(guest_name);
    let mut source = Vmm::qemu(
        dir.path(),
        "source",
        machine,
        64,
        &[
            "-kernel",
            &kernel,
            "-append",
            &format!("{CPL3_DELAY} peek=1"),
        ],
    );
    // pc and q35 run SeaBIOS first (emulated at CPL0 here: several seconds).
    source.wait_for_lines(prefix, 20, Duration::from_secs(60));
    let stream = dir.path().join("stream.bin");
    source.qmp().save(&stream);
    let (_, before) = source.quit();

    let uri = if via_exec {
        format!("exec:cat {}", stream.display())
    } else {
        format!("file:{}", stream.display())
    };
    let outcome = snapvmm(&["run", "--incoming", &uri, "--timeout", "1.5"]);
    assert_eq!(outcome.status, 68, "{}", outcome.transcript());
    assert_continues(&before, &outcome.stdout, prefix, banner, 10);
    // counter-tss reads the reset vector (0xFFFFFFF0) every line: pc/q35's BIOS must be mapped
    // there after the migration as before it (microvm has nothing there: all ones in both).
    let peeks = |text: &str| -> Vec<String> {
        // Whole lines only: the run was stopped at any moment.
        text[..text.rfind('\n').map_or(0, |end| end + 1)]
            .lines()
            .filter_map(|l| l.trim().strip_prefix("peek ").map(str::to_string))
            .collect()
    };
    let (seen_before, seen_after) = (peeks(&before), peeks(&outcome.stdout));
    if guest_name == "counter-tss" {
        assert!(!seen_before.is_empty() && !seen_after.is_empty());
        assert!(
            seen_after.iter().all(|v| v == &seen_before[0]),
            "the memory at 0xFFFFFFF0 changed: {} in QEMU, {:?} in snapvmm",
            seen_before[0],
            seen_after.first()
        );
        if machine != "microvm" {
            assert_ne!(
                seen_before[0], "0xffffffffffffffff",
                "no BIOS at the reset vector"
            );
        }
    }
}

#[test]
fn qemu_microvm_to_snapvmm() {
    qemu_to_snapvmm("microvm", "counter-tss", "count ", "counter: start", true);
    qemu_to_snapvmm(
        "microvm",
        "counter32",
        "count32 ",
        "counter32: start",
        false,
    );
}

#[test]
fn qemu_pc_to_snapvmm() {
    qemu_to_snapvmm("pc", "counter-tss", "count ", "counter: start", false);
    qemu_to_snapvmm("pc", "counter32", "count32 ", "counter32: start", true);
}

#[test]
fn qemu_q35_to_snapvmm() {
    qemu_to_snapvmm("q35", "counter-tss", "count ", "counter: start", false);
    qemu_to_snapvmm("q35", "counter32", "count32 ", "counter32: start", false);
}

/// 512 MiB of guest RAM, 480 MiB of it a non-zero pattern the guest checks as it counts: QEMU
/// saves it, snapvmm (with a `--mem` that agrees) continues and finds every word in place.
#[test]
fn dense_512m_stream_from_qemu() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let kernel = guest("counter-tss");
    let mut source = Vmm::qemu(
        dir.path(),
        "source",
        "microvm",
        512,
        &["-kernel", &kernel, "-append", "fill=480 delay=300000"],
    );
    source.wait_for_lines("count ", 10, Duration::from_secs(60));
    assert!(source.output().contains("counter: filled 480 MiB"));
    let stream = dir.path().join("stream.bin");
    source.qmp().save(&stream);
    let (_, before) = source.quit();
    let size = stream.metadata().unwrap().len();
    assert!(size > 480 << 20, "a dense stream, {size} bytes");

    let uri = format!("exec:cat {}", stream.display());
    let started = Instant::now();
    let outcome = snapvmm(&["run", "--incoming", &uri, "--mem", "512M", "--timeout", "3"]);
    eprintln!("512 MiB stream: snapvmm ran {:?} in all", started.elapsed());
    assert_eq!(outcome.status, 68, "{}", outcome.transcript());
    assert!(!outcome.stdout.contains("BAD"), "{}", outcome.transcript());
    // Every line checked 64 KiB of the pattern; enough lines to have checked some of it.
    assert_continues(&before, &outcome.stdout, "count ", "counter: start", 10);

    // --mem that disagrees with the stream: one line, status 64.
    let outcome = snapvmm(&["run", "--incoming", &uri, "--mem", "256M"]);
    assert_one_line_error(&outcome, "does not match");
}

/// A guest snapshotted at its own SAVE (the snapshot device, not QMP) exports; QEMU resumes it
/// right after the SAVE instruction; export -> import -> export gives the same stream.
#[test]
fn snapshot_dir_export_import_roundtrip() {
    let _serial = one_at_a_time();
    // In tmpfs, where reading a hole of the snapshot's memory file through a mapping would
    // allocate it.
    let dir = tempfile::tempdir_in("/dev/shm").expect("a directory in /dev/shm (tmpfs)");
    let snap = dir.path().join("snap");
    let kernel = guest("counter-tss");
    let snap_arg = snap.to_string_lossy().into_owned();
    let outcome = snapvmm(&[
        "run",
        "--kernel",
        &kernel,
        "--mem",
        "64M",
        "--cmdline",
        "save=5 delay=1000000",
        "--save-snapshot",
        &snap_arg,
        "--timeout",
        "1",
    ]);
    assert_eq!(outcome.status, 68, "{}", outcome.transcript());
    assert!(
        unix(&outcome.stdout).contains("count 5\ncounter: after save 5\ncount 6\n"),
        "{}",
        outcome.transcript()
    );

    let a = dir.path().join("a.bin");
    let b = dir.path().join("b.bin");
    let imported = dir.path().join("imported");
    let (a_arg, b_arg, imported_arg) = (
        a.to_string_lossy().into_owned(),
        b.to_string_lossy().into_owned(),
        imported.to_string_lossy().into_owned(),
    );
    let allocated = |dir: &std::path::Path| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(dir.join("memory.raw")).unwrap().blocks() * 512
    };
    let allocated_before = allocated(&snap);
    for args in [
        &["snapshot", "export", &snap_arg, &a_arg][..],
        &["snapshot", "import", &a_arg, &imported_arg],
        &["snapshot", "export", &imported_arg, &b_arg],
    ] {
        let outcome = snapvmm(args);
        assert_eq!(outcome.status, 0, "{args:?}: {}", outcome.transcript());
    }
    // The export read the snapshot's data and left its holes alone (before the fix it mapped
    // the file with MAP_POPULATE, which filled all 64 MiB).
    assert_eq!(
        allocated(&snap),
        allocated_before,
        "the export allocated the snapshot's memory file"
    );
    assert!(allocated_before < 16 << 20, "{allocated_before} bytes");
    let (a_bytes, b_bytes) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    assert!(
        a_bytes == b_bytes,
        "export -> import -> export changed the stream ({} vs {} bytes; first difference at {:?})",
        a_bytes.len(),
        b_bytes.len(),
        a_bytes.iter().zip(&b_bytes).position(|(x, y)| x != y)
    );

    // QEMU resumes the export at once (saved running) right after the guest's SAVE.
    let incoming = format!("exec:cat {}", a.display());
    let mut qemu = Vmm::qemu(
        dir.path(),
        "qemu",
        "microvm,rtc=on",
        64,
        &["-incoming", &incoming],
    );
    qemu.wait_for_lines("count ", 10, Duration::from_secs(30));
    let (_, resumed) = qemu.quit();
    assert!(
        unix(&resumed).starts_with("counter: after save 5\ncount 6\ncount 7\n"),
        "QEMU did not resume right after the SAVE:\n{}",
        tail(&resumed)
    );
    // And snapvmm resumes the imported directory the same way.
    let outcome = snapvmm(&["run", "--from-snapshot", &imported_arg, "--timeout", "0.5"]);
    assert!(
        unix(&outcome.stdout).starts_with("counter: after save 5\ncount 6\n"),
        "{}",
        outcome.transcript()
    );
}

fn assert_one_line_error(outcome: &Outcome, needle: &str) {
    assert_eq!(outcome.status, 64, "{}", outcome.transcript());
    let stderr = outcome.stderr.trim_end();
    assert_eq!(
        stderr.lines().count(),
        1,
        "not one line: {}",
        outcome.transcript()
    );
    assert!(stderr.starts_with("snapvmm: "), "{stderr}");
    assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
}

/// Truncated, bit-flipped, reordered and wrong-size streams: one line, status 64, with
/// RUST_BACKTRACE=1 set as a user may have it.
#[test]
fn damaged_streams_are_one_line_errors() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let kernel = guest("counter-tss");
    let mut source = Vmm::snapvmm(
        dir.path(),
        "source",
        &["--kernel", &kernel, "--mem", "16M", "--cmdline", CPL3_DELAY],
    );
    source.wait_for_lines("count ", 5, Duration::from_secs(30));
    let good = dir.path().join("good.bin");
    source.qmp().save(&good);
    source.quit();
    let bytes = std::fs::read(&good).unwrap();
    let ram_start = bytes
        .windows(4)
        .position(|w| w == b"\x03ram")
        .expect("ram section");
    let first_full = bytes
        .windows(6)
        .position(|w| w == b"\x05timer")
        .expect("timer section")
        - 5;
    let cpu = bytes.windows(4).position(|w| w == b"\x03cpu").expect("cpu") + 12;

    let mut cases: Vec<(String, Vec<u8>, &str)> = Vec::new();
    for cut in [
        3,
        8,
        20,
        ram_start + 40,
        bytes.len() / 2,
        first_full + 3,
        bytes.len() - 2000,
    ] {
        cases.push((
            format!("truncated at {cut}"),
            bytes[..cut].to_vec(),
            "stream",
        ));
    }
    let flip = |at: usize, mask: u8| {
        let mut b = bytes.clone();
        b[at] ^= mask;
        b
    };
    cases.push(("magic flipped".into(), flip(0, 0x01), "stream"));
    cases.push(("version flipped".into(), flip(7, 0x04), "stream"));
    cases.push(("machine name flipped".into(), flip(14, 0x20), "stream"));
    cases.push((
        "section type flipped".into(),
        flip(first_full, 0x40),
        "stream",
    ));
    cases.push(("cpu version flipped".into(), flip(cpu - 1, 0x02), "stream"));
    // Reordered: the configuration record after the first section; a section twice.
    let mut moved = bytes[..8].to_vec();
    let config_end = 8 + 1 + 4 + "microvm".len();
    moved.extend_from_slice(&bytes[config_end..first_full]);
    moved.extend_from_slice(&bytes[8..config_end]);
    moved.extend_from_slice(&bytes[first_full..]);
    cases.push(("configuration moved".into(), moved, "stream"));
    let timer_len = 1 + 4 + 6 + 4 + 4 + 16 + 5;
    let mut doubled = bytes[..first_full + timer_len].to_vec();
    doubled.extend_from_slice(&bytes[first_full..]);
    cases.push(("section duplicated".into(), doubled, "stream"));
    // Wrong sizes: the RAM total, and a RAM far beyond any cap.
    let total_at = ram_start + 12;
    cases.push((
        "RAM total changed".into(),
        flip(total_at + 3, 0x10),
        "stream",
    ));
    cases.push(("RAM total huge".into(), flip(total_at, 0x7f), "stream"));

    for (name, mutated, needle) in cases {
        let path = dir.path().join("damaged.bin");
        std::fs::write(&path, &mutated).unwrap();
        let uri = format!("file:{}", path.display());
        let outcome = run_with_backtrace(&["run", "--incoming", &uri, "--timeout", "2"]);
        assert_eq!(outcome.status, 64, "{name}: {}", outcome.transcript());
        assert_one_line_error(&outcome, needle);
        let target = dir.path().join("never-written");
        let path_arg = path.to_string_lossy().into_owned();
        let target_arg = target.to_string_lossy().into_owned();
        let outcome = run_with_backtrace(&["snapshot", "import", &path_arg, &target_arg]);
        assert_one_line_error(&outcome, needle);
        assert!(
            std::fs::read_dir(&target).map_or(true, |mut d| d.next().is_none()),
            "{name}: a snapshot was written"
        );
    }
}

/// Kills a VMM a failed assertion left running.
struct KillOnDrop(Option<Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn run_with_backtrace(args: &[&str]) -> Outcome {
    let start = Instant::now();
    let output = Command::new(SNAPVMM)
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run snapvmm");
    Outcome {
        status: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        elapsed: start.elapsed(),
    }
}

/// snapvmm's QMP server speaks the protocol as QEMU does: negotiation first, errors by class,
/// ids echoed, STOP/RESUME events, `cont` after a migration.
#[test]
fn qmp_server_protocol() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let (mut child, socket, serial) =
        counter_with_qmp_socket(dir.path(), "raw", "16M", &["--paused"]);
    let mut qmp = Qmp::connect(&socket);
    let early = qmp.request("query-status", json!({}));
    assert_eq!(early["error"]["class"], "CommandNotFound", "{early}");
    qmp.execute("qmp_capabilities", json!({}));
    // --paused: nothing runs until `cont`.
    assert_eq!(qmp.status(), "paused");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(std::fs::read(&serial).unwrap_or_default().len(), 0);
    let unknown = qmp.request("device_add", json!({}));
    assert_eq!(unknown["error"]["class"], "CommandNotFound", "{unknown}");
    let bad = qmp.request("migrate", json!({"uri": "tcp:127.0.0.1:4444"}));
    assert_eq!(bad["error"]["class"], "GenericError", "{bad}");
    qmp.execute("cont", json!({}));
    assert_eq!(qmp.status(), "running");
    std::thread::sleep(Duration::from_millis(300));
    let stream = dir.path().join("s.bin");
    qmp.execute(
        "migrate",
        json!({"uri": format!("file:{}", stream.display())}),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while qmp.execute("query-migrate", json!({}))["status"] != "completed" {
        assert!(Instant::now() < deadline, "migrate file: never completed");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(qmp.status(), "postmigrate");
    let printed = counts(
        &String::from_utf8_lossy(&std::fs::read(&serial).unwrap()),
        "count ",
    );
    qmp.execute("cont", json!({}));
    std::thread::sleep(Duration::from_millis(300));
    let later = counts(
        &String::from_utf8_lossy(&std::fs::read(&serial).unwrap()),
        "count ",
    );
    assert!(
        later.len() > printed.len(),
        "cont after migrate did not run the guest"
    );
    qmp.quit();
    let output = child.0.take().unwrap().wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&output.stderr).contains("quit (QMP)"));
    // The stream loads (saved running: snapvmm runs it).
    let uri = format!("file:{}", stream.display());
    let outcome = snapvmm(&["run", "--incoming", &uri, "--timeout", "0.5"]);
    assert_eq!(outcome.status, 68, "{}", outcome.transcript());
}

/// The Python of the venv `scripts/ensure-deps.sh test` makes for QEMU's own QMP client.
fn qmp_venv_bin(name: &str) -> PathBuf {
    let venv = std::env::var_os("SNAPVMM_QMP_VENV").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/snapvmm/qmp-venv"),
        PathBuf::from,
    );
    let bin = venv.join("bin").join(name);
    assert!(
        bin.exists(),
        "{} is missing: QEMU's Python QMP client (qemu.qmp) is installed by `scripts/ensure-deps.sh test`",
        bin.display()
    );
    bin
}

/// QEMU's own Python client (`qemu.qmp`'s QMPClient) stops a running snapvmm guest and saves it
/// with `migrate file:`; `qmp-shell` queries it and quits it; QEMU 7.2 resumes the stream with the
/// next counter value.
#[test]
fn qemu_python_qmp_client_and_qmp_shell_save_a_running_guest() {
    let _serial = one_at_a_time();
    let python = qmp_venv_bin("python");
    let qmp_shell = qmp_venv_bin("qmp-shell");
    let dir = tempfile::tempdir().unwrap();
    let stream = dir.path().join("py.bin");
    let (mut child, socket, serial) = counter_with_qmp_socket(dir.path(), "py", "64M", &[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let read_serial =
        || String::from_utf8_lossy(&std::fs::read(&serial).unwrap_or_default()).into_owned();
    while counts(&read_serial(), "count ").len() < 10 || !socket.exists() {
        assert!(
            Instant::now() < deadline,
            "the guest did not count: {}",
            read_serial()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/qmp_python_client.py");
    let client = Command::new(&python)
        .arg(script)
        .arg(&socket)
        .arg(&stream)
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&client.stdout).into_owned();
    assert!(
        client.status.success(),
        "qemu.qmp client: {printed}{}",
        String::from_utf8_lossy(&client.stderr)
    );
    assert_eq!(
        printed,
        "status running\nmigrate completed\nafter postmigrate\n",
        "{}",
        String::from_utf8_lossy(&client.stderr)
    );
    let before = read_serial();

    let mut shell = Command::new(&qmp_shell)
        .arg(&socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    shell
        .stdin
        .take()
        .unwrap()
        .write_all(b"query-status\nquit\n")
        .unwrap();
    let shell = shell.wait_with_output().unwrap();
    let shell_out = String::from_utf8_lossy(&shell.stdout).into_owned();
    assert!(
        shell.status.success() && shell_out.contains(r#""status": "postmigrate""#),
        "qmp-shell: {shell_out}{}",
        String::from_utf8_lossy(&shell.stderr)
    );
    let output = child.0.take().unwrap().wait_with_output().unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // QEMU resumes what the Python client saved.
    let after = qemu_resumes(dir.path(), &stream, "count ", 10);
    assert_continues(&before, &after, "count ", "counter: start", 10);
}

/// A QMP message past the size cap (a client that never ends a string) gets an error and its
/// connection closed; snapvmm keeps its memory and takes the next connection.
#[test]
fn qmp_message_past_the_cap_is_refused_and_the_server_goes_on() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let (mut child, socket, _) = counter_with_qmp_socket(dir.path(), "cap", "16M", &["--paused"]);
    let mut flood = Qmp::connect(&socket);
    flood.execute("qmp_capabilities", json!({}));
    // 64 MiB in one string; the server must cut it off long before the end.
    let stream = flood.reader.get_mut();
    stream.write_all(br#"{"execute": ""#).unwrap();
    let chunk = vec![b'a'; 1 << 20];
    for _ in 0..64 {
        if stream.write_all(&chunk).is_err() {
            break; // the server hung up: what it should do
        }
    }
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut rest = String::new();
    let _ = flood.reader.read_line(&mut rest);
    assert!(
        rest.contains("GenericError"),
        "no error for an endless message: {rest:?}"
    );
    let mut after = String::new();
    assert_eq!(
        flood.reader.read_line(&mut after).unwrap_or(0),
        0,
        "the connection stayed open: {after:?}"
    );
    // The next client is served.
    let mut qmp = Qmp::connect(&socket);
    qmp.execute("qmp_capabilities", json!({}));
    assert_eq!(qmp.status(), "paused");
    qmp.quit();
    let output = child.0.take().unwrap().wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(0));
}
