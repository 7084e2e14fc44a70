//! Once a second: `fuzzer_stats`, a `plot_data` line and the status line.

use std::time::{Duration, Instant};

use libafl::inputs::BytesInput;
use libafl::state::HasCorpus;
use libafl::{HasMetadata, HasNamedMetadata};

use crate::campaign::Campaign;
use crate::output::{OutputError, OutputLayout};
use crate::stats::{self, RateWindow, StatsContext, StatsSnapshot};
use crate::status::{StatusMode, StatusPrinter};

/// How often the files and the status line are updated.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// Writes the periodic reports of one campaign.
#[derive(Debug)]
pub struct Reporter {
    layout: OutputLayout,
    context: StatsContext,
    edges_name: String,
    map_len: usize,
    printer: StatusPrinter,
    rates: RateWindow,
    next_report: Instant,
    /// Queue size and cycle count at the last change of the queue, for `cycles_wo_finds`.
    last_corpus_count: u64,
    cycle_of_last_find: u64,
    last_snapshot: StatsSnapshot,
}

impl Reporter {
    /// A reporter for a campaign whose coverage map has `map_len` entries.
    pub fn new(
        layout: OutputLayout,
        context: StatsContext,
        edges_name: &str,
        map_len: usize,
        status: StatusMode,
    ) -> Self {
        Self {
            layout,
            context,
            edges_name: edges_name.to_string(),
            map_len,
            printer: StatusPrinter::new(status),
            rates: RateWindow::default(),
            // The first report after one interval, when there is something to show.
            next_report: Instant::now() + REPORT_INTERVAL,
            last_corpus_count: 0,
            cycle_of_last_find: 0,
            last_snapshot: StatsSnapshot::default(),
        }
    }

    /// Whether a report is due (cheap: one clock read).
    #[inline]
    pub fn due(&self, now: Instant) -> bool {
        now >= self.next_report
    }

    /// Writes `fuzzer_stats` and a `plot_data` line and shows the status line.
    pub fn report<S>(
        &mut self,
        state: &S,
        campaign: &Campaign,
        restores: Option<u64>,
    ) -> Result<&StatsSnapshot, OutputError>
    where
        S: HasCorpus<BytesInput> + HasMetadata + HasNamedMetadata,
    {
        let now = Instant::now();
        self.next_report = now + REPORT_INTERVAL;
        let mut snapshot = stats::snapshot(state, campaign, &self.edges_name, self.map_len);
        if self.rates.is_empty() {
            // The first rate is measured from the session's start.
            self.rates.record(campaign.started, campaign.previous_execs);
        }
        let (recent, last_minute) = self.rates.record(now, snapshot.total_execs);
        snapshot.execs_per_sec_now = recent;
        snapshot.execs_ps_last_min = last_minute;
        snapshot.restores = restores.unwrap_or(snapshot.session_execs);
        if snapshot.corpus_count != self.last_corpus_count {
            self.last_corpus_count = snapshot.corpus_count;
            self.cycle_of_last_find = snapshot.cycles_done;
        }
        snapshot.cycles_wo_finds = snapshot.cycles_done.saturating_sub(self.cycle_of_last_find);

        let text = stats::fuzzer_stats_text(&snapshot, &self.context, campaign.start_unix);
        stats::write_fuzzer_stats(&self.layout.fuzzer_stats, &text)?;
        stats::append_plot_line(&self.layout.plot_data, &stats::plot_line(&snapshot))?;
        self.printer.status(&snapshot);
        self.last_snapshot = snapshot;
        Ok(&self.last_snapshot)
    }

    /// Shows a message line (warnings, new crashes).
    pub fn message(&mut self, text: &str) {
        self.printer.message(text);
    }

    /// Ends the status line.
    pub fn finish(&mut self) {
        self.printer.finish();
    }

    /// The last figures reported.
    pub fn last_snapshot(&self) -> &StatsSnapshot {
        &self.last_snapshot
    }
}
