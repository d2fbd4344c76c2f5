//! Adam and AdamW over tensors, with state that checkpoints can save.
//!
//! tch's built-in optimizers keep their moments inside libtorch where they cannot be saved,
//! so a resumed run would restart its moments from zero. This implementation keeps the moments
//! as ordinary tensors and updates them in place without host synchronisation.

use super::checkpoint::StateDict;
use super::config::{check_positive, check_range, Config};
use crate::{GmError, Result};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Adam (Kingma & Ba, 2015); with `decoupled_weight_decay`, AdamW (Loshchilov & Hutter, 2019).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdamConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Apply weight decay to the weights directly (AdamW) rather than through the gradient.
    pub decoupled_weight_decay: bool,
    /// Clip the global gradient norm to this value before each step.
    pub grad_clip_norm: Option<f64>,
}

impl Default for AdamConfig {
    fn default() -> Self {
        AdamConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled_weight_decay: true,
            grad_clip_norm: None,
        }
    }
}

impl Config for AdamConfig {
    fn validate(&self) -> Result<()> {
        check_positive("lr", self.lr)?;
        // Larger rates are not a setting anyone trains with; they come from a typo (1e300).
        check_range("lr", self.lr, 0.0, 10.0)?;
        check_range("beta1", self.beta1, 0.0, 0.999_999)?;
        check_range("beta2", self.beta2, 0.0, 0.999_999_9)?;
        check_positive("eps", self.eps)?;
        check_range("eps", self.eps, 0.0, 1.0)?;
        check_range("weight_decay", self.weight_decay, 0.0, 1.0)?;
        if let Some(c) = self.grad_clip_norm {
            check_positive("grad_clip_norm", c)?;
        }
        Ok(())
    }
}

/// See [`AdamConfig`].
#[derive(Debug)]
pub struct Adam {
    config: AdamConfig,
    params: Vec<Tensor>,
    exp_avg: Vec<Tensor>,
    exp_avg_sq: Vec<Tensor>,
    steps: i64,
}

impl Adam {
    /// An optimizer over `params` (tensors that require grad, e.g. `vs.trainable_variables()`).
    pub fn new(params: Vec<Tensor>, config: AdamConfig) -> Result<Self> {
        config.validate()?;
        if params.is_empty() {
            return Err(GmError::config(
                "params",
                "the optimizer was given no parameters",
            ));
        }
        let exp_avg = params
            .iter()
            .map(|p| p.f_zeros_like())
            .collect::<Result<Vec<_>, _>>()?;
        let exp_avg_sq = params
            .iter()
            .map(|p| p.f_zeros_like())
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Adam {
            config,
            params,
            exp_avg,
            exp_avg_sq,
            steps: 0,
        })
    }

    pub fn config(&self) -> &AdamConfig {
        &self.config
    }

    pub fn steps(&self) -> i64 {
        self.steps
    }

    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.zero_grad();
        }
    }

    /// Zeroes gradients, back-propagates `loss`, clips if configured and updates with `lr`.
    /// Returns the gradient norm before clipping when clipping is on.
    pub fn backward_step(&mut self, loss: &Tensor, lr: f64) -> Result<Option<Tensor>> {
        self.zero_grad();
        loss.f_backward()?;
        let norm = match self.config.grad_clip_norm {
            Some(max) => Some(clip_grad_norm(&self.params, max)?),
            None => None,
        };
        self.step(lr)?;
        Ok(norm)
    }

    /// One update from the current gradients (parameters without a gradient are skipped).
    pub fn step(&mut self, lr: f64) -> Result<()> {
        let c = &self.config;
        self.steps += 1;
        let bias1 = 1.0 - c.beta1.powi(self.steps as i32);
        let bias2 = 1.0 - c.beta2.powi(self.steps as i32);
        let step_size = lr / bias1;
        tch::no_grad(|| -> Result<()> {
            for ((p, m), v) in self
                .params
                .iter_mut()
                .zip(&mut self.exp_avg)
                .zip(&mut self.exp_avg_sq)
            {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let g = if c.weight_decay > 0.0 && !c.decoupled_weight_decay {
                    g.f_add(&p.f_mul_scalar(c.weight_decay)?)?
                } else {
                    g
                };
                if c.weight_decay > 0.0 && c.decoupled_weight_decay {
                    let _ = p.f_mul_scalar_(1.0 - lr * c.weight_decay)?;
                }
                // m ← β₁ m + (1-β₁) g and v ← β₂ v + (1-β₂) g², as interpolations in place.
                let _ = m.f_lerp_(&g, 1.0 - c.beta1)?;
                let _ = v.f_lerp_(&g.f_square()?, 1.0 - c.beta2)?;
                // p ← p - step · m / (√(v / bias2) + ε), reusing one temporary.
                let mut update = v.f_sqrt()?;
                let _ = update.f_div_scalar_(bias2.sqrt())?;
                let _ = update.f_add_scalar_(c.eps)?;
                let _ = update.f_reciprocal_()?;
                let _ = update.f_mul_(m)?;
                let _ = update.f_mul_scalar_(step_size)?;
                let _ = p.f_sub_(&update)?;
            }
            Ok(())
        })
    }

    /// The optimizer state as named tensors: moments per parameter and the step count.
    pub fn state(&self, prefix: &str) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.params.len() + 1);
        for (i, (m, v)) in self.exp_avg.iter().zip(&self.exp_avg_sq).enumerate() {
            out.push((format!("{prefix}exp_avg.{i}"), m.shallow_clone()));
            out.push((format!("{prefix}exp_avg_sq.{i}"), v.shallow_clone()));
        }
        out.push((format!("{prefix}steps"), Tensor::from_slice(&[self.steps])));
        out
    }

    /// Restores what [`Adam::state`] wrote, checking every tensor (shapes, a non-negative
    /// integer step count, non-negative second moments) before anything is copied.
    pub fn load_state(&mut self, prefix: &str, state: &mut StateDict) -> Result<()> {
        let bad = |message: String| GmError::Checkpoint {
            path: "<state>".into(),
            message,
        };
        let mut moments = Vec::with_capacity(self.exp_avg.len());
        for (i, (m, v)) in self.exp_avg.iter().zip(&self.exp_avg_sq).enumerate() {
            let src_m = state.take(&format!("{prefix}exp_avg.{i}"), &m.size())?;
            let src_v = state.take(&format!("{prefix}exp_avg_sq.{i}"), &v.size())?;
            if src_v.numel() > 0 && src_v.f_min()?.f_double_value(&[])? < 0.0 {
                return Err(bad(format!(
                    "{prefix}exp_avg_sq.{i} holds negative values; a second moment cannot be negative"
                )));
            }
            moments.push((src_m, src_v));
        }
        let steps = state.take(&format!("{prefix}steps"), &[1])?;
        if steps.is_floating_point() {
            return Err(bad(format!(
                "{prefix}steps must be an integer count, got {:?}",
                steps.kind()
            )));
        }
        let steps = steps.f_int64_value(&[0])?;
        if steps < 0 {
            return Err(bad(format!(
                "{prefix}steps is {steps}; a step count cannot be negative"
            )));
        }
        tch::no_grad(|| -> Result<()> {
            for ((m, v), (src_m, src_v)) in self
                .exp_avg
                .iter_mut()
                .zip(self.exp_avg_sq.iter_mut())
                .zip(&moments)
            {
                m.f_copy_(src_m)?;
                v.f_copy_(src_v)?;
            }
            Ok(())
        })?;
        self.steps = steps;
        Ok(())
    }
}

/// Scales the gradients of `params` so their global L2 norm is at most `max_norm`; returns the
/// norm before clipping. Works on the device without reading the norm back to the host.
pub fn clip_grad_norm(params: &[Tensor], max_norm: f64) -> Result<Tensor> {
    let grads: Vec<Tensor> = params
        .iter()
        .map(|p| p.grad())
        .filter(|g| g.defined())
        .collect();
    if grads.is_empty() {
        return Ok(Tensor::from(0.0f32));
    }
    tch::no_grad(|| -> Result<Tensor> {
        let squares: Vec<Tensor> = grads
            .iter()
            .map(|g| g.f_to_kind(Kind::Float)?.f_square()?.f_sum(None::<Kind>))
            .collect::<Result<Vec<_>, _>>()?;
        let norm = Tensor::f_stack(&squares, 0)?
            .f_sum(None::<Kind>)?
            .f_sqrt()?;
        // scale = min(1, max / (norm + 1e-6)).
        let scale = norm
            .f_add_scalar(1e-6)?
            .f_reciprocal()?
            .f_mul_scalar(max_norm)?
            .f_clamp_max(1.0)?;
        for g in grads {
            let mut g = g;
            let _ = g.f_mul_(&scale.f_to_kind(g.kind())?)?;
        }
        Ok(norm)
    })
}
