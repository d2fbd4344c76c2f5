//! Bernoulli and Categorical, both parameterised by logits for numerical stability.

use super::{check_value_shape, extended, sum_rightmost, Distribution, Independent};
use crate::{GmError, Result};
use tch::{Kind, Tensor};

/// Element-wise Bernoulli with `P(x = 1) = sigmoid(logits)`.
#[derive(Debug)]
pub struct Bernoulli {
    logits: Tensor,
}

impl Bernoulli {
    pub fn new(logits: &Tensor) -> Self {
        Bernoulli {
            logits: logits.shallow_clone(),
        }
    }

    pub fn logits(&self) -> &Tensor {
        &self.logits
    }

    pub fn probs(&self) -> Result<Tensor> {
        Ok(self.logits.f_sigmoid()?)
    }

    /// `-ln p(value)` element-wise, the binary cross-entropy with logits: `log_prob` without
    /// its final negation, for callers that sum first and negate the sum (one operation per
    /// example instead of one per element).
    pub fn negative_log_prob(&self, value: &Tensor) -> Result<Tensor> {
        check_value_shape("Bernoulli", value, &self.logits.size(), &[])?;
        let value = value.f_to_kind(self.logits.kind())?;
        let logits = if self.logits.size() == value.size() {
            self.logits.shallow_clone()
        } else {
            self.logits.f_expand_as(&value)?
        };
        Ok(logits.f_binary_cross_entropy_with_logits(
            &value,
            None::<Tensor>,
            None::<Tensor>,
            tch::Reduction::None,
        )?)
    }
}

impl Independent<Bernoulli> {
    /// `-ln p(value)` per event: the element-wise cross-entropies summed over the event
    /// dimensions. Negated, it is `log_prob`, but with one negation per event instead of one
    /// per element (a VAE's Bernoulli likelihood over 784 pixels).
    pub fn negative_log_prob(&self, value: &Tensor) -> Result<Tensor> {
        sum_rightmost(&self.base().negative_log_prob(value)?, self.reinterpreted())
    }
}

impl Distribution for Bernoulli {
    fn batch_shape(&self) -> Vec<i64> {
        self.logits.size()
    }

    fn event_shape(&self) -> Vec<i64> {
        vec![]
    }

    fn sample(&self, sample_shape: &[i64]) -> Result<Tensor> {
        tch::no_grad(|| {
            let shape = extended(sample_shape, &self.logits.size());
            let probs = self.logits.f_sigmoid()?.f_expand(shape.as_slice(), false)?;
            Ok(probs.f_bernoulli()?)
        })
    }

    /// `x * l - softplus(l)`, computed as the negative binary cross-entropy with logits, which
    /// libtorch evaluates stably for any logit.
    fn log_prob(&self, value: &Tensor) -> Result<Tensor> {
        Ok(self.negative_log_prob(value)?.f_neg()?)
    }

    /// `softplus(l) - l * sigmoid(l)`, finite for every finite logit.
    fn entropy(&self) -> Result<Tensor> {
        let sp = self.logits.f_softplus()?;
        Ok(sp.f_sub(&self.logits.f_mul(&self.logits.f_sigmoid()?)?)?)
    }

    fn mean(&self) -> Result<Tensor> {
        self.probs()
    }

    fn variance(&self) -> Result<Tensor> {
        let p = self.probs()?;
        Ok(p.f_mul(&p.f_neg()?.f_add_scalar(1.0)?)?)
    }

    fn name(&self) -> &'static str {
        "Bernoulli"
    }
}

/// Categorical over `K` classes; `logits` has shape `batch ++ [K]`, values are class indices.
#[derive(Debug)]
pub struct Categorical {
    log_probs: Tensor,
}

impl Categorical {
    pub fn new(logits: &Tensor) -> Result<Self> {
        if logits.dim() == 0 || logits.size()[logits.dim() - 1] < 1 {
            return Err(GmError::shape(
                "Categorical::new",
                "[..., K] with K >= 1",
                &logits.size(),
            ));
        }
        Ok(Categorical {
            log_probs: logits.f_log_softmax(-1, None::<Kind>)?,
        })
    }

    /// Normalised log-probabilities, `batch ++ [K]`.
    pub fn log_probs(&self) -> &Tensor {
        &self.log_probs
    }

    pub fn num_classes(&self) -> i64 {
        self.log_probs.size()[self.log_probs.dim() - 1]
    }

    /// Log-probabilities with `-inf` replaced by the most negative finite value, so that
    /// `p * log p` is `0 * finite = 0` for impossible classes rather than NaN.
    pub(crate) fn finite_log_probs(&self) -> Result<Tensor> {
        let min = match self.log_probs.kind() {
            Kind::Double => f64::MIN,
            _ => f32::MIN as f64,
        };
        Ok(self.log_probs.f_clamp_min(min)?)
    }
}

impl Distribution for Categorical {
    fn batch_shape(&self) -> Vec<i64> {
        let s = self.log_probs.size();
        s[..s.len() - 1].to_vec()
    }

    fn event_shape(&self) -> Vec<i64> {
        vec![]
    }

    fn sample(&self, sample_shape: &[i64]) -> Result<Tensor> {
        tch::no_grad(|| {
            let k = self.num_classes();
            let n: i64 = sample_shape.iter().product();
            let batch = self.batch_shape();
            let probs = self.log_probs.f_exp()?.f_reshape([-1, k])?;
            // multinomial gives [batch_flat, n]; move the draws to the front.
            let draws = probs.f_multinomial(n.max(1), true)?.f_tr()?;
            let draws = if n == 0 {
                draws.f_narrow(0, 0, 0)?
            } else {
                draws
            };
            Ok(draws.f_reshape(extended(sample_shape, &batch).as_slice())?)
        })
    }

    fn log_prob(&self, value: &Tensor) -> Result<Tensor> {
        let batch = self.batch_shape();
        check_value_shape("Categorical", value, &batch, &[])?;
        let value = value.f_to_kind(Kind::Int64)?;
        let k = self.num_classes();
        let outside = value.f_lt(0)?.f_logical_or(&value.f_ge(k)?)?;
        if outside.f_any()?.int64_value(&[]) != 0 {
            return Err(GmError::Domain(format!(
                "Categorical.log_prob: class indices must lie in [0, {k})"
            )));
        }
        // Broadcast the indices and the batch against each other before gathering.
        let both = Tensor::f_broadcast_tensors(&[&value, &self.log_probs.f_select(-1, 0)?])?;
        let shape: Vec<i64> = both[0].size().into_iter().chain([k]).collect();
        let lp = self.log_probs.f_expand(shape.as_slice(), false)?;
        let value = &both[0];
        Ok(lp
            .f_gather(-1, &value.f_unsqueeze(-1)?, false)?
            .f_squeeze_dim(-1)?)
    }

    fn entropy(&self) -> Result<Tensor> {
        let lp = self.finite_log_probs()?;
        Ok(lp
            .f_exp()?
            .f_mul(&lp)?
            .f_sum_dim_intlist(-1, false, None::<Kind>)?
            .f_neg()?)
    }

    /// The expected class index (torch returns NaN here; an index mean is at least well defined).
    fn mean(&self) -> Result<Tensor> {
        let k = self.num_classes();
        let idx = Tensor::f_arange(k, (self.log_probs.kind(), self.log_probs.device()))?;
        Ok(self
            .log_probs
            .f_exp()?
            .f_mul(&idx)?
            .f_sum_dim_intlist(-1, false, None::<Kind>)?)
    }

    fn variance(&self) -> Result<Tensor> {
        let k = self.num_classes();
        let idx = Tensor::f_arange(k, (self.log_probs.kind(), self.log_probs.device()))?;
        let p = self.log_probs.f_exp()?;
        let m = p.f_mul(&idx)?.f_sum_dim_intlist(-1, true, None::<Kind>)?;
        let d2 = idx.f_sub(&m)?.f_square()?;
        Ok(p.f_mul(&d2)?.f_sum_dim_intlist(-1, false, None::<Kind>)?)
    }

    fn name(&self) -> &'static str {
        "Categorical"
    }
}
