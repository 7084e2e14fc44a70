//! The standard type-0 configuration header, reusable by every device on the bus.
//!
//! Identity and BAR layout are fixed by the device ([`PciHeader`]); what the guest can change is
//! the plain-data [`PciConfigState`]. Reads compose the header from both; writes go through one
//! masked path per register, so read-only fields stay read-only whatever is written, at any
//! offset and width.

use serde::{Deserialize, Serialize};
use snapshot::{Persist, PersistError};

use super::{BarKind, PciBar, PciError, BAR_COUNT, COMMAND_REGISTER};
use crate::pci::MIN_BAR_SIZE;
use crate::RestoreInPlace;

/// 256 bytes of configuration space.
pub const CONFIG_SPACE_DWORDS: usize = 64;

pub const COMMAND_IO_SPACE: u16 = 1 << 0;
pub const COMMAND_MEMORY_SPACE: u16 = 1 << 1;
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
/// The COMMAND bits a guest can set; the others are hard-wired to zero.
pub const COMMAND_WRITABLE_BITS: u16 =
    COMMAND_IO_SPACE | COMMAND_MEMORY_SPACE | COMMAND_BUS_MASTER | COMMAND_INTX_DISABLE;

const REG_ID: usize = 0;
const REG_CLASS: usize = 2;
const REG_HEADER: usize = 3;
const REG_BAR0: usize = 4;
const REG_SUBSYSTEM: usize = 11;
const REG_INTERRUPT: usize = 15;

const BAR_MEMORY_64: u32 = 0b100;
const BAR_PREFETCHABLE: u32 = 0b1000;
const BAR_IO: u32 = 0b1;
const BAR_MEMORY_FLAG_BITS: u32 = 0xf;
const BAR_IO_FLAG_BITS: u32 = 0x3;
/// The PCI spec's smallest I/O BAR, and the largest an x86 I/O BAR may be.
const MIN_IO_BAR_SIZE: u64 = 4;
const MAX_IO_BAR_SIZE: u64 = 256;

/// One BAR of a device's layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BarDefinition {
    pub kind: BarKind,
    /// Power of two; memory BARs at least [`MIN_BAR_SIZE`] so they can be backed by pages.
    pub size: u64,
}

/// What a device is: its identity and BAR layout. Constant for the device's lifetime.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciHeader {
    pub vendor_id: u16,
    pub device_id: u16,
    pub revision: u8,
    pub prog_if: u8,
    pub subclass: u8,
    pub class: u8,
    pub subsystem_vendor_id: u16,
    pub subsystem_id: u16,
    /// 0 = no interrupt, 1..=4 = INTA#..INTD#.
    pub interrupt_pin: u8,
    /// By BAR number; a 64-bit BAR at n leaves n + 1 empty.
    pub bars: [Option<BarDefinition>; BAR_COUNT],
}

impl PciHeader {
    pub fn validate(&self) -> Result<(), PciError> {
        let invalid = |why: String| Err(PciError::InvalidHeader(why));
        if self.vendor_id == 0xffff {
            return invalid("vendor 0xffff means 'no device'".into());
        }
        if self.interrupt_pin > 4 {
            return invalid(format!("interrupt pin {} (max 4)", self.interrupt_pin));
        }
        for (index, bar) in self.bars.iter().enumerate() {
            let Some(BarDefinition { kind, size }) = *bar else {
                continue;
            };
            let (min, max) = match kind {
                BarKind::Memory32 { .. } => (MIN_BAR_SIZE, 1 << 31),
                BarKind::Memory64 { .. } => (MIN_BAR_SIZE, 1 << 63),
                BarKind::Io => (MIN_IO_BAR_SIZE, MAX_IO_BAR_SIZE),
            };
            if !size.is_power_of_two() || size < min || size > max {
                return invalid(format!(
                    "BAR{index} size {size:#x} is not a power of two in {min:#x}..={max:#x}"
                ));
            }
            if matches!(kind, BarKind::Memory64 { .. }) {
                match self.bars.get(index + 1) {
                    Some(None) => {}
                    Some(Some(_)) => {
                        return invalid(format!(
                            "BAR{index} is 64-bit but BAR{} is used",
                            index + 1
                        ))
                    }
                    None => return invalid(format!("BAR{index} is 64-bit but is the last BAR")),
                }
            }
        }
        Ok(())
    }

    /// Whether BAR register `index` is the upper half of the 64-bit BAR below it.
    fn is_upper_half(&self, index: usize) -> bool {
        index
            .checked_sub(1)
            .and_then(|lower| self.bars.get(lower))
            .is_some_and(|bar| {
                matches!(
                    bar,
                    Some(BarDefinition {
                        kind: BarKind::Memory64 { .. },
                        ..
                    })
                )
            })
    }

    /// The bits of BAR register `index` a guest can write: the address bits the BAR's size
    /// leaves free. Writing all ones and reading back therefore yields the size (sizing).
    fn bar_writable_bits(&self, index: usize) -> u32 {
        if self.is_upper_half(index) {
            let size = self.bars[index - 1].map_or(0, |bar| bar.size);
            return (!(size.wrapping_sub(1)) >> 32) as u32;
        }
        let Some(Some(BarDefinition { kind, size })) = self.bars.get(index).copied() else {
            return 0;
        };
        let flag_bits = match kind {
            BarKind::Io => BAR_IO_FLAG_BITS,
            _ => BAR_MEMORY_FLAG_BITS,
        };
        !(size.wrapping_sub(1)) as u32 & !flag_bits
    }

    /// The fixed low bits of BAR register `index` that tell the guest the BAR's kind.
    fn bar_flag_bits(&self, index: usize) -> u32 {
        let Some(Some(BarDefinition { kind, .. })) = self.bars.get(index).copied() else {
            return 0;
        };
        match kind {
            BarKind::Memory32 { prefetchable } => {
                if prefetchable {
                    BAR_PREFETCHABLE
                } else {
                    0
                }
            }
            BarKind::Memory64 { prefetchable } => {
                BAR_MEMORY_64 | if prefetchable { BAR_PREFETCHABLE } else { 0 }
            }
            BarKind::Io => BAR_IO,
        }
    }
}

/// The guest-writable part of the header.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciConfigState {
    pub command: u16,
    pub cache_line_size: u8,
    pub latency_timer: u8,
    pub interrupt_line: u8,
    /// The address bits of each BAR register (flag bits come from the header; unused registers
    /// and bits below a BAR's size are always 0).
    pub bar_addresses: [u32; BAR_COUNT],
}

impl PciConfigState {
    /// Checks the state against the device's header: no bit a guest could not have set.
    pub fn validate(&self, header: &PciHeader) -> Result<(), PersistError> {
        if self.command & !COMMAND_WRITABLE_BITS != 0 {
            return Err(PersistError::invalid(
                "pci config",
                format!("COMMAND {:#06x} has hard-wired bits set", self.command),
            ));
        }
        for (index, &address) in self.bar_addresses.iter().enumerate() {
            let writable = header.bar_writable_bits(index);
            if address & !writable != 0 {
                return Err(PersistError::invalid(
                    "pci config",
                    format!("BAR{index} address bits {address:#010x} outside the writable {writable:#010x}"),
                ));
            }
        }
        Ok(())
    }
}

/// A type-0 configuration header: a device's identity plus its guest-programmed state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciConfigSpace {
    header: PciHeader,
    state: PciConfigState,
}

impl PciConfigSpace {
    /// A header in its power-on state.
    pub fn new(header: PciHeader) -> Result<Self, PciError> {
        header.validate()?;
        Ok(PciConfigSpace {
            header,
            state: PciConfigState::default(),
        })
    }

    /// For headers written into this crate as constants (the host bridge): validated by unit
    /// tests instead of at every construction, so construction cannot fail.
    pub(super) fn with_constant_header(header: PciHeader) -> Self {
        debug_assert_eq!(header.validate(), Ok(()));
        PciConfigSpace {
            header,
            state: PciConfigState::default(),
        }
    }

    pub fn header(&self) -> &PciHeader {
        &self.header
    }

    pub fn command(&self) -> u16 {
        self.state.command
    }

    pub fn memory_enabled(&self) -> bool {
        self.state.command & COMMAND_MEMORY_SPACE != 0
    }

    pub fn interrupt_line(&self) -> u8 {
        self.state.interrupt_line
    }

    /// Config dword `register`; registers past the header read 0, past 256 bytes all ones.
    pub fn read(&self, register: usize) -> u32 {
        let header = &self.header;
        let state = &self.state;
        match register {
            REG_ID => u32::from(header.device_id) << 16 | u32::from(header.vendor_id),
            // STATUS: no capabilities list, no error ever latched.
            COMMAND_REGISTER => u32::from(state.command),
            REG_CLASS => {
                u32::from(header.class) << 24
                    | u32::from(header.subclass) << 16
                    | u32::from(header.prog_if) << 8
                    | u32::from(header.revision)
            }
            // BIST 0, header type 0 (single function), latency timer, cache line size.
            REG_HEADER => u32::from(state.latency_timer) << 8 | u32::from(state.cache_line_size),
            REG_BAR0..REG_SUBSYSTEM if register - REG_BAR0 < BAR_COUNT => {
                let index = register - REG_BAR0;
                state.bar_addresses[index] | header.bar_flag_bits(index)
            }
            REG_SUBSYSTEM => {
                u32::from(header.subsystem_id) << 16 | u32::from(header.subsystem_vendor_id)
            }
            REG_INTERRUPT => u32::from(header.interrupt_pin) << 8 | u32::from(state.interrupt_line),
            register if register < CONFIG_SPACE_DWORDS => 0,
            _ => u32::MAX,
        }
    }

    /// Writes the bytes of `value` selected by `byte_mask` to dword `register`. Read-only bits
    /// and registers ignore the write.
    pub fn write(&mut self, register: usize, byte_mask: u8, value: u32) {
        let lanes = byte_lanes(byte_mask);
        if lanes == 0 {
            return;
        }
        let merged = self.read(register) & !lanes | value & lanes;
        let state = &mut self.state;
        match register {
            // STATUS bits are read-only or write-one-to-clear, and none is ever set.
            COMMAND_REGISTER => state.command = merged as u16 & COMMAND_WRITABLE_BITS,
            REG_HEADER => {
                state.cache_line_size = merged as u8;
                state.latency_timer = (merged >> 8) as u8;
            }
            REG_BAR0..REG_SUBSYSTEM if register - REG_BAR0 < BAR_COUNT => {
                let index = register - REG_BAR0;
                state.bar_addresses[index] = merged & self.header.bar_writable_bits(index);
            }
            REG_INTERRUPT => state.interrupt_line = merged as u8,
            _ => {}
        }
    }

    /// The BARs as programmed, by BAR number.
    pub fn bars(&self) -> [Option<PciBar>; BAR_COUNT] {
        let mut bars = [None; BAR_COUNT];
        for (index, definition) in self.header.bars.iter().enumerate() {
            let Some(BarDefinition { kind, size }) = *definition else {
                continue;
            };
            let low = u64::from(self.state.bar_addresses[index]);
            let base = match kind {
                BarKind::Memory64 { .. } => {
                    let high = self
                        .state
                        .bar_addresses
                        .get(index + 1)
                        .copied()
                        .unwrap_or(0);
                    u64::from(high) << 32 | low
                }
                _ => low,
            };
            bars[index] = Some(PciBar { kind, base, size });
        }
        bars
    }
}

/// Expands a byte mask (bit n = byte n) to a bit mask.
fn byte_lanes(byte_mask: u8) -> u32 {
    (0..4)
        .filter(|lane| byte_mask & (1 << lane) != 0)
        .fold(0, |lanes, lane| lanes | 0xff << (8 * lane))
}

impl Persist for PciConfigSpace {
    type State = PciConfigState;
    type ConstructorArgs = PciHeader;

    fn save(&self) -> PciConfigState {
        self.state.clone()
    }

    fn restore(header: PciHeader, state: &PciConfigState) -> Result<Self, PersistError> {
        header
            .validate()
            .map_err(|error| PersistError::invalid("pci header", error.to_string()))?;
        state.validate(&header)?;
        Ok(PciConfigSpace {
            header,
            state: state.clone(),
        })
    }
}

impl RestoreInPlace for PciConfigSpace {
    fn restore_in_place(&mut self, state: &PciConfigState) -> Result<(), PersistError> {
        state.validate(&self.header)?;
        self.state.clone_from(state);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::TestRng;

    const MEM32: BarKind = BarKind::Memory32 {
        prefetchable: false,
    };
    const MEM64_PREFETCH: BarKind = BarKind::Memory64 { prefetchable: true };

    /// The snapshot device's layout, plus an I/O BAR in the free register.
    fn test_header() -> PciHeader {
        PciHeader {
            vendor_id: 0x1234,
            device_id: 0xf987,
            revision: 1,
            prog_if: 0,
            subclass: 0,
            class: 0xff,
            subsystem_vendor_id: 0x1af4,
            subsystem_id: 0x1100,
            interrupt_pin: 1,
            bars: [
                Some(BarDefinition {
                    kind: MEM32,
                    size: 0x10_0000,
                }),
                Some(BarDefinition {
                    kind: BarKind::Io,
                    size: 0x20,
                }),
                Some(BarDefinition {
                    kind: MEM64_PREFETCH,
                    size: 0x10_0000,
                }),
                None,
                Some(BarDefinition {
                    kind: MEM64_PREFETCH,
                    size: 0x1_0000,
                }),
                None,
            ],
        }
    }

    fn config() -> PciConfigSpace {
        PciConfigSpace::new(test_header()).unwrap()
    }

    fn size_bar(config: &mut PciConfigSpace, register: usize) -> u32 {
        let saved = config.read(register);
        config.write(register, ALL, u32::MAX);
        let mask = config.read(register);
        config.write(register, ALL, saved);
        assert_eq!(config.read(register), saved, "restoring after sizing");
        mask
    }

    const ALL: u8 = 0b1111;

    #[test]
    fn identity_registers() {
        let config = config();
        assert_eq!(config.read(0), 0xf987_1234);
        assert_eq!(config.read(2), 0xff00_0001);
        assert_eq!(config.read(3) >> 16, 0, "header type 0, BIST 0");
        assert_eq!(config.read(11), 0x1100_1af4);
        assert_eq!(config.read(15), 0x0000_0100, "INTA#, line 0");
        assert_eq!(config.read(12), 0, "no expansion ROM");
        assert_eq!(config.read(13), 0, "no capabilities");
        assert_eq!(config.read(40), 0);
        assert_eq!(config.read(64), u32::MAX);
        assert_eq!(config.read(usize::MAX), u32::MAX);
    }

    #[test]
    fn bar_sizing_protocol() {
        let mut config = config();
        // BAR0: 32-bit, 1 MiB, non-prefetchable.
        assert_eq!(size_bar(&mut config, 4), 0xfff0_0000);
        // BAR1: 32-byte I/O.
        assert_eq!(size_bar(&mut config, 5), 0xffff_ffe1);
        // BAR2/3: 64-bit prefetchable 1 MiB.
        assert_eq!(size_bar(&mut config, 6), 0xfff0_000c);
        assert_eq!(size_bar(&mut config, 7), 0xffff_ffff);
        // BAR4/5: 64-bit prefetchable 64 KiB.
        assert_eq!(size_bar(&mut config, 8), 0xffff_000c);
        assert_eq!(size_bar(&mut config, 9), 0xffff_ffff);
        // Linux's decoding of a mask: lowest set address bit.
        let mask = size_bar(&mut config, 8) & !0xf;
        assert_eq!(mask & mask.wrapping_neg(), 0x1_0000);
    }

    #[test]
    fn bars_report_programmed_addresses() {
        let mut config = config();
        config.write(4, ALL, 0xc012_3456);
        config.write(5, ALL, 0xc0e3);
        config.write(6, ALL, 0xd000_0000);
        config.write(7, ALL, 0x1);
        let bars = config.bars();
        assert_eq!(
            bars[0],
            Some(PciBar {
                kind: MEM32,
                base: 0xc010_0000,
                size: 0x10_0000
            })
        );
        assert_eq!(bars[1].map(|bar| bar.base), Some(0xc0e0));
        assert_eq!(bars[2].map(|bar| bar.base), Some(0x1_d000_0000));
        assert_eq!(bars[3], None);
        assert_eq!(bars[4].map(|bar| bar.base), Some(0));
        assert_eq!(config.read(4), 0xc010_0000);
        assert_eq!(config.read(6), 0xd000_000c);
    }

    #[test]
    fn byte_writes_merge_into_bars() {
        let mut config = config();
        config.write(4, 0b1000, 0xc100_0000);
        config.write(4, 0b0100, 0x0020_0000);
        assert_eq!(config.read(4), 0xc120_0000);
        // Bytes below the BAR's size are not writable.
        config.write(4, 0b0011, 0xffff);
        assert_eq!(config.read(4), 0xc120_0000);
    }

    #[test]
    fn command_and_status() {
        let mut config = config();
        config.write(1, ALL, u32::MAX);
        assert_eq!(config.read(1), u32::from(COMMAND_WRITABLE_BITS));
        assert!(config.memory_enabled());
        config.write(1, 0b0001, 0);
        assert_eq!(config.command(), COMMAND_INTX_DISABLE);
        // A write to STATUS alone leaves COMMAND alone.
        config.write(1, 0b1100, u32::MAX);
        assert_eq!(config.command(), COMMAND_INTX_DISABLE);
    }

    #[test]
    fn writable_scalars_and_read_only_identity() {
        let mut config = config();
        for register in [0, 2, 10, 11, 12, 13, 14, 20, 63, 64, 1000] {
            config.write(register, ALL, 0xdead_beef);
        }
        config.write(3, ALL, 0xffff_ffff);
        config.write(15, ALL, 0xffff_ff0b);
        assert_eq!(config.read(0), 0xf987_1234);
        assert_eq!(config.read(2), 0xff00_0001);
        assert_eq!(
            config.read(3),
            0x0000_ffff,
            "cache line size and latency timer"
        );
        assert_eq!(config.read(15), 0x0000_010b, "line writable, pin not");
        assert_eq!(config.interrupt_line(), 0x0b);
        assert_eq!(config.read(20), 0);
    }

    #[test]
    fn header_validation() {
        assert_eq!(test_header().validate(), Ok(()));
        let mut header = test_header();
        header.bars[3] = header.bars[0];
        assert!(
            header.validate().is_err(),
            "upper half of a 64-bit BAR in use"
        );
        let mut header = test_header();
        header.bars[5] = header.bars[4];
        header.bars[4] = None;
        assert!(
            header.validate().is_err(),
            "64-bit BAR in the last register"
        );
        for size in [0, 0x800, 0x1_8000, 1 << 32] {
            let mut header = test_header();
            header.bars[0] = Some(BarDefinition { kind: MEM32, size });
            assert!(header.validate().is_err(), "size {size:#x}");
        }
        let mut header = test_header();
        header.bars[1] = Some(BarDefinition {
            kind: BarKind::Io,
            size: 0x200,
        });
        assert!(header.validate().is_err());
        let mut header = test_header();
        header.interrupt_pin = 5;
        assert!(header.validate().is_err());
        let mut header = test_header();
        header.vendor_id = 0xffff;
        assert!(PciConfigSpace::new(header).is_err());
    }

    #[test]
    fn state_round_trips_and_rejects_impossible_values() {
        let mut config = config();
        config.write(1, ALL, 0x6);
        config.write(4, ALL, 0xc000_0000);
        config.write(8, ALL, 0xc020_0000);
        config.write(15, 0b1, 11);
        let saved = config.save();
        let encoded = postcard::to_stdvec(&saved).unwrap();
        assert_eq!(
            postcard::from_bytes::<PciConfigState>(&encoded).unwrap(),
            saved
        );
        let rebuilt = PciConfigSpace::restore(test_header(), &saved).unwrap();
        assert_eq!(rebuilt, config);

        // Cold boot is a restore from the default state.
        let cold = PciConfigSpace::restore(test_header(), &PciConfigState::default()).unwrap();
        assert_eq!(cold, PciConfigSpace::new(test_header()).unwrap());

        let mut bad = saved.clone();
        bad.command = 0x8000;
        assert!(config.restore_in_place(&bad).is_err());
        let mut bad = saved.clone();
        bad.bar_addresses[0] = 0xc000_1000;
        assert!(config.restore_in_place(&bad).is_err(), "below the BAR size");
        let mut above_4g = saved.clone();
        above_4g.bar_addresses[3] = 1;
        assert!(
            config.restore_in_place(&above_4g).is_ok(),
            "upper half is writable"
        );
        let mut bad = saved.clone();
        bad.bar_addresses[5] = 0;
        bad.bar_addresses[1] = 0x3;
        assert!(config.restore_in_place(&bad).is_err(), "I/O flag bits");
        config.restore_in_place(&saved).unwrap();
        assert_eq!(config, rebuilt);
    }

    #[test]
    fn random_writes_at_every_register_keep_identity_and_a_valid_state() {
        let mut config = config();
        let mut rng = TestRng::new(0xcf8);
        for _ in 0..100_000 {
            let register = (rng.next_u64() % 70) as usize;
            let byte_mask = (rng.next_u64() % 16) as u8;
            config.write(register, byte_mask, rng.next_config_value());
            let _ = config.read(register);
            assert_eq!(config.read(0), 0xf987_1234);
            assert_eq!(config.read(2), 0xff00_0001);
            assert_eq!(config.read(4) & 0xf, 0);
            assert_eq!(config.read(5) & 0x3, 1);
            assert_eq!(config.read(6) & 0xf, 0xc);
            assert_eq!(config.read(4) & 0x000f_ffff, 0);
            config.save().validate(config.header()).unwrap();
        }
    }
}
