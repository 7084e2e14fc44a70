//! The engine end to end over in-process targets: finding a planted bug, crash and hang files
//! with AFL++'s names, statistics, resume, deduplication, plots, bad input.

mod common;

use std::fs;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{afl_files, scratch_dir, stat, FailingTarget, OutcomeTarget, ParserTarget};
use fuzz_harness::{DedupMode, FuzzConfig, FuzzError, Fuzzer, StatusMode, StopReason};

fn config(out: &std::path::Path) -> FuzzConfig {
    let mut config = FuzzConfig::new(out);
    config.status = StatusMode::Plain;
    config.seed = Some(0x5eed);
    config.command_line = vec!["snapvmm".into(), "fuzz".into(), "--test".into()];
    config
}

#[test]
fn finds_the_planted_bug_within_a_bounded_number_of_executions() {
    let out = scratch_dir("planted");
    let mut config = config(&out);
    config.stop_on_crash = true;
    config.max_execs = Some(8_000_000);
    let summary = Fuzzer::new(config, ParserTarget::new())
        .unwrap()
        .run()
        .unwrap();
    assert_eq!(summary.stop_reason, StopReason::FirstCrash, "{summary}");
    assert_eq!(summary.saved_crashes, 1);
    let crash = summary.crash_files.first().unwrap();
    let name = crash.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with("id:000000,sig:06,src:"),
        "AFL++-style crash name: {name}"
    );
    assert!(name.ends_with(",kind:crash,code:7,pc:0x401000"), "{name}");
    assert_eq!(crash.parent().unwrap(), out.join("default/crashes"));
    let input = fs::read(crash).unwrap();
    assert!(ParserTarget::crashes(&input), "the crash file replays");
    // The queue holds the default seed and what the fuzzer found on the way.
    let queue = afl_files(&out.join("default/queue"));
    assert!(queue[0].starts_with("id:000000,time:0,execs:"), "{queue:?}");
    assert!(queue[0].ends_with(",orig:default"), "{queue:?}");
    assert!(
        queue
            .iter()
            .skip(1)
            .all(|n| n.contains(",src:") && n.contains(",op:havoc,rep:")),
        "{queue:?}"
    );
    assert!(queue.iter().any(|n| n.ends_with(",+cov")), "{queue:?}");
    println!(
        "planted bug found after {} executions",
        summary.session_execs
    );
}

#[test]
fn every_outcome_kind_is_filed_and_fuzzing_goes_on() {
    let out = scratch_dir("outcomes");
    let mut config = config(&out);
    config.max_execs = Some(150_000);
    let summary = Fuzzer::new(config, OutcomeTarget::new())
        .unwrap()
        .run()
        .unwrap();
    assert_eq!(summary.stop_reason, StopReason::MaxExecs);
    assert_eq!(summary.session_execs, 150_000, "kept running after crashes");
    let crashes = afl_files(&out.join("default/crashes"));
    let has = |needle: &str| crashes.iter().any(|n| n.contains(needle));
    assert!(has(",sig:06,") && has("kind:crash,code:"), "{crashes:?}");
    assert!(
        has(",sig:11,") && has("kind:exception,code:14,pc:0x3000"),
        "{crashes:?}"
    );
    assert!(has("kind:exception,code:13,pc:0x3100"), "{crashes:?}");
    assert!(has("kind:triplefault,code:0,pc:0x4000"), "{crashes:?}");
    assert!(
        has(",sig:04,") && has("kind:emulation,code:0,pc:0x5000"),
        "{crashes:?}"
    );
    // Deduplicated by kind + code + pc: at most 3 CRASH codes + #PF + #GP + triple + emulation.
    assert!(crashes.len() <= 7, "{crashes:?}");
    assert_eq!(summary.saved_crashes as usize, crashes.len());
    assert!(
        summary.crashing_runs > summary.saved_crashes * 10,
        "{summary}"
    );
    for (i, name) in crashes.iter().enumerate() {
        assert!(
            name.starts_with(&format!("id:{i:06},sig:")),
            "ids in order: {crashes:?}"
        );
    }
    let hangs = afl_files(&out.join("default/hangs"));
    assert!(!hangs.is_empty());
    assert!(hangs[0].starts_with("id:000000,src:"), "{hangs:?}");
    assert!(fs::read(out.join("default/hangs").join(&hangs[0])).unwrap()[0] == b'H');
    assert!(out.join("default/crashes/README.txt").is_file());
    assert_eq!(
        fs::read_to_string(out.join("default/cmdline")).unwrap(),
        "snapvmm\nfuzz\n--test\n"
    );
    assert!(fs::read_to_string(out.join("default/fuzzer_setup"))
        .unwrap()
        .contains("# command line:\n'snapvmm' 'fuzz' '--test'\n"));
}

#[test]
fn fuzzer_stats_and_plot_data_have_afl_keys_and_sane_values() {
    let out = scratch_dir("stats");
    let mut config = config(&out);
    config.max_time = Some(Duration::from_millis(3500));
    let summary = Fuzzer::new(config, ParserTarget::new())
        .unwrap()
        .run()
        .unwrap();
    assert_eq!(summary.stop_reason, StopReason::MaxTime);
    let stats = fs::read_to_string(out.join("default/fuzzer_stats")).unwrap();
    let keys: Vec<&str> = stats
        .lines()
        .map(|l| l.split(':').next().unwrap().trim())
        .collect();
    let afl_keys = [
        "start_time",
        "last_update",
        "run_time",
        "fuzzer_pid",
        "cycles_done",
        "cycles_wo_finds",
        "execs_done",
        "execs_per_sec",
        "execs_ps_last_min",
        "corpus_count",
        "corpus_favored",
        "corpus_found",
        "corpus_imported",
        "corpus_variable",
        "max_depth",
        "cur_item",
        "pending_favs",
        "pending_total",
        "stability",
        "bitmap_cvg",
        "saved_crashes",
        "saved_hangs",
        "last_find",
        "last_crash",
        "last_hang",
        "execs_since_crash",
        "exec_timeout",
        "slowest_exec_ms",
        "peak_rss_mb",
        "cpu_affinity",
        "edges_found",
        "total_edges",
        "var_byte_count",
        "havoc_expansion",
        "auto_dict_entries",
        "testcache_size",
        "testcache_count",
        "testcache_evict",
        "afl_banner",
        "afl_version",
        "target_mode",
        "command_line",
    ];
    assert_eq!(keys, afl_keys);
    let num = |key: &str| -> f64 {
        stat(&stats, key)
            .unwrap()
            .trim_end_matches('%')
            .parse()
            .unwrap()
    };
    let execs = num("execs_done");
    let eps = num("execs_per_sec");
    let run_time = num("run_time");
    assert_eq!(execs, summary.total_execs as f64);
    assert!(execs > 1000.0);
    assert!(eps < execs, "execs_per_sec is a rate, not the total");
    // The rate is execs over this session's time (3.5 s, give or take the last report).
    let expected = execs / 3.5;
    assert!(
        eps > expected * 0.7 && eps < expected * 1.5,
        "{eps} vs {expected}"
    );
    assert!((3.0..=5.0).contains(&run_time), "{run_time}");
    assert_eq!(num("exec_timeout"), 1000.0);
    assert_eq!(num("corpus_count"), summary.corpus_count as f64);
    assert!(num("corpus_favored") >= 1.0 && num("corpus_favored") <= num("corpus_count"));
    assert!(num("edges_found") > 3.0);
    assert_eq!(num("total_edges"), 65536.0);
    assert!(num("last_find") > 1.6e9, "unix time, as AFL++ writes it");
    assert_eq!(num("fuzzer_pid"), f64::from(std::process::id()));

    let plot = fs::read_to_string(out.join("default/plot_data")).unwrap();
    let mut lines = plot.lines();
    assert_eq!(
        lines.next().unwrap(),
        "# relative_time, cycles_done, cur_item, corpus_count, pending_total, pending_favs, map_size, saved_crashes, saved_hangs, max_depth, execs_per_sec, total_execs, edges_found"
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(", ").collect()).collect();
    assert!(rows.len() >= 3, "one line a second: {plot}");
    for row in &rows {
        assert_eq!(row.len(), 13, "{row:?}");
        assert!(row[6].ends_with('%'));
    }
    let total_execs: Vec<u64> = rows.iter().map(|r| r[11].parse().unwrap()).collect();
    assert!(total_execs.windows(2).all(|w| w[0] <= w[1]));
    let last_rate: f64 = rows[rows.len() - 2][10].parse().unwrap();
    assert!(last_rate > 0.0 && last_rate < *total_execs.last().unwrap() as f64);
}

#[test]
fn resuming_continues_the_queue_and_the_ids() {
    let out = scratch_dir("resume");
    let mut first = config(&out);
    first.max_execs = Some(40_000);
    let first_summary = Fuzzer::new(first, OutcomeTarget::new())
        .unwrap()
        .run()
        .unwrap();
    let queue_before = afl_files(&out.join("default/queue"));
    let crashes_before = afl_files(&out.join("default/crashes"));
    assert!(!crashes_before.is_empty());

    let mut second = config(&out);
    second.max_execs = Some(60_000);
    second.seed = Some(99);
    let fuzzer = Fuzzer::new(second, OutcomeTarget::new()).unwrap();
    assert!(fuzzer.is_resume());
    let summary = fuzzer.run().unwrap();
    let queue_after = afl_files(&out.join("default/queue"));
    let crashes_after = afl_files(&out.join("default/crashes"));
    for name in &queue_before {
        assert!(queue_after.contains(name), "{name} kept");
    }
    for name in &crashes_before {
        assert!(crashes_after.contains(name), "{name} kept");
    }
    // New crashes (if any) continue the ids; none repeats a known kind + code + pc.
    let ids: Vec<u32> = crashes_after
        .iter()
        .map(|n| n[3..9].parse().unwrap())
        .collect();
    assert_eq!(ids, (0..ids.len() as u32).collect::<Vec<_>>());
    let keys: std::collections::HashSet<&str> = crashes_after
        .iter()
        .map(|n| &n[n.find(",kind:").unwrap()..])
        .collect();
    assert_eq!(
        keys.len(),
        crashes_after.len(),
        "no duplicate crash after resume"
    );
    // Queue ids continue after the resumed ones.
    let new_queue: Vec<&String> = queue_after
        .iter()
        .filter(|n| !queue_before.contains(n))
        .collect();
    let max_before: u32 = queue_before
        .iter()
        .map(|n| n[3..9].parse::<u32>().unwrap())
        .max()
        .unwrap();
    for name in new_queue {
        assert!(name[3..9].parse::<u32>().unwrap() > max_before, "{name}");
    }
    // The statistics carry on.
    let stats = fs::read_to_string(out.join("default/fuzzer_stats")).unwrap();
    let execs: u64 = stat(&stats, "execs_done").unwrap().parse().unwrap();
    assert_eq!(execs, summary.total_execs);
    assert!(execs >= first_summary.total_execs + 60_000);
    assert_eq!(summary.saved_crashes as usize, crashes_after.len());
    // Hangs are unique by coverage; the hang history survives the resume.
    assert_eq!(afl_files(&out.join("default/hangs")).len(), 1);
}

#[test]
fn coverage_dedup_survives_a_resume() {
    let out = scratch_dir("resume-cov");
    let run = |execs: u64, seed: u64| {
        let mut config = config(&out);
        config.dedup = DedupMode::Coverage;
        config.max_execs = Some(execs);
        config.seed = Some(seed);
        let mut target = OutcomeTarget::new();
        target.same_crash_everywhere = true;
        Fuzzer::new(config, target).unwrap().run().unwrap();
        afl_files(&out.join("default/crashes"))
    };
    let first = run(80_000, 1);
    assert!(first.len() > 1);
    let second = run(80_000, 2);
    // At most one file per crash coverage (8 of them), however many sessions.
    assert!(second.len() <= 8, "{second:?}");
    assert!(second.len() >= first.len());
}

#[test]
fn crashes_deduplicate_by_kind_code_pc_or_by_coverage() {
    let run = |dedup: DedupMode, name: &str| {
        let out = scratch_dir(name);
        let mut config = config(&out);
        config.dedup = dedup;
        config.max_execs = Some(60_000);
        let mut target = OutcomeTarget::new();
        target.same_crash_everywhere = true;
        let summary = Fuzzer::new(config, target).unwrap().run().unwrap();
        (summary, afl_files(&out.join("default/crashes")))
    };
    let (by_key, files) = run(DedupMode::KindCodePc, "dedup-key");
    assert_eq!(files.len(), 1, "one kind + code + pc, one file: {files:?}");
    assert!(by_key.crashing_runs > 10);
    let (by_coverage, files) = run(DedupMode::Coverage, "dedup-cov");
    assert!(
        files.len() > 1 && files.len() <= 8,
        "one file per new crash coverage: {files:?}"
    );
    assert_eq!(by_coverage.saved_crashes as usize, files.len());
}

#[test]
fn plot_writes_a_png_with_three_charts() {
    let out = scratch_dir("plot");
    let mut config = config(&out);
    config.max_time = Some(Duration::from_millis(3200));
    Fuzzer::new(config, ParserTarget::new())
        .unwrap()
        .run()
        .unwrap();
    let png_path = out.join("progress.png");
    let rows = fuzz_harness::plot(&out, &png_path).unwrap();
    assert!(rows >= 3);
    let decoder = png::Decoder::new(fs::File::open(&png_path).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut pixels).unwrap();
    assert_eq!((info.width, info.height), (1200, 960));
    let bytes_per_pixel = info.line_size / info.width as usize;
    let pixels = &pixels[..info.buffer_size()];
    let mut colours = std::collections::HashSet::new();
    let mut not_white = 0usize;
    for px in pixels.chunks(bytes_per_pixel) {
        colours.insert(px.to_vec());
        if px.iter().take(3).any(|&c| c < 200) {
            not_white += 1;
        }
    }
    assert!(
        colours.len() > 10,
        "lines, text and axes in several colours"
    );
    let total = (info.width * info.height) as usize;
    assert!(
        not_white * 100 > total,
        "more than 1% drawn: {not_white}/{total}"
    );
    assert!(matches!(
        fuzz_harness::plot(&scratch_dir("plot-empty"), &png_path),
        Err(fuzz_harness::PlotError::NoPlotData { .. })
    ));
}

#[test]
fn the_stop_flag_stops_the_campaign() {
    let out = scratch_dir("stopflag");
    let config = config(&out);
    let fuzzer = Fuzzer::new(config, ParserTarget::new()).unwrap();
    let flag = fuzzer.stop_flag();
    let setter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(700));
        flag.store(true, Ordering::Relaxed);
    });
    let summary = fuzzer.run().unwrap();
    setter.join().unwrap();
    assert_eq!(summary.stop_reason, StopReason::StopFlag);
    assert!(summary.session_time < Duration::from_secs(3));
    assert!(out.join("default/fuzzer_stats").is_file());
}

#[test]
fn seeds_are_read_and_truncated_with_a_warning() {
    let out = scratch_dir("seeds-out");
    let seeds = scratch_dir("seeds-in");
    fs::write(seeds.join("small"), b"Axyz").unwrap();
    fs::write(seeds.join("big"), vec![b'A'; 500]).unwrap();
    let mut config = config(&out);
    config.corpus_dirs = vec![seeds.clone()];
    config.max_execs = Some(2_000);
    let summary = Fuzzer::new(config, OutcomeTarget::new())
        .unwrap()
        .run()
        .unwrap();
    assert!(
        summary
            .warnings
            .iter()
            .any(|w| w.contains("truncated to the target's 64")),
        "{:?}",
        summary.warnings
    );
    let queue = afl_files(&out.join("default/queue"));
    assert!(queue.iter().any(|n| n.ends_with(",orig:big")), "{queue:?}");
    assert!(
        queue.iter().any(|n| n.ends_with(",orig:small")),
        "{queue:?}"
    );
    let big = queue.iter().find(|n| n.ends_with(",orig:big")).unwrap();
    assert_eq!(
        fs::read(out.join("default/queue").join(big)).unwrap().len(),
        64
    );
}

#[test]
fn bad_input_is_a_one_line_typed_error() {
    // An output directory that cannot be created (a file is in the way).
    let base = scratch_dir("bad");
    let blocker = base.join("file");
    fs::write(&blocker, b"x").unwrap();
    let err = Fuzzer::new(config(&blocker.join("out")), ParserTarget::new())
        .err()
        .unwrap();
    assert!(matches!(err, FuzzError::Output(_)), "{err}");
    assert!(err.to_string().contains("cannot be written"), "{err}");

    // An unparsable dictionary names its line.
    let dict = base.join("bad.dict");
    fs::write(&dict, "\"GIF89a\"\nnot a token\n").unwrap();
    let mut with_dict = config(&base.join("out1"));
    with_dict.dict = Some(dict);
    let err = Fuzzer::new(with_dict, ParserTarget::new()).err().unwrap();
    assert!(matches!(err, FuzzError::Dict(_)));
    assert!(err.to_string().contains("line 2"), "{err}");
    assert!(!err.to_string().contains('\n'));

    // A missing corpus directory.
    let mut with_corpus = config(&base.join("out2"));
    with_corpus.corpus_dirs = vec![base.join("missing")];
    let err = Fuzzer::new(with_corpus, ParserTarget::new()).err().unwrap();
    assert!(matches!(err, FuzzError::Seeds(_)), "{err}");

    // An instance name that is no directory name.
    let mut named = config(&base.join("out7"));
    named.instance_name = "../x".into();
    assert!(matches!(
        Fuzzer::new(named, ParserTarget::new()).err().unwrap(),
        FuzzError::BadInstanceName(_)
    ));

    // A zero timeout.
    let mut zero = config(&base.join("out3"));
    zero.timeout = Duration::ZERO;
    assert!(matches!(
        Fuzzer::new(zero, ParserTarget::new()).err().unwrap(),
        FuzzError::BadTimeout
    ));

    // Seeds that all crash leave nothing to fuzz from; the crashes are kept.
    let seeds = base.join("crashing-seeds");
    fs::create_dir_all(&seeds).unwrap();
    fs::write(seeds.join("a"), b"E").unwrap();
    fs::write(seeds.join("b"), b"T").unwrap();
    let mut crashing = config(&base.join("out5"));
    crashing.corpus_dirs = vec![seeds];
    let err = Fuzzer::new(crashing, OutcomeTarget::new())
        .unwrap()
        .run()
        .err()
        .unwrap();
    assert!(matches!(err, FuzzError::NoUsableSeed { .. }), "{err}");
    let crashes = afl_files(&base.join("out5/default/crashes"));
    assert_eq!(crashes.len(), 2, "{crashes:?}");
    assert!(crashes[0].contains(",time:") && crashes[0].contains(",orig:a,kind:exception"));

    // A target that writes no coverage.
    let mut silent = FailingTarget::new(u64::MAX);
    silent.no_coverage = true;
    let mut bounded = config(&base.join("out6"));
    bounded.max_execs = Some(10_000);
    let err = Fuzzer::new(bounded, silent).unwrap().run().err().unwrap();
    assert!(matches!(err, FuzzError::NoCoverage), "{err}");

    // A VMM failure stops fuzzing with the target's error; it is not a crash.
    let out = base.join("out4");
    let err = Fuzzer::new(config(&out), FailingTarget::new(500))
        .unwrap()
        .run()
        .err()
        .unwrap();
    assert!(matches!(err, FuzzError::Target(_)), "{err}");
    let source = std::error::Error::source(&err).unwrap().to_string();
    assert_eq!(source, "KVM_RUN failed: Bad address (os error 14)");
    assert!(afl_files(&out.join("default/crashes")).is_empty());
}

/// Crashes only on an 8-byte magic compared at once (no partial coverage to climb).
struct MagicTarget {
    edges: common::Edges,
}

impl fuzz_harness::FuzzTarget for MagicTarget {
    type Error = std::convert::Infallible;

    fn max_input_len(&self) -> usize {
        64
    }

    fn run(
        &mut self,
        input: &[u8],
        _timeout: Duration,
    ) -> Result<fuzz_harness::RunOutcome, Self::Error> {
        self.edges.start_run();
        self.edges.hit(1);
        if input.starts_with(b"SNAPVMM!") {
            self.edges.hit(2);
            return Ok(fuzz_harness::RunOutcome::Crash(fuzz_harness::CrashInfo {
                kind: fuzz_harness::CrashKind::Reported { code: 8 },
                pc: 0,
            }));
        }
        self.edges.hit(3);
        Ok(fuzz_harness::RunOutcome::Normal { code: 0 })
    }

    fn coverage_map(&mut self) -> &mut [u8] {
        self.edges.map_mut()
    }
}

#[test]
fn the_dictionary_solves_a_magic_value() {
    let base = scratch_dir("dict");
    let dict = base.join("snap.dict");
    fs::write(&dict, "# the magic\nmagic=\"SNAPVMM!\"\n").unwrap();
    let run = |with_dict: bool, out: &str| {
        let mut config = config(&base.join(out));
        config.dict = with_dict.then(|| dict.clone());
        config.stop_on_crash = true;
        config.max_execs = Some(200_000);
        let target = MagicTarget {
            edges: common::Edges::new(),
        };
        Fuzzer::new(config, target).unwrap().run().unwrap()
    };
    let with = run(true, "with");
    assert_eq!(with.stop_reason, StopReason::FirstCrash, "{with}");
    println!(
        "with the dictionary: found after {} executions",
        with.session_execs
    );
    let without = run(false, "without");
    assert_eq!(
        without.stop_reason,
        StopReason::MaxExecs,
        "an 8-byte magic by chance?"
    );
}

#[test]
fn a_saved_crash_replays_with_its_verdict() {
    let out = scratch_dir("replay");
    let mut config = config(&out);
    config.max_execs = Some(30_000);
    let summary = Fuzzer::new(config, OutcomeTarget::new())
        .unwrap()
        .run()
        .unwrap();
    let exception = summary
        .crash_files
        .iter()
        .find(|p| p.to_string_lossy().contains("kind:exception,code:14"))
        .unwrap();
    let mut target = OutcomeTarget::new();
    for _ in 0..100 {
        let replay =
            fuzz_harness::replay(&mut target, exception, Duration::from_millis(1000)).unwrap();
        assert_eq!(
            replay.to_string(),
            "crash: CPU exception #PF (vector 14) at pc 0x3000"
        );
    }
    let hang = out
        .join("default/hangs")
        .join(&afl_files(&out.join("default/hangs"))[0]);
    let replay = fuzz_harness::replay(&mut target, &hang, Duration::from_millis(250)).unwrap();
    assert_eq!(replay.to_string(), "hang: no end within 250 ms");
    let missing = fuzz_harness::replay(&mut target, &out.join("nope"), Duration::from_secs(1));
    assert!(matches!(
        missing,
        Err(fuzz_harness::ReproError::Read { .. })
    ));
}
