//! Decoder likelihoods `p(x | z)`: what a decoder's raw outputs mean.
//!
//! - [`LikelihoodConfig::Bernoulli`]: binary data `{0, 1}` (one logit per element).
//! - [`LikelihoodConfig::Gaussian`]: continuous data, with a fixed, learned (shared or per
//!   element) or predicted standard deviation.
//! - [`LikelihoodConfig::DiscretizedLogistic`]: 8-bit (or any `bins`-level) integer data, a
//!   logistic density integrated over each bin (Salimans et al., 2017).
//! - [`LikelihoodConfig::Categorical`]: the same integer data as a `classes`-way softmax.
//!
//! The integer likelihoods take data as integer values `0..levels` in any kind; their
//! encoders see the values rescaled to `[-1, 1]`.

use gm_core::distributions::{Bernoulli, Categorical, Distribution, Independent, Normal};
use gm_core::tch::{nn, Kind, Tensor};
use gm_core::train::config::{check_positive, Config};
use gm_core::{GmError, Result};
use serde::{Deserialize, Serialize};

/// How the standard deviation of a Gaussian likelihood is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum GaussianVariance {
    /// Always `std`.
    Fixed,
    /// One learned value for every element, starting at `std` (the pPCA noise model).
    #[default]
    Shared,
    /// One learned value per data element, independent of `z`, starting at `std`.
    PerElement,
    /// Predicted by the decoder for every element: `min_std + softplus(output)`.
    Predicted,
}

fn default_std() -> f64 {
    1.0
}
fn default_min_std() -> f64 {
    1e-3
}
fn default_levels() -> i64 {
    256
}
fn default_min_log_scale() -> f64 {
    -7.0
}

/// The likelihood a decoder outputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum LikelihoodConfig {
    #[default]
    Bernoulli,
    Gaussian {
        #[serde(default)]
        variance: GaussianVariance,
        /// The fixed standard deviation, or the initial one of a learned one.
        #[serde(default = "default_std")]
        std: f64,
        /// Floor of a predicted standard deviation.
        #[serde(default = "default_min_std")]
        min_std: f64,
    },
    DiscretizedLogistic {
        #[serde(default = "default_levels")]
        bins: i64,
        /// Floor of the logistic's log-scale, which keeps a bin's mass from collapsing onto
        /// one value in float precision.
        #[serde(default = "default_min_log_scale")]
        min_log_scale: f64,
    },
    Categorical {
        #[serde(default = "default_levels")]
        classes: i64,
    },
}

impl Config for LikelihoodConfig {
    fn validate(&self) -> Result<()> {
        match self {
            LikelihoodConfig::Bernoulli => Ok(()),
            LikelihoodConfig::Gaussian { std, min_std, .. } => {
                check_positive("std", *std)?;
                check_positive("min_std", *min_std)
            }
            LikelihoodConfig::DiscretizedLogistic {
                bins,
                min_log_scale,
            } => {
                if *bins < 2 {
                    return Err(GmError::config(
                        "bins",
                        format!("a discretized logistic needs at least 2 bins, got {bins}"),
                    ));
                }
                if !min_log_scale.is_finite() {
                    return Err(GmError::config("min_log_scale", "must be finite"));
                }
                Ok(())
            }
            LikelihoodConfig::Categorical { classes } => {
                if *classes < 2 {
                    return Err(GmError::config(
                        "classes",
                        format!("a categorical likelihood needs at least 2 classes, got {classes}"),
                    ));
                }
                Ok(())
            }
        }
    }
}

impl LikelihoodConfig {
    /// Decoder outputs needed per data element.
    pub fn params_per_element(&self) -> i64 {
        match self {
            LikelihoodConfig::Bernoulli => 1,
            LikelihoodConfig::Gaussian { variance, .. } => match variance {
                GaussianVariance::Predicted => 2,
                _ => 1,
            },
            LikelihoodConfig::DiscretizedLogistic { .. } => 2,
            LikelihoodConfig::Categorical { classes } => *classes,
        }
    }

    /// The data space this likelihood describes: binary values for a Bernoulli, integers
    /// `0..levels` for the discrete ones, real values for a Gaussian.
    pub fn value_kind(&self) -> gm_core::data::ValueKind {
        use gm_core::data::ValueKind;
        match self {
            LikelihoodConfig::Bernoulli => ValueKind::Discrete { levels: 2 },
            LikelihoodConfig::Gaussian { .. } => ValueKind::Continuous,
            other => ValueKind::Discrete {
                levels: other.levels().unwrap_or(2).clamp(2, u32::MAX as i64) as u32,
            },
        }
    }

    /// The number of integer levels of the data, for the integer likelihoods.
    pub fn levels(&self) -> Option<i64> {
        match self {
            LikelihoodConfig::DiscretizedLogistic { bins, .. } => Some(*bins),
            LikelihoodConfig::Categorical { classes } => Some(*classes),
            _ => None,
        }
    }

    /// Creates the learned standard deviation (if any) under `path`.
    pub fn init(&self, path: &nn::Path, data_shape: &[i64]) -> Result<LikelihoodHead> {
        self.validate()?;
        let log_std = match self {
            LikelihoodConfig::Gaussian { variance, std, .. } => {
                let shape: Vec<i64> = match variance {
                    GaussianVariance::Shared => vec![1],
                    GaussianVariance::PerElement => data_shape.to_vec(),
                    _ => vec![],
                };
                if shape.is_empty() {
                    None
                } else {
                    Some(path.f_var("log_std", &shape, nn::Init::Const(std.ln()))?)
                }
            }
            _ => None,
        };
        Ok(LikelihoodHead {
            config: self.clone(),
            log_std,
            event_dims: data_shape.len(),
        })
    }
}

/// Turns decoder outputs into a [`Likelihood`]; owns a learned standard deviation if any.
#[derive(Debug)]
pub struct LikelihoodHead {
    config: LikelihoodConfig,
    log_std: Option<Tensor>,
    event_dims: usize,
}

impl LikelihoodHead {
    pub fn config(&self) -> &LikelihoodConfig {
        &self.config
    }

    pub fn params_per_element(&self) -> i64 {
        self.config.params_per_element()
    }

    /// The learned log standard deviation of a Gaussian likelihood (`Shared` or `PerElement`).
    pub fn log_std(&self) -> Option<&Tensor> {
        self.log_std.as_ref()
    }

    /// The likelihood from decoder outputs `[...batch] ++ data_shape ++ [params]`.
    pub fn distribution(&self, params: &Tensor) -> Result<Likelihood> {
        // With one output per element the last dimension is dropped as a view: `select`'s
        // gradient would zero-fill and copy a tensor of the data's size on every step.
        let one_param = params.size().last() == Some(&1);
        let first = || {
            if one_param {
                params.f_squeeze_dim(-1)
            } else {
                params.f_select(-1, 0)
            }
        };
        let dims = self.event_dims;
        Ok(match &self.config {
            LikelihoodConfig::Bernoulli => {
                Likelihood::Bernoulli(Independent::new(Bernoulli::new(&first()?), dims)?)
            }
            LikelihoodConfig::Gaussian {
                variance,
                std,
                min_std,
                ..
            } => {
                let loc = first()?;
                let scale = match (variance, &self.log_std) {
                    (GaussianVariance::Fixed, _) => loc.f_full_like(*std)?,
                    (GaussianVariance::Predicted, _) => params
                        .f_select(-1, 1)?
                        .f_softplus()?
                        .f_add_scalar(*min_std)?,
                    (_, Some(log_std)) => log_std.f_exp()?,
                    (_, None) => unreachable!("a learned standard deviation is created by init"),
                };
                Likelihood::Gaussian(Independent::new(Normal::new(&loc, &scale)?, dims)?)
            }
            LikelihoodConfig::DiscretizedLogistic {
                bins,
                min_log_scale,
            } => {
                let log_scale = params.f_select(-1, 1)?.f_clamp_min(*min_log_scale)?;
                Likelihood::DiscretizedLogistic(Independent::new(
                    DiscretizedLogistic::new(&first()?, &log_scale, *bins)?,
                    dims,
                )?)
            }
            LikelihoodConfig::Categorical { .. } => {
                Likelihood::Categorical(Independent::new(Categorical::new(params)?, dims)?)
            }
        })
    }

    /// What the encoder sees of data `x`: floats, with integer levels rescaled to `[-1, 1]`.
    pub fn network_input(&self, x: &Tensor, kind: Kind) -> Result<Tensor> {
        let x = x.f_to_kind(kind)?;
        match self.config.levels() {
            Some(levels) => Ok(x
                .f_mul_scalar(2.0 / (levels - 1) as f64)?
                .f_sub_scalar(1.0)?),
            None => Ok(x),
        }
    }

    /// Checks that every value of `x` lies in the likelihood's support (one host synchronisation).
    pub fn check_support(&self, x: &Tensor) -> Result<()> {
        let event = x.size().get(1..).map(|s| s.to_vec()).unwrap_or_default();
        let what = format!("data for a {} likelihood", self.name());
        gm_core::model::check_data(x, &event, self.config.value_kind(), &what).map(|_| ())
    }

    fn name(&self) -> &'static str {
        match self.config {
            LikelihoodConfig::Bernoulli => "Bernoulli",
            LikelihoodConfig::Gaussian { .. } => "Gaussian",
            LikelihoodConfig::DiscretizedLogistic { .. } => "discretized logistic",
            LikelihoodConfig::Categorical { .. } => "categorical",
        }
    }
}

/// `p(x | z)` over one whole data example (its event shape is the data shape).
#[derive(Debug)]
pub enum Likelihood {
    Bernoulli(Independent<Bernoulli>),
    Gaussian(Independent<Normal>),
    DiscretizedLogistic(Independent<DiscretizedLogistic>),
    Categorical(Independent<Categorical>),
}

impl Likelihood {
    fn inner(&self) -> &dyn Distribution {
        match self {
            Likelihood::Bernoulli(d) => d,
            Likelihood::Gaussian(d) => d,
            Likelihood::DiscretizedLogistic(d) => d,
            Likelihood::Categorical(d) => d,
        }
    }
}

impl Distribution for Likelihood {
    fn batch_shape(&self) -> Vec<i64> {
        self.inner().batch_shape()
    }
    fn event_shape(&self) -> Vec<i64> {
        self.inner().event_shape()
    }
    fn sample(&self, sample_shape: &[i64]) -> Result<Tensor> {
        self.inner().sample(sample_shape)
    }
    fn rsample(&self, sample_shape: &[i64]) -> Result<Tensor> {
        self.inner().rsample(sample_shape)
    }
    fn log_prob(&self, value: &Tensor) -> Result<Tensor> {
        match self {
            // Summed before the sign is flipped: one negation per example, not per element.
            Likelihood::Bernoulli(d) => Ok(d.negative_log_prob(value)?.f_neg()?),
            other => other.inner().log_prob(value),
        }
    }
    fn entropy(&self) -> Result<Tensor> {
        self.inner().entropy()
    }
    fn mean(&self) -> Result<Tensor> {
        self.inner().mean()
    }
    fn variance(&self) -> Result<Tensor> {
        self.inner().variance()
    }
    fn name(&self) -> &'static str {
        self.inner().name()
    }
}

/// A logistic density with location `loc` and scale `exp(log_scale)`, on data rescaled from
/// integer levels `0..bins` to `[-1, 1]`, integrated over each level's bin; the two end bins
/// take the tails, so the masses of the `bins` levels sum to one exactly.
///
/// Element-wise: batch shape is `loc`'s, event shape `[]`; values are level indices.
#[derive(Debug)]
pub struct DiscretizedLogistic {
    loc: Tensor,
    log_scale: Tensor,
    bins: i64,
}

impl DiscretizedLogistic {
    pub fn new(loc: &Tensor, log_scale: &Tensor, bins: i64) -> Result<Self> {
        if bins < 2 {
            return Err(GmError::config(
                "bins",
                format!("a discretized logistic needs at least 2 bins, got {bins}"),
            ));
        }
        if loc.size() != log_scale.size() {
            return Err(GmError::shape(
                "DiscretizedLogistic::new log_scale",
                format!("{:?} like loc", loc.size()),
                &log_scale.size(),
            ));
        }
        Ok(DiscretizedLogistic {
            loc: loc.shallow_clone(),
            log_scale: log_scale.shallow_clone(),
            bins,
        })
    }

    pub fn loc(&self) -> &Tensor {
        &self.loc
    }

    pub fn log_scale(&self) -> &Tensor {
        &self.log_scale
    }

    pub fn bins(&self) -> i64 {
        self.bins
    }

    /// Log-masses of every level, `batch ++ [bins]`.
    pub fn log_probs_all(&self) -> Result<Tensor> {
        let levels = Tensor::f_arange(self.bins, (self.loc.kind(), self.loc.device()))?;
        let mut shape = vec![1i64; self.loc.dim()];
        shape.push(self.bins);
        let levels = levels.f_reshape(shape.as_slice())?;
        self.log_mass(
            &levels,
            &self.loc.f_unsqueeze(-1)?,
            &self.log_scale.f_unsqueeze(-1)?,
        )
    }

    /// `ln P(level)` for levels broadcast against `loc` and `log_scale`.
    fn log_mass(&self, level: &Tensor, loc: &Tensor, log_scale: &Tensor) -> Result<Tensor> {
        let half_width = 1.0 / (self.bins - 1) as f64;
        let centre = level.f_mul_scalar(2.0 * half_width)?.f_sub_scalar(1.0)?;
        let inv_scale = log_scale.f_neg()?.f_exp()?;
        let offset = centre.f_sub(loc)?;
        let upper = offset.f_add_scalar(half_width)?.f_mul(&inv_scale)?;
        let lower = offset.f_sub_scalar(half_width)?.f_mul(&inv_scale)?;
        // First bin: ln σ(upper). Last bin: ln(1 - σ(lower)) = -softplus(lower).
        let first_bin = upper.f_neg()?.f_softplus()?.f_neg()?;
        let last_bin = lower.f_softplus()?.f_neg()?;
        let interior = log_sigmoid_difference(&upper, &lower)?;
        let is_first = level.f_le(0.0)?;
        let is_last = level.f_ge((self.bins - 1) as f64)?;
        let edge = first_bin.f_where_self(&is_first, &last_bin)?;
        Ok(edge.f_where_self(&is_first.f_logical_or(&is_last)?, &interior)?)
    }
}

/// `ln(σ(a) - σ(b))` for `a > b`, accurate in both tails.
///
/// By symmetry `σ(a) - σ(b) = σ(-b) - σ(-a)`; the pair is flipped so that it lies in the left
/// half, where `ln σ(t) = -softplus(-t)` keeps full precision. Then
/// `ln(σ(a) - σ(b)) = ln σ(a) + ln(1 - exp(-d))` with `d = ln σ(a) - ln σ(b) ≥ 0`, and
/// `ln(1 - exp(-d))` is evaluated by the usual two-branch `log1mexp`.
fn log_sigmoid_difference(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let flip = a.f_add(b)?.f_gt(0.0)?;
    let hi = b.f_neg()?.f_where_self(&flip, a)?;
    let lo = a.f_neg()?.f_where_self(&flip, b)?;
    let log_sig_hi = hi.f_neg()?.f_softplus()?.f_neg()?;
    let log_sig_lo = lo.f_neg()?.f_softplus()?.f_neg()?;
    let d = log_sig_hi.f_sub(&log_sig_lo)?.f_clamp_min(0.0)?;
    let small = d.f_lt(std::f64::consts::LN_2)?;
    let via_expm1 = d.f_neg()?.f_expm1()?.f_neg()?.f_log()?;
    let via_log1p = d.f_neg()?.f_exp()?.f_neg()?.f_log1p()?;
    Ok(log_sig_hi.f_add(&via_expm1.f_where_self(&small, &via_log1p)?)?)
}

/// True when `value`'s shape broadcasts against `target` with `target` unchanged.
fn broadcasts_onto(value: &[i64], target: &[i64]) -> bool {
    if value.len() < target.len() {
        return false;
    }
    let tail = &value[value.len() - target.len()..];
    tail.iter()
        .zip(target)
        .all(|(v, t)| v == t || *t == 1 || *v == 1)
}

impl Distribution for DiscretizedLogistic {
    fn batch_shape(&self) -> Vec<i64> {
        self.loc.size()
    }

    fn event_shape(&self) -> Vec<i64> {
        vec![]
    }

    /// Draws a logistic variate and rounds it to its bin, which is exactly the discretized law.
    fn sample(&self, sample_shape: &[i64]) -> Result<Tensor> {
        gm_core::tch::no_grad(|| {
            let shape: Vec<i64> = sample_shape
                .iter()
                .copied()
                .chain(self.loc.size())
                .collect();
            let u = Tensor::f_rand(shape.as_slice(), (self.loc.kind(), self.loc.device()))?
                .f_clamp(1e-6, 1.0 - 1e-6)?;
            let logistic = u.f_log()?.f_sub(&u.f_neg()?.f_log1p()?)?;
            let y = self.loc.f_add(&logistic.f_mul(&self.log_scale.f_exp()?)?)?;
            let level = y
                .f_add_scalar(1.0)?
                .f_mul_scalar((self.bins - 1) as f64 / 2.0)?
                .f_round()?
                .f_clamp(0.0, (self.bins - 1) as f64)?;
            Ok(level)
        })
    }

    fn log_prob(&self, value: &Tensor) -> Result<Tensor> {
        if !broadcasts_onto(&value.size(), &self.loc.size()) {
            return Err(GmError::shape(
                "DiscretizedLogistic.log_prob",
                format!("[..., {:?}]", self.loc.size()),
                &value.size(),
            ));
        }
        let value = value.f_to_kind(self.loc.kind())?;
        self.log_mass(&value, &self.loc, &self.log_scale)
    }

    fn entropy(&self) -> Result<Tensor> {
        let lp = self.log_probs_all()?;
        Ok(lp
            .f_exp()?
            .f_mul(&lp)?
            .f_sum_dim_intlist(-1, false, None::<Kind>)?
            .f_neg()?)
    }

    /// The expected level, summed exactly over the bins.
    fn mean(&self) -> Result<Tensor> {
        let p = self.log_probs_all()?.f_exp()?;
        let levels = Tensor::f_arange(self.bins, (self.loc.kind(), self.loc.device()))?;
        Ok(p.f_mul(&levels)?
            .f_sum_dim_intlist(-1, false, None::<Kind>)?)
    }

    fn variance(&self) -> Result<Tensor> {
        let p = self.log_probs_all()?.f_exp()?;
        let levels = Tensor::f_arange(self.bins, (self.loc.kind(), self.loc.device()))?;
        let mean = p
            .f_mul(&levels)?
            .f_sum_dim_intlist(-1, true, None::<Kind>)?;
        Ok(p.f_mul(&levels.f_sub(&mean)?.f_square()?)?
            .f_sum_dim_intlist(-1, false, None::<Kind>)?)
    }

    fn name(&self) -> &'static str {
        "DiscretizedLogistic"
    }
}
