//! The snapshot engine's KVM half: SAVE and RESTORE of a running VM.
//!
//! SAVE: finish the guest's MMIO write, capture vCPU, VM and device state, start dirty tracking,
//! and start the userfaultfd background capture of RAM; the guest runs on at once.
//! RESTORE: put back the pages written since (KVM dirty ring or log, plus the VMM's own writes),
//! make a shadow MMU (or with EPT/NPT the CPU's TLB) forget page tables it may have cached, then
//! the vCPU, the VM-wide state and the devices.
//!
//! By job: `ram_slots` (memslots and RAM mappings), `shadow_mmu` (when a restore must reset the
//! shadow MMU or flush the guest TLB), `guest_tlb` (the flush), `verify` (`--verify-restores`),
//! `stats` (counters). The engine never touches the snapshot device's registers: the `Machine`
//! reports each command's outcome to it.

pub mod guest_tlb;
pub mod ram_slots;
pub mod shadow_mmu;
pub mod stats;
pub mod verify;

use std::time::Instant;

use kvm_ioctls::{VcpuFd, VmFd};
use snapshot::vm_state::{VcpuState, VmState};
use snapshot::{
    restore_dirty_pages, CaptureOptions, CaptureScope, DirtyPages, RamCapture, SnapshotMemory,
};
use thiserror::Error;

use crate::device_manager::{DeviceManager, DeviceStates};
use crate::dirty_tracking::{DirtyTracker, DirtyTrackingError, DirtyTrackingMode};
use crate::known_zero_pages::RamBacking;
use crate::memory::GuestRam;
use crate::vstate::{
    capture_vcpu, capture_vm_wide, prepare_xsave, restore_clock, restore_interrupt_controllers,
    restore_lapic_if_changed, restore_vcpu_fast, restore_vcpu_full, VcpuStateLayout, VstateError,
};
use ram_slots::{RamSlots, RamSlotsError};
use shadow_mmu::{PageTableTree, ShadowMmuAction, ShadowMmuPolicy, TablePage};
pub use stats::EngineStats;
use verify::VerifyError;

#[derive(Debug, Error)]
pub enum EngineError {
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
    #[error("restoring RAM: {0}")]
    Restore(#[from] snapshot::RestoreError),
    #[error(transparent)]
    RamSlots(#[from] RamSlotsError),
    #[error("devices: {0}")]
    Devices(#[from] crate::device_manager::DeviceManagerError),
    #[error("restore verification failed: {0}")]
    Verification(#[from] VerifyError),
    #[error("KVM_RUN (completing the SAVE write) failed: {0}")]
    CompleteExit(kvm_ioctls::Error),
    #[error("there is no snapshot to restore")]
    NoSnapshot,
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
    /// After every restore, compare RAM, vCPU and device state with the snapshot.
    pub verify_restores: bool,
    /// With `verify_restores`: verify every this many restores (0 or 1: every one). A soak of a
    /// million restores verifies a sample; the guest's own checks cover the rest.
    pub verify_every: u64,
}

enum SnapshotRam {
    Capturing(RamCapture),
    Ready(SnapshotMemory),
}

/// Where a snapshot's memory came from, which decides whether the next SAVE may capture into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MemoryOrigin {
    /// A memfd this engine created at a SAVE: the next SAVE may update it in place.
    Captured,
    /// A snapshot file loaded from disk: read-only, never written.
    Loaded,
}

/// A snapshot held in memory.
struct Snapshot {
    vcpu: VcpuState,
    /// `vcpu.xsave` in the form KVM_SET_XSAVE2 takes, built once for the hot path.
    xsave: kvm_bindings::Xsave,
    vm: VmState,
    devices: DeviceStates,
    ram: SnapshotRam,
    origin: MemoryOrigin,
    page_tables: PageTableTree,
    /// Guest RAM is currently a private mapping of this snapshot's memory (remap strategy, or a
    /// resume from disk).
    remapped: bool,
}

/// The parts of a snapshot, for writing it to disk or exporting it.
pub struct SnapshotParts<'a> {
    pub vcpu: &'a VcpuState,
    pub vm: &'a VmState,
    pub devices: &'a DeviceStates,
    pub memory: &'a SnapshotMemory,
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
    slots: RamSlots,
    tracker: DirtyTracker,
    tracking_enabled: bool,
    dirty: DirtyPages,
    vcpu_layout: VcpuStateLayout,
    shadow: ShadowMmuPolicy,
    vmm_wrote_ram: bool,
    /// Guest RAM is a private mapping of some snapshot file rather than the shared RAM memfd.
    ram_private: bool,
    /// The next restore writes every piece of vCPU state (after a triple fault, say).
    force_full_restore: bool,
    snapshot: Option<Snapshot>,
    stats: EngineStats,
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
    ) -> Result<Self, EngineError> {
        let slots = RamSlots::new(ram)?;
        let total_pages = slots.layout().total_pages();
        let tracker = DirtyTracker::new(mode, vm_fd, vcpu, &slots.tracked(), total_pages)?;
        let vcpu_layout = VcpuStateLayout::probe(kvm, vm_fd, vcpu)?;
        crate::vstate::enable_sync_regs(vcpu);
        Ok(SnapshotEngine {
            options,
            dirty: DirtyPages::new(total_pages),
            slots,
            tracker,
            tracking_enabled: false,
            vcpu_layout,
            shadow: ShadowMmuPolicy::detect(),
            vmm_wrote_ram: false,
            ram_private: false,
            force_full_restore: false,
            snapshot: None,
            stats: EngineStats::default(),
        })
    }

    pub fn tracker_name(&self) -> &'static str {
        self.tracker.name()
    }

    pub fn shadow_mmu(&self) -> bool {
        self.shadow.shadow_mmu()
    }

    /// The file behind each RAM slot now: the RAM memfd, or the snapshot file RAM is privately
    /// mapped over (remap restores, resumes from disk); empty when that file is not at hand.
    pub fn ram_backings<'a>(&'a self, ram: &'a GuestRam) -> Vec<RamBacking<'a>> {
        let file = if self.ram_private {
            match self.snapshot.as_ref().map(|snapshot| &snapshot.ram) {
                Some(SnapshotRam::Ready(memory)) => memory.file(),
                _ => return Vec::new(),
            }
        } else {
            &ram.file
        };
        self.slots
            .spans()
            .map(|(guest_addr, live, file_offset)| RamBacking {
                guest_addr,
                len: live.len() as u64,
                host_addr: live.as_ptr() as u64,
                file,
                file_offset: file_offset as u64,
                private: self.ram_private,
            })
            .collect()
    }

    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    pub fn vcpu_layout(&self) -> &VcpuStateLayout {
        &self.vcpu_layout
    }

    pub fn has_snapshot(&self) -> bool {
        self.snapshot.is_some()
    }

    /// Whether the background RAM capture of the snapshot still runs.
    pub fn capture_running(&self) -> bool {
        matches!(
            &self.snapshot,
            Some(Snapshot { ram: SnapshotRam::Capturing(capture), .. }) if !capture.is_finished()
        )
    }

    /// Callers that write guest RAM after boot (through vm-memory, which records it in the
    /// AtomicBitmap) call this so the next restore also puts those pages back.
    pub fn note_vmm_ram_write(&mut self) {
        self.vmm_wrote_ram = true;
    }

    /// The next restore writes back every piece of vCPU state, whatever the shortcut rules say:
    /// for a vCPU left in a state they do not describe (a triple fault, an emulation failure).
    pub fn force_full_restore(&mut self) {
        self.force_full_restore = true;
    }

    /// Harvests the dirty ring when KVM says it is full.
    pub fn harvest(&mut self) -> Result<(), EngineError> {
        self.tracker.harvest(&mut self.dirty)?;
        Ok(())
    }

    /// Re-enters KVM_RUN without running the guest so that KVM finishes the MMIO write that
    /// exited: only then is RIP past the writing instruction (KVM's documented rule for
    /// KVM_EXIT_MMIO and KVM_EXIT_IO), and only then may vCPU state be read.
    pub fn complete_pending_exit(vcpu: &mut VcpuFd) -> Result<(), EngineError> {
        vcpu.set_kvm_immediate_exit(1);
        let result = vcpu.run().map(|_| ()).or_else(|e| {
            if e.errno() == libc::EINTR {
                Ok(())
            } else {
                Err(e)
            }
        });
        vcpu.set_kvm_immediate_exit(0);
        result.map_err(EngineError::CompleteExit)
    }

    /// SAVE: takes a snapshot of the whole VM at this point; the guest resumes right after its
    /// write to the COMMAND register.
    pub fn save(&mut self, vm: &mut VmParts) -> Result<(), EngineError> {
        let started = Instant::now();
        Self::complete_pending_exit(vm.vcpu)?;
        let vcpu_state = capture_vcpu(vm.vcpu, 0, &self.vcpu_layout)?;
        let vm_state = capture_vm_wide(vm.vm_fd)?;
        let devices = vm.devices.save_states();
        vm.devices.mark_saved();

        // A capture still running belongs to the snapshot being replaced: finish it, so that
        // its userfaultfd registration is gone before the new capture registers the same RAM.
        let previous = self.take_finished_snapshot()?;
        let previous = match previous {
            // RAM is a private mapping of memory this engine captured: it equals that memory
            // but for private copies of exactly the pages written since the last restore (the
            // guest's and KVM's writes are logged, the VMM's recorded). Writing those pages into
            // the memory makes it the new snapshot's: O(pages written), not O(RAM).
            Some(snapshot)
                if self.ram_private
                    && snapshot.remapped
                    && snapshot.origin == MemoryOrigin::Captured =>
            {
                return self.save_in_place(vm, snapshot, vcpu_state, vm_state, devices, started);
            }
            other => other,
        };
        if self.ram_private {
            // RAM over a file loaded from disk (read-only: never written): RAM becomes the shared
            // memfd again, with a copy of everything, and a full capture follows.
            self.slots.map_shared_again(vm.ram)?;
            self.ram_private = false;
        }
        if !self.tracking_enabled {
            self.slots.enable_dirty_logging(vm.vm_fd)?;
            self.tracking_enabled = true;
        }
        // Pages written since the previous snapshot (or restore): the scope of an incremental
        // capture into the previous snapshot's memory.
        self.tracker.harvest(&mut self.dirty)?;
        self.take_vmm_writes(vm.ram, true)?;

        // Only a memfd this engine captured into, which RAM equals but for the dirty pages, can
        // be updated in place; a remapped RAM was just copied back, a loaded file is read-only.
        let reusable = previous.filter(|snapshot| {
            self.options.strategy == RestoreStrategy::Dirty
                && snapshot.origin == MemoryOrigin::Captured
                && !snapshot.remapped
        });
        let (memory, scope) = match reusable {
            Some(Snapshot {
                ram: SnapshotRam::Ready(memory),
                ..
            }) => (memory, CaptureScope::Pages(&self.dirty)),
            _ => (
                SnapshotMemory::create(self.slots.layout().total_bytes())?,
                CaptureScope::AllPages,
            ),
        };
        let capture = RamCapture::start(
            self.slots.layout(),
            memory,
            scope,
            &CaptureOptions::default(),
        )?;
        self.stats.last_capture_stall = capture.stall();
        self.dirty.clear();
        let ram = SnapshotRam::Capturing(capture);
        self.install_snapshot(vm, vcpu_state, vm_state, devices, ram, false, started)
    }

    /// Makes the captured state the current snapshot (RAM captured or in capture) and counts
    /// the SAVE.
    #[allow(clippy::too_many_arguments)]
    fn install_snapshot(
        &mut self,
        vm: &VmParts,
        vcpu_state: VcpuState,
        vm_state: VmState,
        devices: DeviceStates,
        ram: SnapshotRam,
        remapped: bool,
        started: Instant,
    ) -> Result<(), EngineError> {
        let page_tables = self.shadow.record(&vcpu_state, vm.ram, &self.slots);
        self.snapshot = Some(Snapshot {
            xsave: prepare_xsave(&vcpu_state, &self.vcpu_layout)?,
            vcpu: vcpu_state,
            vm: vm_state,
            devices,
            ram,
            origin: MemoryOrigin::Captured,
            page_tables,
            remapped,
        });
        self.stats.saves += 1;
        self.stats.last_save_stall = started.elapsed();
        self.stats.first_save_done.get_or_insert_with(Instant::now);
        Ok(())
    }

    /// SAVE over a remapped RAM (see `save`): the previous snapshot's memory is brought up to
    /// date with the pages written since the last restore and becomes the new snapshot's.
    fn save_in_place(
        &mut self,
        vm: &mut VmParts,
        previous: Snapshot,
        vcpu_state: VcpuState,
        vm_state: VmState,
        devices: DeviceStates,
        started: Instant,
    ) -> Result<(), EngineError> {
        let SnapshotRam::Ready(memory) = previous.ram else {
            return Err(EngineError::NoSnapshot);
        };
        self.tracker.harvest(&mut self.dirty)?;
        self.take_vmm_writes(vm.ram, true)?;
        self.slots.write_pages_into(&memory, &self.dirty)?;
        self.stats.pages_saved_in_place += self.dirty.len() as u64;
        self.dirty.clear();
        self.stats.last_capture_stall = started.elapsed();
        let ram = SnapshotRam::Ready(memory);
        self.install_snapshot(vm, vcpu_state, vm_state, devices, ram, true, started)
    }

    /// Takes the current snapshot out, its RAM capture finished.
    fn take_finished_snapshot(&mut self) -> Result<Option<Snapshot>, EngineError> {
        self.finish_capture()?;
        Ok(self.snapshot.take())
    }

    /// Makes `state` (loaded from disk, or imported) the current snapshot and puts the vCPU, VM
    /// and devices in it. `memory`'s file must already be mapped privately over RAM
    /// (`RamSlots::map_private`), as a restore of the remap strategy leaves it. Restores then
    /// follow the strategy: remap drops the private copies of the pages written (each is read
    /// from the file again when next touched); dirty copies those pages back from the file into
    /// their private copies (no re-fault: about twice the executions per second for a fuzz
    /// target, `--jobs`), so the pages a machine ever wrote stay its own.
    pub fn adopt(
        &mut self,
        vm: &mut VmParts,
        vcpu_state: VcpuState,
        vm_state: VmState,
        devices: DeviceStates,
        memory: SnapshotMemory,
    ) -> Result<(), EngineError> {
        restore_interrupt_controllers(vm.vm_fd, &vm_state, false)?;
        restore_vcpu_full(vm.vcpu, &vcpu_state, &self.vcpu_layout)?;
        restore_clock(vm.vm_fd, &vm_state)?;
        vm.devices.restore_states(&devices)?;
        self.slots.enable_dirty_logging(vm.vm_fd)?;
        self.tracking_enabled = true;
        self.ram_private = true;
        let page_tables = self.shadow.record(&vcpu_state, vm.ram, &self.slots);
        self.snapshot = Some(Snapshot {
            xsave: prepare_xsave(&vcpu_state, &self.vcpu_layout)?,
            vcpu: vcpu_state,
            vm: vm_state,
            devices,
            ram: SnapshotRam::Ready(memory),
            origin: MemoryOrigin::Loaded,
            page_tables,
            remapped: self.options.strategy == RestoreStrategy::Remap,
        });
        Ok(())
    }

    /// Maps a snapshot memory file privately over guest RAM (before `adopt`).
    pub fn map_snapshot_file(&self, file: &std::fs::File) -> Result<(), EngineError> {
        Ok(self.slots.map_private(file)?)
    }

    /// The current snapshot, its RAM capture finished; `None` without one.
    pub fn snapshot(&mut self) -> Result<Option<SnapshotParts<'_>>, EngineError> {
        self.finish_capture()?;
        Ok(self
            .snapshot
            .as_ref()
            .and_then(|snapshot| match &snapshot.ram {
                SnapshotRam::Ready(memory) => Some(SnapshotParts {
                    vcpu: &snapshot.vcpu,
                    vm: &snapshot.vm,
                    devices: &snapshot.devices,
                    memory,
                }),
                SnapshotRam::Capturing(_) => None,
            }))
    }

    /// Waits for the running capture, if any.
    fn finish_capture(&mut self) -> Result<(), EngineError> {
        let Some(mut snapshot) = self.snapshot.take() else {
            return Ok(());
        };
        snapshot.ram = match snapshot.ram {
            SnapshotRam::Capturing(capture) => {
                // On failure the snapshot is dropped: its memory is incomplete.
                let (memory, report) = capture.finish_now()?;
                self.stats.last_capture_report = Some(report);
                SnapshotRam::Ready(memory)
            }
            ready => ready,
        };
        self.snapshot = Some(snapshot);
        Ok(())
    }

    /// RESTORE: rolls the VM back to the snapshot; the guest resumes right after its SAVE write.
    ///
    /// Unlike SAVE, RESTORE needs no completion run of KVM_RUN first: for an MMIO write that fits
    /// one fragment (COMMAND only acts on 4-byte writes) KVM retires the instruction before
    /// exiting, and completing it later only clears its bookkeeping, so it cannot undo the
    /// registers set here. That saves a vCPU ioctl (~6 us here) on every restore.
    pub fn restore(&mut self, vm: &mut VmParts) -> Result<(), EngineError> {
        let started = Instant::now();
        if matches!(
            &self.snapshot,
            Some(Snapshot {
                ram: SnapshotRam::Capturing(_),
                ..
            })
        ) {
            // The capture is still copying RAM into the snapshot memory this restore reads.
            self.stats.restores_during_capture += 1;
            self.finish_capture()?;
        }
        // KVM left the segment and control registers in kvm_run at this exit (SYNC_REGS).
        let sregs_now = vm.vcpu.sync_regs().sregs;
        let (full, flush_tlb) = self.restore_ram(vm, sregs_now.cr3)?;
        if flush_tlb {
            // Before the vCPU restore below, whose SREGS (the snapshot's CR3) complete it.
            guest_tlb::flush_guest_tlb(vm.vcpu, &sregs_now)?;
            self.stats.guest_tlb_flushes += 1;
        }
        let full = full || self.options.vcpu_restore == VcpuRestore::Full;
        let snapshot = self.snapshot.as_ref().ok_or(EngineError::NoSnapshot)?;
        let full = full || privileged_state_may_differ(&sregs_now, &snapshot.vcpu);
        restore_interrupt_controllers(vm.vm_fd, &snapshot.vm, !full)?;
        if full {
            restore_vcpu_full(vm.vcpu, &snapshot.vcpu, &self.vcpu_layout)?;
            self.stats.full_vcpu_restores += 1;
        } else {
            restore_vcpu_fast(vm.vcpu, &snapshot.vcpu, &snapshot.xsave)?;
            // A guest kernel may have run during the round (interrupts, system calls) and left
            // its LAPIC changed although the round ends at CPL3 in the snapshot's address space.
            if restore_lapic_if_changed(vm.vcpu, &snapshot.vcpu)? {
                self.stats.lapic_restores += 1;
            }
        }
        // The fast path leaves the TSC running; kvmclock goes with it so the guest's clocks stay
        // consistent. A full restore puts both back.
        if full {
            restore_clock(vm.vm_fd, &snapshot.vm)?;
        }
        vm.devices.restore_states(&snapshot.devices)?;
        self.stats.restores += 1;
        self.stats.restore_time += started.elapsed();
        if self.options.verify_restores
            && self
                .stats
                .restores
                .is_multiple_of(self.options.verify_every.max(1))
        {
            self.verify(vm)?;
        }
        Ok(())
    }

    /// Puts back every page written since the snapshot and brings a shadow MMU in line with the
    /// restored page tables (see `shadow_mmu`). Returns whether the vCPU must be restored in full,
    /// and whether the guest's TLB must be flushed (EPT/NPT).
    fn restore_ram(&mut self, vm: &mut VmParts, cr3_now: u64) -> Result<(bool, bool), EngineError> {
        self.tracker.harvest(&mut self.dirty)?;
        self.take_vmm_writes(vm.ram, false)?;
        let snapshot = self.snapshot.as_mut().ok_or(EngineError::NoSnapshot)?;
        let SnapshotRam::Ready(memory) = &snapshot.ram else {
            return Err(EngineError::NoSnapshot);
        };
        // Decided before the copy, which makes the tables equal to the snapshot's again.
        let slots = &self.slots;
        let shadow_action = self.shadow.plan(
            &snapshot.page_tables,
            snapshot.vcpu.sregs.cr3,
            cr3_now,
            &self.dirty,
            &mut |page| {
                Some((
                    table_words(slots.live_page(page)?),
                    table_words(memory.page(page)?),
                ))
            },
        );
        if snapshot.remapped {
            // RAM is a private mapping of the snapshot: dropping the copies restores them.
            self.slots.drop_private_copies(&self.dirty)?;
        } else if self.options.strategy == RestoreStrategy::Remap {
            self.slots.map_private(memory.file())?;
            snapshot.remapped = true;
            self.ram_private = true;
        } else {
            restore_dirty_pages(self.slots.layout(), memory, &self.dirty)?;
        }
        self.stats.pages_restored += self.dirty.len() as u64;
        self.dirty.clear();
        let flush_tlb = shadow_action == ShadowMmuAction::FlushGuestTlb;
        match shadow_action {
            ShadowMmuAction::Keep | ShadowMmuAction::FlushGuestTlb => {}
            ShadowMmuAction::Invalidate(ranges) => {
                for (gpa, len) in ranges {
                    self.slots.invalidate(gpa, len)?;
                }
                self.stats.shadow_mmu_invalidations += 1;
            }
            ShadowMmuAction::Reset => {
                // Entries in the dirty ring name slots: collect them before the slots go away;
                // the pages they name were restored above.
                self.tracker.harvest(&mut self.dirty)?;
                self.slots.recreate(vm.vm_fd)?;
                self.tracker.slots_recreated();
                self.dirty.clear();
                self.stats.shadow_mmu_resets += 1;
            }
        }
        Ok((std::mem::take(&mut self.force_full_restore), flush_tlb))
    }

    /// `--verify-restores`: compares RAM, vCPU state and device state with the snapshot.
    fn verify(&mut self, vm: &mut VmParts) -> Result<(), EngineError> {
        // Let KVM apply SYNC_REGS and finish the exit, without running the guest.
        Self::complete_pending_exit(vm.vcpu)?;
        let snapshot = self.snapshot.as_ref().ok_or(EngineError::NoSnapshot)?;
        let SnapshotRam::Ready(memory) = &snapshot.ram else {
            return Err(EngineError::NoSnapshot);
        };
        verify::verify_ram(&self.slots, memory)?;
        let now = capture_vcpu(vm.vcpu, 0, &self.vcpu_layout)?;
        verify::verify_state(
            &snapshot.vcpu,
            &now,
            &snapshot.devices,
            &vm.devices.save_states(),
        )?;
        self.stats.verified_restores += 1;
        Ok(())
    }

    /// Adds the VMM's own writes to guest RAM to the dirty set (or just clears the record).
    fn take_vmm_writes(&mut self, ram: &GuestRam, force: bool) -> Result<(), EngineError> {
        if !(force || self.vmm_wrote_ram) {
            return Ok(());
        }
        use vm_memory::GuestMemoryBackend;
        for (region, (first_page, pages)) in ram.memory.iter().zip(self.slots.page_ranges()) {
            self.dirty.take_atomic_bitmap(
                first_page,
                pages,
                std::ops::Deref::deref(region).bitmap(),
            )?;
        }
        self.vmm_wrote_ram = false;
        Ok(())
    }
}

/// A page of page-table entries as words.
fn table_words(page: &[u8]) -> TablePage {
    let mut words = [0u64; 512];
    for (word, bytes) in words.iter_mut().zip(page.chunks_exact(8)) {
        *word = u64::from_le_bytes(bytes.try_into().unwrap_or_default());
    }
    words
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
