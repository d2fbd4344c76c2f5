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
    /// The standard error of that mean over the test examples (it includes a stochastic
    /// estimator's own noise).
    pub stderr: f64,
    /// Each test example's log-likelihood, in nats (for paired comparisons).
    #[serde(skip)]
    pub log_likelihoods: Vec<f64>,
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
    let dims: i64 = x.size()[1..].iter().product();
    let mut log_likelihoods = Vec::with_capacity(x.size()[0] as usize);
    for chunk in x.split(batch, 0) {
        match model.log_likelihood(&chunk)? {
            Some(ll) => log_likelihoods.extend(Vec::<f64>::try_from(&ll.f_to_kind(Kind::Double)?)?),
            None => return Ok(None),
        }
    }
    let (mean, stderr) = mean_and_stderr(&log_likelihoods);
    let nats = -mean;
    Ok(Some(Nll {
        nats,
        stderr,
        log_likelihoods,
        bits_per_dim: gm_core::bounds::bits_per_dim(nats, dims as usize),
        kind,
    }))
}

/// The mean of `values` and its standard error (sample standard deviation / √n; 0 for fewer
/// than two values).
pub fn mean_and_stderr(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    if values.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mean = values.iter().sum::<f64>() / n;
    if values.len() < 2 {
        return (mean, 0.0);
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, (var / n).sqrt())
}

/// The paired estimate of KL(p_data ‖ model) from held-out points drawn from p_data: the mean
/// over points of ln p_data(x) − ln q(x), with its standard error. Pairing the two densities at
/// the same points cancels most of the noise an unpaired "NLL minus a separately estimated
/// entropy" carries. Errors if the lists differ in length or hold fewer than two points.
pub fn paired_kl(data_log_p: &[f64], model_log_p: &[f64]) -> Result<(f64, f64)> {
    if data_log_p.len() != model_log_p.len() || data_log_p.len() < 2 {
        return Err(gm_core::GmError::Domain(format!(
            "paired_kl: need two equally long lists of at least 2 log-densities, got {} and {}",
            data_log_p.len(),
            model_log_p.len()
        )));
    }
    let differences: Vec<f64> = data_log_p
        .iter()
        .zip(model_log_p)
        .map(|(p, q)| p - q)
        .collect();
    Ok(mean_and_stderr(&differences))
}

/// A two-sample metric: how far samples lie from reference data, as one number (lower is
/// better; about 0 when both come from the same law). Each is usable on its own, and
/// [`with_floor`] puts it next to the data's own value.
pub trait Metric {
    /// The metric's name in tables.
    fn name(&self) -> &'static str;
    /// The metric of `samples` `[n, d]` against `reference` `[m, d]`.
    fn score(&self, samples: &Tensor, reference: &Tensor) -> Result<f64>;
}

/// The energy distance 2E|X − Y| − E|X − X'| − E|Y − Y'| (Székely & Rizzo).
pub struct EnergyDistance;

impl Metric for EnergyDistance {
    fn name(&self) -> &'static str {
        "energy distance"
    }
    fn score(&self, samples: &Tensor, reference: &Tensor) -> Result<f64> {
        gm_core::metrics::energy_distance(samples, reference)
    }
}

/// The unbiased squared MMD with a sum of Gaussian kernels of the given bandwidths.
pub struct Mmd {
    pub bandwidths: Vec<f64>,
}

impl Metric for Mmd {
    fn name(&self) -> &'static str {
        "MMD²"
    }
    fn score(&self, samples: &Tensor, reference: &Tensor) -> Result<f64> {
        gm_core::metrics::mmd_rbf(samples, reference, &self.bandwidths)
    }
}

/// The sliced 2-Wasserstein distance over fixed random projections.
pub struct SlicedWasserstein {
    pub projections: usize,
    pub seed: u64,
}

impl Metric for SlicedWasserstein {
    fn name(&self) -> &'static str {
        "sliced 2-Wasserstein"
    }
    fn score(&self, samples: &Tensor, reference: &Tensor) -> Result<f64> {
        gm_core::metrics::sliced_wasserstein(samples, reference, self.projections, self.seed)
    }
}

/// The Fréchet distance between Gaussians fitted to two feature sets (on digits, the bench
/// classifier's features; see [`crate::image_metrics::frechet_distance`]).
pub struct FrechetDistance;

impl Metric for FrechetDistance {
    fn name(&self) -> &'static str {
        "Fréchet distance"
    }
    fn score(&self, samples: &Tensor, reference: &Tensor) -> Result<f64> {
        crate::image_metrics::frechet_distance(samples, reference)
    }
}

/// `metric` of `samples` against `test`, and of `train` against `test` (the floor a perfect
/// model would score with as many points).
pub fn with_floor(
    metric: &dyn Metric,
    samples: &Tensor,
    train: &Tensor,
    test: &Tensor,
) -> Result<(f64, f64)> {
    Ok((metric.score(samples, test)?, metric.score(train, test)?))
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
    use gm_core::metrics::{default_bandwidths, mode_coverage};
    let rows = |t: &Tensor, what: &str| gm_core::model::leading_dim(t, "[n, ...]", what);
    let n = rows(samples, "sample_metrics samples")?
        .min(rows(train, "sample_metrics train")?)
        .min(rows(test, "sample_metrics test")?);
    let (s, tr, te) = (
        samples.f_narrow(0, 0, n)?,
        train.f_narrow(0, 0, n)?,
        test.f_narrow(0, 0, n)?,
    );
    let mmd = Mmd {
        bandwidths: default_bandwidths(1.0),
    };
    let sliced = SlicedWasserstein {
        projections: 128,
        seed: 0,
    };
    let (energy, energy_floor) = with_floor(&EnergyDistance, &s, &tr, &te)?;
    let (mmd, mmd_floor) = with_floor(&mmd, &s, &tr, &te)?;
    let (sliced, sliced_floor) = with_floor(&sliced, &s, &tr, &te)?;
    let coverage = |x: &Tensor| -> Result<Option<gm_core::metrics::ModeCoverage>> {
        modes
            .map(|(centres, std)| mode_coverage(x, centres, *std))
            .transpose()
    };
    let (model_modes, data_modes) = (coverage(&s)?, coverage(&tr)?);
    Ok(SampleMetrics {
        n,
        energy_distance: energy,
        energy_distance_floor: energy_floor,
        mmd,
        mmd_floor,
        sliced_wasserstein: sliced,
        sliced_wasserstein_floor: sliced_floor,
        modes_covered: model_modes.as_ref().map(|m| m.covered),
        modes: model_modes.as_ref().map(|m| m.modes),
        high_quality_share: model_modes.as_ref().map(|m| m.high_quality_share),
        high_quality_share_floor: data_modes.as_ref().map(|m| m.high_quality_share),
    })
}
