//! Masked (absorbing-state) discrete diffusion, in the spirit of D3PM's absorbing process, MD4
//! and MDLM: each value of an example is independently replaced by a mask token by time t with
//! probability 1 − α_t (α_0 = 1, α_1 = 0), and a network predicts the masked values from the
//! rest. The continuous-time ELBO is
//!
//!   −ln p(x) ≤ ∫_0^1 w(t) E_{x_t}[ Σ_{i masked} −ln p_θ(x_i | x_t) ] dt,  w(t) = −α'_t / (1 − α_t),
//!
//! in nats, for the probability of the discrete values themselves: the same unit as a flow's
//! or an autoregressive model's NLL. With the true conditionals it equals −ln p(x) exactly (it
//! is an average over orders of the any-order autoregressive factorisations). Sampling starts
//! from all-masked and unmasks a share of the remaining values at each of its steps.

use gm_core::tch::{Device, Kind, Tensor};
use gm_core::{GmError, Result};
use serde::{Deserialize, Serialize};
use std::f64::consts::FRAC_PI_2;

/// How the share of unmasked values α_t falls from 1 at t = 0 to 0 at t = 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaskSchedule {
    /// α_t = 1 − t, so w(t) = 1/t.
    #[default]
    Linear,
    /// α_t = 1 − cos(π/2 · (1 − t)), so w(t) = π/2 · tan(π/2 · (1 − t)).
    Cosine,
}

impl MaskSchedule {
    /// α_t for times `t` (any shape, float64).
    pub fn alpha(self, t: &Tensor) -> Result<Tensor> {
        Ok(match self {
            MaskSchedule::Linear => t.f_neg()?.f_add_scalar(1.0)?,
            MaskSchedule::Cosine => t
                .f_neg()?
                .f_add_scalar(1.0)?
                .f_mul_scalar(FRAC_PI_2)?
                .f_cos()?
                .f_neg()?
                .f_add_scalar(1.0)?,
        })
    }

    /// α_t at one time.
    pub fn alpha_at(self, t: f64) -> f64 {
        match self {
            MaskSchedule::Linear => 1.0 - t,
            MaskSchedule::Cosine => 1.0 - (FRAC_PI_2 * (1.0 - t)).cos(),
        }
    }

    /// The ELBO's weight w(t) = −α'_t / (1 − α_t) for times `t` in (0, 1].
    pub fn weight(self, t: &Tensor) -> Result<Tensor> {
        Ok(match self {
            MaskSchedule::Linear => t.f_reciprocal()?,
            MaskSchedule::Cosine => t
                .f_neg()?
                .f_add_scalar(1.0)?
                .f_mul_scalar(FRAC_PI_2)?
                .f_tan()?
                .f_mul_scalar(FRAC_PI_2)?,
        })
    }
}

/// Log-probabilities `[b, levels, values]` of each value given the masked tokens `[b, values]`
/// (the mask token is `levels`) at times `[b]` (float64).
pub type LogProbsFn<'a> = dyn Fn(&Tensor, &Tensor) -> Result<Tensor> + 'a;

/// The absorbing process over `levels` values per position, plus one mask token (`levels`).
#[derive(Debug, Clone, Copy)]
pub struct MaskingProcess {
    pub schedule: MaskSchedule,
    pub levels: i64,
}

impl MaskingProcess {
    /// The mask token.
    pub fn mask_token(&self) -> i64 {
        self.levels
    }

    /// x_t: tokens `[b, values]` (int64) each masked with probability 1 − α_t, times `[b]`.
    pub fn mask(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        let keep = self.schedule.alpha(t)?.f_unsqueeze(1)?;
        let masked =
            Tensor::f_rand(x.size().as_slice(), (Kind::Double, x.device()))?.f_ge_tensor(&keep)?;
        Ok(x.f_masked_fill(&masked, self.mask_token())?)
    }

    /// The ELBO's integrand at one draw: w(t) Σ_{i masked} −ln p(x_i | x_t), per example `[b]`
    /// (float64), given the denoiser's log-probabilities `[b, levels, values]`.
    pub fn integrand(
        &self,
        x: &Tensor,
        xt: &Tensor,
        t: &Tensor,
        log_probs: &Tensor,
    ) -> Result<Tensor> {
        let nll = log_probs
            .f_gather(1, &x.f_unsqueeze(1)?, false)?
            .f_squeeze_dim(1)?
            .f_neg()?
            .f_to_kind(Kind::Double)?;
        let masked = xt.f_eq(self.mask_token())?.f_to_kind(Kind::Double)?;
        Ok(nll
            .f_mul(&masked)?
            .f_sum_dim_intlist(1, false, Kind::Double)?
            .f_mul(&self.schedule.weight(t)?)?)
    }

    /// Stratified times in (0, 1]: for each of `b` examples, `strata` times, the k-th uniform in
    /// ((k)/S, (k+1)/S] (so t = 0, where w is infinite, is never drawn). `[b · strata]`,
    /// stratum-major.
    pub fn stratified_times(&self, b: i64, strata: i64, device: Device) -> Result<Tensor> {
        let k = Tensor::f_arange(strata, (Kind::Double, device))?
            .f_unsqueeze(1)?
            .f_expand([strata, b], false)?;
        let u = Tensor::f_rand([strata, b], (Kind::Double, device))?;
        Ok(k.f_add(&u.f_neg()?.f_add_scalar(1.0)?)?
            .f_div_scalar(strata as f64)?
            .f_reshape([-1])?)
    }

    /// An unbiased estimate of the negative ELBO per example `[b]` in nats, averaging `strata`
    /// stratified draws of (t, x_t) per example; the denoiser sees at most `strata_per_call`
    /// strata of the batch at once (memory). The times do not depend on the chunking; the masks
    /// are drawn per chunk, so a different chunking draws other (equally distributed) masks.
    pub fn nelbo(
        &self,
        x: &Tensor,
        log_probs: &LogProbsFn,
        strata: i64,
        strata_per_call: i64,
    ) -> Result<Tensor> {
        let b = gm_core::model::leading_dim(x, "[batch, values]", "MaskingProcess.nelbo x")?;
        if strata < 1 {
            return Err(GmError::config(
                "strata",
                format!("must be at least 1, got {strata}"),
            ));
        }
        let t = self.stratified_times(b, strata, x.device())?;
        let per_call = strata_per_call.clamp(1, strata);
        let mut total = Tensor::f_zeros([b], (Kind::Double, x.device()))?;
        let mut first = 0;
        while first < strata {
            let k = per_call.min(strata - first);
            let tk = t.f_narrow(0, first * b, k * b)?;
            let xs = x.f_repeat([k, 1])?;
            let xt = self.mask(&xs, &tk)?;
            let lp = log_probs(&xt, &tk)?;
            let sum = self
                .integrand(&xs, &xt, &tk, &lp)?
                .f_reshape([k, b])?
                .f_sum_dim_intlist(0, false, Kind::Double)?;
            total = total.f_add(&sum)?;
            first += k;
        }
        Ok(total.f_div_scalar(strata as f64)?)
    }

    /// Ancestral sampling: `n` examples of `values` tokens, from all-masked at t = 1 to t = 0
    /// in `steps` equal steps; at the step t → s each still-masked value is revealed with
    /// probability (α_s − α_t) / (1 − α_t), drawn from the denoiser's distribution with its
    /// log-probabilities divided by `temperature` (0: the most likely value). Returns the tokens
    /// and the number of denoiser calls.
    pub fn sample(
        &self,
        n: i64,
        values: i64,
        log_probs: &LogProbsFn,
        steps: usize,
        temperature: f64,
        device: Device,
    ) -> Result<(Tensor, usize)> {
        if steps == 0 {
            return Err(GmError::config("steps", "must be at least 1"));
        }
        let mut x = Tensor::f_full([n, values], self.mask_token(), (Kind::Int64, device))?;
        for k in (1..=steps).rev() {
            let (t, s) = (k as f64 / steps as f64, (k - 1) as f64 / steps as f64);
            let (at, as_) = (self.schedule.alpha_at(t), self.schedule.alpha_at(s));
            let reveal_p = if s == 0.0 {
                1.0
            } else {
                (as_ - at) / (1.0 - at)
            };
            let lp = log_probs(&x, &Tensor::f_full([n], t, (Kind::Double, device))?)?;
            let drawn = if temperature == 0.0 {
                lp.f_argmax(1, false)?
            } else {
                // Gumbel-max: argmax of logits / T + Gumbel noise draws from softmax(logits / T).
                let u = lp.f_rand_like()?.f_clamp(1e-12, 1.0 - 1e-7)?;
                let gumbel = u.f_log()?.f_neg()?.f_log()?.f_neg()?;
                lp.f_div_scalar(temperature)?
                    .f_add(&gumbel)?
                    .f_argmax(1, false)?
            };
            let masked = x.f_eq(self.mask_token())?;
            let reveal = Tensor::f_rand([n, values], (Kind::Double, device))?
                .f_lt(reveal_p)?
                .f_logical_and(&masked)?;
            x = drawn.f_where_self(&reveal, &x)?;
        }
        Ok((x, steps))
    }
}
