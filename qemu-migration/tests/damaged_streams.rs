//! Truncated, bit-flipped, reordered and wrong-size versions of real QEMU 7.2 streams give typed,
//! one-line errors; never a panic, and never a block list beyond the cap reaches the sink.

mod common;

use qemu_migration::ram::{RamAccessError, RamBlock, RamSink};
use qemu_migration::reader::{read_stream, ReadError, ReadLimits};

/// Small deterministic PRNG (xorshift64*), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Checks page arguments against the block list and the declared total against the cap.
struct CheckingSink {
    blocks: Vec<RamBlock>,
    cap: u64,
}

impl RamSink for CheckingSink {
    fn begin(&mut self, _machine: &str, blocks: &[RamBlock]) -> Result<(), RamAccessError> {
        let total: u64 = blocks.iter().map(|b| b.used_length).sum();
        assert!(total <= self.cap, "declared RAM {total:#x} passed the cap");
        self.blocks = blocks.to_vec();
        Ok(())
    }
    fn write_page(&mut self, block: &str, offset: u64, data: &[u8]) -> Result<(), RamAccessError> {
        self.check(block, offset);
        assert_eq!(data.len(), 4096);
        Ok(())
    }
    fn fill(&mut self, block: &str, offset: u64, _: u8) -> Result<(), RamAccessError> {
        self.check(block, offset);
        Ok(())
    }
}

impl CheckingSink {
    fn check(&self, block: &str, offset: u64) {
        let b = self
            .blocks
            .iter()
            .find(|b| b.name == block)
            .expect("page of a listed block");
        assert!(
            offset.is_multiple_of(4096) && offset + 4096 <= b.used_length,
            "page outside its block"
        );
    }
}

const CAP: u64 = 1 << 30;

fn parse(bytes: &[u8]) -> Result<(), ReadError> {
    let limits = ReadLimits {
        ram: qemu_migration::ram::RamLimits {
            max_total_bytes: CAP,
            max_blocks: 64,
        },
        ..Default::default()
    };
    let mut sink = CheckingSink {
        blocks: Vec::new(),
        cap: CAP,
    };
    read_stream(bytes, &mut sink, &limits).map(|_| ())
}

fn check_error(err: &ReadError) {
    let text = err.to_string();
    assert!(
        !text.is_empty() && !text.contains('\n'),
        "error is not one line: {text:?}"
    );
}

#[test]
fn every_seed_parses() {
    for (name, bytes) in common::corpus_streams() {
        parse(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn truncated_streams_fail_cleanly() {
    for (name, bytes) in common::corpus_streams() {
        let eof_at = bytes.len() - bytes.iter().rev().position(|&b| b == 0x06).unwrap_or(0);
        let mut cut = 0;
        let mut failures = 0;
        while cut < bytes.len() {
            match parse(&bytes[..cut]) {
                Err(err) => {
                    check_error(&err);
                    failures += 1;
                }
                // Only cuts inside the optional trailer may still load.
                Ok(()) => assert!(cut + 4096 >= eof_at, "{name}: cut at {cut} loaded"),
            }
            cut += 1 + cut / 64;
        }
        assert!(failures > 100, "{name}");
    }
}

#[test]
fn bit_flips_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut errors = 0;
    let mut runs = 0;
    for (_, bytes) in common::corpus_streams() {
        for _ in 0..1500 {
            let mut mutated = bytes.clone();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(mutated.len());
                mutated[at] ^= 1 << rng.below(8);
            }
            runs += 1;
            if let Err(err) = parse(&mutated) {
                check_error(&err);
                errors += 1;
            }
        }
    }
    // Flips in page data are legal; flips in headers and device bodies mostly are not.
    assert!(errors > runs / 10, "{errors} errors in {runs} runs");
}

/// Offsets of top-level FULL section records (found by walking with our own reader is circular;
/// instead look for the FULL marker followed by a plausible header, which is enough to reorder).
fn section_starts(bytes: &[u8]) -> Vec<usize> {
    let mut starts = Vec::new();
    for at in 0..bytes.len().saturating_sub(10) {
        if bytes[at] == 0x7e && bytes.get(at + 5) == Some(&0x04) {
            starts.push(at + 5);
        }
    }
    starts
}

#[test]
fn reordered_and_duplicated_sections() {
    let mut rng = Rng(42);
    for (name, bytes) in common::corpus_streams() {
        let starts = section_starts(&bytes);
        assert!(starts.len() > 5, "{name}");
        for _ in 0..300 {
            let i = rng.below(starts.len() - 1);
            let j = i + 1 + rng.below(starts.len() - 1 - i);
            let (a, b) = (starts[i], starts[j]);
            let end_b = starts.get(j + 1).copied().unwrap_or(b);
            if end_b <= b {
                continue;
            }
            // Move record j before record i.
            let mut mutated = bytes[..a].to_vec();
            mutated.extend_from_slice(&bytes[b..end_b]);
            mutated.extend_from_slice(&bytes[a..b]);
            mutated.extend_from_slice(&bytes[end_b..]);
            if let Err(err) = parse(&mutated) {
                check_error(&err);
            }
            // Duplicate record i: always an error (same idstr and instance twice).
            let end_a = starts[i + 1];
            let mut duplicated = bytes[..end_a].to_vec();
            duplicated.extend_from_slice(&bytes[a..end_a]);
            duplicated.extend_from_slice(&bytes[end_a..]);
            let err = parse(&duplicated).expect_err("duplicate section accepted");
            check_error(&err);
        }
    }
}

#[test]
fn wrong_sizes_are_typed_errors() {
    let (_, bytes) = common::corpus_streams()
        .into_iter()
        .find(|(n, _)| n.starts_with("pc"))
        .unwrap();
    // The RAM total in the MEM_SIZE record (right after the ram START header).
    let ram_at = bytes.windows(4).position(|w| w == b"\x03ram").unwrap() + 12;
    let mut bigger = bytes.clone();
    bigger[ram_at + 3] ^= 0x10;
    assert!(matches!(
        parse(&bigger),
        Err(ReadError::Ram(_)) | Err(ReadError::Wire(_))
    ));
    let mut huge = bytes.clone();
    huge[ram_at] = 0x7f;
    assert!(matches!(parse(&huge), Err(ReadError::Ram(_))));
    // A cpu section claiming version 11 (we only take 12).
    let cpu_at = bytes.windows(4).position(|w| w == b"\x03cpu").unwrap() + 8 + 4;
    let mut old = bytes.clone();
    old[cpu_at - 1] = 11;
    assert!(matches!(parse(&old), Err(ReadError::Section { .. })));
    // An unknown section name is named in the error.
    let mut renamed = bytes.clone();
    let at = bytes.windows(6).position(|w| w == b"\x05pcspk").unwrap();
    renamed[at + 1..at + 6].copy_from_slice(b"pcspx");
    let err = parse(&renamed).unwrap_err().to_string();
    assert!(err.contains("pcspx"), "{err}");
}
