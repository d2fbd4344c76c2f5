//! Probability distributions, named as in `torch.distributions`.
//!
//! Shapes follow torch: a distribution has a *batch shape* (independent, differently
//! parameterised copies) and an *event shape* (the shape of one draw). `sample(s)` returns
//! `s ++ batch ++ event`; `log_prob(x)` takes such a tensor and returns `s ++ batch`, summing
//! over the event dimensions. [`Independent`] moves trailing batch dimensions into the event.

mod discrete;
mod independent;
mod mixture;
mod normal;

pub use discrete::{Bernoulli, Categorical};
pub use independent::Independent;
pub use mixture::MixtureOfDiagNormals;
pub use normal::{Normal, StandardNormal};

use crate::{GmError, Result};
use tch::Tensor;

/// `ln(2π)`.
pub const LN_2PI: f64 = 1.837_877_066_409_345_5;

/// A probability distribution over tensors.
pub trait Distribution {
    /// Shape of independent, differently parameterised copies.
    fn batch_shape(&self) -> Vec<i64>;

    /// Shape of one draw.
    fn event_shape(&self) -> Vec<i64>;

    /// Draws `sample_shape ++ batch ++ event` values, without gradient.
    fn sample(&self, sample_shape: &[i64]) -> Result<Tensor>;

    /// Draws with the reparameterisation trick, so gradients flow to the parameters.
    fn rsample(&self, _sample_shape: &[i64]) -> Result<Tensor> {
        Err(GmError::Unsupported(format!(
            "{} has no reparameterised sampler",
            self.name()
        )))
    }

    /// Log-density (or log-mass) of `value`, summed over the event dimensions.
    fn log_prob(&self, value: &Tensor) -> Result<Tensor>;

    /// Entropy, with shape `batch`.
    fn entropy(&self) -> Result<Tensor>;

    /// Mean, with shape `batch ++ event`.
    fn mean(&self) -> Result<Tensor>;

    /// Variance, with shape `batch ++ event`.
    fn variance(&self) -> Result<Tensor>;

    /// A short name for messages.
    fn name(&self) -> &'static str;
}

/// Checks that `value` ends in `batch ++ event` (allowing broadcast batch dimensions of size 1)
/// and returns the number of leading sample dimensions.
pub(crate) fn check_value_shape(
    name: &str,
    value: &Tensor,
    batch: &[i64],
    event: &[i64],
) -> Result<usize> {
    let shape = value.size();
    let tail: Vec<i64> = batch.iter().chain(event.iter()).copied().collect();
    let expected = || {
        format!(
            "[..., {}]",
            tail.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    if shape.len() < event.len() {
        return Err(GmError::shape(
            format!("{name}.log_prob"),
            expected(),
            &shape,
        ));
    }
    // The event dimensions must match exactly; batch dimensions may broadcast.
    let event_start = shape.len() - event.len();
    if shape[event_start..] != *event {
        return Err(GmError::shape(
            format!("{name}.log_prob"),
            expected(),
            &shape,
        ));
    }
    let value_batch = &shape[..event_start];
    let k = value_batch.len().min(batch.len());
    for (v, b) in value_batch[value_batch.len() - k..]
        .iter()
        .zip(&batch[batch.len() - k..])
    {
        if v != b && *v != 1 && *b != 1 {
            return Err(GmError::shape(
                format!("{name}.log_prob"),
                expected(),
                &shape,
            ));
        }
    }
    Ok(shape.len().saturating_sub(tail.len()))
}

/// `sample_shape ++ shape`.
pub(crate) fn extended(sample_shape: &[i64], shape: &[i64]) -> Vec<i64> {
    sample_shape.iter().chain(shape.iter()).copied().collect()
}

/// Sums the last `n` dimensions (no-op for `n == 0`).
pub(crate) fn sum_rightmost(t: &Tensor, n: usize) -> Result<Tensor> {
    if n == 0 {
        return Ok(t.shallow_clone());
    }
    let dims: Vec<i64> = (1..=n as i64).map(|i| -i).collect();
    Ok(t.f_sum_dim_intlist(dims.as_slice(), false, None::<tch::Kind>)?)
}
