//! Configs of the VAE family, as TOML through serde: unknown keys are rejected, values are
//! checked by [`Config::validate`], and an error names the offending key with its section
//! (`objective.samples`, `encoder.channels`, ...).

use crate::likelihood::LikelihoodConfig;
use crate::network::NetworkConfig;
use gm_core::nn::{Activation, MlpConfig};
use gm_core::train::config::{check_range, in_section};
use gm_core::train::{AdamConfig, Config, LrSchedule};
use gm_core::{GmError, Result};
use serde::{Deserialize, Serialize};

/// Checks a data shape: one or more positive dimensions.
pub fn check_data_shape(data_shape: &[i64]) -> Result<()> {
    if data_shape.is_empty() || data_shape.iter().any(|d| *d < 1) {
        return Err(GmError::config(
            "data_shape",
            format!(
                "needs one or more positive dimensions, e.g. [784] or [1, 28, 28]; got {data_shape:?}"
            ),
        ));
    }
    Ok(())
}

/// What the VAE is conditioned on (a conditional VAE feeds it to encoder and decoder alike).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ContextConfig {
    /// An unconditional VAE.
    #[default]
    None,
    /// Integer class labels `[batch]` in `0..classes`, fed one-hot.
    Labels { classes: i64 },
    /// A real context vector `[batch, features]`.
    Vector { features: i64 },
}

impl ContextConfig {
    /// The number of values the networks receive beside the data or the latent.
    pub fn features(&self) -> i64 {
        match self {
            ContextConfig::None => 0,
            ContextConfig::Labels { classes } => *classes,
            ContextConfig::Vector { features } => *features,
        }
    }
}

impl Config for ContextConfig {
    fn validate(&self) -> Result<()> {
        match self {
            ContextConfig::None => Ok(()),
            ContextConfig::Labels { classes } if *classes < 1 => Err(GmError::config(
                "classes",
                format!("must be at least 1, got {classes}"),
            )),
            ContextConfig::Vector { features } if *features < 1 => Err(GmError::config(
                "features",
                format!("must be at least 1, got {features}"),
            )),
            _ => Ok(()),
        }
    }
}

fn one() -> f64 {
    1.0
}
fn zero_steps() -> u64 {
    0
}
fn one_sample() -> i64 {
    1
}
fn five_samples() -> i64 {
    5
}

/// The training objective.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ObjectiveConfig {
    /// `E_q[ln p(x | z)] - β KL(q(z | x) ‖ p(z))` with the KL in closed form and the expectation
    /// over `samples` reparameterised draws. `β = 1` is the ELBO; `β ≠ 1` the β-VAE. With
    /// `kl_warmup_steps > 0`, the KL weight rises linearly from `β / kl_warmup_steps` to `β`
    /// over that many optimizer steps.
    Elbo {
        #[serde(default = "one")]
        beta: f64,
        #[serde(default = "zero_steps")]
        kl_warmup_steps: u64,
        #[serde(default = "one_sample")]
        samples: i64,
    },
    /// The importance-weighted bound with `samples` draws (Burda et al., 2016), tighter than
    /// the ELBO for `samples > 1`.
    Iwae {
        #[serde(default = "five_samples")]
        samples: i64,
    },
}

impl Default for ObjectiveConfig {
    fn default() -> Self {
        ObjectiveConfig::Elbo {
            beta: 1.0,
            kl_warmup_steps: 0,
            samples: 1,
        }
    }
}

impl Config for ObjectiveConfig {
    fn validate(&self) -> Result<()> {
        match self {
            ObjectiveConfig::Elbo { beta, samples, .. } => {
                check_range("beta", *beta, 0.0, f64::MAX)?;
                if *samples < 1 {
                    return Err(GmError::config(
                        "samples",
                        format!("must be at least 1, got {samples}"),
                    ));
                }
                Ok(())
            }
            ObjectiveConfig::Iwae { samples } => {
                if *samples < 1 {
                    return Err(GmError::config(
                        "samples",
                        format!("the IWAE bound needs at least 1 sample, got {samples}"),
                    ));
                }
                Ok(())
            }
        }
    }
}

impl ObjectiveConfig {
    /// The KL weight after `step` optimizer steps (1 for the IWAE, which has no separate KL).
    pub fn beta_at(&self, step: u64) -> f64 {
        match *self {
            ObjectiveConfig::Elbo {
                beta,
                kl_warmup_steps,
                ..
            } => {
                if kl_warmup_steps == 0 {
                    beta
                } else {
                    beta * ((step + 1) as f64 / kl_warmup_steps as f64).min(1.0)
                }
            }
            ObjectiveConfig::Iwae { .. } => 1.0,
        }
    }
}

/// A VAE: data shape, latent size, networks, likelihood, context, objective and optimizer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VaeConfig {
    /// The shape of one example: `[784]` for flat data, `[1, 28, 28]` for a convolutional model.
    /// Inputs may be given either in this shape or flattened, as `[batch, D]`.
    pub data_shape: Vec<i64>,
    pub latent_dim: i64,
    pub encoder: NetworkConfig,
    pub decoder: NetworkConfig,
    pub likelihood: LikelihoodConfig,
    pub context: ContextConfig,
    pub objective: ObjectiveConfig,
    /// Importance samples `K` of the evaluation estimate `log_likelihood`.
    pub eval_samples: i64,
    /// Largest number of decoder outputs computed at once during evaluation; the `K` samples
    /// are processed in chunks of this many so that memory stays bounded for any `K`.
    pub eval_chunk_elements: i64,
    pub optimizer: AdamConfig,
    pub lr_schedule: LrSchedule,
}

impl Default for VaeConfig {
    fn default() -> Self {
        VaeConfig {
            data_shape: vec![784],
            latent_dim: 32,
            encoder: NetworkConfig::Mlp(MlpConfig {
                hidden: vec![512, 256],
                activation: Activation::Relu,
            }),
            decoder: NetworkConfig::Mlp(MlpConfig {
                hidden: vec![256, 512],
                activation: Activation::Relu,
            }),
            likelihood: LikelihoodConfig::Bernoulli,
            context: ContextConfig::None,
            objective: ObjectiveConfig::default(),
            eval_samples: 1000,
            eval_chunk_elements: 1 << 22,
            optimizer: AdamConfig::default(),
            lr_schedule: LrSchedule::Constant,
        }
    }
}

impl Config for VaeConfig {
    fn validate(&self) -> Result<()> {
        check_data_shape(&self.data_shape)?;
        if self.latent_dim < 1 {
            return Err(GmError::config(
                "latent_dim",
                format!("must be at least 1, got {}", self.latent_dim),
            ));
        }
        in_section("encoder", self.encoder.validate())?;
        in_section("decoder", self.decoder.validate())?;
        self.encoder.check_fits("encoder", &self.data_shape)?;
        self.decoder.check_fits("decoder", &self.data_shape)?;
        in_section("likelihood", self.likelihood.validate())?;
        in_section("context", self.context.validate())?;
        in_section("objective", self.objective.validate())?;
        in_section("optimizer", self.optimizer.validate())?;
        in_section("lr_schedule", self.lr_schedule.validate())?;
        if self.eval_samples < 1 {
            return Err(GmError::config(
                "eval_samples",
                format!("must be at least 1, got {}", self.eval_samples),
            ));
        }
        if self.eval_chunk_elements < 1 {
            return Err(GmError::config(
                "eval_chunk_elements",
                format!("must be at least 1, got {}", self.eval_chunk_elements),
            ));
        }
        Ok(())
    }
}
