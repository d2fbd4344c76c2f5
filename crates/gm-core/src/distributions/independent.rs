//! Reinterprets trailing batch dimensions as event dimensions.

use super::{sum_rightmost, Distribution};
use crate::{GmError, Result};
use tch::Tensor;

/// Treats the last `reinterpreted` batch dimensions of `base` as event dimensions, so
/// `log_prob` and `entropy` sum over them (a diagonal Gaussian over vectors is
/// `Independent::new(Normal::new(loc, scale)?, 1)`).
#[derive(Debug)]
pub struct Independent<D> {
    base: D,
    reinterpreted: usize,
}

impl<D: Distribution> Independent<D> {
    pub fn new(base: D, reinterpreted: usize) -> Result<Self> {
        let batch = base.batch_shape();
        if reinterpreted > batch.len() {
            return Err(GmError::shape(
                "Independent::new",
                format!("at least {reinterpreted} batch dimensions"),
                &batch,
            ));
        }
        Ok(Independent {
            base,
            reinterpreted,
        })
    }

    pub fn base(&self) -> &D {
        &self.base
    }

    pub fn reinterpreted(&self) -> usize {
        self.reinterpreted
    }
}

impl<D: Distribution> Distribution for Independent<D> {
    fn batch_shape(&self) -> Vec<i64> {
        let b = self.base.batch_shape();
        b[..b.len() - self.reinterpreted].to_vec()
    }

    fn event_shape(&self) -> Vec<i64> {
        let b = self.base.batch_shape();
        b[b.len() - self.reinterpreted..]
            .iter()
            .copied()
            .chain(self.base.event_shape())
            .collect()
    }

    fn sample(&self, sample_shape: &[i64]) -> Result<Tensor> {
        self.base.sample(sample_shape)
    }

    fn rsample(&self, sample_shape: &[i64]) -> Result<Tensor> {
        self.base.rsample(sample_shape)
    }

    fn log_prob(&self, value: &Tensor) -> Result<Tensor> {
        sum_rightmost(&self.base.log_prob(value)?, self.reinterpreted)
    }

    fn entropy(&self) -> Result<Tensor> {
        sum_rightmost(&self.base.entropy()?, self.reinterpreted)
    }

    fn mean(&self) -> Result<Tensor> {
        self.base.mean()
    }

    fn variance(&self) -> Result<Tensor> {
        self.base.variance()
    }

    fn name(&self) -> &'static str {
        "Independent"
    }
}
