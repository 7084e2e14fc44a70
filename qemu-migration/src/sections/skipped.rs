//! Sections of devices snapvmm does not model, which a loader skips (reference §7, §8.11-8.16).
//! On a pipe a section can only be skipped when its size is known, so each one has a layout
//! (taken from the vmdesc of real QEMU 7.2 streams, `scripts/gen_skip_layouts.py`): byte runs and
//! the points where QEMU's loader looks for subsections. Subsections found there must be ones we
//! know the size of; anything else is an error naming the section and subsection.

use std::io::Read;

use super::skip_layouts::{SKIPPED_LAYOUTS, SKIPPED_SUBSECTIONS};
use super::SectionError;
use crate::vmstate::{next_subsection, BodyWriter, VmStateError};
use crate::wire::WireReader;

/// Most bytes a skipped section may hold (q35's ICH9LPC is ~17 KiB).
pub const MAX_SKIPPED_BODY: usize = 64 * 1024;
/// Deepest nesting of counted arrays and subsections in a layout.
const MAX_DEPTH: usize = 8;

/// One piece of a skipped layout.
#[derive(Debug)]
pub enum Seg {
    /// Bytes of fields.
    B(usize),
    /// End of a VMState named so: its subsections may follow.
    S(&'static str),
    /// The pieces repeated n times.
    R(usize, &'static [Seg]),
    /// A u8 count (part of the body) then that many repetitions, at most `max`.
    CountU8(usize, &'static [Seg]),
    /// A be32 count (part of the body) then that many repetitions, at most `max`.
    CountBe32(usize, &'static [Seg]),
    /// Repeated once per vCPU (QEMU sizes these arrays by its CPU count, which the stream shows
    /// only as the number of `cpu` sections before this one).
    PerCpu(&'static [Seg]),
    /// The pieces of a shared sub-layout.
    Nested(&'static [Seg]),
}

pub use Seg::{B, R, S};

#[derive(Debug)]
pub struct SkippedLayout {
    pub vmsd: &'static str,
    pub version: u32,
    pub body: &'static [Seg],
}

#[derive(Debug)]
pub struct SkippedSubsection {
    pub name: &'static str,
    pub version: u32,
    pub body: &'static [Seg],
}

/// Layouts with variable-length arrays, written by hand.
static VARIABLE_LAYOUTS: &[SkippedLayout] = &[
    // PCIBUS: i32 nirq, then nirq x i32 irq_count (4 on pc, 8 on q35).
    SkippedLayout {
        vmsd: "PCIBUS",
        version: 1,
        body: &[Seg::CountBe32(64, &[B(4)]), S("PCIBUS")],
    },
    // hpet: config, isr, counter (u64 each), u8 num_timers (3..=32), then the timers.
    SkippedLayout {
        vmsd: "hpet",
        version: 2,
        body: &[
            B(24),
            Seg::CountU8(32, &[B(42), S("hpet_timer")]),
            S("hpet"),
        ],
    },
];

/// CPU hotplug state: u32 selector, u8 command, then per vCPU {bool is_inserted, bool
/// is_removing, u32 ost_event, u32 ost_status}.
const CPU_HOTPLUG: &[Seg] = &[
    B(5),
    Seg::PerCpu(&[B(10), S("CPU hotplug device state")]),
    S("CPU hotplug state"),
];

/// Subsections written by hand: per-vCPU arrays, and ones documented in the reference that the
/// sample streams did not contain.
static EXTRA_SUBSECTIONS: &[SkippedSubsection] = &[
    SkippedSubsection {
        name: "piix4_pm/cpuhp",
        version: 1,
        body: &[Seg::Nested(CPU_HOTPLUG), S("piix4_pm/cpuhp")],
    },
    SkippedSubsection {
        name: "ich9_pm/cpuhp",
        version: 1,
        body: &[Seg::Nested(CPU_HOTPLUG), S("ich9_pm/cpuhp")],
    },
    SkippedSubsection {
        name: "hpet/rtc_irq_level",
        version: 1,
        body: &[B(1), S("hpet/rtc_irq_level")],
    },
    SkippedSubsection {
        name: "hpet/offset",
        version: 1,
        body: &[B(8), S("hpet/offset")],
    },
    SkippedSubsection {
        name: "PIIX3/rcr",
        version: 1,
        body: &[B(1), S("PIIX3/rcr")],
    },
    SkippedSubsection {
        name: "pckbd/outport",
        version: 1,
        body: &[B(1), S("pckbd/outport")],
    },
    SkippedSubsection {
        name: "ps2kbd/need_high_bit",
        version: 1,
        body: &[B(1), S("ps2kbd/need_high_bit")],
    },
];

fn all_layouts() -> impl Iterator<Item = &'static SkippedLayout> {
    VARIABLE_LAYOUTS.iter().chain(SKIPPED_LAYOUTS.iter())
}

/// The layout of skipped section `vmsd` at `version`.
pub fn layout(vmsd: &str, version: u32) -> Option<&'static SkippedLayout> {
    all_layouts().find(|l| l.vmsd == vmsd && l.version == version)
}

/// Whether `vmsd` is a skipped section at some version.
pub fn is_known(vmsd: &str) -> bool {
    all_layouts().any(|l| l.vmsd == vmsd)
}

/// The versions of `vmsd` we have layouts for, for error messages.
pub fn known_versions(vmsd: &str) -> String {
    let versions: Vec<String> = all_layouts()
        .filter(|l| l.vmsd == vmsd)
        .map(|l| l.version.to_string())
        .collect();
    versions.join(" or ")
}

/// vmsd names of every skipped section.
pub fn skipped_names() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = all_layouts().map(|l| l.vmsd).collect();
    names.sort_unstable();
    names.dedup();
    names
}

fn subsection_layout(name: &str) -> Option<&'static SkippedSubsection> {
    SKIPPED_SUBSECTIONS
        .iter()
        .chain(EXTRA_SUBSECTIONS.iter())
        .find(|s| s.name == name)
}

/// A skipped section: its bytes, checked against the layout, kept for re-encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedSection {
    pub vmsd: String,
    pub version: u32,
    /// The body as it was on the wire (fields and subsections).
    pub body: Vec<u8>,
}

struct Walker<'a, R> {
    wire: &'a mut WireReader<R>,
    section: &'static str,
    body: Vec<u8>,
    cpus: usize,
}

impl<R: Read> Walker<'_, R> {
    fn take(&mut self, len: usize) -> Result<(), SectionError> {
        if self.body.len() + len > MAX_SKIPPED_BODY {
            return Err(SectionError::Invalid {
                section: self.section.into(),
                why: format!("body exceeds {MAX_SKIPPED_BODY} bytes"),
            });
        }
        let start = self.body.len();
        self.body.resize(start + len, 0);
        let dst = self.body.get_mut(start..).unwrap_or_default();
        self.wire.read_exact(dst)?;
        Ok(())
    }

    fn last_bytes<const N: usize>(&self) -> [u8; N] {
        let mut out = [0u8; N];
        if let Some(src) = self
            .body
            .len()
            .checked_sub(N)
            .and_then(|at| self.body.get(at..))
        {
            out.copy_from_slice(src);
        }
        out
    }

    fn walk(&mut self, segs: &[Seg], depth: usize) -> Result<(), SectionError> {
        if depth > MAX_DEPTH {
            return Err(SectionError::Invalid {
                section: self.section.into(),
                why: "subsections nested too deeply".into(),
            });
        }
        for seg in segs {
            match seg {
                Seg::B(len) => self.take(*len)?,
                Seg::R(count, inner) => {
                    for _ in 0..*count {
                        self.walk(inner, depth)?;
                    }
                }
                Seg::CountU8(max, inner) => {
                    self.take(1)?;
                    let count = usize::from(self.last_bytes::<1>()[0]);
                    self.repeat(count, *max, inner, depth)?;
                }
                Seg::CountBe32(max, inner) => {
                    self.take(4)?;
                    let count = u32::from_be_bytes(self.last_bytes::<4>()) as usize;
                    self.repeat(count, *max, inner, depth)?;
                }
                Seg::PerCpu(inner) => {
                    for _ in 0..self.cpus {
                        self.walk(inner, depth)?;
                    }
                }
                Seg::Nested(inner) => self.walk(inner, depth)?,
                Seg::S(parent) => self.subsections(parent, depth)?,
            }
        }
        Ok(())
    }

    fn repeat(
        &mut self,
        count: usize,
        max: usize,
        inner: &[Seg],
        depth: usize,
    ) -> Result<(), SectionError> {
        if count > max {
            return Err(SectionError::Invalid {
                section: self.section.into(),
                why: format!("array of {count} elements (at most {max})"),
            });
        }
        for _ in 0..count {
            self.walk(inner, depth)?;
        }
        Ok(())
    }

    fn subsections(&mut self, parent: &str, depth: usize) -> Result<(), SectionError> {
        let mut seen: Vec<&'static str> = Vec::new();
        while let Some(header) = next_subsection(self.wire, parent)? {
            let sub =
                subsection_layout(&header.name).ok_or_else(|| VmStateError::UnknownSubsection {
                    section: self.section.to_string(),
                    name: header.name.clone(),
                })?;
            if header.version != sub.version {
                return Err(VmStateError::SubsectionVersion {
                    section: self.section.to_string(),
                    name: header.name,
                    version: header.version,
                    expected: sub.version,
                }
                .into());
            }
            if seen.contains(&sub.name) {
                return Err(VmStateError::DuplicateSubsection {
                    section: self.section.to_string(),
                    name: header.name,
                }
                .into());
            }
            seen.push(sub.name);
            // Keep the header bytes too, so the body re-encodes as it was.
            self.body.push(crate::format::SUBSECTION);
            self.body.push(sub.name.len() as u8);
            self.body.extend_from_slice(sub.name.as_bytes());
            self.body.extend_from_slice(&header.version.to_be_bytes());
            self.walk(sub.body, depth + 1)?;
        }
        Ok(())
    }
}

impl SkippedSection {
    /// `cpus`: the number of `cpu` sections the stream had before this one.
    pub fn decode<R: Read>(
        wire: &mut WireReader<R>,
        layout: &'static SkippedLayout,
        cpus: usize,
    ) -> Result<Self, SectionError> {
        let mut walker = Walker {
            wire,
            section: layout.vmsd,
            body: Vec::new(),
            cpus,
        };
        walker.walk(layout.body, 0)?;
        Ok(SkippedSection {
            vmsd: layout.vmsd.to_string(),
            version: layout.version,
            body: walker.body,
        })
    }

    /// Written back as one opaque buffer (analyze-migration.py prints it as bytes).
    pub fn encode(&self, w: &mut BodyWriter) {
        w.buffer("data", &self.body);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_layout_is_reachable_and_unique() {
        let mut keys: Vec<(&str, u32)> = all_layouts().map(|l| (l.vmsd, l.version)).collect();
        let before = keys.len();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), before, "duplicate skipped layouts");
        for name in [
            "fw_cfg", "PCIBUS", "hpet", "ICH9LPC", "acpi-ged", "vmmouse", "piix4_pm",
        ] {
            assert!(is_known(name), "{name}");
        }
    }

    #[test]
    fn pcibus_with_too_many_irqs_is_rejected() {
        let mut bytes = 1000u32.to_be_bytes().to_vec();
        bytes.extend(vec![0u8; 4000]);
        let mut wire = WireReader::new(&bytes[..]);
        let layout = layout("PCIBUS", 1).unwrap();
        assert!(matches!(
            SkippedSection::decode(&mut wire, layout, 1),
            Err(SectionError::Invalid { .. })
        ));
    }
}
