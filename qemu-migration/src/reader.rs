//! Streaming reader of a whole QEMU 7.2 stream: works on a pipe (no seeking), hands RAM pages to a
//! [`RamSink`] as they arrive and decodes every device section from its known layout.

use std::io::Read;

use thiserror::Error;

use crate::format::{self, RAM_IDSTR, RAM_VERSION};
use crate::ram::{RamBlock, RamDecoder, RamError, RamLimits, RamSink, RamStats};
use crate::sections::{decode_section, SectionError, SectionState};
use crate::vmstate::next_subsection;
use crate::wire::{WireError, WireReader};

/// Caps on what the reader accepts besides RAM pages (which go to the sink).
#[derive(Debug, Clone, Copy)]
pub struct ReadLimits {
    pub ram: RamLimits,
    /// FULL device sections.
    pub max_sections: usize,
    /// Bytes of the VMDESCRIPTION trailer kept.
    pub max_vmdesc_len: usize,
    /// Machine name length in the configuration section.
    pub max_machine_name_len: usize,
    /// Bytes of device section bodies kept in total (the largest real stream, q35, has ~40 KiB).
    pub max_device_state_bytes: u64,
}

impl Default for ReadLimits {
    fn default() -> Self {
        ReadLimits {
            ram: RamLimits::default(),
            max_sections: 4096,
            max_vmdesc_len: 8 << 20,
            max_machine_name_len: 256,
            max_device_state_bytes: 8 << 20,
        }
    }
}

#[derive(Debug, Error)]
pub enum ReadError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error(transparent)]
    Ram(#[from] RamError),
    #[error("at byte {offset}: {source}")]
    Section { offset: u64, source: SectionError },
    #[error("not a QEMU migration stream (magic {0:#010x})")]
    BadMagic(u32),
    #[error("stream version {0} is not supported (only 3)")]
    BadVersion(u32),
    #[error("the configuration section is missing (record type {0:#04x} follows the header)")]
    MissingConfiguration(u8),
    #[error("configuration: {0}")]
    BadConfiguration(String),
    #[error("unknown record type {kind:#04x} at byte {offset}")]
    UnknownRecord { kind: u8, offset: u64 },
    #[error(
        "section {idstr:?}: footer {found:?} at byte {offset} does not close section id {expected}"
    )]
    BadFooter {
        idstr: String,
        expected: u32,
        found: Option<u32>,
        offset: u64,
    },
    #[error("{kind} record for section id {id}, which is not the ram section")]
    UnknownSectionId { kind: &'static str, id: u32 },
    #[error("ram section: {0}")]
    BadRamSection(String),
    #[error("section {idstr:?} is sent as START: only ram is iterative")]
    IterativeDevice { idstr: String },
    #[error("section {idstr:?} instance {instance} appears twice")]
    DuplicateSection { idstr: String, instance: u32 },
    #[error("empty section idstr at byte {0}")]
    EmptyIdstr(u64),
    #[error("section idstr at byte {0} is not UTF-8")]
    BadIdstr(u64),
    #[error("more than {0} device sections")]
    TooManySections(usize),
    #[error("device sections hold more than {0} bytes")]
    TooMuchDeviceState(u64),
    #[error("migration command {cmd} (length {len}) is not supported in a file stream")]
    UnsupportedCommand { cmd: u16, len: u16 },
    #[error("the stream ends before EOF")]
    NoEof,
}

/// One FULL device section as read.
#[derive(Debug, Clone, PartialEq)]
pub struct Section {
    pub section_id: u32,
    pub idstr: String,
    pub instance_id: u32,
    pub state: SectionState,
}

/// Everything but RAM contents.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedStream {
    /// Machine name from the configuration section (`microvm`, `pc-i440fx-7.2`, ...).
    pub machine: String,
    /// Section id the ram section used.
    pub ram_section_id: Option<u32>,
    pub ram_blocks: Vec<RamBlock>,
    pub ram_stats: RamStats,
    /// Device sections in stream order.
    pub sections: Vec<Section>,
    /// The VMDESCRIPTION JSON after EOF, if present.
    pub vmdesc: Option<String>,
}

impl ParsedStream {
    /// The section `idstr`/`instance`, if present.
    pub fn section(&self, idstr: &str, instance: u32) -> Option<&SectionState> {
        self.sections
            .iter()
            .find(|s| s.idstr == idstr && s.instance_id == instance)
            .map(|s| &s.state)
    }
}

const SWITCHOVER_START: u16 = 11;

/// Reads a whole stream from `input`, RAM pages into `ram`.
pub fn read_stream<R: Read>(
    input: R,
    ram: &mut dyn RamSink,
    limits: &ReadLimits,
) -> Result<ParsedStream, ReadError> {
    let mut wire = WireReader::new(input);
    let magic = wire.be32()?;
    if magic != format::MAGIC {
        return Err(ReadError::BadMagic(magic));
    }
    let version = wire.be32()?;
    if version != format::VERSION {
        return Err(ReadError::BadVersion(version));
    }
    let machine = read_configuration(&mut wire, limits)?;
    let mut parsed = ParsedStream {
        machine,
        ram_section_id: None,
        ram_blocks: Vec::new(),
        ram_stats: RamStats::default(),
        sections: Vec::new(),
        vmdesc: None,
    };
    let mut ram_decoder = RamDecoder::default();
    let mut device_state_bytes = 0u64;
    loop {
        let record_at = wire.offset();
        let kind = match wire.u8() {
            Ok(kind) => kind,
            Err(WireError::Truncated { .. }) => return Err(ReadError::NoEof),
            Err(err) => return Err(err.into()),
        };
        match kind {
            format::EOF => break,
            format::SECTION_START | format::SECTION_FULL => {
                let section_id = wire.be32()?;
                let idstr_at = wire.offset();
                let idstr = String::from_utf8(wire.counted_bytes()?)
                    .map_err(|_| ReadError::BadIdstr(idstr_at))?;
                if idstr.is_empty() {
                    return Err(ReadError::EmptyIdstr(idstr_at));
                }
                let instance_id = wire.be32()?;
                let version = wire.be32()?;
                if idstr == RAM_IDSTR {
                    if version != RAM_VERSION || instance_id != 0 {
                        return Err(ReadError::BadRamSection(format!(
                            "instance {instance_id} version {version} (expected 0 and {RAM_VERSION})"
                        )));
                    }
                    if parsed.ram_section_id.is_some() {
                        return Err(ReadError::BadRamSection("started twice".into()));
                    }
                    if section_id == 0 {
                        // QEMU routes PART/END with id 0 to the wrong handler (reference §4.2).
                        return Err(ReadError::BadRamSection("section id 0".into()));
                    }
                    parsed.ram_section_id = Some(section_id);
                    ram_decoder.read_chunk(&mut wire, ram, &limits.ram, &parsed.machine)?;
                } else {
                    if kind == format::SECTION_START {
                        return Err(ReadError::IterativeDevice { idstr });
                    }
                    if parsed.sections.len() >= limits.max_sections {
                        return Err(ReadError::TooManySections(limits.max_sections));
                    }
                    if parsed
                        .sections
                        .iter()
                        .any(|s| s.idstr == idstr && s.instance_id == instance_id)
                    {
                        return Err(ReadError::DuplicateSection {
                            idstr,
                            instance: instance_id,
                        });
                    }
                    let body_at = wire.offset();
                    let cpus = parsed
                        .sections
                        .iter()
                        .filter(|s| matches!(s.state, SectionState::Cpu(_)))
                        .count();
                    let state = decode_section(&mut wire, &idstr, instance_id, version, cpus)
                        .map_err(|source| ReadError::Section {
                            offset: body_at,
                            source,
                        })?;
                    device_state_bytes += wire.offset() - body_at;
                    if device_state_bytes > limits.max_device_state_bytes {
                        return Err(ReadError::TooMuchDeviceState(limits.max_device_state_bytes));
                    }
                    parsed.sections.push(Section {
                        section_id,
                        idstr: idstr.clone(),
                        instance_id,
                        state,
                    });
                }
                read_footer(&mut wire, section_id, &idstr)?;
            }
            format::SECTION_PART | format::SECTION_END => {
                let section_id = wire.be32()?;
                let name = if kind == format::SECTION_PART {
                    "PART"
                } else {
                    "END"
                };
                if parsed.ram_section_id != Some(section_id) {
                    return Err(ReadError::UnknownSectionId {
                        kind: name,
                        id: section_id,
                    });
                }
                ram_decoder.read_chunk(&mut wire, ram, &limits.ram, &parsed.machine)?;
                read_footer(&mut wire, section_id, RAM_IDSTR)?;
            }
            format::COMMAND => {
                let cmd = wire.be16()?;
                let len = wire.be16()?;
                // Newer QEMUs send SWITCHOVER_START before the last RAM chunk; it carries nothing.
                if cmd != SWITCHOVER_START || len != 0 {
                    return Err(ReadError::UnsupportedCommand { cmd, len });
                }
            }
            _ => {
                return Err(ReadError::UnknownRecord {
                    kind,
                    offset: record_at,
                })
            }
        }
    }
    parsed.vmdesc = read_vmdesc(&mut wire, limits)?;
    parsed.ram_blocks = ram_decoder.blocks;
    parsed.ram_stats = ram_decoder.stats;
    Ok(parsed)
}

fn read_configuration<R: Read>(
    wire: &mut WireReader<R>,
    limits: &ReadLimits,
) -> Result<String, ReadError> {
    let kind = wire.u8()?;
    if kind != format::CONFIGURATION {
        return Err(ReadError::MissingConfiguration(kind));
    }
    let len = wire.be32()? as usize;
    if len > limits.max_machine_name_len {
        return Err(ReadError::BadConfiguration(format!(
            "machine name of {len} bytes"
        )));
    }
    let name = String::from_utf8(wire.read_vec(len)?)
        .map_err(|_| ReadError::BadConfiguration("machine name is not UTF-8".into()))?;
    while let Some(header) = next_subsection(wire, "configuration")? {
        match header.name.as_str() {
            // The source's -uuid: informational for us.
            "configuration/uuid" => wire.skip(16)?,
            other => {
                return Err(ReadError::BadConfiguration(format!(
                    "subsection {other:?} is not supported (capabilities change the RAM encoding)"
                )))
            }
        }
    }
    Ok(name)
}

fn read_footer<R: Read>(
    wire: &mut WireReader<R>,
    section_id: u32,
    idstr: &str,
) -> Result<(), ReadError> {
    let offset = wire.offset();
    let marker = wire.u8()?;
    let found = if marker == format::SECTION_FOOTER {
        Some(wire.be32()?)
    } else {
        None
    };
    if found != Some(section_id) {
        return Err(ReadError::BadFooter {
            idstr: idstr.to_string(),
            expected: section_id,
            found,
            offset,
        });
    }
    Ok(())
}

/// The optional trailer: QEMU's loader only warns when it is missing or something else follows.
fn read_vmdesc<R: Read>(
    wire: &mut WireReader<R>,
    limits: &ReadLimits,
) -> Result<Option<String>, ReadError> {
    if wire.peek(1)?.first() != Some(&format::VMDESCRIPTION) {
        return Ok(None);
    }
    wire.u8()?;
    let len = wire.be32()? as usize;
    if len > limits.max_vmdesc_len {
        return Ok(None);
    }
    let json = wire.read_vec(len)?;
    Ok(String::from_utf8(json).ok())
}
