//! `gm`: the gm command-line tool.

use clap::{Parser, Subcommand};
use gm_bench::classifier::DigitClassifier;
use gm_bench::report::{self, Report};
use gm_bench::runner::{failed_result, recorded_result, run_entry, stored_result, RunResult};
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
        /// quick (10 min on 2 CPU cores), default (1 h), or full (for a GPU).
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
        /// Run this many shares side by side, each in its own process with its share of the
        /// cores as libtorch threads (1: one run at a time with all cores). Default: one process
        /// per core (up to 8) on a CPU, which measured 1.22× faster than one process with two
        /// threads for the quick profile on 2 cores; 1 on a GPU or with `--shard`.
        #[arg(long)]
        jobs: Option<usize>,
        /// libtorch's intra-op threads (default: libtorch's choice, one per core).
        #[arg(long)]
        threads: Option<i32>,
        /// Internal: a share started by `--jobs`; it neither locks nor writes the report.
        #[arg(long, hide = true)]
        worker: bool,
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
    /// Train one model from a run file (a shipped name such as `vae/mnist_mlp`, see `gm list`,
    /// or a path ending in .toml), resuming from the checkpoint in `--out` if there is one.
    Train {
        config: String,
        /// The folder for `checkpoint.safetensors` and `config.toml`.
        #[arg(long)]
        out: Option<PathBuf>,
        /// A step budget instead of the run file's (its schedules rescale with it).
        #[arg(long)]
        steps: Option<u64>,
        /// A data set instead of the run file's.
        #[arg(long)]
        dataset: Option<String>,
    },
    /// Draw samples from a checkpoint and save them as a picture (an image grid, or a scatter
    /// plot for 2-D data), or for text as a text file (`.txt` in place of `.png`).
    Sample {
        checkpoint: PathBuf,
        #[arg(long, default_value_t = 64)]
        n: i64,
        #[arg(long, default_value = "samples.png")]
        out: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// The sampler of an iterative model (e.g. ddim, dpm_solver_2m, euler, rk4).
        #[arg(long)]
        solver: Option<String>,
        /// The sampler's steps.
        #[arg(long)]
        steps: Option<usize>,
        #[arg(long)]
        temperature: Option<f64>,
        /// Keep the k most likely values of each autoregressive draw.
        #[arg(long)]
        top_k: Option<i64>,
        /// Keep the smallest most likely set of values with probability p (nucleus sampling).
        #[arg(long)]
        top_p: Option<f64>,
        /// Classifier-free guidance scale of a conditional diffusion model.
        #[arg(long)]
        guidance: Option<f64>,
    },
    /// Beam search with a sequence model (transformer, lstm) of text or other discrete
    /// sequences: prints the best continuations of a prompt with their log-probabilities.
    Beam {
        checkpoint: PathBuf,
        /// Hypotheses kept per step and printed.
        #[arg(long, default_value_t = 4)]
        width: usize,
        /// Values (bytes of text) to generate after the prompt.
        #[arg(long, default_value_t = 120)]
        length: i64,
        /// The prompt (text, fed as bytes; values separated by commas for other data).
        #[arg(long, default_value = "")]
        prompt: String,
        /// A value that ends a hypothesis (for text, a character such as a newline: "\n").
        #[arg(long)]
        end_value: Option<String>,
        /// α of the length normalisation ln p / len^α.
        #[arg(long)]
        length_penalty: Option<f64>,
    },
    /// Evaluate one checkpoint the way `bench-all` does; prints the result as JSON.
    Eval {
        checkpoint: PathBuf,
        /// Where the samples picture goes.
        #[arg(long, default_value = "target/gm-eval")]
        out: PathBuf,
        /// Evaluate the likelihood on the first N test examples only.
        #[arg(long)]
        examples: Option<i64>,
        /// Samples to draw and judge (digits for the image metrics, points on a toy set);
        /// the default profile's sizes when left out.
        #[arg(long)]
        samples: Option<i64>,
    },
    /// The registered families, shipped run files and data sets; with `--profile`, the entries
    /// of that benchmark profile.
    List {
        #[arg(long)]
        profile: Option<String>,
        #[arg(long)]
        suite: Option<PathBuf>,
    },
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
    gm_bench::memory::keep_freed_memory();
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
        Command::List { profile, suite } => {
            let registry = registry();
            println!("families: {}", registry.families().join(", "));
            println!("data sets: {}", gm_core::data::DATASET_NAMES.join(", "));
            println!("shipped run files (gm train NAME):");
            for name in registry.shipped_names() {
                println!("  {name}");
            }
            if let Some(profile) = profile {
                println!("entries of profile {profile}:");
                for e in load_suite(profile.parse()?, suite.as_ref())? {
                    println!(
                        "  {}  ({} steps, batch {})",
                        e.id, e.run.train.steps, e.run.train.batch_size
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::BenchAll {
            profile,
            out,
            only,
            suite,
            shard,
            jobs,
            threads,
            worker,
        } => {
            if let Some(t) = threads {
                if t < 1 {
                    return Err(gm_core::GmError::config(
                        "threads",
                        format!("must be at least 1, got {t}"),
                    ));
                }
                gm_core::tch::set_num_threads(t);
            }
            let shard = shard.map(|s| s.parse::<Shard>()).transpose()?;
            let jobs = match jobs {
                Some(n) => n,
                None if shard.is_some() || worker => 1,
                None => match gm_core::device::default_device()? {
                    gm_core::tch::Device::Cpu => std::thread::available_parallelism()
                        .map_or(1, |n| n.get())
                        .min(8),
                    _ => 1,
                },
            };
            let options = BenchOptions {
                profile: profile.parse()?,
                name: profile,
                out,
                only,
                suite,
                shard,
                worker,
                jobs,
            };
            match jobs {
                0 => Err(gm_core::GmError::config(
                    "jobs",
                    "must be at least 1, got 0",
                )),
                1 => bench_all(&options),
                n => bench_all_side_by_side(&options, n, threads),
            }
        }
        Command::Report {
            dirs,
            profile,
            out,
            suite,
        } => merge_reports(profile.parse()?, &profile, &dirs, out, suite),
        Command::Train {
            config,
            out,
            steps,
            dataset,
        } => train(&config, out, steps, dataset),
        Command::Sample {
            checkpoint,
            n,
            out,
            seed,
            solver,
            steps,
            temperature,
            top_k,
            top_p,
            guidance,
        } => {
            let device = gm_core::device::default_device()?;
            let saved = gm_bench::saved::load(&checkpoint, device)?;
            let mut options = gm_core::model::SampleOptions::new().seed(seed);
            options.solver = solver;
            options.steps = steps;
            options.guidance = guidance;
            options.top_k = top_k;
            options.top_p = top_p;
            if let Some(t) = temperature {
                options = options.temperature(t);
            }
            let samples = gm_core::tch::no_grad(|| saved.model.sample_with(n, &options))?;
            if gm_bench::text::is_text(&saved.run.dataset) {
                let out = if out.extension().is_some_and(|e| e == "png") {
                    out.with_extension("txt")
                } else {
                    out
                };
                let text = gm_bench::text::samples_as_text(&samples)?;
                std::fs::write(&out, &text).map_err(|e| gm_core::GmError::io(&out, e))?;
                print!("{text}");
                let corpus = gm_core::data::text::TextCorpus::load_default()?;
                let body: String = text
                    .lines()
                    .filter(|l| !l.starts_with("--- sample"))
                    .collect::<Vec<_>>()
                    .join("\n");
                let (share, words) = gm_bench::text::known_word_share(&body, &corpus.train);
                let per_char = match saved.model.log_likelihood(&samples)? {
                    Some(lp) => {
                        -lp.f_mean(gm_core::tch::Kind::Double)?.f_double_value(&[])?
                            / samples.size().iter().skip(1).product::<i64>() as f64
                    }
                    None => f64::NAN,
                };
                eprintln!(
                    "gm sample: {per_char:.3} nats per character under the model; {:.1}% of {words} words are words of the training text",
                    100.0 * share
                );
                eprintln!(
                    "gm sample: {n} text samples of the {} model ({} steps trained) in {}",
                    saved.run.family(),
                    saved.history.steps_done,
                    out.display()
                );
                return Ok(ExitCode::SUCCESS);
            }
            let info = gm_core::data::named_info(&saved.run.dataset)?;
            let toy = saved
                .run
                .dataset
                .parse::<gm_core::data::toy::ToyDataset>()
                .ok();
            gm_bench::runner::write_samples_picture(&samples, toy, info.values, &out)?;
            eprintln!(
                "gm sample: {n} samples of the {} model ({} steps trained) in {}",
                saved.run.family(),
                saved.history.steps_done,
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Eval {
            checkpoint,
            out,
            examples,
            samples,
        } => evaluate_checkpoint(&checkpoint, &out, examples, samples),
        Command::Beam {
            checkpoint,
            width,
            length,
            prompt,
            end_value,
            length_penalty,
        } => {
            let device = gm_core::device::default_device()?;
            let (run, _) = gm_bench::saved::run_of(&checkpoint)?;
            if run.family() != "autoregressive" {
                return Err(gm_core::GmError::config(
                    "checkpoint",
                    format!(
                        "beam search needs an autoregressive sequence model; this checkpoint is of the {} family",
                        run.family()
                    ),
                ));
            }
            let text = gm_bench::text::is_text(&run.dataset);
            let search = gm_autoregressive::BeamSearch {
                width,
                length,
                prompt: gm_bench::text::parse_values(&prompt, text, "prompt")?,
                end_value: end_value
                    .map(|e| {
                        gm_bench::text::parse_values(&e.replace("\\n", "\n"), text, "end_value")
                    })
                    .transpose()?
                    .map(|v| match v.as_slice() {
                        [one] => Ok(*one),
                        _ => Err(gm_core::GmError::config(
                            "end_value",
                            "must be one value (one character for text)",
                        )),
                    })
                    .transpose()?,
                length_penalty,
            };
            let config: gm_autoregressive::AutoregressiveConfig = run.model_config()?;
            let info = gm_core::data::named_info(&run.dataset)?;
            let mut model = gm_autoregressive::Autoregressive::new(&config, &info, device)?;
            gm_core::model::GenerativeModel::load(&mut model, &checkpoint)?;
            let found = model.beam_search(&search)?;
            if text {
                let corpus = gm_core::data::text::TextCorpus::load_default()?;
                let body: Vec<String> = found
                    .iter()
                    .map(|h| gm_bench::text::bytes_as_text(&h.values))
                    .collect();
                let (share, words) =
                    gm_bench::text::known_word_share(&body.join("\n"), &corpus.train);
                let chars: usize = found.iter().map(|h| h.values.len()).sum();
                let nats: f64 = found.iter().map(|h| -h.log_prob).sum();
                eprintln!(
                    "gm beam: {:.3} nats per character; {:.1}% of {words} words are words of the training text",
                    nats / chars.max(1) as f64,
                    100.0 * share
                );
            }
            for h in found {
                let shown = if text {
                    format!("{:?}", gm_bench::text::bytes_as_text(&h.values))
                } else {
                    format!("{:?}", h.values)
                };
                println!("{:>10.3} {:>10.3}  {shown}", h.log_prob, h.score);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `gm train`: one run, with a progress bar, its checkpoint and run file in `out`.
fn train(
    config: &str,
    out: Option<PathBuf>,
    steps: Option<u64>,
    dataset: Option<String>,
) -> gm_core::Result<ExitCode> {
    let device = gm_core::device::default_device()?;
    let mut run = registry().load_run(config)?;
    if let Some(steps) = steps {
        run = run.with_steps(steps)?;
    }
    if let Some(dataset) = dataset {
        run.dataset = dataset;
        run.validate()?;
    }
    let out = out.unwrap_or_else(|| {
        PathBuf::from("target/gm-train").join(format!("{}_{}", run.family(), run.dataset))
    });
    std::fs::create_dir_all(&out).map_err(|e| gm_core::GmError::io(&out, e))?;
    let text = run.to_toml_string()?;
    std::fs::write(out.join("config.toml"), &text).map_err(|e| gm_core::GmError::io(&out, e))?;
    let data = load_named(&run.dataset, device, 50_000, 20_000, 0)?;
    gm_core::device::seed_everything(run.train.seed);
    let mut model = run.model.build(&data.info(), device)?;
    if device == gm_core::tch::Device::Cpu {
        gm_core::tch::set_num_threads(gm_core::device::threads_for(
            model.num_parameters(),
            data.info().elements(),
        ));
    }
    let checkpoint = out.join("checkpoint.safetensors");
    eprintln!(
        "gm train: {} on {} for {} steps ({} parameters, {} libtorch threads), checkpoint {}",
        run.family(),
        run.dataset,
        run.train.steps,
        model.num_parameters(),
        gm_core::tch::get_num_threads(),
        checkpoint.display()
    );
    let mut progress = RunProgress::new(&format!("{}/{}", run.family(), run.dataset), false);
    let total = run.train.steps;
    let history = gm_core::train::Trainer::new(run.train.clone())?
        .with_checkpoint(&checkpoint)
        .with_metadata("run", &text)
        .fit(
            model.as_mut(),
            &data.train.x,
            data.train.labels.as_ref(),
            |step, stats| progress.update(step, total, stats),
        )?;
    progress.finish();
    let last = history
        .points
        .last()
        .map(|(_, stats)| {
            stats
                .iter()
                .map(|(k, v)| format!("{k} {v:.4}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    eprintln!(
        "gm train: {} steps in {:.0} s; last log: {last}",
        history.steps_done, history.train_seconds
    );
    Ok(ExitCode::SUCCESS)
}

/// `gm eval`: the bench's evaluation of one checkpoint, printed as JSON.
fn evaluate_checkpoint(
    checkpoint: &std::path::Path,
    out: &std::path::Path,
    examples: Option<i64>,
    samples: Option<i64>,
) -> gm_core::Result<ExitCode> {
    if let Some(n) = samples.filter(|n| *n < 10) {
        return Err(gm_core::GmError::config(
            "samples",
            format!("must be at least 10, got {n}"),
        ));
    }
    if let Some(n) = examples.filter(|n| *n < 2) {
        return Err(gm_core::GmError::config(
            "examples",
            format!("must be at least 2 (a standard error needs two), got {n}"),
        ));
    }
    let device = gm_core::device::default_device()?;
    let saved = gm_bench::saved::load(checkpoint, device)?;
    let data = load_named(&saved.run.dataset, device, 50_000, 20_000, 0)?;
    let classifier = if gm_bench::runner::judged_as_digits(&data) {
        Some(
            gm_core::data::mnist::Mnist::load_default()
                .and_then(|m| DigitClassifier::load_or_train(&m))?,
        )
    } else {
        None
    };
    let mut entry = Entry::for_run("eval", saved.run)?;
    entry.likelihood_examples = examples;
    if let Some(n) = samples {
        entry.evaluation.image_samples = n;
        entry.evaluation.toy_samples = n;
    }
    std::fs::create_dir_all(out).map_err(|e| gm_core::GmError::io(out, e))?;
    let result = gm_bench::runner::evaluate(
        &entry,
        saved.model.as_ref(),
        &saved.history,
        &data,
        out,
        device,
        classifier.as_ref(),
    )?;
    eprintln!("{}", summary_line(&entry, &result));
    println!(
        "{}",
        serde_json::to_string_pretty(&result)
            .map_err(|e| gm_core::GmError::config("eval", e.to_string()))?
    );
    Ok(ExitCode::SUCCESS)
}

/// A run's training progress: a bar with its loss and ETA on a terminal, otherwise a plain line
/// at most every 30 seconds (and at the end).
struct RunProgress {
    id: String,
    bar: Option<indicatif::ProgressBar>,
    started: Instant,
    last_line: Option<Instant>,
}

impl RunProgress {
    fn new(id: &str, plain: bool) -> Self {
        use std::io::IsTerminal;
        let bar = (!plain && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(1);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {pos}/{len} steps, {msg}, ETA {eta}",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            bar.set_prefix(id.to_string());
            bar
        });
        RunProgress {
            id: id.to_string(),
            bar,
            started: Instant::now(),
            last_line: None,
        }
    }

    fn update(&mut self, step: u64, total: u64, stats: &[(String, f64)]) {
        let loss = stats
            .first()
            .map(|(k, v)| format!("{k} {v:.4}"))
            .unwrap_or_default();
        match &self.bar {
            Some(bar) => {
                bar.set_length(total);
                bar.set_position(step);
                bar.set_message(loss);
            }
            None => {
                let due = self
                    .last_line
                    .is_none_or(|t| t.elapsed().as_secs_f64() >= 30.0);
                if due || step == total {
                    let elapsed = self.started.elapsed().as_secs_f64();
                    eprintln!("{}: step {step}/{total}, {loss}, {elapsed:.0} s", self.id);
                    self.last_line = Some(Instant::now());
                }
            }
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// What one `bench-all` invocation runs and where.
struct BenchOptions {
    profile: Profile,
    name: String,
    out: PathBuf,
    only: Option<String>,
    suite: Option<PathBuf>,
    shard: Option<Shard>,
    worker: bool,
    /// Processes side by side (for the report).
    jobs: usize,
}

impl BenchOptions {
    /// The profile's entries and those this invocation runs (its shard, its `--only`).
    fn entries(&self) -> gm_core::Result<(Vec<Entry>, Vec<usize>)> {
        let all = load_suite(self.profile, self.suite.as_ref())?;
        let matching = |i: &usize| {
            self.only
                .as_deref()
                .is_none_or(|o| gm_bench::suite::id_matches(&all[*i].id, o))
        };
        let chosen: Vec<usize> = if self.worker {
            // A `--jobs` share: the shares divide the runs `--only` picked, evenly; a share
            // left with nothing to do has simply finished.
            let picked: Vec<usize> = (0..all.len()).filter(matching).collect();
            picked
                .into_iter()
                .enumerate()
                .filter(|(k, _)| self.shard.is_none_or(|s| s.contains(*k)))
                .map(|(_, i)| i)
                .collect()
        } else {
            (0..all.len())
                .filter(|i| self.shard.is_none_or(|s| s.contains(*i)))
                .filter(matching)
                .collect()
        };
        if chosen.is_empty() && !self.worker {
            return Err(gm_core::GmError::config(
                "only",
                format!(
                    "no entry of profile {} matches {:?}; `gm list --profile {}` shows the ids",
                    self.name,
                    self.only.clone().unwrap_or_default(),
                    self.name
                ),
            ));
        }
        Ok((all, chosen))
    }
}

/// `bench-all --jobs N`: N shares of the entries run side by side, each in its own `gm`
/// process (libtorch's random generator is process-wide, so runs sharing a process would not be
/// reproducible), with the cores divided among them; then one report from their results.
fn bench_all_side_by_side(
    options: &BenchOptions,
    jobs: usize,
    threads: Option<i32>,
) -> gm_core::Result<ExitCode> {
    if options.shard.is_some() || options.worker {
        return Err(gm_core::GmError::config(
            "jobs",
            "--jobs splits the suite into shares itself; it cannot be combined with --shard",
        ));
    }
    let (all, chosen) = options.entries()?;
    let _lock = OutputLock::acquire(&options.out)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per_job = threads.unwrap_or((cores / jobs).max(1) as i32);
    eprintln!(
        "gm bench-all: profile {}, {} of {} runs in {jobs} processes side by side, {per_job} libtorch threads each, report in {}",
        options.name,
        chosen.len(),
        all.len(),
        options.out.display()
    );
    let started = Instant::now();
    // The digit classifier is trained (or loaded) once here, not by every share at once.
    if chosen.iter().any(|&i| all[i].dataset.starts_with("mnist")) {
        if let Err(e) = gm_core::data::mnist::Mnist::load_default()
            .and_then(|m| DigitClassifier::load_or_train(&m))
        {
            eprintln!("gm bench-all: the digit classifier failed ({e}); the shares will report it");
        }
    }
    let exe = std::env::current_exe().map_err(|e| gm_core::GmError::io("gm", e))?;
    let mut children = Vec::new();
    for k in 1..=jobs {
        let mut cmd = std::process::Command::new(&exe);
        cmd.args(["bench-all", "--profile", &options.name, "--worker"])
            .arg("--out")
            .arg(&options.out)
            .args(["--shard", &format!("{k}/{jobs}")])
            .args(["--threads", &per_job.to_string()]);
        if let Some(only) = &options.only {
            cmd.args(["--only", only]);
        }
        if let Some(suite) = &options.suite {
            cmd.arg("--suite").arg(suite);
        }
        match cmd.spawn() {
            Ok(child) => {
                WORKERS
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(child.id());
                children.push(child);
            }
            Err(e) => {
                stop_workers();
                return Err(gm_core::GmError::io(&exe, e));
            }
        }
    }
    let mut broken = Vec::new();
    for (k, mut child) in children.into_iter().enumerate() {
        let status = child.wait().map_err(|e| {
            stop_workers();
            gm_core::GmError::io(&exe, e)
        })?;
        // 2: some of its runs failed, which the report shows; anything else is the share's own
        // failure.
        if !status.success() && status.code() != Some(2) {
            broken.push(format!("share {}/{jobs} ({status})", k + 1));
        }
    }
    let recorded: HashMap<String, RunResult> = chosen
        .iter()
        .filter_map(|&i| recorded_result(&all[i], &options.out).map(|r| (all[i].id.clone(), r)))
        .collect();
    finish_bench(options, &all, &chosen, &recorded, started, &broken)
}

fn bench_all(options: &BenchOptions) -> gm_core::Result<ExitCode> {
    let device = gm_core::device::default_device()?;
    let (all, chosen) = options.entries()?;
    if chosen.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    let out = &options.out;
    let _lock = if options.worker {
        None
    } else {
        Some(OutputLock::acquire(out)?)
    };
    eprintln!(
        "gm bench-all: profile {}, {} of {} runs, device {device:?}, {} libtorch threads, report in {}",
        options.name,
        chosen.len(),
        all.len(),
        gm_core::tch::get_num_threads(),
        out.display()
    );
    let started = Instant::now();
    let mut data_cache: HashMap<String, NamedData> = HashMap::new();
    let mut fresh: HashMap<String, RunResult> = HashMap::new();
    let mut classifier: Option<gm_core::Result<DigitClassifier>> = None;
    for (done, &i) in chosen.iter().enumerate() {
        let entry = &all[i];
        let say = |line: String| eprintln!("[{}/{}] {line}", done + 1, chosen.len());
        if !data_cache.contains_key(&entry.dataset) {
            match load_named(&entry.dataset, device, 50_000, 20_000, 0) {
                Ok(d) => {
                    data_cache.insert(entry.dataset.clone(), d);
                }
                Err(e) => {
                    let mut result = failed_result(
                        entry,
                        format!("cannot load data set {}: {e}", entry.dataset),
                    );
                    gm_bench::runner::record(entry, out, &mut result);
                    say(summary_line(entry, &result));
                    fresh.insert(entry.id.clone(), result);
                    continue;
                }
            }
        }
        let data = &data_cache[&entry.dataset];
        // The digit classifier judges image samples; trained once, cached in the data folder.
        if classifier.is_none() && gm_bench::runner::judged_as_digits(data) {
            say(format!("{}: loading the digit classifier", entry.id));
            classifier = Some(
                gm_core::data::mnist::Mnist::load_default()
                    .and_then(|m| DigitClassifier::load_or_train(&m)),
            );
        }
        let judge = match &classifier {
            Some(Ok(c)) if data.toy.is_none() => Some(c),
            Some(Err(e)) if data.toy.is_none() => {
                say(format!(
                    "{}: no image metrics: the digit classifier failed: {e}",
                    entry.id
                ));
                None
            }
            _ => None,
        };
        let mut progress = RunProgress::new(&entry.id, options.worker);
        let result = run_entry(
            entry,
            data,
            out,
            device,
            judge,
            &mut |step, total, stats| progress.update(step, total, stats),
        );
        progress.finish();
        say(summary_line(entry, &result));
        fresh.insert(entry.id.clone(), result);
        // Rewrite the report after every run, so an interrupted benchmark still leaves one.
        if !options.worker {
            write_report(&all, &fresh, options, device, started)?;
        }
    }
    finish_bench(options, &all, &chosen, &fresh, started, &[])
}

/// Writes the report (unless this is a worker), prints its main tables, and returns the exit
/// code: 0 when every chosen run succeeded, 2 when some failed, 1 when a share broke.
fn finish_bench(
    options: &BenchOptions,
    all: &[Entry],
    chosen: &[usize],
    fresh: &HashMap<String, RunResult>,
    started: Instant,
    broken: &[String],
) -> gm_core::Result<ExitCode> {
    if !options.worker {
        let device = gm_core::device::default_device()?;
        let report = write_report(all, fresh, options, device, started)?;
        let reported = report.results.len();
        println!("{}", report::terminal_tables(&report));
        eprintln!(
            "wrote {}/report.md, report.json and index.html ({reported} of the profile's {} runs have results; {:.0} s)",
            options.out.display(),
            all.len(),
            started.elapsed().as_secs_f64()
        );
    }
    let failed: Vec<&str> = chosen
        .iter()
        .map(|&i| &all[i])
        .filter(|e| fresh.get(&e.id).is_none_or(|r| r.status != "ok"))
        .map(|e| e.id.as_str())
        .collect();
    if !broken.is_empty() {
        eprintln!("gm bench-all: {} broke", broken.join(", "));
        return Ok(ExitCode::FAILURE);
    }
    if failed.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "gm bench-all: {} of {} runs failed: {}",
            failed.len(),
            chosen.len(),
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
                "none of {} holds a finished result of profile {name} from this code version (results of other code are not reported as current)",
                dirs.iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    let n = results.len();
    let total = results.iter().map(|r| r.phases.total()).sum();
    report::write(&Report::new(name, "merged", total, results), &out)?;
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
    options: &BenchOptions,
    device: gm_core::tch::Device,
    started: Instant,
) -> gm_core::Result<Report> {
    let out = &options.out;
    let results: Vec<RunResult> = all
        .iter()
        .filter_map(|e| fresh.get(&e.id).cloned().or_else(|| stored_result(e, out)))
        .collect();
    let mut report = Report::new(
        &options.name,
        &format!("{device:?}"),
        started.elapsed().as_secs_f64(),
        results,
    );
    if options.jobs > 1 {
        report.jobs = options.jobs;
        report.threads = report
            .results
            .iter()
            .map(|r| r.provenance.threads)
            .max()
            .unwrap_or(report.threads);
    }
    report::write(&report, out)?;
    Ok(report)
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

/// The process ids of the `--jobs` shares this process started, stopped with it.
static WORKERS: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

/// Sends SIGTERM to every share this process started (each removes nothing and exits; their
/// checkpoints are atomic, so a rerun resumes).
fn stop_workers() {
    for pid in WORKERS.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
        // SAFETY: `kill` has no memory-safety preconditions; a process that is gone is ignored.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
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
        stop_workers();
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
