//! Engine CPU per execution with a 64 KiB map: this crate's pipeline (fused sparse pass) against
//! LibAFL's stock one (`HitcountsMapObserver<StdMapObserver>` + `MaxMapFeedback`), same
//! mutators, stages and scheduler, over a target that costs almost nothing.
//!
//! `cargo test --release -p fuzz-harness --test overhead -- --ignored --nocapture`

use std::convert::Infallible;
use std::time::Duration;

use fuzz_harness::{FuzzConfig, FuzzTarget, Fuzzer, RunOutcome, StatusMode};
use libafl::corpus::InMemoryCorpus;
use libafl::events::SimpleEventManager;
use libafl::executors::{Executor, ExitKind, HasObservers};
use libafl::feedbacks::{CrashFeedback, MaxMapFeedback};
use libafl::fuzzer::{Evaluator, Fuzzer as _, StdFuzzer};
use libafl::inputs::BytesInput;
use libafl::monitors::NopMonitor;
use libafl::mutators::{havoc_mutations, tokens_mutations, HavocScheduledMutator};
use libafl::observers::{CanTrack, HitcountsMapObserver, StdMapObserver};
use libafl::schedulers::powersched::PowerSchedule;
use libafl::schedulers::{IndexesLenTimeMinimizerScheduler, StdWeightedScheduler};
use libafl::stages::{CalibrationStage, StdPowerMutationalStage};
use libafl::state::{HasExecutions, HasMaxSize, StdState};
use libafl::Error;
use libafl_bolts::rands::StdRand;
use libafl_bolts::tuples::{tuple_list, Merge, RefIndexable};

const MAP_LEN: usize = 64 * 1024;
const EXECS: u64 = 300_000;

/// Sets 64-80 edges spread over the map, a few of them chosen by the input.
struct CheapTarget {
    map: Vec<u8>,
}

impl CheapTarget {
    fn new() -> Self {
        Self {
            map: vec![0; MAP_LEN],
        }
    }
}

impl FuzzTarget for CheapTarget {
    type Error = Infallible;

    fn max_input_len(&self) -> usize {
        1024
    }

    fn run(&mut self, input: &[u8], _timeout: Duration) -> Result<RunOutcome, Infallible> {
        for i in 0..64usize {
            if let Some(c) = self.map.get_mut((i * 1021) % MAP_LEN) {
                *c = c.wrapping_add(1);
            }
        }
        for (i, &b) in input.iter().take(16).enumerate() {
            if let Some(c) = self
                .map
                .get_mut((usize::from(b % 4) * 7919 + i * 131) % MAP_LEN)
            {
                *c = c.wrapping_add(1);
            }
        }
        Ok(RunOutcome::Normal { code: 0 })
    }

    fn coverage_map(&mut self) -> &mut [u8] {
        &mut self.map
    }
}

/// CPU time (user + system) of this process.
fn cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the zero-initialised rusage we point it to.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    assert_eq!(rc, 0);
    // SAFETY: initialised by getrusage above.
    let usage = unsafe { usage.assume_init() };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// The stock LibAFL executor equivalent: run, count.
struct StockExecutor<OT> {
    target: CheapTarget,
    observers: OT,
}

impl<OT> HasObservers for StockExecutor<OT> {
    type Observers = OT;
    fn observers(&self) -> RefIndexable<&OT, OT> {
        RefIndexable::from(&self.observers)
    }
    fn observers_mut(&mut self) -> RefIndexable<&mut OT, OT> {
        RefIndexable::from(&mut self.observers)
    }
}

impl<EM, S: HasExecutions, Z, OT> Executor<EM, BytesInput, S, Z> for StockExecutor<OT> {
    fn run_target(
        &mut self,
        _fuzzer: &mut Z,
        state: &mut S,
        _mgr: &mut EM,
        input: &BytesInput,
    ) -> Result<ExitKind, Error> {
        *state.executions_mut() += 1;
        let bytes: &[u8] = input.as_ref();
        let _ = self.target.run(bytes, Duration::from_secs(1));
        Ok(ExitKind::Ok)
    }
}

fn stock_per_exec() -> Duration {
    let mut target = CheapTarget::new();
    let map_ptr = target.map.as_mut_ptr();
    // SAFETY: the map is a Vec owned by the target, which lives (and never reallocates) as long as
    // the executor holding both the target and this observer.
    let base = unsafe { StdMapObserver::from_mut_ptr("edges", map_ptr, MAP_LEN) };
    let edges = HitcountsMapObserver::new(base).track_indices();
    let map_feedback = MaxMapFeedback::new(&edges);
    let calibration = CalibrationStage::new(&map_feedback);
    let mut feedback = map_feedback;
    let mut objective = CrashFeedback::new();
    let mut state = StdState::new(
        StdRand::with_seed(1),
        InMemoryCorpus::<BytesInput>::new(),
        InMemoryCorpus::new(),
        &mut feedback,
        &mut objective,
    )
    .unwrap();
    state.set_max_size(1024);
    let mutator = HavocScheduledMutator::new(havoc_mutations().merge(tokens_mutations()));
    let power: StdPowerMutationalStage<_, _, BytesInput, _, _, _> =
        StdPowerMutationalStage::new(mutator);
    let scheduler = IndexesLenTimeMinimizerScheduler::new(
        &edges,
        StdWeightedScheduler::with_schedule(&mut state, &edges, Some(PowerSchedule::fast())),
    );
    let mut fuzzer = StdFuzzer::new(scheduler, feedback, objective);
    let mut executor = StockExecutor {
        target,
        observers: tuple_list!(edges),
    };
    let mut mgr = SimpleEventManager::new(NopMonitor::new());
    let mut stages = tuple_list!(calibration, power);
    fuzzer
        .add_input(
            &mut state,
            &mut executor,
            &mut mgr,
            BytesInput::new(b"hello".to_vec()),
        )
        .unwrap();
    let start = cpu_time();
    let start_execs = *state.executions();
    while *state.executions() - start_execs < EXECS {
        fuzzer
            .fuzz_one(&mut stages, &mut executor, &mut state, &mut mgr)
            .unwrap();
    }
    (cpu_time() - start) / u32::try_from(*state.executions() - start_execs).unwrap()
}

fn fused_per_exec() -> Duration {
    let out = std::env::temp_dir().join(format!("fuzz-overhead-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let mut config = FuzzConfig::new(&out);
    config.status = StatusMode::Off;
    config.seed = Some(1);
    config.max_execs = Some(EXECS);
    let start = cpu_time();
    let summary = Fuzzer::new(config, CheapTarget::new())
        .unwrap()
        .run()
        .unwrap();
    let per_exec = (cpu_time() - start) / u32::try_from(summary.session_execs).unwrap();
    let _ = std::fs::remove_dir_all(&out);
    per_exec
}

fn target_only_per_exec() -> Duration {
    let mut target = CheapTarget::new();
    let input = b"hello world, some input".to_vec();
    let start = cpu_time();
    for _ in 0..EXECS {
        let _ = target.run(&input, Duration::from_secs(1));
        std::hint::black_box(target.coverage_map().first());
        for c in target.coverage_map().iter_mut().step_by(1021).take(64) {
            *c = 0;
        }
    }
    (cpu_time() - start) / u32::try_from(EXECS).unwrap()
}

/// The fused pass alone: scan, classify, record and clear a 64 KiB map with ~80 entries set.
fn sparse_pass_per_exec() -> Duration {
    let mut target = CheapTarget::new();
    let mut observer = fuzz_harness::coverage::EdgeObserver::new("edges", MAP_LEN);
    let input = b"hello world, some input".to_vec();
    let mut total = Duration::ZERO;
    for _ in 0..EXECS {
        let _ = target.run(&input, Duration::from_secs(1));
        let start = std::time::Instant::now();
        observer.take_from(target.coverage_map());
        total += start.elapsed();
    }
    std::hint::black_box(observer.set_entries().len());
    total / u32::try_from(EXECS).unwrap()
}

#[test]
#[ignore = "a benchmark: run with --ignored --nocapture"]
fn engine_cpu_per_execution_fused_vs_stock() {
    let target = target_only_per_exec();
    let sparse = sparse_pass_per_exec();
    let fused = fused_per_exec();
    let stock = stock_per_exec();
    println!("engine CPU per execution, 64 KiB map, {EXECS} executions each:");
    println!(
        "  target alone:              {:>8.2} us",
        target.as_secs_f64() * 1e6
    );
    println!(
        "  the sparse pass alone:     {:>8.2} us",
        sparse.as_secs_f64() * 1e6
    );
    println!(
        "  this crate (fused sparse): {:>8.2} us",
        fused.as_secs_f64() * 1e6
    );
    println!(
        "  stock LibAFL 0.16:         {:>8.2} us",
        stock.as_secs_f64() * 1e6
    );
    assert!(fused < stock, "the fused pass must beat the stock pipeline");
}
