//! The report: `report.json` (everything), `report.md` (tables), `index.html` (tables, sample
//! pictures and training curves as inline SVG).

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
    pub total_seconds: f64,
    pub results: Vec<RunResult>,
}

fn fmt(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}"))
        .unwrap_or_else(|| "–".into())
}

/// Writes the three files into `out`.
pub fn write(report: &Report, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| GmError::io(out, e))?;
    let json =
        serde_json::to_vec_pretty(report).map_err(|e| GmError::config("report", e.to_string()))?;
    write_file(&out.join("report.json"), &json)?;
    write_file(&out.join("report.md"), markdown(report).as_bytes())?;
    write_file(&out.join("index.html"), html(report).as_bytes())
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
        "Profile `{}` on {} ({} threads), {:.0} s in all. Every number below was measured by `cargo xtask bench-all` with this profile; a run whose configuration did not change since an earlier invocation is reused from that one (see `runs/`).\n",
        report.profile, report.device, report.threads, report.total_seconds
    );
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

/// A training curve as an inline SVG polyline.
fn svg_curve(curve: &[(u64, f64)]) -> String {
    if curve.len() < 2 {
        return String::new();
    }
    let (w, h) = (220.0, 80.0);
    let max_step = curve.last().map(|c| c.0).unwrap_or(1).max(1) as f64;
    let lo = curve.iter().map(|c| c.1).fold(f64::INFINITY, f64::min);
    let hi = curve.iter().map(|c| c.1).fold(f64::NEG_INFINITY, f64::max);
    let span = (hi - lo).max(1e-12);
    let pts: Vec<String> = curve
        .iter()
        .map(|(s, v)| {
            format!(
                "{:.1},{:.1}",
                *s as f64 / max_step * w,
                h - (v - lo) / span * h
            )
        })
        .collect();
    format!(
        "<svg width=\"{w}\" height=\"{h}\" viewBox=\"-2 -2 {} {}\"><polyline fill=\"none\" stroke=\"#2a6\" stroke-width=\"1.5\" points=\"{}\"/></svg><br><small>loss {hi:.3} → {:.3}</small>",
        w + 4.0,
        h + 4.0,
        pts.join(" "),
        curve.last().map(|c| c.1).unwrap_or(0.0)
    )
}

pub fn html(report: &Report) -> String {
    let mut s = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>gm benchmark report</title><style>\
         body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}\
         th{background:#f4f4f4}.failed{color:#b00}</style></head><body><h1>gm benchmark report</h1>",
    );
    let _ = write!(
        s,
        "<p>Profile <code>{}</code> on {} ({} threads), {:.0} s in all.</p>",
        escape(&report.profile),
        escape(&report.device),
        report.threads,
        report.total_seconds
    );
    s.push_str("<table><tr><th>run</th><th>test NLL (nats)</th><th>bits/dim</th><th>kind</th><th>entropy / gap</th><th>samples vs held-out data</th><th>steps</th><th>train s</th><th>params</th><th>training curve</th><th>samples</th></tr>");
    for r in &report.results {
        if r.status != "ok" {
            let _ = write!(
                s,
                "<tr class=\"failed\"><td>{}</td><td colspan=\"10\">failed: {}</td></tr>",
                escape(&r.id),
                escape(r.error.as_deref().unwrap_or(""))
            );
            continue;
        }
        let entropy = match (r.entropy_nats, r.gap_nats) {
            (Some(h), Some(g)) => format!("{h:.3} / <b>{g:.3}</b>"),
            _ => "–".into(),
        };
        let mut sample_cell = r
            .sample_metrics
            .as_ref()
            .map(|m| {
                let modes = match (m.modes_covered, m.modes, m.high_quality_share) {
                    (Some(c), Some(k), Some(q)) => {
                        format!("<br>modes {c}/{k}, high quality {q:.3}")
                    }
                    _ => String::new(),
                };
                format!(
                    "energy {:.4} (floor {:.4})<br>MMD² {:.5} (floor {:.5}){modes}",
                    m.energy_distance, m.energy_distance_floor, m.mmd, m.mmd_floor
                )
            })
            .unwrap_or_else(|| "–".into());
        if let Some(m) = &r.image_metrics {
            let (lo, hi) = share_range(&m.class_shares);
            if sample_cell == "–" {
                sample_cell.clear();
            }
            let _ = write!(
                sample_cell,
                "Fréchet distance {:.2} (reference {:.2})<br>class shares {lo:.3}–{hi:.3}",
                m.frechet_distance, m.frechet_distance_reference
            );
            if let Some(a) = m.conditional_accuracy {
                let _ = write!(sample_cell, "<br>conditional accuracy {a:.3}");
            }
        }
        for w in &r.warnings {
            let _ = write!(
                sample_cell,
                "<br><span class=\"failed\">{}</span>",
                escape(w)
            );
        }
        let img = r
            .samples_png
            .as_deref()
            .map(|p| format!("<img src=\"{}\" width=\"160\">", escape(p)))
            .unwrap_or_default();
        let _ = write!(
            s,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.0}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&r.id), fmt(r.nll_nats, 3), fmt(r.bits_per_dim, 4), r.nll_kind.as_deref().unwrap_or("none"),
            entropy, sample_cell, r.steps, r.train_seconds, r.parameters, svg_curve(&r.curve), img
        );
    }
    s.push_str("</table></body></html>\n");
    s
}
