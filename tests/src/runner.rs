//! Running the `snapvmm` binary from tests: find it, check that KVM works, run with a time budget.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What a finished snapvmm run left behind.
#[derive(Debug)]
pub struct Outcome {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Outcome {
    /// Everything the run printed, for assertion messages.
    pub fn transcript(&self) -> String {
        format!(
            "status {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Fails the test with a clear message unless /dev/kvm can create a VM. Never skips.
pub fn require_kvm() {
    use std::os::fd::AsRawFd;
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .unwrap_or_else(|e| {
            panic!("these tests need a working /dev/kvm, and opening it failed: {e}")
        });
    const KVM_CREATE_VM: libc::c_ulong = 0xAE01;
    // SAFETY: KVM_CREATE_VM on an open /dev/kvm fd; the returned fd is closed right away.
    let vm = unsafe { libc::ioctl(kvm.as_raw_fd(), KVM_CREATE_VM, 0) };
    assert!(
        vm >= 0,
        "these tests need a working /dev/kvm, and KVM_CREATE_VM failed: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `vm` is a descriptor we own.
    unsafe { libc::close(vm) };
}

/// Runs the snapvmm `binary` with `args`, killing it if it runs past `budget`. Integration tests
/// of the `snapvmm` package pass `env!("CARGO_BIN_EXE_snapvmm")`: cargo builds it for them.
pub fn run_snapvmm(binary: &Path, args: &[&str], budget: Duration) -> Outcome {
    run_snapvmm_with_input(binary, args, budget, None)
}

/// Like `run_snapvmm`, feeding `input` on stdin.
pub fn run_snapvmm_with_input(
    binary: &Path,
    args: &[&str],
    budget: Duration,
    input: Option<&[u8]>,
) -> Outcome {
    let start = Instant::now();
    let mut child = Command::new(binary)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn snapvmm");
    if let (Some(bytes), Some(mut stdin)) = (input, child.stdin.take()) {
        use std::io::Write;
        let _ = stdin.write_all(bytes);
    }
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    // Lossy: a guest may write any bytes to its serial port.
    let out_reader = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stdout.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    });
    let err_reader = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stderr.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    });
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for snapvmm") {
            break status;
        }
        if start.elapsed() > budget {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "snapvmm {args:?} ran past its {budget:?} budget; stdout so far:\n{}",
                out_reader.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Outcome {
        status: status.code().unwrap_or(-1),
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
        elapsed: start.elapsed(),
    }
}
