//! The set of guest pages written since the snapshot, gathered from every source that sees writes.
//!
//! Dirty pages = what KVM saw the guest write (dirty ring entries or dirty-log bitmaps) ∪ what the
//! VMM itself wrote (vm-memory's `AtomicBitmap`). The set keeps a bitmap for membership and a list
//! for iteration, so inserting, iterating and clearing cost O(dirty pages), not O(RAM).

use thiserror::Error;
use vm_memory::bitmap::AtomicBitmap;

/// Why a dirty-page source was rejected.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DirtyPagesError {
    #[error("page {page} is outside guest RAM ({total} pages)")]
    PageOutOfRange { page: usize, total: usize },
    #[error("dirty ring entry names memory slot {slot:#x}, which is not registered")]
    UnknownSlot { slot: u32 },
    #[error("dirty ring entry offset {offset} is past the end of slot {slot} ({pages} pages)")]
    OffsetOutOfSlot {
        slot: u32,
        offset: u64,
        pages: usize,
    },
    #[error("memory slot {slot} is already registered")]
    DuplicateSlot { slot: u32 },
    #[error(
        "memory slot {slot} (pages {first_page}..+{pages}) lies outside guest RAM ({total} pages)"
    )]
    SlotOutOfRange {
        slot: u32,
        first_page: usize,
        pages: usize,
        total: usize,
    },
    #[error("dirty bitmap has {bits} bits but its region has {pages} pages")]
    BitmapSize { bits: usize, pages: usize },
}

/// One entry harvested from a KVM dirty ring: `slot` is `(address space << 16) | slot id`, `offset`
/// the page within the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirtyGfn {
    pub slot: u32,
    pub offset: u64,
}

impl From<&kvm_bindings::kvm_dirty_gfn> for DirtyGfn {
    fn from(gfn: &kvm_bindings::kvm_dirty_gfn) -> Self {
        DirtyGfn {
            slot: gfn.slot,
            offset: gfn.offset,
        }
    }
}

/// Where each KVM memory slot lies in the snapshot page numbering (`RamLayout`).
#[derive(Debug, Clone, Default)]
pub struct SlotMap {
    /// (slot as KVM reports it, first layout page, pages), sorted by slot.
    slots: Vec<(u32, usize, usize)>,
}

impl SlotMap {
    pub fn new() -> Self {
        SlotMap::default()
    }

    /// Registers KVM slot `slot` (with its address-space bits) as layout pages
    /// `[first_page, first_page + pages)` of a RAM of `total_pages`.
    pub fn add(
        &mut self,
        slot: u32,
        first_page: usize,
        pages: usize,
        total_pages: usize,
    ) -> Result<(), DirtyPagesError> {
        if first_page
            .checked_add(pages)
            .is_none_or(|end| end > total_pages)
        {
            return Err(DirtyPagesError::SlotOutOfRange {
                slot,
                first_page,
                pages,
                total: total_pages,
            });
        }
        match self.slots.binary_search_by_key(&slot, |&(id, _, _)| id) {
            Ok(_) => Err(DirtyPagesError::DuplicateSlot { slot }),
            Err(index) => {
                self.slots.insert(index, (slot, first_page, pages));
                Ok(())
            }
        }
    }

    fn lookup(&self, slot: u32) -> Option<(usize, usize)> {
        let index = self
            .slots
            .binary_search_by_key(&slot, |&(id, _, _)| id)
            .ok()?;
        let (_, first_page, pages) = self.slots[index];
        Some((first_page, pages))
    }
}

/// A set of dirty pages, numbered as in `RamLayout`.
#[derive(Debug, Clone)]
pub struct DirtyPages {
    bits: Vec<u64>,
    list: Vec<usize>,
    total_pages: usize,
}

impl DirtyPages {
    /// An empty set over `total_pages` pages.
    pub fn new(total_pages: usize) -> Self {
        DirtyPages {
            bits: vec![0; total_pages.div_ceil(64)],
            list: Vec::new(),
            total_pages,
        }
    }

    pub fn total_pages(&self) -> usize {
        self.total_pages
    }

    /// Number of dirty pages.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn contains(&self, page: usize) -> bool {
        page < self.total_pages && self.bits[page / 64] & (1 << (page % 64)) != 0
    }

    /// Dirty pages in the order they were first added.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.list.iter().copied()
    }

    /// Adds `page`; returns whether it was new.
    pub fn insert(&mut self, page: usize) -> Result<bool, DirtyPagesError> {
        if page >= self.total_pages {
            return Err(DirtyPagesError::PageOutOfRange {
                page,
                total: self.total_pages,
            });
        }
        let word = &mut self.bits[page / 64];
        let bit = 1u64 << (page % 64);
        if *word & bit != 0 {
            return Ok(false);
        }
        *word |= bit;
        self.list.push(page);
        Ok(true)
    }

    /// Adds `pages` pages from `first_page`.
    pub fn insert_range(&mut self, first_page: usize, pages: usize) -> Result<(), DirtyPagesError> {
        let end = first_page.saturating_add(pages);
        if end > self.total_pages {
            return Err(DirtyPagesError::PageOutOfRange {
                page: end - 1,
                total: self.total_pages,
            });
        }
        for page in first_page..end {
            self.insert(page)?;
        }
        Ok(())
    }

    /// Adds every page of `other` (over the same RAM).
    pub fn union_with(&mut self, other: &DirtyPages) -> Result<(), DirtyPagesError> {
        other
            .iter()
            .try_for_each(|page| self.insert(page).map(|_| ()))
    }

    /// Empties the set in O(dirty pages).
    pub fn clear(&mut self) {
        for &page in &self.list {
            self.bits[page / 64] = 0;
        }
        self.list.clear();
    }

    /// Adds entries harvested from KVM dirty rings. Stops at the first entry that names an unknown slot
    /// or an offset outside it (pages added before it stay).
    pub fn add_dirty_ring_entries<I>(
        &mut self,
        slots: &SlotMap,
        entries: I,
    ) -> Result<(), DirtyPagesError>
    where
        I: IntoIterator,
        I::Item: Into<DirtyGfn>,
    {
        for entry in entries {
            let DirtyGfn { slot, offset } = entry.into();
            let (first_page, pages) = slots
                .lookup(slot)
                .ok_or(DirtyPagesError::UnknownSlot { slot })?;
            let index = usize::try_from(offset)
                .ok()
                .filter(|&index| index < pages)
                .ok_or(DirtyPagesError::OffsetOutOfSlot {
                    slot,
                    offset,
                    pages,
                })?;
            self.insert(first_page + index)?;
        }
        Ok(())
    }

    /// Adds the set bits of a KVM dirty-log bitmap (bit `i` = page `i` of the slot) for a slot of
    /// `pages` pages starting at layout page `first_page`. Costs one word read per 64 pages.
    pub fn add_dirty_log(
        &mut self,
        first_page: usize,
        pages: usize,
        bitmap: &[u64],
    ) -> Result<(), DirtyPagesError> {
        if bitmap.len() * 64 < pages {
            return Err(DirtyPagesError::BitmapSize {
                bits: bitmap.len() * 64,
                pages,
            });
        }
        if first_page.saturating_add(pages) > self.total_pages {
            return Err(DirtyPagesError::PageOutOfRange {
                page: first_page.saturating_add(pages) - 1,
                total: self.total_pages,
            });
        }
        self.add_words(first_page, pages, bitmap.iter().copied())
    }

    /// Takes (and resets) the VMM's own writes recorded in a vm-memory `AtomicBitmap` of 4 KiB pages
    /// covering `pages` pages from layout page `first_page`.
    pub fn take_atomic_bitmap(
        &mut self,
        first_page: usize,
        pages: usize,
        bitmap: &AtomicBitmap,
    ) -> Result<(), DirtyPagesError> {
        if bitmap.len() != pages {
            return Err(DirtyPagesError::BitmapSize {
                bits: bitmap.len(),
                pages,
            });
        }
        if first_page.saturating_add(pages) > self.total_pages {
            return Err(DirtyPagesError::PageOutOfRange {
                page: first_page.saturating_add(pages) - 1,
                total: self.total_pages,
            });
        }
        self.add_words(first_page, pages, bitmap.get_and_reset())
    }

    fn add_words(
        &mut self,
        first_page: usize,
        pages: usize,
        words: impl IntoIterator<Item = u64>,
    ) -> Result<(), DirtyPagesError> {
        for (index, word) in words.into_iter().enumerate() {
            let mut rest = word;
            while rest != 0 {
                let page = index * 64 + rest.trailing_zeros() as usize;
                rest &= rest - 1;
                if page < pages {
                    self.insert(first_page + page)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::num::NonZeroUsize;

    fn as_set(dirty: &DirtyPages) -> BTreeSet<usize> {
        dirty.iter().collect()
    }

    #[test]
    fn insert_contains_clear() {
        let mut dirty = DirtyPages::new(130);
        assert!(dirty.insert(129).unwrap());
        assert!(!dirty.insert(129).unwrap());
        assert!(dirty.insert(0).unwrap());
        assert_eq!(
            dirty.insert(130),
            Err(DirtyPagesError::PageOutOfRange {
                page: 130,
                total: 130
            })
        );
        assert_eq!(dirty.len(), 2);
        assert!(
            dirty.contains(129) && dirty.contains(0) && !dirty.contains(1) && !dirty.contains(1000)
        );
        dirty.clear();
        assert!(dirty.is_empty() && !dirty.contains(129) && !dirty.contains(0));
        dirty.insert_range(60, 10).unwrap();
        assert_eq!(as_set(&dirty), (60..70).collect());
        assert!(dirty.insert_range(125, 6).is_err());
    }

    #[test]
    fn dirty_ring_entries_map_through_slots() {
        let mut slots = SlotMap::new();
        slots.add(0, 0, 16, 48).unwrap();
        slots.add(1, 16, 32, 48).unwrap();
        assert_eq!(
            slots.add(1, 0, 1, 48),
            Err(DirtyPagesError::DuplicateSlot { slot: 1 })
        );
        assert!(matches!(
            slots.add(2, 40, 16, 48),
            Err(DirtyPagesError::SlotOutOfRange { .. })
        ));
        let mut dirty = DirtyPages::new(48);
        let ring = [
            kvm_bindings::kvm_dirty_gfn {
                flags: 1,
                slot: 0,
                offset: 3,
            },
            kvm_bindings::kvm_dirty_gfn {
                flags: 1,
                slot: 1,
                offset: 0,
            },
            kvm_bindings::kvm_dirty_gfn {
                flags: 1,
                slot: 1,
                offset: 31,
            },
            kvm_bindings::kvm_dirty_gfn {
                flags: 1,
                slot: 0,
                offset: 3,
            },
        ];
        dirty.add_dirty_ring_entries(&slots, ring.iter()).unwrap();
        assert_eq!(as_set(&dirty), BTreeSet::from([3, 16, 47]));
        assert_eq!(dirty.len(), 3, "duplicates are counted once");
        assert_eq!(
            dirty.add_dirty_ring_entries(
                &slots,
                [DirtyGfn {
                    slot: 1,
                    offset: 32
                }]
            ),
            Err(DirtyPagesError::OffsetOutOfSlot {
                slot: 1,
                offset: 32,
                pages: 32
            })
        );
        assert_eq!(
            dirty.add_dirty_ring_entries(
                &slots,
                [DirtyGfn {
                    slot: 1 << 16,
                    offset: 0
                }]
            ),
            Err(DirtyPagesError::UnknownSlot { slot: 1 << 16 })
        );
    }

    #[test]
    fn union_of_all_sources_is_exact() {
        let total = 1000;
        let mut dirty = DirtyPages::new(total);
        let mut expected = BTreeSet::new();

        // Dirty log for a slot at layout pages 100..300 (200 pages = 4 words).
        let mut log = vec![0u64; 4];
        for page in [0usize, 63, 64, 199, 150] {
            log[page / 64] |= 1 << (page % 64);
            expected.insert(100 + page);
        }
        log[3] |= 1 << 63; // past the slot's 200 pages: ignored
        dirty.add_dirty_log(100, 200, &log).unwrap();
        assert!(
            dirty.add_dirty_log(100, 300, &log).is_err(),
            "bitmap too short"
        );
        assert!(
            dirty.add_dirty_log(900, 200, &log).is_err(),
            "slot past RAM"
        );

        // The VMM's own writes through vm-memory, region at layout pages 500..1000.
        let bitmap = AtomicBitmap::new(500 * 4096, NonZeroUsize::new(4096).unwrap());
        bitmap.set_addr_range(4096 * 10, 4096 * 3);
        bitmap.set_addr_range(4096 * 499, 1);
        expected.extend([510, 511, 512, 999]);
        dirty.take_atomic_bitmap(500, 500, &bitmap).unwrap();
        assert!(!bitmap.is_bit_set(10), "taking the bitmap resets it");
        assert!(dirty.take_atomic_bitmap(0, 499, &bitmap).is_err());

        // Ring entries, overlapping the others.
        let mut slots = SlotMap::new();
        slots.add(0, 0, 1000, total).unwrap();
        dirty
            .add_dirty_ring_entries(
                &slots,
                [
                    DirtyGfn {
                        slot: 0,
                        offset: 100,
                    },
                    DirtyGfn { slot: 0, offset: 7 },
                ],
            )
            .unwrap();
        expected.insert(7);

        let mut other = DirtyPages::new(total);
        other.insert(512).unwrap();
        other.insert(42).unwrap();
        dirty.union_with(&other).unwrap();
        expected.insert(42);

        assert_eq!(as_set(&dirty), expected);
        assert_eq!(dirty.len(), expected.len());
        for page in 0..total {
            assert_eq!(
                dirty.contains(page),
                expected.contains(&page),
                "page {page}"
            );
        }
    }
}
