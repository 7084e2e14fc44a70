//! Which guest pages the vCPU wrote since the last harvest: KVM's dirty ring, or its dirty log
//! with manual re-protection when the ring is missing. kvm-ioctls 0.25 covers neither the ring nor
//! KVM_CLEAR_DIRTY_LOG, so both use raw ioctls here.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, Ordering};

use kvm_bindings::{
    kvm_clear_dirty_log, kvm_dirty_gfn, kvm_dirty_log, kvm_enable_cap, KVM_CAP_DIRTY_LOG_RING,
    KVM_CAP_DIRTY_LOG_RING_ACQ_REL, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
    KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE, KVM_DIRTY_LOG_PAGE_OFFSET,
};
use kvm_ioctls::{VcpuFd, VmFd};
use snapshot::{DirtyGfn, DirtyPages, SlotMap};
use thiserror::Error;

use crate::hot_pages::HotPages;

const KVM_GET_DIRTY_LOG: libc::c_ulong = 0x4010_AE42;
const KVM_CLEAR_DIRTY_LOG: libc::c_ulong = 0xC018_AEC0;
const KVM_RESET_DIRTY_RINGS: libc::c_ulong = 0xAEC7;
const KVM_DIRTY_GFN_F_DIRTY: u32 = 1 << 0;
const KVM_DIRTY_GFN_F_RESET: u32 = 1 << 1;
/// Entries in the dirty ring: 64k entries (1 MiB) is KVM's usual maximum; a round dirtying more
/// distinct pages than that exits with KVM_EXIT_DIRTY_RING_FULL and is harvested mid-round.
const RING_ENTRIES_WANTED: u32 = 65536;

#[derive(Debug, Error)]
pub enum DirtyTrackingError {
    #[error("this KVM offers neither a dirty ring nor the dirty log with manual protection")]
    Unsupported,
    #[error("KVM {what} failed: {source}")]
    Kvm {
        what: &'static str,
        source: std::io::Error,
    },
    #[error(transparent)]
    Pages(#[from] snapshot::DirtyPagesError),
}

fn last_os(what: &'static str) -> DirtyTrackingError {
    DirtyTrackingError::Kvm {
        what,
        source: std::io::Error::last_os_error(),
    }
}

/// How dirty pages are tracked, chosen before the vCPU exists (the ring must be enabled first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirtyTrackingMode {
    Ring { entries: u32, acquire_release: bool },
    ManualLog,
}

impl DirtyTrackingMode {
    /// Enables the best mechanism this KVM offers. Call before creating vCPUs. The dirty log with
    /// manual protection comes first: it lets hot pages stay writable between restores
    /// (`hot_pages`), which the ring cannot (resetting it protects every page it reported).
    pub fn enable(vm_fd: &VmFd) -> Result<Self, DirtyTrackingError> {
        if vm_fd.check_extension_raw(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 as u64) > 0 {
            let mut enable = kvm_enable_cap {
                cap: KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
                ..Default::default()
            };
            enable.args[0] = KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE as u64;
            vm_fd
                .enable_cap(&enable)
                .map_err(|e| DirtyTrackingError::Kvm {
                    what: "ENABLE_CAP(MANUAL_DIRTY_LOG_PROTECT2)",
                    source: std::io::Error::from_raw_os_error(e.errno()),
                })?;
            return Ok(DirtyTrackingMode::ManualLog);
        }
        let acq_rel = vm_fd.check_extension_raw(KVM_CAP_DIRTY_LOG_RING_ACQ_REL as u64);
        let plain = vm_fd.check_extension_raw(KVM_CAP_DIRTY_LOG_RING as u64);
        let (cap, max_bytes, acquire_release) = if acq_rel > 0 {
            (KVM_CAP_DIRTY_LOG_RING_ACQ_REL, acq_rel, true)
        } else {
            (KVM_CAP_DIRTY_LOG_RING, plain, false)
        };
        let entry_bytes = std::mem::size_of::<kvm_dirty_gfn>() as u32;
        if max_bytes > 0 {
            let entries = RING_ENTRIES_WANTED.min(max_bytes as u32 / entry_bytes);
            let mut enable = kvm_enable_cap {
                cap,
                ..Default::default()
            };
            enable.args[0] = (entries * entry_bytes) as u64;
            if vm_fd.enable_cap(&enable).is_ok() {
                return Ok(DirtyTrackingMode::Ring {
                    entries,
                    acquire_release,
                });
            }
        }
        Err(DirtyTrackingError::Unsupported)
    }
}

/// One KVM memory slot as the tracker sees it.
#[derive(Debug, Clone, Copy)]
pub struct TrackedSlot {
    pub slot: u32,
    pub first_page: usize,
    pub pages: usize,
}

/// The per-VM harvester.
pub enum DirtyTracker {
    Ring(DirtyRing),
    Log(DirtyLog),
}

impl DirtyTracker {
    pub fn new(
        mode: DirtyTrackingMode,
        vm_fd: &VmFd,
        vcpu: &VcpuFd,
        slots: &[TrackedSlot],
        total_pages: usize,
    ) -> Result<Self, DirtyTrackingError> {
        let mut slot_map = SlotMap::new();
        for s in slots {
            slot_map.add(s.slot, s.first_page, s.pages, total_pages)?;
        }
        Ok(match mode {
            DirtyTrackingMode::Ring {
                entries,
                acquire_release: _,
            } => DirtyTracker::Ring(DirtyRing::map(vm_fd, vcpu, entries, slot_map)?),
            DirtyTrackingMode::ManualLog => DirtyTracker::Log(DirtyLog {
                vm_fd: vm_fd.as_raw_fd(),
                slots: slots.to_vec(),
                bitmap: Vec::new(),
                reprotect: Vec::new(),
                hot_pages: slots.iter().map(|_| HotPages::new()).collect(),
            }),
        })
    }

    /// Adds every page written since the last harvest to `pages` and re-arms tracking for them.
    pub fn harvest(&mut self, pages: &mut DirtyPages) -> Result<(), DirtyTrackingError> {
        match self {
            DirtyTracker::Ring(ring) => ring.harvest(pages),
            DirtyTracker::Log(log) => log.harvest(pages),
        }
    }

    /// The memory slots were deleted and added again: KVM protects every page anew.
    pub fn slots_recreated(&mut self) {
        if let DirtyTracker::Log(log) = self {
            log.hot_pages.iter_mut().for_each(HotPages::forget);
        }
    }

    /// Pages left writable between restores (the dirty log's hot pages; the ring keeps none).
    pub fn kept_writable(&self) -> usize {
        match self {
            DirtyTracker::Ring(_) => 0,
            DirtyTracker::Log(log) => log.hot_pages.iter().map(HotPages::kept).sum(),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            DirtyTracker::Ring(_) => "dirty ring",
            DirtyTracker::Log(_) => "dirty log (manual protect)",
        }
    }
}

/// The vCPU's dirty ring, mapped from its fd.
pub struct DirtyRing {
    vm_fd: i32,
    entries: *mut kvm_dirty_gfn,
    count: u32,
    next: u32,
    slots: SlotMap,
}

// SAFETY: the ring mapping is only touched by the thread that owns the tracker.
unsafe impl Send for DirtyRing {}

impl DirtyRing {
    fn map(
        vm_fd: &VmFd,
        vcpu: &VcpuFd,
        count: u32,
        slots: SlotMap,
    ) -> Result<Self, DirtyTrackingError> {
        let bytes = count as usize * std::mem::size_of::<kvm_dirty_gfn>();
        // SAFETY: mapping the vCPU fd at KVM_DIRTY_LOG_PAGE_OFFSET pages is how KVM exposes the
        // ring; the result is checked and unmapped in Drop.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                vcpu.as_raw_fd(),
                KVM_DIRTY_LOG_PAGE_OFFSET as i64 * 4096,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(last_os("mmap of the dirty ring"));
        }
        Ok(DirtyRing {
            vm_fd: vm_fd.as_raw_fd(),
            entries: ptr as *mut kvm_dirty_gfn,
            count,
            next: 0,
            slots,
        })
    }

    fn harvest(&mut self, pages: &mut DirtyPages) -> Result<(), DirtyTrackingError> {
        let mut harvested = 0;
        loop {
            // SAFETY: `next % count` indexes inside the mapped ring.
            let entry = unsafe { &mut *self.entries.add((self.next % self.count) as usize) };
            // SAFETY: `flags` is a u32 in shared memory that KVM publishes with release
            // semantics; reading it through an atomic gives the matching acquire.
            let flags = unsafe { &*(std::ptr::addr_of_mut!(entry.flags) as *const AtomicU32) };
            if flags.load(Ordering::Acquire) & KVM_DIRTY_GFN_F_DIRTY == 0 {
                break;
            }
            let gfn = DirtyGfn {
                slot: entry.slot,
                offset: entry.offset,
            };
            pages.add_dirty_ring_entries(&self.slots, [gfn])?;
            flags.store(KVM_DIRTY_GFN_F_RESET, Ordering::Release);
            self.next = self.next.wrapping_add(1);
            harvested += 1;
        }
        if harvested > 0 {
            // SAFETY: a VM ioctl with no argument.
            if unsafe { libc::ioctl(self.vm_fd, KVM_RESET_DIRTY_RINGS) } < 0 {
                return Err(last_os("RESET_DIRTY_RINGS"));
            }
        }
        Ok(())
    }
}

impl Drop for DirtyRing {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `map` mapped.
        unsafe {
            libc::munmap(
                self.entries as *mut libc::c_void,
                self.count as usize * std::mem::size_of::<kvm_dirty_gfn>(),
            )
        };
    }
}

/// The dirty log with KVM_CLEAR_DIRTY_LOG: read the bitmap, then re-protect the pages that are not
/// kept writable (`hot_pages`).
pub struct DirtyLog {
    vm_fd: i32,
    slots: Vec<TrackedSlot>,
    bitmap: Vec<u64>,
    reprotect: Vec<u64>,
    /// Per slot, in `slots` order.
    hot_pages: Vec<HotPages>,
}

impl DirtyLog {
    fn harvest(&mut self, pages: &mut DirtyPages) -> Result<(), DirtyTrackingError> {
        for (slot, hot_pages) in self.slots.iter().zip(self.hot_pages.iter_mut()) {
            self.bitmap.clear();
            self.bitmap.resize(slot.pages.div_ceil(64), 0);
            let mut log = kvm_dirty_log {
                slot: slot.slot,
                ..Default::default()
            };
            log.__bindgen_anon_1.dirty_bitmap = self.bitmap.as_mut_ptr() as *mut libc::c_void;
            // SAFETY: the bitmap has one bit per page of the slot, as KVM_GET_DIRTY_LOG writes.
            if unsafe { libc::ioctl(self.vm_fd, KVM_GET_DIRTY_LOG, &mut log) } < 0 {
                return Err(last_os("GET_DIRTY_LOG"));
            }
            if self.bitmap.iter().all(|w| *w == 0) && hot_pages.kept() == 0 {
                // Nothing logged in this slot, neither in this round nor in the previous one.
                hot_pages.forget();
                continue;
            }
            // Every logged page is restored, kept ones included: exactness never depends on
            // which pages are re-protected.
            pages.add_dirty_log(slot.first_page, slot.pages, &self.bitmap)?;
            if !hot_pages.plan(&self.bitmap, &mut self.reprotect) {
                continue;
            }
            let mut clear = kvm_clear_dirty_log {
                slot: slot.slot,
                num_pages: slot.pages as u32,
                first_page: 0,
                ..Default::default()
            };
            clear.__bindgen_anon_1.dirty_bitmap = self.reprotect.as_mut_ptr() as *mut libc::c_void;
            // SAFETY: same bitmap, covering the whole slot from page 0.
            if unsafe { libc::ioctl(self.vm_fd, KVM_CLEAR_DIRTY_LOG, &mut clear) } < 0 {
                return Err(last_os("CLEAR_DIRTY_LOG"));
            }
        }
        Ok(())
    }
}
