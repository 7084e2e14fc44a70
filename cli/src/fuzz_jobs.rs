//! `snapvmm fuzz --jobs N` (and `--listen`, `--connect`): one guest boot, N fuzzing VMs.
//!
//! The guest boots once, here, to its SAVE; its snapshot (the machine state and its RAM in one
//! memfd) is kept and the VM dropped, since a KVM VM does not survive `fork`. LibAFL's launcher
//! then forks one job per core (`fuzz_harness::jobs`); each job resumes a VM from that snapshot
//! with its RAM a MAP_PRIVATE mapping of the memfd, so the clean pages exist once and each job
//! owns only what it writes, and fuzzes into `DIR/jobK` (AFL++'s layout, one instance directory
//! per job: `afl-whatsup DIR` reads them all). This process is the LLMP broker that passes
//! every job's new inputs to the others (and to and from another machine with `--connect` /
//! `--listen`), and draws one status line for all jobs.
//!
//! Ctrl-C/SIGTERM: the broker stops, LibAFL's launcher sends SIGINT to every job, each ends its
//! current run, writes its files and exits; this process waits for them all, prints the summary
//! and ends with status 0 (as `snapvmm fuzz` alone does). A job that fails ends with its own
//! status (printed on its own line); the campaign then ends with the first such status once
//! the others ended.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuzz_harness::jobs::{self, JobContext, JobsConfig};
use fuzz_harness::jobs_status::{job_dir_name, JobsStatus};
use fuzz_harness::{Fuzzer, StatusMode, StopReason, VmTarget};
use vmm::{ResumeOptions, SerialOutput};

use crate::fuzz::{
    campaign_failure, engine_options, one_line, print_findings, Failure, FuzzArgs, STATUS_CRASH,
};
use crate::termination::Termination;
use crate::STATUS_SETUP_ERROR;

/// `snapvmm fuzz --jobs N`: returns the exit status.
pub fn fuzz_jobs(args: FuzzArgs) -> Result<u8, Failure> {
    let jobs = args.jobs.unwrap_or(1);
    let base = args.fuzz_config()?;
    fs::create_dir_all(&args.out).map_err(|error| {
        Failure::setup(format!(
            "cannot create the output directory {}: {error}",
            args.out.display()
        ))
    })?;
    // Bad --jobs and --connect values fail before the guest boots.
    jobs::check_jobs(jobs).map_err(|error| Failure::setup(one_line(&error)))?;
    if let Some(addr) = &args.connect {
        jobs::resolve(addr).map_err(|error| Failure::setup(one_line(&error)))?;
    }
    let engine = engine_options(args.restore, args.verify_every);
    let (state, memory) = args
        .target
        .boot(SerialOutput::Discard, args.restore, args.verify_every)?
        .into_snapshot()
        .map_err(|error| Failure {
            status: STATUS_CRASH,
            message: one_line(&error),
        })?;

    let stop = Arc::new(AtomicBool::new(false));
    let _termination = Termination::watch_flag(stop.clone());
    let started = SystemTime::now();
    let mut status = JobsStatus::new(&args.out, jobs, StatusMode::Auto);
    let config = JobsConfig {
        jobs,
        port: args.listen.unwrap_or(0),
        connect: args.connect.clone(),
        stop,
        tick: Duration::from_secs(1),
    };
    let job = |context: JobContext| -> u8 {
        let number = context.job();
        let name = job_dir_name(number);
        let instance = args.out.join(&name);
        let serial = if args.serial_log {
            if let Err(error) = fs::create_dir_all(&instance) {
                eprintln!(
                    "snapvmm: {name}: cannot create {}: {error}",
                    instance.display()
                );
                return STATUS_SETUP_ERROR;
            }
            SerialOutput::File(instance.join("serial.log"))
        } else {
            SerialOutput::Discard
        };
        let options = ResumeOptions {
            serial,
            engine: engine.clone(),
        };
        let target = match memory
            .try_clone()
            .map_err(|error| error.to_string())
            .and_then(|memory| {
                VmTarget::resume(state.clone(), memory, &options).map_err(|e| one_line(&e))
            }) {
            Ok(target) => target,
            Err(message) => {
                eprintln!("snapvmm: {name}: {message}");
                return STATUS_CRASH;
            }
        };
        let mut config = base.clone();
        config.instance_name = name.clone();
        config.status = StatusMode::Off;
        // Different jobs, different random streams (`--seed N`: job K uses N + K).
        config.seed = config.seed.map(|seed| seed.wrapping_add(number as u64));
        let fuzzer = match Fuzzer::new(config, target) {
            Ok(fuzzer) => fuzzer,
            Err(error) => {
                eprintln!("snapvmm: {name}: {}", one_line(&error));
                return STATUS_SETUP_ERROR;
            }
        };
        // SIGINT (from the launcher or a terminal) and SIGTERM stop this job after its run.
        let _termination = Termination::watch_flag(fuzzer.stop_flag());
        match context.run(fuzzer) {
            Ok(summary) => {
                // The jobs print no status; the seed and resume warnings (the same in every
                // job) come once, from job 1.
                if number == 1 {
                    for warning in &summary.warnings {
                        eprintln!("snapvmm: {name}: {warning}");
                    }
                }
                0
            }
            Err(error) => {
                let failure = campaign_failure(error);
                eprintln!("snapvmm: {name}: {}", failure.message);
                failure.status
            }
        }
    };
    let outcome = jobs::launch(&config, job, || status.update())
        .map_err(|error| Failure::setup(one_line(&error)))?;
    eprint!("{}", status.summary(&outcome.statuses));

    let crash_files = new_files(&args.out, jobs, "crashes", started);
    let stop_reason = if args.stop_on_crash && !crash_files.is_empty() {
        StopReason::FirstCrash
    } else {
        StopReason::StopFlag
    };
    print_findings(&crash_files, stop_reason, &args.out, &args.target);
    let failed = outcome.statuses.iter().find_map(|status| match status {
        Some(0) => None,
        Some(status) => Some(*status),
        None => Some(STATUS_CRASH),
    });
    Ok(failed.unwrap_or(0))
}

/// Files of `DIR/jobK/<kind>` written since `since`, in name order per job.
fn new_files(out: &Path, jobs: usize, kind: &str, since: SystemTime) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for job in 1..=jobs {
        let dir = out.join(job_dir_name(job)).join(kind);
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .filter(|entry| entry.file_name().to_string_lossy().starts_with("id:"))
            .filter(|entry| {
                entry
                    .metadata()
                    .and_then(|meta| meta.modified())
                    .is_ok_and(|modified| modified >= since)
            })
            .map(|entry| entry.path())
            .collect();
        files.sort();
        found.extend(files);
    }
    found
}
