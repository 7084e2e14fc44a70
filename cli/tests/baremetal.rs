//! Bare-metal guests from `guest-tools` boot on this machine's /dev/kvm and behave.

use std::process::Command;
use std::time::Duration;

use snapvmm_tests::runner::{require_kvm, Outcome};

/// The snapvmm binary cargo built for these tests.
const SNAPVMM: &str = env!("CARGO_BIN_EXE_snapvmm");

fn run_snapvmm(args: &[&str], budget: Duration) -> Outcome {
    snapvmm_tests::runner::run_snapvmm(SNAPVMM.as_ref(), args, budget)
}

const BUDGET: Duration = Duration::from_secs(60);

fn guest(name: &str) -> String {
    guest_tools::guest_path(name)
        .unwrap_or_else(|| panic!("guest-tools did not build a guest named {name}"))
        .to_string_lossy()
        .into_owned()
}

fn boot(name: &str, extra: &[&str]) -> Outcome {
    require_kvm();
    let kernel = guest(name);
    let mut args = vec!["run", "--kernel", kernel.as_str(), "--timeout", "30"];
    args.extend_from_slice(extra);
    run_snapvmm(&args, BUDGET)
}

#[test]
fn hello_prints_from_cpl3_and_exits_through_the_debug_port() {
    let outcome = boot("hello", &[]);
    assert_eq!(outcome.status, 0, "{}", outcome.transcript());
    assert!(
        outcome.stdout.contains("running at CPL 3, RAM 256 MiB"),
        "{}",
        outcome.transcript()
    );
    assert!(
        outcome.stderr.contains("debug-exit port with code 0"),
        "{}",
        outcome.transcript()
    );
}

#[test]
fn the_builtin_default_is_hello() {
    require_kvm();
    let outcome = run_snapvmm(&["run", "--timeout", "30"], BUDGET);
    assert_eq!(outcome.status, 0, "{}", outcome.transcript());
    assert!(
        outcome.stdout.contains("Hello from snapvmm"),
        "{}",
        outcome.transcript()
    );
}

#[test]
fn pci_list_finds_the_host_bridge_and_the_snapshot_device() {
    let outcome = boot("pci-list", &[]);
    assert_eq!(outcome.status, 0, "{}", outcome.transcript());
    assert!(
        outcome
            .stdout
            .contains("pci 00:00.0 1b36:0008 class 060000"),
        "{}",
        outcome.transcript()
    );
    assert!(
        outcome
            .stdout
            .contains("pci 00:04.0 1234:f987 class ff0000"),
        "{}",
        outcome.transcript()
    );
    assert!(
        outcome.stdout.contains("magic 0x534e4150"),
        "{}",
        outcome.transcript()
    );
}

#[test]
fn the_snapshot_device_follows_its_slot_option() {
    let outcome = boot("pci-list", &["--snapshot-slot", "7"]);
    assert_eq!(outcome.status, 0, "{}", outcome.transcript());
    assert!(
        outcome.stdout.contains("pci 00:07.0 1234:f987"),
        "{}",
        outcome.transcript()
    );
    assert!(
        !outcome.stdout.contains("pci 00:04.0"),
        "{}",
        outcome.transcript()
    );
}

#[test]
fn a_one_gib_guest_boots_and_sees_its_ram() {
    let outcome = boot("hello", &["--mem", "1G"]);
    assert_eq!(outcome.status, 0, "{}", outcome.transcript());
    assert!(
        outcome.stdout.contains("RAM 1024 MiB"),
        "{}",
        outcome.transcript()
    );
}

#[test]
fn ram_above_four_gib_is_usable() {
    let outcome = boot("memmap", &["--mem", "5G"]);
    assert_eq!(outcome.status, 0, "{}", outcome.transcript());
}

#[test]
fn user_faults_are_reported_with_their_vector() {
    // exit code 32 + vector: #UD = 6, #PF = 14.
    for (kind, vector, name) in [("ud2", 6, "#UD"), ("null-read", 14, "#PF")] {
        let outcome = boot("fault", &["--cmdline", kind]);
        assert_eq!(
            outcome.status,
            32 + vector,
            "{kind}: {}",
            outcome.transcript()
        );
        assert!(
            outcome.stdout.contains(&format!("vector {vector} ({name}")),
            "{kind}: {}",
            outcome.transcript()
        );
    }
}

#[test]
fn the_pvh_entry_of_the_runtime_boots_too() {
    let outcome = boot("hello-pvh", &[]);
    assert_eq!(outcome.status, 0, "{}", outcome.transcript());
    assert!(
        outcome.stdout.contains("running at CPL 3"),
        "{}",
        outcome.transcript()
    );
}

/// A small 32-bit kernel that knows nothing of snapvmm (Multiboot header + PVH note, polls the
/// UART) prints the same under snapvmm and under QEMU.
#[test]
fn an_independent_pvh_multiboot_kernel_prints_the_same_as_under_qemu() {
    let outcome = boot("pvh-hello", &[]);
    assert_eq!(outcome.status, 0, "{}", outcome.transcript());
    let kernel = guest("pvh-hello");
    let qemu = Command::new("timeout")
        .args([
            "60",
            "qemu-system-x86_64",
            "-accel",
            "tcg",
            "-m",
            "256",
            "-nodefaults",
        ])
        .args(["-display", "none", "-serial", "stdio", "-no-reboot"])
        .args([
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=4",
            "-kernel",
            &kernel,
        ])
        .output()
        .expect("qemu-system-x86_64 must be installed (scripts/ensure-deps.sh installs it)");
    let qemu_out = String::from_utf8_lossy(&qemu.stdout);
    // QEMU's isa-debug-exit reports code C as (C << 1) | 1.
    assert_eq!(qemu.status.code(), Some(1), "QEMU output: {qemu_out}");
    let ours: Vec<&str> = outcome
        .stdout
        .lines()
        .filter(|l| !l.contains("entered through"))
        .collect();
    let theirs: Vec<&str> = qemu_out
        .lines()
        .filter(|l| !l.contains("entered through"))
        .collect();
    assert!(!ours.is_empty());
    assert_eq!(
        ours,
        theirs,
        "snapvmm: {}\nQEMU: {qemu_out}",
        outcome.transcript()
    );
}

/// A tiny PVH kernel (see `snapvmm_tests::lane::tiny_pvh_kernel`) written to a temporary file.
fn tiny_pvh_kernel(name: &str, code: &[u8]) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("snapvmm-baremetal-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, snapvmm_tests::lane::tiny_pvh_kernel(code)).unwrap();
    path
}

#[test]
fn each_way_a_guest_stops_has_its_own_status() {
    require_kvm();
    let spin = tiny_pvh_kernel("spin.elf", &[0xeb, 0xfe]); // jmp .
    let outcome = run_snapvmm(
        &["run", "--kernel", spin.to_str().unwrap(), "--timeout", "1"],
        BUDGET,
    );
    assert_eq!(outcome.status, 68, "{}", outcome.transcript());
    assert!(
        outcome.stderr.contains("timed out"),
        "{}",
        outcome.transcript()
    );

    // ud2 with no IDT: #UD, then #GP, then a double fault nobody handles.
    let triple = tiny_pvh_kernel("triple.elf", &[0x0f, 0x0b]);
    let outcome = run_snapvmm(
        &[
            "run",
            "--kernel",
            triple.to_str().unwrap(),
            "--timeout",
            "10",
        ],
        BUDGET,
    );
    assert_eq!(outcome.status, 66, "{}", outcome.transcript());
    assert!(
        outcome.stderr.contains("triple-faulted"),
        "{}",
        outcome.transcript()
    );

    // mov al, 0xfe; out 0x64, al: the i8042 pulses the reset line.
    let reset = tiny_pvh_kernel("reset.elf", &[0xb0, 0xfe, 0xe6, 0x64, 0xeb, 0xfe]);
    let outcome = run_snapvmm(
        &[
            "run",
            "--kernel",
            reset.to_str().unwrap(),
            "--timeout",
            "10",
        ],
        BUDGET,
    );
    assert_eq!(outcome.status, 65, "{}", outcome.transcript());

    // mov eax, 77; out 0xf4, eax: a debug-exit code above 63 is clamped.
    let exit = tiny_pvh_kernel("exit.elf", &[0xb8, 77, 0, 0, 0, 0xe7, 0xf4, 0xeb, 0xfe]);
    let outcome = run_snapvmm(
        &["run", "--kernel", exit.to_str().unwrap(), "--timeout", "10"],
        BUDGET,
    );
    assert_eq!(outcome.status, 63, "{}", outcome.transcript());
}

#[test]
fn ctrl_c_stops_a_running_guest_cleanly() {
    require_kvm();
    let spin = tiny_pvh_kernel("spin-int.elf", &[0xeb, 0xfe]);
    let child = Command::new(SNAPVMM)
        .args(["run", "--kernel", spin.to_str().unwrap(), "--timeout", "30"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: sending SIGINT to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
}
