//! Streaming writer of a QEMU 7.2 stream: header, configuration, the ram section (START with the
//! block list, PART chunks of pages, END), FULL device sections with footers, EOF and the
//! VMDESCRIPTION trailer that QEMU's `scripts/analyze-migration.py` reads.

use std::io::{BufWriter, Write};

use serde_json::{json, Value};
use thiserror::Error;

use crate::format::{self, PAGE_SIZE, RAM_IDSTR, RAM_VERSION};
use crate::page_batch::PageBatch;
use crate::positional_output::PositionalOutput;
use crate::ram::{RamAccessError, RamBlock, RamEncoder, RamSource};
use crate::reader::Section;
use crate::vmstate::BodyWriter;
use crate::wire::{WireError, WireWrite};

/// Threads that write a stream's pages into a file (`write_ram_at`) while the encoder goes on.
/// One: writes to one file serialize on its inode lock, and a second writer only spun on it
/// (`rwsem_spin_on_owner`, 13% of an export with two, on a CPU the encoder needed).
pub const PARALLEL_WRITERS: usize = 1;

/// Pages per PART chunk (QEMU's own chunks are bandwidth-limited; any size loads).
pub const DEFAULT_PAGES_PER_CHUNK: usize = 8192;

#[derive(Debug, Error)]
pub enum WriteError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("RAM source: {0}")]
    Ram(#[from] RamAccessError),
    #[error("{0}")]
    Invalid(String),
}

/// Writes one stream. Call `write_ram` (once, first) then `write_section` for each device, then
/// `finish`.
pub struct StreamWriter<W: Write> {
    out: BufWriter<Counted<W>>,
    ram_encoder: RamEncoder,
    ram_written: bool,
    devices: Vec<Value>,
    pages_per_chunk: usize,
}

impl<W: Write> StreamWriter<W> {
    /// Writes the header and the configuration section naming `machine`.
    pub fn new(out: W, machine: &str) -> Result<Self, WriteError> {
        let mut out = BufWriter::with_capacity(
            1 << 20,
            Counted {
                inner: out,
                bytes: 0,
            },
        );
        out.put_be32(format::MAGIC)?;
        out.put_be32(format::VERSION)?;
        out.put_u8(format::CONFIGURATION)?;
        out.put_be32(machine.len() as u32)?;
        out.write_all(machine.as_bytes()).map_err(WireError::from)?;
        Ok(StreamWriter {
            out,
            ram_encoder: RamEncoder::default(),
            ram_written: false,
            devices: Vec::new(),
            pages_per_chunk: DEFAULT_PAGES_PER_CHUNK,
        })
    }

    /// Bytes of the stream so far (written or buffered).
    fn position(&self) -> u64 {
        self.out.get_ref().bytes + self.out.buffer().len() as u64
    }

    pub fn set_pages_per_chunk(&mut self, pages: usize) {
        self.pages_per_chunk = pages.max(1);
    }

    fn full_header(
        &mut self,
        kind: u8,
        section_id: u32,
        idstr: &str,
        instance: u32,
        version: u32,
    ) -> Result<(), WriteError> {
        if idstr.is_empty() || idstr.len() > 255 {
            return Err(WriteError::Invalid(format!(
                "idstr {idstr:?} must be 1..=255 bytes"
            )));
        }
        self.out.put_u8(kind)?;
        self.out.put_be32(section_id)?;
        self.out.put_counted(idstr)?;
        self.out.put_be32(instance)?;
        self.out.put_be32(version)?;
        Ok(())
    }

    fn footer(&mut self, section_id: u32) -> Result<(), WriteError> {
        self.out.put_u8(format::SECTION_FOOTER)?;
        self.out.put_be32(section_id)?;
        Ok(())
    }

    /// The ram section with id `section_id` (not 0): START with `blocks` listed, every page of
    /// them from `source` in PART chunks, and END. `blocks` may be a subset of the source's.
    pub fn write_ram(
        &mut self,
        section_id: u32,
        blocks: &[RamBlock],
        source: &mut dyn RamSource,
    ) -> Result<(), WriteError> {
        self.write_ram_to(section_id, blocks, source, None)
    }

    /// `write_ram` into a file that the writer's output also goes to: the pages, when the source
    /// lends them, are written at their offsets by [`PARALLEL_WRITERS`] threads while the
    /// encoder goes on.
    pub fn write_ram_at(
        &mut self,
        section_id: u32,
        blocks: &[RamBlock],
        source: &mut dyn RamSource,
        file: &dyn PositionalOutput,
    ) -> Result<(), WriteError> {
        self.write_ram_to(section_id, blocks, source, Some(file))
    }

    fn write_ram_to(
        &mut self,
        section_id: u32,
        blocks: &[RamBlock],
        source: &mut dyn RamSource,
        file: Option<&dyn PositionalOutput>,
    ) -> Result<(), WriteError> {
        if section_id == 0 || self.ram_written {
            return Err(WriteError::Invalid(
                "ram needs a non-zero section id and is written once".into(),
            ));
        }
        for block in blocks {
            if block.name.is_empty()
                || block.name.len() > 255
                || block.used_length % PAGE_SIZE as u64 != 0
            {
                return Err(WriteError::Invalid(format!("bad RAM block {block:?}")));
            }
        }
        self.ram_written = true;
        self.full_header(format::SECTION_START, section_id, RAM_IDSTR, 0, RAM_VERSION)?;
        self.ram_encoder.write_block_list(&mut self.out, blocks)?;
        self.ram_encoder.write_eos(&mut self.out)?;
        self.footer(section_id)?;

        let lends_pages = blocks
            .iter()
            .find(|block| block.used_length > 0)
            .is_none_or(|block| source.page(&block.name, 0).is_some());
        if let (true, Some(file)) = (lends_pages, file) {
            self.write_lent_pages_at(section_id, blocks, source, file)?;
        } else if lends_pages {
            let out = &mut self.out;
            encode_lent_pages(
                &mut self.ram_encoder,
                self.pages_per_chunk,
                section_id,
                blocks,
                source,
                &mut |batch| batch.write_to(out),
            )?;
        } else {
            self.write_copied_pages(section_id, blocks, source)?;
        }
        self.out.put_u8(format::SECTION_END)?;
        self.out.put_be32(section_id)?;
        self.ram_encoder.write_eos(&mut self.out)?;
        self.footer(section_id)
    }

    /// `encode_lent_pages` into `file` at the stream's offsets, by worker threads; the writer's
    /// own output goes on after the pages.
    fn write_lent_pages_at(
        &mut self,
        section_id: u32,
        blocks: &[RamBlock],
        source: &dyn RamSource,
        file: &dyn PositionalOutput,
    ) -> Result<(), WriteError> {
        // Everything before the pages reaches the file first.
        self.out.flush().map_err(WireError::from)?;
        let start = self.position();
        let mut end = start;
        let (jobs, queue) = std::sync::mpsc::sync_channel::<(u64, PageBatch)>(2 * PARALLEL_WRITERS);
        let queue = std::sync::Mutex::new(queue);
        let written = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..PARALLEL_WRITERS)
                .map(|_| {
                    scope.spawn(|| -> Result<(), WireError> {
                        loop {
                            let job = match queue.lock() {
                                Ok(queue) => queue.recv(),
                                Err(_) => return Ok(()),
                            };
                            let Ok((offset, batch)) = job else {
                                return Ok(());
                            };
                            batch.write_at(file, offset)?;
                        }
                    })
                })
                .collect();
            let encoder = &mut self.ram_encoder;
            let pages_per_chunk = self.pages_per_chunk;
            let encoded = encode_lent_pages(
                encoder,
                pages_per_chunk,
                section_id,
                blocks,
                source,
                &mut |batch| {
                    let batch = std::mem::take(batch);
                    let offset = end;
                    end += batch.len();
                    // A closed queue means a worker failed: its error is reported below.
                    jobs.send((offset, batch)).map_err(|_| {
                        WireError::Write(std::io::Error::other("a stream writer thread stopped"))
                    })
                },
            );
            drop(jobs);
            let mut result = encoded;
            for worker in workers {
                let outcome = worker.join().unwrap_or_else(|_| {
                    Err(WireError::Write(std::io::Error::other(
                        "a stream writer thread panicked",
                    )))
                });
                if let Err(e) = outcome {
                    result = Err(e.into());
                }
            }
            result
        });
        written?;
        file.seek_to(end).map_err(WireError::from)?;
        self.out.get_mut().bytes = end;
        Ok(())
    }

    /// The PART chunks, each page copied out of the source first.
    fn write_copied_pages(
        &mut self,
        section_id: u32,
        blocks: &[RamBlock],
        source: &mut dyn RamSource,
    ) -> Result<(), WriteError> {
        let mut page = vec![0u8; PAGE_SIZE];
        let mut in_chunk = 0usize;
        for block in blocks {
            for offset in (0..block.used_length).step_by(PAGE_SIZE) {
                if in_chunk == 0 {
                    self.out.put_u8(format::SECTION_PART)?;
                    self.out.put_be32(section_id)?;
                }
                if source.known_zero(&block.name, offset) {
                    self.ram_encoder
                        .write_zero_page(&mut self.out, &block.name, offset)?;
                } else {
                    source.read_page(&block.name, offset, &mut page)?;
                    self.ram_encoder
                        .write_page(&mut self.out, &block.name, offset, &page)?;
                }
                in_chunk += 1;
                if in_chunk == self.pages_per_chunk {
                    self.ram_encoder.write_eos(&mut self.out)?;
                    self.footer(section_id)?;
                    in_chunk = 0;
                }
            }
        }
        if in_chunk > 0 {
            self.ram_encoder.write_eos(&mut self.out)?;
            self.footer(section_id)?;
        }
        Ok(())
    }

    /// One FULL device section, and its vmdesc entry.
    pub fn write_section(&mut self, section: &Section) -> Result<(), WriteError> {
        let mut body = BodyWriter::new(section.state.vmsd_name(), section.state.version());
        section.state.encode(&mut body);
        let (bytes, desc) = body.finish();
        self.full_header(
            format::SECTION_FULL,
            section.section_id,
            &section.idstr,
            section.instance_id,
            section.state.version(),
        )?;
        self.out.write_all(&bytes).map_err(WireError::from)?;
        self.footer(section.section_id)?;
        let mut entry = serde_json::Map::new();
        entry.insert("name".into(), json!(section.idstr));
        entry.insert("instance_id".into(), json!(section.instance_id));
        entry.extend(desc.to_json());
        self.devices.push(Value::Object(entry));
        Ok(())
    }

    /// EOF and the VMDESCRIPTION trailer; returns the output.
    pub fn finish(mut self) -> Result<W, WriteError> {
        self.out.put_u8(format::EOF)?;
        let desc = json!({ "page_size": PAGE_SIZE, "devices": self.devices });
        let text = serde_json::to_string(&desc).map_err(|e| WriteError::Invalid(e.to_string()))?;
        self.out.put_u8(format::VMDESCRIPTION)?;
        self.out.put_be32(text.len() as u32)?;
        self.out
            .write_all(text.as_bytes())
            .map_err(WireError::from)?;
        self.out
            .into_inner()
            .map(|counted| counted.inner)
            .map_err(|e| WriteError::Wire(WireError::Write(e.into_error())))
    }
}

/// Writes a parsed stream back (RAM from `source`, blocks as listed in `parsed`).
pub fn write_parsed<W: Write>(
    out: W,
    parsed: &crate::reader::ParsedStream,
    source: &mut dyn RamSource,
) -> Result<W, WriteError> {
    let mut writer = StreamWriter::new(out, &parsed.machine)?;
    if let Some(id) = parsed.ram_section_id {
        writer.write_ram(id, &parsed.ram_blocks, source)?;
    }
    for section in &parsed.sections {
        writer.write_section(section)?;
    }
    writer.finish()
}

/// The writer's output, counting the bytes that reached it.
struct Counted<W> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
    fn write_vectored(&mut self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
        let n = self.inner.write_vectored(bufs)?;
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The PART chunks, pages sent from where the source keeps them (see `PageBatch`): each
/// batch in stream order goes to `emit`, which writes it and leaves it empty.
fn encode_lent_pages<'p>(
    encoder: &mut RamEncoder,
    pages_per_chunk: usize,
    section_id: u32,
    blocks: &[RamBlock],
    source: &'p dyn RamSource,
    emit: &mut dyn FnMut(&mut PageBatch<'p>) -> Result<(), WireError>,
) -> Result<(), WriteError> {
    let mut batch = PageBatch::default();
    let mut in_chunk = 0usize;
    for block in blocks {
        for offset in (0..block.used_length).step_by(PAGE_SIZE) {
            if in_chunk == 0 {
                batch.small().put_u8(format::SECTION_PART)?;
                batch.small().put_be32(section_id)?;
            }
            if source.known_zero(&block.name, offset) {
                encoder.write_zero_page(batch.small(), &block.name, offset)?;
            } else {
                let page = source.page(&block.name, offset).ok_or_else(|| {
                    RamAccessError(format!("page {offset:#x} of {:?} is missing", block.name))
                })?;
                if encoder.write_page_header(batch.small(), &block.name, offset, page)? {
                    batch.push_page(page);
                }
            }
            in_chunk += 1;
            if in_chunk == pages_per_chunk {
                encoder.write_eos(batch.small())?;
                batch.small().put_u8(format::SECTION_FOOTER)?;
                batch.small().put_be32(section_id)?;
                in_chunk = 0;
            }
            if batch.is_full() {
                emit(&mut batch)?;
            }
        }
    }
    if in_chunk > 0 {
        encoder.write_eos(batch.small())?;
        batch.small().put_u8(format::SECTION_FOOTER)?;
        batch.small().put_be32(section_id)?;
    }
    emit(&mut batch)?;
    Ok(())
}
