//! Writes the seed corpora of the devices targets. Usage: make_seeds CORPUS_DIR
//! - device_restore: every device's power-on state, and one after a few guest accesses;
//! - guest_accesses: op sequences (encoded through `arbitrary` from fixed byte patterns, so they
//!   stay valid inputs whatever the op list looks like).
use std::fs;
use std::path::Path;

use devices_fuzz::restore::{power_on_seed, DEVICE_NAMES};

fn main() {
    let out = std::env::args()
        .nth(1)
        .expect("usage: make_seeds CORPUS_DIR");
    let out = Path::new(&out);
    let restore_dir = out.join("device_restore");
    fs::create_dir_all(&restore_dir).expect("creating the corpus directory");
    for (which, name) in DEVICE_NAMES.iter().enumerate() {
        fs::write(
            restore_dir.join(format!("power-on-{name}")),
            power_on_seed(which),
        )
        .expect("writing a seed");
    }
    let accesses_dir = out.join("guest_accesses");
    fs::create_dir_all(&accesses_dir).expect("creating the corpus directory");
    // Byte patterns that `arbitrary` turns into op sequences of different kinds and lengths.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for seed in 0..8 {
        let len = 64 << (seed % 4);
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        fs::write(accesses_dir.join(format!("random-{seed}")), bytes).expect("writing a seed");
    }
}
