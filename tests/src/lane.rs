//! The real-KVM lane: run commands inside an outer Linux (L1) that QEMU's TCG boots with the real
//! `kvm_amd` loaded, so that snapvmm and test programs meet a hardware-style KVM (SVM + NPT).
//!
//! A test describes *jobs* (a shell script, a time budget, optionally stdin) and gets back each
//! job's output and exit status. All jobs of one [`Lane`] share one L1 boot (~5 s of TCG). The
//! images come from `guest-tools/linux/build-images.sh`; see `docs/real-kvm-lane.md`.
//!
//! Inside L1, `/init` loads the KVM modules and runs each job with `lane-exec`, which frames the
//! job's output with `@@LANE begin NAME` / `@@LANE end NAME rc=N timeout=0|1 nl=0|1 ms=T` lines on
//! the serial console; this module turns that log back into [`JobOutcome`]s.

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

mod cpio;
mod programs;
mod serial_log;
mod tiny_kernel;

use cpio::CpioWriter;
use programs::add_program;
pub use programs::static_snapvmm;
use serial_log::{Event, LogParser};
pub use tiny_kernel::tiny_pvh_kernel;

/// Environment variable: the QEMU binary to use (default `qemu-system-x86_64` from `PATH`).
pub const QEMU_ENV: &str = "SNAPVMM_LANE_QEMU";
/// Environment variable: the images directory (default `<workspace>/target/guest-images`).
pub const IMAGES_ENV: &str = "SNAPVMM_GUEST_IMAGES";
/// Environment variable: a snapvmm binary to use instead of building the static one.
pub const SNAPVMM_BIN_ENV: &str = "SNAPVMM_LANE_BIN";
/// Environment variable: L1's CPU count (default [`DEFAULT_L1_CPUS`]).
pub const L1_CPUS_ENV: &str = "SNAPVMM_LANE_L1_CPUS";
/// L1's CPU count unless a lane asks otherwise. One, because with two (MTTCG) L1 oopses on `int3`
/// when its kernel patches code (a deferred static key) that the other CPU is executing, e.g. KVM's
/// halt loop while the inner guest sits halted with its APIC off: 2 of 2 batches of halting
/// guests crashed L1 with `-smp 2`, 0 of 8 boots with `-smp 1`, at the same speed.
pub const DEFAULT_L1_CPUS: u32 = 1;
/// The command that builds the images.
pub const BUILD_COMMAND: &str = "bash guest-tools/linux/build-images.sh";
/// Where snapvmm lands inside L1 (on `PATH` there).
pub const SNAPVMM_IN_L1: &str = "/bin/snapvmm";
/// The inner guest's initramfs inside L1 (`$LANE_GUEST_INITRD`, set by l1-init.sh).
const GUEST_INITRD_IN_L1: &str = "/guest/initramfs.cpio";
/// Where [`Lane::bare_metal_guests`] puts guest-tools' bare-metal guests inside L1.
pub const BARE_METAL_GUESTS_IN_L1: &str = "/lane/guests";

/// How long L1 may take from QEMU's start to `@@LANE ready` (normally ~5 s; CI machines are
/// shared, so leave a wide margin).
const BOOT_BUDGET: Duration = Duration::from_secs(120);
/// Added to a job's own budget before the host gives up on L1 (lane-exec kills the job at its
/// budget; this covers the kill and the end marker).
const JOB_GRACE: Duration = Duration::from_secs(20);
/// How long L1 may be silent between jobs, and from `@@LANE done` to QEMU's exit.
const BETWEEN_JOBS_BUDGET: Duration = Duration::from_secs(30);
/// Lines of the serial log quoted in an error.
const LOG_TAIL_LINES: usize = 40;
const L1_CMDLINE: &str = "console=ttyS0 quiet panic=-1";

/// Only one L1 at a time: the machine has two cores, shared with builds, and a TCG CPU keeps one
/// busy.
static BOOT_LOCK: Mutex<()> = Mutex::new(());

/// What can go wrong while preparing or running the lane.
#[derive(Debug)]
pub enum LaneError {
    /// QEMU is not installed (or `SNAPVMM_LANE_QEMU` points nowhere).
    QemuMissing { qemu: String },
    /// An image the builder makes is missing.
    ImageMissing { path: PathBuf },
    /// An image is older than a source it is built from.
    ImageStale { path: PathBuf, source: PathBuf },
    /// Building the static snapvmm failed.
    SnapvmmBuild { command: String, output: String },
    /// A host-side file or process operation failed.
    Io { what: String, source: io::Error },
    /// A job or file was declared wrongly (bad name, duplicate, bad path).
    BadRequest(String),
    /// L1 did not produce the outcome of a job (boot failure, crash, time-out).
    JobMissing {
        name: String,
        problems: Vec<String>,
        log_path: PathBuf,
        log_tail: String,
    },
    /// A job's outcome did not match what the test expected.
    JobFailed {
        name: String,
        expectation: String,
        outcome: String,
        output: String,
        log_path: PathBuf,
    },
}

impl fmt::Display for LaneError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::QemuMissing { qemu } => write!(
                f,
                "real-KVM lane: QEMU `{qemu}` not found; install it with `{BUILD_COMMAND}` (as root) \
                 or `apt-get install qemu-system-x86`, or set {QEMU_ENV}"
            ),
            Self::ImageMissing { path } => write!(
                f,
                "real-KVM lane: {} is missing; build the images with `{BUILD_COMMAND}` \
                 (or set {IMAGES_ENV})",
                path.display()
            ),
            Self::ImageStale { path, source } => write!(
                f,
                "real-KVM lane: {} is older than {}; rebuild the images with `{BUILD_COMMAND}`",
                path.display(),
                source.display()
            ),
            Self::SnapvmmBuild { command, output } => {
                write!(f, "real-KVM lane: building the static snapvmm failed: {command}\n{output}")
            }
            Self::Io { what, source } => write!(f, "real-KVM lane: {what}: {source}"),
            Self::BadRequest(what) => write!(f, "real-KVM lane: {what}"),
            Self::JobMissing { name, problems, log_path, log_tail } => write!(
                f,
                "real-KVM lane: job `{name}` has no outcome: {}\nserial log: {}\n--- last lines ---\n{log_tail}",
                problems.join("; "),
                log_path.display()
            ),
            Self::JobFailed { name, expectation, outcome, output, log_path } => write!(
                f,
                "real-KVM lane: job `{name}`: expected {expectation}, got {outcome}\n\
                 serial log: {}\n--- output of `{name}` inside L1 ---\n{output}--- end of output ---",
                log_path.display()
            ),
        }
    }
}

impl std::error::Error for LaneError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> LaneError {
    let what = what.into();
    move |source| LaneError::Io { what, source }
}

/// One command to run inside L1.
#[derive(Debug, Clone)]
pub struct Job {
    name: String,
    budget: Duration,
    script: String,
    stdin: Option<Vec<u8>>,
}

impl Job {
    /// A job that runs `script` with `/bin/sh` inside L1 and is killed after `budget`. The script
    /// sees `PATH` with busybox, `snapvmm` (when the lane carries it), `lane-chat`, `lane-qmp`,
    /// `kvm-check`, and `$LANE_GUEST_KERNEL` / `$LANE_GUEST_INITRD` (the inner guest's bzImage and
    /// initramfs).
    pub fn new(name: &str, budget: Duration, script: &str) -> Self {
        Self {
            name: name.to_owned(),
            budget,
            script: script.to_owned(),
            stdin: None,
        }
    }

    /// Feeds `bytes` to the job's stdin (default: `/dev/null`).
    pub fn stdin(mut self, bytes: &[u8]) -> Self {
        self.stdin = Some(bytes.to_vec());
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

/// What became of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobOutcome {
    pub name: String,
    /// Exit status (128 + signal when killed, e.g. 137 after the budget ran out).
    pub status: i32,
    /// The budget ran out and lane-exec killed the job's process group.
    pub timed_out: bool,
    /// Everything the job wrote to stdout and stderr, as it wrote it (line ends normalised to `\n`).
    pub output: String,
    /// Time inside L1 from start to end of the job.
    pub elapsed: Duration,
    log_path: PathBuf,
}

impl JobOutcome {
    fn describe(&self) -> String {
        if self.timed_out {
            format!(
                "a time-out after {:.1} s (status {})",
                self.elapsed.as_secs_f64(),
                self.status
            )
        } else {
            format!(
                "status {} after {:.1} s",
                self.status,
                self.elapsed.as_secs_f64()
            )
        }
    }

    fn failed(&self, expectation: String) -> LaneError {
        LaneError::JobFailed {
            name: self.name.clone(),
            expectation,
            outcome: self.describe(),
            output: self.output.clone(),
            log_path: self.log_path.clone(),
        }
    }

    /// Ok if the job exited with `status` within its budget; otherwise an error that carries the
    /// job's whole output.
    pub fn expect_status(&self, status: i32) -> Result<&Self, LaneError> {
        if self.timed_out || self.status != status {
            return Err(self.failed(format!("status {status}")));
        }
        Ok(self)
    }

    /// Same as `expect_status(0)`.
    pub fn expect_success(&self) -> Result<&Self, LaneError> {
        self.expect_status(0)
    }

    /// Ok if the output holds `text`.
    pub fn expect_output(&self, text: &str) -> Result<&Self, LaneError> {
        if !self.output.contains(text) {
            return Err(self.failed(format!("output containing {text:?}")));
        }
        Ok(self)
    }

    /// Ok if the output does not hold `text`.
    pub fn expect_no_output(&self, text: &str) -> Result<&Self, LaneError> {
        if self.output.contains(text) {
            return Err(self.failed(format!("no {text:?} in the output")));
        }
        Ok(self)
    }

    /// The lines of the output that start with `prefix`, without it.
    pub fn lines_with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.output
            .lines()
            .filter_map(move |line| line.trim_start().strip_prefix(prefix))
    }
}

/// Times of one L1 boot, host wall clock from QEMU's start unless said otherwise.
#[derive(Debug, Clone, Default)]
pub struct BootTimes {
    /// L1 kernel uptime when /init started.
    pub l1_uptime_at_init: Option<f64>,
    /// Seconds inside L1 spent loading the KVM modules.
    pub insmod_seconds: Option<f64>,
    /// Host time until `@@LANE ready` (modules loaded, jobs about to start).
    pub ready: Option<Duration>,
    /// Host time until QEMU exited.
    pub total: Duration,
}

/// The result of one L1 boot.
#[derive(Debug)]
pub struct LaneRun {
    pub jobs: Vec<JobOutcome>,
    /// Everything that went wrong at the L1 level (modules, crash, time-outs); empty when L1
    /// booted, ran every job and powered off.
    pub problems: Vec<String>,
    /// L1 kernel messages of level warning or worse, printed after the last job.
    pub kernel_warnings: Vec<String>,
    /// `@@LANE` lines from the boot (kernel release, CPU, module loading).
    pub boot_lines: Vec<String>,
    pub times: BootTimes,
    pub log_path: PathBuf,
}

impl LaneRun {
    /// The outcome of job `name`, or an error saying why L1 did not produce it.
    pub fn job(&self, name: &str) -> Result<&JobOutcome, LaneError> {
        self.jobs
            .iter()
            .find(|job| job.name == name)
            .ok_or_else(|| LaneError::JobMissing {
                name: name.to_owned(),
                problems: if self.problems.is_empty() {
                    vec!["no such job in this run".to_owned()]
                } else {
                    self.problems.clone()
                },
                log_path: self.log_path.clone(),
                log_tail: log_tail(&self.log_path),
            })
    }
}

/// A file to put into L1's initramfs.
#[derive(Debug, Clone)]
struct L1File {
    path: String,
    mode: u32,
    contents: FileContents,
}

#[derive(Debug, Clone)]
enum FileContents {
    Bytes(Vec<u8>),
    Host(PathBuf),
}

/// One L1 boot: the jobs to run and the files to add to L1.
#[derive(Debug, Default)]
pub struct Lane {
    name: String,
    jobs: Vec<Job>,
    files: Vec<L1File>,
    with_snapvmm: bool,
    qemu: Option<PathBuf>,
    images: Option<PathBuf>,
    l1_cpus: Option<u32>,
    guest_programs: Vec<(String, PathBuf)>,
}

impl Lane {
    /// `name` names the run's directory under `target/lane-runs/`.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            ..Self::default()
        }
    }

    pub fn job(mut self, job: Job) -> Self {
        self.jobs.push(job);
        self
    }

    /// Uses this QEMU binary instead of `$SNAPVMM_LANE_QEMU` / `qemu-system-x86_64` from `PATH`.
    pub fn qemu(mut self, qemu: &Path) -> Self {
        self.qemu = Some(qemu.to_owned());
        self
    }

    /// Uses the images in `dir` instead of [`images_dir`].
    pub fn images(mut self, dir: &Path) -> Self {
        self.images = Some(dir.to_owned());
        self
    }

    /// Gives L1 `cpus` virtual CPUs instead of [`DEFAULT_L1_CPUS`] (or `$SNAPVMM_LANE_L1_CPUS`).
    /// KVM in L1 reports `KVM_CAP_NR_VCPUS` = L1's CPU count, so multi-vCPU tests want more.
    pub fn l1_cpus(mut self, cpus: u32) -> Self {
        self.l1_cpus = Some(cpus);
        self
    }

    /// Puts the snapvmm binary at `/bin/snapvmm` in L1 (built static on first use, see
    /// [`static_snapvmm`]).
    pub fn with_snapvmm(mut self) -> Self {
        self.with_snapvmm = true;
        self
    }

    /// Adds the host file `host` at `path` inside L1, with its shared libraries if it is
    /// dynamically linked.
    pub fn host_file(mut self, path: &str, host: &Path) -> Self {
        self.files.push(L1File {
            path: path.to_owned(),
            mode: 0o755,
            contents: FileContents::Host(host.to_owned()),
        });
        self
    }

    /// Adds the host program `host` as `/usr/bin/NAME` to the inner guest's initramfs (what
    /// `$LANE_GUEST_INITRD` names inside L1), with its shared libraries if it is dynamically
    /// linked; the guest init runs it with the action `run=NAME`.
    pub fn guest_program(mut self, name: &str, host: &Path) -> Self {
        self.guest_programs.push((name.to_owned(), host.to_owned()));
        self
    }

    /// Carries every bare-metal guest that guest-tools built (`guest_tools::BUILT_GUESTS`: the
    /// runtime guests, their `-pvh` variants, `pvh-hello`) into L1 as
    /// `/lane/guests/<file name>`; [`bare_metal_guest_in_l1`] gives a guest's path there. About
    /// 3 MiB: unpacking them costs L1 no measurable time.
    pub fn bare_metal_guests(mut self) -> Self {
        for guest in guest_tools::BUILT_GUESTS {
            self.files.push(L1File {
                path: format!("{BARE_METAL_GUESTS_IN_L1}/{}", guest.file_name),
                mode: 0o755,
                contents: FileContents::Host(guest_tools::guest_dir().join(guest.file_name)),
            });
        }
        self
    }

    /// Adds a file with `contents` at `path` inside L1.
    pub fn file(mut self, path: &str, mode: u32, contents: &[u8]) -> Self {
        self.files.push(L1File {
            path: path.to_owned(),
            mode,
            contents: FileContents::Bytes(contents.to_vec()),
        });
        self
    }

    /// Boots L1, runs every job, and returns their outcomes. Errors only for problems on the host
    /// (QEMU or images missing, build failures, I/O); what happens inside L1 is in [`LaneRun`].
    pub fn run(self) -> Result<LaneRun, LaneError> {
        let qemu = find_qemu(self.qemu.as_deref())?;
        let images = self.images.clone().unwrap_or_else(images_dir);
        let vmlinux = require_image(&images.join("l1/vmlinux"))?;
        let base_cpio = require_image(&images.join("l1/base.cpio"))?;
        require_newer_than_sources(&base_cpio)?;
        let mut overlay = self.overlay()?;
        if self.with_snapvmm {
            let snapvmm = static_snapvmm()?;
            add_program(&mut overlay, SNAPVMM_IN_L1, &snapvmm)?;
        }
        for file in &self.files {
            match &file.contents {
                FileContents::Bytes(bytes) => overlay.file(&file.path, file.mode, bytes)?,
                FileContents::Host(host) => add_program(&mut overlay, &file.path, host)?,
            }
        }
        if !self.guest_programs.is_empty() {
            let initramfs = self.guest_initramfs(&images)?;
            overlay.file(GUEST_INITRD_IN_L1, 0o644, &initramfs)?;
        }
        let run_dir = run_dir(&self.name)?;
        let initrd = run_dir.join("initrd.cpio");
        write_initrd(&initrd, &base_cpio, &overlay.finish())?;
        let log_path = run_dir.join("serial.log");
        let _one_l1_at_a_time = BOOT_LOCK
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let cpus = match self.l1_cpus {
            Some(cpus) => cpus,
            None => l1_cpus_from_env()?,
        };
        let machine = L1Machine {
            qemu,
            vmlinux,
            initrd: initrd.clone(),
            cpus,
        };
        let result = boot(&machine, &log_path, &self.jobs);
        // The initrd is tens of MiB and rebuilt every run; the log stays for inspection.
        let _ = fs::remove_file(&initrd);
        result
    }

    /// The built guest initramfs with this lane's guest programs appended (the kernel unpacks
    /// both archives).
    fn guest_initramfs(&self, images: &Path) -> Result<Vec<u8>, LaneError> {
        let base_path = require_image(&images.join("guest/initramfs.cpio"))?;
        let mut initramfs =
            fs::read(&base_path).map_err(io_error(format!("reading {}", base_path.display())))?;
        let mut programs = CpioWriter::default();
        for (name, host) in &self.guest_programs {
            if name.is_empty() || name.contains('/') {
                return Err(LaneError::BadRequest(format!(
                    "guest program name {name:?}"
                )));
            }
            add_program(&mut programs, &format!("/usr/bin/{name}"), host)?;
        }
        initramfs.extend_from_slice(&programs.finish());
        Ok(initramfs)
    }

    fn overlay(&self) -> Result<CpioWriter, LaneError> {
        let mut overlay = CpioWriter::default();
        let mut names = BTreeSet::new();
        for (index, job) in self.jobs.iter().enumerate() {
            let valid_name = !job.name.is_empty()
                && job
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
            if !valid_name {
                return Err(LaneError::BadRequest(format!(
                    "job name {:?}: use [A-Za-z0-9._-]",
                    job.name
                )));
            }
            if !names.insert(job.name.as_str()) {
                return Err(LaneError::BadRequest(format!(
                    "two jobs named {}",
                    job.name
                )));
            }
            if job.budget.is_zero() {
                return Err(LaneError::BadRequest(format!(
                    "job {} has a zero budget",
                    job.name
                )));
            }
            let dir = format!("/lane/jobs/{index:03}");
            overlay.file(&format!("{dir}/name"), 0o644, job.name.as_bytes())?;
            overlay.file(
                &format!("{dir}/budget"),
                0o644,
                format!("{:.3}", job.budget.as_secs_f64()).as_bytes(),
            )?;
            overlay.file(&format!("{dir}/run"), 0o755, job.script.as_bytes())?;
            if let Some(stdin) = &job.stdin {
                overlay.file(&format!("{dir}/stdin"), 0o644, stdin)?;
            }
        }
        Ok(overlay)
    }
}

/// The path inside L1 of the bare-metal guest `name` (as in `guest_tools::guest_path`, e.g.
/// `"hello"`, `"hello-pvh"`, `"pvh-hello"`) of a lane with [`Lane::bare_metal_guests`].
pub fn bare_metal_guest_in_l1(name: &str) -> Result<String, LaneError> {
    guest_tools::BUILT_GUESTS
        .iter()
        .find(|guest| guest.name == name)
        .map(|guest| format!("{BARE_METAL_GUESTS_IN_L1}/{}", guest.file_name))
        .ok_or_else(|| LaneError::BadRequest(format!("guest-tools built no guest named {name}")))
}

/// The workspace root (the parent of this crate).
pub fn workspace_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_owned()
}

/// Where `build-images.sh` put the images.
pub fn images_dir() -> PathBuf {
    std::env::var_os(IMAGES_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_dir().join("target/guest-images"))
}

fn require_image(path: &Path) -> Result<PathBuf, LaneError> {
    if path.is_file() {
        Ok(path.to_owned())
    } else {
        Err(LaneError::ImageMissing {
            path: path.to_owned(),
        })
    }
}

/// Fails if a file of `guest-tools/linux/` (L1's init, the lane tools) changed after `image` was
/// built: a stale L1 would test old code.
fn require_newer_than_sources(image: &Path) -> Result<(), LaneError> {
    let sources = workspace_dir().join("guest-tools/linux");
    let modified = |path: &Path| fs::metadata(path).and_then(|meta| meta.modified()).ok();
    let Some(built) = modified(image) else {
        return Ok(());
    };
    let Ok(entries) = fs::read_dir(&sources) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let source = entry.path();
        if modified(&source).is_some_and(|changed| changed > built) {
            return Err(LaneError::ImageStale {
                path: image.to_owned(),
                source,
            });
        }
    }
    Ok(())
}

fn find_qemu(chosen: Option<&Path>) -> Result<PathBuf, LaneError> {
    let qemu = match chosen {
        Some(path) => path.to_string_lossy().into_owned(),
        None => std::env::var(QEMU_ENV).unwrap_or_else(|_| "qemu-system-x86_64".to_owned()),
    };
    let candidate = Path::new(&qemu);
    if candidate.components().count() > 1 {
        return if candidate.is_file() {
            Ok(candidate.to_owned())
        } else {
            Err(LaneError::QemuMissing { qemu })
        };
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join(&qemu))
        .find(|path| path.is_file())
        .ok_or(LaneError::QemuMissing { qemu })
}

fn run_dir(name: &str) -> Result<PathBuf, LaneError> {
    static COUNTER: Mutex<u32> = Mutex::new(0);
    let serial = {
        let mut counter = COUNTER
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *counter += 1;
        *counter
    };
    let dir = workspace_dir()
        .join("target/lane-runs")
        .join(format!("{name}-{}-{serial}", std::process::id()));
    fs::create_dir_all(&dir).map_err(io_error(format!("creating {}", dir.display())))?;
    Ok(dir)
}

fn write_initrd(path: &Path, base: &Path, overlay: &[u8]) -> Result<(), LaneError> {
    let mut out =
        fs::File::create(path).map_err(io_error(format!("creating {}", path.display())))?;
    let mut base_file =
        fs::File::open(base).map_err(io_error(format!("opening {}", base.display())))?;
    io::copy(&mut base_file, &mut out).map_err(io_error(format!("copying {}", base.display())))?;
    out.write_all(overlay)
        .map_err(io_error(format!("writing {}", path.display())))
}

/// Where the host is in the L1 run, for the time-out of the next marker.
enum Phase {
    Booting,
    InJob { name: String, budget: Duration },
    BetweenJobs,
    Done,
}

/// Reads QEMU's serial output line by line into a channel (bytes: the log may hold anything).
fn spawn_line_reader(stream: impl Read + Send + 'static) -> mpsc::Receiver<(Instant, Vec<u8>)> {
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        loop {
            let mut line = Vec::new();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if sender.send((Instant::now(), line)).is_err() {
                        break;
                    }
                }
            }
        }
    });
    receiver
}

fn l1_cpus_from_env() -> Result<u32, LaneError> {
    match std::env::var(L1_CPUS_ENV) {
        Err(_) => Ok(DEFAULT_L1_CPUS),
        Ok(text) => match text.parse::<u32>() {
            Ok(cpus) if cpus > 0 => Ok(cpus),
            _ => Err(LaneError::BadRequest(format!(
                "{L1_CPUS_ENV}={text:?}: expected a positive number"
            ))),
        },
    }
}

/// What QEMU boots as L1.
struct L1Machine {
    qemu: PathBuf,
    vmlinux: PathBuf,
    initrd: PathBuf,
    cpus: u32,
}

fn boot(machine: &L1Machine, log_path: &Path, jobs: &[Job]) -> Result<LaneRun, LaneError> {
    let qemu = &machine.qemu;
    let mut command = Command::new(qemu);
    command
        .args(["-accel", "tcg", "-cpu", "max", "-m", "2048", "-smp"])
        .arg(machine.cpus.to_string())
        .args(["-nodefaults", "-display", "none"])
        .args(["-serial", "stdio", "-no-reboot", "-kernel"])
        .arg(&machine.vmlinux)
        .arg("-initrd")
        .arg(&machine.initrd)
        .args(["-append", L1_CMDLINE])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut log =
        fs::File::create(log_path).map_err(io_error(format!("creating {}", log_path.display())))?;
    let _ = writeln!(log, "# {command:?}");
    let start = Instant::now();
    let mut child = command
        .spawn()
        .map_err(io_error(format!("starting {}", qemu.display())))?;
    let (Some(stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
        let _ = child.kill();
        return Err(LaneError::BadRequest(
            "QEMU's stdout/stderr were not captured".to_owned(),
        ));
    };
    let stderr_reader = thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let lines = spawn_line_reader(stdout);

    let mut parser = LogParser::new(log_path);
    let mut phase = Phase::Booting;
    let mut deadline = start + BOOT_BUDGET;
    loop {
        let now = Instant::now();
        let line = match lines.recv_timeout(deadline.saturating_duration_since(now)) {
            Ok((when, line)) => {
                let _ = log.write_all(&line);
                (
                    when,
                    String::from_utf8_lossy(&line)
                        .trim_end_matches(['\n', '\r'])
                        .to_owned(),
                )
            }
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {
                parser.problems.push(match &phase {
                    Phase::Booting => {
                        format!("L1 did not get ready within {} s", BOOT_BUDGET.as_secs())
                    }
                    Phase::InJob { name, budget } => format!(
                        "job {name} did not end within its budget of {:.0} s plus {} s; L1 killed",
                        budget.as_secs_f64(),
                        JOB_GRACE.as_secs()
                    ),
                    Phase::BetweenJobs => format!(
                        "L1 silent for {} s between jobs; killed",
                        BETWEEN_JOBS_BUDGET.as_secs()
                    ),
                    Phase::Done => "QEMU did not exit after L1 powered off; killed".to_owned(),
                });
                let _ = child.kill();
                break;
            }
        };
        let (when, text) = line;
        if let Some(event) = parser.line(&text, when.duration_since(start)) {
            let now = Instant::now();
            match event {
                Event::Ready | Event::JobEnded => {
                    phase = Phase::BetweenJobs;
                    deadline = now + BETWEEN_JOBS_BUDGET;
                }
                Event::JobBegan { name, budget } => {
                    deadline = now + budget + JOB_GRACE;
                    phase = Phase::InJob { name, budget };
                }
                Event::Done => {
                    phase = Phase::Done;
                    deadline = now + BETWEEN_JOBS_BUDGET;
                }
            }
        }
    }
    let status = child.wait().map_err(io_error("waiting for QEMU"))?;
    let total = start.elapsed();
    let qemu_stderr = stderr_reader.join().unwrap_or_default();
    let _ = writeln!(
        log,
        "# qemu exit: {status}, wall {:.2} s\n# qemu stderr:\n{qemu_stderr}",
        total.as_secs_f64()
    );
    let mut run = parser.finish(total);
    if !matches!(phase, Phase::Done) && run.problems.is_empty() {
        run.problems
            .push(format!("L1 stopped before it finished ({status})"));
    }
    let missing: Vec<&str> = jobs
        .iter()
        .map(Job::name)
        .filter(|name| run.jobs.iter().all(|job| job.name != *name))
        .collect();
    if !missing.is_empty() && run.problems.is_empty() {
        run.problems
            .push(format!("jobs without an outcome: {}", missing.join(", ")));
    }
    if !qemu_stderr.trim().is_empty() && !run.problems.is_empty() {
        run.problems
            .push(format!("QEMU said: {}", qemu_stderr.trim()));
    }
    Ok(run)
}

/// The last lines of a log file, for error messages.
pub fn log_tail(path: &Path) -> String {
    let text = fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}
