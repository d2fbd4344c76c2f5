//! The reverse process for any denoiser: its Gaussian steps, the terms of the variational
//! bound, and the samplers (ancestral DDPM, DDIM with any η, DPM-Solver++ 2M) and DDIM
//! encoding. The denoiser is a closure, so a network and a closed-form optimal denoiser (in
//! the tests) go through the same code.
//!
//! Everything here works in the model's space (discrete data mapped to [-1, 1], continuous data
//! divided by the model's scale); [`crate::Diffusion`] maps data in and out.

use crate::likelihood::{discretized_gaussian_log_prob, gaussian_log_density, normal_kl};
use crate::prediction::Prediction;
use crate::schedule::{per_example, steps_tensor, Schedule};
use gm_core::tch::{Device, Kind, Tensor};
use gm_core::{GmError, Result};
use serde::{Deserialize, Serialize};
use std::str::FromStr;

/// The variance of each reverse step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Variance {
    /// The posterior variance β̃_t (the first step's replaced by the second's).
    #[default]
    Small,
    /// The forward variance β_t.
    Large,
    /// Learned: the network's second output v gives ln σ² = ½(v + 1) ln β_t + ½(1 − v) ln β̃_t
    /// (Nichol & Dhariwal 2021), trained with the hybrid loss.
    Learned,
}

/// A sampler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Solver {
    /// Ancestral sampling with the model's variance (Ho et al. 2020); with fewer steps than T,
    /// on the respaced process (Nichol & Dhariwal 2021).
    Ddpm,
    /// DDIM (Song et al. 2021): η = 0 deterministic, η = 1 ancestral with the posterior variance.
    #[default]
    Ddim,
    /// DPM-Solver++ 2M (Lu et al. 2022): a second-order multistep solver of the
    /// probability-flow ODE in data prediction, for few steps.
    #[serde(rename = "dpm_solver_2m")]
    DpmSolver2m,
}

impl FromStr for Solver {
    type Err = GmError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "ddpm" => Ok(Solver::Ddpm),
            "ddim" => Ok(Solver::Ddim),
            "dpm_solver_2m" | "dpm++2m" => Ok(Solver::DpmSolver2m),
            other => Err(GmError::config(
                "solver",
                format!("unknown solver {other:?}; expected ddpm, ddim or dpm_solver_2m"),
            )),
        }
    }
}

/// The decoder of the last step: a Gaussian integrated over the bins of `levels` discrete
/// values in [-1, 1], or a density for continuous data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoder {
    Discrete { levels: i64 },
    Continuous,
}

/// What the denoiser returns at `(x_t, t)`: its prediction (ε, x₀ or v, in x_t's shape) and,
/// for learned variances, the interpolation value v (same shape).
#[derive(Debug)]
pub struct DenoiserOutput {
    pub prediction: Tensor,
    pub variance: Option<Tensor>,
}

/// A denoiser: noisy examples `[b, ...]` and integer steps `[b]` to its output.
pub type DenoiseFn<'a> = dyn Fn(&Tensor, &Tensor) -> Result<DenoiserOutput> + 'a;

/// A reverse process: a schedule, what the denoiser predicts, the step variances, and an
/// optional clip of x̂₀ to [-c, c] while sampling (for data known to lie there).
#[derive(Debug)]
pub struct Process {
    pub schedule: Schedule,
    pub prediction: Prediction,
    pub variance: Variance,
    pub clip: Option<f64>,
}

/// The last step's decoder and what it is evaluated at (float64, `[b, ...]` each).
struct DecoderInputs<'a> {
    x0: &'a Tensor,
    mean: &'a Tensor,
    log_variance: &'a Tensor,
    decoder: Decoder,
}

/// Where [`DecoderInputs::in_place_of_kl`] evaluates the decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DecoderRows {
    /// Only on the rows at step 1, gathered; their count is read to the host (free on the CPU).
    /// With steps drawn uniformly that is one example in T, and usually none: on every row,
    /// the decoder's log-CDFs took about 6% of a U-Net training step's samples in `perf`.
    Gathered,
    /// On every row, then selected: no read, for devices where one would wait for the queue.
    All,
}

impl DecoderInputs<'_> {
    /// `−ln p(x₀ | x₁)` per example where `first` (`[b]`, bool) is set, `kl` elsewhere; the two
    /// choices of `rows` give the same values.
    fn in_place_of_kl(&self, first: &Tensor, kl: Tensor, rows: DecoderRows) -> Result<Tensor> {
        let nll = |x0: &Tensor, mean: &Tensor, lv: &Tensor| -> Result<Tensor> {
            let log_p = match self.decoder {
                Decoder::Discrete { levels } => {
                    discretized_gaussian_log_prob(x0, mean, lv, levels)?
                }
                Decoder::Continuous => gaussian_log_density(x0, mean, lv)?,
            };
            Ok(sum_per_example(&log_p)?.f_neg()?)
        };
        match rows {
            DecoderRows::All => {
                Ok(nll(self.x0, self.mean, self.log_variance)?.f_where_self(first, &kl)?)
            }
            DecoderRows::Gathered => {
                let at = first.f_nonzero()?.f_reshape([-1])?;
                if at.size()[0] == 0 {
                    return Ok(kl);
                }
                let pick = |t: &Tensor| t.f_index_select(0, &at);
                let values = nll(
                    &pick(self.x0)?,
                    &pick(self.mean)?,
                    &pick(self.log_variance)?,
                )?;
                Ok(kl.f_index_put(&[Some(at)], &values, false)?)
            }
        }
    }
}

/// One step of a sampling run, for progress reports.
pub type Progress<'a> = &'a dyn Fn(usize, usize);

impl Process {
    /// The log-variance of the reverse jumps `t → s` (`[b]` each), per value: broadcast
    /// `[b, 1, ...]` for fixed variances, `[b, ...]` for learned ones.
    fn log_variance(
        &self,
        t: &Tensor,
        s: &Tensor,
        jump_beta: &Tensor,
        jump_posterior: &Tensor,
        learned: Option<&Tensor>,
        like: &Tensor,
    ) -> Result<Tensor> {
        // The zero posterior variance of a jump to the data is replaced by the first one-step
        // jump's clipped value, and so is the fixed large variance there (so both fixed choices
        // share the last step's decoder, as Ho et al. 2020). Learned variances interpolate
        // between that and the jump's own β, as Nichol & Dhariwal 2021.
        let clipped = self.schedule.clipped_log_posterior_variance(t)?;
        let to_data = s.f_eq(0)?;
        let small = clipped.f_where_self(&to_data, &jump_posterior.f_log()?)?;
        Ok(match (self.variance, learned) {
            (Variance::Small, _) => per_example(&small, like)?,
            (Variance::Large, _) => {
                per_example(&clipped.f_where_self(&to_data, &jump_beta.f_log()?)?, like)?
            }
            (Variance::Learned, Some(v)) => {
                let frac = v.f_add_scalar(1.0)?.f_mul_scalar(0.5)?;
                let (hi, lo) = (
                    per_example(&jump_beta.f_log()?, v)?,
                    per_example(&small, v)?,
                );
                frac.f_mul(&hi)?
                    .f_add(&frac.f_neg()?.f_add_scalar(1.0)?.f_mul(&lo)?)?
            }
            (Variance::Learned, None) => {
                return Err(GmError::Domain(
                    "a learned-variance process needs the denoiser's variance output".into(),
                ))
            }
        })
    }

    /// (x̂₀, ε̂) from the denoiser's output at `xt`, `t`, with x̂₀ clipped when asked (ε̂ then
    /// follows the clipped x̂₀).
    pub fn predict_x0_eps(
        &self,
        out: &DenoiserOutput,
        xt: &Tensor,
        t: &Tensor,
        clip: bool,
    ) -> Result<(Tensor, Tensor)> {
        let ab = self.schedule.alpha_bar(t)?;
        let (x0, eps) = self.prediction.to_x0_eps(&out.prediction, xt, &ab)?;
        match self.clip.filter(|_| clip) {
            Some(c) => {
                let x0 = x0.f_clamp(-c, c)?;
                let eps = Prediction::X0.to_x0_eps(&x0, xt, &ab)?.1;
                Ok((x0, eps))
            }
            None => Ok((x0, eps)),
        }
    }

    /// KL(q(x_T | x_0) ‖ N(0, I)) per example `[b]`, in nats.
    pub fn prior_term(&self, x0: &Tensor) -> Result<Tensor> {
        let x0 = x0.f_to_kind(Kind::Double)?;
        let b = x0.size()[0];
        let t = steps_tensor(self.schedule.timesteps(), b, x0.device())?;
        let ab = self.schedule.alpha_bar(&t)?;
        let mean = x0.f_mul(&per_example(&ab.f_sqrt()?, &x0)?)?;
        let lv = per_example(&ab.f_neg()?.f_add_scalar(1.0)?.f_log()?, &x0)?;
        let zeros = mean.f_zeros_like()?;
        sum_per_example(&normal_kl(&mean, &lv.f_expand_as(&mean)?, &zeros, &zeros)?)
    }

    /// The bound's term at each example's step `t` (`[b]`, 1..=T) in nats `[b]`: for t ≥ 2,
    /// KL(q(x_{t−1} | x_t, x_0) ‖ p(x_{t−1} | x_t)); for t = 1, −ln p(x_0 | x_1) under
    /// `decoder`. `xt` is the noisy example and `out` the denoiser's output there.
    /// Computed in float64.
    pub fn term(
        &self,
        x0: &Tensor,
        xt: &Tensor,
        t: &Tensor,
        out: &DenoiserOutput,
        decoder: Decoder,
    ) -> Result<Tensor> {
        // One step per example: the decoder's rows are picked by position (see `DecoderRows`),
        // where a broadcast `t` would pick row 0 only.
        let b = x0.size().first().copied().unwrap_or(0);
        if t.size() != [b] {
            return Err(GmError::shape(
                "Process::term t",
                format!("[{b}]"),
                &t.size(),
            ));
        }
        let (x0, xt) = (x0.f_to_kind(Kind::Double)?, xt.f_to_kind(Kind::Double)?);
        let out = DenoiserOutput {
            prediction: out.prediction.f_to_kind(Kind::Double)?,
            variance: out
                .variance
                .as_ref()
                .map(|v| v.f_to_kind(Kind::Double))
                .transpose()?,
        };
        // x̂₀ is clipped to the data's range where it has one, as when sampling (Nichol &
        // Dhariwal 2021 do the same for their bounds): where ᾱ_t is near 0 an unclipped x̂₀
        // amplifies the denoiser's error by 1/√ᾱ_t.
        let (x0_hat, _) = self.predict_x0_eps(&out, &xt, t, true)?;
        let s = t.f_sub_scalar(1)?;
        let jump = self.schedule.jump(t, &s)?;
        let (cx0, cxt) = (
            per_example(&jump.coef_x0, &x0)?,
            per_example(&jump.coef_xt, &x0)?,
        );
        let true_mean = x0.f_mul(&cx0)?.f_add(&xt.f_mul(&cxt)?)?;
        let model_mean = x0_hat.f_mul(&cx0)?.f_add(&xt.f_mul(&cxt)?)?;
        let true_lv = per_example(&self.schedule.clipped_log_posterior_variance(t)?, &x0)?
            .f_expand_as(&x0)?;
        let model_lv = self
            .log_variance(
                t,
                &s,
                &jump.beta,
                &jump.posterior_variance,
                out.variance.as_ref(),
                &x0,
            )?
            .f_expand_as(&x0)?;
        let kl = sum_per_example(&normal_kl(&true_mean, &true_lv, &model_mean, &model_lv)?)?;
        let last = DecoderInputs {
            x0: &x0,
            mean: &model_mean,
            log_variance: &model_lv,
            decoder,
        };
        let rows = if x0.device() == Device::Cpu {
            DecoderRows::Gathered
        } else {
            DecoderRows::All
        };
        last.in_place_of_kl(&t.f_eq(1)?, kl, rows)
    }

    /// An unbiased estimate of the negative variational bound (an upper bound on the NLL, in
    /// nats) per example `[b]`: the prior term plus the T step terms, estimated by stratified
    /// sampling with `strata` steps per example (one uniformly drawn step in each of `strata`
    /// equal ranges of 1..=T, weighted by the range's length); `strata = T` computes every term.
    /// Each stratum costs one denoiser call on the batch.
    pub fn nll_bound(
        &self,
        x0: &Tensor,
        denoise: &DenoiseFn,
        decoder: Decoder,
        strata: i64,
    ) -> Result<Tensor> {
        let t_max = self.schedule.timesteps();
        let strata = strata.clamp(1, t_max);
        let b = x0.size()[0];
        let device = x0.device();
        let mut total = self.prior_term(x0)?;
        for k in 0..strata {
            let (lo, hi) = (k * t_max / strata + 1, (k + 1) * t_max / strata);
            let t = Tensor::f_randint_low(lo, hi + 1, [b], (Kind::Int64, device))?;
            let noise = x0.f_randn_like()?;
            let xt = self.schedule.q_sample(x0, &t, &noise)?;
            let out = denoise(&xt, &t)?;
            let term = self.term(x0, &xt, &t, &out, decoder)?;
            total = total.f_add(&term.f_mul_scalar((hi - lo + 1) as f64)?)?;
        }
        Ok(total)
    }

    /// Every term of the bound for each example, `[b, T + 1]`: column 0 the prior term, column
    /// t the step-t term (one noisy draw each). T denoiser calls.
    pub fn all_terms(&self, x0: &Tensor, denoise: &DenoiseFn, decoder: Decoder) -> Result<Tensor> {
        let b = x0.size()[0];
        let mut columns = vec![self.prior_term(x0)?];
        for t in 1..=self.schedule.timesteps() {
            let t = steps_tensor(t, b, x0.device())?;
            let xt = self.schedule.q_sample(x0, &t, &x0.f_randn_like()?)?;
            let out = denoise(&xt, &t)?;
            columns.push(self.term(x0, &xt, &t, &out, decoder)?);
        }
        Ok(Tensor::f_stack(&columns, 1)?)
    }

    /// Samples in the model's space from `noise` `[b, ...]` (a standard Normal draw scaled by
    /// the temperature), with `solver` over `steps` denoiser calls (capped at T); `eta` is
    /// DDIM's; `temperature` also scales the noise injected along the way. `progress` is told
    /// each finished step.
    #[allow(clippy::too_many_arguments)]
    pub fn sample(
        &self,
        noise: &Tensor,
        denoise: &DenoiseFn,
        solver: Solver,
        steps: usize,
        eta: f64,
        temperature: f64,
        progress: Option<Progress>,
    ) -> Result<Tensor> {
        let seq = self.schedule.sampling_steps(steps);
        let b = noise.size()[0];
        let device = noise.device();
        let mut x = noise.shallow_clone();
        let mut previous_x0: Option<(Tensor, f64)> = None;
        let total = seq.len() - 1;
        for (i, pair) in seq.windows(2).enumerate() {
            let (t_int, s_int) = (pair[0], pair[1]);
            let t = steps_tensor(t_int, b, device)?;
            let s = steps_tensor(s_int, b, device)?;
            let out = denoise(&x, &t)?;
            let (x0, eps) = self.predict_x0_eps(&out, &x, &t, true)?;
            let ab = self.schedule.alpha_bars();
            let (ab_t, ab_s) = (ab[t_int as usize], ab[s_int as usize]);
            x = match solver {
                Solver::Ddpm => {
                    let jump = self.schedule.jump(&t, &s)?;
                    let mean = x0
                        .f_mul(&per_example(&jump.coef_x0, &x0)?)?
                        .f_add(&x.f_mul(&per_example(&jump.coef_xt, &x)?)?)?;
                    if s_int == 0 {
                        mean
                    } else {
                        let lv = self.log_variance(
                            &t,
                            &s,
                            &jump.beta,
                            &jump.posterior_variance,
                            out.variance.as_ref(),
                            &x,
                        )?;
                        let z = x.f_randn_like()?.f_mul_scalar(temperature)?;
                        mean.f_add(&z.f_mul(&lv.f_mul_scalar(0.5)?.f_exp()?)?)?
                    }
                }
                Solver::Ddim => {
                    let posterior = (1.0 - ab_s) / (1.0 - ab_t) * (1.0 - ab_t / ab_s);
                    let sigma = eta * posterior.max(0.0).sqrt();
                    let direction = (1.0 - ab_s - sigma * sigma).max(0.0).sqrt();
                    let mut next = x0
                        .f_mul_scalar(ab_s.sqrt())?
                        .f_add(&eps.f_mul_scalar(direction)?)?;
                    if sigma > 0.0 {
                        next = next.f_add(&x.f_randn_like()?.f_mul_scalar(sigma * temperature)?)?;
                    }
                    next
                }
                Solver::DpmSolver2m => {
                    if s_int == 0 {
                        x0
                    } else {
                        let lambda = |a: f64| 0.5 * (a / (1.0 - a)).ln();
                        let h = lambda(ab_s) - lambda(ab_t);
                        let d = match &previous_x0 {
                            Some((prev, h_prev)) => {
                                let r = h_prev / h;
                                x0.f_mul_scalar(1.0 + 0.5 / r)?
                                    .f_sub(&prev.f_mul_scalar(0.5 / r)?)?
                            }
                            None => x0.shallow_clone(),
                        };
                        let sigma_ratio = ((1.0 - ab_s) / (1.0 - ab_t)).sqrt();
                        let next = x
                            .f_mul_scalar(sigma_ratio)?
                            .f_sub(&d.f_mul_scalar(ab_s.sqrt() * (-h).exp_m1())?)?;
                        previous_x0 = Some((x0, h));
                        next
                    }
                }
            };
            if let Some(p) = progress {
                p(i + 1, total);
            }
        }
        Ok(x)
    }

    /// DDIM encoding (η = 0 run backwards): the x_T from which the deterministic DDIM sampler
    /// of `steps` steps returns to `x0`. Each jump s → t solves DDIM's own step t → s for x_t
    /// by fixed-point iteration (`refinements` times after a first guess that evaluates the
    /// denoiser at x_s), so decoding retraces the encoding up to the iteration's convergence.
    pub fn ddim_encode(
        &self,
        x0: &Tensor,
        denoise: &DenoiseFn,
        steps: usize,
        refinements: usize,
    ) -> Result<Tensor> {
        let mut seq = self.schedule.sampling_steps(steps);
        seq.reverse(); // 0, t_1, ..., T
        let b = x0.size()[0];
        let device = x0.device();
        let ab = self.schedule.alpha_bars();
        let mut x = x0.shallow_clone();
        for pair in seq.windows(2) {
            let (s_int, t_int) = (pair[0], pair[1]);
            let t = steps_tensor(t_int, b, device)?;
            let (ab_s, ab_t) = (ab[s_int as usize], ab[t_int as usize]);
            // DDIM's step t → s is x_s = √ᾱ_s x̂₀ + √(1 − ᾱ_s) ε̂ with x̂₀ from (x_t, ε̂); solved
            // for x_t given ε̂: x_t = √ᾱ_t (x_s − √(1 − ᾱ_s) ε̂)/√ᾱ_s + √(1 − ᾱ_t) ε̂.
            let step_up = |eps: &Tensor| -> Result<Tensor> {
                Ok(x.f_sub(&eps.f_mul_scalar((1.0 - ab_s).sqrt())?)?
                    .f_mul_scalar((ab_t / ab_s).sqrt())?
                    .f_add(&eps.f_mul_scalar((1.0 - ab_t).sqrt())?)?)
            };
            let mut guess = x.shallow_clone();
            let mut next = x.shallow_clone();
            for _ in 0..=refinements {
                let out = denoise(&guess, &t)?;
                // Clipped as the sampler clips, so decoding retraces these steps.
                let eps = self.predict_x0_eps(&out, &guess, &t, true)?.1;
                next = step_up(&eps)?;
                guess = next.shallow_clone();
            }
            x = next;
        }
        Ok(x)
    }
}

/// Sums every dimension but the first: `[b, ...]` to `[b]`.
pub fn sum_per_example(x: &Tensor) -> Result<Tensor> {
    let b = x.size()[0];
    Ok(x.f_reshape([b, -1])?
        .f_sum_dim_intlist(1, false, None::<Kind>)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Evaluating the decoder on the gathered step-1 rows gives the values and gradients of
    /// evaluating it on every row and selecting: for no such row, some, and all, with both
    /// decoders.
    #[test]
    fn gathered_decoder_rows_match_every_row() {
        gm_core::tch::manual_seed(3);
        let opts = (Kind::Double, Device::Cpu);
        let (b, d) = (6, 5);
        for decoder in [Decoder::Discrete { levels: 4 }, Decoder::Continuous] {
            for first in [
                vec![false; 6],
                vec![false, true, false, false, true, false],
                vec![true; 6],
            ] {
                let first = Tensor::from_slice(&first);
                let x0 = Tensor::randint(4, [b, d], opts) * (2.0 / 3.0) - 1.0;
                let mean = (Tensor::randn([b, d], opts) * 0.5).set_requires_grad(true);
                let log_variance = (Tensor::randn([b, d], opts) - 2.0).set_requires_grad(true);
                let kl = (Tensor::rand([b], opts) * 3.0).set_requires_grad(true);
                let run = |rows: DecoderRows| {
                    let inputs = DecoderInputs {
                        x0: &x0,
                        mean: &mean,
                        log_variance: &log_variance,
                        decoder,
                    };
                    let out = inputs
                        .in_place_of_kl(&first, kl.shallow_clone(), rows)
                        .unwrap();
                    let weights = Tensor::arange(b, opts) + 1.0;
                    let inputs = [&mean, &log_variance, &kl];
                    let grads = Tensor::run_backward(
                        &[(&out * &weights).sum(Kind::Double)],
                        &inputs,
                        false,
                        false,
                    );
                    // An input the output does not reach gets no gradient: zero.
                    let grads: Vec<Tensor> = grads
                        .into_iter()
                        .zip(inputs)
                        .map(|(g, x)| if g.defined() { g } else { x.zeros_like() })
                        .collect();
                    (out.detach(), grads)
                };
                let (all, all_grads) = run(DecoderRows::All);
                let (gathered, gathered_grads) = run(DecoderRows::Gathered);
                let err = (&all - &gathered).abs().max().double_value(&[]);
                assert!(err < 1e-12, "{decoder:?} {first:?}: values differ by {err}");
                for (g_all, g_gathered) in all_grads.iter().zip(&gathered_grads) {
                    let err = (g_all - g_gathered).abs().max().double_value(&[]);
                    assert!(
                        err < 1e-12,
                        "{decoder:?} {first:?}: gradients differ by {err}"
                    );
                }
                // And the decoder rows really hold the decoder: not the KL they replace.
                let any = first.any().int64_value(&[]) != 0;
                let same_as_kl = (&gathered - kl.detach()).abs().max().double_value(&[]) < 1e-12;
                assert_eq!(same_as_kl, !any, "{decoder:?} {first:?}");
            }
        }
    }
}
