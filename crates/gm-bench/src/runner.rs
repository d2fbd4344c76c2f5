//! Runs one suite entry: train (resuming from its checkpoint), evaluate, draw samples.
//!
//! Each entry lives in `runs/<id>-<hash>/` under the output folder, where `<hash>` is the
//! SHA-256 of its full configuration: a rerun of an unchanged entry resumes from its checkpoint
//! (or reuses its finished result), a changed one starts afresh. A failing entry is recorded
//! with its error and the suite goes on.

use crate::classifier::DigitClassifier;
use crate::image_metrics::{image_metrics, ImageMetrics};
use crate::metrics::{paired_kl, sample_metrics, test_nll, Nll, SampleMetrics};
use crate::suite::Entry;
use gm_core::data::NamedData;
use gm_core::tch::{Device, Kind, Tensor};
use gm_core::train::Trainer;
use gm_core::{GmError, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What one entry produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResult {
    pub id: String,
    pub family: String,
    pub model: String,
    pub dataset: String,
    pub config_hash: String,
    /// `ok` or `failed`.
    pub status: String,
    pub error: Option<String>,
    pub nll_nats: Option<f64>,
    /// The standard error of the test NLL over test examples.
    #[serde(default)]
    pub nll_stderr: Option<f64>,
    pub bits_per_dim: Option<f64>,
    /// `exact` or `upper_bound` on the NLL.
    pub nll_kind: Option<String>,
    /// For toy sets: the data's entropy (Monte Carlo over the exact density) and its standard error.
    pub entropy_nats: Option<f64>,
    pub entropy_stderr: Option<f64>,
    /// Test NLL minus entropy: 0 for a perfect model.
    pub gap_nats: Option<f64>,
    /// For toy sets: the paired estimate of KL(p_data ‖ model), the mean over test points of
    /// ln p_data − ln q, and its standard error (0 for a perfect model, within its error).
    #[serde(default)]
    pub kl_nats: Option<f64>,
    #[serde(default)]
    pub kl_stderr: Option<f64>,
    pub parameters: i64,
    pub steps: u64,
    pub train_seconds: f64,
    pub train_examples_per_second: f64,
    pub samples_per_second: f64,
    /// Network evaluations per sample of the default sampler (iterative models).
    #[serde(default)]
    pub sample_evaluations: Option<usize>,
    /// Batched network evaluations of the last likelihood batch (for an adaptive ODE solve, its
    /// slowest example's; for the diffusion bound, its strata per example).
    #[serde(default)]
    pub likelihood_evaluations: Option<usize>,
    /// Test examples the likelihood was evaluated on.
    #[serde(default)]
    pub likelihood_examples: Option<i64>,
    /// `(step, training loss)` at each log point.
    pub curve: Vec<(u64, f64)>,
    /// The samples picture, relative to the output folder.
    pub samples_png: Option<String>,
    /// Sample distances to held-out data (vector data sets), with the data's own floor.
    #[serde(default)]
    pub sample_metrics: Option<SampleMetrics>,
    /// Image samples judged by the digit classifier (MNIST data sets).
    #[serde(default)]
    pub image_metrics: Option<ImageMetrics>,
    /// Every statistic of the last logged training step.
    #[serde(default)]
    pub final_stats: Vec<(String, f64)>,
    /// Signs of a failing run read from its training statistics (e.g. a GAN's collapse).
    #[serde(default)]
    pub warnings: Vec<String>,
    /// The suite's further samplers, each judged on vector data sets like the default samples.
    #[serde(default)]
    pub samplers: Vec<SamplerResult>,
    /// Wall time of each phase of the invocation that produced this result.
    #[serde(default)]
    pub phases: Phases,
    #[serde(default)]
    pub cost: Cost,
    #[serde(default)]
    pub capabilities: Capabilities,
    /// The code, machine and date that produced this result.
    #[serde(default)]
    pub provenance: crate::provenance::Provenance,
}

/// Samples drawn one further way (see [`crate::suite::SamplerVariant`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SamplerResult {
    pub label: String,
    /// Wall time to draw 10,000 samples, from the time of the run's draw.
    pub seconds_per_10k: f64,
    /// Network evaluations per sample (iterative samplers).
    #[serde(default)]
    pub evaluations: Option<usize>,
    /// Why this way of sampling failed (the run's other results stand).
    #[serde(default)]
    pub error: Option<String>,
    pub sample_metrics: Option<SampleMetrics>,
    /// Image samples drawn this way, judged by the digit classifier (MNIST data sets).
    #[serde(default)]
    pub image_metrics: Option<ImageMetrics>,
}

/// The hash of what defines an entry's training (its id and run), naming its run folder and
/// checkpoint: the same training resumes there.
pub fn config_hash(entry: &Entry) -> String {
    training_key(
        entry,
        &crate::provenance::training_code_version(&entry.family),
    )
}

/// The training hash of `entry` as trained by the code `code_version` (see
/// [`crate::provenance`]).
pub fn training_key(entry: &Entry, code_version: &str) -> String {
    short_hash(&format!(
        "{}\n{}\n{code_version}",
        entry.id, entry.config_text
    ))
}

/// The hash of everything that defines an entry's *result*: the training, the further
/// samplers, the evaluated examples and the evaluation code (gm-bench's). A changed sampler
/// list or evaluation re-evaluates the trained model without retraining it.
pub fn result_hash(entry: &Entry) -> String {
    result_key(
        entry,
        &crate::provenance::result_code_version(&entry.family),
    )
}

/// The result hash of `entry` as trained and evaluated by the code `code_version`.
pub fn result_key(entry: &Entry, code_version: &str) -> String {
    short_hash(&format!(
        "{}\n{}\n{}\n{:?}\n{}\n{}",
        entry.id,
        entry.config_text,
        serde_json::to_string(&entry.samplers).unwrap_or_default(),
        entry.likelihood_examples,
        serde_json::to_string(&entry.evaluation).unwrap_or_default(),
        code_version
    ))
}

fn short_hash(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

fn run_dir(out: &Path, entry: &Entry, hash: &str) -> PathBuf {
    out.join("runs")
        .join(format!("{}-{hash}", entry.id.replace('/', "_")))
}

/// The finished result stored for `entry` under `out`, if a run of the same config succeeded.
pub fn stored_result(entry: &Entry, out: &Path) -> Option<RunResult> {
    recorded_result(entry, out).filter(|r| r.status == "ok")
}

/// The result recorded for `entry` under `out` by a run of its current config, finished or
/// failed (for reports; [`stored_result`] is what a rerun may reuse).
pub fn recorded_result(entry: &Entry, out: &Path) -> Option<RunResult> {
    let cached = run_dir(out, entry, &config_hash(entry)).join("result.json");
    let hash = result_hash(entry);
    std::fs::read(&cached)
        .ok()
        .and_then(|b| serde_json::from_slice::<RunResult>(&b).ok())
        .filter(|r| r.config_hash == hash)
}

/// Runs `entry` on `data`, never failing: errors and panics become a `failed` result. A
/// finished result of the same config is reused. With a `classifier`, image samples are
/// judged by it too.
pub fn run_entry(
    entry: &Entry,
    data: &NamedData,
    out: &Path,
    device: Device,
    classifier: Option<&DigitClassifier>,
    progress: Progress,
) -> RunResult {
    let dir = run_dir(out, entry, &config_hash(entry));
    if let Some(result) = stored_result(entry, out) {
        return result;
    }
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        train_and_evaluate(entry, data, &dir, out, device, classifier, progress)
    }));
    let mut result = match outcome {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => failed_result(entry, e.to_string()),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()));
            failed_result(entry, format!("panicked: {}", msg.unwrap_or_default()))
        }
    };
    record(entry, out, &mut result);
    result
}

/// Stores `result` as the result of `entry`'s current config under `out` (a failure too, so a
/// report written by another process, e.g. the parent of `--jobs` shares, shows it; only
/// successes are reused by a rerun).
pub fn record(entry: &Entry, out: &Path, result: &mut RunResult) {
    result.config_hash = result_hash(entry);
    let dir = run_dir(out, entry, &config_hash(entry));
    if std::fs::create_dir_all(&dir).is_ok() {
        let _ = std::fs::write(
            dir.join("result.json"),
            serde_json::to_vec_pretty(&result).unwrap_or_default(),
        );
    }
}

/// A `failed` result for `entry` with its error.
pub fn failed_result(entry: &Entry, error: String) -> RunResult {
    RunResult {
        id: entry.id.clone(),
        family: entry.family.clone(),
        model: entry.model.clone(),
        dataset: entry.dataset.clone(),
        config_hash: result_hash(entry),
        status: "failed".into(),
        error: Some(error),
        nll_nats: None,
        nll_stderr: None,
        bits_per_dim: None,
        nll_kind: None,
        entropy_nats: None,
        entropy_stderr: None,
        gap_nats: None,
        kl_nats: None,
        kl_stderr: None,
        parameters: 0,
        steps: 0,
        train_seconds: 0.0,
        train_examples_per_second: 0.0,
        samples_per_second: 0.0,
        sample_evaluations: None,
        likelihood_evaluations: None,
        likelihood_examples: None,
        curve: vec![],
        samples_png: None,
        sample_metrics: None,
        image_metrics: None,
        final_stats: vec![],
        warnings: vec![],
        samplers: vec![],
        phases: Phases::default(),
        cost: Cost::default(),
        capabilities: Capabilities::default(),
        provenance: crate::provenance::Provenance {
            code_version: crate::provenance::result_code_version(&entry.family),
            date: crate::provenance::now_utc(),
            ..Default::default()
        },
    }
}

/// Progress of a run's training: `(step, total steps, logged statistics)` at each log point.
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64, &[(String, f64)]);

fn train_and_evaluate(
    entry: &Entry,
    data: &NamedData,
    dir: &Path,
    out: &Path,
    device: Device,
    classifier: Option<&DigitClassifier>,
    progress: Progress,
) -> Result<RunResult> {
    std::fs::create_dir_all(dir).map_err(|e| GmError::io(dir, e))?;
    std::fs::write(dir.join("config.toml"), &entry.config_text).map_err(|e| GmError::io(dir, e))?;
    gm_core::device::seed_everything(entry.run.train.seed);
    let mut model = entry.run.model.build(&data.info(), device)?;
    let total = entry.run.train.steps;
    let started = Instant::now();
    let (history, peak_train) = crate::memory::with_peak(|| {
        Trainer::new(entry.run.train.clone())?
            .with_checkpoint(dir.join("checkpoint.safetensors"))
            .with_metadata("run", &entry.config_text)
            .fit(
                model.as_mut(),
                &data.train.x,
                data.train.labels.as_ref(),
                |step, stats| progress(step, total, stats),
            )
    });
    let history = history?;
    let train_wall = started.elapsed().as_secs_f64();
    let (result, peak_eval) = crate::memory::with_peak(|| {
        evaluate(
            entry,
            model.as_ref(),
            &history,
            data,
            out,
            device,
            classifier,
        )
    });
    let mut result = result?;
    result.phases.train = train_wall;
    result.cost.peak_train_mib = peak_train;
    result.cost.peak_evaluation_mib = peak_eval;
    Ok(result)
}

/// Wall seconds of each phase of one invocation of a run (0 for a phase it skipped: training
/// that a finished checkpoint already holds).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Phases {
    pub train: f64,
    /// The test likelihood (and, on toy sets, the data's entropy and the paired KL).
    pub likelihood: f64,
    /// Drawing the default samples and judging them.
    pub sampling: f64,
    /// The digit classifier's image metrics.
    pub image_metrics: f64,
    /// The suite's further samplers.
    pub samplers: f64,
    /// Measuring the capabilities (encoding and decoding, one-sample latency).
    pub capabilities: f64,
}

impl Phases {
    pub fn total(&self) -> f64 {
        self.train
            + self.likelihood
            + self.sampling
            + self.image_metrics
            + self.samplers
            + self.capabilities
    }
}

/// What a run costs beyond its training time.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Cost {
    /// The peak resident memory while training and while evaluating, above what the process
    /// held when the phase began, in MiB (host memory; `None` where it cannot be measured, see
    /// [`crate::memory`]).
    pub peak_train_mib: Option<f64>,
    pub peak_evaluation_mib: Option<f64>,
    /// Wall seconds to draw one sample alone (the latency a user waits for a single sample; 0
    /// if that draw failed, with the error in the capabilities).
    pub sample_latency_seconds: f64,
}

/// What a trained model can do, measured on it rather than declared.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Capabilities {
    /// `exact mass` (discrete data) or `exact density` (continuous data) when the model reports
    /// an exact likelihood and two evaluations of the same examples under different seeds agree;
    /// `stochastic estimate` when they differ (e.g. a Hutchinson divergence); `bound`, or
    /// `stochastic bound` when a bound's evaluations differ; `none`.
    pub likelihood: String,
    /// The model's own account of its estimator (importance samples, dequantisation, strata,
    /// solver), where it gives one.
    pub likelihood_estimator: Option<String>,
    /// Whether the model maps data to a latent code (an encoder exists and answered).
    pub latent_inference: bool,
    /// The largest |decode(encode(x)) − x| over held-out examples, relative to the data's range
    /// (levels − 1 for discrete data, max − min of the examples for continuous data).
    pub reconstruction_error: Option<f64>,
    /// Whether that error is within [`INVERTIBILITY_TOLERANCE`] (on discrete data decoding
    /// returns levels, so this means every value was recovered exactly).
    pub invertible: Option<bool>,
    /// Whether a sample takes one network pass (no iterative sampler).
    pub one_pass_sampling: bool,
    /// Why a capability could not be measured.
    pub error: Option<String>,
}

/// The relative reconstruction error up to which encoding then decoding counts as inverting.
pub const INVERTIBILITY_TOLERANCE: f64 = 1e-3;

/// Evaluates a trained `model` the suite's way: test likelihood (with its standard error and,
/// on toy sets, the paired KL to the data), samples judged against held-out data, the entry's
/// further samplers, costs and capabilities, and a picture of the samples written under `out`.
/// `history` is its training history (curve, training time). `gm eval` uses it too.
pub fn evaluate(
    entry: &Entry,
    model: &dyn gm_core::model::GenerativeModel,
    history: &gm_core::train::TrainHistory,
    data: &NamedData,
    out: &Path,
    device: Device,
    classifier: Option<&DigitClassifier>,
) -> Result<RunResult> {
    let mut phases = Phases::default();
    let mut clock = Instant::now();
    let mut lap = || {
        let seconds = clock.elapsed().as_secs_f64();
        clock = Instant::now();
        seconds
    };
    let curve: Vec<(u64, f64)> = history
        .points
        .iter()
        .filter_map(|(step, losses)| losses.first().map(|(_, v)| (*step, *v)))
        .collect();

    gm_core::device::seed_torch(gm_core::device::derive_seed(entry.run.train.seed, 0xE7A1));
    let test_x = match entry.likelihood_examples {
        Some(n) => data.test.x.f_narrow(0, 0, n.min(data.test.x.size()[0]))?,
        None => data.test.x.shallow_clone(),
    };
    let nll: Option<Nll> = gm_core::tch::no_grad(|| test_nll(model, &test_x, 500))?;
    let likelihood_evaluations = nll.as_ref().and_then(|_| model.last_evaluations());
    // A non-finite metric is a failed run, never a cached success.
    if let Some(n) = nll.as_ref().filter(|n| !n.nats.is_finite()) {
        return Err(GmError::NonFinite {
            what: "test NLL".into(),
            step: history.steps_done,
            value: n.nats,
        });
    }
    // The data's exact log-probabilities of the test examples, where known (the oscillator).
    let signal_log_p: Option<Vec<f64>> = match &data.signal {
        Some(o) => Some(Vec::<f64>::try_from(&o.log_prob(&test_x)?)?),
        None => None,
    };
    let (entropy, stderr) = match (data.toy, &signal_log_p) {
        (Some(set), _) => {
            let (h, se) = toy_entropy(set, entry.evaluation.entropy_samples, device)?;
            (Some(h), Some(se))
        }
        // The data's own NLL on the same test examples: the truth the model's is compared with.
        (None, Some(lp)) => {
            let (mean, se) =
                crate::metrics::mean_and_stderr(&lp.iter().map(|v| -v).collect::<Vec<_>>());
            (Some(mean), Some(se))
        }
        (None, None) => (None, None),
    };
    let gap = match (&nll, entropy) {
        (Some(n), Some(h)) => Some(n.nats - h),
        _ => None,
    };
    let kl = match (&nll, data.toy, &signal_log_p) {
        (Some(n), Some(set), _) => {
            let data_log_p = Vec::<f64>::try_from(
                &set.log_prob(&test_x)?
                    .f_to_kind(gm_core::tch::Kind::Double)?,
            )?;
            Some(paired_kl(&data_log_p, &n.log_likelihoods)?)
        }
        (Some(n), None, Some(data_log_p)) => Some(paired_kl(data_log_p, &n.log_likelihoods)?),
        _ => None,
    };
    phases.likelihood = lap();

    // The picture shows 64 samples, fewer where the entry caps its judged samples below that
    // (the autoregressive image models, whose sampling costs one network step per pixel).
    let n_samples = if data.toy.is_some() {
        entry.evaluation.toy_samples
    } else {
        entry.evaluation.image_samples.min(64)
    };
    gm_core::device::seed_torch(gm_core::device::derive_seed(entry.run.train.seed, 0x5A3B));
    let started = Instant::now();
    let samples = gm_core::tch::no_grad(|| model.sample(n_samples))?;
    let samples_per_second = n_samples as f64 / started.elapsed().as_secs_f64().max(1e-9);
    let sample_evaluations = model.last_evaluations();
    let sample_metrics = match data.toy {
        Some(set) => Some(sample_metrics(
            &samples,
            &data.train.x,
            &data.test.x,
            set.modes(device)?.as_ref(),
        )?),
        None => None,
    };
    let images = out.join("images");
    std::fs::create_dir_all(&images).map_err(|e| GmError::io(&images, e))?;
    // Named by the result's hash, so a picture is never shown beside another profile's or
    // another code version's numbers.
    let png = format!(
        "images/{}-{}.png",
        entry.id.replace('/', "_"),
        result_hash(entry)
    );
    let samples_png = if crate::text::is_text(&data.name) {
        // Bytes read as text, not as a picture.
        let path = out.join(png.replace(".png", ".txt"));
        std::fs::write(&path, crate::text::samples_as_text(&samples)?)
            .map_err(|e| GmError::io(&path, e))?;
        None
    } else {
        write_samples_picture(&samples, data.toy, data.values, &out.join(&png))?;
        Some(png)
    };
    phases.sampling = lap();

    let image_metrics = judge_digits(
        classifier,
        model,
        data,
        entry,
        gm_core::device::derive_seed(entry.run.train.seed, 0x1A6E),
        None,
    )?;
    phases.image_metrics = lap();

    let mut samplers = Vec::new();
    for (i, variant) in entry.samplers.iter().enumerate() {
        let seed = gm_core::device::derive_seed(entry.run.train.seed, 0x5A3C + i as u64);
        let judging = Judging {
            entry,
            model,
            data,
            classifier,
        };
        let judged = judge_variant(variant, seed, &judging, n_samples, device);
        samplers.push(judged.unwrap_or_else(|e| SamplerResult {
            label: variant.label(),
            seconds_per_10k: 0.0,
            evaluations: None,
            error: Some(e.to_string()),
            sample_metrics: None,
            image_metrics: None,
        }));
    }
    phases.samplers = lap();

    gm_core::device::seed_torch(gm_core::device::derive_seed(entry.run.train.seed, 0xCA9A));
    let started = Instant::now();
    let one = gm_core::tch::no_grad(|| model.sample(1));
    let sample_latency_seconds = started.elapsed().as_secs_f64();
    let mut capabilities = measure_capabilities(model, &data.test.x, data, sample_evaluations);
    let sample_latency_seconds = match one {
        Ok(_) => sample_latency_seconds,
        Err(e) => {
            let error = format!("drawing one sample: {e}");
            capabilities.error = Some(match capabilities.error.take() {
                Some(other) => format!("{other}; {error}"),
                None => error,
            });
            0.0
        }
    };
    phases.capabilities = lap();

    let steps = history.steps_done;
    Ok(RunResult {
        id: entry.id.clone(),
        family: entry.family.clone(),
        model: entry.model.clone(),
        dataset: entry.dataset.clone(),
        config_hash: String::new(),
        status: "ok".into(),
        error: None,
        nll_nats: nll.as_ref().map(|n| n.nats),
        nll_stderr: nll.as_ref().map(|n| n.stderr),
        bits_per_dim: nll.as_ref().map(|n| n.bits_per_dim),
        nll_kind: nll.as_ref().map(|n| n.kind.to_string()),
        entropy_nats: entropy,
        entropy_stderr: stderr,
        gap_nats: gap,
        kl_nats: kl.map(|k| k.0),
        kl_stderr: kl.map(|k| k.1),
        parameters: model.num_parameters(),
        steps,
        train_seconds: history.train_seconds,
        train_examples_per_second: (steps as f64 * entry.run.train.batch_size as f64)
            / history.train_seconds.max(1e-9),
        samples_per_second,
        sample_evaluations,
        likelihood_evaluations,
        likelihood_examples: nll.as_ref().map(|_| test_x.size()[0]),
        curve,
        samples_png,
        sample_metrics,
        image_metrics,
        final_stats: history
            .points
            .last()
            .map(|(_, values)| values.clone())
            .unwrap_or_default(),
        warnings: gm_gan::collapse_signs(&history.points)
            .iter()
            .map(|sign| sign.to_string())
            .collect(),
        samplers,
        phases,
        cost: Cost {
            peak_train_mib: None,
            peak_evaluation_mib: None,
            sample_latency_seconds,
        },
        capabilities,
        provenance: crate::provenance::Provenance::now(&entry.family, device),
    })
}

/// The digit classifier's metrics of the profile's number of samples drawn from `seed` (the way
/// `variant` says, or the model's default), where `data` are digits and a classifier is given.
fn judge_digits(
    classifier: Option<&DigitClassifier>,
    model: &dyn gm_core::model::GenerativeModel,
    data: &NamedData,
    entry: &Entry,
    seed: u64,
    variant: Option<&crate::suite::SamplerVariant>,
) -> Result<Option<ImageMetrics>> {
    match (classifier, data.values) {
        (Some(c), gm_core::data::ValueKind::Discrete { levels }) if judged_as_digits(data) => {
            gm_core::device::seed_torch(seed);
            Ok(Some(image_metrics(
                model,
                c,
                &data.train.x,
                &data.test.x,
                (levels - 1) as f64,
                entry.evaluation.image_samples,
                variant,
            )?))
        }
        _ => Ok(None),
    }
}

/// Whether the digit classifier judges samples of `data` (MNIST-shaped images).
pub fn judged_as_digits(data: &NamedData) -> bool {
    data.toy.is_none() && data.event_shape == [1, 28, 28]
}

/// A toy set's entropy and its standard error (Monte Carlo over `n` points of its exact
/// density, from a fixed seed), computed once per process, data set and `n`: every run on the
/// set reports the same estimate, and the density is costly for some sets.
fn toy_entropy(set: gm_core::data::toy::ToyDataset, n: i64, device: Device) -> Result<(f64, f64)> {
    use std::collections::HashMap;
    use std::sync::Mutex;
    static CACHE: Mutex<Option<HashMap<String, (f64, f64)>>> = Mutex::new(None);
    let key = format!("{set:?} {n} {device:?}");
    if let Some(hit) = CACHE
        .lock()
        .ok()
        .and_then(|c| c.as_ref().and_then(|m| m.get(&key).copied()))
    {
        return Ok(hit);
    }
    gm_core::device::seed_torch(0xE17);
    let value = set.entropy(n, device)?;
    if let Ok(mut cache) = CACHE.lock() {
        cache.get_or_insert_with(HashMap::new).insert(key, value);
    }
    Ok(value)
}

/// The samples' picture: a scatter plot on toy sets (`toy`), a grid of images otherwise.
pub fn write_samples_picture(
    samples: &Tensor,
    toy: Option<gm_core::data::toy::ToyDataset>,
    values: gm_core::data::ValueKind,
    path: &Path,
) -> Result<()> {
    match (toy, values) {
        (Some(set), _) => {
            let (lo, hi) = set.bounds();
            crate::images::scatter(samples, lo, hi, path)
        }
        (None, gm_core::data::ValueKind::Discrete { levels }) => crate::images::image_grid(
            &samples.f_to_kind(Kind::Float)?,
            (levels - 1) as f64,
            8,
            path,
        ),
        (None, gm_core::data::ValueKind::Continuous) => {
            crate::images::image_grid(&samples.f_to_kind(Kind::Float)?, 1.0, 8, path)
        }
    }
}

/// Examples the capabilities are measured on.
const CAPABILITY_EXAMPLES: i64 = 64;

/// Measures what `model` can do on held-out examples: the kind of its likelihood (exact or a
/// bound, deterministic or stochastic, by evaluating the same examples under two seeds), latent
/// inference, and the relative error of decoding its encoding. Never fails: what cannot be
/// measured is left out with the reason in `error`.
pub fn measure_capabilities(
    model: &dyn gm_core::model::GenerativeModel,
    test_x: &Tensor,
    data: &NamedData,
    sample_evaluations: Option<usize>,
) -> Capabilities {
    let mut capabilities = Capabilities {
        one_pass_sampling: sample_evaluations.is_none_or(|n| n <= 1),
        likelihood_estimator: model.likelihood_estimator(),
        ..Capabilities::default()
    };
    let mut errors = Vec::new();
    let x = match test_x.f_narrow(0, 0, CAPABILITY_EXAMPLES.min(test_x.size()[0])) {
        Ok(x) => x,
        Err(e) => {
            capabilities.error = Some(e.to_string());
            return capabilities;
        }
    };
    match likelihood_kind(model, &x, data) {
        Ok(kind) => capabilities.likelihood = kind,
        Err(e) => errors.push(format!("likelihood kind: {e}")),
    }
    match reconstruction_error(model, &x, data) {
        Ok((latent, error)) => {
            capabilities.latent_inference = latent;
            capabilities.reconstruction_error = error;
            capabilities.invertible = error.map(|e| e <= INVERTIBILITY_TOLERANCE);
        }
        Err(e) => errors.push(format!("encoding and decoding: {e}")),
    }
    if !errors.is_empty() {
        capabilities.error = Some(errors.join("; "));
    }
    capabilities
}

/// Relative differences below this between two evaluations of the same examples are taken as
/// float rounding (float32 sums in another order), not as a stochastic estimator.
const SAME_VALUE_TOLERANCE: f64 = 1e-5;

/// The likelihood's kind, measured: two evaluations of the same examples under different seeds.
fn likelihood_kind(
    model: &dyn gm_core::model::GenerativeModel,
    x: &Tensor,
    data: &NamedData,
) -> Result<String> {
    use gm_core::model::LikelihoodKind;
    let kind = model.likelihood_kind();
    if kind == LikelihoodKind::None {
        return Ok("none".into());
    }
    let few = x.f_narrow(0, 0, 8.min(x.size()[0]))?;
    let mut twice = Vec::new();
    for seed in [0x11u64, 0x22] {
        gm_core::device::seed_torch(seed);
        match gm_core::tch::no_grad(|| model.log_likelihood(&few))? {
            Some(ll) => twice.push(Vec::<f64>::try_from(&ll.f_to_kind(Kind::Double)?)?),
            None => return Ok("none".into()),
        }
    }
    let stochastic = twice[0]
        .iter()
        .zip(&twice[1])
        .any(|(a, b)| (a - b).abs() > SAME_VALUE_TOLERANCE * (1.0 + a.abs()));
    Ok(match (kind, stochastic, data.values) {
        (LikelihoodKind::Exact, true, _) => "stochastic estimate",
        (LikelihoodKind::Exact, false, gm_core::data::ValueKind::Discrete { .. }) => "exact mass",
        (LikelihoodKind::Exact, false, _) => "exact density",
        (_, true, _) => "stochastic bound",
        _ => "bound",
    }
    .into())
}

/// Whether the model encodes `x`, and the largest relative error of decoding that encoding.
fn reconstruction_error(
    model: &dyn gm_core::model::GenerativeModel,
    x: &Tensor,
    data: &NamedData,
) -> Result<(bool, Option<f64>)> {
    let Some(z) = gm_core::tch::no_grad(|| model.encode(x))? else {
        return Ok((false, None));
    };
    let Some(back) = gm_core::tch::no_grad(|| model.decode(&z))? else {
        return Ok((true, None));
    };
    let x = x.f_to_kind(Kind::Double)?;
    let range = match data.values {
        gm_core::data::ValueKind::Discrete { levels } => (levels - 1) as f64,
        gm_core::data::ValueKind::Continuous => {
            (x.f_max()?.double_value(&[]) - x.f_min()?.double_value(&[])).max(1e-12)
        }
    };
    let error = back
        .f_to_kind(Kind::Double)?
        .f_sub(&x)?
        .f_abs()?
        .f_max()?
        .double_value(&[])
        / range;
    Ok((true, Some(error)))
}

/// A trained entry and what its samples are judged against.
struct Judging<'a> {
    entry: &'a Entry,
    model: &'a dyn gm_core::model::GenerativeModel,
    data: &'a NamedData,
    classifier: Option<&'a DigitClassifier>,
}

/// Draws `n_samples` the way `variant` says (timed) and judges them like the default samples:
/// distances to held-out data on toy sets, the digit classifier's metrics on 1,000 more for
/// digits.
fn judge_variant(
    variant: &crate::suite::SamplerVariant,
    seed: u64,
    judging: &Judging,
    n_samples: i64,
    device: Device,
) -> Result<SamplerResult> {
    let Judging {
        entry,
        model,
        data,
        classifier,
    } = *judging;
    let options = variant.options().seed(seed);
    let started = Instant::now();
    let drawn = gm_core::tch::no_grad(|| model.sample_with(n_samples, &options))?;
    let seconds_per_10k = started.elapsed().as_secs_f64() * 10_000.0 / n_samples as f64;
    let evaluations = model.last_evaluations();
    let sample_metrics = match data.toy {
        Some(set) => Some(crate::metrics::sample_metrics(
            &drawn,
            &data.train.x,
            &data.test.x,
            set.modes(device)?.as_ref(),
        )?),
        None => None,
    };
    let image_metrics = judge_digits(classifier, model, data, entry, seed, Some(variant))?;
    Ok(SamplerResult {
        label: variant.label(),
        seconds_per_10k,
        evaluations,
        error: None,
        sample_metrics,
        image_metrics,
    })
}
