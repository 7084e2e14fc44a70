//! `mc146818rtc` (v3): CMOS bytes and the RTC's time base (§8.10).

use std::io::Read;

use super::{read_body, read_subsections, write_subsections, SectionError, SubsectionSpec};
use crate::vmstate::{BodyWriter, Cursor, RawSubsection};
use crate::wire::WireReader;

pub const VMSD: &str = "mc146818rtc";
pub const VERSION: u32 = 3;
pub const BODY_LEN: usize = 245;
pub const CMOS_LEN: usize = 128;

pub const SUBSECTIONS: &[SubsectionSpec] = &[SubsectionSpec {
    name: "mc146818rtc/irq_reinject_on_ack_count",
    version: 1,
    fields: &[("irq_reinject_on_ack_count", "uint16", 2, 0)],
}];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtcSection {
    pub cmos_data: [u8; CMOS_LEN],
    pub cmos_index: u8,
    pub periodic_timer: i64,
    pub next_periodic_time: i64,
    pub irq_coalesced: u32,
    pub period: u32,
    /// Guest RTC seconds since the epoch at `last_update`.
    pub base_rtc: u64,
    /// RTC clock (host wall clock by default) ns when `base_rtc` was taken.
    pub last_update: u64,
    /// Sub-second ns offset.
    pub offset: i64,
    pub update_timer: i64,
    pub next_alarm_time: u64,
    pub subsections: Vec<RawSubsection>,
}

impl RtcSection {
    pub fn decode<R: Read>(wire: &mut WireReader<R>) -> Result<Self, SectionError> {
        let body = read_body(wire, BODY_LEN)?;
        let mut c = Cursor::new(&body);
        let cmos_data = c.bytes();
        let cmos_index = c.u8();
        c.skip(28);
        let periodic_timer = c.i64();
        let next_periodic_time = c.i64();
        c.skip(24);
        Ok(RtcSection {
            cmos_data,
            cmos_index,
            periodic_timer,
            next_periodic_time,
            irq_coalesced: c.u32(),
            period: c.u32(),
            base_rtc: c.u64(),
            last_update: c.u64(),
            offset: c.i64(),
            update_timer: c.i64(),
            next_alarm_time: c.u64(),
            subsections: read_subsections(wire, VMSD, SUBSECTIONS)?,
        })
    }

    pub fn encode(&self, w: &mut BodyWriter) {
        w.buffer("cmos_data", &self.cmos_data);
        w.u8("cmos_index", self.cmos_index);
        w.unused(28);
        w.timer("periodic_timer", self.periodic_timer);
        w.i64("next_periodic_time", self.next_periodic_time);
        w.unused(24);
        w.u32("irq_coalesced", self.irq_coalesced);
        w.u32("period", self.period);
        w.u64("base_rtc", self.base_rtc);
        w.u64("last_update", self.last_update);
        w.i64("offset", self.offset);
        w.timer("update_timer", self.update_timer);
        w.u64("next_alarm_time", self.next_alarm_time);
        write_subsections(w, &self.subsections, SUBSECTIONS);
    }
}
