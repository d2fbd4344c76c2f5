//! [`GanConfig`]: everything that defines a GAN, as the `[model]` table of a run file.

use crate::loss::GanLoss;
use crate::network::{DiscriminatorConfig, GeneratorConfig};
use crate::regularizer::RegularizerConfig;
use gm_core::train::config::{in_section, Config};
use gm_core::train::{AdamConfig, EmaConfig, LrSchedule};
use gm_core::{GmError, Result};
use serde::{Deserialize, Serialize};

/// A GAN: the two networks, the game, the regulariser, one optimizer per player and the
/// generator's weight average. The data shape comes from the data set the spec is built for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GanConfig {
    /// The dimension of the generator's standard Normal noise.
    pub latent_dim: i64,
    pub loss: GanLoss,
    pub regularizer: RegularizerConfig,
    /// Discriminator updates per generator update: each training step updates the
    /// discriminator once, and every `n_critic`-th step the generator too.
    pub n_critic: u64,
    /// Condition both players on the data set's class labels (label embedding in the
    /// generator, projection discriminator).
    pub conditional: bool,
    /// Width of the generator's label embedding (conditional models).
    pub label_embedding: i64,
    pub generator: GeneratorConfig,
    pub discriminator: DiscriminatorConfig,
    /// Two time-scale updates: each player has its own rate and moments.
    pub generator_optimizer: AdamConfig,
    pub discriminator_optimizer: AdamConfig,
    /// Applied to both players' rates, in training steps (discriminator updates).
    pub lr_schedule: LrSchedule,
    /// The generator's weight average, used for sampling by default.
    pub ema: Option<EmaConfig>,
    /// The size of the fixed-noise batch whose mean pairwise distance is reported as
    /// `diversity` at every step (a falling value is a sign of mode collapse); 0 turns it off.
    /// It costs one generator pass of this many examples per step.
    pub diversity_batch: i64,
}

fn gan_adam(lr: f64) -> AdamConfig {
    AdamConfig {
        lr,
        beta1: 0.5,
        beta2: 0.999,
        ..AdamConfig::default()
    }
}

impl Default for GanConfig {
    fn default() -> Self {
        GanConfig {
            latent_dim: 16,
            loss: GanLoss::NonSaturating,
            regularizer: RegularizerConfig::None,
            n_critic: 1,
            conditional: false,
            label_embedding: 16,
            generator: GeneratorConfig::default(),
            discriminator: DiscriminatorConfig::default(),
            generator_optimizer: gan_adam(2e-4),
            discriminator_optimizer: gan_adam(2e-4),
            lr_schedule: LrSchedule::Constant,
            ema: Some(EmaConfig::default()),
            diversity_batch: 32,
        }
    }
}

impl Config for GanConfig {
    fn validate(&self) -> Result<()> {
        if !(1..=65_536).contains(&self.latent_dim) {
            return Err(GmError::config(
                "latent_dim",
                format!("must be in [1, 65536], got {}", self.latent_dim),
            ));
        }
        if !(1..=1000).contains(&self.n_critic) {
            return Err(GmError::config(
                "n_critic",
                format!("must be in [1, 1000], got {}", self.n_critic),
            ));
        }
        if !(1..=65_536).contains(&self.label_embedding) {
            return Err(GmError::config(
                "label_embedding",
                format!("must be in [1, 65536], got {}", self.label_embedding),
            ));
        }
        // Computed at every step: its pairwise distances grow with the square of the batch.
        if !(0..=512).contains(&self.diversity_batch) || self.diversity_batch == 1 {
            return Err(GmError::config(
                "diversity_batch",
                format!(
                    "must be 0 (off) or in [2, 512] (distances need pairs), got {}",
                    self.diversity_batch
                ),
            ));
        }
        in_section("regularizer", self.regularizer.validate())?;
        in_section("generator", self.generator.validate())?;
        in_section("discriminator", self.discriminator.validate())?;
        in_section("generator_optimizer", self.generator_optimizer.validate())?;
        in_section(
            "discriminator_optimizer",
            self.discriminator_optimizer.validate(),
        )?;
        in_section("lr_schedule", self.lr_schedule.validate())?;
        if let Some(ema) = &self.ema {
            in_section("ema", ema.validate())?;
        }
        Ok(())
    }
}

impl GanConfig {
    /// The number of trainable scalars both networks will have for examples of `data_shape`
    /// and `classes` label classes, computed before anything is allocated.
    pub fn parameters(&self, data_shape: &[i64], classes: i64) -> i128 {
        let elements: i128 = data_shape.iter().map(|&d| d as i128).product();
        let linear = |i: i128, o: i128| i * o + o;
        let mlp = |input: i128, hidden: &[i64], out: i128| {
            let mut total = 0;
            let mut width = input;
            for &h in hidden {
                total += linear(width, h as i128);
                width = h as i128;
            }
            (total + linear(width, out), width)
        };
        let conditioning = if self.conditional {
            self.label_embedding as i128
        } else {
            0
        };
        let inputs = self.latent_dim as i128 + conditioning;
        let (c, h, w) = match data_shape {
            [c, h, w] => (*c as i128, *h as i128, *w as i128),
            _ => (1, 1, elements),
        };
        let generator = match &self.generator {
            GeneratorConfig::Mlp { hidden, .. } => mlp(inputs, hidden, elements).0,
            GeneratorConfig::Dcgan { channels } => {
                let ch = *channels as i128;
                linear(inputs, 2 * ch * (h / 4) * (w / 4))
                    + 4 * ch
                    + 2 * ch * ch * 16
                    + ch
                    + 2 * ch
                    + ch * c * 16
                    + c
            }
        };
        let (discriminator, features) = match &self.discriminator {
            DiscriminatorConfig::Mlp { hidden, .. } => {
                let (total, width) = mlp(elements, hidden, 1);
                (total, width)
            }
            DiscriminatorConfig::Dcgan { channels, .. } => {
                let ch = *channels as i128;
                let features = 2 * ch * (h / 4) * (w / 4);
                (
                    c * ch * 16 + ch + 2 * ch * ch * 16 + 2 * ch + linear(features, 1),
                    features,
                )
            }
        };
        let labels = if self.conditional {
            classes as i128 * (self.label_embedding as i128 + features)
        } else {
            0
        };
        generator + discriminator + labels
    }

    /// Activation values one example keeps alive in the generator's and the discriminator's
    /// forward passes (each layer's output), for the memory budget of a batch.
    pub fn activations_per_example(&self, data_shape: &[i64]) -> (i128, i128) {
        let elements: i128 = data_shape.iter().map(|&d| d as i128).product();
        let (h, w) = match data_shape {
            [_, h, w] => (*h as i128, *w as i128),
            _ => (1, elements),
        };
        let generator = match &self.generator {
            GeneratorConfig::Mlp { hidden, .. } => {
                hidden.iter().map(|&x| x as i128).sum::<i128>() + elements
            }
            GeneratorConfig::Dcgan { channels } => {
                let ch = *channels as i128;
                2 * (2 * ch * (h / 4) * (w / 4)) + 2 * (ch * (h / 2) * (w / 2)) + 2 * elements
            }
        };
        let discriminator = match &self.discriminator {
            DiscriminatorConfig::Mlp { hidden, .. } => {
                hidden.iter().map(|&x| x as i128).sum::<i128>() + elements
            }
            DiscriminatorConfig::Dcgan { channels, .. } => {
                let ch = *channels as i128;
                2 * (ch * (h / 2) * (w / 2)) + 2 * (2 * ch * (h / 4) * (w / 4)) + elements
            }
        };
        (generator, discriminator)
    }
}
