//! `gm`: the gm command-line tool.

use clap::{Parser, Subcommand};
use gm_bench::report::{self, Report};
use gm_bench::runner::run_entry;
use gm_bench::suite::{suite, Profile};
use gm_core::data::{load_named, NamedData};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

#[derive(Parser)]
#[command(name = "gm", version, about = "gm: deep generative models on libtorch")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train and evaluate every family on every suitable data set; write the report.
    BenchAll {
        /// quick (~10 min on 2 CPU cores), default (~1 h), or full (for a GPU).
        #[arg(long, default_value = "quick")]
        profile: String,
        #[arg(long, default_value = "target/gm-report")]
        out: PathBuf,
        /// Only run entries whose id contains this text (e.g. `flow/nsf`).
        #[arg(long)]
        only: Option<String>,
    },
    /// List the entries of a profile.
    List {
        #[arg(long, default_value = "quick")]
        profile: String,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gm: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> gm_core::Result<ExitCode> {
    match cli.command {
        Command::List { profile } => {
            for e in suite(profile.parse()?)? {
                println!(
                    "{}  ({} steps, batch {})",
                    e.id, e.run.train.steps, e.run.train.batch_size
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::BenchAll { profile, out, only } => {
            bench_all(profile.parse()?, &profile, out, only)
        }
    }
}

fn bench_all(
    profile: Profile,
    name: &str,
    out: PathBuf,
    only: Option<String>,
) -> gm_core::Result<ExitCode> {
    let device = gm_core::device::default_device()?;
    let entries: Vec<_> = suite(profile)?
        .into_iter()
        .filter(|e| only.as_deref().is_none_or(|o| e.id.contains(o)))
        .collect();
    eprintln!(
        "gm bench-all: profile {name}, {} runs, device {device:?}, report in {}",
        entries.len(),
        out.display()
    );
    let started = Instant::now();
    let bar = indicatif::ProgressBar::new(entries.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let mut data_cache: HashMap<String, NamedData> = HashMap::new();
    let mut results = Vec::new();
    for entry in &entries {
        bar.set_message(entry.id.clone());
        if !data_cache.contains_key(&entry.dataset) {
            match load_named(&entry.dataset, device, 50_000, 20_000, 0) {
                Ok(d) => {
                    data_cache.insert(entry.dataset.clone(), d);
                }
                Err(e) => {
                    bar.suspend(|| eprintln!("{}: cannot load {}: {e}", entry.id, entry.dataset));
                    bar.inc(1);
                    continue;
                }
            }
        }
        let result = run_entry(entry, &data_cache[&entry.dataset], &out, device);
        let line = match (&result.status[..], result.nll_nats, result.gap_nats) {
            ("ok", Some(n), Some(g)) => format!(
                "{}: NLL {n:.4} nats, gap to entropy {g:.4} ({:.0} s)",
                entry.id, result.train_seconds
            ),
            ("ok", Some(n), None) => format!(
                "{}: NLL {n:.2} nats, {:.4} bits/dim ({:.0} s)",
                entry.id,
                result.bits_per_dim.unwrap_or(0.0),
                result.train_seconds
            ),
            ("ok", None, _) => format!("{}: done", entry.id),
            _ => format!(
                "{}: FAILED: {}",
                entry.id,
                result.error.as_deref().unwrap_or("")
            ),
        };
        bar.suspend(|| eprintln!("{line}"));
        results.push(result);
        bar.inc(1);
        // Write the report after every run, so an interrupted benchmark still leaves one.
        report::write(
            &Report {
                profile: name.to_string(),
                device: format!("{device:?}"),
                threads: gm_core::tch::get_num_threads(),
                total_seconds: started.elapsed().as_secs_f64(),
                results: results.clone(),
            },
            &out,
        )?;
    }
    bar.finish_and_clear();
    eprintln!(
        "wrote {}/report.md, report.json and index.html",
        out.display()
    );
    let failures = results.iter().filter(|r| r.status != "ok").count();
    Ok(if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}
