//! Bijectors: invertible maps with the log-determinant of their Jacobian.
//!
//! Direction: `forward` is the map the type is named after (`Sigmoid::forward` is the
//! sigmoid). Inputs are `[batch, event...]`; log-determinants are per example, `[batch]`,
//! summed over every event dimension. `inverse(forward(x).0).0 == x` and the two log-dets are
//! negatives of each other at corresponding points.
//!
//! gm-flow composes these (and its own coupling, autoregressive and convolutional layers) into
//! flows whose `forward` maps data to noise.

use crate::{GmError, Result};
use tch::{Kind, Tensor};

/// An invertible map `y = f(x)` with `ln |det ∂f/∂x|` per example.
pub trait Bijector {
    /// `(y, ln |det ∂y/∂x|)`.
    fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor)>;

    /// `(x, ln |det ∂x/∂y|)`.
    fn inverse(&self, y: &Tensor) -> Result<(Tensor, Tensor)>;
}

/// A bijector whose map depends on a context tensor `[batch, C]` (e.g. a class label).
pub trait ConditionalBijector {
    fn forward_with(&self, x: &Tensor, context: &Tensor) -> Result<(Tensor, Tensor)>;
    fn inverse_with(&self, y: &Tensor, context: &Tensor) -> Result<(Tensor, Tensor)>;
}

impl<B: Bijector + ?Sized> Bijector for Box<B> {
    fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        (**self).forward(x)
    }
    fn inverse(&self, y: &Tensor) -> Result<(Tensor, Tensor)> {
        (**self).inverse(y)
    }
}

/// Sums an element-wise log-derivative over every dimension but the first.
pub fn sum_per_example(t: &Tensor) -> Result<Tensor> {
    if t.dim() == 0 {
        return Err(GmError::shape("log-determinant", "[batch, ...]", &t.size()));
    }
    if t.dim() == 1 {
        return Ok(t.shallow_clone());
    }
    let dims: Vec<i64> = (1..t.dim() as i64).collect();
    Ok(t.f_sum_dim_intlist(dims.as_slice(), false, None::<Kind>)?)
}

fn require_batch(name: &str, x: &Tensor) -> Result<()> {
    if x.dim() < 2 {
        return Err(GmError::shape(
            name,
            "[batch, event...] with at least one event dimension",
            &x.size(),
        ));
    }
    Ok(())
}

/// A sequence of bijectors applied in order; log-determinants add.
#[derive(Default)]
pub struct Chain {
    parts: Vec<Box<dyn Bijector>>,
}

impl Chain {
    pub fn new(parts: Vec<Box<dyn Bijector>>) -> Self {
        Chain { parts }
    }

    pub fn push(&mut self, part: impl Bijector + 'static) {
        self.parts.push(Box::new(part));
    }

    pub fn len(&self) -> usize {
        self.parts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }
}

impl Bijector for Chain {
    fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let mut y = x.shallow_clone();
        let mut total: Option<Tensor> = None;
        for part in &self.parts {
            let (next, ld) = part.forward(&y)?;
            y = next;
            total = Some(match total {
                None => ld,
                Some(t) => t.f_add(&ld)?,
            });
        }
        let total = match total {
            Some(t) => t,
            None => Tensor::f_zeros([x.size()[0]], (x.kind(), x.device()))?,
        };
        Ok((y, total))
    }

    fn inverse(&self, y: &Tensor) -> Result<(Tensor, Tensor)> {
        let mut x = y.shallow_clone();
        let mut total: Option<Tensor> = None;
        for part in self.parts.iter().rev() {
            let (prev, ld) = part.inverse(&x)?;
            x = prev;
            total = Some(match total {
                None => ld,
                Some(t) => t.f_add(&ld)?,
            });
        }
        let total = match total {
            Some(t) => t,
            None => Tensor::f_zeros([y.size()[0]], (y.kind(), y.device()))?,
        };
        Ok((x, total))
    }
}

/// Swaps the directions of a bijector (`Inverse(Sigmoid)` is the logit).
pub struct Inverse<B>(pub B);

impl<B: Bijector> Bijector for Inverse<B> {
    fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        self.0.inverse(x)
    }
    fn inverse(&self, y: &Tensor) -> Result<(Tensor, Tensor)> {
        self.0.forward(y)
    }
}

/// `y = x · exp(log_scale) + shift`, element-wise; parameters broadcast against the event.
pub struct ElementwiseAffine {
    shift: Tensor,
    log_scale: Tensor,
}

impl ElementwiseAffine {
    /// `shift` and `log_scale` must broadcast against one example's event shape.
    pub fn new(shift: &Tensor, log_scale: &Tensor) -> Self {
        ElementwiseAffine {
            shift: shift.shallow_clone(),
            log_scale: log_scale.shallow_clone(),
        }
    }

    fn log_det(&self, like: &Tensor) -> Result<Tensor> {
        // Broadcast the log-scale to the batch so that shared parameters count once per element.
        let ls = self.log_scale.f_expand_as(like)?;
        sum_per_example(&ls)
    }
}

impl Bijector for ElementwiseAffine {
    fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        require_batch("ElementwiseAffine.forward", x)?;
        let y = x.f_mul(&self.log_scale.f_exp()?)?.f_add(&self.shift)?;
        let ld = self.log_det(x)?;
        Ok((y, ld))
    }

    fn inverse(&self, y: &Tensor) -> Result<(Tensor, Tensor)> {
        require_batch("ElementwiseAffine.inverse", y)?;
        let x = y
            .f_sub(&self.shift)?
            .f_mul(&self.log_scale.f_neg()?.f_exp()?)?;
        let ld = self.log_det(y)?.f_neg()?;
        Ok((x, ld))
    }
}

/// `y = sigmoid(x)`; `ln σ'(x) = -softplus(-x) - softplus(x)`.
pub struct Sigmoid;

impl Bijector for Sigmoid {
    fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        require_batch("Sigmoid.forward", x)?;
        let ld = x.f_neg()?.f_softplus()?.f_add(&x.f_softplus()?)?.f_neg()?;
        Ok((x.f_sigmoid()?, sum_per_example(&ld)?))
    }

    /// `x = logit(y)`, for `y` in (0, 1).
    fn inverse(&self, y: &Tensor) -> Result<(Tensor, Tensor)> {
        require_batch("Sigmoid.inverse", y)?;
        let log_y = y.f_log()?;
        let log_1my = y.f_neg()?.f_log1p()?;
        let x = log_y.f_sub(&log_1my)?;
        // dx/dy = 1 / (y (1 - y)).
        let ld = log_y.f_add(&log_1my)?.f_neg()?;
        Ok((x, sum_per_example(&ld)?))
    }
}

/// The logit, `Inverse(Sigmoid)`, with a name of its own.
pub type Logit = Inverse<Sigmoid>;

/// `y = tanh(x)`; `ln (1 - tanh²x) = 2 (ln 2 - x - softplus(-2x))`, stable for large |x|.
pub struct Tanh;

impl Bijector for Tanh {
    fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        require_batch("Tanh.forward", x)?;
        let sp = x.f_mul_scalar(-2.0)?.f_softplus()?;
        let ld = x
            .f_neg()?
            .f_sub(&sp)?
            .f_add_scalar(std::f64::consts::LN_2)?
            .f_mul_scalar(2.0)?;
        Ok((x.f_tanh()?, sum_per_example(&ld)?))
    }

    /// `x = atanh(y)`, for `y` in (-1, 1).
    fn inverse(&self, y: &Tensor) -> Result<(Tensor, Tensor)> {
        require_batch("Tanh.inverse", y)?;
        let x = y.f_atanh()?;
        // dx/dy = 1 / (1 - y²).
        let ld = y.f_square()?.f_neg()?.f_log1p()?.f_neg()?;
        Ok((x, sum_per_example(&ld)?))
    }
}

/// `y = exp(x)`; `ln |dy/dx| = x`.
pub struct Exp;

impl Bijector for Exp {
    fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        require_batch("Exp.forward", x)?;
        Ok((x.f_exp()?, sum_per_example(x)?))
    }

    /// `x = ln y`, for positive `y`.
    fn inverse(&self, y: &Tensor) -> Result<(Tensor, Tensor)> {
        require_batch("Exp.inverse", y)?;
        let x = y.f_log()?;
        let ld = sum_per_example(&x)?.f_neg()?;
        Ok((x, ld))
    }
}

/// `ln |det J|` of `f` at one example `x` (shape `event`), from the full Jacobian built row by
/// row with autograd, in double precision. Meant for tests on small dimensions.
///
/// `f` maps a batch `[n, event...]` to `[n, event'...]` with the same number of elements.
pub fn autograd_log_abs_det<F>(f: F, x: &Tensor) -> Result<f64>
where
    F: Fn(&Tensor) -> Result<Tensor>,
{
    let (j, _) = autograd_jacobian(f, x)?;
    let (sign, logabs) = Tensor::f_linalg_slogdet(&j)?;
    if sign.double_value(&[]) == 0.0 {
        return Err(GmError::Domain("the Jacobian is singular".into()));
    }
    Ok(logabs.double_value(&[]))
}

/// The Jacobian `∂f(x)_i / ∂x_j` of `f` at one example, as a `[out, in]` double matrix, and the
/// flattened output.
pub fn autograd_jacobian<F>(f: F, x: &Tensor) -> Result<(Tensor, Tensor)>
where
    F: Fn(&Tensor) -> Result<Tensor>,
{
    let x = x
        .f_to_kind(Kind::Double)?
        .f_detach()?
        .f_set_requires_grad(true)?;
    let y = f(&x.f_unsqueeze(0)?)?.f_reshape([-1])?;
    let n_out = y.size()[0];
    let mut rows = Vec::with_capacity(n_out as usize);
    for i in 0..n_out {
        let yi = y.f_get(i)?;
        let g = Tensor::f_run_backward(&[&yi], &[&x], true, false)?;
        rows.push(g[0].f_reshape([-1])?);
    }
    Ok((Tensor::f_stack(&rows, 0)?, y.f_detach()?))
}
