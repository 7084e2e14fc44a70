//! Bad input ends with one line on stderr and status 64: never a panic, never a hang.
//! These fail before any KVM object exists, so they need no /dev/kvm.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SETUP_ERROR: i32 = 64;

struct Outcome {
    status: i32,
    stderr: String,
}

fn snapvmm(args: &[&str]) -> Outcome {
    let mut child = Command::new(env!("CARGO_BIN_EXE_snapvmm"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn snapvmm");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("snapvmm {args:?} hung");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let output = child.wait_with_output().expect("collect output");
    Outcome {
        status: output.status.code().unwrap_or(-1),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The contract for every bad input: status 64, exactly one line, no panic, and the line says
/// what was wrong.
fn assert_clean_failure(outcome: &Outcome, expected: &str) {
    assert_eq!(outcome.status, SETUP_ERROR, "stderr: {}", outcome.stderr);
    assert!(!outcome.stderr.contains("panicked"), "{}", outcome.stderr);
    assert_eq!(
        outcome.stderr.lines().count(),
        1,
        "not one line: {:?}",
        outcome.stderr
    );
    assert!(
        outcome.stderr.contains(expected),
        "expected {expected:?} in {:?}",
        outcome.stderr
    );
}

fn temp_file(name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("snapvmm-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn missing_kernel_file() {
    let outcome = snapvmm(&["run", "--kernel", "/nonexistent/vmlinux"]);
    assert_clean_failure(&outcome, "cannot read kernel /nonexistent/vmlinux");
}

#[test]
fn kernel_that_is_not_an_elf_or_bzimage() {
    let path = temp_file("notes.txt", b"this is not a kernel\n");
    let outcome = snapvmm(&["run", "--kernel", path.to_str().unwrap()]);
    assert_clean_failure(&outcome, "neither an ELF nor a Linux bzImage");
}

#[test]
fn truncated_elf_kernel() {
    // A valid 64-bit ELF header cut off before its program headers.
    let mut header = vec![0u8; 64];
    header[..4].copy_from_slice(b"\x7fELF");
    header[4] = 2;
    header[5] = 1;
    header[18] = 62;
    header[32] = 64; // program headers right after the header...
    header[54] = 56;
    header[56] = 1; // ...one of them, which is not in the file
    let path = temp_file("truncated.elf", &header);
    let outcome = snapvmm(&["run", "--kernel", path.to_str().unwrap()]);
    assert_clean_failure(&outcome, "bad ELF kernel");
}

#[test]
fn empty_kernel() {
    let path = temp_file("empty", b"");
    let outcome = snapvmm(&["run", "--kernel", path.to_str().unwrap()]);
    assert_clean_failure(&outcome, "empty");
}

#[test]
fn truncated_bzimage() {
    let mut image = vec![0u8; 0x300];
    image[0x202..0x206].copy_from_slice(b"HdrS");
    let path = temp_file("truncated-bzimage", &image);
    let outcome = snapvmm(&["run", "--kernel", path.to_str().unwrap()]);
    assert_clean_failure(&outcome, "cannot boot the kernel");
}

#[test]
fn mem_not_a_size() {
    let outcome = snapvmm(&["run", "--mem", "lots"]);
    assert_clean_failure(&outcome, "'lots' is not a size");
}

#[test]
fn mem_too_small() {
    let outcome = snapvmm(&["run", "--mem", "1M"]);
    assert_clean_failure(&outcome, "too small");
}

#[test]
fn initrd_larger_than_ram() {
    let kernel = temp_file("k.bin", b"\x7fELF");
    let initrd = temp_file("big-initrd", b"");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&initrd)
        .unwrap();
    file.set_len(64 << 20).unwrap(); // sparse: 64 MiB for a 32 MiB guest
    let outcome = snapvmm(&[
        "run",
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--mem",
        "32M",
    ]);
    assert_clean_failure(&outcome, "initrd");
    assert!(outcome.stderr.contains("larger than"), "{}", outcome.stderr);
}

#[test]
fn missing_initrd() {
    let outcome = snapvmm(&[
        "run",
        "--kernel",
        "/bin/true",
        "--initrd",
        "/nonexistent/initrd",
    ]);
    assert_clean_failure(&outcome, "cannot read initrd /nonexistent/initrd");
}

#[test]
fn bad_serial_and_timeout_values() {
    assert_clean_failure(&snapvmm(&["run", "--serial", "tcp:1"]), "--serial");
    assert_clean_failure(&snapvmm(&["run", "--timeout", "-1"]), "--timeout");
    assert_clean_failure(&snapvmm(&["run", "--timeout", "soon"]), "soon");
}

#[test]
fn unknown_builtin_guest() {
    assert_clean_failure(
        &snapvmm(&["run", "--guest", "nope"]),
        "no built-in guest named 'nope'",
    );
}

#[test]
fn help_succeeds() {
    let outcome = snapvmm(&["run", "--help"]);
    assert_eq!(outcome.status, 0);
    assert!(Path::new(env!("CARGO_BIN_EXE_snapvmm")).exists());
}

#[test]
fn no_subcommand_prints_the_usage() {
    let outcome = snapvmm(&[]);
    assert_eq!(outcome.status, SETUP_ERROR);
    assert!(
        outcome.stderr.contains("Usage: snapvmm <COMMAND>"),
        "{}",
        outcome.stderr
    );
}
