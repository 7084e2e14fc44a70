//! `kvmclock` (v1): KVM_GET_CLOCK at stop time (§8.5).

use std::io::Read;

use super::{
    find_subsection, read_body, read_subsections, write_subsections, SectionError, SubsectionSpec,
};
use crate::vmstate::{BodyWriter, Cursor, RawSubsection};
use crate::wire::WireReader;

pub const VMSD: &str = "kvmclock";
pub const VERSION: u32 = 1;
pub const BODY_LEN: usize = 8;
pub const RELIABLE: &str = "kvmclock/clock_is_reliable";

pub const SUBSECTIONS: &[SubsectionSpec] = &[SubsectionSpec {
    name: RELIABLE,
    version: 1,
    fields: &[("clock_is_reliable", "bool", 1, 0)],
}];

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KvmclockSection {
    pub clock: u64,
    pub subsections: Vec<RawSubsection>,
}

impl KvmclockSection {
    /// A clock value the destination takes as is (`clock_is_reliable` = 1).
    pub fn reliable(clock: u64) -> Self {
        KvmclockSection {
            clock,
            subsections: vec![RawSubsection {
                name: RELIABLE.into(),
                version: 1,
                body: vec![1],
            }],
        }
    }

    pub fn clock_is_reliable(&self) -> bool {
        find_subsection(&self.subsections, RELIABLE).is_some_and(|b| b.first() == Some(&1))
    }

    pub fn decode<R: Read>(wire: &mut WireReader<R>) -> Result<Self, SectionError> {
        let body = read_body(wire, BODY_LEN)?;
        Ok(KvmclockSection {
            clock: Cursor::new(&body).u64(),
            subsections: read_subsections(wire, VMSD, SUBSECTIONS)?,
        })
    }

    pub fn encode(&self, w: &mut BodyWriter) {
        w.u64("clock", self.clock);
        write_subsections(w, &self.subsections, SUBSECTIONS);
    }
}
