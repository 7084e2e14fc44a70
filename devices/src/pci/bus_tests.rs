//! Tests of the PCI bus: conf1 decoding as Linux uses it, BAR assignment and relocation reports,
//! MMIO routing, persistence, and random traffic at every offset and width.

use std::sync::{Arc, Mutex};

use super::*;
use crate::pci::{
    BarDefinition, PciBar, PciConfigSpace, PciHeader, COMMAND_IO_SPACE, HOST_BRIDGE_CLASS,
    PHYS_ADDR_LIMIT,
};
use crate::test_rng::TestRng;

const SLOT: u8 = 4;
const BAR0_SIZE: u64 = 0x10_0000;
const BAR2_SIZE: u64 = 0x10_0000;
const BAR4_SIZE: u64 = 0x1_0000;

/// A device with the snapshot device's BAR layout whose MMIO echoes where it was accessed.
struct TestDevice {
    config: PciConfigSpace,
    writes: Vec<(usize, u64, Vec<u8>)>,
}

impl TestDevice {
    fn new() -> Self {
        let memory = |kind, size| Some(BarDefinition { kind, size });
        let header = PciHeader {
            vendor_id: 0x1234,
            device_id: 0xf987,
            revision: 1,
            prog_if: 0,
            subclass: 0,
            class: 0xff,
            subsystem_vendor_id: 0,
            subsystem_id: 0,
            interrupt_pin: 0,
            bars: [
                memory(
                    BarKind::Memory32 {
                        prefetchable: false,
                    },
                    BAR0_SIZE,
                ),
                Some(BarDefinition {
                    kind: BarKind::Io,
                    size: 0x10,
                }),
                memory(BarKind::Memory64 { prefetchable: true }, BAR2_SIZE),
                None,
                memory(BarKind::Memory64 { prefetchable: true }, BAR4_SIZE),
                None,
            ],
        };
        TestDevice {
            config: PciConfigSpace::new(header).unwrap(),
            writes: Vec::new(),
        }
    }
}

impl PciDevice for TestDevice {
    fn config_read(&self, register: usize) -> u32 {
        self.config.read(register)
    }

    fn config_write(&mut self, register: usize, byte_mask: u8, value: u32) {
        self.config.write(register, byte_mask, value)
    }

    fn bars(&self) -> [Option<PciBar>; BAR_COUNT] {
        self.config.bars()
    }

    fn mmio_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = (bar as u8) << 4 ^ (offset as u8).wrapping_add(i as u8);
        }
    }

    fn mmio_write(&mut self, bar: usize, offset: u64, data: &[u8]) -> DeviceAction {
        self.writes.push((bar, offset, data.to_vec()));
        DeviceAction::DebugExit(bar as u32)
    }
}

fn address(slot: u32, function: u32, register: u32) -> u32 {
    ADDRESS_ENABLE | slot << 11 | function << 8 | register << 2
}

fn select(bus: &mut PciBus, address: u32) {
    assert_eq!(bus.pio_write(0, &address.to_le_bytes()), DeviceAction::None);
}

fn read_config(bus: &mut PciBus, address: u32, offset: u16, len: usize) -> u32 {
    select(bus, address);
    let mut data = [0u8; 4];
    bus.pio_read(4 + offset, &mut data[..len]);
    u32::from_le_bytes(data)
}

fn write_config(bus: &mut PciBus, address: u32, offset: u16, bytes: &[u8]) -> DeviceAction {
    select(bus, address);
    bus.pio_write(4 + offset, bytes)
}

fn bus_with_device() -> (PciBus, BarRelocations) {
    let mut bus = PciBus::new();
    let added = bus.add_device(SLOT, Box::new(TestDevice::new())).unwrap();
    (bus, added)
}

fn relocations(action: DeviceAction) -> Vec<BarRelocation> {
    match action {
        DeviceAction::BarsRelocated(relocations) => relocations.iter().collect(),
        DeviceAction::None => Vec::new(),
        other => panic!("unexpected action {other:?}"),
    }
}

#[test]
fn linux_conf1_detection_and_sanity_check_pass() {
    let mut bus = PciBus::new();
    // pci_check_type1(): a byte write to 0xCFB must not disturb CONFIG_ADDRESS.
    assert_eq!(bus.pio_write(3, &[0x01]), DeviceAction::None);
    let mut saved = [0u8; 4];
    bus.pio_read(0, &mut saved);
    bus.pio_write(0, &0x8000_0000u32.to_le_bytes());
    let mut readback = [0u8; 4];
    bus.pio_read(0, &mut readback);
    assert_eq!(u32::from_le_bytes(readback), 0x8000_0000);
    bus.pio_write(0, &saved);

    // pci_sanity_check(): some devfn on bus 0 has class "host bridge" (word at 0x0a).
    let host_bridges: Vec<u32> = (0..256)
        .filter(|&devfn| {
            let class = read_config(&mut bus, ADDRESS_ENABLE | devfn << 8 | 0x08, 2, 2);
            class == u32::from(HOST_BRIDGE_CLASS) << 8
        })
        .collect();
    assert_eq!(host_bridges, [0]);

    // The mechanism #2 probe reads 0 from 0xCF8/0xCFA bytes only on type-2 chipsets.
    let mut byte = [0u8];
    bus.pio_read(0, &mut byte);
    assert_eq!(byte, [0xff]);
    bus.pio_read(2, &mut byte);
    assert_eq!(byte, [0xff]);
}

#[test]
fn enumeration_sees_exactly_the_populated_slots() {
    let (mut bus, _) = bus_with_device();
    let mut found = Vec::new();
    for slot in 0..32 {
        for function in 0..8 {
            let id = read_config(&mut bus, address(slot, function, 0), 0, 4);
            if id != u32::MAX {
                found.push((slot, function, id));
            }
        }
    }
    assert_eq!(found, [(0, 0, 0x0008_1b36), (4, 0, 0xf987_1234)]);
    // Other buses and a disabled address read all ones too.
    assert_eq!(
        read_config(&mut bus, address(0, 0, 0) | 1 << 16, 0, 4),
        u32::MAX
    );
    assert_eq!(
        read_config(&mut bus, address(0, 0, 0) & !ADDRESS_ENABLE, 0, 4),
        u32::MAX
    );
}

#[test]
fn byte_word_and_dword_reads_agree_at_every_offset() {
    let (mut bus, _) = bus_with_device();
    for register in 0..16 {
        let at = address(u32::from(SLOT), 0, register);
        let dword = read_config(&mut bus, at, 0, 4);
        for offset in 0..4u16 {
            let byte = read_config(&mut bus, at, offset, 1);
            assert_eq!(byte, (dword >> (8 * offset)) & 0xff);
        }
        for offset in 0..3u16 {
            let word = read_config(&mut bus, at, offset, 2);
            assert_eq!(word, (dword >> (8 * offset)) & 0xffff, "misaligned word");
        }
        // A dword starting at 0xCFE: two config bytes, then ports past 0xCFF.
        select(&mut bus, at);
        let mut data = [0u8; 4];
        bus.pio_read(6, &mut data);
        assert_eq!(u32::from_le_bytes(data), dword >> 16 | 0xffff_0000);
    }
}

#[test]
fn config_address_keeps_only_defined_bits() {
    let mut bus = PciBus::new();
    bus.pio_write(0, &u32::MAX.to_le_bytes());
    let mut data = [0u8; 4];
    bus.pio_read(0, &mut data);
    assert_eq!(u32::from_le_bytes(data), 0x80ff_fffc);
    // Narrow writes to CONFIG_ADDRESS's ports do nothing.
    bus.pio_write(0, &[0, 0]);
    bus.pio_write(1, &[0]);
    bus.pio_read(0, &mut data);
    assert_eq!(u32::from_le_bytes(data), 0x80ff_fffc);
}

#[test]
fn added_device_gets_bars_in_the_hole_and_memory_decoding() {
    let (mut bus, added) = bus_with_device();
    let expected = [
        (0u8, 0xc000_0000u64, BAR0_SIZE),
        (2, 0xc010_0000, BAR2_SIZE),
        (4, 0xc020_0000, BAR4_SIZE),
    ];
    let reported: Vec<_> = added.iter().collect();
    assert_eq!(reported.len(), 3);
    for (relocation, &(bar, base, size)) in reported.iter().zip(&expected) {
        assert_eq!(
            *relocation,
            BarRelocation {
                slot: SLOT,
                bar,
                old_base: None,
                new_base: Some(base),
                size
            }
        );
    }
    let decoded: Vec<_> = bus
        .decoded_bars()
        .iter()
        .map(|bar| (bar.bar, bar.base, bar.size))
        .collect();
    assert_eq!(decoded, expected);
    let command = read_config(&mut bus, address(u32::from(SLOT), 0, 1), 0, 2);
    assert_eq!(command & u32::from(COMMAND_MEMORY_SPACE), 2);
    assert_eq!(command & u32::from(COMMAND_IO_SPACE), 0);
    // The 64-bit BARs' upper halves are 0 (inside the 32-bit hole).
    assert_eq!(
        read_config(&mut bus, address(u32::from(SLOT), 0, 7), 0, 4),
        0
    );

    // A second device is placed around the first.
    let second = bus.add_device(5, Box::new(TestDevice::new())).unwrap();
    let bases: Vec<_> = second.iter().filter_map(|r| r.new_base).collect();
    // First fit: the 64 KiB BAR goes into the gap after the first device's.
    assert_eq!(bases, [0xc030_0000, 0xc040_0000, 0xc021_0000]);
}

#[test]
fn bad_slots_are_errors() {
    let (mut bus, _) = bus_with_device();
    assert_eq!(
        bus.add_device(SLOT, Box::new(TestDevice::new())).err(),
        Some(PciError::SlotTaken(SLOT))
    );
    assert_eq!(
        bus.add_device(0, Box::new(TestDevice::new())).err(),
        Some(PciError::SlotOutOfRange(0))
    );
    assert_eq!(
        bus.add_restored_device(32, Box::new(TestDevice::new()))
            .err(),
        Some(PciError::SlotOutOfRange(32))
    );
}

#[test]
fn linux_style_sizing_reports_unmap_then_remap() {
    let (mut bus, _) = bus_with_device();
    let slot = u32::from(SLOT);
    let command = read_config(&mut bus, address(slot, 0, 1), 0, 2);
    // Decoding off: every memory BAR disappears, in one action.
    let off = relocations(write_config(
        &mut bus,
        address(slot, 0, 1),
        0,
        &((command & !2) as u16).to_le_bytes(),
    ));
    assert_eq!(off.len(), 3);
    assert!(off
        .iter()
        .all(|r| r.old_base.is_some() && r.new_base.is_none()));

    // Sizing with decoding off moves nothing.
    for register in 4..10 {
        let at = address(slot, 0, register);
        let original = read_config(&mut bus, at, 0, 4);
        assert_eq!(
            write_config(&mut bus, at, 0, &u32::MAX.to_le_bytes()),
            DeviceAction::None
        );
        let mask = read_config(&mut bus, at, 0, 4);
        if register == 4 {
            assert_eq!(mask, 0xfff0_0000);
        }
        write_config(&mut bus, at, 0, &original.to_le_bytes());
    }
    let on = relocations(write_config(
        &mut bus,
        address(slot, 0, 1),
        0,
        &(command as u16).to_le_bytes(),
    ));
    let restored: Vec<_> = on.iter().map(|r| (r.bar, r.new_base, r.old_base)).collect();
    assert_eq!(
        restored,
        [
            (0, Some(0xc000_0000), None),
            (2, Some(0xc010_0000), None),
            (4, Some(0xc020_0000), None)
        ]
    );
}

#[test]
fn moving_a_bar_with_decoding_on_reports_old_and_new_base() {
    let (mut bus, _) = bus_with_device();
    let moved = relocations(write_config(
        &mut bus,
        address(u32::from(SLOT), 0, 6),
        0,
        &0xd000_0000u32.to_le_bytes(),
    ));
    assert_eq!(
        moved,
        [BarRelocation {
            slot: SLOT,
            bar: 2,
            old_base: Some(0xc010_0000),
            new_base: Some(0xd000_0000),
            size: BAR2_SIZE
        }]
    );
    // Moving the upper half takes the 64-bit BAR above 4 GiB.
    let moved = relocations(write_config(
        &mut bus,
        address(u32::from(SLOT), 0, 7),
        0,
        &[0x01],
    ));
    assert_eq!(moved[0].new_base, Some(0x1_d000_0000));
    // Sizing with decoding on parks the BAR at an address that is never decoded.
    let parked = relocations(write_config(
        &mut bus,
        address(u32::from(SLOT), 0, 4),
        0,
        &u32::MAX.to_le_bytes(),
    ));
    assert_eq!(parked[0].new_base, None);
    // Rewriting the same value reports nothing.
    assert_eq!(
        write_config(
            &mut bus,
            address(u32::from(SLOT), 0, 6),
            0,
            &[0, 0, 0, 0xd0]
        ),
        DeviceAction::None
    );
}

#[test]
fn mmio_is_routed_to_decoded_bars_only() {
    let shared = Arc::new(Mutex::new(TestDevice::new()));
    let mut bus = PciBus::new();
    bus.add_device(SLOT, Box::new(shared.clone())).unwrap();

    let mut data = [0u8; 4];
    bus.mmio_read(0xc000_0010, &mut data);
    assert_eq!(data, [0x10, 0x11, 0x12, 0x13]);
    bus.mmio_read(0xc020_fffc, &mut data);
    assert_eq!(
        data,
        [0xfc, 0xfd, 0xfe, 0xff].map(|b| b ^ 0x40),
        "BAR4 at offset 0xfffc"
    );
    assert_eq!(
        bus.mmio_write(0xc010_0008, &[1, 2]),
        DeviceAction::DebugExit(2)
    );
    assert_eq!(shared.lock().unwrap().writes, [(2, 8, vec![1, 2])]);

    // Straddling the end of a BAR, outside every BAR: nobody answers.
    bus.mmio_read(0xc00f_fffe, &mut data);
    assert_eq!(data, [0xff; 4]);
    bus.mmio_read(0xbfff_fffc, &mut data);
    assert_eq!(data, [0xff; 4]);
    bus.mmio_read(u64::MAX - 1, &mut data);
    assert_eq!(data, [0xff; 4]);
    assert_eq!(bus.mmio_write(0xc030_0000, &[1]), DeviceAction::None);

    // With decoding off the BARs vanish.
    write_config(&mut bus, address(u32::from(SLOT), 0, 1), 0, &[0]);
    bus.mmio_read(0xc000_0010, &mut data);
    assert_eq!(data, [0xff; 4]);
    assert_eq!(bus.mmio_write(0xc010_0008, &[1]), DeviceAction::None);
}

#[test]
fn restored_devices_keep_their_bars_and_sync_reports_external_changes() {
    let (mut bus, _) = bus_with_device();
    let mut source = TestDevice::new();
    source.config_write(4, 0xf, 0xd000_0000);
    source.config_write(1, 0x3, 0x2);
    let saved = source.config.save();

    let shared = Arc::new(Mutex::new(TestDevice::new()));
    shared
        .lock()
        .unwrap()
        .config
        .restore_in_place(&saved)
        .unwrap();
    let added = bus
        .add_restored_device(6, Box::new(shared.clone()))
        .unwrap();
    let bases: Vec<_> = added.iter().map(|r| (r.bar, r.new_base)).collect();
    assert_eq!(
        bases,
        [(0, Some(0xd000_0000))],
        "unassigned 64-bit BARs stay off"
    );
    assert!(bus.sync_bars().is_empty());

    // The VMM rolls the device back in place: the bus learns about it from sync_bars().
    let mut moved = saved.clone();
    moved.bar_addresses[0] = 0xe000_0000;
    shared
        .lock()
        .unwrap()
        .config
        .restore_in_place(&moved)
        .unwrap();
    let synced = bus.sync_bars();
    assert_eq!(
        synced,
        [BarRelocation {
            slot: 6,
            bar: 0,
            old_base: Some(0xd000_0000),
            new_base: Some(0xe000_0000),
            size: BAR0_SIZE
        }]
    );
    assert!(bus.sync_bars().is_empty());
}

#[test]
fn bus_state_round_trips() {
    let (mut bus, _) = bus_with_device();
    select(&mut bus, address(0, 0, 3));
    bus.pio_write(4, &[0x10]);
    write_config(&mut bus, address(0, 0, 1), 0, &[0x06, 0]);
    select(&mut bus, address(u32::from(SLOT), 0, 6));
    let saved = bus.save();
    assert_eq!(saved.config_address, address(u32::from(SLOT), 0, 6));
    assert_eq!(saved.host_bridge.command, 0x6);
    assert_eq!(saved.host_bridge.cache_line_size, 0x10);
    let encoded = postcard::to_stdvec(&saved).unwrap();
    assert_eq!(
        postcard::from_bytes::<PciBusState>(&encoded).unwrap(),
        saved
    );

    let rebuilt = PciBus::restore((), &saved).unwrap();
    assert_eq!(rebuilt.save(), saved);
    assert_eq!(
        PciBus::restore((), &PciBusState::default()).unwrap().save(),
        PciBus::new().save()
    );

    select(&mut bus, 0);
    bus.restore_in_place(&saved).unwrap();
    assert_eq!(bus.save(), saved);
    let bad = PciBusState {
        config_address: 0x7f00_0000,
        ..saved.clone()
    };
    assert!(PciBus::restore((), &bad).is_err());
    assert!(bus.restore_in_place(&bad).is_err());
    assert_eq!(bus.save(), saved);
}

/// Every offset, width and value, including misaligned, out-of-range and bogus BAR values:
/// no panic, identity intact, every decoding change reported through the returned action,
/// and MMIO routing consistent with what was reported.
#[test]
fn random_config_traffic_is_always_handled_and_reported() {
    let (mut bus, added) = bus_with_device();
    let mut mapped: Vec<(u8, u64, u64)> = added
        .iter()
        .filter_map(|r| Some((r.bar, r.new_base?, r.size)))
        .collect();
    let mut rng = TestRng::new(0x1234_f987);
    let mut relocation_count = 0;
    for step in 0..200_000u32 {
        // Mostly our two devices' registers, sometimes anything at all.
        let config_address = if rng.one_in(8) {
            rng.next_u32()
        } else {
            let slot = [0, u32::from(SLOT)][(rng.next_u64() % 2) as usize];
            address(slot, 0, (rng.next_u64() % 64) as u32)
        };
        select(&mut bus, config_address);
        let offset = (rng.next_u64() % 10) as u16;
        let len = [1usize, 2, 4, 4, 3, 8, 0][(rng.next_u64() % 7) as usize];
        if rng.one_in(3) {
            let mut data = vec![0; len];
            bus.pio_read(offset, &mut data);
        } else {
            let value = u64::from(rng.next_config_value()) << 32 | u64::from(rng.next_u32());
            let action = bus.pio_write(offset, &value.to_le_bytes()[..len]);
            for relocation in relocations(action) {
                relocation_count += 1;
                assert_eq!(relocation.slot, SLOT);
                let entry = (relocation.bar, relocation.size);
                let before = mapped.iter().position(|m| (m.0, m.2) == entry);
                assert_eq!(before.map(|i| mapped[i].1), relocation.old_base);
                if let Some(i) = before {
                    mapped.remove(i);
                }
                if let Some(base) = relocation.new_base {
                    assert!(base != 0 && base + relocation.size <= PHYS_ADDR_LIMIT);
                    mapped.push((relocation.bar, base, relocation.size));
                }
            }
        }
        assert!(
            bus.sync_bars().is_empty(),
            "an unreported change at step {step}"
        );
        assert_eq!(read_config(&mut bus, address(0, 0, 0), 0, 4), 0x0008_1b36);
        assert_eq!(
            read_config(&mut bus, address(u32::from(SLOT), 0, 0), 0, 4),
            0xf987_1234
        );
        if step % 64 == 0 {
            bus.save().validate_for_test();
            for &(bar, base, size) in &mapped {
                let mut data = [0u8; 1];
                bus.mmio_read(base + size - 2, &mut data);
                assert_eq!(data, [bar << 4 ^ 0xfe], "BAR{bar} at {base:#x} not routed");
            }
        }
    }
    assert!(
        relocation_count > 100,
        "only {relocation_count} relocations"
    );
}

impl PciBusState {
    fn validate_for_test(&self) {
        PciBus::restore((), self).unwrap();
    }
}
