//! The live status line on stderr: redrawn in place on a terminal, one plain line per update
//! otherwise (a log file, CI).

use std::io::{IsTerminal, Write};
use std::time::Duration;

use crate::stats::StatsSnapshot;

/// How the status is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StatusMode {
    /// In place on a terminal, plain lines otherwise.
    #[default]
    Auto,
    /// Always plain lines.
    Plain,
    /// Nothing (library users that show their own).
    Off,
}

/// Prints status lines and messages to stderr.
#[derive(Debug)]
pub struct StatusPrinter {
    in_place: bool,
    enabled: bool,
    /// A line is on screen without its newline (in-place mode).
    line_open: bool,
}

impl StatusPrinter {
    /// A printer for `mode`.
    pub fn new(mode: StatusMode) -> Self {
        Self {
            in_place: mode == StatusMode::Auto && std::io::stderr().is_terminal(),
            enabled: mode != StatusMode::Off,
            line_open: false,
        }
    }

    /// Shows one status update.
    pub fn status(&mut self, snapshot: &StatsSnapshot) {
        if self.enabled {
            self.line(&status_line(snapshot));
        }
    }

    /// Shows one status line (in place on a terminal).
    pub fn line(&mut self, line: &str) {
        if !self.enabled {
            return;
        }
        let mut err = std::io::stderr().lock();
        if self.in_place {
            let _ = write!(err, "\r\x1b[2K{line}");
            self.line_open = true;
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }

    /// Prints a message on its own line (a warning, a new crash), keeping the status line intact.
    pub fn message(&mut self, text: &str) {
        if !self.enabled {
            return;
        }
        let mut err = std::io::stderr().lock();
        if self.line_open {
            let _ = write!(err, "\r\x1b[2K");
            self.line_open = false;
        }
        let _ = writeln!(err, "{text}");
    }

    /// Ends the in-place line before the summary.
    pub fn finish(&mut self) {
        if self.line_open {
            let _ = writeln!(std::io::stderr());
            self.line_open = false;
        }
    }
}

/// The status line: execs/s, total execs, corpus, edges, crashes, hangs, last find, restores,
/// elapsed.
pub fn status_line(s: &StatsSnapshot) -> String {
    let last_find = if s.last_find == 0 {
        "none".to_string()
    } else {
        let ago = crate::campaign::unix_now().saturating_sub(s.last_find);
        format!("{} ago", short_duration(Duration::from_secs(ago)))
    };
    format!(
        "fuzz: {} execs/s | execs {} | corpus {} | edges {} | crashes {} | hangs {} | last find {} | restores {} | {}",
        human(s.execs_per_sec_now),
        human(s.total_execs as f64),
        s.corpus_count,
        s.edges_found,
        s.saved_crashes,
        s.saved_hangs,
        last_find,
        human(s.restores as f64),
        clock(s.run_time)
    )
}

/// 1234 -> "1234", 12345 -> "12.3k", 1234567 -> "1.23M".
pub fn human(value: f64) -> String {
    if value >= 1e9 {
        format!("{:.2}G", value / 1e9)
    } else if value >= 1e6 {
        format!("{:.2}M", value / 1e6)
    } else if value >= 1e4 {
        format!("{:.1}k", value / 1e3)
    } else {
        format!("{value:.0}")
    }
}

/// h:mm:ss.
pub fn clock(d: Duration) -> String {
    let secs = d.as_secs();
    format!("{}:{:02}:{:02}", secs / 3600, (secs / 60) % 60, secs % 60)
}

/// "5s", "3m12s", "2h05m".
fn short_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs < 60 {
        format!("{secs}s")
    } else if secs < 3600 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{}h{:02}m", secs / 3600, (secs / 60) % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_line_has_every_figure() {
        let snapshot = StatsSnapshot {
            execs_per_sec_now: 12_345.0,
            total_execs: 1_234_567,
            corpus_count: 45,
            edges_found: 123,
            saved_crashes: 2,
            saved_hangs: 1,
            restores: 1_234_567,
            run_time: Duration::from_secs(3725),
            ..Default::default()
        };
        let line = status_line(&snapshot);
        for part in [
            "12.3k execs/s",
            "execs 1.23M",
            "corpus 45",
            "edges 123",
            "crashes 2",
            "hangs 1",
            "last find none",
            "restores 1.23M",
            "1:02:05",
        ] {
            assert!(line.contains(part), "{line} lacks {part}");
        }
    }
}
