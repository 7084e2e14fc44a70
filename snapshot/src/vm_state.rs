//! The vCPU and VM state a snapshot holds: plain data, serialisable, validated. No KVM calls here;
//! the `vmm` crate fills these with KVM_GET_* and applies them with KVM_SET_*.
//!
//! Fixed-layout KVM structures are kept as kvm-bindings types (serialised as their raw bytes).
//! Variable or union-shaped ones are kept as bytes or lists: XSAVE (its size depends on the CPU's
//! XCR0 features, see KVM_CAP_XSAVE2), the LAPIC register page, MSRs, and the irqchips.
//!
//! Everything a QEMU migration stream's `cpu`, `apic`, `kvmclock`, `i8259`, `ioapic` and `i8254`
//! sections need is here; `SNAPSHOT_MSRS` lists the MSRs to capture for that.

use std::collections::BTreeSet;

use kvm_bindings::{
    kvm_clock_data, kvm_cpuid_entry2, kvm_debugregs, kvm_ioapic_state, kvm_irqchip,
    kvm_lapic_state, kvm_mp_state, kvm_pic_state, kvm_pit_state2, kvm_regs, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, KVM_APIC_REG_SIZE, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_MAX_CPUID_ENTRIES, KVM_MAX_XCRS, KVM_MP_STATE_SUSPENDED,
};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::persist::PersistError;

/// The legacy XSAVE area KVM_GET_XSAVE returns; KVM_GET_XSAVE2 may return more.
pub const XSAVE_MIN_LEN: usize = 4096;
/// Far above any current CPU's XSAVE area (AMX brings it to ~11 KiB).
pub const XSAVE_MAX_LEN: usize = 1 << 20;
pub const MAX_MSRS: usize = 1024;
/// Bytes of the irqchip union in `kvm_irqchip`.
pub const IRQCHIP_STATE_LEN: usize = 512;

/// MSR numbers the snapshot cares about by name.
pub mod msr {
    pub const IA32_TSC: u32 = 0x10;
    pub const IA32_SPEC_CTRL: u32 = 0x48;
    pub const IA32_TSC_ADJUST: u32 = 0x3b;
    pub const IA32_SYSENTER_CS: u32 = 0x174;
    pub const IA32_SYSENTER_ESP: u32 = 0x175;
    pub const IA32_SYSENTER_EIP: u32 = 0x176;
    pub const IA32_MISC_ENABLE: u32 = 0x1a0;
    pub const IA32_PAT: u32 = 0x277;
    pub const IA32_TSC_DEADLINE: u32 = 0x6e0;
    pub const STAR: u32 = 0xc000_0081;
    pub const LSTAR: u32 = 0xc000_0082;
    pub const CSTAR: u32 = 0xc000_0083;
    pub const SFMASK: u32 = 0xc000_0084;
    pub const KERNEL_GS_BASE: u32 = 0xc000_0102;
    pub const TSC_AUX: u32 = 0xc000_0103;
    pub const KVM_WALL_CLOCK: u32 = 0x11;
    pub const KVM_SYSTEM_TIME: u32 = 0x12;
    pub const KVM_WALL_CLOCK_NEW: u32 = 0x4b56_4d00;
    pub const KVM_SYSTEM_TIME_NEW: u32 = 0x4b56_4d01;
    pub const KVM_ASYNC_PF_EN: u32 = 0x4b56_4d02;
    pub const KVM_STEAL_TIME: u32 = 0x4b56_4d03;
    pub const KVM_PV_EOI_EN: u32 = 0x4b56_4d04;
    pub const KVM_POLL_CONTROL: u32 = 0x4b56_4d05;
    pub const KVM_ASYNC_PF_INT: u32 = 0x4b56_4d06;
    pub const MTRR_DEF_TYPE: u32 = 0x2ff;
    pub const MCG_STATUS: u32 = 0x17a;
    pub const MCG_CTL: u32 = 0x17b;
    pub const VM_HSAVE_PA: u32 = 0xc001_0117;
    pub const K7_HWCR: u32 = 0xc001_0015;
}

/// MSRs the VMM should read for a complete snapshot (intersect with KVM_GET_MSR_INDEX_LIST; the
/// variable and fixed MTRRs are added by `snapshot_msr_indices`). KVM requires IA32_TSC to be set
/// before the kvmclock MSRs on restore, which this order gives.
pub const SNAPSHOT_MSRS: &[u32] = &[
    msr::IA32_TSC,
    msr::IA32_TSC_ADJUST,
    msr::IA32_TSC_DEADLINE,
    msr::IA32_SYSENTER_CS,
    msr::IA32_SYSENTER_ESP,
    msr::IA32_SYSENTER_EIP,
    msr::STAR,
    msr::LSTAR,
    msr::CSTAR,
    msr::SFMASK,
    msr::KERNEL_GS_BASE,
    msr::TSC_AUX,
    msr::IA32_MISC_ENABLE,
    msr::IA32_PAT,
    msr::IA32_SPEC_CTRL,
    msr::MTRR_DEF_TYPE,
    msr::MCG_STATUS,
    msr::MCG_CTL,
    msr::VM_HSAVE_PA,
    msr::K7_HWCR,
    msr::KVM_WALL_CLOCK,
    msr::KVM_SYSTEM_TIME,
    msr::KVM_WALL_CLOCK_NEW,
    msr::KVM_SYSTEM_TIME_NEW,
    msr::KVM_ASYNC_PF_EN,
    msr::KVM_ASYNC_PF_INT,
    msr::KVM_STEAL_TIME,
    msr::KVM_PV_EOI_EN,
    msr::KVM_POLL_CONTROL,
];

/// `SNAPSHOT_MSRS` plus the MTRRs (8 variable pairs at 0x200, and the 11 fixed-range MSRs).
pub fn snapshot_msr_indices() -> Vec<u32> {
    let mut indices = SNAPSHOT_MSRS.to_vec();
    indices.extend(0x200..0x210);
    indices.extend([0x250, 0x258, 0x259]);
    indices.extend(0x268..0x270);
    indices
}

/// Why a saved state was rejected.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum VmStateError {
    #[error("vCPU {vcpu}: {field} is {len} bytes, expected {expected}")]
    BadLength {
        vcpu: u32,
        field: &'static str,
        len: usize,
        expected: String,
    },
    #[error("vCPU {vcpu}: {field} has {count} entries, at most {max} allowed")]
    TooMany {
        vcpu: u32,
        field: &'static str,
        count: usize,
        max: usize,
    },
    #[error("vCPU {vcpu}: MSR {index:#x} appears twice")]
    DuplicateMsr { vcpu: u32, index: u32 },
    #[error("vCPU {vcpu}: {why}")]
    BadVcpu { vcpu: u32, why: String },
    #[error("{which} irqchip: {why}")]
    BadIrqchip { which: &'static str, why: String },
    #[error("PIT channel {channel}: {why}")]
    BadPit { channel: usize, why: String },
}

impl From<VmStateError> for PersistError {
    fn from(err: VmStateError) -> Self {
        PersistError::invalid("VM", err.to_string())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsrEntry {
    pub index: u32,
    pub value: u64,
}

/// Everything about one vCPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VcpuState {
    pub vcpu_id: u32,
    /// CPUID as set with KVM_SET_CPUID2; must be applied before XSAVE and MSRs on restore.
    pub cpuid: Vec<kvm_cpuid_entry2>,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    /// The XSAVE area (KVM_GET_XSAVE or KVM_GET_XSAVE2), in bytes.
    pub xsave: Vec<u8>,
    pub xcrs: kvm_xcrs,
    /// MSRs in the order they must be set.
    pub msrs: Vec<MsrEntry>,
    /// The LAPIC register page (`kvm_lapic_state.regs`), 1024 bytes.
    pub lapic: Vec<u8>,
    pub vcpu_events: kvm_vcpu_events,
    pub mp_state: kvm_mp_state,
    pub debug_regs: kvm_debugregs,
    /// Guest TSC frequency (KVM_GET_TSC_KHZ), when known.
    pub tsc_khz: Option<u32>,
}

impl VcpuState {
    /// A minimal valid state (the values a freshly created vCPU reports for the checked fields).
    pub fn new(vcpu_id: u32) -> Self {
        VcpuState {
            vcpu_id,
            cpuid: Vec::new(),
            regs: kvm_regs {
                rflags: 0x2,
                ..Default::default()
            },
            sregs: kvm_sregs::default(),
            xsave: vec![0; XSAVE_MIN_LEN],
            xcrs: kvm_xcrs::default(),
            msrs: Vec::new(),
            lapic: vec![0; KVM_APIC_REG_SIZE as usize],
            vcpu_events: kvm_vcpu_events::default(),
            mp_state: kvm_mp_state::default(),
            debug_regs: kvm_debugregs::default(),
            tsc_khz: None,
        }
    }

    pub fn validate(&self) -> Result<(), VmStateError> {
        let vcpu = self.vcpu_id;
        if self.xsave.len() < XSAVE_MIN_LEN
            || self.xsave.len() > XSAVE_MAX_LEN
            || self.xsave.len() & 3 != 0
        {
            return Err(VmStateError::BadLength {
                vcpu,
                field: "xsave",
                len: self.xsave.len(),
                expected: format!("a multiple of 4 in {XSAVE_MIN_LEN}..={XSAVE_MAX_LEN}"),
            });
        }
        if self.lapic.len() != KVM_APIC_REG_SIZE as usize {
            return Err(VmStateError::BadLength {
                vcpu,
                field: "lapic",
                len: self.lapic.len(),
                expected: KVM_APIC_REG_SIZE.to_string(),
            });
        }
        if self.msrs.len() > MAX_MSRS {
            return Err(VmStateError::TooMany {
                vcpu,
                field: "msrs",
                count: self.msrs.len(),
                max: MAX_MSRS,
            });
        }
        if self.cpuid.is_empty() {
            return Err(VmStateError::BadVcpu {
                vcpu,
                why: "no CPUID entries (a vCPU cannot be restored without its CPU model)".into(),
            });
        }
        if self.cpuid.len() > KVM_MAX_CPUID_ENTRIES {
            return Err(VmStateError::TooMany {
                vcpu,
                field: "cpuid",
                count: self.cpuid.len(),
                max: KVM_MAX_CPUID_ENTRIES,
            });
        }
        if self.xcrs.nr_xcrs > KVM_MAX_XCRS {
            return Err(VmStateError::TooMany {
                vcpu,
                field: "xcrs",
                count: self.xcrs.nr_xcrs as usize,
                max: KVM_MAX_XCRS as usize,
            });
        }
        let mut seen = BTreeSet::new();
        for entry in &self.msrs {
            if !seen.insert(entry.index) {
                return Err(VmStateError::DuplicateMsr {
                    vcpu,
                    index: entry.index,
                });
            }
        }
        // RFLAGS bit 1 is reserved and always reads as 1; a zero there means a garbage register set.
        if self.regs.rflags & 0x2 == 0 {
            return Err(VmStateError::BadVcpu {
                vcpu,
                why: format!("rflags {:#x} has reserved bit 1 clear", self.regs.rflags),
            });
        }
        if self.mp_state.mp_state > KVM_MP_STATE_SUSPENDED {
            return Err(VmStateError::BadVcpu {
                vcpu,
                why: format!("unknown mp_state {}", self.mp_state.mp_state),
            });
        }
        if self.vcpu_events.exception.injected != 0 && self.vcpu_events.exception.nr >= 32 {
            return Err(VmStateError::BadVcpu {
                vcpu,
                why: format!(
                    "injected exception vector {} is not an exception",
                    self.vcpu_events.exception.nr
                ),
            });
        }
        Ok(())
    }

    /// Value of MSR `index`, if captured.
    pub fn msr(&self, index: u32) -> Option<u64> {
        self.msrs
            .iter()
            .find(|entry| entry.index == index)
            .map(|entry| entry.value)
    }

    /// The guest TSC at capture time.
    pub fn tsc(&self) -> Option<u64> {
        self.msr(msr::IA32_TSC)
    }

    pub fn set_lapic(&mut self, lapic: &kvm_lapic_state) {
        self.lapic = lapic.regs.iter().map(|&byte| byte as u8).collect();
    }

    /// The LAPIC page as KVM_SET_LAPIC takes it (zero-padded if the state was not validated).
    pub fn lapic_state(&self) -> kvm_lapic_state {
        let mut state = kvm_lapic_state {
            regs: [0; KVM_APIC_REG_SIZE as usize],
        };
        for (dst, &src) in state.regs.iter_mut().zip(&self.lapic) {
            *dst = src as std::os::raw::c_char;
        }
        state
    }

    /// Stores an XSAVE area given as the u32 words of `kvm_xsave.region` (plus any extra words).
    pub fn set_xsave_words(&mut self, words: &[u32]) {
        self.xsave = words.iter().flat_map(|word| word.to_le_bytes()).collect();
    }

    /// The XSAVE area as u32 words for `kvm_xsave.region` (and its extension with KVM_SET_XSAVE2).
    pub fn xsave_words(&self) -> Vec<u32> {
        self.xsave
            .chunks_exact(4)
            .map(|word| u32::from_le_bytes([word[0], word[1], word[2], word[3]]))
            .collect()
    }
}

/// One in-kernel irqchip (PIC master, PIC slave or IOAPIC) as KVM_GET_IRQCHIP returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IrqchipState {
    pub chip_id: u32,
    /// The 512-byte union of `kvm_irqchip`.
    pub bytes: Vec<u8>,
}

impl IrqchipState {
    pub fn from_kvm(chip: &kvm_irqchip) -> Self {
        // SAFETY: `dummy` spans the whole union and every byte pattern is a valid c_char array.
        let raw = unsafe { chip.chip.dummy };
        IrqchipState {
            chip_id: chip.chip_id,
            bytes: raw.iter().map(|&byte| byte as u8).collect(),
        }
    }

    /// Whether `chip` (from KVM_GET_IRQCHIP) is this state, without building one from it.
    pub fn is_kvm(&self, chip: &kvm_irqchip) -> bool {
        // SAFETY: as in `from_kvm`.
        let raw = unsafe { chip.chip.dummy };
        chip.chip_id == self.chip_id
            && raw.len() == self.bytes.len()
            && raw.iter().zip(&self.bytes).all(|(&a, &b)| a as u8 == b)
    }

    /// The value for KVM_SET_IRQCHIP (short byte strings are zero-padded; validate first).
    pub fn to_kvm(&self) -> kvm_irqchip {
        let mut raw = [0 as std::os::raw::c_char; IRQCHIP_STATE_LEN];
        for (dst, &src) in raw.iter_mut().zip(&self.bytes) {
            *dst = src as std::os::raw::c_char;
        }
        let mut chip = kvm_irqchip {
            chip_id: self.chip_id,
            ..Default::default()
        };
        chip.chip.dummy = raw;
        chip
    }

    /// The PIC view (for PIC chips).
    pub fn pic(&self) -> kvm_pic_state {
        // SAFETY: `kvm_pic_state` is plain bytes, valid for any bit pattern, and lies within the union.
        unsafe { self.to_kvm().chip.pic }
    }

    /// The IOAPIC view (for the IOAPIC chip).
    pub fn ioapic(&self) -> kvm_ioapic_state {
        // SAFETY: `kvm_ioapic_state` is integers and unions of integers, valid for any bit pattern.
        unsafe { self.to_kvm().chip.ioapic }
    }

    fn validate(&self, which: &'static str, chip_id: u32) -> Result<(), VmStateError> {
        if self.chip_id != chip_id {
            return Err(VmStateError::BadIrqchip {
                which,
                why: format!("chip id {} (expected {chip_id})", self.chip_id),
            });
        }
        if self.bytes.len() != IRQCHIP_STATE_LEN {
            return Err(VmStateError::BadIrqchip {
                which,
                why: format!("{} bytes (expected {IRQCHIP_STATE_LEN})", self.bytes.len()),
            });
        }
        Ok(())
    }
}

/// The VM-wide KVM state besides RAM: the in-kernel interrupt controllers, the PIT and the clock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmState {
    pub pic_master: IrqchipState,
    pub pic_slave: IrqchipState,
    pub ioapic: IrqchipState,
    pub pit: kvm_pit_state2,
    /// KVM_GET_CLOCK at capture time (kvmclock).
    pub clock: kvm_clock_data,
}

/// i8254 channel modes are 0-5; KVM keeps modes 6 and 7 as their aliases 2 and 3.
const PIT_MAX_MODE: u8 = 5;
/// The mode KVM gives a channel nobody has programmed since the PIT's reset.
const PIT_MODE_UNPROGRAMMED: u8 = 0xff;
/// Read/write access modes: 1 LSB, 2 MSB, 3 LSB then MSB (0 is the latch command, never stored).
const PIT_RW_MODES: std::ops::RangeInclusive<u8> = 1..=3;
/// PIC state as KVM_GET_IRQCHIP reports it for the fields with a fixed range.
const PIC_MAX_READ_REG_SELECT: u8 = 1;

impl VmState {
    /// Checks every part: the irqchips' ids and sizes and the fields KVM would act on without
    /// checking (PIC and IOAPIC ranges, PIT channel modes and counts).
    pub fn validate(&self) -> Result<(), VmStateError> {
        self.pic_master
            .validate("PIC master", KVM_IRQCHIP_PIC_MASTER)?;
        self.pic_slave
            .validate("PIC slave", KVM_IRQCHIP_PIC_SLAVE)?;
        self.ioapic.validate("IOAPIC", KVM_IRQCHIP_IOAPIC)?;
        for (which, chip) in [
            ("PIC master", &self.pic_master),
            ("PIC slave", &self.pic_slave),
        ] {
            let pic = chip.pic();
            if pic.read_reg_select > PIC_MAX_READ_REG_SELECT || pic.init_state > 3 {
                return Err(VmStateError::BadIrqchip {
                    which,
                    why: format!(
                        "read_reg_select {} / init_state {} out of range",
                        pic.read_reg_select, pic.init_state
                    ),
                });
            }
        }
        let ioapic = self.ioapic.ioapic();
        if ioapic.ioregsel > 0xff {
            return Err(VmStateError::BadIrqchip {
                which: "IOAPIC",
                why: format!("register select {:#x}", ioapic.ioregsel),
            });
        }
        self.validate_pit()
    }

    fn validate_pit(&self) -> Result<(), VmStateError> {
        for (index, channel) in self.pit.channels.iter().enumerate() {
            let bad = |why: String| VmStateError::BadPit {
                channel: index,
                why,
            };
            if channel.count > 0x1_0000 {
                return Err(bad(format!("count {:#x} exceeds 0x10000", channel.count)));
            }
            if channel.mode > PIT_MAX_MODE && channel.mode != PIT_MODE_UNPROGRAMMED {
                return Err(bad(format!("mode {}", channel.mode)));
            }
            for (what, mode) in [("read", channel.read_state), ("write", channel.write_state)] {
                if !PIT_RW_MODES.contains(&mode) && mode != 0 {
                    return Err(bad(format!("{what} state {mode}")));
                }
            }
            if !PIT_RW_MODES.contains(&channel.rw_mode) && channel.rw_mode != 0 {
                return Err(bad(format!("access mode {}", channel.rw_mode)));
            }
            if channel.bcd > 1 || channel.gate > 1 {
                return Err(bad(format!("bcd {} / gate {}", channel.bcd, channel.gate)));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
