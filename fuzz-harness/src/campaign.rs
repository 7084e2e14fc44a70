//! The bookkeeping one fuzzing campaign shares between the engine's parts (naming feedback,
//! objective, mutator, executor): ids, counters and times for AFL++'s names and statistics.
//!
//! One campaign is one fuzzer instance in one process; the parts hold it as
//! `Rc<RefCell<Campaign>>` and borrow it briefly.

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::names::Origin;
use crate::output::OutputLayout;

/// The campaign shared between the engine's parts.
pub type SharedCampaign = Rc<RefCell<Campaign>>;

/// Why a run stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// `max_time` elapsed.
    MaxTime,
    /// The first crash was saved and `stop_on_crash` was set.
    FirstCrash,
    /// The external stop flag was set (Ctrl-C, SIGTERM, ...).
    StopFlag,
    /// `max_execs` executions were done.
    MaxExecs,
}

/// Where the input about to run comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PendingInput {
    /// A new input (a seed or a mutation).
    New(Origin),
    /// An entry of the queue of a resumed campaign, which keeps its id and name.
    Resumed { id: u32, file_name: String },
}

impl PendingInput {
    /// The origin to describe in a crash or hang name.
    pub fn origin(&self) -> Origin {
        match self {
            PendingInput::New(origin) => origin.clone(),
            PendingInput::Resumed { id, .. } => Origin::Seed {
                name: format!("resumed_{id:06}"),
            },
        }
    }
}

/// Counters and times of one campaign.
#[derive(Debug)]
pub struct Campaign {
    /// Where everything is written.
    pub layout: OutputLayout,
    /// When this session started.
    pub started: Instant,
    /// Unix time of this session's start, in seconds.
    pub start_unix: u64,
    /// Run time of earlier sessions of a resumed campaign.
    pub previous_run_time: Duration,
    /// Executions of earlier sessions of a resumed campaign.
    pub previous_execs: u64,
    /// Executions done in this session (mirrors LibAFL's counter, which the executor bumps).
    pub session_execs: u64,
    /// Runs with the comparison log on (one per queue entry; not in `session_execs`).
    pub traced_execs: u64,
    /// Next AFL++ ids.
    pub next_queue_id: u32,
    pub next_crash_id: u32,
    pub next_hang_id: u32,
    /// Where the input about to run comes from (set by the seed loader or the mutator before
    /// each run).
    pub pending: PendingInput,
    /// Unique crashes and hangs saved, in this campaign (earlier sessions included).
    pub saved_crashes: u64,
    pub saved_hangs: u64,
    /// All crashing and hanging runs of this session, duplicates included.
    pub total_crashes: u64,
    pub total_hangs: u64,
    /// Queue entries this session found by mutation.
    pub corpus_found: u32,
    /// Queue entries this session took from other fuzzers (LLMP).
    pub corpus_imported: u32,
    /// Unix seconds of the last new queue entry, crash and hang (0: none yet), as AFL++ writes them.
    pub last_find_unix: u64,
    pub last_crash_unix: u64,
    pub last_hang_unix: u64,
    /// Total executions at the last crash.
    pub last_crash_execs: u64,
    /// Slowest run so far.
    pub slowest_exec: Duration,
    /// Crash and hang files this session wrote, in order.
    pub crash_files: Vec<PathBuf>,
    pub hang_files: Vec<PathBuf>,
    /// Set when a stop condition met inside the engine (the first crash with `stop_on_crash`).
    pub stop_reason: Option<StopReason>,
    /// Whether to stop at the first saved crash.
    pub stop_on_crash: bool,
}

impl Campaign {
    /// A new campaign writing into `layout`.
    pub fn new(layout: OutputLayout, stop_on_crash: bool) -> Self {
        Self {
            layout,
            started: Instant::now(),
            start_unix: unix_now(),
            previous_run_time: Duration::ZERO,
            previous_execs: 0,
            session_execs: 0,
            traced_execs: 0,
            next_queue_id: 0,
            next_crash_id: 0,
            next_hang_id: 0,
            pending: PendingInput::New(Origin::Seed {
                name: "unknown".to_string(),
            }),
            saved_crashes: 0,
            saved_hangs: 0,
            total_crashes: 0,
            total_hangs: 0,
            corpus_found: 0,
            corpus_imported: 0,
            last_find_unix: 0,
            last_crash_unix: 0,
            last_hang_unix: 0,
            last_crash_execs: 0,
            slowest_exec: Duration::ZERO,
            crash_files: Vec::new(),
            hang_files: Vec::new(),
            stop_reason: None,
            stop_on_crash,
        }
    }

    /// Run time of the whole campaign (earlier sessions included).
    pub fn run_time(&self) -> Duration {
        self.previous_run_time + self.started.elapsed()
    }

    /// Milliseconds of campaign run time, for `time:` in names.
    pub fn time_ms(&self) -> u64 {
        u64::try_from(self.run_time().as_millis()).unwrap_or(u64::MAX)
    }

    /// Executions of the whole campaign.
    pub fn total_execs(&self) -> u64 {
        self.previous_execs + self.session_execs
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
