//! The objective: which crashes and hangs are new, and where their files go.
//!
//! Written by hand because LibAFL's `CrashFeedback`/`TimeoutFeedback` keep every crashing input
//! (no deduplication by what crashed) and put crashes and hangs into one corpus directory, while
//! AFL++'s layout has `crashes/` and `hangs/` with their own ids and names.
//!
//! Crashes are unique by kind + code + pc ([`DedupMode::KindCodePc`], the default) or by new
//! coverage among crashes ([`DedupMode::Coverage`], AFL++'s rule: a crash whose edges set a
//! bucket no earlier crash set). Hangs are unique by coverage among hangs, as in AFL++. A crash or
//! hang whose run set no edge at all counts as new only while none of its sort was saved.

use std::borrow::Cow;
use std::collections::HashSet;

use libafl::corpus::Testcase;
use libafl::executors::ExitKind;
use libafl::feedbacks::{Feedback, StateInitializer};
use libafl::Error;
use libafl_bolts::tuples::{Handle, MatchNameRef};
use libafl_bolts::Named;

use crate::campaign::{unix_now, SharedCampaign, StopReason};
use crate::coverage::{EdgeObserver, TrackedEdgeObserver};
use crate::executor::OutcomeObserver;
use crate::feedback::{merge_into_history, novelties};
use crate::names;
use crate::target::{CrashInfo, CrashKind, RunOutcome};

/// How crashes are deduplicated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DedupMode {
    /// One crash file per kind + code + pc.
    #[default]
    KindCodePc,
    /// One crash file per new crash coverage (AFL++'s rule).
    Coverage,
}

/// What an earlier session of the campaign saved: the crashes (from the crash file names) and
/// the coverage histories of crashes and hangs (from [`SolutionFeedback::histories`]).
#[derive(Debug, Clone, Default)]
pub struct KnownSolutions {
    pub crashes: Vec<CrashInfo>,
    pub crash_history: Vec<u8>,
    pub hang_history: Vec<u8>,
}

/// What the last run was, when it is a new solution.
#[derive(Debug, Clone, Copy)]
enum NewSolution {
    Crash(CrashInfo),
    Hang,
}

/// Decides which crashes and hangs are saved, and names and places their files.
#[derive(Debug)]
pub struct SolutionFeedback {
    name: Cow<'static, str>,
    campaign: SharedCampaign,
    dedup: DedupMode,
    edges: Handle<TrackedEdgeObserver>,
    outcome: Handle<OutcomeObserver>,
    crash_keys: HashSet<CrashInfo>,
    crash_history: Vec<u8>,
    hang_history: Vec<u8>,
    scratch: Vec<usize>,
    pending: Option<NewSolution>,
}

impl SolutionFeedback {
    /// An objective for `campaign` that knows what a resumed campaign already saved.
    pub fn new(
        campaign: SharedCampaign,
        dedup: DedupMode,
        edges: Handle<TrackedEdgeObserver>,
        outcome: Handle<OutcomeObserver>,
        known: KnownSolutions,
    ) -> Self {
        Self {
            name: Cow::Borrowed("solutions"),
            campaign,
            dedup,
            edges,
            outcome,
            crash_keys: known.crashes.into_iter().collect(),
            crash_history: known.crash_history,
            hang_history: known.hang_history,
            scratch: Vec::new(),
            pending: None,
        }
    }

    /// The coverage histories of saved crashes and of saved hangs, to keep for a resumed campaign.
    pub fn histories(&self) -> (&[u8], &[u8]) {
        (&self.crash_history, &self.hang_history)
    }

    /// Whether `observer`'s coverage is new to `history` (grown to the map's size on first use).
    fn is_new_coverage(
        observer: &EdgeObserver,
        history: &mut Vec<u8>,
        scratch: &mut Vec<usize>,
        saved_any: bool,
    ) -> bool {
        let len = libafl_bolts::HasLen::len(observer);
        if history.len() < len {
            history.resize(len, 0);
        }
        if observer.set_entries().is_empty() {
            return !saved_any;
        }
        novelties(observer, history, scratch);
        !scratch.is_empty()
    }
}

impl Named for SolutionFeedback {
    fn name(&self) -> &Cow<'static, str> {
        &self.name
    }
}

impl<S> StateInitializer<S> for SolutionFeedback {}

impl<EM, I, OT, S> Feedback<EM, I, OT, S> for SolutionFeedback
where
    OT: MatchNameRef,
{
    fn is_interesting(
        &mut self,
        _state: &mut S,
        _manager: &mut EM,
        _input: &I,
        observers: &OT,
        exit_kind: &ExitKind,
    ) -> Result<bool, Error> {
        self.pending = None;
        let observer: &EdgeObserver = observers
            .get(&self.edges)
            .ok_or_else(|| Error::key_not_found("edge observer missing"))?
            .as_ref();
        let outcome = observers.get(&self.outcome).and_then(OutcomeObserver::last);
        let mut campaign = self.campaign.borrow_mut();
        match exit_kind {
            ExitKind::Crash => {
                campaign.total_crashes += 1;
                let crash = match outcome {
                    Some(RunOutcome::Crash(crash)) => crash,
                    // Only the executor reports crashes, always with their info.
                    _ => CrashInfo {
                        kind: CrashKind::Reported { code: 0 },
                        pc: 0,
                    },
                };
                let is_new = match self.dedup {
                    DedupMode::KindCodePc => !self.crash_keys.contains(&crash),
                    DedupMode::Coverage => Self::is_new_coverage(
                        observer,
                        &mut self.crash_history,
                        &mut self.scratch,
                        campaign.saved_crashes > 0,
                    ),
                };
                if is_new {
                    self.pending = Some(NewSolution::Crash(crash));
                }
            }
            ExitKind::Timeout => {
                campaign.total_hangs += 1;
                if Self::is_new_coverage(
                    observer,
                    &mut self.hang_history,
                    &mut self.scratch,
                    campaign.saved_hangs > 0,
                ) {
                    self.pending = Some(NewSolution::Hang);
                }
            }
            _ => {}
        }
        Ok(self.pending.is_some())
    }

    fn append_metadata(
        &mut self,
        _state: &mut S,
        _manager: &mut EM,
        observers: &OT,
        testcase: &mut Testcase<I>,
    ) -> Result<(), Error> {
        let Some(solution) = self.pending.take() else {
            return Ok(());
        };
        let observer: &EdgeObserver = observers
            .get(&self.edges)
            .ok_or_else(|| Error::key_not_found("edge observer missing"))?
            .as_ref();
        let mut campaign = self.campaign.borrow_mut();
        let origin = campaign.pending.origin();
        let (time_ms, execs) = (campaign.time_ms(), campaign.total_execs());
        let path = match solution {
            NewSolution::Crash(crash) => {
                self.crash_keys.insert(crash);
                merge_into_history(observer, &mut self.crash_history);
                let id = campaign.next_crash_id;
                campaign.next_crash_id = id.saturating_add(1);
                campaign.saved_crashes += 1;
                campaign.last_crash_unix = unix_now();
                campaign.last_crash_execs = execs;
                if campaign.stop_on_crash {
                    campaign.stop_reason.get_or_insert(StopReason::FirstCrash);
                }
                let path = campaign
                    .layout
                    .crashes
                    .join(names::crash_name(id, &crash, &origin, time_ms, execs));
                campaign.crash_files.push(path.clone());
                path
            }
            NewSolution::Hang => {
                merge_into_history(observer, &mut self.hang_history);
                let id = campaign.next_hang_id;
                campaign.next_hang_id = id.saturating_add(1);
                campaign.saved_hangs += 1;
                campaign.last_hang_unix = unix_now();
                let path = campaign
                    .layout
                    .hangs
                    .join(names::hang_name(id, &origin, time_ms, execs));
                campaign.hang_files.push(path.clone());
                path
            }
        };
        // The on-disk solutions corpus writes the input to a preset file path, so one corpus
        // serves both directories.
        *testcase.filename_mut() = path
            .file_name()
            .and_then(|name| name.to_str())
            .map(str::to_string);
        *testcase.file_path_mut() = Some(path);
        Ok(())
    }
}
