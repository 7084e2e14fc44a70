//! Regenerates `fuzz/seeds/` from QEMU 7.2 (run with `-- --ignored`): one whole small microvm
//! stream as QEMU wrote it, and streams of each machine with RAM trimmed to a few pages per block
//! (device sections as QEMU wrote them, RAM re-encoded by our writer). The `*-linux-*` seeds were
//! made the same way, once, from QEMU 7.2 TCG runs of Debian's 6.12 kernel (`-kernel vmlinuz
//! -append console=ttyS0`, no initrd, saved after its root-mount panic; `pc` with `-smp 2`), with
//! RAM trimmed to 2 pages per block; this test does not rewrite them.

mod common;

use std::path::Path;

use qemu_migration::ram::{RamBlock, VecRam};
use qemu_migration::reader::{read_stream, ReadLimits};
use qemu_migration::writer::write_parsed;

const KEEP_PAGES: u64 = 2;

#[test]
#[ignore = "rewrites the committed fuzz seeds"]
fn make_seeds() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    std::fs::create_dir_all(&dir).unwrap();
    let whole = common::capture("microvm", 16, 200, &[]);
    std::fs::write(dir.join("microvm-16m-whole.bin"), &whole).unwrap();
    for (machine, args) in [
        ("microvm", &["-serial", "null"][..]),
        ("pc", &["-serial", "null"][..]),
        ("q35", &[][..]),
    ] {
        let bytes = common::capture(machine, 16, 200, args);
        let mut ram = VecRam::default();
        let mut parsed = read_stream(&bytes[..], &mut ram, &ReadLimits::default()).unwrap();
        parsed.ram_blocks = parsed
            .ram_blocks
            .iter()
            .map(|b| RamBlock {
                name: b.name.clone(),
                used_length: b.used_length.min(KEEP_PAGES * 4096),
            })
            .collect();
        for (_, data) in &mut ram.blocks {
            data.truncate((KEEP_PAGES * 4096) as usize);
        }
        let trimmed = write_parsed(Vec::new(), &parsed, &mut ram).unwrap();
        std::fs::write(dir.join(format!("{machine}-trimmed.bin")), &trimmed).unwrap();
    }
}
