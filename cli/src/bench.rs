//! `snapvmm bench`: restores per second for each restore strategy, guest size and number of
//! pages dirtied per round, side by side with the same loop without restores (the floor), and the
//! SAVE stall. Runs the `snapshot-bench` guest from guest-tools; every figure comes from one run.
//! A client of the library like `snapvmm run`: the same `drive` loop, so the figures include
//! the cost of returning each RESTORE to the caller.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use thiserror::Error;
use vmm::{
    KernelSource, Machine, MachineConfig, MachineError, RestoreStrategy, SerialOutput, VcpuRestore,
    VmEvent,
};

use crate::run::{drive, RunEnd, RunPolicy};

#[derive(Debug, Error)]
pub enum BenchError {
    #[error(transparent)]
    Machine(#[from] MachineError),
    #[error("the bench guest stopped unexpectedly: {reason}")]
    GuestFailed { reason: String },
    #[error("the bench guest never took a snapshot")]
    NoSnapshot,
}

/// One measured configuration.
#[derive(Debug, Clone)]
pub struct BenchResult {
    pub rounds: u32,
    pub elapsed: Duration,
    pub save_stall: Duration,
    pub capture_stall: Duration,
}

impl BenchResult {
    pub fn per_second(&self) -> f64 {
        self.rounds as f64 / self.elapsed.as_secs_f64()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchMode {
    /// The same loop with one cheap device read instead of a RESTORE.
    Floor,
    Restore(RestoreStrategy),
}

impl BenchMode {
    pub fn name(&self) -> &'static str {
        match self {
            BenchMode::Floor => "no restore (floor)",
            BenchMode::Restore(RestoreStrategy::Dirty) => "dirty",
            BenchMode::Restore(RestoreStrategy::Remap) => "remap",
        }
    }
}

/// Runs the bench guest once: it takes a snapshot, then `rounds` times dirties `pages` pages and
/// restores (or, for the floor, does one device read instead).
pub fn run_one(
    kernel: &KernelSource,
    mem_bytes: u64,
    mode: BenchMode,
    pages: u32,
    rounds: u32,
    populate_ram: bool,
) -> Result<BenchResult, BenchError> {
    let mut config = MachineConfig::new(kernel.clone());
    config.mem_bytes = mem_bytes;
    config.serial = SerialOutput::Discard;
    config.cmdline = format!(
        "rounds={rounds} pages={pages} mode={}",
        if mode == BenchMode::Floor {
            "floor"
        } else {
            "loop"
        }
    );
    config.engine.vcpu_restore = VcpuRestore::Auto;
    if let BenchMode::Restore(strategy) = mode {
        config.engine.strategy = strategy;
    }
    let mut machine = Machine::boot(&config)?;
    if populate_ram {
        machine.populate_free_ram();
    }
    let policy = RunPolicy {
        timeout: Some(Duration::from_secs(600)),
        save_dir: None,
        max_restores: Some(rounds as u64),
    };
    let end = drive(&mut machine, &policy);
    let stopped = Instant::now();
    let as_expected = match (&end, mode) {
        (RunEnd::Event(VmEvent::DebugExit { code: 0 }), BenchMode::Floor) => true,
        (RunEnd::RestoreLimit(n), BenchMode::Restore(_)) => *n == rounds as u64,
        _ => false,
    };
    if !as_expected {
        return Err(BenchError::GuestFailed {
            reason: format!("{end:?}"),
        });
    }
    let stats = machine.stats();
    let started = stats.first_save_done.ok_or(BenchError::NoSnapshot)?;
    Ok(BenchResult {
        rounds,
        elapsed: stopped - started,
        save_stall: stats.last_save_stall,
        capture_stall: stats.last_capture_stall,
    })
}

/// Repetitions per configuration; the report gives the median, because other tenants of the host
/// move single runs by tens of percent.
const REPETITIONS: usize = 5;

/// The median run of `REPETITIONS` identical ones.
fn median_of_runs(
    kernel: &KernelSource,
    mem_bytes: u64,
    mode: BenchMode,
    pages: u32,
    rounds: u32,
) -> Result<BenchResult, BenchError> {
    let mut runs = (0..REPETITIONS)
        .map(|_| run_one(kernel, mem_bytes, mode, pages, rounds, false))
        .collect::<Result<Vec<_>, _>>()?;
    runs.sort_by_key(|run| run.elapsed);
    Ok(runs.swap_remove(REPETITIONS / 2))
}

/// Rounds for a configuration: about half a second of work, at least 200.
fn rounds_for(pages: u32) -> u32 {
    (8000 / (1 + pages / 8)).max(200)
}

/// The whole matrix as a Markdown report.
pub fn run_matrix(
    kernel: &KernelSource,
    sizes: &[u64],
    page_counts: &[u32],
) -> Result<String, BenchError> {
    let mut report = String::new();
    let _ = writeln!(
        report,
        "| guest RAM | pages dirtied per round | mode | rounds (median of 5 runs) | restores/s | us per round | % of floor |"
    );
    let _ = writeln!(report, "|---|---|---|---|---|---|---|");
    let mut stalls = Vec::new();
    for &mem in sizes {
        for &pages in page_counts {
            let rounds = rounds_for(pages);
            let floor = median_of_runs(kernel, mem, BenchMode::Floor, pages, rounds)?;
            for mode in [
                BenchMode::Floor,
                BenchMode::Restore(RestoreStrategy::Dirty),
                BenchMode::Restore(RestoreStrategy::Remap),
            ] {
                let result = if mode == BenchMode::Floor {
                    floor.clone()
                } else {
                    median_of_runs(kernel, mem, mode, pages, rounds)?
                };
                let _ = writeln!(
                    report,
                    "| {} MiB | {} | {} | {} | {:.0} | {:.1} | {:.0}% |",
                    mem >> 20,
                    pages,
                    mode.name(),
                    rounds,
                    result.per_second(),
                    1e6 / result.per_second(),
                    100.0 * result.per_second() / floor.per_second()
                );
                eprintln!(
                    "bench: {} MiB, {} pages, {}: {:.0}/s",
                    mem >> 20,
                    pages,
                    mode.name(),
                    result.per_second()
                );
            }
        }
        // SAVE stall with every page of RAM populated (the worst case for the write-protect pass).
        let populated = run_one(
            kernel,
            mem,
            BenchMode::Restore(RestoreStrategy::Dirty),
            1,
            10,
            true,
        )?;
        stalls.push((mem, populated.save_stall, populated.capture_stall));
    }
    let _ = writeln!(report);
    let _ = writeln!(report, "| guest RAM (all pages populated) | SAVE stall (guest stopped) | of which RAM write-protect |");
    let _ = writeln!(report, "|---|---|---|");
    for (mem, stall, capture) in stalls {
        let _ = writeln!(
            report,
            "| {} MiB | {:.2} ms | {:.2} ms |",
            mem >> 20,
            stall.as_secs_f64() * 1e3,
            capture.as_secs_f64() * 1e3
        );
    }
    let _ = writeln!(report);
    let _ = writeln!(
        report,
        "| A/D bits of the written pages' entries (foreign-io, 64 MiB, 10 pages) | rounds (median of 5) | restores/s | shadow MMU resets | A/D invalidations |"
    );
    let _ = writeln!(report, "|---|---|---|---|---|");
    for (label, preset) in [
        ("set by each round", false),
        ("pre-set before the SAVE", true),
    ] {
        let mut runs = (0..REPETITIONS)
            .map(|_| accessed_dirty_round(preset))
            .collect::<Result<Vec<_>, _>>()?;
        runs.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (rate, resets, invalidations) = runs.swap_remove(REPETITIONS / 2);
        let _ = writeln!(
            report,
            "| {label} | {AD_ROUNDS} | {rate:.0} | {resets} | {invalidations} |"
        );
        eprintln!("bench: foreign-io, A/D {label}: {rate:.0}/s");
    }
    Ok(report)
}

/// Rounds of the A/D case.
const AD_ROUNDS: u32 = 3000;

/// The `foreign-io` guest (written outside the project: its own page tables, with 2 MiB pages
/// whose entries have A/D clear, or pre-set with `ad=1`), 10 pages per round: restores per
/// second, shadow MMU resets and A/D invalidations.
fn accessed_dirty_round(preset: bool) -> Result<(f64, u64, u64), BenchError> {
    let guest = guest_tools::BUILT_GUESTS
        .iter()
        .find(|g| g.name == "foreign-io")
        .ok_or(BenchError::NoSnapshot)?;
    let mut config = MachineConfig::new(KernelSource::Builtin {
        name: guest.name,
        image: guest.image,
    });
    config.mem_bytes = 64 << 20;
    config.serial = SerialOutput::Discard;
    config.cmdline = format!("rounds={AD_ROUNDS} pages=10 ad={}", u8::from(preset));
    let mut machine = Machine::boot(&config)?;
    let policy = RunPolicy {
        timeout: Some(Duration::from_secs(600)),
        save_dir: None,
        max_restores: None,
    };
    let end = drive(&mut machine, &policy);
    let stopped = Instant::now();
    if !matches!(end, RunEnd::Event(VmEvent::DebugExit { code: 0 })) {
        return Err(BenchError::GuestFailed {
            reason: format!("{end:?}"),
        });
    }
    let stats = machine.stats();
    let started = stats.first_save_done.ok_or(BenchError::NoSnapshot)?;
    Ok((
        stats.restores as f64 / (stopped - started).as_secs_f64(),
        stats.shadow_mmu_resets,
        stats.shadow_mmu_invalidations,
    ))
}
