//! Exactness tests: writers change RAM while the capture runs; the capture must equal RAM as it was
//! at `start`, and every write must land.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use super::*;
use crate::ram_layout::HostRamRegion;
use crate::snapshot_memory::FileMapping;

/// Guest RAM for tests: a memfd mapped shared (as the VMM does), or anonymous memory.
struct TestRam {
    mapping: Option<FileMapping>,
    anon: Option<(*mut u8, usize)>,
    file: Option<Arc<File>>,
    len: usize,
}

// SAFETY: the test RAM is plain memory shared between test threads on purpose.
unsafe impl Send for TestRam {}
// SAFETY: as above.
unsafe impl Sync for TestRam {}

impl TestRam {
    fn memfd(pages: usize) -> TestRam {
        // SAFETY: valid name; result checked.
        let fd = unsafe { libc::memfd_create(c"test-guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: fresh fd owned by nobody else.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len((pages * PAGE_SIZE) as u64).unwrap();
        let mapping = FileMapping::new(
            &file,
            pages * PAGE_SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
        )
        .unwrap();
        TestRam {
            mapping: Some(mapping),
            anon: None,
            file: Some(Arc::new(file)),
            len: pages * PAGE_SIZE,
        }
    }

    fn anonymous(pages: usize) -> TestRam {
        let len = pages * PAGE_SIZE;
        // SAFETY: fresh anonymous mapping; checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED);
        TestRam {
            mapping: None,
            anon: Some((ptr.cast(), len)),
            file: None,
            len,
        }
    }

    fn base(&self) -> *mut u8 {
        match (&self.mapping, self.anon) {
            (Some(mapping), _) => mapping.as_ptr(),
            (None, Some((ptr, _))) => ptr,
            (None, None) => unreachable!("test RAM has a mapping"),
        }
    }

    fn pages(&self) -> usize {
        self.len / PAGE_SIZE
    }

    /// One region over the whole RAM, or several equal ones.
    fn layout(&self, regions: usize) -> RamLayout {
        let pages_each = self.pages() / regions;
        let regions = (0..regions)
            .map(|index| {
                let offset = index * pages_each * PAGE_SIZE;
                // SAFETY: inside this RAM's mapping, which outlives every capture in these tests.
                let region =
                    unsafe { HostRamRegion::new(self.base().add(offset), pages_each * PAGE_SIZE) }
                        .unwrap();
                match &self.file {
                    Some(file) => region
                        .with_backing_file(Arc::clone(file), offset as u64)
                        .unwrap(),
                    None => region,
                }
            })
            .collect();
        RamLayout::new(regions).unwrap()
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is `len` bytes; read only while no writer runs (tests join them first).
        unsafe { std::slice::from_raw_parts(self.base(), self.len) }
    }

    fn write_u64(&self, page: usize, slot: usize, value: u64) {
        // SAFETY: `page` < pages and `slot` < 512, so the 8-byte store is inside the mapping.
        unsafe { (self.base().add(page * PAGE_SIZE + slot * 8) as *mut u64).write_volatile(value) };
    }

    /// Fills every page except those where `is_hole(page)` with a page-specific pattern.
    fn fill(&self, seed: u64, is_hole: impl Fn(usize) -> bool) {
        for page in (0..self.pages()).filter(|&page| !is_hole(page)) {
            for slot in 0..PAGE_SIZE / 8 {
                self.write_u64(page, slot, mix(seed ^ ((page as u64) << 16) ^ slot as u64));
            }
        }
    }
}

impl Drop for TestRam {
    fn drop(&mut self) {
        if let Some((ptr, len)) = self.anon {
            // SAFETY: unmaps the anonymous mapping created in `anonymous`.
            unsafe { libc::munmap(ptr.cast(), len) };
        }
    }
}

/// Panics with the pages where the capture differs from the reference.
fn assert_same_pages(captured: &[u8], reference: &[u8], what: &str) {
    if captured == reference {
        return;
    }
    let differing: Vec<usize> = (0..reference.len() / PAGE_SIZE)
        .filter(|&page| {
            captured[page * PAGE_SIZE..(page + 1) * PAGE_SIZE]
                != reference[page * PAGE_SIZE..(page + 1) * PAGE_SIZE]
        })
        .collect();
    panic!(
        "{what}: {} pages differ, first {:?}",
        differing.len(),
        &differing[..differing.len().min(10)]
    );
}

fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// A writer thread that stores distinct values at random pages until told to stop; returns the last
/// value it wrote at each (page, slot). Writers with seeds of different parity use disjoint slots.
fn spawn_writer(
    ram: Arc<TestRam>,
    seed: u64,
    stop: Arc<AtomicBool>,
    writes: Arc<AtomicUsize>,
) -> std::thread::JoinHandle<HashMap<(usize, usize), u64>> {
    std::thread::spawn(move || {
        let mut last = HashMap::new();
        let mut state = seed;
        let mut counter = 0u64;
        while !stop.load(Ordering::Relaxed) || counter < 200 {
            state = mix(state.wrapping_add(1));
            let page = (state % ram.pages() as u64) as usize;
            let slot = (((state >> 32) % 256) * 2 + seed % 2) as usize;
            counter += 1;
            let value = mix(seed ^ counter) | 1;
            ram.write_u64(page, slot, value);
            last.insert((page, slot), value);
            writes.fetch_add(1, Ordering::Relaxed);
        }
        last
    })
}

/// Starts a capture of `ram`, lets writers hammer it, finishes with `wait` or `finish_now`, and checks
/// the capture against the reference copy and the writes against RAM.
fn capture_under_writers(
    ram: Arc<TestRam>,
    regions: usize,
    finish_now: bool,
    options: &CaptureOptions,
) -> CaptureReport {
    let layout = ram.layout(regions);
    let reference = ram.bytes().to_vec();
    let memory = SnapshotMemory::create(layout.total_bytes()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicUsize::new(0));
    let capture = RamCapture::start(&layout, memory, CaptureScope::AllPages, options).unwrap();
    assert!(capture.stall() > Duration::ZERO);
    let writers: Vec<_> = (0..2)
        .map(|i| {
            spawn_writer(
                Arc::clone(&ram),
                0x1234 + i,
                Arc::clone(&stop),
                Arc::clone(&writes),
            )
        })
        .collect();
    // Let the writers race the copier for a while before finishing.
    while writes.load(Ordering::Relaxed) < 2000 {
        std::thread::yield_now();
    }
    let (memory, report) = if finish_now {
        capture.finish_now()
    } else {
        capture.wait()
    }
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    let mut last = HashMap::new();
    for writer in writers {
        last.extend(writer.join().unwrap());
    }
    assert_eq!(report.pages_in_scope, layout.total_pages());
    assert_same_pages(
        memory.as_slice(),
        &reference,
        "capture differs from RAM at start",
    );
    for (&(page, slot), &value) in &last {
        // SAFETY: the writers are joined, nothing else writes RAM.
        let now =
            unsafe { (ram.base().add(page * PAGE_SIZE + slot * 8) as *const u64).read_volatile() };
        assert_eq!(now, value, "write to page {page} slot {slot} was lost");
    }
    report
}

#[test]
fn memfd_capture_is_exact_under_concurrent_writers() {
    let ram = Arc::new(TestRam::memfd(4096));
    ram.fill(1, |page| page % 7 == 3); // some holes, which capture skips
    capture_under_writers(ram, 1, false, &CaptureOptions::default());
}

#[test]
fn writes_before_the_copy_are_served_by_the_fault_handler() {
    // Without a background copier every page the writers touch goes through the fault path.
    let ram = Arc::new(TestRam::memfd(4096));
    ram.fill(11, |page| page % 5 == 1);
    let options = CaptureOptions {
        copy_in_background: false,
        ..CaptureOptions::default()
    };
    let report = capture_under_writers(ram, 1, false, &options);
    assert!(
        report.write_faults > 0 && report.pages_copied_on_fault > 0,
        "{report:?}"
    );
}

#[test]
fn capture_finish_now_is_exact() {
    let ram = Arc::new(TestRam::memfd(8192));
    ram.fill(2, |_| false);
    capture_under_writers(ram, 1, true, &CaptureOptions::default());
}

#[test]
fn anonymous_ram_with_untouched_pages_is_exact() {
    let ram = Arc::new(TestRam::anonymous(4096));
    ram.fill(3, |page| page % 3 == 0); // never-touched pages need WP_UNPOPULATED
    capture_under_writers(ram, 1, false, &CaptureOptions::default());
}

#[test]
fn split_protection_and_several_regions_are_exact() {
    let ram = Arc::new(TestRam::memfd(3 * 1430));
    ram.fill(4, |page| page % 11 == 0);
    let options = CaptureOptions {
        parallel_protect_min_bytes: 0,
        parallel_protect_min_estimate: Duration::ZERO,
        ..CaptureOptions::default()
    };
    capture_under_writers(ram, 3, false, &options);
}

#[test]
fn kernel_writes_wait_for_the_copy() {
    // Writes done by the kernel on our behalf: copy_to_user from read(2), and GUP from
    // process_vm_writev (the path KVM takes when a vCPU writes guest RAM).
    let ram = Arc::new(TestRam::memfd(2048));
    ram.fill(5, |_| false);
    let layout = ram.layout(1);
    let reference = ram.bytes().to_vec();
    let memory = SnapshotMemory::create(layout.total_bytes()).unwrap();
    // No background copier, so the kernel's writes reach pages not yet copied.
    let options = CaptureOptions {
        copy_in_background: false,
        ..CaptureOptions::default()
    };
    let capture = RamCapture::start(&layout, memory, CaptureScope::AllPages, &options).unwrap();

    let last_page = ram.pages() - 1;
    let mut pipe = [0 as libc::c_int; 2];
    // SAFETY: `pipe` has room for two fds.
    assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
    let from_pipe = vec![0xabu8; PAGE_SIZE];
    // SAFETY: writes one page from a live buffer into the pipe (a pipe holds 64 KiB).
    assert_eq!(
        unsafe { libc::write(pipe[1], from_pipe.as_ptr().cast(), PAGE_SIZE) },
        PAGE_SIZE as isize
    );
    // SAFETY: reads into the last page of guest RAM, inside the mapping.
    let read = unsafe {
        libc::read(
            pipe[0],
            ram.base().add(last_page * PAGE_SIZE).cast(),
            PAGE_SIZE,
        )
    };
    assert_eq!(
        read,
        PAGE_SIZE as isize,
        "read(2) into protected RAM failed: {}",
        io::Error::last_os_error()
    );

    let from_gup = vec![0xcdu8; PAGE_SIZE];
    let local = libc::iovec {
        iov_base: from_gup.as_ptr() as *mut libc::c_void,
        iov_len: PAGE_SIZE,
    };
    // SAFETY: the remote range is a page of our own guest RAM mapping.
    let remote = libc::iovec {
        iov_base: unsafe { ram.base().add((last_page - 1) * PAGE_SIZE) }.cast(),
        iov_len: PAGE_SIZE,
    };
    // SAFETY: one local and one remote iovec, both valid for PAGE_SIZE bytes.
    let written = unsafe { libc::process_vm_writev(libc::getpid(), &local, 1, &remote, 1, 0) };
    assert_eq!(
        written,
        PAGE_SIZE as isize,
        "process_vm_writev failed: {}",
        io::Error::last_os_error()
    );

    let (memory, report) = capture.wait().unwrap();
    // SAFETY: closing the pipe fds opened above.
    unsafe {
        libc::close(pipe[0]);
        libc::close(pipe[1]);
    }
    assert_same_pages(
        memory.as_slice(),
        &reference,
        "capture differs from RAM at start",
    );
    assert!(
        report.pages_copied_on_fault == 2,
        "the kernel writes never waited for a copy: {report:?}"
    );
    assert!(ram.bytes()[last_page * PAGE_SIZE..]
        .iter()
        .all(|&b| b == 0xab));
    assert!(
        ram.bytes()[(last_page - 1) * PAGE_SIZE..last_page * PAGE_SIZE]
            .iter()
            .all(|&b| b == 0xcd)
    );
}

#[test]
fn incremental_capture_updates_only_listed_pages() {
    let ram = Arc::new(TestRam::memfd(1024));
    ram.fill(6, |page| page % 5 == 0);
    let layout = ram.layout(1);
    let options = CaptureOptions::default();
    let memory = SnapshotMemory::create(layout.total_bytes()).unwrap();
    let (memory, _) = RamCapture::start(&layout, memory, CaptureScope::AllPages, &options)
        .unwrap()
        .wait()
        .unwrap();

    // The guest dirties some pages after the first snapshot (the dirty set records them).
    let mut dirty = DirtyPages::new(layout.total_pages());
    for page in [0, 1, 5, 500, 1023, 64, 65, 66] {
        ram.write_u64(page, 9, 0x7777_0000 + page as u64);
        dirty.insert(page).unwrap();
    }
    let reference = ram.bytes().to_vec();
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicUsize::new(0));
    let capture =
        RamCapture::start(&layout, memory, CaptureScope::Pages(&dirty), &options).unwrap();
    let writer = spawn_writer(Arc::clone(&ram), 99, Arc::clone(&stop), writes);
    let (memory, report) = capture.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    assert_eq!(report.pages_in_scope, 8);
    assert_same_pages(
        memory.as_slice(),
        &reference,
        "incremental capture differs from RAM at start",
    );
}

#[test]
fn scope_and_size_mismatches_are_rejected() {
    let ram = TestRam::memfd(64);
    let layout = ram.layout(1);
    let options = CaptureOptions::default();
    let wrong_size = SnapshotMemory::create(32 * PAGE_SIZE).unwrap();
    assert!(matches!(
        RamCapture::start(&layout, wrong_size, CaptureScope::AllPages, &options),
        Err(RamCaptureError::SizeMismatch { .. })
    ));
    let memory = SnapshotMemory::create(64 * PAGE_SIZE).unwrap();
    let dirty = DirtyPages::new(65);
    assert!(matches!(
        RamCapture::start(&layout, memory, CaptureScope::Pages(&dirty), &options),
        Err(RamCaptureError::ScopeMismatch { .. })
    ));
}

#[test]
fn abort_releases_waiting_writers_and_ram_can_be_captured_again() {
    let ram = Arc::new(TestRam::memfd(4096));
    ram.fill(7, |_| false);
    let layout = ram.layout(1);
    let options = CaptureOptions::default();
    let memory = SnapshotMemory::create(layout.total_bytes()).unwrap();
    let capture = RamCapture::start(&layout, memory, CaptureScope::AllPages, &options).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(
        Arc::clone(&ram),
        5,
        Arc::clone(&stop),
        Arc::new(AtomicUsize::new(0)),
    );
    let memory = capture.abort().unwrap();
    assert!(!memory.is_all_holes());
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();

    // Dropping a running capture also releases RAM; then a new capture works.
    drop(RamCapture::start(&layout, memory, CaptureScope::AllPages, &options).unwrap());
    let reference = ram.bytes().to_vec();
    let memory = SnapshotMemory::create(layout.total_bytes()).unwrap();
    let capture = RamCapture::start(&layout, memory, CaptureScope::AllPages, &options).unwrap();
    let (memory, _) = capture.wait().unwrap();
    assert_same_pages(memory.as_slice(), &reference, "capture");
}

#[test]
fn reused_snapshot_memory_gets_holes_punched() {
    let ram = Arc::new(TestRam::memfd(512));
    ram.fill(8, |_| false);
    let layout = ram.layout(1);
    let options = CaptureOptions::default();
    let memory = SnapshotMemory::create(layout.total_bytes()).unwrap();
    let (memory, _) = RamCapture::start(&layout, memory, CaptureScope::AllPages, &options)
        .unwrap()
        .wait()
        .unwrap();
    // Turn pages 10..20 into holes in guest RAM; the reused snapshot must read them as zero.
    let (file, _) = layout.regions()[0].backing_file().unwrap();
    punch_hole(file, (10 * PAGE_SIZE) as u64, (10 * PAGE_SIZE) as u64).unwrap();
    let reference = ram.bytes().to_vec();
    assert!(reference[10 * PAGE_SIZE..20 * PAGE_SIZE]
        .iter()
        .all(|&b| b == 0));
    let (memory, _) = RamCapture::start(&layout, memory, CaptureScope::AllPages, &options)
        .unwrap()
        .wait()
        .unwrap();
    assert_same_pages(memory.as_slice(), &reference, "capture");
}

#[test]
fn progress_reaches_total() {
    let ram = TestRam::memfd(256);
    ram.fill(9, |_| false);
    let layout = ram.layout(1);
    let memory = SnapshotMemory::create(layout.total_bytes()).unwrap();
    let capture = RamCapture::start(
        &layout,
        memory,
        CaptureScope::AllPages,
        &CaptureOptions::default(),
    )
    .unwrap();
    while !capture.is_finished() {
        std::thread::yield_now();
    }
    let progress = capture.progress();
    assert_eq!((progress.pages_done, progress.pages_total), (256, 256));
    let (_, report) = capture.wait().unwrap();
    assert!(report.duration >= report.stall);
}

#[test]
fn coalesce_and_split_helpers() {
    assert_eq!(
        coalesce(&[1, 2, 3, 7, 9, 10]).collect::<Vec<_>>(),
        vec![(1, 3), (7, 1), (9, 2)]
    );
    assert_eq!(coalesce(&[]).count(), 0);
    let (a, b) = split_ranges(&[(0x1000, 0x3000), (0x10000, 0x2000)], 0x4000);
    assert_eq!(a, vec![(0x1000, 0x3000), (0x10000, 0x1000)]);
    assert_eq!(b, vec![(0x11000, 0x1000)]);
}
