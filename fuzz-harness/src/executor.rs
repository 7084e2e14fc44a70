//! The LibAFL executor over one [`FuzzTarget`].
//!
//! Written by hand because LibAFL has no executor for a snapshot target driven through a trait.
//! Besides running the input it: counts executions (LibAFL leaves that to custom executors),
//! moves the run's coverage out of the target's map into the [`EdgeObserver`] (the fused sparse
//! pass), records the run's outcome for the objective, checks the stop conditions before each run,
//! and triggers the once-a-second report, because a power-schedule stage can run one corpus entry
//! for minutes and LibAFL reports only between entries.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libafl::executors::{Executor, ExitKind, HasObservers};
use libafl::inputs::BytesInput;
use libafl::observers::Observer;
use libafl::state::{HasCorpus, HasExecutions};
use libafl::{Error, HasMetadata, HasNamedMetadata};
use libafl_bolts::tuples::{Handle, MatchNameRef, RefIndexable};
use libafl_bolts::Named;
use serde::{Deserialize, Serialize};

use crate::campaign::{SharedCampaign, StopReason};
use crate::coverage::TrackedEdgeObserver;
use crate::output::OutputError;
use crate::report::Reporter;
use crate::target::{FuzzTarget, RunOutcome};

/// Holds how the last run ended, for the objective (crash kind, code and pc).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutcomeObserver {
    name: Cow<'static, str>,
    last: Option<RunOutcome>,
}

impl OutcomeObserver {
    /// An empty observer.
    pub fn new(name: &'static str) -> Self {
        Self {
            name: Cow::Borrowed(name),
            last: None,
        }
    }

    /// How the last run ended.
    pub fn last(&self) -> Option<RunOutcome> {
        self.last
    }
}

impl Named for OutcomeObserver {
    fn name(&self) -> &Cow<'static, str> {
        &self.name
    }
}

impl<I, S> Observer<I, S> for OutcomeObserver {
    fn pre_exec(&mut self, _state: &mut S, _input: &I) -> Result<(), Error> {
        self.last = None;
        Ok(())
    }
}

/// When to stop, checked before every run.
#[derive(Debug, Clone)]
pub struct StopConditions {
    pub flag: Arc<AtomicBool>,
    pub max_time: Option<Duration>,
    pub max_execs: Option<u64>,
}

/// Why the executor ended the campaign with an error.
#[derive(Debug)]
pub enum ExecutorFailure<E> {
    Target(E),
    Output(OutputError),
}

/// Runs inputs on a [`FuzzTarget`].
pub struct TargetExecutor<T: FuzzTarget, OT> {
    target: T,
    observers: OT,
    edges: Handle<TrackedEdgeObserver>,
    outcome: Handle<OutcomeObserver>,
    timeout: Duration,
    max_input_len: usize,
    campaign: SharedCampaign,
    reporter: Reporter,
    stop: StopConditions,
    failure: Option<ExecutorFailure<T::Error>>,
}

impl<T: FuzzTarget, OT> TargetExecutor<T, OT> {
    /// An executor running `target` with `timeout` per run.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        target: T,
        observers: OT,
        edges: Handle<TrackedEdgeObserver>,
        outcome: Handle<OutcomeObserver>,
        timeout: Duration,
        campaign: SharedCampaign,
        reporter: Reporter,
        stop: StopConditions,
    ) -> Self {
        let max_input_len = target.max_input_len();
        Self {
            target,
            observers,
            edges,
            outcome,
            timeout,
            max_input_len,
            campaign,
            reporter,
            stop,
            failure: None,
        }
    }

    /// The failure that ended the campaign, if one did.
    pub fn take_failure(&mut self) -> Option<ExecutorFailure<T::Error>> {
        self.failure.take()
    }

    /// The reporter (for the final report and messages).
    pub fn reporter_mut(&mut self) -> &mut Reporter {
        &mut self.reporter
    }

    /// The target.
    pub fn target(&self) -> &T {
        &self.target
    }

    /// Runs `input` once with the target's comparison log on and returns what it compared
    /// (nothing when the target has no log). Not a fuzzing execution: its coverage is dropped
    /// and it is not counted.
    pub fn trace_comparisons(
        &mut self,
        input: &[u8],
    ) -> Result<Vec<libafl::observers::cmp::CmpValues>, Error> {
        let Some(log) = self.target.comparison_log() else {
            return Ok(Vec::new());
        };
        crate::comparison_log::arm(log, true);
        let input = input.get(..self.max_input_len).unwrap_or(input);
        let ran = self.target.run(input, self.timeout);
        let values = match self.target.comparison_log() {
            Some(log) => {
                let values = crate::comparison_log::parse(log);
                crate::comparison_log::arm(log, false);
                values
            }
            None => Vec::new(),
        };
        self.target.coverage_map().fill(0);
        self.campaign.borrow_mut().traced_execs += 1;
        if let Err(e) = ran {
            self.failure = Some(ExecutorFailure::Target(e));
            return Err(Error::shutting_down());
        }
        Ok(values)
    }

    /// Why the campaign must stop now, if it must.
    fn stop_reason(&self) -> Option<StopReason> {
        let campaign = self.campaign.borrow();
        if let Some(reason) = campaign.stop_reason {
            return Some(reason);
        }
        if self.stop.flag.load(Ordering::Relaxed) {
            return Some(StopReason::StopFlag);
        }
        if self
            .stop
            .max_time
            .is_some_and(|max| campaign.started.elapsed() >= max)
        {
            return Some(StopReason::MaxTime);
        }
        if self
            .stop
            .max_execs
            .is_some_and(|max| campaign.session_execs >= max)
        {
            return Some(StopReason::MaxExecs);
        }
        None
    }

    /// Writes the periodic report now.
    pub fn report_now<S>(&mut self, state: &S) -> Result<(), OutputError>
    where
        S: HasCorpus<BytesInput> + HasMetadata + HasNamedMetadata,
    {
        let campaign = self.campaign.borrow();
        self.reporter
            .report(state, &campaign, self.target.restores())
            .map(|_| ())
    }
}

impl<T: FuzzTarget, OT> HasObservers for TargetExecutor<T, OT> {
    type Observers = OT;

    fn observers(&self) -> RefIndexable<&OT, OT> {
        RefIndexable::from(&self.observers)
    }

    fn observers_mut(&mut self) -> RefIndexable<&mut OT, OT> {
        RefIndexable::from(&mut self.observers)
    }
}

impl<EM, S, Z, T, OT> Executor<EM, BytesInput, S, Z> for TargetExecutor<T, OT>
where
    T: FuzzTarget,
    OT: MatchNameRef,
    S: HasExecutions + HasCorpus<BytesInput> + HasMetadata + HasNamedMetadata,
{
    fn run_target(
        &mut self,
        _fuzzer: &mut Z,
        state: &mut S,
        _mgr: &mut EM,
        input: &BytesInput,
    ) -> Result<ExitKind, Error> {
        if let Some(reason) = self.stop_reason() {
            self.campaign.borrow_mut().stop_reason.get_or_insert(reason);
            return Err(Error::shutting_down());
        }
        *state.executions_mut() += 1;
        self.campaign.borrow_mut().session_execs += 1;

        let bytes: &[u8] = input.as_ref();
        let bytes = bytes.get(..self.max_input_len).unwrap_or(bytes);
        let started = Instant::now();
        let outcome = match self.target.run(bytes, self.timeout) {
            Ok(outcome) => outcome,
            Err(e) => {
                self.failure = Some(ExecutorFailure::Target(e));
                return Err(Error::shutting_down());
            }
        };
        let took = started.elapsed();

        let edges = self
            .observers
            .get_mut(&self.edges)
            .ok_or_else(|| Error::key_not_found("edge observer missing"))?;
        edges.as_mut().take_from(self.target.coverage_map());
        if let Some(observer) = self.observers.get_mut(&self.outcome) {
            observer.last = Some(outcome);
        }

        let now = started + took;
        {
            let mut campaign = self.campaign.borrow_mut();
            if took > campaign.slowest_exec && outcome != RunOutcome::Hang {
                campaign.slowest_exec = took;
            }
        }
        if self.reporter.due(now) {
            if let Err(e) = self.report_now(state) {
                self.failure = Some(ExecutorFailure::Output(e));
                return Err(Error::shutting_down());
            }
        }

        Ok(match outcome {
            RunOutcome::Normal { .. } => ExitKind::Ok,
            RunOutcome::Crash(_) => ExitKind::Crash,
            RunOutcome::Hang => ExitKind::Timeout,
        })
    }
}
