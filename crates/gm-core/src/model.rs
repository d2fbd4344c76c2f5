//! The one interface every model family implements, so gm-bench can drive them all alike.
//!
//! # The input contract
//!
//! - Every model accepts data `[batch] ++ event_shape`, where `event_shape` is the
//!   [`DataInfo::event_shape`](crate::spec::DataInfo) it was built for (`[2]` for a 2D toy set,
//!   `[1, 28, 28]` for MNIST). A model that works on vectors flattens internally.
//! - Labels travel beside the data ([`Batch::labels`], [`SampleOptions::labels`]): unconditional
//!   models ignore them; conditional ones require them for training and use them for sampling
//!   (drawing them uniformly when none are given).
//! - Values are checked at the boundary ([`check_data`]): a NaN, an infinity, a value outside a
//!   discrete data space or an empty batch is an error that says what was found, and the
//!   model's state is left unchanged.
//! - Sampling goes through one method, [`GenerativeModel::sample_with`] with [`SampleOptions`].
//! - Latent codes given to [`GenerativeModel::decode`] are checked the same way
//!   ([`check_latent`]): the shape `encode` returns, a real or integer dtype, finite values.
//!
//! A model owns its networks *and* its optimizers: a GAN has two, a VAE one, and each decides
//! how many updates one [`GenerativeModel::train_step`] makes. Its whole training state
//! (weights, optimizer moments, EMA copies) is exposed as named tensors by
//! [`GenerativeModel::state`], which is what checkpoints store.

use crate::data::ValueKind;
use crate::train::checkpoint::{load_tensors, save_tensors, StateDict};
use crate::{GmError, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::{nn, Device, Kind, Tensor};

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

/// Which weights a model samples and evaluates with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightChoice {
    /// The exponential moving average of the weights, where the model keeps one; the raw
    /// weights otherwise.
    #[default]
    Ema,
    /// The weights as the optimizer left them.
    Raw,
}

/// How to draw samples: one set of options for every family. Each family reads the fields it
/// has a use for and documents which; the rest are ignored.
#[derive(Debug)]
pub struct SampleOptions {
    /// Class labels `[n]` for a conditional model (drawn uniformly when `None`); ignored by
    /// unconditional models.
    pub labels: Option<Tensor>,
    /// A real-valued context `[n, features]` for models conditioned on vectors.
    pub context: Option<Tensor>,
    /// Scales the noise of the base or latent distribution (flows, VAEs) or divides the logits
    /// (autoregressive models); 1 samples the model itself.
    pub temperature: f64,
    /// Keeps only the `k` most likely values of each categorical draw (autoregressive models);
    /// `None` keeps all.
    pub top_k: Option<i64>,
    /// Nucleus sampling: keeps the smallest set of most likely values whose probabilities sum to
    /// at least `p` (in (0, 1]) in each categorical draw (autoregressive models); `None` keeps
    /// all.
    pub top_p: Option<f64>,
    /// The number of steps of an iterative sampler (diffusion, ODE solvers); `None` for the
    /// model's default.
    pub steps: Option<usize>,
    /// The solver of an iterative sampler, by name (e.g. `ddim`, `heun`); `None` for the
    /// model's default.
    pub solver: Option<String>,
    /// The tolerance (relative and absolute) of an adaptive ODE solver (`dopri5`); `None` for
    /// the model's default.
    pub tolerance: Option<f64>,
    /// The stochasticity of a DDIM-style sampler: 0 deterministic, 1 ancestral; `None` for the
    /// model's default.
    pub eta: Option<f64>,
    /// The classifier-free guidance scale of a conditional diffusion model (1 samples the
    /// conditional model, above 1 pushes towards the label); `None` for the model's default.
    pub guidance: Option<f64>,
    /// EMA or raw weights.
    pub weights: WeightChoice,
    /// Seeds libtorch's generator before sampling, for reproducible draws.
    pub seed: Option<u64>,
}

impl Default for SampleOptions {
    fn default() -> Self {
        SampleOptions {
            labels: None,
            context: None,
            temperature: 1.0,
            top_k: None,
            top_p: None,
            steps: None,
            solver: None,
            tolerance: None,
            eta: None,
            guidance: None,
            weights: WeightChoice::Ema,
            seed: None,
        }
    }
}

impl SampleOptions {
    pub fn new() -> Self {
        SampleOptions::default()
    }

    pub fn labels(mut self, labels: Tensor) -> Self {
        self.labels = Some(labels);
        self
    }

    pub fn context(mut self, context: Tensor) -> Self {
        self.context = Some(context);
        self
    }

    pub fn temperature(mut self, temperature: f64) -> Self {
        self.temperature = temperature;
        self
    }

    pub fn top_k(mut self, k: i64) -> Self {
        self.top_k = Some(k);
        self
    }

    pub fn top_p(mut self, p: f64) -> Self {
        self.top_p = Some(p);
        self
    }

    pub fn steps(mut self, steps: usize) -> Self {
        self.steps = Some(steps);
        self
    }

    pub fn solver(mut self, solver: impl Into<String>) -> Self {
        self.solver = Some(solver.into());
        self
    }

    pub fn tolerance(mut self, tolerance: f64) -> Self {
        self.tolerance = Some(tolerance);
        self
    }

    pub fn eta(mut self, eta: f64) -> Self {
        self.eta = Some(eta);
        self
    }

    pub fn guidance(mut self, scale: f64) -> Self {
        self.guidance = Some(scale);
        self
    }

    pub fn weights(mut self, weights: WeightChoice) -> Self {
        self.weights = weights;
        self
    }

    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Checks `n` and the temperature, and seeds libtorch if a seed was given. Every
    /// `sample_with` calls this first.
    pub fn begin(&self, n: i64) -> Result<()> {
        if n < 1 {
            return Err(GmError::config(
                "n",
                format!("must sample at least 1, got {n}"),
            ));
        }
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(GmError::config(
                "temperature",
                format!("must be finite and non-negative, got {}", self.temperature),
            ));
        }
        if let Some(k) = self.top_k.filter(|k| *k < 1) {
            return Err(GmError::config(
                "top_k",
                format!("must keep at least 1 value, got {k}"),
            ));
        }
        if let Some(p) = self.top_p.filter(|p| !(*p > 0.0 && *p <= 1.0)) {
            return Err(GmError::config(
                "top_p",
                format!("must lie in (0, 1], got {p}"),
            ));
        }
        if self.steps == Some(0) {
            return Err(GmError::config("steps", "must be at least 1"));
        }
        if let Some(tol) = self
            .tolerance
            .filter(|t| !t.is_finite() || !(1e-12..=1.0).contains(t))
        {
            return Err(GmError::config(
                "tolerance",
                format!("must lie in [1e-12, 1], got {tol}"),
            ));
        }
        if let Some(eta) = self.eta.filter(|e| !(0.0..=1.0).contains(e)) {
            return Err(GmError::config(
                "eta",
                format!("must lie in [0, 1], got {eta}"),
            ));
        }
        if let Some(g) = self.guidance.filter(|g| !g.is_finite() || *g < 0.0) {
            return Err(GmError::config(
                "guidance",
                format!("must be finite and non-negative, got {g}"),
            ));
        }
        if let Some(seed) = self.seed {
            crate::device::seed_torch(seed);
        }
        Ok(())
    }

    /// The labels to sample `n` examples of a model with `classes` classes: the given ones
    /// (checked to be `[n]` integers in `0..classes`) or uniform draws.
    pub fn labels_for(&self, n: i64, classes: i64, device: Device) -> Result<Tensor> {
        match &self.labels {
            Some(labels) => {
                check_labels(labels, n, classes, "SampleOptions.labels")?;
                Ok(labels.f_to_kind(Kind::Int64)?.f_to_device(device)?)
            }
            None => Ok(Tensor::f_randint(classes, [n], (Kind::Int64, device))?),
        }
    }
}

/// The leading (batch) dimension of `t`, or a shape error naming `what` for a 0-dimensional
/// tensor (`expected` describes the shape wanted, e.g. `"[batch, features]"`).
pub fn leading_dim(t: &Tensor, expected: &str, what: &str) -> Result<i64> {
    match t.size().first() {
        Some(&n) => Ok(n),
        None => Err(GmError::shape(what, expected, &t.size())),
    }
}

/// Checks that `labels` are `[n]` integers in `0..classes`.
pub fn check_labels(labels: &Tensor, n: i64, classes: i64, what: &str) -> Result<()> {
    if labels.size() != [n] {
        return Err(GmError::shape(what, format!("[{n}]"), &labels.size()));
    }
    check_integers(labels, classes, what, "labels")
}

/// Checks that `t` holds integers in `0..upper` (any shape); `noun` names them in the error.
pub fn check_integers(t: &Tensor, upper: i64, what: &str, noun: &str) -> Result<()> {
    if t.is_floating_point() || t.kind() == Kind::Bool || t.is_complex() {
        return Err(GmError::Domain(format!(
            "{what}: {noun} must be integers, got a {:?} tensor",
            t.kind()
        )));
    }
    if t.numel() == 0 {
        return Ok(());
    }
    let t = t.f_to_kind(Kind::Int64)?;
    let lo = t.f_min()?.f_int64_value(&[])?;
    let hi = t.f_max()?.f_int64_value(&[])?;
    if lo < 0 || hi >= upper {
        return Err(GmError::Domain(format!(
            "{what}: {noun} must lie in [0, {upper}), found values in [{lo}, {hi}]"
        )));
    }
    Ok(())
}

/// Checks a latent code at a model's boundary (what [`GenerativeModel::decode`] takes):
/// `[batch] ++ latent_shape` with `batch ≥ 1`, a real or integer dtype (converted, as data
/// are) and every value finite. Returns it as `kind` on `device`; `what` names the caller in
/// the error.
pub fn check_latent(
    z: &Tensor,
    latent_shape: &[i64],
    kind: Kind,
    device: Device,
    what: &str,
) -> Result<Tensor> {
    let size = z.size();
    check_batch_shape(&size, latent_shape, what)?;
    if !matches!(
        z.kind(),
        Kind::Float
            | Kind::Double
            | Kind::Half
            | Kind::BFloat16
            | Kind::Uint8
            | Kind::Int8
            | Kind::Int16
            | Kind::Int
            | Kind::Int64
    ) {
        return Err(GmError::Domain(format!(
            "{what}: a latent code must be real or integer, got a {:?} tensor",
            z.kind()
        )));
    }
    let non_finite = z
        .f_isfinite()?
        .f_logical_not()?
        .f_sum(Kind::Int64)?
        .f_int64_value(&[])?;
    if non_finite > 0 {
        return Err(GmError::Domain(format!(
            "{what}: found {non_finite} NaN or infinite value(s); a latent code must be finite"
        )));
    }
    Ok(z.f_to_device(device)?.f_to_kind(kind)?)
}

/// Checks that `size` is `[batch] ++ shape` with a non-empty batch; `what` names the caller.
fn check_batch_shape(size: &[i64], shape: &[i64], what: &str) -> Result<()> {
    if size.len() != shape.len() + 1 || size[1..] != *shape {
        let expected: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        return Err(GmError::shape(
            what,
            format!("[batch, {}]", expected.join(", ")),
            size,
        ));
    }
    if size[0] == 0 {
        return Err(GmError::Domain(format!(
            "{what}: got an empty batch {size:?}; expected a non-empty batch"
        )));
    }
    Ok(())
}

/// Checks data at a model's boundary against the input contract: `[batch] ++ event_shape` with
/// `batch ≥ 1`, a real or integer dtype, every value finite, and for discrete data every value
/// an integer in `0..levels`. Returns the data as `Float` (or `Double` if given `Double`).
/// `what` names the caller in the error.
pub fn check_data(
    x: &Tensor,
    event_shape: &[i64],
    values: ValueKind,
    what: &str,
) -> Result<Tensor> {
    let size = x.size();
    check_batch_shape(&size, event_shape, what)?;
    let x = match x.kind() {
        Kind::Float | Kind::Double => x.shallow_clone(),
        Kind::Half
        | Kind::BFloat16
        | Kind::Uint8
        | Kind::Int8
        | Kind::Int16
        | Kind::Int
        | Kind::Int64 => x.f_to_kind(Kind::Float)?,
        other => {
            return Err(GmError::Domain(format!(
                "{what}: data must be real or integer, got a {other:?} tensor"
            )))
        }
    };
    // The common case costs one pass and one read: the data are valid exactly when every value
    // is finite (continuous data) or equals itself rounded and clamped into `0..levels` (NaN
    // equals nothing; an infinity, an out-of-range value or a fraction changes). On the CPU
    // that pass is one loop over the values, without a tensor operation.
    let valid = match crate::data::scan::all_valid(&x, values) {
        Some(valid) => valid,
        None => {
            let valid = match values {
                ValueKind::Continuous => x.f_isfinite()?.f_all()?,
                ValueKind::Discrete { levels } => x
                    .f_eq_tensor(&x.f_round()?.f_clamp(0.0, (levels - 1) as f64)?)?
                    .f_all()?,
            };
            valid.f_int64_value(&[])? != 0
        }
    };
    if valid {
        return Ok(x);
    }
    // Otherwise count what is wrong, for the message.
    let finite = x.f_isfinite()?;
    let non_finite = finite.f_logical_not()?.f_sum(Kind::Int64)?;
    let bad_values = match values {
        ValueKind::Continuous => non_finite.f_zeros_like()?,
        ValueKind::Discrete { levels } => {
            let outside = x
                .f_lt(0.0)?
                .f_logical_or(&x.f_gt((levels - 1) as f64)?)?
                .f_logical_or(&x.f_ne_tensor(&x.f_floor()?)?)?
                .f_logical_and(&finite)?;
            outside.f_sum(Kind::Int64)?
        }
    };
    let counts = Vec::<i64>::try_from(&Tensor::f_stack(&[non_finite, bad_values], 0)?)?;
    if counts[0] > 0 {
        return Err(GmError::Domain(format!(
            "{what}: found {} NaN or infinite value(s); data must be finite",
            counts[0]
        )));
    }
    if counts[1] > 0 {
        let levels = match values {
            ValueKind::Discrete { levels } => levels,
            ValueKind::Continuous => 0,
        };
        return Err(GmError::Domain(format!(
            "{what}: found {} value(s) outside the discrete data space: expected integers in [0, {}]",
            counts[1],
            levels - 1
        )));
    }
    Ok(x)
}

/// The model interface of every family.
pub trait GenerativeModel {
    /// The family, e.g. "flow", "vae", "gan".
    fn family(&self) -> &'static str;

    /// One training step on a batch: forward, backward and the family's optimizer update(s).
    fn train_step(&mut self, batch: &Batch) -> Result<StepOutput>;

    /// `n` samples `[n] ++ event_shape` in the data space, drawn as `options` say (see
    /// [`SampleOptions`]; call [`SampleOptions::begin`] first).
    fn sample_with(&self, n: i64, options: &SampleOptions) -> Result<Tensor>;

    /// `n` samples with the default options (EMA weights where kept, temperature 1, labels
    /// drawn uniformly for a conditional model).
    fn sample(&self, n: i64) -> Result<Tensor> {
        self.sample_with(n, &SampleOptions::default())
    }

    /// What [`GenerativeModel::log_likelihood`] returns.
    fn likelihood_kind(&self) -> LikelihoodKind;

    /// How [`GenerativeModel::log_likelihood`] is computed, in words a report can print, where
    /// more than its kind needs saying: the number of importance samples of an IWAE bound, the
    /// dequantisation of a discrete data set, the strata of a diffusion bound, the ODE solver and
    /// divergence estimator of a probability-flow likelihood. `None`: nothing to add.
    fn likelihood_estimator(&self) -> Option<String> {
        None
    }

    /// Per-example log-likelihood in nats, `[batch]`: exact or a lower bound as the kind says;
    /// `None` for a family without one.
    fn log_likelihood(&self, x: &Tensor) -> Result<Option<Tensor>>;

    /// The log-likelihood of `x` given its labels, for conditional models (`ln p(x | y)`).
    /// Unconditional models ignore the labels, which is what this default does.
    fn log_likelihood_given(&self, x: &Tensor, labels: Option<&Tensor>) -> Result<Option<Tensor>> {
        let _ = labels;
        self.log_likelihood(x)
    }

    /// The number of label classes a conditional model is conditioned on; 0 for an
    /// unconditional model (which ignores labels).
    fn label_classes(&self) -> i64 {
        0
    }

    /// Batched network evaluations of the most recent `sample_with`, `log_likelihood`,
    /// `encode` or `decode` call of an iterative model (an ODE or diffusion sampler's steps,
    /// an adaptive solver's count); `None` for one-pass models.
    fn last_evaluations(&self) -> Option<usize> {
        None
    }

    /// A latent code `[batch, ...]` for families that have an encoder.
    fn encode(&self, _x: &Tensor) -> Result<Option<Tensor>> {
        Ok(None)
    }

    /// The data-space point `[batch] ++ event_shape` a latent code of
    /// [`GenerativeModel::encode`] maps back to, for families whose encoder has an exact or
    /// approximate inverse: a flow's inverse, a VAE's decoder mean, DDIM or the
    /// probability-flow ODE run from the latent towards the data. The result is in the units
    /// of [`GenerativeModel::sample_with`]'s samples (discrete data as levels), so
    /// `decode(encode(x))` compares with `x` directly and measures how invertible the encoder
    /// is; each family documents whether it rounds to the data space. `z` must have the shape
    /// and dtype `encode` returns (any batch size ≥ 1) and finite values, else an error.
    /// `None` wherever `encode` gives `None`.
    fn decode(&self, _z: &Tensor) -> Result<Option<Tensor>> {
        Ok(None)
    }

    /// Number of trainable scalars.
    fn num_parameters(&self) -> i64;

    /// The whole training state as named tensors (weights, optimizer state, EMA copies).
    fn state(&self) -> Vec<(String, Tensor)>;

    /// Restores what [`GenerativeModel::state`] produced.
    fn load_state(&mut self, state: &mut StateDict) -> Result<()>;

    /// A fingerprint of the spec the model was built from ([`crate::spec::ModelSpec::fingerprint`]),
    /// saved with its checkpoints so that weights never load into a model of another spec (a
    /// MAF's into an IAF of the same shapes). `None` for models built without a spec.
    fn spec_fingerprint(&self) -> Option<String> {
        None
    }

    /// Saves the state atomically (temporary file, then rename), with the family and the spec's
    /// fingerprint.
    fn save(&self, path: &Path) -> Result<()> {
        save_tensors(path, &self.state(), &checkpoint_meta(self))
    }

    /// Loads a file written by [`GenerativeModel::save`], all or nothing: the family must match,
    /// and the spec fingerprint too when both the file and the model have one (files written
    /// before fingerprints existed load by family and tensor shapes); if any tensor is missing,
    /// misshapen or left over, the model's state is restored to what it was before the call.
    fn load(&mut self, path: &Path) -> Result<()> {
        let (mut state, meta) = load_tensors(path)?;
        check_checkpoint_meta(self, &meta, path)?;
        load_all_or_nothing(self, &mut state, path)
    }
}

/// The metadata every checkpoint of `model` carries: its family and spec fingerprint.
pub fn checkpoint_meta(model: &(impl GenerativeModel + ?Sized)) -> serde_json::Value {
    serde_json::json!({
        "family": model.family(),
        "spec": model.spec_fingerprint(),
    })
}

/// Checks a checkpoint's family and spec fingerprint against `model`.
pub fn check_checkpoint_meta(
    model: &(impl GenerativeModel + ?Sized),
    meta: &serde_json::Value,
    path: &Path,
) -> Result<()> {
    let bad = |message: String| GmError::Checkpoint {
        path: path.display().to_string(),
        message,
    };
    match meta.get("family").and_then(|f| f.as_str()) {
        Some(f) if f == model.family() => {}
        Some(f) => {
            return Err(bad(format!(
                "written by a {f} model, loading into a {} model",
                model.family()
            )))
        }
        None => return Err(bad("the file names no model family".into())),
    }
    if let (Some(saved), Some(mine)) = (
        meta.get("spec").and_then(|s| s.as_str()),
        model.spec_fingerprint(),
    ) {
        if saved != mine {
            return Err(bad(format!(
                "written by a model of another configuration (spec fingerprint {saved}, this model's is {mine})"
            )));
        }
    }
    Ok(())
}

/// Restores `state` into `model`, and on any failure puts the model's previous state back.
pub fn load_all_or_nothing(
    model: &mut (impl GenerativeModel + ?Sized),
    state: &mut StateDict,
    path: &Path,
) -> Result<()> {
    let backup: Vec<(String, Tensor)> = model
        .state()
        .into_iter()
        .map(|(n, t)| (n, t.detach().copy()))
        .collect();
    let loaded = model
        .load_state(state)
        .and_then(|()| std::mem::take(state).finish(path));
    if let Err(e) = loaded {
        // Restoring our own snapshot cannot miss a tensor; if it fails anyway, say so.
        model
            .load_state(&mut StateDict::from_tensors(backup))
            .map_err(|restore| GmError::Checkpoint {
                path: path.display().to_string(),
                message: format!("{e}; restoring the previous state failed too: {restore}"),
            })?;
        return Err(e);
    }
    Ok(())
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
