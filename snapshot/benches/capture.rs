//! Costs of the snapshot engine without KVM: the SAVE stall, copy throughput, the fault path, the
//! restore per page and writing to disk. Run with `cargo bench -p snapshot --bench capture`
//! (`-- quick` skips the 1 GiB cases). Numbers are medians of a few runs.

use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use snapshot::{
    restore_dirty_pages, save_snapshot_bytes, CaptureOptions, CaptureScope, DirtyPages,
    FileMapping, HostRamRegion, LoadedSnapshot, RamCapture, RamLayout, SnapshotMemory, PAGE_SIZE,
};

const MIB: usize = 1 << 20;

enum Backing {
    Memfd(Arc<File>, FileMapping),
    Anonymous(*mut u8),
}

struct Ram {
    backing: Backing,
    len: usize,
}

// SAFETY: benchmark RAM is plain memory shared with the writer thread on purpose.
unsafe impl Send for Ram {}
// SAFETY: as above.
unsafe impl Sync for Ram {}

impl Ram {
    fn memfd(len: usize) -> Ram {
        // SAFETY: valid name; result checked.
        let fd = unsafe { libc::memfd_create(c"bench-ram".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: fresh fd.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(len as u64).expect("size memfd");
        let mapping = FileMapping::new(
            &file,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
        )
        .expect("map");
        let ram = Ram {
            backing: Backing::Memfd(Arc::new(file), mapping),
            len,
        };
        ram.fill();
        ram
    }

    fn anonymous_thp(len: usize) -> Ram {
        let huge = 2 * MIB;
        // SAFETY: fresh anonymous mapping, over-allocated to align to 2 MiB.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len + huge,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(raw, libc::MAP_FAILED);
        let aligned = (raw as usize).next_multiple_of(huge) as *mut u8;
        // SAFETY: advice on our own mapping.
        unsafe { libc::madvise(aligned.cast(), len, libc::MADV_HUGEPAGE) };
        let ram = Ram {
            backing: Backing::Anonymous(aligned),
            len,
        };
        ram.fill();
        ram
    }

    fn base(&self) -> *mut u8 {
        match &self.backing {
            Backing::Memfd(_, mapping) => mapping.as_ptr(),
            Backing::Anonymous(ptr) => *ptr,
        }
    }

    fn fill(&self) {
        for page in 0..self.len / PAGE_SIZE {
            // SAFETY: inside the mapping.
            unsafe {
                std::ptr::write_bytes(
                    self.base().add(page * PAGE_SIZE),
                    (page % 251) as u8 + 1,
                    PAGE_SIZE,
                )
            };
        }
    }

    fn layout(&self) -> RamLayout {
        // SAFETY: the mapping outlives every capture in this benchmark.
        let region = unsafe { HostRamRegion::new(self.base(), self.len) }.expect("region");
        let region = match &self.backing {
            Backing::Memfd(file, _) => region
                .with_backing_file(Arc::clone(file), 0)
                .expect("backing"),
            Backing::Anonymous(_) => region,
        };
        RamLayout::new(vec![region]).expect("layout")
    }
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

fn capture_once(
    layout: &RamLayout,
    memory: SnapshotMemory,
    options: &CaptureOptions,
) -> (SnapshotMemory, snapshot::CaptureReport) {
    RamCapture::start(layout, memory, CaptureScope::AllPages, options)
        .expect("start")
        .wait()
        .expect("capture")
}

fn bench_stall(name: &str, ram: &Ram, runs: usize) {
    let layout = ram.layout();
    let pages = layout.total_pages() as f64;
    for (label, options) in [
        ("one thread protects", CaptureOptions::default()),
        (
            "split protection",
            CaptureOptions {
                parallel_protect_min_bytes: 0,
                ..CaptureOptions::default()
            },
        ),
    ] {
        // First capture into fresh snapshot memory (pays the page allocation), then reuse it.
        let started = Instant::now();
        let (mut memory, first) = capture_once(
            &layout,
            SnapshotMemory::create(layout.total_bytes()).expect("memory"),
            &options,
        );
        let first_total = started.elapsed();
        let mut stalls = Vec::new();
        let mut durations = Vec::new();
        for _ in 0..runs {
            let (back, report) = capture_once(&layout, memory, &options);
            memory = back;
            stalls.push(report.stall);
            durations.push(report.duration);
        }
        let duration = median(durations);
        println!(
            "{name:<22} {label:<20} stall {:7.3} ms (fresh memory {:7.3} ms) | copy {:8.1} ms = {:5.2} M pages/s reused, {:5.2} M pages/s fresh ({:.0} ms)",
            ms(median(stalls)),
            ms(first.stall),
            ms(duration),
            pages / duration.as_secs_f64() / 1e6,
            pages / first.duration.as_secs_f64() / 1e6,
            ms(first_total),
        );
    }
}

fn bench_incremental(ram: &Ram, dirty_pages: usize) {
    let layout = ram.layout();
    let options = CaptureOptions::default();
    let (mut memory, _) = capture_once(
        &layout,
        SnapshotMemory::create(layout.total_bytes()).expect("memory"),
        &options,
    );
    let mut dirty = DirtyPages::new(layout.total_pages());
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    while dirty.len() < dirty_pages {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        dirty
            .insert((state % layout.total_pages() as u64) as usize)
            .expect("page");
    }
    let mut stalls = Vec::new();
    let mut durations = Vec::new();
    for _ in 0..5 {
        let (back, report) =
            RamCapture::start(&layout, memory, CaptureScope::Pages(&dirty), &options)
                .expect("start")
                .wait()
                .expect("capture");
        memory = back;
        stalls.push(report.stall);
        durations.push(report.duration);
    }
    println!(
        "incremental {:>5} of {} MiB: stall {:.3} ms, total {:.3} ms",
        dirty_pages,
        ram.len / MIB,
        ms(median(stalls)),
        ms(median(durations))
    );
}

/// Latency of a write that has to wait for the fault handler (no background copier, so every first
/// write to a page faults).
fn bench_fault_latency(ram: &Arc<Ram>) {
    let layout = ram.layout();
    let options = CaptureOptions {
        copy_in_background: false,
        ..CaptureOptions::default()
    };
    let memory = SnapshotMemory::create(layout.total_bytes()).expect("memory");
    let capture =
        RamCapture::start(&layout, memory, CaptureScope::AllPages, &options).expect("start");
    let writes = 2000.min(layout.total_pages());
    let stride = layout.total_pages() / writes;
    let mut latencies = Vec::with_capacity(writes);
    for index in 0..writes {
        let started = Instant::now();
        // SAFETY: a page inside the mapping; this thread is the only writer.
        unsafe {
            ram.base()
                .add(index * stride * PAGE_SIZE)
                .write_volatile(0xaa)
        };
        latencies.push(started.elapsed());
    }
    let finish_started = Instant::now();
    let (_, report) = capture.finish_now().expect("finish");
    let finish = finish_started.elapsed();
    latencies.sort();
    println!(
        "write fault (other thread, {} MiB): median {:.1} us, p90 {:.1} us, max {:.1} us over {} faults; finish_now of the rest {:.1} ms",
        ram.len / MIB,
        latencies[writes / 2].as_secs_f64() * 1e6,
        latencies[writes * 9 / 10].as_secs_f64() * 1e6,
        latencies[writes - 1].as_secs_f64() * 1e6,
        report.pages_copied_on_fault,
        ms(finish),
    );
}

/// Capture while a writer hammers RAM: how the writer is slowed and how long the capture takes.
fn bench_under_writer(ram: &Arc<Ram>) {
    let layout = ram.layout();
    let options = CaptureOptions::default();
    let (memory, _) = capture_once(
        &layout,
        SnapshotMemory::create(layout.total_bytes()).expect("memory"),
        &options,
    );
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let writer = {
        let (ram, stop, writes) = (Arc::clone(ram), Arc::clone(&stop), Arc::clone(&writes));
        std::thread::spawn(move || {
            let pages = ram.len / PAGE_SIZE;
            let mut state = 12345u64;
            while !stop.load(Ordering::Relaxed) {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                // SAFETY: a page inside the mapping.
                unsafe {
                    ram.base()
                        .add(((state >> 20) as usize % pages) * PAGE_SIZE)
                        .write_volatile(state as u8)
                };
                writes.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    std::thread::sleep(Duration::from_millis(20));
    let (_, report) = capture_once(&layout, memory, &options);
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer");
    println!(
        "under a random writer ({} MiB): stall {:.3} ms, capture {:.1} ms, {} write faults, {} pages copied by the handler",
        ram.len / MIB,
        ms(report.stall),
        ms(report.duration),
        report.write_faults,
        report.pages_copied_on_fault
    );
}

fn bench_restore(ram: &Ram) {
    let layout = ram.layout();
    let (memory, _) = capture_once(
        &layout,
        SnapshotMemory::create(layout.total_bytes()).expect("memory"),
        &CaptureOptions::default(),
    );
    let total = layout.total_pages();
    for count in [1usize, 16, 256, 1000, 4096] {
        let mut dirty = DirtyPages::new(total);
        let mut state = 7u64;
        while dirty.len() < count {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            dirty.insert((state >> 16) as usize % total).expect("page");
        }
        let mut samples = Vec::new();
        for _ in 0..50 {
            samples.push(
                restore_dirty_pages(&layout, &memory, &dirty)
                    .expect("restore")
                    .elapsed,
            );
        }
        let per_page = median(samples).as_secs_f64() * 1e6 / count as f64;
        // Building the set again from a dirty ring harvest and clearing it is part of each restore.
        let started = Instant::now();
        for _ in 0..50 {
            let pages: Vec<usize> = dirty.iter().collect();
            dirty.clear();
            for page in pages {
                dirty.insert(page).expect("page");
            }
        }
        let bookkeeping = started.elapsed().as_secs_f64() * 1e6 / 50.0 / count as f64;
        println!(
            "restore {count:>5} dirty pages of {} MiB: {per_page:.3} us/page copy (same pages each time), set rebuild+clear {bookkeeping:.3} us/page",
            ram.len / MIB
        );
    }
    let bitmap = vm_memory::bitmap::AtomicBitmap::new(
        ram.len,
        std::num::NonZeroUsize::new(PAGE_SIZE).expect("nonzero"),
    );
    let mut dirty = DirtyPages::new(total);
    let started = Instant::now();
    for round in 0..100 {
        bitmap.set_addr_range(round * 7 * PAGE_SIZE, PAGE_SIZE);
        dirty.take_atomic_bitmap(0, total, &bitmap).expect("bitmap");
    }
    println!(
        "take vm-memory AtomicBitmap of {} MiB with 1 new dirty page: {:.2} us",
        ram.len / MIB,
        started.elapsed().as_secs_f64() * 1e6 / 100.0
    );
}

fn bench_disk(ram: &Ram) {
    let layout = ram.layout();
    let (memory, _) = capture_once(
        &layout,
        SnapshotMemory::create(layout.total_bytes()).expect("memory"),
        &CaptureOptions::default(),
    );
    let parent =
        tempfile::tempdir_in(std::env::var("SNAPSHOT_BENCH_DIR").unwrap_or_else(|_| "/tmp".into()))
            .expect("tempdir");
    let dir = parent.path().join("snap");
    let started = Instant::now();
    save_snapshot_bytes(&dir, &[0u8; 4096], &memory).expect("save");
    let save = started.elapsed();
    let started = Instant::now();
    let loaded = LoadedSnapshot::open(&dir).expect("open");
    let _mapping = loaded.map_memory_private().expect("map");
    let open = started.elapsed();
    let started = Instant::now();
    loaded.verify_memory().expect("verify");
    println!(
        "disk ({} MiB, {}): save {:.1} ms, open+map {:.3} ms, verify {:.1} ms",
        ram.len / MIB,
        parent.path().display(),
        ms(save),
        ms(open),
        ms(started.elapsed())
    );
}

fn main() {
    if std::env::args().any(|arg| arg == "stall") {
        // Only the whole-RAM stall at 1 GiB, one-thread and split protection alternating.
        let large = Ram::memfd(1024 * MIB);
        let layout = large.layout();
        let mut memory = SnapshotMemory::create(layout.total_bytes()).expect("memory");
        let single = CaptureOptions {
            parallel_protect_min_bytes: usize::MAX,
            ..CaptureOptions::default()
        };
        let split = CaptureOptions {
            parallel_protect_min_bytes: 0,
            parallel_protect_min_estimate: Duration::ZERO,
            ..CaptureOptions::default()
        };
        let (mut singles, mut splits) = (Vec::new(), Vec::new());
        for _ in 0..10 {
            for (options, samples) in [(&single, &mut singles), (&split, &mut splits)] {
                let (back, report) = capture_once(&layout, memory, options);
                memory = back;
                samples.push(report.stall);
            }
        }
        let show = |samples: &[Duration]| {
            samples
                .iter()
                .map(|d| format!("{:.1}", ms(*d)))
                .collect::<Vec<_>>()
                .join(" ")
        };
        println!(
            "1 GiB stall, one thread (ms): {}  median {:.1}",
            show(&singles),
            ms(median(singles.clone()))
        );
        println!(
            "1 GiB stall, split (ms):      {}  median {:.1}",
            show(&splits),
            ms(median(splits.clone()))
        );
        return;
    }
    let quick = std::env::args().any(|arg| arg == "quick");
    let small = Arc::new(Ram::memfd(64 * MIB));
    bench_stall("memfd 64 MiB", &small, 5);
    bench_incremental(&small, 1000);
    bench_fault_latency(&small);
    bench_under_writer(&small);
    bench_restore(&small);
    bench_disk(&small);
    if quick {
        return;
    }
    let large = Arc::new(Ram::memfd(1024 * MIB));
    bench_stall("memfd 1 GiB", &large, 3);
    bench_incremental(&large, 1000);
    bench_incremental(&large, 16);
    bench_under_writer(&large);
    bench_restore(&large);
    bench_disk(&large);
    drop(large);
    let thp = Ram::anonymous_thp(1024 * MIB);
    bench_stall("anon THP 1 GiB", &thp, 3);
}
