//! `snapvmm fuzz --jobs N`, `--listen` and `--connect` end to end on real KVM: jobs share what
//! they find and stop together at the first crash; SIGTERM ends every job (status 0, files
//! written, no process left); two fuzzer processes linked over 127.0.0.1 (LLMP broker to broker)
//! pass an input that one cannot find by itself to the other.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use snapvmm_tests::runner::require_kvm;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("snapvmm-jobs-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// The queue (or crashes) entries of `dir`: (file name, bytes).
fn entries(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut found: Vec<(String, Vec<u8>)> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| {
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        fs::read(e.path()).unwrap_or_default(),
                    )
                })
                .filter(|(name, _)| name.starts_with("id:"))
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

fn stat(instance: &Path, key: &str) -> u64 {
    let stats = fs::read_to_string(instance.join("fuzzer_stats"))
        .unwrap_or_else(|e| panic!("{}/fuzzer_stats: {e}", instance.display()));
    stats
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            (name.trim() == key).then(|| value.trim().parse().ok())?
        })
        .unwrap_or_else(|| panic!("no {key} in fuzzer_stats:\n{stats}"))
}

fn spawn(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_snapvmm"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn snapvmm")
}

/// Waits for `child` for at most `budget` (killing it and failing past it); its status,
/// stdout and stderr.
fn finish(mut child: Child, budget: Duration, what: &str) -> (i32, String, String) {
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default());
    let err = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > budget {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} ran past {budget:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        status.code().unwrap_or(-1),
        out.join().expect("stdout reader"),
        err.join().expect("stderr reader"),
    )
}

/// The processes whose parent is `pid` (from /proc).
fn children_of(pid: u32) -> Vec<u32> {
    let mut children = Vec::new();
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return children;
    };
    for task in tasks.filter_map(Result::ok) {
        let list = fs::read_to_string(task.path().join("children")).unwrap_or_default();
        children.extend(
            list.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    children
}

/// Whether `pid` is still a snapvmm process.
fn is_snapvmm(pid: u32) -> bool {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|cmdline| String::from_utf8_lossy(&cmdline).contains("snapvmm"))
        .unwrap_or(false)
}

/// These tests run two jobs, one per core.
fn require_two_cores() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(
        cores >= 2,
        "these tests run `--jobs 2` (one job per core) and this machine has {cores} core(s)"
    );
}

/// A free TCP port on 127.0.0.1.
fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// Two jobs on fuzz-demo for 20 s: both queues grow, and each takes inputs from the other (files
/// named `sync:`, with the bytes of an entry the other found by mutation).
#[test]
fn two_jobs_share_what_they_find() {
    require_kvm();
    require_two_cores();
    let dir = temp_dir("share");
    let out = dir.join("out");
    let child = spawn(&[
        "fuzz",
        "--guest",
        "fuzz-demo",
        "--out",
        out.to_str().unwrap(),
        "--jobs",
        "2",
        "--max-time",
        "20",
        "--seed",
        "3",
    ]);
    let (status, _, stderr) = finish(child, Duration::from_secs(120), "fuzz --jobs 2");
    assert_eq!(status, 0, "stderr:\n{stderr}");
    assert!(stderr.contains("fuzzing ended: 2 jobs"), "{stderr}");
    let queues: Vec<Vec<(String, Vec<u8>)>> = ["job1", "job2"]
        .iter()
        .map(|job| entries(&out.join(job).join("queue")))
        .collect();
    for (n, queue) in queues.iter().enumerate() {
        assert!(
            queue.len() >= 2,
            "job{}'s queue did not grow: {queue:?}\n{stderr}",
            n + 1
        );
    }
    let mut shared = 0;
    for (this, other) in [(0, 1), (1, 0)] {
        let theirs: HashSet<&Vec<u8>> = queues[other]
            .iter()
            .filter(|(name, _)| name.contains(",op:"))
            .map(|(_, bytes)| bytes)
            .collect();
        shared += queues[this]
            .iter()
            .filter(|(name, bytes)| name.contains(",sync:") && theirs.contains(bytes))
            .count();
    }
    assert!(
        shared > 0,
        "no input found by one job reached the other's queue: {queues:?}"
    );
    for job in ["job1", "job2"] {
        assert!(stat(&out.join(job), "execs_done") > 0);
        assert!(
            stat(&out.join(job), "corpus_imported") > 0,
            "{job} took nothing"
        );
    }
    let _ = fs::remove_dir_all(&dir);
}

/// `--stop-on-crash` with two jobs on fuzz-magic (its crash falls to comparison feedback in
/// about a second): the job that saves it tells the other, both stop long before `--max-time`,
/// and the crash is printed with its repro line.
#[test]
fn the_first_crash_stops_every_job() {
    require_kvm();
    require_two_cores();
    let dir = temp_dir("stop");
    let out = dir.join("out");
    let started = Instant::now();
    let child = spawn(&[
        "fuzz",
        "--guest",
        "fuzz-magic",
        "--out",
        out.to_str().unwrap(),
        "--jobs",
        "2",
        "--stop-on-crash",
        "--max-time",
        "200",
        "--seed",
        "1",
    ]);
    let (status, stdout, stderr) = finish(child, Duration::from_secs(260), "fuzz --jobs 2");
    assert_eq!(status, 0, "stderr:\n{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(150),
        "the jobs ran to --max-time instead of stopping at the first crash:\n{stderr}"
    );
    let crashes: Vec<String> = ["job1", "job2"]
        .iter()
        .flat_map(|job| entries(&out.join(job).join("crashes")))
        .map(|(name, _)| name)
        .collect();
    assert!(
        crashes
            .iter()
            .any(|name| name.contains("kind:crash,code:14945,")),
        "no fuzz-magic crash: {crashes:?}\n{stderr}"
    );
    assert!(
        stdout.contains("crash: ") && stdout.contains("repro: "),
        "{stdout}"
    );
    let _ = fs::remove_dir_all(&dir);
}

/// SIGTERM to `snapvmm fuzz --jobs 2`: the broker stops, every job ends its run and writes its
/// files, the command ends with status 0 (as `snapvmm fuzz` alone), and no job is left running.
#[test]
fn sigterm_ends_every_job_with_status_0_and_leaves_no_process() {
    require_kvm();
    require_two_cores();
    let dir = temp_dir("sigterm");
    let out = dir.join("out");
    let child = spawn(&[
        "fuzz",
        "--guest",
        "fuzz-paths",
        "--out",
        out.to_str().unwrap(),
        "--jobs",
        "2",
    ]);
    let parent = child.id();
    // Both jobs up and fuzzing (their fuzzer_stats are written once a second).
    let started = Instant::now();
    while !["job1", "job2"]
        .iter()
        .all(|job| out.join(job).join("fuzzer_stats").exists())
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the jobs did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let jobs = children_of(parent);
    assert_eq!(jobs.len(), 2, "expected 2 job processes, found {jobs:?}");
    // SAFETY: sends SIGTERM to the child this test started.
    unsafe { libc::kill(parent as i32, libc::SIGTERM) };
    let (status, _, stderr) = finish(child, Duration::from_secs(15), "stopping on SIGTERM");
    assert_eq!(status, 0, "{stderr}");
    assert!(stderr.contains("fuzzing ended: 2 jobs"), "{stderr}");
    assert!(
        !stderr.contains("ended with status"),
        "a job failed:\n{stderr}"
    );
    for job in &jobs {
        assert!(!is_snapvmm(*job), "job process {job} outlived the campaign");
    }
    for job in ["job1", "job2"] {
        assert!(stat(&out.join(job), "execs_done") > 0, "{job}:\n{stderr}");
    }
    let _ = fs::remove_dir_all(&dir);
}

/// Ctrl-C at a terminal: SIGINT reaches the whole process group (the parent and every job at
/// once); every job ends its run and writes its files, status 0, no process left.
#[test]
fn ctrl_c_to_the_process_group_ends_every_job() {
    use std::os::unix::process::CommandExt;
    require_kvm();
    require_two_cores();
    let dir = temp_dir("ctrl-c");
    let out = dir.join("out");
    let child = Command::new(env!("CARGO_BIN_EXE_snapvmm"))
        .args([
            "fuzz",
            "--guest",
            "fuzz-demo",
            "--out",
            out.to_str().unwrap(),
            "--jobs",
            "2",
        ])
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn snapvmm");
    let parent = child.id();
    let started = Instant::now();
    while !["job1", "job2"]
        .iter()
        .all(|job| out.join(job).join("fuzzer_stats").exists())
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the jobs did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let jobs = children_of(parent);
    assert_eq!(jobs.len(), 2, "expected 2 job processes, found {jobs:?}");
    // SAFETY: sends SIGINT to the process group of the child this test started (its own group).
    unsafe { libc::kill(-(parent as i32), libc::SIGINT) };
    let (status, _, stderr) = finish(child, Duration::from_secs(15), "stopping on Ctrl-C");
    assert_eq!(status, 0, "{stderr}");
    assert!(stderr.contains("fuzzing ended: 2 jobs"), "{stderr}");
    assert!(
        !stderr.contains("ended with status"),
        "a job failed:\n{stderr}"
    );
    for job in &jobs {
        assert!(!is_snapvmm(*job), "job process {job} outlived the campaign");
    }
    for job in ["job1", "job2"] {
        assert!(stat(&out.join(job), "execs_done") > 0, "{job}:\n{stderr}");
    }
    let _ = fs::remove_dir_all(&dir);
}

/// Many machines, on one: process B listens, process A links to it (`--connect 127.0.0.1:PORT`).
/// A starts from a seed that passes fuzz-magic's first 8-byte magic value; B runs without
/// comparison feedback, so it cannot find that value by itself (one 64-bit comparison, 2^-64 by
/// chance). B's queue gains an input with the magic value, filed as synced.
#[test]
fn two_linked_fuzzers_pass_a_find_from_one_to_the_other() {
    require_kvm();
    const FIRST_MAGIC: u64 = 0x6b6f6f4c21796548;
    let dir = temp_dir("link");
    let port = free_port().to_string();
    let out_b = dir.join("b");
    let b = spawn(&[
        "fuzz",
        "--guest",
        "fuzz-magic",
        "--out",
        out_b.to_str().unwrap(),
        "--no-cmplog",
        "--listen",
        &port,
        "--max-time",
        "60",
    ]);
    // B is up once its job writes its statistics.
    let started = Instant::now();
    while !out_b.join("job1").join("fuzzer_stats").exists() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "B did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let seeds = dir.join("seeds");
    fs::create_dir_all(&seeds).expect("seed dir");
    let mut seed = FIRST_MAGIC.to_le_bytes().to_vec();
    seed.extend_from_slice(&[0; 8]);
    fs::write(seeds.join("first-magic"), &seed).expect("seed");
    let out_a = dir.join("a");
    let a = spawn(&[
        "fuzz",
        "--guest",
        "fuzz-magic",
        "--out",
        out_a.to_str().unwrap(),
        "--corpus",
        seeds.to_str().unwrap(),
        "--no-cmplog",
        "--connect",
        &format!("127.0.0.1:{port}"),
        "--max-time",
        "60",
    ]);
    let has_magic = |(name, bytes): &(String, Vec<u8>)| {
        name.contains(",sync:") && bytes.len() >= 8 && bytes[..8] == FIRST_MAGIC.to_le_bytes()
    };
    let started = Instant::now();
    let mut found = false;
    while started.elapsed() < Duration::from_secs(60) {
        if entries(&out_b.join("job1").join("queue"))
            .iter()
            .any(has_magic)
        {
            found = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    for child in [&a, &b] {
        // SAFETY: sends SIGTERM to a child this test started.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    }
    let (status_a, _, stderr_a) = finish(a, Duration::from_secs(20), "A");
    let (status_b, _, stderr_b) = finish(b, Duration::from_secs(20), "B");
    assert!(
        found,
        "B's queue never got A's input: {:?}\nA:\n{stderr_a}\nB:\n{stderr_b}",
        entries(&out_b.join("job1").join("queue"))
    );
    assert_eq!(status_a, 0, "A:\n{stderr_a}");
    assert_eq!(status_b, 0, "B:\n{stderr_b}");
    // And A's own queue has it as a seed (it came from A, not from B's own search).
    assert!(entries(&out_a.join("job1").join("queue"))
        .iter()
        .any(|(name, bytes)| name.contains("orig:first-magic") && bytes[..] == seed[..]));
    let _ = fs::remove_dir_all(&dir);
}

/// Bad `--jobs`, `--connect` and `--listen` values: one line, status 64, before the guest boots.
#[test]
fn bad_jobs_options_are_one_line_and_status_64() {
    require_kvm();
    let dir = temp_dir("bad");
    let out = dir.join("out");
    let out = out.to_str().unwrap();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let too_many = (cores + 1).to_string();
    for (args, says) in [
        (vec!["--jobs", "0"], "--jobs must be at least 1"),
        (
            vec!["--jobs", too_many.as_str()],
            "cores (one job per core)",
        ),
        (vec!["--connect", "no-port"], "is not a HOST:PORT address"),
        (
            vec!["--connect", "127.0.0.1:1"],
            "cannot link to the broker at 127.0.0.1:1",
        ),
        (
            vec!["--listen", "1", "--connect", "127.0.0.1:1"],
            "cannot be used with",
        ),
    ] {
        let mut all = vec!["fuzz", "--guest", "fuzz-demo", "--out", out];
        all.extend(&args);
        let child = spawn(&all);
        let (status, _, stderr) = finish(child, Duration::from_secs(60), "a bad option");
        assert_eq!(status, 64, "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert_eq!(
            stderr
                .lines()
                .filter(|l| l.starts_with("snapvmm: ") || l.starts_with("error"))
                .count(),
            1,
            "{args:?}: not one line:\n{stderr}"
        );
    }
    let _ = fs::remove_dir_all(&dir);
}
