//! `globalstate` (v1): the source's run state, which the destination adopts (§8.15).

use std::io::Read;

use super::{read_body, SectionError};
use crate::vmstate::{BodyWriter, Cursor};
use crate::wire::WireReader;

pub const VMSD: &str = "globalstate";
pub const VERSION: u32 = 1;
pub const BODY_LEN: usize = 104;
const RUNSTATE_LEN: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobalStateSection {
    /// `running`, `paused`, ...
    pub runstate: String,
}

impl GlobalStateSection {
    pub fn decode<R: Read>(wire: &mut WireReader<R>) -> Result<Self, SectionError> {
        let body = read_body(wire, BODY_LEN)?;
        let mut c = Cursor::new(&body);
        let size = c.u32() as usize;
        let buf = c.slice(RUNSTATE_LEN);
        let end = buf.iter().position(|&b| b == 0).unwrap_or(RUNSTATE_LEN);
        if size != end + 1 {
            return Err(SectionError::Invalid {
                section: VMSD.into(),
                why: format!("size {size} does not match the {end}-byte run state"),
            });
        }
        let runstate = std::str::from_utf8(buf.get(..end).unwrap_or_default())
            .map_err(|_| SectionError::Invalid {
                section: VMSD.into(),
                why: "run state is not UTF-8".into(),
            })?
            .to_string();
        Ok(GlobalStateSection { runstate })
    }

    pub fn encode(&self, w: &mut BodyWriter) {
        let mut buf = [0u8; RUNSTATE_LEN];
        let name = self.runstate.as_bytes();
        let len = name.len().min(RUNSTATE_LEN - 1);
        buf.get_mut(..len)
            .unwrap_or_default()
            .copy_from_slice(name.get(..len).unwrap_or_default());
        w.u32("size", len as u32 + 1);
        w.buffer("runstate", &buf);
    }
}
