//! Address assignment for memory BARs, the way firmware does it at boot: naturally aligned,
//! lowest free address first, inside the 32-bit MMIO hole between the end of low RAM (3 GiB) and
//! the IOAPIC.

use super::PciError;

/// Start of the 32-bit MMIO hole (low RAM ends at 3 GiB).
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// End (exclusive) of the hole: the IOAPIC, LAPIC and firmware live above.
pub const MMIO_HOLE_END: u64 = 0xfec0_0000;
/// BARs get at least a page so host-memory-backed BARs can be memslots.
pub const MIN_BAR_SIZE: u64 = 0x1000;

/// First-fit allocator over `start..end` with natural alignment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BarAllocator {
    start: u64,
    end: u64,
    /// Taken ranges, as (start, end exclusive).
    taken: Vec<(u64, u64)>,
}

impl BarAllocator {
    pub fn new(start: u64, end: u64) -> Self {
        BarAllocator {
            start,
            end,
            taken: Vec::new(),
        }
    }

    /// The allocator for the MMIO hole.
    pub fn mmio_hole() -> Self {
        Self::new(MMIO_HOLE_START, MMIO_HOLE_END)
    }

    /// Marks `base..base + size` as taken (a BAR already assigned). Ranges outside the window
    /// are recorded too; they simply never collide with an allocation.
    pub fn reserve(&mut self, base: u64, size: u64) {
        let end = base.saturating_add(size);
        if end > base {
            self.taken.push((base, end));
        }
    }

    /// The lowest address aligned to the (rounded) size where `size` bytes fit without touching a
    /// taken range. Sizes are rounded up to a power of two of at least [`MIN_BAR_SIZE`].
    pub fn allocate(&mut self, size: u64) -> Result<u64, PciError> {
        let no_space = PciError::NoSpace {
            size,
            start: self.start,
            end: self.end,
        };
        let size = size
            .max(MIN_BAR_SIZE)
            .checked_next_power_of_two()
            .ok_or_else(|| no_space.clone())?;
        let mut candidate = align_up(self.start, size).ok_or_else(|| no_space.clone())?;
        loop {
            let candidate_end = candidate
                .checked_add(size)
                .filter(|&end| end <= self.end)
                .ok_or_else(|| no_space.clone())?;
            let collision = self
                .taken
                .iter()
                .filter(|&&(start, end)| start < candidate_end && candidate < end)
                .map(|&(_, end)| end)
                .max();
            match collision {
                None => {
                    self.taken.push((candidate, candidate_end));
                    return Ok(candidate);
                }
                Some(end) => candidate = align_up(end, size).ok_or_else(|| no_space.clone())?,
            }
        }
    }
}

fn align_up(value: u64, alignment: u64) -> Option<u64> {
    let mask = alignment - 1;
    value.checked_add(mask).map(|v| v & !mask)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::TestRng;

    #[test]
    fn allocations_are_naturally_aligned_and_first_fit() {
        let mut allocator = BarAllocator::mmio_hole();
        assert_eq!(allocator.allocate(0x10_0000), Ok(0xc000_0000));
        assert_eq!(allocator.allocate(0x1_0000), Ok(0xc010_0000));
        // The next 1 MiB BAR skips to the next 1 MiB boundary.
        assert_eq!(allocator.allocate(0x10_0000), Ok(0xc020_0000));
        // A small BAR fills the gap left behind.
        assert_eq!(allocator.allocate(0x1000), Ok(0xc011_0000));
        // Tiny sizes become a page; odd sizes round up to a power of two.
        assert_eq!(allocator.allocate(16), Ok(0xc011_1000));
        assert_eq!(allocator.allocate(0x3000), Ok(0xc011_4000));
    }

    #[test]
    fn reserved_ranges_are_avoided() {
        let mut allocator = BarAllocator::mmio_hole();
        allocator.reserve(0xc000_0000, 0x1000);
        assert_eq!(allocator.allocate(0x10_0000), Ok(0xc010_0000));
        assert_eq!(allocator.allocate(0x1000), Ok(0xc000_1000));
    }

    #[test]
    fn a_full_hole_is_an_error_not_a_panic() {
        let mut allocator = BarAllocator::mmio_hole();
        assert_eq!(allocator.allocate(0x2000_0000), Ok(0xc000_0000));
        assert_eq!(allocator.allocate(0x1000_0000), Ok(0xe000_0000));
        // 0xf000_0000 + 256 MiB would cross the IOAPIC.
        assert!(matches!(
            allocator.allocate(0x1000_0000),
            Err(PciError::NoSpace { .. })
        ));
        assert!(allocator.allocate(u64::MAX).is_err());
        assert!(allocator.allocate(1 << 63).is_err());
        assert_eq!(allocator.allocate(0x800_0000), Ok(0xf000_0000));
    }

    #[test]
    fn random_allocations_never_overlap_and_stay_inside_the_hole() {
        let mut allocator = BarAllocator::mmio_hole();
        let mut rng = TestRng::new(7);
        let mut given = Vec::new();
        for _ in 0..2000 {
            let size = 1u64 << (rng.next_u64() % 26);
            if let Ok(base) = allocator.allocate(size) {
                let rounded = size.max(MIN_BAR_SIZE);
                assert_eq!(base % rounded, 0);
                assert!(base >= MMIO_HOLE_START && base + rounded <= MMIO_HOLE_END);
                given.push((base, base + rounded));
            }
        }
        given.sort();
        assert!(given.windows(2).all(|pair| pair[0].1 <= pair[1].0));
        assert!(given.len() > 100);
    }
}
