//! Flow configurations: the architecture, the data space, the optimizer and schedule.

use crate::layer::ElementTransform;
use gm_core::train::config::in_section;
use gm_core::train::{AdamConfig, Config, EmaConfig, LrSchedule};
use gm_core::{GmError, Result};
use serde::{Deserialize, Serialize};

/// Which flow to build.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Architecture {
    /// Coupling layers with alternating masks and reversals between them: NICE (additive),
    /// RealNVP (affine) or a neural spline flow (spline).
    Coupling {
        layers: usize,
        hidden: Vec<i64>,
        transform: ElementTransform,
        actnorm: bool,
    },
    /// Masked autoregressive layers on MADE with reversals between them: MAF, or IAF with
    /// `inverse = true`; affine or spline transforms.
    Autoregressive {
        layers: usize,
        hidden: Vec<i64>,
        transform: ElementTransform,
        inverse: bool,
        actnorm: bool,
    },
    /// Glow's multi-scale image flow, after a logit pre-processing of the dequantised pixels.
    MultiScale {
        levels: usize,
        steps: usize,
        hidden_channels: i64,
        logit_alpha: f64,
    },
}

impl Architecture {
    /// `(layers, hidden widths, transform)` of the vector architectures (coupling and
    /// autoregressive); `None` for the multi-scale image flow.
    pub fn vector_parts(&self) -> Option<(usize, &[i64], &ElementTransform)> {
        match self {
            Architecture::Coupling {
                layers,
                hidden,
                transform,
                ..
            }
            | Architecture::Autoregressive {
                layers,
                hidden,
                transform,
                ..
            } => Some((*layers, hidden, transform)),
            Architecture::MultiScale { .. } => None,
        }
    }
}

impl Default for Architecture {
    fn default() -> Self {
        Architecture::Coupling {
            layers: 8,
            hidden: vec![128, 128],
            transform: ElementTransform::Affine { scale_bound: 3.0 },
            actnorm: false,
        }
    }
}

/// What the data are, which decides what `log_prob` means.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum DataSpace {
    /// Real-valued vectors: `log_prob` is an exact density.
    #[default]
    Continuous,
    /// Integer values `0..levels` (256 for 8-bit pixels, 2 for binarised ones). Training adds
    /// uniform noise and divides by `levels`; `log_prob` is the dequantisation lower bound on the
    /// discrete log-mass, `E_u[ln p((x + u) / levels)] - D ln levels`, one draw of `u`.
    Discrete { levels: u32 },
}

/// A flow model: architecture, data space, and how it is optimised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlowConfig {
    pub architecture: Architecture,
    pub data: DataSpace,
    /// Number of classes for a conditional flow (one-hot context), 0 for none.
    pub context_classes: i64,
    pub optimizer: AdamConfig,
    pub schedule: LrSchedule,
    /// An exponential moving average of the weights, used for sampling and evaluation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ema: Option<EmaConfig>,
}

impl Default for FlowConfig {
    fn default() -> Self {
        FlowConfig {
            architecture: Architecture::default(),
            data: DataSpace::Continuous,
            context_classes: 0,
            optimizer: AdamConfig {
                lr: 1e-3,
                grad_clip_norm: Some(5.0),
                ..Default::default()
            },
            schedule: LrSchedule::Constant,
            ema: None,
        }
    }
}

impl Config for FlowConfig {
    fn validate(&self) -> Result<()> {
        in_section("optimizer", self.optimizer.validate())?;
        in_section("schedule", self.schedule.validate())?;
        if let Some(ema) = &self.ema {
            in_section("ema", ema.validate())?;
        }
        if self.context_classes < 0 {
            return Err(GmError::config("context_classes", "must not be negative"));
        }
        if let DataSpace::Discrete { levels } = self.data {
            if levels < 2 {
                return Err(GmError::config(
                    "data.levels",
                    format!("need at least 2 levels, got {levels}"),
                ));
            }
        }
        if let Some((layers, hidden, transform)) = self.architecture.vector_parts() {
            if layers == 0 {
                return Err(GmError::config("architecture.layers", "must be at least 1"));
            }
            if hidden.is_empty() || hidden.iter().any(|h| *h < 1) {
                return Err(GmError::config(
                    "architecture.hidden",
                    "need at least one hidden layer of positive width",
                ));
            }
            return in_section("architecture.transform", transform.validate());
        }
        match &self.architecture {
            Architecture::MultiScale {
                levels,
                steps,
                hidden_channels,
                logit_alpha,
            } => {
                if *levels == 0 || *steps == 0 || *hidden_channels < 1 {
                    return Err(GmError::config(
                        "architecture",
                        "levels, steps and hidden_channels must be positive",
                    ));
                }
                if self.context_classes > 0 {
                    return Err(GmError::config(
                        "context_classes",
                        "the multi-scale flow is not conditional",
                    ));
                }
                gm_core::train::config::check_range(
                    "architecture.logit_alpha",
                    *logit_alpha,
                    0.0,
                    0.49,
                )
            }
            // The vector architectures were checked above.
            _ => Ok(()),
        }
    }
}

/// The TOML run files shipped in `configs/`, by file stem (e.g. `"nsf_toy"`); registered as
/// `flow/<stem>` by [`crate::register`].
pub const SHIPPED_CONFIGS: [(&str, &str); 5] = [
    ("realnvp_toy", include_str!("../configs/realnvp_toy.toml")),
    ("maf_toy", include_str!("../configs/maf_toy.toml")),
    ("nsf_toy", include_str!("../configs/nsf_toy.toml")),
    (
        "glow_mnist_grey",
        include_str!("../configs/glow_mnist_grey.toml"),
    ),
    (
        "glow_mnist_binary",
        include_str!("../configs/glow_mnist_binary.toml"),
    ),
];
