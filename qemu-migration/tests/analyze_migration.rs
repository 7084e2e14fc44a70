//! QEMU's own `scripts/analyze-migration.py` (from the QEMU 7.2 source, not part of this repo)
//! reads what we write: the vmdesc trailer describes our section bytes exactly.
//!
//! Run with `QEMU_ANALYZE_MIGRATION=/path/to/analyze-migration.py cargo test -p qemu-migration
//! --test analyze_migration -- --ignored` (the script is in QEMU's source tarball, e.g.
//! `apt-get source qemu`).

mod common;

use std::process::Command;

use qemu_migration::machine::ram_map::{GuestRamSink, GuestRamSource, VecGuestMemory};
use qemu_migration::ram::VecRam;
use qemu_migration::reader::{read_stream, ReadLimits};
use qemu_migration::writer::write_parsed;
use qemu_migration::{export_machine, import_machine, ExportParts, ImportOptions, MachineType};
use serde_json::Value;

fn analyze(path: &std::path::Path) -> Value {
    let script = std::env::var("QEMU_ANALYZE_MIGRATION")
        .expect("set QEMU_ANALYZE_MIGRATION to QEMU 7.2's scripts/analyze-migration.py");
    let out = Command::new("python3")
        .arg(script)
        .arg("-f")
        .arg(path)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "analyze-migration.py failed on {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON from analyze-migration.py")
}

#[test]
#[ignore = "needs QEMU_ANALYZE_MIGRATION (QEMU's script is not in this repository)"]
fn analyze_migration_reads_our_streams() {
    let dir = tempfile::tempdir().unwrap();
    for (machine, args) in [
        ("microvm", &["-serial", "null"][..]),
        ("pc", &[][..]),
        ("q35", &[][..]),
    ] {
        let original = common::capture(machine, 32, 300, args);
        // A QEMU stream re-written by our writer (every section, skipped ones as opaque buffers).
        let mut ram = VecRam::default();
        let parsed = read_stream(&original[..], &mut ram, &ReadLimits::default()).unwrap();
        let rewritten = write_parsed(Vec::new(), &parsed, &mut ram).unwrap();
        let path = common::write_file(dir.path(), &format!("{machine}-rewritten.bin"), &rewritten);
        let state = analyze(&path);
        let cpu = state
            .as_object()
            .unwrap()
            .iter()
            .find(|(key, _)| key.starts_with("cpu ("))
            .map(|(_, v)| v.clone())
            .expect("cpu section in the analysis");
        assert!(cpu.get("env.eip").is_some(), "{cpu}");
        assert!(cpu.get("cpu/tsc_khz").is_some(), "{cpu}");
    }
    // A stream exported from snapvmm's types.
    let original = common::capture("microvm", 32, 300, &["-serial", "null"]);
    let mut memory = VecGuestMemory::default();
    let imported = import_machine(
        &original[..],
        &mut GuestRamSink::new(&mut memory),
        &ImportOptions::default(),
    )
    .unwrap();
    let regions = imported.memory_regions.clone();
    let mut source = GuestRamSource::new(MachineType::Microvm, &regions, &mut memory).unwrap();
    let parts = ExportParts {
        vcpus: &imported.vcpus,
        vm: &imported.vm,
        serial: imported.serial.as_ref(),
        cmos: None,
        host_monotonic_ns: 0,
        host_realtime_ns: 0,
        virtual_clock_ns: None,
        running: true,
    };
    let exported = export_machine(&parts, &mut source, Vec::new()).unwrap();
    let path = common::write_file(dir.path(), "exported.bin", &exported);
    let state = analyze(&path);
    let keys: Vec<&String> = state.as_object().unwrap().keys().collect();
    for name in [
        "ram (1)",
        "timer (2)",
        "cpu (4)",
        "apic (5)",
        "kvmclock (7)",
        "globalstate (",
    ] {
        assert!(
            keys.iter().any(|k| k.starts_with(name)),
            "{name} not in {keys:?}"
        );
    }
    let ram = &state["ram (1)"]["section sizes"];
    assert_eq!(ram["microvm.ram"], "0x0000000002000000");
}
