//! Kullback–Leibler divergences: analytic pairs and a Monte Carlo estimate for any pair.

use crate::distributions::{
    sum_rightmost, Bernoulli, Categorical, Distribution, Independent, Normal, StandardNormal,
};
use crate::{GmError, Result};
use tch::{Kind, Tensor};

/// `KL(self ‖ q)` in closed form, with the shape of the batch.
pub trait KlDivergence<Q: ?Sized> {
    fn kl_divergence(&self, q: &Q) -> Result<Tensor>;
}

/// `KL(p ‖ q)` for any pair with a closed form.
pub fn kl_divergence<P: KlDivergence<Q>, Q: ?Sized>(p: &P, q: &Q) -> Result<Tensor> {
    p.kl_divergence(q)
}

/// `KL(N(μ₁, σ₁²) ‖ N(μ₂, σ₂²)) = ln(σ₂/σ₁) + (σ₁² + (μ₁-μ₂)²) / (2σ₂²) - ½`.
impl KlDivergence<Normal> for Normal {
    fn kl_divergence(&self, q: &Normal) -> Result<Tensor> {
        let var_ratio = self.scale().f_div(q.scale())?.f_square()?;
        let mean_term = self.loc().f_sub(q.loc())?.f_div(q.scale())?.f_square()?;
        // ½ (r + m - 1 - ln r) with r the variance ratio.
        Ok(var_ratio
            .f_add(&mean_term)?
            .f_sub_scalar(1.0)?
            .f_sub(&var_ratio.f_log()?)?
            .f_mul_scalar(0.5)?)
    }
}

/// `KL(N(μ, σ²) ‖ N(0, I))`, a diagonal Gaussian against the standard normal over the same
/// events: `Σ ½(σ² + μ² − 1) − ln σ`, the VAE's KL term. It is the pair above with `μ₂ = 0`,
/// `σ₂ = 1`, written with `ln σ` (kept by [`Normal::from_log_scale`], so `ln(exp(s))` is never
/// taken) and without building the prior's tensors: five element-wise operations where the
/// general pair, with the prior's tensors made and broadcast, takes about fifteen.
impl KlDivergence<StandardNormal> for Independent<Normal> {
    fn kl_divergence(&self, q: &StandardNormal) -> Result<Tensor> {
        let event = self.event_shape();
        if event != q.event_shape() {
            return Err(GmError::shape(
                "KL(diagonal Normal ‖ standard Normal)",
                format!("a standard Normal over events {event:?}"),
                &q.event_shape(),
            ));
        }
        let p = self.base();
        let per_element = p
            .scale()
            .f_square()?
            .f_addcmul(p.loc(), p.loc())?
            .f_sub_scalar(1.0)?
            .f_mul_scalar(0.5)?
            .f_sub(&p.log_scale()?)?;
        sum_rightmost(&per_element, event.len())
    }
}

/// `p ln(p/q) + (1-p) ln((1-p)/(1-q))`, with every log written through softplus so that
/// extreme logits give no NaN: `ln p = -softplus(-a)`, `ln(1-p) = -softplus(a)`.
impl KlDivergence<Bernoulli> for Bernoulli {
    fn kl_divergence(&self, q: &Bernoulli) -> Result<Tensor> {
        let (a, b) = (self.logits(), q.logits());
        let p1 = a.f_sigmoid()?;
        let p0 = a.f_neg()?.f_sigmoid()?;
        let t1 = p1.f_mul(&b.f_neg()?.f_softplus()?.f_sub(&a.f_neg()?.f_softplus()?)?)?;
        let t0 = p0.f_mul(&b.f_softplus()?.f_sub(&a.f_softplus()?)?)?;
        Ok(t1.f_add(&t0)?)
    }
}

/// `Σ_k p_k (ln p_k - ln q_k)`; classes impossible under `p` contribute nothing.
impl KlDivergence<Categorical> for Categorical {
    fn kl_divergence(&self, q: &Categorical) -> Result<Tensor> {
        if self.num_classes() != q.num_classes() {
            return Err(GmError::shape(
                "KL(Categorical ‖ Categorical)",
                format!("{} classes in both", self.num_classes()),
                &q.log_probs().size(),
            ));
        }
        let lp = self.finite_log_probs()?;
        let lq = q.finite_log_probs()?;
        let p = lp.f_exp()?;
        let finite = p
            .f_mul(&lp.f_sub(&lq)?)?
            .f_sum_dim_intlist(-1, false, None::<Kind>)?;
        // A class possible under p but impossible under q (ln q = −∞) makes the divergence +∞;
        // the clamped logarithms above would give a huge finite number instead.
        let q_impossible = q.log_probs().f_isneginf()?;
        let p_possible = self.log_probs().f_isneginf()?.f_logical_not()?;
        let infinite = q_impossible
            .f_logical_and(&p_possible)?
            .f_any_dim(-1, false)?;
        Ok(finite.f_masked_fill(&infinite, f64::INFINITY)?)
    }
}

/// Independent wrappers sum the base KL over the reinterpreted dimensions.
impl<P, Q> KlDivergence<Independent<Q>> for Independent<P>
where
    P: Distribution + KlDivergence<Q>,
    Q: Distribution,
{
    fn kl_divergence(&self, q: &Independent<Q>) -> Result<Tensor> {
        if self.reinterpreted() != q.reinterpreted() {
            return Err(GmError::Unsupported(format!(
                "KL between Independent distributions over {} and {} event dimensions",
                self.reinterpreted(),
                q.reinterpreted()
            )));
        }
        sum_rightmost(&self.base().kl_divergence(q.base())?, self.reinterpreted())
    }
}

/// Monte Carlo estimate `E_p[ln p(x) - ln q(x)]` from `n` draws of `p`: works for any pair
/// that can sample and score (e.g. mixtures, which have no closed form).
///
/// Returns the estimate and its standard error, both with the shape of the batch.
pub fn kl_monte_carlo(
    p: &dyn Distribution,
    q: &dyn Distribution,
    n: i64,
) -> Result<(Tensor, Tensor)> {
    if n < 2 {
        return Err(GmError::config(
            "n",
            format!("a Monte Carlo KL needs at least 2 draws, got {n}"),
        ));
    }
    let x = p.sample(&[n])?;
    let diff = p.log_prob(&x)?.f_sub(&q.log_prob(&x)?)?;
    let mean = diff.f_mean_dim(0, false, None::<Kind>)?;
    let stderr = diff
        .f_std_dim(0, true, false)?
        .f_div_scalar((n as f64).sqrt())?;
    Ok((mean, stderr))
}
