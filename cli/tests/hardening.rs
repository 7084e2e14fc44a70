//! What a guest, a file or a signal can do must not lose data, hang or stop the VMM (issue 12):
//! each test here failed on the VMM before its fix.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use snapvmm_tests::runner::{require_kvm, Outcome};
use vmm::{
    EngineOptions, KernelSource, Machine, MachineConfig, RestoreStrategy, ResumeOptions,
    SerialOutput, VmEvent,
};

/// The snapvmm binary cargo built for these tests.
const SNAPVMM: &str = env!("CARGO_BIN_EXE_snapvmm");
const BUDGET: Duration = Duration::from_secs(60);

fn run_snapvmm(args: &[&str]) -> Outcome {
    snapvmm_tests::runner::run_snapvmm(SNAPVMM.as_ref(), args, BUDGET)
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("snapvmm-hardening-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn config(guest: &str, strategy: RestoreStrategy) -> MachineConfig {
    require_kvm();
    let built = guest_tools::BUILT_GUESTS
        .iter()
        .find(|g| g.name == guest)
        .unwrap_or_else(|| panic!("no guest {guest}"));
    let mut config = MachineConfig::new(KernelSource::Builtin {
        name: built.name,
        image: built.image,
    });
    config.mem_bytes = 64 << 20;
    config.serial = SerialOutput::Discard;
    config.engine = EngineOptions {
        strategy,
        verify_restores: true,
        ..Default::default()
    };
    config
}

fn deadline() -> Option<Instant> {
    Some(Instant::now() + Duration::from_secs(10))
}

/// One input-echo run: the guest must report `input`'s length through DONE.
fn echo_run(machine: &mut Machine, input: &[u8]) {
    machine.set_input(input);
    assert_eq!(
        machine.run(deadline()).expect("run"),
        VmEvent::Done {
            code: input.len() as u32
        }
    );
    machine.restore().expect("restore");
}

/// Item 9: `rep insb/insw` with a count above 1 read the register once and then garbage.
#[test]
fn repeated_port_input_reads_every_element() {
    require_kvm();
    let outcome = run_snapvmm(&[
        "run",
        "--guest",
        "vmm-regressions",
        "--cmdline",
        "mode=rep-ins",
    ]);
    assert_eq!(outcome.status, 0, "{}", outcome.transcript());
    assert!(outcome
        .stdout
        .contains("rep insb read 5a 5a 5a 5a 5a 5a 5a 5a"));
}

/// Item 4: a snapshot taken with BAR2 over RAM and BAR4 inside BAR2 restores (status was 71) and
/// resumes from disk (status was 64), verified.
#[test]
fn snapshots_with_unmappable_bars_restore_and_resume() {
    require_kvm();
    let dir = temp_dir("bars");
    let dir_arg = dir.to_str().unwrap();
    for args in [
        vec![
            "run",
            "--guest",
            "vmm-regressions",
            "--cmdline",
            "mode=bar-overlap",
            "--mem",
            "64M",
            "--save-snapshot",
            dir_arg,
            "--verify-restores",
        ],
        vec!["run", "--from-snapshot", dir_arg, "--verify-restores"],
    ] {
        let outcome = run_snapvmm(&args);
        assert_eq!(outcome.status, 0, "{args:?}: {}", outcome.transcript());
        assert!(outcome
            .stdout
            .contains("bar-overlap after 1 restore(s): global 1, ok"));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Item 2: a SAVE after a resume from disk captured into the loaded, read-only memory file.
#[test]
fn a_resumed_machine_takes_new_snapshots() {
    let dir = temp_dir("resume-save");
    let mut machine = Machine::boot(&config("input-echo", RestoreStrategy::Dirty)).expect("boot");
    assert_eq!(machine.run(deadline()).expect("run"), VmEvent::SaveDone);
    machine.write_snapshot(&dir).expect("write");
    drop(machine);
    let options = ResumeOptions {
        serial: SerialOutput::Discard,
        engine: EngineOptions {
            verify_restores: true,
            ..Default::default()
        },
    };
    let mut machine = Machine::from_snapshot_dir(&dir, &options).expect("resume");
    echo_run(&mut machine, b"before");
    machine.save().expect("SAVE after a resume");
    for input in [&b"one"[..], b"three", b""] {
        echo_run(&mut machine, input);
    }
    assert_eq!(machine.stats().verified_restores, 4);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Item 3: with `--restore remap`, a second SAVE without a RESTORE in between failed (the first
/// capture was still registered with userfaultfd).
#[test]
fn remap_takes_a_second_snapshot_without_a_restore_between() {
    let mut machine = Machine::boot(&config("input-echo", RestoreStrategy::Remap)).expect("boot");
    assert_eq!(machine.run(deadline()).expect("run"), VmEvent::SaveDone);
    machine.save().expect("second SAVE");
    machine.save().expect("third SAVE");
    for input in [&b"ab"[..], b"abcd", b"a"] {
        echo_run(&mut machine, input);
    }
}

/// Item 1: `--save-snapshot` on a directory that is not a snapvmm snapshot is refused before the
/// guest runs, and nothing in it is touched.
#[test]
fn save_snapshot_never_replaces_foreign_directories() {
    let dir = temp_dir("foreign");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("notes.txt"), "x").unwrap();
    let outcome = run_snapvmm(&["run", "--save-snapshot", dir.to_str().unwrap()]);
    assert_eq!(outcome.status, 64, "{}", outcome.transcript());
    assert_eq!(
        outcome.stderr.trim().lines().count(),
        1,
        "{}",
        outcome.transcript()
    );
    assert!(
        !outcome.stdout.contains("Hello"),
        "the guest must not have run"
    );
    assert_eq!(std::fs::read_to_string(dir.join("notes.txt")).unwrap(), "x");
    assert!(dir.join("sub").is_dir());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Items 5 and 7: a FIFO with no writer, and a character device, as `--kernel` or `--initrd`: one
/// line and status 64 at once (a FIFO blocked `open()` for ever, /dev/zero read without bound).
#[test]
fn fifos_and_devices_are_refused_at_once() {
    let dir = temp_dir("fifo");
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("fifo");
    let path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
    let hello = guest_tools::guest_path("hello").unwrap();
    for args in [
        vec!["run", "--kernel", fifo.to_str().unwrap()],
        vec!["run", "--kernel", "/dev/zero"],
        vec![
            "run",
            "--kernel",
            hello.to_str().unwrap(),
            "--initrd",
            fifo.to_str().unwrap(),
        ],
    ] {
        let started = Instant::now();
        let outcome = run_snapvmm(&args);
        assert_eq!(outcome.status, 64, "{args:?}: {}", outcome.transcript());
        assert_eq!(
            outcome.stderr.trim().lines().count(),
            1,
            "{}",
            outcome.transcript()
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{args:?} took {:?}",
            started.elapsed()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Item 8: SIGTERM stops the VM like Ctrl-C: the summary is printed, the status says so, and no
/// temporary snapshot directory is left behind.
#[test]
fn sigterm_stops_cleanly() {
    require_kvm();
    let dir = temp_dir("sigterm");
    std::fs::create_dir_all(&dir).unwrap();
    let snapshot = dir.join("snap");
    // input-echo with no input ends every run with DONE, which `run` answers with a restore:
    // it runs until stopped.
    let child = Command::new(SNAPVMM)
        .args([
            "run",
            "--guest",
            "input-echo",
            "--save-snapshot",
            snapshot.to_str().unwrap(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    std::thread::sleep(Duration::from_millis(1500));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let output = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(143), "{stderr}");
    assert!(stderr.contains("snapvmm: snapshots:"), "{stderr}");
    assert!(stderr.contains("terminated (SIGTERM)"), "{stderr}");
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name != "snap")
        .collect();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
    assert!(snapshot.join("state.bin").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 8, item 1: a guest written elsewhere that never loads TR and does port I/O at CPL3 with
/// IOPL=3 triple-faulted on its first `out` (kvm_pvm consults the TSS I/O bitmap, and the boot TR
/// had none). It now runs its rounds, each restore verified.
#[test]
fn port_io_at_cpl3_works_without_a_tss_of_the_guest() {
    require_kvm();
    let outcome = run_snapvmm(&[
        "run",
        "--guest",
        "foreign-io",
        "--cmdline",
        "rounds=60 pages=10",
        "--verify-restores",
        "--timeout",
        "50",
    ]);
    assert_eq!(outcome.status, 0, "{}", outcome.transcript());
    assert!(outcome.stdout.contains("foreign-io: CPL3, IOPL=3, no TR"));
    assert!(
        outcome.stdout.contains("foreign-io: 60 rounds ok"),
        "{}",
        outcome.transcript()
    );
}

/// The hostile guest (random port, PCI configuration and device-register writes, BARs moved over
/// RAM and into each other, its memory checked after every restore) reaches its end with every
/// restore verified, with four seeds (one per BAR placement at the SAVE) and both restore
/// strategies; the VMM never stops with 69, 71 or a signal because of what it wrote.
#[test]
fn the_hostile_guest_cannot_stop_the_vmm() {
    require_kvm();
    for strategy in ["dirty", "remap"] {
        for seed in 1..=4 {
            let cmdline = format!("seed={seed} rounds=60");
            let outcome = run_snapvmm(&[
                "run",
                "--guest",
                "hostile",
                "--cmdline",
                &cmdline,
                "--restore",
                strategy,
                "--verify-restores",
                "--timeout",
                "50",
            ]);
            assert_eq!(
                outcome.status,
                0,
                "{strategy}, seed {seed}: {}",
                outcome.transcript()
            );
            assert!(
                outcome
                    .stdout
                    .contains(&format!("hostile: seed={seed} rounds=60")),
                "{}",
                outcome.transcript()
            );
        }
    }
}
