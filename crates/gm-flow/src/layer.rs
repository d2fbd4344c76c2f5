//! The layer interface of gm-flow and the element-wise transforms its layers share.
//!
//! Direction (the invariant of this crate): a layer's `forward` maps towards the noise, data →
//! latent, so a density is one forward pass, `ln p(x) = ln p_base(f(x)) + ln |det ∂f/∂x|`, and
//! `inverse` is the sampling direction. Every layer takes an optional context `[batch, C]`;
//! layers that cannot use one reject it.

use crate::spline;
use gm_core::bijectors::{Bijector, ConditionalBijector};
use gm_core::tch::{Kind, Tensor};
use gm_core::{GmError, Result};
use serde::{Deserialize, Serialize};

/// An invertible layer with per-example log-determinant, optionally conditioned on a context.
pub trait FlowLayer {
    /// Data → noise: `(y, ln |det ∂y/∂x|)`.
    fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Result<(Tensor, Tensor)>;
    /// Noise → data: `(x, ln |det ∂x/∂y|)`.
    fn inverse(&self, y: &Tensor, context: Option<&Tensor>) -> Result<(Tensor, Tensor)>;
    /// A short name for messages and reports.
    fn name(&self) -> &'static str;

    /// [`FlowLayer::inverse`]'s output alone, for drawing samples: a layer may skip its
    /// log-determinant and compute the same map with fewer kernels (to rounding, not bit for
    /// bit); the default computes the inverse and drops the log-determinant. Not for
    /// differentiation: a layer may compute it without recording gradients.
    fn inverse_only(&self, y: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        gm_core::tch::no_grad(|| Ok(self.inverse(y, context)?.0))
    }

    /// [`FlowLayer::inverse`]'s output, and, if it holds a NaN or an infinity, where that first
    /// appeared: this layer's name, or for a layer made of layers the inner one's place. A
    /// diagnosis for the error path (it reads the output back to the host), not for sampling.
    fn inverse_located(
        &self,
        y: &Tensor,
        context: Option<&Tensor>,
    ) -> Result<(Tensor, Option<String>)> {
        let (x, _) = self.inverse(y, context)?;
        let place = (!all_finite(&x)?).then(|| self.name().to_string());
        Ok((x, place))
    }
}

/// Whether every entry of `t` is finite (one read back to the host).
pub fn all_finite(t: &Tensor) -> Result<bool> {
    Ok(t.f_isfinite()?.f_all()?.f_int64_value(&[])? != 0)
}

/// `e` with the training step `step` if it is a [`GmError::NonFinite`]; other errors as they are.
pub fn at_step(e: GmError, step: u64) -> GmError {
    match e {
        GmError::NonFinite { what, value, .. } => GmError::NonFinite { what, step, value },
        e => e,
    }
}

/// Refuses draws `x = f⁻¹(z)` of `layers` (in data → noise order) that hold a NaN or an
/// infinity, with [`GmError::NonFinite`] (at `step`) naming how many values and the first layer
/// of the sampling direction whose output is not finite (found by replaying the inverse of
/// `z`, only when `x` is not finite).
pub fn ensure_finite_draws(
    layers: &[Box<dyn FlowLayer>],
    z: &Tensor,
    x: &Tensor,
    context: Option<&Tensor>,
    step: u64,
) -> Result<()> {
    if all_finite(x)? {
        return Ok(());
    }
    let bad = x.f_isfinite()?.f_logical_not()?;
    let count = bad.f_sum(Kind::Int64)?.f_int64_value(&[])?;
    let value = x.f_masked_select(&bad)?.f_double_value(&[0])?;
    let place = if !all_finite(z)? {
        Some("the base draw (latent times temperature)".to_string())
    } else {
        let mut h = z.shallow_clone();
        let mut place = None;
        for layer in layers.iter().rev() {
            let (next, inner) = layer.inverse_located(&h, context)?;
            if inner.is_some() {
                place = inner;
                break;
            }
            h = next;
        }
        place
    };
    Err(GmError::NonFinite {
        what: format!(
            "flow sample ({count} of {} values; first non-finite after {})",
            x.numel(),
            place
                .as_deref()
                .unwrap_or("an unknown layer: the replay was finite")
        ),
        step,
        value,
    })
}

/// Every gm-core bijector is a context-free flow layer.
pub struct BijectorLayer<B>(pub B, pub &'static str);

impl<B: Bijector> FlowLayer for BijectorLayer<B> {
    fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
        reject_context(self.1, context)?;
        self.0.forward(x)
    }
    fn inverse(&self, y: &Tensor, context: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
        reject_context(self.1, context)?;
        self.0.inverse(y)
    }
    fn name(&self) -> &'static str {
        self.1
    }
}

/// Errors when a context is given to a layer that has no use for one.
pub fn reject_context(name: &str, context: Option<&Tensor>) -> Result<()> {
    match context {
        None => Ok(()),
        Some(_) => Err(GmError::Unsupported(format!("{name} takes no context"))),
    }
}

/// Implements gm-core's [`Bijector`] (no context) and [`ConditionalBijector`] for a flow layer,
/// so the layers can be used, and law-checked, as ordinary bijectors.
macro_rules! impl_bijector_for_layer {
    ($t:ty) => {
        impl gm_core::bijectors::Bijector for $t {
            fn forward(
                &self,
                x: &gm_core::tch::Tensor,
            ) -> gm_core::Result<(gm_core::tch::Tensor, gm_core::tch::Tensor)> {
                crate::layer::FlowLayer::forward(self, x, None)
            }
            fn inverse(
                &self,
                y: &gm_core::tch::Tensor,
            ) -> gm_core::Result<(gm_core::tch::Tensor, gm_core::tch::Tensor)> {
                crate::layer::FlowLayer::inverse(self, y, None)
            }
        }
        impl gm_core::bijectors::ConditionalBijector for $t {
            fn forward_with(
                &self,
                x: &gm_core::tch::Tensor,
                context: &gm_core::tch::Tensor,
            ) -> gm_core::Result<(gm_core::tch::Tensor, gm_core::tch::Tensor)> {
                crate::layer::FlowLayer::forward(self, x, Some(context))
            }
            fn inverse_with(
                &self,
                y: &gm_core::tch::Tensor,
                context: &gm_core::tch::Tensor,
            ) -> gm_core::Result<(gm_core::tch::Tensor, gm_core::tch::Tensor)> {
                crate::layer::FlowLayer::inverse(self, y, Some(context))
            }
        }
    };
}
pub(crate) use impl_bijector_for_layer;

// Keep the trait objects nameable from docs.
#[allow(unused)]
fn _assert_object_safe(_: &dyn FlowLayer, _: &dyn ConditionalBijector) {}

/// The element-wise map a coupling or autoregressive layer applies, given its parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ElementTransform {
    /// `y = x + t` (NICE): volume preserving.
    Additive,
    /// `y = x · exp(s) + t` with `s = S · tanh(raw / S)`, a log-scale softly bounded by `S`
    /// (`scale_bound`) so that early training cannot blow up.
    Affine { scale_bound: f64 },
    /// A rational-quadratic spline with `bins` bins on `[-tail_bound, tail_bound]`, identity outside.
    Spline { bins: i64, tail_bound: f64 },
}

impl Default for ElementTransform {
    fn default() -> Self {
        ElementTransform::Affine { scale_bound: 3.0 }
    }
}

impl ElementTransform {
    /// Parameters per transformed dimension.
    pub fn params_per_dim(&self) -> i64 {
        match self {
            ElementTransform::Additive => 1,
            ElementTransform::Affine { .. } => 2,
            ElementTransform::Spline { bins, .. } => spline::params_per_dim(*bins),
        }
    }

    pub fn validate(&self) -> Result<()> {
        match *self {
            ElementTransform::Additive => Ok(()),
            ElementTransform::Affine { scale_bound } => {
                gm_core::train::config::check_positive("scale_bound", scale_bound)
            }
            ElementTransform::Spline { bins, tail_bound } => {
                if bins < 2 {
                    return Err(GmError::config(
                        "bins",
                        format!("a spline needs at least 2 bins, got {bins}"),
                    ));
                }
                gm_core::train::config::check_positive("tail_bound", tail_bound)
            }
        }
    }

    /// Applies the map (or its inverse) to `x` `[B, D]` with `params` `[B, D, P]`; returns the
    /// output and the element-wise log-derivative `[B, D]`.
    pub fn apply(&self, x: &Tensor, params: &Tensor, inverse: bool) -> Result<(Tensor, Tensor)> {
        match *self {
            ElementTransform::Additive => {
                let t = params.f_select(-1, 0)?;
                let y = if inverse { x.f_sub(&t)? } else { x.f_add(&t)? };
                Ok((y, x.f_zeros_like()?))
            }
            ElementTransform::Affine { scale_bound } => {
                let t = params.f_select(-1, 0)?;
                let s = params
                    .f_select(-1, 1)?
                    .f_div_scalar(scale_bound)?
                    .f_tanh()?
                    .f_mul_scalar(scale_bound)?;
                if inverse {
                    Ok((x.f_sub(&t)?.f_mul(&s.f_neg()?.f_exp()?)?, s.f_neg()?))
                } else {
                    Ok((x.f_mul(&s.f_exp()?)?.f_add(&t)?, s))
                }
            }
            ElementTransform::Spline { tail_bound, .. } => {
                spline::rational_quadratic(x, params, tail_bound, inverse)
            }
        }
    }
}
