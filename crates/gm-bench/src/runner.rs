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
use gm_core::tch::{Device, Kind};
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
    short_hash(&format!("{}\n{}", entry.id, entry.config_text))
}

/// The hash of everything that defines an entry's *result*: the training and the further
/// samplers. A changed sampler list re-evaluates the trained model without retraining it.
pub fn result_hash(entry: &Entry) -> String {
    if entry.samplers.is_empty() && entry.likelihood_examples.is_none() {
        return config_hash(entry);
    }
    short_hash(&format!(
        "{}\n{}\n{}\n{:?}",
        entry.id,
        entry.config_text,
        serde_json::to_string(&entry.samplers).unwrap_or_default(),
        entry.likelihood_examples
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
    let cached = run_dir(out, entry, &config_hash(entry)).join("result.json");
    let hash = result_hash(entry);
    std::fs::read(&cached)
        .ok()
        .and_then(|b| serde_json::from_slice::<RunResult>(&b).ok())
        .filter(|r| r.status == "ok" && r.config_hash == hash)
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
) -> RunResult {
    let hash = config_hash(entry);
    let dir = run_dir(out, entry, &hash);
    let cached = dir.join("result.json");
    if let Some(result) = stored_result(entry, out) {
        return result;
    }
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        train_and_evaluate(entry, data, &dir, out, device, classifier)
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
    result.config_hash = result_hash(entry);
    if std::fs::create_dir_all(&dir).is_ok() {
        let _ = std::fs::write(
            &cached,
            serde_json::to_vec_pretty(&result).unwrap_or_default(),
        );
    }
    result
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
    }
}

fn train_and_evaluate(
    entry: &Entry,
    data: &NamedData,
    dir: &Path,
    out: &Path,
    device: Device,
    classifier: Option<&DigitClassifier>,
) -> Result<RunResult> {
    std::fs::create_dir_all(dir).map_err(|e| GmError::io(dir, e))?;
    std::fs::write(dir.join("config.toml"), &entry.config_text).map_err(|e| GmError::io(dir, e))?;
    gm_core::device::seed_everything(entry.run.train.seed);
    let mut model = entry.run.model.build(&data.info(), device)?;
    let history = Trainer::new(entry.run.train.clone())?
        .with_checkpoint(dir.join("checkpoint.safetensors"))
        .fit(
            model.as_mut(),
            &data.train.x,
            data.train.labels.as_ref(),
            |_, _| {},
        )?;
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
    let nll: Option<Nll> = gm_core::tch::no_grad(|| test_nll(model.as_ref(), &test_x, 500))?;
    let likelihood_evaluations = nll.as_ref().and_then(|_| model.last_evaluations());
    // A non-finite metric is a failed run, never a cached success.
    if let Some(n) = nll.as_ref().filter(|n| !n.nats.is_finite()) {
        return Err(GmError::NonFinite {
            what: "test NLL".into(),
            step: history.steps_done,
            value: n.nats,
        });
    }
    let (entropy, stderr) = match data.toy {
        Some(set) => {
            gm_core::device::seed_torch(0xE17);
            let (h, se) = set.entropy(100_000, device)?;
            (Some(h), Some(se))
        }
        None => (None, None),
    };
    let gap = match (&nll, entropy) {
        (Some(n), Some(h)) => Some(n.nats - h),
        _ => None,
    };
    let kl = match (&nll, data.toy) {
        (Some(n), Some(set)) => {
            let data_log_p = Vec::<f64>::try_from(
                &set.log_prob(&test_x)?
                    .f_to_kind(gm_core::tch::Kind::Double)?,
            )?;
            Some(paired_kl(&data_log_p, &n.log_likelihoods)?)
        }
        _ => None,
    };

    let n_samples = if data.toy.is_some() { 2000 } else { 64 };
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
    let mut samplers = Vec::new();
    for (i, variant) in entry.samplers.iter().enumerate() {
        let seed = gm_core::device::derive_seed(entry.run.train.seed, 0x5A3C + i as u64);
        let judged = judge_variant(
            variant,
            seed,
            model.as_ref(),
            data,
            n_samples,
            device,
            classifier,
        );
        samplers.push(judged.unwrap_or_else(|e| SamplerResult {
            label: variant.label(),
            seconds_per_10k: 0.0,
            evaluations: None,
            error: Some(e.to_string()),
            sample_metrics: None,
            image_metrics: None,
        }));
    }
    let image_metrics = match (classifier, data.values) {
        (Some(c), gm_core::data::ValueKind::Discrete { levels })
            if data.toy.is_none() && data.event_shape == [1, 28, 28] =>
        {
            gm_core::device::seed_torch(gm_core::device::derive_seed(entry.run.train.seed, 0x1A6E));
            Some(image_metrics(
                model.as_ref(),
                c,
                &data.train.x,
                &data.test.x,
                (levels - 1) as f64,
                1000,
                None,
            )?)
        }
        _ => None,
    };
    let images = out.join("images");
    std::fs::create_dir_all(&images).map_err(|e| GmError::io(&images, e))?;
    let png = format!("images/{}.png", entry.id.replace('/', "_"));
    match (data.toy, data.values) {
        (Some(set), _) => {
            let (lo, hi) = set.bounds();
            crate::images::scatter(&samples, lo, hi, &out.join(&png))?;
        }
        (None, gm_core::data::ValueKind::Discrete { levels }) => {
            crate::images::image_grid(
                &samples.f_to_kind(Kind::Float)?,
                (levels - 1) as f64,
                8,
                &out.join(&png),
            )?;
        }
        (None, gm_core::data::ValueKind::Continuous) => {
            crate::images::image_grid(&samples.f_to_kind(Kind::Float)?, 1.0, 8, &out.join(&png))?;
        }
    }
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
        samples_png: Some(png),
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
    })
}

/// Draws `n_samples` the way `variant` says (timed) and judges them like the default samples:
/// distances to held-out data on toy sets, the digit classifier's metrics on 1,000 more for
/// digits.
fn judge_variant(
    variant: &crate::suite::SamplerVariant,
    seed: u64,
    model: &dyn gm_core::model::GenerativeModel,
    data: &NamedData,
    n_samples: i64,
    device: Device,
    classifier: Option<&DigitClassifier>,
) -> Result<SamplerResult> {
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
    let image_metrics = match (classifier, data.values) {
        (Some(c), gm_core::data::ValueKind::Discrete { levels })
            if data.toy.is_none() && data.event_shape == [1, 28, 28] =>
        {
            gm_core::device::seed_torch(seed);
            Some(image_metrics(
                model,
                c,
                &data.train.x,
                &data.test.x,
                (levels - 1) as f64,
                1000,
                Some(variant),
            )?)
        }
        _ => None,
    };
    Ok(SamplerResult {
        label: variant.label(),
        seconds_per_10k,
        evaluations,
        error: None,
        sample_metrics,
        image_metrics,
    })
}
