//! Comparison feedback (AFL++'s cmplog, kAFL's Redqueen): each queue entry is run once with the
//! target's comparison log on (`comparison_log`); the operands it compared become LibAFL's
//! `CmpValuesMetadata`, from which `I2SRandReplace` puts the value a comparison wanted where the
//! input held the other operand. So a 4- or 8-byte magic value costs a few executions instead of
//! 2^32 or 2^64 guesses.

use std::collections::HashMap;

use libafl::corpus::{Corpus, CorpusId, HasCurrentCorpusId};
use libafl::inputs::BytesInput;
use libafl::observers::cmp::{CmpValues, CmpValuesMetadata};
use libafl::stages::{Restartable, Stage};
use libafl::state::HasCorpus;
use libafl::{Error, HasMetadata};

use crate::executor::TargetExecutor;
use crate::target::FuzzTarget;

/// Runs the queue entry being fuzzed with the comparison log on, once per entry, and leaves its
/// comparisons in the state for `I2SRandReplace`.
#[derive(Debug, Default)]
pub struct CmpLogStage {
    enabled: bool,
    traced: HashMap<CorpusId, Vec<CmpValues>>,
}

impl CmpLogStage {
    /// `enabled: false` makes the stage a no-op (and the I2S stage then finds no values).
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            traced: HashMap::new(),
        }
    }
}

impl<T, OT, EM, S, Z> Stage<TargetExecutor<T, OT>, EM, S, Z> for CmpLogStage
where
    T: FuzzTarget,
    S: HasCorpus<BytesInput> + HasCurrentCorpusId + HasMetadata,
{
    fn perform(
        &mut self,
        _fuzzer: &mut Z,
        executor: &mut TargetExecutor<T, OT>,
        state: &mut S,
        _manager: &mut EM,
    ) -> Result<(), Error> {
        if !self.enabled {
            return Ok(());
        }
        let Some(id) = state.current_corpus_id()? else {
            return Ok(());
        };
        let values = match self.traced.get(&id) {
            Some(values) => values.clone(),
            None => {
                let input = state.corpus().cloned_input_for_id(id)?;
                let values = executor.trace_comparisons(input.as_ref())?;
                self.traced.insert(id, values.clone());
                values
            }
        };
        state.add_metadata(CmpValuesMetadata { list: values });
        Ok(())
    }
}

impl<S> Restartable<S> for CmpLogStage {
    fn should_restart(&mut self, _state: &mut S) -> Result<bool, Error> {
        Ok(true)
    }

    fn clear_progress(&mut self, _state: &mut S) -> Result<(), Error> {
        Ok(())
    }
}
