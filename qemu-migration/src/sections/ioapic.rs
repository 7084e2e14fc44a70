//! `ioapic` (v3): the IOAPIC's id, select register, IRR and 24 redirection entries (§8.7).

use std::io::Read;

use super::{read_body, SectionError};
use crate::vmstate::{BodyWriter, Cursor};
use crate::wire::WireReader;

pub const VMSD: &str = "ioapic";
pub const VERSION: u32 = 3;
pub const BODY_LEN: usize = 206;
pub const NUM_PINS: usize = 24;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoapicSection {
    pub id: u8,
    pub ioregsel: u8,
    pub irr: u32,
    pub ioredtbl: [u64; NUM_PINS],
}

impl Default for IoapicSection {
    fn default() -> Self {
        IoapicSection {
            id: 0,
            ioregsel: 0,
            irr: 0,
            // Masked, as after reset.
            ioredtbl: [1 << 16; NUM_PINS],
        }
    }
}

impl IoapicSection {
    pub fn decode<R: Read>(wire: &mut WireReader<R>) -> Result<Self, SectionError> {
        let body = read_body(wire, BODY_LEN)?;
        let mut c = Cursor::new(&body);
        let id = c.u8();
        let ioregsel = c.u8();
        c.skip(8);
        Ok(IoapicSection {
            id,
            ioregsel,
            irr: c.u32(),
            ioredtbl: c.u64_array(),
        })
    }

    pub fn encode(&self, w: &mut BodyWriter) {
        w.u8("id", self.id);
        w.u8("ioregsel", self.ioregsel);
        w.unused(8);
        w.u32("irr", self.irr);
        w.u64_array("ioredtbl", &self.ioredtbl);
    }
}
