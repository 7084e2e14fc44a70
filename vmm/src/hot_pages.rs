//! Which pages the dirty log leaves writable between restores.
//!
//! Tracking a page costs a write fault each round: KVM write-protects it again when its dirty bit
//! is cleared, and the round's first write to it exits to KVM to be logged. On kvm_pvm's shadow MMU
//! that fault costs about 3.5 us, twenty times the cost of copying the page back; a fuzz target
//! writes the same stack and heap pages in every run. So a page logged in two rounds in a row is
//! *kept*: its dirty bit is not cleared, KVM leaves it writable and keeps reporting it in every
//! `KVM_GET_DIRTY_LOG` (manual protection never clears bits by itself), so every restore copies
//! it back whether the round wrote it or not. Exactness never depends on this policy: every page
//! whose bit is set is restored, and a page whose bit is clear is write-protected and logged on its
//! next write. Only speed does.
//!
//! A kept page is leased for [`LEASE_ROUNDS`] rounds and then protected again, so a page the target
//! stopped writing is copied needlessly for a bounded time; at most [`MAX_KEPT_PAGES`] pages per
//! slot are kept, bounding the copy every restore pays.

use std::collections::VecDeque;

/// Rounds a kept page stays writable before it is protected again (and must be logged in two
/// rounds in a row to be kept anew).
pub const LEASE_ROUNDS: u64 = 256;
/// Most pages one slot keeps writable (8 MiB): every restore copies them all.
pub const MAX_KEPT_PAGES: usize = 2048;

/// The policy for one memory slot; bit `i` of a bitmap word array is page `i` of the slot.
#[derive(Debug, Default)]
pub struct HotPages {
    /// Pages newly logged in the previous round.
    previous: Vec<u64>,
    /// Pages left writable.
    kept: Vec<u64>,
    kept_count: usize,
    /// (page, round its lease ends), in lease order: every lease is as long, so the queue's front
    /// always expires first.
    leases: VecDeque<(usize, u64)>,
    round: u64,
}

impl HotPages {
    pub fn new() -> Self {
        Self::default()
    }

    /// Pages kept writable now.
    pub fn kept(&self) -> usize {
        self.kept_count
    }

    /// One round: `logged` is the slot's dirty bitmap as KVM returned it (kept pages included).
    /// Writes into `reprotect` the pages whose dirty bits to clear (and so write-protect again);
    /// returns whether there is any.
    pub fn plan(&mut self, logged: &[u64], reprotect: &mut Vec<u64>) -> bool {
        self.round += 1;
        let words = logged.len();
        self.previous.resize(words, 0);
        self.kept.resize(words, 0);
        // Every word is written below.
        reprotect.resize(words, 0);
        // Leases that ended: the pages become ordinary logged pages of this round, which the loop
        // below protects (they were not newly logged in the previous round, so not re-kept).
        while let Some(&(page, ends)) = self.leases.front() {
            if ends > self.round {
                break;
            }
            self.leases.pop_front();
            if let Some(word) = self.kept.get_mut(page / 64) {
                *word &= !(1 << (page % 64));
                self.kept_count -= 1;
            }
        }
        let mut any = false;
        for (index, &bits) in logged.iter().enumerate() {
            let new = bits & !self.kept[index];
            let mut hot = new & self.previous[index];
            let mut admitted = 0u64;
            while hot != 0 && self.kept_count < MAX_KEPT_PAGES {
                let bit = hot.trailing_zeros();
                hot &= hot - 1;
                admitted |= 1 << bit;
                self.kept_count += 1;
                self.leases
                    .push_back((index * 64 + bit as usize, self.round + LEASE_ROUNDS));
            }
            self.kept[index] |= admitted;
            reprotect[index] = new & !admitted;
            any |= reprotect[index] != 0;
            self.previous[index] = new;
        }
        any
    }

    /// The slot was deleted and added again: KVM protects every page and forgot every bit.
    pub fn forget(&mut self) {
        self.previous.clear();
        self.kept.clear();
        self.kept_count = 0;
        self.leases.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits(pages: &[usize], words: usize) -> Vec<u64> {
        let mut bitmap = vec![0u64; words];
        for &page in pages {
            bitmap[page / 64] |= 1 << (page % 64);
        }
        bitmap
    }

    fn pages(bitmap: &[u64]) -> Vec<usize> {
        (0..bitmap.len() * 64)
            .filter(|page| bitmap[page / 64] & (1 << (page % 64)) != 0)
            .collect()
    }

    /// Simulates KVM's manual-protect dirty log: a bit stays set until cleared; a write to a page
    /// whose bit is clear sets it.
    struct Log {
        bitmap: Vec<u64>,
    }

    impl Log {
        fn write(&mut self, page: usize) {
            self.bitmap[page / 64] |= 1 << (page % 64);
        }
        fn clear(&mut self, mask: &[u64]) {
            for (word, mask) in self.bitmap.iter_mut().zip(mask) {
                *word &= !mask;
            }
        }
    }

    #[test]
    fn a_page_written_every_round_is_kept_after_two_and_protected_when_its_lease_ends() {
        let mut hot = HotPages::new();
        let mut log = Log { bitmap: vec![0; 2] };
        let mut reprotect = Vec::new();
        let mut protections_of_page_5 = 0;
        for round in 1..=LEASE_ROUNDS + 3 {
            log.write(5);
            if round == 1 {
                log.write(70);
            }
            assert!(
                pages(&log.bitmap).contains(&5),
                "a written page is always restored"
            );
            hot.plan(&log.bitmap.clone(), &mut reprotect);
            if pages(&reprotect).contains(&5) {
                protections_of_page_5 += 1;
            }
            log.clear(&reprotect);
            if round == 1 {
                assert_eq!(
                    pages(&reprotect),
                    vec![5, 70],
                    "round 1: nothing is hot yet"
                );
            }
            if round == 2 {
                assert!(reprotect.iter().all(|w| *w == 0), "round 2: page 5 kept");
                assert_eq!(hot.kept(), 1);
            }
        }
        // Protected in round 1 and when the lease ended; kept again right after.
        assert_eq!(protections_of_page_5, 2);
        assert_eq!(hot.kept(), 1);
    }

    #[test]
    fn a_page_written_once_is_never_kept_and_the_cap_holds() {
        let mut hot = HotPages::new();
        let words = (MAX_KEPT_PAGES + 200).div_ceil(64);
        let all: Vec<usize> = (0..MAX_KEPT_PAGES + 100).collect();
        let mut reprotect = Vec::new();
        assert!(hot.plan(&bits(&[3], words), &mut reprotect));
        assert!(!hot.plan(&bits(&[], words), &mut reprotect));
        assert_eq!(hot.kept(), 0);
        hot.plan(&bits(&all, words), &mut reprotect);
        hot.plan(&bits(&all, words), &mut reprotect);
        assert_eq!(hot.kept(), MAX_KEPT_PAGES);
        assert_eq!(
            pages(&reprotect).len(),
            100,
            "the pages over the cap stay protected"
        );
        hot.forget();
        assert_eq!(hot.kept(), 0);
        assert!(hot.plan(&bits(&[1], words), &mut reprotect));
    }
}
