//! `gm`: the gm command-line tool.

use clap::{Parser, Subcommand};
use gm_bench::classifier::DigitClassifier;
use gm_bench::report::{self, Report};
use gm_bench::runner::{failed_result, run_entry, stored_result, RunResult};
use gm_bench::suite::{registry, suite, suite_from, Entry, Profile, Shard};
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
        /// Only run entries whose id contains this text starting at a component, i.e. at its
        /// start or after a `/` (`diffusion/` selects the diffusion family, not
        /// `masked_diffusion/...`; `flow/nsf`, `eight_gaussians`).
        #[arg(long)]
        only: Option<String>,
        /// A suite file instead of the built-in `crates/gm-bench/suite.toml`.
        #[arg(long)]
        suite: Option<PathBuf>,
        /// Run only the K-th of N deterministic shares of the entries (`--shard 3/8`), e.g. one
        /// per task of a Slurm array or a Kubernetes indexed Job; merge with `gm report`.
        #[arg(long)]
        shard: Option<String>,
    },
    /// Merge the results in the output folders of several `bench-all` runs (shards, or runs on
    /// other machines) into one report.
    Report {
        /// The result folders to merge (each a `bench-all --out` folder).
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        #[arg(long, default_value = "quick")]
        profile: String,
        #[arg(long, default_value = "target/gm-report")]
        out: PathBuf,
        #[arg(long)]
        suite: Option<PathBuf>,
    },
    /// List the entries of a profile.
    List {
        #[arg(long, default_value = "quick")]
        profile: String,
        #[arg(long)]
        suite: Option<PathBuf>,
    },
    /// List the registered families and their shipped run files.
    ListConfigs,
}

/// The entries of `profile` from `suite_file`, or from the built-in suite.
fn load_suite(profile: Profile, suite_file: Option<&PathBuf>) -> gm_core::Result<Vec<Entry>> {
    match suite_file {
        None => suite(profile),
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| gm_core::GmError::io(path, e))?;
            suite_from(&text, &path.display().to_string(), profile, &registry())
        }
    }
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
        Command::ListConfigs => {
            let registry = registry();
            println!("families: {}", registry.families().join(", "));
            for name in registry.shipped_names() {
                println!("{name}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::List { profile, suite } => {
            for e in load_suite(profile.parse()?, suite.as_ref())? {
                println!(
                    "{}  ({} steps, batch {})",
                    e.id, e.run.train.steps, e.run.train.batch_size
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::BenchAll {
            profile,
            out,
            only,
            suite,
            shard,
        } => {
            let shard = shard.map(|s| s.parse::<Shard>()).transpose()?;
            bench_all(profile.parse()?, &profile, out, only, suite, shard)
        }
        Command::Report {
            dirs,
            profile,
            out,
            suite,
        } => merge_reports(profile.parse()?, &profile, &dirs, out, suite),
    }
}

fn bench_all(
    profile: Profile,
    name: &str,
    out: PathBuf,
    only: Option<String>,
    suite_file: Option<PathBuf>,
    shard: Option<Shard>,
) -> gm_core::Result<ExitCode> {
    let device = gm_core::device::default_device()?;
    let all = load_suite(profile, suite_file.as_ref())?;
    let entries: Vec<&Entry> = all
        .iter()
        .enumerate()
        .filter(|(i, _)| shard.is_none_or(|s| s.contains(*i)))
        .map(|(_, e)| e)
        .filter(|e| {
            only.as_deref()
                .is_none_or(|o| gm_bench::suite::id_matches(&e.id, o))
        })
        .collect();
    if entries.is_empty() {
        return Err(gm_core::GmError::config(
            "only",
            format!(
                "no entry of profile {name} matches {:?}; `gm list --profile {name}` shows the ids",
                only.unwrap_or_default()
            ),
        ));
    }
    let _lock = OutputLock::acquire(&out)?;
    eprintln!(
        "gm bench-all: profile {name}, {} of {} runs, device {device:?}, report in {}",
        entries.len(),
        all.len(),
        out.display()
    );
    let started = Instant::now();
    let bar = indicatif::ProgressBar::new(entries.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    let mut data_cache: HashMap<String, NamedData> = HashMap::new();
    let mut fresh: HashMap<String, RunResult> = HashMap::new();
    let mut classifier: Option<gm_core::Result<DigitClassifier>> = None;
    for entry in &entries {
        bar.set_message(entry.id.clone());
        if !data_cache.contains_key(&entry.dataset) {
            match load_named(&entry.dataset, device, 50_000, 20_000, 0) {
                Ok(d) => {
                    data_cache.insert(entry.dataset.clone(), d);
                }
                Err(e) => {
                    let result = failed_result(
                        entry,
                        format!("cannot load data set {}: {e}", entry.dataset),
                    );
                    bar.suspend(|| {
                        eprintln!(
                            "{}: FAILED: {}",
                            entry.id,
                            result.error.as_deref().unwrap_or("")
                        )
                    });
                    fresh.insert(entry.id.clone(), result);
                    bar.inc(1);
                    continue;
                }
            }
        }
        let data = &data_cache[&entry.dataset];
        // The digit classifier judges image samples; trained once, cached in the data folder.
        if classifier.is_none() && data.toy.is_none() && data.event_shape == [1, 28, 28] {
            bar.set_message(format!("{}: loading the digit classifier", entry.id));
            classifier = Some(
                gm_core::data::mnist::Mnist::load_default()
                    .and_then(|m| DigitClassifier::load_or_train(&m)),
            );
        }
        let judge = match &classifier {
            Some(Ok(c)) if data.toy.is_none() => Some(c),
            Some(Err(e)) if data.toy.is_none() => {
                bar.suspend(|| {
                    eprintln!(
                        "{}: no image metrics: the digit classifier failed: {e}",
                        entry.id
                    )
                });
                None
            }
            _ => None,
        };
        let result = run_entry(entry, data, &out, device, judge);
        bar.suspend(|| eprintln!("{}", summary_line(entry, &result)));
        fresh.insert(entry.id.clone(), result);
        bar.inc(1);
        // Rewrite the report after every run, so an interrupted benchmark still leaves one.
        write_report(&all, &fresh, name, device, started, &out)?;
    }
    bar.finish_and_clear();
    let reported = write_report(&all, &fresh, name, device, started, &out)?;
    eprintln!(
        "wrote {}/report.md, report.json and index.html ({reported} of the profile's {} runs have results)",
        out.display(),
        all.len()
    );
    let failed: Vec<&str> = entries
        .iter()
        .filter(|e| fresh.get(&e.id).is_none_or(|r| r.status != "ok"))
        .map(|e| e.id.as_str())
        .collect();
    if failed.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "gm bench-all: {} of {} runs failed: {}",
            failed.len(),
            entries.len(),
            failed.join(", ")
        );
        Ok(ExitCode::from(2))
    }
}

/// `gm report`: every entry of the profile whose finished result is stored in one of `dirs`
/// (the first folder that has it), written as one report in `out`, with the sample pictures
/// copied there. Errors if no folder holds any result.
fn merge_reports(
    profile: Profile,
    name: &str,
    dirs: &[PathBuf],
    out: PathBuf,
    suite_file: Option<PathBuf>,
) -> gm_core::Result<ExitCode> {
    let all = load_suite(profile, suite_file.as_ref())?;
    let mut results = Vec::new();
    let mut missing = Vec::new();
    std::fs::create_dir_all(out.join("images")).map_err(|e| gm_core::GmError::io(&out, e))?;
    for entry in &all {
        let found = dirs
            .iter()
            .find_map(|d| stored_result(entry, d).map(|r| (d, r)));
        match found {
            Some((dir, result)) => {
                if let Some(png) = &result.samples_png {
                    let (from, to) = (dir.join(png), out.join(png));
                    if from.exists() && from != to {
                        std::fs::copy(&from, &to).map_err(|e| gm_core::GmError::io(&from, e))?;
                    }
                }
                results.push(result);
            }
            None => missing.push(entry.id.as_str()),
        }
    }
    if results.is_empty() {
        return Err(gm_core::GmError::config(
            "report",
            format!(
                "none of {} holds a finished result of profile {name}",
                dirs.iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    let n = results.len();
    report::write(
        &Report {
            profile: name.to_string(),
            device: "merged".into(),
            threads: gm_core::tch::get_num_threads(),
            total_seconds: results.iter().map(|r| r.train_seconds).sum(),
            results,
        },
        &out,
    )?;
    eprintln!(
        "gm report: {n} of the profile's {} runs merged into {}/report.md, report.json and index.html",
        all.len(),
        out.display()
    );
    if !missing.is_empty() {
        eprintln!("gm report: no result yet for {}", missing.join(", "));
    }
    Ok(ExitCode::SUCCESS)
}

/// The image metrics of a result for its summary line, or nothing.
fn image_summary(result: &RunResult) -> String {
    match &result.image_metrics {
        Some(m) => {
            let (lo, hi) = gm_bench::report::share_range(&m.class_shares);
            let accuracy = m
                .conditional_accuracy
                .map(|a| format!(", conditional accuracy {a:.3}"))
                .unwrap_or_default();
            format!(
                ", Fréchet distance {:.2} (reference {:.2}), class shares {lo:.3}–{hi:.3}{accuracy}",
                m.frechet_distance, m.frechet_distance_reference
            )
        }
        None => String::new(),
    }
}

fn summary_line(entry: &Entry, result: &RunResult) -> String {
    match (&result.status[..], result.nll_nats, result.gap_nats) {
        ("ok", Some(n), Some(g)) => format!(
            "{}: NLL {n:.4} nats, gap to entropy {g:.4} ({:.0} s)",
            entry.id, result.train_seconds
        ),
        ("ok", Some(n), None) => format!(
            "{}: NLL {n:.2} nats, {:.4} bits/dim{} ({:.0} s)",
            entry.id,
            result.bits_per_dim.unwrap_or(0.0),
            image_summary(result),
            result.train_seconds
        ),
        ("ok", None, _) => match &result.sample_metrics {
            Some(m) => format!(
                "{}: energy distance {:.4} (data floor {:.4}){} ({:.0} s)",
                entry.id,
                m.energy_distance,
                m.energy_distance_floor,
                match (m.modes_covered, m.modes, m.high_quality_share) {
                    (Some(c), Some(k), Some(q)) =>
                        format!(", modes {c}/{k}, high-quality share {q:.3}"),
                    _ => String::new(),
                },
                result.train_seconds
            ),
            None => format!(
                "{}: done{} ({:.0} s)",
                entry.id,
                image_summary(result),
                result.train_seconds
            ),
        },
        _ => format!(
            "{}: FAILED: {}",
            entry.id,
            result.error.as_deref().unwrap_or("")
        ),
    }
}

/// Writes the report from every result of the profile: this invocation's, and the stored
/// results of entries it did not run (an `--only` run adds to the report instead of replacing
/// it). Returns how many entries have a result.
fn write_report(
    all: &[Entry],
    fresh: &HashMap<String, RunResult>,
    profile: &str,
    device: gm_core::tch::Device,
    started: Instant,
    out: &std::path::Path,
) -> gm_core::Result<usize> {
    let results: Vec<RunResult> = all
        .iter()
        .filter_map(|e| fresh.get(&e.id).cloned().or_else(|| stored_result(e, out)))
        .collect();
    let n = results.len();
    report::write(
        &Report {
            profile: profile.to_string(),
            device: format!("{device:?}"),
            threads: gm_core::tch::get_num_threads(),
            total_seconds: started.elapsed().as_secs_f64(),
            results,
        },
        out,
    )?;
    Ok(n)
}

/// One `gm bench-all` at a time per output folder: a lock file holding the owner's process id,
/// removed when the run ends. A lock left by a process that no longer runs is taken over.
struct OutputLock {
    path: PathBuf,
}

impl OutputLock {
    fn acquire(out: &std::path::Path) -> gm_core::Result<Self> {
        std::fs::create_dir_all(out).map_err(|e| gm_core::GmError::io(out, e))?;
        let path = out.join(".gm-bench.lock");
        // The lock appears with its owner's id already in it (written to a private file, then
        // hard-linked into place, which fails if the lock exists), so no reader sees it empty.
        let mine = out.join(format!(".gm-bench.lock.{}", std::process::id()));
        std::fs::write(&mine, std::process::id().to_string())
            .map_err(|e| gm_core::GmError::io(&mine, e))?;
        let taken = (|| {
            for _ in 0..2 {
                match std::fs::hard_link(&mine, &path) {
                    Ok(()) => return Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        let owner = std::fs::read_to_string(&path).unwrap_or_default();
                        if process_alive(owner.trim()) {
                            return Err(gm_core::GmError::io(
                                &path,
                                std::io::Error::other(format!(
                                    "another gm bench-all (process {}) is writing to {}; wait for it to finish or choose another --out",
                                    owner.trim(),
                                    out.display()
                                )),
                            ));
                        }
                        // A stale lock from a process that is gone: take it over.
                        let _ = std::fs::remove_file(&path);
                    }
                    Err(e) => return Err(gm_core::GmError::io(&path, e)),
                }
            }
            Err(gm_core::GmError::io(
                &path,
                std::io::Error::other("could not take the output folder's lock"),
            ))
        })();
        let _ = std::fs::remove_file(&mine);
        taken?;
        release_lock_on_interrupt(&path);
        Ok(OutputLock { path })
    }
}

/// Whether process `pid` (as text) exists: `kill -0`, which works wherever `kill` does.
fn process_alive(pid: &str) -> bool {
    match pid.parse::<u32>() {
        Ok(pid) if pid != std::process::id() => std::process::Command::new("kill")
            .args(["-0", &pid.to_string()])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success()),
        _ => false,
    }
}

/// On an interrupt or termination signal, removes the lock and exits with status 130: a run's
/// checkpoints are written atomically, so stopping between them loses nothing, and the next
/// invocation resumes.
fn release_lock_on_interrupt(path: &std::path::Path) {
    let path = path.to_path_buf();
    let _ = ctrlc::set_handler(move || {
        let _ = std::fs::remove_file(&path);
        eprintln!(
            "gm bench-all: interrupted; finished runs and checkpoints are kept, rerun to resume"
        );
        // `_exit`, not `exit`: running the process's exit handlers would tear libtorch down
        // while the main thread is still training, and the run in progress would be recorded
        // as failed with a spurious libtorch error.
        // SAFETY: `_exit` ends the process at once; nothing runs after it.
        unsafe { libc::_exit(130) }
    });
}

impl Drop for OutputLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
