//! AFL++'s `fuzzer_stats` and `plot_data`, written by hand: LibAFL 0.16's `AflStatsStage` writes
//! wrong figures (execs_per_sec = total executions, an inverted favored count, zero times) and
//! does not create its directory, and it runs only between corpus entries, not every second.
//!
//! Keys and columns are AFL++ 4.04c's (Debian 12's afl++, whose afl-whatsup and afl-plot read
//! them): `fuzzer_stats` is `key<padding>: value` lines that afl-whatsup sources as shell
//! variables, `plot_data` a `# relative_time, ...` header and one comma-separated line per update.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use libafl::corpus::{Corpus, SchedulerTestcaseMetadata};
use libafl::feedbacks::MapFeedbackMetadata;
use libafl::schedulers::minimizer::IsFavoredMetadata;
use libafl::schedulers::powersched::SchedulerMetadata;
use libafl::stages::calibrate::UnstableEntriesMetadata;
use libafl::state::HasCorpus;
use libafl::{HasMetadata, HasNamedMetadata};

use crate::campaign::{unix_now, Campaign};
use crate::names;
use crate::output::{self, OutputError};

/// AFL++'s plot_data header (4.04c).
pub const PLOT_HEADER: &str = "# relative_time, cycles_done, cur_item, corpus_count, pending_total, pending_favs, map_size, saved_crashes, saved_hangs, max_depth, execs_per_sec, total_execs, edges_found";

/// Version string written as `afl_version`.
const VERSION: &str = concat!("snapvmm-", env!("CARGO_PKG_VERSION"));

/// The figures of one moment of a campaign.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatsSnapshot {
    pub run_time: Duration,
    pub session_time: Duration,
    pub total_execs: u64,
    pub session_execs: u64,
    /// Average over this session.
    pub execs_per_sec: f64,
    /// Over the last minute (or less at the start).
    pub execs_ps_last_min: f64,
    /// Over the last report interval: what the status line and plot_data show.
    pub execs_per_sec_now: f64,
    pub cycles_done: u64,
    pub cycles_wo_finds: u64,
    pub corpus_count: u64,
    pub corpus_favored: u64,
    pub corpus_found: u64,
    /// Queue entries taken from other fuzzers (LLMP).
    pub corpus_imported: u64,
    pub max_depth: u64,
    pub cur_item: u64,
    pub pending_favs: u64,
    pub pending_total: u64,
    pub stability: f64,
    pub bitmap_cvg: f64,
    pub saved_crashes: u64,
    pub saved_hangs: u64,
    pub total_crashes: u64,
    pub total_hangs: u64,
    pub last_find: u64,
    pub last_crash: u64,
    pub last_hang: u64,
    pub execs_since_crash: u64,
    pub slowest_exec_ms: u64,
    pub peak_rss_mb: u64,
    pub edges_found: u64,
    pub total_edges: u64,
    pub var_byte_count: u64,
    pub restores: u64,
}

/// Reads the campaign's figures from LibAFL's state and the campaign's own counters.
pub fn snapshot<S>(
    state: &S,
    campaign: &Campaign,
    edges_name: &str,
    map_len: usize,
) -> StatsSnapshot
where
    S: HasCorpus<libafl::inputs::BytesInput> + HasMetadata + HasNamedMetadata,
{
    let corpus = state.corpus();
    let mut favored = 0;
    let mut pending_total = 0;
    let mut pending_favs = 0;
    let mut max_depth = 0;
    for id in corpus.ids() {
        let Ok(cell) = corpus.get(id) else { continue };
        let Ok(testcase) = cell.try_borrow() else {
            continue;
        };
        let is_favored = testcase.has_metadata::<IsFavoredMetadata>();
        let pending = testcase.scheduled_count() == 0;
        favored += u64::from(is_favored);
        pending_total += u64::from(pending);
        pending_favs += u64::from(pending && is_favored);
        if let Ok(meta) = testcase.metadata::<SchedulerTestcaseMetadata>() {
            max_depth = max_depth.max(meta.depth());
        }
    }
    let cur_item = corpus
        .current()
        .and_then(|id| corpus.get(id).ok())
        .and_then(|cell| {
            cell.try_borrow()
                .ok()
                .and_then(|tc| tc.filename().as_deref().and_then(names::parse_id))
        })
        .map_or(0, u64::from);
    let edges_found = state
        .named_metadata::<MapFeedbackMetadata<u8>>(edges_name)
        .map_or(0, |meta| meta.num_covered_map_indexes as u64);
    let var_byte_count = state
        .metadata::<UnstableEntriesMetadata>()
        .map_or(0, |meta| meta.unstable_entries().len() as u64);
    let cycles_done = state
        .metadata::<SchedulerMetadata>()
        .map_or(0, SchedulerMetadata::queue_cycles);
    let session_time = campaign.started.elapsed();
    let total_execs = campaign.total_execs();
    StatsSnapshot {
        run_time: campaign.run_time(),
        session_time,
        total_execs,
        session_execs: campaign.session_execs,
        execs_per_sec: rate(campaign.session_execs, session_time),
        execs_ps_last_min: 0.0,
        execs_per_sec_now: 0.0,
        cycles_done,
        cycles_wo_finds: 0,
        corpus_count: corpus.count() as u64,
        corpus_favored: favored,
        corpus_found: u64::from(campaign.corpus_found),
        corpus_imported: u64::from(campaign.corpus_imported),
        max_depth,
        cur_item,
        pending_favs,
        pending_total,
        stability: if edges_found == 0 {
            100.0
        } else {
            100.0 - (var_byte_count.min(edges_found) as f64 * 100.0 / edges_found as f64)
        },
        bitmap_cvg: if map_len == 0 {
            0.0
        } else {
            edges_found as f64 * 100.0 / map_len as f64
        },
        saved_crashes: campaign.saved_crashes,
        saved_hangs: campaign.saved_hangs,
        total_crashes: campaign.total_crashes,
        total_hangs: campaign.total_hangs,
        last_find: campaign.last_find_unix,
        last_crash: campaign.last_crash_unix,
        last_hang: campaign.last_hang_unix,
        execs_since_crash: total_execs.saturating_sub(campaign.last_crash_execs),
        slowest_exec_ms: u64::try_from(campaign.slowest_exec.as_millis()).unwrap_or(u64::MAX),
        peak_rss_mb: peak_rss_mb(),
        edges_found,
        total_edges: map_len as u64,
        var_byte_count,
        restores: 0,
    }
}

/// Executions per second.
pub fn rate(execs: u64, over: Duration) -> f64 {
    let secs = over.as_secs_f64();
    if secs <= 0.0 {
        0.0
    } else {
        execs as f64 / secs
    }
}

/// Peak resident memory of this process, in MiB.
fn peak_rss_mb() -> u64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a rusage into the pointer we pass, which points to enough
    // zero-initialised memory for one.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    if rc != 0 {
        return 0;
    }
    // SAFETY: getrusage succeeded, so it filled the struct (and it was zeroed before anyway).
    let usage = unsafe { usage.assume_init() };
    u64::try_from(usage.ru_maxrss).unwrap_or(0) / 1024
}

/// Keeps `value` safe for afl-whatsup, which sources `fuzzer_stats` as `key="value"`.
fn shell_safe(value: &str) -> String {
    value
        .chars()
        .filter(|c| !matches!(c, '"' | '$' | '`' | '\\' | '\n' | '\r'))
        .collect()
}

/// What `fuzzer_stats` says besides the figures.
#[derive(Debug, Clone)]
pub struct StatsContext {
    pub banner: String,
    pub command_line: String,
    pub exec_timeout_ms: u64,
}

/// The text of `fuzzer_stats` (AFL++ 4.04c's keys, in its order).
pub fn fuzzer_stats_text(
    snapshot: &StatsSnapshot,
    context: &StatsContext,
    start_unix: u64,
) -> String {
    let s = snapshot;
    let mut out = String::new();
    let mut line = |key: &str, value: String| {
        let _ = writeln!(out, "{key:<18}: {value}");
    };
    line("start_time", start_unix.to_string());
    line("last_update", unix_now().to_string());
    line("run_time", s.run_time.as_secs().to_string());
    line("fuzzer_pid", std::process::id().to_string());
    line("cycles_done", s.cycles_done.to_string());
    line("cycles_wo_finds", s.cycles_wo_finds.to_string());
    line("execs_done", s.total_execs.to_string());
    line("execs_per_sec", format!("{:.2}", s.execs_per_sec));
    line("execs_ps_last_min", format!("{:.2}", s.execs_ps_last_min));
    line("corpus_count", s.corpus_count.to_string());
    line("corpus_favored", s.corpus_favored.to_string());
    line("corpus_found", s.corpus_found.to_string());
    line("corpus_imported", s.corpus_imported.to_string());
    line("corpus_variable", "0".to_string());
    line("max_depth", s.max_depth.to_string());
    line("cur_item", s.cur_item.to_string());
    line("pending_favs", s.pending_favs.to_string());
    line("pending_total", s.pending_total.to_string());
    line("stability", format!("{:.2}%", s.stability));
    line("bitmap_cvg", format!("{:.2}%", s.bitmap_cvg));
    line("saved_crashes", s.saved_crashes.to_string());
    line("saved_hangs", s.saved_hangs.to_string());
    line("last_find", s.last_find.to_string());
    line("last_crash", s.last_crash.to_string());
    line("last_hang", s.last_hang.to_string());
    line("execs_since_crash", s.execs_since_crash.to_string());
    line("exec_timeout", context.exec_timeout_ms.to_string());
    line("slowest_exec_ms", s.slowest_exec_ms.to_string());
    line("peak_rss_mb", s.peak_rss_mb.to_string());
    line("cpu_affinity", "-1".to_string());
    line("edges_found", s.edges_found.to_string());
    line("total_edges", s.total_edges.to_string());
    line("var_byte_count", s.var_byte_count.to_string());
    line("havoc_expansion", "0".to_string());
    line("auto_dict_entries", "0".to_string());
    line("testcache_size", "0".to_string());
    line("testcache_count", s.corpus_count.to_string());
    line("testcache_evict", "0".to_string());
    line("afl_banner", shell_safe(&context.banner));
    line("afl_version", VERSION.to_string());
    line("target_mode", "persistent snapshot".to_string());
    line("command_line", shell_safe(&context.command_line));
    out
}

/// One `plot_data` line (AFL++ 4.04c's columns and formats).
pub fn plot_line(s: &StatsSnapshot) -> String {
    format!(
        "{}, {}, {}, {}, {}, {}, {:.2}%, {}, {}, {}, {:.2}, {}, {}\n",
        s.run_time.as_secs(),
        s.cycles_done,
        s.cur_item,
        s.corpus_count,
        s.pending_total,
        s.pending_favs,
        s.bitmap_cvg,
        s.saved_crashes,
        s.saved_hangs,
        s.max_depth,
        s.execs_per_sec_now,
        s.total_execs,
        s.edges_found
    )
}

/// Appends to `plot_data`, writing the header first when the file is new or empty.
pub fn append_plot_line(path: &Path, line: &str) -> Result<(), OutputError> {
    let write_error = |source| OutputError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(write_error)?;
    let is_new = file.metadata().map_err(write_error)?.len() == 0;
    let mut text = String::new();
    if is_new {
        text.push_str(PLOT_HEADER);
        text.push('\n');
    }
    text.push_str(line);
    file.write_all(text.as_bytes()).map_err(write_error)
}

/// Writes `fuzzer_stats` atomically.
pub fn write_fuzzer_stats(path: &Path, text: &str) -> Result<(), OutputError> {
    output::write_file(path, text.as_bytes())
}

/// Execution-rate bookkeeping over a sliding minute.
#[derive(Debug, Default)]
pub struct RateWindow {
    samples: VecDeque<(Instant, u64)>,
}

impl RateWindow {
    /// Whether no sample was recorded yet.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Records `execs` at `now`; returns (rate since the previous sample, rate over the window).
    pub fn record(&mut self, now: Instant, execs: u64) -> (f64, f64) {
        const WINDOW: Duration = Duration::from_secs(60);
        let recent = self.samples.back().map_or(0.0, |&(at, then)| {
            rate(
                execs.saturating_sub(then),
                now.saturating_duration_since(at),
            )
        });
        self.samples.push_back((now, execs));
        while self
            .samples
            .front()
            .is_some_and(|&(at, _)| now.saturating_duration_since(at) > WINDOW)
        {
            self.samples.pop_front();
        }
        let window = self.samples.front().map_or(0.0, |&(at, then)| {
            rate(
                execs.saturating_sub(then),
                now.saturating_duration_since(at),
            )
        });
        (recent, window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_text_has_afl_keys_in_order() {
        let snapshot = StatsSnapshot {
            total_execs: 5000,
            execs_per_sec: 2500.0,
            ..Default::default()
        };
        let context = StatsContext {
            banner: "demo\"$x".into(),
            command_line: "snapvmm fuzz".into(),
            exec_timeout_ms: 1000,
        };
        let text = fuzzer_stats_text(&snapshot, &context, 1);
        let keys: Vec<&str> = text
            .lines()
            .map(|l| l.split(':').next().unwrap_or("").trim())
            .collect();
        assert_eq!(keys.first(), Some(&"start_time"));
        assert_eq!(keys.last(), Some(&"command_line"));
        assert!(text.contains("execs_done        : 5000\n"));
        assert!(text.contains("execs_per_sec     : 2500.00\n"));
        assert!(text.contains("afl_banner        : demox\n"));
        assert_eq!(keys.len(), 42);
    }

    #[test]
    fn plot_line_has_thirteen_columns() {
        let line = plot_line(&StatsSnapshot::default());
        assert_eq!(line.trim_end().split(", ").count(), 13);
        assert_eq!(PLOT_HEADER.trim_start_matches("# ").split(", ").count(), 13);
    }

    #[test]
    fn rate_window_measures_rates() {
        let mut window = RateWindow::default();
        let start = Instant::now();
        window.record(start, 0);
        let (recent, overall) = window.record(start + Duration::from_secs(2), 2000);
        assert!((recent - 1000.0).abs() < 1e-6);
        assert!((overall - 1000.0).abs() < 1e-6);
    }
}
