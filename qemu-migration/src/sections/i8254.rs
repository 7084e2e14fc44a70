//! `i8254` (v3): the PIT's three channels; times are QEMU_CLOCK_VIRTUAL ns (§8.9).

use std::io::Read;

use super::{read_body, SectionError};
use crate::vmstate::{BodyWriter, Cursor};
use crate::wire::WireReader;

pub const VMSD: &str = "i8254";
pub const VERSION: u32 = 3;
pub const BODY_LEN: usize = 108;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PitChannel {
    pub count: i32,
    pub latched_count: u16,
    pub count_latched: u8,
    pub status_latched: u8,
    pub status: u8,
    pub read_state: u8,
    pub write_state: u8,
    pub write_latch: u8,
    pub rw_mode: u8,
    pub mode: u8,
    pub bcd: u8,
    pub gate: u8,
    pub count_load_time: i64,
    pub next_transition_time: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct I8254Section {
    /// Channel 0's IRQ is off (HPET legacy replacement mode).
    pub irq_disabled: u32,
    pub channels: [PitChannel; 3],
    /// Channel 0's next_transition_time again (QEMU sends it twice).
    pub channel0_next_transition_time: i64,
}

impl PitChannel {
    fn decode(c: &mut Cursor) -> Self {
        PitChannel {
            count: c.i32(),
            latched_count: c.u16(),
            count_latched: c.u8(),
            status_latched: c.u8(),
            status: c.u8(),
            read_state: c.u8(),
            write_state: c.u8(),
            write_latch: c.u8(),
            rw_mode: c.u8(),
            mode: c.u8(),
            bcd: c.u8(),
            gate: c.u8(),
            count_load_time: c.i64(),
            next_transition_time: c.i64(),
        }
    }

    fn encode(&self, w: &mut BodyWriter) {
        w.i32("count", self.count);
        w.u16("latched_count", self.latched_count);
        w.u8("count_latched", self.count_latched);
        w.u8("status_latched", self.status_latched);
        w.u8("status", self.status);
        w.u8("read_state", self.read_state);
        w.u8("write_state", self.write_state);
        w.u8("write_latch", self.write_latch);
        w.u8("rw_mode", self.rw_mode);
        w.u8("mode", self.mode);
        w.u8("bcd", self.bcd);
        w.u8("gate", self.gate);
        w.i64("count_load_time", self.count_load_time);
        w.i64("next_transition_time", self.next_transition_time);
    }
}

impl I8254Section {
    pub fn decode<R: Read>(wire: &mut WireReader<R>) -> Result<Self, SectionError> {
        let body = read_body(wire, BODY_LEN)?;
        let mut c = Cursor::new(&body);
        let irq_disabled = c.u32();
        let channels = std::array::from_fn(|_| PitChannel::decode(&mut c));
        Ok(I8254Section {
            irq_disabled,
            channels,
            channel0_next_transition_time: c.i64(),
        })
    }

    pub fn encode(&self, w: &mut BodyWriter) {
        w.u32("channels[0].irq_disabled", self.irq_disabled);
        for channel in &self.channels {
            channel.encode(w);
        }
        w.i64(
            "channels[0].next_transition_time",
            self.channel0_next_transition_time,
        );
    }
}
