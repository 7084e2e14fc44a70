//! Turns L1's serial log into job outcomes: `@@LANE` marker lines frame each job's output.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{BootTimes, JobOutcome, LaneRun, LOG_TAIL_LINES};

const MARKER: &str = "@@LANE ";

/// What a marker line means for the host's time-outs.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Event {
    Ready,
    JobBegan { name: String, budget: Duration },
    JobEnded,
    Done,
}

/// Turns the serial log into a [`LaneRun`], one line at a time.
pub(super) struct LogParser {
    log_path: PathBuf,
    current: Option<(String, Vec<String>)>,
    jobs: Vec<JobOutcome>,
    pub(super) problems: Vec<String>,
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
    pub(super) fn new(log_path: &Path) -> Self {
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

    pub(super) fn line(&mut self, line: &str, at: Duration) -> Option<Event> {
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

    pub(super) fn finish(mut self, total: Duration) -> LaneRun {
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
}
