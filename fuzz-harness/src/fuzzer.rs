//! The fuzzer: configuration, assembly of the LibAFL pipeline around one [`FuzzTarget`], the run
//! loop and its summary.
//!
//! The pipeline: LibAFL's havoc + token mutations (stacked by [`HavocMutator`]), its calibration
//! stage, its power-schedule mutational stage, its weighted scheduler (FAST schedule) inside the
//! minimizer wrapper (the weighted scheduler fails at run time without it), its in-memory +
//! on-disk corpora; ours: the sparse coverage observer and feedback, the objective with crash
//! deduplication, the executor, AFL++ naming and statistics.

use std::cell::RefCell;
use std::fmt;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use libafl::corpus::{Corpus, InMemoryOnDiskCorpus};
use libafl::events::{
    Event, EventFirer, EventReceiver, EventRestarter, EventWithStats, ProgressReporter,
    SendExiting, SimpleEventManager,
};
use libafl::feedback_or;
use libafl::feedbacks::MapFeedbackMetadata;
use libafl::fuzzer::{Evaluator, Fuzzer as _, StdFuzzer};
use libafl::inputs::BytesInput;
use libafl::monitors::NopMonitor;
use libafl::mutators::{havoc_mutations, tokens_mutations, I2SRandReplace, Tokens};
use libafl::observers::CanTrack;
use libafl::schedulers::powersched::PowerSchedule;
use libafl::schedulers::{IndexesLenTimeMinimizerScheduler, StdWeightedScheduler};
use libafl::stages::{CalibrationStage, StdMutationalStage, StdPowerMutationalStage};
use libafl::state::{HasCorpus, HasExecutions, HasMaxSize, StdState};
use libafl::{Error, HasMetadata, HasNamedMetadata, HasObjective};
use libafl_bolts::rands::StdRand;
use libafl_bolts::tuples::{tuple_list, Handled, Merge};

use crate::campaign::{Campaign, PendingInput, SharedCampaign, StopReason};
use crate::cmplog::CmpLogStage;
use crate::coverage::EdgeObserver;
use crate::dictionary::{self, DictError};
use crate::executor::{ExecutorFailure, OutcomeObserver, StopConditions, TargetExecutor};
use crate::feedback::EdgeFeedback;
use crate::mutator::HavocMutator;
use crate::names::Origin;
use crate::output::{self, OutputError, OutputLayout, ResumeInfo};
use crate::queue::QueueNamer;
use crate::report::Reporter;
use crate::seeds::{self, LoadedSeeds, Seed, SeedError, DEFAULT_SEED};
use crate::solutions::{DedupMode, KnownSolutions, SolutionFeedback};
use crate::stats::StatsContext;
use crate::status::{self, StatusMode};
use crate::sync_hook::SyncHook;
use crate::target::FuzzTarget;

/// Name of the coverage observer (and of its history in LibAFL's state).
pub const EDGES_NAME: &str = "edges";

/// AFL++'s default timeout per run.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(1000);

/// LibAFL's state as this engine builds it: the queue and the crashes in memory and on disk.
pub type FuzzState = StdState<
    InMemoryOnDiskCorpus<BytesInput>,
    BytesInput,
    StdRand,
    InMemoryOnDiskCorpus<BytesInput>,
>;

/// What to fuzz with, where to write, when to stop.
#[derive(Debug, Clone)]
pub struct FuzzConfig {
    /// Output directory (AFL++'s `-o`); this instance writes into `out_dir/instance_name`.
    pub out_dir: PathBuf,
    /// This instance's directory name (`default`; one per job when several fuzz one directory).
    pub instance_name: String,
    /// Seed directories (AFL++'s `-i`). Ignored when `out_dir` already holds a queue (resume).
    pub corpus_dirs: Vec<PathBuf>,
    /// AFL/libFuzzer dictionary.
    pub dict: Option<PathBuf>,
    /// Stop after this much time in this session.
    pub max_time: Option<Duration>,
    /// Stop after this many executions in this session.
    pub max_execs: Option<u64>,
    /// Time limit of one run; longer runs are hangs.
    pub timeout: Duration,
    /// Stop after the first saved crash.
    pub stop_on_crash: bool,
    /// Comparison feedback: each queue entry runs once with the target's comparison log on,
    /// and input-to-state mutations use what it compared (AFL++'s `-c`, on by default here).
    pub cmplog: bool,
    /// How crashes are deduplicated.
    pub dedup: DedupMode,
    /// Seed of the random number generator (random when `None`).
    pub seed: Option<u64>,
    /// How the live status is shown on stderr.
    pub status: StatusMode,
    /// `afl_banner` in `fuzzer_stats` (e.g. the target's name).
    pub banner: String,
    /// The command line, for `cmdline`, `fuzzer_setup` and `fuzzer_stats`.
    pub command_line: Vec<String>,
}

impl FuzzConfig {
    /// Defaults (AFL++'s where it has one) writing into `out_dir`.
    pub fn new(out_dir: impl Into<PathBuf>) -> Self {
        Self {
            out_dir: out_dir.into(),
            instance_name: output::INSTANCE_NAME.to_string(),
            corpus_dirs: Vec::new(),
            dict: None,
            max_time: None,
            max_execs: None,
            timeout: DEFAULT_TIMEOUT,
            stop_on_crash: false,
            cmplog: true,
            dedup: DedupMode::default(),
            seed: None,
            status: StatusMode::default(),
            banner: "snapvmm".to_string(),
            command_line: std::env::args().collect(),
        }
    }
}

/// Why fuzzing could not start or go on. Every variant prints as one line (with its sources).
#[derive(Debug, thiserror::Error)]
pub enum FuzzError {
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error(transparent)]
    Dict(#[from] DictError),
    #[error(transparent)]
    Seeds(#[from] SeedError),
    #[error("instance name {0:?} is not 1-64 letters, digits, _ or -")]
    BadInstanceName(String),
    #[error("the timeout per run must be at least 1 ms")]
    BadTimeout,
    #[error("the target takes no input (its largest input is 0 bytes)")]
    NoInput,
    #[error("the target has no coverage map")]
    NoCoverageMap,
    #[error("every seed crashes or hangs the target, nothing to fuzz from (see {dir})")]
    NoUsableSeed { dir: PathBuf },
    #[error("the target wrote no coverage for any seed; is it instrumented?")]
    NoCoverage,
    #[error("the target failed")]
    Target(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("fuzzing engine: {0}")]
    Engine(String),
}

impl From<Error> for FuzzError {
    fn from(e: Error) -> Self {
        // LibAFL's errors may carry a backtrace on later lines: keep the first.
        let text = e.to_string();
        FuzzError::Engine(text.lines().next().unwrap_or("unknown error").to_string())
    }
}

/// How a campaign went.
#[derive(Debug, Clone)]
pub struct FuzzSummary {
    pub stop_reason: StopReason,
    /// This session's duration and executions.
    pub session_time: Duration,
    pub session_execs: u64,
    /// Whole-campaign figures (resumed sessions included).
    pub total_execs: u64,
    pub execs_per_sec: f64,
    pub corpus_count: u64,
    pub edges: u64,
    pub saved_crashes: u64,
    pub saved_hangs: u64,
    /// Crashing/hanging runs of this session, duplicates included.
    pub crashing_runs: u64,
    pub hanging_runs: u64,
    /// Crash and hang files written in this session.
    pub crash_files: Vec<PathBuf>,
    pub hang_files: Vec<PathBuf>,
    /// The instance directory (`out_dir/instance_name`).
    pub instance_dir: PathBuf,
    pub warnings: Vec<String>,
}

impl fmt::Display for FuzzSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let reason = match self.stop_reason {
            StopReason::MaxTime => "time limit reached",
            StopReason::FirstCrash => "first crash found",
            StopReason::StopFlag => "stopped",
            StopReason::MaxExecs => "execution limit reached",
        };
        writeln!(f, "fuzzing ended: {reason}")?;
        writeln!(
            f,
            "  {} execs in {} ({} execs/s), corpus {}, edges {}",
            self.session_execs,
            status::clock(self.session_time),
            status::human(self.execs_per_sec),
            self.corpus_count,
            self.edges
        )?;
        writeln!(
            f,
            "  crashes saved {} ({} crashing runs), hangs saved {} ({} hanging runs)",
            self.saved_crashes, self.crashing_runs, self.saved_hangs, self.hanging_runs
        )?;
        for file in &self.crash_files {
            writeln!(f, "  crash: {}", file.display())?;
        }
        write!(f, "  output: {}", self.instance_dir.display())
    }
}

/// One fuzzing campaign over one target.
pub struct Fuzzer<T: FuzzTarget> {
    config: FuzzConfig,
    target: T,
    tokens: Vec<Vec<u8>>,
    layout: OutputLayout,
    resume: ResumeInfo,
    seeds: LoadedSeeds,
    stop: Arc<AtomicBool>,
    campaign: SharedCampaign,
    max_input_len: usize,
    map_len: usize,
}

impl<T: FuzzTarget> Fuzzer<T> {
    /// Checks the configuration, reads the dictionary and seeds, prepares the output directory.
    pub fn new(config: FuzzConfig, mut target: T) -> Result<Self, FuzzError> {
        if config.timeout < Duration::from_millis(1) {
            return Err(FuzzError::BadTimeout);
        }
        let max_input_len = target.max_input_len();
        if max_input_len == 0 {
            return Err(FuzzError::NoInput);
        }
        let map_len = target.coverage_map().len();
        if map_len == 0 {
            return Err(FuzzError::NoCoverageMap);
        }
        let tokens = match &config.dict {
            Some(path) => dictionary::load(path)?,
            None => Vec::new(),
        };
        seeds::check_dirs(&config.corpus_dirs)?;
        if !output::is_valid_instance_name(&config.instance_name) {
            return Err(FuzzError::BadInstanceName(config.instance_name.clone()));
        }
        let layout = OutputLayout::new(&config.out_dir, &config.instance_name);
        layout.create()?;
        let resume = output::scan_existing(&layout, map_len)?;
        let mut seeds = if resume.is_resume() {
            LoadedSeeds::default()
        } else {
            seeds::load(&config.corpus_dirs, max_input_len)?
        };
        if resume.is_resume() && !config.corpus_dirs.is_empty() {
            seeds.warnings.push(format!(
                "warning: resuming from {}, the corpus directories are not read",
                layout.queue.display()
            ));
        }
        let campaign = Rc::new(RefCell::new(Campaign::new(
            layout.clone(),
            config.stop_on_crash,
        )));
        Ok(Self {
            config,
            target,
            tokens,
            layout,
            resume,
            seeds,
            stop: Arc::new(AtomicBool::new(false)),
            campaign,
            max_input_len,
            map_len,
        })
    }

    /// The hook a shared-finds event manager (LLMP) runs on what other fuzzers send: it names
    /// their inputs `sync:`, and stops this campaign when one of them stopped at its first crash
    /// (with `stop_on_crash`).
    pub fn sync_hook(&self) -> SyncHook {
        SyncHook::new(
            Rc::clone(&self.campaign),
            Arc::clone(&self.stop),
            self.config.stop_on_crash,
        )
    }

    /// The flag that stops the campaign when set (from a signal handler, another thread, ...).
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.stop)
    }

    /// Whether this campaign resumes an earlier one from its queue.
    pub fn is_resume(&self) -> bool {
        self.resume.is_resume()
    }

    /// Fuzzes until a stop condition, then writes the final statistics.
    pub fn run(self) -> Result<FuzzSummary, FuzzError> {
        self.run_with(SimpleEventManager::new(NopMonitor::new()))
    }

    /// `run` with the event manager `mgr`: LibAFL's simple one for a lone fuzzer, its LLMP one for
    /// fuzzers that share what they find (`crate::jobs`). It is told when this fuzzer exits.
    pub fn run_with<EM>(self, mut mgr: EM) -> Result<FuzzSummary, FuzzError>
    where
        EM: EventFirer<BytesInput, FuzzState>
            + EventReceiver<BytesInput, FuzzState>
            + EventRestarter<FuzzState>
            + ProgressReporter<FuzzState>
            + SendExiting,
    {
        let result = self.run_inner(&mut mgr);
        // The broker forgets this client (and may end when it was the last one).
        let _ = mgr.send_exiting();
        result
    }

    fn run_inner<EM>(self, mgr: &mut EM) -> Result<FuzzSummary, FuzzError>
    where
        EM: EventFirer<BytesInput, FuzzState>
            + EventReceiver<BytesInput, FuzzState>
            + EventRestarter<FuzzState>
            + ProgressReporter<FuzzState>
            + SendExiting,
    {
        let Fuzzer {
            config,
            target,
            tokens,
            layout,
            resume,
            seeds,
            stop,
            campaign,
            max_input_len,
            map_len,
        } = self;

        {
            let mut c = campaign.borrow_mut();
            c.started = std::time::Instant::now();
            c.start_unix = crate::campaign::unix_now();
            c.previous_run_time = resume.previous_run_time;
            c.previous_execs = resume.previous_execs;
            c.next_crash_id = resume.next_crash_id;
            c.next_hang_id = resume.next_hang_id;
            c.saved_crashes = resume.crashes.len() as u64;
            c.saved_hangs = resume.saved_hangs;
        }
        output::write_setup_files(&layout, &config.command_line)?;
        output::write_crashes_readme(&layout, &config.command_line)?;

        let edges = EdgeObserver::new(EDGES_NAME, map_len).track_indices();
        let outcome = OutcomeObserver::new("outcome");
        let (edges_handle, outcome_handle) = (edges.handle(), outcome.handle());

        let edge_feedback = EdgeFeedback::new(&edges);
        let calibration = CalibrationStage::new(&edge_feedback);
        let mut feedback = feedback_or!(edge_feedback, QueueNamer::new(Rc::clone(&campaign)));
        let mut objective = SolutionFeedback::new(
            Rc::clone(&campaign),
            config.dedup,
            edges_handle.clone(),
            outcome_handle.clone(),
            KnownSolutions {
                crashes: resume.crash_infos.clone(),
                crash_history: resume.crash_history.clone(),
                hang_history: resume.hang_history.clone(),
            },
        );

        // No metadata files and no lock files: the directories hold only AFL++-named inputs.
        let queue =
            InMemoryOnDiskCorpus::with_meta_format_and_prefix(&layout.queue, None, None, false)?;
        let solutions =
            InMemoryOnDiskCorpus::with_meta_format_and_prefix(&layout.crashes, None, None, false)?;
        let rand = match config.seed {
            Some(seed) => StdRand::with_seed(seed),
            None => StdRand::new(),
        };
        let mut state: FuzzState =
            StdState::new(rand, queue, solutions, &mut feedback, &mut objective)?;
        state.set_max_size(max_input_len);
        if !tokens.is_empty() {
            let mut dict = Tokens::new();
            dict.add_tokens(tokens.iter());
            state.add_metadata(dict);
        }

        let mutator = HavocMutator::new(
            havoc_mutations().merge(tokens_mutations()),
            Rc::clone(&campaign),
        );
        let power: StdPowerMutationalStage<_, _, BytesInput, _, _, _> =
            StdPowerMutationalStage::new(mutator);
        let scheduler = IndexesLenTimeMinimizerScheduler::new(
            &edges,
            StdWeightedScheduler::with_schedule(&mut state, &edges, Some(PowerSchedule::fast())),
        );
        let mut fuzzer = StdFuzzer::new(scheduler, feedback, objective);

        let reporter = Reporter::new(
            layout.clone(),
            StatsContext {
                banner: config.banner.clone(),
                command_line: config.command_line.join(" "),
                exec_timeout_ms: u64::try_from(config.timeout.as_millis()).unwrap_or(u64::MAX),
            },
            EDGES_NAME,
            map_len,
            config.status,
        );
        let mut executor = TargetExecutor::new(
            target,
            tuple_list!(edges, outcome),
            edges_handle,
            outcome_handle,
            config.timeout,
            Rc::clone(&campaign),
            reporter,
            StopConditions {
                flag: stop,
                max_time: config.max_time,
                max_execs: config.max_execs,
            },
        );
        let i2s: StdMutationalStage<_, _, BytesInput, BytesInput, _, _, _> =
            StdMutationalStage::new(HavocMutator::named(
                "i2s",
                tuple_list!(I2SRandReplace::new()),
                Rc::clone(&campaign),
            ));
        let mut stages = tuple_list!(calibration, CmpLogStage::new(config.cmplog), i2s, power);

        let mut warnings = seeds.warnings.clone();
        for warning in &warnings {
            executor.reporter_mut().message(warning);
        }

        // The initial queue: the resumed one, or the seeds, or the default seed.
        let initial: Vec<(PendingInput, Vec<u8>)> =
            if resume.is_resume() {
                let mut inputs = Vec::new();
                for entry in &resume.queue {
                    let (bytes, full_len) = seeds::read_capped(&entry.path, max_input_len)
                        .map_err(|source| SeedError::Read {
                            path: entry.path.clone(),
                            source,
                        })?;
                    if full_len > max_input_len as u64 {
                        warnings.push(format!(
                        "warning: queue entry {} truncated to the target's {max_input_len} bytes",
                        entry.path.display()
                    ));
                    }
                    let pending = PendingInput::Resumed {
                        id: entry.id,
                        file_name: entry.file_name.clone(),
                    };
                    inputs.push((pending, bytes));
                }
                inputs
            } else {
                let seeds = if seeds.seeds.is_empty() {
                    vec![Seed {
                        name: "default".to_string(),
                        bytes: DEFAULT_SEED.to_vec(),
                    }]
                } else {
                    seeds.seeds
                };
                seeds
                    .into_iter()
                    .map(|seed| {
                        (
                            PendingInput::New(Origin::Seed { name: seed.name }),
                            seed.bytes,
                        )
                    })
                    .collect()
            };

        let mut stopped_early = false;
        for (pending, bytes) in initial {
            campaign.borrow_mut().pending = pending;
            match fuzzer.add_input(&mut state, &mut executor, mgr, BytesInput::new(bytes)) {
                Ok(_) => {}
                Err(Error::ShuttingDown) => {
                    stopped_early = true;
                    break;
                }
                Err(e) => return Err(failure_or(&mut executor, e)),
            }
        }
        if let Some(failure) = executor.take_failure() {
            return Err(failure.into());
        }
        if !stopped_early && state.corpus().count() == 0 {
            return Err(FuzzError::NoUsableSeed {
                dir: layout.instance.clone(),
            });
        }
        // LibAFL's calibration would stop with a less helpful message on the first entry.
        let covered = state
            .named_metadata::<MapFeedbackMetadata<u8>>(EDGES_NAME)
            .map_or(0, |meta| meta.num_covered_map_indexes);
        if !stopped_early && covered == 0 {
            return Err(FuzzError::NoCoverage);
        }

        if !stopped_early {
            loop {
                match fuzzer.fuzz_one(&mut stages, &mut executor, &mut state, mgr) {
                    Ok(_) => {}
                    Err(Error::ShuttingDown) => break,
                    Err(e) => return Err(failure_or(&mut executor, e)),
                }
            }
        }
        if let Some(failure) = executor.take_failure() {
            // Keep what was learnt about crashes and hangs for the next session anyway.
            let (crash_history, hang_history) = fuzzer.objective().histories();
            let _ = output::write_histories(&layout, crash_history, hang_history);
            return Err(failure.into());
        }

        if campaign.borrow().stop_reason == Some(StopReason::FirstCrash) {
            // Fuzzers sharing finds with this one stop too (`SyncHook`).
            let stop = EventWithStats::with_current_time(Event::Stop, *state.executions());
            mgr.fire(&mut state, stop)?;
        }
        let (crash_history, hang_history) = fuzzer.objective().histories();
        output::write_histories(&layout, crash_history, hang_history)?;
        executor.report_now(&state)?;
        executor.reporter_mut().finish();
        let snapshot = executor.reporter_mut().last_snapshot().clone();
        let c = campaign.borrow();
        let summary = FuzzSummary {
            stop_reason: c.stop_reason.unwrap_or(StopReason::StopFlag),
            session_time: c.started.elapsed(),
            session_execs: c.session_execs,
            total_execs: c.total_execs(),
            execs_per_sec: snapshot.execs_per_sec,
            corpus_count: snapshot.corpus_count,
            edges: snapshot.edges_found,
            saved_crashes: c.saved_crashes,
            saved_hangs: c.saved_hangs,
            crashing_runs: c.total_crashes,
            hanging_runs: c.total_hangs,
            crash_files: c.crash_files.clone(),
            hang_files: c.hang_files.clone(),
            instance_dir: layout.instance.clone(),
            warnings,
        };
        if config.status != StatusMode::Off {
            eprintln!("{summary}");
        }
        Ok(summary)
    }
}

/// The executor's recorded failure if there is one (the real cause), else the LibAFL error.
fn failure_or<T: FuzzTarget, OT>(executor: &mut TargetExecutor<T, OT>, e: Error) -> FuzzError {
    match executor.take_failure() {
        Some(failure) => failure.into(),
        None => e.into(),
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<ExecutorFailure<E>> for FuzzError {
    fn from(failure: ExecutorFailure<E>) -> Self {
        match failure {
            ExecutorFailure::Target(e) => FuzzError::Target(Box::new(e)),
            ExecutorFailure::Output(e) => FuzzError::Output(e),
        }
    }
}
