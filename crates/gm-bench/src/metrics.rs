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

/// Sample-based metrics on a vector data set: the model's samples against held-out data, and
/// the same statistics for training data against the same held-out data (the noise floor: a
/// perfect model scores about that).
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct SampleMetrics {
    /// Samples (and held-out rows) compared.
    pub n: i64,
    pub energy_distance: f64,
    pub energy_distance_floor: f64,
    /// Unbiased MMD² with the Gaussian kernels of [`gm_core::metrics::default_bandwidths`]`(1)`.
    pub mmd: f64,
    pub mmd_floor: f64,
    /// Sliced 2-Wasserstein over 128 fixed projections.
    pub sliced_wasserstein: f64,
    pub sliced_wasserstein_floor: f64,
    /// For mixtures with known modes: modes covered, of how many, and the share of samples
    /// within 3σ of a mode (data's own share as the floor).
    pub modes_covered: Option<usize>,
    pub modes: Option<usize>,
    pub high_quality_share: Option<f64>,
    pub high_quality_share_floor: Option<f64>,
}

/// [`SampleMetrics`] of `samples` against the first rows of `test`, with `train`'s as the floor.
/// `modes`: the centres and common standard deviation of a mixture's modes, if it has them.
pub fn sample_metrics(
    samples: &Tensor,
    train: &Tensor,
    test: &Tensor,
    modes: Option<&(Tensor, f64)>,
) -> Result<SampleMetrics> {
    use gm_core::metrics::{
        default_bandwidths, energy_distance, mmd_rbf, mode_coverage, sliced_wasserstein,
    };
    let rows = |t: &Tensor, what: &str| gm_core::model::leading_dim(t, "[n, ...]", what);
    let n = rows(samples, "sample_metrics samples")?
        .min(rows(train, "sample_metrics train")?)
        .min(rows(test, "sample_metrics test")?);
    let (s, tr, te) = (
        samples.f_narrow(0, 0, n)?,
        train.f_narrow(0, 0, n)?,
        test.f_narrow(0, 0, n)?,
    );
    let bandwidths = default_bandwidths(1.0);
    let coverage = |x: &Tensor| -> Result<Option<gm_core::metrics::ModeCoverage>> {
        modes
            .map(|(centres, std)| mode_coverage(x, centres, *std))
            .transpose()
    };
    let (model_modes, data_modes) = (coverage(&s)?, coverage(&tr)?);
    Ok(SampleMetrics {
        n,
        energy_distance: energy_distance(&s, &te)?,
        energy_distance_floor: energy_distance(&tr, &te)?,
        mmd: mmd_rbf(&s, &te, &bandwidths)?,
        mmd_floor: mmd_rbf(&tr, &te, &bandwidths)?,
        sliced_wasserstein: sliced_wasserstein(&s, &te, 128, 0)?,
        sliced_wasserstein_floor: sliced_wasserstein(&tr, &te, 128, 0)?,
        modes_covered: model_modes.as_ref().map(|m| m.covered),
        modes: model_modes.as_ref().map(|m| m.modes),
        high_quality_share: model_modes.as_ref().map(|m| m.high_quality_share),
        high_quality_share_floor: data_modes.as_ref().map(|m| m.high_quality_share),
    })
}
