//! The VM's devices, how guest accesses reach them, and their state as one saveable set.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use devices::acpi_pm::{AcpiPmDevice, AcpiPmState, ACPI_PM_PORT_BASE, ACPI_PM_PORT_LEN};
use devices::cmos::{CmosDevice, CmosState, CMOS_PORT_BASE, CMOS_PORT_LEN};
use devices::debug_exit::{DebugExitDevice, DEBUG_EXIT_PORT_BASE, DEBUG_EXIT_PORT_LEN};
use devices::i8042::{I8042Device, I8042State, I8042_PORT_BASE, I8042_PORT_LEN};
use devices::pci::{BarRelocation, PciBus, PciBusState, PCI_CONFIG_PORT_BASE, PCI_CONFIG_PORT_LEN};
use devices::serial::{SerialDevice, SerialDeviceState, COM1_IRQ, COM1_PORT_BASE, SERIAL_PORT_LEN};
use devices::snapshot_device::{
    SnapshotDevice, SnapshotDeviceConfig, SnapshotDeviceState, CMPLOG_BAR, COVERAGE_BAR, INPUT_BAR,
    REGISTERS_BAR, REGISTER_MIRROR_OFFSET,
};
use devices::{DeviceAction, Persist, PioBus, RestoreInPlace};
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::vcpu::IoBus;

/// KVM memory slots from this number on hold device memory (BARs); RAM uses the ones below.
pub const FIRST_DEVICE_MEMSLOT: u32 = 16;

#[derive(Debug, Error)]
pub enum DeviceManagerError {
    #[error("cannot create an event fd: {0}")]
    EventFd(std::io::Error),
    #[error("cannot connect {what} to its interrupt line: {source}")]
    Irqfd {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("cannot create {what}: {why}")]
    Device { what: &'static str, why: String },
    #[error("cannot map BAR{bar} of slot {slot} at {addr:#x}: {source}")]
    MapBar {
        slot: u8,
        bar: usize,
        addr: u64,
        source: kvm_ioctls::Error,
    },
    #[error("saved device state rejected: {0}")]
    State(String),
}

/// Options for the devices of a VM.
#[derive(Debug, Clone, Copy)]
pub struct DeviceOptions {
    /// PCI slot of the snapshot device on bus 0.
    pub snapshot_slot: u8,
    pub snapshot_device: SnapshotDeviceConfig,
}

impl Default for DeviceOptions {
    fn default() -> Self {
        DeviceOptions {
            snapshot_slot: devices::snapshot_device::SNAPSHOT_DEVICE_DEFAULT_SLOT,
            snapshot_device: SnapshotDeviceConfig::default(),
        }
    }
}

/// Every device's saved state: what a snapshot holds of the devices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceStates {
    pub serial: SerialDeviceState,
    pub i8042: I8042State,
    pub cmos: CmosState,
    pub acpi_pm: AcpiPmState,
    pub pci_bus: PciBusState,
    pub snapshot_device: SnapshotDeviceState,
}

impl DeviceStates {
    /// Checks every device's state as its restore would, against the device options it is
    /// restored into (the snapshot device's BAR sizes).
    pub fn validate(&self, options: &DeviceOptions) -> Result<(), DeviceManagerError> {
        let rejected = |e: devices::PersistError| DeviceManagerError::State(e.to_string());
        self.serial.validate().map_err(rejected)?;
        self.i8042.validate().map_err(rejected)?;
        self.cmos.validate().map_err(rejected)?;
        self.acpi_pm.validate().map_err(rejected)?;
        self.pci_bus.validate().map_err(rejected)?;
        self.snapshot_device
            .validate(&options.snapshot_device)
            .map_err(rejected)
    }
}

/// Host memory inside a BAR (all of BAR2 and BAR4, BAR0's register mirror page) and the memslot
/// that maps it.
struct MappedBar {
    bar: usize,
    /// Where in the BAR the memory starts.
    offset: u64,
    memslot: u32,
    host_addr: u64,
    size: u64,
    /// KVM_MEM_READONLY: guest writes exit as MMIO and reach the device, which ignores them.
    read_only: bool,
    guest_addr: Option<u64>,
}

/// All devices of the VM, reachable by port or address.
pub struct DeviceManager {
    vm_fd: Arc<VmFd>,
    pio: PioBus,
    serial: Arc<Mutex<SerialDevice>>,
    i8042: Arc<Mutex<I8042Device>>,
    cmos: Arc<Mutex<CmosDevice>>,
    acpi_pm: Arc<Mutex<AcpiPmDevice>>,
    pci: Arc<Mutex<PciBus>>,
    snapshot_device: Arc<Mutex<SnapshotDevice>>,
    snapshot_slot: u8,
    mapped_bars: Vec<MappedBar>,
    /// BAR placements KVM refused, for rate-limiting their warnings.
    unmappable_bars: u64,
    /// Whether a device may have left the state of the last snapshot (`mark_saved`) or restore:
    /// set by every port access, every MMIO write but a snapshot-device command (which only
    /// changes host state), and serial input from the host. While clear, a restore has nothing
    /// to put back (`--verify-restores` compares the states after every restore either way).
    touched: Arc<AtomicBool>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl DeviceManager {
    /// Creates the devices and wires their interrupts into the in-kernel irqchip.
    pub fn new(
        vm_fd: Arc<VmFd>,
        serial_out: Box<dyn std::io::Write + Send>,
        options: &DeviceOptions,
    ) -> Result<Self, DeviceManagerError> {
        let serial_irq = EventFd::new(EFD_NONBLOCK).map_err(DeviceManagerError::EventFd)?;
        vm_fd
            .register_irqfd(&serial_irq, COM1_IRQ)
            .map_err(|source| DeviceManagerError::Irqfd {
                what: "COM1",
                source,
            })?;
        let serial =
            SerialDevice::new(serial_irq, serial_out).map_err(|e| DeviceManagerError::Device {
                what: "COM1",
                why: e.to_string(),
            })?;
        let serial = Arc::new(Mutex::new(serial));
        let i8042 = Arc::new(Mutex::new(I8042Device::new()));
        // The RAM size in CMOS is filled in by `report_ram_size`; the clock is the host's.
        let cmos = Arc::new(Mutex::new(CmosDevice::new(0, 0)));
        let acpi_pm = Arc::new(Mutex::new(AcpiPmDevice::new()));
        let pci = Arc::new(Mutex::new(PciBus::new()));
        let snapshot_device = SnapshotDevice::new(&options.snapshot_device).map_err(|e| {
            DeviceManagerError::Device {
                what: "the snapshot device",
                why: e.to_string(),
            }
        })?;
        let mut mapped_bars: Vec<MappedBar> = [INPUT_BAR, COVERAGE_BAR, CMPLOG_BAR]
            .iter()
            .enumerate()
            .filter_map(|(i, &bar)| {
                snapshot_device.bar_memory(bar).map(|memory| MappedBar {
                    bar,
                    offset: 0,
                    memslot: FIRST_DEVICE_MEMSLOT + i as u32,
                    host_addr: memory.host_addr(),
                    size: memory.len() as u64,
                    read_only: false,
                    guest_addr: None,
                })
            })
            .collect();
        // The register mirror only where KVM can map it read-only: the guest must not change
        // what the host reports. Elsewhere its reads trap and the device answers them.
        if vm_fd.check_extension(kvm_ioctls::Cap::ReadonlyMem) {
            let mirror = snapshot_device.register_mirror_memory();
            mapped_bars.push(MappedBar {
                bar: REGISTERS_BAR,
                offset: REGISTER_MIRROR_OFFSET,
                memslot: FIRST_DEVICE_MEMSLOT + 3,
                host_addr: mirror.host_addr(),
                size: mirror.len() as u64,
                read_only: true,
                guest_addr: None,
            });
        }
        let snapshot_device = Arc::new(Mutex::new(snapshot_device));

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
            PCI_CONFIG_PORT_BASE,
            PCI_CONFIG_PORT_LEN,
            Box::new(pci.clone()),
        );
        pio.insert(
            DEBUG_EXIT_PORT_BASE,
            DEBUG_EXIT_PORT_LEN,
            Box::new(DebugExitDevice::new()),
        );
        let mut manager = DeviceManager {
            vm_fd,
            pio,
            serial,
            i8042,
            cmos,
            acpi_pm,
            pci,
            snapshot_device: snapshot_device.clone(),
            snapshot_slot: options.snapshot_slot,
            mapped_bars,
            unmappable_bars: 0,
            touched: Arc::new(AtomicBool::new(true)),
        };
        let relocations = lock(&manager.pci)
            .add_device(options.snapshot_slot, Box::new(snapshot_device))
            .map_err(|e| DeviceManagerError::Device {
                what: "the snapshot device's PCI function",
                why: e.to_string(),
            })?;
        for relocation in relocations.iter() {
            manager.move_bar(relocation)?;
        }
        Ok(manager)
    }

    /// The snapshot device, shared with the harness.
    pub fn snapshot_device(&self) -> &Arc<Mutex<SnapshotDevice>> {
        &self.snapshot_device
    }

    /// Writes the guest's RAM size into CMOS memory, where PC firmware keeps it (bytes 0x15-0x18,
    /// 0x30-0x31, 0x34-0x35, 0x5b-0x5d). Only a cold boot needs it: a snapshot's CMOS has it.
    pub fn report_ram_size(&self, mem_bytes: u64) {
        let ranges = crate::arch::layout::ram_ranges(mem_bytes);
        let low = ranges.first().map_or(0, |range| range.len);
        let high = ranges.get(1).map_or(0, |range| range.len);
        let mut cmos = lock(&self.cmos);
        let mut state = cmos.save();
        state.record_ram_size(low, high);
        if let Err(error) = cmos.restore_in_place(&state) {
            tracing::warn!(%error, "CMOS: cannot record the RAM size");
        }
    }

    /// A handle for feeding COM1's input from another thread.
    pub fn serial_input(&self) -> SerialInput {
        SerialInput {
            serial: self.serial.clone(),
            touched: self.touched.clone(),
        }
    }

    /// The devices' states were just captured for a snapshot: until a guest access, a restore
    /// to it has nothing to do.
    pub fn mark_saved(&self) {
        self.touched.store(false, Ordering::SeqCst);
    }

    fn touch(&self) {
        self.touched.store(true, Ordering::Relaxed);
    }

    /// Captures every device's state.
    pub fn save_states(&self) -> DeviceStates {
        DeviceStates {
            serial: lock(&self.serial).save(),
            i8042: lock(&self.i8042).save(),
            cmos: lock(&self.cmos).save(),
            acpi_pm: lock(&self.acpi_pm).save(),
            pci_bus: lock(&self.pci).save(),
            snapshot_device: lock(&self.snapshot_device).save(),
        }
    }

    /// Rolls every device back to `states` in place, then follows the BARs the restored config
    /// space decodes. Host-side counters of the snapshot device are not state and stay.
    pub fn restore_states(&mut self, states: &DeviceStates) -> Result<(), DeviceManagerError> {
        if !self.touched.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.restore_states_always(states)?;
        self.touched.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// `restore_states` without the shortcut.
    fn restore_states_always(&mut self, states: &DeviceStates) -> Result<(), DeviceManagerError> {
        let rejected = |e: devices::PersistError| DeviceManagerError::State(e.to_string());
        lock(&self.serial)
            .restore_in_place(&states.serial)
            .map_err(rejected)?;
        lock(&self.i8042)
            .restore_in_place(&states.i8042)
            .map_err(rejected)?;
        lock(&self.cmos)
            .restore_in_place(&states.cmos)
            .map_err(rejected)?;
        lock(&self.acpi_pm)
            .restore_in_place(&states.acpi_pm)
            .map_err(rejected)?;
        lock(&self.snapshot_device)
            .restore_in_place(&states.snapshot_device)
            .map_err(rejected)?;
        let relocations = {
            let mut pci = lock(&self.pci);
            pci.restore_in_place(&states.pci_bus).map_err(rejected)?;
            pci.sync_bars()
        };
        for relocation in relocations {
            // As at guest time: a BAR the saved config space puts where KVM refuses a memslot
            // (over RAM, inside another BAR) stays unmapped, its accesses served by the bus.
            if let Err(error) = self.move_bar(relocation) {
                self.warn_unmappable_bar(&error);
            }
        }
        Ok(())
    }

    /// Logs a BAR that cannot be mapped, rate-limited: a guest can move BARs in a loop.
    fn warn_unmappable_bar(&mut self, error: &DeviceManagerError) {
        self.unmappable_bars = self.unmappable_bars.saturating_add(1);
        let count = self.unmappable_bars;
        if count <= 8 || count.is_power_of_two() {
            tracing::warn!("{error} (left unmapped; {count} such BAR placement(s) so far)");
        }
    }

    /// Follows a guest's BAR re-programming. BARs whose accesses trap are routed by the bus itself;
    /// host-memory BARs get their memslot moved so guest accesses never exit.
    fn follow_bars(&mut self, action: DeviceAction) -> DeviceAction {
        match action {
            DeviceAction::BarsRelocated(relocations) => {
                for relocation in relocations.iter() {
                    if let Err(error) = self.move_bar(relocation) {
                        // A guest may program a BAR somewhere KVM refuses (over RAM, say): leave it
                        // unmapped there; its accesses still reach the device through the bus.
                        self.warn_unmappable_bar(&error);
                    }
                }
                DeviceAction::None
            }
            other => other,
        }
    }

    fn move_bar(&mut self, relocation: BarRelocation) -> Result<(), DeviceManagerError> {
        if relocation.slot != self.snapshot_slot {
            return Ok(());
        }
        let Some(mapped) = self
            .mapped_bars
            .iter_mut()
            .find(|m| m.bar == relocation.bar as usize)
        else {
            return Ok(());
        };
        let flags = if mapped.read_only {
            kvm_bindings::KVM_MEM_READONLY
        } else {
            0
        };
        let region = |guest_phys_addr: u64, memory_size: u64| kvm_userspace_memory_region {
            slot: mapped.memslot,
            flags,
            guest_phys_addr,
            memory_size,
            userspace_addr: mapped.host_addr,
        };
        if mapped.guest_addr.take().is_some() {
            // SAFETY: deleting a slot (size 0) touches no host memory.
            unsafe { self.vm_fd.set_user_memory_region(region(0, 0)) }.map_err(|source| {
                DeviceManagerError::MapBar {
                    slot: relocation.slot,
                    bar: relocation.bar as usize,
                    addr: 0,
                    source,
                }
            })?;
        }
        if let Some(addr) = relocation
            .new_base
            .and_then(|base| base.checked_add(mapped.offset))
        {
            // SAFETY: the host memory is the device's BarMemory, which the device (and so this
            // manager, through its Arc) keeps alive as long as the VM.
            unsafe { self.vm_fd.set_user_memory_region(region(addr, mapped.size)) }.map_err(
                |source| DeviceManagerError::MapBar {
                    slot: relocation.slot,
                    bar: relocation.bar as usize,
                    addr,
                    source,
                },
            )?;
            mapped.guest_addr = Some(addr);
        }
        Ok(())
    }
}

impl IoBus for DeviceManager {
    fn pio_read(&mut self, port: u16, data: &mut [u8]) {
        // Reads change state too (a UART's receive FIFO, the PCI address latch's use).
        self.touch();
        self.pio.read(port, data);
    }

    fn pio_write(&mut self, port: u16, data: &[u8]) -> DeviceAction {
        self.touch();
        let action = self.pio.write(port, data);
        self.follow_bars(action)
    }

    fn mmio_read(&mut self, addr: u64, data: &mut [u8]) {
        // Unclaimed MMIO reads as all ones (the bus does that), like a PC with nothing there.
        lock(&self.pci).mmio_read(addr, data);
    }

    fn mmio_write(&mut self, addr: u64, data: &[u8]) -> DeviceAction {
        let action = lock(&self.pci).mmio_write(addr, data);
        // A snapshot-device command changes host state only (STATUS, FAULT_PC, statistics);
        // ARG, FAULT_PC writes and anything else may change a device's saved state.
        if !matches!(action, DeviceAction::Snapshot(_)) {
            self.touch();
        }
        self.follow_bars(action)
    }
}

/// A handle that queues bytes into COM1's receive FIFO, as if typed on its line, from any thread.
#[derive(Clone)]
pub struct SerialInput {
    serial: Arc<Mutex<SerialDevice>>,
    touched: Arc<AtomicBool>,
}

impl SerialInput {
    /// Queues `bytes` for the guest to read (raising COM1's interrupt as the device decides).
    pub fn push(&self, bytes: &[u8]) {
        let mut serial = lock(&self.serial);
        self.touched.store(true, Ordering::SeqCst);
        serial.enqueue_input(bytes);
    }
}
