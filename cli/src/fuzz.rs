//! `snapvmm fuzz`: boot a guest to its first SAVE and fuzz it with the LibAFL engine of
//! `fuzz-harness`; `snapvmm repro`: run one saved input once and print the verdict.
//!
//! Policies that belong to the command line live here: where the guest's serial output goes,
//! Ctrl-C/SIGTERM (the fuzzer's stop flag: the current run ends within its timeout, then every
//! file is written), the exit statuses, and the `snapvmm repro` line printed for a crash.

use std::error::Error;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use fuzz_harness::{
    DedupMode, FuzzConfig, FuzzError, Fuzzer, RunOutcome, StopReason, VmTarget, VmTargetError,
};
use vmm::{EngineOptions, MachineConfig, MemSize, RestoreStrategy, SerialOutput};

use crate::termination::Termination;
use crate::{kernel_source, RestoreArg, STATUS_SETUP_ERROR};

/// `repro`: the run ended normally.
pub const STATUS_NORMAL: u8 = 0;
/// `repro`: the input crashes the target; `fuzz`: the VM failed during the campaign.
pub const STATUS_CRASH: u8 = 71;
/// `repro`: the input hangs the target.
pub const STATUS_HANG: u8 = 68;
/// `repro`: the VM failed while running the input (not a verdict on the input).
pub const STATUS_VM_FAILURE: u8 = 69;
/// `repro`: interrupted by Ctrl-C or SIGTERM.
pub const STATUS_INTERRUPTED: u8 = 130;

/// The guest to fuzz and the VM it runs in (shared by `fuzz` and `repro`, so that a crash
/// replays on the same machine).
#[derive(Args, Clone)]
pub struct TargetArgs {
    /// Kernel to boot: a fuzz target ELF (it SAVEs once, then runs one input per restore).
    #[arg(
        long,
        value_name = "PATH",
        conflicts_with = "guest",
        required_unless_present = "guest"
    )]
    kernel: Option<PathBuf>,
    /// Fuzz a guest built into snapvmm (see `snapvmm guests`), e.g. fuzz-demo.
    #[arg(long, value_name = "NAME")]
    guest: Option<String>,
    /// Initial ramdisk.
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, value_name = "STR", default_value = "")]
    cmdline: String,
    /// Guest RAM, e.g. 64M or 1G.
    #[arg(long, value_name = "SIZE", default_value = "64M")]
    mem: String,
    /// Time limit of one run in milliseconds; a longer run is a hang.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    timeout_ms: u64,
    /// How long the guest may take from boot to its first SAVE.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    boot_timeout: f64,
}

#[derive(Args)]
pub struct FuzzArgs {
    #[command(flatten)]
    pub(crate) target: TargetArgs,
    /// Output directory (AFL++'s layout: DIR/default/queue, crashes, hangs, fuzzer_stats,
    /// plot_data). An existing one is resumed.
    #[arg(long, value_name = "DIR")]
    pub(crate) out: PathBuf,
    /// Seed directory (repeatable); without one, the fuzzer starts from a single small input.
    #[arg(long, value_name = "DIR")]
    pub(crate) corpus: Vec<PathBuf>,
    /// Dictionary (AFL/libFuzzer format).
    #[arg(long, value_name = "FILE")]
    pub(crate) dict: Option<PathBuf>,
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECS")]
    pub(crate) max_time: Option<f64>,
    /// Stop after this many executions.
    #[arg(long, value_name = "N")]
    pub(crate) max_execs: Option<u64>,
    /// How RESTORE puts RAM back between runs.
    #[arg(long, value_enum, default_value = "dirty")]
    pub(crate) restore: RestoreArg,
    /// Check the VMM while fuzzing: after every Nth restore compare RAM, vCPU and device state
    /// with the snapshot; a difference stops the fuzzer (status 71). Slow: a RAM compare each.
    #[arg(long, value_name = "N")]
    pub(crate) verify_every: Option<u64>,
    /// Stop after the first crash, print its file and the `snapvmm repro` command.
    #[arg(long)]
    pub(crate) stop_on_crash: bool,
    /// No comparison feedback (by default each queue entry runs once with the target's
    /// comparison log on, and input-to-state mutations use the operands it compared).
    #[arg(long)]
    pub(crate) no_cmplog: bool,
    /// What makes a crash new: its kind + code + pc, or new coverage among crashes (AFL++).
    #[arg(long, value_enum, default_value = "kind")]
    pub(crate) dedup: DedupArg,
    /// Seed of the fuzzer's random number generator (random by default).
    #[arg(long, value_name = "N")]
    pub(crate) seed: Option<u64>,
    /// Keep the guest's serial output in DIR/default/serial.log (discarded by default: a target
    /// that prints on every run would fill the disk).
    #[arg(long)]
    pub(crate) serial_log: bool,
    /// Fuzz with N processes, one per core, that share what they find (LibAFL's launcher and
    /// LLMP); the guest boots once and every job resumes its snapshot. Job K writes DIR/jobK.
    #[arg(long, value_name = "N")]
    pub(crate) jobs: Option<usize>,
    /// Let fuzzers on other machines link to this one: its broker listens on 127.0.0.1:PORT
    /// (forward the port, e.g. with ssh -L). Implies --jobs 1 unless --jobs is given.
    #[arg(long, value_name = "PORT", conflicts_with = "connect")]
    pub(crate) listen: Option<u16>,
    /// Link to the broker of a `snapvmm fuzz --listen PORT` at HOST:PORT: new inputs go both
    /// ways (one node listens, every other connects to it). Implies --jobs 1 unless --jobs is
    /// given.
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) connect: Option<String>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum DedupArg {
    Kind,
    Coverage,
}

#[derive(Args)]
pub struct ReproArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// The input to run (a file from DIR/default/crashes, hangs or queue).
    #[arg(value_name = "INPUT")]
    input: PathBuf,
}

#[derive(Args)]
pub struct PlotArgs {
    /// An output directory of `snapvmm fuzz` (or its instance directory, or a plot_data file).
    #[arg(value_name = "DIR")]
    dir: PathBuf,
    /// The PNG to write (default: DIR/plot.png).
    #[arg(short = 'o', long = "output", value_name = "PNG")]
    output: Option<PathBuf>,
}

/// A failure with the exit status it ends with.
pub struct Failure {
    pub status: u8,
    pub message: String,
}

impl Failure {
    pub(crate) fn setup(message: impl Into<String>) -> Self {
        Self {
            status: STATUS_SETUP_ERROR,
            message: message.into(),
        }
    }
}

/// An error and its sources on one line, each cause once (messages here often repeat their
/// source's text inline).
pub fn one_line(error: &dyn Error) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line.lines().next().unwrap_or_default().to_string()
}

impl TargetArgs {
    pub(crate) fn timeout(&self) -> Result<Duration, Failure> {
        if self.timeout_ms == 0 || self.timeout_ms > 3_600_000 {
            return Err(Failure::setup(format!(
                "--timeout-ms {} is not 1-3600000",
                self.timeout_ms
            )));
        }
        Ok(Duration::from_millis(self.timeout_ms))
    }

    fn boot_timeout(&self) -> Result<Duration, Failure> {
        match self.boot_timeout {
            secs if secs.is_finite() && secs > 0.0 && secs <= 3600.0 => {
                Ok(Duration::from_secs_f64(secs))
            }
            secs => Err(Failure::setup(format!(
                "--boot-timeout {secs} is not a positive number of seconds up to 3600"
            ))),
        }
    }

    /// A name for the target: the guest's, or the kernel file's.
    pub(crate) fn banner(&self) -> String {
        match (&self.guest, &self.kernel) {
            (Some(name), _) => name.clone(),
            (None, Some(path)) => path
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_else(|| "snapvmm".into()),
            (None, None) => "snapvmm".into(),
        }
    }

    /// Boots the target to its snapshot point.
    pub(crate) fn boot(
        &self,
        serial: SerialOutput,
        restore: RestoreArg,
        verify_every: Option<u64>,
    ) -> Result<VmTarget, Failure> {
        let mem: MemSize = self
            .mem
            .parse()
            .map_err(|error: vmm::config::ConfigError| Failure::setup(format!("--mem: {error}")))?;
        if self.kernel.is_none() && self.guest.is_none() {
            return Err(Failure::setup(
                "give the target with --kernel PATH or --guest NAME",
            ));
        }
        let kernel = kernel_source(self.kernel.clone(), self.guest.as_deref())
            .map_err(|error| Failure::setup(format!("{error:#}")))?;
        let mut config = MachineConfig::new(kernel);
        config.initrd = self.initrd.clone();
        config.cmdline = self.cmdline.clone();
        config.mem_bytes = mem.0;
        config.serial = serial;
        config.engine = engine_options(restore, verify_every);
        VmTarget::boot(&config, self.boot_timeout()?).map_err(|error| {
            let status = match error {
                VmTargetError::Boot(_)
                | VmTargetError::NoSnapshot(_)
                | VmTargetError::EndedBeforeSnapshot(_)
                | VmTargetError::NoInputBuffer => STATUS_SETUP_ERROR,
                _ => STATUS_VM_FAILURE,
            };
            Failure {
                status,
                message: one_line(&error),
            }
        })
    }

    /// The `snapvmm repro` command line that replays `input` on this same machine.
    pub(crate) fn repro_command(&self, input: &Path) -> String {
        let program = std::env::args()
            .next()
            .unwrap_or_else(|| "snapvmm".to_string());
        let mut words = vec![program, "repro".to_string()];
        if let Some(kernel) = &self.kernel {
            words.push("--kernel".into());
            words.push(kernel.display().to_string());
        }
        if let Some(guest) = &self.guest {
            words.push("--guest".into());
            words.push(guest.clone());
        }
        if let Some(initrd) = &self.initrd {
            words.push("--initrd".into());
            words.push(initrd.display().to_string());
        }
        if !self.cmdline.is_empty() {
            words.push("--cmdline".into());
            words.push(self.cmdline.clone());
        }
        words.push("--mem".into());
        words.push(self.mem.clone());
        words.push("--timeout-ms".into());
        words.push(self.timeout_ms.to_string());
        words.push(input.display().to_string());
        words
            .iter()
            .map(|word| shell_quote(word))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The snapshot engine's options from `--restore` and `--verify-every`.
pub(crate) fn engine_options(restore: RestoreArg, verify_every: Option<u64>) -> EngineOptions {
    EngineOptions {
        strategy: match restore {
            RestoreArg::Dirty => RestoreStrategy::Dirty,
            RestoreArg::Remap => RestoreStrategy::Remap,
        },
        verify_restores: verify_every.is_some(),
        verify_every: verify_every.unwrap_or(1).max(1),
        ..Default::default()
    }
}

/// `word` as one shell word (single quotes only when needed).
fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-:,=+@%".contains(&b));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// `snapvmm fuzz` in one process (without `--jobs`, `--listen`, `--connect`: `fuzz_jobs`):
/// returns the exit status.
pub fn fuzz(args: FuzzArgs) -> Result<u8, Failure> {
    let mut config = args.fuzz_config()?;
    fs::create_dir_all(&args.out).map_err(|error| {
        Failure::setup(format!(
            "cannot create the output directory {}: {error}",
            args.out.display()
        ))
    })?;
    let serial = if args.serial_log {
        let instance = args.out.join(&config.instance_name);
        fs::create_dir_all(&instance).map_err(|error| {
            Failure::setup(format!("cannot create {}: {error}", instance.display()))
        })?;
        SerialOutput::File(instance.join("serial.log"))
    } else {
        SerialOutput::Discard
    };
    let target = args.target.boot(serial, args.restore, args.verify_every)?;
    config.banner = args.target.banner();
    let final_stats = target.final_stats();
    let fuzzer = Fuzzer::new(config, target).map_err(|error| Failure::setup(one_line(&error)))?;
    let _termination = Termination::watch_flag(fuzzer.stop_flag());
    let summary = fuzzer.run().map_err(campaign_failure)?;
    if let Some(line) = final_stats
        .lock()
        .ok()
        .and_then(|stats| stats.as_ref().and_then(|stats| stats.summary()))
    {
        eprintln!("snapvmm: snapshots: {line}");
    }
    print_findings(
        &summary.crash_files,
        summary.stop_reason,
        &summary.instance_dir,
        &args.target,
    );
    Ok(0)
}

/// A campaign's failure with its status: 71 when the VM or the engine failed, else 64.
pub(crate) fn campaign_failure(error: FuzzError) -> Failure {
    Failure {
        status: match error {
            FuzzError::Target(_) | FuzzError::Engine(_) => STATUS_CRASH,
            _ => STATUS_SETUP_ERROR,
        },
        message: one_line(&error),
    }
}

impl FuzzArgs {
    /// Whether the campaign runs as jobs under a broker (`fuzz_jobs`).
    pub fn wants_jobs(&self) -> bool {
        self.jobs.is_some() || self.listen.is_some() || self.connect.is_some()
    }

    /// The engine's configuration from the command line (instance `default`).
    pub(crate) fn fuzz_config(&self) -> Result<FuzzConfig, Failure> {
        let timeout = self.target.timeout()?;
        let max_time = match self.max_time {
            None => None,
            Some(secs) if secs.is_finite() && secs > 0.0 && secs < 1e9 => {
                Some(Duration::from_secs_f64(secs))
            }
            Some(secs) => {
                return Err(Failure::setup(format!(
                    "--max-time {secs} is not a positive number of seconds"
                )))
            }
        };
        let mut config = FuzzConfig::new(&self.out);
        config.corpus_dirs = self.corpus.clone();
        config.dict = self.dict.clone();
        config.max_time = max_time;
        config.max_execs = self.max_execs;
        config.timeout = timeout;
        config.stop_on_crash = self.stop_on_crash;
        config.cmplog = !self.no_cmplog;
        config.dedup = match self.dedup {
            DedupArg::Kind => DedupMode::KindCodePc,
            DedupArg::Coverage => DedupMode::Coverage,
        };
        config.seed = self.seed;
        config.banner = self.target.banner();
        Ok(config)
    }
}

/// On stdout: each crash file of this session with the command that replays it.
pub(crate) fn print_findings(
    crash_files: &[PathBuf],
    stop_reason: StopReason,
    instance_dir: &Path,
    target: &TargetArgs,
) {
    for file in crash_files {
        println!("crash: {}", file.display());
        println!("repro: {}", target.repro_command(file));
    }
    if stop_reason == StopReason::FirstCrash && crash_files.is_empty() {
        // A crash known from an earlier session of this out dir was hit again.
        println!("crashes: {}", instance_dir.join("crashes").display());
    }
}

/// `snapvmm repro`: returns the exit status (0 normal end, 71 crash, 68 hang).
pub fn repro(args: ReproArgs) -> Result<u8, Failure> {
    let timeout = args.target.timeout()?;
    if let Err(error) = fs::metadata(&args.input) {
        return Err(Failure::setup(format!(
            "cannot read {}: {error}",
            args.input.display()
        )));
    }
    let mut target = args
        .target
        .boot(SerialOutput::Discard, RestoreArg::Dirty, None)?;
    // Ctrl-C/SIGTERM stop the run (a long --timeout-ms would otherwise hold the terminal).
    let _termination = Termination::watch(target.control());
    let replay = fuzz_harness::replay(&mut target, &args.input, timeout).map_err(|error| {
        let status = match error {
            fuzz_harness::ReproError::Read { .. } => STATUS_SETUP_ERROR,
            fuzz_harness::ReproError::Target(VmTargetError::Stopped) => STATUS_INTERRUPTED,
            fuzz_harness::ReproError::Target(_) => STATUS_VM_FAILURE,
        };
        Failure {
            status,
            message: one_line(&error),
        }
    })?;
    if replay.truncated {
        eprintln!(
            "snapvmm: warning: {} is longer than the target's largest input, only its first {} bytes were run",
            args.input.display(),
            replay.input_len
        );
    }
    println!("{replay}");
    Ok(match replay.outcome {
        RunOutcome::Normal { .. } => STATUS_NORMAL,
        RunOutcome::Crash(_) => STATUS_CRASH,
        RunOutcome::Hang => STATUS_HANG,
    })
}

/// `snapvmm plot`.
pub fn plot(args: PlotArgs) -> Result<u8, Failure> {
    let png = args.output.unwrap_or_else(|| args.dir.join("plot.png"));
    let points =
        fuzz_harness::plot(&args.dir, &png).map_err(|error| Failure::setup(one_line(&error)))?;
    println!("{} ({points} points)", png.display());
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_quoted_only_when_needed() {
        assert_eq!(
            shell_quote("out/default/crashes/id:000000,sig:11"),
            "out/default/crashes/id:000000,sig:11"
        );
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
