//! The status of many jobs (`--jobs N`) as one line, and their summary: read from each job's
//! `fuzzer_stats` (every job writes its own once a second), as AFL++'s `afl-whatsup` does. The
//! jobs themselves print nothing while they run.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::status::{self, StatusMode, StatusPrinter};

/// A job's output directory name: `job1` ... `jobN`, AFL++-style instances of one out dir.
pub fn job_dir_name(job: usize) -> String {
    format!("job{job}")
}

/// The figures of one job's `fuzzer_stats` that the status shows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobFigures {
    pub execs_done: u64,
    pub corpus_count: u64,
    pub corpus_imported: u64,
    pub edges_found: u64,
    pub saved_crashes: u64,
    pub saved_hangs: u64,
    pub execs_per_sec: f64,
}

impl JobFigures {
    /// Parses AFL++'s `key : value` lines; missing or odd values count as 0.
    pub fn parse(text: &str) -> Self {
        let mut figures = JobFigures::default();
        for line in text.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            let int = || value.parse::<u64>().unwrap_or(0);
            match key.trim() {
                "execs_done" => figures.execs_done = int(),
                "corpus_count" => figures.corpus_count = int(),
                "corpus_imported" => figures.corpus_imported = int(),
                "edges_found" => figures.edges_found = int(),
                "saved_crashes" => figures.saved_crashes = int(),
                "saved_hangs" => figures.saved_hangs = int(),
                "execs_per_sec" => figures.execs_per_sec = value.parse().unwrap_or(0.0),
                _ => {}
            }
        }
        figures
    }

    /// The figures in `instance/fuzzer_stats` (all 0 before the job wrote it).
    pub fn read(instance: &Path) -> Self {
        std::fs::read_to_string(instance.join("fuzzer_stats"))
            .map(|text| Self::parse(&text))
            .unwrap_or_default()
    }
}

/// The parent's view of N jobs writing into `out/job1` ... `out/jobN`.
pub struct JobsStatus {
    instances: Vec<PathBuf>,
    printer: StatusPrinter,
    started: Instant,
    /// Executions of this session at the last update, and when (for execs/s).
    last: Option<(Instant, u64)>,
    /// Executions each job had when this session started (resumed campaigns).
    baseline: Vec<u64>,
}

impl JobsStatus {
    pub fn new(out: &Path, jobs: usize, mode: StatusMode) -> Self {
        let instances: Vec<PathBuf> = (1..=jobs).map(|n| out.join(job_dir_name(n))).collect();
        let baseline = instances
            .iter()
            .map(|dir| JobFigures::read(dir).execs_done)
            .collect();
        Self {
            instances,
            printer: StatusPrinter::new(mode),
            started: Instant::now(),
            last: None,
            baseline,
        }
    }

    fn figures(&self) -> Vec<JobFigures> {
        self.instances
            .iter()
            .map(|dir| JobFigures::read(dir))
            .collect()
    }

    /// Executions of this session, all jobs together.
    fn session_execs(&self, figures: &[JobFigures]) -> u64 {
        figures
            .iter()
            .zip(&self.baseline)
            .map(|(f, base)| f.execs_done.saturating_sub(*base))
            .sum()
    }

    /// Redraws the status line: executions per second of all jobs together (over the last
    /// update), their executions, the largest queue and edge count among them, crashes and hangs
    /// of all, inputs taken from each other, elapsed time.
    pub fn update(&mut self) {
        let figures = self.figures();
        let now = Instant::now();
        let execs = self.session_execs(&figures);
        let rate = match self.last {
            Some((then, before)) if now > then => {
                execs.saturating_sub(before) as f64 / (now - then).as_secs_f64()
            }
            _ => 0.0,
        };
        self.last = Some((now, execs));
        self.printer.line(&status_line(
            self.instances.len(),
            &figures,
            rate,
            self.started.elapsed(),
        ));
    }

    /// Ends the status line and prints one line per job and the total.
    pub fn summary(&mut self, statuses: &[Option<u8>]) -> String {
        self.printer.finish();
        let figures = self.figures();
        let elapsed = self.started.elapsed();
        let execs = self.session_execs(&figures);
        let mut text = format!(
            "fuzzing ended: {} jobs, {} execs in {} ({} execs/s)\n",
            self.instances.len(),
            execs,
            status::clock(elapsed),
            status::human(execs as f64 / elapsed.as_secs_f64().max(1e-3)),
        );
        for (n, (f, dir)) in figures.iter().zip(&self.instances).enumerate() {
            let ended = match statuses.get(n).copied().flatten() {
                Some(0) => String::new(),
                Some(status) => format!(", ended with status {status}"),
                None => ", killed".to_string(),
            };
            text.push_str(&format!(
                "  {}: execs {}, corpus {} ({} from other jobs), edges {}, crashes {}, hangs {}{ended}\n",
                dir.display(),
                f.execs_done,
                f.corpus_count,
                f.corpus_imported,
                f.edges_found,
                f.saved_crashes,
                f.saved_hangs,
            ));
        }
        text
    }
}

/// The status line of many jobs.
pub fn status_line(jobs: usize, figures: &[JobFigures], rate: f64, elapsed: Duration) -> String {
    let execs: u64 = figures.iter().map(|f| f.execs_done).sum();
    let corpus = figures.iter().map(|f| f.corpus_count).max().unwrap_or(0);
    let edges = figures.iter().map(|f| f.edges_found).max().unwrap_or(0);
    let crashes: u64 = figures.iter().map(|f| f.saved_crashes).sum();
    let hangs: u64 = figures.iter().map(|f| f.saved_hangs).sum();
    let imported: u64 = figures.iter().map(|f| f.corpus_imported).sum();
    format!(
        "fuzz: {jobs} jobs | {} execs/s | execs {} | corpus {corpus} | edges {edges} | crashes {crashes} | hangs {hangs} | shared {imported} | {}",
        status::human(rate),
        status::human(execs as f64),
        status::clock(elapsed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fuzzer_stats_figures_are_read() {
        let text = "start_time        : 1\nexecs_done        : 1234\nexecs_per_sec     : 56.50\ncorpus_count      : 7\ncorpus_imported   : 2\nedges_found       : 40\nsaved_crashes     : 1\nsaved_hangs       : 0\nafl_banner        : a:b\n";
        let f = JobFigures::parse(text);
        assert_eq!(
            f,
            JobFigures {
                execs_done: 1234,
                corpus_count: 7,
                corpus_imported: 2,
                edges_found: 40,
                saved_crashes: 1,
                saved_hangs: 0,
                execs_per_sec: 56.5,
            }
        );
        assert_eq!(
            JobFigures::parse("execs_done : lots"),
            JobFigures::default()
        );
    }

    #[test]
    fn the_line_adds_jobs_up() {
        let a = JobFigures {
            execs_done: 1000,
            corpus_count: 5,
            edges_found: 30,
            saved_crashes: 1,
            corpus_imported: 1,
            ..Default::default()
        };
        let b = JobFigures {
            execs_done: 3000,
            corpus_count: 7,
            edges_found: 28,
            saved_crashes: 2,
            corpus_imported: 2,
            ..Default::default()
        };
        let line = status_line(2, &[a, b], 1500.0, Duration::from_secs(65));
        for part in [
            "2 jobs",
            "1500 execs/s",
            "execs 4000",
            "corpus 7",
            "edges 30",
            "crashes 3",
            "shared 3",
            "0:01:05",
        ] {
            assert!(line.contains(part), "{line} lacks {part}");
        }
    }
}
