//! Many fuzzers on one campaign (`--jobs N`) and on many machines (`--listen`, `--connect`):
//! LibAFL's `Launcher` forks one process per job, each pinned to its own core, and LLMP shares
//! what each finds with the others. The parent process is the LLMP broker.
//!
//! - Each job builds its own target after the fork (a KVM VM does not survive `fork`): the
//!   caller's `job` closure runs in the job's process and gets a [`JobContext`] to fuzz with.
//! - The broker is the calling (parent) process. It is LibAFL's `LlmpBroker` with LibAFL's event
//!   hook, driven here with `broker_once` rather than LibAFL's own loops, which end only when
//!   every client has left: a broker-to-broker link (`connect_b2b`, the multi-machine mechanism)
//!   registers a client that never leaves, so the broker would outlive its jobs. It ends when
//!   every job has ended, or when the caller's stop flag is set (Ctrl-C/SIGTERM); then LibAFL's
//!   launcher sends SIGINT to the jobs that still run (each then ends its run, writes its files and
//!   exits) and waits for them.
//! - Other machines: `connect` links this broker to a broker on another machine (LLMP
//!   broker-to-broker over TCP); every new input goes both ways. LibAFL 0.16.1's plain
//!   `Launcher::launch` takes a `remote_broker_addr` but never connects it, and its
//!   `multi_machine` feature aborted on its first message: hence this broker of our own making.
//!
//! The brokers listen on 127.0.0.1 only (LLMP has no authentication); across machines the port is
//! forwarded (ssh -L), see docs/fuzzing-jobs.md.

use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libafl::events::launcher::{ClientDescription, Launcher};
use libafl::events::{EventConfig, LlmpEventManagerBuilder, StdLlmpEventHook};
use libafl::inputs::BytesInput;
use libafl::monitors::NopMonitor;
use libafl_bolts::core_affinity::{get_core_ids, Cores};
use libafl_bolts::llmp::{Broker, LlmpBroker, LlmpClient};
use libafl_bolts::shmem::{ShMemProvider, StdShMem, StdShMemProvider};
use libafl_bolts::tuples::tuple_list;

use crate::fuzzer::{FuzzError, FuzzSummary, Fuzzer};
use crate::target::FuzzTarget;

/// The exit status of a job that could not reach its broker.
pub const STATUS_NO_BROKER: u8 = 71;

/// How the jobs are started and linked.
#[derive(Debug, Clone)]
pub struct JobsConfig {
    /// How many fuzzer processes (at most one per core).
    pub jobs: usize,
    /// The local broker's TCP port (on 127.0.0.1); 0: a free one.
    pub port: u16,
    /// A broker on another machine to link with (`--connect HOST:PORT`).
    pub connect: Option<String>,
    /// Set it (from a signal watcher) to end every job.
    pub stop: Arc<AtomicBool>,
    /// How often the parent's `tick` runs (the status line).
    pub tick: Duration,
}

/// Why the jobs could not start.
#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    #[error("--jobs {jobs}: this machine has {cores} cores (one job per core)")]
    TooManyJobs { jobs: usize, cores: usize },
    #[error("--jobs must be at least 1")]
    NoJobs,
    #[error("cannot listen on 127.0.0.1:{port}: {source}")]
    Listen { port: u16, source: std::io::Error },
    #[error("{addr} is not a HOST:PORT address: {message}")]
    BadAddress { addr: String, message: String },
    #[error("cannot link to the broker at {addr}: {message}")]
    Connect { addr: String, message: String },
    #[error("cannot start the jobs: {0}")]
    Launch(String),
    #[error("cannot share the job table between processes: {0}")]
    Table(std::io::Error),
}

fn engine(e: libafl::Error) -> String {
    e.to_string()
        .lines()
        .next()
        .unwrap_or("unknown error")
        .to_string()
}

/// How each job ended: its exit status (`None`: killed before it could tell).
#[derive(Debug, Clone)]
pub struct JobsOutcome {
    pub statuses: Vec<Option<u8>>,
    /// The broker's port (useful when it was chosen here).
    pub port: u16,
}

/// A job's link to its broker.
type JobClient = LlmpClient<StdShMem, StdShMemProvider>;

/// What a job fuzzes with: its number and its link to the broker.
pub struct JobContext {
    job: usize,
    client: Option<JobClient>,
}

impl JobContext {
    /// This job's number, 1 to N.
    pub fn job(&self) -> usize {
        self.job
    }

    /// Fuzzes with `fuzzer`, sharing finds through the broker.
    pub fn run<T: FuzzTarget>(mut self, fuzzer: Fuzzer<T>) -> Result<FuzzSummary, FuzzError> {
        let Some(client) = self.client.take() else {
            return Err(FuzzError::Engine("this job has no broker link".into()));
        };
        let mgr = LlmpEventManagerBuilder::new()
            .hooks(tuple_list!(fuzzer.sync_hook()))
            .build_from_client(client, EventConfig::AlwaysUnique)?;
        fuzzer.run_with(mgr)
    }
}

impl Drop for JobContext {
    fn drop(&mut self) {
        // A job that never fuzzed still leaves the broker, which waits for every job.
        if let Some(client) = self.client.as_mut() {
            let _ = client.sender_mut().send_exiting();
        }
    }
}

/// A few words of memory shared by the parent and every job (a shared anonymous mapping made
/// before the fork): the broker's state and each job's exit status.
struct JobTable {
    words: *mut AtomicU32,
    len: usize,
}

const BROKER_READY: u32 = 1;
const BROKER_FAILED: u32 = 2;
/// A job's word: 0 while it runs, 1 + its status once it ended.
const JOB_RUNNING: u32 = 0;

impl JobTable {
    fn new(jobs: usize) -> Result<Self, JobsError> {
        let len = jobs + 1;
        let bytes = len * std::mem::size_of::<AtomicU32>();
        // SAFETY: a fresh anonymous shared mapping; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(JobsError::Table(std::io::Error::last_os_error()));
        }
        // Zero-filled: the broker is starting (neither ready nor failed), every job runs.
        Ok(Self {
            words: ptr.cast(),
            len,
        })
    }

    fn word(&self, index: usize) -> &AtomicU32 {
        assert!(index < self.len, "job table index {index} out of range");
        // SAFETY: `index` is inside the mapping, which lives as long as `self`; AtomicU32 has
        // u32's layout and the mapping is page-aligned.
        unsafe { &*self.words.add(index) }
    }

    fn broker(&self) -> &AtomicU32 {
        self.word(0)
    }

    fn set_job_status(&self, job: usize, status: u8) {
        self.word(job)
            .store(1 + u32::from(status), Ordering::SeqCst);
    }

    fn job_status(&self, job: usize) -> Option<u8> {
        match self.word(job).load(Ordering::SeqCst) {
            JOB_RUNNING => None,
            word => u8::try_from(word - 1).ok(),
        }
    }

    fn all_ended(&self) -> bool {
        (1..self.len).all(|job| self.job_status(job).is_some())
    }
}

impl Drop for JobTable {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`.
        unsafe {
            libc::munmap(
                self.words.cast(),
                self.len * std::mem::size_of::<AtomicU32>(),
            )
        };
    }
}

/// A free TCP port on 127.0.0.1 (the broker binds it right after).
fn free_port() -> Result<u16, JobsError> {
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .map_err(|source| JobsError::Listen { port: 0, source })?;
    listener
        .local_addr()
        .map(|addr| addr.port())
        .map_err(|source| JobsError::Listen { port: 0, source })
}

/// Resolves `HOST:PORT`.
pub fn resolve(addr: &str) -> Result<SocketAddr, JobsError> {
    let bad = |message: String| JobsError::BadAddress {
        addr: addr.to_string(),
        message,
    };
    addr.to_socket_addrs()
        .map_err(|e| bad(e.to_string()))?
        .next()
        .ok_or_else(|| bad("no address".into()))
}

/// Checks that `jobs` jobs can run here: at least one, at most one per core.
pub fn check_jobs(jobs: usize) -> Result<(), JobsError> {
    if jobs == 0 {
        return Err(JobsError::NoJobs);
    }
    let cores = get_core_ids()
        .map_err(|e| JobsError::Launch(engine(e)))?
        .len();
    if jobs > cores {
        return Err(JobsError::TooManyJobs { jobs, cores });
    }
    Ok(())
}

/// Ends this job's process with `status`, recorded for the parent first.
fn end_job(table: &JobTable, job: usize, status: u8) -> ! {
    table.set_job_status(job, status);
    std::process::exit(i32::from(status))
}

/// Starts `config.jobs` jobs and brokers between them (and the remote broker) until they end.
/// `job` runs in each job's process and returns its exit status; the jobs never return from
/// here. `tick` runs in the parent every `config.tick` while the jobs run.
pub fn launch<J, K>(config: &JobsConfig, job: J, mut tick: K) -> Result<JobsOutcome, JobsError>
where
    J: FnOnce(JobContext) -> u8,
    K: FnMut(),
{
    check_jobs(config.jobs)?;
    let core_ids = get_core_ids().map_err(|e| JobsError::Launch(engine(e)))?;
    let remote = config.connect.as_deref().map(resolve).transpose()?;
    let port = match config.port {
        0 => free_port()?,
        port => {
            // Fail here, before any fork, when the port is taken.
            TcpListener::bind(("127.0.0.1", port))
                .map_err(|source| JobsError::Listen { port, source })?;
            port
        }
    };
    let cores = Cores::from(
        core_ids[..config.jobs.min(core_ids.len())]
            .iter()
            .map(|id| id.0)
            .collect::<Vec<usize>>(),
    );
    let table = JobTable::new(config.jobs)?;
    let shmem = StdShMemProvider::new().map_err(|e| JobsError::Launch(engine(e)))?;
    let parent = std::process::id();
    let broker_error: std::cell::RefCell<Option<JobsError>> = std::cell::RefCell::new(None);

    let run_client = |_state: Option<()>,
                      client: Option<JobClient>,
                      description: ClientDescription|
     -> Result<(), libafl::Error> {
        let number = description.id();
        let status = job(JobContext {
            job: number,
            client,
        });
        end_job(&table, number, status)
    };

    let spawn = |_launcher: &Launcher<'_, _, NopMonitor, StdShMemProvider>,
                 description: Option<ClientDescription>,
                 _monitor: Option<NopMonitor>|
     -> Result<(Option<()>, Option<JobClient>), libafl::Error> {
        match description {
            Some(description) => {
                // A job: it ends with its parent, whatever happens to the parent.
                // SAFETY: prctl on this process; getppid cannot fail.
                unsafe {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    if libc::getppid() != parent as libc::pid_t {
                        libc::_exit(i32::from(STATUS_NO_BROKER));
                    }
                }
                let number = description.id();
                // LibAFL's client retries a refused connection forever: wait for the broker.
                loop {
                    match table.broker().load(Ordering::SeqCst) {
                        BROKER_READY => break,
                        BROKER_FAILED => end_job(&table, number, STATUS_NO_BROKER),
                        _ => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
                match LlmpClient::create_attach_to_tcp(shmem.clone(), port) {
                    Ok(client) => Ok((None, Some(client))),
                    Err(e) => {
                        eprintln!(
                            "snapvmm: job {number}: cannot reach the broker: {}",
                            engine(e)
                        );
                        end_job(&table, number, STATUS_NO_BROKER)
                    }
                }
            }
            None => {
                let outcome = broker(
                    &shmem,
                    config.jobs,
                    port,
                    remote,
                    config.connect.as_deref(),
                    &table,
                    &config.stop,
                    config.tick,
                    &mut tick,
                );
                if let Err(error) = outcome {
                    table.broker().store(BROKER_FAILED, Ordering::SeqCst);
                    *broker_error.borrow_mut() = Some(error);
                }
                Ok((None, None))
            }
        }
    };

    let launcher = Launcher::builder()
        .shmem_provider(shmem.clone())
        .configuration(EventConfig::AlwaysUnique)
        .monitor(NopMonitor::new())
        .run_client(run_client)
        .cores(&cores)
        .broker_port(port)
        .launch_delay(0)
        .build();
    launcher
        .launch_with_manager(spawn)
        .map_err(|e| JobsError::Launch(engine(e)))?;
    // Only the parent gets here: the jobs end in `end_job`.
    if std::process::id() != parent {
        std::process::exit(i32::from(STATUS_NO_BROKER));
    }
    if let Some(error) = broker_error.into_inner() {
        return Err(error);
    }
    Ok(JobsOutcome {
        statuses: (1..=config.jobs).map(|n| table.job_status(n)).collect(),
        port,
    })
}

/// Links `broker` to the broker at `addr` (LLMP broker-to-broker) once all `jobs` local clients
/// have joined it; `Ok(false)` while they have not.
///
/// Why wait: in LibAFL 0.16.1 `LlmpBrokerInner::connect_b2b` gives its proxy client the id
/// `peek_next_client_id()` (the clients the broker has seen), while the broker's TCP listener
/// thread numbers the clients that join later from its own counter, which knows nothing of the
/// proxy. Linked first, the proxy and the first job get the same id, and the proxy thread then
/// drops every message of that job as an echo of its own ("Ignored message we probably sent
/// earlier"): nothing found here would reach the other machine. Linked after the jobs joined,
/// the ids differ; the proxy reads the broker's messages from the start of its first page, so
/// what the jobs sent before is passed on too.
fn link_when_joined<HT>(
    broker: &mut LlmpBroker<HT, StdShMem, StdShMemProvider>,
    jobs: usize,
    addr: SocketAddr,
    addr_text: Option<&str>,
) -> Result<bool, JobsError>
where
    HT: libafl_bolts::llmp::LlmpHookTuple<StdShMem, StdShMemProvider>,
{
    // The listener is the broker's first client; then come the jobs.
    if broker.num_clients_seen() <= jobs {
        return Ok(false);
    }
    broker
        .inner_mut()
        .connect_b2b(addr)
        .map_err(|e| JobsError::Connect {
            addr: addr_text.unwrap_or_default().to_string(),
            message: engine(e),
        })?;
    Ok(true)
}

/// The parent's part: LibAFL's LLMP broker, linked to `remote` if given, until every job has
/// ended or `stop` is set.
#[allow(clippy::too_many_arguments)]
fn broker(
    shmem: &StdShMemProvider,
    jobs: usize,
    port: u16,
    remote: Option<SocketAddr>,
    remote_text: Option<&str>,
    table: &JobTable,
    stop: &AtomicBool,
    tick_every: Duration,
    tick: &mut dyn FnMut(),
) -> Result<(), JobsError> {
    let hook = StdLlmpEventHook::<BytesInput, NopMonitor>::new(NopMonitor::new())
        .map_err(|e| JobsError::Launch(engine(e)))?;
    let mut broker = LlmpBroker::create_attach_to_tcp(shmem.clone(), tuple_list!(hook), port)
        .map_err(|e| JobsError::Listen {
            port,
            source: std::io::Error::other(engine(e)),
        })?;
    table.broker().store(BROKER_READY, Ordering::SeqCst);
    // The link to the remote broker is made once every job has joined (see `link_when_joined`).
    let mut remote = remote;
    let mut next_tick = Instant::now() + tick_every;
    while !stop.load(Ordering::SeqCst) && !table.all_ended() {
        let busy = broker
            .broker_once()
            .map_err(|e| JobsError::Launch(format!("broker: {}", engine(e))))?;
        if let Some(addr) = remote {
            if link_when_joined(&mut broker, jobs, addr, remote_text)? {
                remote = None;
            }
        }
        if Instant::now() >= next_tick {
            tick();
            next_tick = Instant::now() + tick_every;
        }
        if !busy {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    // Deliver what the last jobs sent before they left.
    let _ = broker.broker_once();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_job_table_records_statuses() {
        let table = JobTable::new(2).expect("a shared mapping");
        assert!(!table.all_ended());
        table.set_job_status(1, 0);
        assert_eq!(table.job_status(1), Some(0));
        assert_eq!(table.job_status(2), None);
        table.set_job_status(2, 71);
        assert_eq!(table.job_status(2), Some(71));
        assert!(table.all_ended());
    }

    #[test]
    fn addresses_resolve_or_fail_with_one_line() {
        assert_eq!(resolve("127.0.0.1:1337").expect("an address").port(), 1337);
        let error = resolve("no-port").expect_err("no port").to_string();
        assert!(error.contains("no-port"), "{error}");
        assert!(!error.contains('\n'));
    }
}
