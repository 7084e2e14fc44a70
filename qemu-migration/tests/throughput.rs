//! Writer and reader speed on a 512 MiB guest with dense (non-zero) RAM and a sparse 1 GiB one,
//! to and from memory (run with `-- --ignored --nocapture`; prints MiB/s).

use std::time::Instant;

use qemu_migration::machine::ram_map::MemoryRegionState;
use qemu_migration::machine::ram_map::{GuestRamSink, GuestRamSource, VecGuestMemory};
use qemu_migration::reader::{read_stream, ReadLimits};
use qemu_migration::writer::StreamWriter;
use qemu_migration::MachineType;

fn measure(label: &str, ram_bytes: u64, dense_bytes: u64) {
    let regions = [MemoryRegionState {
        guest_phys_addr: 0,
        len: ram_bytes,
    }];
    let mut memory = VecGuestMemory {
        regions: vec![(0, vec![0u8; ram_bytes as usize])],
    };
    let mut x = 0x1234_5678_9abc_def0u64;
    for chunk in memory.regions[0].1[..dense_bytes as usize].chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes());
    }
    let start = Instant::now();
    let mut source = GuestRamSource::new(MachineType::Microvm, &regions, &mut memory).unwrap();
    let blocks = vec![source.block().clone()];
    let mut writer = StreamWriter::new(
        Vec::with_capacity(dense_bytes as usize + (64 << 20)),
        "microvm",
    )
    .unwrap();
    writer.write_ram(1, &blocks, &mut source).unwrap();
    let bytes = writer.finish().unwrap();
    let write_time = start.elapsed();

    // The writer alone, into a sink that keeps nothing (no output page faults).
    let start = Instant::now();
    let mut source = GuestRamSource::new(MachineType::Microvm, &regions, &mut memory).unwrap();
    let mut writer = StreamWriter::new(std::io::sink(), "microvm").unwrap();
    writer.write_ram(1, &blocks, &mut source).unwrap();
    writer.finish().unwrap();
    let sink_time = start.elapsed();

    let mut target = VecGuestMemory::default();
    let start = Instant::now();
    read_stream(
        &bytes[..],
        &mut GuestRamSink::new(&mut target).with_zeroed_memory(),
        &ReadLimits::default(),
    )
    .unwrap();
    let read_time = start.elapsed();
    assert!(target.regions[0].1 == memory.regions[0].1);
    let mib = ram_bytes as f64 / (1 << 20) as f64;
    println!(
        "{label}: stream {} MiB; write {:.0} ms ({:.0} MiB/s of guest RAM; {:.0} ms into io::sink), read {:.0} ms ({:.0} MiB/s)",
        bytes.len() >> 20,
        write_time.as_secs_f64() * 1e3,
        mib / write_time.as_secs_f64(),
        sink_time.as_secs_f64() * 1e3,
        read_time.as_secs_f64() * 1e3,
        mib / read_time.as_secs_f64()
    );
}

#[test]
#[ignore = "timing, not a check"]
fn throughput() {
    measure("1 GiB guest, 512 MiB dense", 1 << 30, 512 << 20);
    measure("64 MiB guest, sparse", 64 << 20, 1 << 20);
}
