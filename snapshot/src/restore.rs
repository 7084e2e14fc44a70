//! Rolling guest RAM back to the snapshot by copying back only the pages written since.

use std::time::{Duration, Instant};

use thiserror::Error;

use crate::dirty_pages::DirtyPages;
use crate::ram_layout::{RamLayout, PAGE_SIZE};
use crate::snapshot_memory::SnapshotMemory;

/// Why a restore could not run.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RestoreError {
    #[error("snapshot memory is {memory:#x} bytes but guest RAM is {ram:#x} bytes")]
    SizeMismatch { memory: usize, ram: usize },
    #[error("the dirty set covers {dirty} pages but guest RAM has {ram}")]
    DirtySetMismatch { dirty: usize, ram: usize },
}

/// What a restore did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestoreStats {
    pub pages: usize,
    pub elapsed: Duration,
}

/// Copies every page in `dirty` from `snapshot` back into guest RAM. Costs O(dirty pages): nothing
/// here looks at clean pages. The caller keeps the vCPUs paused, and clears `dirty` afterwards (the
/// copies are host writes that KVM does not log, and they need no restore of their own).
///
/// `snapshot` must be a finished capture (or a loaded snapshot) of a RAM with this layout.
pub fn restore_dirty_pages(
    layout: &RamLayout,
    snapshot: &SnapshotMemory,
    dirty: &DirtyPages,
) -> Result<RestoreStats, RestoreError> {
    let started = Instant::now();
    if snapshot.len() != layout.total_bytes() {
        return Err(RestoreError::SizeMismatch {
            memory: snapshot.len(),
            ram: layout.total_bytes(),
        });
    }
    if dirty.total_pages() != layout.total_pages() {
        return Err(RestoreError::DirtySetMismatch {
            dirty: dirty.total_pages(),
            ram: layout.total_pages(),
        });
    }
    let single_region = (layout.regions().len() == 1).then(|| layout.regions()[0].host_addr());
    for page in dirty.iter() {
        let host_addr = match single_region {
            Some(base) => base + page * PAGE_SIZE,
            // `dirty` only holds pages below total_pages, which all have an address.
            None => match layout.host_addr_of_page(page) {
                Some(addr) => addr,
                None => continue,
            },
        };
        // SAFETY: `page` < total_pages (checked above through the matching sizes), so the source lies
        // inside the snapshot mapping and the destination inside a guest RAM region that the layout's
        // owner keeps mapped. The two never overlap (different mappings). Guest RAM is plain memory
        // shared with paused vCPUs, so a raw copy is the intended access.
        unsafe {
            std::ptr::copy_nonoverlapping(
                snapshot.as_ptr().add(page * PAGE_SIZE),
                host_addr as *mut u8,
                PAGE_SIZE,
            );
        }
    }
    Ok(RestoreStats {
        pages: dirty.len(),
        elapsed: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ram_layout::HostRamRegion;
    use std::os::unix::fs::FileExt;

    /// Anonymous test RAM in two regions, unmapped on drop.
    struct TestRam {
        regions: Vec<(*mut u8, usize)>,
    }

    impl TestRam {
        fn new(pages: &[usize]) -> Self {
            let regions = pages
                .iter()
                .map(|&pages| {
                    // SAFETY: fresh anonymous mapping; checked below.
                    let ptr = unsafe {
                        libc::mmap(
                            std::ptr::null_mut(),
                            pages * PAGE_SIZE,
                            libc::PROT_READ | libc::PROT_WRITE,
                            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                            -1,
                            0,
                        )
                    };
                    assert_ne!(ptr, libc::MAP_FAILED);
                    (ptr.cast::<u8>(), pages * PAGE_SIZE)
                })
                .collect();
            TestRam { regions }
        }

        fn layout(&self) -> RamLayout {
            let regions = self
                .regions
                .iter()
                // SAFETY: the mappings live as long as `self`, which outlives the layout in each test.
                .map(|&(ptr, len)| unsafe { HostRamRegion::new(ptr, len) }.unwrap())
                .collect();
            RamLayout::new(regions).unwrap()
        }

        fn fill_page(&self, layout: &RamLayout, page: usize, content: &[u8]) {
            let addr = layout.host_addr_of_page(page).unwrap();
            // SAFETY: the page is inside one of this value's mappings; tests are single threaded.
            unsafe { std::ptr::copy_nonoverlapping(content.as_ptr(), addr as *mut u8, PAGE_SIZE) };
        }

        fn page(&self, layout: &RamLayout, page: usize) -> &[u8] {
            let addr = layout.host_addr_of_page(page).unwrap();
            // SAFETY: the page is inside one of this value's mappings; tests are single threaded.
            unsafe { std::slice::from_raw_parts(addr as *const u8, PAGE_SIZE) }
        }
    }

    impl Drop for TestRam {
        fn drop(&mut self) {
            for &(ptr, len) in &self.regions {
                // SAFETY: unmaps the mappings created in `new`.
                unsafe { libc::munmap(ptr.cast(), len) };
            }
        }
    }

    #[test]
    fn copies_back_exactly_the_dirty_pages() {
        let ram = TestRam::new(&[40, 24]);
        let layout = ram.layout();
        let total = layout.total_pages();
        let snapshot = SnapshotMemory::create(layout.total_bytes()).unwrap();
        for page in 0..total {
            let content = vec![page as u8 ^ 0x5a; PAGE_SIZE];
            snapshot
                .file()
                .write_all_at(&content, (page * PAGE_SIZE) as u64)
                .unwrap();
            ram.fill_page(&layout, page, &content);
        }
        // The guest writes pages in both regions; only some are reported dirty.
        let mut dirty = DirtyPages::new(total);
        for page in [0, 39, 40, 63, 17] {
            ram.fill_page(&layout, page, &[0xff; PAGE_SIZE]);
            dirty.insert(page).unwrap();
        }
        ram.fill_page(&layout, 20, &[0xee; PAGE_SIZE]); // written but not reported: must stay as is
        let stats = restore_dirty_pages(&layout, &snapshot, &dirty).unwrap();
        assert_eq!(stats.pages, 5);
        for page in 0..total {
            let expected = if page == 20 { 0xee } else { page as u8 ^ 0x5a };
            assert!(
                ram.page(&layout, page).iter().all(|&b| b == expected),
                "page {page}"
            );
        }
    }

    #[test]
    fn rejects_mismatched_sizes() {
        let ram = TestRam::new(&[8]);
        let layout = ram.layout();
        let small = SnapshotMemory::create(4 * PAGE_SIZE).unwrap();
        assert!(matches!(
            restore_dirty_pages(&layout, &small, &DirtyPages::new(8)),
            Err(RestoreError::SizeMismatch { .. })
        ));
        let snapshot = SnapshotMemory::create(8 * PAGE_SIZE).unwrap();
        assert!(matches!(
            restore_dirty_pages(&layout, &snapshot, &DirtyPages::new(9)),
            Err(RestoreError::DirtySetMismatch { .. })
        ));
    }
}
