//! What a fuzzer does with the events other fuzzers share with it over LLMP (`--jobs`,
//! `--connect`): LibAFL's event manager runs this hook on each event before handling it.
//!
//! - A new input (`NewTestcase`): LibAFL runs it here (the fuzzers' observers are not shared:
//!   `EventConfig::AlwaysUnique`); if it brings coverage this fuzzer lacks, it joins the queue
//!   under AFL++'s synced name, `id:NNNNNN,sync:clientN,...` (N: the sender's LLMP client id).
//! - `Stop`: a fuzzer stopped at its first crash; with `stop_on_crash` this one stops too.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use libafl::events::{Event, EventManagerHook, EventWithStats};
use libafl::Error;
use libafl_bolts::ClientId;

use crate::campaign::{PendingInput, SharedCampaign};
use crate::names::Origin;

/// The hook (see the module's documentation).
pub struct SyncHook {
    campaign: SharedCampaign,
    stop: Arc<AtomicBool>,
    stop_on_crash: bool,
}

impl SyncHook {
    pub(crate) fn new(
        campaign: SharedCampaign,
        stop: Arc<AtomicBool>,
        stop_on_crash: bool,
    ) -> Self {
        Self {
            campaign,
            stop,
            stop_on_crash,
        }
    }
}

impl<I, S> EventManagerHook<I, S> for SyncHook {
    fn pre_receive(
        &mut self,
        _state: &mut S,
        client_id: ClientId,
        event: &EventWithStats<I>,
    ) -> Result<bool, Error> {
        match event.event() {
            Event::NewTestcase { .. } => {
                self.campaign.borrow_mut().pending = PendingInput::New(sync_origin(client_id));
                Ok(true)
            }
            Event::Stop => {
                if self.stop_on_crash {
                    self.stop.store(true, Ordering::SeqCst);
                }
                Ok(false)
            }
            _ => Ok(true),
        }
    }
}

fn sync_origin(client_id: ClientId) -> Origin {
    Origin::Sync {
        from: format!("client{}", client_id.0),
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;

    use libafl::inputs::BytesInput;

    use super::*;
    use crate::campaign::Campaign;
    use crate::output::OutputLayout;

    fn hook(stop_on_crash: bool) -> (SyncHook, SharedCampaign, Arc<AtomicBool>) {
        let campaign = Rc::new(RefCell::new(Campaign::new(
            OutputLayout::new(std::path::Path::new("/nonexistent"), "job1"),
            stop_on_crash,
        )));
        let stop = Arc::new(AtomicBool::new(false));
        let hook = SyncHook::new(Rc::clone(&campaign), Arc::clone(&stop), stop_on_crash);
        (hook, campaign, stop)
    }

    fn new_testcase() -> EventWithStats<BytesInput> {
        EventWithStats::with_current_time(
            Event::NewTestcase {
                input: BytesInput::new(vec![1, 2, 3]),
                observers_buf: None,
                exit_kind: libafl::executors::ExitKind::Ok,
                corpus_size: 1,
                client_config: libafl::events::EventConfig::AlwaysUnique,
                forward_id: None,
            },
            10,
        )
    }

    #[test]
    fn a_shared_input_is_named_for_its_sender() {
        let (mut hook, campaign, stop) = hook(false);
        let handled = hook
            .pre_receive(&mut (), ClientId(3), &new_testcase())
            .expect("the hook does not fail");
        assert!(handled, "LibAFL must go on and run the input");
        assert_eq!(
            campaign.borrow().pending,
            PendingInput::New(Origin::Sync {
                from: "client3".into()
            })
        );
        assert!(!stop.load(Ordering::SeqCst));
    }

    #[test]
    fn a_stop_stops_only_with_stop_on_crash() {
        let stop_event = EventWithStats::<BytesInput>::with_current_time(Event::Stop, 1);
        let (mut hook, _, stop) = hook(false);
        assert!(!hook.pre_receive(&mut (), ClientId(1), &stop_event).unwrap());
        assert!(
            !stop.load(Ordering::SeqCst),
            "stopped without --stop-on-crash"
        );
        let (mut hook, _, stop) = self::hook(true);
        assert!(!hook.pre_receive(&mut (), ClientId(1), &stop_event).unwrap());
        assert!(
            stop.load(Ordering::SeqCst),
            "not stopped with --stop-on-crash"
        );
    }
}
