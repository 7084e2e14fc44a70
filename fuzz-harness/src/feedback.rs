//! Coverage novelty over the sparse observer: LibAFL's `AflMapFeedback` semantics (an input is
//! interesting when it sets a hit-count bucket the history has not seen; the history is the OR of
//! every kept input's buckets) computed over the entries the run set instead of the whole map.
//!
//! Written by hand for the same reason as [`crate::coverage`]: the stock `MapFeedback` iterates
//! the whole map for every run. The history stays LibAFL's `MapFeedbackMetadata<u8>`, stored under
//! the observer's name, so LibAFL's calibration stage marks unstable entries in it as it does for
//! its own feedbacks.

use std::borrow::Cow;

use libafl::corpus::Testcase;
use libafl::executors::ExitKind;
use libafl::feedbacks::{
    Feedback, HasObserverHandle, MapFeedbackMetadata, MapIndexesMetadata, StateInitializer,
};
use libafl::{Error, HasMetadata, HasNamedMetadata};
use libafl_bolts::tuples::{Handle, Handled, MatchNameRef};
use libafl_bolts::Named;
use serde::{Deserialize, Serialize};

use crate::coverage::{EdgeObserver, TrackedEdgeObserver};

/// Testcase metadata: how many edges this entry found that no earlier entry had (AFL++'s `+cov`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct NewEdgesMetadata {
    /// Entries of the map that were zero in the history before this input.
    pub new_edges: usize,
}

libafl_bolts::impl_serdeany!(NewEdgesMetadata);

/// Which entries of a run are news to a history map (bucket bits it has not seen).
pub fn novelties(observer: &EdgeObserver, history: &[u8], out: &mut Vec<usize>) -> usize {
    out.clear();
    let mut new_edges = 0;
    let classified = observer.classified();
    for &index in observer.set_entries() {
        let (Some(&value), Some(&seen)) = (classified.get(index), history.get(index)) else {
            continue;
        };
        if value & !seen != 0 {
            out.push(index);
            if seen == 0 {
                new_edges += 1;
            }
        }
    }
    new_edges
}

/// Folds a run's buckets into a history map; returns how many entries became non-zero.
pub fn merge_into_history(observer: &EdgeObserver, history: &mut [u8]) -> usize {
    let mut newly_covered = 0;
    let classified = observer.classified();
    for &index in observer.set_entries() {
        let (Some(&value), Some(seen)) = (classified.get(index), history.get_mut(index)) else {
            continue;
        };
        if *seen == 0 && value != 0 {
            newly_covered += 1;
        }
        *seen |= value;
    }
    newly_covered
}

/// The corpus feedback: is the run's coverage new?
#[derive(Debug)]
pub struct EdgeFeedback {
    name: Cow<'static, str>,
    observer: Handle<TrackedEdgeObserver>,
    /// Entries that were new in the last run checked (reused buffer).
    novelties: Vec<usize>,
    /// Entries of the last run that were zero in the history.
    new_edges: usize,
}

impl EdgeFeedback {
    /// A feedback over `observer`, keeping its history under the observer's name.
    pub fn new(observer: &TrackedEdgeObserver) -> Self {
        Self {
            name: observer.name().clone(),
            observer: observer.handle(),
            novelties: Vec::new(),
            new_edges: 0,
        }
    }
}

impl Named for EdgeFeedback {
    fn name(&self) -> &Cow<'static, str> {
        &self.name
    }
}

impl HasObserverHandle for EdgeFeedback {
    type Observer = TrackedEdgeObserver;

    fn observer_handle(&self) -> &Handle<TrackedEdgeObserver> {
        &self.observer
    }
}

impl<S: HasNamedMetadata> StateInitializer<S> for EdgeFeedback {
    fn init_state(&mut self, state: &mut S) -> Result<(), Error> {
        state.named_metadata_or_insert_with(&self.name, MapFeedbackMetadata::<u8>::default);
        Ok(())
    }
}

impl EdgeFeedback {
    fn history_for<'s, S: HasNamedMetadata>(
        &self,
        state: &'s mut S,
        len: usize,
    ) -> Result<&'s mut MapFeedbackMetadata<u8>, Error> {
        let meta = state.named_metadata_mut::<MapFeedbackMetadata<u8>>(&self.name)?;
        if meta.history_map.len() < len {
            meta.history_map.resize(len, 0);
        }
        Ok(meta)
    }
}

impl<EM, I, OT, S> Feedback<EM, I, OT, S> for EdgeFeedback
where
    OT: MatchNameRef,
    S: HasNamedMetadata,
{
    fn is_interesting(
        &mut self,
        state: &mut S,
        _manager: &mut EM,
        _input: &I,
        observers: &OT,
        _exit_kind: &ExitKind,
    ) -> Result<bool, Error> {
        let observer: &EdgeObserver = observers
            .get(&self.observer)
            .ok_or_else(|| Error::key_not_found("edge observer missing"))?
            .as_ref();
        let meta = self.history_for(state, libafl_bolts::HasLen::len(observer))?;
        self.new_edges = novelties(observer, &meta.history_map, &mut self.novelties);
        Ok(!self.novelties.is_empty())
    }

    fn append_metadata(
        &mut self,
        state: &mut S,
        _manager: &mut EM,
        observers: &OT,
        testcase: &mut Testcase<I>,
    ) -> Result<(), Error> {
        let observer: &EdgeObserver = observers
            .get(&self.observer)
            .ok_or_else(|| Error::key_not_found("edge observer missing"))?
            .as_ref();
        let meta = self.history_for(state, libafl_bolts::HasLen::len(observer))?;
        meta.num_covered_map_indexes += merge_into_history(observer, &mut meta.history_map);
        // The minimizer scheduler needs the entries each corpus entry covers, sorted.
        testcase.add_metadata(MapIndexesMetadata::new(observer.set_entries().to_vec()));
        testcase.add_metadata(NewEdgesMetadata {
            new_edges: self.new_edges,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn novelty_is_a_new_bucket_bit() {
        let mut observer = EdgeObserver::new("edges", 64);
        let mut raw = vec![0u8; 64];
        raw[1] = 1;
        raw[2] = 3;
        observer.take_from(&mut raw);
        let mut history = vec![0u8; 64];
        let mut out = Vec::new();
        assert_eq!(novelties(&observer, &history, &mut out), 2);
        assert_eq!(out, vec![1, 2]);
        assert_eq!(merge_into_history(&observer, &mut history), 2);
        assert_eq!(novelties(&observer, &history, &mut out), 0);
        assert!(out.is_empty());

        // Same edges, a higher hit count on one: new bucket, no new edge.
        raw[1] = 1;
        raw[2] = 9;
        observer.take_from(&mut raw);
        assert_eq!(novelties(&observer, &history, &mut out), 0);
        assert_eq!(out, vec![2]);
        assert_eq!(merge_into_history(&observer, &mut history), 0);
        assert_eq!(history[2], 4 | 16);
    }
}
