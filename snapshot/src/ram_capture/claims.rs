//! Who copies which page: one bit per page, set by whoever takes the page (the copier or the fault
//! handler). Only the taker copies the page and then lifts its write protection, so a page is never
//! unprotected before its copy is complete.

use std::sync::atomic::{AtomicU64, Ordering};

pub(super) const PAGES_PER_WORD: usize = 64;

#[derive(Debug)]
pub(super) struct PageClaims {
    words: Box<[AtomicU64]>,
    pages: usize,
}

impl PageClaims {
    /// Every page unclaimed.
    pub(super) fn all_unclaimed(pages: usize) -> Self {
        let claims = PageClaims {
            words: (0..pages.div_ceil(PAGES_PER_WORD))
                .map(|_| AtomicU64::new(0))
                .collect(),
            pages,
        };
        claims.claim_padding();
        claims
    }

    /// Only `pages_to_copy` unclaimed; every other page counts as already taken. Out-of-range pages
    /// are ignored (the caller validated them).
    pub(super) fn only(pages: usize, pages_to_copy: impl IntoIterator<Item = usize>) -> Self {
        let claims = PageClaims {
            words: (0..pages.div_ceil(PAGES_PER_WORD))
                .map(|_| AtomicU64::new(u64::MAX))
                .collect(),
            pages,
        };
        for page in pages_to_copy {
            if page < pages {
                claims.words[page / PAGES_PER_WORD].fetch_and(!bit(page), Ordering::Relaxed);
            }
        }
        claims.claim_padding();
        claims
    }

    fn claim_padding(&self) {
        let used = self.pages % PAGES_PER_WORD;
        if used != 0 {
            if let Some(last) = self.words.last() {
                last.fetch_or(u64::MAX << used, Ordering::Relaxed);
            }
        }
    }

    pub(super) fn words(&self) -> usize {
        self.words.len()
    }

    /// Unclaimed pages left (for statistics; racy while a capture runs).
    pub(super) fn unclaimed(&self) -> usize {
        self.words
            .iter()
            .map(|word| word.load(Ordering::Relaxed).count_zeros() as usize)
            .sum()
    }

    /// Takes one page; true if the caller got it.
    pub(super) fn claim_page(&self, page: usize) -> bool {
        match self.words.get(page / PAGES_PER_WORD) {
            Some(word) => word.fetch_or(bit(page), Ordering::AcqRel) & bit(page) == 0,
            None => false,
        }
    }

    /// Takes every page of word `index` still free; returns the mask of pages the caller got.
    pub(super) fn claim_word(&self, index: usize) -> u64 {
        match self.words.get(index) {
            // Skip the atomic write when nothing is left, the common case for incremental captures.
            Some(word) if word.load(Ordering::Acquire) != u64::MAX => {
                !word.fetch_or(u64::MAX, Ordering::AcqRel)
            }
            _ => 0,
        }
    }
}

fn bit(page: usize) -> u64 {
    1u64 << (page % PAGES_PER_WORD)
}

/// Maximal runs `(first_page, pages)` of set bits in consecutive claim masks starting at page
/// `first_page`.
pub(super) fn runs(first_page: usize, masks: &[u64]) -> Vec<(usize, usize)> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for (word_index, &mask) in masks.iter().enumerate() {
        let mut rest = mask;
        while rest != 0 {
            let start = rest.trailing_zeros() as usize;
            let len = (rest >> start).trailing_ones() as usize;
            let page = first_page + word_index * PAGES_PER_WORD + start;
            match runs.last_mut() {
                Some((first, count)) if *first + *count == page => *count += len,
                _ => runs.push((page, len)),
            }
            rest = if start + len >= 64 {
                0
            } else {
                rest & (u64::MAX << (start + len))
            };
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_page_is_claimed_once() {
        let claims = PageClaims::all_unclaimed(130);
        assert_eq!(claims.words(), 3);
        assert_eq!(claims.unclaimed(), 130);
        assert!(claims.claim_page(5));
        assert!(!claims.claim_page(5));
        assert!(!claims.claim_page(130), "padding pages are never claimable");
        assert_eq!(claims.claim_word(0), !(1u64 << 5));
        assert_eq!(claims.claim_word(0), 0);
        assert_eq!(claims.claim_word(2), 0b11);
        assert_eq!(claims.unclaimed(), 64);
    }

    #[test]
    fn only_leaves_listed_pages_claimable() {
        let claims = PageClaims::only(200, [3, 64, 199, 500]);
        assert_eq!(claims.unclaimed(), 3);
        assert!(!claims.claim_page(4));
        assert!(claims.claim_page(3));
        assert_eq!(claims.claim_word(1), 1);
        assert_eq!(claims.claim_word(3), 1u64 << (199 - 192));
    }

    #[test]
    fn runs_merge_across_words() {
        assert_eq!(runs(0, &[0]), vec![]);
        assert_eq!(runs(64, &[u64::MAX, 1]), vec![(64, 65)]);
        assert_eq!(
            runs(0, &[0b1011, 1u64 << 63, 0b1]),
            vec![(0, 2), (3, 1), (127, 2)]
        );
    }
}
