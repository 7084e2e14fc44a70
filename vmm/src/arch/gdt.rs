//! The boot GDT the VMM installs for every entry protocol, and its KVM segment forms.

use kvm_bindings::kvm_segment;

/// Selectors of the boot GDT. 0x10/0x18 match Linux's `__BOOT_CS`/`__BOOT_DS`.
pub const CODE32_SELECTOR: u16 = 0x08;
pub const CODE64_SELECTOR: u16 = 0x10;
pub const DATA_SELECTOR: u16 = 0x18;
pub const TSS_SELECTOR: u16 = 0x20;

/// GDT entries: null, 32-bit code, 64-bit code, data, and a 16-byte long-mode TSS descriptor.
pub const BOOT_GDT: [u64; 6] = [
    0,
    descriptor(0xc09b, 0, 0xfffff), // 32-bit code: G, D, present, execute/read, accessed
    descriptor(0xa09b, 0, 0xfffff), // 64-bit code: G, L, present, execute/read, accessed
    descriptor(0xc093, 0, 0xfffff), // data: G, B, present, read/write, accessed
    descriptor(0x008b, 0, 0x67),    // busy TSS; KVM only needs TR to be loadable
    0,
];

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
        assert_eq!((tss.type_, tss.s, tss.limit), (0xb, 0, 0x67));
    }
}
