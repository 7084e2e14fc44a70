//! The `ram` section's records (reference §6): the block list, page and zero-page records with
//! CONTINUE, and the sink/source traits through which pages go straight to and from guest memory.

use std::io::{Read, Write};

use thiserror::Error;

use crate::format::{ram_flags, PAGE_MASK, PAGE_SIZE};
use crate::wire::{WireError, WireReader, WireWrite};

/// One RAM block of the list (`pc.ram`, `microvm.ram`, `pc.bios`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RamBlock {
    pub name: String,
    pub used_length: u64,
}

/// What a sink or source reports when it cannot take or give a page.
#[derive(Debug, Error)]
#[error("{0}")]
pub struct RamAccessError(pub String);

#[derive(Debug, Error)]
pub enum RamError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("RAM: {0}")]
    Access(#[from] RamAccessError),
    #[error("RAM: unknown combination of flags {flags:#x} at byte {offset}")]
    BadFlags { flags: u64, offset: u64 },
    #[error("RAM: a second block list (MEM_SIZE record)")]
    SecondBlockList,
    #[error("RAM: block list: {0}")]
    BadBlockList(String),
    #[error("RAM: page record before the block list")]
    NoBlockList,
    #[error("RAM: CONTINUE before any block was named")]
    ContinueWithoutBlock,
    #[error("RAM: unknown block {0:?}")]
    UnknownBlock(String),
    #[error("RAM: offset {offset:#x} outside block {block:?} of {len:#x} bytes")]
    BadOffset {
        block: String,
        offset: u64,
        len: u64,
    },
    #[error("RAM: the stream declares {declared:#x} bytes of RAM, more than the cap {cap:#x}")]
    TooMuchRam { declared: u64, cap: u64 },
}

/// Receives pages as the reader decodes them. `offset` is page aligned and inside the block.
pub trait RamSink {
    /// The machine name (from the configuration section) and the block list, once, before any page.
    fn begin(&mut self, machine: &str, blocks: &[RamBlock]) -> Result<(), RamAccessError>;
    /// A 4096-byte page.
    fn write_page(&mut self, block: &str, offset: u64, data: &[u8]) -> Result<(), RamAccessError>;
    /// Where the page at `offset` of `block` may be read to directly, which saves the reader a
    /// copy; `None` (the default): the reader hands the page to `write_page` instead. The page
    /// counts as written once the reader has filled the buffer.
    fn page_buffer(
        &mut self,
        _block: &str,
        _offset: u64,
    ) -> Result<Option<&mut [u8]>, RamAccessError> {
        Ok(None)
    }
    /// A page filled with `byte` (QEMU's zero page; 7.2 honours any fill byte).
    fn fill(&mut self, block: &str, offset: u64, byte: u8) -> Result<(), RamAccessError>;
}

/// Gives pages to the writer.
pub trait RamSource {
    fn blocks(&self) -> Vec<RamBlock>;
    /// Fills `buf` (4096 bytes) with the page at `offset` of `block`.
    fn read_page(&mut self, block: &str, offset: u64, buf: &mut [u8])
        -> Result<(), RamAccessError>;
    /// The page at `offset` of `block` where the source keeps it, for a writer that sends it
    /// without copying; `None` (the default) when the source cannot lend pages, which it must
    /// then decline for every page.
    fn page(&self, _block: &str, _offset: u64) -> Option<&[u8]> {
        None
    }
    /// Whether the page at `offset` of `block` is known to be all zeros without reading it (a
    /// hole in the file behind guest RAM): the writer then sends a ZERO record and never touches
    /// the page, which reading would allocate. `false` (the default) when unknown.
    fn known_zero(&self, _block: &str, _offset: u64) -> bool {
        false
    }
}

/// Reader limits on RAM.
#[derive(Debug, Clone, Copy)]
pub struct RamLimits {
    pub max_blocks: usize,
    pub max_total_bytes: u64,
}

impl Default for RamLimits {
    fn default() -> Self {
        RamLimits {
            max_blocks: 64,
            max_total_bytes: 1 << 40,
        }
    }
}

/// Counts of what the reader delivered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RamStats {
    pub pages: u64,
    pub fill_pages: u64,
}

/// Decoding state that lives across START/PART/END chunks (the CONTINUE block carries over).
#[derive(Debug, Default)]
pub struct RamDecoder {
    pub blocks: Vec<RamBlock>,
    have_list: bool,
    last_block: Option<usize>,
    pub stats: RamStats,
}

impl RamDecoder {
    /// Decodes one chunk's records up to and including EOS.
    pub fn read_chunk<R: Read>(
        &mut self,
        wire: &mut WireReader<R>,
        sink: &mut dyn RamSink,
        limits: &RamLimits,
        machine: &str,
    ) -> Result<(), RamError> {
        let mut page = [0u8; PAGE_SIZE];
        loop {
            let record_at = wire.offset();
            let header = wire.be64()?;
            let flags = header & PAGE_MASK;
            let addr = header & !PAGE_MASK;
            match flags & !ram_flags::CONTINUE {
                ram_flags::MEM_SIZE => self.read_block_list(wire, addr, sink, limits, machine)?,
                ram_flags::ZERO => {
                    let block = self.block_for(wire, flags, addr)?;
                    let byte = wire.u8()?;
                    sink.fill(block, addr, byte)?;
                    self.stats.fill_pages += 1;
                }
                ram_flags::PAGE => {
                    self.block_for(wire, flags, addr)?;
                    let block = self.current_name();
                    match sink.page_buffer(block, addr)? {
                        Some(buffer) => wire.read_exact(buffer)?,
                        None => {
                            wire.read_exact(&mut page)?;
                            sink.write_page(block, addr, &page)?;
                        }
                    }
                    self.stats.pages += 1;
                }
                ram_flags::EOS => return Ok(()),
                _ => {
                    return Err(RamError::BadFlags {
                        flags,
                        offset: record_at,
                    })
                }
            }
        }
    }

    fn current_name(&self) -> &str {
        self.last_block
            .and_then(|index| self.blocks.get(index))
            .map(|block| block.name.as_str())
            .unwrap_or_default()
    }

    /// Resolves the block of a page record (named, or the previous one with CONTINUE) and checks
    /// the offset.
    fn block_for<R: Read>(
        &mut self,
        wire: &mut WireReader<R>,
        flags: u64,
        addr: u64,
    ) -> Result<&str, RamError> {
        if !self.have_list {
            return Err(RamError::NoBlockList);
        }
        let index = if flags & ram_flags::CONTINUE != 0 {
            self.last_block.ok_or(RamError::ContinueWithoutBlock)?
        } else {
            let name = wire.counted_bytes()?;
            self.blocks
                .iter()
                .position(|block| block.name.as_bytes() == name.as_slice())
                .ok_or_else(|| {
                    RamError::UnknownBlock(String::from_utf8_lossy(&name).into_owned())
                })?
        };
        self.last_block = Some(index);
        let block = self.blocks.get(index).ok_or(RamError::NoBlockList)?;
        if addr
            .checked_add(PAGE_SIZE as u64)
            .is_none_or(|end| end > block.used_length)
        {
            return Err(RamError::BadOffset {
                block: block.name.clone(),
                offset: addr,
                len: block.used_length,
            });
        }
        Ok(&block.name)
    }

    fn read_block_list<R: Read>(
        &mut self,
        wire: &mut WireReader<R>,
        total: u64,
        sink: &mut dyn RamSink,
        limits: &RamLimits,
        machine: &str,
    ) -> Result<(), RamError> {
        if self.have_list {
            return Err(RamError::SecondBlockList);
        }
        if total > limits.max_total_bytes {
            return Err(RamError::TooMuchRam {
                declared: total,
                cap: limits.max_total_bytes,
            });
        }
        let mut remaining = total;
        while remaining > 0 {
            if self.blocks.len() >= limits.max_blocks {
                return Err(RamError::BadBlockList(format!(
                    "more than {} blocks",
                    limits.max_blocks
                )));
            }
            let name = wire.counted_bytes()?;
            let name = String::from_utf8(name)
                .map_err(|_| RamError::BadBlockList("block name is not UTF-8".into()))?;
            let used_length = wire.be64()?;
            if name.is_empty() || self.blocks.iter().any(|block| block.name == name) {
                return Err(RamError::BadBlockList(format!(
                    "empty or repeated block name {name:?}"
                )));
            }
            if used_length == 0 || used_length & PAGE_MASK != 0 || used_length > remaining {
                return Err(RamError::BadBlockList(format!(
                    "block {name:?} has length {used_length:#x} ({remaining:#x} bytes left of the declared total)"
                )));
            }
            remaining -= used_length;
            self.blocks.push(RamBlock { name, used_length });
        }
        self.have_list = true;
        sink.begin(machine, &self.blocks)?;
        Ok(())
    }
}

/// Whether a page is all zero bytes.
pub fn is_zero_page(page: &[u8]) -> bool {
    let mut chunks = page.chunks_exact(16);
    let words_zero = chunks
        .by_ref()
        .all(|c| u128::from_ne_bytes(c.try_into().unwrap_or([1; 16])) == 0);
    words_zero && chunks.remainder().iter().all(|&b| b == 0)
}

/// Encodes page records, naming a block only when it differs from the previous record's.
#[derive(Debug, Default)]
pub struct RamEncoder {
    last_block: Option<String>,
}

impl RamEncoder {
    pub fn write_block_list<W: Write>(
        &mut self,
        out: &mut W,
        blocks: &[RamBlock],
    ) -> Result<(), WireError> {
        let total: u64 = blocks.iter().map(|block| block.used_length).sum();
        out.put_be64(total | ram_flags::MEM_SIZE)?;
        for block in blocks {
            out.put_counted(&block.name)?;
            out.put_be64(block.used_length)?;
        }
        Ok(())
    }

    fn header<W: Write>(
        &mut self,
        out: &mut W,
        block: &str,
        offset: u64,
        flag: u64,
    ) -> Result<(), WireError> {
        if self.last_block.as_deref() == Some(block) {
            out.put_be64(offset | flag | ram_flags::CONTINUE)
        } else {
            out.put_be64(offset | flag)?;
            out.put_counted(block)?;
            self.last_block = Some(block.to_string());
            Ok(())
        }
    }

    /// A page record: ZERO (fill 0) when the page is all zeros, else PAGE.
    pub fn write_page<W: Write>(
        &mut self,
        out: &mut W,
        block: &str,
        offset: u64,
        page: &[u8],
    ) -> Result<(), WireError> {
        if self.write_page_header(out, block, offset, page)? {
            out.write_all(page)?;
        }
        Ok(())
    }

    /// The record of `page` without its data: the whole ZERO record when the page is all
    /// zeros, else the PAGE header. Returns whether the page's bytes must follow.
    pub fn write_page_header<W: Write>(
        &mut self,
        out: &mut W,
        block: &str,
        offset: u64,
        page: &[u8],
    ) -> Result<bool, WireError> {
        if is_zero_page(page) {
            self.header(out, block, offset, ram_flags::ZERO)?;
            out.put_u8(0)?;
            Ok(false)
        } else {
            self.header(out, block, offset, ram_flags::PAGE)?;
            Ok(true)
        }
    }

    /// The ZERO record of a page known to be all zeros, without looking at it.
    pub fn write_zero_page<W: Write>(
        &mut self,
        out: &mut W,
        block: &str,
        offset: u64,
    ) -> Result<(), WireError> {
        self.header(out, block, offset, ram_flags::ZERO)?;
        out.put_u8(0)
    }

    pub fn write_eos<W: Write>(&mut self, out: &mut W) -> Result<(), WireError> {
        out.put_be64(ram_flags::EOS)
    }
}

/// RAM held in vectors: a sink and a source for tests and small tools. `begin` allocates the
/// declared blocks, which the reader has capped.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct VecRam {
    pub blocks: Vec<(String, Vec<u8>)>,
}

impl VecRam {
    pub fn block(&self, name: &str) -> Option<&[u8]> {
        self.blocks
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, data)| data.as_slice())
    }

    fn page_mut(&mut self, block: &str, offset: u64) -> Result<&mut [u8], RamAccessError> {
        let data = self
            .blocks
            .iter_mut()
            .find(|(n, _)| n == block)
            .map(|(_, data)| data)
            .ok_or_else(|| RamAccessError(format!("no block {block:?}")))?;
        let start =
            usize::try_from(offset).map_err(|_| RamAccessError("offset too large".into()))?;
        data.get_mut(start..start + PAGE_SIZE)
            .ok_or_else(|| RamAccessError(format!("offset {offset:#x} outside {block:?}")))
    }
}

impl RamSink for VecRam {
    fn begin(&mut self, _machine: &str, blocks: &[RamBlock]) -> Result<(), RamAccessError> {
        self.blocks = Vec::with_capacity(blocks.len());
        for block in blocks {
            let len = usize::try_from(block.used_length)
                .map_err(|_| RamAccessError("block too large".into()))?;
            self.blocks.push((block.name.clone(), vec![0; len]));
        }
        Ok(())
    }

    fn write_page(&mut self, block: &str, offset: u64, data: &[u8]) -> Result<(), RamAccessError> {
        self.page_mut(block, offset)?.copy_from_slice(data);
        Ok(())
    }

    fn fill(&mut self, block: &str, offset: u64, byte: u8) -> Result<(), RamAccessError> {
        self.page_mut(block, offset)?.fill(byte);
        Ok(())
    }
}

impl RamSource for VecRam {
    fn blocks(&self) -> Vec<RamBlock> {
        self.blocks
            .iter()
            .map(|(name, data)| RamBlock {
                name: name.clone(),
                used_length: data.len() as u64,
            })
            .collect()
    }

    fn read_page(
        &mut self,
        block: &str,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), RamAccessError> {
        buf.copy_from_slice(self.page_mut(block, offset)?);
        Ok(())
    }
}

/// A sink that only counts (for parsing a stream without keeping its RAM).
#[derive(Debug, Default)]
pub struct DiscardRam {
    pub blocks: Vec<RamBlock>,
}

impl RamSink for DiscardRam {
    fn begin(&mut self, _machine: &str, blocks: &[RamBlock]) -> Result<(), RamAccessError> {
        self.blocks = blocks.to_vec();
        Ok(())
    }
    fn write_page(&mut self, _: &str, _: u64, _: &[u8]) -> Result<(), RamAccessError> {
        Ok(())
    }
    fn fill(&mut self, _: &str, _: u64, _: u8) -> Result<(), RamAccessError> {
        Ok(())
    }
}
