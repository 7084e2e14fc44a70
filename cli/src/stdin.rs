//! Forwarding the terminal's stdin to the guest's COM1, on an event-manager thread.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vmm::seccomp::{self, ThreadKind};
use vmm::SerialInput;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Reads stdin and queues the bytes into COM1 until dropped.
pub struct StdinForwarder {
    stop: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
}

struct StdinSubscriber {
    serial: SerialInput,
    stop_event: Arc<EventFd>,
    stopped: Arc<AtomicBool>,
}

impl MutEventSubscriber for StdinSubscriber {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.fd() == self.stop_event.as_raw_fd() {
            self.stopped.store(true, Ordering::SeqCst);
            return;
        }
        let mut buf = [0u8; 256];
        match std::io::stdin().lock().read(&mut buf) {
            Ok(0) | Err(_) => {
                // End of input: stop watching stdin, keep the guest running.
                let _ = ops.remove(events);
            }
            Ok(n) => self.serial.push(&buf[..n]),
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(self.stop_event.as_ref(), EventSet::IN));
        // Regular files and /dev/null cannot be polled; the guest then simply gets no input.
        let _ = ops.add(Events::new(&std::io::stdin(), EventSet::IN));
    }
}

impl StdinForwarder {
    /// Starts forwarding; with `seccomp`, the thread puts itself under its filter first (call
    /// `vmm::seccomp::prepare` before).
    pub fn start(serial: SerialInput, seccomp: bool) -> std::io::Result<Self> {
        let stop = Arc::new(EventFd::new(EFD_NONBLOCK)?);
        let stopped = Arc::new(AtomicBool::new(false));
        let mut manager = EventManager::<StdinSubscriber>::new()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        manager.add_subscriber(StdinSubscriber {
            serial,
            stop_event: stop.clone(),
            stopped: stopped.clone(),
        });
        let thread = std::thread::Builder::new()
            .name("stdin".into())
            .spawn(move || {
                if seccomp {
                    if let Err(error) = seccomp::install(ThreadKind::StdinForwarder) {
                        tracing::warn!(%error, "stdin not forwarded to the guest");
                        return;
                    }
                }
                while !stopped.load(Ordering::SeqCst) {
                    if manager.run().is_err() {
                        break;
                    }
                }
            })?;
        Ok(StdinForwarder {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for StdinForwarder {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
