//! Names new queue entries the AFL++ way. A feedback that never finds anything interesting
//! itself: LibAFL calls its `append_metadata` for every input it adds to the queue, before the
//! on-disk corpus writes the file under the testcase's file name.

use std::borrow::Cow;

use libafl::corpus::Testcase;
use libafl::executors::ExitKind;
use libafl::feedbacks::{Feedback, StateInitializer};
use libafl::{Error, HasMetadata};
use libafl_bolts::Named;
use serde::{Deserialize, Serialize};

use crate::campaign::{unix_now, PendingInput, SharedCampaign};
use crate::feedback::NewEdgesMetadata;
use crate::names::{self, Origin};

/// Testcase metadata: the entry's AFL++ id (`id:` of its file name).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct QueueIdMetadata {
    pub id: u32,
}

libafl_bolts::impl_serdeany!(QueueIdMetadata);

/// Gives each new queue entry its id and file name.
#[derive(Debug)]
pub struct QueueNamer {
    campaign: SharedCampaign,
    name: Cow<'static, str>,
}

impl QueueNamer {
    /// A namer for `campaign`.
    pub fn new(campaign: SharedCampaign) -> Self {
        Self {
            campaign,
            name: Cow::Borrowed("queue_namer"),
        }
    }
}

impl Named for QueueNamer {
    fn name(&self) -> &Cow<'static, str> {
        &self.name
    }
}

impl<S> StateInitializer<S> for QueueNamer {}

impl<EM, I, OT, S> Feedback<EM, I, OT, S> for QueueNamer {
    fn is_interesting(
        &mut self,
        _state: &mut S,
        _manager: &mut EM,
        _input: &I,
        _observers: &OT,
        _exit_kind: &ExitKind,
    ) -> Result<bool, Error> {
        Ok(false)
    }

    fn append_metadata(
        &mut self,
        _state: &mut S,
        _manager: &mut EM,
        _observers: &OT,
        testcase: &mut Testcase<I>,
    ) -> Result<(), Error> {
        let new_edges = testcase
            .metadata::<NewEdgesMetadata>()
            .map_or(0, |meta| meta.new_edges);
        let mut campaign = self.campaign.borrow_mut();
        let (id, file_name) = match campaign.pending.clone() {
            PendingInput::Resumed { id, file_name } => {
                campaign.next_queue_id = campaign.next_queue_id.max(id.saturating_add(1));
                (id, file_name)
            }
            PendingInput::New(origin) => {
                let id = campaign.next_queue_id;
                campaign.next_queue_id = id.saturating_add(1);
                // AFL++ names seeds with time:0,execs:0 (they are named before they run).
                let (time_ms, execs) = match origin {
                    Origin::Seed { .. } => (0, 0),
                    Origin::Mutation { .. } | Origin::Sync { .. } => {
                        (campaign.time_ms(), campaign.total_execs())
                    }
                };
                let name = names::queue_name(id, &origin, time_ms, execs, new_edges > 0);
                match origin {
                    Origin::Mutation { .. } => {
                        campaign.corpus_found += 1;
                        campaign.last_find_unix = unix_now();
                    }
                    Origin::Sync { .. } => campaign.corpus_imported += 1,
                    Origin::Seed { .. } => {}
                }
                (id, name)
            }
        };
        *testcase.filename_mut() = Some(file_name);
        testcase.add_metadata(QueueIdMetadata { id });
        Ok(())
    }
}
