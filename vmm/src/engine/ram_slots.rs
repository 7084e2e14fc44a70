//! Guest RAM as the snapshot engine sees it: the KVM memslots that map it (and their dirty-logging
//! flag), the page numbering shared with the snapshot memory, and the three ways the engine maps
//! RAM: shared from the RAM memfd (normal), private over a snapshot file (remap restores, resumes
//! from disk), and back to shared before a new capture.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES};
use kvm_ioctls::VmFd;
use snapshot::{DirtyPages, HostRamRegion, RamLayout, SnapshotMemory, PAGE_SIZE};
use thiserror::Error;

use crate::dirty_tracking::TrackedSlot;
use crate::memory::GuestRam;

#[derive(Debug, Error)]
pub enum RamSlotsError {
    #[error("KVM {what} failed: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("{what} failed: {source}")]
    Os {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("RAM layout: {0}")]
    Layout(#[from] snapshot::RamLayoutError),
    #[error("page {0} is not in guest RAM")]
    PageOutsideRam(usize),
}

/// One RAM memslot.
#[derive(Debug, Clone, Copy)]
struct RamSlot {
    slot: u32,
    guest_addr: u64,
    size: u64,
    host_addr: u64,
    /// Its first page in the layout (and the byte offset `first_page * PAGE_SIZE` in the RAM
    /// memfd and in snapshot memory files).
    first_page: usize,
}

impl RamSlot {
    fn file_offset(&self) -> u64 {
        (self.first_page * PAGE_SIZE) as u64
    }
}

/// How a mapping of a file over guest RAM is shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sharing {
    /// Writes reach the file (the RAM memfd).
    Shared,
    /// Writes stay in private copies; the file never changes (snapshot files).
    Private,
}

/// The RAM memslots of one VM, in layout order.
pub struct RamSlots {
    slots: Vec<RamSlot>,
    layout: RamLayout,
}

impl RamSlots {
    /// Describes `ram`, whose memslots are numbered 0.. in the order of `ram.slots()`.
    pub fn new(ram: &GuestRam) -> Result<Self, RamSlotsError> {
        let file = Arc::new(ram.file.try_clone().map_err(|source| RamSlotsError::Os {
            what: "duplicating the RAM memfd",
            source,
        })?);
        let mut regions = Vec::new();
        let mut slots = Vec::new();
        let mut first_page = 0;
        for (index, (guest_addr, size, host_addr)) in ram.slots().into_iter().enumerate() {
            let slot = RamSlot {
                slot: index as u32,
                guest_addr,
                size,
                host_addr,
                first_page,
            };
            // SAFETY: the region is guest RAM owned by `ram`, which outlives the engine (both
            // live in the Machine, the engine dropped first).
            let region = unsafe { HostRamRegion::new(host_addr as *mut u8, size as usize) }?
                .with_backing_file(file.clone(), slot.file_offset())?;
            regions.push(region);
            slots.push(slot);
            first_page += size as usize / PAGE_SIZE;
        }
        Ok(RamSlots {
            layout: RamLayout::new(regions)?,
            slots,
        })
    }

    pub fn layout(&self) -> &RamLayout {
        &self.layout
    }

    /// The slots as the dirty tracker numbers them.
    pub fn tracked(&self) -> Vec<TrackedSlot> {
        self.slots
            .iter()
            .map(|s| TrackedSlot {
                slot: s.slot,
                first_page: s.first_page,
                pages: s.size as usize / PAGE_SIZE,
            })
            .collect()
    }

    /// Each slot's first layout page and page count, in the order of `GuestRam::slots()`.
    pub fn page_ranges(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.slots
            .iter()
            .map(|s| (s.first_page, s.size as usize / PAGE_SIZE))
    }

    /// The layout page that holds guest-physical address `gpa`.
    pub fn layout_page(&self, gpa: u64) -> Option<usize> {
        self.slots
            .iter()
            .find(|s| gpa >= s.guest_addr && gpa - s.guest_addr < s.size)
            .map(|s| s.first_page + ((gpa - s.guest_addr) as usize / PAGE_SIZE))
    }

    /// Each slot's guest address, host mapping and layout offset, for verification.
    pub fn spans(&self) -> impl Iterator<Item = (u64, &[u8], usize)> + '_ {
        self.slots.iter().map(|slot| {
            // SAFETY: the slot's host range is mapped guest RAM for the life of the VM; callers
            // read it only while the vCPU is stopped (they hold the engine mutably).
            let live = unsafe {
                std::slice::from_raw_parts(slot.host_addr as *const u8, slot.size as usize)
            };
            (slot.guest_addr, live, slot.first_page * PAGE_SIZE)
        })
    }

    /// Turns KVM's dirty logging on for every RAM slot.
    pub fn enable_dirty_logging(&self, vm_fd: &VmFd) -> Result<(), RamSlotsError> {
        for s in &self.slots {
            let region = kvm_userspace_memory_region {
                slot: s.slot,
                flags: KVM_MEM_LOG_DIRTY_PAGES,
                guest_phys_addr: s.guest_addr,
                memory_size: s.size,
                userspace_addr: s.host_addr,
            };
            // SAFETY: same live RAM mapping as when the slot was created.
            unsafe { vm_fd.set_user_memory_region(region) }.map_err(|source| {
                RamSlotsError::Kvm {
                    what: "SET_USER_MEMORY_REGION",
                    source,
                }
            })?;
        }
        Ok(())
    }

    /// Deletes every RAM slot and adds it again (with dirty logging): the one operation that
    /// makes KVM drop every shadow page (kvm_mmu_zap_all_fast). Harvest the dirty ring first:
    /// its entries name slots.
    pub fn recreate(&self, vm_fd: &VmFd) -> Result<(), RamSlotsError> {
        for s in &self.slots {
            let region = kvm_userspace_memory_region {
                slot: s.slot,
                ..Default::default()
            };
            // SAFETY: deleting a slot touches no host memory.
            unsafe { vm_fd.set_user_memory_region(region) }.map_err(|source| {
                RamSlotsError::Kvm {
                    what: "SET_USER_MEMORY_REGION (delete)",
                    source,
                }
            })?;
        }
        self.enable_dirty_logging(vm_fd)
    }

    /// Maps `file` (laid out like RAM: slot after slot) privately over every slot: pages come from
    /// the file when first touched and guest writes never reach it. KVM's memslots keep their
    /// host addresses; its MMU notifiers drop the old translations.
    pub fn map_private(&self, file: &File) -> Result<(), RamSlotsError> {
        for slot in &self.slots {
            map_over(slot, file, slot.file_offset(), Sharing::Private)?;
        }
        Ok(())
    }

    /// Makes RAM the shared RAM memfd again, with the contents it has now: copies every slot
    /// (private and file-backed pages alike) into the memfd and maps the memfd back. O(RAM); the
    /// capture that follows needs RAM to be the memfd (it reads through it and skips its holes).
    pub fn map_shared_again(&self, ram: &GuestRam) -> Result<(), RamSlotsError> {
        use std::os::unix::fs::FileExt;
        for slot in &self.slots {
            // SAFETY: the slot's host range is mapped guest RAM; the vCPU is stopped.
            let contents = unsafe {
                std::slice::from_raw_parts(slot.host_addr as *const u8, slot.size as usize)
            };
            ram.file
                .write_all_at(contents, slot.file_offset())
                .map_err(|source| RamSlotsError::Os {
                    what: "copying guest RAM into its memfd",
                    source,
                })?;
            map_over(slot, &ram.file, slot.file_offset(), Sharing::Shared)?;
        }
        Ok(())
    }

    /// Copies the live contents of `pages` into `memory` (laid out like RAM), a run of adjacent
    /// pages per write.
    pub fn write_pages_into(
        &self,
        memory: &SnapshotMemory,
        pages: &DirtyPages,
    ) -> Result<(), RamSlotsError> {
        use std::os::unix::fs::FileExt;
        let mut run: Option<(usize, usize)> = None;
        let flush = |(first, count): (usize, usize)| -> Result<(), RamSlotsError> {
            let host = self
                .layout
                .host_addr_of_page(first)
                .ok_or(RamSlotsError::PageOutsideRam(first))?;
            if self.layout.host_addr_of_page(first + count - 1)
                != Some(host + (count - 1) * PAGE_SIZE)
            {
                return Err(RamSlotsError::PageOutsideRam(first + count - 1));
            }
            // SAFETY: `count` pages of mapped guest RAM, contiguous on the host (checked above);
            // read while the vCPU is stopped.
            let contents =
                unsafe { std::slice::from_raw_parts(host as *const u8, count * PAGE_SIZE) };
            memory
                .file()
                .write_all_at(contents, (first * PAGE_SIZE) as u64)
                .map_err(|source| RamSlotsError::Os {
                    what: "writing pages into the snapshot memory",
                    source,
                })
        };
        for page in pages.iter() {
            run = match run {
                // Adjacent pages of one slot are adjacent on the host too.
                Some((first, count))
                    if first + count == page
                        && self.layout.host_addr_of_page(page)
                            == self
                                .layout
                                .host_addr_of_page(first)
                                .map(|host| host + count * PAGE_SIZE) =>
                {
                    Some((first, count + 1))
                }
                Some(done) => {
                    flush(done)?;
                    Some((page, 1))
                }
                None => Some((page, 1)),
            };
        }
        if let Some(done) = run {
            flush(done)?;
        }
        Ok(())
    }

    /// Makes KVM forget its translations of guest-physical `[gpa, gpa + len)` (clipped to RAM):
    /// unmapping the host pages behind them fires KVM's MMU notifier, which zaps every SPTE that
    /// maps them; the next guest access faults and KVM walks the guest's page tables again.
    /// Contents are kept: RAM's shared memfd pages stay in the page cache, and a private
    /// mapping's pages here have no private copies the restore has not already dropped.
    pub fn invalidate(&self, gpa: u64, len: u64) -> Result<(), RamSlotsError> {
        let end = gpa.saturating_add(len);
        for slot in &self.slots {
            let from = gpa.max(slot.guest_addr);
            let to = end.min(slot.guest_addr + slot.size);
            if from >= to {
                continue;
            }
            let host = slot.host_addr + (from - slot.guest_addr);
            // SAFETY: `host..host + (to - from)` lies inside this slot's guest RAM mapping, page
            // aligned (both bounds are); DONTNEED only drops page-table entries here (see above).
            let status = unsafe {
                libc::madvise(
                    host as *mut libc::c_void,
                    (to - from) as usize,
                    libc::MADV_DONTNEED,
                )
            };
            if status != 0 {
                return Err(RamSlotsError::Os {
                    what: "madvise(MADV_DONTNEED) to drop KVM's translations",
                    source: std::io::Error::last_os_error(),
                });
            }
        }
        Ok(())
    }

    /// The live contents of layout page `page`.
    pub fn live_page(&self, page: usize) -> Option<&[u8]> {
        let addr = self.layout.host_addr_of_page(page)?;
        // SAFETY: a page of mapped guest RAM; read while the vCPU is stopped.
        Some(unsafe { std::slice::from_raw_parts(addr as *const u8, PAGE_SIZE) })
    }

    /// Drops the private copies of the dirty pages, so they read the mapped file again.
    pub fn drop_private_copies(&self, dirty: &DirtyPages) -> Result<(), RamSlotsError> {
        for page in dirty.iter() {
            let Some(addr) = self.layout.host_addr_of_page(page) else {
                continue;
            };
            // SAFETY: `addr` is a page of the private guest RAM mapping; DONTNEED on a private
            // file mapping discards the page's private copy and nothing else.
            let status =
                unsafe { libc::madvise(addr as *mut libc::c_void, PAGE_SIZE, libc::MADV_DONTNEED) };
            if status != 0 {
                return Err(RamSlotsError::Os {
                    what: "madvise(MADV_DONTNEED)",
                    source: std::io::Error::last_os_error(),
                });
            }
        }
        Ok(())
    }
}

/// Replaces `slot`'s RAM mapping with `file` from `offset`, same size, same host address.
fn map_over(
    slot: &RamSlot,
    file: &File,
    offset: u64,
    sharing: Sharing,
) -> Result<(), RamSlotsError> {
    let flags = match sharing {
        Sharing::Shared => libc::MAP_SHARED | libc::MAP_FIXED,
        Sharing::Private => libc::MAP_PRIVATE | libc::MAP_FIXED | libc::MAP_NORESERVE,
    };
    // SAFETY: replaces exactly this slot's guest RAM mapping (owned by GuestRam, which stays
    // alive) with a mapping of the same length; the vCPU is not running.
    let mapped = unsafe {
        libc::mmap(
            slot.host_addr as *mut libc::c_void,
            slot.size as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            file.as_raw_fd(),
            offset as libc::off_t,
        )
    };
    if mapped == libc::MAP_FAILED {
        return Err(RamSlotsError::Os {
            what: match sharing {
                Sharing::Shared => "mapping guest RAM shared again",
                Sharing::Private => "mapping a snapshot file over guest RAM",
            },
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}
