//! `snapvmm run --qmp unix:PATH[,server=on,wait=off]`: a QMP server (QEMU's monitor protocol)
//! with the commands that save a running guest to a QEMU migration stream: `qmp_capabilities`,
//! `query-status`, `stop`, `cont`, `migrate` (`exec:CMD`, `file:PATH`), `query-migrate`, `quit`
//! (and `query-commands`, `migrate-set-parameters`, `migrate-set-capabilities` accepted for the
//! clients that send them).
//!
//! The server thread never touches the machine: it sends a [`VmRequest`] to the thread that owns
//! it and kicks the vCPU (`VmControl::kick`); the owner answers in [`QmpLink::serve`], called by
//! the run loop whenever `run` returns `Kicked`. The owner writes a stream into a pipe or file
//! the server thread opened, so the vCPU thread needs neither sockets nor `exec`. A migration is
//! reported `completed` only after the `exec:` command has ended.

use std::io::{BufWriter, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::Stdio;
use std::str::FromStr;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use vmm::{Machine, VmControl, VmEvent};

use crate::qemu::{shell, StreamUri};
use crate::qmp_input::{CappedMessages, MessageBytes};
use crate::run::RunEnd;

/// How long the server waits for the owner thread to act on a request.
const OWNER_TIMEOUT: Duration = Duration::from_secs(600);
/// How often a paused owner looks for a termination signal.
const PAUSED_POLL: Duration = Duration::from_millis(50);
const COMMANDS: &[&str] = &[
    "qmp_capabilities",
    "query-status",
    "query-commands",
    "stop",
    "cont",
    "migrate",
    "query-migrate",
    "migrate-set-parameters",
    "migrate-set-capabilities",
    "quit",
];

/// `unix:PATH[,server=on][,wait=on|off]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QmpSpec {
    pub path: PathBuf,
    /// Wait for the first client before the guest runs (QEMU's default for a server socket).
    pub wait: bool,
}

impl FromStr for QmpSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let rest = s
            .strip_prefix("unix:")
            .ok_or_else(|| format!("{s:?}: only unix:PATH sockets are supported"))?;
        let mut parts = rest.split(',');
        let path = parts
            .next()
            .filter(|p| !p.is_empty())
            .ok_or("unix: needs a path")?;
        let mut wait = true;
        for option in parts {
            match option {
                "server" | "server=on" => {}
                "server=off" => return Err("only server sockets are supported".into()),
                "wait=on" | "wait" => wait = true,
                "wait=off" | "nowait" => wait = false,
                other => return Err(format!("unknown socket option {other:?}")),
            }
        }
        Ok(QmpSpec {
            path: PathBuf::from(path),
            wait,
        })
    }
}

/// What the server asks of the machine's owner.
pub enum VmRequest {
    Stop,
    Cont,
    Status,
    /// Write the machine as a stream into this sink, then stay paused (`postmigrate`).
    Migrate(MigrationSink),
    Quit,
}

/// Where a migration's stream goes.
pub enum MigrationSink {
    /// `file:`: written with the pages at their offsets, by a writer thread.
    File(std::fs::File),
    /// `exec:`: the command's stdin, in order.
    Pipe(Box<dyn Write + Send>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    Running,
    Paused,
    /// Paused after a migration (QEMU's `postmigrate`).
    Postmigrate,
}

impl RunState {
    fn name(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Paused => "paused",
            RunState::Postmigrate => "postmigrate",
        }
    }
}

pub enum VmReply {
    /// Done; the run state before and after.
    State {
        before: RunState,
        after: RunState,
    },
    Migrated(Result<(), String>),
}

type Envelope = (VmRequest, Sender<VmReply>);

/// The owner's end: answers requests between runs.
pub struct QmpLink {
    requests: Receiver<Envelope>,
    state: RunState,
    control: VmControl,
    connected: Receiver<()>,
    quit_answered: Receiver<()>,
}

impl QmpLink {
    /// After a `quit`: lets the server thread send its reply and SHUTDOWN event before the
    /// process exits.
    pub fn wait_for_quit_reply(&self) {
        let _ = self.quit_answered.recv_timeout(Duration::from_secs(2));
    }

    /// Blocks until the first client connects (`wait=on`).
    pub fn wait_for_client(&self) {
        let _ = self.connected.recv();
    }

    /// Answers every pending request; while paused, waits for the next one. Returns how the
    /// run ends, if a request (or a termination signal while paused) ends it.
    pub fn serve(&mut self, machine: &mut Machine) -> Option<RunEnd> {
        loop {
            let (request, reply) = if self.state == RunState::Running {
                match self.requests.try_recv() {
                    Ok(envelope) => envelope,
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => return None,
                }
            } else {
                match self.requests.recv_timeout(PAUSED_POLL) {
                    Ok(envelope) => envelope,
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                        if self.control.stop_requested() {
                            return Some(RunEnd::Event(VmEvent::Stopped));
                        }
                        continue;
                    }
                }
            };
            let before = self.state;
            let answer = match request {
                VmRequest::Stop => {
                    if self.state == RunState::Running {
                        self.state = RunState::Paused;
                    }
                    None
                }
                VmRequest::Cont => {
                    self.state = RunState::Running;
                    None
                }
                VmRequest::Status => None,
                VmRequest::Migrate(sink) => {
                    let running = self.state == RunState::Running;
                    let result = match sink {
                        MigrationSink::File(file) => machine
                            .export_qemu_stream_to_file(running, &file)
                            .map_err(|e| e.to_string()),
                        MigrationSink::Pipe(pipe) => machine
                            .export_qemu_stream(running, BufWriter::with_capacity(1 << 20, pipe))
                            .map_err(|e| e.to_string())
                            .and_then(|out| {
                                out.into_inner()
                                    .map_err(|e| e.into_error().to_string())
                                    .map(drop)
                            }),
                    };
                    if result.is_ok() {
                        self.state = RunState::Postmigrate;
                    }
                    Some(VmReply::Migrated(result))
                }
                VmRequest::Quit => {
                    let _ = reply.send(VmReply::State {
                        before,
                        after: before,
                    });
                    return Some(RunEnd::Quit);
                }
            };
            let _ = reply.send(answer.unwrap_or(VmReply::State {
                before,
                after: self.state,
            }));
        }
    }
}

#[derive(Debug, Clone)]
enum Migration {
    None,
    Active { started: Instant },
    Completed { millis: u64 },
    Failed(String),
}

/// The server's end, shared by its connection and migration threads.
#[derive(Clone)]
struct Server {
    requests: Sender<Envelope>,
    control: VmControl,
    migration: Arc<Mutex<Migration>>,
}

impl Server {
    fn ask(&self, request: VmRequest) -> Result<VmReply, String> {
        let (reply_tx, reply_rx) = mpsc::channel();
        self.requests
            .send((request, reply_tx))
            .map_err(|_| "the VM has stopped".to_string())?;
        self.control.kick();
        reply_rx
            .recv_timeout(OWNER_TIMEOUT)
            .map_err(|_| "the VM did not answer".to_string())
    }

    fn migration(&self) -> std::sync::MutexGuard<'_, Migration> {
        self.migration
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Binds the socket and starts the server thread. Call before the vCPU thread installs its
/// seccomp filter: the server thread (and the `exec:` commands it starts) must stay unfiltered.
pub fn start(spec: &QmpSpec, control: VmControl, initial: RunState) -> anyhow::Result<QmpLink> {
    if std::fs::symlink_metadata(&spec.path).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(&spec.path);
    }
    let listener = UnixListener::bind(&spec.path)
        .map_err(|e| anyhow::anyhow!("cannot listen on QMP socket {}: {e}", spec.path.display()))?;
    let (requests_tx, requests_rx) = mpsc::channel();
    let (connected_tx, connected_rx) = mpsc::channel();
    let (quit_tx, quit_rx) = mpsc::channel();
    let server = Server {
        requests: requests_tx,
        control: control.clone(),
        migration: Arc::new(Mutex::new(Migration::None)),
    };
    std::thread::Builder::new()
        .name("qmp".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let _ = connected_tx.send(());
                if serve_connection(&server, stream) == Connection::Quit {
                    let _ = quit_tx.send(());
                    break;
                }
            }
        })
        .map_err(|e| anyhow::anyhow!("cannot start the QMP thread: {e}"))?;
    Ok(QmpLink {
        requests: requests_rx,
        state: initial,
        control,
        connected: connected_rx,
        quit_answered: quit_rx,
    })
}

#[derive(PartialEq, Eq)]
enum Connection {
    Closed,
    Quit,
}

fn serve_connection(server: &Server, stream: UnixStream) -> Connection {
    let Ok(reader) = stream.try_clone() else {
        return Connection::Closed;
    };
    let mut writer = stream;
    let greeting = json!({"QMP": {
        "version": {"qemu": {"major": 7, "minor": 2, "micro": 0}, "package": "snapvmm"},
        "capabilities": []
    }});
    if send(&mut writer, &greeting).is_err() {
        return Connection::Closed;
    }
    let mut negotiated = false;
    // Buffered: serde_json reads a reader one byte at a time (a `recvfrom` per byte).
    let taken = MessageBytes::default();
    let reader = CappedMessages::new(std::io::BufReader::new(reader), taken.clone());
    for message in serde_json::Deserializer::from_reader(reader).into_iter::<Value>() {
        taken.message_done();
        let Ok(message) = message else {
            let _ = send(
                &mut writer,
                &error_reply(&Value::Null, "GenericError", "JSON parse error"),
            );
            return Connection::Closed;
        };
        let id = message.get("id").cloned().unwrap_or(Value::Null);
        let Some(command) = message.get("execute").and_then(Value::as_str) else {
            let reply = error_reply(&id, "GenericError", "QMP input lacks member 'execute'");
            if send(&mut writer, &reply).is_err() {
                return Connection::Closed;
            }
            continue;
        };
        let arguments = message.get("arguments").cloned().unwrap_or(json!({}));
        let outcome = if command == "qmp_capabilities" {
            if negotiated {
                Err((
                    "CommandNotFound",
                    "Capabilities negotiation is already complete, command ignored".to_string(),
                ))
            } else {
                negotiated = true;
                Ok((json!({}), Vec::new()))
            }
        } else if !negotiated {
            Err((
                "CommandNotFound",
                "Expecting capabilities negotiation with 'qmp_capabilities'".to_string(),
            ))
        } else {
            execute(server, command, &arguments)
        };
        let (reply, events) = match outcome {
            Ok((value, events)) => (with_id(json!({"return": value}), &id), events),
            Err((class, desc)) => (error_reply(&id, class, &desc), Vec::new()),
        };
        for event in &events {
            if send(&mut writer, event).is_err() {
                return Connection::Closed;
            }
        }
        if send(&mut writer, &reply).is_err() {
            return Connection::Closed;
        }
        if command == "quit" && negotiated {
            let _ = send(
                &mut writer,
                &event(
                    "SHUTDOWN",
                    json!({"guest": false, "reason": "host-qmp-quit"}),
                ),
            );
            linger(&mut writer);
            return Connection::Quit;
        }
    }
    Connection::Closed
}

type Outcome = Result<(Value, Vec<Value>), (&'static str, String)>;

fn execute(server: &Server, command: &str, arguments: &Value) -> Outcome {
    let generic = |desc: String| ("GenericError", desc);
    match command {
        "query-commands" => Ok((
            Value::Array(COMMANDS.iter().map(|c| json!({"name": c})).collect()),
            Vec::new(),
        )),
        "query-status" => match server.ask(VmRequest::Status).map_err(generic)? {
            VmReply::State { after, .. } => Ok((
                json!({"status": after.name(), "singlestep": false,
                       "running": after == RunState::Running}),
                Vec::new(),
            )),
            VmReply::Migrated(_) => Err(generic("unexpected answer".into())),
        },
        "stop" => match server.ask(VmRequest::Stop).map_err(generic)? {
            VmReply::State { before, after } if before != after => {
                Ok((json!({}), vec![event("STOP", Value::Null)]))
            }
            _ => Ok((json!({}), Vec::new())),
        },
        "cont" => match server.ask(VmRequest::Cont).map_err(generic)? {
            VmReply::State { before, after } if before != after => {
                Ok((json!({}), vec![event("RESUME", Value::Null)]))
            }
            _ => Ok((json!({}), Vec::new())),
        },
        "quit" => {
            server.ask(VmRequest::Quit).map_err(generic)?;
            Ok((json!({}), Vec::new()))
        }
        "migrate" => {
            let uri = arguments
                .get("uri")
                .and_then(Value::as_str)
                .ok_or_else(|| generic("Parameter 'uri' is missing".into()))?;
            let uri: StreamUri = uri.parse().map_err(generic)?;
            start_migration(server, uri).map_err(generic)?;
            Ok((json!({}), Vec::new()))
        }
        "query-migrate" => Ok((
            match &*server.migration() {
                Migration::None => json!({}),
                Migration::Active { started } => json!({"status": "active",
                    "total-time": started.elapsed().as_millis() as u64}),
                Migration::Completed { millis } => json!({"status": "completed",
                    "total-time": millis}),
                Migration::Failed(desc) => json!({"status": "failed", "error-desc": desc}),
            },
            Vec::new(),
        )),
        // Bandwidth and capabilities mean nothing to a migration that is one write of the
        // stopped machine: accepted, so that scripts written for QEMU run unchanged.
        "migrate-set-parameters" | "migrate-set-capabilities" => Ok((json!({}), Vec::new())),
        other => Err((
            "CommandNotFound",
            format!("The command {other} has not been found"),
        )),
    }
}

fn start_migration(server: &Server, uri: StreamUri) -> Result<(), String> {
    {
        let mut migration = server.migration();
        if matches!(*migration, Migration::Active { .. }) {
            return Err("There's a migration process in progress".into());
        }
        *migration = Migration::Active {
            started: Instant::now(),
        };
    }
    let worker = server.clone();
    let spawned = std::thread::Builder::new()
        .name("qmp-migrate".into())
        .spawn(move || {
            let started = Instant::now();
            let result = migrate(&worker, &uri);
            *worker.migration() = match result {
                Ok(()) => Migration::Completed {
                    millis: started.elapsed().as_millis() as u64,
                },
                Err(desc) => Migration::Failed(desc),
            };
        });
    if let Err(e) = spawned {
        *server.migration() = Migration::Failed(e.to_string());
    }
    Ok(())
}

/// One migration: open the sink, have the owner write the stream into it, and for `exec:`
/// wait for the command to finish with it.
fn migrate(server: &Server, uri: &StreamUri) -> Result<(), String> {
    match uri {
        StreamUri::File(path) => {
            let file = std::fs::File::create(path)
                .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
            let sync = file.try_clone().map_err(|e| e.to_string())?;
            written(server.ask(VmRequest::Migrate(MigrationSink::File(file)))?)?;
            // A FIFO or a device has nothing to flush (and fsync fails on it).
            if sync.metadata().is_ok_and(|m| m.is_file()) {
                sync.sync_all().map_err(|e| e.to_string())?;
            }
            Ok(())
        }
        StreamUri::Exec(command) => {
            let mut child =
                shell(command, Stdio::piped(), Stdio::inherit()).map_err(|e| e.to_string())?;
            let stdin = child
                .stdin
                .take()
                .ok_or_else(|| "no pipe to the command".to_string())?;
            widen_pipe(&stdin);
            let result = server
                .ask(VmRequest::Migrate(MigrationSink::Pipe(Box::new(stdin))))
                .and_then(written);
            let status = child.wait().map_err(|e| e.to_string())?;
            result?;
            if !status.success() {
                return Err(format!(
                    "the migration command {command:?} failed ({status})"
                ));
            }
            Ok(())
        }
    }
}

/// Pipe capacity asked for an `exec:` command's stdin: the stream goes in 1 MiB writes, and a
/// pipe of 64 KiB (the default) wakes the command and the writer for every 16 pages.
const EXEC_PIPE_BYTES: libc::c_int = 1 << 20;

/// Asks for a larger pipe (capped by /proc/sys/fs/pipe-max-size); a refusal only costs speed.
fn widen_pipe(pipe: &std::process::ChildStdin) {
    use std::os::fd::AsRawFd;
    // SAFETY: fcntl on a pipe descriptor we own; F_SETPIPE_SZ takes an int and no memory.
    unsafe { libc::fcntl(pipe.as_raw_fd(), libc::F_SETPIPE_SZ, EXEC_PIPE_BYTES) };
}

fn written(reply: VmReply) -> Result<(), String> {
    match reply {
        VmReply::Migrated(result) => result,
        VmReply::State { .. } => Err("unexpected answer".into()),
    }
}

/// After `quit`: lets the client hang up first (as it does with QEMU, whose exit takes a while),
/// for at most a second; clients treat a server that hangs up first as an error.
fn linger(stream: &mut UnixStream) {
    use std::io::Read;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut buffer = [0u8; 256];
    while stream.read(&mut buffer).is_ok_and(|n| n > 0) {}
}

fn send(writer: &mut UnixStream, message: &Value) -> std::io::Result<()> {
    let mut line = message.to_string();
    line.push_str("\r\n");
    writer.write_all(line.as_bytes())
}

fn with_id(mut reply: Value, id: &Value) -> Value {
    if !id.is_null() {
        reply["id"] = id.clone();
    }
    reply
}

fn error_reply(id: &Value, class: &str, desc: &str) -> Value {
    with_id(json!({"error": {"class": class, "desc": desc}}), id)
}

fn event(name: &str, data: Value) -> Value {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let mut event = json!({"event": name, "timestamp": {
        "seconds": now.as_secs(), "microseconds": now.subsec_micros()}});
    if !data.is_null() {
        event["data"] = data;
    }
    event
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_specs_parse_like_qemus() {
        let spec: QmpSpec = "unix:/tmp/q.sock,server=on,wait=off".parse().unwrap();
        assert_eq!(spec.path, PathBuf::from("/tmp/q.sock"));
        assert!(!spec.wait);
        assert!("unix:/tmp/q.sock".parse::<QmpSpec>().unwrap().wait);
        assert!("tcp:localhost:4444".parse::<QmpSpec>().is_err());
        assert!("unix:/x,server=off".parse::<QmpSpec>().is_err());
        assert!("unix:,server=on".parse::<QmpSpec>().is_err());
    }
}
