//! Multiboot v1 information for 32-bit kernels that carry a Multiboot header but no PVH note.

use crate::arch::layout::{memory_map, MemoryKind, EBDA_START, HIGH_MEMORY_START};

use super::linux::InitrdPlacement;

pub const BOOTLOADER_MAGIC: u32 = 0x2bad_b002;
const INFO_SIZE: usize = 88;
const FLAG_MEM: u32 = 1 << 0;
const FLAG_CMDLINE: u32 = 1 << 2;
const FLAG_MODS: u32 = 1 << 3;
const FLAG_MMAP: u32 = 1 << 6;

/// Serialises the multiboot_info block (with its module list and memory map) placed at `at`.
pub fn build_info(
    at: u64,
    cmdline_addr: u64,
    initrd: Option<InitrdPlacement>,
    mem_bytes: u64,
) -> Vec<u8> {
    let map = memory_map(mem_bytes);
    let upper_kib = map
        .iter()
        .find(|e| e.addr == HIGH_MEMORY_START && e.kind == MemoryKind::Ram)
        .map(|e| e.len >> 10)
        .unwrap_or(0);
    let mods_addr = at + INFO_SIZE as u64;
    let mods_len = if initrd.is_some() { 16 } else { 0 };
    let mmap_addr = mods_addr + mods_len;
    let mut info = [0u32; INFO_SIZE / 4];
    info[0] = FLAG_MEM | FLAG_CMDLINE | FLAG_MMAP | if initrd.is_some() { FLAG_MODS } else { 0 };
    info[1] = (EBDA_START >> 10) as u32;
    info[2] = upper_kib.min(u32::MAX as u64) as u32;
    info[4] = cmdline_addr as u32;
    if initrd.is_some() {
        info[5] = 1;
        info[6] = mods_addr as u32;
    }
    info[11] = (map.len() * 24) as u32;
    info[12] = mmap_addr as u32;
    let mut block: Vec<u8> = info.iter().flat_map(|w| w.to_le_bytes()).collect();
    if let Some(initrd) = initrd {
        for w in [initrd.addr as u32, (initrd.addr + initrd.size) as u32, 0, 0] {
            block.extend_from_slice(&w.to_le_bytes());
        }
    }
    for entry in map {
        block.extend_from_slice(&20u32.to_le_bytes());
        block.extend_from_slice(&entry.addr.to_le_bytes());
        block.extend_from_slice(&entry.len.to_le_bytes());
        block.extend_from_slice(&(entry.kind as u32).to_le_bytes());
    }
    block
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_reports_memory_cmdline_and_map() {
        let block = build_info(0x6000, 0x20000, None, 32 << 20);
        let word = |i: usize| u32::from_le_bytes(block[i * 4..i * 4 + 4].try_into().unwrap());
        assert_eq!(word(0), FLAG_MEM | FLAG_CMDLINE | FLAG_MMAP);
        assert_eq!(word(1), 639);
        assert_eq!(word(2), (31 << 20) >> 10);
        assert_eq!(word(4), 0x20000);
        assert_eq!(word(11), 3 * 24);
        assert_eq!(word(12), 0x6000 + 88);
        assert_eq!(block.len(), 88 + 3 * 24);
    }
}
