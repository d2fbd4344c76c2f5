//! A flow: layers over a standard Normal base, and the trainable model built from a config.

use crate::config::{Architecture, DataSpace, FlowConfig};
use crate::glow::MultiScale;
use crate::image::LogitPreprocess;
use crate::layer::FlowLayer;
use crate::vector::{
    alternating_mask, ActNorm, AutoregressiveKind, Coupling, MaskedAutoregressive, Permutation,
};
use gm_core::distributions::{Distribution, StandardNormal};
use gm_core::model::{
    load_var_store, var_store_state, Batch, GenerativeModel, LikelihoodKind, StepOutput,
};
use gm_core::nn::{MlpConfig, Ordering};
use gm_core::tch::{nn, Device, Kind, Tensor};
use gm_core::train::{Adam, Config, StateDict};
use gm_core::{GmError, Result};

/// Layers `f = f_L ∘ … ∘ f_1` (data → noise) over a standard Normal on `[latent]`:
/// `ln p(x) = ln N(f(x); 0, I) + Σ ln |det ∂f_i|`.
pub struct Flow {
    layers: Vec<Box<dyn FlowLayer>>,
    base: StandardNormal,
    /// The shape of one example, e.g. `[2]` or `[1, 28, 28]`.
    event_shape: Vec<i64>,
    latent: i64,
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
        }
    }

    pub fn event_shape(&self) -> &[i64] {
        &self.event_shape
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
        let mut h = x.shallow_clone();
        let mut total = Tensor::f_zeros([x.size()[0]], (x.kind(), x.device()))?;
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
        Ok(self
            .base
            .log_prob(&z.f_to_kind(Kind::Float)?)?
            .f_to_kind(ld.kind())?
            .f_add(&ld)?)
    }

    /// `(x, ln |det ∂x/∂z|)` from latents `[batch, latent]`.
    pub fn inverse(&self, z: &Tensor, context: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
        if z.dim() != 2 || z.size()[1] != self.latent {
            return Err(GmError::shape(
                "Flow latent",
                format!("[batch, {}]", self.latent),
                &z.size(),
            ));
        }
        let batch = z.size()[0];
        // Vector flows take the flat latent as is; image flows start from a flat latent too
        // (the multi-scale layer unflattens it), so no reshape is needed here.
        let mut h = z.shallow_clone();
        let mut total = Tensor::f_zeros([batch], (z.kind(), z.device()))?;
        for layer in self.layers.iter().rev() {
            let (prev, ld) = layer.inverse(&h, context)?;
            h = prev;
            total = total.f_add(&ld)?;
        }
        let shape: Vec<i64> = std::iter::once(batch)
            .chain(self.event_shape.iter().copied())
            .collect();
        Ok((h.f_reshape(shape.as_slice())?, total))
    }

    /// `n` draws (with an optional context `[n, C]`), scaled by `temperature` in the latent space.
    pub fn sample(&self, n: i64, context: Option<&Tensor>, temperature: f64) -> Result<Tensor> {
        gm_core::tch::no_grad(|| {
            let z = self.base.sample(&[n])?.f_mul_scalar(temperature)?;
            Ok(self.inverse(&z, context)?.0)
        })
    }
}

/// Builds the layers of `config` for examples of shape `event_shape`.
pub fn build_flow(config: &FlowConfig, path: &nn::Path, event_shape: &[i64]) -> Result<Flow> {
    config.validate()?;
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
    Ok(Flow::new(layers, event_shape, latent, device))
}

fn vector_features(event_shape: &[i64]) -> Result<i64> {
    match event_shape {
        [d] if *d >= 2 => Ok(*d),
        _ => Err(GmError::config("architecture", format!("coupling and autoregressive flows need vector examples [D ≥ 2], got {event_shape:?}"))),
    }
}

/// A trainable flow: the flow, its variables and optimizer, and the data-space convention.
pub struct FlowModel {
    vs: nn::VarStore,
    flow: Flow,
    optimizer: Adam,
    config: FlowConfig,
    dims: i64,
}

impl FlowModel {
    /// A new model for examples of shape `event_shape` (e.g. `[2]` or `[1, 28, 28]`).
    pub fn new(config: &FlowConfig, event_shape: &[i64], device: Device) -> Result<Self> {
        let vs = nn::VarStore::new(device);
        let flow = build_flow(config, &vs.root(), event_shape)?;
        let optimizer = Adam::new(vs.trainable_variables(), config.optimizer.clone())?;
        Ok(FlowModel {
            vs,
            flow,
            optimizer,
            config: config.clone(),
            dims: event_shape.iter().product(),
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

    /// Reshapes a batch to `[batch, event...]` (accepting flat `[batch, D]` image batches).
    fn shaped(&self, x: &Tensor) -> Result<Tensor> {
        let event = self.flow.event_shape();
        let shape: Vec<i64> = std::iter::once(-1).chain(event.iter().copied()).collect();
        let per_example: i64 = x.size().iter().skip(1).product();
        if x.dim() < 2 || per_example != self.dims {
            return Err(GmError::shape(
                "FlowModel input",
                format!("[batch, {event:?}] or [batch, {}]", self.dims),
                &x.size(),
            ));
        }
        Ok(x.f_to_kind(Kind::Float)?.f_reshape(shape.as_slice())?)
    }

    /// The one-hot context for labels, or `None` for an unconditional flow.
    fn context(&self, labels: Option<&Tensor>, batch: i64) -> Result<Option<Tensor>> {
        let k = self.config.context_classes;
        if k == 0 {
            return Ok(None);
        }
        let labels =
            labels.ok_or_else(|| GmError::Unsupported("a conditional flow needs labels".into()))?;
        if labels.size() != [batch] {
            return Err(GmError::shape(
                "labels",
                format!("[{batch}]"),
                &labels.size(),
            ));
        }
        Ok(Some(
            labels
                .f_to_kind(Kind::Int64)?
                .f_one_hot(k)?
                .f_to_kind(Kind::Float)?,
        ))
    }

    /// Log-likelihood per example in nats: exact for continuous data; for discrete data the
    /// dequantisation lower bound (see [`DataSpace::Discrete`]).
    pub fn log_prob(&self, x: &Tensor, labels: Option<&Tensor>) -> Result<Tensor> {
        let x = self.shaped(x)?;
        let context = self.context(labels, x.size()[0])?;
        match self.config.data {
            DataSpace::Continuous => self.flow.log_prob(&x, context.as_ref()),
            DataSpace::Discrete { levels } => {
                let y = x.f_add(&x.f_rand_like()?)?.f_div_scalar(levels as f64)?;
                let lp = self.flow.log_prob(&y, context.as_ref())?;
                gm_core::bounds::dequantized_nll_nats(&lp, self.dims as usize, levels)?
                    .f_neg()
                    .map_err(Into::into)
            }
        }
    }

    /// Draws `n` examples; discrete models return integer levels (as floats).
    pub fn sample_with(&self, n: i64, labels: Option<&Tensor>, temperature: f64) -> Result<Tensor> {
        let context = self.context(labels, n)?;
        let y = self.flow.sample(n, context.as_ref(), temperature)?;
        match self.config.data {
            DataSpace::Continuous => Ok(y),
            DataSpace::Discrete { levels } => {
                let l = levels as f64;
                Ok(y.f_mul_scalar(l)?.f_floor()?.f_clamp(0.0, l - 1.0)?)
            }
        }
    }
}

impl GenerativeModel for FlowModel {
    fn family(&self) -> &'static str {
        "flow"
    }

    fn train_step(&mut self, batch: &Batch) -> Result<StepOutput> {
        let lp = self.log_prob(&batch.x, batch.labels.as_ref())?;
        let nll = lp.f_mean(None::<Kind>)?.f_neg()?;
        // Per-dimension loss keeps gradient sizes comparable across data sizes.
        let loss = nll.f_div_scalar(self.dims as f64)?;
        let lr = self
            .config
            .schedule
            .lr(self.config.optimizer.lr, self.optimizer.steps() as u64);
        self.optimizer.backward_step(&loss, lr)?;
        Ok(StepOutput::new().with("nll", &nll))
    }

    fn sample(&self, n: i64) -> Result<Tensor> {
        let labels = match self.config.context_classes {
            0 => None,
            k => Some(Tensor::f_randint(k, [n], (Kind::Int64, self.vs.device()))?),
        };
        self.sample_with(n, labels.as_ref(), 1.0)
    }

    fn likelihood_kind(&self) -> LikelihoodKind {
        match self.config.data {
            DataSpace::Continuous => LikelihoodKind::Exact,
            DataSpace::Discrete { .. } => LikelihoodKind::LowerBound,
        }
    }

    fn log_likelihood(&self, x: &Tensor) -> Result<Option<Tensor>> {
        if self.config.context_classes > 0 {
            return Err(GmError::Unsupported(
                "a conditional flow's likelihood needs labels: use FlowModel::log_prob".into(),
            ));
        }
        gm_core::tch::no_grad(|| self.log_prob(x, None)).map(Some)
    }

    fn encode(&self, x: &Tensor) -> Result<Option<Tensor>> {
        if self.config.context_classes > 0 {
            return Ok(None);
        }
        let x = self.shaped(x)?;
        gm_core::tch::no_grad(|| Ok(Some(self.flow.transform_to_noise(&x, None)?.0)))
    }

    fn num_parameters(&self) -> i64 {
        gm_core::nn::count_parameters(&self.vs.trainable_variables())
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        let mut s = var_store_state(&self.vs, "flow.");
        s.extend(self.optimizer.state("adam."));
        s
    }

    fn load_state(&mut self, state: &mut StateDict) -> Result<()> {
        load_var_store(&self.vs, "flow.", state)?;
        self.optimizer.load_state("adam.", state)
    }
}
