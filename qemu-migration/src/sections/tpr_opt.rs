//! `kvm-tpr-opt` (v1): QEMU's kvmvapic TPR-patching helper (§8.6). State 0 means inactive, which
//! is what a guest that never ran QEMU's option ROM has.

use std::io::Read;

use super::{read_body, SectionError};
use crate::vmstate::{BodyWriter, Cursor};
use crate::wire::WireReader;

pub const VMSD: &str = "kvm-tpr-opt";
pub const VERSION: u32 = 1;
pub const BODY_LEN: usize = 144;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TprOptSection {
    /// vaddr, fixup_start, fixup_end, vapic_vaddr, vapic_size, vcpu_shift, real_tpr_addr.
    pub rom_header: [u32; 7],
    /// `up` then `mp` handlers: set_tpr, set_tpr_eax, get_tpr[8], get_tpr_stack.
    pub rom_handlers: [u32; 22],
    pub state: u32,
    pub real_tpr_addr: u32,
    pub rom_state_vaddr: u32,
    pub vapic_paddr: u32,
    pub rom_state_paddr: u32,
}

impl TprOptSection {
    pub fn decode<R: Read>(wire: &mut WireReader<R>) -> Result<Self, SectionError> {
        let body = read_body(wire, BODY_LEN)?;
        let mut c = Cursor::new(&body);
        c.skip(8);
        Ok(TprOptSection {
            rom_header: c.u32_array(),
            rom_handlers: c.u32_array(),
            state: c.u32(),
            real_tpr_addr: c.u32(),
            rom_state_vaddr: c.u32(),
            vapic_paddr: c.u32(),
            rom_state_paddr: c.u32(),
        })
    }

    pub fn encode(&self, w: &mut BodyWriter) {
        w.unused(8);
        w.u32_array("rom_state", &self.rom_header);
        w.u32_array("rom_handlers", &self.rom_handlers);
        w.u32("state", self.state);
        w.u32("real_tpr_addr", self.real_tpr_addr);
        w.u32("rom_state_vaddr", self.rom_state_vaddr);
        w.u32("vapic_paddr", self.vapic_paddr);
        w.u32("rom_state_paddr", self.rom_state_paddr);
    }
}
