//! Typed models of the device sections an x86 KVM machine sends (reference §8), each with
//! `decode` (from the stream, sized from its known layout: the vmdesc comes too late on a pipe)
//! and `encode` (bytes plus the matching vmdesc entry), and the layouts of the sections a loader
//! may skip (`skipped`).

pub mod apic;
pub mod cpu;
pub mod cpu_common;
pub mod globalstate;
pub mod i8254;
pub mod i8259;
pub mod ioapic;
pub mod kvmclock;
pub mod rtc;
pub mod serial;
mod skip_layouts;
pub mod skipped;
pub mod timer;
pub mod tpr_opt;

use std::io::Read;

use thiserror::Error;

use crate::vmstate::{next_subsection, BodyWriter, RawSubsection, VmStateError};
use crate::wire::{WireError, WireReader};

pub use apic::ApicSection;
pub use cpu::{CpuSection, Segment};
pub use cpu_common::CpuCommonSection;
pub use globalstate::GlobalStateSection;
pub use i8254::{I8254Section, PitChannel};
pub use i8259::I8259Section;
pub use ioapic::IoapicSection;
pub use kvmclock::KvmclockSection;
pub use rtc::RtcSection;
pub use serial::SerialSection;
pub use skipped::SkippedSection;
pub use timer::TimerSection;
pub use tpr_opt::TprOptSection;

#[derive(Debug, Error)]
pub enum SectionError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error(transparent)]
    VmState(#[from] VmStateError),
    #[error("section {idstr:?} instance {instance}: version {version} is not supported (expected {expected})")]
    Version {
        idstr: String,
        instance: u32,
        version: u32,
        expected: String,
    },
    #[error("unknown section {idstr:?} instance {instance} (not a section of microvm, pc-i440fx-7.2 or pc-q35-7.2 that this reader knows)")]
    Unknown { idstr: String, instance: u32 },
    #[error("section {section:?}: {why}")]
    Invalid { section: String, why: String },
}

/// The decoded state of one FULL section.
#[derive(Debug, Clone, PartialEq)]
pub enum SectionState {
    Timer(TimerSection),
    CpuCommon(CpuCommonSection),
    Cpu(Box<CpuSection>),
    Apic(ApicSection),
    Kvmclock(KvmclockSection),
    TprOpt(TprOptSection),
    Ioapic(IoapicSection),
    I8259(I8259Section),
    I8254(I8254Section),
    Serial(SerialSection),
    Rtc(RtcSection),
    GlobalState(GlobalStateSection),
    /// A section of a device we do not model; its bytes were checked against its layout and kept.
    Skipped(SkippedSection),
}

impl SectionState {
    /// The vmsd name (the part of the idstr after the last `/`).
    pub fn vmsd_name(&self) -> &str {
        match self {
            SectionState::Timer(_) => timer::VMSD,
            SectionState::CpuCommon(_) => cpu_common::VMSD,
            SectionState::Cpu(_) => cpu::VMSD,
            SectionState::Apic(_) => apic::VMSD,
            SectionState::Kvmclock(_) => kvmclock::VMSD,
            SectionState::TprOpt(_) => tpr_opt::VMSD,
            SectionState::Ioapic(_) => ioapic::VMSD,
            SectionState::I8259(_) => i8259::VMSD,
            SectionState::I8254(_) => i8254::VMSD,
            SectionState::Serial(_) => serial::VMSD,
            SectionState::Rtc(_) => rtc::VMSD,
            SectionState::GlobalState(_) => globalstate::VMSD,
            SectionState::Skipped(skipped) => &skipped.vmsd,
        }
    }

    /// The section version this state is written with.
    pub fn version(&self) -> u32 {
        match self {
            SectionState::Timer(_) => timer::VERSION,
            SectionState::CpuCommon(_) => cpu_common::VERSION,
            SectionState::Cpu(_) => cpu::VERSION,
            SectionState::Apic(_) => apic::VERSION,
            SectionState::Kvmclock(_) => kvmclock::VERSION,
            SectionState::TprOpt(_) => tpr_opt::VERSION,
            SectionState::Ioapic(_) => ioapic::VERSION,
            SectionState::I8259(_) => i8259::VERSION,
            SectionState::I8254(_) => i8254::VERSION,
            SectionState::Serial(_) => serial::VERSION,
            SectionState::Rtc(_) => rtc::VERSION,
            SectionState::GlobalState(_) => globalstate::VERSION,
            SectionState::Skipped(skipped) => skipped.version,
        }
    }

    /// Writes the body (fields and subsections) and its vmdesc entry.
    pub fn encode(&self, w: &mut BodyWriter) {
        match self {
            SectionState::Timer(s) => s.encode(w),
            SectionState::CpuCommon(s) => s.encode(w),
            SectionState::Cpu(s) => s.encode(w),
            SectionState::Apic(s) => s.encode(w),
            SectionState::Kvmclock(s) => s.encode(w),
            SectionState::TprOpt(s) => s.encode(w),
            SectionState::Ioapic(s) => s.encode(w),
            SectionState::I8259(s) => s.encode(w),
            SectionState::I8254(s) => s.encode(w),
            SectionState::Serial(s) => s.encode(w),
            SectionState::Rtc(s) => s.encode(w),
            SectionState::GlobalState(s) => s.encode(w),
            SectionState::Skipped(s) => s.encode(w),
        }
    }
}

/// Decodes the body of FULL section `idstr`/`instance` at `version` from the stream; `cpus` is the
/// number of `cpu` sections before it (some skipped layouts have per-vCPU arrays).
pub fn decode_section<R: Read>(
    wire: &mut WireReader<R>,
    idstr: &str,
    instance: u32,
    version: u32,
    cpus: usize,
) -> Result<SectionState, SectionError> {
    let vmsd = idstr.rsplit('/').next().unwrap_or(idstr);
    let check = |expected: u32| -> Result<(), SectionError> {
        if version == expected {
            Ok(())
        } else {
            Err(SectionError::Version {
                idstr: idstr.to_string(),
                instance,
                version,
                expected: expected.to_string(),
            })
        }
    };
    // Typed sections have no bus path in their idstr.
    let typed = vmsd == idstr;
    let state = match vmsd {
        timer::VMSD if typed => {
            check(timer::VERSION)?;
            SectionState::Timer(TimerSection::decode(wire)?)
        }
        cpu_common::VMSD if typed => {
            check(cpu_common::VERSION)?;
            SectionState::CpuCommon(CpuCommonSection::decode(wire)?)
        }
        cpu::VMSD if typed => {
            check(cpu::VERSION)?;
            SectionState::Cpu(Box::new(CpuSection::decode(wire)?))
        }
        apic::VMSD if typed => {
            check(apic::VERSION)?;
            SectionState::Apic(ApicSection::decode(wire)?)
        }
        kvmclock::VMSD if typed => {
            check(kvmclock::VERSION)?;
            SectionState::Kvmclock(KvmclockSection::decode(wire)?)
        }
        tpr_opt::VMSD if typed => {
            check(tpr_opt::VERSION)?;
            SectionState::TprOpt(TprOptSection::decode(wire)?)
        }
        ioapic::VMSD if typed => {
            check(ioapic::VERSION)?;
            SectionState::Ioapic(IoapicSection::decode(wire)?)
        }
        i8259::VMSD if typed => {
            check(i8259::VERSION)?;
            SectionState::I8259(I8259Section::decode(wire)?)
        }
        i8254::VMSD if typed => {
            check(i8254::VERSION)?;
            SectionState::I8254(I8254Section::decode(wire)?)
        }
        serial::VMSD if typed => {
            check(serial::VERSION)?;
            SectionState::Serial(SerialSection::decode(wire)?)
        }
        rtc::VMSD if typed => {
            check(rtc::VERSION)?;
            SectionState::Rtc(RtcSection::decode(wire)?)
        }
        globalstate::VMSD if typed => {
            check(globalstate::VERSION)?;
            SectionState::GlobalState(GlobalStateSection::decode(wire)?)
        }
        _ => match skipped::layout(vmsd, version) {
            Some(layout) => SectionState::Skipped(SkippedSection::decode(wire, layout, cpus)?),
            None if skipped::is_known(vmsd) => {
                return Err(SectionError::Version {
                    idstr: idstr.to_string(),
                    instance,
                    version,
                    expected: skipped::known_versions(vmsd),
                })
            }
            None => {
                return Err(SectionError::Unknown {
                    idstr: idstr.to_string(),
                    instance,
                })
            }
        },
    };
    Ok(state)
}

/// Field list of a fixed-size subsection: (name, VMState type, element size, array length or 0).
pub type SubsectionFields = &'static [(&'static str, &'static str, usize, usize)];

/// A subsection a typed section accepts, kept as bytes.
#[derive(Debug, Clone, Copy)]
pub struct SubsectionSpec {
    pub name: &'static str,
    pub version: u32,
    pub fields: SubsectionFields,
}

impl SubsectionSpec {
    pub fn body_len(&self) -> usize {
        self.fields
            .iter()
            .map(|(_, _, size, count)| size * (*count).max(1))
            .sum()
    }
}

/// Reads the fixed-size main body of a section.
pub(crate) fn read_body<R: Read>(
    wire: &mut WireReader<R>,
    len: usize,
) -> Result<Vec<u8>, SectionError> {
    Ok(wire.read_vec(len)?)
}

/// Reads the subsections of `parent` that follow, each from `known` (any order, each at most
/// once); a name with the parent's prefix that is not in `known` is an error, as in QEMU.
pub(crate) fn read_subsections<R: Read>(
    wire: &mut WireReader<R>,
    parent: &str,
    known: &[SubsectionSpec],
) -> Result<Vec<RawSubsection>, SectionError> {
    let mut found: Vec<RawSubsection> = Vec::new();
    while let Some(header) = next_subsection(wire, parent)? {
        let spec = known
            .iter()
            .find(|spec| spec.name == header.name)
            .ok_or_else(|| VmStateError::UnknownSubsection {
                section: parent.to_string(),
                name: header.name.clone(),
            })?;
        if header.version != spec.version {
            return Err(VmStateError::SubsectionVersion {
                section: parent.to_string(),
                name: header.name,
                version: header.version,
                expected: spec.version,
            }
            .into());
        }
        if found.iter().any(|sub| sub.name == header.name) {
            return Err(VmStateError::DuplicateSubsection {
                section: parent.to_string(),
                name: header.name,
            }
            .into());
        }
        let body = wire.read_vec(spec.body_len())?;
        found.push(RawSubsection {
            name: header.name,
            version: header.version,
            body,
        });
    }
    Ok(found)
}

/// Writes kept subsections with their described fields.
pub(crate) fn write_subsections(
    w: &mut BodyWriter,
    subs: &[RawSubsection],
    known: &[SubsectionSpec],
) {
    for sub in subs {
        let Some(spec) = known.iter().find(|spec| spec.name == sub.name) else {
            continue;
        };
        w.subsection(spec.name, spec.version, |s| {
            let mut offset = 0;
            for &(name, kind, size, count) in spec.fields {
                let len = size * count.max(1);
                let bytes = sub.body.get(offset..offset + len).unwrap_or_default();
                s.described(name, kind, size, (count > 0).then_some(count), bytes);
                offset += len;
            }
        });
    }
}

/// The body of a kept subsection, if present.
pub(crate) fn find_subsection<'a>(subs: &'a [RawSubsection], name: &str) -> Option<&'a [u8]> {
    subs.iter()
        .find(|sub| sub.name == name)
        .map(|sub| sub.body.as_slice())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_len(state: SectionState) -> usize {
        let mut w = BodyWriter::new(state.vmsd_name(), state.version());
        state.encode(&mut w);
        let (bytes, desc) = w.finish();
        assert_eq!(
            bytes.len(),
            desc.fields_len(),
            "{} description",
            state.vmsd_name()
        );
        bytes.len()
    }

    /// The byte counts of reference §8 for each section body without subsections.
    #[test]
    fn bodies_have_the_reference_sizes() {
        assert_eq!(body_len(SectionState::Timer(TimerSection::default())), 24);
        assert_eq!(
            body_len(SectionState::CpuCommon(CpuCommonSection::default())),
            8
        );
        assert_eq!(body_len(SectionState::Cpu(Box::default())), 1817);
        assert_eq!(body_len(SectionState::Apic(ApicSection::default())), 181);
        assert_eq!(
            body_len(SectionState::Kvmclock(KvmclockSection::default())),
            8
        );
        assert_eq!(
            body_len(SectionState::TprOpt(TprOptSection::default())),
            144
        );
        assert_eq!(
            body_len(SectionState::Ioapic(IoapicSection::default())),
            206
        );
        assert_eq!(body_len(SectionState::I8259(I8259Section::default())), 16);
        assert_eq!(body_len(SectionState::I8254(I8254Section::default())), 108);
        assert_eq!(body_len(SectionState::Serial(SerialSection::default())), 11);
        let rtc = RtcSection::decode(&mut WireReader::new(&[0u8; 245][..])).unwrap();
        assert_eq!(body_len(SectionState::Rtc(rtc)), 245);
        let global = GlobalStateSection {
            runstate: "running".into(),
        };
        assert_eq!(body_len(SectionState::GlobalState(global)), 104);
    }

    #[test]
    fn unknown_sections_and_subsections_are_named() {
        let err = decode_section(&mut WireReader::new(&[0u8; 64][..]), "virtio-blk", 0, 1, 1)
            .unwrap_err();
        assert!(err.to_string().contains("virtio-blk"));
        // A kvmclock body followed by a subsection QEMU 7.2 does not have.
        let mut bytes = vec![0u8; 8];
        bytes.push(crate::format::SUBSECTION);
        let name = b"kvmclock/new_thing";
        bytes.push(name.len() as u8);
        bytes.extend_from_slice(name);
        bytes.extend_from_slice(&1u32.to_be_bytes());
        let err =
            decode_section(&mut WireReader::new(&bytes[..]), "kvmclock", 0, 1, 1).unwrap_err();
        assert!(err.to_string().contains("kvmclock/new_thing"), "{err}");
    }

    #[test]
    fn serial_fifo_round_trips() {
        let mut serial = SerialSection::default();
        serial.set_recv_fifo(b"hello");
        assert_eq!(serial.recv_fifo(), b"hello");
        let mut w = BodyWriter::new(serial::VMSD, serial::VERSION);
        serial.encode(&mut w);
        let (bytes, _) = w.finish();
        let decoded = SerialSection::decode(&mut WireReader::new(&bytes[..])).unwrap();
        assert_eq!(decoded, serial);
    }
}
