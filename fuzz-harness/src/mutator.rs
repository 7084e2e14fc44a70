//! AFL++'s havoc: a stack of 2-128 random mutations from LibAFL's havoc and token mutations.
//!
//! The same schedule as LibAFL's `HavocScheduledMutator`, rewritten (a dozen lines) because that
//! one does not tell how many mutations it stacked, and AFL++'s queue names record it (`rep:N`)
//! along with the parent entry (`src:N`): this mutator hands both to the campaign before the
//! mutated input runs.

use std::borrow::Cow;
use std::num::NonZeroUsize;

use libafl::corpus::{Corpus, CorpusId};
use libafl::mutators::{MutationId, MutationResult, Mutator, MutatorsTuple};
use libafl::state::{HasCorpus, HasRand};
use libafl::{Error, HasMetadata};
use libafl_bolts::rands::Rand;
use libafl_bolts::tuples::HasConstLen;
use libafl_bolts::Named;

use crate::campaign::{PendingInput, SharedCampaign};
use crate::names::Origin;
use crate::queue::QueueIdMetadata;

/// Stacks of 2^(1..=7) mutations, as AFL++'s default havoc_stack_pow2.
const MAX_STACK_POW: usize = 7;

/// Havoc over a tuple of LibAFL mutations, recording where each input came from.
#[derive(Debug)]
pub struct HavocMutator<MT> {
    name: Cow<'static, str>,
    mutations: MT,
    campaign: SharedCampaign,
}

impl<MT> HavocMutator<MT> {
    /// Havoc over `mutations`.
    pub fn new(mutations: MT, campaign: SharedCampaign) -> Self {
        Self::named("havoc", mutations, campaign)
    }

    /// The same schedule under another name in the queue's `op:` (e.g. `i2s` for
    /// input-to-state replacements).
    pub fn named(op: &'static str, mutations: MT, campaign: SharedCampaign) -> Self {
        Self {
            name: Cow::Borrowed(op),
            mutations,
            campaign,
        }
    }
}

impl<MT> Named for HavocMutator<MT> {
    fn name(&self) -> &Cow<'static, str> {
        &self.name
    }
}

impl<I, MT, S> Mutator<I, S> for HavocMutator<MT>
where
    MT: MutatorsTuple<I, S> + HasConstLen,
    S: HasRand + HasCorpus<I>,
{
    fn mutate(&mut self, state: &mut S, input: &mut I) -> Result<MutationResult, Error> {
        let Some(count) = NonZeroUsize::new(MT::LEN) else {
            return Ok(MutationResult::Skipped);
        };
        let rep = 1usize << (1 + state.rand_mut().below_or_zero(MAX_STACK_POW));
        let mut result = MutationResult::Skipped;
        for _ in 0..rep {
            let which = MutationId::from(state.rand_mut().below(count));
            if self.mutations.get_and_mutate(which, state, input)? == MutationResult::Mutated {
                result = MutationResult::Mutated;
            }
        }
        let src = current_queue_id(state);
        let op = match &self.name {
            Cow::Borrowed(op) => op,
            Cow::Owned(_) => "havoc",
        };
        self.campaign.borrow_mut().pending = PendingInput::New(Origin::Mutation {
            src,
            op,
            rep: u32::try_from(rep).unwrap_or(u32::MAX),
        });
        Ok(result)
    }

    fn post_exec(&mut self, state: &mut S, new_corpus_id: Option<CorpusId>) -> Result<(), Error> {
        self.mutations.post_exec_all(state, new_corpus_id)
    }
}

/// The AFL++ id of the corpus entry being fuzzed (0 if unknown).
fn current_queue_id<I, S: HasCorpus<I>>(state: &S) -> u32 {
    let corpus = state.corpus();
    corpus
        .current()
        .and_then(|id| corpus.get(id).ok())
        .and_then(|cell| {
            cell.try_borrow()
                .ok()
                .and_then(|tc| tc.metadata::<QueueIdMetadata>().ok().map(|m| m.id))
        })
        .unwrap_or(0)
}
