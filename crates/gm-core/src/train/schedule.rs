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
    /// Linear warm-up from 0 over `warmup_steps`, then cosine decay to `min_ratio` at `total_steps`.
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
                        "need 0 < warmup_steps ({warmup_steps}) <= total_steps ({total_steps})"
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
                let span = (total_steps - warmup_steps).max(1) as f64;
                let t = ((step - warmup_steps) as f64 / span).min(1.0);
                min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
        }
    }

    /// The same schedule for a run of `steps` steps: a cosine decay ends at the new end, and the
    /// warm-up is kept to at most a tenth of the run. Used when a budget shortens a config.
    pub fn with_total_steps(&self, steps: u64) -> LrSchedule {
        match *self {
            LrSchedule::Constant => LrSchedule::Constant,
            LrSchedule::WarmupCosine {
                warmup_steps,
                min_ratio,
                ..
            } => LrSchedule::WarmupCosine {
                warmup_steps: warmup_steps.min(steps / 10).max(1),
                total_steps: steps.max(1),
                min_ratio,
            },
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
        // Half way through the decay the cosine term is exactly one half.
        assert!((s.factor(60) - (0.1 + 0.9 * 0.5)).abs() < 1e-12);
        assert!((s.factor(110) - 0.1).abs() < 1e-12);
        assert!((s.factor(10_000) - 0.1).abs() < 1e-12);
        let mut prev = f64::INFINITY;
        for step in 10..=110 {
            let f = s.factor(step);
            assert!(f <= prev + 1e-15, "cosine decay must not increase");
            prev = f;
        }
        assert_eq!(LrSchedule::Constant.lr(0.5, 123), 0.5);
        let short = s.with_total_steps(50);
        assert_eq!(
            short,
            LrSchedule::WarmupCosine {
                warmup_steps: 5,
                total_steps: 50,
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
