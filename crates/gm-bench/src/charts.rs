//! The report's plots, drawn as standalone SVG files with `plotters`.
//!
//! Three chart kinds, each fed plain data (so this module knows nothing of the runner):
//!
//! - [`bar_chart`]: horizontal bars with optional standard-error whiskers, coloured by group
//!   (the model family); e.g. negative log-likelihoods of every family on one data set.
//! - [`scatter_chart`]: labelled points coloured by group, optionally with a log-scale x axis;
//!   e.g. sample quality (y) against sampling time (x).
//! - [`line_chart`] / [`line_chart_with`]: one line per series; e.g. training curves
//!   (x = step, y = loss), with the y range clipped to robust quantiles by default.
//!
//! # Common behaviour
//!
//! - Every function renders the whole SVG in memory and then writes exactly one file, `path`
//!   (its parent folder must exist); nothing else is created. It returns `Ok(true)` when the file
//!   was written and `Ok(false)` when there was nothing to draw (no input, or no finite value
//!   left after filtering): then **nothing is written** and a file already at `path` is left as
//!   it is, so a caller that links the chart should link it only on `Ok(true)`.
//! - Rendering errors (which plotters reports only for broken layouts) and write errors are
//!   returned as [`GmError::Io`] naming `path`.
//! - Non-finite values (NaN, ±inf) are skipped, as are x ≤ 0 on a log axis; a grey note under
//!   the title says what was left out, so a diverged model does not vanish silently.
//! - Axis ranges are padded (5 %; x of line charts 2 %); a degenerate range (a single point, all
//!   values equal) is widened by 10 % of the value, or to −1..1 around zero.
//! - Colours come from a fixed 10-colour palette (Tableau 10), indexed by group (series, for
//!   line charts) in order of first appearance in the input, counting skipped items too, so a
//!   family keeps its colour when one of its values turns NaN; more than 10 groups cycle.
//! - Every chart has a legend, drawn in a column right of the plot so it never hides data.
//! - Text is plain SVG `<text>` (escaped by plotters; control characters are replaced by
//!   spaces); the crate is built without font support, so layout uses a rough per-character
//!   width estimate. Long axis titles get a smaller font (down to 10) so they fit their axis;
//!   very long labels and titles are shortened with "…".
//!
//! Sizes: 720 × 480 for scatter and line charts; bar charts are 720 wide and grow by 24 px
//! per bar.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::path::Path;

use gm_core::{GmError, Result};
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// One bar: a label, a value, and its standard error (drawn as an error bar when > 0).
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    /// Shown left of the bar (e.g. the model's name).
    pub label: String,
    /// Bar length; may be negative (bars grow from 0). Non-finite values are skipped.
    pub value: f64,
    /// Standard error; a whisker `value ± stderr` is drawn when it is finite and > 0.
    pub stderr: Option<f64>,
    /// Colour group and legend entry (e.g. the model family).
    pub group: String,
}

/// One point of a trade-off plot.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// Written next to the point (empty: no annotation).
    pub label: String,
    pub x: f64,
    pub y: f64,
    /// Colour group and legend entry.
    pub group: String,
}

/// One line series.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend entry.
    pub label: String,
    /// `(x, y)` in drawing order; a non-finite coordinate breaks the line there.
    pub points: Vec<(f64, f64)>,
}

/// How [`line_chart_with`] chooses the y range.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum YRange {
    /// From the smallest to the largest finite y, padded.
    Full,
    /// Robust: the `lo`..`hi` quantiles (fractions in 0..=1, linear interpolation) of all
    /// finite y values of all series, padded — but only when the full range is more than
    /// twice as wide as that quantile range (i.e. when a few outliers, such as a huge loss at
    /// step 0, would squash the rest); otherwise the full range. Lines leaving the range are
    /// cut at its edge and a note says how many points lie outside.
    Robust { lo: f64, hi: f64 },
    /// Exactly `min..max` (no padding); ignored (→ `Full`) unless both are finite and
    /// `min < max`. Lines leaving the range are cut at its edge.
    Fixed { min: f64, max: f64 },
}

impl Default for YRange {
    /// `Robust { lo: 0.02, hi: 0.98 }`: the 2nd–98th percentile.
    fn default() -> Self {
        YRange::Robust { lo: 0.02, hi: 0.98 }
    }
}

/// Horizontal bar chart, bars coloured by `group` (the model family) with a legend; for
/// comparing likelihoods across families on one data set.
///
/// Bars are drawn top to bottom in input order, from 0 to `value` (negative values grow to the
/// left), with a `value ± stderr` whisker when `stderr` is finite and > 0. `value_label` is the
/// x-axis title, units included (e.g. `"test NLL (nats)"`). Bars with a non-finite value are
/// left out and named in a note; returns `Ok(false)` without writing when no bar is left.
pub fn bar_chart(path: &Path, title: &str, value_label: &str, bars: &[Bar]) -> Result<bool> {
    let colour_of = first_appearance(bars.iter().map(|b| b.group.as_str()));
    let shown: Vec<&Bar> = bars.iter().filter(|b| b.value.is_finite()).collect();
    if shown.is_empty() {
        return Ok(false);
    }
    let skipped: Vec<String> = bars
        .iter()
        .filter(|b| !b.value.is_finite())
        .map(|b| clean(&b.label, 24))
        .collect();
    let note = if skipped.is_empty() {
        String::new()
    } else {
        format!("not shown (no finite value): {}", skipped.join(", "))
    };

    // Whisker half-widths, only where they make sense.
    let errs: Vec<Option<f64>> = shown
        .iter()
        .map(|b| {
            b.stderr.filter(|&e| {
                e.is_finite() && e > 0.0 && (b.value - e).is_finite() && (b.value + e).is_finite()
            })
        })
        .collect();
    let (mut lo, mut hi) = (0.0f64, 0.0f64);
    for (b, e) in shown.iter().zip(&errs) {
        let e = e.unwrap_or(0.0);
        lo = lo.min(b.value - e);
        hi = hi.max(b.value + e);
    }
    let (mut xlo, mut xhi) = pad_range(lo, hi, 0.05);
    // Keep the baseline at the edge when every bar points the same way.
    if lo >= 0.0 && hi > 0.0 {
        xlo = 0.0;
    }
    if hi <= 0.0 && lo < 0.0 {
        xhi = 0.0;
    }
    let (x_ticks, x_labels) = linear_ticks(xlo, xhi, 6);

    let n = shown.len();
    let labels: Vec<String> = shown.iter().map(|b| clean(&b.label, 40)).collect();
    // Row i (from the bottom) holds bar n-1-i, so the first bar is on top.
    let y_ticks: Vec<f64> = (0..n).map(|i| i as f64 + 0.5).collect();
    let y_fmt = |v: &f64| -> String {
        let i = (v - 0.5).round();
        if i >= 0.0 && (i as usize) < n {
            labels[n - 1 - i as usize].clone()
        } else {
            String::new()
        }
    };
    let y_area = label_area_width(labels.iter().map(|s| s.chars().count()), 0);

    let legend: Vec<(String, RGBColor)> = groups_in_order(shown.iter().map(|b| b.group.as_str()))
        .into_iter()
        .map(|g| (clean(g, 28), colour(colour_of[g])))
        .collect();
    let legend_w = legend_width(&legend);
    let header_h = header_height(&note);
    let x_desc = clean(value_label, 100);
    let desc_size = desc_font_size(&[(&x_desc, plot_width(legend_w, y_area))]);
    let body_h = (n as u32 * 24 + X_AREA + 2 * MARGIN)
        .max(legend_height(legend.len()))
        .max(120);
    let size = (WIDTH, header_h + body_h);

    render(path, size, |root| {
        let (header, body) = root.split_vertically(header_h);
        draw_header(&header, title, &note)?;
        let (plot, legend_area) = body.split_horizontally(WIDTH - legend_w);
        let mut chart = ChartBuilder::on(&plot)
            .margin(MARGIN)
            .x_label_area_size(X_AREA)
            .y_label_area_size(y_area)
            .build_cartesian_2d(
                Axis::new(xlo, xhi, x_ticks.clone()),
                Axis::new(0.0, n as f64, y_ticks.clone()),
            )?;
        let x_fmt = |v: &f64| lookup_label(&x_ticks, &x_labels, *v);
        chart
            .configure_mesh()
            .disable_y_mesh()
            .x_desc(x_desc.as_str())
            .x_label_formatter(&x_fmt)
            .y_label_formatter(&y_fmt)
            .label_style(("sans-serif", 15))
            .axis_desc_style(("sans-serif", desc_size))
            .bold_line_style(GRID)
            .draw()?;

        for (k, b) in shown.iter().enumerate() {
            let row = (n - 1 - k) as f64;
            let c = colour(colour_of[b.group.as_str()]);
            chart.draw_series(std::iter::once(Rectangle::new(
                [(0.0, row + 0.18), (b.value, row + 0.82)],
                c.filled(),
            )))?;
        }
        // The zero line, then the whiskers on top of the bars.
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(0.0, 0.0), (0.0, n as f64)],
            BLACK.stroke_width(1),
        )))?;
        for (k, (b, e)) in shown.iter().zip(&errs).enumerate() {
            let Some(e) = *e else { continue };
            let c = (n - 1 - k) as f64 + 0.5;
            let style = BLACK.stroke_width(1);
            let cap =
                |x: f64| EmptyElement::at((x, c)) + PathElement::new(vec![(0, -5), (0, 5)], style);
            chart.draw_series(std::iter::once(PathElement::new(
                vec![(b.value - e, c), (b.value + e, c)],
                style,
            )))?;
            chart.draw_series([cap(b.value - e), cap(b.value + e)])?;
        }
        draw_legend(&legend_area, &legend, Swatch::Box)
    })?;
    Ok(true)
}

/// Scatter of points coloured by group with a legend, optional log-scale x; for sample quality
/// (y) against sampling time (x, log scale).
///
/// Each point is annotated with its label. Points with a non-finite coordinate, and with
/// x ≤ 0 when `log_x`, are left out and named in a note; returns `Ok(false)` without writing
/// when no point is left. The log axis has ticks at powers of ten (1-2-5 within a decade or
/// two, plain ticks when the range is narrower).
pub fn scatter_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    log_x: bool,
    points: &[Point],
) -> Result<bool> {
    let colour_of = first_appearance(points.iter().map(|p| p.group.as_str()));
    let keep = |p: &Point| p.x.is_finite() && p.y.is_finite() && (!log_x || p.x > 0.0);
    let shown: Vec<&Point> = points.iter().filter(|p| keep(p)).collect();
    if shown.is_empty() {
        return Ok(false);
    }
    let skipped: Vec<String> = points
        .iter()
        .filter(|p| !keep(p))
        .map(|p| clean(&p.label, 24))
        .collect();
    let note = if skipped.is_empty() {
        String::new()
    } else {
        let why = if log_x {
            "non-finite, or x ≤ 0 on the log scale"
        } else {
            "non-finite"
        };
        format!("not shown ({why}): {}", skipped.join(", "))
    };

    let xs: Vec<f64> = shown
        .iter()
        .map(|p| if log_x { p.x.log10() } else { p.x })
        .collect();
    let (xlo, xhi) = pad_range(min_of(&xs), max_of(&xs), 0.05);
    let (x_ticks, x_labels) = if log_x {
        log_ticks(xlo, xhi)
    } else {
        linear_ticks(xlo, xhi, 6)
    };
    let ys: Vec<f64> = shown.iter().map(|p| p.y).collect();
    let (ylo, yhi) = pad_range(min_of(&ys), max_of(&ys), 0.05);
    let (y_ticks, y_labels) = linear_ticks(ylo, yhi, 6);

    let legend: Vec<(String, RGBColor)> = groups_in_order(shown.iter().map(|p| p.group.as_str()))
        .into_iter()
        .map(|g| (clean(g, 28), colour(colour_of[g])))
        .collect();
    let point_labels: Vec<String> = shown.iter().map(|p| clean(&p.label, 32)).collect();
    let frame = XyFrame {
        title,
        note: &note,
        x: (xlo, xhi, x_ticks, x_labels),
        y: (ylo, yhi, y_ticks, y_labels),
        x_label,
        y_label,
        legend: &legend,
        swatch: Swatch::Dot,
    };
    frame.render(path, |chart| {
        let font = ("sans-serif", 13).into_font().color(&TEXT_GREY);
        for ((p, x), label) in shown.iter().zip(&xs).zip(&point_labels) {
            let c = colour(colour_of[p.group.as_str()]);
            // Annotate to the right, or to the left in the right third (to stay in the plot).
            let (anchor, dx) = if *x > xlo + (xhi - xlo) * 0.67 {
                (HPos::Right, -6)
            } else {
                (HPos::Left, 6)
            };
            let dot = EmptyElement::at((*x, p.y))
                + Circle::new((0, 0), 4, c.filled())
                + Circle::new((0, 0), 4, BLACK.mix(0.6).stroke_width(1))
                + Text::new(
                    label.clone(),
                    (dx, -3),
                    font.clone().pos(Pos::new(anchor, VPos::Bottom)),
                );
            chart.draw_series(std::iter::once(dot))?;
        }
        Ok(())
    })?;
    Ok(true)
}

/// Line chart of several series with a legend; for training curves (x = step, y = loss).
///
/// The same as [`line_chart_with`] with [`YRange::default()`]: the y range is clipped to the
/// 2nd–98th percentile of all finite y values (padded) when outliers would otherwise squash the
/// curves, and left whole when they would not.
pub fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> Result<bool> {
    line_chart_with(path, title, x_label, y_label, series, YRange::default())
}

/// [`line_chart`] with an explicit choice of y range (see [`YRange`]).
///
/// Non-finite points are dropped and break their line (an isolated finite point is drawn as a
/// dot); series without any finite point are left out of the legend and named in a note; the
/// note also says when the y range was clipped and how many points lie outside it. Returns
/// `Ok(false)` without writing when no series has a finite point.
pub fn line_chart_with(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    y_range: YRange,
) -> Result<bool> {
    // Split every series into runs of consecutive finite points.
    let runs: Vec<Vec<Vec<(f64, f64)>>> = series.iter().map(|s| finite_runs(&s.points)).collect();
    let all: Vec<(f64, f64)> = runs.iter().flatten().flatten().copied().collect();
    if all.is_empty() {
        return Ok(false);
    }
    let mut notes = Vec::new();
    let dropped = series.iter().map(|s| s.points.len()).sum::<usize>() - all.len();
    if dropped > 0 {
        notes.push(format!("{dropped} non-finite point(s) skipped"));
    }
    let empty: Vec<String> = series
        .iter()
        .zip(&runs)
        .filter(|(_, r)| r.is_empty())
        .map(|(s, _)| clean(&s.label, 24))
        .collect();
    if !empty.is_empty() {
        notes.push(format!("no finite points: {}", empty.join(", ")));
    }

    let xs: Vec<f64> = all.iter().map(|p| p.0).collect();
    let (xlo, xhi) = pad_range(min_of(&xs), max_of(&xs), 0.02);
    let mut ys: Vec<f64> = all.iter().map(|p| p.1).collect();
    ys.sort_by(f64::total_cmp);
    let (ymin, ymax) = (ys[0], ys[ys.len() - 1]);
    let (ylo, yhi, clip_desc) = match y_range {
        YRange::Fixed { min, max } if min.is_finite() && max.is_finite() && min < max => (
            min,
            max,
            format!(
                "y range fixed to {}..{}",
                fmt_general(min),
                fmt_general(max)
            ),
        ),
        YRange::Robust { lo, hi } => {
            let (a, b) = (clamp01(lo.min(hi)), clamp01(lo.max(hi)));
            let (qa, qb) = (quantile(&ys, a), quantile(&ys, b));
            if (ymax / 2.0 - ymin / 2.0) > (qb - qa) {
                let (l, h) = pad_range(qa, qb, 0.05);
                let desc = format!(
                    "y clipped to percentiles {}–{}",
                    fmt_general(a * 100.0),
                    fmt_general(b * 100.0)
                );
                (l, h, desc)
            } else {
                let (l, h) = pad_range(ymin, ymax, 0.05);
                (l, h, String::new())
            }
        }
        _ => {
            let (l, h) = pad_range(ymin, ymax, 0.05);
            (l, h, String::new())
        }
    };
    let outside = ys.iter().filter(|&&y| y < ylo || y > yhi).count();
    if !clip_desc.is_empty() && outside > 0 {
        notes.push(format!(
            "{clip_desc}: {outside} of {} point(s) outside",
            ys.len()
        ));
    }
    let note = notes.join("; ");
    let (x_ticks, x_labels) = linear_ticks(xlo, xhi, 7);
    let (y_ticks, y_labels) = linear_ticks(ylo, yhi, 6);

    let legend: Vec<(String, RGBColor)> = series
        .iter()
        .zip(&runs)
        .enumerate()
        .filter(|(_, (_, r))| !r.is_empty())
        .map(|(i, (s, _))| (clean(&s.label, 28), colour(i)))
        .collect();
    let frame = XyFrame {
        title,
        note: &note,
        x: (xlo, xhi, x_ticks, x_labels),
        y: (ylo, yhi, y_ticks, y_labels),
        x_label,
        y_label,
        legend: &legend,
        swatch: Swatch::Line,
    };
    frame.render(path, |chart| {
        for (i, series_runs) in runs.iter().enumerate() {
            let c = colour(i);
            for run in series_runs {
                if run.len() == 1 {
                    let (x, y) = run[0];
                    if y >= ylo && y <= yhi {
                        chart.draw_series(std::iter::once(Circle::new((x, y), 3, c.filled())))?;
                    }
                    continue;
                }
                for piece in clip_to_band(run, ylo, yhi) {
                    chart
                        .draw_series(std::iter::once(PathElement::new(piece, c.stroke_width(2))))?;
                }
            }
        }
        Ok(())
    })?;
    Ok(true)
}

// ---------------------------------------------------------------------------------------------
// Layout and drawing helpers.

type DrawResult = std::result::Result<(), Box<dyn StdError>>;
type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

// Font sizes below are plotters' nominal sizes; its SVG backend writes them divided by 1.24
// (22 → 17.7 px for titles, 15 → 12.1 px for tick and legend labels).
const WIDTH: u32 = 720;
const HEIGHT: u32 = 480;
const MARGIN: u32 = 10;
const X_AREA: u32 = 45;
const GRID: RGBColor = RGBColor(225, 225, 225);
const TEXT_GREY: RGBColor = RGBColor(90, 90, 90);

/// Tableau 10.
const PALETTE: [RGBColor; 10] = [
    RGBColor(0x4e, 0x79, 0xa7),
    RGBColor(0xf2, 0x8e, 0x2b),
    RGBColor(0xe1, 0x57, 0x59),
    RGBColor(0x76, 0xb7, 0xb2),
    RGBColor(0x59, 0xa1, 0x4f),
    RGBColor(0xed, 0xc9, 0x48),
    RGBColor(0xb0, 0x7a, 0xa1),
    RGBColor(0xff, 0x9d, 0xa7),
    RGBColor(0x9c, 0x75, 0x5f),
    RGBColor(0xba, 0xb0, 0xac),
];

fn colour(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// A linear f64 axis whose ticks (and grid lines) are exactly the given values; its labels
/// come from the formatters passed to the mesh. (plotters' own `with_key_points` wrapper
/// cannot be used with `configure_mesh` for f64 axes.)
#[derive(Clone)]
struct Axis {
    inner: RangedCoordf64,
    lo: f64,
    hi: f64,
    ticks: Vec<f64>,
}

impl Axis {
    fn new(lo: f64, hi: f64, ticks: Vec<f64>) -> Self {
        Axis {
            inner: (lo..hi).into(),
            lo,
            hi,
            ticks,
        }
    }
}

impl Ranged for Axis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        self.inner.map(value, limit)
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.lo..self.hi
    }
}

/// The chart of [`scatter_chart`] and [`line_chart_with`]: a title with its note, x and y axes
/// with precomputed ticks and labels, and a legend at the right.
struct XyFrame<'a> {
    title: &'a str,
    note: &'a str,
    /// `(lo, hi, ticks, tick labels)` of each axis.
    x: (f64, f64, Vec<f64>, Vec<String>),
    y: (f64, f64, Vec<f64>, Vec<String>),
    x_label: &'a str,
    y_label: &'a str,
    legend: &'a [(String, RGBColor)],
    swatch: Swatch,
}

type XyChart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<Axis, Axis>>;

impl XyFrame<'_> {
    /// Lays out header, axes and legend, draws them, and lets `data` draw into the axes.
    fn render(
        &self,
        path: &Path,
        data: impl FnOnce(&mut XyChart<'_, '_>) -> DrawResult,
    ) -> Result<()> {
        let (xlo, xhi, x_ticks, x_labels) = &self.x;
        let (ylo, yhi, y_ticks, y_labels) = &self.y;
        let header_h = header_height(self.note);
        let legend_w = legend_width(self.legend);
        let y_area = label_area_width(y_labels.iter().map(|s| s.chars().count()), 22);
        let (x_desc, y_desc) = (clean(self.x_label, 100), clean(self.y_label, 80));
        let desc_size = desc_font_size(&[
            (&x_desc, plot_width(legend_w, y_area)),
            (&y_desc, HEIGHT - header_h - X_AREA - 2 * MARGIN),
        ]);
        render(path, (WIDTH, HEIGHT), |root| {
            let (header, body) = root.split_vertically(header_h);
            draw_header(&header, self.title, self.note)?;
            let (plot, legend_area) = body.split_horizontally(WIDTH - legend_w);
            let mut chart = ChartBuilder::on(&plot)
                .margin(MARGIN)
                .x_label_area_size(X_AREA)
                .y_label_area_size(y_area)
                .build_cartesian_2d(
                    Axis::new(*xlo, *xhi, x_ticks.clone()),
                    Axis::new(*ylo, *yhi, y_ticks.clone()),
                )?;
            let x_fmt = |v: &f64| lookup_label(x_ticks, x_labels, *v);
            let y_fmt = |v: &f64| lookup_label(y_ticks, y_labels, *v);
            chart
                .configure_mesh()
                .x_desc(x_desc.as_str())
                .y_desc(y_desc.as_str())
                .x_label_formatter(&x_fmt)
                .y_label_formatter(&y_fmt)
                .label_style(("sans-serif", 15))
                .axis_desc_style(("sans-serif", desc_size))
                .bold_line_style(GRID)
                .draw()?;
            data(&mut chart)?;
            draw_legend(&legend_area, self.legend, self.swatch)
        })
    }
}

/// Renders into memory, then writes `path` once.
fn render(path: &Path, size: (u32, u32), draw: impl FnOnce(&Area<'_>) -> DrawResult) -> Result<()> {
    let fail = |e: Box<dyn StdError>| {
        GmError::io(path, std::io::Error::other(format!("drawing chart: {e}")))
    };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| fail(e.into()))?;
        draw(&root).map_err(fail)?;
        root.present().map_err(|e| fail(e.into()))?;
    }
    std::fs::write(path, svg).map_err(|e| GmError::io(path, e))
}

fn header_height(note: &str) -> u32 {
    if note.is_empty() {
        40
    } else {
        60
    }
}

/// The title, centred, and an optional grey note below it.
fn draw_header(area: &Area<'_>, title: &str, note: &str) -> DrawResult {
    let centre = WIDTH as i32 / 2;
    let font = ("sans-serif", 22)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Center, VPos::Top));
    area.draw(&Text::new(clean(title, 70), (centre, 10), font))?;
    if !note.is_empty() {
        let font = ("sans-serif", 14)
            .into_font()
            .color(&TEXT_GREY)
            .pos(Pos::new(HPos::Center, VPos::Top));
        area.draw(&Text::new(clean(note, 120), (centre, 38), font))?;
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Swatch {
    Box,
    Dot,
    Line,
}

const LEGEND_ROW: i32 = 20;

fn legend_width(entries: &[(String, RGBColor)]) -> u32 {
    let longest = entries
        .iter()
        .map(|(l, _)| l.chars().count())
        .max()
        .unwrap_or(0);
    (longest as u32 * 7 + 44).clamp(90, 230)
}

fn legend_height(entries: usize) -> u32 {
    entries as u32 * LEGEND_ROW as u32 + 2 * MARGIN + 16
}

/// A framed list of swatches and labels in the column right of the plot.
fn draw_legend(area: &Area<'_>, entries: &[(String, RGBColor)], swatch: Swatch) -> DrawResult {
    let (w, _) = area.dim_in_pixel();
    let top = MARGIN as i32;
    let bottom = top + entries.len() as i32 * LEGEND_ROW + 8;
    area.draw(&Rectangle::new(
        [(2, top), (w as i32 - 6, bottom)],
        RGBColor(180, 180, 180).stroke_width(1),
    ))?;
    let font = ("sans-serif", 15)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Left, VPos::Center));
    for (i, (label, c)) in entries.iter().enumerate() {
        let y = top + 4 + LEGEND_ROW / 2 + i as i32 * LEGEND_ROW;
        let x = 10;
        match swatch {
            Swatch::Box => area.draw(&Rectangle::new([(x, y - 6), (x + 14, y + 6)], c.filled()))?,
            Swatch::Dot => area.draw(&Circle::new((x + 7, y), 4, c.filled()))?,
            Swatch::Line => area.draw(&PathElement::new(
                vec![(x, y), (x + 16, y)],
                c.stroke_width(2),
            ))?,
        }
        area.draw(&Text::new(label.clone(), (x + 22, y), font.clone()))?;
    }
    Ok(())
}

/// Width of the plotting area (inside the axes) of a body with this legend column and y-label
/// area.
fn plot_width(legend_w: u32, y_area: u32) -> u32 {
    WIDTH.saturating_sub(legend_w + y_area + 2 * MARGIN)
}

/// The largest nominal font size, up to 16 and at least 10, at which every axis title fits
/// its axis (`(text, available pixels)`), at ~0.55 em a character; titles still too long at
/// 10 are cut by [`clean`] beforehand.
fn desc_font_size(descs: &[(&str, u32)]) -> f64 {
    descs
        .iter()
        .fold(16.0f64, |size, (text, avail)| {
            let chars = text.chars().count().max(1) as f64;
            size.min(f64::from(*avail) * 1.24 / (0.55 * chars))
        })
        .max(10.0)
}

/// Room for tick labels of the given lengths (~7 px a character at the labels' size), plus
/// `extra` for an axis title.
fn label_area_width(lengths: impl Iterator<Item = usize>, extra: u32) -> u32 {
    let longest = lengths.max().unwrap_or(1) as u32;
    (longest * 7 + 14 + extra).clamp(40, 340)
}

/// Replaces control characters (which would make the SVG invalid XML) by spaces and
/// shortens to `max` characters with an ellipsis.
fn clean(s: &str, max: usize) -> String {
    let s: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if s.chars().count() <= max {
        s
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// Distinct groups, in order of first appearance.
fn groups_in_order<'a>(groups: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut seen = Vec::new();
    for g in groups {
        if !seen.contains(&g) {
            seen.push(g);
        }
    }
    seen
}

/// Group → palette index, in order of first appearance.
fn first_appearance<'a>(groups: impl Iterator<Item = &'a str>) -> HashMap<&'a str, usize> {
    groups_in_order(groups)
        .into_iter()
        .enumerate()
        .map(|(i, g)| (g, i))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Numbers: ranges, ticks, labels, clipping.

fn min_of(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn max_of(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

fn clamp01(v: f64) -> f64 {
    if v.is_nan() {
        0.0
    } else {
        v.clamp(0.0, 1.0)
    }
}

/// Widens `lo..hi` by `frac` of its span on each side; a degenerate range (equal ends, up to
/// rounding) becomes ±10 % of the value, or −1..1 around zero. Never overflows; always returns
/// finite `lo < hi`.
fn pad_range(lo: f64, hi: f64, frac: f64) -> (f64, f64) {
    if !lo.is_finite() || !hi.is_finite() || lo > hi {
        return (-1.0, 1.0);
    }
    let scale = lo.abs().max(hi.abs());
    let half = hi / 2.0 - lo / 2.0;
    let (l, h) = if half <= scale * 1e-9 {
        let d = if scale == 0.0 { 1.0 } else { scale * 0.1 };
        (lo - d, hi + d)
    } else {
        let d = half * (2.0 * frac);
        (lo - d, hi + d)
    };
    let (l, h) = (l.max(-f64::MAX), h.min(f64::MAX));
    if l < h {
        (l, h)
    } else {
        (-1.0, 1.0)
    }
}

/// The `q` quantile of sorted finite values, interpolating linearly.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let (i, frac) = (pos.floor() as usize, pos - pos.floor());
    if i + 1 >= sorted.len() {
        sorted[sorted.len() - 1]
    } else {
        sorted[i] + frac * (sorted[i + 1] - sorted[i])
    }
}

/// About `target` round ticks (steps of 1, 2, 2.5 or 5 × 10^k) inside `lo..=hi`, and their
/// labels, printed with as many decimals as the step needs (scientific for very large or very
/// small magnitudes).
fn linear_ticks(lo: f64, hi: f64, target: usize) -> (Vec<f64>, Vec<String>) {
    let step = nice_step(lo, hi, target);
    let Some(step) = step else {
        return (vec![], vec![]);
    };
    let (first, last) = ((lo / step).ceil(), (hi / step).floor());
    if !(first.is_finite() && last.is_finite()) || last - first > 1000.0 {
        return (vec![], vec![]);
    }
    let mut ticks = Vec::new();
    let mut k = first;
    while k <= last {
        let v = k * step;
        ticks.push(if v.abs() < step * 1e-9 { 0.0 } else { v });
        k += 1.0;
    }
    let labels = format_ticks(&ticks, step);
    (ticks, labels)
}

fn nice_step(lo: f64, hi: f64, target: usize) -> Option<f64> {
    let raw = hi / target as f64 - lo / target as f64;
    if !(raw.is_finite() && raw > 0.0) {
        return None;
    }
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let m = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 2.5 {
        2.5
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    let step = m * mag;
    (step.is_finite() && step > 0.0).then_some(step)
}

fn format_ticks(ticks: &[f64], step: f64) -> Vec<String> {
    let biggest = ticks.iter().fold(0.0f64, |a, v| a.max(v.abs()));
    if biggest >= 1e6 || (biggest > 0.0 && biggest < 1e-3) {
        let digits = (biggest.log10().floor() - step.log10().floor()).clamp(0.0, 8.0) as usize;
        ticks
            .iter()
            .map(|v| {
                if *v == 0.0 {
                    "0".into()
                } else {
                    trim_sci(&format!("{v:.digits$e}"))
                }
            })
            .collect()
    } else {
        let decimals = (0..=10)
            .find(|&d| {
                let s = step * 10f64.powi(d);
                (s - s.round()).abs() < 1e-6 * s.max(1.0)
            })
            .unwrap_or(10) as usize;
        ticks
            .iter()
            .map(|v| format!("{:.decimals$}", v + 0.0))
            .collect()
    }
}

/// "1.50e6" → "1.5e6", "1.00e-4" → "1e-4".
fn trim_sci(s: &str) -> String {
    match s.split_once('e') {
        Some((m, e)) if m.contains('.') => {
            format!("{}e{e}", m.trim_end_matches('0').trim_end_matches('.'))
        }
        _ => s.to_string(),
    }
}

/// About four significant digits, trailing zeros trimmed; scientific outside 1e-3..1e6.
fn fmt_general(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{}", v + 0.0);
    }
    let a = v.abs();
    if (0.999_999_999e-3..0.999_999_999e6).contains(&a) {
        let decimals = (3.0 - a.log10().floor()).clamp(0.0, 6.0) as usize;
        let s = format!("{v:.decimals$}");
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    } else {
        trim_sci(&format!("{v:.2e}"))
    }
}

/// Ticks for a log10 axis whose range (in log10 units) is `lo..hi`: positions in log10 units,
/// labels in data units.
fn log_ticks(lo: f64, hi: f64) -> (Vec<f64>, Vec<String>) {
    let mut ticks = Vec::new();
    let (k0, k1) = (lo.ceil(), hi.floor());
    if k1 - k0 >= 1.0 {
        // At least two powers of ten: ticks at (every few) powers of ten.
        let every = ((k1 - k0 + 1.0) / 8.0).ceil().max(1.0);
        let mut k = k0;
        while k <= k1 {
            ticks.push(k);
            k += every;
        }
    } else {
        let mut k = lo.floor();
        while k <= hi.ceil() {
            for m in [1.0f64, 2.0, 5.0] {
                let p = k + m.log10();
                if p >= lo && p <= hi {
                    ticks.push(p);
                }
            }
            k += 1.0;
        }
        if ticks.len() < 2 {
            // Narrower than 1-2-5 can show: round ticks in data units.
            let (t, _) = linear_ticks(10f64.powf(lo), 10f64.powf(hi), 5);
            ticks = t.into_iter().filter(|&v| v > 0.0).map(f64::log10).collect();
        }
    }
    let labels = ticks
        .iter()
        .map(|&p| {
            let v = if p.fract() == 0.0 && p.abs() < 300.0 {
                10f64.powi(p as i32)
            } else {
                10f64.powf(p)
            };
            fmt_general(v)
        })
        .collect();
    (ticks, labels)
}

fn lookup_label(ticks: &[f64], labels: &[String], v: f64) -> String {
    ticks
        .iter()
        .position(|&t| t == v)
        .map(|i| labels[i].clone())
        .unwrap_or_else(|| fmt_general(v))
}

/// Splits a polyline at its non-finite points.
fn finite_runs(points: &[(f64, f64)]) -> Vec<Vec<(f64, f64)>> {
    let mut runs = Vec::new();
    let mut cur = Vec::new();
    for &(x, y) in points {
        if x.is_finite() && y.is_finite() {
            cur.push((x, y));
        } else if !cur.is_empty() {
            runs.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        runs.push(cur);
    }
    runs
}

/// The parts of a polyline inside the band `lo <= y <= hi`, cut exactly at the band's edges
/// (plotters would otherwise pin outside points to the border and bend the line).
fn clip_to_band(run: &[(f64, f64)], lo: f64, hi: f64) -> Vec<Vec<(f64, f64)>> {
    let mut out = Vec::new();
    let mut cur: Vec<(f64, f64)> = Vec::new();
    let mut flush = |cur: &mut Vec<(f64, f64)>| {
        if cur.len() >= 2 {
            out.push(std::mem::take(cur));
        } else {
            cur.clear();
        }
    };
    for w in run.windows(2) {
        let (p, q) = (w[0], w[1]);
        match clip_segment(p, q, lo, hi) {
            None => flush(&mut cur),
            Some((a, b, from_p, to_q)) => {
                if !from_p || cur.is_empty() {
                    flush(&mut cur);
                    cur.push(a);
                }
                cur.push(b);
                if !to_q {
                    flush(&mut cur);
                }
            }
        }
    }
    flush(&mut cur);
    out
}

/// The part of segment p→q inside the band, with whether it starts at p and ends at q.
#[allow(clippy::type_complexity)]
fn clip_segment(
    p: (f64, f64),
    q: (f64, f64),
    lo: f64,
    hi: f64,
) -> Option<((f64, f64), (f64, f64), bool, bool)> {
    let dy = q.1 - p.1;
    let (mut t0, mut t1) = (0.0f64, 1.0f64);
    if dy == 0.0 || !dy.is_finite() {
        let inside = |y: f64| y >= lo && y <= hi;
        if !(inside(p.1) && inside(q.1)) {
            return None;
        }
    } else {
        let (ta, tb) = ((lo - p.1) / dy, (hi - p.1) / dy);
        t0 = t0.max(ta.min(tb));
        t1 = t1.min(ta.max(tb));
        if t0 > t1 {
            return None;
        }
    }
    let at = |t: f64| {
        if t == 0.0 {
            p
        } else if t == 1.0 {
            q
        } else {
            (p.0 + t * (q.0 - p.0), (p.1 + t * dy).clamp(lo, hi))
        }
    };
    Some((at(t0), at(t1), t0 == 0.0, t1 == 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh, empty folder under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!(
                "gm-charts-{}-{name}-{n}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
        fn file(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
        fn entries(&self) -> usize {
            std::fs::read_dir(&self.0).unwrap().count()
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Reads the file and checks it is a complete SVG whose tags nest properly.
    fn read_svg(path: &Path) -> String {
        let svg = std::fs::read_to_string(path).unwrap();
        let t = svg.trim();
        assert!(
            t.starts_with("<svg"),
            "does not start with <svg: {}",
            &t[..t.len().min(80)]
        );
        assert!(t.ends_with("</svg>"), "does not end with </svg>");
        let mut stack: Vec<String> = Vec::new();
        let mut rest = t;
        while let Some(start) = rest.find('<') {
            let end = rest[start..].find('>').expect("unterminated tag") + start;
            let tag = &rest[start + 1..end];
            rest = &rest[end + 1..];
            if tag.starts_with('?') || tag.starts_with('!') || tag.ends_with('/') {
                continue;
            }
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(
                    stack.pop().as_deref(),
                    Some(name.trim()),
                    "mismatched </{name}>"
                );
            } else {
                let name = tag.split_whitespace().next().unwrap_or("").to_string();
                stack.push(name);
            }
        }
        assert!(stack.is_empty(), "unclosed tags: {stack:?}");
        // Outside text content (labels may say "inf"), no number may be NaN or infinite.
        let markup: String = t
            .split('>')
            .map(|chunk| chunk.split('<').nth(1).unwrap_or(""))
            .collect::<Vec<_>>()
            .join("><");
        assert!(
            !markup.contains("NaN") && !markup.contains("inf"),
            "non-finite number in the SVG"
        );
        svg
    }

    /// `text` appears as (part of) the content of a `<text>` element.
    fn has_text(svg: &str, text: &str) -> bool {
        svg.split("<text").skip(1).any(|el| {
            let content = el.split_once('>').map(|(_, c)| c).unwrap_or("");
            content.split("</text>").next().unwrap_or("").contains(text)
        })
    }

    fn bar(label: &str, value: f64, stderr: Option<f64>, group: &str) -> Bar {
        Bar {
            label: label.into(),
            value,
            stderr,
            group: group.into(),
        }
    }

    fn point(label: &str, x: f64, y: f64, group: &str) -> Point {
        Point {
            label: label.into(),
            x,
            y,
            group: group.into(),
        }
    }

    #[test]
    fn bar_chart_has_title_axis_bars_and_legend() {
        let dir = TempDir::new("bar");
        let path = dir.file("nll.svg");
        let bars = vec![
            bar("realnvp", 1.52, Some(0.03), "flow"),
            bar("maf", 1.31, Some(0.02), "flow"),
            bar("vae", 1.75, None, "vae"),
            bar("pixelcnn", -0.4, Some(0.1), "autoregressive"),
        ];
        assert!(bar_chart(&path, "Test NLL on moons", "NLL (nats)", &bars).unwrap());
        let svg = read_svg(&path);
        for text in [
            "Test NLL on moons",
            "NLL (nats)",
            "flow",
            "vae",
            "autoregressive",
        ] {
            assert!(has_text(&svg, text), "missing text {text:?}");
        }
        for b in &bars {
            assert!(has_text(&svg, &b.label), "missing bar label {}", b.label);
        }
        // Two groups → two different fills among the bars.
        assert!(svg.contains("#4E79A7") || svg.contains("#4e79a7"));
        assert!(svg.contains("#F28E2B") || svg.contains("#f28e2b"));
        assert_eq!(dir.entries(), 1, "exactly one file written");
    }

    #[test]
    fn bar_chart_edge_cases() {
        let dir = TempDir::new("bar-edge");
        // Empty: nothing written.
        let path = dir.file("empty.svg");
        assert!(!bar_chart(&path, "t", "v", &[]).unwrap());
        assert!(!path.exists());
        // Only NaN/inf: nothing written either.
        let nan = [bar("diverged", f64::NAN, Some(1.0), "gan")];
        assert!(!bar_chart(&path, "t", "v", &nan).unwrap());
        assert!(!path.exists());

        let cases: Vec<(&str, Vec<Bar>)> = vec![
            ("single", vec![bar("one", 3.0, Some(0.5), "a")]),
            ("zero", vec![bar("zero", 0.0, None, "a")]),
            (
                "equal",
                vec![bar("x", 2.0, None, "a"), bar("y", 2.0, Some(0.0), "b")],
            ),
            (
                "negative",
                vec![bar("m", -3.0, Some(0.2), "a"), bar("n", -1.0, None, "b")],
            ),
            (
                "mixed-nonfinite",
                vec![
                    bar("ok <&> \"quoted\"", 1.0, Some(f64::NAN), "a"),
                    bar("nan-bar", f64::NAN, None, "b"),
                    bar("inf-bar", f64::INFINITY, None, "b"),
                    bar("huge-err", 2.0, Some(f64::INFINITY), "c"),
                    bar("ctrl\u{0}\u{7}char", 1.5, Some(-1.0), "c"),
                ],
            ),
            (
                "extreme",
                vec![
                    bar("big", 1e300, None, "a"),
                    bar("small", -1e300, Some(1e299), "b"),
                ],
            ),
            (
                "tiny",
                vec![
                    bar("t1", 1e-12, None, "a"),
                    bar("t2", 1.0 + 1e-15, None, "a"),
                ],
            ),
        ];
        for (name, bars) in cases {
            let path = dir.file(&format!("{name}.svg"));
            assert!(
                bar_chart(&path, name, "value (nats)", &bars).unwrap(),
                "{name}"
            );
            let svg = read_svg(&path);
            assert!(has_text(&svg, name), "{name}: title");
        }
        let svg = read_svg(&dir.file("mixed-nonfinite.svg"));
        assert!(svg.contains("ok &lt;&amp;&gt;"), "label escaped");
        // The NaN bar's label is named in the note, not drawn as a bar.
        assert!(has_text(
            &svg,
            "not shown (no finite value): nan-bar, inf-bar"
        ));
        // Control characters are replaced.
        assert!(has_text(&svg, "ctrl  char"));
    }

    #[test]
    fn bar_chart_reports_write_errors() {
        let dir = TempDir::new("bar-err");
        let path = dir.file("missing-folder").join("x.svg");
        let err = bar_chart(&path, "t", "v", &[bar("a", 1.0, None, "g")]).unwrap_err();
        assert!(matches!(err, GmError::Io { .. }), "{err}");
    }

    #[test]
    fn scatter_chart_has_title_axes_points_and_legend() {
        let dir = TempDir::new("scatter");
        let path = dir.file("tradeoff.svg");
        let points = vec![
            point("ddpm", 12.0, 4.1, "diffusion"),
            point("ddim-50", 0.8, 5.3, "diffusion"),
            point("dcgan", 0.002, 7.9, "gan"),
            point("vae", 0.001, 12.5, "vae"),
        ];
        let ok = scatter_chart(
            &path,
            "Quality vs speed",
            "time / sample (s)",
            "FID",
            true,
            &points,
        );
        assert!(ok.unwrap());
        let svg = read_svg(&path);
        for text in [
            "Quality vs speed",
            "time / sample (s)",
            "FID",
            "diffusion",
            "gan",
            "vae",
        ] {
            assert!(has_text(&svg, text), "missing text {text:?}");
        }
        for p in &points {
            assert!(has_text(&svg, &p.label), "missing point label {}", p.label);
        }
        // Log ticks at powers of ten.
        assert!(has_text(&svg, "0.01") && has_text(&svg, "1"), "log ticks");
        assert_eq!(dir.entries(), 1);
    }

    #[test]
    fn scatter_chart_edge_cases() {
        let dir = TempDir::new("scatter-edge");
        let path = dir.file("empty.svg");
        assert!(!scatter_chart(&path, "t", "x", "y", false, &[]).unwrap());
        assert!(!scatter_chart(&path, "t", "x", "y", true, &[point("z", 0.0, 1.0, "g")]).unwrap());
        assert!(!path.exists());

        let cases: Vec<(&str, bool, Vec<Point>)> = vec![
            ("single-lin", false, vec![point("p", 3.0, 4.0, "a")]),
            ("single-log", true, vec![point("p", 3.0, 4.0, "a")]),
            ("origin", false, vec![point("p", 0.0, 0.0, "a")]),
            (
                "equal",
                true,
                vec![point("p", 2.0, 1.0, "a"), point("q", 2.0, 1.0, "b")],
            ),
            (
                "narrow-log",
                true,
                vec![point("p", 2.0, 1.0, "a"), point("q", 2.5, -1.0, "b")],
            ),
            (
                "wide-log",
                true,
                vec![point("p", 1e-300, 1.0, "a"), point("q", 1e300, -1.0, "b")],
            ),
            (
                "skips",
                true,
                vec![
                    point("good", 10.0, 1.0, "a"),
                    point("neg-x", -1.0, 2.0, "a"),
                    point("zero-x", 0.0, 2.0, "b"),
                    point("nan-y", 1.0, f64::NAN, "b"),
                    point("inf-x", f64::INFINITY, 2.0, "c"),
                    point("good2", 100.0, 3.0, "c"),
                ],
            ),
            (
                "negative-lin",
                false,
                vec![point("p", -5.0, -1e7, "a"), point("q", -1.0, -2e7, "a")],
            ),
        ];
        for (name, log_x, points) in cases {
            let path = dir.file(&format!("{name}.svg"));
            assert!(
                scatter_chart(&path, name, "x (s)", "y", log_x, &points).unwrap(),
                "{name}"
            );
            let svg = read_svg(&path);
            assert!(has_text(&svg, name), "{name}: title");
        }
        let svg = read_svg(&dir.file("skips.svg"));
        assert!(has_text(&svg, "neg-x, zero-x, nan-y, inf-x"));
        assert!(has_text(&svg, "good2"));
    }

    #[test]
    fn line_chart_has_title_axes_series_and_legend() {
        let dir = TempDir::new("line");
        let path = dir.file("curves.svg");
        let series = vec![
            Series {
                label: "train".into(),
                points: (0..200)
                    .map(|i| (i as f64 * 10.0, 5.0 / (1.0 + i as f64)))
                    .collect(),
            },
            Series {
                label: "validation".into(),
                points: (0..20)
                    .map(|i| (i as f64 * 100.0, 5.5 / (1.0 + i as f64)))
                    .collect(),
            },
        ];
        assert!(line_chart(&path, "Training curves", "step", "loss (nats)", &series).unwrap());
        let svg = read_svg(&path);
        for text in [
            "Training curves",
            "step",
            "loss (nats)",
            "train",
            "validation",
        ] {
            assert!(has_text(&svg, text), "missing text {text:?}");
        }
        assert!(svg.contains("<polyline"), "lines drawn");
        assert_eq!(dir.entries(), 1);
    }

    #[test]
    fn line_chart_clips_outliers_only_when_needed() {
        let dir = TempDir::new("line-clip");
        // A huge loss at step 0, then 1 + 1/step: the 98th percentile is 1.51, so the
        // padded range ends near 1.54 and both 1e6 (step 0) and 2.0 (step 1) lie outside.
        let mut points = vec![(0.0, 1e6)];
        points.extend((1..100).map(|i| (i as f64, 1.0 + 1.0 / i as f64)));
        let series = vec![Series {
            label: "loss".into(),
            points,
        }];
        let path = dir.file("clipped.svg");
        assert!(line_chart(&path, "clipped", "step", "loss", &series).unwrap());
        let svg = read_svg(&path);
        assert!(has_text(
            &svg,
            "y clipped to percentiles 2–98: 2 of 100 point(s) outside"
        ));
        assert!(
            !has_text(&svg, "1e6"),
            "the y axis does not reach the outlier"
        );

        let path = dir.file("full.svg");
        let ok = line_chart_with(&path, "full", "step", "loss", &series, YRange::Full).unwrap();
        assert!(ok);
        let svg = read_svg(&path);
        assert!(!has_text(&svg, "clipped"));

        // A smooth curve is not clipped by the default.
        let smooth = vec![Series {
            label: "loss".into(),
            points: (0..100)
                .map(|i| (i as f64, 5.0 - 0.04 * i as f64))
                .collect(),
        }];
        let path = dir.file("smooth.svg");
        assert!(line_chart(&path, "smooth", "step", "loss", &smooth).unwrap());
        assert!(!has_text(&read_svg(&path), "clipped"));

        let path = dir.file("fixed.svg");
        let fixed = YRange::Fixed { min: 0.0, max: 1.5 };
        assert!(line_chart_with(&path, "fixed", "step", "loss", &series, fixed).unwrap());
        assert!(has_text(&read_svg(&path), "y range fixed to 0..1.5"));
    }

    #[test]
    fn clip_to_band_cuts_at_the_edges() {
        let run = [(0.0, 0.0), (1.0, 10.0), (2.0, 0.0), (3.0, 0.5)];
        let pieces = clip_to_band(&run, -1.0, 1.0);
        assert_eq!(pieces.len(), 2);
        assert_eq!(pieces[0], vec![(0.0, 0.0), (0.1, 1.0)]);
        assert_eq!(pieces[1], vec![(1.9, 1.0), (2.0, 0.0), (3.0, 0.5)]);
        assert!(clip_to_band(&[(0.0, 5.0), (1.0, 6.0)], -1.0, 1.0).is_empty());
    }

    #[test]
    fn line_chart_edge_cases() {
        let dir = TempDir::new("line-edge");
        let path = dir.file("empty.svg");
        assert!(!line_chart(&path, "t", "x", "y", &[]).unwrap());
        let nothing = vec![Series {
            label: "nan".into(),
            points: vec![(f64::NAN, 1.0), (1.0, f64::INFINITY)],
        }];
        assert!(!line_chart(&path, "t", "x", "y", &nothing).unwrap());
        let no_points = vec![Series {
            label: "none".into(),
            points: vec![],
        }];
        assert!(!line_chart(&path, "t", "x", "y", &no_points).unwrap());
        assert!(!path.exists());

        let s = |label: &str, points: Vec<(f64, f64)>| Series {
            label: label.into(),
            points,
        };
        let cases: Vec<(&str, Vec<Series>)> = vec![
            ("single-point", vec![s("one", vec![(5.0, 2.0)])]),
            (
                "flat",
                vec![s("flat", vec![(0.0, 3.0), (1.0, 3.0), (2.0, 3.0)])],
            ),
            ("vertical", vec![s("v", vec![(1.0, 0.0), (1.0, 3.0)])]),
            (
                "gaps",
                vec![
                    s(
                        "gappy",
                        vec![(0.0, 1.0), (1.0, f64::NAN), (2.0, 0.5), (3.0, 0.4)],
                    ),
                    s("all-nan", vec![(0.0, f64::NAN)]),
                    s(
                        "isolated",
                        vec![(0.0, f64::NAN), (1.0, 0.7), (f64::INFINITY, 1.0)],
                    ),
                ],
            ),
            (
                "negative",
                vec![s(
                    "nll",
                    (0..50).map(|i| (i as f64, -2.0 - i as f64 * 0.1)).collect(),
                )],
            ),
            (
                "extreme",
                vec![s("x", vec![(0.0, -1e300), (1.0, 1e300), (2.0, 0.0)])],
            ),
            (
                "many-series",
                (0..13)
                    .map(|k| {
                        s(
                            &format!("s{k}"),
                            vec![(0.0, k as f64), (1.0, k as f64 + 1.0)],
                        )
                    })
                    .collect(),
            ),
        ];
        for (name, series) in cases {
            let path = dir.file(&format!("{name}.svg"));
            assert!(
                line_chart(&path, name, "step", "loss", &series).unwrap(),
                "{name}"
            );
            let svg = read_svg(&path);
            assert!(has_text(&svg, name), "{name}: title");
        }
        let svg = read_svg(&dir.file("gaps.svg"));
        assert!(has_text(&svg, "gappy") && has_text(&svg, "isolated"));
        assert!(has_text(&svg, "no finite points: all-nan"));
        assert!(has_text(&svg, "4 non-finite point(s) skipped"));
        // Bad options fall back to the full range.
        let path = dir.file("bad-fixed.svg");
        let bad = YRange::Fixed {
            min: 2.0,
            max: f64::NAN,
        };
        let series = vec![s("a", vec![(0.0, 1.0), (1.0, 2.0)])];
        assert!(line_chart_with(&path, "bad", "x", "y", &series, bad).unwrap());
        let bad = YRange::Robust {
            lo: f64::NAN,
            hi: 7.0,
        };
        assert!(line_chart_with(&path, "bad", "x", "y", &series, bad).unwrap());
        read_svg(&path);
    }

    #[test]
    fn ticks_and_labels() {
        let (t, l) = linear_ticks(0.0, 1.0, 5);
        assert_eq!(t.first(), Some(&0.0));
        assert_eq!(l, ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]);
        let (_, l) = linear_ticks(0.0, 1e7, 5);
        assert!(l.iter().any(|s| s == "2e6"), "{l:?}");
        let (_, l) = linear_ticks(-0.3, 0.3, 6);
        assert!(l.iter().all(|s| !s.starts_with("-0.0")), "{l:?}");
        let (t, l) = log_ticks(-3.0, 1.0);
        assert_eq!(t, [-3.0, -2.0, -1.0, 0.0, 1.0]);
        assert_eq!(l, ["0.001", "0.01", "0.1", "1", "10"]);
        assert!(log_ticks(0.3, 0.4).0.len() >= 2);
        assert_eq!(pad_range(1.0, 1.0, 0.05), (0.9, 1.1));
        assert_eq!(pad_range(0.0, 0.0, 0.05), (-1.0, 1.0));
        let (l, h) = pad_range(-f64::MAX, f64::MAX, 0.05);
        assert!(l.is_finite() && h.is_finite() && l < h);
        assert_eq!(fmt_general(1e-4), "1e-4");
        assert_eq!(fmt_general(1234.5678), "1235");
        assert_eq!(fmt_general(0.02), "0.02");
    }

    #[test]
    fn long_axis_titles_get_a_smaller_font_not_cut() {
        let dir = TempDir::new("long-desc");
        let path = dir.file("t.svg");
        let y = "Fréchet distance (digit classifier features) (lower is better)";
        let x = "seconds per 10,000 samples (log scale)";
        let points = [point("a", 1.0, 2.0, "g"), point("b", 10.0, 3.0, "g")];
        assert!(scatter_chart(&path, "digits", x, y, true, &points).unwrap());
        let svg = read_svg(&path);
        assert!(has_text(&svg, y) && has_text(&svg, x));
        assert!(desc_font_size(&[(y, 380)]) < 16.0);
        assert_eq!(desc_font_size(&[("step", 380)]), 16.0);
        assert_eq!(desc_font_size(&[(&"x".repeat(500), 380)]), 10.0);
    }
}
