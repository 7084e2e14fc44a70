//! Finding a guest's page-table pages. On a shadow MMU (kvm_pvm, or EPT/NPT turned off) KVM keeps
//! its own copies of these pages and does not see the VMM copying snapshot contents over them, so
//! a restore that rewrites one must make KVM drop its shadow copies.

use std::collections::{HashMap, HashSet};

const PRESENT: u64 = 1;
const ACCESSED: u64 = 1 << 5;
const DIRTY: u64 = 1 << 6;
const HUGE: u64 = 1 << 7;
const ADDRESS_MASK: u64 = 0x000f_ffff_ffff_f000;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_LA57: u64 = 1 << 12;
const EFER_LMA: u64 = 1 << 10;
/// Bound on the walk, so a hostile or corrupt guest cannot make it run away.
const MAX_TABLE_PAGES: usize = 1 << 20;

/// The guest's paging mode, from its control registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PagingMode {
    Off,
    /// 32-bit or PAE paging: not walked; callers treat every restore as touching page tables.
    Legacy,
    /// 4- or 5-level long-mode paging.
    Long {
        levels: u32,
    },
}

impl PagingMode {
    pub fn from_registers(cr0: u64, cr4: u64, efer: u64) -> Self {
        if cr0 & CR0_PG == 0 {
            PagingMode::Off
        } else if efer & EFER_LMA != 0 && cr4 & CR4_PAE != 0 {
            PagingMode::Long {
                levels: if cr4 & CR4_LA57 != 0 { 5 } else { 4 },
            }
        } else {
            PagingMode::Legacy
        }
    }
}

/// Physical addresses (page aligned) of every page-table page reachable from `cr3`, or `None` if
/// the tree could not be walked completely (then every restore must assume page tables changed).
/// `read_table` reads the 512 entries of the table at a guest-physical address.
pub fn page_table_pages(
    mode: PagingMode,
    cr3: u64,
    read_table: &mut dyn FnMut(u64, &mut [u64; 512]) -> bool,
) -> Option<HashSet<u64>> {
    page_table_levels(mode, cr3, read_table).map(|levels| levels.into_keys().collect())
}

/// Like `page_table_pages`, with the level each page is a table of (1 = PT .. 4/5 = root);
/// `None` as the level when the guest uses one page at several levels.
pub fn page_table_levels(
    mode: PagingMode,
    cr3: u64,
    read_table: &mut dyn FnMut(u64, &mut [u64; 512]) -> bool,
) -> Option<HashMap<u64, Option<u32>>> {
    let levels = match mode {
        PagingMode::Off => return Some(HashMap::new()),
        PagingMode::Legacy => return None,
        PagingMode::Long { levels } => levels,
    };
    let mut found: HashMap<u64, Option<u32>> = HashMap::new();
    let mut pending = vec![(cr3 & ADDRESS_MASK, levels)];
    let mut table = [0u64; 512];
    while let Some((addr, level)) = pending.pop() {
        if let Some(known) = found.get_mut(&addr) {
            if *known != Some(level) {
                *known = None;
            }
            continue;
        }
        found.insert(addr, Some(level));
        if found.len() > MAX_TABLE_PAGES || !read_table(addr, &mut table) {
            return None;
        }
        if level == 1 {
            continue;
        }
        for entry in table.iter() {
            let leaf = level <= 3 && entry & HUGE != 0;
            if entry & PRESENT != 0 && !leaf {
                pending.push((entry & ADDRESS_MASK, level - 1));
            }
        }
    }
    Some(found)
}

/// How a page-table page written since a snapshot differs from its snapshot copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableChange {
    /// Only Accessed/Dirty bits of leaf entries (4 KiB pages, or 2 MiB pages) differ: the
    /// guest-physical ranges those entries map, as (address, length).
    AccessedDirtyOnly(Vec<(u64, u64)>),
    /// Anything else: an address, a permission, a non-leaf entry's bits, a 1 GiB page.
    Other,
}

/// Compares a level-`level` table as it is now with its snapshot copy.
pub fn table_change(level: u32, now: &[u64; 512], then: &[u64; 512]) -> TableChange {
    let mut ranges = Vec::new();
    for (&new, &old) in now.iter().zip(then) {
        if new == old {
            continue;
        }
        if (new ^ old) & !(ACCESSED | DIRTY) != 0 {
            return TableChange::Other;
        }
        if old & PRESENT == 0 {
            // Neither the CPU nor KVM reads or sets anything in a non-present entry.
            continue;
        }
        let size = match level {
            1 => 4 << 10,
            2 if old & HUGE != 0 => 2 << 20,
            _ => return TableChange::Other,
        };
        ranges.push((old & ADDRESS_MASK & !(size - 1), size));
    }
    TableChange::AccessedDirtyOnly(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn walks_four_levels_and_stops_at_huge_pages() {
        let mut tables: HashMap<u64, [u64; 512]> = HashMap::new();
        let mut pml4 = [0u64; 512];
        pml4[0] = 0x2000 | PRESENT;
        let mut pdpt = [0u64; 512];
        pdpt[0] = 0x3000 | PRESENT;
        pdpt[1] = 0x4000_0000 | PRESENT | HUGE; // 1 GiB page: not a table
        let mut pd = [0u64; 512];
        pd[0] = 0x4000 | PRESENT;
        pd[1] = 0x20_0000 | PRESENT | HUGE; // 2 MiB page
        pd[2] = 0x5000; // not present
        let mut pt = [0u64; 512];
        pt[0] = 0x1000 | PRESENT; // a data page, not a table
        tables.insert(0x1000, pml4);
        tables.insert(0x2000, pdpt);
        tables.insert(0x3000, pd);
        tables.insert(0x4000, pt);
        let mode = PagingMode::from_registers(CR0_PG, CR4_PAE, EFER_LMA);
        let pages = page_table_pages(mode, 0x1000, &mut |addr, out| {
            tables.get(&addr).map(|t| *out = *t).is_some()
        })
        .unwrap();
        let mut pages: Vec<u64> = pages.into_iter().collect();
        pages.sort();
        assert_eq!(pages, vec![0x1000, 0x2000, 0x3000, 0x4000]);
    }

    #[test]
    fn accessed_and_dirty_changes_of_leaves_are_told_apart() {
        let mut then = [0u64; 512];
        then[0] = 0x20_0000 | PRESENT | HUGE; // 2 MiB page
        then[1] = 0x5000 | PRESENT; // a table
        then[2] = 0x7000; // not present
        let mut now = then;
        assert_eq!(
            table_change(2, &now, &then),
            TableChange::AccessedDirtyOnly(vec![])
        );
        now[0] |= ACCESSED | DIRTY;
        now[2] |= ACCESSED;
        assert_eq!(
            table_change(2, &now, &then),
            TableChange::AccessedDirtyOnly(vec![(0x20_0000, 2 << 20)])
        );
        let mut pt = [0x9000 | PRESENT; 512];
        let before = pt;
        pt[3] |= DIRTY;
        assert_eq!(
            table_change(1, &pt, &before),
            TableChange::AccessedDirtyOnly(vec![(0x9000, 4096)])
        );
        // A non-leaf entry's Accessed bit, an address or a permission: not only A/D.
        let mut walked = then;
        walked[1] |= ACCESSED;
        assert_eq!(table_change(2, &walked, &then), TableChange::Other);
        let mut moved = then;
        moved[0] ^= 0x40_0000;
        assert_eq!(table_change(2, &moved, &then), TableChange::Other);
        let mut writable = before;
        writable[0] |= 2;
        assert_eq!(table_change(1, &writable, &before), TableChange::Other);
    }

    #[test]
    fn levels_are_recorded_and_shared_pages_flagged() {
        let mode = PagingMode::Long { levels: 4 };
        // Every level points at the same page: used at four levels at once.
        let levels = page_table_levels(mode, 0x1000, &mut |_, out| {
            *out = [0x1000 | PRESENT; 512];
            true
        })
        .unwrap();
        assert_eq!(levels.get(&0x1000), Some(&None));
    }

    #[test]
    fn cycles_terminate_and_unreadable_tables_give_up() {
        let mode = PagingMode::Long { levels: 4 };
        // A PML4 whose every entry points back at itself.
        let pages = page_table_pages(mode, 0x1000, &mut |_, out| {
            *out = [0x1000 | PRESENT; 512];
            true
        })
        .unwrap();
        assert_eq!(pages.len(), 1);
        assert!(page_table_pages(mode, 0x1000, &mut |_, _| false).is_none());
        assert_eq!(
            page_table_pages(PagingMode::Off, 0, &mut |_, _| true).map(|p| p.len()),
            Some(0)
        );
        assert!(page_table_pages(PagingMode::Legacy, 0, &mut |_, _| true).is_none());
    }
}
