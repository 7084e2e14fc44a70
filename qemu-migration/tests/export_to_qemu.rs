//! A microvm state taken from a real QEMU 7.2 stream, imported into snapvmm's types and exported
//! again through them, is loaded by QEMU 7.2 (`-incoming "exec:cat F"`) and runs.

mod common;

use std::time::Duration;

use qemu_migration::machine::ram_map::{GuestRamSink, GuestRamSource, VecGuestMemory};
use qemu_migration::ram::DiscardRam;
use qemu_migration::reader::{read_stream, ReadLimits};
use qemu_migration::sections::SectionState;
use qemu_migration::{export_machine, import_machine, ExportParts, ImportOptions, MachineType};
use serde_json::json;

const MEM_MIB: u32 = 32;
const DEST_ARGS: &[&str] = &["-serial", "null"];

/// The CPUID leaf that gives the physical address width, as QEMU's CPU model had it (seen in the
/// MTRR masks QEMU widens to bit 51): the stream has no CPUID, the importer must be told.
fn cpuid_like_source(original: &[u8]) -> Vec<kvm_bindings::kvm_cpuid_entry2> {
    let mask = cpu_of(original).mtrr_var[0][1];
    let phys_bits = if mask == 0 { 40 } else { mask.trailing_zeros() };
    vec![kvm_bindings::kvm_cpuid_entry2 {
        function: 0x8000_0008,
        eax: phys_bits,
        ..Default::default()
    }]
}

/// Imports a real microvm stream and exports it again (paused or running).
fn reencode(original: &[u8], running: bool) -> (Vec<u8>, qemu_migration::ImportedMachine) {
    let mut memory = VecGuestMemory::default();
    let options = ImportOptions {
        cpuid: cpuid_like_source(original),
        ..Default::default()
    };
    let imported = {
        let mut sink = GuestRamSink::new(&mut memory);
        import_machine(original, &mut sink, &options).expect("import")
    };
    assert_eq!(imported.machine, MachineType::Microvm);
    assert_eq!(imported.ram_bytes, u64::from(MEM_MIB) << 20);
    let regions = imported.memory_regions.clone();
    let mut source = GuestRamSource::new(MachineType::Microvm, &regions, &mut memory).unwrap();
    let realtime = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    let parts = ExportParts {
        vcpus: &imported.vcpus,
        vm: &imported.vm,
        serial: imported.serial.as_ref(),
        cmos: imported.cmos.as_ref(),
        host_monotonic_ns: 0,
        host_realtime_ns: realtime,
        virtual_clock_ns: Some(imported.virtual_clock_ns),
        running,
    };
    let bytes = export_machine(&parts, &mut source, Vec::new()).expect("export");
    (bytes, imported)
}

fn cpu_of(bytes: &[u8]) -> Box<qemu_migration::sections::CpuSection> {
    let parsed = read_stream(bytes, &mut DiscardRam::default(), &ReadLimits::default()).unwrap();
    match parsed.section("cpu", 0) {
        Some(SectionState::Cpu(cpu)) => cpu.clone(),
        _ => panic!("no cpu section"),
    }
}

#[test]
fn exported_cpu_state_matches_qemus() {
    let original = common::capture("microvm", MEM_MIB, 300, DEST_ARGS);
    let (exported, imported) = reencode(&original, false);
    let (a, b) = (cpu_of(&original), cpu_of(&exported));
    assert_eq!(a.regs, b.regs);
    assert_eq!(
        (a.eip, a.eflags, a.hflags, a.hflags2),
        (b.eip, b.eflags, b.hflags, b.hflags2)
    );
    assert_eq!(a.segs, b.segs);
    assert_eq!((a.ldt, a.tr), (b.ldt, b.tr));
    assert_eq!(
        (a.gdt.base, a.gdt.limit, a.idt.base, a.idt.limit),
        (b.gdt.base, b.gdt.limit, b.idt.base, b.idt.limit)
    );
    assert_eq!(
        (a.cr0, a.cr2, a.cr3, a.cr4, a.efer),
        (b.cr0, b.cr2, b.cr3, b.cr4, b.efer)
    );
    assert_eq!(
        (a.fpuc, a.fpus, a.fptag, a.fpregs),
        (b.fpuc, b.fpus, b.fptag, b.fpregs)
    );
    assert_eq!(
        (a.mxcsr, a.xmm, a.ymmh, a.xcr0, a.xstate_bv),
        (b.mxcsr, b.xmm, b.ymmh, b.xcr0, b.xstate_bv)
    );
    assert_eq!(
        (a.tsc, a.pat, a.mtrr_var, a.mtrr_fixed, a.mtrr_deftype),
        (b.tsc, b.pat, b.mtrr_var, b.mtrr_fixed, b.mtrr_deftype)
    );
    assert_eq!(
        (a.mp_state, a.interrupt_injected, a.exception_nr),
        (b.mp_state, b.interrupt_injected, b.exception_nr)
    );
    assert_eq!(a.tsc_khz(), b.tsc_khz());
    let section = |bytes: &[u8], idstr: &str, instance: u32| {
        read_stream(bytes, &mut DiscardRam::default(), &ReadLimits::default())
            .unwrap()
            .section(idstr, instance)
            .cloned()
    };
    for (idstr, instance) in [
        ("apic", 0),
        ("i8259", 0),
        ("i8259", 1),
        ("ioapic", 0),
        ("timer", 0),
        ("cpu_common", 0),
    ] {
        let (orig, ours) = (
            section(&original, idstr, instance),
            section(&exported, idstr, instance),
        );
        if idstr == "cpu_common" {
            // CPU_INTERRUPT_HARD is QEMU's userspace-PIC output line (split irqchip); an in-kernel
            // PIC keeps that in its own IRR, which is compared above.
            let (Some(SectionState::CpuCommon(c1)), Some(SectionState::CpuCommon(c2))) =
                (orig, ours)
            else {
                panic!("cpu_common")
            };
            assert_eq!(c1.halted, c2.halted);
            assert_eq!(c1.interrupt_request & !2, c2.interrupt_request);
            continue;
        }
        if idstr == "timer" {
            // TCG's tick base is not kept (KVM guests do not use it).
            let (Some(SectionState::Timer(t1)), Some(SectionState::Timer(t2))) = (orig, ours)
            else {
                panic!("timer")
            };
            assert_eq!(t1.cpu_clock_offset, t2.cpu_clock_offset);
            continue;
        }
        assert_eq!(orig, ours, "{idstr} {instance}");
    }
    let (Some(SectionState::I8254(p1)), Some(SectionState::I8254(p2))) = (
        section(&original, "i8254", 0),
        section(&exported, "i8254", 0),
    ) else {
        panic!("i8254")
    };
    for (c1, c2) in p1.channels.iter().zip(&p2.channels) {
        assert_eq!(
            (c1.count, c1.mode, c1.gate, c1.count_load_time),
            (c2.count, c2.mode, c2.gate, c2.count_load_time)
        );
    }
    assert_eq!(
        p1.channels[0].next_transition_time, p2.channels[0].next_transition_time,
        "PIT channel 0 deadline"
    );
    // Import -> export -> import gives the same machine state.
    let (_, again) = reencode(&exported, false);
    let (x, y) = (&again.vcpus[0], &imported.vcpus[0]);
    assert!(x.regs == y.regs, "regs");
    assert!(x.sregs == y.sregs, "sregs");
    assert!(x.xsave == y.xsave, "xsave");
    assert!(x.msrs == y.msrs, "msrs {:?} vs {:?}", x.msrs, y.msrs);
    assert!(x.lapic == y.lapic, "lapic");
    assert!(x.vcpu_events == y.vcpu_events, "events");
    assert!(x.debug_regs == y.debug_regs && x.mp_state == y.mp_state && x.tsc_khz == y.tsc_khz);
    assert!(
        again.vm.pit == imported.vm.pit,
        "pit {:?} vs {:?}",
        again.vm.pit,
        imported.vm.pit
    );
    assert!(
        again.vm.pic_master == imported.vm.pic_master
            && again.vm.pic_slave == imported.vm.pic_slave
    );
    assert!(again.vm.ioapic == imported.vm.ioapic, "ioapic");
    assert!(again.vm.clock == imported.vm.clock, "clock");
    assert!(
        again.vm == imported.vm,
        "vm state differs after import -> export -> import"
    );
    assert_eq!(again.serial, imported.serial);
}

#[test]
fn qemu_resumes_an_exported_microvm_stream() {
    let original = common::capture("microvm", MEM_MIB, 300, DEST_ARGS);
    let expected_rip = cpu_of(&original).eip;
    let (exported, _) = reencode(&original, false);

    let dir = tempfile::tempdir().unwrap();
    let path = common::write_file(dir.path(), "export.bin", &exported);
    let incoming = format!("exec:cat {}", path.display());
    let mut args: Vec<&str> = DEST_ARGS.to_vec();
    args.extend(["-incoming", &incoming]);
    let mut qemu = common::Qemu::start("microvm", MEM_MIB, &args);
    let mut status = qemu.status();
    for _ in 0..200 {
        if status != "inmigrate" {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
        status = qemu.status();
    }
    // The source was paused (globalstate), so QEMU waits for `cont` with our registers loaded.
    assert_eq!(status, "paused");
    let migrate = qemu.execute("query-migrate", json!({}));
    assert_ne!(migrate["status"], "failed", "{migrate}");
    let regs = qemu.execute(
        "human-monitor-command",
        json!({"command-line": "info registers"}),
    );
    let regs = regs.as_str().unwrap_or_default().to_string();
    assert!(
        regs.contains(&format!("RIP={expected_rip:016x}"))
            || regs.contains(&format!("EIP={expected_rip:08x}")),
        "QEMU has not our RIP {expected_rip:#x}: {regs}"
    );
    qemu.execute("cont", json!({}));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(qemu.status(), "running");
    let stderr = qemu.quit();
    assert!(
        !stderr.contains("error") && !stderr.contains("failed"),
        "QEMU complained: {stderr}"
    );
}

#[test]
fn qemu_starts_a_running_export_by_itself() {
    let original = common::capture("microvm", MEM_MIB, 300, DEST_ARGS);
    let (exported, _) = reencode(&original, true);
    let dir = tempfile::tempdir().unwrap();
    let path = common::write_file(dir.path(), "export.bin", &exported);
    let incoming = format!("exec:cat {}", path.display());
    let mut args: Vec<&str> = DEST_ARGS.to_vec();
    args.extend(["-incoming", &incoming]);
    let mut qemu = common::Qemu::start("microvm", MEM_MIB, &args);
    let mut status = qemu.status();
    for _ in 0..200 {
        if status == "running" {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
        status = qemu.status();
    }
    assert_eq!(status, "running");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(qemu.status(), "running");
    let stderr = qemu.quit();
    assert!(!stderr.contains("load of migration failed"), "{stderr}");
}

#[test]
fn qemu_loads_an_export_with_serial_and_rtc() {
    let machine = "microvm,rtc=on";
    let original = common::capture(machine, MEM_MIB, 300, DEST_ARGS);
    let (exported, imported) = reencode(&original, false);
    let cmos = imported
        .cmos
        .as_ref()
        .expect("rtc=on streams carry the RTC");
    assert!(cmos.clock_offset_seconds.abs() < 5);
    let parsed = read_stream(
        &exported[..],
        &mut DiscardRam::default(),
        &ReadLimits::default(),
    )
    .unwrap();
    assert!(matches!(
        parsed.section("mc146818rtc", 0),
        Some(SectionState::Rtc(_))
    ));
    assert!(matches!(
        parsed.section("serial", 0),
        Some(SectionState::Serial(_))
    ));

    let dir = tempfile::tempdir().unwrap();
    let path = common::write_file(dir.path(), "export.bin", &exported);
    let incoming = format!("exec:cat {}", path.display());
    let mut args: Vec<&str> = DEST_ARGS.to_vec();
    args.extend(["-incoming", &incoming]);
    let mut qemu = common::Qemu::start(machine, MEM_MIB, &args);
    let mut status = qemu.status();
    for _ in 0..200 {
        if status != "inmigrate" {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
        status = qemu.status();
    }
    assert_eq!(status, "paused");
    qemu.execute("cont", json!({}));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(qemu.status(), "running");
    let stderr = qemu.quit();
    assert!(!stderr.contains("load of migration failed"), "{stderr}");
}

#[test]
fn two_vcpus_round_trip_and_load() {
    let args: &[&str] = &["-serial", "null", "-smp", "2"];
    let original = common::capture("microvm", MEM_MIB, 300, args);
    let (exported, imported) = reencode(&original, false);
    assert_eq!(imported.vcpus.len(), 2);
    let parsed = read_stream(
        &exported[..],
        &mut DiscardRam::default(),
        &ReadLimits::default(),
    )
    .unwrap();
    for instance in [0, 1] {
        let orig = read_stream(
            &original[..],
            &mut DiscardRam::default(),
            &ReadLimits::default(),
        )
        .unwrap();
        assert_eq!(
            orig.section("apic", instance),
            parsed.section("apic", instance),
            "apic {instance}"
        );
        let (Some(SectionState::Cpu(a)), Some(SectionState::Cpu(b))) = (
            orig.section("cpu", instance),
            parsed.section("cpu", instance),
        ) else {
            panic!("cpu {instance}")
        };
        assert_eq!(
            (a.eip, a.mp_state, a.segs),
            (b.eip, b.mp_state, b.segs),
            "cpu {instance}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let path = common::write_file(dir.path(), "export.bin", &exported);
    let incoming = format!("exec:cat {}", path.display());
    let mut dest: Vec<&str> = args.to_vec();
    dest.extend(["-incoming", &incoming]);
    let mut qemu = common::Qemu::start("microvm", MEM_MIB, &dest);
    let mut status = qemu.status();
    for _ in 0..200 {
        if status != "inmigrate" {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
        status = qemu.status();
    }
    assert_eq!(status, "paused");
    qemu.execute("cont", json!({}));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(qemu.status(), "running");
    let stderr = qemu.quit();
    assert!(!stderr.contains("load of migration failed"), "{stderr}");
}
