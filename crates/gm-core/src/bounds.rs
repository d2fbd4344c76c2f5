//! Variational bounds and units.
//!
//! All quantities are per example, in nats. With `log_w = ln p(x, z) - ln q(z | x)` for
//! `z ~ q(z | x)`, the ELBO is `E[log_w]` and the IWAE bound with `K` samples is
//! `E[ln (1/K) Σ_k exp(log_w_k)]`; for every `K`, `ELBO ≤ IWAE_K ≤ IWAE_{K+1} ≤ ln p(x)`.

use crate::{GmError, Result};
use tch::{Kind, Tensor};

/// `ln((1/n) Σ exp(x_i))` along `dim`, computed with log-sum-exp.
pub fn log_mean_exp(x: &Tensor, dim: i64) -> Result<Tensor> {
    let size = x.size();
    let d = if dim < 0 {
        dim + size.len() as i64
    } else {
        dim
    };
    if d < 0 || d as usize >= size.len() {
        return Err(GmError::shape(
            "log_mean_exp",
            format!("a tensor with dimension {dim}"),
            &size,
        ));
    }
    let n = size[d as usize];
    if n == 0 {
        return Err(GmError::shape(
            "log_mean_exp",
            "a non-empty dimension",
            &size,
        ));
    }
    Ok(x.f_logsumexp(d, false)?.f_sub_scalar((n as f64).ln())?)
}

/// The ELBO with an analytic KL: `E_q[ln p(x | z)] - KL(q(z | x) ‖ p(z))`.
pub fn elbo(expected_log_likelihood: &Tensor, kl: &Tensor) -> Result<Tensor> {
    Ok(expected_log_likelihood.f_sub(kl)?)
}

/// The ELBO estimated from log-weights `[K, batch]`: their mean over the samples.
pub fn elbo_from_log_weights(log_weights: &Tensor) -> Result<Tensor> {
    check_log_weights(log_weights)?;
    Ok(log_weights.f_mean_dim(0, false, None::<Kind>)?)
}

/// The IWAE bound from log-weights `[K, batch]`: `ln (1/K) Σ_k exp(log_w_k)`.
pub fn iwae_bound(log_weights: &Tensor) -> Result<Tensor> {
    check_log_weights(log_weights)?;
    log_mean_exp(log_weights, 0)
}

fn check_log_weights(log_weights: &Tensor) -> Result<()> {
    if log_weights.dim() != 2 || log_weights.size()[0] == 0 {
        return Err(GmError::shape(
            "importance log-weights",
            "[K, batch] with K >= 1",
            &log_weights.size(),
        ));
    }
    Ok(())
}

/// Converts nats per example into bits per dimension: `nats / (D ln 2)`.
pub fn bits_per_dim(nats_per_example: f64, dims: usize) -> f64 {
    nats_per_example / (dims as f64 * std::f64::consts::LN_2)
}

/// Negative log-likelihood of discrete data (`levels` values per dimension) from a density fitted
/// to the data rescaled to `[0, 1]` after uniform dequantisation.
///
/// If `y = (x + u) / levels`, the density of `y` relates to the discrete mass by
/// `ln P(x) ≥ E_u[ln p(y)] - D ln(levels)` (Theis et al., 2016), so the value returned, in nats,
/// is an upper bound on the discrete NLL.
pub fn dequantized_nll_nats(
    log_density_scaled: &Tensor,
    dims: usize,
    levels: u32,
) -> Result<Tensor> {
    Ok(log_density_scaled
        .f_neg()?
        .f_add_scalar(dims as f64 * (levels as f64).ln())?)
}
