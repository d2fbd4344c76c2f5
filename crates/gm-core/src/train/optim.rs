//! Adam and AdamW over tensors, with state that checkpoints can save.
//!
//! tch's built-in optimizers keep their moments inside libtorch where they cannot be saved,
//! so a resumed run would restart its moments from zero. This implementation keeps the moments
//! as ordinary tensors and updates them in place without host synchronisation.

use super::checkpoint::StateDict;
use super::config::{check_positive, check_range, Config};
use super::flat::{FlatGroup, FlatParameters};
use super::fused::{self, AdamStep};
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

/// See [`AdamConfig`]. The parameters are moved into flat buffers ([`FlatParameters`]) when the
/// optimizer is built, so a step is a few operations over one tensor per dtype and device (on
/// the CPU, one fused pass over the weights, gradients and moments), whatever the number of
/// parameter tensors.
#[derive(Debug)]
pub struct Adam {
    config: AdamConfig,
    flat: FlatParameters,
    /// First and second moments, one buffer per group in the group's layout.
    exp_avg: Vec<Tensor>,
    exp_avg_sq: Vec<Tensor>,
    /// Each parameter's group and position in it, in the order given to [`Adam::new`].
    locations: Vec<(usize, usize)>,
    steps: i64,
}

impl Adam {
    /// An optimizer over `params` (tensors that require grad, e.g. `vs.trainable_variables()`).
    /// Their storage moves into the optimizer's buffers; values and shapes are kept.
    pub fn new(params: Vec<Tensor>, config: AdamConfig) -> Result<Self> {
        config.validate()?;
        if params.is_empty() {
            return Err(GmError::config(
                "params",
                "the optimizer was given no parameters",
            ));
        }
        let flat = FlatParameters::new(params)?;
        let mut locations = vec![(0, 0); flat.tensors().len()];
        for (g, group) in flat.groups().iter().enumerate() {
            for (k, &(i, _, _)) in group.members.iter().enumerate() {
                locations[i] = (g, k);
            }
        }
        let zeros = |flat: &FlatParameters| {
            flat.groups()
                .iter()
                .map(|g| g.params.f_zeros_like())
                .collect::<Result<Vec<_>, _>>()
        };
        let exp_avg = zeros(&flat)?;
        let exp_avg_sq = zeros(&flat)?;
        Ok(Adam {
            config,
            flat,
            exp_avg,
            exp_avg_sq,
            locations,
            steps: 0,
        })
    }

    pub fn config(&self) -> &AdamConfig {
        &self.config
    }

    pub fn steps(&self) -> i64 {
        self.steps
    }

    /// The parameters and their buffers.
    pub fn parameters(&self) -> &FlatParameters {
        &self.flat
    }

    pub fn zero_grad(&mut self) -> Result<()> {
        self.flat.zero_grad()
    }

    /// Back-propagates `loss`, clips if configured and updates with `lr`. Returns the gradient
    /// norm before clipping when clipping is on.
    ///
    /// Only this optimizer's parameters receive gradients (written over the old ones, with no
    /// zeroing pass): other leaves of `loss`'s graph, such as the discriminator's weights in a
    /// generator step, get none, and autograd skips the work only they need.
    pub fn backward_step(&mut self, loss: &Tensor, lr: f64) -> Result<Option<Tensor>> {
        match self.config.grad_clip_norm {
            Some(max) => {
                self.flat.backward_into_grads(loss)?;
                let norm = self.flat.grad_norm()?;
                let scale = clip_scale(&norm, max)?;
                self.update(lr, Some(&scale), None)?;
                Ok(Some(norm))
            }
            None => {
                // The fused CPU update reads the gradients where autograd left them and writes
                // them into the gradient buffer in its own pass, so they are not copied first.
                let grads = self.flat.gradients(loss)?;
                self.update(lr, None, Some(&grads))?;
                Ok(None)
            }
        }
    }

    /// One update from the current gradients (a parameter that has received no gradient since
    /// the last zeroing has a zero one).
    pub fn step(&mut self, lr: f64) -> Result<()> {
        self.update(lr, None, None)
    }

    /// The update with the gradients multiplied by `grad_scale` (the clipping factor). With
    /// `fresh` (from [`FlatParameters::gradients`]), those gradients are written into the
    /// gradient buffer first (by the fused update as it goes, where it applies).
    fn update(
        &mut self,
        lr: f64,
        grad_scale: Option<&Tensor>,
        fresh: Option<&[Tensor]>,
    ) -> Result<()> {
        // A parameter whose storage was replaced after the optimizer was built would silently
        // stop training: every step checks the weights' addresses, and debug builds (the test
        // suite) the gradients' too (reading them allocates a handle per parameter).
        self.flat.check_bound(cfg!(debug_assertions))?;
        let c = &self.config;
        self.steps += 1;
        let bias1 = 1.0 - c.beta1.powi(self.steps as i32);
        let bias2 = 1.0 - c.beta2.powi(self.steps as i32);
        let coefficients = AdamStep {
            beta1: c.beta1,
            beta2: c.beta2,
            eps: c.eps,
            step_size: lr / bias1,
            bias2_sqrt: bias2.sqrt(),
            coupled_decay: if c.decoupled_weight_decay {
                0.0
            } else {
                c.weight_decay
            },
            decoupled_factor: if c.decoupled_weight_decay {
                1.0 - lr * c.weight_decay
            } else {
                1.0
            },
            grad_scale: 1.0,
        };
        tch::no_grad(|| -> Result<()> {
            for (index, ((group, m), v)) in self
                .flat
                .groups()
                .iter()
                .zip(&mut self.exp_avg)
                .zip(&mut self.exp_avg_sq)
                .enumerate()
            {
                let mut p = group.params.shallow_clone();
                if fused::supports(&p) {
                    let mut step = coefficients.clone();
                    if let Some(scale) = grad_scale {
                        // On the CPU reading the factor back costs nothing.
                        step.grad_scale = scale.f_double_value(&[])?;
                    }
                    let mut g = group.grads.shallow_clone();
                    match fresh {
                        Some(grads) => {
                            let sources = fused_sources(group, grads)?;
                            let members: Vec<fused::MemberGrad> = group
                                .members
                                .iter()
                                .zip(&sources)
                                .map(|(&(_, offset, count), source)| fused::MemberGrad {
                                    offset: offset as usize,
                                    len: count as usize,
                                    grad: source.as_ref(),
                                })
                                .collect();
                            fused::adam_step_gathering(&mut p, &mut g, m, v, &members, &step)?
                        }
                        None => fused::adam_step(&mut p, &g, m, v, &step)?,
                    }
                    continue;
                }
                if let Some(grads) = fresh {
                    self.flat.write_grads(index, grads)?;
                }
                let g = &group.grads;
                let mut g = match grad_scale {
                    Some(scale) => g.f_mul(&scale.f_to_kind(g.kind())?.f_to_device(g.device())?)?,
                    None => g.shallow_clone(),
                };
                if coefficients.coupled_decay > 0.0 {
                    g = g.f_add(&p.f_mul_scalar(coefficients.coupled_decay)?)?;
                }
                if coefficients.decoupled_factor != 1.0 {
                    let _ = p.f_mul_scalar_(coefficients.decoupled_factor)?;
                }
                // m ← β₁ m + (1-β₁) g and v ← β₂ v + (1-β₂) g², as interpolations in place.
                let _ = m.f_lerp_(&g, 1.0 - c.beta1)?;
                let _ = v.f_lerp_(&g.f_square()?, 1.0 - c.beta2)?;
                // p ← p - step · m / (√v / √bias2 + ε), reusing one temporary.
                let mut update = v.f_sqrt()?;
                let _ = update.f_div_scalar_(coefficients.bias2_sqrt)?;
                let _ = update.f_add_scalar_(c.eps)?;
                let _ = update.f_reciprocal_()?;
                let _ = update.f_mul_(m)?;
                let _ = update.f_mul_scalar_(coefficients.step_size)?;
                let _ = p.f_sub_(&update)?;
            }
            Ok(())
        })
    }

    /// Parameter `i`'s view of a group-layout buffer list.
    fn member_view(&self, buffers: &[Tensor], i: usize) -> Result<Tensor> {
        let (g, k) = self.locations[i];
        self.flat.groups()[g].member_view(&buffers[g], k, &self.flat.tensors()[i].size())
    }

    /// The optimizer state as named tensors: moments per parameter and the step count.
    pub fn state(&self, prefix: &str) -> Vec<(String, Tensor)> {
        let n = self.locations.len();
        let mut out = Vec::with_capacity(2 * n + 1);
        for i in 0..n {
            // Views of buffers this optimizer made itself cannot fail.
            let m = self.member_view(&self.exp_avg, i).expect("moment view");
            let v = self.member_view(&self.exp_avg_sq, i).expect("moment view");
            out.push((format!("{prefix}exp_avg.{i}"), m));
            out.push((format!("{prefix}exp_avg_sq.{i}"), v));
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
        let n = self.locations.len();
        let mut moments = Vec::with_capacity(n);
        for i in 0..n {
            let shape = self.flat.tensors()[i].size();
            let src_m = state.take(&format!("{prefix}exp_avg.{i}"), &shape)?;
            let src_v = state.take(&format!("{prefix}exp_avg_sq.{i}"), &shape)?;
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
            for (i, (src_m, src_v)) in moments.iter().enumerate() {
                self.member_view(&self.exp_avg, i)?.f_copy_(src_m)?;
                self.member_view(&self.exp_avg_sq, i)?.f_copy_(src_v)?;
            }
            Ok(())
        })?;
        self.steps = steps;
        Ok(())
    }
}

/// Each member's gradient as the fused update reads it: in the group's dtype and contiguous in
/// the parameter's own layout (a channels-last gradient is reordered here), `None` where
/// autograd returned none.
fn fused_sources(group: &FlatGroup, grads: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
    let kind = group.params.kind();
    group
        .members
        .iter()
        .map(|&(i, _, _)| {
            let grad = &grads[i];
            if !grad.defined() {
                return Ok(None);
            }
            Ok(Some(grad.f_to_kind(kind)?.f_contiguous()?))
        })
        .collect()
}

/// `min(1, max_norm / (norm + 1e-6))`, on the norm's device.
fn clip_scale(norm: &Tensor, max_norm: f64) -> Result<Tensor> {
    Ok(norm
        .f_add_scalar(1e-6)?
        .f_reciprocal()?
        .f_mul_scalar(max_norm)?
        .f_clamp_max(1.0)?)
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
        let scale = clip_scale(&norm, max_norm)?;
        for g in grads {
            let mut g = g;
            let _ = g.f_mul_(&scale.f_to_kind(g.kind())?)?;
        }
        Ok(norm)
    })
}
