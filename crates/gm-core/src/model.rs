//! The one interface every model family implements, so gm-bench can drive them all alike.
//!
//! A model owns its networks *and* its optimizers: a GAN has two, a VAE one, and each decides
//! how many updates one [`GenerativeModel::train_step`] makes. Its whole training state
//! (weights, optimizer moments, EMA copies) is exposed as named tensors by
//! [`GenerativeModel::state`], which is what checkpoints store.

use crate::train::checkpoint::{load_tensors, save_tensors, StateDict};
use crate::{GmError, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::{nn, Tensor};

/// What a model's `log_likelihood` means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LikelihoodKind {
    /// The exact log-likelihood (flows, autoregressive models).
    Exact,
    /// A lower bound on the log-likelihood, i.e. an upper bound on the NLL (ELBO/IWAE,
    /// dequantised densities of discrete data, the diffusion variational bound).
    LowerBound,
    /// No likelihood (GANs).
    None,
}

/// One mini-batch: data `[batch, ...]` and, for conditional models, integer labels `[batch]`.
#[derive(Debug)]
pub struct Batch {
    pub x: Tensor,
    pub labels: Option<Tensor>,
}

impl Batch {
    pub fn new(x: Tensor) -> Self {
        Batch { x, labels: None }
    }

    pub fn with_labels(x: Tensor, labels: Tensor) -> Self {
        Batch {
            x,
            labels: Some(labels),
        }
    }

    pub fn size(&self) -> i64 {
        self.x.size().first().copied().unwrap_or(0)
    }
}

/// The named scalar losses of one training step, kept on the device: reading them costs a host
/// synchronisation, so the trainer does it only when it logs.
#[derive(Debug, Default)]
pub struct StepOutput {
    pub losses: Vec<(String, Tensor)>,
}

impl StepOutput {
    pub fn new() -> Self {
        StepOutput::default()
    }

    /// Adds a scalar loss (detached from the graph).
    pub fn with(mut self, name: &str, value: &Tensor) -> Self {
        self.losses.push((name.to_string(), value.detach()));
        self
    }

    /// Reads every loss to the host; errors on a NaN or infinite one.
    pub fn to_host(&self, step: u64) -> Result<Vec<(String, f64)>> {
        self.losses
            .iter()
            .map(|(name, t)| {
                let v = t.f_double_value(&[])?;
                if !v.is_finite() {
                    return Err(GmError::NonFinite {
                        what: name.clone(),
                        step,
                        value: v,
                    });
                }
                Ok((name.clone(), v))
            })
            .collect()
    }
}

/// The model interface of every family.
pub trait GenerativeModel {
    /// The family, e.g. "flow", "vae", "gan".
    fn family(&self) -> &'static str;

    /// One training step on a batch: forward, backward and the family's optimizer update(s).
    fn train_step(&mut self, batch: &Batch) -> Result<StepOutput>;

    /// `n` samples, `[n, ...]`, in the data space (labels are drawn by the model if it is conditional).
    fn sample(&self, n: i64) -> Result<Tensor>;

    /// What [`GenerativeModel::log_likelihood`] returns.
    fn likelihood_kind(&self) -> LikelihoodKind;

    /// Per-example log-likelihood in nats, `[batch]`: exact or a lower bound as the kind says;
    /// `None` for a family without one.
    fn log_likelihood(&self, x: &Tensor) -> Result<Option<Tensor>>;

    /// A latent code `[batch, ...]` for families that have an encoder.
    fn encode(&self, _x: &Tensor) -> Result<Option<Tensor>> {
        Ok(None)
    }

    /// Number of trainable scalars.
    fn num_parameters(&self) -> i64;

    /// The whole training state as named tensors (weights, optimizer state, EMA copies).
    fn state(&self) -> Vec<(String, Tensor)>;

    /// Restores what [`GenerativeModel::state`] produced.
    fn load_state(&mut self, state: &mut StateDict) -> Result<()>;

    /// Saves the state atomically (temporary file, then rename).
    fn save(&self, path: &Path) -> Result<()> {
        save_tensors(
            path,
            &self.state(),
            &serde_json::json!({ "family": self.family() }),
        )
    }

    /// Loads a file written by [`GenerativeModel::save`].
    fn load(&mut self, path: &Path) -> Result<()> {
        let (mut state, meta) = load_tensors(path)?;
        if let Some(f) = meta.get("family").and_then(|f| f.as_str()) {
            if f != self.family() {
                return Err(GmError::Checkpoint {
                    path: path.display().to_string(),
                    message: format!(
                        "written by a {f} model, loading into a {} model",
                        self.family()
                    ),
                });
            }
        }
        self.load_state(&mut state)?;
        state.finish(path)
    }
}

/// The variables of a var store as named tensors, each name prefixed.
pub fn var_store_state(vs: &nn::VarStore, prefix: &str) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(name, t)| (format!("{prefix}{name}"), t))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Copies tensors named `prefix + name` into the var store's variables, checking every shape.
pub fn load_var_store(vs: &nn::VarStore, prefix: &str, state: &mut StateDict) -> Result<()> {
    let vars = vs.variables();
    tch::no_grad(|| {
        for (name, mut var) in vars {
            let src = state.take(&format!("{prefix}{name}"), &var.size())?;
            var.f_copy_(&src)?;
        }
        Ok(())
    })
}
