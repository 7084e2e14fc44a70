//! `snapvmm`: the command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use vmm::{
    DeviceOptions, EngineOptions, KernelSource, Machine, MachineConfig, MemSize, RestoreStrategy,
    ResumeOptions, SerialOutput, VcpuRestore,
};

mod bench;
mod build_target;
mod fuzz;
mod fuzz_jobs;
mod qemu;
mod qmp;
mod qmp_input;
mod run;
mod stdin;
mod termination;

use run::{describe, drive_with, RunPolicy};
use termination::Termination;

/// Status for bad input or a VM that could not be set up (sysexits' EX_USAGE).
pub(crate) const STATUS_SETUP_ERROR: u8 = 64;
/// Guest RAM when `--mem` is not given.
const DEFAULT_MEM_BYTES: u64 = 256 << 20;

#[derive(Parser)]
#[command(
    name = "snapvmm",
    version,
    about = "A small KVM VMM for snapshot fuzzing"
)]
#[command(arg_required_else_help = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a guest and run it until it stops. With no --kernel, boots the built-in `hello` guest.
    Run(RunArgs),
    /// List the guests built into this binary.
    Guests,
    /// Measure restores per second and the SAVE stall; prints a Markdown report.
    Bench(BenchArgs),
    /// Boot a fuzz target to its first SAVE and fuzz it (AFL++'s output layout in --out).
    Fuzz(fuzz::FuzzArgs),
    /// Run one input on a fuzz target once and print the verdict (exit 0 normal end, 71 crash,
    /// 68 hang).
    Repro(fuzz::ReproArgs),
    /// Draw execs/s, corpus size and edges over time from a fuzz output directory into a PNG.
    Plot(fuzz::PlotArgs),
    /// Convert between snapshot directories and QEMU 7.2 migration streams (offline).
    #[command(subcommand)]
    Snapshot(qemu::SnapshotCommand),
    /// Build a libFuzzer harness (C, LLVMFuzzerTestOneInput) into a fuzz target ELF.
    BuildTarget(build_target::BuildTargetArgs),
}

#[derive(Args)]
struct BenchArgs {
    /// Guest RAM sizes to measure.
    #[arg(long, value_delimiter = ',', default_value = "64M,1G")]
    sizes: Vec<MemSize>,
    /// Pages the guest dirties per round.
    #[arg(long, value_delimiter = ',', default_value = "1,10,100,1000")]
    pages: Vec<u32>,
}

#[derive(Args)]
struct RunArgs {
    /// Kernel to boot: a Linux bzImage, an ELF vmlinux, a 64-bit ELF, or a PVH/Multiboot ELF.
    #[arg(long, value_name = "PATH", conflicts_with = "guest")]
    kernel: Option<PathBuf>,
    /// Boot a guest built into snapvmm (see `snapvmm guests`).
    #[arg(long, value_name = "NAME")]
    guest: Option<String>,
    /// Initial ramdisk for a Linux kernel.
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, value_name = "STR", default_value = "")]
    cmdline: String,
    /// Guest RAM, e.g. 256M or 1G [default: 256M; with --incoming: the stream's, which a given
    /// --mem must equal].
    #[arg(long, value_name = "SIZE")]
    mem: Option<MemSize>,
    /// Where COM1 output goes: stdio or file:PATH.
    #[arg(long, value_name = "stdio|file:PATH", default_value = "stdio")]
    serial: SerialOutput,
    /// Stop the guest after this many seconds (status 68).
    #[arg(long, value_name = "SECONDS", allow_negative_numbers = true)]
    timeout: Option<f64>,
    /// How RESTORE puts RAM back: copy the dirty pages, or drop the private copies of a
    /// MAP_PRIVATE mapping of the snapshot.
    #[arg(long, value_enum, default_value = "dirty")]
    restore: RestoreArg,
    /// How much vCPU state RESTORE writes back: auto skips what CPL3 code cannot change.
    #[arg(long, value_enum, default_value = "auto")]
    vcpu_restore: VcpuRestoreArg,
    /// After every RESTORE, compare RAM, vCPU and device state with the snapshot and stop
    /// (status 71) on any difference.
    #[arg(long)]
    verify_restores: bool,
    /// With --verify-restores: verify only every Nth restore (soaks of millions of restores).
    #[arg(long, value_name = "N", requires = "verify_restores")]
    verify_every: Option<u64>,
    /// Write every snapshot the guest takes to DIR (replaced atomically each time).
    #[arg(long, value_name = "DIR")]
    save_snapshot: Option<PathBuf>,
    /// Resume the snapshot in DIR instead of booting a kernel (RAM is mapped from its memory
    /// file lazily); the guest can RESTORE to it at once.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["kernel", "guest", "initrd"])]
    from_snapshot: Option<PathBuf>,
    /// Stop the VM (status 0) once this many restores are done.
    #[arg(long, value_name = "N")]
    max_restores: Option<u64>,
    /// PCI slot (bus 0) of the snapshot device.
    #[arg(long, value_name = "SLOT", default_value_t = 4, value_parser = clap::value_parser!(u8).range(1..32))]
    snapshot_slot: u8,
    /// Run without seccomp filters (to debug a system call the filters refuse).
    #[arg(long)]
    no_seccomp: bool,
    /// Load a QEMU 7.2 migration stream (microvm, pc-i440fx-7.2, pc-q35-7.2) and run it instead
    /// of booting: exec:CMD reads CMD's output (/bin/sh -c), file:PATH a file.
    #[arg(long, value_name = "exec:CMD|file:PATH",
          conflicts_with_all = ["kernel", "guest", "initrd", "from_snapshot"])]
    incoming: Option<qemu::StreamUri>,
    /// Start paused, until QMP `cont` (needs --qmp).
    #[arg(long, requires = "qmp")]
    paused: bool,
    /// Serve QMP (QEMU's monitor protocol: stop, cont, migrate, query-status, quit...) on a Unix
    /// socket; wait=off starts the guest before a client connects.
    #[arg(long, value_name = "unix:PATH[,server=on,wait=off]")]
    qmp: Option<qmp::QmpSpec>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum RestoreArg {
    Dirty,
    Remap,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum VcpuRestoreArg {
    Auto,
    Full,
}

fn main() -> ExitCode {
    // Before any thread starts, so that every thread inherits the mask (see termination.rs).
    termination::block_termination_signals();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SNAPVMM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error)
            if error.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand =>
        {
            // `snapvmm` alone: the usage, as a mistake.
            let _ = error.print();
            return ExitCode::from(STATUS_SETUP_ERROR);
        }
        Err(error) if !error.use_stderr() => {
            // --help and --version.
            let _ = error.print();
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            // One line: clap's first line names the argument and the reason.
            let rendered = error.render().to_string();
            let first = rendered.lines().next().unwrap_or("invalid arguments");
            eprintln!("snapvmm: {}", first.trim_start_matches("error: "));
            return ExitCode::from(STATUS_SETUP_ERROR);
        }
    };
    match cli.command {
        Command::Guests => {
            for guest in guest_tools::BUILT_GUESTS {
                println!("{}", guest.name);
            }
            ExitCode::SUCCESS
        }
        Command::Bench(args) => match bench(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("snapvmm: {error}");
                ExitCode::from(STATUS_SETUP_ERROR)
            }
        },
        Command::Fuzz(args) if args.wants_jobs() => finish(fuzz_jobs::fuzz_jobs(args)),
        Command::Fuzz(args) => finish(fuzz::fuzz(args)),
        Command::Repro(args) => finish(fuzz::repro(args)),
        Command::Plot(args) => finish(fuzz::plot(args)),
        Command::Snapshot(command) => match qemu::snapshot(command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("snapvmm: {error}");
                ExitCode::from(STATUS_SETUP_ERROR)
            }
        },
        Command::BuildTarget(args) => build_target::main(args),
        Command::Run(args) => match run(args) {
            Ok(status) => ExitCode::from(status),
            Err(error) => {
                eprintln!("snapvmm: {error}");
                ExitCode::from(STATUS_SETUP_ERROR)
            }
        },
    }
}

/// The exit status of a fuzzing command; its failure as one line on stderr.
fn finish(result: Result<u8, fuzz::Failure>) -> ExitCode {
    match result {
        Ok(status) => ExitCode::from(status),
        Err(failure) => {
            eprintln!("snapvmm: {}", failure.message);
            ExitCode::from(failure.status)
        }
    }
}

fn run(args: RunArgs) -> anyhow::Result<u8> {
    let timeout = match args.timeout {
        Some(secs) if secs.is_finite() && secs > 0.0 && secs < 1e9 => {
            Some(Duration::from_secs_f64(secs))
        }
        Some(secs) => anyhow::bail!("--timeout {secs} is not a positive number of seconds"),
        None => None,
    };
    let engine = EngineOptions {
        strategy: match args.restore {
            RestoreArg::Dirty => RestoreStrategy::Dirty,
            RestoreArg::Remap => RestoreStrategy::Remap,
        },
        vcpu_restore: match args.vcpu_restore {
            VcpuRestoreArg::Auto => VcpuRestore::Auto,
            VcpuRestoreArg::Full => VcpuRestore::Full,
        },
        verify_restores: args.verify_restores,
        verify_every: args.verify_every.unwrap_or(1),
    };
    if let Some(dir) = &args.save_snapshot {
        vmm::disk::check_snapshot_target(dir)?;
    }
    let resume_options = ResumeOptions {
        serial: args.serial.clone(),
        engine: engine.clone(),
    };
    // Whether the guest starts running (a stream saved paused waits for QMP `cont`).
    let mut start_running = !args.paused;
    let mut machine = match (&args.from_snapshot, &args.incoming) {
        (Some(dir), _) => Machine::from_snapshot_dir(dir, &resume_options)?,
        (None, Some(uri)) => {
            let (machine, stream_running) = qemu::incoming(uri, args.mem, &resume_options)?;
            if !stream_running && args.qmp.is_some() {
                start_running = false;
            } else if !stream_running {
                tracing::info!("the stream was saved paused; running it (no --qmp to wait on)");
            }
            machine
        }
        (None, None) => {
            let kernel = kernel_source(args.kernel, args.guest.as_deref())?;
            Machine::boot(&MachineConfig {
                kernel,
                initrd: args.initrd,
                cmdline: args.cmdline,
                mem_bytes: args.mem.map_or(DEFAULT_MEM_BYTES, |mem| mem.0),
                serial: args.serial,
                engine,
                devices: DeviceOptions {
                    snapshot_slot: args.snapshot_slot,
                    ..Default::default()
                },
            })?
        }
    };
    let seccomp = !args.no_seccomp;
    if seccomp {
        vmm::seccomp::prepare()?;
    }
    // Before the vCPU filter: the QMP threads run sockets and `exec:` commands.
    let mut qmp_link = match &args.qmp {
        Some(spec) => {
            let initial = if start_running {
                qmp::RunState::Running
            } else {
                qmp::RunState::Paused
            };
            let link = qmp::start(spec, machine.control(), initial)?;
            if spec.wait {
                link.wait_for_client();
            }
            Some(link)
        }
        None => None,
    };
    let termination = Termination::watch_filtered(machine.control(), seccomp);
    let _stdin = stdin::StdinForwarder::start(machine.serial_input(), seccomp).ok();
    let policy = RunPolicy {
        timeout,
        save_dir: args.save_snapshot,
        max_restores: args.max_restores,
    };
    // Set-up is over: from here on this thread (and the RAM capture threads it starts) may
    // make only the vCPU filter's system calls.
    if seccomp {
        vmm::seccomp::install(vmm::seccomp::ThreadKind::Vcpu)?;
    }
    let end = drive_with(&mut machine, &policy, &mut |machine| {
        qmp_link.as_mut().and_then(|link| link.serve(machine))
    });
    if let (Some(link), run::RunEnd::Quit) = (&qmp_link, &end) {
        link.wait_for_quit_reply();
    }
    if let Some(summary) = machine.stats().summary() {
        eprintln!("snapvmm: snapshots: {summary}");
    }
    let (status, message) = describe(&end, termination.signal());
    eprintln!("snapvmm: {message} (exit status {status})");
    Ok(status)
}

/// The kernel `--kernel` or `--guest` names; with neither, the built-in `hello` guest.
pub(crate) fn kernel_source(
    kernel: Option<PathBuf>,
    guest: Option<&str>,
) -> anyhow::Result<KernelSource> {
    Ok(match (kernel, guest) {
        (Some(path), _) => KernelSource::File(path),
        (None, None) => {
            eprintln!("snapvmm: no --kernel given: booting the built-in 'hello' guest");
            KernelSource::Builtin {
                name: "hello",
                image: guest_tools::HELLO_ELF,
            }
        }
        (None, Some(name)) => {
            let guest = guest_tools::BUILT_GUESTS
                .iter()
                .find(|g| g.name == name)
                .ok_or_else(|| {
                    anyhow::anyhow!("no built-in guest named '{name}' (see `snapvmm guests`)")
                })?;
            KernelSource::Builtin {
                name: guest.name,
                image: guest.image,
            }
        }
    })
}

fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let kernel = KernelSource::File(
        guest_tools::guest_path("snapshot-bench")
            .ok_or_else(|| anyhow::anyhow!("guest-tools has no snapshot-bench guest"))?,
    );
    let sizes: Vec<u64> = args.sizes.iter().map(|s| s.0).collect();
    let report = bench::run_matrix(&kernel, &sizes, &args.pages)?;
    println!("{report}");
    Ok(())
}
