//! The adversarial losses: each pairs a discriminator loss on real and fake logits with the
//! generator loss it trains against. All are means over the batch.

use gm_core::tch::Tensor;
use gm_core::Result;
use serde::{Deserialize, Serialize};

/// Which game the two players play.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GanLoss {
    /// Goodfellow et al. 2014, as written: D maximises `ln σ(r) + ln(1 − σ(f))`, G minimises
    /// `ln(1 − σ(f))` (which saturates when D wins early).
    Minimax,
    /// The same D; G maximises `ln σ(f)` instead (strong gradients early in training).
    #[default]
    NonSaturating,
    /// Mao et al. 2017: D regresses real to 1 and fake to 0, G regresses fake to 1
    /// (`½(r − 1)² + ½f²`, `½(f − 1)²`).
    LeastSquares,
    /// Lim & Ye 2017, Miyato et al. 2018: D minimises `relu(1 − r) + relu(1 + f)`, G `−f`.
    Hinge,
    /// Arjovsky et al. 2017: the critic minimises `f − r`, G `−f`; needs a Lipschitz constraint
    /// (a gradient penalty or spectral normalisation).
    Wasserstein,
}

/// The mean in the tensor's own precision.
fn mean(t: Tensor) -> Result<Tensor> {
    Ok(t.f_mean(t.kind())?)
}

impl GanLoss {
    /// The discriminator's loss on real logits `[b]` and fake logits `[b']`.
    pub fn discriminator(&self, real: &Tensor, fake: &Tensor) -> Result<Tensor> {
        let (r, f) = match self {
            GanLoss::Minimax | GanLoss::NonSaturating => {
                // −ln σ(r) = softplus(−r); −ln(1 − σ(f)) = softplus(f).
                (real.f_neg()?.f_softplus()?, fake.f_softplus()?)
            }
            GanLoss::LeastSquares => (
                real.f_sub_scalar(1.0)?.f_square()?.f_mul_scalar(0.5)?,
                fake.f_square()?.f_mul_scalar(0.5)?,
            ),
            GanLoss::Hinge => (
                real.f_neg()?.f_add_scalar(1.0)?.f_relu()?,
                fake.f_add_scalar(1.0)?.f_relu()?,
            ),
            GanLoss::Wasserstein => (real.f_neg()?, fake.shallow_clone()),
        };
        Ok(mean(r)?.f_add(&mean(f)?)?)
    }

    /// The generator's loss on the discriminator's logits for its samples `[b]`.
    pub fn generator(&self, fake: &Tensor) -> Result<Tensor> {
        mean(match self {
            // ln(1 − σ(f)) = −softplus(f)
            GanLoss::Minimax => fake.f_softplus()?.f_neg()?,
            GanLoss::NonSaturating => fake.f_neg()?.f_softplus()?,
            GanLoss::LeastSquares => fake.f_sub_scalar(1.0)?.f_square()?.f_mul_scalar(0.5)?,
            GanLoss::Hinge | GanLoss::Wasserstein => fake.f_neg()?,
        })
    }

    /// The logit above which the discriminator calls an example real: 0.5 for the
    /// least-squares targets (0 and 1), 0 otherwise. Its accuracies are collapse signs.
    pub fn decision_threshold(&self) -> f64 {
        match self {
            GanLoss::LeastSquares => 0.5,
            _ => 0.0,
        }
    }
}
