//! When a restore must make KVM's shadow MMU, or the CPU's TLB, forget what it cached.
//!
//! With a shadow MMU (kvm_pvm here, or kvm_amd/kvm_intel with npt/ept off) KVM keeps its own
//! copies of the guest's page tables and write-protects them; it does not see the VMM copying
//! snapshot contents over them. With EPT/NPT the CPU walks the guest's tables itself and sees the
//! copied tables at once, but its TLB may still hold what it read from them during the round: a
//! restore that changed any page of the snapshot's tree **flushes the guest TLB** (`guest_tlb`).
//! A restore that sets a different CR3 needs nothing more on either MMU: KVM resets its MMU
//! context and flushes then.
//!
//! The policy, for each restore (`ShadowMmuPolicy::plan`):
//! - CR3 differs from the snapshot's, or a page of the snapshot's page-table tree changed in any
//!   way but the Accessed/Dirty bits of leaf entries: **reset** the shadow MMU (memslots deleted
//!   and re-added, `RamSlots::recreate`), which drops every shadow page.
//! - Only A/D bits of leaf entries changed (the CPU, that is KVM's walker, set them as the round
//!   touched pages whose entries had them clear: the normal case for a real target): the copy
//!   puts the bits back, and KVM's SPTEs for the pages those entries map are **invalidated**
//!   (`RamSlots::invalidate`). Without that, the SPTEs created in the round would let the next
//!   round touch those pages without a fault, so KVM would not set the bits again and the guest
//!   would see them clear after writing. With it, the next access faults, KVM walks the restored
//!   entry and sets A (and D on a write) exactly as in the first round. Every other shadow page
//!   still describes the restored tables and is kept.
//! - Nothing of the tree changed: **keep** everything.
//!
//! Known gap: a round that builds a second tree in fresh pages, switches CR3 to it and back
//! before the RESTORE leaves shadow pages for that tree cached; should a later round reuse those
//! pages as page tables without rewriting them, it could see stale translations.
//! `--vcpu-restore full` does not change this; only a reset on every restore would.

use std::collections::HashMap;

use snapshot::vm_state::VcpuState;
use snapshot::{DirtyPages, PAGE_SIZE};
use vm_memory::{Bytes, GuestAddress};

use super::ram_slots::RamSlots;
use crate::memory::GuestRam;
use crate::page_tables::{page_table_levels, table_change, PagingMode, TableChange};

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

/// What a snapshot records for the policy: the layout pages of its page-table tree, and the
/// level each is a table of (`None`: used at several levels).
#[derive(Debug, Clone, Default)]
pub struct PageTableTree {
    /// `None` when the tree could not be walked (legacy paging, a corrupt tree): every restore
    /// that dirtied anything then resets.
    pages: Option<HashMap<usize, Option<u32>>>,
    /// CR4.PCIDE at the SAVE: the CPU then keeps other address spaces' translations across CR3
    /// switches (EPT/NPT: see `plan_tdp`).
    pcid: bool,
}

/// CR4.PCIDE.
const CR4_PCIDE: u64 = 1 << 17;

impl PageTableTree {
    /// Walks the tree `vcpu`'s CR3 points to in `ram`.
    pub fn of(vcpu: &VcpuState, ram: &GuestRam, slots: &RamSlots) -> Self {
        let sregs = &vcpu.sregs;
        let mode = PagingMode::from_registers(sregs.cr0, sregs.cr4, sregs.efer);
        let tables = page_table_levels(mode, sregs.cr3, &mut |gpa, table| {
            // SAFETY: `[u64; 512]` is plain data of exactly one page.
            let bytes =
                unsafe { std::slice::from_raw_parts_mut(table.as_mut_ptr() as *mut u8, PAGE_SIZE) };
            ram.memory.read_slice(bytes, GuestAddress(gpa)).is_ok()
        });
        let pages = tables.and_then(|tables| {
            tables
                .into_iter()
                .map(|(gpa, level)| slots.layout_page(gpa).map(|page| (page, level)))
                .collect::<Option<HashMap<usize, Option<u32>>>>()
        });
        PageTableTree {
            pages,
            pcid: sregs.cr4 & CR4_PCIDE != 0,
        }
    }
}

/// What a restore does about the shadow MMU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShadowMmuAction {
    Keep,
    /// Drop KVM's translations of these guest-physical ranges (address, length).
    Invalidate(Vec<(u64, u64)>),
    Reset,
    /// EPT/NPT: the CPU may have cached translations of page tables the restore put back.
    FlushGuestTlb,
}

/// A page's entries as 512 words.
pub type TablePage = [u64; 512];

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

    /// The tree to record with a snapshot.
    pub fn record(&self, vcpu: &VcpuState, ram: &GuestRam, slots: &RamSlots) -> PageTableTree {
        PageTableTree::of(vcpu, ram, slots)
    }

    /// What restoring `dirty` to a snapshot with `tree` and `snapshot_cr3`, from a vCPU now at
    /// `cr3_now`, must do. `tables(page)` gives a dirty page's contents now and in the snapshot
    /// (before the restore copies it back).
    pub fn plan(
        &self,
        tree: &PageTableTree,
        snapshot_cr3: u64,
        cr3_now: u64,
        dirty: &DirtyPages,
        tables: &mut dyn FnMut(usize) -> Option<(TablePage, TablePage)>,
    ) -> ShadowMmuAction {
        if !self.shadow_mmu {
            return Self::plan_tdp(tree, snapshot_cr3, cr3_now, dirty, tables);
        }
        if cr3_now != snapshot_cr3 {
            return ShadowMmuAction::Reset;
        }
        let Some(pages) = &tree.pages else {
            return if dirty.is_empty() {
                ShadowMmuAction::Keep
            } else {
                ShadowMmuAction::Reset
            };
        };
        let mut ranges = Vec::new();
        for page in dirty.iter() {
            let Some(level) = pages.get(&page) else {
                continue;
            };
            let (Some(level), Some((now, then))) = (level, tables(page)) else {
                return ShadowMmuAction::Reset;
            };
            match table_change(*level, &now, &then) {
                TableChange::AccessedDirtyOnly(changed) => ranges.extend(changed),
                TableChange::Other => return ShadowMmuAction::Reset,
            }
        }
        if ranges.is_empty() {
            ShadowMmuAction::Keep
        } else {
            ShadowMmuAction::Invalidate(ranges)
        }
    }

    /// EPT/NPT: any change to the snapshot's tree (A/D bits included: the TLB caches them too)
    /// may have left translations in the CPU that the restored tables no longer give. With PCIDs
    /// the CPU also keeps what it read from other address spaces' tables (another process, a
    /// second tree the round built and left), which the VMM does not know: then any restored page
    /// may have been one of them, and every restore that put pages back flushes. Without PCIDs
    /// a CR3 switch flushes them, and only the snapshot's own tree matters.
    fn plan_tdp(
        tree: &PageTableTree,
        snapshot_cr3: u64,
        cr3_now: u64,
        dirty: &DirtyPages,
        tables: &mut dyn FnMut(usize) -> Option<(TablePage, TablePage)>,
    ) -> ShadowMmuAction {
        let changed = match &tree.pages {
            // The vCPU restore writes the snapshot's CR3, and KVM flushes on that.
            _ if cr3_now != snapshot_cr3 => false,
            _ if tree.pcid => !dirty.is_empty(),
            // A table page written with what it held (the dirty log cannot tell) changed nothing.
            Some(pages) => dirty.iter().any(|page| {
                pages.contains_key(&page) && tables(page).is_none_or(|(now, then)| now != then)
            }),
            None => !dirty.is_empty(),
        };
        if changed {
            ShadowMmuAction::FlushGuestTlb
        } else {
            ShadowMmuAction::Keep
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

    const PRESENT: u64 = 1;
    const HUGE: u64 = 1 << 7;
    const ACCESSED_DIRTY: u64 = 0x60;

    #[test]
    fn resets_only_when_the_snapshot_tree_or_cr3_changed() {
        let policy = ShadowMmuPolicy { shadow_mmu: true };
        // Page 3 is a page directory mapping a 2 MiB page at 0x40_0000; page 4 is a PML4.
        let tree = PageTableTree {
            pages: Some([(3usize, Some(2)), (4, Some(4))].into_iter().collect()),
            pcid: false,
        };
        let mut pd = [0u64; 512];
        pd[2] = 0x40_0000 | PRESENT | HUGE;
        let mut touched = pd;
        touched[2] |= ACCESSED_DIRTY;
        let mut moved = pd;
        moved[2] = 0x60_0000 | PRESENT | HUGE;
        let tables_with = |now: TablePage| move |page: usize| (page == 3).then_some((now, pd));
        let plan = |cr3_now, pages: &[usize], now: TablePage| {
            policy.plan(&tree, 0x3000, cr3_now, &dirty(pages), &mut tables_with(now))
        };
        assert_eq!(plan(0x3000, &[10, 11], pd), ShadowMmuAction::Keep);
        assert_eq!(
            plan(0x3000, &[10, 3], touched),
            ShadowMmuAction::Invalidate(vec![(0x40_0000, 2 << 20)])
        );
        assert_eq!(plan(0x3000, &[3], moved), ShadowMmuAction::Reset);
        assert_eq!(plan(0x5000, &[], pd), ShadowMmuAction::Reset);
        let unknown = PageTableTree::default();
        let mut no_tables = |_: usize| None;
        assert_eq!(
            policy.plan(&unknown, 0x3000, 0x3000, &dirty(&[]), &mut no_tables),
            ShadowMmuAction::Keep
        );
        assert_eq!(
            policy.plan(&unknown, 0x3000, 0x3000, &dirty(&[1]), &mut no_tables),
            ShadowMmuAction::Reset
        );
        // EPT/NPT: a flush when the round changed the tree (A/D bits too), else nothing.
        let hardware = ShadowMmuPolicy { shadow_mmu: false };
        let hardware_plan = |cr3_now, pages: &[usize], now: TablePage| {
            hardware.plan(&tree, 0x3000, cr3_now, &dirty(pages), &mut tables_with(now))
        };
        assert_eq!(hardware_plan(0x3000, &[10, 11], pd), ShadowMmuAction::Keep);
        assert_eq!(hardware_plan(0x3000, &[3], pd), ShadowMmuAction::Keep);
        assert_eq!(
            hardware_plan(0x3000, &[10, 3], touched),
            ShadowMmuAction::FlushGuestTlb
        );
        assert_eq!(
            hardware_plan(0x3000, &[3], moved),
            ShadowMmuAction::FlushGuestTlb
        );
        assert_eq!(hardware_plan(0x5000, &[3], moved), ShadowMmuAction::Keep);
        // Without the tables at hand (an unknown tree, or pages not of it): by the dirty set.
        let without_tables = |tree: &PageTableTree, pages: &[usize]| {
            hardware.plan(tree, 0x3000, 0x3000, &dirty(pages), &mut |_| None)
        };
        assert_eq!(
            without_tables(&unknown, &[1]),
            ShadowMmuAction::FlushGuestTlb
        );
        assert_eq!(without_tables(&unknown, &[]), ShadowMmuAction::Keep);
        // With PCIDs, any restored page may have been another address space's table.
        let with_pcid = PageTableTree {
            pcid: true,
            ..tree.clone()
        };
        assert_eq!(
            without_tables(&with_pcid, &[10]),
            ShadowMmuAction::FlushGuestTlb
        );
        assert_eq!(without_tables(&with_pcid, &[]), ShadowMmuAction::Keep);
    }
}
