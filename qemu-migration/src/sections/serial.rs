//! `serial` (isa-serial, v3): the 16550A registers and, in subsections, FIFOs and timers (§8.13).

use std::io::Read;

use super::{read_body, read_subsections, write_subsections, SectionError, SubsectionSpec};
use crate::vmstate::{BodyWriter, Cursor, RawSubsection};
use crate::wire::WireReader;

pub const VMSD: &str = "serial";
pub const VERSION: u32 = 3;
pub const BODY_LEN: usize = 11;
pub const FIFO_LEN: usize = 16;
pub const RECV_FIFO: &str = "serial/recv_fifo";

const FIFO_FIELDS: super::SubsectionFields = &[
    ("data", "buffer", FIFO_LEN, 0),
    ("head", "uint32", 4, 0),
    ("num", "uint32", 4, 0),
];

pub const SUBSECTIONS: &[SubsectionSpec] = &[
    SubsectionSpec {
        name: "serial/thr_ipending",
        version: 1,
        fields: &[("thr_ipending", "int32", 4, 0)],
    },
    SubsectionSpec {
        name: "serial/tsr",
        version: 1,
        fields: &[
            ("tsr_retry", "uint32", 4, 0),
            ("thr", "uint8", 1, 0),
            ("tsr", "uint8", 1, 0),
        ],
    },
    SubsectionSpec {
        name: RECV_FIFO,
        version: 1,
        fields: FIFO_FIELDS,
    },
    SubsectionSpec {
        name: "serial/xmit_fifo",
        version: 1,
        fields: FIFO_FIELDS,
    },
    SubsectionSpec {
        name: "serial/fifo_timeout_timer",
        version: 1,
        fields: &[("fifo_timeout_timer", "timer", 8, 0)],
    },
    SubsectionSpec {
        name: "serial/timeout_ipending",
        version: 1,
        fields: &[("timeout_ipending", "int32", 4, 0)],
    },
    SubsectionSpec {
        name: "serial/poll",
        version: 1,
        fields: &[
            ("poll_msl", "int32", 4, 0),
            ("modem_status_poll", "timer", 8, 0),
        ],
    },
];

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SerialSection {
    pub divider: u16,
    pub rbr: u8,
    pub ier: u8,
    pub iir: u8,
    pub lcr: u8,
    pub mcr: u8,
    pub lsr: u8,
    pub msr: u8,
    pub scr: u8,
    pub fcr: u8,
    pub subsections: Vec<RawSubsection>,
}

impl SerialSection {
    pub fn decode<R: Read>(wire: &mut WireReader<R>) -> Result<Self, SectionError> {
        let body = read_body(wire, BODY_LEN)?;
        let mut c = Cursor::new(&body);
        Ok(SerialSection {
            divider: c.u16(),
            rbr: c.u8(),
            ier: c.u8(),
            iir: c.u8(),
            lcr: c.u8(),
            mcr: c.u8(),
            lsr: c.u8(),
            msr: c.u8(),
            scr: c.u8(),
            fcr: c.u8(),
            // The inner `serial` struct's subsections; the outer vmsd (also `serial`) has none.
            subsections: read_subsections(wire, VMSD, SUBSECTIONS)?,
        })
    }

    pub fn encode(&self, w: &mut BodyWriter) {
        w.u16("divider", self.divider);
        w.u8("rbr", self.rbr);
        w.u8("ier", self.ier);
        w.u8("iir", self.iir);
        w.u8("lcr", self.lcr);
        w.u8("mcr", self.mcr);
        w.u8("lsr", self.lsr);
        w.u8("msr", self.msr);
        w.u8("scr", self.scr);
        w.u8("fcr_vmstate", self.fcr);
        write_subsections(w, &self.subsections, SUBSECTIONS);
    }

    /// Bytes in the receive FIFO, oldest first.
    pub fn recv_fifo(&self) -> Vec<u8> {
        let Some(body) = super::find_subsection(&self.subsections, RECV_FIFO) else {
            return Vec::new();
        };
        let mut c = Cursor::new(body);
        let data = c.slice(FIFO_LEN);
        let head = c.u32() as usize % FIFO_LEN;
        let num = (c.u32() as usize).min(FIFO_LEN);
        (0..num)
            .filter_map(|i| data.get((head + i) % FIFO_LEN).copied())
            .collect()
    }

    /// Sets the receive FIFO (at most 16 bytes are kept), or removes it when empty.
    pub fn set_recv_fifo(&mut self, bytes: &[u8]) {
        self.subsections.retain(|sub| sub.name != RECV_FIFO);
        if bytes.is_empty() {
            return;
        }
        let num = bytes.len().min(FIFO_LEN);
        let mut body = vec![0u8; FIFO_LEN];
        body.get_mut(..num)
            .unwrap_or_default()
            .copy_from_slice(bytes.get(..num).unwrap_or_default());
        body.extend_from_slice(&0u32.to_be_bytes());
        body.extend_from_slice(&(num as u32).to_be_bytes());
        self.subsections.push(RawSubsection {
            name: RECV_FIFO.into(),
            version: 1,
            body,
        });
    }
}
