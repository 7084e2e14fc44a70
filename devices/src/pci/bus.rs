//! The PCI bus: configuration mechanism #1 on ports 0xCF8..=0xCFF, MMIO routing to memory BARs,
//! BAR assignment when devices are added, and relocation reports when the guest moves BARs.
//!
//! Port semantics (offsets from 0xCF8):
//! - A 32-bit access at offset 0 is the CONFIG_ADDRESS register: bit 31 enable, bits 23:16 bus,
//!   15:11 device, 10:8 function, 7:2 register. Reserved bits read as 0. Narrower accesses to
//!   offsets 0..=3 are not config accesses (Linux's mechanism #2 probe relies on that): reads
//!   return all ones, writes are ignored.
//! - Offsets 4..=7 are CONFIG_DATA: the bytes of an access that fall there go to the addressed
//!   dword as one masked read or write, at any offset and width. Bytes past 0xCFF read all ones.
//! - With the enable bit clear, on bus != 0, or for a function/slot without a device, data reads
//!   return all ones and writes are ignored. Only function 0 of each slot exists.

use serde::{Deserialize, Serialize};
use snapshot::{Persist, PersistError};

use super::{
    BarAllocator, BarKind, BarRelocation, BarRelocations, HostBridge, PciConfigState, PciDevice,
    PciError, BAR_COUNT, COMMAND_MEMORY_SPACE, COMMAND_REGISTER,
};
use crate::{DeviceAction, PioDevice, RestoreInPlace};

/// First port of configuration mechanism #1 (CONFIG_ADDRESS; CONFIG_DATA is at +4).
pub const PCI_CONFIG_PORT_BASE: u16 = 0xcf8;
pub const PCI_CONFIG_PORT_LEN: u16 = 8;
/// Device numbers on bus 0.
pub const PCI_SLOT_COUNT: usize = 32;
pub const HOST_BRIDGE_SLOT: u8 = 0;

const ADDRESS_ENABLE: u32 = 1 << 31;
/// Enable, bus, device, function, register; bits 30:24 (reserved) and 1:0 read as 0.
const ADDRESS_WRITABLE_BITS: u32 = 0x80ff_fffc;
const DATA_PORT_OFFSET: usize = 4;
const DATA_PORT_END: usize = 8;
/// Bar registers are config dwords 4..=9.
const FIRST_BAR_REGISTER: usize = 4;
const ALL_BYTES: u8 = 0b1111;

/// The bus's own state: the address latch and the host bridge's config registers. Other devices
/// are saved by their owners and re-attached with [`PciBus::add_restored_device`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciBusState {
    pub config_address: u32,
    pub host_bridge: PciConfigState,
}

impl PciBusState {
    /// Checks the state as a restore would, without a bus to restore into.
    pub fn validate(&self) -> Result<(), PersistError> {
        validate_config_address(self.config_address)?;
        HostBridge::restore((), &self.host_bridge).map(drop)
    }
}

/// A memory BAR currently decoded in guest-physical space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodedBar {
    pub slot: u8,
    pub bar: u8,
    pub base: u64,
    pub size: u64,
}

/// (base, size) of each decoded memory BAR of one device.
type DecodeTable = [Option<(u64, u64)>; BAR_COUNT];

fn decode_table(device: &dyn PciDevice) -> DecodeTable {
    let memory_enabled = device.config_read(COMMAND_REGISTER) as u16 & COMMAND_MEMORY_SPACE != 0;
    device
        .bars()
        .map(|bar| bar.and_then(|bar| Some((bar.decoded_base(memory_enabled)?, bar.size))))
}

pub struct PciBus {
    config_address: u32,
    host_bridge: HostBridge,
    /// Indexed by slot; slot 0 is the host bridge, held apart so that it can be saved.
    devices: Vec<Option<Box<dyn PciDevice>>>,
    /// The decoding last reported to the VMM, per slot: relocations are the differences.
    reported: [DecodeTable; PCI_SLOT_COUNT],
}

impl Default for PciBus {
    fn default() -> Self {
        PciBus::new()
    }
}

impl PciBus {
    /// Bus 0 with only the host bridge, at power-on.
    pub fn new() -> Self {
        PciBus {
            config_address: 0,
            host_bridge: HostBridge::new(),
            devices: (0..PCI_SLOT_COUNT).map(|_| None).collect(),
            reported: [[None; BAR_COUNT]; PCI_SLOT_COUNT],
        }
    }

    /// Cold boot: plugs `device` into `slot` and, like firmware, assigns every unassigned memory
    /// BAR an address in the MMIO hole (largest first) and turns memory decoding on. Returns the
    /// BARs that became decoded, for the VMM to map the host-memory-backed ones.
    pub fn add_device(
        &mut self,
        slot: u8,
        mut device: Box<dyn PciDevice>,
    ) -> Result<BarRelocations, PciError> {
        let index = self.free_slot(slot)?;
        let mut allocator = self.allocator_around_assigned_bars();
        assign_memory_bars(device.as_mut(), &mut allocator)?;
        self.devices[index] = Some(device);
        Ok(self.sync_slot(index))
    }

    /// Restore: plugs in a device rebuilt from a snapshot, keeping its BARs and COMMAND as
    /// saved. Returns the BARs that became decoded.
    pub fn add_restored_device(
        &mut self,
        slot: u8,
        device: Box<dyn PciDevice>,
    ) -> Result<BarRelocations, PciError> {
        let index = self.free_slot(slot)?;
        self.devices[index] = Some(device);
        Ok(self.sync_slot(index))
    }

    /// Re-reads every device's BARs after their state changed behind the bus's back (a device
    /// restored in place through a shared handle) and returns what moved since the last report.
    pub fn sync_bars(&mut self) -> Vec<BarRelocation> {
        (0..PCI_SLOT_COUNT)
            .flat_map(|slot| self.sync_slot(slot).iter().collect::<Vec<_>>())
            .collect()
    }

    /// The memory BARs decoded as last reported to the VMM.
    pub fn decoded_bars(&self) -> Vec<DecodedBar> {
        let mut decoded = Vec::new();
        for (slot, table) in self.reported.iter().enumerate() {
            for (bar, region) in table.iter().enumerate() {
                if let Some((base, size)) = *region {
                    decoded.push(DecodedBar {
                        slot: slot as u8,
                        bar: bar as u8,
                        base,
                        size,
                    });
                }
            }
        }
        decoded
    }

    /// A guest read of guest-physical `address`: routed to the device whose decoded memory BAR
    /// holds the whole access; nobody's reads all ones.
    pub fn mmio_read(&mut self, address: u64, data: &mut [u8]) {
        match self.route(address, data.len()) {
            Some((slot, bar, offset)) => match self.device_mut(slot) {
                Some(device) => device.mmio_read(bar, offset, data),
                None => data.fill(0xff),
            },
            None => data.fill(0xff),
        }
    }

    /// A guest write of guest-physical `address`; nobody's is ignored.
    pub fn mmio_write(&mut self, address: u64, data: &[u8]) -> DeviceAction {
        let Some((slot, bar, offset)) = self.route(address, data.len()) else {
            return DeviceAction::None;
        };
        match self.device_mut(slot) {
            Some(device) => device.mmio_write(bar, offset, data),
            None => DeviceAction::None,
        }
    }

    fn free_slot(&self, slot: u8) -> Result<usize, PciError> {
        let index = usize::from(slot);
        if slot == HOST_BRIDGE_SLOT || index >= PCI_SLOT_COUNT {
            return Err(PciError::SlotOutOfRange(slot));
        }
        if self.devices[index].is_some() {
            return Err(PciError::SlotTaken(slot));
        }
        Ok(index)
    }

    fn device(&self, slot: usize) -> Option<&dyn PciDevice> {
        if slot == usize::from(HOST_BRIDGE_SLOT) {
            Some(&self.host_bridge)
        } else {
            self.devices.get(slot)?.as_deref()
        }
    }

    fn device_mut(&mut self, slot: usize) -> Option<&mut dyn PciDevice> {
        if slot == usize::from(HOST_BRIDGE_SLOT) {
            Some(&mut self.host_bridge)
        } else {
            match self.devices.get_mut(slot)? {
                Some(device) => Some(device.as_mut()),
                None => None,
            }
        }
    }

    fn allocator_around_assigned_bars(&self) -> BarAllocator {
        let mut allocator = BarAllocator::mmio_hole();
        for slot in 0..PCI_SLOT_COUNT {
            let Some(device) = self.device(slot) else {
                continue;
            };
            for bar in device.bars().iter().flatten() {
                if bar.kind.is_memory() && bar.base != 0 {
                    allocator.reserve(bar.base, bar.size);
                }
            }
        }
        allocator
    }

    fn sync_slot(&mut self, slot: usize) -> BarRelocations {
        let current = self.device(slot).map(decode_table).unwrap_or_default();
        let mut relocations = BarRelocations::new(slot as u8);
        let Some(reported) = self.reported.get_mut(slot) else {
            return relocations;
        };
        for (bar, (old, new)) in reported.iter().zip(current.iter()).enumerate() {
            if old != new {
                relocations.record(
                    bar,
                    old.map(|(base, _)| base),
                    new.map(|(base, _)| base),
                    new.or(*old).map_or(0, |(_, size)| size),
                );
            }
        }
        *reported = current;
        relocations
    }

    /// (slot, BAR, offset) of the decoded memory BAR that holds `address..address + len`.
    fn route(&self, address: u64, len: usize) -> Option<(usize, usize, u64)> {
        let len = u64::try_from(len).ok()?;
        (0..PCI_SLOT_COUNT).find_map(|slot| {
            let table = decode_table(self.device(slot)?);
            table.iter().enumerate().find_map(|(bar, region)| {
                let (base, size) = (*region)?;
                let offset = address.checked_sub(base)?;
                (offset.checked_add(len)? <= size).then_some((slot, bar, offset))
            })
        })
    }

    /// (slot, register) that CONFIG_DATA currently addresses, if a device answers there.
    fn config_target(&self) -> Option<(usize, usize)> {
        let address = self.config_address;
        let bus = (address >> 16) & 0xff;
        let slot = ((address >> 11) & 0x1f) as usize;
        let function = (address >> 8) & 0x7;
        let register = ((address >> 2) & 0x3f) as usize;
        let enabled = address & ADDRESS_ENABLE != 0;
        (enabled && bus == 0 && function == 0 && self.device(slot).is_some())
            .then_some((slot, register))
    }
}

/// What firmware does for a new device: addresses for unassigned memory BARs, memory decoding on.
fn assign_memory_bars(
    device: &mut dyn PciDevice,
    allocator: &mut BarAllocator,
) -> Result<(), PciError> {
    let bars = device.bars();
    for bar in bars.iter().flatten() {
        if bar.kind.is_memory() && bar.base != 0 {
            allocator.reserve(bar.base, bar.size);
        }
    }
    let mut unassigned: Vec<_> = bars
        .iter()
        .enumerate()
        .filter_map(|(index, bar)| Some((index, (*bar)?)))
        .filter(|(_, bar)| bar.kind.is_memory() && bar.base == 0)
        .collect();
    unassigned.sort_by_key(|(index, bar)| (std::cmp::Reverse(bar.size), *index));
    if unassigned.is_empty() {
        return Ok(());
    }
    for (index, bar) in unassigned {
        let base = allocator.allocate(bar.size)?;
        let register = FIRST_BAR_REGISTER + index;
        device.config_write(register, ALL_BYTES, base as u32);
        if matches!(bar.kind, BarKind::Memory64 { .. }) {
            device.config_write(register + 1, ALL_BYTES, (base >> 32) as u32);
        }
    }
    let command = device.config_read(COMMAND_REGISTER) | u32::from(COMMAND_MEMORY_SPACE);
    device.config_write(COMMAND_REGISTER, 0b0011, command);
    Ok(())
}

impl PioDevice for PciBus {
    fn pio_read(&mut self, offset: u16, data: &mut [u8]) {
        data.fill(0xff);
        let offset = usize::from(offset);
        if offset == 0 && data.len() == 4 {
            data.copy_from_slice(&self.config_address.to_le_bytes());
            return;
        }
        let Some((slot, register)) = self.config_target() else {
            return;
        };
        let Some(device) = self.device(slot) else {
            return;
        };
        let mut dword = None;
        for (port, byte) in (offset..).zip(data.iter_mut()) {
            if (DATA_PORT_OFFSET..DATA_PORT_END).contains(&port) {
                let value = *dword.get_or_insert_with(|| device.config_read(register));
                *byte = u32::to_le_bytes(value)[port - DATA_PORT_OFFSET];
            }
        }
    }

    fn pio_write(&mut self, offset: u16, data: &[u8]) -> DeviceAction {
        let offset = usize::from(offset);
        if offset == 0 && data.len() == 4 {
            let mut address = [0u8; 4];
            address.copy_from_slice(data);
            self.config_address = u32::from_le_bytes(address) & ADDRESS_WRITABLE_BITS;
            return DeviceAction::None;
        }
        let mut byte_mask = 0u8;
        let mut value = 0u32;
        for (port, &byte) in (offset..).zip(data) {
            if (DATA_PORT_OFFSET..DATA_PORT_END).contains(&port) {
                let lane = port - DATA_PORT_OFFSET;
                byte_mask |= 1 << lane;
                value |= u32::from(byte) << (8 * lane);
            }
        }
        if byte_mask == 0 {
            return DeviceAction::None;
        }
        let Some((slot, register)) = self.config_target() else {
            return DeviceAction::None;
        };
        if let Some(device) = self.device_mut(slot) {
            device.config_write(register, byte_mask, value);
        }
        self.sync_slot(slot).into_action()
    }
}

fn validate_config_address(address: u32) -> Result<(), PersistError> {
    if address & !ADDRESS_WRITABLE_BITS != 0 {
        return Err(PersistError::invalid(
            "pci bus",
            format!("CONFIG_ADDRESS {address:#010x} has reserved bits set"),
        ));
    }
    Ok(())
}

impl Persist for PciBus {
    type State = PciBusState;
    type ConstructorArgs = ();

    fn save(&self) -> PciBusState {
        PciBusState {
            config_address: self.config_address,
            host_bridge: self.host_bridge.save(),
        }
    }

    fn restore(_args: (), state: &PciBusState) -> Result<Self, PersistError> {
        validate_config_address(state.config_address)?;
        let mut bus = PciBus::new();
        bus.config_address = state.config_address;
        bus.host_bridge = HostBridge::restore((), &state.host_bridge)?;
        Ok(bus)
    }
}

impl RestoreInPlace for PciBus {
    /// Restores the latch and the host bridge; devices are restored by their owners, after which
    /// the VMM calls [`PciBus::sync_bars`].
    fn restore_in_place(&mut self, state: &PciBusState) -> Result<(), PersistError> {
        validate_config_address(state.config_address)?;
        self.host_bridge.restore_in_place(&state.host_bridge)?;
        self.config_address = state.config_address;
        Ok(())
    }
}

#[cfg(test)]
#[path = "bus_tests.rs"]
mod tests;
