//! Mixture of diagonal Normals over vectors.

use super::{check_value_shape, extended, Distribution, LN_2PI};
use crate::{GmError, Result};
use tch::{Kind, Tensor};

/// `p(x) = Σ_k π_k N(x; μ_k, diag σ_k²)` over vectors of size `D`.
///
/// Shapes: `mixture_logits` is `batch ++ [K]`, `loc` and `scale` are `batch ++ [K, D]`.
#[derive(Debug)]
pub struct MixtureOfDiagNormals {
    log_weights: Tensor,
    loc: Tensor,
    scale: Tensor,
}

impl MixtureOfDiagNormals {
    pub fn new(mixture_logits: &Tensor, loc: &Tensor, scale: &Tensor) -> Result<Self> {
        let ls = mixture_logits.size();
        let ms = loc.size();
        if ms.len() < 2
            || ls.len() + 1 != ms.len()
            || ls[..] != ms[..ms.len() - 1]
            || scale.size() != ms
        {
            return Err(GmError::shape(
                "MixtureOfDiagNormals::new",
                format!(
                    "logits [..., K] = {ls:?}, loc and scale [..., K, D] of one shape (scale {:?})",
                    scale.size()
                ),
                &ms,
            ));
        }
        Ok(MixtureOfDiagNormals {
            log_weights: mixture_logits.f_log_softmax(-1, None::<Kind>)?,
            loc: loc.shallow_clone(),
            scale: scale.shallow_clone(),
        })
    }

    pub fn num_components(&self) -> i64 {
        self.loc.size()[self.loc.dim() - 2]
    }

    fn dim(&self) -> i64 {
        self.loc.size()[self.loc.dim() - 1]
    }

    /// Per-component log-densities, `sample ++ batch ++ [K]`.
    fn component_log_probs(&self, value: &Tensor) -> Result<Tensor> {
        let x = value.f_unsqueeze(-2)?;
        let z = x.f_sub(&self.loc)?.f_div(&self.scale)?;
        let per_dim = z
            .f_square()?
            .f_mul_scalar(-0.5)?
            .f_sub(&self.scale.f_log()?)?;
        Ok(per_dim
            .f_sum_dim_intlist(-1, false, None::<Kind>)?
            .f_sub_scalar(0.5 * LN_2PI * self.dim() as f64)?)
    }
}

impl Distribution for MixtureOfDiagNormals {
    fn batch_shape(&self) -> Vec<i64> {
        let s = self.log_weights.size();
        s[..s.len() - 1].to_vec()
    }

    fn event_shape(&self) -> Vec<i64> {
        vec![self.dim()]
    }

    fn sample(&self, sample_shape: &[i64]) -> Result<Tensor> {
        tch::no_grad(|| {
            let k = self.num_components();
            let d = self.dim();
            let batch = self.batch_shape();
            let n: i64 = sample_shape.iter().product::<i64>().max(1);
            // Choose a component per draw, then gather its mean and scale.
            let comps = self
                .log_weights
                .f_exp()?
                .f_reshape([-1, k])?
                .f_multinomial(n, true)?
                .f_tr()?; // [n, B]
            let flat_b = comps.size()[1];
            let loc = self
                .loc
                .f_reshape([1, flat_b, k, d])?
                .f_expand([n, flat_b, k, d], false)?;
            let scale = self
                .scale
                .f_reshape([1, flat_b, k, d])?
                .f_expand([n, flat_b, k, d], false)?;
            let idx = comps
                .f_reshape([n, flat_b, 1, 1])?
                .f_expand([n, flat_b, 1, d], false)?;
            let mu = loc.f_gather(2, &idx, false)?.f_squeeze_dim(2)?;
            let sigma = scale.f_gather(2, &idx, false)?.f_squeeze_dim(2)?;
            let eps = mu.f_randn_like()?;
            let x = mu.f_add(&eps.f_mul(&sigma)?)?;
            let mut shape = extended(sample_shape, &batch);
            shape.push(d);
            Ok(x.f_reshape(shape.as_slice())?)
        })
    }

    fn log_prob(&self, value: &Tensor) -> Result<Tensor> {
        check_value_shape(
            "MixtureOfDiagNormals",
            value,
            &self.batch_shape(),
            &[self.dim()],
        )?;
        let lp = self.component_log_probs(value)?.f_add(&self.log_weights)?;
        Ok(lp.f_logsumexp(-1, false)?)
    }

    fn entropy(&self) -> Result<Tensor> {
        Err(GmError::Unsupported(
            "the entropy of a Gaussian mixture has no closed form; estimate it with -log_prob of samples".into(),
        ))
    }

    fn mean(&self) -> Result<Tensor> {
        let w = self.log_weights.f_exp()?.f_unsqueeze(-1)?;
        Ok(w.f_mul(&self.loc)?
            .f_sum_dim_intlist(-2, false, None::<Kind>)?)
    }

    /// Law of total variance: `Σ π (σ² + μ²) - (Σ π μ)²`.
    fn variance(&self) -> Result<Tensor> {
        let w = self.log_weights.f_exp()?.f_unsqueeze(-1)?;
        let second = w.f_mul(&self.scale.f_square()?.f_add(&self.loc.f_square()?)?)?;
        Ok(second
            .f_sum_dim_intlist(-2, false, None::<Kind>)?
            .f_sub(&self.mean()?.f_square()?)?)
    }

    fn name(&self) -> &'static str {
        "MixtureOfDiagNormals"
    }
}
