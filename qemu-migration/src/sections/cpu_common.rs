//! `cpu_common` (v1): halted and pending interrupt requests of one vCPU (§8.2).

use std::io::Read;

use super::{read_body, read_subsections, write_subsections, SectionError, SubsectionSpec};
use crate::vmstate::{BodyWriter, Cursor, RawSubsection};
use crate::wire::WireReader;

pub const VMSD: &str = "cpu_common";
pub const VERSION: u32 = 1;
pub const BODY_LEN: usize = 8;

pub const SUBSECTIONS: &[SubsectionSpec] = &[
    SubsectionSpec {
        name: "cpu_common/exception_index",
        version: 1,
        fields: &[("exception_index", "int32", 4, 0)],
    },
    SubsectionSpec {
        name: "cpu_common/crash_occurred",
        version: 1,
        fields: &[("crash_occurred", "bool", 1, 0)],
    },
];

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CpuCommonSection {
    pub halted: u32,
    pub interrupt_request: u32,
    pub subsections: Vec<RawSubsection>,
}

impl CpuCommonSection {
    pub fn decode<R: Read>(wire: &mut WireReader<R>) -> Result<Self, SectionError> {
        let body = read_body(wire, BODY_LEN)?;
        let mut c = Cursor::new(&body);
        Ok(CpuCommonSection {
            halted: c.u32(),
            interrupt_request: c.u32(),
            subsections: read_subsections(wire, VMSD, SUBSECTIONS)?,
        })
    }

    pub fn encode(&self, w: &mut BodyWriter) {
        w.u32("halted", self.halted);
        w.u32("interrupt_request", self.interrupt_request);
        write_subsections(w, &self.subsections, SUBSECTIONS);
    }
}
