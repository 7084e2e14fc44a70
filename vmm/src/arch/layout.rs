//! The guest-physical address map. Everything a guest may rely on is written down in
//! `docs/PLATFORM.md`; these constants are the single source of it.

/// Start of the 32-bit MMIO hole; RAM above this point is moved to [`HIGH_RAM_START`].
pub const MMIO_HOLE_START: u64 = 0xC000_0000;
/// RAM that does not fit below the hole continues here.
pub const HIGH_RAM_START: u64 = 0x1_0000_0000;
/// PCI memory BARs are placed in `[PCI_MMIO_START, PCI_MMIO_END)`.
pub const PCI_MMIO_START: u64 = MMIO_HOLE_START;
pub const PCI_MMIO_END: u64 = 0xFEC0_0000;
pub const IOAPIC_ADDR: u64 = 0xFEC0_0000;
pub const LAPIC_ADDR: u64 = 0xFEE0_0000;
/// KVM needs three pages for its real-mode TSS somewhere the guest will not use.
pub const KVM_TSS_ADDR: u64 = 0xFFFB_D000;

/// Boot GDT (see `gdt.rs`) and an empty IDT.
pub const GDT_ADDR: u64 = 0x500;
pub const IDT_ADDR: u64 = 0x540;
/// Multiboot information block and its memory map.
pub const MULTIBOOT_INFO_ADDR: u64 = 0x6000;
/// Linux boot_params ("zero page"); also handed to plain 64-bit ELF guests in RSI.
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// PVH `hvm_start_info`, followed by its memory map.
pub const PVH_INFO_ADDR: u64 = 0x6000;
pub const BOOT_STACK_TOP: u64 = 0x8ff0;
/// Boot page tables: PML4, one PDPT, four page directories (identity map of 4 GiB).
pub const PML4_ADDR: u64 = 0x9000;
pub const PDPT_ADDR: u64 = 0xA000;
pub const PD_ADDR: u64 = 0xB000;
pub const IDENTITY_MAPPED_BYTES: u64 = 4 << 30;
pub const CMDLINE_ADDR: u64 = 0x2_0000;
/// The command line may use up to this many bytes, terminator included.
pub const CMDLINE_MAX_BYTES: usize = 0x1_0000;
/// Everything below this belongs to the VMM's boot structures; kernels must load above it.
pub const BOOT_AREA_END: u64 = CMDLINE_ADDR + CMDLINE_MAX_BYTES as u64;
/// Start of the BIOS extended data area; nothing below 1 MiB above this is RAM to the guest.
pub const EBDA_START: u64 = 0x9_FC00;
/// Kernels load at or above 1 MiB.
pub const HIGH_MEMORY_START: u64 = 0x10_0000;
/// ACPI tables, RSDP first, in the legacy BIOS area that OSes scan for the RSDP (reserved in the
/// memory map).
pub const ACPI_TABLES_START: u64 = 0xE_0000;
/// The boot TSS that TR points to at entry, with an I/O permission bitmap that allows every port,
/// in the reserved legacy area (see `gdt::BOOT_TSS_LIMIT`).
pub const BOOT_TSS_ADDR: u64 = 0xC_0000;
pub const ACPI_TABLES_END: u64 = HIGH_MEMORY_START;
/// The highest address Linux accepts an initrd below unless its header says otherwise.
pub const INITRD_ADDR_MAX: u64 = 0x37FF_FFFF;

/// A contiguous piece of guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamRange {
    pub start: u64,
    pub len: u64,
}

impl RamRange {
    pub fn end(&self) -> u64 {
        self.start + self.len
    }
}

/// Splits `mem_bytes` of RAM around the MMIO hole.
pub fn ram_ranges(mem_bytes: u64) -> Vec<RamRange> {
    let low = mem_bytes.min(MMIO_HOLE_START);
    let mut ranges = vec![RamRange { start: 0, len: low }];
    if mem_bytes > low {
        ranges.push(RamRange {
            start: HIGH_RAM_START,
            len: mem_bytes - low,
        });
    }
    ranges
}

/// The kind of an entry in the memory map handed to the guest (e820 numbering).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryKind {
    Ram = 1,
    Reserved = 2,
}

/// One entry of the guest's memory map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryMapEntry {
    pub addr: u64,
    pub len: u64,
    pub kind: MemoryKind,
}

/// The memory map every boot protocol reports (e820, PVH memmap, multiboot mmap): RAM below the
/// EBDA, the reserved legacy area up to 1 MiB, RAM from 1 MiB to the hole, and high RAM.
pub fn memory_map(mem_bytes: u64) -> Vec<MemoryMapEntry> {
    let mut map = vec![
        MemoryMapEntry {
            addr: 0,
            len: EBDA_START,
            kind: MemoryKind::Ram,
        },
        MemoryMapEntry {
            addr: EBDA_START,
            len: HIGH_MEMORY_START - EBDA_START,
            kind: MemoryKind::Reserved,
        },
    ];
    for range in ram_ranges(mem_bytes) {
        let start = range.start.max(HIGH_MEMORY_START);
        if range.end() > start {
            map.push(MemoryMapEntry {
                addr: start,
                len: range.end() - start,
                kind: MemoryKind::Ram,
            });
        }
    }
    map
}

/// End of the RAM below the MMIO hole.
pub fn low_ram_end(mem_bytes: u64) -> u64 {
    mem_bytes.min(MMIO_HOLE_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_ram_is_one_range() {
        assert_eq!(
            ram_ranges(256 << 20),
            vec![RamRange {
                start: 0,
                len: 256 << 20
            }]
        );
    }

    #[test]
    fn large_ram_skips_the_hole() {
        let ranges = ram_ranges(4 << 30);
        assert_eq!(ranges.len(), 2);
        assert_eq!(ranges[0].end(), MMIO_HOLE_START);
        assert_eq!(ranges[1].start, HIGH_RAM_START);
        assert_eq!(ranges[0].len + ranges[1].len, 4 << 30);
    }

    #[test]
    fn memory_map_covers_ram_exactly_once() {
        for mem in [16u64 << 20, 256 << 20, 3 << 30, 5 << 30] {
            let map = memory_map(mem);
            let ram: u64 = map
                .iter()
                .filter(|e| e.kind == MemoryKind::Ram)
                .map(|e| e.len)
                .sum();
            // Everything but the legacy hole between the EBDA and 1 MiB is reported as RAM.
            assert_eq!(ram, mem - (HIGH_MEMORY_START - EBDA_START));
            for pair in map.windows(2) {
                assert!(pair[0].addr + pair[0].len <= pair[1].addr, "{map:?}");
            }
        }
    }

    #[test]
    fn boot_structures_do_not_overlap() {
        let mut areas = [
            (GDT_ADDR, 0x30),
            (IDT_ADDR, 0x10),
            (PVH_INFO_ADDR, 0x1000),
            (ZERO_PAGE_ADDR, 0x1000),
            (PML4_ADDR, 0x1000),
            (PDPT_ADDR, 0x1000),
            (PD_ADDR, 0x4000),
            (CMDLINE_ADDR, CMDLINE_MAX_BYTES as u64),
        ];
        areas.sort();
        for pair in areas.windows(2) {
            assert!(pair[0].0 + pair[0].1 <= pair[1].0, "{pair:?}");
        }
        assert!(CMDLINE_ADDR + CMDLINE_MAX_BYTES as u64 <= EBDA_START);
        // The ACPI tables sit in the reserved part of the memory map, where guests find them.
        const { assert!(EBDA_START <= ACPI_TABLES_START && ACPI_TABLES_END <= HIGH_MEMORY_START) };
        const {
            assert!(
                EBDA_START <= BOOT_TSS_ADDR
                    && BOOT_TSS_ADDR + (crate::arch::gdt::BOOT_TSS_LIMIT as u64)
                        < ACPI_TABLES_START
            )
        };
        assert!(memory_map(256 << 20)
            .iter()
            .any(|e| e.kind == MemoryKind::Reserved
                && e.addr <= ACPI_TABLES_START
                && e.addr + e.len >= ACPI_TABLES_END));
        const { assert!(BOOT_STACK_TOP < PML4_ADDR && BOOT_STACK_TOP > ZERO_PAGE_ADDR + 0x1000) };
    }
}
