//! Where guest RAM lives in this process, and the page numbering the snapshot engine uses for it.
//!
//! Guest RAM is one or more host mappings (a memfd mapped `MAP_SHARED`, or anonymous memory). The
//! snapshot engine numbers their 4 KiB pages consecutively, region after region: page `p` of that
//! numbering is byte `p * PAGE_SIZE` of the snapshot memory file, so the snapshot of a layout is the
//! concatenation of its regions.

use std::fs::File;
use std::sync::Arc;

use thiserror::Error;

/// The page size every part of the snapshot engine works in.
pub const PAGE_SIZE: usize = 4096;

/// Why a RAM layout was rejected.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RamLayoutError {
    #[error("RAM region at {host_addr:#x} with length {len:#x} is not page aligned or is empty")]
    Misaligned { host_addr: usize, len: usize },
    #[error("RAM region at {host_addr:#x} with length {len:#x} wraps the address space")]
    Wraps { host_addr: usize, len: usize },
    #[error("RAM region file offset {offset:#x} is not page aligned")]
    MisalignedFileOffset { offset: u64 },
    #[error("RAM regions overlap in host memory ({first:#x} and {second:#x})")]
    Overlap { first: usize, second: usize },
    #[error("a RAM layout needs at least one region")]
    Empty,
}

/// One contiguous host mapping of guest RAM.
#[derive(Debug, Clone)]
pub struct HostRamRegion {
    host_addr: usize,
    len: usize,
    backing: Option<(Arc<File>, u64)>,
}

impl HostRamRegion {
    /// Describes `len` bytes of guest RAM mapped at `host_addr`.
    ///
    /// # Safety
    /// `[host_addr, host_addr + len)` must be a readable and writable mapping owned by the caller that
    /// stays mapped for as long as this value, any `RamLayout` built from it, and any capture or
    /// restore that uses such a layout are alive. The snapshot engine reads and writes it from other
    /// threads.
    pub unsafe fn new(host_addr: *mut u8, len: usize) -> Result<Self, RamLayoutError> {
        let addr = host_addr as usize;
        if len == 0 || addr & (PAGE_SIZE - 1) != 0 || len & (PAGE_SIZE - 1) != 0 {
            return Err(RamLayoutError::Misaligned {
                host_addr: addr,
                len,
            });
        }
        if addr.checked_add(len).is_none() {
            return Err(RamLayoutError::Wraps {
                host_addr: addr,
                len,
            });
        }
        Ok(HostRamRegion {
            host_addr: addr,
            len,
            backing: None,
        })
    }

    /// Names the file (normally the memfd) this region maps, at `offset`. With it, background capture
    /// skips the file's holes (pages never written are zero and need no copy).
    pub fn with_backing_file(
        mut self,
        file: Arc<File>,
        offset: u64,
    ) -> Result<Self, RamLayoutError> {
        if offset & (PAGE_SIZE as u64 - 1) != 0 {
            return Err(RamLayoutError::MisalignedFileOffset { offset });
        }
        self.backing = Some((file, offset));
        Ok(self)
    }

    pub fn host_addr(&self) -> usize {
        self.host_addr
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn pages(&self) -> usize {
        self.len / PAGE_SIZE
    }

    pub fn backing_file(&self) -> Option<(&Arc<File>, u64)> {
        self.backing.as_ref().map(|(file, offset)| (file, *offset))
    }
}

/// A piece of a page range that lies inside one region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionSpan {
    /// Index of the region in the layout.
    pub region: usize,
    /// First page of the span, in layout numbering.
    pub first_page: usize,
    /// Number of pages.
    pub pages: usize,
    /// Host address of the first page.
    pub host_addr: usize,
}

/// All of guest RAM, with the layout-wide page numbering.
#[derive(Debug, Clone)]
pub struct RamLayout {
    regions: Vec<HostRamRegion>,
    /// First layout page of each region; one more entry holding the total.
    first_pages: Vec<usize>,
}

impl RamLayout {
    pub fn new(regions: Vec<HostRamRegion>) -> Result<Self, RamLayoutError> {
        if regions.is_empty() {
            return Err(RamLayoutError::Empty);
        }
        let mut by_addr: Vec<&HostRamRegion> = regions.iter().collect();
        by_addr.sort_by_key(|region| region.host_addr);
        for pair in by_addr.windows(2) {
            if pair[0].host_addr + pair[0].len > pair[1].host_addr {
                return Err(RamLayoutError::Overlap {
                    first: pair[0].host_addr,
                    second: pair[1].host_addr,
                });
            }
        }
        let mut first_pages = Vec::with_capacity(regions.len() + 1);
        let mut next = 0usize;
        for region in &regions {
            first_pages.push(next);
            next += region.pages();
        }
        first_pages.push(next);
        Ok(RamLayout {
            regions,
            first_pages,
        })
    }

    pub fn regions(&self) -> &[HostRamRegion] {
        &self.regions
    }

    /// Total pages over all regions.
    pub fn total_pages(&self) -> usize {
        self.first_pages[self.regions.len()]
    }

    /// Total bytes over all regions (the size of a snapshot of this layout).
    pub fn total_bytes(&self) -> usize {
        self.total_pages() * PAGE_SIZE
    }

    /// First layout page of region `index`.
    pub fn region_first_page(&self, index: usize) -> Option<usize> {
        (index < self.regions.len()).then(|| self.first_pages[index])
    }

    fn region_of_page(&self, page: usize) -> Option<usize> {
        if page >= self.total_pages() {
            return None;
        }
        if self.regions.len() == 1 {
            return Some(0);
        }
        // The last entry of `first_pages` not above `page`.
        Some(self.first_pages.partition_point(|&first| first <= page) - 1)
    }

    /// Host address of layout page `page`.
    pub fn host_addr_of_page(&self, page: usize) -> Option<usize> {
        let region = self.region_of_page(page)?;
        Some(self.regions[region].host_addr + (page - self.first_pages[region]) * PAGE_SIZE)
    }

    /// Layout page that contains host address `addr`.
    pub fn page_of_host_addr(&self, addr: usize) -> Option<usize> {
        self.regions.iter().enumerate().find_map(|(index, region)| {
            (addr >= region.host_addr && addr - region.host_addr < region.len)
                .then(|| self.first_pages[index] + (addr - region.host_addr) / PAGE_SIZE)
        })
    }

    /// Splits `[first_page, first_page + pages)` at region boundaries. Pages past the end are dropped.
    pub fn spans(&self, first_page: usize, pages: usize) -> impl Iterator<Item = RegionSpan> + '_ {
        let end = first_page.saturating_add(pages).min(self.total_pages());
        let mut page = first_page;
        std::iter::from_fn(move || {
            if page >= end {
                return None;
            }
            let region = self.region_of_page(page)?;
            let region_end = self.first_pages[region + 1];
            let span_end = end.min(region_end);
            let span = RegionSpan {
                region,
                first_page: page,
                pages: span_end - page,
                host_addr: self.regions[region].host_addr
                    + (page - self.first_pages[region]) * PAGE_SIZE,
            };
            page = span_end;
            Some(span)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(addr: usize, pages: usize) -> HostRamRegion {
        // SAFETY: the layout tests only compute addresses; nothing is dereferenced.
        unsafe { HostRamRegion::new(addr as *mut u8, pages * PAGE_SIZE) }.unwrap()
    }

    #[test]
    fn rejects_misaligned_and_overlapping_regions() {
        // SAFETY: never dereferenced; construction must fail.
        assert!(unsafe { HostRamRegion::new(0x1001 as *mut u8, PAGE_SIZE) }.is_err());
        // SAFETY: as above.
        assert!(unsafe { HostRamRegion::new(0x1000 as *mut u8, 0) }.is_err());
        assert_eq!(RamLayout::new(vec![]).unwrap_err(), RamLayoutError::Empty);
        let err = RamLayout::new(vec![region(0x10000, 4), region(0x12000, 4)]).unwrap_err();
        assert!(matches!(err, RamLayoutError::Overlap { .. }));
        assert!(region(0x1000, 1)
            .with_backing_file(Arc::new(tempfile::tempfile().unwrap()), 12)
            .is_err());
    }

    #[test]
    fn numbers_pages_across_regions() {
        let layout = RamLayout::new(vec![region(0x100000, 3), region(0x40000, 2)]).unwrap();
        assert_eq!(layout.total_pages(), 5);
        assert_eq!(layout.host_addr_of_page(0), Some(0x100000));
        assert_eq!(layout.host_addr_of_page(2), Some(0x102000));
        assert_eq!(layout.host_addr_of_page(3), Some(0x40000));
        assert_eq!(layout.host_addr_of_page(4), Some(0x41000));
        assert_eq!(layout.host_addr_of_page(5), None);
        assert_eq!(layout.page_of_host_addr(0x41fff), Some(4));
        assert_eq!(layout.page_of_host_addr(0x102001), Some(2));
        assert_eq!(layout.page_of_host_addr(0x103000), None);
        let spans: Vec<RegionSpan> = layout.spans(1, 10).collect();
        assert_eq!(
            spans,
            vec![
                RegionSpan {
                    region: 0,
                    first_page: 1,
                    pages: 2,
                    host_addr: 0x101000
                },
                RegionSpan {
                    region: 1,
                    first_page: 3,
                    pages: 2,
                    host_addr: 0x40000
                },
            ]
        );
    }
}
