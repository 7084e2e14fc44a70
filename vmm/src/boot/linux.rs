//! The Linux boot protocol's zero page (`boot_params`): setup header, command line, initrd, the
//! e820 memory map and the ACPI RSDP's address. Plain 64-bit ELF guests get the same page in RSI.

use linux_loader::bootparam::{boot_e820_entry, boot_params, setup_header};

use crate::arch::layout::{memory_map, CMDLINE_ADDR};

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const CAN_USE_HEAP: u8 = 0x80;
/// End of the real-mode heap relative to the setup code, as QEMU and Firecracker set it.
const HEAP_END: u16 = 0xfe00;
/// The initrd location and size as the kernel sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitrdPlacement {
    pub addr: u64,
    pub size: u64,
}

/// Builds the zero page. `header` is the kernel's own setup header for a bzImage, `None` for an
/// ELF (which has none).
pub fn build_boot_params(
    header: Option<setup_header>,
    cmdline_len: usize,
    initrd: Option<InitrdPlacement>,
    mem_bytes: u64,
    acpi_rsdp_addr: u64,
) -> boot_params {
    let mut params = boot_params::default();
    if let Some(header) = header {
        params.hdr = header;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    params.hdr.loadflags |= CAN_USE_HEAP;
    params.hdr.heap_end_ptr = HEAP_END;
    if let Some(initrd) = initrd {
        params.hdr.ramdisk_image = initrd.addr as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
    }
    let map = memory_map(mem_bytes);
    for (slot, entry) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: entry.addr,
            size: entry.len,
            r#type: entry.kind as u32,
        };
    }
    params.e820_entries = map.len().min(params.e820_table.len()) as u8;
    params.acpi_rsdp_addr = acpi_rsdp_addr;
    params
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::layout::{EBDA_START, HIGH_MEMORY_START};

    #[test]
    fn zero_page_describes_ram_cmdline_and_initrd() {
        let initrd = InitrdPlacement {
            addr: 0x0f00_0000,
            size: 0x12345,
        };
        let params = build_boot_params(None, 42, Some(initrd), 256 << 20, 0xe_0000);
        let hdr = params.hdr;
        assert_eq!({ hdr.boot_flag }, 0xaa55);
        assert_eq!({ hdr.header }, 0x5372_6448);
        assert_eq!({ hdr.cmd_line_ptr }, CMDLINE_ADDR as u32);
        assert_eq!({ hdr.cmdline_size }, 42);
        assert_eq!({ hdr.ramdisk_image }, 0x0f00_0000);
        assert_eq!({ hdr.ramdisk_size }, 0x12345);
        assert_eq!({ params.acpi_rsdp_addr }, 0xe_0000);
        assert_eq!(params.e820_entries, 3);
        let e820 = params.e820_table;
        assert_eq!(
            ({ e820[0].addr }, { e820[0].size }, { e820[0].r#type }),
            (0, EBDA_START, 1)
        );
        assert_eq!({ e820[1].r#type }, 2);
        assert_eq!(
            ({ e820[2].addr }, { e820[2].size }),
            (HIGH_MEMORY_START, (256 << 20) - HIGH_MEMORY_START)
        );
    }

    #[test]
    fn bzimage_header_fields_are_kept() {
        let header = setup_header {
            version: 0x020f,
            code32_start: 0x10_0000,
            xloadflags: 1,
            ..Default::default()
        };
        let params = build_boot_params(Some(header), 1, None, 5 << 30, 0xe_0000);
        assert_eq!({ params.hdr.version }, 0x020f);
        assert_eq!({ params.hdr.xloadflags }, 1);
        assert_eq!({ params.hdr.ramdisk_size }, 0);
        // Low RAM, reserved legacy area, RAM to the hole, RAM above 4 GiB.
        assert_eq!(params.e820_entries, 4);
        assert_eq!({ params.e820_table[3].addr }, 0x1_0000_0000);
    }
}
