//! Creating the KVM objects of a machine: the VM with its in-kernel irqchip, PIT and RAM slots,
//! and the boot vCPU with its CPU model (CPUID) and, for a cold boot, its entry state.

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_pit_config, kvm_userspace_memory_region, CpuId, Msrs,
    KVM_CPUID_FLAG_SIGNIFCANT_INDEX, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use thiserror::Error;

use crate::arch::cpu::{
    entry_fpu, entry_msrs, entry_regs, entry_sregs, patch_cpuid, wire_lapic_lint,
};
use crate::arch::layout::KVM_TSS_ADDR;
use crate::boot::BootSetup;
use crate::memory::GuestRam;

#[derive(Debug, Error)]
pub enum VmSetupError {
    #[error("cannot open /dev/kvm: {0} (is KVM available and are you allowed to use it?)")]
    OpenKvm(kvm_ioctls::Error),
    #[error("KVM {what} failed: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error(
        "the snapshot's CPU model needs features this host's KVM cannot provide \
         (CPUID leaf {leaf:#x}.{index} {register}: bits {missing:#x})"
    )]
    CpuidUnsupported {
        leaf: u32,
        index: u32,
        register: &'static str,
        missing: u32,
    },
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmSetupError {
    move |source| VmSetupError::Kvm { what, source }
}

/// Opens KVM and creates the VM with its in-kernel irqchip, PIT and RAM slots (numbered from 0
/// in the order of `ram.slots()`).
pub fn create_vm(ram: &GuestRam) -> Result<(Kvm, VmFd), VmSetupError> {
    let kvm = Kvm::new().map_err(VmSetupError::OpenKvm)?;
    let vm_fd = kvm.create_vm().map_err(kvm_err("CREATE_VM"))?;
    vm_fd
        .set_tss_address(KVM_TSS_ADDR as usize)
        .map_err(kvm_err("SET_TSS_ADDR"))?;
    vm_fd.create_irq_chip().map_err(kvm_err("CREATE_IRQCHIP"))?;
    vm_fd
        .create_pit2(kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        })
        .map_err(kvm_err("CREATE_PIT2"))?;
    for (slot, (guest_addr, len, host_addr)) in ram.slots().into_iter().enumerate() {
        let region = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: guest_addr,
            memory_size: len,
            userspace_addr: host_addr,
        };
        // SAFETY: the region is a live mapping owned by `ram`, which the Machine keeps alive for
        // as long as the VM fd exists.
        unsafe { vm_fd.set_user_memory_region(region) }
            .map_err(kvm_err("SET_USER_MEMORY_REGION"))?;
    }
    Ok((kvm, vm_fd))
}

/// The CPU model a vCPU gets.
pub enum CpuModel<'a> {
    /// What this host's KVM supports (a cold boot).
    Host,
    /// A saved model (a resumed machine): it must be one this host's KVM can provide.
    Saved(&'a [kvm_cpuid_entry2]),
}

/// Creates vCPU 0 with its CPUID. CPUID goes first, before anything that depends on the CPU
/// model: KVM validates CR4/EFER bits, XSAVE features and MSRs against it, and refuses to change
/// it once the vCPU has run.
pub fn create_vcpu(kvm: &Kvm, vm_fd: &VmFd, model: CpuModel) -> Result<VcpuFd, VmSetupError> {
    let vcpu = vm_fd.create_vcpu(0).map_err(kvm_err("CREATE_VCPU"))?;
    let mut supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("GET_SUPPORTED_CPUID"))?;
    patch_cpuid(
        &mut supported,
        0,
        kvm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer),
    );
    vcpu.set_cpuid2(&supported).map_err(kvm_err("SET_CPUID2"))?;
    if let CpuModel::Saved(entries) = model {
        // What this host gives a vCPU can exceed what it lists as supported (kvm_pvm passes the
        // host's own features through): compare with the model the vCPU actually got.
        let offered = vcpu
            .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("GET_CPUID2"))?;
        check_cpuid_supported(entries, offered.as_slice())?;
        let saved = CpuId::from_entries(entries).map_err(|_| VmSetupError::Kvm {
            what: "SET_CPUID2 (building the list)",
            source: kvm_ioctls::Error::new(libc::E2BIG),
        })?;
        // Allowed: the vCPU has not run yet.
        vcpu.set_cpuid2(&saved).map_err(kvm_err("SET_CPUID2"))?;
    }
    Ok(vcpu)
}

/// Puts a fresh vCPU in the entry state of `boot`'s protocol.
///
/// Ordering: MSRs and FPU, then SREGS (CR0/CR4/EFER, checked against CPUID) before REGS; the
/// LAPIC after the irqchip exists (the VM created it first).
pub fn set_boot_entry(vcpu: &VcpuFd, boot: &BootSetup) -> Result<(), VmSetupError> {
    let msrs = Msrs::from_entries(&entry_msrs()).map_err(|_| VmSetupError::Kvm {
        what: "SET_MSRS (building the list)",
        source: kvm_ioctls::Error::new(libc::EINVAL),
    })?;
    vcpu.set_msrs(&msrs).map_err(kvm_err("SET_MSRS"))?;
    vcpu.set_fpu(&entry_fpu()).map_err(kvm_err("SET_FPU"))?;
    let base = vcpu.get_sregs().map_err(kvm_err("GET_SREGS"))?;
    vcpu.set_sregs(&entry_sregs(boot.entry, &base))
        .map_err(kvm_err("SET_SREGS"))?;
    vcpu.set_regs(&entry_regs(boot.entry))
        .map_err(kvm_err("SET_REGS"))?;
    let mut lapic = vcpu.get_lapic().map_err(kvm_err("GET_LAPIC"))?;
    wire_lapic_lint(&mut lapic);
    vcpu.set_lapic(&lapic).map_err(kvm_err("SET_LAPIC"))?;
    Ok(())
}

/// Feature bits that KVM changes with the guest's own control registers (OSXSAVE, OSPKE) and so
/// never lists as supported: they do not name a capability of the host.
fn dynamic_bits(leaf: u32, register: &str) -> u32 {
    match (leaf, register) {
        (1, "ecx") => 1 << 27,
        (7, "ecx") => 1 << 4,
        _ => 0,
    }
}

/// Checks that every feature flag the saved CPU model advertises is one this host's KVM
/// supports: a guest that found a feature at boot may use it at any time.
fn check_cpuid_supported(
    saved: &[kvm_cpuid_entry2],
    supported: &[kvm_cpuid_entry2],
) -> Result<(), VmSetupError> {
    const FEATURE_LEAVES: &[(u32, u32, &[&str])] = &[
        (1, 0, &["ecx", "edx"]),
        (7, 0, &["ebx", "ecx", "edx"]),
        (0xd, 1, &["eax"]),
        (0x8000_0001, 0, &["ecx", "edx"]),
    ];
    for &(leaf, index, registers) in FEATURE_LEAVES {
        // KVM fills `index` only for leaves flagged as having sub-leaves; ignore it elsewhere.
        let find = |entries: &[kvm_cpuid_entry2]| {
            entries
                .iter()
                .find(|e| {
                    e.function == leaf
                        && (e.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX == 0 || e.index == index)
                })
                .copied()
        };
        let Some(wanted) = find(saved) else {
            continue;
        };
        let offered = find(supported).unwrap_or_default();
        for &register in registers {
            let pick = |e: &kvm_cpuid_entry2| match register {
                "eax" => e.eax,
                "ebx" => e.ebx,
                "ecx" => e.ecx,
                _ => e.edx,
            };
            let missing = pick(&wanted) & !pick(&offered) & !dynamic_bits(leaf, register);
            if missing != 0 {
                return Err(VmSetupError::CpuidUnsupported {
                    leaf,
                    index,
                    register,
                    missing,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, ecx: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            flags: if function == 7 {
                KVM_CPUID_FLAG_SIGNIFCANT_INDEX
            } else {
                0
            },
            ecx,
            ..Default::default()
        }
    }

    #[test]
    fn a_saved_model_may_only_use_features_the_host_offers() {
        let host = [entry(1, 0, 0b1011), entry(7, 0, 0)];
        assert!(check_cpuid_supported(&[entry(1, 0, 0b0011)], &host).is_ok());
        // OSXSAVE follows the guest's CR4 and is never "supported".
        assert!(check_cpuid_supported(&[entry(1, 0, 1 << 27)], &host).is_ok());
        let error = check_cpuid_supported(&[entry(1, 0, 0b0111)], &host).unwrap_err();
        assert!(matches!(
            error,
            VmSetupError::CpuidUnsupported {
                leaf: 1,
                missing: 0b0100,
                ..
            }
        ));
        assert!(check_cpuid_supported(&[entry(7, 0, 1)], &host).is_err());
        // Leaf 1 has no sub-leaves: a stray index does not hide it.
        assert!(check_cpuid_supported(&[entry(1, 5, 0b0111)], &host).is_err());
        // Leaves that name no features are the model's own business (brand string, cache info).
        assert!(check_cpuid_supported(&[entry(0x8000_0002, 0, !0)], &host).is_ok());
    }
}
