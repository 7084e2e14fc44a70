//! Fuzzes a toy in-process parser with the engine, to see the status line and the output layout:
//! `cargo run --release -p fuzz-harness --example toy_fuzz -- OUT_DIR [SECONDS]`.

use std::convert::Infallible;
use std::time::Duration;

use fuzz_harness::{CrashInfo, CrashKind, FuzzConfig, FuzzTarget, Fuzzer, RunOutcome};

const MAP_LEN: usize = 64 * 1024;

/// Crashes on "FUZ" followed by '!' (CRASH code 1), writes AFL-style edges.
struct Toy {
    map: Vec<u8>,
    prev: usize,
}

impl Toy {
    fn hit(&mut self, site: usize) {
        let cur = site.wrapping_mul(0x9e37_79b1) % MAP_LEN;
        if let Some(c) = self.map.get_mut((cur ^ self.prev) % MAP_LEN) {
            *c = c.wrapping_add(1);
        }
        self.prev = cur >> 1;
    }
}

impl FuzzTarget for Toy {
    type Error = Infallible;

    fn max_input_len(&self) -> usize {
        256
    }

    fn run(&mut self, input: &[u8], _timeout: Duration) -> Result<RunOutcome, Infallible> {
        self.prev = 0;
        self.hit(1);
        let mut depth = 0;
        for (i, want) in b"FUZ!".iter().enumerate() {
            if input.get(i) != Some(want) {
                break;
            }
            depth += 1;
            self.hit(10 + i);
        }
        if depth == 4 {
            return Ok(RunOutcome::Crash(CrashInfo {
                kind: CrashKind::Reported { code: 1 },
                pc: 0x1000,
            }));
        }
        Ok(RunOutcome::Normal { code: 0 })
    }

    fn coverage_map(&mut self) -> &mut [u8] {
        &mut self.map
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let out = args.next().ok_or("usage: toy_fuzz OUT_DIR [SECONDS]")?;
    let seconds: u64 = args.next().map_or(Ok(5), |s| s.parse())?;
    let mut config = FuzzConfig::new(out);
    config.max_time = Some(Duration::from_secs(seconds));
    let target = Toy {
        map: vec![0; MAP_LEN],
        prev: 0,
    };
    let summary = Fuzzer::new(config, target)?.run()?;
    println!("{} crash file(s)", summary.saved_crashes);
    Ok(())
}
