//! The initial vCPU state: registers for each entry protocol, CPUID, MSRs, FPU and LAPIC set-up.
//! Pure functions over KVM's structures, so they are unit-tested without /dev/kvm.

use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_sregs, CpuId};

use super::gdt::{self, CODE32_SELECTOR, CODE64_SELECTOR, DATA_SELECTOR, TSS_SELECTOR};
use super::layout::{BOOT_STACK_TOP, GDT_ADDR, IDT_ADDR, PML4_ADDR};

const CR0_PE: u64 = 1 << 0;
const CR0_MP: u64 = 1 << 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_WP: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const EFER_SCE: u64 = 1 << 0;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// How the guest is entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryPoint {
    /// Long mode with identity paging, `rsi` pointing at boot_params (Linux 64-bit boot protocol;
    /// also used for plain 64-bit ELFs).
    Long64 { rip: u64, rsi: u64 },
    /// 32-bit protected mode, paging off (PVH: `ebx` = start_info; Multiboot: `eax` = magic,
    /// `ebx` = info).
    Protected32 { eip: u64, eax: u64, ebx: u64 },
}

/// General-purpose registers at entry.
pub fn entry_regs(entry: EntryPoint) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: 0x2,
        rsp: BOOT_STACK_TOP,
        ..Default::default()
    };
    match entry {
        EntryPoint::Long64 { rip, rsi } => {
            regs.rip = rip;
            regs.rsi = rsi;
        }
        EntryPoint::Protected32 { eip, eax, ebx } => {
            regs.rip = eip;
            regs.rax = eax;
            regs.rbx = ebx;
        }
    }
    regs
}

/// Segment and control registers at entry, on top of the vCPU's reset state `base` (which keeps
/// KVM's APIC base and interrupt bitmap).
pub fn entry_sregs(entry: EntryPoint, base: &kvm_sregs) -> kvm_sregs {
    let mut sregs = *base;
    let data = gdt::segment(DATA_SELECTOR);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = gdt::segment(TSS_SELECTOR);
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (std::mem::size_of_val(&gdt::BOOT_GDT) - 1) as u16;
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = 0;
    match entry {
        EntryPoint::Long64 { .. } => {
            sregs.cs = gdt::segment(CODE64_SELECTOR);
            sregs.cr3 = PML4_ADDR;
            sregs.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
            sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
            sregs.efer = EFER_LME | EFER_LMA | EFER_SCE;
        }
        EntryPoint::Protected32 { .. } => {
            sregs.cs = gdt::segment(CODE32_SELECTOR);
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.cr0 = CR0_PE | CR0_ET;
            sregs.efer = 0;
        }
    }
    sregs
}

/// x87 and SSE control words as after FNINIT / reset.
pub fn entry_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

pub const MSR_IA32_SYSENTER_CS: u32 = 0x174;
pub const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
pub const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
pub const MSR_STAR: u32 = 0xc000_0081;
pub const MSR_LSTAR: u32 = 0xc000_0082;
pub const MSR_CSTAR: u32 = 0xc000_0083;
pub const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
pub const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
pub const MSR_IA32_TSC: u32 = 0x10;
pub const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
pub const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;

/// MSR values at entry: syscall MSRs cleared, fast strings on, MTRRs enabled with write-back as
/// the default type (otherwise Linux treats all memory as uncached).
pub fn entry_msrs() -> Vec<kvm_msr_entry> {
    let entry = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        entry(MSR_IA32_SYSENTER_CS, 0),
        entry(MSR_IA32_SYSENTER_ESP, 0),
        entry(MSR_IA32_SYSENTER_EIP, 0),
        entry(MSR_STAR, 0),
        entry(MSR_CSTAR, 0),
        entry(MSR_KERNEL_GS_BASE, 0),
        entry(MSR_SYSCALL_MASK, 0),
        entry(MSR_LSTAR, 0),
        entry(MSR_IA32_TSC, 0),
        entry(MSR_IA32_MISC_ENABLE, 1),
        entry(MSR_MTRR_DEF_TYPE, (1 << 11) | 6),
    ]
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn lapic_reg(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let bytes = &lapic.regs[offset..offset + 4];
    u32::from_le_bytes([
        bytes[0] as u8,
        bytes[1] as u8,
        bytes[2] as u8,
        bytes[3] as u8,
    ])
}

fn set_lapic_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, byte) in value.to_le_bytes().iter().enumerate() {
        lapic.regs[offset + i] = *byte as _;
    }
}

/// LINT0 delivers the PIC's interrupts (ExtINT), LINT1 NMIs: the wiring of a PC, which a kernel
/// without MP or ACPI tables assumes.
pub fn wire_lapic_lint(lapic: &mut kvm_lapic_state) {
    let lvt0 = lapic_reg(lapic, APIC_LVT0);
    set_lapic_reg(lapic, APIC_LVT0, (lvt0 & !0x700) | (APIC_MODE_EXTINT << 8));
    let lvt1 = lapic_reg(lapic, APIC_LVT1);
    set_lapic_reg(lapic, APIC_LVT1, (lvt1 & !0x700) | (APIC_MODE_NMI << 8));
}

/// CPUID.1:ECX bit of the LAPIC timer's TSC-deadline mode.
pub const CPUID_1_ECX_TSC_DEADLINE: u32 = 1 << 24;

/// Adjusts KVM's supported CPUID for vCPU `cpu_index`: its APIC IDs, the hypervisor bit so the
/// guest knows it is virtualised, and, when KVM has `KVM_CAP_TSC_DEADLINE_TIMER`
/// (`tsc_deadline`), the LAPIC timer's TSC-deadline mode. KVM emulates that mode but does not
/// list it in KVM_GET_SUPPORTED_CPUID; QEMU adds it the same way. Without it KVM masks the mode
/// out of LVTT, and a guest that was using it elsewhere (a Linux resumed from a QEMU stream,
/// whose clockevent is `lapic-deadline`) never gets another timer interrupt.
pub fn patch_cpuid(cpuid: &mut CpuId, cpu_index: u8, tsc_deadline: bool) {
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            1 => {
                entry.ebx = (entry.ebx & 0x00ff_ffff) | ((cpu_index as u32) << 24);
                entry.ecx |= 1 << 31;
                if tsc_deadline {
                    entry.ecx |= CPUID_1_ECX_TSC_DEADLINE;
                }
            }
            0xb | 0x1f => entry.edx = cpu_index as u32,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_mode_entry_enables_paging_and_long_mode() {
        let entry = EntryPoint::Long64 {
            rip: 0x10_0000,
            rsi: 0x7000,
        };
        let sregs = entry_sregs(entry, &kvm_sregs::default());
        assert_eq!(sregs.cs.l, 1);
        assert_eq!(sregs.cs.selector, 0x10);
        assert_eq!(sregs.ds.selector, 0x18);
        assert_ne!(sregs.cr0 & CR0_PG, 0);
        assert_eq!(sregs.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(sregs.cr3, PML4_ADDR);
        let regs = entry_regs(entry);
        assert_eq!((regs.rip, regs.rsi, regs.rflags), (0x10_0000, 0x7000, 2));
    }

    #[test]
    fn protected_entry_has_paging_off_and_flat_32bit_code() {
        let entry = EntryPoint::Protected32 {
            eip: 0x10_000c,
            eax: 0x2bad_b002,
            ebx: 0x6000,
        };
        let sregs = entry_sregs(entry, &kvm_sregs::default());
        assert_eq!(
            (sregs.cs.l, sregs.cs.db, sregs.cs.limit),
            (0, 1, 0xffff_ffff)
        );
        assert_eq!(sregs.cr0 & CR0_PG, 0);
        assert_eq!(sregs.efer, 0);
        let regs = entry_regs(entry);
        assert_eq!((regs.rax, regs.rbx), (0x2bad_b002, 0x6000));
    }

    #[test]
    fn tsc_deadline_mode_is_offered_only_when_kvm_has_it() {
        use kvm_bindings::kvm_cpuid_entry2;
        let leaf1 = |cpuid: &CpuId| cpuid.as_slice()[0];
        for tsc_deadline in [false, true] {
            let mut cpuid = CpuId::from_entries(&[kvm_cpuid_entry2 {
                function: 1,
                ebx: 0x0800,
                ..Default::default()
            }])
            .unwrap();
            patch_cpuid(&mut cpuid, 3, tsc_deadline);
            let entry = leaf1(&cpuid);
            assert_eq!(
                entry.ecx & CPUID_1_ECX_TSC_DEADLINE != 0,
                tsc_deadline,
                "{:#x}",
                entry.ecx
            );
            assert_eq!(entry.ecx & (1 << 31), 1 << 31);
            assert_eq!(entry.ebx, 0x0300_0800);
        }
    }

    #[test]
    fn lint_pins_get_pc_wiring() {
        let mut lapic = kvm_lapic_state::default();
        set_lapic_reg(&mut lapic, APIC_LVT0, 0x0001_0700);
        wire_lapic_lint(&mut lapic);
        assert_eq!(lapic_reg(&lapic, APIC_LVT0), 0x0001_0700);
        assert_eq!((lapic_reg(&lapic, APIC_LVT1) >> 8) & 7, APIC_MODE_NMI);
    }
}
