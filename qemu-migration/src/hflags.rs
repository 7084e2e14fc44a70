//! QEMU's hidden CPU flags (`env->hflags`, `env->hflags2`), derived from architectural state the
//! way QEMU 7.2 derives them after KVM_GET_SREGS/KVM_GET_VCPU_EVENTS (`x86_update_hflags`,
//! `cpu_sync_avx_hflag`, `kvm_get_vcpu_events`); and the event bits QEMU takes back from them on load.

pub const HF_CPL_MASK: u32 = 3;
pub const HF_INHIBIT_IRQ_MASK: u32 = 1 << 3;
pub const HF_CS32_MASK: u32 = 1 << 4;
pub const HF_SS32_MASK: u32 = 1 << 5;
pub const HF_ADDSEG_MASK: u32 = 1 << 6;
pub const HF_PE_MASK: u32 = 1 << 7;
pub const HF_TF_MASK: u32 = 1 << 8;
pub const HF_MP_MASK: u32 = 1 << 9;
pub const HF_EM_MASK: u32 = 1 << 10;
pub const HF_TS_MASK: u32 = 1 << 11;
pub const HF_IOPL_MASK: u32 = 3 << 12;
pub const HF_LMA_MASK: u32 = 1 << 14;
pub const HF_CS64_MASK: u32 = 1 << 15;
pub const HF_VM_MASK: u32 = 1 << 17;
pub const HF_SMM_MASK: u32 = 1 << 19;
pub const HF_SVME_MASK: u32 = 1 << 20;
pub const HF_OSFXSR_MASK: u32 = 1 << 22;
pub const HF_AVX_EN_MASK: u32 = 1 << 28;

pub const HF2_GIF_MASK: u32 = 1 << 0;
pub const HF2_NMI_MASK: u32 = 1 << 2;
pub const HF2_SMM_INSIDE_NMI_MASK: u32 = 1 << 4;
pub const HF2_VGIF_MASK: u32 = 1 << 8;

const CR0_PE: u64 = 1 << 0;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXSAVE: u64 = 1 << 18;
const EFER_LMA: u64 = 1 << 10;
const EFER_SVME: u64 = 1 << 12;
const EFLAGS_VM: u64 = 1 << 17;
/// Segment flags (descriptor high dword): D/B and L bits, and the DPL field.
const DESC_B_MASK: u32 = 1 << 22;
const DESC_L_MASK: u32 = 1 << 21;
const DESC_DPL_SHIFT: u32 = 13;
const XSTATE_SSE_YMM: u64 = 0b110;

/// The architectural state hflags depend on.
#[derive(Debug, Clone, Copy, Default)]
pub struct HflagInputs {
    pub cr0: u64,
    pub cr4: u64,
    pub efer: u64,
    pub eflags: u64,
    pub xcr0: u64,
    /// QEMU segment flags of CS and SS.
    pub cs_flags: u32,
    pub ss_flags: u32,
    pub ds_base: u64,
    pub es_base: u64,
    pub ss_base: u64,
    /// KVM vcpu_events.interrupt.shadow != 0.
    pub interrupt_shadow: bool,
    /// KVM vcpu_events.smi.smm.
    pub in_smm: bool,
    /// KVM vcpu_events.nmi.masked.
    pub nmi_masked: bool,
    /// KVM vcpu_events.smi.smm_inside_nmi.
    pub smm_inside_nmi: bool,
}

/// `env->hflags` as QEMU computes it for a KVM vCPU.
pub fn hflags(s: &HflagInputs) -> u32 {
    let mut hflags = (s.ss_flags >> DESC_DPL_SHIFT) & HF_CPL_MASK;
    if s.cr0 & CR0_PE != 0 {
        hflags |= HF_PE_MASK;
    }
    // CR0.MP/EM/TS are bits 1-3; HF_MP/EM/TS are bits 9-11.
    hflags |= ((s.cr0 << 8) as u32) & (HF_MP_MASK | HF_EM_MASK | HF_TS_MASK);
    // EFLAGS.TF (8), IOPL (12-13) and VM (17) sit at the same bit positions in hflags.
    hflags |= (s.eflags as u32) & (HF_TF_MASK | HF_VM_MASK | HF_IOPL_MASK);
    if s.cr4 & CR4_OSFXSR != 0 {
        hflags |= HF_OSFXSR_MASK;
    }
    if s.efer & EFER_LMA != 0 {
        hflags |= HF_LMA_MASK;
    }
    if hflags & HF_LMA_MASK != 0 && s.cs_flags & DESC_L_MASK != 0 {
        hflags |= HF_CS32_MASK | HF_SS32_MASK | HF_CS64_MASK;
    } else {
        if s.cs_flags & DESC_B_MASK != 0 {
            hflags |= HF_CS32_MASK;
        }
        if s.ss_flags & DESC_B_MASK != 0 {
            hflags |= HF_SS32_MASK;
        }
        let real_or_vm86_or_16bit =
            s.cr0 & CR0_PE == 0 || s.eflags & EFLAGS_VM != 0 || hflags & HF_CS32_MASK == 0;
        if real_or_vm86_or_16bit || (s.ds_base | s.es_base | s.ss_base) != 0 {
            hflags |= HF_ADDSEG_MASK;
        }
    }
    if s.efer & EFER_SVME != 0 {
        hflags |= HF_SVME_MASK;
    }
    if s.cr4 & CR4_OSXSAVE != 0 && s.xcr0 & XSTATE_SSE_YMM == XSTATE_SSE_YMM {
        hflags |= HF_AVX_EN_MASK;
    }
    if s.interrupt_shadow {
        hflags |= HF_INHIBIT_IRQ_MASK;
    }
    if s.in_smm {
        hflags |= HF_SMM_MASK;
    }
    hflags
}

/// `env->hflags2`: GIF and VGIF set as after reset, plus the NMI bits from KVM's events.
pub fn hflags2(s: &HflagInputs) -> u32 {
    let mut hflags2 = HF2_GIF_MASK | HF2_VGIF_MASK;
    if s.nmi_masked {
        hflags2 |= HF2_NMI_MASK;
    }
    if s.smm_inside_nmi {
        hflags2 |= HF2_SMM_INSIDE_NMI_MASK;
    }
    hflags2
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLAT32_CODE: u32 = 0xc09b00;
    const FLAT32_DATA: u32 = 0xc09300;

    #[test]
    fn firmware_in_flat_protected_mode() {
        // A real 7.2 KVM stream of SeaBIOS idling: cr0 0x11, flat 32-bit segments.
        let s = HflagInputs {
            cr0: 0x11,
            cs_flags: FLAT32_CODE,
            ss_flags: FLAT32_DATA,
            xcr0: 1,
            ..Default::default()
        };
        assert_eq!(hflags(&s), 0xb0);
        assert_eq!(hflags2(&s), 0x101);
    }

    #[test]
    fn long_mode_kernel() {
        // The reference's 64-bit Linux example: 0x0040c2b0 (without AVX, as under TCG).
        let s = HflagInputs {
            cr0: 0x8005_0033,
            cr4: 0x0020_06b0 & !CR4_OSXSAVE,
            efer: 0xd01,
            cs_flags: 0x00a0_9b00,
            ss_flags: 0x00c0_9300,
            ..Default::default()
        };
        assert_eq!(hflags(&s), 0x0040_c2b0);
    }

    #[test]
    fn real_mode_has_addseg_and_ring3_cpl() {
        let s = HflagInputs {
            cr0: 0x10,
            eflags: 0x3202,
            ss_flags: 3 << DESC_DPL_SHIFT,
            interrupt_shadow: true,
            nmi_masked: true,
            ..Default::default()
        };
        let h = hflags(&s);
        assert_eq!(h & HF_CPL_MASK, 3);
        assert_ne!(h & HF_ADDSEG_MASK, 0);
        assert_eq!(h & HF_IOPL_MASK, HF_IOPL_MASK);
        assert_ne!(h & HF_INHIBIT_IRQ_MASK, 0);
        assert_eq!(hflags2(&s), 0x105);
    }
}
