//! Signs of a failing GAN, read from the training statistics [`crate::Gan`] reports at each
//! logged step (`real_accuracy`, `fake_accuracy`, `generator_loss`, `diversity`).
//!
//! Each rule looks at the median of the last quarter of the logged points, so a short
//! transient does not trigger it:
//! - the discriminator's mean accuracy (real and fake) pinned above 0.99 (it wins outright and
//!   the generator's gradient vanishes) or below 0.01 (it is fooled everywhere);
//! - the generator loss diverging: the last quarter's median exceeds the median of the second
//!   quarter of the run by more than five times that quarter's largest deviation plus 1;
//! - the diversity of the fixed-noise batch falling below half its largest value so far.
//!
//! A Wasserstein critic has no decision threshold and its values drift by an offset, so the
//! model reports neither accuracies nor `generator_loss` for it (it reports `critic_gap` and
//! `generator_objective`): only the diversity rule applies there.

use serde::Serialize;

/// One sign of collapse or failure, with the numbers that show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum CollapseSign {
    /// The discriminator tells real from fake almost perfectly.
    DiscriminatorWins {
        accuracy: f64,
    },
    /// The discriminator calls almost every example the wrong way.
    DiscriminatorFooled {
        accuracy: f64,
    },
    GeneratorLossDiverging {
        earlier: f64,
        last: f64,
    },
    /// Mode collapse: samples of different noise draws became alike.
    DiversityFalling {
        peak: f64,
        last: f64,
    },
}

impl std::fmt::Display for CollapseSign {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CollapseSign::DiscriminatorWins { accuracy } => {
                write!(f, "the discriminator wins (accuracy {accuracy:.3})")
            }
            CollapseSign::DiscriminatorFooled { accuracy } => {
                write!(
                    f,
                    "the discriminator is fooled everywhere (accuracy {accuracy:.3})"
                )
            }
            CollapseSign::GeneratorLossDiverging { earlier, last } => {
                write!(f, "the generator loss diverges ({earlier:.3} → {last:.3})")
            }
            CollapseSign::DiversityFalling { peak, last } => {
                write!(f, "sample diversity fell from {peak:.3} to {last:.3}")
            }
        }
    }
}

fn series(points: &[(u64, Vec<(String, f64)>)], name: &str) -> Vec<f64> {
    points
        .iter()
        .filter_map(|(_, values)| values.iter().find(|(n, _)| n == name).map(|(_, v)| *v))
        .collect()
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    if s.len() % 2 == 0 {
        (s[m - 1] + s[m]) / 2.0
    } else {
        s[m]
    }
}

fn last_quarter(v: &[f64]) -> &[f64] {
    &v[v.len() - (v.len() / 4).max(1)..]
}

/// The signs present in a training history (`(step, [(name, value)])` per logged step, as
/// `gm_core::train::TrainHistory::points` holds it). Needs at least 4 logged points.
pub fn collapse_signs(points: &[(u64, Vec<(String, f64)>)]) -> Vec<CollapseSign> {
    let mut signs = Vec::new();
    let real = series(points, "real_accuracy");
    let fake = series(points, "fake_accuracy");
    if real.len() >= 4 && real.len() == fake.len() {
        let accuracy: Vec<f64> = real.iter().zip(&fake).map(|(r, f)| (r + f) / 2.0).collect();
        let recent = median(last_quarter(&accuracy));
        if recent > 0.99 {
            signs.push(CollapseSign::DiscriminatorWins { accuracy: recent });
        } else if recent < 0.01 {
            signs.push(CollapseSign::DiscriminatorFooled { accuracy: recent });
        }
    }
    let g = series(points, "generator_loss");
    if g.len() >= 4 {
        let q = g.len() / 4;
        let second = &g[q..2 * q];
        let earlier = median(second);
        let spread = second
            .iter()
            .map(|v| (v - earlier).abs())
            .fold(0.0, f64::max);
        let last = median(last_quarter(&g));
        if last > earlier + 5.0 * spread + 1.0 {
            signs.push(CollapseSign::GeneratorLossDiverging { earlier, last });
        }
    }
    let d = series(points, "diversity");
    if d.len() >= 4 {
        let peak = d.iter().copied().fold(f64::MIN, f64::max);
        let last = median(last_quarter(&d));
        if last < 0.5 * peak {
            signs.push(CollapseSign::DiversityFalling { peak, last });
        }
    }
    signs
}
