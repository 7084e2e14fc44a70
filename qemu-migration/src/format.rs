//! Constants of the QEMU 7.2 stream (reference §2, §4, §6).

pub const MAGIC: u32 = 0x5145_564D;
pub const VERSION: u32 = 3;

pub const EOF: u8 = 0x00;
pub const SECTION_START: u8 = 0x01;
pub const SECTION_PART: u8 = 0x02;
pub const SECTION_END: u8 = 0x03;
pub const SECTION_FULL: u8 = 0x04;
pub const SUBSECTION: u8 = 0x05;
pub const VMDESCRIPTION: u8 = 0x06;
pub const CONFIGURATION: u8 = 0x07;
pub const COMMAND: u8 = 0x08;
pub const SECTION_FOOTER: u8 = 0x7e;

/// The x86 target page.
pub const PAGE_SIZE: usize = 4096;
pub const PAGE_MASK: u64 = PAGE_SIZE as u64 - 1;

pub const RAM_IDSTR: &str = "ram";
pub const RAM_VERSION: u32 = 4;

pub mod ram_flags {
    pub const ZERO: u64 = 0x002;
    pub const MEM_SIZE: u64 = 0x004;
    pub const PAGE: u64 = 0x008;
    pub const EOS: u64 = 0x010;
    pub const CONTINUE: u64 = 0x020;
}
