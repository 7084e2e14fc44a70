//! The boot GDT the VMM installs for every entry protocol, and its KVM segment forms.

use kvm_bindings::kvm_segment;

use super::layout::BOOT_TSS_ADDR;

/// Selectors of the boot GDT. 0x10/0x18 match Linux's `__BOOT_CS`/`__BOOT_DS`.
pub const CODE32_SELECTOR: u16 = 0x08;
pub const CODE64_SELECTOR: u16 = 0x10;
pub const DATA_SELECTOR: u16 = 0x18;
pub const TSS_SELECTOR: u16 = 0x20;

/// Bytes of the TSS proper; its I/O permission bitmap follows at this offset.
pub const TSS_IO_BITMAP_OFFSET: u16 = 0x68;
/// One bit per port (65536), plus the byte of ones the CPU may read past the last port.
pub const TSS_IO_BITMAP_BYTES: usize = 65536 / 8 + 1;
/// The boot TSS's limit: TSS, bitmap and its terminating byte.
pub const BOOT_TSS_LIMIT: u32 = TSS_IO_BITMAP_OFFSET as u32 + TSS_IO_BITMAP_BYTES as u32 - 1;

/// GDT entries: null, 32-bit code, 64-bit code, data, and a 16-byte long-mode TSS descriptor.
///
/// The TSS (at `BOOT_TSS_ADDR`) matters to a guest that never loads TR and does port I/O at
/// CPL3: hardware KVM allows it with RFLAGS.IOPL=3, but kvm_pvm ignores IOPL there and consults
/// the TSS I/O bitmap. This one allows every port, so such a guest runs the same on both, and
/// whenever IOPL < 3 both consult the same bitmap.
pub const BOOT_GDT: [u64; 6] = [
    0,
    descriptor(0xc09b, 0, 0xfffff), // 32-bit code: G, D, present, execute/read, accessed
    descriptor(0xa09b, 0, 0xfffff), // 64-bit code: G, L, present, execute/read, accessed
    descriptor(0xc093, 0, 0xfffff), // data: G, B, present, read/write, accessed
    descriptor(0x008b, BOOT_TSS_ADDR as u32, BOOT_TSS_LIMIT), // busy 64/32-bit TSS
    0,                              // the TSS descriptor's upper half: base bits 32-63 are zero
];

/// The boot TSS's bytes: zero but for the I/O bitmap's offset, an all-zero (every port allowed)
/// bitmap, and the bitmap's terminating byte of ones.
pub fn boot_tss() -> Vec<u8> {
    let mut tss = vec![0u8; BOOT_TSS_LIMIT as usize + 1];
    // The I/O map base is the 16-bit field at offset 0x66 of both the 32- and 64-bit TSS.
    tss[0x66..0x68].copy_from_slice(&TSS_IO_BITMAP_OFFSET.to_le_bytes());
    tss[BOOT_TSS_LIMIT as usize] = 0xff;
    tss
}

/// Packs a segment descriptor from its flag bits (as in the access byte plus the G/D/L nibble
/// shifted left by 8), base and 20-bit limit.
const fn descriptor(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The `kvm_segment` that loading `selector` from [`BOOT_GDT`] would produce.
pub fn segment(selector: u16) -> kvm_segment {
    let entry = BOOT_GDT[(selector >> 3) as usize];
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)) as u32;
    let granular = (entry >> 55) & 1 == 1;
    kvm_segment {
        base,
        limit: if granular {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: granular as u8,
        avl: ((entry >> 52) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_match_their_well_known_encodings() {
        assert_eq!(BOOT_GDT[1], 0x00cf_9b00_0000_ffff);
        assert_eq!(BOOT_GDT[2], 0x00af_9b00_0000_ffff);
        assert_eq!(BOOT_GDT[3], 0x00cf_9300_0000_ffff);
    }

    #[test]
    fn segments_decode_from_the_table() {
        let code64 = segment(CODE64_SELECTOR);
        assert_eq!((code64.l, code64.db, code64.type_), (1, 0, 0xb));
        assert_eq!(code64.limit, 0xffff_ffff);
        let code32 = segment(CODE32_SELECTOR);
        assert_eq!((code32.l, code32.db), (0, 1));
        let data = segment(DATA_SELECTOR);
        assert_eq!((data.type_, data.s, data.present), (3, 1, 1));
        let tss = segment(TSS_SELECTOR);
        assert_eq!((tss.type_, tss.s), (0xb, 0));
        assert_eq!((tss.base, tss.limit), (BOOT_TSS_ADDR, BOOT_TSS_LIMIT));
    }

    #[test]
    fn the_boot_tss_allows_every_port() {
        let tss = boot_tss();
        assert_eq!(tss.len(), BOOT_TSS_LIMIT as usize + 1);
        let bitmap = u16::from_le_bytes([tss[0x66], tss[0x67]]) as usize;
        // Every port's bit is inside the limit and clear; the byte after the last port is ones.
        assert!(tss[bitmap..bitmap + 8192].iter().all(|&byte| byte == 0));
        assert_eq!(tss[bitmap + 8192], 0xff);
    }
}
