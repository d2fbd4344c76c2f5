//! Scheduled sampling (Bengio et al. 2015): during training, each value's input is the model's
//! own draw instead of the true value with a probability that grows over the run, so the model
//! learns to continue from its own mistakes, as it must when it generates.
//!
//! The `[model.scheduled_sampling]` table sets the curve and its steps; the steps scale with the
//! run's step budget like every other length in steps. With `s` the fraction of the ramp done
//! (0 before `start_step`, 1 after `start_step + ramp_steps`), the probability of the model's own
//! draw is `max_probability · f(s)`:
//! - `linear`: `f(s) = s` (Bengio et al.'s linear decay of teacher forcing);
//! - `exponential`: `f(s) = (1 − e^(−5s)) / (1 − e^(−5))`, fast at first;
//! - `inverse_sigmoid`: `f(s) = (σ(10(s − ½)) − σ(−5)) / (σ(5) − σ(−5))`, slow, fast, slow.
//!
//! Each curve is 0 at `s = 0` and 1 at `s = 1`.

use gm_core::spec::Budget;
use gm_core::train::config::Config;
use gm_core::{GmError, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Curve {
    Linear,
    Exponential,
    InverseSigmoid,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduledSampling {
    pub curve: Curve,
    /// The probability of the model's own draw at the end of the ramp.
    pub max_probability: f64,
    /// Steps of pure teacher forcing before the ramp.
    pub start_step: u64,
    /// Steps from 0 to `max_probability`.
    pub ramp_steps: u64,
}

impl Default for ScheduledSampling {
    fn default() -> Self {
        ScheduledSampling {
            curve: Curve::Linear,
            max_probability: 0.25,
            start_step: 0,
            ramp_steps: 1_000,
        }
    }
}

impl Config for ScheduledSampling {
    fn validate(&self) -> Result<()> {
        gm_core::train::config::check_range("max_probability", self.max_probability, 0.0, 1.0)?;
        if self.ramp_steps == 0 {
            return Err(GmError::config(
                "ramp_steps",
                "must be at least 1 (a jump is a ramp of one step)",
            ));
        }
        Ok(())
    }
}

impl ScheduledSampling {
    /// The probability of feeding the model's own draw at training step `step` (0-based).
    pub fn probability(&self, step: u64) -> f64 {
        let done = step.saturating_sub(self.start_step) as f64 / self.ramp_steps as f64;
        let s = done.clamp(0.0, 1.0);
        let sigmoid = |z: f64| 1.0 / (1.0 + (-z).exp());
        let f = match self.curve {
            Curve::Linear => s,
            Curve::Exponential => (1.0 - (-5.0 * s).exp()) / (1.0 - (-5.0f64).exp()),
            Curve::InverseSigmoid => {
                (sigmoid(10.0 * (s - 0.5)) - sigmoid(-5.0)) / (sigmoid(5.0) - sigmoid(-5.0))
            }
        };
        self.max_probability * f.clamp(0.0, 1.0)
    }

    /// The schedule's steps scaled to the run's budget.
    pub fn scaled(&self, budget: &Budget) -> ScheduledSampling {
        ScheduledSampling {
            start_step: budget.scale(self.start_step),
            ramp_steps: budget.scale(self.ramp_steps).max(1),
            ..self.clone()
        }
    }
}
