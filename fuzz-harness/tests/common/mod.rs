//! In-process fuzz targets for the engine's tests: pure Rust, no KVM. Each writes AFL-style edge
//! coverage (`map[prev ^ cur] += 1; prev = cur >> 1`) into its own map, like an instrumented guest
//! writes BAR4.

#![allow(dead_code)]

use std::convert::Infallible;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fuzz_harness::{CrashInfo, CrashKind, FuzzTarget, RunOutcome};

pub const MAP_LEN: usize = 64 * 1024;

/// AFL-style edge recorder.
pub struct Edges {
    map: Vec<u8>,
    prev: usize,
}

impl Edges {
    pub fn new() -> Self {
        Self {
            map: vec![0; MAP_LEN],
            prev: 0,
        }
    }

    /// Enters basic block `site` (a compile-time-like random id).
    pub fn hit(&mut self, site: u32) {
        let cur = (site.wrapping_mul(0x9e37_79b1) as usize) % MAP_LEN;
        let edge = (cur ^ self.prev) % MAP_LEN;
        if let Some(counter) = self.map.get_mut(edge) {
            *counter = counter.wrapping_add(1);
        }
        self.prev = cur >> 1;
    }

    pub fn start_run(&mut self) {
        self.prev = 0;
    }

    pub fn map_mut(&mut self) -> &mut [u8] {
        &mut self.map
    }
}

/// The planted bug: "SNAP", a length byte equal to the rest's length, then 0x42 -> CRASH code 7.
pub struct ParserTarget {
    edges: Edges,
    pub runs: u64,
}

impl ParserTarget {
    pub fn new() -> Self {
        Self {
            edges: Edges::new(),
            runs: 0,
        }
    }

    /// The parser; `Some(code)` is its CRASH report.
    fn parse(&mut self, input: &[u8]) -> Option<u32> {
        let e = &mut self.edges;
        e.hit(1);
        if input.len() < 6 {
            e.hit(2);
            return None;
        }
        // Some ordinary parsing work that gives the fuzzer coverage to play with.
        for &b in input.iter().take(16) {
            if b.is_ascii_digit() {
                e.hit(10);
            } else if b.is_ascii_uppercase() {
                e.hit(11);
            } else {
                e.hit(12);
            }
        }
        if input.first() == Some(&b'S') {
            e.hit(3);
            if input.get(1) == Some(&b'N') {
                e.hit(4);
                if input.get(2) == Some(&b'A') {
                    e.hit(5);
                    if input.get(3) == Some(&b'P') {
                        e.hit(6);
                        let declared = usize::from(*input.get(4)?);
                        if declared == input.len() - 5 {
                            e.hit(7);
                            if input.get(5) == Some(&0x42) {
                                e.hit(8);
                                return Some(7);
                            }
                        }
                    }
                }
            }
        }
        None
    }

    /// Whether `input` triggers the planted bug.
    pub fn crashes(input: &[u8]) -> bool {
        ParserTarget::new().parse(input).is_some()
    }
}

impl FuzzTarget for ParserTarget {
    type Error = Infallible;

    fn max_input_len(&self) -> usize {
        4096
    }

    fn run(&mut self, input: &[u8], _timeout: Duration) -> Result<RunOutcome, Infallible> {
        self.runs += 1;
        self.edges.start_run();
        Ok(match self.parse(input) {
            Some(code) => RunOutcome::Crash(CrashInfo {
                kind: CrashKind::Reported { code },
                pc: 0x40_1000,
            }),
            None => RunOutcome::Normal { code: 0 },
        })
    }

    fn coverage_map(&mut self) -> &mut [u8] {
        self.edges.map_mut()
    }

    fn restores(&self) -> Option<u64> {
        Some(self.runs)
    }
}

/// Ends runs through every outcome, chosen by the first byte:
/// 'C' CRASH (code = second byte % 3), 'E' exception #PF (vector 14), 'G' #GP, 'T' triple fault,
/// 'M' emulation failure, 'H' hang; anything else ends normally.
pub struct OutcomeTarget {
    edges: Edges,
    /// In coverage-dedup tests: crashes keep one pc and code but their coverage follows byte 1.
    pub same_crash_everywhere: bool,
    pub max_len: usize,
}

impl OutcomeTarget {
    pub fn new() -> Self {
        Self {
            edges: Edges::new(),
            same_crash_everywhere: false,
            max_len: 64,
        }
    }
}

impl FuzzTarget for OutcomeTarget {
    type Error = Infallible;

    fn max_input_len(&self) -> usize {
        self.max_len
    }

    fn run(&mut self, input: &[u8], _timeout: Duration) -> Result<RunOutcome, Infallible> {
        let e = &mut self.edges;
        e.start_run();
        e.hit(100);
        let first = input.first().copied().unwrap_or(0);
        let second = input.get(1).copied().unwrap_or(0);
        e.hit(200 + u32::from(first));
        if self.same_crash_everywhere {
            if first == b'C' {
                e.hit(1000 + u32::from(second % 8));
                return Ok(RunOutcome::Crash(CrashInfo {
                    kind: CrashKind::Reported { code: 1 },
                    pc: 0x1000,
                }));
            }
            return Ok(RunOutcome::Normal { code: 0 });
        }
        let crash = |kind, pc| Ok(RunOutcome::Crash(CrashInfo { kind, pc }));
        match first {
            b'C' => {
                let code = u32::from(second % 3);
                e.hit(500 + code);
                crash(CrashKind::Reported { code }, 0x2000)
            }
            b'E' => crash(CrashKind::Exception { vector: 14 }, 0x3000),
            b'G' => crash(CrashKind::Exception { vector: 13 }, 0x3100),
            b'T' => crash(CrashKind::TripleFault, 0x4000),
            b'M' => crash(CrashKind::EmulationFailure, 0x5000),
            b'H' => Ok(RunOutcome::Hang),
            _ => Ok(RunOutcome::Normal { code: 0 }),
        }
    }

    fn coverage_map(&mut self) -> &mut [u8] {
        self.edges.map_mut()
    }
}

/// A VMM failure after `fail_after` runs.
#[derive(Debug)]
pub struct VmmFailure;

impl fmt::Display for VmmFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KVM_RUN failed: Bad address (os error 14)")
    }
}

impl std::error::Error for VmmFailure {}

pub struct FailingTarget {
    edges: Edges,
    runs: u64,
    pub fail_after: u64,
}

impl FailingTarget {
    pub fn new(fail_after: u64) -> Self {
        Self {
            edges: Edges::new(),
            runs: 0,
            fail_after,
        }
    }
}

impl FuzzTarget for FailingTarget {
    type Error = VmmFailure;

    fn max_input_len(&self) -> usize {
        64
    }

    fn run(&mut self, input: &[u8], _timeout: Duration) -> Result<RunOutcome, VmmFailure> {
        self.runs += 1;
        if self.runs > self.fail_after {
            return Err(VmmFailure);
        }
        self.edges.start_run();
        self.edges
            .hit(u32::from(input.first().copied().unwrap_or(0)));
        Ok(RunOutcome::Normal { code: 0 })
    }

    fn coverage_map(&mut self) -> &mut [u8] {
        self.edges.map_mut()
    }
}

/// A fresh, empty directory for one test.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fuzz-harness-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// File names in a directory that look like AFL++ entries (`id:...`), sorted.
pub fn afl_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|listing| {
            listing
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("id:"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The value of `key` in a fuzzer_stats text.
pub fn stat(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        (k.trim() == key).then(|| v.trim().to_string())
    })
}
