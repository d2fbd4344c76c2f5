//! A flow: layers over a standard Normal base, and the trainable model built from a config.

use crate::config::{Architecture, DataSpace, FlowConfig};
use crate::glow::MultiScale;
use crate::image::LogitPreprocess;
use crate::layer::FlowLayer;
use crate::vector::{
    alternating_mask, ActNorm, AutoregressiveKind, Coupling, MaskedAutoregressive, Permutation,
};
use gm_core::data::ValueKind;
use gm_core::distributions::{Distribution, StandardNormal};
use gm_core::model::{
    check_data, check_labels, check_latent, load_var_store, var_store_state, Batch,
    GenerativeModel, LikelihoodKind, SampleOptions, StepOutput, WeightChoice,
};
use gm_core::nn::{MlpConfig, Ordering};
use gm_core::tch::{nn, Device, Kind, Tensor};
use gm_core::train::config::with_section;
use gm_core::train::{Adam, Config, Ema, StateDict};
use gm_core::{GmError, Result};

/// Layers `f = f_L ∘ … ∘ f_1` (data → noise) over a standard Normal on `[latent]`:
/// `ln p(x) = ln N(f(x); 0, I) + Σ ln |det ∂f_i|`.
pub struct Flow {
    layers: Vec<Box<dyn FlowLayer>>,
    base: StandardNormal,
    /// The shape of one example, e.g. `[2]` or `[1, 28, 28]`.
    event_shape: Vec<i64>,
    latent: i64,
    /// The dtype of the layers' parameters: inputs are converted to it, and the base density
    /// and draws use it, so a float64 flow is float64 throughout.
    kind: Kind,
}

impl Flow {
    /// `latent` is the size of the (flat) output of the last layer.
    pub fn new(
        layers: Vec<Box<dyn FlowLayer>>,
        event_shape: &[i64],
        latent: i64,
        device: Device,
    ) -> Self {
        Flow {
            layers,
            base: StandardNormal::new(&[latent], device),
            event_shape: event_shape.to_vec(),
            latent,
            kind: Kind::Float,
        }
    }

    /// The same flow for parameters of dtype `kind` (`build_flow` sets the var store's).
    pub fn with_kind(mut self, kind: Kind) -> Self {
        self.kind = kind;
        self
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn event_shape(&self) -> &[i64] {
        &self.event_shape
    }

    /// The size of the flat latent `[batch, latent]` the layers map an example to.
    pub fn latent(&self) -> i64 {
        self.latent
    }

    fn check_input(&self, x: &Tensor) -> Result<()> {
        if x.dim() != self.event_shape.len() + 1 || x.size()[1..] != self.event_shape[..] {
            return Err(GmError::shape(
                "Flow input",
                format!("[batch, {:?}]", self.event_shape),
                &x.size(),
            ));
        }
        Ok(())
    }

    /// `(z, ln |det ∂z/∂x|)` with `z` flat `[batch, latent]`.
    pub fn transform_to_noise(
        &self,
        x: &Tensor,
        context: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor)> {
        self.check_input(x)?;
        let mut h = gm_core::nn::to_weight_kind(x, self.kind, "Flow input")?;
        let mut total = Tensor::f_zeros([x.size()[0]], (self.kind, x.device()))?;
        for layer in &self.layers {
            let (next, ld) = layer.forward(&h, context)?;
            h = next;
            total = total.f_add(&ld)?;
        }
        Ok((h.f_reshape([x.size()[0], self.latent])?, total))
    }

    /// The exact log-density `[batch]` of `x`.
    pub fn log_prob(&self, x: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        let (z, ld) = self.transform_to_noise(x, context)?;
        // ln N(z; 0, I) in the flow's own dtype.
        let log_base = z
            .f_square()?
            .f_sum_dim_intlist(&[1i64][..], false, self.kind)?
            .f_mul_scalar(-0.5)?
            .f_sub_scalar(0.5 * self.latent as f64 * (2.0 * std::f64::consts::PI).ln())?;
        Ok(log_base.f_add(&ld)?)
    }

    /// `(x, ln |det ∂x/∂z|)` from latents `[batch, latent]`.
    pub fn inverse(&self, z: &Tensor, context: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
        let mut h = self.latent_in(z)?;
        let mut total = Tensor::f_zeros([z.size()[0]], (self.kind, z.device()))?;
        for layer in self.layers.iter().rev() {
            let (prev, ld) = layer.inverse(&h, context)?;
            h = prev;
            total = total.f_add(&ld)?;
        }
        Ok((self.event_out(&h)?, total))
    }

    /// [`Flow::inverse`]'s `x` alone, for drawing samples: each layer's
    /// [`FlowLayer::inverse_only`], without log-determinants or gradients.
    pub fn inverse_only(&self, z: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        gm_core::tch::no_grad(|| {
            let mut h = self.latent_in(z)?;
            for layer in self.layers.iter().rev() {
                h = layer.inverse_only(&h, context)?;
            }
            self.event_out(&h)
        })
    }

    /// A latent `[batch, latent]` checked and in the weights' dtype. Vector flows take the flat
    /// latent as is; image flows start from a flat latent too (the multi-scale layer
    /// unflattens it), so no reshape is needed here.
    fn latent_in(&self, z: &Tensor) -> Result<Tensor> {
        if z.dim() != 2 || z.size()[1] != self.latent {
            return Err(GmError::shape(
                "Flow latent",
                format!("[batch, {}]", self.latent),
                &z.size(),
            ));
        }
        gm_core::nn::to_weight_kind(z, self.kind, "Flow latent")
    }

    /// The first layer's input shape, `[batch] ++ event_shape`, for `h`.
    fn event_out(&self, h: &Tensor) -> Result<Tensor> {
        let shape: Vec<i64> = std::iter::once(h.size()[0])
            .chain(self.event_shape.iter().copied())
            .collect();
        Ok(h.f_reshape(shape.as_slice())?)
    }

    /// `n` draws (with an optional context `[n, C]`), scaled by `temperature` in the latent space.
    /// Draws holding a NaN or an infinity are refused with [`GmError::NonFinite`] naming the
    /// first layer whose output is not finite (at step 0; [`FlowModel`] reports its own).
    pub fn sample(&self, n: i64, context: Option<&Tensor>, temperature: f64) -> Result<Tensor> {
        gm_core::tch::no_grad(|| {
            let z = self
                .base
                .sample(&[n])?
                .f_to_kind(self.kind)?
                .f_mul_scalar(temperature)?;
            let x = self.inverse_only(&z, context)?;
            crate::layer::ensure_finite_draws(&self.layers, &z, &x, context, 0)?;
            Ok(x)
        })
    }
}

/// Builds the layers of `config` for examples of shape `event_shape`.
pub fn build_flow(config: &FlowConfig, path: &nn::Path, event_shape: &[i64]) -> Result<Flow> {
    Config::validate(config)?;
    let device = path.device();
    let context = config.context_classes;
    let mut layers: Vec<Box<dyn FlowLayer>> = Vec::new();
    let latent: i64 = event_shape.iter().product();
    match &config.architecture {
        Architecture::Coupling {
            layers: n,
            hidden,
            transform,
            actnorm,
        } => {
            let d = vector_features(event_shape)?;
            let mlp = MlpConfig {
                hidden: hidden.clone(),
                ..Default::default()
            };
            for i in 0..*n {
                let p = path / format!("layer{i}");
                if *actnorm {
                    layers.push(Box::new(ActNorm::new(&(&p / "actnorm"), d)?));
                }
                layers.push(Box::new(Coupling::new(
                    &(&p / "coupling"),
                    &alternating_mask(d, i as i64),
                    *transform,
                    &mlp,
                    context,
                )?));
                // With two alternating masks a reversal is redundant for D = 2 but mixes
                // dimensions that are far apart in higher dimensions.
                if d > 2 && i + 1 < *n {
                    layers.push(Box::new(Permutation::reverse(d, device)?));
                }
            }
        }
        Architecture::Autoregressive {
            layers: n,
            hidden,
            transform,
            inverse,
            actnorm,
        } => {
            let d = vector_features(event_shape)?;
            let kind = if *inverse {
                AutoregressiveKind::Iaf
            } else {
                AutoregressiveKind::Maf
            };
            for i in 0..*n {
                let p = path / format!("layer{i}");
                if *actnorm {
                    layers.push(Box::new(ActNorm::new(&(&p / "actnorm"), d)?));
                }
                layers.push(Box::new(MaskedAutoregressive::new(
                    &(&p / "made"),
                    d,
                    hidden,
                    Ordering::Natural,
                    *transform,
                    kind,
                    context,
                )?));
                if i + 1 < *n {
                    layers.push(Box::new(Permutation::reverse(d, device)?));
                }
            }
        }
        Architecture::MultiScale {
            levels,
            steps,
            hidden_channels,
            logit_alpha,
        } => {
            let shape: [i64; 3] = event_shape.try_into().map_err(|_| {
                GmError::config(
                    "architecture",
                    format!("the multi-scale flow needs [C, H, W] examples, got {event_shape:?}"),
                )
            })?;
            if !matches!(config.data, DataSpace::Discrete { .. }) {
                return Err(GmError::config("data", "the multi-scale flow models dequantised pixels: use data = { kind = \"discrete\", levels = ... }"));
            }
            layers.push(Box::new(LogitPreprocess::new(*logit_alpha)?));
            layers.push(Box::new(MultiScale::new(
                &(path / "glow"),
                shape,
                *levels,
                *steps,
                *hidden_channels,
            )?));
        }
    }
    Ok(Flow::new(layers, event_shape, latent, device).with_kind(path.kind()))
}

fn vector_features(event_shape: &[i64]) -> Result<i64> {
    match event_shape {
        [d] if *d >= 2 => Ok(*d),
        _ => Err(GmError::config("architecture", format!("coupling and autoregressive flows need vector examples [D ≥ 2], got {event_shape:?}"))),
    }
}

/// Activation values one example keeps through a forward pass of `config`'s flow on
/// `event_shape` (an estimate for the memory budget, not an exact count).
fn activations_per_example(config: &FlowConfig, event_shape: &[i64]) -> i128 {
    let d: i128 = event_shape.iter().map(|&x| x as i128).product();
    if let Some((layers, hidden, transform)) = config.architecture.vector_parts() {
        let widths: i128 = hidden.iter().map(|&h| h as i128).sum();
        return layers as i128 * (4 * d + widths + d * transform.params_per_dim() as i128);
    }
    match &config.architecture {
        Architecture::MultiScale {
            levels,
            steps,
            hidden_channels,
            ..
        } => {
            let (mut c, mut h, mut w) = match event_shape {
                [c, h, w] => (*c as i128, *h as i128, *w as i128),
                _ => (d, 1, 1),
            };
            let mut total = 2 * d;
            for level in 0..*levels {
                c *= 4;
                h /= 2;
                w /= 2;
                total += *steps as i128 * (5 * c + 2 * *hidden_channels as i128) * h * w;
                if level + 1 < *levels {
                    c -= c / 2;
                }
            }
            total
        }
        _ => 0,
    }
}

/// A trainable flow: the flow, its variables, optimizer and optional weight average, and the
/// data-space convention.
pub struct FlowModel {
    vs: nn::VarStore,
    flow: Flow,
    optimizer: Adam,
    ema: Option<Ema>,
    config: FlowConfig,
    dims: i64,
    activations_per_example: i128,
}

impl FlowModel {
    /// A new model for examples of shape `event_shape` (e.g. `[2]` or `[1, 28, 28]`).
    pub fn new(config: &FlowConfig, event_shape: &[i64], device: Device) -> Result<Self> {
        Config::validate(config)?;
        let vs = nn::VarStore::new(device);
        let flow = build_flow(config, &vs.root(), event_shape)?;
        let optimizer = Adam::new(vs.trainable_variables(), config.optimizer.clone())?;
        let ema = config
            .ema
            .as_ref()
            .map(|e| e.init(&vs))
            .transpose()
            .map_err(|e| with_section("ema", e))?;
        Ok(FlowModel {
            vs,
            flow,
            optimizer,
            ema,
            config: config.clone(),
            dims: event_shape.iter().product(),
            activations_per_example: activations_per_example(config, event_shape),
        })
    }

    pub fn flow(&self) -> &Flow {
        &self.flow
    }

    pub fn config(&self) -> &FlowConfig {
        &self.config
    }

    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    fn value_kind(&self) -> ValueKind {
        match self.config.data {
            DataSpace::Continuous => ValueKind::Continuous,
            DataSpace::Discrete { levels } => ValueKind::Discrete { levels },
        }
    }

    /// Checks a batch against the input contract and returns it as `Float`.
    fn checked(&self, x: &Tensor, what: &str) -> Result<Tensor> {
        let x = check_data(x, self.flow.event_shape(), self.value_kind(), what)?;
        gm_core::nn::check_activation_budget(x.size()[0], self.activations_per_example, what)?;
        Ok(x.f_to_kind(self.flow.kind())?)
    }

    /// The one-hot context for labels, or `None` for an unconditional flow (which ignores
    /// labels).
    fn context(&self, labels: Option<&Tensor>, batch: i64) -> Result<Option<Tensor>> {
        let k = self.config.context_classes;
        if k == 0 {
            return Ok(None);
        }
        let labels = labels.ok_or_else(|| {
            GmError::Unsupported(format!(
                "this flow is conditional on {k} classes: give labels [batch]"
            ))
        })?;
        check_labels(labels, batch, k, "FlowModel labels")?;
        Ok(Some(
            labels
                .f_to_kind(Kind::Int64)?
                .f_to_device(self.vs.device())?
                .f_one_hot(k)?
                .f_to_kind(Kind::Float)?,
        ))
    }

    /// Log-likelihood per example in nats of checked data: exact for continuous data; for
    /// discrete data the dequantisation lower bound (see [`DataSpace::Discrete`]).
    fn log_prob_checked(&self, x: &Tensor, labels: Option<&Tensor>) -> Result<Tensor> {
        let context = self.context(labels, x.size()[0])?;
        match self.config.data {
            DataSpace::Continuous => self.flow.log_prob(x, context.as_ref()),
            DataSpace::Discrete { levels } => {
                let y = x.f_add(&x.f_rand_like()?)?.f_div_scalar(levels as f64)?;
                let lp = self.flow.log_prob(&y, context.as_ref())?;
                gm_core::bounds::dequantized_nll_nats(&lp, self.dims as usize, levels)?
                    .f_neg()
                    .map_err(Into::into)
            }
        }
    }

    /// Log-likelihood per example in nats with the raw weights, differentiable (see
    /// `FlowModel::log_prob_checked`); `labels` for a conditional flow.
    pub fn log_prob(&self, x: &Tensor, labels: Option<&Tensor>) -> Result<Tensor> {
        let x = self.checked(x, "FlowModel.log_prob x")?;
        self.log_prob_checked(&x, labels)
    }

    /// Points of the flow's space (`[0, 1]` for discrete data) in the data space: continuous
    /// values as they are, discrete ones as the level whose dequantisation cell holds them,
    /// `floor(y · levels)` clamped into `0..levels` (integers as floats).
    fn to_data_space(&self, y: Tensor) -> Result<Tensor> {
        match self.config.data {
            DataSpace::Continuous => Ok(y),
            DataSpace::Discrete { levels } => {
                let l = levels as f64;
                Ok(y.f_mul_scalar(l)?.f_floor()?.f_clamp(0.0, l - 1.0)?)
            }
        }
    }

    /// Runs `f` with the averaged weights when `weights` asks for them and the model keeps an
    /// average, with the raw weights otherwise.
    fn with_weights<R>(&self, weights: WeightChoice, f: impl FnOnce() -> Result<R>) -> Result<R> {
        Ema::with_choice(self.ema.as_ref(), self.optimizer.steps() > 0, weights, f)
    }

    /// `ln p(x | y)`, or for a conditional flow without labels the mixture over labels with a
    /// uniform label prior, `ln (1/C) Σ_y p(x | y)`; with the averaged weights if kept.
    fn evaluate(&self, x: &Tensor, labels: Option<&Tensor>) -> Result<Tensor> {
        let x = self.checked(x, "FlowModel.log_likelihood x")?;
        gm_core::tch::no_grad(|| {
            self.with_weights(WeightChoice::Ema, || {
                let k = self.config.context_classes;
                match (k, labels) {
                    (0, _) | (_, Some(_)) => self.log_prob_checked(&x, labels),
                    (k, None) => {
                        let batch = x.size()[0];
                        let per_label = (0..k)
                            .map(|y| {
                                let l = Tensor::f_full([batch], y, (Kind::Int64, x.device()))?;
                                self.log_prob_checked(&x, Some(&l))
                            })
                            .collect::<Result<Vec<_>>>()?;
                        Ok(Tensor::f_stack(&per_label, 0)?
                            .f_logsumexp(&[0i64][..], false)?
                            .f_sub_scalar((k as f64).ln())?)
                    }
                }
            })
        })
    }
}

impl GenerativeModel for FlowModel {
    fn family(&self) -> &'static str {
        "flow"
    }

    fn train_step(&mut self, batch: &Batch) -> Result<StepOutput> {
        let x = self.checked(&batch.x, "FlowModel.train_step x")?;
        let lp = self.log_prob_checked(&x, batch.labels.as_ref())?;
        let nll = lp.f_mean(None::<Kind>)?.f_neg()?;
        // Per-dimension loss keeps gradient sizes comparable across data sizes.
        let loss = nll.f_div_scalar(self.dims as f64)?;
        let lr = self
            .config
            .schedule
            .lr(self.config.optimizer.lr, self.optimizer.steps() as u64);
        self.optimizer.backward_step(&loss, lr)?;
        if let Some(ema) = &mut self.ema {
            ema.update(self.optimizer.steps() as u64)?;
        }
        Ok(StepOutput::new().with("nll", &nll))
    }

    /// Reads `labels` (conditional flows), `temperature` (scales the base noise), `weights`
    /// and `seed`. Discrete models return integer levels (as floats). A draw holding a NaN or an
    /// infinity is refused with [`GmError::NonFinite`] at the current training step, naming
    /// the layer where it appeared.
    fn sample_with(&self, n: i64, options: &SampleOptions) -> Result<Tensor> {
        options.begin(n)?;
        let labels = match self.config.context_classes {
            0 => None,
            k => Some(options.labels_for(n, k, self.vs.device())?),
        };
        let context = self.context(labels.as_ref(), n)?;
        let y = self
            .with_weights(options.weights, || {
                self.flow.sample(n, context.as_ref(), options.temperature)
            })
            .map_err(|e| crate::layer::at_step(e, self.optimizer.steps() as u64))?;
        self.to_data_space(y)
    }

    fn likelihood_kind(&self) -> LikelihoodKind {
        match self.config.data {
            DataSpace::Continuous => LikelihoodKind::Exact,
            DataSpace::Discrete { .. } => LikelihoodKind::LowerBound,
        }
    }

    fn log_likelihood(&self, x: &Tensor) -> Result<Option<Tensor>> {
        self.evaluate(x, None).map(Some)
    }

    fn likelihood_estimator(&self) -> Option<String> {
        match self.config.data {
            DataSpace::Continuous => None,
            DataSpace::Discrete { levels } => Some(format!(
                "uniform dequantisation of {levels} levels, 1 draw per example"
            )),
        }
    }

    fn log_likelihood_given(&self, x: &Tensor, labels: Option<&Tensor>) -> Result<Option<Tensor>> {
        self.evaluate(x, labels).map(Some)
    }

    fn label_classes(&self) -> i64 {
        self.config.context_classes
    }

    /// The flat latent `f(x)` `[batch, latent]` of an unconditional flow (`None` for a
    /// conditional one), with the averaged weights where kept, as `log_likelihood` and
    /// `sample` use. Discrete data are mapped deterministically to the centres of their
    /// dequantisation cells, `(x + ½) / levels`, the space the flow was trained on.
    fn encode(&self, x: &Tensor) -> Result<Option<Tensor>> {
        if self.config.context_classes > 0 {
            return Ok(None);
        }
        let x = self.checked(x, "FlowModel.encode x")?;
        let y = match self.config.data {
            DataSpace::Continuous => x,
            DataSpace::Discrete { levels } => x.f_add_scalar(0.5)?.f_div_scalar(levels as f64)?,
        };
        gm_core::tch::no_grad(|| {
            self.with_weights(WeightChoice::Ema, || {
                Ok(Some(self.flow.transform_to_noise(&y, None)?.0))
            })
        })
    }

    /// The flow's inverse `f⁻¹(z)` of flat latents `[batch, latent]` (unconditional flows;
    /// `None` for a conditional one), with the weights `encode` uses, mapped to the data space
    /// as `sample_with` maps draws: continuous values unchanged, discrete ones to the level
    /// `floor(y · levels)` (clamped), as floats. `decode(encode(x))` is `x` up to float
    /// rounding for continuous data, and exactly `x` for discrete data as long as the inverse's
    /// error stays below half a cell (`1 / (2 · levels)` on the flow's scale).
    fn decode(&self, z: &Tensor) -> Result<Option<Tensor>> {
        if self.config.context_classes > 0 {
            return Ok(None);
        }
        let what = "FlowModel.decode z";
        let z = check_latent(
            z,
            &[self.flow.latent()],
            self.flow.kind(),
            self.vs.device(),
            what,
        )?;
        gm_core::nn::check_activation_budget(z.size()[0], self.activations_per_example, what)?;
        let y = gm_core::tch::no_grad(|| {
            self.with_weights(WeightChoice::Ema, || self.flow.inverse_only(&z, None))
        })?;
        self.to_data_space(y).map(Some)
    }

    fn spec_fingerprint(&self) -> Option<String> {
        gm_core::spec::ModelSpec::fingerprint(&self.config).ok()
    }

    fn num_parameters(&self) -> i64 {
        gm_core::nn::count_parameters(&self.vs.trainable_variables())
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        let mut s = var_store_state(&self.vs, "flow.");
        s.extend(self.optimizer.state("adam."));
        if let Some(ema) = &self.ema {
            s.extend(ema.state("ema."));
        }
        s
    }

    fn load_state(&mut self, state: &mut StateDict) -> Result<()> {
        load_var_store(&self.vs, "flow.", state)?;
        self.optimizer.load_state("adam.", state)?;
        if let Some(ema) = &mut self.ema {
            ema.load_state("ema.", state)?;
        }
        Ok(())
    }
}
