//! snapvmm's fuzzing engine, on LibAFL: it fuzzes one snapshot target (anything implementing
//! [`FuzzTarget`]; the VMM implements it for its VM) and writes AFL++'s output layout, names,
//! `fuzzer_stats` and `plot_data`, so AFL++'s tools work on the result.
//!
//! ```no_run
//! # use fuzz_harness::{FuzzConfig, Fuzzer, FuzzTarget};
//! # fn demo<T: FuzzTarget>(target: T) -> Result<(), fuzz_harness::FuzzError> {
//! let mut config = FuzzConfig::new("out");
//! config.max_time = Some(std::time::Duration::from_secs(60));
//! let fuzzer = Fuzzer::new(config, target)?;
//! let _stop = fuzzer.stop_flag(); // set it from a Ctrl-C handler
//! let summary = fuzzer.run()?;
//! println!("{} crashes", summary.saved_crashes);
//! # Ok(()) }
//! ```
//!
//! What is LibAFL's and what is written here (and why) is said at the top of each module.

pub mod campaign;
pub mod cmplog;
pub mod comparison_log;
pub mod coverage;
pub mod dictionary;
pub mod executor;
pub mod feedback;
pub mod fuzzer;
pub mod jobs;
pub mod jobs_status;
pub mod mutator;
pub mod names;
pub mod output;
pub mod plot;
pub mod queue;
pub mod report;
pub mod repro;
pub mod seeds;
pub mod solutions;
pub mod stats;
pub mod status;
pub mod sync_hook;
pub mod target;
pub mod vm_target;

pub use campaign::StopReason;
pub use fuzzer::{FuzzConfig, FuzzError, FuzzState, FuzzSummary, Fuzzer, DEFAULT_TIMEOUT};
pub use jobs::{JobContext, JobsConfig, JobsError, JobsOutcome};
pub use plot::{plot, PlotError};
pub use repro::{replay, Replay, ReproError};
pub use solutions::DedupMode;
pub use status::StatusMode;
pub use target::{CrashInfo, CrashKind, FuzzTarget, RunOutcome};
pub use vm_target::{VmTarget, VmTargetError, DEFAULT_BOOT_TIMEOUT};
