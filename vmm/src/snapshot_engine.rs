//! The snapshot engine's KVM half: SAVE and RESTORE as the guest asks for them through the
//! snapshot device, and `--verify-restores`.
//!
//! SAVE: finish the guest's MMIO write, capture vCPU, VM and device state, start dirty tracking,
//! and start the userfaultfd background capture of RAM; the guest runs on at once.
//! RESTORE: collect the pages written since (KVM dirty ring or log, plus the VMM's own writes),
//! put them back (copy, or drop private copies of a MAP_PRIVATE remap), make a shadow MMU forget
//! page tables it may have cached, and put the vCPU, VM and devices back.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES};
use kvm_ioctls::{VcpuFd, VmFd};
use snapshot::vm_state::{VcpuState, VmState};
use snapshot::{
    restore_dirty_pages, CaptureOptions, CaptureReport, CaptureScope, DirtyPages, HostRamRegion,
    RamCapture, RamLayout, SnapshotMemory, PAGE_SIZE,
};
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::device_manager::{DeviceManager, DeviceStates};
use crate::dirty_tracking::{DirtyTracker, DirtyTrackingError, DirtyTrackingMode, TrackedSlot};
use crate::memory::GuestRam;
use crate::page_tables::{page_table_pages, PagingMode};
use crate::vstate::{
    capture_vcpu, capture_vm_wide, restore_vcpu_fast, restore_vcpu_full, restore_vm_wide,
    VcpuStateLayout, VstateError,
};

#[derive(Debug, Error)]
pub enum SnapshotEngineError {
    #[error(transparent)]
    Vstate(#[from] VstateError),
    #[error(transparent)]
    DirtyTracking(#[from] DirtyTrackingError),
    #[error("dirty page set: {0}")]
    DirtyPages(#[from] snapshot::DirtyPagesError),
    #[error("RAM capture: {0}")]
    Capture(#[from] snapshot::RamCaptureError),
    #[error("snapshot memory: {0}")]
    Memory(#[from] snapshot::SnapshotMemoryError),
    #[error("RAM layout: {0}")]
    Layout(#[from] snapshot::RamLayoutError),
    #[error("restoring RAM: {0}")]
    Restore(#[from] snapshot::RestoreError),
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
    #[error("devices: {0}")]
    Devices(#[from] crate::device_manager::DeviceManagerError),
    #[error("restore verification failed: {0}")]
    Verification(String),
    #[error("writing the snapshot to disk: {0}")]
    Disk(#[from] snapshot::SnapshotDirError),
}

/// How RAM is put back on RESTORE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RestoreStrategy {
    /// Copy back the pages the dirty ring/log and the VMM's own writes name.
    #[default]
    Dirty,
    /// Guest RAM becomes a MAP_PRIVATE mapping of the snapshot memory; a restore drops the private
    /// copies of the dirty pages.
    Remap,
}

/// How much vCPU state a RESTORE writes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VcpuRestore {
    /// Everything when privileged state may have changed; otherwise only what user code can
    /// change (registers, segments/control registers, events through SYNC_REGS, and XSAVE).
    #[default]
    Auto,
    /// Every piece of vCPU state on every restore.
    Full,
}

#[derive(Debug, Clone, Default)]
pub struct EngineOptions {
    pub strategy: RestoreStrategy,
    pub vcpu_restore: VcpuRestore,
    pub verify_restores: bool,
    /// Stop the VM once this many restores are done (benchmarks, bounded fuzz runs).
    pub max_restores: Option<u64>,
}

/// Counters for logs and benchmarks.
#[derive(Debug, Clone, Default)]
pub struct EngineStats {
    /// When the first SAVE finished: benchmarks time the restore loop from here.
    pub first_save_done: Option<Instant>,
    pub saves: u64,
    pub restores: u64,
    pub full_vcpu_restores: u64,
    pub pages_restored: u64,
    pub shadow_mmu_resets: u64,
    pub verified_restores: u64,
    /// Restores that arrived while the background RAM capture was still running.
    pub restores_during_capture: u64,
    /// Time spent in RESTORE handling itself (the VMM's share of a round).
    pub restore_time: Duration,
    /// How long the guest was stopped by the last SAVE, and by its RAM capture alone.
    pub last_save_stall: Duration,
    pub last_capture_stall: Duration,
    pub last_capture_report: Option<CaptureReport>,
}

/// One RAM memslot.
#[derive(Debug, Clone, Copy)]
struct RamSlot {
    slot: u32,
    guest_addr: u64,
    size: u64,
    host_addr: u64,
    first_page: usize,
}

enum SnapshotRam {
    Capturing(RamCapture),
    Ready(SnapshotMemory),
}

/// A snapshot held in memory.
pub struct Snapshot {
    pub vcpu: VcpuState,
    /// `vcpu.xsave` in the form KVM_SET_XSAVE2 takes, built once at SAVE for the hot path.
    xsave: kvm_bindings::Xsave,
    pub vm: VmState,
    pub devices: DeviceStates,
    ram: Option<SnapshotRam>,
    /// Layout pages holding the guest's page tables when the snapshot was taken; `None` when they
    /// could not be determined (every restore then resets a shadow MMU).
    page_table_pages: Option<HashSet<usize>>,
    /// Guest RAM is currently a private mapping of this snapshot's memory (remap strategy).
    remapped: bool,
}

/// Everything the engine needs from the VM for one command.
pub struct VmParts<'a> {
    pub vm_fd: &'a VmFd,
    pub vcpu: &'a mut VcpuFd,
    pub ram: &'a GuestRam,
    pub devices: &'a mut DeviceManager,
}

pub struct SnapshotEngine {
    options: EngineOptions,
    layout: RamLayout,
    slots: Vec<RamSlot>,
    tracker: DirtyTracker,
    tracking_enabled: bool,
    dirty: DirtyPages,
    vcpu_layout: VcpuStateLayout,
    shadow_mmu: bool,
    vmm_wrote_ram: bool,
    /// Guest RAM is a private mapping of some snapshot file rather than the shared RAM memfd
    /// (after a remap restore, or when resumed from disk).
    ram_private: bool,
    snapshot: Option<Snapshot>,
    pub stats: EngineStats,
}

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

impl EngineStats {
    /// One line for the end of a run; empty when no snapshot was taken.
    pub fn summary(&self) -> Option<String> {
        (self.saves > 0 || self.restores > 0).then(|| {
            format!(
                "{} save(s), {} restore(s) ({} during RAM capture, {} with full vCPU state, {} verified), \
                 {} pages restored, {} shadow MMU resets, {:.1} us per restore in the VMM, \
                 last SAVE stall {:.2} ms",
                self.saves,
                self.restores,
                self.restores_during_capture,
                self.full_vcpu_restores,
                self.verified_restores,
                self.pages_restored,
                self.shadow_mmu_resets,
                self.restore_time.as_secs_f64() * 1e6 / self.restores.max(1) as f64,
                self.last_save_stall.as_secs_f64() * 1e3
            )
        })
    }
}

impl SnapshotEngine {
    /// Sets up tracking for `ram`. `mode` must have been enabled before the vCPU was created.
    pub fn new(
        options: EngineOptions,
        mode: DirtyTrackingMode,
        kvm: &kvm_ioctls::Kvm,
        vm_fd: &VmFd,
        vcpu: &mut VcpuFd,
        ram: &GuestRam,
    ) -> Result<Self, SnapshotEngineError> {
        let mut regions = Vec::new();
        let mut slots = Vec::new();
        let mut first_page = 0;
        let file = std::sync::Arc::new(ram.file.try_clone().map_err(|source| {
            SnapshotEngineError::Os {
                what: "duplicating the RAM memfd",
                source,
            }
        })?);
        let mut file_offset = 0u64;
        for (index, (guest_addr, size, host_addr)) in ram.slots().into_iter().enumerate() {
            // SAFETY: the region is guest RAM owned by `ram`, which outlives the engine (both live
            // in the Vm, the engine dropped first).
            let region = unsafe { HostRamRegion::new(host_addr as *mut u8, size as usize) }?
                .with_backing_file(file.clone(), file_offset)?;
            regions.push(region);
            slots.push(RamSlot {
                slot: index as u32,
                guest_addr,
                size,
                host_addr,
                first_page,
            });
            first_page += size as usize / PAGE_SIZE;
            file_offset += size;
        }
        let layout = RamLayout::new(regions)?;
        let tracked: Vec<TrackedSlot> = slots
            .iter()
            .map(|s| TrackedSlot {
                slot: s.slot,
                first_page: s.first_page,
                pages: s.size as usize / PAGE_SIZE,
            })
            .collect();
        let tracker = DirtyTracker::new(mode, vm_fd, vcpu, &tracked, layout.total_pages())?;
        let vcpu_layout = VcpuStateLayout::probe(kvm, vm_fd, vcpu)?;
        crate::vstate::enable_sync_regs(vcpu);
        Ok(SnapshotEngine {
            options,
            dirty: DirtyPages::new(layout.total_pages()),
            layout,
            slots,
            tracker,
            tracking_enabled: false,
            vcpu_layout,
            shadow_mmu: detect_shadow_mmu(),
            vmm_wrote_ram: false,
            ram_private: false,
            snapshot: None,
            stats: EngineStats::default(),
        })
    }

    pub fn tracker_name(&self) -> &'static str {
        self.tracker.name()
    }

    pub fn shadow_mmu(&self) -> bool {
        self.shadow_mmu
    }

    /// True once `--max-restores` restores are done.
    pub fn restore_limit_reached(&self) -> bool {
        self.options
            .max_restores
            .is_some_and(|max| self.stats.restores >= max)
    }

    pub fn has_snapshot(&self) -> bool {
        self.snapshot.is_some()
    }

    /// Callers that write guest RAM after boot (through vm-memory, which records it in the
    /// AtomicBitmap) call this so the next restore also puts those pages back.
    pub fn note_vmm_ram_write(&mut self) {
        self.vmm_wrote_ram = true;
    }

    /// Harvests the dirty ring when KVM says it is full.
    pub fn harvest(&mut self) -> Result<(), SnapshotEngineError> {
        self.tracker.harvest(&mut self.dirty)?;
        Ok(())
    }

    fn layout_page(&self, gpa: u64) -> Option<usize> {
        self.slots
            .iter()
            .find(|s| gpa >= s.guest_addr && gpa < s.guest_addr + s.size)
            .map(|s| s.first_page + ((gpa - s.guest_addr) as usize / PAGE_SIZE))
    }

    fn set_slot_flags(&self, vm_fd: &VmFd, flags: u32) -> Result<(), SnapshotEngineError> {
        for s in &self.slots {
            let region = kvm_userspace_memory_region {
                slot: s.slot,
                flags,
                guest_phys_addr: s.guest_addr,
                memory_size: s.size,
                userspace_addr: s.host_addr,
            };
            // SAFETY: same live RAM mapping as when the slot was created.
            unsafe { vm_fd.set_user_memory_region(region) }.map_err(|source| {
                SnapshotEngineError::Kvm {
                    what: "SET_USER_MEMORY_REGION",
                    source,
                }
            })?;
        }
        Ok(())
    }

    /// Makes a shadow MMU drop every cached translation: deleting and re-adding the slots is the
    /// one operation that reaches all of KVM's shadow pages (kvm_mmu_zap_all_fast).
    fn reset_shadow_mmu(&mut self, vm_fd: &VmFd) -> Result<(), SnapshotEngineError> {
        // Entries in the dirty ring name slots; collect them before the slots go away.
        self.tracker.harvest(&mut self.dirty)?;
        for s in &self.slots {
            let region = kvm_userspace_memory_region {
                slot: s.slot,
                ..Default::default()
            };
            // SAFETY: deleting a slot touches no host memory.
            unsafe { vm_fd.set_user_memory_region(region) }.map_err(|source| {
                SnapshotEngineError::Kvm {
                    what: "SET_USER_MEMORY_REGION (delete)",
                    source,
                }
            })?;
        }
        self.set_slot_flags(vm_fd, KVM_MEM_LOG_DIRTY_PAGES)?;
        self.stats.shadow_mmu_resets += 1;
        Ok(())
    }

    /// Re-enters KVM_RUN without running the guest so that KVM finishes the MMIO write that
    /// exited: only then is RIP past the writing instruction (KVM's documented rule for
    /// KVM_EXIT_MMIO and KVM_EXIT_IO).
    fn complete_pending_exit(vcpu: &mut VcpuFd) -> Result<(), SnapshotEngineError> {
        vcpu.set_kvm_immediate_exit(1);
        let result = vcpu.run().map(|_| ()).or_else(|e| {
            if e.errno() == libc::EINTR {
                Ok(())
            } else {
                Err(e)
            }
        });
        vcpu.set_kvm_immediate_exit(0);
        result.map_err(|source| SnapshotEngineError::Kvm {
            what: "KVM_RUN (completing the SAVE write)",
            source,
        })
    }

    /// SAVE: take a snapshot of the whole VM at this point; the guest resumes right after its
    /// write to the COMMAND register.
    pub fn save(&mut self, vm: &mut VmParts) -> Result<(), SnapshotEngineError> {
        let started = Instant::now();
        Self::complete_pending_exit(vm.vcpu)?;
        let vcpu_state = capture_vcpu(vm.vcpu, 0, &self.vcpu_layout)?;
        let vm_wide = capture_vm_wide(vm.vm_fd)?;
        let devices = vm.devices.save_states();

        if self.ram_private {
            self.make_ram_shared_again(vm.ram)?;
        }
        if !self.tracking_enabled {
            self.set_slot_flags(vm.vm_fd, KVM_MEM_LOG_DIRTY_PAGES)?;
            self.tracking_enabled = true;
        }
        // Pages written since the previous snapshot (or restore): the scope of an incremental
        // capture into the previous snapshot's memory.
        self.tracker.harvest(&mut self.dirty)?;
        self.take_vmm_writes(vm.ram, true)?;

        let previous = self.snapshot.take();
        let (memory, scope_is_dirty) = match previous {
            Some(Snapshot {
                ram: Some(ram),
                remapped: false,
                ..
            }) if self.options.strategy == RestoreStrategy::Dirty => {
                let memory = match ram {
                    SnapshotRam::Capturing(capture) => capture.finish_now()?.0,
                    SnapshotRam::Ready(memory) => memory,
                };
                (memory, true)
            }
            _ => (SnapshotMemory::create(self.layout.total_bytes())?, false),
        };
        let scope = if scope_is_dirty {
            CaptureScope::Pages(&self.dirty)
        } else {
            CaptureScope::AllPages
        };
        let capture = RamCapture::start(&self.layout, memory, scope, &CaptureOptions::default())?;

        self.stats.last_capture_stall = capture.stall();
        self.dirty.clear();

        let page_table_pages = if self.shadow_mmu {
            self.page_table_pages_of(&vcpu_state, vm.ram)
        } else {
            None
        };
        let vm_state = VmState {
            vcpus: Vec::new(),
            pic_master: vm_wide.pic_master,
            pic_slave: vm_wide.pic_slave,
            ioapic: vm_wide.ioapic,
            pit: vm_wide.pit,
            clock: vm_wide.clock,
            memory_regions: Vec::new(),
            devices: Vec::new(),
        };
        let xsave = crate::vstate::prepare_xsave(&vcpu_state, &self.vcpu_layout)?;
        self.snapshot = Some(Snapshot {
            xsave,
            vcpu: vcpu_state,
            vm: vm_state,
            devices,
            ram: Some(SnapshotRam::Capturing(capture)),
            page_table_pages,
            remapped: false,
        });
        {
            let mut device = lock(vm.devices.snapshot_device());
            device.set_snapshot_exists(true);
            device.set_capture_running(true);
            device.set_last_command_failed(false);
            device.reset_restores();
            device.record_save();
        }
        self.stats.saves += 1;
        self.stats.last_save_stall = started.elapsed();
        self.stats.first_save_done.get_or_insert_with(Instant::now);
        Ok(())
    }

    fn page_table_pages_of(&self, vcpu: &VcpuState, ram: &GuestRam) -> Option<HashSet<usize>> {
        let mode = PagingMode::from_registers(vcpu.sregs.cr0, vcpu.sregs.cr4, vcpu.sregs.efer);
        let tables = page_table_pages(mode, vcpu.sregs.cr3, &mut |gpa, table| {
            // SAFETY: `[u64; 512]` is plain data of exactly one page.
            let bytes =
                unsafe { std::slice::from_raw_parts_mut(table.as_mut_ptr() as *mut u8, PAGE_SIZE) };
            ram.memory.read_slice(bytes, GuestAddress(gpa)).is_ok()
        })?;
        tables
            .into_iter()
            .map(|gpa| self.layout_page(gpa))
            .collect()
    }

    /// Adds the VMM's own writes to guest RAM to the dirty set (or just clears the record).
    fn take_vmm_writes(&mut self, ram: &GuestRam, force: bool) -> Result<(), SnapshotEngineError> {
        if !(force || self.vmm_wrote_ram) {
            return Ok(());
        }
        for (region, slot) in ram.memory.iter().zip(&self.slots) {
            self.dirty.take_atomic_bitmap(
                slot.first_page,
                slot.size as usize / PAGE_SIZE,
                std::ops::Deref::deref(region).bitmap(),
            )?;
        }
        self.vmm_wrote_ram = false;
        Ok(())
    }

    /// Before a new capture: the capture reads RAM through its mapping and skips the holes of the
    /// RAM memfd, so RAM must be that memfd again. Copies the current contents (private pages
    /// and snapshot pages alike) into the memfd and maps it back shared: O(RAM), once per SAVE
    /// that follows a remap restore or a resume from disk.
    fn make_ram_shared_again(&mut self, ram: &GuestRam) -> Result<(), SnapshotEngineError> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::FileExt;
        for slot in &self.slots {
            // SAFETY: the slot's host range is mapped guest RAM; the vCPU is stopped.
            let contents = unsafe {
                std::slice::from_raw_parts(slot.host_addr as *const u8, slot.size as usize)
            };
            ram.file
                .write_all_at(contents, (slot.first_page * PAGE_SIZE) as u64)
                .map_err(|source| SnapshotEngineError::Os {
                    what: "copying guest RAM into its memfd",
                    source,
                })?;
            // SAFETY: replaces exactly this slot's RAM mapping with the memfd range that now
            // holds the same bytes.
            let mapped = unsafe {
                libc::mmap(
                    slot.host_addr as *mut libc::c_void,
                    slot.size as usize,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED | libc::MAP_FIXED,
                    ram.file.as_raw_fd(),
                    (slot.first_page * PAGE_SIZE) as i64,
                )
            };
            if mapped == libc::MAP_FAILED {
                return Err(SnapshotEngineError::Os {
                    what: "mapping guest RAM shared again",
                    source: std::io::Error::last_os_error(),
                });
            }
        }
        self.ram_private = false;
        if let Some(snapshot) = self.snapshot.as_mut() {
            snapshot.remapped = false;
        }
        Ok(())
    }

    /// Takes over a snapshot loaded from disk: puts the vCPU, VM and devices in its state and
    /// makes it the current snapshot. `ram` must already map `memory`'s file privately.
    pub fn adopt_loaded(
        &mut self,
        vm_fd: &VmFd,
        vcpu: &mut VcpuFd,
        ram: &GuestRam,
        devices: &mut DeviceManager,
        saved: crate::persist::SavedVm,
        memory: SnapshotMemory,
    ) -> Result<(), SnapshotEngineError> {
        restore_vcpu_full(vcpu, &saved.vcpu, &self.vcpu_layout)?;
        restore_vm_wide(vm_fd, &saved.vm, true)?;
        devices.restore_states(&saved.devices)?;
        self.set_slot_flags(vm_fd, KVM_MEM_LOG_DIRTY_PAGES)?;
        self.tracking_enabled = true;
        self.ram_private = true;
        let page_table_pages = if self.shadow_mmu {
            self.page_table_pages_of(&saved.vcpu, ram)
        } else {
            None
        };
        let xsave = crate::vstate::prepare_xsave(&saved.vcpu, &self.vcpu_layout)?;
        self.snapshot = Some(Snapshot {
            xsave,
            vcpu: saved.vcpu,
            vm: saved.vm,
            devices: saved.devices,
            ram: Some(SnapshotRam::Ready(memory)),
            page_table_pages,
            // RAM is a private mapping of the snapshot's own file: the remap strategy only has
            // to drop private pages from the first restore on.
            remapped: true,
        });
        let mut device = lock(devices.snapshot_device());
        device.record_save();
        Ok(())
    }

    /// Writes the current snapshot to `dir` (waiting for the RAM capture), atomically: a failed
    /// write leaves a previous snapshot there intact.
    pub fn write_to_disk(
        &mut self,
        dir: &std::path::Path,
        mem_bytes: u64,
        device_options: &crate::device_manager::DeviceOptions,
    ) -> Result<(), SnapshotEngineError> {
        self.finish_capture()?;
        let Some(snapshot) = self.snapshot.as_ref() else {
            return Ok(());
        };
        let Some(SnapshotRam::Ready(memory)) = snapshot.ram.as_ref() else {
            return Ok(());
        };
        let saved = crate::persist::SavedVm {
            version: crate::persist::PAYLOAD_VERSION,
            mem_bytes,
            snapshot_slot: device_options.snapshot_slot,
            input_size: device_options.snapshot_device.input_size as u64,
            coverage_size: device_options.snapshot_device.coverage_size as u64,
            vcpu: snapshot.vcpu.clone(),
            vm: snapshot.vm.clone(),
            devices: snapshot.devices.clone(),
        };
        snapshot::save_snapshot(dir, &saved, memory)?;
        Ok(())
    }

    /// Tells the snapshot device whether the background capture still runs.
    pub fn poll_capture(&mut self, devices: &DeviceManager) {
        if let Some(Snapshot {
            ram: Some(SnapshotRam::Capturing(capture)),
            ..
        }) = &self.snapshot
        {
            if capture.is_finished() {
                lock(devices.snapshot_device()).set_capture_running(false);
            }
        }
    }

    /// Waits for the running capture, if any, and returns the snapshot memory.
    fn finish_capture(&mut self) -> Result<(), SnapshotEngineError> {
        let Some(snapshot) = self.snapshot.as_mut() else {
            return Ok(());
        };
        match snapshot.ram.take() {
            Some(SnapshotRam::Capturing(capture)) => {
                let (memory, report) = capture.finish_now()?;
                self.stats.last_capture_report = Some(report);
                snapshot.ram = Some(SnapshotRam::Ready(memory));
            }
            other => snapshot.ram = other,
        }
        Ok(())
    }

    /// The snapshot's RAM, waiting for the capture to finish if need be.
    pub fn snapshot_memory(&mut self) -> Result<Option<&SnapshotMemory>, SnapshotEngineError> {
        self.finish_capture()?;
        Ok(match self.snapshot.as_ref().and_then(|s| s.ram.as_ref()) {
            Some(SnapshotRam::Ready(memory)) => Some(memory),
            _ => None,
        })
    }

    /// RESTORE: roll the VM back to the snapshot. The guest resumes right after its SAVE write.
    pub fn restore(&mut self, vm: &mut VmParts) -> Result<(), SnapshotEngineError> {
        let started = Instant::now();
        let result = self.restore_now(vm);
        self.stats.restore_time += started.elapsed();
        result
    }

    fn restore_now(&mut self, vm: &mut VmParts) -> Result<(), SnapshotEngineError> {
        if self.snapshot.is_none() {
            let mut device = lock(vm.devices.snapshot_device());
            device.set_last_command_failed(true);
            return Ok(());
        }
        // Unlike SAVE, RESTORE needs no completion run of KVM_RUN first: for an MMIO write that
        // fits one fragment (COMMAND only acts on 4-byte writes) KVM retires the instruction
        // before exiting, and completing it later only clears its bookkeeping
        // (complete_emulated_mmio returns at once for writes), so it cannot undo the registers
        // set below. That saves a vCPU ioctl (~6 us here) on every restore.
        // A RESTORE while the capture still runs must wait for it: the snapshot memory is read.
        if matches!(
            self.snapshot.as_ref().and_then(|s| s.ram.as_ref()),
            Some(SnapshotRam::Capturing(_))
        ) {
            self.stats.restores_during_capture += 1;
        }
        self.finish_capture()?;
        self.tracker.harvest(&mut self.dirty)?;
        self.take_vmm_writes(vm.ram, false)?;

        let Some(snapshot) = self.snapshot.as_mut() else {
            return Ok(());
        };
        let Some(SnapshotRam::Ready(memory)) = snapshot.ram.as_ref() else {
            return Err(SnapshotEngineError::Verification(
                "the snapshot has no memory to restore from".into(),
            ));
        };

        // Shadow MMU: KVM caches guest page tables and does not see the copies below. If no page
        // of the snapshot's page-table tree was written and CR3 is the snapshot's, the tree the
        // guest uses is the snapshot's and every cached shadow page is still right. Known gap: a
        // round that builds a second tree in fresh pages, switches CR3 to it and back before the
        // RESTORE leaves shadow pages for that tree cached; should a later round reuse those
        // pages as page tables without rewriting them, it could see stale translations.
        // `--vcpu-restore full` does not change this; only a reset on every restore would.
        // KVM left the segment and control registers in kvm_run at this exit (SYNC_REGS).
        let sregs_now = vm.vcpu.sync_regs().sregs;
        let current_cr3 = sregs_now.cr3;
        let must_reset_mmu = self.shadow_mmu
            && (current_cr3 != snapshot.vcpu.sregs.cr3
                || match &snapshot.page_table_pages {
                    Some(tables) => self.dirty.iter().any(|page| tables.contains(&page)),
                    None => !self.dirty.is_empty(),
                });

        tracing::trace!(dirty = self.dirty.len(), must_reset_mmu, "restore");
        match self.options.strategy {
            RestoreStrategy::Dirty => {
                restore_dirty_pages(&self.layout, memory, &self.dirty)?;
            }
            RestoreStrategy::Remap => {
                if snapshot.remapped {
                    drop_private_copies(&self.layout, &self.dirty)?;
                } else {
                    remap_private(&self.slots, memory)?;
                    snapshot.remapped = true;
                    self.ram_private = true;
                }
            }
        }
        self.stats.pages_restored += self.dirty.len() as u64;
        self.dirty.clear();
        if must_reset_mmu {
            self.reset_shadow_mmu(vm.vm_fd)?;
            // Resetting harvested the ring again; those pages were restored already.
            self.dirty.clear();
        }

        let snapshot = self.snapshot.as_ref().expect("checked above");
        let full = self.options.vcpu_restore == VcpuRestore::Full
            || privileged_state_may_differ(&sregs_now, &snapshot.vcpu);
        if full {
            restore_vcpu_full(vm.vcpu, &snapshot.vcpu, &self.vcpu_layout)?;
            self.stats.full_vcpu_restores += 1;
        } else {
            restore_vcpu_fast(vm.vcpu, &snapshot.vcpu, &snapshot.xsave)?;
        }
        // The fast path leaves the TSC running; kvmclock goes with it so the guest's clocks stay
        // consistent. A full restore puts both back.
        restore_vm_wide(vm.vm_fd, &snapshot.vm, full)?;
        vm.devices.restore_states(&snapshot.devices)?;
        {
            let mut device = lock(vm.devices.snapshot_device());
            device.record_restore();
            device.set_capture_running(false);
            device.set_last_command_failed(false);
        }
        self.stats.restores += 1;
        if self.options.verify_restores {
            self.verify(vm)?;
        }
        Ok(())
    }

    /// `--verify-restores`: compare RAM, vCPU state and device state with the snapshot.
    fn verify(&mut self, vm: &mut VmParts) -> Result<(), SnapshotEngineError> {
        // Let KVM apply SYNC_REGS and finish the exit, without running the guest.
        Self::complete_pending_exit(vm.vcpu)?;
        let snapshot = self.snapshot.as_ref().expect("verify runs after a restore");
        let Some(SnapshotRam::Ready(memory)) = snapshot.ram.as_ref() else {
            return Err(SnapshotEngineError::Verification(
                "snapshot memory missing".into(),
            ));
        };
        let saved = memory.as_slice();
        for (slot, region) in self.slots.iter().zip(vm.ram.memory.iter()) {
            let start = slot.first_page * PAGE_SIZE;
            let host = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .map_err(|e| SnapshotEngineError::Verification(e.to_string()))?;
            // SAFETY: the region is `slot.size` bytes of mapped guest RAM; the vCPU is stopped.
            let live = unsafe { std::slice::from_raw_parts(host as *const u8, slot.size as usize) };
            let snap = &saved[start..start + slot.size as usize];
            if live != snap {
                let page = live
                    .chunks(PAGE_SIZE)
                    .zip(snap.chunks(PAGE_SIZE))
                    .position(|(a, b)| a != b)
                    .unwrap_or(0);
                return Err(SnapshotEngineError::Verification(format!(
                    "guest RAM differs from the snapshot at guest-physical {:#x}",
                    slot.guest_addr + (page * PAGE_SIZE) as u64
                )));
            }
        }
        let now = capture_vcpu(vm.vcpu, 0, &self.vcpu_layout)?;
        let mut differences = crate::vstate::vcpu_differences(&snapshot.vcpu, &now);
        let devices_now = vm.devices.save_states();
        if devices_now != snapshot.devices {
            differences.push("device state".to_string());
        }
        if !differences.is_empty() {
            return Err(SnapshotEngineError::Verification(format!(
                "vCPU/device state differs from the snapshot in: {}",
                differences.join(", ")
            )));
        }
        self.stats.verified_restores += 1;
        Ok(())
    }
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Whether state only privileged code can change differs from the snapshot, judged from the
/// segment and control registers KVM hands back for free on every exit (SYNC_REGS). The guest
/// must be at CPL3 both at the snapshot and now, in the same address space, with the same
/// descriptor tables; otherwise everything is restored.
fn privileged_state_may_differ(now: &kvm_bindings::kvm_sregs, snapshot: &VcpuState) -> bool {
    let then = &snapshot.sregs;
    now.cs.dpl != 3
        || then.cs.dpl != 3
        || now.cr0 != then.cr0
        || now.cr3 != then.cr3
        || now.cr4 != then.cr4
        || now.efer != then.efer
        || now.apic_base != then.apic_base
        || now.gdt.base != then.gdt.base
        || now.idt.base != then.idt.base
        || now.tr.base != then.tr.base
}

/// Maps `file` (a snapshot memory file laid out like RAM) privately over every RAM region: pages
/// come from the file when first touched, and guest writes never reach it.
pub fn map_private_over_ram(
    ram: &GuestRam,
    file: &std::fs::File,
) -> Result<(), SnapshotEngineError> {
    use std::os::fd::AsRawFd;
    let mut offset = 0u64;
    for (_, size, host_addr) in ram.slots() {
        // SAFETY: replaces exactly this region of guest RAM (owned by `ram`, not yet in use by any
        // vCPU) with a private mapping of the same length.
        let mapped = unsafe {
            libc::mmap(
                host_addr as *mut libc::c_void,
                size as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_FIXED | libc::MAP_NORESERVE,
                file.as_raw_fd(),
                offset as i64,
            )
        };
        if mapped == libc::MAP_FAILED {
            return Err(SnapshotEngineError::Os {
                what: "mapping the snapshot memory file over guest RAM",
                source: std::io::Error::last_os_error(),
            });
        }
        offset += size;
    }
    Ok(())
}

/// Maps the snapshot memory MAP_PRIVATE over guest RAM at the same host addresses: KVM's memslots
/// keep pointing at them and its MMU notifiers drop the old translations.
fn remap_private(slots: &[RamSlot], memory: &SnapshotMemory) -> Result<(), SnapshotEngineError> {
    use std::os::fd::AsRawFd;
    for slot in slots {
        // SAFETY: replaces exactly the guest RAM mapping of this slot (owned by GuestRam, which
        // stays alive) with a private mapping of the same size of the snapshot file.
        let mapped = unsafe {
            libc::mmap(
                slot.host_addr as *mut libc::c_void,
                slot.size as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_FIXED | libc::MAP_NORESERVE,
                memory.file().as_raw_fd(),
                (slot.first_page * PAGE_SIZE) as i64,
            )
        };
        if mapped == libc::MAP_FAILED {
            return Err(SnapshotEngineError::Os {
                what: "mmap of the snapshot over guest RAM",
                source: std::io::Error::last_os_error(),
            });
        }
    }
    Ok(())
}

/// Drops the private copies of the dirty pages, so they read the snapshot's memory again.
fn drop_private_copies(layout: &RamLayout, dirty: &DirtyPages) -> Result<(), SnapshotEngineError> {
    for page in dirty.iter() {
        let Some(addr) = layout.host_addr_of_page(page) else {
            continue;
        };
        // SAFETY: `addr` is a page of the private guest RAM mapping; DONTNEED on a private file
        // mapping discards the page's private copy and nothing else.
        if unsafe { libc::madvise(addr as *mut libc::c_void, PAGE_SIZE, libc::MADV_DONTNEED) } != 0
        {
            return Err(SnapshotEngineError::Os {
                what: "madvise(MADV_DONTNEED)",
                source: std::io::Error::last_os_error(),
            });
        }
    }
    Ok(())
}
