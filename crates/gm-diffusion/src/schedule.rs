//! The forward (noising) process: noise schedules, the closed-form marginal q(x_t | x_0) and
//! the Gaussian posterior q(x_s | x_t, x_0) for any earlier step s (s = t − 1 in training and
//! likelihoods, larger jumps for samplers that skip steps).
//!
//! Steps are numbered 1..=T; index 0 is the data itself (ᾱ_0 = 1). Every per-step quantity is
//! kept in float64, on the host for loops over steps and as device tensors for batches where
//! each example has its own step.

use gm_core::tch::{Device, Kind, Tensor};
use gm_core::train::config::{check_range, Config};
use gm_core::{GmError, Result};
use serde::{Deserialize, Serialize};

/// How the per-step noise variances β_t are chosen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ScheduleConfig {
    /// β_t linear from `beta_start` to `beta_end` (Ho et al. 2020 use 1e-4 to 0.02 for
    /// T = 1000); both are rescaled by 1000 / T so other T keep the same shape.
    Linear { beta_start: f64, beta_end: f64 },
    /// ᾱ_t = f(t) / f(0), f(t) = cos²((t/T + s)/(1 + s) · π/2) with offset `s` (Nichol &
    /// Dhariwal 2021), β_t capped at 0.999. Its ᾱ_T is nearly 0, so x̂₀ = (x_T − √(1 − ᾱ_T) ε̂)/√ᾱ_T
    /// amplifies the denoiser's error enormously at the first step: it suits data with a known
    /// range, where x̂₀ is clipped (discrete data); use the linear schedule for unbounded data.
    Cosine { offset: f64 },
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        ScheduleConfig::Cosine { offset: 0.008 }
    }
}

impl Config for ScheduleConfig {
    fn validate(&self) -> Result<()> {
        match self {
            ScheduleConfig::Linear {
                beta_start,
                beta_end,
            } => {
                check_range("beta_start", *beta_start, 0.0, 1.0)?;
                check_range("beta_end", *beta_end, 0.0, 1.0)?;
                if !(*beta_start > 0.0 && beta_start <= beta_end) {
                    return Err(GmError::config(
                        "beta_start",
                        format!("need 0 < beta_start <= beta_end, got {beta_start} and {beta_end}"),
                    ));
                }
                Ok(())
            }
            ScheduleConfig::Cosine { offset } => check_range("offset", *offset, 0.0, 1.0),
        }
    }
}

impl ScheduleConfig {
    /// The continuous-time schedule behind the T-step one, on τ = t/T in [0, 1]: ln ᾱ(τ)
    /// (float64, any shape). The cosine schedule's ᾱ(t/T) is the discrete one exactly; the
    /// linear one's is its continuous limit ln ᾱ(τ) = −T (β₀ τ + ½ (β₁ − β₀) τ²) (the VP SDE of
    /// Song et al. 2021 with β_min = T β₀, β_max = T β₁): −∫β of a ramp that starts at τ = 0
    /// where the discrete one starts at step 1, so early on it differs by up to 10% from the
    /// discrete 1 − ᾱ_t (and by under 1% after the first few dozen steps).
    pub fn continuous_log_alpha_bar(&self, tau: &Tensor, timesteps: i64) -> Result<Tensor> {
        let tau = tau.f_to_kind(Kind::Double)?;
        Ok(match self {
            ScheduleConfig::Linear { .. } => {
                let (lo, hi) = self.linear_range(timesteps);
                let t = timesteps as f64;
                tau.f_mul_scalar(lo)?
                    .f_add(&tau.f_square()?.f_mul_scalar(0.5 * (hi - lo))?)?
                    .f_mul_scalar(-t)?
            }
            ScheduleConfig::Cosine { offset } => {
                let angle = |x: &Tensor| -> Result<Tensor> {
                    Ok(x.f_add_scalar(*offset)?
                        .f_div_scalar(1.0 + offset)?
                        .f_mul_scalar(std::f64::consts::FRAC_PI_2)?)
                };
                let f0 = 2.0
                    * (offset / (1.0 + offset) * std::f64::consts::FRAC_PI_2)
                        .cos()
                        .ln();
                angle(&tau)?
                    .f_cos()?
                    .f_log()?
                    .f_mul_scalar(2.0)?
                    .f_sub_scalar(f0)?
            }
        })
    }

    /// β(τ) = −d ln ᾱ(τ)/dτ of [`ScheduleConfig::continuous_log_alpha_bar`].
    pub fn continuous_beta(&self, tau: &Tensor, timesteps: i64) -> Result<Tensor> {
        let tau = tau.f_to_kind(Kind::Double)?;
        Ok(match self {
            ScheduleConfig::Linear { .. } => {
                let (lo, hi) = self.linear_range(timesteps);
                tau.f_mul_scalar(hi - lo)?
                    .f_add_scalar(lo)?
                    .f_mul_scalar(timesteps as f64)?
            }
            ScheduleConfig::Cosine { offset } => {
                let k = std::f64::consts::FRAC_PI_2 / (1.0 + offset);
                tau.f_add_scalar(*offset)?
                    .f_mul_scalar(k)?
                    .f_tan()?
                    .f_mul_scalar(2.0 * k)?
            }
        })
    }

    /// The time range [τ_start, τ_end] of the continuous process: from τ = 1/T (about the first
    /// step's noise level) to 1 (linear), or to 1 − 1/T for the cosine schedule, whose ᾱ
    /// reaches 0 at 1.
    pub fn continuous_range(&self, timesteps: i64) -> (f64, f64) {
        let first = 1.0 / timesteps as f64;
        match self {
            ScheduleConfig::Linear { .. } => (first, 1.0),
            ScheduleConfig::Cosine { .. } => (first, 1.0 - first),
        }
    }

    /// The linear schedule's per-step β₀ and β₁ for T steps (rescaled by 1000 / T).
    fn linear_range(&self, timesteps: i64) -> (f64, f64) {
        match self {
            ScheduleConfig::Linear {
                beta_start,
                beta_end,
            } => {
                let scale = 1000.0 / timesteps as f64;
                (beta_start * scale, (beta_end * scale).min(0.999))
            }
            ScheduleConfig::Cosine { .. } => (0.0, 0.0),
        }
    }
}

/// The schedule of a T-step process: β_t, ᾱ_t for t in 0..=T (index 0 is the data, β_0 = 0,
/// ᾱ_0 = 1), in float64.
#[derive(Debug)]
pub struct Schedule {
    betas: Vec<f64>,
    alpha_bars: Vec<f64>,
    /// `ᾱ_t` for t in 0..=T as a float64 device tensor, for per-example gathers.
    alpha_bar_table: Tensor,
}

/// The coefficients of one jump t → s (s < t) of the reverse process, per example.
#[derive(Debug)]
pub struct Jump {
    pub alpha_bar_t: Tensor,
    pub alpha_bar_s: Tensor,
    /// The variance of the forward jump s → t: β_{t|s} = 1 − ᾱ_t / ᾱ_s.
    pub beta: Tensor,
    /// The posterior variance β̃ = (1 − ᾱ_s) / (1 − ᾱ_t) · β_{t|s} (0 when s = 0).
    pub posterior_variance: Tensor,
    /// The posterior mean's coefficients on x_0 and on x_t.
    pub coef_x0: Tensor,
    pub coef_xt: Tensor,
}

impl Schedule {
    /// A T-step schedule on `device`.
    pub fn new(config: &ScheduleConfig, timesteps: i64, device: Device) -> Result<Self> {
        config.validate()?;
        if timesteps < 2 {
            return Err(GmError::config(
                "timesteps",
                format!("a diffusion needs at least 2 steps, got {timesteps}"),
            ));
        }
        let t_max = timesteps as usize;
        let mut betas = vec![0.0; t_max + 1];
        match config {
            ScheduleConfig::Linear {
                beta_start,
                beta_end,
            } => {
                let scale = 1000.0 / timesteps as f64;
                let (lo, hi) = (beta_start * scale, (beta_end * scale).min(0.999));
                for (t, beta) in betas.iter_mut().enumerate().skip(1) {
                    *beta = lo + (hi - lo) * (t - 1) as f64 / (t_max - 1) as f64;
                }
            }
            ScheduleConfig::Cosine { offset } => {
                let f = |t: f64| {
                    ((t / timesteps as f64 + offset) / (1.0 + offset) * std::f64::consts::FRAC_PI_2)
                        .cos()
                        .powi(2)
                };
                for (t, beta) in betas.iter_mut().enumerate().skip(1) {
                    *beta = (1.0 - f(t as f64) / f((t - 1) as f64)).clamp(0.0, 0.999);
                }
            }
        }
        if let Some(t) = (1..=t_max).find(|&t| !(betas[t] > 0.0 && betas[t] < 1.0)) {
            return Err(GmError::config(
                "schedule",
                format!(
                    "β_{t} = {} for T = {timesteps}; every β must lie in (0, 1) (the linear schedule scales its betas by 1000 / T)",
                    betas[t]
                ),
            ));
        }
        let mut alpha_bars = vec![1.0; t_max + 1];
        for t in 1..=t_max {
            alpha_bars[t] = alpha_bars[t - 1] * (1.0 - betas[t]);
        }
        if alpha_bars.iter().any(|a| !a.is_finite()) || alpha_bars[t_max] <= 0.0 {
            return Err(GmError::config(
                "schedule",
                "the schedule destroys the signal completely (ᾱ_T = 0); use smaller betas",
            ));
        }
        let alpha_bar_table = Tensor::f_from_slice(&alpha_bars)?.f_to_device(device)?;
        Ok(Schedule {
            betas,
            alpha_bars,
            alpha_bar_table,
        })
    }

    /// T.
    pub fn timesteps(&self) -> i64 {
        (self.betas.len() - 1) as i64
    }

    /// β_t for t in 0..=T (β_0 = 0).
    pub fn betas(&self) -> &[f64] {
        &self.betas
    }

    /// ᾱ_t for t in 0..=T (ᾱ_0 = 1).
    pub fn alpha_bars(&self) -> &[f64] {
        &self.alpha_bars
    }

    /// ᾱ at integer steps `t` (any shape, values in 0..=T), float64.
    pub fn alpha_bar(&self, t: &Tensor) -> Result<Tensor> {
        Ok(self
            .alpha_bar_table
            .f_index_select(0, &t.f_flatten(0, -1)?)?
            .f_view(t.size().as_slice())?)
    }

    /// A sample of q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I) for per-example steps `t` `[b]`,
    /// given the standard Normal `noise`; in the dtype of `x0`.
    pub fn q_sample(&self, x0: &Tensor, t: &Tensor, noise: &Tensor) -> Result<Tensor> {
        let ab = self.alpha_bar(t)?;
        let (mean, std) = (
            per_example(&ab.f_sqrt()?, x0)?,
            per_example(&ab.f_neg()?.f_add_scalar(1.0)?.f_sqrt()?, x0)?,
        );
        Ok(x0.f_mul(&mean)?.f_add(&noise.f_mul(&std)?)?)
    }

    /// The coefficients of the jumps `t → s` per example (`[b]` integer steps, s < t).
    pub fn jump(&self, t: &Tensor, s: &Tensor) -> Result<Jump> {
        let alpha_bar_t = self.alpha_bar(t)?;
        let alpha_bar_s = self.alpha_bar(s)?;
        let ratio = alpha_bar_t.f_div(&alpha_bar_s)?;
        let beta = ratio.f_neg()?.f_add_scalar(1.0)?;
        let one_minus_t = alpha_bar_t.f_neg()?.f_add_scalar(1.0)?;
        let one_minus_s = alpha_bar_s.f_neg()?.f_add_scalar(1.0)?;
        let posterior_variance = one_minus_s.f_div(&one_minus_t)?.f_mul(&beta)?;
        let coef_x0 = alpha_bar_s.f_sqrt()?.f_mul(&beta)?.f_div(&one_minus_t)?;
        let coef_xt = ratio.f_sqrt()?.f_mul(&one_minus_s)?.f_div(&one_minus_t)?;
        Ok(Jump {
            alpha_bar_t,
            alpha_bar_s,
            beta,
            posterior_variance,
            coef_x0,
            coef_xt,
        })
    }

    /// The log posterior variance of the one-step jump t → t − 1 with the first step's zero
    /// variance replaced by the second's (Ho et al. 2020), so its logarithm is finite; `[b]`.
    pub fn clipped_log_posterior_variance(&self, t: &Tensor) -> Result<Tensor> {
        let t_safe = t.f_clamp_min(2)?;
        let jump = self.jump(&t_safe, &t_safe.f_sub_scalar(1)?)?;
        Ok(jump.posterior_variance.f_log()?)
    }

    /// The steps a sampler of `steps` model evaluations visits, from T down: evenly spaced,
    /// always including T, followed by 0 (the data). `steps` is capped at T.
    pub fn sampling_steps(&self, steps: usize) -> Vec<i64> {
        let t_max = self.timesteps();
        let steps = (steps as i64).clamp(1, t_max);
        let mut seq: Vec<i64> = (1..=steps)
            .rev()
            .map(|i| (i * t_max + steps - 1) / steps)
            .collect();
        seq.dedup();
        seq.push(0);
        seq
    }
}

/// `coef` `[b]` reshaped to broadcast against `like` `[b, ...]`, in `like`'s dtype.
pub fn per_example(coef: &Tensor, like: &Tensor) -> Result<Tensor> {
    let mut shape = vec![-1i64];
    shape.extend(std::iter::repeat_n(1, like.dim().saturating_sub(1)));
    Ok(coef.f_view(shape.as_slice())?.f_to_kind(like.kind())?)
}

/// `t` (one step) as a `[b]` integer tensor on `device`.
pub fn steps_tensor(t: i64, b: i64, device: Device) -> Result<Tensor> {
    Ok(Tensor::f_full([b], t, (Kind::Int64, device))?)
}
