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
        "## 2D toy sets: test NLL against the true entropy (nats)\n"
    );
    let _ = writeln!(
        s,
        "| model | data set | test NLL | entropy | gap | steps | train s | params |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
    for r in report.results.iter().filter(|r| toy(r)) {
        let _ = writeln!(
            s,
            "| {} {} | {} | {} | {} ± {} | **{}** | {} | {:.0} | {} |",
            r.family,
            r.model,
            r.dataset,
            fmt(r.nll_nats, 4),
            fmt(r.entropy_nats, 4),
            fmt(r.entropy_stderr, 4),
            fmt(r.gap_nats, 4),
            r.steps,
            r.train_seconds,
            r.parameters
        );
    }
    let _ = writeln!(s, "\n## MNIST (9,000 train / 1,000 test digits)\n");
    let _ = writeln!(s, "| model | data | test NLL (nats) | bits/dim | kind | steps | train s | train ex/s | params |");
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
    for r in report
        .results
        .iter()
        .filter(|r| !toy(r) && r.status == "ok")
    {
        let _ = writeln!(
            s,
            "| {} {} | {} | {} | {} | {} | {} | {:.0} | {:.0} | {} |",
            r.family,
            r.model,
            r.dataset,
            fmt(r.nll_nats, 2),
            fmt(r.bits_per_dim, 4),
            r.nll_kind.as_deref().unwrap_or("none"),
            r.steps,
            r.train_seconds,
            r.train_examples_per_second,
            r.parameters
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
    s.push_str("<table><tr><th>run</th><th>test NLL (nats)</th><th>bits/dim</th><th>kind</th><th>entropy / gap</th><th>steps</th><th>train s</th><th>params</th><th>training curve</th><th>samples</th></tr>");
    for r in &report.results {
        if r.status != "ok" {
            let _ = write!(
                s,
                "<tr class=\"failed\"><td>{}</td><td colspan=\"9\">failed: {}</td></tr>",
                escape(&r.id),
                escape(r.error.as_deref().unwrap_or(""))
            );
            continue;
        }
        let entropy = match (r.entropy_nats, r.gap_nats) {
            (Some(h), Some(g)) => format!("{h:.3} / <b>{g:.3}</b>"),
            _ => "–".into(),
        };
        let img = r
            .samples_png
            .as_deref()
            .map(|p| format!("<img src=\"{}\" width=\"160\">", escape(p)))
            .unwrap_or_default();
        let _ = write!(
            s,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.0}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&r.id), fmt(r.nll_nats, 3), fmt(r.bits_per_dim, 4), r.nll_kind.as_deref().unwrap_or("none"),
            entropy, r.steps, r.train_seconds, r.parameters, svg_curve(&r.curve), img
        );
    }
    s.push_str("</table></body></html>\n");
    s
}
