//! The decoder of the last reverse step: p(x_0 | x_1) as a Gaussian integrated over each
//! discrete value's bin (Ho et al. 2020), or a Gaussian density for continuous data.

use gm_core::tch::Tensor;
use gm_core::Result;

/// `ln(Φ(b) − Φ(a))` for `a < b`, computed without cancellation: in the upper tail the
/// mirrored difference `Φ(−a) − Φ(−b)` is used, and the difference as
/// `ln Φ(hi) + ln(1 − exp(ln Φ(lo) − ln Φ(hi)))`. Exact where a naive difference underflows.
pub fn log_normal_interval(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let upper_tail = a.f_add(b)?.f_gt(0.0)?;
    // Mirrored bounds where the interval sits in the upper tail.
    let lo = a.f_where_self(&upper_tail.f_logical_not()?, &b.f_neg()?)?;
    let hi = b.f_where_self(&upper_tail.f_logical_not()?, &a.f_neg()?)?;
    let (log_lo, log_hi) = (lo.f_special_log_ndtr()?, hi.f_special_log_ndtr()?);
    // ln(1 − e^d) for d ≤ 0, through expm1 or log1p as the size of d asks.
    let d = log_lo.f_sub(&log_hi)?;
    let log1m_exp = d.f_expm1()?.f_neg()?.f_log()?.f_where_self(
        &d.f_gt(-std::f64::consts::LN_2)?,
        &d.f_exp()?.f_neg()?.f_log1p()?,
    )?;
    Ok(log_hi.f_add(&log1m_exp)?)
}

/// The log-probability of each value of `x` (data mapped to [-1, 1], `levels` evenly spaced
/// values) under a Normal(`mean`, exp(`log_variance`)) integrated over the value's bin, whose
/// half-width is 1 / (levels − 1); the outermost bins extend to ±∞, so the probabilities of all
/// levels sum to 1. Elementwise, in the inputs' dtype.
pub fn discretized_gaussian_log_prob(
    x: &Tensor,
    mean: &Tensor,
    log_variance: &Tensor,
    levels: i64,
) -> Result<Tensor> {
    let half_width = 1.0 / (levels - 1).max(1) as f64;
    let inv_std = log_variance.f_mul_scalar(-0.5)?.f_exp()?;
    let centred = x.f_sub(mean)?;
    let lower = centred.f_sub_scalar(half_width)?.f_mul(&inv_std)?;
    let upper = centred.f_add_scalar(half_width)?.f_mul(&inv_std)?;
    let inner = log_normal_interval(&lower, &upper)?;
    // The bottom bin takes everything below its upper edge, the top bin everything above its
    // lower edge; the tolerance only has to separate levels 2/(levels − 1) apart.
    let bottom = x.f_lt(-1.0 + half_width)?;
    let top = x.f_gt(1.0 - half_width)?;
    let below = upper.f_special_log_ndtr()?;
    let above = lower.f_neg()?.f_special_log_ndtr()?;
    Ok(below.f_where_self(&bottom, &above.f_where_self(&top, &inner)?)?)
}

/// The log-density of `x` under Normal(`mean`, exp(`log_variance`)), elementwise.
pub fn gaussian_log_density(x: &Tensor, mean: &Tensor, log_variance: &Tensor) -> Result<Tensor> {
    let z2 = x
        .f_sub(mean)?
        .f_square()?
        .f_mul(&log_variance.f_neg()?.f_exp()?)?;
    Ok(z2
        .f_add(log_variance)?
        .f_add_scalar((2.0 * std::f64::consts::PI).ln())?
        .f_mul_scalar(-0.5)?)
}

/// KL(N(m1, e^{lv1}) ‖ N(m2, e^{lv2})) elementwise, from log-variances (finite for any finite
/// inputs, unlike a form through scales that may underflow).
pub fn normal_kl(m1: &Tensor, lv1: &Tensor, m2: &Tensor, lv2: &Tensor) -> Result<Tensor> {
    // ½ (lv2 − lv1 + e^{lv1 − lv2} + (m1 − m2)² e^{−lv2} − 1)
    Ok(lv2
        .f_sub(lv1)?
        .f_add(&lv1.f_sub(lv2)?.f_exp()?)?
        .f_add(&m1.f_sub(m2)?.f_square()?.f_mul(&lv2.f_neg()?.f_exp()?)?)?
        .f_sub_scalar(1.0)?
        .f_mul_scalar(0.5)?)
}
