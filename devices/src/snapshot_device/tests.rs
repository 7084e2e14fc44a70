//! Tests of the snapshot device, mostly through the real PCI bus: identity and BARs as a guest
//! finds them over conf1, every register, commands, random traffic against a byte-level model,
//! persistence, the host buffers, and BAR relocation reports for the memslot-backed BARs.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use super::*;
use crate::pci::{BarRelocation, PciBus, COMMAND_MEMORY_SPACE, MMIO_HOLE_END, MMIO_HOLE_START};
use crate::test_rng::TestRng;
use crate::PioDevice;

const SLOT: u8 = SNAPSHOT_DEVICE_DEFAULT_SLOT;
const CONFIG_ENABLE: u32 = 1 << 31;

type Shared = Arc<Mutex<SnapshotDevice>>;

/// A bus with the device plugged in like the VMM does it, and the BAR bases it was given.
struct Machine {
    bus: PciBus,
    device: Shared,
    bases: [u64; BAR_COUNT],
    power_on: Vec<BarRelocation>,
}

impl Machine {
    fn new(config: &SnapshotDeviceConfig, slot: u8) -> Self {
        let device = Arc::new(Mutex::new(SnapshotDevice::new(config).unwrap()));
        let mut bus = PciBus::new();
        let added = bus.add_device(slot, Box::new(device.clone())).unwrap();
        let power_on: Vec<_> = added.iter().collect();
        let mut bases = [0; BAR_COUNT];
        for relocation in &power_on {
            bases[usize::from(relocation.bar)] = relocation.new_base.unwrap();
        }
        Machine {
            bus,
            device,
            bases,
            power_on,
        }
    }

    fn with_defaults() -> Self {
        Machine::new(&SnapshotDeviceConfig::default(), SLOT)
    }

    fn dev(&self) -> std::sync::MutexGuard<'_, SnapshotDevice> {
        self.device.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn config_address(slot: u8, register: usize) -> u32 {
        CONFIG_ENABLE | u32::from(slot) << 11 | (register as u32) << 2
    }

    fn config_read_at(&mut self, slot: u8, register: usize) -> u32 {
        let address = Self::config_address(slot, register).to_le_bytes();
        self.bus.pio_write(0, &address);
        let mut data = [0u8; 4];
        self.bus.pio_read(4, &mut data);
        u32::from_le_bytes(data)
    }

    fn config_read(&mut self, register: usize) -> u32 {
        self.config_read_at(SLOT, register)
    }

    fn config_write(&mut self, register: usize, value: u32) -> DeviceAction {
        let address = Self::config_address(SLOT, register).to_le_bytes();
        self.bus.pio_write(0, &address);
        self.bus.pio_write(4, &value.to_le_bytes())
    }

    /// What Linux does to size a BAR: decoding off, write all ones, read, put the address back.
    fn size_bar(&mut self, bar: usize) -> u32 {
        let register = 4 + bar;
        let command = self.config_read(1);
        self.config_write(1, command & !u32::from(COMMAND_MEMORY_SPACE));
        let saved = self.config_read(register);
        self.config_write(register, u32::MAX);
        let mask = self.config_read(register);
        self.config_write(register, saved);
        self.config_write(1, command);
        mask
    }

    fn reg(&mut self, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        self.bus.mmio_read(self.bases[0] + offset, &mut data);
        u32::from_le_bytes(data)
    }

    fn set_reg(&mut self, offset: u64, value: u32) -> DeviceAction {
        self.bus
            .mmio_write(self.bases[0] + offset, &value.to_le_bytes())
    }
}

fn relocations(action: DeviceAction) -> Vec<BarRelocation> {
    match action {
        DeviceAction::BarsRelocated(relocations) => relocations.iter().collect(),
        DeviceAction::None => Vec::new(),
        other => panic!("unexpected action {other:?}"),
    }
}

#[test]
fn identity_through_conf1_at_slot_4() {
    let mut machine = Machine::with_defaults();
    assert_eq!(machine.config_read(0), 0xf987_1234, "device:vendor");
    assert_eq!(machine.config_read(2), 0xff00_0001, "class ff/00/00, rev 1");
    assert_eq!(machine.config_read(3) >> 16 & 0xff, 0, "type-0 header");
    assert_eq!(machine.config_read(11), 0x0001_1234, "subsystem");
    assert_eq!(machine.config_read(15) >> 8 & 0xff, 0, "no interrupt pin");
    assert_eq!(machine.config_read(12), 0, "no expansion ROM");
    // A 16-bit read of the vendor ID, as Linux's probe does.
    machine
        .bus
        .pio_write(0, &Machine::config_address(SLOT, 0).to_le_bytes());
    let mut word = [0u8; 2];
    machine.bus.pio_read(6, &mut word);
    assert_eq!(u16::from_le_bytes(word), SNAPSHOT_DEVICE_DEVICE_ID);
    // Neighbouring slots are empty.
    assert_eq!(machine.config_read_at(3, 0), u32::MAX);
    assert_eq!(machine.config_read_at(5, 0), u32::MAX);

    // The slot is the VMM's choice.
    let mut elsewhere = Machine::new(&SnapshotDeviceConfig::default(), 9);
    assert_eq!(elsewhere.config_read_at(9, 0), 0xf987_1234);
    assert_eq!(elsewhere.config_read_at(SLOT, 0), u32::MAX);
}

#[test]
fn bars_are_assigned_at_power_on_and_size_as_the_abi_says() {
    let mut machine = Machine::with_defaults();
    let bars: Vec<_> = machine
        .power_on
        .iter()
        .map(|relocation| {
            assert_eq!(relocation.slot, SLOT);
            assert_eq!(relocation.old_base, None);
            (relocation.bar, relocation.size)
        })
        .collect();
    assert_eq!(bars, [(0, 0x10_0000), (2, 0x10_0000), (4, 0x1_0000)]);
    let mut regions: Vec<(u64, u64)> = machine
        .power_on
        .iter()
        .map(|relocation| {
            let base = relocation.new_base.unwrap();
            assert_eq!(base % relocation.size, 0, "naturally aligned");
            assert!(base >= MMIO_HOLE_START && base + relocation.size <= MMIO_HOLE_END);
            (base, base + relocation.size)
        })
        .collect();
    regions.sort();
    assert!(regions.windows(2).all(|pair| pair[0].1 <= pair[1].0));
    assert_ne!(
        machine.config_read(1) & u32::from(COMMAND_MEMORY_SPACE),
        0,
        "memory decoding on"
    );

    assert_eq!(machine.size_bar(0), 0xfff0_0000, "32-bit, 1 MiB");
    assert_eq!(machine.size_bar(1), 0, "BAR1 unused");
    assert_eq!(
        machine.size_bar(2),
        0xfff0_000c,
        "64-bit prefetchable 1 MiB"
    );
    assert_eq!(machine.size_bar(3), 0xffff_ffff);
    assert_eq!(
        machine.size_bar(4),
        0xffff_000c,
        "64-bit prefetchable 64 KiB"
    );
    assert_eq!(machine.size_bar(5), 0xffff_ffff);
    assert_eq!(
        machine.bus.decoded_bars().len(),
        3,
        "sizing left them in place"
    );
    assert_eq!(machine.reg(REG_MAGIC), MAGIC);

    let config = SnapshotDeviceConfig {
        input_size: 0x1000,
        coverage_size: MAX_BUFFER_SIZE,
    };
    let mut custom = Machine::new(&config, SLOT);
    assert_eq!(custom.size_bar(2), 0xffff_f00c);
    assert_eq!(custom.size_bar(4), 0xf000_000c);
    assert_eq!(custom.reg(REG_INPUT_SIZE), 0x1000);
    assert_eq!(custom.reg(REG_COVERAGE_SIZE), MAX_BUFFER_SIZE as u32);
}

#[test]
fn every_register_reads_its_value() {
    let mut machine = Machine::with_defaults();
    let expected = [
        (REG_MAGIC, MAGIC),
        (REG_STATUS, 0),
        (REG_RESTORES_LO, 0),
        (REG_RESTORES_HI, 0),
        (REG_INPUT_LEN, 0),
        (REG_ARG, 0),
        (REG_ABI_VERSION, 1),
        (REG_INPUT_SIZE, 0x10_0000),
        (REG_COVERAGE_SIZE, 0x1_0000),
        (0x24, 0),
        (0x100, 0),
        (REGISTERS_BAR_SIZE - 4, 0),
    ];
    for (offset, value) in expected {
        assert_eq!(machine.reg(offset), value, "register {offset:#x}");
    }

    {
        let mut device = machine.dev();
        device.record_save();
        for _ in 0..3 {
            device.record_restore();
        }
        device.set_capture_running(true);
        assert_eq!(device.set_input(b"hello"), 5);
    }
    assert_eq!(machine.reg(REG_STATUS), 0b011);
    assert_eq!(machine.reg(REG_RESTORES_LO), 3);
    assert_eq!(machine.reg(REG_INPUT_LEN), 5);
    machine.dev().set_last_command_failed(true);
    machine.dev().set_capture_running(false);
    assert_eq!(machine.reg(REG_STATUS), 0b101);
    machine.set_reg(REG_ARG, 0x1234_5678);
    assert_eq!(machine.reg(REG_ARG), 0x1234_5678);
    assert_eq!(machine.dev().arg(), 0x1234_5678);

    // More restores than 32 bits hold.
    machine.dev().restores = 0x1_0000_0002;
    assert_eq!(machine.reg(REG_RESTORES_LO), 2);
    assert_eq!(machine.reg(REG_RESTORES_HI), 1);
    let mut wide = [0u8; 8];
    machine
        .bus
        .mmio_read(machine.bases[0] + REG_RESTORES_LO, &mut wide);
    assert_eq!(u64::from_le_bytes(wide), 0x1_0000_0002, "one 64-bit read");
    // A new snapshot restarts the count.
    machine.dev().record_save();
    assert_eq!(machine.reg(REG_RESTORES_LO), 0);
    assert_eq!(machine.reg(REG_RESTORES_HI), 0);

    // Narrow and unaligned reads see the bytes of the registers they cover.
    let mut bytes = [0u8; 4];
    for (index, byte) in bytes.iter_mut().enumerate() {
        let mut one = [0u8];
        machine
            .bus
            .mmio_read(machine.bases[0] + index as u64, &mut one);
        *byte = one[0];
    }
    assert_eq!(&bytes, b"PANS");
    machine.bus.mmio_read(machine.bases[0] + 2, &mut bytes);
    assert_eq!(bytes, [0x4e, 0x53, 0b101, 0]);
}

#[test]
fn commands_become_actions_and_failures_set_status_bit_2() {
    let mut machine = Machine::with_defaults();
    let snapshot = DeviceAction::Snapshot;
    assert_eq!(
        machine.set_reg(REG_COMMAND, CMD_SAVE),
        snapshot(SnapshotCommand::Save)
    );
    assert_eq!(machine.reg(REG_STATUS), 0);

    // No snapshot yet (the VMM has not recorded the save): RESTORE fails.
    assert_eq!(
        machine.set_reg(REG_COMMAND, CMD_RESTORE),
        DeviceAction::None
    );
    assert_eq!(machine.reg(REG_STATUS), STATUS_COMMAND_FAILED);
    assert_eq!(machine.dev().statistics().restores_without_snapshot, 1);

    machine.dev().record_save();
    assert_eq!(
        machine.set_reg(REG_COMMAND, CMD_RESTORE),
        snapshot(SnapshotCommand::Restore)
    );
    assert_eq!(machine.reg(REG_STATUS), STATUS_SNAPSHOT_EXISTS);

    machine.set_reg(REG_ARG, 0xdead_beef);
    assert_eq!(
        machine.set_reg(REG_COMMAND, CMD_CRASH),
        snapshot(SnapshotCommand::Crash { code: 0xdead_beef })
    );
    assert_eq!(machine.dev().command_pc(), 0);
    // FAULT_PC attributes the next CRASH or EXCEPTION to a guest address, then clears.
    machine.set_reg(REG_FAULT_PC_LO, 0x1234_5678);
    machine.set_reg(REG_FAULT_PC_HI, 0xffff_8000);
    assert_eq!(machine.reg(REG_FAULT_PC_HI), 0xffff_8000);
    machine.set_reg(REG_ARG, 14);
    assert_eq!(
        machine.set_reg(REG_COMMAND, CMD_EXCEPTION),
        snapshot(SnapshotCommand::Exception { vector: 14 })
    );
    assert_eq!(machine.dev().command_pc(), 0xffff_8000_1234_5678);
    assert_eq!(machine.reg(REG_FAULT_PC_LO), 0);
    machine.set_reg(REG_ARG, 7);
    assert_eq!(
        machine.set_reg(REG_COMMAND, CMD_DONE),
        snapshot(SnapshotCommand::Done { code: 7 })
    );
    assert_eq!(machine.dev().statistics().commands, 5);

    for bogus in [0, 0x100, 0x105, 0x201, u32::MAX] {
        assert_eq!(machine.set_reg(REG_COMMAND, bogus), DeviceAction::None);
        assert_eq!(
            machine.reg(REG_STATUS),
            STATUS_SNAPSHOT_EXISTS | STATUS_COMMAND_FAILED,
            "command {bogus:#x}"
        );
    }
    let statistics = machine.dev().statistics();
    assert_eq!(statistics.unknown_commands, 5);
    assert_eq!(statistics.commands, 5);

    // The next command clears the failure; the VMM can set it again.
    assert_eq!(
        machine.set_reg(REG_COMMAND, CMD_SAVE),
        snapshot(SnapshotCommand::Save)
    );
    assert_eq!(machine.reg(REG_STATUS), STATUS_SNAPSHOT_EXISTS);
    machine.dev().set_last_command_failed(true);
    assert_eq!(
        machine.reg(REG_STATUS),
        STATUS_SNAPSHOT_EXISTS | STATUS_COMMAND_FAILED
    );
}

#[test]
fn partial_wide_and_read_only_writes() {
    let mut machine = Machine::with_defaults();
    let base = machine.bases[0];
    let ignored = |machine: &Machine| machine.dev().statistics().ignored_writes;

    // COMMAND acts only on a write of all four bytes.
    assert_eq!(machine.bus.mmio_write(base, &[0x01]), DeviceAction::None);
    assert_eq!(
        machine.bus.mmio_write(base, &[0x01, 0x01]),
        DeviceAction::None
    );
    assert_eq!(
        machine.bus.mmio_write(base + 1, &0x0101u32.to_le_bytes()),
        DeviceAction::None
    );
    assert_eq!(ignored(&machine), 4, "two partial, then COMMAND + STATUS");
    assert_eq!(machine.reg(REG_STATUS), 0, "not a command, nothing failed");
    // A 64-bit write at 0 is COMMAND plus a (read-only) STATUS.
    assert_eq!(
        machine.bus.mmio_write(base, &0x101u64.to_le_bytes()),
        DeviceAction::Snapshot(SnapshotCommand::Save)
    );
    assert_eq!(ignored(&machine), 5);

    // ARG takes any of its bytes.
    machine.bus.mmio_write(base + REG_ARG + 1, &[0xaa]);
    assert_eq!(machine.dev().arg(), 0x0000_aa00);
    machine.bus.mmio_write(base + REG_ARG + 2, &[0x11, 0x22]);
    assert_eq!(machine.dev().arg(), 0x2211_aa00);
    machine.bus.mmio_write(
        base + REG_INPUT_LEN,
        &0x5555_6666_7777_8888u64.to_le_bytes(),
    );
    assert_eq!(machine.dev().arg(), 0x5555_6666);
    assert_eq!(machine.reg(REG_INPUT_LEN), 0, "read-only");
    assert_eq!(ignored(&machine), 6);

    for offset in [
        REG_STATUS,
        REG_RESTORES_LO,
        REG_RESTORES_HI,
        REG_INPUT_LEN,
        REG_ABI_VERSION,
        REG_INPUT_SIZE,
        REG_COVERAGE_SIZE,
        0x40,
        REGISTERS_BAR_SIZE - 4,
    ] {
        assert_eq!(machine.set_reg(offset, u32::MAX), DeviceAction::None);
    }
    assert_eq!(ignored(&machine), 15);
    assert_eq!(machine.reg(REG_STATUS), 0);
    assert_eq!(machine.reg(REG_RESTORES_LO), 0);
    assert_eq!(machine.reg(REG_ABI_VERSION), ABI_VERSION);
    assert_eq!(machine.reg(REG_INPUT_SIZE), 0x10_0000);

    // An empty access writes nothing and counts nothing.
    assert_eq!(machine.bus.mmio_write(base, &[]), DeviceAction::None);
    assert_eq!(ignored(&machine), 15);
}

/// What the guest should see, computed byte by byte, independently of the device's code.
#[derive(Default)]
struct RegisterModel {
    arg: u32,
    fault_pc: u64,
    snapshot_exists: bool,
    failed: bool,
    ignored_writes: u64,
    unknown_commands: u64,
}

impl RegisterModel {
    fn register(&self, offset: u64) -> u32 {
        match offset {
            0x00 => MAGIC,
            0x04 => u32::from(self.snapshot_exists) | u32::from(self.failed) << 2,
            0x14 => self.arg,
            0x24 => self.fault_pc as u32,
            0x28 => (self.fault_pc >> 32) as u32,
            0x18 => 1,
            0x1c => 0x10_0000,
            0x20 => 0x1_0000,
            _ => 0,
        }
    }

    fn byte(&self, address: u64) -> u8 {
        (self.register(address / 4 * 4) >> (8 * (address % 4))) as u8
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> DeviceAction {
        let mut registers: BTreeMap<u64, [Option<u8>; 4]> = BTreeMap::new();
        for (address, &byte) in (offset..).zip(data) {
            registers.entry(address / 4).or_default()[(address % 4) as usize] = Some(byte);
        }
        let mut action = DeviceAction::None;
        for (index, bytes) in registers {
            match index * 4 {
                0x00 if bytes.iter().all(Option::is_some) => {
                    let value = u32::from_le_bytes(bytes.map(|byte| byte.unwrap_or(0)));
                    action = self.command(value);
                }
                0x14 => {
                    let mut arg = self.arg.to_le_bytes();
                    for (lane, byte) in bytes.iter().enumerate() {
                        if let Some(byte) = byte {
                            arg[lane] = *byte;
                        }
                    }
                    self.arg = u32::from_le_bytes(arg);
                }
                0x24 | 0x28 => {
                    let shift = if index * 4 == 0x28 { 32 } else { 0 };
                    let mut half = ((self.fault_pc >> shift) as u32).to_le_bytes();
                    for (lane, byte) in bytes.iter().enumerate() {
                        if let Some(byte) = byte {
                            half[lane] = *byte;
                        }
                    }
                    let half = u64::from(u32::from_le_bytes(half));
                    self.fault_pc = self.fault_pc & !(0xffff_ffff << shift) | half << shift;
                }
                _ => self.ignored_writes += 1,
            }
        }
        action
    }

    fn command(&mut self, value: u32) -> DeviceAction {
        let command = match value {
            0x101 => Some(SnapshotCommand::Save),
            0x102 if self.snapshot_exists => Some(SnapshotCommand::Restore),
            0x103 => Some(SnapshotCommand::Crash { code: self.arg }),
            0x104 => Some(SnapshotCommand::Done { code: self.arg }),
            0x106 => Some(SnapshotCommand::Exception { vector: self.arg }),
            0x102 => None,
            _ => {
                self.unknown_commands += 1;
                None
            }
        };
        self.failed = command.is_none();
        if command.is_some() {
            self.fault_pc = 0;
        }
        command.map_or(DeviceAction::None, DeviceAction::Snapshot)
    }
}

fn random_access(rng: &mut TestRng) -> (u64, usize) {
    let len = match rng.next_u64() % 8 {
        0 => 1,
        1 => 2,
        2..=4 => 4,
        5 => 8,
        _ => 1 + (rng.next_u64() % 16) as usize,
    };
    let offset = match rng.next_u64() % 8 {
        0 => rng.next_u64() % REGISTERS_BAR_SIZE,
        1 => REGISTERS_BAR_SIZE - 1 - rng.next_u64() % 16,
        // Commands are rare among random values: write likely ones often.
        2 => 0,
        _ => rng.next_u64() % 0x30,
    };
    (offset, len)
}

fn random_value(rng: &mut TestRng, len: usize) -> Vec<u8> {
    let word = match rng.next_u64() % 4 {
        0 => u64::from(0x101 + (rng.next_u64() % 6) as u32),
        _ => u64::from(rng.next_config_value()) | rng.next_u64() << 32,
    };
    (0..len)
        .map(|index| match index {
            0..8 => word.to_le_bytes()[index],
            _ => rng.next_u64() as u8,
        })
        .collect()
}

#[test]
fn random_accesses_at_every_offset_and_width_match_the_model() {
    let mut machine = Machine::with_defaults();
    let base = machine.bases[0];
    let mut model = RegisterModel::default();
    let mut rng = TestRng::new(0x5eed);
    for round in 0..200_000 {
        if rng.one_in(500) {
            model.snapshot_exists = !model.snapshot_exists;
            machine.dev().set_snapshot_exists(model.snapshot_exists);
        }
        let (offset, len) = random_access(&mut rng);
        let fits = offset + len as u64 <= REGISTERS_BAR_SIZE;
        if rng.one_in(2) {
            let data = random_value(&mut rng, len);
            let action = machine.bus.mmio_write(base + offset, &data);
            let expected = if fits {
                model.write(offset, &data)
            } else {
                // The bus routes no access that crosses the BAR's end.
                DeviceAction::None
            };
            assert_eq!(
                action, expected,
                "round {round}: write {data:x?} at {offset:#x}"
            );
        } else {
            let mut data = vec![0u8; len];
            machine.bus.mmio_read(base + offset, &mut data);
            for (address, byte) in (offset..).zip(&data) {
                let expected = if fits { model.byte(address) } else { 0xff };
                assert_eq!(*byte, expected, "round {round}: read at {address:#x}");
            }
        }
    }
    let statistics = machine.dev().statistics();
    assert_eq!(statistics.ignored_writes, model.ignored_writes);
    assert_eq!(statistics.unknown_commands, model.unknown_commands);
    assert!(statistics.commands > 500 && statistics.unknown_commands > 500);
    assert_eq!(
        machine.dev().restores(),
        0,
        "guests cannot touch host counters"
    );
    assert_eq!(machine.dev().input_len(), 0);
    assert_eq!(machine.reg(REG_MAGIC), MAGIC);
}

#[test]
fn direct_accesses_with_absurd_offsets_and_bars_never_panic() {
    let mut device = SnapshotDevice::new(&SnapshotDeviceConfig::default()).unwrap();
    let mut rng = TestRng::new(99);
    for _ in 0..20_000 {
        let bar = (rng.next_u64() % 8) as usize;
        let offset = match rng.next_u64() % 3 {
            0 => u64::MAX - rng.next_u64() % 16,
            1 => rng.next_u64(),
            _ => rng.next_u64() % 0x2_0000,
        };
        let len = (rng.next_u64() % 17) as usize;
        let mut data = vec![0u8; len];
        device.mmio_read(bar, offset, &mut data);
        let data = random_value(&mut rng, len);
        let _ = device.mmio_write(bar, offset, &data);
    }
    let mut data = [0u8; 4];
    device.mmio_read(REGISTERS_BAR, 0, &mut data);
    assert_eq!(u32::from_le_bytes(data), MAGIC);
    device.mmio_read(1, 0, &mut data);
    assert_eq!(data, [0xff; 4], "no BAR1");
    device.mmio_read(INPUT_BAR, DEFAULT_INPUT_SIZE as u64 - 2, &mut data);
    assert_eq!(data, [0xff; 4], "past the end of BAR2");
}

#[test]
fn state_round_trips_and_a_restore_rolls_back_only_guest_state() {
    let mut machine = Machine::with_defaults();
    machine.set_reg(REG_ARG, 0x42);
    machine.config_write(15, 11);
    let saved = machine.dev().save();
    assert_eq!(saved.arg, 0x42);
    assert_eq!(saved.pci.interrupt_line, 11);
    assert_eq!(saved.input_size, 0x10_0000);
    let encoded = postcard::to_stdvec(&saved).unwrap();
    assert_eq!(
        postcard::from_bytes::<SnapshotDeviceState>(&encoded).unwrap(),
        saved
    );

    // The guest goes on; the host counts a save, restores, an input.
    machine.set_reg(REG_ARG, 0x99);
    machine.config_write(15, 3);
    {
        let mut device = machine.dev();
        device.record_save();
        device.record_restore();
        device.set_input(b"input");
        device.set_capture_running(true);
        device.coverage_memory().write(0, &[1]).unwrap();
    }
    machine.set_reg(REG_COMMAND, 0x999);
    let host_view = |machine: &mut Machine| {
        let registers = (
            machine.reg(REG_STATUS),
            machine.reg(REG_RESTORES_LO),
            machine.reg(REG_INPUT_LEN),
        );
        // One lock at a time: a guard lives until the end of its statement.
        let device = machine.dev();
        (registers, device.statistics(), device.coverage()[0])
    };
    let before = host_view(&mut machine);

    machine.dev().restore_in_place(&saved).unwrap();
    assert_eq!(machine.reg(REG_ARG), 0x42, "ARG rolled back");
    assert_eq!(
        machine.config_read(15) & 0xff,
        11,
        "config space rolled back"
    );
    assert_eq!(host_view(&mut machine), before, "host state kept");
    assert_eq!(machine.dev().save(), saved);

    // Rebuilt around the same buffers: same guest state, host state cleared, contents kept.
    let args = {
        let device = machine.dev();
        SnapshotDeviceArgs {
            input: device.input_memory().clone(),
            coverage: device.coverage_memory().clone(),
            register_mirror: device.register_mirror_memory().clone(),
        }
    };
    let rebuilt = SnapshotDevice::restore(args, &saved).unwrap();
    assert_eq!(rebuilt.save(), saved);
    assert_eq!(rebuilt.status(), 0);
    assert_eq!(rebuilt.input_len(), 0);
    assert_eq!(rebuilt.coverage()[0], 1);

    // Cold boot is a restore of the power-on state.
    let cold = SnapshotDevice::new(&SnapshotDeviceConfig::default()).unwrap();
    assert_eq!(cold.save(), SnapshotDeviceState::default());
}

#[test]
fn invalid_states_are_rejected_and_leave_the_device_untouched() {
    let mut device = SnapshotDevice::new(&SnapshotDeviceConfig::default()).unwrap();
    device.config_write(4, 0b1111, 0xc010_0000);
    device.mmio_write(REGISTERS_BAR, REG_ARG, &5u32.to_le_bytes());
    let good = device.save();

    let mut bad_sizes = good.clone();
    bad_sizes.input_size = 0x2_0000;
    let mut bad_bar = good.clone();
    bad_bar.pci.bar_addresses[0] = 0xc000_1000;
    let mut bad_command = good.clone();
    bad_command.pci.command = 0x8000;
    let mut bar_in_unused_register = good.clone();
    bar_in_unused_register.pci.bar_addresses[1] = 0xc000_0000;
    for bad in [bad_sizes, bad_bar, bad_command, bar_in_unused_register] {
        assert!(device.restore_in_place(&bad).is_err(), "{bad:?}");
        assert_eq!(device.save(), good);
        let args = SnapshotDeviceArgs::allocate(&SnapshotDeviceConfig::default()).unwrap();
        assert!(SnapshotDevice::restore(args, &bad).is_err());
    }

    // Buffers whose sizes the ABI does not allow.
    let odd = SnapshotDeviceArgs {
        input: Arc::new(BarMemory::new(c"odd", 3 * 4096).unwrap()),
        coverage: Arc::new(BarMemory::new(c"odd", 4096).unwrap()),
        register_mirror: Arc::new(BarMemory::new(c"odd", REGISTER_MIRROR_SIZE).unwrap()),
    };
    let state = SnapshotDeviceState {
        input_size: 3 * 4096,
        coverage_size: 4096,
        ..SnapshotDeviceState::default()
    };
    assert!(SnapshotDevice::restore(odd, &state).is_err());
}

#[test]
fn buffer_sizes_are_validated() {
    for (input_size, coverage_size) in [
        (0, 4096),
        (2048, 4096),
        (3 << 12, 4096),
        (4096, MAX_BUFFER_SIZE * 2),
        (usize::MAX, 4096),
    ] {
        let config = SnapshotDeviceConfig {
            input_size,
            coverage_size,
        };
        assert!(
            matches!(
                SnapshotDevice::new(&config),
                Err(SnapshotDeviceError::BadBufferSize { .. })
            ),
            "{config:?}"
        );
    }
    let config = SnapshotDeviceConfig {
        input_size: 4096,
        coverage_size: MAX_BUFFER_SIZE,
    };
    let device = SnapshotDevice::new(&config).unwrap();
    assert_eq!(device.config(), config);
    assert_eq!(device.coverage_memory().len(), MAX_BUFFER_SIZE);
}

#[test]
fn input_is_copied_truncated_and_stale_bytes_are_zeroed() {
    let config = SnapshotDeviceConfig {
        input_size: 4096,
        coverage_size: 4096,
    };
    let mut machine = Machine::new(&config, SLOT);
    let input_base = machine.bases[INPUT_BAR];

    assert_eq!(machine.dev().set_input(b"a long first input"), 18);
    assert_eq!(machine.dev().set_input(b"short"), 5);
    assert_eq!(machine.reg(REG_INPUT_LEN), 5);
    // The guest reads the input (trapped, before any memslot exists).
    let mut seen = [0xeeu8; 20];
    machine.bus.mmio_read(input_base, &mut seen);
    assert_eq!(&seen[..5], b"short");
    assert!(seen[5..].iter().all(|&byte| byte == 0), "{seen:x?}");
    assert_eq!(machine.dev().statistics().trapped_buffer_accesses, 1);

    let huge = vec![0x5a; 5000];
    assert_eq!(machine.dev().set_input(&huge), 4096, "truncated to BAR2");
    assert_eq!(machine.reg(REG_INPUT_LEN), 4096);
    assert!(machine
        .dev()
        .input_memory()
        .to_vec()
        .iter()
        .all(|&byte| byte == 0x5a));
    assert_eq!(machine.dev().set_input(&[]), 0);
    assert_eq!(machine.reg(REG_INPUT_LEN), 0);
    assert!(machine
        .dev()
        .input_memory()
        .to_vec()
        .iter()
        .all(|&byte| byte == 0));

    // The guest may write its input memory; the bytes land in the same host memory.
    machine.bus.mmio_write(input_base + 10, &[1, 2, 3]);
    let mut back = [0u8; 3];
    machine.dev().input_memory().read(10, &mut back).unwrap();
    assert_eq!(back, [1, 2, 3]);
}

#[test]
fn coverage_written_by_the_guest_is_read_and_cleared_by_the_host() {
    let mut machine = Machine::with_defaults();
    let coverage_base = machine.bases[COVERAGE_BAR];
    let host_addr = machine.dev().coverage_memory().host_addr();
    // Through the memslot (the host address), and through a trapped access.
    // SAFETY: offsets 7 and 0xffff are inside the 64 KiB coverage mapping.
    unsafe {
        (host_addr as *mut u8).add(7).write(3);
        (host_addr as *mut u8).add(0xffff).write(9);
    }
    machine.bus.mmio_write(coverage_base + 0x100, &[1, 1]);

    let coverage = machine.dev().coverage();
    assert_eq!(coverage.len(), 0x1_0000);
    assert_eq!((coverage[7], coverage[0xffff]), (3, 9));
    assert_eq!(&coverage[0x100..0x102], &[1, 1]);
    assert_eq!(coverage.iter().filter(|&&byte| byte != 0).count(), 4);
    let mut mirror = [0u8; 8];
    machine.bus.mmio_read(coverage_base + 0xfff8, &mut mirror);
    assert_eq!(mirror, [0, 0, 0, 0, 0, 0, 0, 9]);

    let mut prefix = [0u8; 16];
    assert_eq!(machine.dev().copy_coverage(&mut prefix), 16);
    assert_eq!(prefix[7], 3);
    let mut too_big = vec![0xffu8; 0x2_0000];
    assert_eq!(machine.dev().copy_coverage(&mut too_big), 0x1_0000);
    assert_eq!(too_big[0x1_0000], 0xff, "past the map untouched");

    machine.dev().clear_coverage();
    assert!(machine.dev().coverage().iter().all(|&byte| byte == 0));
    assert_eq!(machine.dev().statistics().trapped_buffer_accesses, 2);
}

#[test]
fn moving_bar2_and_bar4_is_reported_with_the_memory_to_map() {
    let mut machine = Machine::with_defaults();
    let old_input = machine.bases[INPUT_BAR];
    let old_coverage = machine.bases[COVERAGE_BAR];
    machine.dev().set_input(b"xyz");

    // BAR2 to a new 32-bit address: one write, one report.
    let new_input = 0xe000_0000u64;
    let moved = relocations(machine.config_write(4 + INPUT_BAR, new_input as u32));
    assert_eq!(
        moved,
        [BarRelocation {
            slot: SLOT,
            bar: INPUT_BAR as u8,
            old_base: Some(old_input),
            new_base: Some(new_input),
            size: 0x10_0000
        }]
    );
    let device = machine.dev();
    let memory = device.bar_memory(INPUT_BAR).unwrap();
    assert_eq!(memory.len() as u64, moved[0].size);
    assert_eq!(memory.host_addr(), device.input_memory().host_addr());
    assert!(device.bar_memory(REGISTERS_BAR).is_none());
    drop(device);
    let mut data = [0u8; 3];
    machine.bus.mmio_read(new_input, &mut data);
    assert_eq!(&data, b"xyz");
    machine.bus.mmio_read(old_input, &mut data);
    assert_eq!(data, [0xff; 3], "nothing at the old address");

    // BAR4 above 4 GiB through its upper register.
    let moved = relocations(machine.config_write(4 + COVERAGE_BAR + 1, 0x2));
    assert_eq!(moved.len(), 1);
    assert_eq!(moved[0].bar, COVERAGE_BAR as u8);
    assert_eq!(moved[0].old_base, Some(old_coverage));
    let new_coverage = 0x2_0000_0000 | old_coverage;
    assert_eq!(moved[0].new_base, Some(new_coverage));
    assert_eq!(moved[0].size, 0x1_0000);
    machine.bus.mmio_write(new_coverage + 5, &[7]);
    assert_eq!(machine.dev().coverage()[5], 7);

    // Memory decoding off unmaps all three; on again maps them where they are.
    let command = machine.config_read(1);
    let off = relocations(machine.config_write(1, command & !u32::from(COMMAND_MEMORY_SPACE)));
    assert_eq!(off.len(), 3);
    assert!(off.iter().all(|relocation| relocation.new_base.is_none()));
    let on = relocations(machine.config_write(1, command));
    let bases: Vec<_> = on.iter().map(|relocation| relocation.new_base).collect();
    assert_eq!(
        bases,
        [
            Some(machine.bases[REGISTERS_BAR]),
            Some(new_input),
            Some(new_coverage)
        ]
    );
}

#[test]
fn restoring_in_place_moves_bars_back_and_sync_bars_reports_it() {
    let mut machine = Machine::with_defaults();
    let saved = machine.dev().save();
    let original = machine.bases[INPUT_BAR];
    machine.config_write(4 + INPUT_BAR, 0xe000_0000);
    assert_eq!(machine.reg(REG_MAGIC), MAGIC, "BAR0 did not move");

    // The VMM's restore path: device state through the shared handle, then ask the bus.
    machine.dev().restore_in_place(&saved).unwrap();
    let moved = machine.bus.sync_bars();
    assert_eq!(
        moved,
        [BarRelocation {
            slot: SLOT,
            bar: INPUT_BAR as u8,
            old_base: Some(0xe000_0000),
            new_base: Some(original),
            size: 0x10_0000
        }]
    );
    assert!(machine.bus.sync_bars().is_empty());
}

#[test]
fn device_action_stays_small_and_copy() {
    fn assert_copy<T: Copy>() {}
    assert_copy::<DeviceAction>();
    assert!(std::mem::size_of::<SnapshotCommand>() <= 8);
    assert!(std::mem::size_of::<DeviceAction>() <= 160);
}

#[test]
fn the_register_mirror_holds_the_host_set_registers_and_traps_read_the_same() {
    let mut device = SnapshotDevice::new(&SnapshotDeviceConfig::default()).unwrap();
    let mirror_word = |device: &SnapshotDevice, register: u64| {
        let mut bytes = [0u8; 4];
        device
            .register_mirror_memory()
            .read(register, &mut bytes)
            .unwrap();
        u32::from_le_bytes(bytes)
    };
    let trapped_word = |device: &mut SnapshotDevice, register: u64| {
        let mut bytes = [0u8; 4];
        device.mmio_read(REGISTERS_BAR, REGISTER_MIRROR_OFFSET + register, &mut bytes);
        u32::from_le_bytes(bytes)
    };
    assert_eq!(mirror_word(&device, REG_MAGIC), MAGIC);
    assert_eq!(mirror_word(&device, REG_INPUT_LEN), 0);
    assert_eq!(mirror_word(&device, REG_ABI_VERSION), ABI_VERSION);
    assert_eq!(
        mirror_word(&device, REG_INPUT_SIZE),
        DEFAULT_INPUT_SIZE as u32
    );
    assert_eq!(
        mirror_word(&device, REG_COVERAGE_SIZE),
        DEFAULT_COVERAGE_SIZE as u32
    );

    device.set_input(b"twelve bytes");
    device.mmio_write(REGISTERS_BAR, REG_ARG, &7u32.to_le_bytes());
    device.mmio_write(REGISTERS_BAR, REG_FAULT_PC_LO, &9u32.to_le_bytes());
    for register in (0..0x40).step_by(4) {
        let expected = match register {
            REG_MAGIC => MAGIC,
            REG_INPUT_LEN => 12,
            REG_ABI_VERSION => ABI_VERSION,
            REG_INPUT_SIZE => DEFAULT_INPUT_SIZE as u32,
            REG_COVERAGE_SIZE => DEFAULT_COVERAGE_SIZE as u32,
            // ARG, FAULT_PC, STATUS and RESTORES are not mirrored.
            _ => 0,
        };
        assert_eq!(mirror_word(&device, register), expected, "{register:#x}");
        assert_eq!(
            trapped_word(&mut device, register),
            expected,
            "{register:#x}"
        );
    }
    assert_eq!(trapped_word(&mut device, 0xffc), 0);

    // Writes to the mirror change nothing and are counted as ignored.
    let ignored = device.statistics().ignored_writes;
    device.mmio_write(
        REGISTERS_BAR,
        REGISTER_MIRROR_OFFSET + REG_INPUT_LEN,
        &[0xff; 4],
    );
    assert_eq!(device.input_len(), 12);
    assert_eq!(mirror_word(&device, REG_INPUT_LEN), 12);
    assert_eq!(device.statistics().ignored_writes, ignored + 1);

    device.set_input(b"");
    assert_eq!(mirror_word(&device, REG_INPUT_LEN), 0);
}
