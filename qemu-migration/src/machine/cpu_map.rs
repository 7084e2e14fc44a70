//! One vCPU: snapvmm's `VcpuState` (KVM's regs/sregs/XSAVE/MSRs/LAPIC/events) to and from QEMU's
//! `cpu_common`, `cpu` and `apic` sections, the way QEMU's KVM code converts them
//! (kvm_get_*/kvm_put_* in target/i386/kvm/kvm.c and hw/i386/kvm/apic.c).

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_dtable, kvm_mp_state, kvm_regs, kvm_segment, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, KVM_APIC_REG_SIZE, KVM_MP_STATE_HALTED,
    KVM_VCPUEVENT_VALID_NMI_PENDING, KVM_VCPUEVENT_VALID_SHADOW, KVM_VCPUEVENT_VALID_SIPI_VECTOR,
    KVM_VCPUEVENT_VALID_SMM,
};
use snapshot::vm_state::{msr, MsrEntry, VcpuState, XSAVE_MIN_LEN};
use thiserror::Error;

use crate::hflags::{
    self, HflagInputs, HF2_NMI_MASK, HF2_SMM_INSIDE_NMI_MASK, HF_INHIBIT_IRQ_MASK, HF_SMM_MASK,
};
use crate::sections::{cpu, ApicSection, CpuCommonSection, CpuSection, Segment};

#[derive(Debug, Error)]
pub enum CpuMapError {
    #[error("vCPU {vcpu}: {why}")]
    Unsupported { vcpu: u32, why: String },
}

/// QEMU's CPU_INTERRUPT_SMI and CPU_INTERRUPT_INIT bits of `interrupt_request`.
const CPU_INTERRUPT_SMI: u32 = 0x40;
const CPU_INTERRUPT_INIT: u32 = 0x400;

/// Offsets in the (non-compacted) XSAVE area.
mod xsave {
    pub const FCW: usize = 0;
    pub const FSW: usize = 2;
    pub const FTW: usize = 4;
    pub const FOP: usize = 6;
    pub const FIP: usize = 8;
    pub const FDP: usize = 16;
    pub const MXCSR: usize = 24;
    pub const MXCSR_MASK: usize = 28;
    pub const ST: usize = 32;
    pub const XMM: usize = 160;
    pub const XSTATE_BV: usize = 512;
    pub const YMMH: usize = 576;
    /// AVX-512: opmask (1088), ZMM_Hi256 (1152) and Hi16_ZMM (1664) up to PKRU.
    pub const OPMASK: usize = 1088;
    pub const PKRU: usize = 2688;
    pub const AVX512_END: usize = 2688;
}

const MSR_MCG_CAP: u32 = 0x179;
const MSR_XSS: u32 = 0xda0;
const MCG_CTL_P: u64 = 1 << 8;
const PAT_RESET: u64 = 0x0007_0406_0007_0406;
const SMBASE_RESET: u32 = 0x30000;
const DEFAULT_PHYS_BITS: u32 = 40;
const APIC_LVT_MASKED: u32 = 1 << 16;
const APIC_LVT_TIMER_PERIODIC: u32 = 1 << 17;
const APIC_BASE_EXTD: u64 = 1 << 10;

fn le_u16(bytes: &[u8], at: usize) -> u16 {
    bytes
        .get(at..at + 2)
        .map_or(0, |b| u16::from_le_bytes([b[0], b[1]]))
}
fn le_u32(bytes: &[u8], at: usize) -> u32 {
    bytes
        .get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}
fn le_u64(bytes: &[u8], at: usize) -> u64 {
    bytes
        .get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}
fn put(bytes: &mut [u8], at: usize, value: &[u8]) {
    if let Some(dst) = bytes.get_mut(at..at + value.len()) {
        dst.copy_from_slice(value);
    }
}

/// QEMU segment flags from a KVM segment (kvm.c `get_seg`).
pub fn segment_from_kvm(seg: &kvm_segment) -> Segment {
    let present = seg.present != 0 && seg.unusable == 0;
    Segment {
        selector: u32::from(seg.selector),
        base: seg.base,
        limit: seg.limit,
        flags: (u32::from(seg.type_) << 8)
            | (u32::from(present) << 15)
            | (u32::from(seg.dpl & 3) << 13)
            | (u32::from(seg.db & 1) << 22)
            | (u32::from(seg.s != 0) << 12)
            | (u32::from(seg.l & 1) << 21)
            | (u32::from(seg.g != 0) << 23)
            | (u32::from(seg.avl != 0) << 20),
    }
}

/// A KVM segment from QEMU's (kvm.c `set_seg`): unusable exactly when not present.
pub fn segment_to_kvm(seg: &Segment) -> kvm_segment {
    let flags = seg.flags;
    let present = flags & (1 << 15) != 0;
    kvm_segment {
        base: seg.base,
        limit: seg.limit,
        selector: seg.selector as u16,
        type_: ((flags >> 8) & 15) as u8,
        present: u8::from(present),
        dpl: ((flags >> 13) & 3) as u8,
        db: ((flags >> 22) & 1) as u8,
        s: u8::from(flags & (1 << 12) != 0),
        l: ((flags >> 21) & 1) as u8,
        g: u8::from(flags & (1 << 23) != 0),
        avl: u8::from(flags & (1 << 20) != 0),
        unusable: u8::from(!present),
        padding: 0,
    }
}

fn dtable_segment(table: &kvm_dtable) -> Segment {
    Segment {
        selector: 0,
        base: table.base,
        limit: u32::from(table.limit),
        flags: 0,
    }
}

/// Physical address bits from CPUID 0x80000008 (what QEMU uses for MTRR masks).
pub fn phys_bits(cpuid: &[kvm_cpuid_entry2]) -> u32 {
    cpuid
        .iter()
        .find(|e| e.function == 0x8000_0008)
        .map(|e| e.eax & 0xff)
        .filter(|&bits| (32..=52).contains(&bits))
        .unwrap_or(DEFAULT_PHYS_BITS)
}

fn mtrr_top_bits(phys_bits: u32) -> u64 {
    // Bits phys_bits..51.
    ((1u64 << (52 - phys_bits)) - 1) << phys_bits
}

/// The hflags inputs of a decoded `cpu` section (the CPU state QEMU derived them from).
pub fn hflag_inputs_of_section(cpu: &CpuSection) -> HflagInputs {
    HflagInputs {
        cr0: cpu.cr0,
        cr4: cpu.cr4,
        efer: cpu.efer,
        eflags: cpu.eflags,
        xcr0: cpu.xcr0,
        cs_flags: cpu.segs[1].flags,
        ss_flags: cpu.segs[2].flags,
        ds_base: cpu.segs[3].base,
        es_base: cpu.segs[0].base,
        ss_base: cpu.segs[2].base,
        interrupt_shadow: cpu.hflags & HF_INHIBIT_IRQ_MASK != 0,
        in_smm: cpu.hflags & HF_SMM_MASK != 0,
        nmi_masked: cpu.hflags2 & HF2_NMI_MASK != 0,
        smm_inside_nmi: cpu.hflags2 & HF2_SMM_INSIDE_NMI_MASK != 0,
    }
}

fn xcr0_of(xcrs: &kvm_xcrs) -> u64 {
    xcrs.xcrs
        .iter()
        .take(xcrs.nr_xcrs as usize)
        .find(|x| x.xcr == 0)
        .map_or(1, |x| x.value)
}

/// QEMU's `apic_next_timer`: the open-coded timer state QEMU writes for an in-kernel APIC.
fn apic_next_timer(apic: &mut ApicSection, now: i64) {
    apic.timer_expiry = -1;
    let lvt = apic.lvt[0];
    if lvt & APIC_LVT_MASKED != 0 {
        return;
    }
    let shift = (apic.count_shift & 63) as u32;
    let elapsed = (now.wrapping_sub(apic.initial_count_load_time) as u64) >> shift;
    let period = u64::from(apic.initial_count) + 1;
    let next = if lvt & APIC_LVT_TIMER_PERIODIC != 0 {
        if apic.initial_count == 0 {
            return;
        }
        (elapsed / period + 1).wrapping_mul(period)
    } else {
        if elapsed >= u64::from(apic.initial_count) {
            return;
        }
        period
    };
    apic.next_time = apic
        .initial_count_load_time
        .wrapping_add((next << shift) as i64);
    apic.timer_expiry = apic.next_time;
}

fn lapic_reg(lapic: &[u8], index: usize) -> u32 {
    le_u32(lapic, index * 16)
}

/// The `apic` section of a vCPU (hw/i386/kvm/apic.c `kvm_get_apic_state`); `virtual_now` is the
/// stream's virtual clock (the `timer` section's value).
pub fn apic_from_vcpu(vcpu: &VcpuState, virtual_now: i64) -> ApicSection {
    let l = &vcpu.lapic;
    let x2apic = vcpu.sregs.apic_base & APIC_BASE_EXTD != 0;
    let id_reg = lapic_reg(l, 0x2);
    let divide_conf = lapic_reg(l, 0x3e);
    let v = (divide_conf & 3) | ((divide_conf >> 1) & 4);
    let mut apic = ApicSection {
        apicbase: vcpu.sregs.apic_base as u32,
        id: if x2apic {
            id_reg as u8
        } else {
            (id_reg >> 24) as u8
        },
        arb_id: lapic_reg(l, 0x9) as u8,
        tpr: lapic_reg(l, 0x8) as u8,
        spurious_vec: lapic_reg(l, 0xf),
        log_dest: (lapic_reg(l, 0xd) >> 24) as u8,
        dest_mode: (lapic_reg(l, 0xe) >> 28) as u8,
        isr: std::array::from_fn(|i| lapic_reg(l, 0x10 + i)),
        tmr: std::array::from_fn(|i| lapic_reg(l, 0x18 + i)),
        irr: std::array::from_fn(|i| lapic_reg(l, 0x20 + i)),
        lvt: std::array::from_fn(|i| lapic_reg(l, 0x32 + i)),
        esr: lapic_reg(l, 0x28),
        icr: [lapic_reg(l, 0x30), lapic_reg(l, 0x31)],
        divide_conf,
        count_shift: ((v + 1) & 7) as i32,
        initial_count: lapic_reg(l, 0x38),
        initial_count_load_time: virtual_now,
        next_time: 0,
        timer_expiry: -1,
        subsections: Vec::new(),
    };
    apic_next_timer(&mut apic, virtual_now);
    apic
}

/// The LAPIC register page from an `apic` section (hw/i386/kvm/apic.c `kvm_put_apic_state`).
pub fn lapic_from_apic(apic: &ApicSection) -> Vec<u8> {
    let mut l = vec![0u8; KVM_APIC_REG_SIZE as usize];
    let mut set = |index: usize, value: u32| put(&mut l, index * 16, &value.to_le_bytes());
    let x2apic = u64::from(apic.apicbase) & APIC_BASE_EXTD != 0;
    set(
        0x2,
        if x2apic {
            u32::from(apic.id)
        } else {
            u32::from(apic.id) << 24
        },
    );
    set(0x8, u32::from(apic.tpr));
    set(0x9, u32::from(apic.arb_id));
    set(0xd, u32::from(apic.log_dest) << 24);
    set(0xe, (u32::from(apic.dest_mode) << 28) | 0x0fff_ffff);
    set(0xf, apic.spurious_vec);
    for i in 0..8 {
        set(0x10 + i, apic.isr[i]);
        set(0x18 + i, apic.tmr[i]);
        set(0x20 + i, apic.irr[i]);
    }
    set(0x28, apic.esr);
    set(0x30, apic.icr[0]);
    set(0x31, apic.icr[1]);
    for (i, lvt) in apic.lvt.iter().enumerate() {
        set(0x32 + i, *lvt);
    }
    set(0x38, apic.initial_count);
    set(0x3e, apic.divide_conf);
    l
}

/// `cpu_common` and `cpu` sections of a vCPU.
pub fn cpu_from_vcpu(vcpu: &VcpuState) -> Result<(CpuCommonSection, CpuSection), CpuMapError> {
    let id = vcpu.vcpu_id;
    if vcpu.xsave.len() < XSAVE_MIN_LEN {
        return Err(CpuMapError::Unsupported {
            vcpu: id,
            why: format!("XSAVE area of {} bytes", vcpu.xsave.len()),
        });
    }
    let r = &vcpu.regs;
    let s = &vcpu.sregs;
    let x = &vcpu.xsave;
    let ev = &vcpu.vcpu_events;
    let msr = |index: u32| vcpu.msr(index);
    let xcr0 = xcr0_of(&vcpu.xcrs);
    let inputs = HflagInputs {
        cr0: s.cr0,
        cr4: s.cr4,
        efer: s.efer,
        eflags: r.rflags,
        xcr0,
        cs_flags: segment_from_kvm(&s.cs).flags,
        ss_flags: segment_from_kvm(&s.ss).flags,
        ds_base: s.ds.base,
        es_base: s.es.base,
        ss_base: s.ss.base,
        interrupt_shadow: ev.interrupt.shadow != 0,
        in_smm: ev.flags & KVM_VCPUEVENT_VALID_SMM != 0 && ev.smi.smm != 0,
        nmi_masked: ev.nmi.masked != 0,
        smm_inside_nmi: ev.flags & KVM_VCPUEVENT_VALID_SMM != 0 && ev.smi.smm_inside_nmi != 0,
    };
    let phys = phys_bits(&vcpu.cpuid);
    let top = mtrr_top_bits(phys);
    let exception_live = ev.exception.injected != 0 || ev.exception.pending != 0;
    let mut interrupt_request = 0;
    if ev.flags & KVM_VCPUEVENT_VALID_SMM != 0 {
        if ev.smi.pending != 0 {
            interrupt_request |= CPU_INTERRUPT_SMI;
        }
        if ev.smi.latched_init != 0 {
            interrupt_request |= CPU_INTERRUPT_INIT;
        }
    }
    let common = CpuCommonSection {
        halted: u32::from(vcpu.mp_state.mp_state == KVM_MP_STATE_HALTED),
        interrupt_request,
        subsections: Vec::new(),
    };
    let fixed_mtrrs = [
        0x250u32, 0x258, 0x259, 0x268, 0x269, 0x26a, 0x26b, 0x26c, 0x26d, 0x26e, 0x26f,
    ];
    let mut cpu = CpuSection {
        regs: [
            r.rax, r.rcx, r.rdx, r.rbx, r.rsp, r.rbp, r.rsi, r.rdi, r.r8, r.r9, r.r10, r.r11,
            r.r12, r.r13, r.r14, r.r15,
        ],
        eip: r.rip,
        eflags: r.rflags,
        hflags: hflags::hflags(&inputs),
        fpuc: le_u16(x, xsave::FCW),
        fpus: le_u16(x, xsave::FSW),
        fptag: u16::from(x.get(xsave::FTW).copied().unwrap_or(0)),
        fpregs_format: 0,
        fpregs: std::array::from_fn(|i| cpu::FpReg {
            mantissa: le_u64(x, xsave::ST + 16 * i),
            sign_exp: le_u16(x, xsave::ST + 16 * i + 8),
        }),
        segs: [s.es, s.cs, s.ss, s.ds, s.fs, s.gs].map(|seg| segment_from_kvm(&seg)),
        ldt: segment_from_kvm(&s.ldt),
        tr: segment_from_kvm(&s.tr),
        gdt: dtable_segment(&s.gdt),
        idt: dtable_segment(&s.idt),
        sysenter_cs: msr(msr::IA32_SYSENTER_CS).unwrap_or(0) as u32,
        sysenter_esp: msr(msr::IA32_SYSENTER_ESP).unwrap_or(0),
        sysenter_eip: msr(msr::IA32_SYSENTER_EIP).unwrap_or(0),
        cr0: s.cr0,
        cr2: s.cr2,
        cr3: s.cr3,
        cr4: s.cr4,
        // QEMU mirrors DR6/DR7 into the DR4/DR5 slots.
        dr: [
            vcpu.debug_regs.db[0],
            vcpu.debug_regs.db[1],
            vcpu.debug_regs.db[2],
            vcpu.debug_regs.db[3],
            vcpu.debug_regs.dr6,
            vcpu.debug_regs.dr7,
            vcpu.debug_regs.dr6,
            vcpu.debug_regs.dr7,
        ],
        a20_mask: -1,
        mxcsr: le_u32(x, xsave::MXCSR),
        xmm: std::array::from_fn(|i| {
            [
                le_u64(x, xsave::XMM + 16 * i),
                le_u64(x, xsave::XMM + 16 * i + 8),
            ]
        }),
        efer: s.efer,
        star: msr(msr::STAR).unwrap_or(0),
        lstar: msr(msr::LSTAR).unwrap_or(0),
        cstar: msr(msr::CSTAR).unwrap_or(0),
        fmask: msr(msr::SFMASK).unwrap_or(0),
        kernelgsbase: msr(msr::KERNEL_GS_BASE).unwrap_or(0),
        smbase: SMBASE_RESET,
        pat: msr(msr::IA32_PAT).unwrap_or(PAT_RESET),
        hflags2: hflags::hflags2(&inputs),
        vm_hsave: msr(msr::VM_HSAVE_PA).unwrap_or(0),
        mtrr_fixed: fixed_mtrrs.map(|index| msr(index).unwrap_or(0)),
        mtrr_deftype: msr(msr::MTRR_DEF_TYPE).unwrap_or(0),
        mtrr_var: std::array::from_fn(|i| {
            let base = msr(0x200 + 2 * i as u32).unwrap_or(0);
            let mask = msr(0x201 + 2 * i as u32).unwrap_or(0);
            [base, mask | top]
        }),
        interrupt_injected: if ev.interrupt.injected != 0 {
            i32::from(ev.interrupt.nr)
        } else {
            -1
        },
        mp_state: vcpu.mp_state.mp_state,
        tsc: msr(msr::IA32_TSC).unwrap_or(0),
        exception_nr: if exception_live {
            i32::from(ev.exception.nr)
        } else {
            -1
        },
        soft_interrupt: ev.interrupt.soft,
        nmi_injected: ev.nmi.injected,
        nmi_pending: ev.nmi.pending,
        has_error_code: ev.exception.has_error_code,
        sipi_vector: ev.sipi_vector,
        mcg_cap: msr(MSR_MCG_CAP).unwrap_or(0),
        mcg_status: msr(msr::MCG_STATUS).unwrap_or(0),
        mcg_ctl: msr(msr::MCG_CTL).unwrap_or(0),
        mce_banks: (0..cpu::MCE_BANK_WORDS as u32)
            .map(|i| msr(0x400 + i).unwrap_or(0))
            .collect(),
        tsc_aux: msr(msr::TSC_AUX).unwrap_or(0),
        system_time_msr: msr(msr::KVM_SYSTEM_TIME_NEW)
            .or(msr(msr::KVM_SYSTEM_TIME))
            .unwrap_or(0),
        wall_clock_msr: msr(msr::KVM_WALL_CLOCK_NEW)
            .or(msr(msr::KVM_WALL_CLOCK))
            .unwrap_or(0),
        xcr0,
        xstate_bv: le_u64(x, xsave::XSTATE_BV),
        ymmh: std::array::from_fn(|i| {
            [
                le_u64(x, xsave::YMMH + 16 * i),
                le_u64(x, xsave::YMMH + 16 * i + 8),
            ]
        }),
        ..Default::default()
    };
    add_subsections(&mut cpu, vcpu, xcr0);
    Ok((common, cpu))
}

/// The subsections QEMU would send for this state (each when its value differs from reset).
fn add_subsections(cpu: &mut CpuSection, vcpu: &VcpuState, xcr0: u64) {
    let x = &vcpu.xsave;
    let msr = |index: u32| vcpu.msr(index);
    let nonzero = |index: u32| msr(index).filter(|&v| v != 0);
    let ev = &vcpu.vcpu_events;
    if ev.exception.pending != 0 && ev.exception.injected == 0 {
        // QEMU turns a pending exception into an injected one outside nested guests
        // (cpu_pre_save); the payload must then go with it.
        if ev.exception_has_payload != 0 {
            let mut body = vec![0, 1, 1];
            body.extend_from_slice(&ev.exception_payload.to_be_bytes());
            cpu.set_subsection(cpu::EXCEPTION_INFO, body);
        }
    }
    for (index, name) in [
        (msr::KVM_ASYNC_PF_EN, "cpu/async_pf_msr"),
        (msr::KVM_ASYNC_PF_INT, "cpu/async_pf_int_msr"),
        (msr::KVM_PV_EOI_EN, "cpu/async_pv_eoi_msr"),
        (msr::KVM_STEAL_TIME, "cpu/steal_time_msr"),
        (msr::IA32_TSC_ADJUST, "cpu/msr_tsc_adjust"),
        (msr::IA32_TSC_DEADLINE, "cpu/msr_tscdeadline"),
        (msr::IA32_SPEC_CTRL, "cpu/spec_ctrl"),
        (MSR_XSS, "cpu/xss"),
    ] {
        if let Some(value) = nonzero(index) {
            cpu.set_u64_subsection(name, value);
        }
    }
    if let Some(value) = msr(msr::KVM_POLL_CONTROL).filter(|&v| v != 1) {
        cpu.set_u64_subsection("cpu/poll_control_msr", value);
    }
    if let Some(value) = msr(msr::IA32_MISC_ENABLE).filter(|&v| v != 1) {
        cpu.set_u64_subsection("cpu/msr_ia32_misc_enable", value);
    }
    let fop = le_u16(x, xsave::FOP);
    let fip = le_u64(x, xsave::FIP);
    let fdp = le_u64(x, xsave::FDP);
    if fop != 0 || fip != 0 || fdp != 0 {
        let mut body = fop.to_be_bytes().to_vec();
        body.extend_from_slice(&fip.to_be_bytes());
        body.extend_from_slice(&fdp.to_be_bytes());
        cpu.set_subsection(cpu::FPOP_IP_DP, body);
    }
    if x.len() >= xsave::AVX512_END && xcr0 & 0xe0 != 0 {
        let region = x.get(xsave::OPMASK..xsave::AVX512_END).unwrap_or_default();
        if region.iter().any(|&b| b != 0) {
            // opmask[8], ZMM_Hi256 (16 x 4 u64), Hi16_ZMM (16 x 8 u64): LE words to BE.
            let body = region
                .chunks_exact(8)
                .flat_map(|w| u64::from_le_bytes(w.try_into().unwrap_or([0; 8])).to_be_bytes())
                .collect();
            cpu.set_subsection("cpu/avx512", body);
        }
    }
    if xcr0 & (1 << 9) != 0 {
        let pkru = le_u32(x, xsave::PKRU);
        if pkru != 0 {
            cpu.set_u32_subsection("cpu/pkru", pkru);
        }
    }
    if let Some(khz) = vcpu.tsc_khz.filter(|&khz| khz != 0) {
        cpu.set_u64_subsection(cpu::TSC_KHZ, u64::from(khz));
    }
    if ev.triple_fault.pending != 0 {
        cpu.set_subsection(cpu::TRIPLE_FAULT, vec![1]);
    }
}

/// A `VcpuState` from the sections of one vCPU. `cpuid` is the CPUID the guest is to see (not in
/// the stream: the destination's `-cpu` decides it in QEMU).
pub fn vcpu_from_sections(
    vcpu_id: u32,
    common: &CpuCommonSection,
    cpu: &CpuSection,
    apic: &ApicSection,
    cpuid: &[kvm_cpuid_entry2],
) -> Result<VcpuState, CpuMapError> {
    if cpu.subsection("cpu/nested_state").is_some() {
        return Err(CpuMapError::Unsupported {
            vcpu: vcpu_id,
            why: "nested virtualisation state".into(),
        });
    }
    let g = &cpu.regs;
    let regs = kvm_regs {
        rax: g[0],
        rcx: g[1],
        rdx: g[2],
        rbx: g[3],
        rsp: g[4],
        rbp: g[5],
        rsi: g[6],
        rdi: g[7],
        r8: g[8],
        r9: g[9],
        r10: g[10],
        r11: g[11],
        r12: g[12],
        r13: g[13],
        r14: g[14],
        r15: g[15],
        rip: cpu.eip,
        rflags: cpu.eflags,
    };
    let mut sregs = kvm_sregs {
        es: segment_to_kvm(&cpu.segs[0]),
        cs: segment_to_kvm(&cpu.segs[1]),
        ss: segment_to_kvm(&cpu.segs[2]),
        ds: segment_to_kvm(&cpu.segs[3]),
        fs: segment_to_kvm(&cpu.segs[4]),
        gs: segment_to_kvm(&cpu.segs[5]),
        ldt: segment_to_kvm(&cpu.ldt),
        tr: segment_to_kvm(&cpu.tr),
        gdt: kvm_dtable {
            base: cpu.gdt.base,
            limit: cpu.gdt.limit as u16,
            padding: [0; 3],
        },
        idt: kvm_dtable {
            base: cpu.idt.base,
            limit: cpu.idt.limit as u16,
            padding: [0; 3],
        },
        cr0: cpu.cr0,
        cr2: cpu.cr2,
        cr3: cpu.cr3,
        cr4: cpu.cr4,
        cr8: u64::from(apic.tpr >> 4),
        efer: cpu.efer,
        apic_base: u64::from(apic.apicbase),
        interrupt_bitmap: [0; 4],
    };
    if cpu.interrupt_injected >= 0 {
        let vector = (cpu.interrupt_injected & 0xff) as usize;
        if let Some(word) = sregs.interrupt_bitmap.get_mut(vector / 64) {
            *word |= 1 << (vector % 64);
        }
    }
    let xsave = xsave_from_section(cpu);
    let xcr0 = if cpu.xcr0 == 0 { 1 } else { cpu.xcr0 };
    let mut xcrs = kvm_xcrs {
        nr_xcrs: 1,
        ..Default::default()
    };
    xcrs.xcrs[0].xcr = 0;
    xcrs.xcrs[0].value = xcr0;

    let mut events = kvm_vcpu_events::default();
    let info = cpu.subsection(cpu::EXCEPTION_INFO);
    if cpu.exception_nr >= 0 {
        events.exception.nr = cpu.exception_nr as u8;
        match info {
            Some(body) if body.len() == 11 => {
                events.exception.pending = body[0];
                events.exception.injected = body[1];
                events.exception_has_payload = body[2];
                events.exception_payload =
                    u64::from_be_bytes(body[3..11].try_into().unwrap_or([0; 8]));
            }
            _ => events.exception.injected = 1,
        }
        events.exception.has_error_code = cpu.has_error_code;
    }
    events.interrupt.injected = u8::from(cpu.interrupt_injected >= 0);
    events.interrupt.nr = if cpu.interrupt_injected >= 0 {
        cpu.interrupt_injected as u8
    } else {
        0
    };
    events.interrupt.soft = cpu.soft_interrupt;
    events.interrupt.shadow = u8::from(cpu.hflags & HF_INHIBIT_IRQ_MASK != 0);
    events.nmi.injected = cpu.nmi_injected;
    events.nmi.pending = cpu.nmi_pending;
    events.nmi.masked = u8::from(cpu.hflags2 & HF2_NMI_MASK != 0);
    events.sipi_vector = cpu.sipi_vector;
    events.smi.smm = u8::from(cpu.hflags & HF_SMM_MASK != 0);
    events.smi.pending = u8::from(common.interrupt_request & CPU_INTERRUPT_SMI != 0);
    events.smi.smm_inside_nmi = u8::from(cpu.hflags2 & HF2_SMM_INSIDE_NMI_MASK != 0);
    events.smi.latched_init = u8::from(common.interrupt_request & CPU_INTERRUPT_INIT != 0);
    events.triple_fault.pending = cpu
        .subsection(cpu::TRIPLE_FAULT)
        .map_or(0, |b| b.first().copied().unwrap_or(0));
    events.flags = KVM_VCPUEVENT_VALID_NMI_PENDING
        | KVM_VCPUEVENT_VALID_SIPI_VECTOR
        | KVM_VCPUEVENT_VALID_SHADOW
        | KVM_VCPUEVENT_VALID_SMM;

    let debug_regs = kvm_debugregs {
        db: [cpu.dr[0], cpu.dr[1], cpu.dr[2], cpu.dr[3]],
        dr6: cpu.dr[6],
        dr7: cpu.dr[7],
        ..Default::default()
    };
    Ok(VcpuState {
        vcpu_id,
        cpuid: cpuid.to_vec(),
        regs,
        sregs,
        xsave,
        xcrs,
        msrs: msrs_from_section(cpu, phys_bits(cpuid)),
        lapic: lapic_from_apic(apic),
        vcpu_events: events,
        mp_state: kvm_mp_state {
            mp_state: cpu.mp_state,
        },
        debug_regs,
        tsc_khz: cpu
            .tsc_khz()
            .and_then(|khz| u32::try_from(khz).ok())
            .filter(|&k| k != 0),
    })
}

/// A 4096-byte XSAVE area (standard format) from the section's x87/SSE/AVX/AVX-512/PKRU state.
fn xsave_from_section(cpu: &CpuSection) -> Vec<u8> {
    let mut x = vec![0u8; XSAVE_MIN_LEN];
    put(&mut x, xsave::FCW, &cpu.fpuc.to_le_bytes());
    put(&mut x, xsave::FSW, &cpu.fpus.to_le_bytes());
    put(&mut x, xsave::FTW, &[cpu.fptag as u8]);
    if let Some(body) = cpu.subsection(cpu::FPOP_IP_DP).filter(|b| b.len() == 18) {
        let fop = u16::from_be_bytes([body[0], body[1]]);
        put(&mut x, xsave::FOP, &fop.to_le_bytes());
        put(
            &mut x,
            xsave::FIP,
            &body[2..10].iter().rev().copied().collect::<Vec<u8>>(),
        );
        put(
            &mut x,
            xsave::FDP,
            &body[10..18].iter().rev().copied().collect::<Vec<u8>>(),
        );
    }
    put(&mut x, xsave::MXCSR, &cpu.mxcsr.to_le_bytes());
    put(&mut x, xsave::MXCSR_MASK, &0xffffu32.to_le_bytes());
    for (i, reg) in cpu.fpregs.iter().enumerate() {
        put(&mut x, xsave::ST + 16 * i, &reg.mantissa.to_le_bytes());
        put(&mut x, xsave::ST + 16 * i + 8, &reg.sign_exp.to_le_bytes());
    }
    for (i, xmm) in cpu.xmm.iter().enumerate() {
        put(&mut x, xsave::XMM + 16 * i, &xmm[0].to_le_bytes());
        put(&mut x, xsave::XMM + 16 * i + 8, &xmm[1].to_le_bytes());
    }
    put(&mut x, xsave::XSTATE_BV, &cpu.xstate_bv.to_le_bytes());
    for (i, ymmh) in cpu.ymmh.iter().enumerate() {
        put(&mut x, xsave::YMMH + 16 * i, &ymmh[0].to_le_bytes());
        put(&mut x, xsave::YMMH + 16 * i + 8, &ymmh[1].to_le_bytes());
    }
    if let Some(body) = cpu.subsection("cpu/avx512") {
        for (i, word) in body.chunks_exact(8).enumerate() {
            let value = u64::from_be_bytes(word.try_into().unwrap_or([0; 8]));
            put(&mut x, xsave::OPMASK + 8 * i, &value.to_le_bytes());
        }
    }
    if let Some(pkru) = cpu.u32_subsection("cpu/pkru") {
        put(&mut x, xsave::PKRU, &pkru.to_le_bytes());
    }
    x
}

/// The MSR list (in the order `snapshot::vm_state::SNAPSHOT_MSRS` gives: TSC before kvmclock).
fn msrs_from_section(cpu: &CpuSection, phys_bits: u32) -> Vec<MsrEntry> {
    let mut msrs = Vec::new();
    let mut add = |index: u32, value: u64| msrs.push(MsrEntry { index, value });
    add(msr::IA32_TSC, cpu.tsc);
    if let Some(v) = cpu.u64_subsection("cpu/msr_tsc_adjust") {
        add(msr::IA32_TSC_ADJUST, v);
    }
    if let Some(v) = cpu.u64_subsection("cpu/msr_tscdeadline") {
        add(msr::IA32_TSC_DEADLINE, v);
    }
    add(msr::IA32_SYSENTER_CS, u64::from(cpu.sysenter_cs));
    add(msr::IA32_SYSENTER_ESP, cpu.sysenter_esp);
    add(msr::IA32_SYSENTER_EIP, cpu.sysenter_eip);
    add(msr::STAR, cpu.star);
    add(msr::LSTAR, cpu.lstar);
    add(msr::CSTAR, cpu.cstar);
    add(msr::SFMASK, cpu.fmask);
    add(msr::KERNEL_GS_BASE, cpu.kernelgsbase);
    add(msr::TSC_AUX, cpu.tsc_aux);
    add(
        msr::IA32_MISC_ENABLE,
        cpu.u64_subsection("cpu/msr_ia32_misc_enable").unwrap_or(1),
    );
    add(msr::IA32_PAT, cpu.pat);
    if let Some(v) = cpu.u64_subsection("cpu/spec_ctrl") {
        add(msr::IA32_SPEC_CTRL, v);
    }
    add(msr::MTRR_DEF_TYPE, cpu.mtrr_deftype);
    if cpu.mcg_cap != 0 {
        // KVM takes MCG_CAP from the host side (it sets the bank count) before the bank MSRs.
        add(MSR_MCG_CAP, cpu.mcg_cap);
    }
    add(msr::MCG_STATUS, cpu.mcg_status);
    if cpu.mcg_cap & MCG_CTL_P != 0 {
        add(msr::MCG_CTL, cpu.mcg_ctl);
    }
    if cpu.vm_hsave != 0 {
        add(msr::VM_HSAVE_PA, cpu.vm_hsave);
    }
    add(msr::KVM_WALL_CLOCK_NEW, cpu.wall_clock_msr);
    add(msr::KVM_SYSTEM_TIME_NEW, cpu.system_time_msr);
    for (index, name) in [
        (msr::KVM_ASYNC_PF_EN, "cpu/async_pf_msr"),
        (msr::KVM_ASYNC_PF_INT, "cpu/async_pf_int_msr"),
        (msr::KVM_STEAL_TIME, "cpu/steal_time_msr"),
        (msr::KVM_PV_EOI_EN, "cpu/async_pv_eoi_msr"),
    ] {
        if let Some(v) = cpu.u64_subsection(name) {
            add(index, v);
        }
    }
    add(
        msr::KVM_POLL_CONTROL,
        cpu.u64_subsection("cpu/poll_control_msr").unwrap_or(1),
    );
    if let Some(v) = cpu.u64_subsection("cpu/xss") {
        add(MSR_XSS, v);
    }
    let phys_mask = (1u64 << phys_bits) - 1;
    for (i, pair) in cpu.mtrr_var.iter().enumerate() {
        add(0x200 + 2 * i as u32, pair[0]);
        add(0x201 + 2 * i as u32, pair[1] & phys_mask);
    }
    let fixed = [
        0x250u32, 0x258, 0x259, 0x268, 0x269, 0x26a, 0x26b, 0x26c, 0x26d, 0x26e, 0x26f,
    ];
    for (index, value) in fixed.iter().zip(cpu.mtrr_fixed) {
        add(*index, value);
    }
    msrs
}
