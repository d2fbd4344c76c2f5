//! Regularisers of the discriminator that need gradients with respect to its input: the
//! WGAN-GP gradient penalty (Gulrajani et al. 2017) and R1 (Mescheder et al. 2018). Both
//! differentiate through the input gradient (double back-propagation).

use gm_core::model::leading_dim;
use gm_core::tch::Tensor;
use gm_core::train::config::{check_positive, Config};
use gm_core::{GmError, Result};
use serde::{Deserialize, Serialize};

/// The discriminator regulariser of a GAN.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum RegularizerConfig {
    #[default]
    None,
    /// `weight · E[(‖∇D(x̂)‖ − 1)²]` at random interpolates `x̂` of real and fake examples.
    GradientPenalty { weight: f64 },
    /// `weight / 2 · E[‖∇D(x)‖²]` on real data.
    R1 { weight: f64 },
}

impl Config for RegularizerConfig {
    fn validate(&self) -> Result<()> {
        match self {
            RegularizerConfig::None => Ok(()),
            RegularizerConfig::GradientPenalty { weight } | RegularizerConfig::R1 { weight } => {
                check_positive("weight", *weight)
            }
        }
    }
}

/// Per-example squared gradient norms `[b]` of `critic`'s summed output at `points`, kept in
/// the graph (so a loss built on them trains the critic).
fn input_gradient_norms_squared(
    critic: &dyn Fn(&Tensor) -> Result<Tensor>,
    points: &Tensor,
) -> Result<Tensor> {
    leading_dim(points, "[batch, ...]", "penalty points")?;
    let points = points.f_detach()?.f_set_requires_grad(true)?;
    let out = critic(&points)?;
    let grads = Tensor::f_run_backward(&[out.f_sum(out.kind())?], &[&points], true, true)?;
    let g = grads.into_iter().next().ok_or_else(|| {
        GmError::Domain("the critic's output does not depend on its input".into())
    })?;
    let b = leading_dim(&g, "[batch, ...]", "penalty gradient")?;
    Ok(g.f_reshape([b, -1])?
        .f_square()?
        .f_sum_dim_intlist(1, false, g.kind())?)
}

/// `E[(‖∇D(x̂)‖ − 1)²]` at the given points `x̂` `[b, ...]`.
pub fn gradient_penalty_at(
    critic: &dyn Fn(&Tensor) -> Result<Tensor>,
    points: &Tensor,
) -> Result<Tensor> {
    let norms = input_gradient_norms_squared(critic, points)?
        .f_add_scalar(1e-12)?
        .f_sqrt()?;
    Ok(norms.f_sub_scalar(1.0)?.f_square()?.f_mean(norms.kind())?)
}

/// Random interpolates `α·real + (1 − α)·fake`, `α ~ U(0, 1)` per example.
pub fn interpolates(real: &Tensor, fake: &Tensor) -> Result<Tensor> {
    if real.size() != fake.size() {
        return Err(GmError::shape(
            "interpolates fake",
            format!("{:?} like real", real.size()),
            &fake.size(),
        ));
    }
    let size = real.size();
    let mut alpha_shape = vec![leading_dim(real, "[batch, ...]", "interpolates real")?];
    alpha_shape.extend(std::iter::repeat_n(1, size.len() - 1));
    let alpha = Tensor::f_rand(alpha_shape.as_slice(), (real.kind(), real.device()))?;
    Ok(fake.f_detach()?.f_lerp_tensor(&real.f_detach()?, &alpha)?)
}

/// The WGAN-GP penalty `E[(‖∇D(x̂)‖ − 1)²]` at random interpolates of `real` and `fake`.
pub fn gradient_penalty(
    critic: &dyn Fn(&Tensor) -> Result<Tensor>,
    real: &Tensor,
    fake: &Tensor,
) -> Result<Tensor> {
    gradient_penalty_at(critic, &interpolates(real, fake)?)
}

/// The R1 penalty `E[‖∇D(x)‖²]` on real data (without the `weight / 2` factor).
pub fn r1_penalty(critic: &dyn Fn(&Tensor) -> Result<Tensor>, real: &Tensor) -> Result<Tensor> {
    let norms = input_gradient_norms_squared(critic, real)?;
    Ok(norms.f_mean(norms.kind())?)
}
