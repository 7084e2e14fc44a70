//! `cpu` (x86, v12): registers, MSRs and the KVM event state of one vCPU, with the 7.2 subsections
//! (§8.3). Subsections are kept as checked bytes; `msr_subsection`/`set_u64_subsection` give the
//! one-value ones by name.

use std::io::Read;

use super::{
    find_subsection, read_body, read_subsections, write_subsections, SectionError, SubsectionSpec,
};
use crate::vmstate::{BodyWriter, Cursor, RawSubsection};
use crate::wire::WireReader;

pub const VMSD: &str = "cpu";
pub const VERSION: u32 = 12;
pub const BODY_LEN: usize = 1817;

pub const TSC_KHZ: &str = "cpu/tsc_khz";
pub const FPOP_IP_DP: &str = "cpu/fpop_ip_dp";
pub const EXCEPTION_INFO: &str = "cpu/exception_info";
pub const PDPTRS: &str = "cpu/pdptrs";
pub const TRIPLE_FAULT: &str = "cpu/triple_fault";

macro_rules! single {
    ($name:expr, $field:expr, $kind:expr, $size:expr) => {
        SubsectionSpec {
            name: $name,
            version: 1,
            fields: &[($field, $kind, $size, 0)],
        }
    };
}

/// Every `cpu` subsection QEMU 7.2 can send except `cpu/nested_state` (nested virtualisation is not
/// supported), in QEMU's emission order.
pub const SUBSECTIONS: &[SubsectionSpec] = &[
    SubsectionSpec {
        name: EXCEPTION_INFO,
        version: 1,
        fields: &[
            ("exception_pending", "uint8", 1, 0),
            ("exception_injected", "uint8", 1, 0),
            ("exception_has_payload", "uint8", 1, 0),
            ("exception_payload", "uint64", 8, 0),
        ],
    },
    single!("cpu/async_pf_msr", "async_pf_en_msr", "uint64", 8),
    single!("cpu/async_pf_int_msr", "async_pf_int_msr", "uint64", 8),
    single!("cpu/async_pv_eoi_msr", "pv_eoi_en_msr", "uint64", 8),
    single!("cpu/steal_time_msr", "steal_time_msr", "uint64", 8),
    single!("cpu/poll_control_msr", "poll_control_msr", "uint64", 8),
    SubsectionSpec {
        name: FPOP_IP_DP,
        version: 1,
        fields: &[
            ("fpop", "uint16", 2, 0),
            ("fpip", "uint64", 8, 0),
            ("fpdp", "uint64", 8, 0),
        ],
    },
    single!("cpu/msr_tsc_adjust", "tsc_adjust", "uint64", 8),
    single!("cpu/msr_tscdeadline", "tsc_deadline", "uint64", 8),
    single!(
        "cpu/msr_ia32_misc_enable",
        "msr_ia32_misc_enable",
        "uint64",
        8
    ),
    single!(
        "cpu/msr_ia32_feature_control",
        "msr_ia32_feature_control",
        "uint64",
        8
    ),
    SubsectionSpec {
        name: "cpu/msr_architectural_pmu",
        version: 1,
        fields: &[("pmu", "uint64", 8, 43)],
    },
    SubsectionSpec {
        name: "cpu/mpx",
        version: 1,
        fields: &[
            ("bnd_regs", "uint64", 8, 8),
            ("bndcs", "uint64", 8, 2),
            ("msr_bndcfgs", "uint64", 8, 0),
        ],
    },
    SubsectionSpec {
        name: "cpu/msr_hyperv_hypercall",
        version: 1,
        fields: &[
            ("msr_hv_guest_os_id", "uint64", 8, 0),
            ("msr_hv_hypercall", "uint64", 8, 0),
        ],
    },
    single!("cpu/msr_hyperv_vapic", "msr_hv_vapic", "uint64", 8),
    single!("cpu/msr_hyperv_time", "msr_hv_tsc", "uint64", 8),
    SubsectionSpec {
        name: "cpu/msr_hyperv_crash",
        version: 1,
        fields: &[("msr_hv_crash_params", "uint64", 8, 5)],
    },
    single!("cpu/msr_hyperv_runtime", "msr_hv_runtime", "uint64", 8),
    SubsectionSpec {
        name: "cpu/msr_hyperv_synic",
        version: 1,
        fields: &[("msr_hv_synic", "uint64", 8, 19)],
    },
    SubsectionSpec {
        name: "cpu/msr_hyperv_stimer",
        version: 1,
        fields: &[("msr_hv_stimer", "uint64", 8, 8)],
    },
    SubsectionSpec {
        name: "cpu/msr_hyperv_reenlightenment",
        version: 1,
        fields: &[("msr_hv_reenlightenment", "uint64", 8, 3)],
    },
    SubsectionSpec {
        name: "cpu/avx512",
        version: 1,
        fields: &[
            ("opmask_regs", "uint64", 8, 8),
            ("zmm_hi256", "uint64", 8, 64),
            ("hi16_zmm", "uint64", 8, 128),
        ],
    },
    single!("cpu/xss", "xss", "uint64", 8),
    single!("cpu/umwait", "umwait", "uint32", 4),
    single!(TSC_KHZ, "tsc_khz", "int64", 8),
    single!("cpu/msr_smi_count", "msr_smi_count", "uint64", 8),
    single!("cpu/pkru", "pkru", "uint32", 4),
    single!("cpu/pkrs", "pkrs", "uint32", 4),
    single!("cpu/spec_ctrl", "spec_ctrl", "uint64", 8),
    single!("cpu/amd_tsc_scale_msr", "amd_tsc_scale_msr", "uint64", 8),
    single!("cpu/mcg_ext_ctl", "mcg_ext_ctl", "uint64", 8),
    SubsectionSpec {
        name: "cpu/intel_pt",
        version: 1,
        fields: &[
            ("msr_rtit", "uint64", 8, 5),
            ("msr_rtit_addrs", "uint64", 8, 8),
        ],
    },
    single!("cpu/virt_ssbd", "virt_ssbd", "uint64", 8),
    SubsectionSpec {
        name: "cpu/svn_npt",
        version: 1,
        fields: &[
            ("nested_cr3", "uint64", 8, 0),
            ("nested_pg_mode", "uint32", 4, 0),
        ],
    },
    single!("cpu/svm_guest", "int_ctl", "uint32", 4),
    single!("cpu/msr_tsx_ctrl", "tsx_ctrl", "uint32", 4),
    SubsectionSpec {
        name: "cpu/intel_sgx",
        version: 1,
        fields: &[("msr_ia32_sgxlepubkeyhash", "uint64", 8, 4)],
    },
    SubsectionSpec {
        name: PDPTRS,
        version: 1,
        fields: &[("pdptrs", "uint64", 8, 4)],
    },
    SubsectionSpec {
        name: "cpu/msr_xfd",
        version: 1,
        fields: &[("msr_xfd", "uint64", 8, 0), ("msr_xfd_err", "uint64", 8, 0)],
    },
    SubsectionSpec {
        name: "cpu/intel_amx_xtile",
        version: 1,
        fields: &[
            ("xtilecfg", "buffer", 64, 0),
            ("xtiledata", "buffer", 8192, 0),
        ],
    },
    SubsectionSpec {
        name: "cpu/arch_lbr",
        version: 1,
        fields: &[
            ("msr_lbr_ctl", "uint64", 8, 0),
            ("msr_lbr_depth", "uint64", 8, 0),
            ("lbr_records", "uint64", 8, 96),
        ],
    },
    single!(TRIPLE_FAULT, "triple_fault_pending", "uint8", 1),
];

/// A segment register as QEMU keeps it: `flags` is the descriptor's high dword layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Segment {
    pub selector: u32,
    pub base: u64,
    pub limit: u32,
    pub flags: u32,
}

impl Segment {
    fn decode(c: &mut Cursor) -> Self {
        Segment {
            selector: c.u32(),
            base: c.u64(),
            limit: c.u32(),
            flags: c.u32(),
        }
    }

    fn encode(&self, w: &mut BodyWriter) {
        w.u32("selector", self.selector);
        w.u64("base", self.base);
        w.u32("limit", self.limit);
        w.u32("flags", self.flags);
    }
}

/// An x87 register: 64-bit mantissa and 16-bit sign/exponent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FpReg {
    pub mantissa: u64,
    pub sign_exp: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CpuSection {
    /// RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8..R15.
    pub regs: [u64; 16],
    pub eip: u64,
    pub eflags: u64,
    pub hflags: u32,
    pub fpuc: u16,
    pub fpus: u16,
    pub fptag: u16,
    pub fpregs_format: u16,
    pub fpregs: [FpReg; 8],
    /// ES, CS, SS, DS, FS, GS.
    pub segs: [Segment; 6],
    pub ldt: Segment,
    pub tr: Segment,
    pub gdt: Segment,
    pub idt: Segment,
    pub sysenter_cs: u32,
    pub sysenter_esp: u64,
    pub sysenter_eip: u64,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub dr: [u64; 8],
    pub a20_mask: i32,
    pub mxcsr: u32,
    /// XMM0-15 bits 0-127 as (low, high).
    pub xmm: [[u64; 2]; 16],
    pub efer: u64,
    pub star: u64,
    pub lstar: u64,
    pub cstar: u64,
    pub fmask: u64,
    pub kernelgsbase: u64,
    pub smbase: u32,
    pub pat: u64,
    pub hflags2: u32,
    pub vm_hsave: u64,
    pub vm_vmcb: u64,
    pub tsc_offset: u64,
    pub intercept: u64,
    pub intercept_cr_read: u16,
    pub intercept_cr_write: u16,
    pub intercept_dr_read: u16,
    pub intercept_dr_write: u16,
    pub intercept_exceptions: u32,
    pub v_tpr: u8,
    pub mtrr_fixed: [u64; 11],
    pub mtrr_deftype: u64,
    /// (base, mask) pairs.
    pub mtrr_var: [[u64; 2]; 8],
    pub interrupt_injected: i32,
    pub mp_state: u32,
    pub tsc: u64,
    pub exception_nr: i32,
    pub soft_interrupt: u8,
    pub nmi_injected: u8,
    pub nmi_pending: u8,
    pub has_error_code: u8,
    pub sipi_vector: u32,
    pub mcg_cap: u64,
    pub mcg_status: u64,
    pub mcg_ctl: u64,
    pub mce_banks: Vec<u64>,
    pub tsc_aux: u64,
    pub system_time_msr: u64,
    pub wall_clock_msr: u64,
    pub xcr0: u64,
    pub xstate_bv: u64,
    /// YMM0-15 bits 128-255 as (low, high).
    pub ymmh: [[u64; 2]; 16],
    pub subsections: Vec<RawSubsection>,
}

pub const MCE_BANK_WORDS: usize = 40;

impl CpuSection {
    pub fn decode<R: Read>(wire: &mut WireReader<R>) -> Result<Self, SectionError> {
        let body = read_body(wire, BODY_LEN)?;
        let mut c = Cursor::new(&body);
        let regs = c.u64_array();
        let eip = c.u64();
        let eflags = c.u64();
        let hflags = c.u32();
        let fpuc = c.u16();
        let fpus = c.u16();
        let fptag = c.u16();
        let fpregs_format = c.u16();
        let fpregs = std::array::from_fn(|_| FpReg {
            mantissa: c.u64(),
            sign_exp: c.u16(),
        });
        let segs = std::array::from_fn(|_| Segment::decode(&mut c));
        let ldt = Segment::decode(&mut c);
        let tr = Segment::decode(&mut c);
        let gdt = Segment::decode(&mut c);
        let idt = Segment::decode(&mut c);
        let mut cpu = CpuSection {
            regs,
            eip,
            eflags,
            hflags,
            fpuc,
            fpus,
            fptag,
            fpregs_format,
            fpregs,
            segs,
            ldt,
            tr,
            gdt,
            idt,
            sysenter_cs: c.u32(),
            sysenter_esp: c.u64(),
            sysenter_eip: c.u64(),
            cr0: c.u64(),
            cr2: c.u64(),
            cr3: c.u64(),
            cr4: c.u64(),
            dr: c.u64_array(),
            a20_mask: c.i32(),
            mxcsr: c.u32(),
            xmm: std::array::from_fn(|_| [c.u64(), c.u64()]),
            efer: c.u64(),
            star: c.u64(),
            lstar: c.u64(),
            cstar: c.u64(),
            fmask: c.u64(),
            kernelgsbase: c.u64(),
            smbase: c.u32(),
            pat: c.u64(),
            hflags2: c.u32(),
            vm_hsave: c.u64(),
            vm_vmcb: c.u64(),
            tsc_offset: c.u64(),
            intercept: c.u64(),
            intercept_cr_read: c.u16(),
            intercept_cr_write: c.u16(),
            intercept_dr_read: c.u16(),
            intercept_dr_write: c.u16(),
            intercept_exceptions: c.u32(),
            v_tpr: c.u8(),
            mtrr_fixed: c.u64_array(),
            mtrr_deftype: c.u64(),
            mtrr_var: std::array::from_fn(|_| [c.u64(), c.u64()]),
            interrupt_injected: c.i32(),
            mp_state: c.u32(),
            tsc: c.u64(),
            exception_nr: c.i32(),
            soft_interrupt: c.u8(),
            nmi_injected: c.u8(),
            nmi_pending: c.u8(),
            has_error_code: c.u8(),
            sipi_vector: c.u32(),
            mcg_cap: c.u64(),
            mcg_status: c.u64(),
            mcg_ctl: c.u64(),
            mce_banks: (0..MCE_BANK_WORDS).map(|_| c.u64()).collect(),
            tsc_aux: c.u64(),
            system_time_msr: c.u64(),
            wall_clock_msr: c.u64(),
            xcr0: c.u64(),
            xstate_bv: c.u64(),
            ymmh: std::array::from_fn(|_| [c.u64(), c.u64()]),
            subsections: Vec::new(),
        };
        if cpu.fpregs_format != 0 {
            return Err(SectionError::Invalid {
                section: VMSD.into(),
                why: format!("fpregs_format {} (QEMU accepts only 0)", cpu.fpregs_format),
            });
        }
        cpu.subsections = read_subsections(wire, VMSD, SUBSECTIONS)?;
        Ok(cpu)
    }

    pub fn encode(&self, w: &mut BodyWriter) {
        w.u64_array("env.regs", &self.regs);
        w.u64("env.eip", self.eip);
        w.u64("env.eflags", self.eflags);
        w.u32("env.hflags", self.hflags);
        w.u16("env.fpuc", self.fpuc);
        w.u16("env.fpus_vmstate", self.fpus);
        w.u16("env.fptag_vmstate", self.fptag);
        w.u16("env.fpregs_format_vmstate", self.fpregs_format);
        for reg in &self.fpregs {
            w.u64("mant", reg.mantissa);
            w.u16("exp", reg.sign_exp);
        }
        for seg in self
            .segs
            .iter()
            .chain([&self.ldt, &self.tr, &self.gdt, &self.idt])
        {
            seg.encode(w);
        }
        w.u32("env.sysenter_cs", self.sysenter_cs);
        w.u64("env.sysenter_esp", self.sysenter_esp);
        w.u64("env.sysenter_eip", self.sysenter_eip);
        w.u64("env.cr[0]", self.cr0);
        w.u64("env.cr[2]", self.cr2);
        w.u64("env.cr[3]", self.cr3);
        w.u64("env.cr[4]", self.cr4);
        w.u64_array("env.dr", &self.dr);
        w.i32("env.a20_mask", self.a20_mask);
        w.u32("env.mxcsr", self.mxcsr);
        // Flat arrays: analyze-migration.py (7.2) rejects an array name that repeats.
        w.u64_array("env.xmm_regs", &self.xmm.concat());
        w.u64("env.efer", self.efer);
        w.u64("env.star", self.star);
        w.u64("env.lstar", self.lstar);
        w.u64("env.cstar", self.cstar);
        w.u64("env.fmask", self.fmask);
        w.u64("env.kernelgsbase", self.kernelgsbase);
        w.u32("env.smbase", self.smbase);
        w.u64("env.pat", self.pat);
        w.u32("env.hflags2", self.hflags2);
        w.u64("env.vm_hsave", self.vm_hsave);
        w.u64("env.vm_vmcb", self.vm_vmcb);
        w.u64("env.tsc_offset", self.tsc_offset);
        w.u64("env.intercept", self.intercept);
        w.u16("env.intercept_cr_read", self.intercept_cr_read);
        w.u16("env.intercept_cr_write", self.intercept_cr_write);
        w.u16("env.intercept_dr_read", self.intercept_dr_read);
        w.u16("env.intercept_dr_write", self.intercept_dr_write);
        w.u32("env.intercept_exceptions", self.intercept_exceptions);
        w.u8("env.v_tpr", self.v_tpr);
        w.u64_array("env.mtrr_fixed", &self.mtrr_fixed);
        w.u64("env.mtrr_deftype", self.mtrr_deftype);
        w.u64_array("env.mtrr_var", &self.mtrr_var.concat());
        w.i32("env.interrupt_injected", self.interrupt_injected);
        w.u32("env.mp_state", self.mp_state);
        w.u64("env.tsc", self.tsc);
        w.i32("env.exception_nr", self.exception_nr);
        w.u8("env.soft_interrupt", self.soft_interrupt);
        w.u8("env.nmi_injected", self.nmi_injected);
        w.u8("env.nmi_pending", self.nmi_pending);
        w.u8("env.has_error_code", self.has_error_code);
        w.u32("env.sipi_vector", self.sipi_vector);
        w.u64("env.mcg_cap", self.mcg_cap);
        w.u64("env.mcg_status", self.mcg_status);
        w.u64("env.mcg_ctl", self.mcg_ctl);
        let mut banks = [0u64; MCE_BANK_WORDS];
        for (dst, src) in banks.iter_mut().zip(&self.mce_banks) {
            *dst = *src;
        }
        w.u64_array("env.mce_banks", &banks);
        w.u64("env.tsc_aux", self.tsc_aux);
        w.u64("env.system_time_msr", self.system_time_msr);
        w.u64("env.wall_clock_msr", self.wall_clock_msr);
        w.u64("env.xcr0", self.xcr0);
        w.u64("env.xstate_bv", self.xstate_bv);
        w.u64_array("env.ymmh_regs", &self.ymmh.concat());
        write_subsections(w, &self.subsections, SUBSECTIONS);
    }

    /// The body of subsection `name`, if present.
    pub fn subsection(&self, name: &str) -> Option<&[u8]> {
        find_subsection(&self.subsections, name)
    }

    /// The value of a one-u64 (or i64) subsection such as `cpu/steal_time_msr`.
    pub fn u64_subsection(&self, name: &str) -> Option<u64> {
        let body = self.subsection(name)?;
        (body.len() == 8).then(|| Cursor::new(body).u64())
    }

    /// The value of a one-u32 subsection such as `cpu/pkru`.
    pub fn u32_subsection(&self, name: &str) -> Option<u32> {
        let body = self.subsection(name)?;
        (body.len() == 4).then(|| Cursor::new(body).u32())
    }

    /// Adds (or replaces) a subsection with this body, keeping QEMU's emission order.
    pub fn set_subsection(&mut self, name: &str, body: Vec<u8>) {
        self.subsections.retain(|sub| sub.name != name);
        let rank = |n: &str| SUBSECTIONS.iter().position(|spec| spec.name == n);
        let Some(new_rank) = rank(name) else {
            return;
        };
        let at = self
            .subsections
            .iter()
            .position(|sub| rank(&sub.name).is_some_and(|r| r > new_rank))
            .unwrap_or(self.subsections.len());
        self.subsections.insert(
            at,
            RawSubsection {
                name: name.to_string(),
                version: 1,
                body,
            },
        );
    }

    pub fn set_u64_subsection(&mut self, name: &str, value: u64) {
        self.set_subsection(name, value.to_be_bytes().to_vec());
    }

    pub fn set_u32_subsection(&mut self, name: &str, value: u32) {
        self.set_subsection(name, value.to_be_bytes().to_vec());
    }

    /// `cpu/tsc_khz`, when sent.
    pub fn tsc_khz(&self) -> Option<i64> {
        self.u64_subsection(TSC_KHZ).map(|v| v as i64)
    }
}
