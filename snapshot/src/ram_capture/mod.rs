//! Background capture of guest RAM into snapshot memory, with userfaultfd write protection.
//!
//! `RamCapture::start` write-protects the RAM in scope and returns at once: the guest runs on while
//! a copier thread copies pages into the snapshot memory and lifts their protection. A write to a page
//! not yet copied (from a vCPU through KVM's GUP, another thread, or the kernel) blocks in the kernel;
//! the fault-handler thread copies that page first, then unprotects it, which wakes the writer. The
//! copy therefore equals RAM as it was at `start`.
//!
//! Cost (measured without KVM, 2 cores, `benches/capture.rs`): the stall is dominated by
//! UFFDIO_WRITEPROTECT, about 20 ms per GiB of 4 KiB pages mapped in this process (~2 ms per GiB
//! never touched), 0.15-0.8 ms per GiB of transparent huge pages, and proportional to the page count
//! for `CaptureScope::Pages` (1000 pages: ~1.2-1.9 ms). A write that has to wait for its page costs
//! 10-60 us.
//!
//! Rules for users:
//! - nothing may write guest RAM while `start` runs (pause the vCPUs and device threads first);
//! - all writes to guest RAM must go through the registered mappings (not `pwrite` to the memfd, not
//!   another mapping of it): writes that bypass them are invisible to the capture;
//! - a `CaptureScope::Pages` capture updates an existing snapshot in place: `memory` must already hold
//!   the base snapshot, and the listed pages must include every page changed since that base.

mod claims;
mod holes;
mod uffd_setup;

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use thiserror::Error;
use userfaultfd::{Event, Uffd};
use vmm_sys_util::eventfd::EventFd;

use crate::dirty_pages::DirtyPages;
use crate::ram_layout::{RamLayout, RegionSpan, PAGE_SIZE};
use crate::snapshot_memory::SnapshotMemory;
use claims::{runs, PageClaims, PAGES_PER_WORD};
use holes::HoleMap;

/// `(host address, length in bytes)`.
type HostRange = (usize, usize);

/// Pages the copier takes at a time: 2 MiB, so unprotecting never splits a transparent huge page.
const WORDS_PER_UNIT: usize = 512 / PAGES_PER_WORD;

/// Why a capture could not start or did not produce an exact snapshot.
#[derive(Debug, Error)]
pub enum RamCaptureError {
    #[error("snapshot memory is {memory:#x} bytes but guest RAM is {ram:#x} bytes")]
    SizeMismatch { memory: usize, ram: usize },
    #[error("capture scope covers {scope} pages but guest RAM has {ram}")]
    ScopeMismatch { scope: usize, ram: usize },
    #[error(
        "creating the userfaultfd failed (needs CAP_SYS_PTRACE when vm.unprivileged_userfaultfd=0)"
    )]
    CreateUffd(#[source] io::Error),
    #[error("the kernel's userfaultfd lacks {0}")]
    MissingFeature(&'static str),
    #[error("registering guest RAM at {addr:#x} with userfaultfd failed")]
    Register {
        addr: usize,
        source: userfaultfd::Error,
    },
    #[error("write-protecting guest RAM at {addr:#x} failed")]
    WriteProtect {
        addr: usize,
        source: userfaultfd::Error,
    },
    #[error("duplicating the snapshot memory file failed")]
    SnapshotFile(#[source] io::Error),
    #[error("creating the stop eventfd failed")]
    EventFd(#[source] io::Error),
    #[error("starting a capture thread failed")]
    Spawn(#[source] io::Error),
    #[error("capture failed: {0}")]
    Failed(String),
    #[error("capture was aborted")]
    Aborted,
}

/// Which pages to capture.
#[derive(Debug, Clone, Copy)]
pub enum CaptureScope<'a> {
    /// All of guest RAM (a first snapshot).
    AllPages,
    /// Only these pages; `memory` already holds the rest (a new snapshot on top of the previous one,
    /// given every page dirtied since it). Write protection is then proportional to the set.
    Pages(&'a DirtyPages),
}

/// Tuning knobs; the defaults are what the measurements favour.
#[derive(Debug, Clone)]
pub struct CaptureOptions {
    /// At or above this much RAM in scope, write protection may be split between the calling thread
    /// and the copier thread. It is split only if protecting the first sixteenth shows that the rest
    /// would take at least `parallel_protect_min_estimate`. Off by default: on the 2-core machines
    /// measured, two threads protecting 1 GiB of 4 KiB pages took 21 ms against 20 ms for one (the
    /// kernel work does not scale), so the option exists for larger hosts.
    pub parallel_protect_min_bytes: usize,
    pub parallel_protect_min_estimate: Duration,
    /// Copy pages on a background thread (the default). Without it pages are copied only when
    /// something writes them, and by `wait`/`finish_now` on the calling thread: no copier competes
    /// with the vCPU for a core, at the price of a longer `finish_now`.
    pub copy_in_background: bool,
}

impl Default for CaptureOptions {
    fn default() -> Self {
        CaptureOptions {
            parallel_protect_min_bytes: usize::MAX,
            parallel_protect_min_estimate: Duration::from_millis(2),
            copy_in_background: true,
        }
    }
}

/// A snapshot of how far a running capture is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaptureProgress {
    pub pages_done: usize,
    pub pages_total: usize,
    /// Write-protect faults read by the handler (guest or host writes that had to wait).
    pub write_faults: usize,
}

impl CaptureProgress {
    pub fn is_finished(&self) -> bool {
        self.pages_done >= self.pages_total
    }
}

/// What a finished capture measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaptureReport {
    /// How long `start` blocked its caller (the SAVE stall, apart from vCPU/device state capture).
    pub stall: Duration,
    /// From the start of `start` to the last page copied.
    pub duration: Duration,
    pub pages_in_scope: usize,
    /// Pages copied by the fault handler because something wrote them before the copier got there.
    pub pages_copied_on_fault: usize,
    pub write_faults: usize,
}

/// Work shared by the calling thread, the copier thread and the fault-handler thread.
struct CaptureWork {
    layout: RamLayout,
    uffd: Uffd,
    claims: PageClaims,
    snapshot: File,
    /// The snapshot file holds only holes, so zero pages need not be written or punched.
    snapshot_all_holes: bool,
    /// Whether to look up holes in the RAM's backing files (whole-RAM captures of memfd RAM).
    skip_backing_holes: bool,
    /// Built by the first thread that copies; None if the files could not be walked.
    holes: OnceLock<Option<HoleMap>>,
    next_unit: AtomicUsize,
    units: usize,
    pages_in_scope: usize,
    pages_done: AtomicUsize,
    pages_copied_on_fault: AtomicUsize,
    write_faults: AtomicUsize,
    abort: AtomicBool,
    failure: Mutex<Option<String>>,
    progress: Mutex<()>,
    progress_changed: Condvar,
}

/// A running background capture. Finish it with `wait` or `finish_now`; dropping it aborts.
pub struct RamCapture {
    work: Arc<CaptureWork>,
    memory: Option<SnapshotMemory>,
    copier: Option<JoinHandle<()>>,
    fault_handler: Option<JoinHandle<()>>,
    stop_handler: EventFd,
    started_at: Instant,
    stall: Duration,
}

impl RamCapture {
    /// Write-protects the RAM in scope and starts copying it into `memory` in the background. Returns
    /// once the guest may run again.
    pub fn start(
        layout: &RamLayout,
        memory: SnapshotMemory,
        scope: CaptureScope<'_>,
        options: &CaptureOptions,
    ) -> Result<RamCapture, RamCaptureError> {
        let started_at = Instant::now();
        if memory.len() != layout.total_bytes() {
            return Err(RamCaptureError::SizeMismatch {
                memory: memory.len(),
                ram: layout.total_bytes(),
            });
        }
        let total_pages = layout.total_pages();
        let claims = match scope {
            CaptureScope::AllPages => PageClaims::all_unclaimed(total_pages),
            CaptureScope::Pages(pages) => {
                if pages.total_pages() != total_pages {
                    return Err(RamCaptureError::ScopeMismatch {
                        scope: pages.total_pages(),
                        ram: total_pages,
                    });
                }
                PageClaims::only(total_pages, pages.iter())
            }
        };
        let pages_in_scope = claims.unclaimed();
        let uffd = create_uffd(layout)?;
        for region in layout.regions() {
            uffd.register_with_mode(
                region.host_addr() as *mut libc::c_void,
                region.len(),
                userfaultfd::RegisterMode::WRITE_PROTECT,
            )
            .map_err(|source| RamCaptureError::Register {
                addr: region.host_addr(),
                source,
            })?;
        }
        let snapshot = memory
            .file()
            .try_clone()
            .map_err(RamCaptureError::SnapshotFile)?;
        let work = Arc::new(CaptureWork {
            layout: layout.clone(),
            uffd,
            units: claims.words().div_ceil(WORDS_PER_UNIT),
            claims,
            snapshot,
            snapshot_all_holes: memory.is_all_holes(),
            skip_backing_holes: matches!(scope, CaptureScope::AllPages)
                && layout
                    .regions()
                    .iter()
                    .any(|region| region.backing_file().is_some()),
            holes: OnceLock::new(),
            next_unit: AtomicUsize::new(0),
            pages_in_scope,
            pages_done: AtomicUsize::new(0),
            pages_copied_on_fault: AtomicUsize::new(0),
            write_faults: AtomicUsize::new(0),
            abort: AtomicBool::new(false),
            failure: Mutex::new(None),
            progress: Mutex::new(()),
            progress_changed: Condvar::new(),
        });
        let stop_handler = EventFd::new(libc::EFD_NONBLOCK).map_err(RamCaptureError::EventFd)?;
        let mut capture = RamCapture {
            work: Arc::clone(&work),
            memory: Some(memory),
            copier: None,
            fault_handler: None,
            stop_handler,
            started_at,
            stall: Duration::ZERO,
        };
        // From here on, dropping `capture` on an error stops the threads and unregisters the RAM.
        let handler_stop = capture
            .stop_handler
            .try_clone()
            .map_err(RamCaptureError::EventFd)?;
        let handler_work = Arc::clone(&work);
        capture.fault_handler = Some(
            std::thread::Builder::new()
                .name("snapshot-faults".into())
                .spawn(move || handler_work.serve_faults(handler_stop.as_raw_fd()))
                .map_err(RamCaptureError::Spawn)?,
        );
        capture.protect_and_spawn_copier(scope, options)?;
        capture.stall = started_at.elapsed();
        Ok(capture)
    }

    /// Write-protects the scope, splitting whole-RAM protection with the copier thread when large.
    fn protect_and_spawn_copier(
        &mut self,
        scope: CaptureScope<'_>,
        options: &CaptureOptions,
    ) -> Result<(), RamCaptureError> {
        let work = Arc::clone(&self.work);
        let ranges: Vec<(usize, usize)> = match scope {
            CaptureScope::AllPages => work
                .layout
                .regions()
                .iter()
                .map(|r| (r.host_addr(), r.len()))
                .collect(),
            CaptureScope::Pages(pages) => {
                let mut sorted: Vec<usize> = pages.iter().collect();
                sorted.sort_unstable();
                coalesce(&sorted)
                    .flat_map(|(first, count)| work.layout.spans(first, count).collect::<Vec<_>>())
                    .map(|span| (span.host_addr, span.pages * PAGE_SIZE))
                    .collect()
            }
        };
        let bytes: usize = ranges.iter().map(|&(_, len)| len).sum();
        if !options.copy_in_background {
            work.write_protect(&ranges)
        } else if bytes < options.parallel_protect_min_bytes {
            work.write_protect(&ranges)?;
            self.spawn_copier(None, Vec::new())
        } else {
            // Protect a sixteenth first and time it: on huge-page RAM the whole job is cheaper than
            // handing half of it to another thread.
            let (probe, rest) = split_ranges(&ranges, bytes / 16);
            let probe_started = Instant::now();
            work.write_protect(&probe)?;
            if probe_started.elapsed() * 15 < options.parallel_protect_min_estimate {
                work.write_protect(&rest)?;
                return self.spawn_copier(None, Vec::new());
            }
            let rest_bytes: usize = rest.iter().map(|&(_, len)| len).sum();
            let (mine, theirs) = split_ranges(&rest, rest_bytes / 2);
            let barrier = Arc::new(Barrier::new(2));
            self.spawn_copier(Some(Arc::clone(&barrier)), theirs)?;
            let result = work.write_protect(&mine);
            if result.is_err() {
                work.abort.store(true, Ordering::SeqCst);
            }
            // The copier starts copying only after both halves are protected: a page copied and then
            // protected again would never be unprotected.
            barrier.wait();
            result?;
            work.take_failure()
                .map_or(Ok(()), |why| Err(RamCaptureError::Failed(why)))
        }
    }

    fn spawn_copier(
        &mut self,
        barrier: Option<Arc<Barrier>>,
        to_protect: Vec<(usize, usize)>,
    ) -> Result<(), RamCaptureError> {
        let work = Arc::clone(&self.work);
        let copier = std::thread::Builder::new()
            .name("snapshot-copier".into())
            .spawn(move || {
                if let Some(barrier) = barrier {
                    if let Err(err) = work.write_protect(&to_protect) {
                        work.record_failure(err.to_string());
                        work.abort.store(true, Ordering::SeqCst);
                    }
                    barrier.wait();
                }
                work.copy_units();
            })
            .map_err(RamCaptureError::Spawn)?;
        self.copier = Some(copier);
        Ok(())
    }

    /// How long `start` blocked its caller.
    pub fn stall(&self) -> Duration {
        self.stall
    }

    pub fn progress(&self) -> CaptureProgress {
        CaptureProgress {
            pages_done: self.work.pages_done.load(Ordering::Acquire),
            pages_total: self.work.pages_in_scope,
            write_faults: self.work.write_faults.load(Ordering::Relaxed),
        }
    }

    pub fn is_finished(&self) -> bool {
        self.progress().is_finished()
    }

    /// Waits for the background copy to complete and returns the snapshot memory. Without a background
    /// copier this copies on the calling thread, like `finish_now`.
    pub fn wait(mut self) -> Result<(SnapshotMemory, CaptureReport), RamCaptureError> {
        if self.copier.is_none() {
            self.work.copy_units();
        }
        self.complete()
    }

    /// Completes the capture now, copying on the calling thread too (for a RESTORE that arrives while
    /// the capture runs). The result is as exact as `wait`'s.
    pub fn finish_now(mut self) -> Result<(SnapshotMemory, CaptureReport), RamCaptureError> {
        self.work.copy_units();
        self.complete()
    }

    /// Stops the capture and releases guest RAM; the snapshot memory it returns is incomplete.
    pub fn abort(mut self) -> Result<SnapshotMemory, RamCaptureError> {
        self.shut_down();
        let mut memory = self.memory.take().ok_or(RamCaptureError::Aborted)?;
        memory.mark_written();
        Ok(memory)
    }

    fn complete(&mut self) -> Result<(SnapshotMemory, CaptureReport), RamCaptureError> {
        if let Some(copier) = self.copier.take() {
            if copier.join().is_err() {
                self.work
                    .record_failure("the copier thread panicked".into());
            }
        }
        // Normally nothing is left; if the copier died, this finishes its work.
        self.work.copy_units();
        self.work.wait_until_done();
        let duration = self.started_at.elapsed();
        self.shut_down();
        if let Some(why) = self.work.take_failure() {
            return Err(RamCaptureError::Failed(why));
        }
        if self.work.abort.load(Ordering::SeqCst) {
            return Err(RamCaptureError::Aborted);
        }
        let mut memory = self.memory.take().ok_or(RamCaptureError::Aborted)?;
        memory.mark_written();
        let report = CaptureReport {
            stall: self.stall,
            duration,
            pages_in_scope: self.work.pages_in_scope,
            pages_copied_on_fault: self.work.pages_copied_on_fault.load(Ordering::Relaxed),
            write_faults: self.work.write_faults.load(Ordering::Relaxed),
        };
        Ok((memory, report))
    }

    /// Stops both threads and unregisters guest RAM; any writer still waiting is released.
    fn shut_down(&mut self) {
        let unfinished = !self.work.is_done();
        if unfinished {
            self.work.abort.store(true, Ordering::SeqCst);
            self.work.progress_changed.notify_all();
        }
        if let Some(copier) = self.copier.take() {
            let _ = copier.join();
        }
        if self.fault_handler.is_some() {
            if let Err(err) = self.stop_handler.write(1) {
                self.work
                    .record_failure(format!("stopping the fault handler: {err}"));
            }
        }
        if let Some(handler) = self.fault_handler.take() {
            if handler.join().is_err() {
                self.work
                    .record_failure("the fault-handler thread panicked".into());
            }
        }
        // Unregistering drops all protection and wakes every waiter; after an abort that lets writers
        // through without a copy, which is what an abort means.
        for region in self.work.layout.regions() {
            if let Err(err) = self
                .work
                .uffd
                .unregister(region.host_addr() as *mut libc::c_void, region.len())
            {
                self.work
                    .record_failure(format!("unregistering guest RAM: {err}"));
            }
        }
    }
}

impl Drop for RamCapture {
    fn drop(&mut self) {
        if self.memory.is_some() {
            self.shut_down();
        }
    }
}

fn create_uffd(layout: &RamLayout) -> Result<Uffd, RamCaptureError> {
    let supported = uffd_setup::supported_features().map_err(RamCaptureError::CreateUffd)?;
    let mut wanted = uffd_setup::FEATURE_PAGEFAULT_FLAG_WP;
    if supported & wanted == 0 {
        return Err(RamCaptureError::MissingFeature("write-protect faults"));
    }
    if layout.regions().iter().any(|r| r.backing_file().is_some()) {
        if supported & uffd_setup::FEATURE_WP_HUGETLBFS_SHMEM == 0 {
            return Err(RamCaptureError::MissingFeature(
                "write protection of shared memory",
            ));
        }
        wanted |= uffd_setup::FEATURE_WP_HUGETLBFS_SHMEM;
    }
    // Anonymous RAM: without WP_UNPOPULATED a never-touched page stays unprotected, and the copier
    // could read it after the guest filled it.
    if layout.regions().iter().any(|r| r.backing_file().is_none()) {
        if supported & uffd_setup::FEATURE_WP_UNPOPULATED == 0 {
            return Err(RamCaptureError::MissingFeature(
                "WP_UNPOPULATED (needed for anonymous RAM)",
            ));
        }
        wanted |= uffd_setup::FEATURE_WP_UNPOPULATED;
    }
    uffd_setup::create(wanted).map_err(RamCaptureError::CreateUffd)
}

/// Runs `(first, count)` of consecutive pages in a sorted list.
fn coalesce(sorted: &[usize]) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut index = 0;
    std::iter::from_fn(move || {
        let first = *sorted.get(index)?;
        let mut count = 1;
        index += 1;
        while let Some(&next) = sorted.get(index) {
            if next == first + count {
                count += 1;
            } else if next >= first + count {
                break;
            }
            index += 1;
        }
        Some((first, count))
    })
}

/// Splits address ranges into two lists, the first holding about `first_bytes` (page aligned).
fn split_ranges(ranges: &[(usize, usize)], first_bytes: usize) -> (Vec<HostRange>, Vec<HostRange>) {
    let mut first = Vec::new();
    let mut second = Vec::new();
    let mut left = first_bytes / PAGE_SIZE * PAGE_SIZE;
    for &(addr, len) in ranges {
        if left >= len {
            first.push((addr, len));
            left -= len;
        } else if left > 0 {
            first.push((addr, left));
            second.push((addr + left, len - left));
            left = 0;
        } else {
            second.push((addr, len));
        }
    }
    (first, second)
}

impl CaptureWork {
    fn write_protect(&self, ranges: &[(usize, usize)]) -> Result<(), RamCaptureError> {
        for &(addr, len) in ranges {
            self.uffd
                .write_protect(addr as *mut libc::c_void, len)
                .map_err(|source| RamCaptureError::WriteProtect { addr, source })?;
        }
        Ok(())
    }

    fn is_done(&self) -> bool {
        self.pages_done.load(Ordering::Acquire) >= self.pages_in_scope
    }

    fn lock_progress(&self) -> MutexGuard<'_, ()> {
        self.progress.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wait_until_done(&self) {
        let mut guard = self.lock_progress();
        while !self.is_done() && !self.abort.load(Ordering::SeqCst) {
            guard = self
                .progress_changed
                .wait(guard)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn record_failure(&self, why: String) {
        let mut failure = self.failure.lock().unwrap_or_else(PoisonError::into_inner);
        failure.get_or_insert(why);
    }

    fn take_failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    fn add_done(&self, pages: usize) {
        let done = self.pages_done.fetch_add(pages, Ordering::AcqRel) + pages;
        if done >= self.pages_in_scope {
            let _guard = self.lock_progress();
            self.progress_changed.notify_all();
        }
    }

    /// Takes 2 MiB units until none are left; several threads may run this at once.
    fn copy_units(&self) {
        let mut masks = [0u64; WORDS_PER_UNIT];
        while !self.abort.load(Ordering::Relaxed) {
            let unit = self.next_unit.fetch_add(1, Ordering::Relaxed);
            if unit >= self.units {
                break;
            }
            let first_word = unit * WORDS_PER_UNIT;
            let words = WORDS_PER_UNIT.min(self.claims.words() - first_word);
            for (offset, mask) in masks.iter_mut().enumerate().take(words) {
                *mask = self.claims.claim_word(first_word + offset);
            }
            for (first_page, pages) in runs(first_word * PAGES_PER_WORD, &masks[..words]) {
                for span in self.layout.spans(first_page, pages) {
                    self.copy_and_release(span, true);
                }
            }
        }
    }

    /// Copies pages this thread claimed, then lifts their protection (waking any writer).
    fn copy_and_release(&self, span: RegionSpan, skip_holes: bool) {
        if let Err(err) = self.copy_span(span, skip_holes) {
            self.record_failure(format!(
                "copying {} pages at page {}: {err}",
                span.pages, span.first_page
            ));
        }
        // Unprotect even after a failed copy, or the writer would wait forever; the failure is reported.
        if let Err(err) = self.uffd.remove_write_protection(
            span.host_addr as *mut libc::c_void,
            span.pages * PAGE_SIZE,
            true,
        ) {
            self.record_failure(format!("unprotecting page {}: {err}", span.first_page));
        }
        self.add_done(span.pages);
    }

    fn copy_span(&self, span: RegionSpan, skip_holes: bool) -> io::Result<()> {
        let holes = if skip_holes && self.skip_backing_holes {
            self.holes
                .get_or_init(|| HoleMap::build(&self.layout).ok())
                .as_ref()
        } else {
            None
        };
        let Some(holes) = holes else {
            return self.copy_bytes(
                span.host_addr,
                (span.first_page * PAGE_SIZE) as u64,
                span.pages * PAGE_SIZE,
            );
        };
        for (first_page, pages, is_hole) in holes.runs(span.first_page, span.pages) {
            let snapshot_offset = (first_page * PAGE_SIZE) as u64;
            let len = pages * PAGE_SIZE;
            if !is_hole {
                let host_addr = span.host_addr + (first_page - span.first_page) * PAGE_SIZE;
                self.copy_bytes(host_addr, snapshot_offset, len)?;
            } else if !self.snapshot_all_holes {
                punch_hole(&self.snapshot, snapshot_offset, len as u64)?;
            }
        }
        Ok(())
    }

    fn copy_bytes(&self, host_addr: usize, snapshot_offset: u64, len: usize) -> io::Result<()> {
        let mut done = 0usize;
        while done < len {
            let offset =
                libc::off_t::try_from(snapshot_offset + done as u64).map_err(io::Error::other)?;
            // SAFETY: the source range lies inside a registered guest RAM mapping that the layout's
            // owner keeps mapped while the capture runs; the pages are write-protected and claimed by
            // this thread, so nothing changes them during the copy. No Rust reference to guest memory
            // is created.
            let written = unsafe {
                libc::pwrite(
                    self.snapshot.as_raw_fd(),
                    (host_addr + done) as *const libc::c_void,
                    len - done,
                    offset,
                )
            };
            if written < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            if written == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "snapshot write returned 0",
                ));
            }
            done += written as usize;
        }
        Ok(())
    }

    /// The fault-handler thread: serves write-protect faults until `stop_fd` is signalled.
    fn serve_faults(&self, stop_fd: RawFd) {
        let mut fds = [
            libc::pollfd {
                fd: self.uffd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop_fd,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        loop {
            // SAFETY: `fds` is a valid array of two pollfd structs that outlives the call.
            let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
            if ready < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                self.record_failure(format!("polling the userfaultfd: {err}"));
                return;
            }
            if fds[1].revents != 0 {
                return;
            }
            loop {
                match self.uffd.read_event() {
                    Ok(Some(Event::Pagefault { addr, .. })) => self.serve_fault(addr as usize),
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(err) => {
                        self.record_failure(format!("reading a userfaultfd event: {err}"));
                        return;
                    }
                }
            }
        }
    }

    fn serve_fault(&self, addr: usize) {
        self.write_faults.fetch_add(1, Ordering::Relaxed);
        let Some(page) = self.layout.page_of_host_addr(addr) else {
            self.record_failure(format!("write fault outside guest RAM at {addr:#x}"));
            return;
        };
        // Lost the claim: the copier has the page and its unprotect wakes this writer.
        if !self.claims.claim_page(page) {
            return;
        }
        self.pages_copied_on_fault.fetch_add(1, Ordering::Relaxed);
        if let Some(span) = self.layout.spans(page, 1).next() {
            // One page: the writer is waiting, so skip the hole lookup.
            self.copy_and_release(span, false);
        }
    }
}

fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let offset = libc::off_t::try_from(offset).map_err(io::Error::other)?;
    let len = libc::off_t::try_from(len).map_err(io::Error::other)?;
    // SAFETY: fallocate on a descriptor we own; no memory is passed.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests;
