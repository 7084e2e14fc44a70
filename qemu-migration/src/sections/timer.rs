//! `timer` (v2): the virtual clock at save time, the time base of every other section (§8.1, §9).

use std::io::Read;

use super::{read_body, SectionError};
use crate::vmstate::{BodyWriter, Cursor};
use crate::wire::WireReader;

pub const VMSD: &str = "timer";
pub const VERSION: u32 = 2;
pub const BODY_LEN: usize = 24;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TimerSection {
    /// TCG's tick base; unused under KVM.
    pub cpu_ticks_offset: i64,
    /// QEMU_CLOCK_VIRTUAL in ns when the VM was saved.
    pub cpu_clock_offset: i64,
}

impl TimerSection {
    pub fn decode<R: Read>(wire: &mut WireReader<R>) -> Result<Self, SectionError> {
        let body = read_body(wire, BODY_LEN)?;
        let mut c = Cursor::new(&body);
        let cpu_ticks_offset = c.i64();
        c.skip(8);
        Ok(TimerSection {
            cpu_ticks_offset,
            cpu_clock_offset: c.i64(),
        })
    }

    pub fn encode(&self, w: &mut BodyWriter) {
        w.i64("cpu_ticks_offset", self.cpu_ticks_offset);
        w.unused(8);
        w.i64("cpu_clock_offset", self.cpu_clock_offset);
    }
}
