//! Monotonic rational-quadratic splines with linear tails (Durkan et al., 2019).
//!
//! On `[-B, B]` the map is a piecewise rational-quadratic through `K + 1` knots; outside it is
//! the identity. The boundary derivatives are fixed to 1 so the spline joins the identity tails
//! smoothly. Each dimension gets `3K - 1` unconstrained parameters: `K` widths, `K` heights and
//! `K - 1` interior derivatives.

use gm_core::tch::{Kind, Tensor};
use gm_core::{GmError, Result};

/// Smallest bin width and height, as a fraction of the interval, and smallest derivative:
/// they keep the spline strictly monotonic and its inverse well conditioned.
pub const MIN_BIN: f64 = 1e-3;
pub const MIN_DERIVATIVE: f64 = 1e-3;

/// The number of unconstrained parameters per dimension for `bins` bins.
pub fn params_per_dim(bins: i64) -> i64 {
    3 * bins - 1
}

/// Applies the spline element-wise. `x` has shape `[..., D]`; `params` has `[..., D, 3K - 1]`.
/// Returns `(y, ln |dy/dx|)` element-wise (same shape as `x`); `inverse` evaluates the inverse map
/// and its log-derivative.
pub fn rational_quadratic(
    x: &Tensor,
    params: &Tensor,
    tail_bound: f64,
    inverse: bool,
) -> Result<(Tensor, Tensor)> {
    let p = params.size();
    let xs = x.size();
    if p.len() != xs.len() + 1 || p[..xs.len()] != xs[..] || (p[xs.len()] + 1) % 3 != 0 {
        return Err(GmError::shape(
            "rational_quadratic params",
            format!("{xs:?} ++ [3K - 1]"),
            &p,
        ));
    }
    // The inverse solves a quadratic whose coefficients cancel badly in float32 inside steep
    // bins (errors of 1e-4 in x and 0.1 in the log-derivative); solve it in float64 and round
    // the results once. Gradients flow through the casts.
    if inverse && (x.kind() == Kind::Float || params.kind() == Kind::Float) {
        let (y, log_det) = rational_quadratic(
            &x.f_to_kind(Kind::Double)?,
            &params.f_to_kind(Kind::Double)?,
            tail_bound,
            inverse,
        )?;
        return Ok((y.f_to_kind(x.kind())?, log_det.f_to_kind(x.kind())?));
    }
    let k = (p[xs.len()] + 1) / 3;
    let raw_w = params.f_narrow(-1, 0, k)?;
    let raw_h = params.f_narrow(-1, k, k)?;
    let raw_d = params.f_narrow(-1, 2 * k, k - 1)?;

    let (knots_x, widths) = knots(&raw_w, tail_bound)?;
    let (knots_y, heights) = knots(&raw_h, tail_bound)?;
    // Interior derivatives are positive; the two boundary ones are 1 (identity tails). The shift
    // makes a raw value of 0 give a derivative of exactly 1, so zero parameters are the identity.
    let shift = ((1.0 - MIN_DERIVATIVE).exp() - 1.0).ln();
    let interior = raw_d
        .f_add_scalar(shift)?
        .f_softplus()?
        .f_add_scalar(MIN_DERIVATIVE)?;
    let mut pad_shape = interior.size();
    *pad_shape.last_mut().expect("non-empty") = 1;
    let one = Tensor::f_ones(pad_shape.as_slice(), (interior.kind(), interior.device()))?;
    let derivs = Tensor::f_cat(&[&one, &interior, &one], -1)?;

    let inside = x.f_ge(-tail_bound)?.f_logical_and(&x.f_le(tail_bound)?)?;
    // Clamp so the arithmetic below is finite everywhere; outside points are replaced afterwards.
    let xc = x.f_clamp(-tail_bound, tail_bound)?;
    let search = if inverse { &knots_y } else { &knots_x };
    let interior_knots = search.f_narrow(-1, 1, k - 1)?;
    let bin = xc
        .f_unsqueeze(-1)?
        .f_ge_tensor(&interior_knots)?
        .f_sum_dim_intlist(-1, true, Kind::Int64)?;
    let pick =
        |t: &Tensor| -> Result<Tensor> { Ok(t.f_gather(-1, &bin, false)?.f_squeeze_dim(-1)?) };
    let x_k = pick(&knots_x)?;
    let w_k = pick(&widths)?;
    let y_k = pick(&knots_y)?;
    let h_k = pick(&heights)?;
    let d_k = pick(&derivs)?;
    let d_k1 = derivs
        .f_gather(-1, &bin.f_add_scalar(1)?, false)?
        .f_squeeze_dim(-1)?;
    let s_k = h_k.f_div(&w_k)?;
    let d_sum = d_k1.f_add(&d_k)?.f_sub(&s_k.f_mul_scalar(2.0)?)?;

    let (out, theta) = if !inverse {
        let theta = xc.f_sub(&x_k)?.f_div(&w_k)?;
        let t1mt = theta.f_mul(&theta.f_neg()?.f_add_scalar(1.0)?)?;
        let num = h_k.f_mul(&s_k.f_mul(&theta.f_square()?)?.f_add(&d_k.f_mul(&t1mt)?)?)?;
        let den = s_k.f_add(&d_sum.f_mul(&t1mt)?)?;
        (y_k.f_add(&num.f_div(&den)?)?, theta)
    } else {
        let dy = xc.f_sub(&y_k)?;
        let a = h_k.f_mul(&s_k.f_sub(&d_k)?)?.f_add(&dy.f_mul(&d_sum)?)?;
        let b = h_k.f_mul(&d_k)?.f_sub(&dy.f_mul(&d_sum)?)?;
        let c = s_k.f_neg()?.f_mul(&dy)?;
        let disc = b
            .f_square()?
            .f_sub(&a.f_mul(&c)?.f_mul_scalar(4.0)?)?
            .f_clamp_min(0.0)?;
        // The root in [0, 1], in the form that avoids cancellation.
        let theta = c
            .f_mul_scalar(2.0)?
            .f_div(&b.f_neg()?.f_sub(&disc.f_sqrt()?)?)?;
        (theta.f_mul(&w_k)?.f_add(&x_k)?, theta)
    };
    // ln dy/dx = 2 ln s + ln(d_{k+1} θ² + 2 s θ(1-θ) + d_k (1-θ)²) - 2 ln(den).
    let one_m = theta.f_neg()?.f_add_scalar(1.0)?;
    let t1mt = theta.f_mul(&one_m)?;
    let den = s_k.f_add(&d_sum.f_mul(&t1mt)?)?;
    let num = d_k1
        .f_mul(&theta.f_square()?)?
        .f_add(&s_k.f_mul(&t1mt)?.f_mul_scalar(2.0)?)?
        .f_add(&d_k.f_mul(&one_m.f_square()?)?)?;
    let log_deriv = s_k
        .f_log()?
        .f_mul_scalar(2.0)?
        .f_add(&num.f_log()?)?
        .f_sub(&den.f_log()?.f_mul_scalar(2.0)?)?;
    let log_det = if inverse {
        log_deriv.f_neg()?
    } else {
        log_deriv
    };
    let y = out.f_where_self(&inside, x)?;
    let log_det = log_det.f_where_self(&inside, &log_det.f_zeros_like()?)?;
    Ok((y, log_det))
}

/// Knot positions `[..., K + 1]` on `[-B, B]` and bin sizes `[..., K]` from raw bin parameters.
fn knots(raw: &Tensor, bound: f64) -> Result<(Tensor, Tensor)> {
    let k = raw.size()[raw.dim() - 1];
    let frac = raw
        .f_softmax(-1, raw.kind())?
        .f_mul_scalar(1.0 - MIN_BIN * k as f64)?
        .f_add_scalar(MIN_BIN)?;
    let cum = frac.f_cumsum(-1, raw.kind())?;
    let mut pad_shape = cum.size();
    *pad_shape.last_mut().expect("non-empty") = 1;
    let zero = Tensor::f_zeros(pad_shape.as_slice(), (cum.kind(), cum.device()))?;
    let cum = Tensor::f_cat(&[&zero, &cum], -1)?
        .f_mul_scalar(2.0 * bound)?
        .f_sub_scalar(bound)?;
    // Pin the ends exactly, so rounding in the cumulative sum cannot leave a gap at ±B.
    let inner = cum.f_narrow(-1, 1, k - 1)?;
    let lo = zero.f_full_like(-bound)?;
    let hi = zero.f_full_like(bound)?;
    let knots = Tensor::f_cat(&[&lo, &inner, &hi], -1)?;
    let sizes = knots
        .f_narrow(-1, 1, k)?
        .f_sub(&knots.f_narrow(-1, 0, k)?)?;
    Ok((knots, sizes))
}
