//! [`DiffusionConfig`]: everything that defines a diffusion model, as the `[model]` table of a
//! run file.

use crate::denoiser::DenoiserConfig;
use crate::ode::OdeConfig;
use crate::prediction::Prediction;
use crate::probability_flow::Divergence;
use crate::process::{Solver, Variance};
use crate::schedule::ScheduleConfig;
use gm_core::train::config::{check_positive, check_range, in_section, Config};
use gm_core::train::{AdamConfig, EmaConfig, LrSchedule};
use gm_core::{GmError, Result};
use serde::{Deserialize, Serialize};

/// The default sampler of a model (each call may override it through `SampleOptions`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplerConfig {
    pub solver: Solver,
    /// Denoiser calls per sample (capped at T); `None` for T.
    pub steps: Option<usize>,
    /// DDIM's η.
    pub eta: f64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            solver: Solver::Ddim,
            steps: Some(50),
            eta: 0.0,
        }
    }
}

impl Config for SamplerConfig {
    fn validate(&self) -> Result<()> {
        if self.steps == Some(0) {
            return Err(GmError::config("steps", "must be at least 1"));
        }
        check_range("eta", self.eta, 0.0, 1.0)
    }
}

/// Which likelihood a diffusion model reports.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum DiffusionLikelihood {
    /// The variational bound (`likelihood_strata` steps per example).
    #[default]
    Bound,
    /// The probability-flow ODE of the noise schedule's continuous-time limit: exact on
    /// continuous data (up to the solver's error), a bound on dequantised discrete data. The
    /// bound is only useful where the first step's noise (σ ≈ 0.01) is comparable with a
    /// level's cell (8-bit data, cells 2/255 wide): a model trained on exact levels has its
    /// density at their centres, so for binary data (cells 2 wide) it is a valid but very
    /// loose bound.
    ProbabilityFlow {
        #[serde(default = "default_probability_flow_ode")]
        ode: OdeConfig,
        #[serde(default)]
        divergence: Divergence,
    },
}

fn default_probability_flow_ode() -> OdeConfig {
    OdeConfig::adaptive(1e-7, 1e-7)
}

/// A denoising diffusion model. The data shape comes from the data set the spec is built for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiffusionConfig {
    /// T, the number of noising steps.
    pub timesteps: i64,
    pub schedule: ScheduleConfig,
    pub prediction: Prediction,
    pub variance: Variance,
    /// λ of the hybrid loss L_simple + λ L_vlb (learned variances only, Nichol & Dhariwal 2021):
    /// L_vlb, the sum of the bound's T terms per data value in nats, is estimated by T times the
    /// term of each example's drawn step, with the mean's gradient stopped so the bound trains
    /// the variances only.
    pub hybrid_weight: f64,
    pub denoiser: DenoiserConfig,
    /// Condition on the data set's class labels (added to the step embedding).
    pub conditional: bool,
    /// The probability of training a conditional model without its label, so the same network
    /// is also the unconditional model that classifier-free guidance and the unconditional
    /// likelihood need.
    pub label_dropout: f64,
    /// The default classifier-free guidance scale (1: the conditional model itself).
    pub guidance: f64,
    /// Continuous data are divided by this before diffusing (the process assumes values of
    /// unit scale); the likelihood accounts for it. Discrete data always map to [-1, 1].
    pub data_scale: f64,
    pub sampler: SamplerConfig,
    /// Strata of the likelihood estimate (steps evaluated per example); 0 evaluates all T.
    pub likelihood_strata: i64,
    /// The likelihood `log_likelihood` reports.
    pub likelihood: DiffusionLikelihood,
    pub optimizer: AdamConfig,
    pub lr_schedule: LrSchedule,
    /// The weight average, used for sampling and evaluation by default.
    pub ema: Option<EmaConfig>,
}

impl Default for DiffusionConfig {
    fn default() -> Self {
        DiffusionConfig {
            timesteps: 1000,
            schedule: ScheduleConfig::default(),
            prediction: Prediction::Epsilon,
            variance: Variance::Small,
            hybrid_weight: 0.001,
            denoiser: DenoiserConfig::default(),
            conditional: false,
            label_dropout: 0.1,
            guidance: 1.0,
            data_scale: 1.0,
            sampler: SamplerConfig::default(),
            likelihood_strata: 100,
            likelihood: DiffusionLikelihood::Bound,
            optimizer: crate::training::default_optimizer(),
            lr_schedule: LrSchedule::Constant,
            ema: crate::training::default_ema(),
        }
    }
}

impl Config for DiffusionConfig {
    fn validate(&self) -> Result<()> {
        if !(2..=100_000).contains(&self.timesteps) {
            return Err(GmError::config(
                "timesteps",
                format!("must be in [2, 100000], got {}", self.timesteps),
            ));
        }
        check_range("hybrid_weight", self.hybrid_weight, 0.0, 1e3)?;
        crate::conditioning::validate(self.conditional, self.label_dropout, self.guidance)?;
        check_positive("data_scale", self.data_scale)?;
        check_range("data_scale", self.data_scale, 1e-6, 1e6)?;
        if !(0..=self.timesteps).contains(&self.likelihood_strata) {
            return Err(GmError::config(
                "likelihood_strata",
                format!(
                    "must be 0 (all T steps) or in [1, timesteps = {}], got {}",
                    self.timesteps, self.likelihood_strata
                ),
            ));
        }
        if let DiffusionLikelihood::ProbabilityFlow { ode, divergence } = &self.likelihood {
            in_section("likelihood", in_section("ode", ode.validate()))?;
            in_section(
                "likelihood",
                in_section("divergence", divergence.validate()),
            )?;
        }
        in_section("schedule", self.schedule.validate())?;
        in_section("denoiser", self.denoiser.validate())?;
        in_section("sampler", self.sampler.validate())?;
        crate::training::validate(&self.optimizer, &self.lr_schedule, self.ema.as_ref())
    }
}

impl DiffusionConfig {
    /// Predictions per data value: the mean's, and the variance's when learned.
    pub fn outputs_per_value(&self) -> i64 {
        if self.variance == Variance::Learned {
            2
        } else {
            1
        }
    }

    /// Steps evaluated per example by the likelihood estimate.
    pub fn strata(&self) -> i64 {
        if self.likelihood_strata == 0 {
            self.timesteps
        } else {
            self.likelihood_strata
        }
    }
}
