//! What the denoiser predicts, and the exact conversions between the three choices.
//!
//! With x_t = √ᾱ x_0 + √(1 − ᾱ) ε:
//! - ε-prediction: x_0 = (x_t − √(1 − ᾱ) ε) / √ᾱ;
//! - x₀-prediction: ε = (x_t − √ᾱ x_0) / √(1 − ᾱ);
//! - v-prediction (Salimans & Ho 2022): v = √ᾱ ε − √(1 − ᾱ) x_0, so
//!   x_0 = √ᾱ x_t − √(1 − ᾱ) v and ε = √(1 − ᾱ) x_t + √ᾱ v.
//!
//! Every function takes ᾱ per example (`[b]`) and broadcasts it over the example's shape.

use crate::schedule::per_example;
use gm_core::tch::Tensor;
use gm_core::Result;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prediction {
    /// The noise ε (Ho et al. 2020).
    #[default]
    Epsilon,
    /// The clean data x_0.
    X0,
    /// The velocity v = √ᾱ ε − √(1 − ᾱ) x_0.
    V,
}

fn roots(alpha_bar: &Tensor, like: &Tensor) -> Result<(Tensor, Tensor)> {
    Ok((
        per_example(&alpha_bar.f_sqrt()?, like)?,
        per_example(&alpha_bar.f_neg()?.f_add_scalar(1.0)?.f_sqrt()?, like)?,
    ))
}

impl Prediction {
    /// The regression target for data `x0` and noise `eps` at ᾱ.
    pub fn target(self, x0: &Tensor, eps: &Tensor, alpha_bar: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Prediction::Epsilon => eps.shallow_clone(),
            Prediction::X0 => x0.shallow_clone(),
            Prediction::V => {
                let (a, s) = roots(alpha_bar, x0)?;
                eps.f_mul(&a)?.f_sub(&x0.f_mul(&s)?)?
            }
        })
    }

    /// (x̂_0, ε̂) from the prediction `out` at `xt` and ᾱ.
    pub fn to_x0_eps(
        self,
        out: &Tensor,
        xt: &Tensor,
        alpha_bar: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let (a, s) = roots(alpha_bar, xt)?;
        Ok(match self {
            Prediction::Epsilon => (xt.f_sub(&out.f_mul(&s)?)?.f_div(&a)?, out.shallow_clone()),
            Prediction::X0 => (out.shallow_clone(), xt.f_sub(&out.f_mul(&a)?)?.f_div(&s)?),
            Prediction::V => (
                xt.f_mul(&a)?.f_sub(&out.f_mul(&s)?)?,
                xt.f_mul(&s)?.f_add(&out.f_mul(&a)?)?,
            ),
        })
    }

    /// The prediction that yields `x0` at `xt` and ᾱ (the inverse of [`Prediction::to_x0_eps`]'s
    /// first output).
    pub fn from_x0(self, x0: &Tensor, xt: &Tensor, alpha_bar: &Tensor) -> Result<Tensor> {
        let (a, s) = roots(alpha_bar, xt)?;
        Ok(match self {
            Prediction::Epsilon => xt.f_sub(&x0.f_mul(&a)?)?.f_div(&s)?,
            Prediction::X0 => x0.shallow_clone(),
            // v = (√ᾱ x_t − x_0) / √(1 − ᾱ).
            Prediction::V => xt.f_mul(&a)?.f_sub(x0)?.f_div(&s)?,
        })
    }

    /// The prediction that yields `eps` at `xt` and ᾱ.
    pub fn from_eps(self, eps: &Tensor, xt: &Tensor, alpha_bar: &Tensor) -> Result<Tensor> {
        let (a, s) = roots(alpha_bar, xt)?;
        Ok(match self {
            Prediction::Epsilon => eps.shallow_clone(),
            Prediction::X0 => xt.f_sub(&eps.f_mul(&s)?)?.f_div(&a)?,
            // v = (ε − √(1 − ᾱ) x_t) / √ᾱ.
            Prediction::V => eps.f_sub(&xt.f_mul(&s)?)?.f_div(&a)?,
        })
    }
}
