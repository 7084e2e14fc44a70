//! Flushing the guest's TLB after a restore on a host with EPT/NPT.
//!
//! There the CPU walks the guest's page tables itself and keeps what it read (TLB and
//! paging-structure caches, tagged by VPID/ASID and PCID) across VM exits. A restore that copies
//! page-table pages back changes translations behind the guest's back: a page the round mapped
//! would stay reachable through a cached entry, and a cached Dirty bit would let the next round
//! write a page without the CPU setting D in the restored entry. The guest cannot know it must
//! flush (it resumes right after its SAVE), and KVM has no ioctl that flushes; but KVM flushes the
//! vCPU's current TLB context whenever it loads a new MMU root (`kvm_mmu_load`), which it does
//! after KVM_SET_SREGS changes CR3. So the restore first sets the current SREGS with CR3's PWT bit
//! flipped; its own SREGS (the snapshot's CR3) change it back before the guest runs again: two MMU
//! context resets, and one flush at the next entry. No guest instruction runs in between, so the
//! flipped bit is never used for a walk.
//!
//! When (`shadow_mmu::ShadowMmuPolicy::plan`): a restore that changed a page of the snapshot's
//! page-table tree (the tree CR3 points to at the SAVE); and, when the guest uses PCIDs (CR4.PCIDE,
//! Linux does), any restore that put pages back: the CPU then keeps other address spaces'
//! translations across CR3 switches, and the VMM does not know their tables. Without PCIDs a CR3
//! switch drops those, so a guest like ours (no PCIDs, the round's tree unchanged) pays no TLB
//! refill per round.
//!
//! With a shadow MMU the policy in `shadow_mmu` applies instead: KVM's shadow pages are the
//! guest's TLB there, and resets or invalidations of them do the same job.

use kvm_bindings::kvm_sregs;
use kvm_ioctls::VcpuFd;

use crate::vstate::VstateError;

/// CR3's page-level write-through bit (with CR4.PCIDE, a bit of the PCID): any bit would do,
/// KVM only compares the old and new values.
const CR3_FLIPPED_BIT: u64 = 1 << 3;

/// Makes KVM flush the guest's TLB before the vCPU next runs. `sregs_now` is the vCPU's current
/// SREGS; the caller must set the snapshot's SREGS (fast or full vCPU restore) afterwards.
pub fn flush_guest_tlb(vcpu: &VcpuFd, sregs_now: &kvm_sregs) -> Result<(), VstateError> {
    let mut flipped = *sregs_now;
    flipped.cr3 ^= CR3_FLIPPED_BIT;
    // A set bit here would queue that interrupt again; the restore sets the snapshot's events.
    flipped.interrupt_bitmap = [0; 4];
    vcpu.set_sregs(&flipped).map_err(|source| VstateError::Kvm {
        what: "SET_SREGS (guest TLB flush)",
        source,
    })
}
