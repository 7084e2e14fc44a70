//! seccomp: a VMM thread under its filter is refused what it does not need (socket, execve, a
//! terminal ioctl, executable memory; the RAM capture threads it starts inherit that), while what
//! it needs still works; and `snapvmm run` runs its guests with every thread filtered.
//!
//! A refused call ends the process, so each probe runs in a child process: this test binary
//! itself, running the ignored `probe` test with the probe named in the environment.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use snapvmm_tests::runner::{require_kvm, Outcome};
use vmm::seccomp::{self, ThreadKind, STATUS_SECCOMP_VIOLATION};

const SNAPVMM: &str = env!("CARGO_BIN_EXE_snapvmm");
const BUDGET: Duration = Duration::from_secs(240);
const PROBE_VAR: &str = "SNAPVMM_SECCOMP_PROBE";
const ALLOWED_DONE: &str = "probe: allowed calls work";
const FORBIDDEN_RETURNED: &str = "probe: the forbidden call returned";

fn run_snapvmm(args: &[&str]) -> Outcome {
    snapvmm_tests::runner::run_snapvmm(SNAPVMM.as_ref(), args, BUDGET)
}

/// What the vCPU thread does after set-up, in small: files for a snapshot directory, anonymous
/// memory, a memfd, a thread.
fn allowed_vcpu_calls() -> std::io::Result<()> {
    let dir = std::env::temp_dir().join(format!("snapvmm-seccomp-probe-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let temp = dir.join("state.tmp");
    let mut file = std::fs::File::create(&temp)?;
    file.write_all(b"state")?;
    file.sync_all()?;
    std::fs::rename(&temp, dir.join("state.bin"))?;
    assert_eq!(std::fs::read(dir.join("state.bin"))?, b"state");
    std::fs::remove_dir_all(&dir)?;
    // SAFETY: a fresh anonymous read-write mapping, unmapped at once.
    unsafe {
        let map = libc::mmap(
            std::ptr::null_mut(),
            1 << 20,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(map, libc::MAP_FAILED);
        libc::munmap(map, 1 << 20);
    }
    // SAFETY: a valid NUL-terminated name.
    let memfd = unsafe { libc::memfd_create(c"probe".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(
        memfd >= 0,
        "memfd_create: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: closing the memfd just created.
    unsafe { libc::close(memfd) };
    std::thread::spawn(|| 7)
        .join()
        .map(|seven| assert_eq!(seven, 7))
        .ok();
    Ok(())
}

fn forbidden_call(name: &str) {
    match name {
        // SAFETY: plain system calls with valid (or null) arguments; they are meant to be refused.
        "socket" => unsafe {
            libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        },
        "execve" => unsafe {
            let argv = [c"/bin/true".as_ptr(), std::ptr::null()];
            libc::execve(c"/bin/true".as_ptr(), argv.as_ptr(), std::ptr::null());
        },
        "tty-ioctl" => unsafe {
            let mut size: libc::winsize = std::mem::zeroed();
            libc::ioctl(std::io::stderr().as_raw_fd(), libc::TIOCGWINSZ, &mut size);
        },
        "exec-memory" => unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
        },
        "socket-from-capture-thread" => {
            let _ = std::thread::spawn(|| forbidden_call("socket")).join();
        }
        "open-file" => {
            let _ = std::fs::File::open("/etc/hostname");
        }
        _ => {}
    }
}

/// Run only as a child of the tests below: installs a filter on a fresh thread, makes the
/// allowed calls, then the forbidden one the environment names.
#[test]
#[ignore = "a child process of the seccomp tests"]
fn probe() {
    let Ok(spec) = std::env::var(PROBE_VAR) else {
        return;
    };
    let (kind, call) = spec.split_once(':').unwrap_or(("vcpu", "none"));
    let kind = match kind {
        "stdin" => ThreadKind::StdinForwarder,
        "signals" => ThreadKind::SignalWatcher,
        _ => ThreadKind::Vcpu,
    };
    let call = call.to_string();
    std::thread::spawn(move || {
        seccomp::install(kind).expect("installing the filter");
        if kind == ThreadKind::Vcpu {
            allowed_vcpu_calls().expect("the vCPU thread's usual calls");
        }
        eprintln!("{ALLOWED_DONE}");
        forbidden_call(&call);
        eprintln!("{FORBIDDEN_RETURNED}");
    })
    .join()
    .expect("probe thread");
}

fn run_probe(spec: &str) -> (i32, String) {
    let output = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "probe",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(PROBE_VAR, spec)
        .stdin(Stdio::null())
        .output()
        .expect("running the probe");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.code().unwrap_or(-1), stderr)
}

fn assert_refused(spec: &str, syscall: i64, thread: &str) {
    let (status, stderr) = run_probe(spec);
    assert_eq!(status, STATUS_SECCOMP_VIOLATION, "{spec}: {stderr}");
    assert!(stderr.contains(ALLOWED_DONE), "{spec}: {stderr}");
    assert!(!stderr.contains(FORBIDDEN_RETURNED), "{spec}: {stderr}");
    let line = format!("snapvmm: seccomp refused system call {syscall} on the {thread} thread");
    assert!(stderr.contains(&line), "{spec}: no '{line}' in {stderr}");
}

#[test]
fn a_vcpu_thread_does_its_work_under_its_filter() {
    let (status, stderr) = run_probe("vcpu:none");
    assert_eq!(status, 0, "{stderr}");
    assert!(stderr.contains(ALLOWED_DONE), "{stderr}");
    assert!(stderr.contains(FORBIDDEN_RETURNED), "{stderr}");
}

#[test]
fn forbidden_calls_from_a_vcpu_thread_are_refused() {
    assert_refused("vcpu:socket", libc::SYS_socket, "vCPU");
    assert_refused("vcpu:execve", libc::SYS_execve, "vCPU");
    assert_refused("vcpu:tty-ioctl", libc::SYS_ioctl, "vCPU");
    assert_refused("vcpu:exec-memory", libc::SYS_mmap, "vCPU");
    // A RAM capture thread started after the install inherits the filter.
    assert_refused(
        "vcpu:socket-from-capture-thread",
        libc::SYS_socket,
        "inherited-filter (RAM capture)",
    );
}

#[test]
fn the_helper_threads_are_refused_files() {
    assert_refused("stdin:open-file", libc::SYS_openat, "stdin");
    assert_refused("signals:open-file", libc::SYS_openat, "signal watcher");
    assert_refused("signals:socket", libc::SYS_socket, "signal watcher");
}

fn assert_clean(outcome: &Outcome, status: i32) {
    assert_eq!(outcome.status, status, "{}", outcome.transcript());
    assert!(
        !outcome.stderr.contains("seccomp"),
        "{}",
        outcome.transcript()
    );
}

#[test]
fn snapvmm_run_passes_its_guests_under_seccomp() {
    require_kvm();
    assert_clean(
        &run_snapvmm(&["run", "--guest", "hello", "--timeout", "60"]),
        0,
    );
    for strategy in ["dirty", "remap"] {
        let outcome = run_snapvmm(&[
            "run",
            "--guest",
            "snapshot-stress",
            "--mem",
            "32M",
            "--restore",
            strategy,
            "--verify-restores",
            "--timeout",
            "200",
        ]);
        assert_clean(&outcome, 0);
        assert!(
            outcome.stderr.contains("100 verified"),
            "{}",
            outcome.transcript()
        );
    }
    let dir = std::env::temp_dir().join(format!("snapvmm-seccomp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let dir_arg = dir.to_str().expect("temp path");
    let saved = run_snapvmm(&[
        "run",
        "--guest",
        "snapshot-basic",
        "--mem",
        "32M",
        "--save-snapshot",
        dir_arg,
        "--timeout",
        "60",
    ]);
    assert_clean(&saved, 0);
    for strategy in ["dirty", "remap"] {
        let resumed = run_snapvmm(&[
            "run",
            "--from-snapshot",
            dir_arg,
            "--restore",
            strategy,
            "--verify-restores",
            "--timeout",
            "60",
        ]);
        assert_clean(&resumed, 0);
    }
    let _ = std::fs::remove_dir_all(&dir);
    // Running past --timeout arms the deadline timer after the install.
    assert_clean(
        &run_snapvmm(&["run", "--guest", "input-echo", "--timeout", "0.5"]),
        68,
    );
}

/// snapvmm's own threads during a run: the vCPU (main), the signal watcher, the stdin forwarder.
/// (KVM adds kernel worker threads to the process, which are not ours to filter.)
const USER_THREADS: [&str; 3] = ["snapvmm", "signals", "stdin"];

/// The `Seccomp:` mode (2: filter) of every thread of `pid`, by thread name.
fn thread_seccomp_modes(pid: u32) -> Vec<(String, String)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| {
            let status = std::fs::read_to_string(task.path().join("status")).ok()?;
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|line| line.strip_prefix(name))
                    .map(|value| value.trim().to_string())
            };
            Some((field("Name:")?, field("Seccomp:")?))
        })
        .collect()
}

/// Starts `snapvmm run` on a guest that waits for input, and returns every thread's seccomp
/// mode once the vCPU thread runs the guest, then stops it with SIGTERM.
fn modes_while_running(extra: &[&str]) -> Vec<(String, String)> {
    require_kvm();
    let child = Command::new(SNAPVMM)
        .args(["run", "--guest", "input-echo", "--timeout", "60"])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting snapvmm");
    let started = Instant::now();
    let mut modes = Vec::new();
    while started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
        modes = thread_seccomp_modes(child.id());
        let named = |name: &str| modes.iter().any(|(n, _)| n == name);
        let settled = if extra.contains(&"--no-seccomp") {
            started.elapsed() > Duration::from_secs(1)
        } else {
            USER_THREADS
                .iter()
                .all(|name| modes.iter().any(|(n, mode)| n == name && mode == "2"))
        };
        if named("signals") && named("stdin") && settled {
            break;
        }
    }
    let pid = child.id() as libc::pid_t;
    // SAFETY: signalling the child this test started and has not reaped yet.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let output = child.wait_with_output().expect("waiting for snapvmm");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(143), "{stderr}");
    assert!(!stderr.contains("seccomp"), "{stderr}");
    modes
}

#[test]
fn every_thread_of_a_run_is_filtered_and_no_seccomp_turns_it_off() {
    let modes = modes_while_running(&[]);
    for name in USER_THREADS {
        assert!(
            modes.iter().any(|(n, mode)| n == name && mode == "2"),
            "{name} not filtered: {modes:?}"
        );
    }
    let modes = modes_while_running(&["--no-seccomp"]);
    for name in USER_THREADS {
        assert!(
            modes.iter().any(|(n, mode)| n == name && mode == "0"),
            "{name} filtered with --no-seccomp: {modes:?}"
        );
    }
}
