//! The Linux harnesses (guest-tools/linux-agent/) on the host, where there is no snapshot device:
//! the agent must stop before its SAVE with status 2 and say why, before the harness runs. What
//! they do inside a Linux guest is tested in the real-KVM lane (tests/tests/real_kvm_linux_agent.rs).

use std::path::PathBuf;
use std::process::Command;

/// The harnesses build.rs must have built from guest-tools/linux-agent/harnesses/.
const HARNESSES: &[&str] = &["linux-fuzz-demo", "linux-endings"];
/// AGENT_EXIT_NO_DEVICE in guest-tools/linux-agent/agent.h.
const EXIT_NO_DEVICE: i32 = 2;

fn harness(name: &str) -> PathBuf {
    guest_tools::linux_program_path(name).unwrap_or_else(|| {
        panic!(
            "guest-tools built no Linux program {name}: {:?}",
            guest_tools::LINUX_PROGRAMS
        )
    })
}

/// Runs `name` with `device` as $SNAPVMM_DEVICE (or none), returns (status, stderr).
fn run(name: &str, device: Option<&str>) -> (i32, String) {
    let mut command = Command::new(harness(name));
    command.env_remove("SNAPVMM_DEVICE");
    if let Some(device) = device {
        command.env("SNAPVMM_DEVICE", device);
    }
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("running {name}: {error}"));
    let status = output
        .status
        .code()
        .unwrap_or_else(|| panic!("{name} was killed: {:?}", output.status));
    (status, String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn harnesses_link_the_agent_and_the_coverage_callbacks() {
    for name in HARNESSES {
        let bytes = std::fs::read(harness(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let has = |symbol: &str| bytes.windows(symbol.len()).any(|w| w == symbol.as_bytes());
        for symbol in [
            "LLVMFuzzerTestOneInput",
            "__sanitizer_cov_trace_pc_guard_init",
            "__sanitizer_cov_trace_const_cmp1",
            "agent_crash_handlers_install",
        ] {
            assert!(has(symbol), "{name} lacks {symbol}");
        }
    }
}

#[test]
fn without_a_snapshot_device_the_agent_stops_before_the_harness_runs() {
    // A host has no PCI device 1234:f987 (this test would not be run on a snapvmm guest).
    for name in HARNESSES {
        let (status, stderr) = run(name, None);
        assert_eq!(status, EXIT_NO_DEVICE, "{name}: {stderr}");
        assert!(
            stderr.contains("no snapshot device (PCI 1234:f987) in /sys/bus/pci/devices"),
            "{name}: {stderr}"
        );
    }
}

#[test]
fn a_device_directory_without_resources_is_named_in_the_error() {
    let dir = std::env::temp_dir().join(format!("linux-agent-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temporary directory");
    let dir_text = dir.to_string_lossy().into_owned();
    let (status, stderr) = run("linux-fuzz-demo", Some(&dir_text));
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(status, EXIT_NO_DEVICE, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot open {dir_text}/resource0: No such file or directory"
        )),
        "{stderr}"
    );
}
