//! `snapvmm plot DIR`: a PNG of execs/s, corpus size and edges over time from AFL++'s
//! `plot_data`, drawn with `plotters` (no gnuplot). Text is rendered with DejaVu Sans embedded in
//! the binary (the `dejavu` crate), so no system font or fontconfig is needed.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::output::INSTANCE_NAME;

/// Largest plot_data read.
const MAX_PLOT_DATA_LEN: u64 = 512 * 1024 * 1024;
/// Most points drawn per series (longer files are thinned evenly).
const MAX_POINTS: usize = 4000;
/// Image size.
const WIDTH: u32 = 1200;
const HEIGHT: u32 = 960;
/// The font family the charts ask for.
const FONT: &str = "sans-serif";

/// Errors making a plot.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("no plot_data in {dir} (nor in {dir}/{INSTANCE_NAME})")]
    NoPlotData { dir: PathBuf },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is larger than {MAX_PLOT_DATA_LEN} bytes")]
    TooLarge { path: PathBuf },
    #[error("{path} has fewer than two data lines; let the fuzzer run longer")]
    NotEnoughData { path: PathBuf },
    #[error("cannot draw {path}: {reason}")]
    Draw { path: PathBuf, reason: String },
}

/// One `plot_data` line, the columns plotted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlotPoint {
    pub relative_time: f64,
    pub corpus_count: f64,
    pub execs_per_sec: f64,
    pub edges_found: f64,
}

/// Finds `plot_data` in `dir` (an AFL++ output directory or its instance directory).
pub fn find_plot_data(dir: &Path) -> Result<PathBuf, PlotError> {
    [
        dir.join(INSTANCE_NAME).join("plot_data"),
        dir.join("plot_data"),
    ]
    .into_iter()
    .find(|path| path.is_file())
    .ok_or_else(|| PlotError::NoPlotData {
        dir: dir.to_path_buf(),
    })
}

/// Parses AFL++'s plot_data text (lines that do not parse are skipped). AFL++ versions before
/// 4.0 have no `edges_found` column; edges are then 0.
pub fn parse_plot_data(text: &str) -> Vec<PlotPoint> {
    text.lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter_map(|line| {
            let cols: Vec<&str> = line.split(',').map(str::trim).collect();
            let number = |i: usize| -> Option<f64> {
                cols.get(i)?.trim_end_matches('%').parse::<f64>().ok()
            };
            Some(PlotPoint {
                relative_time: number(0)?,
                corpus_count: number(3)?,
                execs_per_sec: number(10)?,
                edges_found: number(12).unwrap_or(0.0),
            })
        })
        .collect()
}

/// Reads `DIR`'s plot_data and writes a PNG to `png`; returns the number of data lines.
pub fn plot(dir: &Path, png: &Path) -> Result<usize, PlotError> {
    let path = find_plot_data(dir)?;
    let read_error = |source| PlotError::Read {
        path: path.clone(),
        source,
    };
    let file = fs::File::open(&path).map_err(read_error)?;
    let mut bytes = Vec::new();
    file.take(MAX_PLOT_DATA_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_PLOT_DATA_LEN {
        return Err(PlotError::TooLarge { path });
    }
    let points = parse_plot_data(&String::from_utf8_lossy(&bytes));
    if points.len() < 2 {
        return Err(PlotError::NotEnoughData { path });
    }
    draw(&points, png).map_err(|reason| PlotError::Draw {
        path: png.to_path_buf(),
        reason,
    })?;
    Ok(points.len())
}

/// Registers the embedded font once.
fn register_font() -> Result<(), String> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular())
                .map_err(|_| "the embedded font is invalid".to_string())
        })
        .clone()
}

/// Evenly thinned points, at most [`MAX_POINTS`].
fn thin(points: &[PlotPoint]) -> Vec<PlotPoint> {
    let step = points.len().div_ceil(MAX_POINTS).max(1);
    let mut out: Vec<PlotPoint> = points.iter().step_by(step).copied().collect();
    if let (Some(last), Some(kept)) = (points.last(), out.last()) {
        if kept != last {
            out.push(*last);
        }
    }
    out
}

/// One chart: title, unit, colour, the column it shows.
type Series = (&'static str, &'static str, RGBColor, fn(&PlotPoint) -> f64);

fn draw(points: &[PlotPoint], png: &Path) -> Result<(), String> {
    register_font()?;
    let points = thin(points);
    let root = BitMapBackend::new(png, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let panels = root.split_evenly((3, 1));
    let series: [Series; 3] = [
        ("execs per second", "execs/s", BLUE, |p| p.execs_per_sec),
        ("corpus size", "entries", RGBColor(0, 128, 0), |p| {
            p.corpus_count
        }),
        ("edges found", "edges", RGBColor(192, 0, 128), |p| {
            p.edges_found
        }),
    ];
    let t_max = points
        .iter()
        .map(|p| p.relative_time)
        .fold(1.0_f64, f64::max);
    let t_min = points
        .iter()
        .map(|p| p.relative_time)
        .fold(t_max, f64::min)
        .min(t_max - 1.0);
    for (panel, (title, unit, color, value)) in panels.iter().zip(series) {
        let y_max = points.iter().map(value).fold(1.0_f64, f64::max) * 1.1;
        let mut chart = ChartBuilder::on(panel)
            .caption(title, (FONT, 22))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(80)
            .build_cartesian_2d(t_min..t_max, 0.0..y_max)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("run time (s)")
            .y_desc(unit)
            .label_style((FONT, 14))
            .draw()
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|p| (p.relative_time, value(p))),
                color.stroke_width(2),
            ))
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_afl_plot_data() {
        let text = "# relative_time, cycles_done, cur_item, corpus_count, pending_total, pending_favs, map_size, saved_crashes, saved_hangs, max_depth, execs_per_sec, total_execs, edges_found\n\
                    1, 0, 0, 3, 3, 1, 0.01%, 0, 0, 1, 1234.50, 1234, 9\n\
                    garbage\n\
                    2, 0, 1, 4, 2, 1, 0.02%, 0, 0, 2, 2000.00, 3234, 12\n";
        let points = parse_plot_data(text);
        assert_eq!(points.len(), 2);
        assert_eq!(
            points[1],
            PlotPoint {
                relative_time: 2.0,
                corpus_count: 4.0,
                execs_per_sec: 2000.0,
                edges_found: 12.0
            }
        );
    }

    #[test]
    fn thinning_keeps_the_ends() {
        let points: Vec<PlotPoint> = (0..10_001)
            .map(|i| PlotPoint {
                relative_time: f64::from(i),
                corpus_count: 0.0,
                execs_per_sec: 0.0,
                edges_found: 0.0,
            })
            .collect();
        let thinned = thin(&points);
        assert!(thinned.len() <= MAX_POINTS + 1);
        assert_eq!(thinned.first(), points.first());
        assert_eq!(thinned.last(), points.last());
    }
}
