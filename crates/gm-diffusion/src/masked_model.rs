//! [`MaskedDiffusion`]: masked discrete diffusion ([`crate::masked`]) behind the model interface,
//! for discrete data (binary or 8-bit images, any `0..levels` values).
//!
//! The network sees two numbers per value: the value on [-1, 1] (0 where masked) and a mask
//! flag; it returns `levels` logits per value. Its last layer starts at zero, so the untrained
//! model predicts the uniform distribution and its ELBO is exactly D ln(levels) in expectation
//! (543.4 nats for binarised digits).

use crate::denoiser::{Denoiser, DenoiserConfig};
use crate::masked::{MaskSchedule, MaskingProcess};
use crate::training::{self, Training};
use gm_core::data::transforms::levels_to_symmetric;
use gm_core::data::ValueKind;
use gm_core::model::{
    check_data, Batch, GenerativeModel, LikelihoodKind, SampleOptions, StepOutput, WeightChoice,
};
use gm_core::spec::{Budget, DataInfo, ModelSpec, Registry};
use gm_core::tch::{nn, Device, Kind, Tensor};
use gm_core::train::config::{in_section, Config};
use gm_core::train::{AdamConfig, EmaConfig, LrSchedule, StateDict};
use gm_core::{GmError, Result};
use serde::{Deserialize, Serialize};
use std::cell::Cell;

/// A masked-diffusion model (see the module documentation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MaskedDiffusionConfig {
    pub schedule: MaskSchedule,
    pub denoiser: DenoiserConfig,
    /// Unmasking steps of the default sampler (denoiser calls per sample).
    pub sampler_steps: usize,
    /// Stratified times per example of the likelihood's ELBO estimate.
    pub likelihood_strata: i64,
    pub optimizer: AdamConfig,
    pub lr_schedule: LrSchedule,
    pub ema: Option<EmaConfig>,
}

impl Default for MaskedDiffusionConfig {
    fn default() -> Self {
        MaskedDiffusionConfig {
            schedule: MaskSchedule::Linear,
            denoiser: DenoiserConfig::default(),
            sampler_steps: 100,
            likelihood_strata: 16,
            optimizer: training::default_optimizer(),
            lr_schedule: LrSchedule::Constant,
            ema: training::default_ema(),
        }
    }
}

impl Config for MaskedDiffusionConfig {
    fn validate(&self) -> Result<()> {
        if !(1..=100_000).contains(&self.sampler_steps) {
            return Err(GmError::config(
                "sampler_steps",
                format!("must be in [1, 100000], got {}", self.sampler_steps),
            ));
        }
        if !(1..=4096).contains(&self.likelihood_strata) {
            return Err(GmError::config(
                "likelihood_strata",
                format!("must be in [1, 4096], got {}", self.likelihood_strata),
            ));
        }
        in_section("denoiser", self.denoiser.validate())?;
        training::validate(&self.optimizer, &self.lr_schedule, self.ema.as_ref())
    }
}

/// The run files shipped in `configs/`, registered as `masked_diffusion/<stem>`.
pub const SHIPPED_CONFIGS: [(&str, &str); 2] = [
    (
        "mnist_binary",
        include_str!("../configs/masked_diffusion/mnist_binary.toml"),
    ),
    (
        "mnist_grey",
        include_str!("../configs/masked_diffusion/mnist_grey.toml"),
    ),
];

/// Registers the `masked_diffusion` family and its shipped run files.
pub fn register(registry: &mut Registry) {
    training::register_family::<MaskedDiffusionConfig>(
        registry,
        "masked_diffusion",
        &SHIPPED_CONFIGS,
    );
}

impl ModelSpec for MaskedDiffusionConfig {
    fn family(&self) -> &'static str {
        "masked_diffusion"
    }

    fn scale_to_budget(&mut self, budget: &Budget) {
        training::scale(&mut self.lr_schedule, self.ema.as_mut(), budget);
    }

    fn build(&self, data: &DataInfo, device: Device) -> Result<Box<dyn GenerativeModel>> {
        Ok(Box::new(MaskedDiffusion::new(self, data, device)?))
    }
}

/// A trainable masked-diffusion model.
#[derive(Debug)]
pub struct MaskedDiffusion {
    config: MaskedDiffusionConfig,
    data: DataInfo,
    levels: u32,
    process: MaskingProcess,
    training: Training,
    denoiser: Denoiser,
    evaluations: Cell<Option<usize>>,
}

impl MaskedDiffusion {
    pub fn new(config: &MaskedDiffusionConfig, data: &DataInfo, device: Device) -> Result<Self> {
        config.validate()?;
        let levels = match data.values {
            ValueKind::Discrete { levels } if levels >= 2 => levels,
            other => {
                return Err(GmError::config(
                    "dataset",
                    format!(
                        "masked diffusion models discrete values with at least 2 levels; this data set's values are {other:?}"
                    ),
                ))
            }
        };
        config.denoiser.check_fits(&data.event_shape)?;
        gm_core::nn::check_parameter_budget(
            config
                .denoiser
                .parameters_with_inputs(&data.event_shape, 2, levels as i64, 0),
            "this masked-diffusion model",
        )?;
        let vs = nn::VarStore::new(device);
        let denoiser = config.denoiser.init_with_inputs(
            &(vs.root() / "denoiser"),
            &data.event_shape,
            2,
            levels as i64,
            0,
        )?;
        let training = Training::new(
            vs,
            &config.optimizer,
            &config.lr_schedule,
            config.ema.as_ref(),
        )?;
        Ok(MaskedDiffusion {
            config: config.clone(),
            data: data.clone(),
            levels,
            process: MaskingProcess {
                schedule: config.schedule,
                levels: levels as i64,
            },
            training,
            denoiser,
            evaluations: Cell::new(None),
        })
    }

    pub fn process(&self) -> &MaskingProcess {
        &self.process
    }

    fn device(&self) -> Device {
        self.training.vs.device()
    }

    /// Activation values per example: the network's and its `levels` logits per value.
    fn activations_per_example(&self) -> i128 {
        self.config
            .denoiser
            .activations_per_example(&self.data.event_shape)
            + 4 * self.levels as i128 * self.data.elements() as i128
    }

    fn checked(&self, x: &Tensor, what: &str, copies: i64) -> Result<Tensor> {
        let x = check_data(x, &self.data.event_shape, self.data.values, what)?;
        gm_core::nn::check_activation_budget(
            x.size()[0].saturating_mul(copies),
            self.activations_per_example(),
            what,
        )?;
        Ok(x)
    }

    /// Data `[b] ++ event_shape` as tokens `[b, values]` (int64).
    fn tokens(&self, x: &Tensor) -> Result<Tensor> {
        let b = x.size()[0];
        Ok(x.f_to_device(self.device())?
            .f_reshape([b, -1])?
            .f_to_kind(Kind::Int64)?)
    }

    /// The denoiser's log-probabilities `[b, levels, values]` for tokens `[b, values]` (mask
    /// token `levels`) at times `[b]`.
    pub fn log_probs(&self, xt: &Tensor, t: &Tensor) -> Result<Tensor> {
        let b = gm_core::model::leading_dim(xt, "[batch, values]", "MaskedDiffusion.log_probs xt")?;
        let masked = xt.f_eq(self.process.mask_token())?;
        let values = levels_to_symmetric(&xt.f_clamp_max(self.levels as i64 - 1)?, self.levels)?
            .f_masked_fill(&masked, 0.0)?;
        let flag = masked.f_to_kind(Kind::Float)?;
        let mut shape = vec![b];
        shape.extend_from_slice(&self.data.event_shape);
        let (values, flag) = (
            values.f_reshape(shape.as_slice())?,
            flag.f_reshape(shape.as_slice())?,
        );
        // Images stack value and flag as channels; vectors side by side.
        let input = Tensor::f_cat(&[values, flag], 1)?;
        let out = self.denoiser.forward(
            &input,
            &t.f_to_kind(Kind::Float)?.f_mul_scalar(1000.0)?,
            None,
        )?;
        Ok(out
            .f_reshape([b, self.levels as i64, -1])?
            .f_log_softmax(1, Kind::Float)?)
    }

    /// The ELBO estimate of −ln p(x) per example `[b]` in nats (float64), `strata` stratified
    /// times each, with the chosen weights.
    pub fn nelbo(&self, x: &Tensor, strata: i64, weights: WeightChoice) -> Result<Tensor> {
        if !(1..=4096).contains(&strata) {
            return Err(GmError::config(
                "strata",
                format!("must be in [1, 4096], got {strata}"),
            ));
        }
        let x = self.checked(x, "MaskedDiffusion.nelbo x", 1)?;
        let b = x.size()[0];
        // As many strata per denoiser call as half the activation budget allows (no backward
        // pass here), at most 1,024 rows.
        let rows = (gm_core::nn::max_activations()? / self.activations_per_example().max(1))
            .clamp(1, 1024) as i64;
        let strata_per_call = (rows / b).max(1);
        let tokens = self.tokens(&x)?;
        let lp = |xt: &Tensor, t: &Tensor| self.log_probs(xt, t);
        let out = gm_core::tch::no_grad(|| {
            self.training.with_weights(weights, || {
                self.process.nelbo(&tokens, &lp, strata, strata_per_call)
            })
        })?;
        self.evaluations.set(Some(strata as usize));
        Ok(out)
    }
}

impl GenerativeModel for MaskedDiffusion {
    fn family(&self) -> &'static str {
        "masked_diffusion"
    }

    /// One step: a stratified time per example (one uniform draw shifted across the batch),
    /// masks drawn with probability 1 − α_t, and the ELBO's integrand per value as the loss
    /// (`loss`, nats per value; `nelbo`, nats per example).
    fn train_step(&mut self, batch: &Batch) -> Result<StepOutput> {
        let x = self.checked(&batch.x, "MaskedDiffusion.train_step x", 1)?;
        let b = x.size()[0];
        let tokens = self.tokens(&x)?;
        let device = self.device();
        // Low-discrepancy times: (u + j/b) mod 1, flipped into (0, 1].
        let offsets = Tensor::f_arange(b, (Kind::Double, device))?.f_div_scalar(b as f64)?;
        let u = Tensor::f_rand([1], (Kind::Double, device))?;
        let t = offsets
            .f_add(&u)?
            .f_remainder(1.0)?
            .f_neg()?
            .f_add_scalar(1.0)?;
        let xt = self.process.mask(&tokens, &t)?;
        let lp = self.log_probs(&xt, &t)?;
        let nelbo = self
            .process
            .integrand(&tokens, &xt, &t, &lp)?
            .f_mean(Kind::Double)?;
        let loss = nelbo
            .f_div_scalar(self.data.elements() as f64)?
            .f_to_kind(Kind::Float)?;
        self.training.step(&loss)?;
        Ok(StepOutput::new().with("loss", &loss).with("nelbo", &nelbo))
    }

    /// Reads `steps` (unmasking steps, the config's by default), `temperature` (divides the
    /// log-probabilities; 0 takes the most likely value), `weights` and `seed`.
    fn sample_with(&self, n: i64, options: &SampleOptions) -> Result<Tensor> {
        options.begin(n)?;
        if let Some(solver) = options.solver.as_deref().filter(|s| *s != "ancestral") {
            return Err(GmError::config(
                "solver",
                format!("masked diffusion samples with \"ancestral\" unmasking, got {solver:?}"),
            ));
        }
        gm_core::nn::check_activation_budget(
            n,
            self.activations_per_example() / 2,
            "MaskedDiffusion.sample_with",
        )?;
        let steps = options.steps.unwrap_or(self.config.sampler_steps);
        let lp = |xt: &Tensor, t: &Tensor| self.log_probs(xt, t);
        let (tokens, calls) = gm_core::tch::no_grad(|| {
            self.training.with_weights(options.weights, || {
                self.process.sample(
                    n,
                    self.data.elements(),
                    &lp,
                    steps,
                    options.temperature,
                    self.device(),
                )
            })
        })?;
        self.evaluations.set(Some(calls));
        let mut shape = vec![n];
        shape.extend_from_slice(&self.data.event_shape);
        Ok(tokens.f_reshape(shape.as_slice())?.f_to_kind(Kind::Float)?)
    }

    fn likelihood_kind(&self) -> LikelihoodKind {
        LikelihoodKind::LowerBound
    }

    fn likelihood_estimator(&self) -> Option<String> {
        Some(format!(
            "ELBO of the masking process, {} stratified random times per example",
            self.config.likelihood_strata
        ))
    }

    /// The ELBO (an unbiased estimate with `likelihood_strata` stratified times per example)
    /// with the EMA weights, in nats.
    fn log_likelihood(&self, x: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            self.nelbo(x, self.config.likelihood_strata, WeightChoice::Ema)?
                .f_neg()?
                .f_to_kind(Kind::Float)?,
        ))
    }

    fn last_evaluations(&self) -> Option<usize> {
        self.evaluations.get()
    }

    fn spec_fingerprint(&self) -> Option<String> {
        ModelSpec::fingerprint(&self.config).ok()
    }

    fn num_parameters(&self) -> i64 {
        self.training.parameters()
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        self.training.state()
    }

    fn load_state(&mut self, state: &mut StateDict) -> Result<()> {
        self.training.load_state(state)
    }
}
