//! `apic` (v3): one local APIC; the instance id is the initial APIC ID (§8.4).

use std::io::Read;

use super::{read_body, read_subsections, write_subsections, SectionError, SubsectionSpec};
use crate::vmstate::{BodyWriter, Cursor, RawSubsection};
use crate::wire::WireReader;

pub const VMSD: &str = "apic";
pub const VERSION: u32 = 3;
pub const BODY_LEN: usize = 181;
pub const SIPI: &str = "apic_sipi";

/// QEMU names this subsection `apic_sipi`, which has the `apic` prefix the loader checks.
pub const SUBSECTIONS: &[SubsectionSpec] = &[SubsectionSpec {
    name: SIPI,
    version: 1,
    fields: &[
        ("sipi_vector", "int32", 4, 0),
        ("wait_for_sipi", "int32", 4, 0),
    ],
}];

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ApicSection {
    pub apicbase: u32,
    pub id: u8,
    pub arb_id: u8,
    pub tpr: u8,
    pub spurious_vec: u32,
    pub log_dest: u8,
    pub dest_mode: u8,
    pub isr: [u32; 8],
    pub tmr: [u32; 8],
    pub irr: [u32; 8],
    /// LVT timer, thermal, perfmon, LINT0, LINT1, error.
    pub lvt: [u32; 6],
    pub esr: u32,
    pub icr: [u32; 2],
    pub divide_conf: u32,
    pub count_shift: i32,
    pub initial_count: u32,
    pub initial_count_load_time: i64,
    pub next_time: i64,
    pub timer_expiry: i64,
    pub subsections: Vec<RawSubsection>,
}

impl ApicSection {
    pub fn decode<R: Read>(wire: &mut WireReader<R>) -> Result<Self, SectionError> {
        let body = read_body(wire, BODY_LEN)?;
        let mut c = Cursor::new(&body);
        Ok(ApicSection {
            apicbase: c.u32(),
            id: c.u8(),
            arb_id: c.u8(),
            tpr: c.u8(),
            spurious_vec: c.u32(),
            log_dest: c.u8(),
            dest_mode: c.u8(),
            isr: c.u32_array(),
            tmr: c.u32_array(),
            irr: c.u32_array(),
            lvt: c.u32_array(),
            esr: c.u32(),
            icr: c.u32_array(),
            divide_conf: c.u32(),
            count_shift: c.i32(),
            initial_count: c.u32(),
            initial_count_load_time: c.i64(),
            next_time: c.i64(),
            timer_expiry: c.i64(),
            subsections: read_subsections(wire, VMSD, SUBSECTIONS)?,
        })
    }

    pub fn encode(&self, w: &mut BodyWriter) {
        w.u32("apicbase", self.apicbase);
        w.u8("id", self.id);
        w.u8("arb_id", self.arb_id);
        w.u8("tpr", self.tpr);
        w.u32("spurious_vec", self.spurious_vec);
        w.u8("log_dest", self.log_dest);
        w.u8("dest_mode", self.dest_mode);
        w.u32_array("isr", &self.isr);
        w.u32_array("tmr", &self.tmr);
        w.u32_array("irr", &self.irr);
        w.u32_array("lvt", &self.lvt);
        w.u32("esr", self.esr);
        w.u32_array("icr", &self.icr);
        w.u32("divide_conf", self.divide_conf);
        w.i32("count_shift", self.count_shift);
        w.u32("initial_count", self.initial_count);
        w.i64("initial_count_load_time", self.initial_count_load_time);
        w.i64("next_time", self.next_time);
        w.i64("timer_expiry", self.timer_expiry);
        write_subsections(w, &self.subsections, SUBSECTIONS);
    }
}
