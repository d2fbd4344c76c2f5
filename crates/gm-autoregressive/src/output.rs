//! The distribution of one value given the values before it: Bernoulli for binary data, a
//! `levels`-way softmax for discrete data, a mixture of Gaussians for real data. A network
//! returns its parameters `[batch, P, D]` (P per value) and [`Output`] scores and draws them.
//!
//! Drawing follows [`SampleOptions`]: the temperature divides the logits (0 takes the most
//! likely value; for a mixture it divides the weights' logits and scales the components'
//! widths), `top_k` and `top_p` filter each categorical draw ([`filter_logits`]).

use gm_core::data::ValueKind;
use gm_core::model::SampleOptions;
use gm_core::tch::{Kind, Tensor};
use gm_core::{GmError, Result};
use serde::{Deserialize, Serialize};

/// Which conditional distribution each value gets (the `output` key of a config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum OutputConfig {
    /// The data set's natural choice: Bernoulli for 2 levels, a softmax over the levels for
    /// more, a mixture of 5 Gaussians for real values.
    #[default]
    Auto,
    /// One logit per value; binary data only.
    Bernoulli,
    /// `levels` logits per value; discrete data.
    Categorical,
    /// `3 · components` numbers per value (logits, means, log-scales); real data.
    MixtureOfGaussians { components: i64 },
}

/// A built output distribution (see [`OutputConfig`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Bernoulli,
    Categorical { levels: i64 },
    MixtureOfGaussians { components: i64 },
}

/// Log-scales of mixture components are clamped here: wide enough for any standardised data,
/// narrow enough that a collapsing component cannot produce an infinite density.
const LOG_SCALE_RANGE: (f64, f64) = (-7.0, 5.0);

impl OutputConfig {
    /// The output for data with values `values`; refuses a mismatch, naming `output.kind`.
    pub fn build(&self, values: ValueKind) -> Result<Output> {
        let mismatch = |what: &str| {
            GmError::config(
                "output.kind",
                format!("{what} does not describe this data set's values ({values:?})"),
            )
        };
        match (self, values) {
            (OutputConfig::Auto, ValueKind::Discrete { levels: 2 })
            | (OutputConfig::Bernoulli, ValueKind::Discrete { levels: 2 }) => Ok(Output::Bernoulli),
            (OutputConfig::Bernoulli, _) => Err(mismatch("a Bernoulli output (binary values)")),
            (OutputConfig::Auto | OutputConfig::Categorical, ValueKind::Discrete { levels }) => {
                Ok(Output::Categorical {
                    levels: levels as i64,
                })
            }
            (OutputConfig::Categorical, ValueKind::Continuous) => {
                Err(mismatch("a categorical output (discrete values)"))
            }
            (OutputConfig::Auto, ValueKind::Continuous) => {
                Ok(Output::MixtureOfGaussians { components: 5 })
            }
            (OutputConfig::MixtureOfGaussians { components }, ValueKind::Continuous) => {
                if !(1..=64).contains(components) {
                    return Err(GmError::config(
                        "output.components",
                        format!("must be in [1, 64], got {components}"),
                    ));
                }
                Ok(Output::MixtureOfGaussians {
                    components: *components,
                })
            }
            (OutputConfig::MixtureOfGaussians { .. }, ValueKind::Discrete { .. }) => {
                Err(mismatch("a mixture of Gaussians (real values)"))
            }
        }
    }
}

impl Output {
    /// Numbers per value a network must produce.
    pub fn params_per_value(&self) -> i64 {
        match self {
            Output::Bernoulli => 1,
            Output::Categorical { levels } => *levels,
            Output::MixtureOfGaussians { components } => 3 * components,
        }
    }

    /// How a network sees data values: discrete levels mapped onto [-1, 1], real values as
    /// they are. `[batch, D]` float.
    pub fn encode(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Output::Bernoulli => gm_core::data::transforms::levels_to_symmetric(x, 2)?,
            Output::Categorical { levels } => {
                gm_core::data::transforms::levels_to_symmetric(x, *levels as u32)?
            }
            Output::MixtureOfGaussians { .. } => x.f_to_kind(Kind::Float)?,
        })
    }

    /// `ln p(x_d | x_<d)` for every value, `[batch, D]`, from parameters `[batch, P, D]` and data
    /// `[batch, D]` (levels for discrete data).
    pub fn log_prob(&self, params: &Tensor, x: &Tensor) -> Result<Tensor> {
        match self {
            Output::Bernoulli => {
                let logits = params.f_select(1, 0)?;
                let x = x.f_to_kind(logits.kind())?;
                // x ln σ(l) + (1 − x) ln σ(−l) = x·l − softplus(l)
                Ok(x.f_mul(&logits)?.f_sub(&logits.f_softplus()?)?)
            }
            Output::Categorical { .. } => {
                let lp = params.f_log_softmax(1, Kind::Float)?;
                let idx = x.f_to_kind(Kind::Int64)?.f_unsqueeze(1)?;
                Ok(lp.f_gather(1, &idx, false)?.f_squeeze_dim(1)?)
            }
            Output::MixtureOfGaussians { components } => {
                let k = *components;
                let logits = params.f_narrow(1, 0, k)?;
                let means = params.f_narrow(1, k, k)?;
                let log_scales = params
                    .f_narrow(1, 2 * k, k)?
                    .f_clamp(LOG_SCALE_RANGE.0, LOG_SCALE_RANGE.1)?;
                let x = x.f_to_kind(params.kind())?.f_unsqueeze(1)?;
                let z = x.f_sub(&means)?.f_mul(&log_scales.f_neg()?.f_exp()?)?;
                let half_ln_2pi = 0.5 * (2.0 * std::f64::consts::PI).ln();
                let component = z
                    .f_square()?
                    .f_mul_scalar(-0.5)?
                    .f_sub(&log_scales)?
                    .f_sub_scalar(half_ln_2pi)?;
                let weights = logits.f_log_softmax(1, Kind::Float)?;
                Ok(weights.f_add(&component)?.f_logsumexp(&[1i64][..], false)?)
            }
        }
    }

    /// Draws one value per row from parameters `[batch, P]` as `options` say; returns
    /// `[batch]` float values (levels for discrete data).
    pub fn sample(&self, params: &Tensor, options: &SampleOptions) -> Result<Tensor> {
        match self {
            Output::Bernoulli => {
                // The two outcomes' logits are [0, l]: the categorical filters apply as to any.
                let logits = params.f_select(1, 0)?;
                let two = Tensor::f_stack(&[logits.f_zeros_like()?, logits], 1)?;
                Ok(draw_categorical(&two, options)?.f_to_kind(Kind::Float)?)
            }
            Output::Categorical { .. } => {
                Ok(draw_categorical(params, options)?.f_to_kind(Kind::Float)?)
            }
            Output::MixtureOfGaussians { components } => {
                let k = *components;
                let which =
                    draw_categorical(&params.f_narrow(1, 0, k)?, options)?.f_unsqueeze(1)?;
                let mean = params.f_narrow(1, k, k)?.f_gather(1, &which, false)?;
                let log_scale = params
                    .f_narrow(1, 2 * k, k)?
                    .f_clamp(LOG_SCALE_RANGE.0, LOG_SCALE_RANGE.1)?
                    .f_gather(1, &which, false)?;
                let noise = mean.f_randn_like()?.f_mul_scalar(options.temperature)?;
                Ok(mean
                    .f_add(&noise.f_mul(&log_scale.f_exp()?)?)?
                    .f_squeeze_dim(1)?)
            }
        }
    }

    /// `ln p(v)` for every level `v` of one value's conditional, `[n, levels]`, from its
    /// parameters `[n, P]` (what beam search extends hypotheses with). Discrete outputs only.
    pub fn log_probs_of_levels(&self, params: &Tensor) -> Result<Tensor> {
        match self {
            Output::Bernoulli => {
                // ln σ(−l), ln σ(l): the log-softmax of the logits [0, l].
                let logits = params.f_select(1, 0)?;
                Ok(Tensor::f_stack(&[logits.f_zeros_like()?, logits], 1)?
                    .f_log_softmax(1, Kind::Float)?)
            }
            Output::Categorical { .. } => Ok(params.f_log_softmax(1, Kind::Float)?),
            Output::MixtureOfGaussians { .. } => Err(GmError::Domain(
                "a mixture-of-Gaussians output has a density over real values, not a probability per level"
                    .into(),
            )),
        }
    }

    /// The NLL per value of the model that gives every level the same probability, `ln levels`
    /// (what an untrained discrete model should score); `None` for real data.
    pub fn uniform_nll_per_value(&self) -> Option<f64> {
        match self {
            Output::Bernoulli => Some(2f64.ln()),
            Output::Categorical { levels } => Some((*levels as f64).ln()),
            Output::MixtureOfGaussians { .. } => None,
        }
    }
}

/// Logits `[.., K]` (last dimension) with temperature, top-k and top-p applied: divided by the
/// temperature, and every value outside the `top_k` most likely (exactly k, ties broken
/// arbitrarily), or outside the smallest set of most likely values whose probabilities reach
/// `top_p`, set to −∞. At least the most likely value always remains. A temperature of 0 is handled by [`draw_categorical`] (the argmax).
pub fn filter_logits(
    logits: &Tensor,
    temperature: f64,
    top_k: Option<i64>,
    top_p: Option<f64>,
) -> Result<Tensor> {
    let mut logits = logits.f_to_kind(Kind::Float)?;
    if temperature > 0.0 && temperature != 1.0 {
        logits = logits.f_div_scalar(temperature)?;
    }
    let k_all = *logits.size().last().unwrap_or(&1);
    if let Some(k) = top_k.filter(|k| *k < k_all) {
        // Exactly k survive, ties broken by topk's choice.
        let (_, top) = logits.f_topk(k, -1, true, true)?;
        let keep = logits
            .f_zeros_like()?
            .f_to_kind(Kind::Bool)?
            .f_scatter_value(-1, &top, 1.0)?;
        logits = logits.f_masked_fill(&keep.f_logical_not()?, f64::NEG_INFINITY)?;
    }
    if let Some(p) = top_p.filter(|p| *p < 1.0) {
        let (sorted, indices) = logits.f_sort(-1, true)?;
        let probs = sorted.f_softmax(-1, Kind::Float)?;
        // A value is kept while the mass before it is still below p.
        let before = probs.f_cumsum(-1, Kind::Float)?.f_sub(&probs)?;
        let drop_sorted = before.f_ge(p)?;
        let drop = drop_sorted
            .f_zeros_like()?
            .f_scatter(-1, &indices, &drop_sorted)?;
        logits = logits.f_masked_fill(&drop, f64::NEG_INFINITY)?;
    }
    Ok(logits)
}

/// One draw per row of categorical logits `[batch, K]` → `[batch]` int64, as `options` say
/// (temperature 0: the most likely value).
pub fn draw_categorical(logits: &Tensor, options: &SampleOptions) -> Result<Tensor> {
    if options.temperature == 0.0 {
        return Ok(logits.f_argmax(-1, false)?);
    }
    let filtered = filter_logits(logits, options.temperature, options.top_k, options.top_p)?;
    let probs = filtered.f_softmax(-1, Kind::Float)?;
    Ok(probs.f_multinomial(1, true)?.f_squeeze_dim(-1)?)
}
