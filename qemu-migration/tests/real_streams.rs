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
