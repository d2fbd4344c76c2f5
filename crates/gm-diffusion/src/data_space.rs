//! The map between a data set's values and the unit-scale space the models of this crate work
//! in: discrete values `0..levels` onto [-1, 1] (exactly, or dequantised into each level's cell),
//! continuous values divided by a scale; and the log-Jacobian a density pays for it.

use gm_core::data::transforms::{
    dequantize_to_symmetric, dequantized_symmetric_log_jacobian, levels_to_symmetric,
    symmetric_to_levels,
};
use gm_core::data::ValueKind;
use gm_core::tch::{Kind, Tensor};
use gm_core::Result;

#[derive(Debug, Clone, Copy)]
pub struct DataSpace {
    pub values: ValueKind,
    /// Values per example.
    pub elements: i64,
    /// What continuous values are divided by.
    pub scale: f64,
}

impl DataSpace {
    /// Data values in the model's space: discrete levels exactly on [-1, 1].
    pub fn to_model(&self, x: &Tensor) -> Result<Tensor> {
        match self.values {
            ValueKind::Discrete { levels } => levels_to_symmetric(x, levels),
            ValueKind::Continuous => Ok(x.f_to_kind(Kind::Float)?.f_div_scalar(self.scale)?),
        }
    }

    /// Data values in the model's space as a density sees them: discrete levels dequantised
    /// uniformly within their cells (fresh noise each call), continuous values as
    /// [`DataSpace::to_model`].
    pub fn to_model_dequantized(&self, x: &Tensor) -> Result<Tensor> {
        match self.values {
            ValueKind::Discrete { levels } => dequantize_to_symmetric(x, levels),
            ValueKind::Continuous => self.to_model(x),
        }
    }

    /// Model-space values in the data space (discrete values rounded to levels).
    pub fn to_data(&self, y: &Tensor) -> Result<Tensor> {
        match self.values {
            ValueKind::Discrete { levels } => symmetric_to_levels(y, levels),
            ValueKind::Continuous => Ok(y.f_mul_scalar(self.scale)?),
        }
    }

    /// ln |det| per example of [`DataSpace::to_model`] for a density on continuous data; 0 for
    /// discrete data, whose probabilities the map does not change.
    pub fn log_jacobian(&self) -> f64 {
        match self.values {
            ValueKind::Discrete { .. } => 0.0,
            ValueKind::Continuous => -(self.elements as f64) * self.scale.ln(),
        }
    }

    /// ln |det| per example of [`DataSpace::to_model_dequantized`]: a density q on the model's
    /// space gives ln p(x) = ln q(y) + this (exactly for continuous data, and in expectation over
    /// the dequantisation a lower bound on ln P(levels) for discrete data).
    pub fn dequantized_log_jacobian(&self) -> f64 {
        let d = self.elements as f64;
        match self.values {
            ValueKind::Discrete { levels } => d * dequantized_symmetric_log_jacobian(levels),
            ValueKind::Continuous => -d * self.scale.ln(),
        }
    }
}
