//! Learning-rate schedules.

use super::config::Config;
use crate::{GmError, Result};
use serde::{Deserialize, Serialize};

/// A learning-rate multiplier as a function of the step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum LrSchedule {
    #[default]
    Constant,
    /// Linear warm-up from 0 over `warmup_steps`, then cosine decay that reaches `min_ratio` on
    /// the last step of the run, step `total_steps - 1` (0-based), and stays there. (A warm-up
    /// that fills the whole run leaves no room to decay: it ends at the peak rate.)
    WarmupCosine {
        warmup_steps: u64,
        total_steps: u64,
        min_ratio: f64,
    },
}

impl Config for LrSchedule {
    fn validate(&self) -> Result<()> {
        if let LrSchedule::WarmupCosine {
            warmup_steps,
            total_steps,
            min_ratio,
        } = self
        {
            if *total_steps == 0 || warmup_steps > total_steps {
                return Err(GmError::config(
                    "total_steps",
                    format!(
                        "need total_steps > 0 and warmup_steps ({warmup_steps}) <= total_steps ({total_steps})"
                    ),
                ));
            }
            super::config::check_range("min_ratio", *min_ratio, 0.0, 1.0)?;
        }
        Ok(())
    }
}

impl LrSchedule {
    /// The multiplier at `step` (0-based).
    pub fn factor(&self, step: u64) -> f64 {
        match *self {
            LrSchedule::Constant => 1.0,
            LrSchedule::WarmupCosine {
                warmup_steps,
                total_steps,
                min_ratio,
            } => {
                if step < warmup_steps {
                    return (step + 1) as f64 / warmup_steps as f64;
                }
                // The decay spans steps warmup_steps ..= total_steps - 1, so the last update of a
                // run of total_steps steps is made at exactly min_ratio.
                let span = total_steps.saturating_sub(warmup_steps + 1).max(1) as f64;
                let t = ((step - warmup_steps) as f64 / span).min(1.0);
                min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
        }
    }

    /// The same schedule for another step budget: every length in steps is scaled by the
    /// budget's ratio, so the warm-up keeps its share of the run and the decay ends on the run's
    /// last step.
    pub fn scaled(&self, budget: &crate::spec::Budget) -> LrSchedule {
        match *self {
            LrSchedule::Constant => LrSchedule::Constant,
            LrSchedule::WarmupCosine {
                warmup_steps,
                total_steps,
                min_ratio,
            } => {
                let total = budget.scale(total_steps).max(1);
                LrSchedule::WarmupCosine {
                    warmup_steps: budget.scale(warmup_steps).min(total),
                    total_steps: total,
                    min_ratio,
                }
            }
        }
    }

    /// `base_lr · factor(step)`.
    pub fn lr(&self, base_lr: f64, step: u64) -> f64 {
        base_lr * self.factor(step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_cosine_closed_form() {
        let s = LrSchedule::WarmupCosine {
            warmup_steps: 10,
            total_steps: 110,
            min_ratio: 0.1,
        };
        assert!((s.factor(0) - 0.1).abs() < 1e-12);
        assert!((s.factor(9) - 1.0).abs() < 1e-12);
        assert!((s.factor(10) - 1.0).abs() < 1e-12);
        // The decay spans steps 10..=109: half way (step 59.5) the cosine term is one half, and
        // the last step of the run (109) is at the minimum.
        let mid = 0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * 49.0 / 99.0).cos());
        assert!((s.factor(59) - mid).abs() < 1e-12);
        assert!((s.factor(109) - 0.1).abs() < 1e-12);
        assert!(s.factor(108) > 0.1);
        assert!((s.factor(110) - 0.1).abs() < 1e-12);
        assert!((s.factor(10_000) - 0.1).abs() < 1e-12);
        let mut prev = f64::INFINITY;
        for step in 10..=111 {
            let f = s.factor(step);
            assert!(f <= prev + 1e-15, "cosine decay must not increase");
            prev = f;
        }
        assert_eq!(LrSchedule::Constant.lr(0.5, 123), 0.5);
        // A quarter of the budget: every length scales by a quarter.
        let short = s.scaled(&crate::spec::Budget::new(400, 100).unwrap());
        assert_eq!(
            short,
            LrSchedule::WarmupCosine {
                warmup_steps: 3,
                total_steps: 28,
                min_ratio: 0.1
            }
        );
        assert!(short.validate().is_ok());
    }

    #[test]
    fn bad_schedule_names_key() {
        let s = LrSchedule::WarmupCosine {
            warmup_steps: 10,
            total_steps: 5,
            min_ratio: 0.0,
        };
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("total_steps"));
    }
}
