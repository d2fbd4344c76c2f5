//! Metrics computed the same way for every family.

use gm_core::model::{GenerativeModel, LikelihoodKind};
use gm_core::tch::{Kind, Tensor};
use gm_core::Result;
use serde::Serialize;

/// Test negative log-likelihood, with what it means.
#[derive(Debug, Clone, Serialize)]
pub struct Nll {
    /// Mean over the test set, in nats per example.
    pub nats: f64,
    /// The same in bits per dimension.
    pub bits_per_dim: f64,
    /// `exact` or `upper_bound` (on the NLL).
    pub kind: &'static str,
}

/// The mean test NLL, evaluated in batches so memory stays bounded.
pub fn test_nll(model: &dyn GenerativeModel, x: &Tensor, batch: i64) -> Result<Option<Nll>> {
    let kind = match model.likelihood_kind() {
        LikelihoodKind::Exact => "exact",
        LikelihoodKind::LowerBound => "upper_bound",
        LikelihoodKind::None => return Ok(None),
    };
    let n = x.size()[0];
    let dims: i64 = x.size()[1..].iter().product();
    let mut total = 0.0;
    for chunk in x.split(batch, 0) {
        match model.log_likelihood(&chunk)? {
            Some(ll) => total += ll.f_sum(Kind::Double)?.f_double_value(&[])?,
            None => return Ok(None),
        }
    }
    let nats = -total / n as f64;
    Ok(Some(Nll {
        nats,
        bits_per_dim: gm_core::bounds::bits_per_dim(nats, dims as usize),
        kind,
    }))
}
