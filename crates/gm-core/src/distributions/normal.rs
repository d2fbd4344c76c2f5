//! Normal distributions.

use super::{check_value_shape, extended, Distribution, LN_2PI};
use crate::{GmError, Result};
use tch::{Device, Kind, Tensor};

/// Element-wise (diagonal) Normal with `loc` and `scale` of one (broadcast) shape; every element
/// is a batch entry. Wrap in [`super::Independent`] to treat trailing dimensions as one event.
#[derive(Debug)]
pub struct Normal {
    loc: Tensor,
    scale: Tensor,
    /// `ln scale`, kept when the distribution was built from it (see [`Normal::log_scale`]).
    log_scale: Option<Tensor>,
}

impl Normal {
    /// `loc` and `scale` are broadcast together; `scale` must be positive.
    pub fn new(loc: &Tensor, scale: &Tensor) -> Result<Self> {
        let (loc, scale) = broadcast_pair(loc, scale, "scale")?;
        Ok(Normal {
            loc,
            scale,
            log_scale: None,
        })
    }

    /// Parameterised by the log of the scale, which is always valid; the usual output of a network.
    pub fn from_log_scale(loc: &Tensor, log_scale: &Tensor) -> Result<Self> {
        let (loc, log_scale) = broadcast_pair(loc, log_scale, "log_scale")?;
        Ok(Normal {
            loc,
            scale: log_scale.f_exp()?,
            log_scale: Some(log_scale),
        })
    }

    /// `ln scale`: the tensor the distribution was built from by [`Normal::from_log_scale`]
    /// (exact, and no operation), otherwise the logarithm of the scale.
    pub fn log_scale(&self) -> Result<Tensor> {
        match &self.log_scale {
            Some(log_scale) => Ok(log_scale.shallow_clone()),
            None => Ok(self.scale.f_log()?),
        }
    }

    /// Checks that every scale is positive and finite (one host synchronisation).
    pub fn validate(&self) -> Result<()> {
        let bad = self
            .scale
            .f_le(0.0)?
            .f_logical_or(&self.scale.f_isfinite()?.f_logical_not()?)?;
        if bad.f_any()?.int64_value(&[]) != 0 {
            return Err(GmError::Domain(
                "Normal: every scale must be positive and finite".into(),
            ));
        }
        Ok(())
    }

    pub fn loc(&self) -> &Tensor {
        &self.loc
    }

    pub fn scale(&self) -> &Tensor {
        &self.scale
    }
}

/// `loc` and a second parameter broadcast to one shape. Tensors of one shape already are, and
/// are taken as they are (no view, so no node for autograd to walk).
fn broadcast_pair(loc: &Tensor, other: &Tensor, name: &str) -> Result<(Tensor, Tensor)> {
    if loc.size() == other.size() {
        return Ok((loc.shallow_clone(), other.shallow_clone()));
    }
    let both = Tensor::f_broadcast_tensors(&[loc, other]).map_err(|_| {
        GmError::shape(
            "Normal::new",
            format!("{name} broadcastable to loc {:?}", loc.size()),
            &other.size(),
        )
    })?;
    let mut it = both.into_iter();
    let loc = it.next().expect("two tensors in, two out");
    let other = it.next().expect("two tensors in, two out");
    Ok((loc, other))
}

impl Distribution for Normal {
    fn batch_shape(&self) -> Vec<i64> {
        self.loc.size()
    }

    fn event_shape(&self) -> Vec<i64> {
        vec![]
    }

    fn sample(&self, sample_shape: &[i64]) -> Result<Tensor> {
        tch::no_grad(|| self.rsample(sample_shape))
    }

    fn rsample(&self, sample_shape: &[i64]) -> Result<Tensor> {
        let shape = extended(sample_shape, &self.loc.size());
        let eps = Tensor::f_randn(shape.as_slice(), (self.loc.kind(), self.loc.device()))?;
        // loc + eps · scale in one operation (one node for autograd instead of two).
        Ok(self.loc.f_addcmul(&eps, &self.scale)?)
    }

    fn log_prob(&self, value: &Tensor) -> Result<Tensor> {
        check_value_shape("Normal", value, &self.loc.size(), &[])?;
        let z = value.f_sub(&self.loc)?.f_div(&self.scale)?;
        let quad = z.f_square()?.f_mul_scalar(-0.5)?;
        Ok(quad.f_sub(&self.log_scale()?)?.f_sub_scalar(0.5 * LN_2PI)?)
    }

    fn entropy(&self) -> Result<Tensor> {
        Ok(self.log_scale()?.f_add_scalar(0.5 + 0.5 * LN_2PI)?)
    }

    fn mean(&self) -> Result<Tensor> {
        Ok(self.loc.shallow_clone())
    }

    fn variance(&self) -> Result<Tensor> {
        Ok(self.scale.f_square()?)
    }

    fn name(&self) -> &'static str {
        "Normal"
    }
}

/// The standard Normal N(0, I) over events of a fixed shape (batch shape `[]`): the base
/// distribution of flows and the prior of VAEs.
#[derive(Debug, Clone)]
pub struct StandardNormal {
    event_shape: Vec<i64>,
    kind: Kind,
    device: Device,
}

impl StandardNormal {
    pub fn new(event_shape: &[i64], device: Device) -> Self {
        StandardNormal {
            event_shape: event_shape.to_vec(),
            kind: Kind::Float,
            device,
        }
    }

    /// The same distribution in another floating-point kind (e.g. `Kind::Double` for tests).
    pub fn with_kind(mut self, kind: Kind) -> Self {
        self.kind = kind;
        self
    }

    fn event_size(&self) -> i64 {
        self.event_shape.iter().product()
    }
}

impl Distribution for StandardNormal {
    fn batch_shape(&self) -> Vec<i64> {
        vec![]
    }

    fn event_shape(&self) -> Vec<i64> {
        self.event_shape.clone()
    }

    fn sample(&self, sample_shape: &[i64]) -> Result<Tensor> {
        self.rsample(sample_shape)
    }

    fn rsample(&self, sample_shape: &[i64]) -> Result<Tensor> {
        let shape = extended(sample_shape, &self.event_shape);
        Ok(Tensor::f_randn(shape.as_slice(), (self.kind, self.device))?)
    }

    fn log_prob(&self, value: &Tensor) -> Result<Tensor> {
        check_value_shape("StandardNormal", value, &[], &self.event_shape)?;
        let sq = super::sum_rightmost(&value.f_square()?, self.event_shape.len())?;
        Ok(sq
            .f_mul_scalar(-0.5)?
            .f_sub_scalar(0.5 * LN_2PI * self.event_size() as f64)?)
    }

    fn entropy(&self) -> Result<Tensor> {
        let h = 0.5 * (1.0 + LN_2PI) * self.event_size() as f64;
        Ok(Tensor::f_from_slice(&[h])?
            .f_to_kind(self.kind)?
            .f_to_device(self.device)?
            .f_reshape([])?)
    }

    fn mean(&self) -> Result<Tensor> {
        Ok(Tensor::f_zeros(
            self.event_shape.as_slice(),
            (self.kind, self.device),
        )?)
    }

    fn variance(&self) -> Result<Tensor> {
        Ok(Tensor::f_ones(
            self.event_shape.as_slice(),
            (self.kind, self.device),
        )?)
    }

    fn name(&self) -> &'static str {
        "StandardNormal"
    }
}
