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
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// Environment variable: the QEMU binary to use (default `qemu-system-x86_64` from `PATH`).
pub const QEMU_ENV: &str = "SNAPVMM_LANE_QEMU";
/// Environment variable: the images directory (default `<workspace>/target/guest-images`).
pub const IMAGES_ENV: &str = "SNAPVMM_GUEST_IMAGES";
/// Environment variable: a snapvmm binary to use instead of building the static one.
pub const SNAPVMM_BIN_ENV: &str = "SNAPVMM_LANE_BIN";
/// The command that builds the images.
pub const BUILD_COMMAND: &str = "bash guest-tools/linux/build-images.sh";
/// Where snapvmm lands inside L1 (on `PATH` there).
pub const SNAPVMM_IN_L1: &str = "/bin/snapvmm";

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
const MARKER: &str = "@@LANE ";
const L1_CMDLINE: &str = "console=ttyS0 quiet panic=-1";

/// Only one L1 at a time: every QEMU uses both cores.
static BOOT_LOCK: Mutex<()> = Mutex::new(());
static STATIC_SNAPVMM: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// What can go wrong while preparing or running the lane.
#[derive(Debug)]
pub enum LaneError {
    /// QEMU is not installed (or `SNAPVMM_LANE_QEMU` points nowhere).
    QemuMissing { qemu: String },
    /// An image the builder makes is missing.
    ImageMissing { path: PathBuf },
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
    /// sees `PATH` with busybox, `snapvmm` (when the lane carries it), `lane-chat`, `kvm-check`,
    /// and `$LANE_GUEST_KERNEL` / `$LANE_GUEST_INITRD` (the inner guest's bzImage and initramfs).
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
        let run_dir = run_dir(&self.name)?;
        let initrd = run_dir.join("initrd.cpio");
        write_initrd(&initrd, &base_cpio, &overlay.finish())?;
        let log_path = run_dir.join("serial.log");
        let _one_l1_at_a_time = BOOT_LOCK
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let result = boot(&qemu, &vmlinux, &initrd, &log_path, &self.jobs);
        // The initrd is tens of MiB and rebuilt every run; the log stays for inspection.
        let _ = fs::remove_file(&initrd);
        result
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

/// The static snapvmm binary for L1 (L1 has no glibc): `$SNAPVMM_LANE_BIN` if set, otherwise
/// built once per test process with
/// `RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --target x86_64-unknown-linux-gnu
/// --bin snapvmm --target-dir target/lane` (its own target dir: no fight with the main build).
pub fn static_snapvmm() -> Result<PathBuf, LaneError> {
    if let Some(path) = std::env::var_os(SNAPVMM_BIN_ENV) {
        return Ok(PathBuf::from(path));
    }
    let built =
        STATIC_SNAPVMM.get_or_init(|| build_static_snapvmm().map_err(|error| error.to_string()));
    built.clone().map_err(|output| LaneError::SnapvmmBuild {
        command: "cargo build (static snapvmm)".to_owned(),
        output,
    })
}

fn build_static_snapvmm() -> Result<PathBuf, LaneError> {
    let workspace = workspace_dir();
    let target_dir = workspace.join("target/lane");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let args = [
        "build",
        "--release",
        "--target",
        "x86_64-unknown-linux-gnu",
        "--bin",
        "snapvmm",
        "--target-dir",
    ];
    let command = format!(
        "RUSTFLAGS='-C target-feature=+crt-static' {cargo} {} {}",
        args.join(" "),
        target_dir.display()
    );
    let output = Command::new(&cargo)
        .args(args)
        .arg(&target_dir)
        .current_dir(&workspace)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .stdin(Stdio::null())
        .output()
        .map_err(io_error(format!("running {command}")))?;
    if !output.status.success() {
        return Err(LaneError::SnapvmmBuild {
            command,
            output: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    Ok(target_dir.join("x86_64-unknown-linux-gnu/release/snapvmm"))
}

/// Adds the ELF program `host` at `path` in L1, plus its interpreter and shared libraries (at
/// their host paths) when it is dynamically linked.
fn add_program(overlay: &mut CpioWriter, path: &str, host: &Path) -> Result<(), LaneError> {
    let bytes = fs::read(host).map_err(io_error(format!("reading {}", host.display())))?;
    let dynamic = elf_has_interpreter(&bytes);
    overlay.file(path, 0o755, &bytes)?;
    if dynamic {
        for library in shared_libraries(host)? {
            let contents =
                fs::read(&library).map_err(io_error(format!("reading {}", library.display())))?;
            overlay.file(&library.to_string_lossy(), 0o755, &contents)?;
        }
    }
    Ok(())
}

/// True for an ELF64 file with a PT_INTERP program header (a dynamically linked executable).
fn elf_has_interpreter(bytes: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let read = |offset: usize, len: usize| -> Option<u64> {
        let field = bytes.get(offset..offset.checked_add(len)?)?;
        Some(
            field
                .iter()
                .rev()
                .fold(0u64, |value, byte| (value << 8) | u64::from(*byte)),
        )
    };
    if bytes.get(..5) != Some(b"\x7fELF\x02".as_slice()) {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (read(0x20, 8), read(0x36, 2), read(0x38, 2))
    else {
        return false;
    };
    (0..phnum).any(|index| {
        usize::try_from(phoff + index * phentsize)
            .ok()
            .and_then(|offset| read(offset, 4))
            .is_some_and(|kind| kind == u64::from(PT_INTERP))
    })
}

/// The shared libraries (and the loader) of `program`, from `ldd`.
fn shared_libraries(program: &Path) -> Result<Vec<PathBuf>, LaneError> {
    let output = Command::new("ldd")
        .arg(program)
        .output()
        .map_err(io_error(format!("running ldd {}", program.display())))?;
    let text = String::from_utf8_lossy(&output.stdout);
    Ok(text
        .lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// Writes a newc ("070701") cpio archive in memory; the kernel unpacks it over the base
/// initramfs (files replace same-named ones).
#[derive(Default)]
struct CpioWriter {
    bytes: Vec<u8>,
    directories: BTreeSet<String>,
    next_inode: u32,
}

impl CpioWriter {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) -> Result<(), LaneError> {
        let size = u32::try_from(data.len())
            .map_err(|_| LaneError::BadRequest(format!("{name}: too large for a cpio entry")))?;
        let name_size = u32::try_from(name.len() + 1)
            .map_err(|_| LaneError::BadRequest(format!("{name}: name too long")))?;
        self.next_inode += 1;
        let fields = [
            self.next_inode,
            mode,
            0,
            0,
            1,
            0,
            size,
            0,
            0,
            0,
            0,
            name_size,
            0,
        ];
        self.bytes.extend_from_slice(b"070701");
        for field in fields {
            self.bytes
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
        self.bytes.extend_from_slice(data);
        self.pad();
        Ok(())
    }

    fn pad(&mut self) {
        self.bytes.resize(self.bytes.len().next_multiple_of(4), 0);
    }

    /// Adds a regular file at absolute `path`, creating its parent directories.
    fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> Result<(), LaneError> {
        let relative = path
            .strip_prefix('/')
            .filter(|rest| {
                !rest.is_empty()
                    && rest
                        .split('/')
                        .all(|part| !part.is_empty() && part != ".." && part != ".")
            })
            .ok_or_else(|| {
                LaneError::BadRequest(format!("L1 path {path:?} must be absolute and plain"))
            })?;
        let parts: Vec<&str> = relative.split('/').collect();
        for depth in 1..parts.len() {
            let directory = parts[..depth].join("/");
            if self.directories.insert(directory.clone()) {
                self.entry(&directory, 0o040_755, &[])?;
            }
        }
        self.entry(relative, 0o100_000 | (mode & 0o7777), data)
    }

    fn finish(mut self) -> Vec<u8> {
        // The trailer cannot fail: empty data, short name.
        let _ = self.entry("TRAILER!!!", 0, &[]);
        self.bytes
    }
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

fn boot(
    qemu: &Path,
    vmlinux: &Path,
    initrd: &Path,
    log_path: &Path,
    jobs: &[Job],
) -> Result<LaneRun, LaneError> {
    let mut command = Command::new(qemu);
    command
        .args([
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-m",
            "2048",
            "-smp",
            "2",
            "-nodefaults",
            "-display",
            "none",
        ])
        .args(["-serial", "stdio", "-no-reboot", "-kernel"])
        .arg(vmlinux)
        .arg("-initrd")
        .arg(initrd)
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

/// What a marker line means for the host's time-outs.
#[derive(Debug, PartialEq, Eq)]
enum Event {
    Ready,
    JobBegan { name: String, budget: Duration },
    JobEnded,
    Done,
}

/// Turns the serial log into a [`LaneRun`], one line at a time.
struct LogParser {
    log_path: PathBuf,
    current: Option<(String, Vec<String>)>,
    jobs: Vec<JobOutcome>,
    problems: Vec<String>,
    kernel_warnings: Vec<String>,
    boot_lines: Vec<String>,
    in_kmsg: bool,
    times: BootTimes,
}

fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.split_whitespace()
        .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
}

impl LogParser {
    fn new(log_path: &Path) -> Self {
        Self {
            log_path: log_path.to_owned(),
            current: None,
            jobs: Vec::new(),
            problems: Vec::new(),
            kernel_warnings: Vec::new(),
            boot_lines: Vec::new(),
            in_kmsg: false,
            times: BootTimes::default(),
        }
    }

    fn line(&mut self, line: &str, at: Duration) -> Option<Event> {
        if let Some((name, output)) = &mut self.current {
            let end = format!("{MARKER}end {name} ");
            match line.strip_prefix(&end) {
                Some(rest) => {
                    let name = name.clone();
                    let output = std::mem::take(output);
                    self.current = None;
                    self.end_job(name, output, rest);
                    return Some(Event::JobEnded);
                }
                None => {
                    output.push(line.to_owned());
                    return None;
                }
            }
        }
        if self.in_kmsg {
            if line == "@@LANE kmsg end" {
                self.in_kmsg = false;
            } else {
                self.kernel_warnings.push(line.to_owned());
            }
            return None;
        }
        let rest = line.strip_prefix(MARKER)?;
        let (word, args) = rest.split_once(' ').unwrap_or((rest, ""));
        match word {
            "begin" => {
                let name = args.split_whitespace().next()?.to_owned();
                let budget = field(args, "budget")
                    .and_then(|b| b.parse::<f64>().ok())
                    .unwrap_or(0.0);
                self.current = Some((name.clone(), Vec::new()));
                Some(Event::JobBegan {
                    name,
                    budget: Duration::from_secs_f64(budget.max(0.0)),
                })
            }
            "ready" => {
                self.times.ready = Some(at);
                self.boot_lines.push(line.to_owned());
                Some(Event::Ready)
            }
            "kmsg" => {
                self.in_kmsg = args == "begin";
                None
            }
            "done" => Some(Event::Done),
            _ => {
                self.boot_line(word, args);
                self.boot_lines.push(line.to_owned());
                None
            }
        }
    }

    fn boot_line(&mut self, word: &str, args: &str) {
        match word {
            "boot" => {
                self.times.l1_uptime_at_init = field(args, "uptime").and_then(|u| u.parse().ok())
            }
            "insmod" if field(args, "rc") != Some("0") => {
                self.problems.push(format!("L1: insmod {args}"))
            }
            "kvm" if field(args, "dev") != Some("yes") => self
                .problems
                .push("L1: no /dev/kvm after loading the modules".to_owned()),
            "modules" => {
                let start: Option<f64> = field(args, "start").and_then(|s| s.parse().ok());
                let end: Option<f64> = field(args, "end").and_then(|s| s.parse().ok());
                if let (Some(start), Some(end)) = (start, end) {
                    self.times.insmod_seconds = Some(end - start);
                }
            }
            _ => {}
        }
    }

    fn end_job(&mut self, name: String, lines: Vec<String>, marker_args: &str) {
        let status = field(marker_args, "rc").and_then(|rc| rc.parse().ok());
        let Some(status) = status else {
            self.problems
                .push(format!("job {name}: unreadable end marker {marker_args:?}"));
            return;
        };
        // nl=0: lane-exec added a newline after an unterminated last line; drop it again.
        let mut output = lines.join("\n");
        if field(marker_args, "nl") != Some("0") && !lines.is_empty() {
            output.push('\n');
        }
        let millis: f64 = field(marker_args, "ms")
            .and_then(|ms| ms.parse().ok())
            .unwrap_or(0.0);
        self.jobs.push(JobOutcome {
            name,
            status,
            timed_out: field(marker_args, "timeout") == Some("1"),
            output,
            elapsed: Duration::from_secs_f64(millis.max(0.0) / 1000.0),
            log_path: self.log_path.clone(),
        });
    }

    fn finish(mut self, total: Duration) -> LaneRun {
        if let Some((name, lines)) = self.current.take() {
            // A job that never ended: keep what it printed, the error says why it is missing.
            self.problems.push(format!(
                "job {name} did not finish; its last output:\n{}",
                lines
                    .iter()
                    .rev()
                    .take(LOG_TAIL_LINES)
                    .rev()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("\n")
            ));
        }
        self.times.total = total;
        LaneRun {
            jobs: self.jobs,
            problems: self.problems,
            kernel_warnings: self.kernel_warnings,
            boot_lines: self.boot_lines,
            times: self.times,
            log_path: self.log_path,
        }
    }
}

/// The last lines of a log file, for error messages.
pub fn log_tail(path: &Path) -> String {
    let text = fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(log: &str) -> LaneRun {
        let mut parser = LogParser::new(Path::new("test.log"));
        for line in log.lines() {
            parser.line(line, Duration::from_secs(1));
        }
        parser.finish(Duration::from_secs(2))
    }

    #[test]
    fn parser_splits_jobs_and_restores_exact_output() {
        let run = parse(
            "noise\n@@LANE boot uptime=2.97 kernel=x\n@@LANE insmod kvm rc=0\n\
             @@LANE modules loaded start=3.00 end=3.50\n@@LANE kvm dev=yes\n@@LANE ready uptime=4\n\
             @@LANE begin a budget=5\nhello\n@@LANE end a rc=0 timeout=0 nl=1 ms=12\n\
             @@LANE begin b budget=5\nhi\npartial\n@@LANE end b rc=3 timeout=0 nl=0 ms=1500\n\
             @@LANE begin c budget=5\n@@LANE end c rc=137 timeout=1 nl=1 ms=5000\n\
             @@LANE kmsg begin\n<4>[1.0] warn\n@@LANE kmsg end\n@@LANE done uptime=9\n",
        );
        assert!(run.problems.is_empty(), "{:?}", run.problems);
        assert_eq!(run.jobs.len(), 3);
        let a = run.job("a").unwrap();
        assert_eq!(
            (a.status, a.timed_out, a.output.as_str()),
            (0, false, "hello\n")
        );
        let b = run.job("b").unwrap();
        assert_eq!((b.status, b.output.as_str()), (3, "hi\npartial"));
        assert_eq!(b.elapsed, Duration::from_millis(1500));
        let c = run.job("c").unwrap();
        assert!(c.timed_out && c.output.is_empty());
        assert!(
            c.expect_status(137).is_err(),
            "a timed-out job never meets a status expectation"
        );
        assert_eq!(run.kernel_warnings, vec!["<4>[1.0] warn"]);
        assert_eq!(run.times.l1_uptime_at_init, Some(2.97));
        assert_eq!(run.times.insmod_seconds, Some(0.5));
    }

    #[test]
    fn parser_reports_failed_modules_and_unfinished_jobs() {
        let run = parse(
            "@@LANE insmod kvm_amd rc=1\n@@LANE kvm dev=no\n@@LANE begin x budget=3\nstuck\n",
        );
        assert_eq!(run.problems.len(), 3, "{:?}", run.problems);
        let error = run.job("x").unwrap_err().to_string();
        assert!(
            error.contains("insmod kvm_amd rc=1") && error.contains("stuck"),
            "{error}"
        );
    }

    #[test]
    fn markers_inside_job_output_only_end_that_job() {
        let run = parse(
            "@@LANE begin x budget=3\n@@LANE end y rc=0\n@@LANE ready\n@@LANE end x rc=0 nl=1 ms=1\n",
        );
        assert_eq!(
            run.job("x").unwrap().output,
            "@@LANE end y rc=0\n@@LANE ready\n"
        );
    }

    #[test]
    fn failed_expectations_carry_the_output() {
        let run = parse("@@LANE begin x budget=3\nsome output\n@@LANE end x rc=2 nl=1 ms=1\n");
        let job = run.job("x").unwrap();
        let error = job.expect_success().unwrap_err().to_string();
        assert!(
            error.contains("expected status 0, got status 2") && error.contains("some output"),
            "{error}"
        );
        assert!(job.expect_status(2).is_ok());
        assert!(job.expect_output("some").is_ok() && job.expect_output("absent").is_err());
    }

    #[test]
    fn cpio_writer_makes_a_newc_archive_with_parents() {
        let mut writer = CpioWriter::default();
        writer
            .file("/lane/jobs/000/run", 0o755, b"echo hi")
            .unwrap();
        writer.file("/lane/jobs/000/name", 0o644, b"x").unwrap();
        assert!(writer.file("relative", 0o644, b"").is_err());
        assert!(writer.file("/a/../b", 0o644, b"").is_err());
        let bytes = writer.finish();
        let text = String::from_utf8_lossy(&bytes);
        // lane, lane/jobs, lane/jobs/000 once each, two files, trailer.
        assert_eq!(text.matches("070701").count(), 6);
        assert!(
            text.contains("lane/jobs/000/run\0") && text.ends_with('\0') && bytes.len() % 4 == 0
        );
        // The mode field of the first file entry (after the three directories).
        assert!(text.contains(&format!("{:08x}", 0o100_755)));
    }

    #[test]
    fn elf_interpreter_detection() {
        let own = fs::read(std::env::current_exe().unwrap()).unwrap();
        // Test binaries are linked like the host's programs: dynamically, with an interpreter.
        assert!(elf_has_interpreter(&own));
        assert!(!elf_has_interpreter(b"\x7fELF\x02 too short"));
        assert!(!elf_has_interpreter(b"#!/bin/sh\n"));
    }
}
