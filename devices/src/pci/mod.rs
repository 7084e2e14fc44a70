//! PCI: configuration mechanism #1, a type-0 configuration header helper, the host bridge, MMIO
//! routing to memory BARs and a BAR allocator for the 32-bit MMIO hole.
//!
//! - [`PciBus`] is the `PioDevice` at 0xCF8..=0xCFF and the MMIO router. Config writes that move a
//!   memory BAR, or switch memory decoding, come back as [`DeviceAction::BarsRelocated`].
//! - [`PciDevice`] is what a device on the bus implements: config dword read/write with byte
//!   masks, its BARs, MMIO inside its memory BARs.
//! - [`PciConfigSpace`] implements the standard header (identity, COMMAND, BARs with the sizing
//!   protocol, interrupt line/pin) so that devices only forward to it.
//! - [`BarAllocator`] hands out naturally aligned addresses in the MMIO hole when devices are added.
//!
//! A memory BAR is *decoded* (routed, and reported to the VMM) when COMMAND's memory-space bit is
//! set, its base is non-zero, and the whole region lies below the top of its address width: below
//! 4 GiB minus one byte for 32-bit BARs, below [`PHYS_ADDR_LIMIT`] for 64-bit BARs. A BAR holding
//! the sizing pattern (all ones) is therefore never decoded, even if a guest sizes it with
//! decoding on.

mod allocator;
mod bus;
mod config_space;
mod host_bridge;

use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use allocator::{BarAllocator, MIN_BAR_SIZE, MMIO_HOLE_END, MMIO_HOLE_START};
pub use bus::{
    DecodedBar, PciBus, PciBusState, HOST_BRIDGE_SLOT, PCI_CONFIG_PORT_BASE, PCI_CONFIG_PORT_LEN,
    PCI_SLOT_COUNT,
};
pub use config_space::{
    BarDefinition, PciConfigSpace, PciConfigState, PciHeader, COMMAND_BUS_MASTER,
    COMMAND_INTX_DISABLE, COMMAND_IO_SPACE, COMMAND_MEMORY_SPACE, COMMAND_WRITABLE_BITS,
    CONFIG_SPACE_DWORDS,
};
pub use host_bridge::{
    HostBridge, HOST_BRIDGE_CLASS, HOST_BRIDGE_DEVICE_ID, HOST_BRIDGE_SUBCLASS,
    HOST_BRIDGE_VENDOR_ID,
};

use crate::DeviceAction;

/// Number of BARs in a type-0 header.
pub const BAR_COUNT: usize = 6;
/// x86-64's architectural limit on physical addresses (52 bits): no CPU can reach a BAR above it,
/// so such BARs are never decoded.
pub const PHYS_ADDR_LIMIT: u64 = 1 << 52;
/// Dword register of COMMAND (low half) and STATUS (high half).
pub const COMMAND_REGISTER: usize = 1;

#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum PciError {
    #[error("PCI slot {0} cannot take a device (slots 1..=31; 0 is the host bridge)")]
    SlotOutOfRange(u8),
    #[error("PCI slot {0} already holds a device")]
    SlotTaken(u8),
    #[error("invalid PCI header: {0}")]
    InvalidHeader(String),
    #[error("no room for a {size:#x}-byte BAR in {start:#x}..{end:#x}")]
    NoSpace { size: u64, start: u64, end: u64 },
}

/// What kind of BAR, as its low bits tell the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BarKind {
    Memory32 {
        prefetchable: bool,
    },
    /// Takes two BAR registers: this one and the next.
    Memory64 {
        prefetchable: bool,
    },
    Io,
}

impl BarKind {
    pub fn is_memory(self) -> bool {
        !matches!(self, BarKind::Io)
    }
}

/// A BAR as currently programmed by the guest (or the VMM at boot).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciBar {
    pub kind: BarKind,
    /// Address as programmed, flag bits removed (0 = unassigned).
    pub base: u64,
    pub size: u64,
}

impl PciBar {
    /// The base at which this BAR is decoded, given COMMAND's memory-space bit (rules in the
    /// module documentation). Bogus sizes from a device are treated as not decoded.
    pub fn decoded_base(&self, memory_enabled: bool) -> Option<u64> {
        if !memory_enabled || !self.kind.is_memory() || self.base == 0 || self.size == 0 {
            return None;
        }
        let end = self.base.checked_add(self.size)?;
        let fits = match self.kind {
            BarKind::Memory32 { .. } => end < 1 << 32,
            _ => end <= PHYS_ADDR_LIMIT,
        };
        fits.then_some(self.base)
    }
}

/// A device on the PCI bus (function 0 of its slot). Keep implementations thin: forward the
/// config methods and `bars` to a [`PciConfigSpace`].
pub trait PciDevice: Send {
    /// Reads config dword `register` (byte offset / 4, 0..64).
    fn config_read(&self, register: usize) -> u32;

    /// Writes the bytes of `value` selected by `byte_mask` (bit n = byte n of the dword).
    fn config_write(&mut self, register: usize, byte_mask: u8, value: u32);

    /// The BARs as currently programmed, indexed by BAR number; the upper register of a 64-bit
    /// BAR is `None`.
    fn bars(&self) -> [Option<PciBar>; BAR_COUNT] {
        [None; BAR_COUNT]
    }

    /// A guest read inside decoded memory BAR `bar`; `offset + data.len()` never exceeds its size.
    fn mmio_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        let _ = (bar, offset);
        data.fill(0xff);
    }

    /// A guest write inside decoded memory BAR `bar`.
    fn mmio_write(&mut self, bar: usize, offset: u64, data: &[u8]) -> DeviceAction {
        let _ = (bar, offset, data);
        DeviceAction::None
    }
}

/// A device shared with the VMM (the snapshot device is also driven by the harness). A poisoned
/// lock still holds consistent plain-data state, so guest accesses go on.
impl<T: PciDevice> PciDevice for Arc<Mutex<T>> {
    fn config_read(&self, register: usize) -> u32 {
        self.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .config_read(register)
    }

    fn config_write(&mut self, register: usize, byte_mask: u8, value: u32) {
        self.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .config_write(register, byte_mask, value)
    }

    fn bars(&self) -> [Option<PciBar>; BAR_COUNT] {
        self.lock().unwrap_or_else(PoisonError::into_inner).bars()
    }

    fn mmio_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        self.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .mmio_read(bar, offset, data)
    }

    fn mmio_write(&mut self, bar: usize, offset: u64, data: &[u8]) -> DeviceAction {
        self.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .mmio_write(bar, offset, data)
    }
}

/// A memory BAR appeared, moved or disappeared in guest-physical space. `None` means "not
/// decoded" (memory decoding off, unassigned, or out of reach).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarRelocation {
    pub slot: u8,
    pub bar: u8,
    pub old_base: Option<u64>,
    pub new_base: Option<u64>,
    pub size: u64,
}

/// The relocations one config write caused, all on one device: at most one per BAR (a COMMAND
/// write can switch all of them at once). Stored compactly, without allocation, so that
/// `DeviceAction` stays small and `Copy`; read it with [`BarRelocations::iter`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BarRelocations {
    slot: u8,
    /// Bit n set: BAR n changed.
    changed: u8,
    /// Per BAR: old base, new base, size. A base of 0 means "not decoded" (decoded bases never
    /// are 0).
    moves: [[u64; 3]; BAR_COUNT],
}

impl BarRelocations {
    fn new(slot: u8) -> Self {
        BarRelocations {
            slot,
            ..Default::default()
        }
    }

    pub fn slot(&self) -> u8 {
        self.slot
    }

    pub fn iter(&self) -> impl Iterator<Item = BarRelocation> + '_ {
        self.moves
            .iter()
            .enumerate()
            .filter(|(bar, _)| self.changed & (1 << bar) != 0)
            .map(|(bar, &[old_base, new_base, size])| BarRelocation {
                slot: self.slot,
                bar: bar as u8,
                old_base: (old_base != 0).then_some(old_base),
                new_base: (new_base != 0).then_some(new_base),
                size,
            })
    }

    pub fn len(&self) -> usize {
        self.changed.count_ones() as usize
    }

    pub fn is_empty(&self) -> bool {
        self.changed == 0
    }

    /// Records that `bar` moved; later records for the same BAR replace earlier ones.
    fn record(&mut self, bar: usize, old_base: Option<u64>, new_base: Option<u64>, size: u64) {
        if let Some(entry) = self.moves.get_mut(bar) {
            *entry = [old_base.unwrap_or(0), new_base.unwrap_or(0), size];
            self.changed |= 1 << bar;
        }
    }

    /// What the VMM is told after a guest access.
    pub fn into_action(self) -> DeviceAction {
        if self.is_empty() {
            DeviceAction::None
        } else {
            DeviceAction::BarsRelocated(self)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bar(kind: BarKind, base: u64, size: u64) -> PciBar {
        PciBar { kind, base, size }
    }

    #[test]
    fn decode_rules() {
        let m32 = BarKind::Memory32 {
            prefetchable: false,
        };
        let m64 = BarKind::Memory64 { prefetchable: true };
        assert_eq!(
            bar(m32, 0xc000_0000, 0x10_0000).decoded_base(true),
            Some(0xc000_0000)
        );
        assert_eq!(bar(m32, 0xc000_0000, 0x10_0000).decoded_base(false), None);
        assert_eq!(bar(m32, 0, 0x10_0000).decoded_base(true), None);
        // The sizing pattern of a 32-bit BAR ends exactly at 4 GiB.
        assert_eq!(bar(m32, 0xfff0_0000, 0x10_0000).decoded_base(true), None);
        assert_eq!(
            bar(m64, 0xfff0_0000, 0x10_0000).decoded_base(true),
            Some(0xfff0_0000)
        );
        assert_eq!(
            bar(m64, 0x1_0000_0000, 0x1000).decoded_base(true),
            Some(0x1_0000_0000)
        );
        assert_eq!(
            bar(m64, 0xffff_ffff_fff0_0000, 0x10_0000).decoded_base(true),
            None
        );
        assert_eq!(bar(m64, PHYS_ADDR_LIMIT, 0x1000).decoded_base(true), None);
        assert_eq!(bar(BarKind::Io, 0xc000, 0x100).decoded_base(true), None);
        assert_eq!(bar(m32, 0xc000_0000, 0).decoded_base(true), None);
    }

    #[test]
    fn relocations_collect_one_entry_per_bar() {
        let mut relocations = BarRelocations::new(4);
        assert!(relocations.is_empty());
        assert_eq!(relocations.into_action(), DeviceAction::None);
        relocations.record(2, Some(0xc010_0000), None, 0x10_0000);
        relocations.record(9, Some(1), Some(2), 3);
        relocations.record(0, None, Some(0xc000_0000), 0x1000);
        relocations.record(0, None, Some(0xd000_0000), 0x1000);
        assert_eq!(relocations.len(), 2);
        let all: Vec<_> = relocations.iter().collect();
        assert_eq!(
            all,
            [
                BarRelocation {
                    slot: 4,
                    bar: 0,
                    old_base: None,
                    new_base: Some(0xd000_0000),
                    size: 0x1000
                },
                BarRelocation {
                    slot: 4,
                    bar: 2,
                    old_base: Some(0xc010_0000),
                    new_base: None,
                    size: 0x10_0000
                }
            ]
        );
        assert_eq!(
            relocations.into_action(),
            DeviceAction::BarsRelocated(relocations)
        );
        assert!(std::mem::size_of::<DeviceAction>() <= 160);
    }
}
