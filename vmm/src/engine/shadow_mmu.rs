//! When a restore must make KVM's shadow MMU forget what it cached.
//!
//! With a shadow MMU (kvm_pvm here, or kvm_amd/kvm_intel with npt/ept off) KVM keeps its own
//! copies of the guest's page tables and write-protects them; it does not see the VMM copying
//! snapshot contents over them. With EPT/NPT the CPU walks the guest's tables itself, and copying
//! them back is enough.
//!
//! The policy: a restore resets the shadow MMU (memslots deleted and re-added, see
//! `RamSlots::recreate`) when a page of the snapshot's page-table tree was written since, or CR3
//! differs from the snapshot's. Otherwise the tree the guest uses after the restore is the
//! snapshot's, untouched, and every cached shadow page is still right.
//!
//! Known gap: a round that builds a second tree in fresh pages, switches CR3 to it and back
//! before the RESTORE leaves shadow pages for that tree cached; should a later round reuse those
//! pages as page tables without rewriting them, it could see stale translations.
//! `--vcpu-restore full` does not change this; only a reset on every restore would.

use std::collections::HashSet;

use snapshot::vm_state::VcpuState;
use snapshot::{DirtyPages, PAGE_SIZE};
use vm_memory::{Bytes, GuestAddress};

use super::ram_slots::RamSlots;
use crate::memory::GuestRam;
use crate::page_tables::{page_table_pages, PagingMode};

/// True when KVM uses a shadow MMU, which does not see host writes to guest page tables.
pub fn detect_shadow_mmu() -> bool {
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .map(|s| s.trim().to_string())
            .ok()
    };
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        return true;
    }
    if let Some(npt) = read("/sys/module/kvm_amd/parameters/npt") {
        return npt != "Y" && npt != "1";
    }
    if let Some(ept) = read("/sys/module/kvm_intel/parameters/ept") {
        return ept != "Y" && ept != "1";
    }
    // Unknown: assume the worst, which costs speed, never exactness.
    true
}

/// What a snapshot records for the policy: the layout pages of its page-table tree.
#[derive(Debug, Clone, Default)]
pub struct PageTableTree {
    /// `None` when the tree could not be walked (legacy paging, a corrupt tree): every restore
    /// that dirtied anything then resets.
    pages: Option<HashSet<usize>>,
}

impl PageTableTree {
    /// Walks the tree `vcpu`'s CR3 points to in `ram`.
    pub fn of(vcpu: &VcpuState, ram: &GuestRam, slots: &RamSlots) -> Self {
        let sregs = &vcpu.sregs;
        let mode = PagingMode::from_registers(sregs.cr0, sregs.cr4, sregs.efer);
        let tables = page_table_pages(mode, sregs.cr3, &mut |gpa, table| {
            // SAFETY: `[u64; 512]` is plain data of exactly one page.
            let bytes =
                unsafe { std::slice::from_raw_parts_mut(table.as_mut_ptr() as *mut u8, PAGE_SIZE) };
            ram.memory.read_slice(bytes, GuestAddress(gpa)).is_ok()
        });
        let pages = tables.and_then(|tables| {
            tables
                .into_iter()
                .map(|gpa| slots.layout_page(gpa))
                .collect::<Option<HashSet<usize>>>()
        });
        PageTableTree { pages }
    }
}

/// The policy for one VM.
#[derive(Debug, Clone, Copy)]
pub struct ShadowMmuPolicy {
    shadow_mmu: bool,
}

impl ShadowMmuPolicy {
    pub fn detect() -> Self {
        ShadowMmuPolicy {
            shadow_mmu: detect_shadow_mmu(),
        }
    }

    pub fn shadow_mmu(&self) -> bool {
        self.shadow_mmu
    }

    /// The tree to record with a snapshot (nothing to record without a shadow MMU).
    pub fn record(&self, vcpu: &VcpuState, ram: &GuestRam, slots: &RamSlots) -> PageTableTree {
        if self.shadow_mmu {
            PageTableTree::of(vcpu, ram, slots)
        } else {
            PageTableTree::default()
        }
    }

    /// Whether restoring `dirty` to a snapshot with `tree` and `snapshot_cr3`, from a vCPU now at
    /// `cr3_now`, must reset the shadow MMU.
    pub fn must_reset(
        &self,
        tree: &PageTableTree,
        snapshot_cr3: u64,
        cr3_now: u64,
        dirty: &DirtyPages,
    ) -> bool {
        if !self.shadow_mmu {
            return false;
        }
        if cr3_now != snapshot_cr3 {
            return true;
        }
        match &tree.pages {
            Some(tables) => dirty.iter().any(|page| tables.contains(&page)),
            None => !dirty.is_empty(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirty(pages: &[usize]) -> DirtyPages {
        let mut set = DirtyPages::new(64);
        for &page in pages {
            set.insert(page).unwrap();
        }
        set
    }

    #[test]
    fn resets_only_when_the_snapshot_tree_or_cr3_changed() {
        let policy = ShadowMmuPolicy { shadow_mmu: true };
        let tree = PageTableTree {
            pages: Some([3usize, 4].into_iter().collect()),
        };
        assert!(!policy.must_reset(&tree, 0x3000, 0x3000, &dirty(&[10, 11])));
        assert!(policy.must_reset(&tree, 0x3000, 0x3000, &dirty(&[10, 4])));
        assert!(policy.must_reset(&tree, 0x3000, 0x5000, &dirty(&[])));
        let unknown = PageTableTree::default();
        assert!(!policy.must_reset(&unknown, 0x3000, 0x3000, &dirty(&[])));
        assert!(policy.must_reset(&unknown, 0x3000, 0x3000, &dirty(&[1])));
        let hardware = ShadowMmuPolicy { shadow_mmu: false };
        assert!(!hardware.must_reset(&unknown, 0x3000, 0x5000, &dirty(&[1])));
    }
}
