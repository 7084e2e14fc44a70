//! The machine the devices fuzz targets drive: every emulated device wired as the VMM wires it (the
//! port map of `devices`, the PCI bus with the snapshot device), plus the guest accesses and host
//! events a fuzz input is made of. No KVM: what the VMM does with a device's action (map a moved
//! BAR, take or roll back a snapshot) is played here on the devices alone.

pub mod restore;

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use devices::acpi_pm::{AcpiPmDevice, ACPI_PM_PORT_BASE, ACPI_PM_PORT_LEN};
use devices::cmos::{CmosDevice, CMOS_PORT_BASE, CMOS_PORT_LEN};
use devices::debug_exit::{DebugExitDevice, DEBUG_EXIT_PORT_BASE, DEBUG_EXIT_PORT_LEN};
use devices::i8042::{I8042Device, I8042_PORT_BASE, I8042_PORT_LEN};
use devices::pci::{PciBus, PCI_CONFIG_PORT_BASE, PCI_CONFIG_PORT_LEN};
use devices::serial::{SerialDevice, COM1_PORT_BASE, SERIAL_PORT_LEN};
use devices::snapshot_device::{MAGIC, REGISTERS_BAR, REGISTERS_BAR_SIZE};
use devices::{
    DeviceAction, Persist, PioBus, RestoreInPlace, SnapshotCommand, SnapshotDevice,
    SnapshotDeviceConfig,
};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use vmm_sys_util::eventfd::EventFd;

/// The slot the VMM puts the snapshot device in by default.
pub const SNAPSHOT_SLOT: u8 = 4;

/// Small buffers keep every iteration cheap; sizes are still powers of two like the real ones.
pub fn snapshot_config() -> SnapshotDeviceConfig {
    SnapshotDeviceConfig {
        input_size: 64 << 10,
        coverage_size: 64 << 10,
    }
}

/// Port I/O access widths.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum PortWidth {
    Byte,
    Word,
    Dword,
}

impl PortWidth {
    pub fn bytes(self) -> usize {
        match self {
            PortWidth::Byte => 1,
            PortWidth::Word => 2,
            PortWidth::Dword => 4,
        }
    }
}

/// MMIO access widths.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum MmioWidth {
    Byte,
    Word,
    Dword,
    Qword,
}

impl MmioWidth {
    pub fn bytes(self) -> usize {
        match self {
            MmioWidth::Byte => 1,
            MmioWidth::Word => 2,
            MmioWidth::Dword => 4,
            MmioWidth::Qword => 8,
        }
    }
}

/// A port, mostly inside a device's range (offset taken modulo the range length).
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Port {
    Serial(u8),
    I8042(u8),
    Cmos(u8),
    AcpiPm(u8),
    DebugExit(u8),
    PciConfig(u8),
    Any(u16),
}

impl Port {
    pub fn number(self) -> u16 {
        let within = |base: u16, len: u16, offset: u8| base + u16::from(offset) % len;
        match self {
            Port::Serial(o) => within(COM1_PORT_BASE, SERIAL_PORT_LEN, o),
            Port::I8042(o) => within(I8042_PORT_BASE, I8042_PORT_LEN, o),
            Port::Cmos(o) => within(CMOS_PORT_BASE, CMOS_PORT_LEN, o),
            Port::AcpiPm(o) => within(ACPI_PM_PORT_BASE, ACPI_PM_PORT_LEN, o),
            Port::DebugExit(o) => within(DEBUG_EXIT_PORT_BASE, DEBUG_EXIT_PORT_LEN, o),
            Port::PciConfig(o) => within(PCI_CONFIG_PORT_BASE, PCI_CONFIG_PORT_LEN, o),
            Port::Any(port) => port,
        }
    }
}

/// One step of a fuzz input: a guest access or something the host does.
#[derive(Arbitrary, Debug, Clone)]
pub enum Op {
    PortWrite {
        port: Port,
        width: PortWidth,
        value: u32,
    },
    PortRead {
        port: Port,
        width: PortWidth,
    },
    /// 0xcf8 then 0xcfc + (offset & 3): a configuration write as a guest does it.
    ConfigWrite {
        slot: u8,
        function: u8,
        offset: u8,
        width: PortWidth,
        value: u32,
    },
    ConfigRead {
        slot: u8,
        function: u8,
        offset: u8,
        width: PortWidth,
    },
    /// Moves a BAR of the snapshot device (a 64-bit one gets both halves).
    MoveBar {
        bar: u8,
        address: u64,
    },
    /// A snapshot-device register access at BAR0 (wherever it is decoded) + offset.
    RegisterWrite {
        offset: u32,
        width: MmioWidth,
        value: u64,
    },
    RegisterRead {
        offset: u32,
        width: MmioWidth,
    },
    /// Any guest-physical address.
    MmioWrite {
        address: u64,
        width: MmioWidth,
        value: u64,
    },
    MmioRead {
        address: u64,
        width: MmioWidth,
    },
    /// The harness puts an input into BAR2.
    SetInput(Vec<u8>),
    /// The host reads the coverage map.
    ReadCoverage,
    /// Every device: save, restore in place from that, save again; both must agree.
    RoundTrip,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// All device states, as the VMM keeps them at a SAVE.
#[derive(Clone)]
pub struct SavedDevices {
    serial: <SerialDevice as Persist>::State,
    i8042: <I8042Device as Persist>::State,
    cmos: <CmosDevice as Persist>::State,
    acpi_pm: <AcpiPmDevice as Persist>::State,
    pci: <PciBus as Persist>::State,
    snapshot: <SnapshotDevice as Persist>::State,
}

pub struct Machine {
    pio: PioBus,
    serial: Arc<Mutex<SerialDevice>>,
    i8042: Arc<Mutex<I8042Device>>,
    cmos: Arc<Mutex<CmosDevice>>,
    acpi_pm: Arc<Mutex<AcpiPmDevice>>,
    pci: Arc<Mutex<PciBus>>,
    snapshot: Arc<Mutex<SnapshotDevice>>,
    saved: Option<SavedDevices>,
}

impl Machine {
    /// The devices at cold boot, on the ports the VMM gives them.
    pub fn new() -> Machine {
        let interrupt = EventFd::new(libc::EFD_NONBLOCK).expect("an eventfd for the UART");
        let serial = Arc::new(Mutex::new(
            SerialDevice::new(interrupt, Box::new(std::io::sink())).expect("a UART"),
        ));
        let i8042 = Arc::new(Mutex::new(I8042Device::new()));
        let cmos = Arc::new(Mutex::new(CmosDevice::new(256 << 20, 0)));
        let acpi_pm = Arc::new(Mutex::new(AcpiPmDevice::new()));
        let snapshot = Arc::new(Mutex::new(
            SnapshotDevice::new(&snapshot_config()).expect("a snapshot device"),
        ));
        let pci = Arc::new(Mutex::new(PciBus::new()));
        lock(&pci)
            .add_device(SNAPSHOT_SLOT, Box::new(snapshot.clone()))
            .expect("plugging the snapshot device");
        let mut pio = PioBus::default();
        pio.insert(COM1_PORT_BASE, SERIAL_PORT_LEN, Box::new(serial.clone()));
        pio.insert(I8042_PORT_BASE, I8042_PORT_LEN, Box::new(i8042.clone()));
        pio.insert(CMOS_PORT_BASE, CMOS_PORT_LEN, Box::new(cmos.clone()));
        pio.insert(
            ACPI_PM_PORT_BASE,
            ACPI_PM_PORT_LEN,
            Box::new(acpi_pm.clone()),
        );
        pio.insert(
            DEBUG_EXIT_PORT_BASE,
            DEBUG_EXIT_PORT_LEN,
            Box::new(DebugExitDevice::new()),
        );
        pio.insert(
            PCI_CONFIG_PORT_BASE,
            PCI_CONFIG_PORT_LEN,
            Box::new(pci.clone()),
        );
        Machine {
            pio,
            serial,
            i8042,
            cmos,
            acpi_pm,
            pci,
            snapshot,
            saved: None,
        }
    }

    fn save_all(&self) -> SavedDevices {
        SavedDevices {
            serial: lock(&self.serial).save(),
            i8042: lock(&self.i8042).save(),
            cmos: lock(&self.cmos).save(),
            acpi_pm: lock(&self.acpi_pm).save(),
            pci: lock(&self.pci).save(),
            snapshot: lock(&self.snapshot).save(),
        }
    }

    /// What the VMM's restore does to the devices: every one back to `saved`, in place, then the
    /// bus re-reads the BARs. A state this machine saved itself must always be accepted.
    fn restore_all(&mut self, saved: &SavedDevices) {
        lock(&self.serial)
            .restore_in_place(&saved.serial)
            .expect("restoring the UART from its own save");
        lock(&self.i8042)
            .restore_in_place(&saved.i8042)
            .expect("restoring the i8042 from its own save");
        lock(&self.cmos)
            .restore_in_place(&saved.cmos)
            .expect("restoring the CMOS from its own save");
        lock(&self.acpi_pm)
            .restore_in_place(&saved.acpi_pm)
            .expect("restoring ACPI PM from its own save");
        lock(&self.pci)
            .restore_in_place(&saved.pci)
            .expect("restoring the PCI bus from its own save");
        lock(&self.snapshot)
            .restore_in_place(&saved.snapshot)
            .expect("restoring the snapshot device from its own save");
        lock(&self.pci).sync_bars();
    }

    /// Plays a device action as the VMM would, on the devices alone.
    fn handle(&mut self, action: DeviceAction) {
        let DeviceAction::Snapshot(command) = action else {
            return;
        };
        match command {
            SnapshotCommand::Save => {
                self.saved = Some(self.save_all());
                lock(&self.snapshot).record_save();
            }
            SnapshotCommand::Restore | SnapshotCommand::Done { .. } => match self.saved.clone() {
                Some(saved) => {
                    self.restore_all(&saved);
                    lock(&self.snapshot).record_restore();
                    assert_eq!(
                        self.save_all().snapshot,
                        saved.snapshot,
                        "the snapshot device differs from its SAVE after a restore"
                    );
                }
                None => lock(&self.snapshot).set_last_command_failed(true),
            },
            SnapshotCommand::Crash { .. } | SnapshotCommand::Exception { .. } => {
                let _ = lock(&self.snapshot).command_pc();
            }
        }
    }

    fn port_write(&mut self, port: u16, data: &[u8]) {
        let action = self.pio.write(port, data);
        self.handle(action);
    }

    fn port_read(&mut self, port: u16, len: usize) -> [u8; 4] {
        let mut data = [0u8; 4];
        self.pio.read(port, &mut data[..len]);
        data
    }

    fn mmio_write(&mut self, address: u64, data: &[u8]) {
        let action = lock(&self.pci).mmio_write(address, data);
        self.handle(action);
    }

    fn mmio_read(&mut self, address: u64, len: usize) -> [u8; 8] {
        let mut data = [0u8; 8];
        lock(&self.pci).mmio_read(address, &mut data[..len]);
        data
    }

    /// Where BAR0 of the snapshot device is decoded, if it is and nothing else overlaps it.
    fn registers_base(&self) -> Option<u64> {
        let bars = lock(&self.pci).decoded_bars();
        let registers = bars
            .iter()
            .find(|bar| bar.slot == SNAPSHOT_SLOT && usize::from(bar.bar) == REGISTERS_BAR)?;
        let overlapped = bars.iter().any(|other| {
            other != registers
                && other.base < registers.base.saturating_add(registers.size)
                && registers.base < other.base.saturating_add(other.size)
        });
        (!overlapped).then_some(registers.base)
    }

    fn config_address(slot: u8, function: u8, offset: u8) -> [u8; 4] {
        let address = 0x8000_0000u32
            | u32::from(slot % 32) << 11
            | u32::from(function % 8) << 8
            | u32::from(offset & 0xfc);
        address.to_le_bytes()
    }

    pub fn apply(&mut self, op: &Op) {
        match op {
            Op::PortWrite { port, width, value } => {
                self.port_write(port.number(), &value.to_le_bytes()[..width.bytes()])
            }
            Op::PortRead { port, width } => {
                let port = port.number();
                let data = self.port_read(port, width.bytes());
                if self.unclaimed(port) {
                    assert!(
                        data[..width.bytes()].iter().all(|&b| b == 0xff),
                        "an unclaimed port read {data:?}"
                    );
                }
            }
            Op::ConfigWrite {
                slot,
                function,
                offset,
                width,
                value,
            } => {
                self.port_write(
                    PCI_CONFIG_PORT_BASE,
                    &Self::config_address(*slot, *function, *offset),
                );
                let data_port = PCI_CONFIG_PORT_BASE + 4 + u16::from(offset & 3);
                self.port_write(data_port, &value.to_le_bytes()[..width.bytes()]);
            }
            Op::ConfigRead {
                slot,
                function,
                offset,
                width,
            } => {
                self.port_write(
                    PCI_CONFIG_PORT_BASE,
                    &Self::config_address(*slot, *function, *offset),
                );
                let data_port = PCI_CONFIG_PORT_BASE + 4 + u16::from(offset & 3);
                self.port_read(data_port, width.bytes());
            }
            Op::MoveBar { bar, address } => {
                let register = 0x10 + 4 * (bar % 6);
                for (half, value) in [(0u8, *address as u32), (4, (*address >> 32) as u32)] {
                    self.port_write(
                        PCI_CONFIG_PORT_BASE,
                        &Self::config_address(SNAPSHOT_SLOT, 0, register + half),
                    );
                    self.port_write(PCI_CONFIG_PORT_BASE + 4, &value.to_le_bytes());
                }
                lock(&self.pci).sync_bars();
            }
            Op::RegisterWrite {
                offset,
                width,
                value,
            } => {
                if let Some(base) = self.registers_base() {
                    let offset = u64::from(*offset) % REGISTERS_BAR_SIZE;
                    self.mmio_write(base + offset, &value.to_le_bytes()[..width.bytes()]);
                }
            }
            Op::RegisterRead { offset, width } => {
                if let Some(base) = self.registers_base() {
                    let offset = u64::from(*offset) % REGISTERS_BAR_SIZE;
                    self.mmio_read(base + offset, width.bytes());
                    let magic = self.mmio_read(base, 4);
                    assert_eq!(
                        u32::from_le_bytes([magic[0], magic[1], magic[2], magic[3]]),
                        MAGIC,
                        "MAGIC reads wrong"
                    );
                }
            }
            Op::MmioWrite {
                address,
                width,
                value,
            } => self.mmio_write(*address, &value.to_le_bytes()[..width.bytes()]),
            Op::MmioRead { address, width } => {
                self.mmio_read(*address, width.bytes());
            }
            Op::SetInput(bytes) => {
                let written = lock(&self.snapshot).set_input(bytes);
                assert!(written <= bytes.len());
                assert_eq!(lock(&self.snapshot).input_len() as usize, written);
            }
            Op::ReadCoverage => {
                let coverage = lock(&self.snapshot).coverage();
                assert_eq!(coverage.len(), snapshot_config().coverage_size);
            }
            Op::RoundTrip => {
                let before = self.save_all();
                self.restore_all(&before);
                let after = self.save_all();
                assert_eq!(before.serial, after.serial);
                assert_eq!(before.i8042, after.i8042);
                assert_eq!(before.acpi_pm, after.acpi_pm);
                assert_eq!(before.pci, after.pci);
                assert_eq!(before.snapshot, after.snapshot);
            }
        }
        self.check_bars();
    }

    fn unclaimed(&self, port: u16) -> bool {
        let claimed = [
            (COM1_PORT_BASE, SERIAL_PORT_LEN),
            (I8042_PORT_BASE, I8042_PORT_LEN),
            (CMOS_PORT_BASE, CMOS_PORT_LEN),
            (ACPI_PM_PORT_BASE, ACPI_PM_PORT_LEN),
            (DEBUG_EXIT_PORT_BASE, DEBUG_EXIT_PORT_LEN),
            (PCI_CONFIG_PORT_BASE, PCI_CONFIG_PORT_LEN),
        ];
        !claimed
            .iter()
            .any(|&(base, len)| port >= base && u32::from(port) < u32::from(base) + u32::from(len))
    }

    /// Decoded BARs must fit the physical address space and be aligned to their size.
    fn check_bars(&self) {
        for bar in lock(&self.pci).decoded_bars() {
            assert!(bar.size.is_power_of_two(), "{bar:?}");
            assert_eq!(bar.base % bar.size, 0, "{bar:?} misaligned");
            let end = bar.base.checked_add(bar.size);
            assert!(
                end.is_some_and(|end| end <= devices::pci::PHYS_ADDR_LIMIT),
                "{bar:?} beyond the physical address limit"
            );
        }
    }
}

impl Default for Machine {
    fn default() -> Self {
        Machine::new()
    }
}
