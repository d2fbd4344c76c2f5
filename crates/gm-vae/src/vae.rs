//! The VAE: networks and bounds ([`VaeNet`]), and the trainable model that owns its weights and
//! optimizer ([`Vae`], a gm-core [`GenerativeModel`]).

use crate::config::{ContextConfig, ObjectiveConfig, VaeConfig};
use crate::decoder::Decoder;
use crate::encoder::{standard_normal_prior, DiagGaussian, GaussianEncoder};
use crate::likelihood::Likelihood;
use gm_core::bounds::{elbo, iwae_bound};
use gm_core::distributions::{Distribution, StandardNormal};
use gm_core::kl::kl_divergence;
use gm_core::model::{
    check_latent, load_var_store, var_store_state, Batch, GenerativeModel, LikelihoodKind,
    SampleOptions, StepOutput,
};
use gm_core::tch::{nn, Device, Kind, Tensor};
use gm_core::train::config::with_section;
use gm_core::train::{Adam, Config, StateDict};
use gm_core::{GmError, Result};

/// The per-example terms of the ELBO, each `[batch]`, in nats.
#[derive(Debug)]
pub struct ElboTerms {
    /// `E_q[ln p(x | z)]`, a Monte Carlo average over reparameterised draws.
    pub expected_log_likelihood: Tensor,
    /// `KL(q(z | x) ‖ p(z))`, in closed form.
    pub kl: Tensor,
    /// `expected_log_likelihood - kl`.
    pub elbo: Tensor,
}

/// The networks of a VAE and everything computed from them: posterior, likelihood, bounds and
/// the importance-sampled log-likelihood. It holds no optimizer; [`Vae`] adds one.
#[derive(Debug)]
pub struct VaeNet {
    encoder: GaussianEncoder,
    decoder: Decoder,
    data_shape: Vec<i64>,
    latent_dim: i64,
    context: ContextConfig,
    eval_samples: i64,
    eval_chunk_elements: i64,
    kind: Kind,
    device: Device,
}

impl VaeConfig {
    /// Builds the encoder (under `encoder`) and decoder (under `decoder`) in `vs_path`'s store.
    pub fn init(&self, vs_path: &nn::Path) -> Result<VaeNet> {
        self.validate()?;
        let context = self.context.features();
        let encoder = GaussianEncoder::new(
            &self.encoder,
            &(vs_path / "encoder"),
            &self.data_shape,
            context,
            self.latent_dim,
        )
        .map_err(|e| with_section("encoder", e))?;
        let decoder = Decoder::new(
            &self.decoder,
            &self.likelihood,
            &(vs_path / "decoder"),
            self.latent_dim,
            context,
            &self.data_shape,
        )
        .map_err(|e| with_section("decoder", e))?;
        Ok(VaeNet {
            encoder,
            decoder,
            data_shape: self.data_shape.clone(),
            latent_dim: self.latent_dim,
            context: self.context,
            eval_samples: self.eval_samples,
            eval_chunk_elements: self.eval_chunk_elements,
            kind: vs_path.kind(),
            device: vs_path.device(),
        })
    }
}

/// `shape` as `[2, 3]`-style text for error messages.
fn shape_text(shape: &[i64]) -> String {
    let parts: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    parts.join(", ")
}

impl VaeNet {
    pub fn data_shape(&self) -> &[i64] {
        &self.data_shape
    }

    pub fn latent_dim(&self) -> i64 {
        self.latent_dim
    }

    pub fn context(&self) -> ContextConfig {
        self.context
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    pub fn encoder(&self) -> &GaussianEncoder {
        &self.encoder
    }

    /// The number of importance samples `log_likelihood` uses.
    pub fn eval_samples(&self) -> i64 {
        self.eval_samples
    }

    pub fn set_eval_samples(&mut self, k: i64) -> Result<()> {
        if k < 1 {
            return Err(GmError::config(
                "eval_samples",
                format!("must be at least 1, got {k}"),
            ));
        }
        self.eval_samples = k;
        Ok(())
    }

    /// `p(z) = N(0, I)`.
    pub fn prior(&self) -> Result<DiagGaussian> {
        standard_normal_prior(self.latent_dim, self.kind, self.device)
    }

    /// Reshapes data `[batch] ++ data_shape` or `[batch, D]` to `[batch] ++ data_shape`,
    /// or explains what was expected.
    pub fn data_batch(&self, x: &Tensor, what: &str) -> Result<Tensor> {
        let size = x.size();
        let elements: i64 = self.data_shape.iter().product();
        let matches_shape = size.len() == self.data_shape.len() + 1 && size[1..] == self.data_shape;
        let matches_flat = size.len() == 2 && size[1] == elements;
        if size.first() == Some(&0) {
            return Err(GmError::Domain(format!(
                "{what}: got an empty batch {size:?}; expected a non-empty batch"
            )));
        }
        if !(matches_shape || matches_flat) {
            let expected = if self.data_shape.len() == 1 {
                format!("[batch, {elements}]")
            } else {
                format!(
                    "[batch, {}] or [batch, {elements}]",
                    shape_text(&self.data_shape)
                )
            };
            return Err(GmError::shape(what, expected, &size));
        }
        let mut shape = vec![size[0]];
        shape.extend_from_slice(&self.data_shape);
        let x = x.f_reshape(shape.as_slice())?;
        // NaNs, infinities and values outside the likelihood's data space stop here, before
        // they reach a network or an optimizer.
        self.decoder.head().check_support(&x)?;
        Ok(x)
    }

    /// One example `data_shape`, `[D]`, `[1] ++ data_shape` or `[1, D]` as `[1] ++ data_shape`.
    fn single_example(&self, x: &Tensor, what: &str) -> Result<Tensor> {
        let elements: i64 = self.data_shape.iter().product();
        if x.size() == self.data_shape || x.size() == [elements] {
            return self.data_batch(&x.f_reshape([1, elements])?, what);
        }
        let batch = self.data_batch(x, what)?;
        if batch.size()[0] != 1 {
            return Err(GmError::shape(
                what,
                format!(
                    "one example: [{}] or [1, {elements}]",
                    shape_text(&self.data_shape)
                ),
                &x.size(),
            ));
        }
        Ok(batch)
    }

    /// The context as the networks see it, `[batch, features]`, checked against the config.
    pub fn context_features(
        &self,
        context: Option<&Tensor>,
        batch: i64,
        what: &str,
    ) -> Result<Option<Tensor>> {
        match (self.context, context) {
            (ContextConfig::None, None) => Ok(None),
            (ContextConfig::None, Some(_)) => Err(GmError::Unsupported(format!(
                "{what}: this VAE is unconditional but a context was given"
            ))),
            (_, None) => Err(GmError::Unsupported(format!(
                "{what}: this VAE is conditional ({:?}); pass a context with the `_with` form",
                self.context
            ))),
            (ContextConfig::Labels { classes }, Some(c)) => {
                let size = c.size();
                if size == [batch] {
                    gm_core::model::check_labels(c, batch, classes, &format!("{what} labels"))?;
                    let labels = c.f_to_kind(Kind::Int64)?;
                    Ok(Some(labels.f_one_hot(classes)?.f_to_kind(self.kind)?))
                } else if size == [batch, classes] {
                    // Soft or one-hot label rows: probabilities, so finite values in [0, 1].
                    let rows = gm_core::model::check_data(
                        c,
                        &[classes],
                        gm_core::data::ValueKind::Continuous,
                        &format!("{what} label rows"),
                    )?;
                    if rows
                        .f_lt(0.0)?
                        .f_logical_or(&rows.f_gt(1.0)?)?
                        .f_any()?
                        .f_int64_value(&[])?
                        != 0
                    {
                        return Err(GmError::Domain(format!(
                            "{what}: label rows must hold probabilities in [0, 1]"
                        )));
                    }
                    Ok(Some(rows.f_to_kind(self.kind)?))
                } else {
                    Err(GmError::shape(
                        format!("{what} labels"),
                        format!("[{batch}] class indices or [{batch}, {classes}] one-hot rows"),
                        &size,
                    ))
                }
            }
            (ContextConfig::Vector { features }, Some(c)) => {
                if c.size() != [batch, features] {
                    return Err(GmError::shape(
                        format!("{what} context"),
                        format!("[{batch}, {features}]"),
                        &c.size(),
                    ));
                }
                Ok(Some(c.f_to_kind(self.kind)?))
            }
        }
    }

    /// The posterior `q(z | x)` for data `x` and, for a conditional VAE, its context.
    pub fn encode_with(&self, x: &Tensor, context: Option<&Tensor>) -> Result<DiagGaussian> {
        let x = self.data_batch(x, "VaeNet.encode x")?;
        let c = self.context_features(context, x.size()[0], "VaeNet.encode")?;
        self.posterior(&x, c.as_ref())
    }

    /// Posterior from data already shaped `[batch] ++ data_shape` and context features.
    fn posterior(&self, x: &Tensor, c: Option<&Tensor>) -> Result<DiagGaussian> {
        let input = self.decoder.head().network_input(x, self.kind)?;
        self.encoder.posterior(&input, c)
    }

    /// The likelihood `p(x | z)` for latents `z` `[..., batch, latent_dim]`; its batch shape is
    /// `z`'s leading dimensions and its event shape the data shape.
    pub fn decode_with(&self, z: &Tensor, context: Option<&Tensor>) -> Result<Likelihood> {
        let size = z.size();
        if size.len() < 2 || size[size.len() - 1] != self.latent_dim {
            return Err(GmError::shape(
                "VaeNet.decode z",
                format!("[..., batch, {}]", self.latent_dim),
                &size,
            ));
        }
        let batch = size[size.len() - 2];
        let z = gm_core::nn::to_weight_kind(z, self.kind, "VaeNet.decode z")?;
        let c = self.context_features(context, batch, "VaeNet.decode")?;
        self.likelihood(&z, c.as_ref())
    }

    /// Likelihood from latents `[..., batch, L]` and context features `[batch, C]`.
    fn likelihood(&self, z: &Tensor, c: Option<&Tensor>) -> Result<Likelihood> {
        let input = match c {
            Some(c) => {
                let size = z.size();
                let mut shape = size[..size.len() - 1].to_vec();
                shape.push(c.size()[1]);
                let c = c.f_expand(shape.as_slice(), false)?;
                Tensor::f_cat(&[z, &c.f_to_kind(z.kind())?], -1)?
            }
            None => z.shallow_clone(),
        };
        self.decoder.likelihood(&input)
    }

    /// `x` `[batch] ++ data_shape` repeated as `[k, batch] ++ data_shape` (a view, no copy).
    fn repeat_data(x: &Tensor, k: i64) -> Result<Tensor> {
        let mut shape = vec![k];
        shape.extend(x.size());
        Ok(x.f_expand(shape.as_slice(), false)?)
    }

    /// The ELBO's terms with `samples` reparameterised draws per example.
    pub fn elbo_terms_with(
        &self,
        x: &Tensor,
        context: Option<&Tensor>,
        samples: i64,
    ) -> Result<ElboTerms> {
        let x = self.data_batch(x, "VaeNet.elbo x")?;
        let c = self.context_features(context, x.size()[0], "VaeNet.elbo")?;
        self.elbo_terms_prepared(&x, c.as_ref(), samples)
    }

    fn elbo_terms_prepared(
        &self,
        x: &Tensor,
        c: Option<&Tensor>,
        samples: i64,
    ) -> Result<ElboTerms> {
        let (expected_log_likelihood, kl) = self.elbo_parts(x, c, samples)?;
        let elbo = elbo(&expected_log_likelihood, &kl)?;
        Ok(ElboTerms {
            expected_log_likelihood,
            kl,
            elbo,
        })
    }

    /// `E_q[ln p(x | z)]` over `samples` reparameterised draws and `KL(q(z | x) ‖ N(0, I))`,
    /// both `[batch]`.
    fn elbo_parts(&self, x: &Tensor, c: Option<&Tensor>, samples: i64) -> Result<(Tensor, Tensor)> {
        if samples < 1 {
            return Err(GmError::config(
                "samples",
                format!("must be at least 1, got {samples}"),
            ));
        }
        let posterior = self.posterior(x, c)?;
        let z = posterior.rsample(&[samples])?;
        let log_lik = self
            .likelihood(&z, c)?
            .log_prob(&Self::repeat_data(x, samples)?)?;
        // The mean over one draw is the draw itself: a view, not an operation.
        let expected_log_likelihood = if samples == 1 {
            log_lik.f_squeeze_dim(0)?
        } else {
            log_lik.f_mean_dim(0, false, None::<Kind>)?
        };
        // The prior is N(0, I): gm-core's closed form for that pair needs no prior tensors.
        let prior = StandardNormal::new(&[self.latent_dim], self.device).with_kind(self.kind);
        let kl = kl_divergence(&posterior, &prior)?;
        Ok((expected_log_likelihood, kl))
    }

    /// Importance log-weights `ln p(x, z_k) - ln q(z_k | x)` for `k` reparameterised draws
    /// `z_k ~ q(z | x)`, as `[k, batch]`; they carry gradients to every parameter.
    pub fn log_weights_with(&self, x: &Tensor, context: Option<&Tensor>, k: i64) -> Result<Tensor> {
        let x = self.data_batch(x, "VaeNet.log_weights x")?;
        let c = self.context_features(context, x.size()[0], "VaeNet.log_weights")?;
        let posterior = self.posterior(&x, c.as_ref())?;
        self.log_weights_from(&x, c.as_ref(), &posterior, k)
    }

    fn log_weights_from(
        &self,
        x: &Tensor,
        c: Option<&Tensor>,
        posterior: &DiagGaussian,
        k: i64,
    ) -> Result<Tensor> {
        if k < 1 {
            return Err(GmError::config(
                "samples",
                format!("must be at least 1, got {k}"),
            ));
        }
        let z = posterior.rsample(&[k])?;
        let log_lik = self
            .likelihood(&z, c)?
            .log_prob(&Self::repeat_data(x, k)?)?;
        let log_prior = self.prior()?.log_prob(&z)?;
        let log_q = posterior.log_prob(&z)?;
        Ok(log_lik.f_add(&log_prior)?.f_sub(&log_q)?)
    }

    /// The IWAE bound with `k` samples, `[batch]`, differentiable.
    pub fn iwae_with(&self, x: &Tensor, context: Option<&Tensor>, k: i64) -> Result<Tensor> {
        iwae_bound(&self.log_weights_with(x, context, k)?)
    }

    /// `ln p(x)` estimated by importance sampling with `k` draws from the posterior:
    /// `ln (1/k) Σ exp(log_w)`, `[batch]`. This is the IWAE bound, so it is a lower bound in
    /// expectation that tightens as `k` grows. The draws are processed in chunks of at most
    /// `eval_chunk_elements` decoder outputs, so memory stays bounded for any `k`; no gradient.
    pub fn log_likelihood_k(&self, x: &Tensor, context: Option<&Tensor>, k: i64) -> Result<Tensor> {
        if k < 1 {
            return Err(GmError::config(
                "eval_samples",
                format!("must be at least 1, got {k}"),
            ));
        }
        let x = self.data_batch(x, "VaeNet.log_likelihood x")?;
        let c = self.context_features(context, x.size()[0], "VaeNet.log_likelihood")?;
        gm_core::tch::no_grad(|| self.chunked_log_likelihood(&x, c.as_ref(), k))
    }

    fn chunked_log_likelihood(&self, x: &Tensor, c: Option<&Tensor>, k: i64) -> Result<Tensor> {
        let batch = x.size()[0];
        let per_example: i64 =
            self.data_shape.iter().product::<i64>() * self.decoder.head().params_per_element();
        let budget = self.eval_chunk_elements.max(1);
        let group = batch.min((budget / per_example).max(1));
        let mut results = Vec::new();
        let mut start = 0;
        while start < batch {
            let len = group.min(batch - start);
            let xg = x.f_narrow(0, start, len)?;
            let cg = c.map(|c| c.f_narrow(0, start, len)).transpose()?;
            let posterior = self.posterior(&xg, cg.as_ref())?;
            let chunk = (budget / (len * per_example)).clamp(1, k);
            // Running log-sum-exp over chunks of samples.
            let mut partial = Vec::new();
            let mut done = 0;
            while done < k {
                let kc = chunk.min(k - done);
                let lw = self.log_weights_from(&xg, cg.as_ref(), &posterior, kc)?;
                partial.push(lw.f_logsumexp(&[0i64][..], false)?);
                done += kc;
            }
            let lse = Tensor::f_stack(&partial, 0)?.f_logsumexp(&[0i64][..], false)?;
            results.push(lse.f_sub_scalar((k as f64).ln())?);
            start += len;
        }
        Ok(Tensor::f_cat(&results, 0)?)
    }

    /// The mean of `p(x | z)` at the posterior mean: a deterministic reconstruction, in the
    /// shape `x` was given in.
    pub fn reconstruct_with(&self, x: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        gm_core::tch::no_grad(|| {
            let posterior = self.encode_with(x, context)?;
            let z = posterior.mean()?;
            Ok(self
                .decode_with(&z, context)?
                .mean()?
                .f_reshape(x.size().as_slice())?)
        })
    }

    /// `n` draws `x ~ p(x | z)`, `z ~ p(z)` with the prior's noise scaled by `temperature`, as
    /// `[n] ++ data_shape`.
    pub fn sample_given(
        &self,
        n: i64,
        context: Option<&Tensor>,
        temperature: f64,
    ) -> Result<Tensor> {
        gm_core::tch::no_grad(|| {
            self.decode_prior_draws(n, context, temperature)?
                .sample(&[])
        })
    }

    /// The means of `p(x | z)` for `n` prior draws `z` (smooth images for display).
    pub fn sample_means_with(&self, n: i64, context: Option<&Tensor>) -> Result<Tensor> {
        gm_core::tch::no_grad(|| self.decode_prior_draws(n, context, 1.0)?.mean())
    }

    fn decode_prior_draws(
        &self,
        n: i64,
        context: Option<&Tensor>,
        temperature: f64,
    ) -> Result<Likelihood> {
        if n < 1 {
            return Err(GmError::config(
                "n",
                format!("must sample at least 1, got {n}"),
            ));
        }
        let z = self.prior()?.sample(&[n])?.f_mul_scalar(temperature)?;
        self.decode_with(&z, context)
    }

    /// Decoded means along the straight line between the posterior means of two examples:
    /// `steps` points from `x_a` to `x_b`, `[steps] ++ data_shape`.
    pub fn interpolate_with(
        &self,
        x_a: &Tensor,
        x_b: &Tensor,
        steps: i64,
        context: Option<&Tensor>,
    ) -> Result<Tensor> {
        if steps < 2 {
            return Err(GmError::config(
                "steps",
                format!("an interpolation needs at least 2 points, got {steps}"),
            ));
        }
        gm_core::tch::no_grad(|| {
            let a = self.single_example(x_a, "VaeNet.interpolate x_a")?;
            let b = self.single_example(x_b, "VaeNet.interpolate x_b")?;
            let c = self.context_features(context, 1, "VaeNet.interpolate")?;
            let za = self.posterior(&a, c.as_ref())?.mean()?;
            let zb = self.posterior(&b, c.as_ref())?.mean()?;
            let t =
                Tensor::f_linspace(0.0, 1.0, steps, (self.kind, self.device))?.f_unsqueeze(1)?;
            let z = za.f_add(&zb.f_sub(&za)?.f_mul(&t)?)?;
            let c = c
                .map(|c| c.f_expand([steps, c.size()[1]], false))
                .transpose()?;
            self.likelihood(&z, c.as_ref())?.mean()
        })
    }

    pub fn encode(&self, x: &Tensor) -> Result<DiagGaussian> {
        self.encode_with(x, None)
    }

    pub fn decode(&self, z: &Tensor) -> Result<Likelihood> {
        self.decode_with(z, None)
    }

    pub fn elbo_terms(&self, x: &Tensor, samples: i64) -> Result<ElboTerms> {
        self.elbo_terms_with(x, None, samples)
    }

    pub fn log_weights(&self, x: &Tensor, k: i64) -> Result<Tensor> {
        self.log_weights_with(x, None, k)
    }

    pub fn iwae(&self, x: &Tensor, k: i64) -> Result<Tensor> {
        self.iwae_with(x, None, k)
    }

    pub fn reconstruct(&self, x: &Tensor) -> Result<Tensor> {
        self.reconstruct_with(x, None)
    }

    pub fn interpolate(&self, x_a: &Tensor, x_b: &Tensor, steps: i64) -> Result<Tensor> {
        self.interpolate_with(x_a, x_b, steps, None)
    }

    /// `ln p(x)` by importance sampling with `eval_samples` draws. A label-conditional VAE is
    /// scored as the mixture over labels with a uniform label prior,
    /// `ln (1/C) Σ_y p(x | y)`; a VAE conditioned on a context vector has no marginal
    /// likelihood without a context (use [`VaeNet::log_likelihood_k`]).
    pub fn marginal_log_likelihood(&self, x: &Tensor) -> Result<Tensor> {
        match self.context {
            ContextConfig::None => self.log_likelihood_k(x, None, self.eval_samples),
            ContextConfig::Labels { classes } => {
                let x = self.data_batch(x, "VaeNet.log_likelihood x")?;
                let batch = x.size()[0];
                let per_label = (0..classes)
                    .map(|y| {
                        let labels = Tensor::f_full([batch], y, (Kind::Int64, self.device))?;
                        self.log_likelihood_k(&x, Some(&labels), self.eval_samples)
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(Tensor::f_stack(&per_label, 0)?
                    .f_logsumexp(&[0i64][..], false)?
                    .f_sub_scalar((classes as f64).ln())?)
            }
            ContextConfig::Vector { .. } => Err(GmError::Unsupported(
                "a VAE conditioned on a context vector has no marginal likelihood without one; use log_likelihood_k with a context".into(),
            )),
        }
    }

    /// The context to sample with: given or uniformly drawn labels for a label-conditional
    /// VAE, the given vector for a vector-conditional one, none for an unconditional one.
    fn sampling_context(&self, n: i64, options: &SampleOptions) -> Result<Option<Tensor>> {
        match self.context {
            ContextConfig::None => Ok(None),
            ContextConfig::Labels { classes } => {
                Ok(Some(options.labels_for(n, classes, self.device)?))
            }
            ContextConfig::Vector { .. } => match &options.context {
                Some(c) => Ok(Some(c.shallow_clone())),
                None => Err(GmError::Unsupported(
                    "a VAE conditioned on a context vector cannot draw its own context; give SampleOptions::context".into(),
                )),
            },
        }
    }
}

/// A trainable VAE (plain, β-VAE, IWAE or conditional, as its [`VaeConfig`] says): it owns its
/// variables and its Adam optimizer, and its state holds both so training resumes exactly.
#[derive(Debug)]
pub struct Vae {
    config: VaeConfig,
    vs: nn::VarStore,
    net: VaeNet,
    opt: Adam,
    /// Activation values one training example keeps (for the memory budget).
    activations_per_example: i128,
}

impl Vae {
    /// A VAE with `Float` weights on `device`.
    pub fn new(config: &VaeConfig, device: Device) -> Result<Self> {
        Vae::with_kind(config, device, Kind::Float)
    }

    /// A VAE with weights of `kind` (e.g. `Kind::Double` for exact tests); data are converted.
    pub fn with_kind(config: &VaeConfig, device: Device, kind: Kind) -> Result<Self> {
        config.validate()?;
        let mut vs = nn::VarStore::new(device);
        vs.set_kind(kind);
        let net = config.init(&vs.root())?;
        let opt = Adam::new(vs.trainable_variables(), config.optimizer.clone())?;
        let samples = match config.objective {
            ObjectiveConfig::Elbo { samples, .. } | ObjectiveConfig::Iwae { samples } => samples,
        } as i128;
        let elements: i128 = config.data_shape.iter().map(|&d| d as i128).product();
        let latent = config.latent_dim as i128;
        let activations_per_example = config.encoder.activations_per_example(&config.data_shape)
            + 2 * latent
            + samples
                * (latent
                    + config.decoder.activations_per_example(&config.data_shape)
                    + elements * config.likelihood.params_per_element() as i128);
        Ok(Vae {
            config: config.clone(),
            vs,
            net,
            opt,
            activations_per_example,
        })
    }

    pub fn config(&self) -> &VaeConfig {
        &self.config
    }

    /// The networks, for everything that does not train.
    pub fn net(&self) -> &VaeNet {
        &self.net
    }

    pub fn net_mut(&mut self) -> &mut VaeNet {
        &mut self.net
    }

    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    /// Optimizer steps taken so far (restored with the state).
    pub fn steps(&self) -> i64 {
        self.opt.steps()
    }

    /// The KL weight the next training step uses.
    pub fn current_beta(&self) -> f64 {
        self.config
            .objective
            .beta_at(self.opt.steps().max(0) as u64)
    }

    /// The posterior `q(z | x)`.
    pub fn encode(&self, x: &Tensor) -> Result<DiagGaussian> {
        self.net.encode(x)
    }

    pub fn encode_with(&self, x: &Tensor, context: Option<&Tensor>) -> Result<DiagGaussian> {
        self.net.encode_with(x, context)
    }

    /// The likelihood `p(x | z)`.
    pub fn decode(&self, z: &Tensor) -> Result<Likelihood> {
        self.net.decode(z)
    }

    pub fn decode_with(&self, z: &Tensor, context: Option<&Tensor>) -> Result<Likelihood> {
        self.net.decode_with(z, context)
    }

    pub fn reconstruct(&self, x: &Tensor) -> Result<Tensor> {
        self.net.reconstruct(x)
    }

    pub fn reconstruct_with(&self, x: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        self.net.reconstruct_with(x, context)
    }

    pub fn sample_means_with(&self, n: i64, context: Option<&Tensor>) -> Result<Tensor> {
        self.net.sample_means_with(n, context)
    }

    pub fn interpolate(&self, x_a: &Tensor, x_b: &Tensor, steps: i64) -> Result<Tensor> {
        self.net.interpolate(x_a, x_b, steps)
    }

    /// `ln p(x)` by importance sampling with `eval_samples` draws (see
    /// [`VaeNet::marginal_log_likelihood`]).
    pub fn log_likelihood(&self, x: &Tensor) -> Result<Tensor> {
        self.net.marginal_log_likelihood(x)
    }

    /// The training loss of a prepared batch and the named values to report.
    fn loss(&self, batch: &Batch) -> Result<(Tensor, StepOutput)> {
        let x = self.net.data_batch(&batch.x, "Vae.train_step x")?;
        gm_core::nn::check_activation_budget(
            x.size()[0],
            self.activations_per_example,
            "Vae.train_step",
        )?;
        // The input contract: an unconditional VAE ignores labels.
        let labels = match self.config.context {
            ContextConfig::None => None,
            _ => batch.labels.as_ref(),
        };
        let c = self
            .net
            .context_features(labels, x.size()[0], "Vae.train_step")?;
        match self.config.objective {
            ObjectiveConfig::Elbo { samples, .. } => {
                let beta = self.current_beta();
                let (expected_log_likelihood, kl) = self.net.elbo_parts(&x, c.as_ref(), samples)?;
                // Means first, then scalars: the loss and the reported values from two
                // reductions, not one operation per example for each.
                let expected_log_likelihood = expected_log_likelihood.f_mean(None::<Kind>)?;
                let reconstruction = expected_log_likelihood.f_neg()?;
                let kl = kl.f_mean(None::<Kind>)?;
                let loss = reconstruction.f_add(&kl.f_mul_scalar(beta)?)?;
                let out = StepOutput::new()
                    .with("loss", &loss)
                    .with("elbo", &expected_log_likelihood.f_sub(&kl)?)
                    .with("kl", &kl)
                    .with("reconstruction", &reconstruction)
                    .with("beta", &Tensor::from(beta));
                Ok((loss, out))
            }
            ObjectiveConfig::Iwae { samples } => {
                let posterior = self.net.posterior(&x, c.as_ref())?;
                let lw = self
                    .net
                    .log_weights_from(&x, c.as_ref(), &posterior, samples)?;
                let bound = iwae_bound(&lw)?;
                let loss = bound.f_mean(None::<Kind>)?.f_neg()?;
                let out = StepOutput::new()
                    .with("loss", &loss)
                    .with("iwae", &bound.f_mean(None::<Kind>)?)
                    .with("elbo", &lw.f_mean(None::<Kind>)?);
                Ok((loss, out))
            }
        }
    }
}

impl GenerativeModel for Vae {
    fn family(&self) -> &'static str {
        "vae"
    }

    fn train_step(&mut self, batch: &Batch) -> Result<StepOutput> {
        let (loss, out) = self.loss(batch)?;
        let lr = self
            .config
            .lr_schedule
            .lr(self.config.optimizer.lr, self.opt.steps().max(0) as u64);
        self.opt.backward_step(&loss, lr)?;
        Ok(out)
    }

    /// Reads `labels` or `context` (conditional VAEs), `temperature` (scales the prior's
    /// noise) and `seed`; a VAE keeps no weight average.
    fn sample_with(&self, n: i64, options: &SampleOptions) -> Result<Tensor> {
        options.begin(n)?;
        let c = self.net.sampling_context(n, options)?;
        self.net.sample_given(n, c.as_ref(), options.temperature)
    }

    fn label_classes(&self) -> i64 {
        match self.config.context {
            ContextConfig::Labels { classes } => classes,
            _ => 0,
        }
    }

    fn log_likelihood_given(&self, x: &Tensor, labels: Option<&Tensor>) -> Result<Option<Tensor>> {
        match (self.config.context, labels) {
            (ContextConfig::Labels { .. }, Some(l)) => Ok(Some(self.net.log_likelihood_k(
                x,
                Some(l),
                self.net.eval_samples(),
            )?)),
            _ => GenerativeModel::log_likelihood(self, x),
        }
    }

    fn likelihood_kind(&self) -> LikelihoodKind {
        LikelihoodKind::LowerBound
    }

    fn log_likelihood(&self, x: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(self.net.marginal_log_likelihood(x)?))
    }

    fn likelihood_estimator(&self) -> Option<String> {
        Some(format!(
            "importance-weighted bound (IWAE), {} posterior samples per example",
            self.net.eval_samples()
        ))
    }

    /// The posterior mean `[batch, latent_dim]` (unconditional VAEs; see `encode_with`).
    fn encode(&self, x: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(self.net.encode(x)?.mean()?))
    }

    /// The mean of the likelihood `p(x | z)` for latents `[batch, latent_dim]`, as
    /// `[batch] ++ data_shape` in the units of `sample_with`'s draws but not rounded: real
    /// values for a Gaussian likelihood, the probability of a 1 for a Bernoulli, the expected
    /// level in `[0, levels − 1]` for the discretized logistic and categorical ones (floats).
    /// The mean is the reconstruction with the least expected squared error, so
    /// `decode(encode(x))` (equal to [`Vae::reconstruct`]) measures the VAE's reconstruction
    /// directly against `x`; no random draw enters. Like `encode`, a conditional VAE refuses
    /// (use [`Vae::decode_with`] with a context).
    fn decode(&self, z: &Tensor) -> Result<Option<Tensor>> {
        let what = "Vae.decode z";
        let z = check_latent(
            z,
            &[self.config.latent_dim],
            self.net.kind(),
            self.net.device(),
            what,
        )?;
        let elements: i128 = self.config.data_shape.iter().map(|&d| d as i128).product();
        gm_core::nn::check_activation_budget(
            z.size()[0],
            self.config
                .decoder
                .activations_per_example(&self.config.data_shape)
                + elements * self.config.likelihood.params_per_element() as i128,
            what,
        )?;
        gm_core::tch::no_grad(|| Ok(Some(self.net.decode(&z)?.mean()?)))
    }

    fn spec_fingerprint(&self) -> Option<String> {
        gm_core::spec::ModelSpec::fingerprint(&self.config).ok()
    }

    fn num_parameters(&self) -> i64 {
        gm_core::nn::count_parameters(&self.vs.trainable_variables())
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        let mut state = var_store_state(&self.vs, "vae.");
        state.extend(self.opt.state("adam."));
        state
    }

    fn load_state(&mut self, state: &mut StateDict) -> Result<()> {
        load_var_store(&self.vs, "vae.", state)?;
        self.opt.load_state("adam.", state)
    }
}
