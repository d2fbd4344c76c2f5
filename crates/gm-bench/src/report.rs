//! The report: `report.json` (every number), `report.md` (tables), `index.html` (one section
//! per data set with tables, charts drawn by [`crate::charts`], sample pictures and training
//! curves), and the summary table that answers the usual qualitative comparison of families
//! with measured numbers.

use crate::runner::RunResult;
use gm_core::{GmError, Result};
use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;

/// The whole report.
#[derive(Debug, Serialize)]
pub struct Report {
    pub profile: String,
    pub device: String,
    pub threads: i32,
    /// Processes that ran side by side (`--jobs`), each with `threads` libtorch threads.
    pub jobs: usize,
    /// Wall time of the invocation that wrote the report (for a merged report, the sum of its
    /// results' phases).
    pub total_seconds: f64,
    /// When the report was written (UTC).
    pub date: String,
    /// `gm <version>` and the source digest of every crate (each result has its own).
    pub code_version: String,
    pub results: Vec<RunResult>,
}

impl Report {
    /// A report of `results` written now by this build of gm.
    pub fn new(profile: &str, device: &str, total_seconds: f64, results: Vec<RunResult>) -> Self {
        Report {
            profile: profile.to_string(),
            device: device.to_string(),
            threads: gm_core::tch::get_num_threads(),
            jobs: 1,
            total_seconds,
            date: crate::provenance::now_utc(),
            code_version: format!(
                "gm {} {}",
                env!("CARGO_PKG_VERSION"),
                crate::provenance::SOURCE_DIGESTS
                    .iter()
                    .map(|(n, d)| format!("{n}:{d}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            results,
        }
    }

    /// The summed wall time of each phase over the results (the invocation's own work, with
    /// reused results counting what they cost when they were computed).
    pub fn phase_totals(&self) -> crate::runner::Phases {
        let mut total = crate::runner::Phases::default();
        for r in &self.results {
            total.train += r.phases.train;
            total.likelihood += r.phases.likelihood;
            total.sampling += r.phases.sampling;
            total.image_metrics += r.phases.image_metrics;
            total.samplers += r.phases.samplers;
            total.capabilities += r.phases.capabilities;
        }
        total
    }
}

fn fmt(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}"))
        .unwrap_or_else(|| "–".into())
}

/// Writes the report into `out`: `report.json`, `report.md`, the charts under `charts/` and
/// `index.html`.
pub fn write(report: &Report, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| GmError::io(out, e))?;
    let json =
        serde_json::to_vec_pretty(report).map_err(|e| GmError::config("report", e.to_string()))?;
    write_file(&out.join("report.json"), &json)?;
    write_file(&out.join("report.md"), markdown(report).as_bytes())?;
    let mut charts = draw_charts(report, out)?;
    charts.pictures = report
        .results
        .iter()
        .filter_map(|r| r.samples_png.clone())
        .filter(|p| out.join(p).is_file())
        .collect();
    write_file(&out.join("index.html"), html(report, &charts).as_bytes())
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| GmError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| GmError::io(path, e))
}

fn toy(r: &RunResult) -> bool {
    r.entropy_nats.is_some()
}

pub fn markdown(report: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# gm benchmark report\n");
    let _ = writeln!(
        s,
        "{} Every number below was measured by `gm bench-all` (`cargo xtask bench-all`) with this profile; a run whose configuration and code did not change since an earlier invocation is reused from that one (see `runs/`).\n",
        provenance_text(report)
    );
    let _ = writeln!(s, "## Summary by family\n");
    s.push_str(&summary_markdown(report));
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "## 2D toy sets: test NLL against the true entropy (nats)\n\nThe gap is the test NLL minus a separately estimated entropy; the paired KL takes ln p_data − ln q at the same test points, which cancels most of their noise, so its standard error is the one to read (0 for a perfect model).\n"
    );
    let _ = writeln!(
        s,
        "| model | data set | test NLL ± s.e. | kind | entropy | gap | KL(data ‖ model), paired ± s.e. | network evaluations | steps | train s | params |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|");
    for r in report
        .results
        .iter()
        .filter(|r| toy(r) && r.nll_nats.is_some())
    {
        let _ = writeln!(
            s,
            "| {} {} | {} | {} ± {} | {} | {} ± {} | {} | **{} ± {}** | {} | {} | {:.0} | {} |",
            r.family,
            r.model,
            r.dataset,
            fmt(r.nll_nats, 4),
            fmt(r.nll_stderr, 4),
            r.nll_kind.as_deref().unwrap_or("none"),
            fmt(r.entropy_nats, 4),
            fmt(r.entropy_stderr, 4),
            fmt(r.gap_nats, 4),
            fmt(r.kl_nats, 4),
            fmt(r.kl_stderr, 4),
            count(r.likelihood_evaluations),
            r.steps,
            r.train_seconds,
            r.parameters
        );
    }
    let _ = writeln!(
        s,
        "\n## 2D toy sets: samples against held-out data\n\nEach distance compares {} model samples with held-out data; `floor` is the same distance from as many training examples, what a perfect model scores. Modes: modes covered (a quarter of their fair share within 3σ) and the share of samples within 3σ of a mode.\n",
        report
            .results
            .iter()
            .find_map(|r| r.sample_metrics.as_ref().map(|m| m.n))
            .unwrap_or(0)
    );
    let _ = writeln!(
        s,
        "| model | data set | energy distance (floor) | MMD² (floor) | sliced W2 (floor) | modes | high-quality share (data) | samples/s | warnings |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
    for r in &report.results {
        let Some(m) = &r.sample_metrics else { continue };
        let _ = writeln!(
            s,
            "| {} {} | {} | {:.4} ({:.4}) | {:.5} ({:.5}) | {:.4} ({:.4}) | {} | {} | {:.0} | {} |",
            r.family,
            r.model,
            r.dataset,
            m.energy_distance,
            m.energy_distance_floor,
            m.mmd,
            m.mmd_floor,
            m.sliced_wasserstein,
            m.sliced_wasserstein_floor,
            modes_text(m),
            quality_text(m),
            r.samples_per_second,
            if r.warnings.is_empty() {
                "–".to_string()
            } else {
                r.warnings.join("; ")
            }
        );
    }
    if report.results.iter().any(|r| !r.samplers.is_empty()) {
        let _ = writeln!(
            s,
            "\n## 2D toy sets: samplers\n\nThe same trained model sampled several ways (its default first, as above), each against held-out data like the table above, with the wall time to draw 10,000 samples.\n"
        );
        let _ = writeln!(
            s,
            "| model | data set | sampler | energy distance (floor) | MMD² (floor) | modes | high-quality share (data) | network evaluations | s per 10k samples |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
        for r in report.results.iter().filter(|r| !r.samplers.is_empty()) {
            for v in &r.samplers {
                let Some(m) = &v.sample_metrics else { continue };
                let _ = writeln!(
                    s,
                    "| {} {} | {} | {} | {:.4} ({:.4}) | {:.5} ({:.5}) | {} | {} | {} | {:.1} |",
                    r.family,
                    r.model,
                    r.dataset,
                    v.label,
                    m.energy_distance,
                    m.energy_distance_floor,
                    m.mmd,
                    m.mmd_floor,
                    modes_text(m),
                    quality_text(m),
                    count(v.evaluations),
                    v.seconds_per_10k
                );
            }
        }
    }
    let _ = writeln!(s, "\n## MNIST (9,000 train / 1,000 test digits)\n");
    let _ = writeln!(s, "| model | data | test NLL (nats) | bits/dim | kind | test digits (network evaluations) | Fréchet distance | precision / recall / density / coverage | class shares | conditional accuracy | samples/s (evaluations) | steps | train s | train ex/s | params |");
    let _ = writeln!(
        s,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for r in report
        .results
        .iter()
        .filter(|r| !toy(r) && r.status == "ok")
    {
        let _ =
            writeln!(
            s,
            "| {} {} | {} | {} | {} | {} | {} ({}) | {} | {} | {} | {} | {:.0} ({}) | {} | {:.0} | {:.0} | {} |",
            r.family,
            r.model,
            r.dataset,
            fmt(r.nll_nats, 2),
            fmt(r.bits_per_dim, 4),
            r.nll_kind.as_deref().unwrap_or("none"),
            r.likelihood_examples.map(|n| n.to_string()).unwrap_or_else(|| "–".into()),
            count(r.likelihood_evaluations),
            fmt(r.image_metrics.as_ref().map(|m| m.frechet_distance), 2),
            r.image_metrics
                .as_ref()
                .map(|m| fidelity_text(&m.fidelity))
                .unwrap_or_else(|| "–".into()),
            r.image_metrics
                .as_ref()
                .map(|m| {
                    let (lo, hi) = share_range(&m.class_shares);
                    format!("{lo:.3}–{hi:.3}")
                })
                .unwrap_or_else(|| "–".into()),
            fmt(r.image_metrics.as_ref().and_then(|m| m.conditional_accuracy), 3),
            r.samples_per_second,
            count(r.sample_evaluations),
            r.steps,
            r.train_seconds,
            r.train_examples_per_second,
            r.parameters
        );
    }
    let image_variants: Vec<&RunResult> = report
        .results
        .iter()
        .filter(|r| r.samplers.iter().any(|v| v.image_metrics.is_some()))
        .collect();
    if !image_variants.is_empty() {
        let _ = writeln!(
            s,
            "\nThe same trained models sampled further ways (for a conditional diffusion model, guidance 0 is its unconditional model and 1 its conditional one without guidance):\n"
        );
        let _ = writeln!(s, "| model | sampler | Fréchet distance | precision / recall / density / coverage | class shares | conditional accuracy | network evaluations | s per 10k samples |");
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
        for r in image_variants {
            for v in &r.samplers {
                let Some(m) = &v.image_metrics else { continue };
                let (lo, hi) = share_range(&m.class_shares);
                let _ = writeln!(
                    s,
                    "| {} {} | {} | {:.2} | {} | {lo:.3}–{hi:.3} | {} | {} | {:.0} |",
                    r.family,
                    r.model,
                    v.label,
                    m.frechet_distance,
                    fidelity_text(&m.fidelity),
                    fmt(m.conditional_accuracy, 3),
                    count(v.evaluations),
                    v.seconds_per_10k
                );
            }
        }
    }
    if let Some(m) = report.results.iter().find_map(|r| r.image_metrics.as_ref()) {
        let _ = writeln!(
            s,
            "\nImage metrics use {} samples per model and a digit classifier trained once on the training digits (held-out accuracy {:.3} grey, {:.3} binarised): the Fréchet distance to the held-out digits in its 128 features (held-out against training digits: {:.2}, what a perfect model scores); precision, recall, density and coverage against the held-out digits with 5-nearest-neighbour balls (training digits: {}); the lowest and highest share of any digit among the samples (0.1 each for the data), and for conditional models the share of samples classified as the label they were drawn for.",
            m.n,
            m.classifier_test_accuracy,
            m.classifier_binary_test_accuracy,
            m.frechet_distance_reference,
            fidelity_text(&m.fidelity_reference)
        );
    }
    let _ = writeln!(s, "\n## Costs and capabilities\n");
    s.push_str(&cost_markdown(report));
    let failed: Vec<&RunResult> = report.results.iter().filter(|r| r.status != "ok").collect();
    if !failed.is_empty() {
        let _ = writeln!(s, "\n## Failed runs\n");
        for r in failed {
            let _ = writeln!(
                s,
                "- `{}`: {}",
                r.id,
                r.error.as_deref().unwrap_or("unknown error")
            );
        }
    }
    let _ = writeln!(s, "\n`upper_bound`: the NLL is an upper bound (dequantised flows, ELBO/IWAE); `exact`: exact likelihood.");
    s
}

/// A count, or a dash.
fn count(n: Option<usize>) -> String {
    n.map(|n| n.to_string()).unwrap_or_else(|| "–".into())
}

/// Modes covered of how many, or a dash for data sets without modes.
fn modes_text(m: &crate::metrics::SampleMetrics) -> String {
    match (m.modes_covered, m.modes) {
        (Some(c), Some(k)) => format!("{c}/{k}"),
        _ => "–".into(),
    }
}

/// The share of samples within 3σ of a mode, with the data's own in brackets.
fn quality_text(m: &crate::metrics::SampleMetrics) -> String {
    match (m.high_quality_share, m.high_quality_share_floor) {
        (Some(q), Some(f)) => format!("{q:.3} ({f:.3})"),
        _ => "–".into(),
    }
}

fn fidelity_text(f: &crate::image_metrics::Fidelity) -> String {
    format!(
        "{:.2} / {:.2} / {:.2} / {:.2}",
        f.precision, f.recall, f.density, f.coverage
    )
}

/// The smallest and largest class share.
pub fn share_range(shares: &[f64]) -> (f64, f64) {
    shares
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), &s| (lo.min(s), hi.max(s)))
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The charts written for a report, as paths relative to its folder.
#[derive(Debug, Default)]
pub struct Charts {
    /// Per data set: the likelihood comparison and the quality-against-sampling-time chart.
    pub likelihood: Vec<(String, String)>,
    pub trade_off: Vec<(String, String)>,
    /// Per run id: its training curve.
    pub curves: Vec<(String, String)>,
    /// The sample pictures that exist in the report's folder (only these are linked).
    pub pictures: Vec<String>,
}

impl Charts {
    fn find<'a>(list: &'a [(String, String)], key: &str) -> Option<&'a str> {
        list.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// The data sets of the report's results, in order of first appearance.
fn datasets(report: &Report) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    for r in &report.results {
        if !seen.contains(&r.dataset) {
            seen.push(r.dataset.clone());
        }
    }
    seen
}

fn file_name(id: &str) -> String {
    id.replace(['/', ' '], "_")
}

/// The sample-quality number a data set's trade-off chart plots (lower is better): the energy
/// distance to held-out data on vector data, the Fréchet distance in the digit classifier's
/// features on digits.
fn quality(
    sample: Option<&crate::metrics::SampleMetrics>,
    image: Option<&crate::image_metrics::ImageMetrics>,
) -> Option<(f64, &'static str)> {
    match (sample, image) {
        (Some(m), _) => Some((m.energy_distance, "energy distance to held-out data")),
        (None, Some(m)) => Some((
            m.frechet_distance,
            "Fréchet distance (digit classifier features)",
        )),
        _ => None,
    }
}

/// Draws every chart of the report under `out/charts/` and returns where they are.
fn draw_charts(report: &Report, out: &Path) -> Result<Charts> {
    use crate::charts::{bar_chart, line_chart, scatter_chart, Bar, Point, Series};
    let dir = out.join("charts");
    std::fs::create_dir_all(&dir).map_err(|e| GmError::io(&dir, e))?;
    let mut charts = Charts::default();
    for dataset in datasets(report) {
        let runs: Vec<&RunResult> = report
            .results
            .iter()
            .filter(|r| r.dataset == dataset && r.status == "ok")
            .collect();
        // Likelihoods: the paired KL on toy sets (0 is perfect), bits/dim elsewhere.
        let (bars, label): (Vec<Bar>, &str) = if runs.iter().any(|r| r.kl_nats.is_some()) {
            (
                runs.iter()
                    .filter_map(|r| {
                        Some(Bar {
                            label: format!("{} {}", r.family, r.model),
                            value: r.kl_nats?,
                            stderr: r.kl_stderr,
                            group: r.family.clone(),
                        })
                    })
                    .collect(),
                "KL(data ‖ model), nats (paired estimate ± s.e.; 0 is perfect)",
            )
        } else {
            (
                runs.iter()
                    .filter_map(|r| {
                        let dims = r.nll_nats? / r.bits_per_dim?;
                        Some(Bar {
                            label: format!("{} {}", r.family, r.model),
                            value: r.bits_per_dim?,
                            stderr: r.nll_stderr.map(|se| se / dims),
                            group: r.family.clone(),
                        })
                    })
                    .collect(),
                "test NLL, bits/dim (± s.e.; bounds are upper bounds)",
            )
        };
        if !bars.is_empty() {
            let name = format!("charts/{}_likelihood.svg", file_name(&dataset));
            if bar_chart(
                &out.join(&name),
                &format!("{dataset}: likelihood"),
                label,
                &bars,
            )? {
                charts.likelihood.push((dataset.clone(), name));
            }
        }
        // Sample quality against the time to draw samples, every sampler of every run.
        let mut points = Vec::new();
        let mut y_label = "";
        for r in &runs {
            if let Some((q, what)) = quality(r.sample_metrics.as_ref(), r.image_metrics.as_ref()) {
                y_label = what;
                points.push(Point {
                    label: format!("{} {}", r.family, r.model),
                    x: 10_000.0 / r.samples_per_second.max(1e-12),
                    y: q,
                    group: r.family.clone(),
                });
            }
            for v in &r.samplers {
                if let Some((q, what)) =
                    quality(v.sample_metrics.as_ref(), v.image_metrics.as_ref())
                {
                    y_label = what;
                    points.push(Point {
                        label: format!("{} {} {}", r.family, r.model, v.label),
                        x: v.seconds_per_10k,
                        y: q,
                        group: r.family.clone(),
                    });
                }
            }
        }
        if !points.is_empty() {
            let name = format!("charts/{}_trade_off.svg", file_name(&dataset));
            if scatter_chart(
                &out.join(&name),
                &format!("{dataset}: sample quality against sampling time"),
                "seconds per 10,000 samples (log scale)",
                &format!("{y_label} (lower is better)"),
                true,
                &points,
            )? {
                charts.trade_off.push((dataset.clone(), name));
            }
        }
        for r in &runs {
            if r.curve.len() < 2 {
                continue;
            }
            let loss = r
                .final_stats
                .first()
                .map(|(k, _)| k.clone())
                .unwrap_or_else(|| "loss".into());
            let name = format!("charts/curve_{}.svg", file_name(&r.id));
            if line_chart(
                &out.join(&name),
                &r.id,
                "training step",
                &format!("training {loss}"),
                &[Series {
                    label: loss.clone(),
                    points: r.curve.iter().map(|(s, v)| (*s as f64, *v)).collect(),
                }],
            )? {
                charts.curves.push((r.id.clone(), name));
            }
        }
    }
    Ok(charts)
}

/// One row of the family summary: the usual qualitative comparison, measured.
#[derive(Debug, Clone, Serialize)]
pub struct FamilySummary {
    pub family: String,
    pub runs: usize,
    /// The likelihood kinds measured on its runs.
    pub likelihood_kinds: Vec<String>,
    /// The median paired KL(data ‖ model) over its toy runs, in nats.
    pub toy_kl_median: Option<f64>,
    /// Its best test NLL on each digits data set in bits/dim: `(data set, value, model)`.
    pub best_bits_per_dim: Vec<(String, f64, String)>,
    /// The median over its toy runs of the energy distance minus the data's own floor (the
    /// same distance from as many training points; about 0 is as good as more data). A
    /// difference, not a ratio: the floor's estimate can be 0 or slightly negative.
    pub toy_energy_excess_median: Option<f64>,
    /// Its best Fréchet distance on each digits data set: `(data set, value, model)`.
    pub best_frechet: Vec<(String, f64, String)>,
    /// Median samples per second (default samplers) and the largest number of network
    /// evaluations per sample.
    pub samples_per_second_median: f64,
    pub max_evaluations: Option<usize>,
    /// Median wall seconds to draw one sample alone.
    pub latency_median: f64,
    /// Median training seconds per run.
    pub train_seconds_median: f64,
    /// Whether any run has an encoder, and whether every run with a decoder inverted it.
    pub latent_inference: bool,
    pub invertible: Option<bool>,
    pub worst_reconstruction_error: Option<f64>,
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return None;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    Some(if n % 2 == 1 {
        values[n / 2]
    } else {
        0.5 * (values[n / 2 - 1] + values[n / 2])
    })
}

/// The summary, one row per family, of the successful runs.
pub fn family_summary(report: &Report) -> Vec<FamilySummary> {
    let mut families: Vec<String> = Vec::new();
    for r in report.results.iter().filter(|r| r.status == "ok") {
        if !families.contains(&r.family) {
            families.push(r.family.clone());
        }
    }
    families
        .into_iter()
        .map(|family| {
            let runs: Vec<&RunResult> = report
                .results
                .iter()
                .filter(|r| r.status == "ok" && r.family == family)
                .collect();
            let mut kinds: Vec<String> = Vec::new();
            for r in &runs {
                let k = &r.capabilities.likelihood;
                if !k.is_empty() && !kinds.contains(k) {
                    kinds.push(k.clone());
                }
            }
            // The best value on each data set (binarised and grey digits are not comparable).
            let best = |value: &dyn Fn(&RunResult) -> Option<f64>| {
                let mut found: Vec<(String, f64, String)> = Vec::new();
                for r in &runs {
                    let Some(v) = value(r).filter(|v| v.is_finite()) else {
                        continue;
                    };
                    match found.iter_mut().find(|(d, _, _)| *d == r.dataset) {
                        Some(slot) if v < slot.1 => *slot = (r.dataset.clone(), v, r.model.clone()),
                        Some(_) => {}
                        None => found.push((r.dataset.clone(), v, r.model.clone())),
                    }
                }
                found
            };
            let with_decoder: Vec<&&RunResult> = runs
                .iter()
                .filter(|r| r.capabilities.invertible.is_some())
                .collect();
            FamilySummary {
                runs: runs.len(),
                likelihood_kinds: kinds,
                toy_kl_median: median(runs.iter().filter_map(|r| r.kl_nats).collect()),
                best_bits_per_dim: best(&|r| {
                    if r.entropy_nats.is_none() {
                        r.bits_per_dim
                    } else {
                        None
                    }
                }),
                toy_energy_excess_median: median(
                    runs.iter()
                        .filter_map(|r| r.sample_metrics.as_ref())
                        .map(|m| m.energy_distance - m.energy_distance_floor)
                        .collect(),
                ),
                best_frechet: best(&|r| r.image_metrics.as_ref().map(|m| m.frechet_distance)),
                samples_per_second_median: median(
                    runs.iter().map(|r| r.samples_per_second).collect(),
                )
                .unwrap_or(0.0),
                max_evaluations: runs.iter().filter_map(|r| r.sample_evaluations).max(),
                latency_median: median(
                    runs.iter().map(|r| r.cost.sample_latency_seconds).collect(),
                )
                .unwrap_or(0.0),
                train_seconds_median: median(runs.iter().map(|r| r.train_seconds).collect())
                    .unwrap_or(0.0),
                latent_inference: runs.iter().any(|r| r.capabilities.latent_inference),
                invertible: (!with_decoder.is_empty()).then(|| {
                    with_decoder
                        .iter()
                        .all(|r| r.capabilities.invertible == Some(true))
                }),
                worst_reconstruction_error: with_decoder
                    .iter()
                    .filter_map(|r| r.capabilities.reconstruction_error)
                    .max_by(|a, b| a.total_cmp(b)),
                family,
            }
        })
        .collect()
}

/// `data set: value (model)` for each data set, or a dash.
fn per_data_set(best: &[(String, f64, String)], digits: usize) -> String {
    if best.is_empty() {
        return "–".into();
    }
    best.iter()
        .map(|(d, v, m)| format!("{d}: {v:.digits$} ({m})"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The family summary as a Markdown table, with its legend.
pub fn summary_markdown(report: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "| family | runs | likelihood (measured kind) | toy KL(data ‖ model), median | best digits NLL, bits/dim per data set | toy energy distance above the data floor, median | best digits Fréchet distance per data set | samples/s, median (max evaluations per sample) | one-sample latency, median | training s per run, median | latent inference | invertible (worst relative error) |");
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for f in family_summary(report) {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {:.0} ({}) | {} | {:.0} | {} | {} |",
            f.family,
            f.runs,
            if f.likelihood_kinds.is_empty() {
                "–".into()
            } else {
                f.likelihood_kinds.join(", ")
            },
            fmt(f.toy_kl_median, 3),
            per_data_set(&f.best_bits_per_dim, 3),
            fmt(f.toy_energy_excess_median, 4),
            per_data_set(&f.best_frechet, 2),
            f.samples_per_second_median,
            f.max_evaluations.map_or("1".into(), |n| n.to_string()),
            seconds_text(f.latency_median),
            f.train_seconds_median,
            if f.latent_inference { "yes" } else { "no" },
            match (f.invertible, f.worst_reconstruction_error) {
                (Some(i), Some(e)) => format!("{} ({e:.1e})", if i { "yes" } else { "no" }),
                _ => "–".into(),
            }
        );
    }
    let _ = writeln!(s, "\n{SUMMARY_LEGEND}");
    s
}

const SUMMARY_LEGEND: &str = "Legend: *likelihood* is measured, not declared: `exact mass` / `exact density` when two evaluations of the same test points under different seeds agree and the model reports an exact likelihood, `stochastic estimate` when they differ for an exact likelihood (a Hutchinson divergence), `stochastic bound` when they differ for a bound (importance samples, dequantisation draws, random strata), `bound` otherwise, `none` without one. *KL(data ‖ model)* is the paired estimate on the 2-D toy sets (0 is perfect). *Energy distance above the data floor*: the samples' energy distance to held-out data minus that of as many training points (about 0 is as good as fresh data). *Fréchet distance* in the features of the bench's digit classifier. *Samples/s* with the default sampler (the profile's `toy_samples` points, or 64 digits, per batch); *evaluations* are network passes per sample. *Latency*: wall time to draw one sample alone. *Latent inference*: the model encodes data. *Invertible*: decoding the encoding of 64 held-out examples returns them within a relative error of 1e-3 (worst error in brackets; on discrete data decoding returns levels, so this means every value recovered exactly).";

fn seconds_text(s: f64) -> String {
    if s < 0.01 {
        format!("{:.2} ms", s * 1000.0)
    } else if s < 10.0 {
        format!("{s:.2} s")
    } else {
        format!("{s:.0} s")
    }
}

/// The cost and capability table: one row per run.
fn cost_markdown(report: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "| run | params | train s (this invocation) | train ex/s | peak memory train / eval (MiB) | samples/s | one-sample latency | evaluations per sample | likelihood | estimator | latent inference | reconstruction error | phases: likelihood / sampling / image metrics / samplers / capabilities (s) | code | date |");
    let _ = writeln!(
        s,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for r in report.results.iter().filter(|r| r.status == "ok") {
        let c = &r.capabilities;
        let p = &r.phases;
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} ({:.0}) | {:.0} | {} / {} | {:.0} | {} | {} | {} | {} | {} | {} | {:.1} / {:.1} / {:.1} / {:.1} / {:.1} | {} | {} |",
            r.id,
            r.parameters,
            r.train_seconds,
            p.train,
            r.train_examples_per_second,
            fmt(r.cost.peak_train_mib, 0),
            fmt(r.cost.peak_evaluation_mib, 0),
            r.samples_per_second,
            seconds_text(r.cost.sample_latency_seconds),
            r.sample_evaluations.map_or("1".into(), |n| n.to_string()),
            if c.likelihood.is_empty() { "–" } else { &c.likelihood },
            c.likelihood_estimator.as_deref().unwrap_or("–"),
            if c.latent_inference { "yes" } else { "no" },
            c.reconstruction_error.map_or("–".into(), |e| format!("{e:.1e}")),
            p.likelihood,
            p.sampling,
            p.image_metrics,
            p.samplers,
            p.capabilities,
            r.provenance.code_version.split(' ').skip(2).collect::<Vec<_>>().join(" "),
            r.provenance.date
        );
    }
    s
}

/// The main tables for the terminal at the end of a run: the family summary and, per run, its
/// headline numbers.
pub fn terminal_tables(report: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "\nSummary by family (profile {}):\n", report.profile);
    s.push_str(&summary_markdown(report));
    let _ = writeln!(s, "\nRuns:\n");
    let _ = writeln!(
        s,
        "| run | likelihood | sample quality | samples/s | train s | status |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    for r in &report.results {
        let likelihood = match (r.kl_nats, r.nll_nats, r.bits_per_dim) {
            (Some(kl), _, _) => format!("KL {kl:.3} ± {:.3} nats", r.kl_stderr.unwrap_or(0.0)),
            (None, Some(_), Some(b)) => format!("{b:.3} bits/dim ({})", r.capabilities.likelihood),
            _ => "–".into(),
        };
        let quality = match (&r.sample_metrics, &r.image_metrics) {
            (Some(m), _) => format!(
                "energy {:.4} (floor {:.4})",
                m.energy_distance, m.energy_distance_floor
            ),
            (None, Some(m)) => format!(
                "FD {:.2} (reference {:.2})",
                m.frechet_distance, m.frechet_distance_reference
            ),
            _ => "–".into(),
        };
        let _ = writeln!(
            s,
            "| {} | {likelihood} | {quality} | {:.0} | {:.0} | {} |",
            r.id,
            r.samples_per_second,
            r.train_seconds,
            if r.status == "ok" {
                "ok".to_string()
            } else {
                format!("FAILED: {}", r.error.as_deref().unwrap_or(""))
            }
        );
    }
    s
}

fn provenance_text(report: &Report) -> String {
    let p = report.phase_totals();
    format!(
        "Profile `{}` on {} ({} libtorch threads{}), written {}; {:.0} s of wall time in this invocation. Phases summed over the results: training {:.0} s, likelihood {:.0} s, sampling {:.0} s, image metrics {:.0} s, further samplers {:.0} s, capabilities {:.0} s (a reused result counts what it cost when computed; a resumed run counts only the steps it added). Code: {}.",
        report.profile,
        report.device,
        report.threads,
        if report.jobs > 1 {
            format!(" in each of {} processes side by side", report.jobs)
        } else {
            String::new()
        },
        report.date,
        report.total_seconds,
        p.train,
        p.likelihood,
        p.sampling,
        p.image_metrics,
        p.samplers,
        p.capabilities,
        report.code_version
    )
}

fn md_to_html_table(md: &str) -> String {
    // The Markdown tables of this module are plain pipes without escapes, so they convert line
    // by line; any other line becomes a paragraph.
    let mut s = String::new();
    let mut in_table = false;
    let mut header = true;
    for line in md.lines() {
        let line = line.trim();
        if line.starts_with('|') {
            if !in_table {
                s.push_str("<table>");
                in_table = true;
                header = true;
            }
            let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
            if cells.iter().all(|c| c.chars().all(|ch| ch == '-')) {
                continue;
            }
            let tag = if header { "th" } else { "td" };
            s.push_str("<tr>");
            for c in cells {
                let _ = write!(s, "<{tag}>{}</{tag}>", inline_md(c));
            }
            s.push_str("</tr>");
            header = false;
        } else {
            if in_table {
                s.push_str("</table>");
                in_table = false;
            }
            if !line.is_empty() {
                let _ = write!(s, "<p>{}</p>", inline_md(line));
            }
        }
    }
    if in_table {
        s.push_str("</table>");
    }
    s
}

/// `**bold**`, `*italic*` and `` `code` `` of this module's Markdown, escaped, as HTML.
fn inline_md(text: &str) -> String {
    let escaped = escape(text);
    let mut out = String::new();
    let mut open = [false; 3];
    let mut chars = escaped.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '*' if chars.peek() == Some(&'*') => {
                chars.next();
                out.push_str(if open[0] { "</b>" } else { "<b>" });
                open[0] = !open[0];
            }
            '*' => {
                out.push_str(if open[1] { "</i>" } else { "<i>" });
                open[1] = !open[1];
            }
            '`' => {
                out.push_str(if open[2] { "</code>" } else { "<code>" });
                open[2] = !open[2];
            }
            c => out.push(c),
        }
    }
    for (i, tag) in ["</b>", "</i>", "</code>"].iter().enumerate() {
        if open[i] {
            out.push_str(tag);
        }
    }
    out
}

/// The HTML report: provenance, the family summary, then one section per data set with its
/// table, charts, training curves and sample pictures, and the legends.
pub fn html(report: &Report, charts: &Charts) -> String {
    let mut s = String::from(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>gm benchmark report</title><style>\
         body{font-family:sans-serif;margin:2em;max-width:1600px}table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;font-size:90%}\
         th{background:#f4f4f4}.failed{color:#b00}figure{display:inline-block;margin:0 1em 1em 0}figcaption{font-size:85%;color:#444}</style></head><body>\n<h1>gm benchmark report</h1>\n",
    );
    let _ = writeln!(s, "<p>{}</p>", inline_md(&provenance_text(report)));
    let _ = writeln!(s, "<h2>Summary by family</h2>");
    s.push_str(&md_to_html_table(&summary_markdown(report)));
    for dataset in datasets(report) {
        let _ = writeln!(s, "\n<h2 id=\"{0}\">{0}</h2>", escape(&dataset));
        for (list, caption) in [
            (&charts.likelihood, "Likelihood of each run on this data set."),
            (&charts.trade_off, "Sample quality against the time to draw 10,000 samples, for each run's default sampler and its further samplers."),
        ] {
            if let Some(path) = Charts::find(list, &dataset) {
                let _ = writeln!(
                    s,
                    "<figure><img src=\"{}\" alt=\"{}\"><figcaption>{}</figcaption></figure>",
                    escape(path),
                    escape(caption),
                    escape(caption)
                );
            }
        }
        s.push_str("<table><tr><th>run</th><th>likelihood</th><th>samples against held-out data</th><th>cost</th><th>capabilities</th><th>training curve</th><th>samples</th></tr>\n");
        for r in report.results.iter().filter(|r| r.dataset == dataset) {
            if r.status != "ok" {
                let _ = writeln!(
                    s,
                    "<tr class=\"failed\"><td>{}</td><td colspan=\"6\">failed: {}</td></tr>",
                    escape(&r.id),
                    escape(r.error.as_deref().unwrap_or(""))
                );
                continue;
            }
            let _ = writeln!(
                s,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&r.id),
                likelihood_cell(r),
                samples_cell(r),
                cost_cell(r),
                capability_cell(r),
                Charts::find(&charts.curves, &r.id)
                    .map(|p| format!("<img src=\"{}\" width=\"360\" alt=\"training curve of {}\">", escape(p), escape(&r.id)))
                    .unwrap_or_else(|| "–".into()),
                r.samples_png
                    .as_deref()
                    .filter(|p| charts.pictures.iter().any(|q| q == p))
                    .map(|p| format!("<img src=\"{}\" width=\"280\" alt=\"samples of {}\">", escape(p), escape(&r.id)))
                    .unwrap_or_else(|| "–".into())
            );
        }
        s.push_str("</table>\n");
    }
    let _ = writeln!(s, "<h2>Costs and capabilities of every run</h2>");
    s.push_str(&md_to_html_table(&cost_markdown(report)));
    let _ = writeln!(s, "<h2>Legend</h2>");
    for line in LEGEND {
        let _ = writeln!(s, "<p>{}</p>", inline_md(line));
    }
    s.push_str("</body></html>\n");
    s
}

/// What each column of the HTML report means.
const LEGEND: [&str; 6] = [
    "*Likelihood*: test NLL in nats per example ± its standard error over test examples, bits per dimension, and its measured kind. On the 2-D toy sets, **KL** is the paired estimate of KL(p_data ‖ model), the mean over test points of ln p_data − ln q with its standard error (0 is perfect); the gap to a separately estimated entropy is kept in report.json.",
    "*Samples against held-out data*: on vector data, the energy distance, unbiased MMD² with a sum of Gaussian kernels (bandwidths 0.1, 0.25, 0.5, 1, 2 and 4) and sliced 2-Wasserstein distance (128 projections) between the samples and as many held-out points, with the same distance from training points as the floor; modes covered and the share of samples within 3σ of a mode for mixtures. On digits, the Fréchet distance, precision / recall / density / coverage (5-NN) in the bench classifier's features, against held-out digits, with held-out against training digits as the reference; class shares; for conditional models, the accuracy of samples on their requested labels.",
    "*Cost*: trainable parameters; training seconds over the whole run (resumed runs included) and training examples per second; peak resident memory of the process while training and while evaluating (host memory, MiB); samples per second and network evaluations per sample of the default sampler; the latency of drawing one sample alone.",
    "*Capabilities*: the likelihood kind as measured; latent inference (the model encodes data); the largest relative error of decoding the encoding of 64 held-out examples, and whether it is within 1e-3 (invertible).",
    "*Training curve*: the first logged training statistic against the step (the curve's y range is clipped to robust quantiles so a large first loss does not flatten it).",
    "*Samples*: the default sampler's samples: a scatter plot on the toy sets (as many points as the profile's `toy_samples`), an 8 × 8 grid on digits.",
];

fn likelihood_cell(r: &RunResult) -> String {
    let mut cell = match (r.nll_nats, r.bits_per_dim) {
        (Some(n), Some(b)) => format!(
            "{n:.3} ± {} nats<br>{b:.4} bits/dim<br>{}",
            fmt(r.nll_stderr, 3),
            escape(&r.capabilities.likelihood)
        ),
        _ => "–".into(),
    };
    if let (Some(kl), Some(se)) = (r.kl_nats, r.kl_stderr) {
        let _ = write!(cell, "<br><b>KL {kl:.3} ± {se:.3}</b>");
    }
    if let Some(e) = &r.capabilities.likelihood_estimator {
        let _ = write!(cell, "<br><small>{}</small>", escape(e));
    }
    cell
}

fn samples_cell(r: &RunResult) -> String {
    let mut cell = String::new();
    if let Some(m) = &r.sample_metrics {
        let _ = write!(
            cell,
            "energy {:.4} (floor {:.4})<br>MMD² {:.5} (floor {:.5})<br>sliced W2 {:.4} (floor {:.4})",
            m.energy_distance,
            m.energy_distance_floor,
            m.mmd,
            m.mmd_floor,
            m.sliced_wasserstein,
            m.sliced_wasserstein_floor
        );
        if let (Some(c), Some(k), Some(q)) = (m.modes_covered, m.modes, m.high_quality_share) {
            let _ = write!(cell, "<br>modes {c}/{k}, high quality {q:.3}");
        }
    }
    if let Some(m) = &r.image_metrics {
        let (lo, hi) = share_range(&m.class_shares);
        let _ = write!(
            cell,
            "Fréchet distance {:.2} (reference {:.2})<br>P/R/D/C {}<br>class shares {lo:.3}–{hi:.3}",
            m.frechet_distance,
            m.frechet_distance_reference,
            fidelity_text(&m.fidelity)
        );
        if let Some(a) = m.conditional_accuracy {
            let _ = write!(cell, "<br>conditional accuracy {a:.3}");
        }
    }
    for v in &r.samplers {
        match (&v.error, &v.sample_metrics, &v.image_metrics) {
            (Some(e), _, _) => {
                let _ = write!(
                    cell,
                    "<br>{}: <span class=\"failed\">{}</span>",
                    escape(&v.label),
                    escape(e)
                );
            }
            (None, Some(m), _) => {
                let _ = write!(
                    cell,
                    "<br>{}: energy {:.4}, {:.1} s/10k",
                    escape(&v.label),
                    m.energy_distance,
                    v.seconds_per_10k
                );
            }
            (None, None, Some(m)) => {
                let _ = write!(
                    cell,
                    "<br>{}: FD {:.2}, {:.0} s/10k",
                    escape(&v.label),
                    m.frechet_distance,
                    v.seconds_per_10k
                );
            }
            _ => {}
        }
    }
    for w in &r.warnings {
        let _ = write!(cell, "<br><span class=\"failed\">{}</span>", escape(w));
    }
    if cell.is_empty() {
        "–".into()
    } else {
        cell
    }
}

fn cost_cell(r: &RunResult) -> String {
    format!(
        "{} params<br>{} steps, {:.0} s train ({:.0} ex/s)<br>peak {} / {} MiB<br>{:.0} samples/s, {} evaluations<br>one sample: {}",
        r.parameters,
        r.steps,
        r.train_seconds,
        r.train_examples_per_second,
        fmt(r.cost.peak_train_mib, 0),
        fmt(r.cost.peak_evaluation_mib, 0),
        r.samples_per_second,
        r.sample_evaluations.map_or("1".into(), |n| n.to_string()),
        seconds_text(r.cost.sample_latency_seconds)
    )
}

fn capability_cell(r: &RunResult) -> String {
    let c = &r.capabilities;
    let mut cell = format!(
        "latent inference: {}<br>invertible: {}",
        if c.latent_inference { "yes" } else { "no" },
        match (c.invertible, c.reconstruction_error) {
            (Some(i), Some(e)) => format!("{} (error {e:.1e})", if i { "yes" } else { "no" }),
            _ => "–".into(),
        }
    );
    if let Some(e) = &c.error {
        let _ = write!(cell, "<br><span class=\"failed\">{}</span>", escape(e));
    }
    cell
}
