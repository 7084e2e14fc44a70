//! The VMM library driven the way a fuzz harness drives it, through its public API only: boot a
//! guest to its snapshot, then many runs with an input each, coverage read back, restored after
//! each; and machines on separate threads with their own deadlines and controls.

use std::time::{Duration, Instant};

use snapvmm_tests::runner::require_kvm;
use vmm::{KernelSource, Machine, MachineConfig, SerialOutput, VmEvent};

fn boot(guest: &str) -> Machine {
    boot_with(guest, 64 << 20)
}

fn boot_with(guest: &str, mem_bytes: u64) -> Machine {
    require_kvm();
    let built = guest_tools::BUILT_GUESTS
        .iter()
        .find(|g| g.name == guest)
        .unwrap_or_else(|| panic!("guest-tools has no guest {guest}"));
    let mut config = MachineConfig::new(KernelSource::Builtin {
        name: built.name,
        image: built.image,
    });
    config.mem_bytes = mem_bytes;
    config.serial = SerialOutput::Discard;
    Machine::boot(&config).expect("boot")
}

/// Runs the guest to its first SAVE: its snapshot point.
fn run_to_snapshot(machine: &mut Machine) {
    let deadline = Instant::now() + Duration::from_secs(30);
    match machine.run(Some(deadline)).expect("run") {
        VmEvent::SaveDone => {}
        other => panic!("expected the guest's SAVE, got: {other}"),
    }
}

fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(2_166_136_261u32, |hash, &byte| {
        (hash ^ byte as u32).wrapping_mul(16_777_619)
    })
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn input(&mut self) -> Vec<u8> {
        let len = (self.next() % 300) as usize;
        let mut input: Vec<u8> = (0..len).map(|_| self.next() as u8).collect();
        if input.starts_with(b"HANG") {
            input[0] = b'h';
        }
        input
    }
}

fn read32(map: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(map[offset..offset + 4].try_into().unwrap())
}

/// What input-echo derived from `input` must be in the coverage map.
fn assert_guest_saw(machine: &Machine, input: &[u8], run: usize) {
    let map = machine.coverage();
    assert_eq!(read32(map, 0), fnv1a(input), "run {run}: hash of the input");
    assert_eq!(
        read32(map, 4),
        input.len() as u32,
        "run {run}: input length"
    );
    assert_eq!(
        map[8],
        input.first().copied().unwrap_or(0xee),
        "run {run}: first byte"
    );
}

#[test]
fn ten_thousand_runs_each_see_their_own_input_and_report_through_coverage() {
    let mut machine = boot("input-echo");
    run_to_snapshot(&mut machine);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    const RUNS: usize = 10_000;
    for run in 0..RUNS {
        let input = rng.input();
        assert_eq!(machine.set_input(&input), input.len());
        assert_eq!(machine.input_len(), input.len() as u32);
        machine.coverage_mut()[..16].fill(0);
        let event = machine
            .run(Some(Instant::now() + Duration::from_secs(5)))
            .expect("run");
        assert_eq!(
            event,
            VmEvent::Done {
                code: (input.len() & 0xff) as u32
            },
            "run {run}"
        );
        assert_guest_saw(&machine, &input, run);
        machine.restore().expect("restore");
    }
    assert_eq!(machine.stats().restores, RUNS as u64);
    assert_eq!(machine.snapshot_device().restores(), RUNS as u64);
}

#[test]
fn machines_on_two_threads_keep_their_own_deadlines() {
    require_kvm();
    // One machine hangs and is stopped by its 300 ms deadline; the other, with a generous
    // deadline per run, finishes 500 runs meanwhile. Neither disturbs the other.
    let hanging = std::thread::spawn(|| {
        let mut machine = boot("input-echo");
        run_to_snapshot(&mut machine);
        machine.set_input(b"HANG forever");
        let started = Instant::now();
        let event = machine
            .run(Some(started + Duration::from_millis(300)))
            .expect("run");
        let waited = started.elapsed();
        // The VM is not lost: restored, it runs the next input normally.
        machine.restore().expect("restore after the hang");
        machine.set_input(b"ok");
        let next = machine
            .run(Some(Instant::now() + Duration::from_secs(5)))
            .expect("run after the hang");
        assert_guest_saw(&machine, b"ok", 0);
        (event, waited, next)
    });
    let busy = std::thread::spawn(|| {
        let mut machine = boot("input-echo");
        run_to_snapshot(&mut machine);
        let mut rng = Rng(42);
        let mut done = 0;
        for run in 0..500 {
            let input = rng.input();
            machine.set_input(&input);
            let event = machine
                .run(Some(Instant::now() + Duration::from_secs(10)))
                .expect("run");
            assert!(matches!(event, VmEvent::Done { .. }), "run {run}: {event}");
            assert_guest_saw(&machine, &input, run);
            machine.restore().expect("restore");
            done += 1;
        }
        done
    });
    let (event, waited, next) = hanging.join().expect("hanging thread");
    assert_eq!(event, VmEvent::DeadlinePassed);
    assert!(
        waited >= Duration::from_millis(300),
        "returned after {waited:?}, before its deadline"
    );
    assert_eq!(next, VmEvent::Done { code: 2 });
    assert_eq!(busy.join().expect("busy thread"), 500);
}

#[test]
fn deadlines_renewed_every_run_fire_only_for_the_run_that_overstays() {
    // A fuzzer passes `now + timeout` to every run. The machine's timer is armed for the first
    // such deadline only and fires while a later, short run executes: that run must go on (the
    // timer re-armed for its own deadline), and a later hang must still be stopped at its own.
    let mut machine = boot("input-echo");
    run_to_snapshot(&mut machine);
    let timeout = Duration::from_millis(100);
    let mut rng = Rng(7);
    let started = Instant::now();
    let mut runs = 0;
    while started.elapsed() < timeout * 5 {
        let input = rng.input();
        machine.set_input(&input);
        let event = machine.run(Some(Instant::now() + timeout)).expect("run");
        assert!(matches!(event, VmEvent::Done { .. }), "run {runs}: {event}");
        assert_guest_saw(&machine, &input, runs);
        machine.restore().expect("restore");
        runs += 1;
    }
    machine.set_input(b"HANG forever");
    let hang_started = Instant::now();
    let event = machine.run(Some(hang_started + timeout)).expect("run");
    let waited = hang_started.elapsed();
    assert_eq!(event, VmEvent::DeadlinePassed);
    assert!(waited >= timeout, "returned after {waited:?}");
    assert!(
        waited < timeout * 20,
        "the hang was stopped only after {waited:?}"
    );
}

#[test]
fn another_thread_stops_or_kicks_a_running_machine() {
    let mut machine = boot("input-echo");
    run_to_snapshot(&mut machine);
    machine.set_input(b"HANG");
    let control = machine.control();
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        control.kick();
        std::thread::sleep(Duration::from_millis(100));
        control.stop();
    });
    assert_eq!(machine.run(None).expect("run"), VmEvent::Kicked);
    assert_eq!(machine.run(None).expect("run"), VmEvent::Stopped);
    stopper.join().expect("stopper");
    // A stop is reported once; the machine can be restored and used again.
    machine.restore().expect("restore");
    machine.set_input(b"x");
    assert_eq!(
        machine
            .run(Some(Instant::now() + Duration::from_secs(5)))
            .expect("run"),
        VmEvent::Done { code: 1 }
    );
}

/// An export to a QEMU stream reads only the guest pages that hold data: the untouched rest of a
/// 1 GiB guest is sent as zero pages without being read (reading a hole of the RAM memfd through
/// its mapping would allocate it: a whole 1 GiB after one export, before the fix).
#[test]
fn exporting_a_mostly_empty_guest_allocates_none_of_its_untouched_ram() {
    let mut machine = boot_with("input-echo", 1 << 30);
    run_to_snapshot(&mut machine);
    let before = machine.ram_allocated_bytes().expect("RAM memfd size");
    let stream = machine
        .export_qemu_stream(false, Vec::new())
        .expect("export");
    let after = machine.ram_allocated_bytes().expect("RAM memfd size");
    assert!(
        before < 64 << 20,
        "the guest itself allocated {before} bytes of RAM"
    );
    assert!(
        after - before < 1 << 20,
        "the export allocated {} bytes of guest RAM ({before} before)",
        after - before
    );
    // Every page is in the stream (zero pages as 9-byte records): 262,144 records at least.
    assert!(
        stream.len() > 262_144 * 9,
        "stream of {} bytes",
        stream.len()
    );
    // And the guest goes on running after it.
    machine.set_input(b"after the export");
    let deadline = Instant::now() + Duration::from_secs(30);
    let event = machine.run(Some(deadline)).expect("run");
    assert!(
        !matches!(event, VmEvent::Crash { .. }),
        "after the export: {event}"
    );
}

/// An export into a file the kernel cannot write at offsets (a FIFO, as `migrate file:` to a
/// named pipe gives) comes out in order and equals the export into a regular file, which
/// several threads write at their offsets, but for the clocks each export samples.
#[test]
fn exporting_into_a_fifo_writes_the_stream_a_regular_file_gets() {
    let mut machine = boot_with("input-echo", 64 << 20);
    run_to_snapshot(&mut machine);
    let dir = std::env::temp_dir().join(format!("snapvmm-fifo-export-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let regular_path = dir.join("stream.bin");
    let regular = std::fs::File::create(&regular_path).expect("create stream file");
    machine
        .export_qemu_stream_to_file(false, &regular)
        .expect("export into a regular file");
    let in_file = std::fs::read(&regular_path).expect("read stream file");

    let fifo_path = dir.join("stream.fifo");
    let c_path = std::ffi::CString::new(fifo_path.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: a NUL-terminated path; mkfifo touches nothing else.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0, "mkfifo");
    let reader_path = fifo_path.clone();
    let reader = std::thread::spawn(move || std::fs::read(reader_path).expect("read the FIFO"));
    let fifo = std::fs::OpenOptions::new()
        .write(true)
        .open(&fifo_path)
        .expect("open the FIFO");
    machine
        .export_qemu_stream_to_file(false, &fifo)
        .expect("export into a FIFO");
    drop(fifo);
    let through_fifo = reader.join().expect("FIFO reader");
    std::fs::remove_dir_all(&dir).ok();

    assert_eq!(through_fifo.len(), in_file.len(), "stream lengths");
    // The clocks (TSC, kvmclock, PIT, RTC) sit in the device sections after RAM: a few low
    // bytes of each differ between two exports; a page out of place would differ by thousands.
    let differing: Vec<usize> = in_file
        .iter()
        .zip(&through_fifo)
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(at, _)| at)
        .collect();
    let tail = in_file.len().saturating_sub(16 << 10);
    assert!(
        differing.len() <= 64 && differing.iter().all(|&at| at >= tail),
        "{} bytes differ between the two exports, at {:?}; only clock fields after RAM may",
        differing.len(),
        &differing[..differing.len().min(16)]
    );
}
