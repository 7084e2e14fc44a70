//! Streams that QEMU 7.2 writes for microvm, pc and q35 parse completely, with sane values.

mod common;

use qemu_migration::ram::VecRam;
use qemu_migration::reader::{read_stream, ReadLimits};
use qemu_migration::sections::SectionState;
use qemu_migration::writer::write_parsed;

fn check_common(machine: &str, bytes: &[u8], ram_name: &str, mem: u64) {
    let mut ram = VecRam::default();
    let parsed = read_stream(bytes, &mut ram, &ReadLimits::default())
        .unwrap_or_else(|e| panic!("{machine}: {e}"));
    assert_eq!(parsed.machine, machine);
    assert!(parsed.vmdesc.as_deref().is_some_and(|d| d.starts_with('{')));
    let main = parsed
        .ram_blocks
        .iter()
        .find(|b| b.name == ram_name)
        .expect("main RAM block");
    assert_eq!(main.used_length, mem);
    assert!(parsed.ram_stats.pages > 0 && parsed.ram_stats.fill_pages > 0);
    let pages = parsed.ram_stats.pages + parsed.ram_stats.fill_pages;
    let total: u64 = parsed.ram_blocks.iter().map(|b| b.used_length / 4096).sum();
    assert_eq!(pages, total, "every page of every block is sent once");

    let Some(SectionState::Timer(timer)) = parsed.section("timer", 0) else {
        panic!("no timer")
    };
    assert!(timer.cpu_clock_offset > 0);
    let Some(SectionState::Cpu(cpu)) = parsed.section("cpu", 0) else {
        panic!("no cpu")
    };
    assert!(
        cpu.tsc_khz().is_some_and(|khz| khz > 100_000),
        "cpu/tsc_khz"
    );
    assert_eq!(cpu.eflags & 2, 2);
    assert_eq!(cpu.cr0 & 1, 1, "firmware runs in protected mode");
    assert_eq!(cpu.hflags2 & 1, 1, "GIF");
    let inputs = qemu_migration::machine::cpu_map::hflag_inputs_of_section(cpu);
    assert_eq!(
        qemu_migration::hflags::hflags(&inputs),
        cpu.hflags,
        "hflags derived as QEMU does"
    );
    let Some(SectionState::Apic(apic)) = parsed.section("apic", 0) else {
        panic!("no apic")
    };
    assert_eq!(apic.apicbase & 0xffff_f000, 0xfee0_0000);
    assert_eq!(apic.initial_count_load_time, timer.cpu_clock_offset);
    let Some(SectionState::Kvmclock(clock)) = parsed.section("kvmclock", 0) else {
        panic!("no kvmclock")
    };
    assert!(clock.clock > 0 && clock.clock_is_reliable());
    assert!(matches!(
        parsed.section("i8259", 0),
        Some(SectionState::I8259(_))
    ));
    assert!(matches!(
        parsed.section("i8259", 1),
        Some(SectionState::I8259(_))
    ));
    let Some(SectionState::I8254(pit)) = parsed.section("i8254", 0) else {
        panic!("no i8254")
    };
    assert!(pit
        .channels
        .iter()
        .all(|c| c.count > 0 && c.count <= 0x10000));
    let Some(SectionState::Ioapic(ioapic)) = parsed.section("ioapic", 0) else {
        panic!("no ioapic")
    };
    assert_eq!(ioapic.irr, 0);
    let Some(SectionState::GlobalState(global)) = parsed.section("globalstate", 0) else {
        panic!("no globalstate")
    };
    assert_eq!(global.runstate, "paused");

    // Everything re-encodes to the same section bytes: write it back, read again, compare.
    let rewritten = write_parsed(Vec::new(), &parsed, &mut ram.clone()).unwrap();
    let mut ram2 = VecRam::default();
    let reparsed = read_stream(&rewritten[..], &mut ram2, &ReadLimits::default()).unwrap();
    assert_eq!(reparsed.sections, parsed.sections);
    assert_eq!(ram2, ram);
    let again = write_parsed(Vec::new(), &reparsed, &mut ram2).unwrap();
    assert_eq!(again, rewritten, "write -> read -> write is byte-identical");
}

#[test]
fn microvm_stream_parses() {
    let bytes = common::capture("microvm", 32, 300, &[]);
    check_common("microvm", &bytes, "microvm.ram", 32 << 20);
    let parsed = read_stream(
        &bytes[..],
        &mut qemu_migration::ram::DiscardRam::default(),
        &ReadLimits::default(),
    )
    .unwrap();
    assert!(matches!(
        parsed.section("ioapic", 1),
        Some(SectionState::Ioapic(_))
    ));
    assert!(parsed.ram_blocks.iter().any(|b| b.name == "pc.bios"));
}

#[test]
fn pc_stream_parses() {
    let bytes = common::capture("pc", 32, 300, &["-serial", "null"]);
    check_common("pc-i440fx-7.2", &bytes, "pc.ram", 32 << 20);
    let parsed = read_stream(
        &bytes[..],
        &mut qemu_migration::ram::DiscardRam::default(),
        &ReadLimits::default(),
    )
    .unwrap();
    let Some(SectionState::Rtc(rtc)) = parsed.section("mc146818rtc", 0) else {
        panic!("no rtc")
    };
    // CMOS register B: 24-hour mode set by SeaBIOS/QEMU; register D: valid RAM and time.
    assert_eq!(rtc.cmos_data[0x0d] & 0x80, 0x80);
    let Some(SectionState::Serial(serial)) = parsed.section("serial", 0) else {
        panic!("no serial")
    };
    assert_ne!(serial.lsr & 0x60, 0, "transmitter empty");
    assert!(matches!(
        parsed.section("hpet", 0),
        Some(SectionState::Skipped(_))
    ));
}

#[test]
fn q35_stream_parses() {
    let bytes = common::capture("q35", 32, 300, &[]);
    check_common("pc-q35-7.2", &bytes, "pc.ram", 32 << 20);
}

/// Imports a stream of `machine` into guest memory by placement and checks the machine state.
fn import_into_memory(
    machine: &str,
    args: &[&str],
) -> (
    qemu_migration::ImportedMachine,
    qemu_migration::machine::ram_map::VecGuestMemory,
    Vec<u8>,
) {
    use qemu_migration::machine::ram_map::{GuestRamSink, VecGuestMemory};
    let bytes = common::capture(machine, 32, 300, args);
    let mut memory = VecGuestMemory::default();
    let imported = qemu_migration::import_machine(
        &bytes[..],
        &mut GuestRamSink::new(&mut memory),
        &qemu_migration::ImportOptions::default(),
    )
    .unwrap_or_else(|e| panic!("{machine}: {e}"));
    (imported, memory, bytes)
}

#[test]
fn pc_and_q35_import_into_guest_memory() {
    use qemu_migration::machine::ram_map::{place_blocks, Placement};
    use qemu_migration::MachineType;
    for (machine, expected) in [
        ("pc", MachineType::PcI440fx72),
        ("q35", MachineType::PcQ35_72),
    ] {
        let (imported, memory, bytes) = import_into_memory(machine, &["-serial", "null"]);
        assert_eq!(imported.machine, expected);
        assert_eq!(imported.ram_bytes, 32 << 20);
        assert_eq!(imported.memory_regions.len(), 1);
        assert!(!imported.running, "source was stopped");
        assert!(imported.serial.is_some() && imported.cmos.is_some());
        let cmos = imported.cmos.as_ref().unwrap();
        // QEMU's CMOS holds the RAM size above 1 MiB in KiB at 0x30/0x31 (31 MiB here).
        assert_eq!(
            u16::from_le_bytes([cmos.ram[0x30], cmos.ram[0x31]]),
            31 * 1024
        );
        assert!(
            cmos.clock_offset_seconds.abs() < 5,
            "guest RTC follows the host clock"
        );
        assert!(imported
            .skipped_sections
            .iter()
            .any(|s| s.starts_with("hpet/")));
        assert!(imported
            .skipped_sections
            .iter()
            .any(|s| s.starts_with("fw_cfg/")));
        // SeaBIOS runs from its copy in pc.ram (shadowed) or, early on, from the alias below
        // 4 GiB: either way the code at the vCPU's linear RIP is in guest memory, not zero.
        let vcpu = &imported.vcpus[0];
        let linear = vcpu.sregs.cs.base + vcpu.regs.rip;
        let (base, data) = memory
            .regions
            .iter()
            .find(|(base, data)| linear >= *base && linear + 16 <= base + data.len() as u64)
            .unwrap_or_else(|| {
                panic!(
                    "RIP {linear:#x} (cs {:?}) is in no guest memory {:?}",
                    vcpu.sregs.cs,
                    memory
                        .regions
                        .iter()
                        .map(|(b, d)| (*b, d.len()))
                        .collect::<Vec<_>>()
                )
            });
        let at = (linear - base) as usize;
        assert!(
            data[at..at + 16].iter().any(|&b| b != 0),
            "no code at RIP {linear:#x}"
        );
        assert_eq!(imported.firmware_regions.len(), 1);
        assert_eq!(
            imported.firmware_regions[0].guest_phys_addr + imported.firmware_regions[0].len,
            1 << 32
        );
        let placements = place_blocks(expected, &imported.ram_blocks).unwrap();
        for p in placements {
            match p.block.as_str() {
                "pc.ram" => assert!(matches!(p.placement, Placement::Ram(_))),
                "pc.bios" => assert!(matches!(p.placement, Placement::Firmware { .. })),
                _ => assert_eq!(p.placement, Placement::Dropped, "{}", p.block),
            }
        }
        // Same registers as in the stream.
        let parsed = read_stream(
            &bytes[..],
            &mut qemu_migration::ram::DiscardRam::default(),
            &ReadLimits::default(),
        )
        .unwrap();
        let Some(SectionState::Cpu(cpu)) = parsed.section("cpu", 0) else {
            panic!()
        };
        assert_eq!(imported.vcpus[0].regs.rip, cpu.eip);
        assert_eq!(
            imported.vcpus[0].sregs.cs.selector as u32,
            cpu.segs[1].selector
        );
        assert_eq!(imported.vcpus[0].tsc(), Some(cpu.tsc));
    }
}

#[test]
fn microvm_firmware_is_placed_over_ram() {
    use qemu_migration::machine::ram_map::{place_blocks, Placement};
    let (imported, memory, _) = import_into_memory("microvm", &[]);
    let placements = place_blocks(imported.machine, &imported.ram_blocks).unwrap();
    let bios = placements.iter().find(|p| p.block == "pc.bios").unwrap();
    assert_eq!(
        bios.placement,
        Placement::Firmware {
            gpa: 0x10_0000 - bios.len
        }
    );
    // qboot's reset vector jump sits in the last 16 bytes below 1 MiB.
    let ram = &memory.regions[0].1;
    assert!(ram[0xffff0..0x100000].iter().any(|&b| b != 0));
    let rip = imported.vcpus[0].regs.rip as usize;
    assert!(
        (0xf0000..0x100000).contains(&rip),
        "qboot runs from its ROM: {rip:#x}"
    );
    assert!(ram[rip..rip + 16].iter().any(|&b| b != 0));
}

#[test]
fn tcg_stream_imports_without_kvmclock() {
    let bytes = common::capture_with_accel("pc", "tcg", 32, 500, &[]);
    let parsed = read_stream(
        &bytes[..],
        &mut qemu_migration::ram::DiscardRam::default(),
        &ReadLimits::default(),
    )
    .expect("TCG stream parses");
    assert!(parsed.section("kvmclock", 0).is_none());
    let mut memory = qemu_migration::machine::ram_map::VecGuestMemory::default();
    let imported = qemu_migration::import_machine(
        &bytes[..],
        &mut qemu_migration::machine::ram_map::GuestRamSink::new(&mut memory),
        &qemu_migration::ImportOptions::default(),
    )
    .unwrap();
    let Some(SectionState::Timer(timer)) = parsed.section("timer", 0) else {
        panic!()
    };
    assert_eq!(imported.vm.clock.clock, timer.cpu_clock_offset as u64);
}

/// Streams of a Linux 6.12 kernel booted under TCG to its root-mount panic (the fuzz seeds
/// `*-linux-*.bin`, RAM trimmed): the devices Linux programmed send subsections the firmware-only
/// streams lack (ps2kbd/ledstate, ps2kbd/command_reply_queue, hpet/offset, piix4_pm/cpuhp with
/// one entry per vCPU, cpu/poll_control_msr, cpu/msr_smi_count).
#[test]
fn linux_guest_streams_parse_and_import() {
    for (name, bytes) in common::corpus_streams() {
        if !name.contains("linux") {
            continue;
        }
        let parsed = read_stream(
            &bytes[..],
            &mut qemu_migration::ram::DiscardRam::default(),
            &ReadLimits::default(),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        let cpus: Vec<_> = parsed
            .sections
            .iter()
            .filter_map(|s| match &s.state {
                SectionState::Cpu(c) => Some(c),
                _ => None,
            })
            .collect();
        assert_eq!(
            cpus.len(),
            if name.contains("smp2") { 2 } else { 1 },
            "{name}"
        );
        for cpu in &cpus {
            assert_eq!(
                cpu.hflags & 0xc000,
                0xc000,
                "{name}: 64-bit code (LMA, CS64)"
            );
            let inputs = qemu_migration::machine::cpu_map::hflag_inputs_of_section(cpu);
            assert_eq!(
                qemu_migration::hflags::hflags(&inputs),
                cpu.hflags,
                "{name}"
            );
            assert!(cpu.subsection("cpu/poll_control_msr").is_some(), "{name}");
        }
        let mut memory = qemu_migration::machine::ram_map::VecGuestMemory::default();
        let imported = qemu_migration::import_machine(
            &bytes[..],
            &mut qemu_migration::machine::ram_map::GuestRamSink::new(&mut memory),
            &qemu_migration::ImportOptions::default(),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        for vcpu in &imported.vcpus {
            assert_ne!(vcpu.sregs.efer & (1 << 10), 0, "{name}: long mode");
            assert_eq!(vcpu.sregs.cs.l, 1, "{name}");
        }
    }
}

/// QEMU loads its own pc and q35 streams after our reader and writer re-encoded them (every
/// section, skipped ones from their kept bytes) and runs them.
#[test]
fn qemu_loads_our_rewrite_of_its_streams() {
    for machine in ["pc", "q35"] {
        let bytes = common::capture(machine, 32, 300, &[]);
        let mut ram = VecRam::default();
        let parsed = read_stream(&bytes[..], &mut ram, &ReadLimits::default()).unwrap();
        let rewritten = write_parsed(Vec::new(), &parsed, &mut ram).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = common::write_file(dir.path(), "rewritten.bin", &rewritten);
        let incoming = format!("exec:cat {}", path.display());
        let mut qemu = common::Qemu::start(machine, 32, &["-incoming", &incoming]);
        let mut status = qemu.status();
        for _ in 0..200 {
            if status != "inmigrate" {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
            status = qemu.status();
        }
        assert_eq!(status, "paused", "{machine}");
        qemu.execute("cont", serde_json::json!({}));
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert_eq!(qemu.status(), "running", "{machine}");
        let stderr = qemu.quit();
        assert!(
            !stderr.contains("load of migration failed"),
            "{machine}: {stderr}"
        );
    }
}
