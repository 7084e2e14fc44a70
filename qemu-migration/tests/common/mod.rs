//! Running QEMU 7.2 for the tests: capture a stream with QMP `stop` + `migrate "exec:cat > F"`, and
//! load one with `-incoming "exec:cat F"`. A missing QEMU is a test failure, never a skip.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const QEMU: &str = "qemu-system-x86_64";

pub struct Qemu {
    child: Child,
    qmp: BufReader<UnixStream>,
    pub dir: tempfile::TempDir,
}

fn qemu_version_check() {
    let out = Command::new(QEMU)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| {
            panic!("{QEMU} is required for this test (scripts/ensure-deps.sh test): {e}")
        });
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("version 7.2"),
        "QEMU 7.2 is required, found: {text}"
    );
}

impl Qemu {
    /// Starts QEMU with a QMP socket; `args` come after the common options.
    pub fn start(machine: &str, mem_mib: u32, args: &[&str]) -> Qemu {
        Qemu::start_with_accel(machine, "kvm", mem_mib, args)
    }

    /// Starts QEMU with accelerator `accel` (`kvm` or `tcg`).
    pub fn start_with_accel(machine: &str, accel: &str, mem_mib: u32, args: &[&str]) -> Qemu {
        qemu_version_check();
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("qmp.sock");
        let mut cmd = Command::new(QEMU);
        cmd.args(["-M", machine, "-accel", accel, "-m"])
            .arg(mem_mib.to_string())
            .args(["-nodefaults", "-display", "none", "-qmp"])
            .arg(format!("unix:{},server=on,wait=off", sock.display()))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = cmd.spawn().expect("start qemu");
        let deadline = Instant::now() + Duration::from_secs(20);
        let stream = loop {
            if let Ok(stream) = UnixStream::connect(&sock) {
                break stream;
            }
            assert!(Instant::now() < deadline, "QMP socket never appeared");
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut qemu = Qemu {
            child,
            qmp: BufReader::new(stream),
            dir,
        };
        let greeting = qemu.read_message();
        assert!(greeting.get("QMP").is_some(), "no QMP greeting: {greeting}");
        qemu.execute("qmp_capabilities", json!({}));
        qemu
    }

    fn read_message(&mut self) -> Value {
        let mut line = String::new();
        let n = self.qmp.read_line(&mut line).expect("read QMP");
        assert!(n > 0, "QMP closed: {}", self.stderr_so_far());
        serde_json::from_str(&line).expect("QMP JSON")
    }

    fn stderr_so_far(&mut self) -> String {
        let _ = self.child.kill();
        let out = std::mem::replace(&mut self.child, Command::new("true").spawn().unwrap());
        let output = out.wait_with_output().unwrap();
        String::from_utf8_lossy(&output.stderr).into_owned()
    }

    /// Runs a QMP command and returns its `return` value (panics on a QMP error).
    pub fn execute(&mut self, command: &str, arguments: Value) -> Value {
        let msg = json!({"execute": command, "arguments": arguments});
        let stream = self.qmp.get_mut();
        writeln!(stream, "{msg}").unwrap();
        loop {
            let reply = self.read_message();
            if let Some(ret) = reply.get("return") {
                return ret.clone();
            }
            if let Some(err) = reply.get("error") {
                panic!("QMP {command} failed: {err}");
            }
        }
    }

    pub fn status(&mut self) -> String {
        self.execute("query-status", json!({}))["status"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// `stop`, then migrate to `path` and wait for completion.
    pub fn save(&mut self, path: &Path) {
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
    }

    /// Quits and returns QEMU's stderr.
    pub fn quit(mut self) -> String {
        let stream = self.qmp.get_mut();
        let _ = writeln!(stream, "{}", json!({"execute": "quit"}));
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let out = std::mem::replace(&mut self.child, Command::new("true").spawn().unwrap());
        let output = out.wait_with_output().unwrap();
        String::from_utf8_lossy(&output.stderr).into_owned()
    }
}

/// Lets the firmware run for `run_ms`, then saves a stream of `machine` and returns its bytes.
pub fn capture(machine: &str, mem_mib: u32, run_ms: u64, args: &[&str]) -> Vec<u8> {
    capture_with_accel(machine, "kvm", mem_mib, run_ms, args)
}

/// `capture` with accelerator `accel`.
pub fn capture_with_accel(
    machine: &str,
    accel: &str,
    mem_mib: u32,
    run_ms: u64,
    args: &[&str],
) -> Vec<u8> {
    let mut qemu = Qemu::start_with_accel(machine, accel, mem_mib, args);
    std::thread::sleep(Duration::from_millis(run_ms));
    let path = qemu.dir.path().join("stream.bin");
    qemu.save(&path);
    let bytes = std::fs::read(&path).unwrap();
    let stderr = qemu.quit();
    assert!(bytes.len() > 1000, "stream too short; qemu said: {stderr}");
    bytes
}

/// Writes `bytes` to a file in `dir` and returns its path.
pub fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// The real streams kept in the fuzz corpus (small guests), for tests that need no QEMU run.
pub fn corpus_streams() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("fuzz/seeds") {
        let path = entry.unwrap().path();
        out.push((
            path.file_name().unwrap().to_string_lossy().into_owned(),
            std::fs::read(&path).unwrap(),
        ));
    }
    out.sort();
    assert!(!out.is_empty());
    out
}
