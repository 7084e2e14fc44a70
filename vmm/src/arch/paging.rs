//! Identity page tables for guests the VMM enters in long mode.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::layout::{IDENTITY_MAPPED_BYTES, PDPT_ADDR, PD_ADDR, PML4_ADDR};

const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const ACCESSED: u64 = 1 << 5;
const DIRTY: u64 = 1 << 6;
const HUGE: u64 = 1 << 7;
const TWO_MIB: u64 = 2 << 20;

/// Writes a PML4 -> PDPT -> 4 page directories of 2 MiB pages mapping the first 4 GiB 1:1.
/// Accessed/dirty bits are preset so the CPU's page walk never writes to these pages (a write
/// would make them dirty for every snapshot restore).
pub fn write_identity_tables<M: GuestMemoryBackend>(
    mem: &M,
) -> Result<(), vm_memory::GuestMemoryError> {
    let table_flags = PRESENT | WRITABLE | ACCESSED;
    mem.write_obj(PDPT_ADDR | table_flags, GuestAddress(PML4_ADDR))?;
    let directories = IDENTITY_MAPPED_BYTES >> 30;
    for gib in 0..directories {
        let pd = PD_ADDR + gib * 0x1000;
        mem.write_obj(pd | table_flags, GuestAddress(PDPT_ADDR + gib * 8))?;
        let mut entries = [0u64; 512];
        for (i, entry) in entries.iter_mut().enumerate() {
            let addr = (gib << 30) + i as u64 * TWO_MIB;
            *entry = addr | table_flags | DIRTY | HUGE;
        }
        // SAFETY: `[u64; 512]` is plain data; viewing it as bytes is sound.
        let bytes = unsafe { std::slice::from_raw_parts(entries.as_ptr() as *const u8, 4096) };
        mem.write_slice(bytes, GuestAddress(pd))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    type Mem = vm_memory::GuestMemoryMmap<()>;

    /// Walks the tables the way the CPU does for a 2 MiB page.
    fn translate(mem: &Mem, va: u64) -> Option<u64> {
        let pml4e: u64 = mem
            .read_obj(GuestAddress(PML4_ADDR + ((va >> 39) & 511) * 8))
            .ok()?;
        if pml4e & PRESENT == 0 {
            return None;
        }
        let pdpte: u64 = mem
            .read_obj(GuestAddress((pml4e & !0xfff) + ((va >> 30) & 511) * 8))
            .ok()?;
        if pdpte & PRESENT == 0 {
            return None;
        }
        let pde: u64 = mem
            .read_obj(GuestAddress((pdpte & !0xfff) + ((va >> 21) & 511) * 8))
            .ok()?;
        if pde & PRESENT == 0 || pde & HUGE == 0 {
            return None;
        }
        Some((pde & !(TWO_MIB - 1) & ((1 << 52) - 1)) | (va & (TWO_MIB - 1)))
    }

    #[test]
    fn maps_the_first_four_gib_one_to_one() {
        let mem = Mem::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        write_identity_tables(&mem).unwrap();
        for va in [
            0u64,
            0x1234,
            0x20_0000,
            0x3fff_ffff,
            0x4000_0000,
            0xfee0_0000,
            0xffff_ffff,
        ] {
            assert_eq!(translate(&mem, va), Some(va), "va {va:#x}");
        }
        assert_eq!(translate(&mem, 0x1_0000_0000), None);
        let pde: u64 = mem.read_obj(GuestAddress(PD_ADDR)).unwrap();
        assert_eq!(pde & (ACCESSED | DIRTY), ACCESSED | DIRTY);
    }
}
