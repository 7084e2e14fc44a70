//! `i8259` (v1): one PIC; instance 0 is the master (0x20), 1 the slave (0xA0) (§8.8).

use std::io::Read;

use super::{read_body, SectionError};
use crate::vmstate::{BodyWriter, Cursor};
use crate::wire::WireReader;

pub const VMSD: &str = "i8259";
pub const VERSION: u32 = 1;
pub const BODY_LEN: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct I8259Section {
    pub last_irr: u8,
    pub irr: u8,
    pub imr: u8,
    pub isr: u8,
    pub priority_add: u8,
    pub irq_base: u8,
    pub read_reg_select: u8,
    pub poll: u8,
    pub special_mask: u8,
    pub init_state: u8,
    pub auto_eoi: u8,
    pub rotate_on_auto_eoi: u8,
    pub special_fully_nested_mode: u8,
    pub init4: u8,
    pub single_mode: u8,
    pub elcr: u8,
}

impl I8259Section {
    pub fn decode<R: Read>(wire: &mut WireReader<R>) -> Result<Self, SectionError> {
        let body = read_body(wire, BODY_LEN)?;
        let mut c = Cursor::new(&body);
        Ok(I8259Section {
            last_irr: c.u8(),
            irr: c.u8(),
            imr: c.u8(),
            isr: c.u8(),
            priority_add: c.u8(),
            irq_base: c.u8(),
            read_reg_select: c.u8(),
            poll: c.u8(),
            special_mask: c.u8(),
            init_state: c.u8(),
            auto_eoi: c.u8(),
            rotate_on_auto_eoi: c.u8(),
            special_fully_nested_mode: c.u8(),
            init4: c.u8(),
            single_mode: c.u8(),
            elcr: c.u8(),
        })
    }

    pub fn encode(&self, w: &mut BodyWriter) {
        w.u8("last_irr", self.last_irr);
        w.u8("irr", self.irr);
        w.u8("imr", self.imr);
        w.u8("isr", self.isr);
        w.u8("priority_add", self.priority_add);
        w.u8("irq_base", self.irq_base);
        w.u8("read_reg_select", self.read_reg_select);
        w.u8("poll", self.poll);
        w.u8("special_mask", self.special_mask);
        w.u8("init_state", self.init_state);
        w.u8("auto_eoi", self.auto_eoi);
        w.u8("rotate_on_auto_eoi", self.rotate_on_auto_eoi);
        w.u8("special_fully_nested_mode", self.special_fully_nested_mode);
        w.u8("init4", self.init4);
        w.u8("single_mode", self.single_mode);
        w.u8("elcr", self.elcr);
    }
}
