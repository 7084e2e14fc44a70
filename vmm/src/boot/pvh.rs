//! The PVH boot protocol's `hvm_start_info`, written as the little-endian byte layout the
//! protocol fixes (xen/include/public/arch-x86/hvm/start_info.h).

use crate::arch::layout::{memory_map, MemoryKind};

use super::linux::InitrdPlacement;

pub const START_INFO_MAGIC: u32 = 0x336e_c578;
const START_INFO_SIZE: usize = 56;
const MODLIST_ENTRY_SIZE: usize = 32;
const MEMMAP_ENTRY_SIZE: usize = 24;
/// `hvm_memmap_table_entry` type for reserved memory (e820 numbering, as for RAM = 1).
const MEMMAP_RESERVED: u32 = 2;

/// Serialises start_info plus its module list and memory map into one block placed at `at`.
pub fn build_start_info(
    at: u64,
    cmdline_addr: u64,
    initrd: Option<InitrdPlacement>,
    mem_bytes: u64,
    rsdp_addr: u64,
) -> Vec<u8> {
    let map = memory_map(mem_bytes);
    let modlist_addr = at + START_INFO_SIZE as u64;
    let modules = initrd.iter().count();
    let memmap_addr = modlist_addr + (modules * MODLIST_ENTRY_SIZE) as u64;
    let mut block =
        Vec::with_capacity(START_INFO_SIZE + MODLIST_ENTRY_SIZE + map.len() * MEMMAP_ENTRY_SIZE);
    let put32 = |b: &mut Vec<u8>, v: u32| b.extend_from_slice(&v.to_le_bytes());
    let put64 = |b: &mut Vec<u8>, v: u64| b.extend_from_slice(&v.to_le_bytes());
    put32(&mut block, START_INFO_MAGIC);
    put32(&mut block, 1); // version 1: has the memory map fields
    put32(&mut block, 0); // flags
    put32(&mut block, modules as u32);
    put64(&mut block, if modules > 0 { modlist_addr } else { 0 });
    put64(&mut block, cmdline_addr);
    put64(&mut block, rsdp_addr);
    put64(&mut block, memmap_addr);
    put32(&mut block, map.len() as u32);
    put32(&mut block, 0);
    if let Some(initrd) = initrd {
        put64(&mut block, initrd.addr);
        put64(&mut block, initrd.size);
        put64(&mut block, 0);
        put64(&mut block, 0);
    }
    for entry in map {
        put64(&mut block, entry.addr);
        put64(&mut block, entry.len);
        put32(
            &mut block,
            match entry.kind {
                MemoryKind::Ram => 1,
                MemoryKind::Reserved => MEMMAP_RESERVED,
            },
        );
        put32(&mut block, 0);
    }
    block
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u32_at(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], o: usize) -> u64 {
        u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
    }

    #[test]
    fn start_info_points_at_its_module_and_memory_map() {
        let initrd = InitrdPlacement {
            addr: 0x800_0000,
            size: 4096,
        };
        let block = build_start_info(0x6000, 0x20000, Some(initrd), 64 << 20, 0xe_0000);
        assert_eq!(u32_at(&block, 0), START_INFO_MAGIC);
        assert_eq!(u32_at(&block, 4), 1);
        assert_eq!(u32_at(&block, 12), 1);
        assert_eq!(u64_at(&block, 16), 0x6000 + 56);
        assert_eq!(u64_at(&block, 24), 0x20000);
        assert_eq!(u64_at(&block, 32), 0xe_0000, "rsdp_paddr");
        let memmap = u64_at(&block, 40) as usize - 0x6000;
        assert_eq!(memmap, 56 + 32);
        assert_eq!(u32_at(&block, 48), 3);
        assert_eq!(u64_at(&block, 56), 0x800_0000);
        // The third map entry is RAM from 1 MiB to the end.
        let third = memmap + 2 * 24;
        assert_eq!(u64_at(&block, third), 0x10_0000);
        assert_eq!(u64_at(&block, third + 8), (64 << 20) - 0x10_0000);
        assert_eq!(u32_at(&block, third + 16), 1);
        assert_eq!(block.len(), third + 24);
    }
}
