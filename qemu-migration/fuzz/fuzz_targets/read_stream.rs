//! The stream reader on arbitrary bytes: no panic, no page outside its block, no declared RAM past
//! the cap, and whatever parses re-encodes to bytes that parse to the same sections.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qemu_migration::ram::{RamAccessError, RamBlock, RamLimits, RamSink, RamSource};
use qemu_migration::reader::{read_stream, ReadLimits};
use qemu_migration::writer::write_parsed;

const RAM_CAP: u64 = 1 << 30;

/// Checks every page against the block list without storing RAM.
#[derive(Default)]
struct Checked(Vec<RamBlock>);

impl Checked {
    fn check(&self, block: &str, offset: u64) -> Result<(), RamAccessError> {
        let b = self
            .0
            .iter()
            .find(|b| b.name == block)
            .expect("page of a listed block");
        assert!(
            offset % 4096 == 0 && offset + 4096 <= b.used_length,
            "page outside its block"
        );
        Ok(())
    }
}

impl RamSink for Checked {
    fn begin(&mut self, _machine: &str, blocks: &[RamBlock]) -> Result<(), RamAccessError> {
        let total: u64 = blocks.iter().map(|b| b.used_length).sum();
        assert!(total <= RAM_CAP, "declared RAM past the cap");
        self.0 = blocks.to_vec();
        Ok(())
    }
    fn write_page(&mut self, block: &str, offset: u64, data: &[u8]) -> Result<(), RamAccessError> {
        assert_eq!(data.len(), 4096);
        self.check(block, offset)
    }
    fn fill(&mut self, block: &str, offset: u64, _byte: u8) -> Result<(), RamAccessError> {
        self.check(block, offset)
    }
}

/// Zero pages for the re-encoding (only the sections are compared).
struct ZeroRam;

impl RamSource for ZeroRam {
    fn blocks(&self) -> Vec<RamBlock> {
        Vec::new()
    }
    fn read_page(&mut self, _: &str, _: u64, buf: &mut [u8]) -> Result<(), RamAccessError> {
        buf.fill(0);
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let limits = ReadLimits {
        ram: RamLimits {
            max_total_bytes: RAM_CAP,
            max_blocks: 64,
        },
        ..Default::default()
    };
    let Ok(parsed) = read_stream(data, &mut Checked::default(), &limits) else {
        return;
    };
    // Re-encoding 1 GiB of zero pages would only slow the fuzzer down.
    if parsed.ram_blocks.iter().map(|b| b.used_length).sum::<u64>() > 64 << 20 {
        return;
    }
    let rewritten = write_parsed(Vec::new(), &parsed, &mut ZeroRam).expect("re-encode");
    let reparsed = read_stream(&rewritten[..], &mut Checked::default(), &limits)
        .expect("re-encoded stream parses");
    assert_eq!(reparsed.sections, parsed.sections);
    assert_eq!(reparsed.machine, parsed.machine);
});
