//! Where each RAM block of a stream lives in guest-physical memory, and sink/source adapters that
//! move pages straight between the stream and a guest memory given by address.

use thiserror::Error;

use super::MachineType;
use crate::format::PAGE_SIZE;
use crate::ram::{RamAccessError, RamBlock, RamSink, RamSource};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum RamMapError {
    #[error("machine {0:?} is not supported (microvm, pc-i440fx-7.2 or pc-q35-7.2)")]
    UnknownMachine(String),
    #[error("the stream has no {0:?} block")]
    NoMainBlock(&'static str),
    #[error("RAM block {0:?} is not one of this machine's (a device snapvmm does not have)")]
    UnknownBlock(String),
    #[error("guest RAM layout {0:?} is not the machine's (low RAM from 0, the rest at 4 GiB)")]
    Layout(Vec<(u64, u64)>),
}

/// What happens to a block's pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// Guest RAM: block offset ranges at guest-physical addresses.
    Ram(Vec<RamRange>),
    /// Firmware at `gpa`: microvm's qboot at 0xF0000 (over RAM: the RAM pages under it are
    /// dropped, as the guest sees the firmware), pc/q35's BIOS just below 4 GiB (outside RAM: the
    /// VMM maps it, see `firmware_regions`).
    Firmware { gpa: u64 },
    /// Parsed and dropped (firmware and fw_cfg blobs the guest already consumed, see README.md).
    Dropped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamRange {
    pub block_offset: u64,
    pub gpa: u64,
    pub len: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockPlacement {
    pub block: String,
    pub len: u64,
    pub placement: Placement,
}

const FOUR_GIB: u64 = 1 << 32;
const FIRST_MIB: u64 = 1 << 20;

/// A guest RAM region, in the order its pages appear in RAM (and in snapshot memory files).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryRegionState {
    pub guest_phys_addr: u64,
    pub len: u64,
}

/// The guest RAM regions for `ram_bytes` of main block.
pub fn guest_regions(machine: MachineType, ram_bytes: u64) -> Vec<MemoryRegionState> {
    let low = machine.low_ram(ram_bytes);
    let mut regions = vec![MemoryRegionState {
        guest_phys_addr: 0,
        len: low,
    }];
    if ram_bytes > low {
        regions.push(MemoryRegionState {
            guest_phys_addr: FOUR_GIB,
            len: ram_bytes - low,
        });
    }
    regions
}

fn ram_ranges(machine: MachineType, ram_bytes: u64) -> Vec<RamRange> {
    let mut offset = 0;
    guest_regions(machine, ram_bytes)
        .into_iter()
        .map(|region| {
            let range = RamRange {
                block_offset: offset,
                gpa: region.guest_phys_addr,
                len: region.len,
            };
            offset += region.len;
            range
        })
        .collect()
}

/// Places every block of a stream of `machine`.
pub fn place_blocks(
    machine: MachineType,
    blocks: &[RamBlock],
) -> Result<Vec<BlockPlacement>, RamMapError> {
    let main = machine.main_ram_block();
    if !blocks.iter().any(|b| b.name == main) {
        return Err(RamMapError::NoMainBlock(main));
    }
    blocks
        .iter()
        .map(|block| {
            let placement = if block.name == main {
                Placement::Ram(ram_ranges(machine, block.used_length))
            } else if block.name == "pc.bios"
                && machine == MachineType::Microvm
                && block.used_length <= FIRST_MIB / 2
            {
                Placement::Firmware {
                    gpa: FIRST_MIB - block.used_length,
                }
            } else if block.name == "pc.bios"
                && machine != MachineType::Microvm
                && block.used_length <= FOUR_GIB / 16
            {
                // The reset alias just below 4 GiB; the low copy at 0xE0000-0xFFFFF is pc.ram
                // shadowed by the chipset (PAM), so it is in the main block already.
                Placement::Firmware {
                    gpa: FOUR_GIB - block.used_length,
                }
            } else if block.name == "pc.rom" || block.name.starts_with("/rom@etc/") {
                Placement::Dropped
            } else {
                return Err(RamMapError::UnknownBlock(block.name.clone()));
            };
            Ok(BlockPlacement {
                block: block.name.clone(),
                len: block.used_length,
                placement,
            })
        })
        .collect()
}

/// Firmware placed outside guest RAM (memory the VMM maps in addition to RAM).
pub fn firmware_regions(
    machine: MachineType,
    placements: &[BlockPlacement],
) -> Vec<MemoryRegionState> {
    let ram_bytes = placements
        .iter()
        .find(|p| p.block == machine.main_ram_block())
        .map_or(0, |p| p.len);
    let ram = guest_regions(machine, ram_bytes);
    placements
        .iter()
        .filter_map(|p| match p.placement {
            Placement::Firmware { gpa } => Some(MemoryRegionState {
                guest_phys_addr: gpa,
                len: p.len,
            }),
            _ => None,
        })
        .filter(|fw| {
            !ram.iter().any(|r| {
                fw.guest_phys_addr >= r.guest_phys_addr
                    && fw.guest_phys_addr < r.guest_phys_addr + r.len
            })
        })
        .collect()
}

/// Guest memory addressed by guest-physical address (the VMM's guest RAM).
pub trait GuestMemory {
    /// Called once, before any page, with the RAM regions the stream's main block needs and the
    /// firmware regions outside RAM (e.g. pc's BIOS below 4 GiB; map them read-only or as RAM).
    fn prepare(
        &mut self,
        ram: &[MemoryRegionState],
        firmware: &[MemoryRegionState],
    ) -> Result<(), RamAccessError>;
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), RamAccessError>;
    fn fill(&mut self, gpa: u64, len: usize, byte: u8) -> Result<(), RamAccessError>;
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), RamAccessError>;
    /// The 4096 bytes the page at `gpa` is to be read into directly (see
    /// [`RamSink::page_buffer`]); `None` (the default): pages come through `write`.
    fn page_buffer(&mut self, _gpa: u64) -> Result<Option<&mut [u8]>, RamAccessError> {
        Ok(None)
    }
    /// The 4096 bytes at `gpa` where the memory keeps them (see [`RamSource::page`]); `None`
    /// (the default): pages are read with `read`.
    fn page(&self, _gpa: u64) -> Option<&[u8]> {
        None
    }
    /// Whether the page at `gpa` is known to be zero without reading it (see
    /// [`RamSource::known_zero`]); `false` (the default) when unknown.
    fn known_zero(&self, _gpa: u64) -> bool {
        false
    }
}

/// A [`RamSink`] that writes a stream's pages into guest memory by placement.
pub struct GuestRamSink<'a> {
    memory: &'a mut dyn GuestMemory,
    placements: Vec<BlockPlacement>,
    firmware_windows: Vec<(u64, u64)>,
    machine: Option<MachineType>,
    /// With zero-filled fresh memory: one bit per main-block page written so far, so a zero page
    /// needs a write only when an earlier record of the stream put data there.
    written: Option<Vec<u64>>,
}

impl<'a> GuestRamSink<'a> {
    pub fn new(memory: &'a mut dyn GuestMemory) -> Self {
        GuestRamSink {
            memory,
            placements: Vec::new(),
            firmware_windows: Vec::new(),
            machine: None,
            written: None,
        }
    }

    /// The guest memory `prepare` sets up is zero-filled (fresh anonymous memory): zero pages of
    /// the main block are then not written unless the stream wrote that page before, which keeps
    /// untouched guest memory unallocated. Costs one bit per page of the declared RAM.
    pub fn with_zeroed_memory(mut self) -> Self {
        self.written = Some(Vec::new());
        self
    }

    /// Marks a main-block page written; returns whether it had been written before.
    fn mark_written(&mut self, block: &str, offset: u64) -> bool {
        let main = self.machine.map(|m| m.main_ram_block());
        let Some(bits) = self.written.as_mut().filter(|_| main == Some(block)) else {
            return true;
        };
        let page = (offset / PAGE_SIZE as u64) as usize;
        match bits.get_mut(page / 64) {
            Some(word) => {
                let before = *word & (1 << (page % 64)) != 0;
                *word |= 1 << (page % 64);
                before
            }
            None => true,
        }
    }

    pub fn machine(&self) -> Option<MachineType> {
        self.machine
    }

    pub fn placements(&self) -> &[BlockPlacement] {
        &self.placements
    }

    /// The guest-physical address of a page, or `None` when the page is dropped.
    fn target(&self, block: &str, offset: u64) -> Result<Option<u64>, RamAccessError> {
        let placement = self
            .placements
            .iter()
            .find(|p| p.block == block)
            .ok_or_else(|| RamAccessError(format!("no placement for block {block:?}")))?;
        Ok(match &placement.placement {
            Placement::Ram(ranges) => ranges
                .iter()
                .find(|r| offset >= r.block_offset && offset < r.block_offset + r.len)
                .map(|r| r.gpa + (offset - r.block_offset))
                .filter(|gpa| {
                    !self
                        .firmware_windows
                        .iter()
                        .any(|(start, end)| gpa >= start && gpa < end)
                }),
            Placement::Firmware { gpa } => Some(gpa + offset),
            Placement::Dropped => None,
        })
    }
}

impl RamSink for GuestRamSink<'_> {
    fn begin(&mut self, machine: &str, blocks: &[RamBlock]) -> Result<(), RamAccessError> {
        let machine = MachineType::from_stream_name(machine).ok_or_else(|| {
            RamAccessError(RamMapError::UnknownMachine(machine.into()).to_string())
        })?;
        self.placements =
            place_blocks(machine, blocks).map_err(|e| RamAccessError(e.to_string()))?;
        self.firmware_windows = self
            .placements
            .iter()
            .filter_map(|p| match p.placement {
                Placement::Firmware { gpa } => Some((gpa, gpa + p.len)),
                _ => None,
            })
            .collect();
        self.machine = Some(machine);
        let main = blocks
            .iter()
            .find(|b| b.name == machine.main_ram_block())
            .map_or(0, |b| b.used_length);
        let firmware = firmware_regions(machine, &self.placements);
        let ram = guest_regions(machine, main);
        if let Some(bits) = self.written.as_mut() {
            *bits = vec![0; (main / PAGE_SIZE as u64).div_ceil(64) as usize];
        }
        // Only firmware windows inside RAM hide RAM pages.
        self.firmware_windows
            .retain(|(start, _)| !firmware.iter().any(|f| f.guest_phys_addr == *start));
        self.memory.prepare(&ram, &firmware)
    }

    fn write_page(&mut self, block: &str, offset: u64, data: &[u8]) -> Result<(), RamAccessError> {
        let Some(gpa) = self.target(block, offset)? else {
            return Ok(());
        };
        self.mark_written(block, offset);
        self.memory.write(gpa, data)
    }

    fn page_buffer(
        &mut self,
        block: &str,
        offset: u64,
    ) -> Result<Option<&mut [u8]>, RamAccessError> {
        let Some(gpa) = self.target(block, offset)? else {
            return Ok(None);
        };
        self.mark_written(block, offset);
        self.memory.page_buffer(gpa)
    }

    fn fill(&mut self, block: &str, offset: u64, byte: u8) -> Result<(), RamAccessError> {
        let Some(gpa) = self.target(block, offset)? else {
            return Ok(());
        };
        let written_before = self.mark_written(block, offset);
        if byte == 0 && !written_before {
            return Ok(());
        }
        self.memory.fill(gpa, PAGE_SIZE, byte)
    }
}

/// A [`RamSource`] with one block, the machine's main RAM block, read from guest memory laid out
/// as `regions` (which must be the machine's layout for their total size).
pub struct GuestRamSource<'a> {
    memory: &'a mut dyn GuestMemory,
    block: RamBlock,
    ranges: Vec<RamRange>,
}

impl<'a> GuestRamSource<'a> {
    pub fn new(
        machine: MachineType,
        regions: &[MemoryRegionState],
        memory: &'a mut dyn GuestMemory,
    ) -> Result<Self, RamMapError> {
        let total: u64 = regions.iter().map(|r| r.len).sum();
        let mut sorted: Vec<(u64, u64)> =
            regions.iter().map(|r| (r.guest_phys_addr, r.len)).collect();
        sorted.sort_unstable();
        let expected: Vec<(u64, u64)> = guest_regions(machine, total)
            .iter()
            .map(|r| (r.guest_phys_addr, r.len))
            .collect();
        if sorted != expected || total == 0 {
            return Err(RamMapError::Layout(sorted));
        }
        Ok(GuestRamSource {
            memory,
            block: RamBlock {
                name: machine.main_ram_block().to_string(),
                used_length: total,
            },
            ranges: ram_ranges(machine, total),
        })
    }

    pub fn block(&self) -> &RamBlock {
        &self.block
    }

    /// The guest-physical address of `offset` in the block.
    fn gpa(&self, offset: u64) -> Option<u64> {
        self.ranges
            .iter()
            .find(|r| offset >= r.block_offset && offset < r.block_offset + r.len)
            .map(|r| r.gpa + (offset - r.block_offset))
    }
}

impl RamSource for GuestRamSource<'_> {
    fn blocks(&self) -> Vec<RamBlock> {
        vec![self.block.clone()]
    }

    fn read_page(
        &mut self,
        block: &str,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), RamAccessError> {
        if block != self.block.name {
            return Err(RamAccessError(format!("no block {block:?}")));
        }
        let gpa = self
            .gpa(offset)
            .ok_or_else(|| RamAccessError(format!("offset {offset:#x} outside {block:?}")))?;
        self.memory.read(gpa, buf)
    }

    fn page(&self, block: &str, offset: u64) -> Option<&[u8]> {
        if block != self.block.name {
            return None;
        }
        self.memory.page(self.gpa(offset)?)
    }

    fn known_zero(&self, block: &str, offset: u64) -> bool {
        block == self.block.name
            && self
                .gpa(offset)
                .is_some_and(|gpa| self.memory.known_zero(gpa))
    }
}

/// Guest memory in a vector per region (tests and small tools).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct VecGuestMemory {
    pub regions: Vec<(u64, Vec<u8>)>,
}

impl VecGuestMemory {
    fn slice_mut(&mut self, gpa: u64, len: usize) -> Result<&mut [u8], RamAccessError> {
        for (base, data) in &mut self.regions {
            if gpa >= *base && gpa + len as u64 <= *base + data.len() as u64 {
                let start = (gpa - *base) as usize;
                return data
                    .get_mut(start..start + len)
                    .ok_or_else(|| RamAccessError("out of range".into()));
            }
        }
        Err(RamAccessError(format!(
            "{gpa:#x}+{len:#x} is not guest RAM"
        )))
    }
}

impl GuestMemory for VecGuestMemory {
    fn prepare(
        &mut self,
        ram: &[MemoryRegionState],
        firmware: &[MemoryRegionState],
    ) -> Result<(), RamAccessError> {
        self.regions = ram
            .iter()
            .chain(firmware)
            .map(|r| {
                usize::try_from(r.len)
                    .map(|len| (r.guest_phys_addr, vec![0u8; len]))
                    .map_err(|_| RamAccessError("region too large".into()))
            })
            .collect::<Result<_, _>>()?;
        Ok(())
    }
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), RamAccessError> {
        self.slice_mut(gpa, data.len())?.copy_from_slice(data);
        Ok(())
    }
    fn fill(&mut self, gpa: u64, len: usize, byte: u8) -> Result<(), RamAccessError> {
        self.slice_mut(gpa, len)?.fill(byte);
        Ok(())
    }
    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> Result<(), RamAccessError> {
        buf.copy_from_slice(self.slice_mut(gpa, buf.len())?);
        Ok(())
    }
}
