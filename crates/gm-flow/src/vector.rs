//! Layers for vector data `[batch, D]`: coupling (NICE, RealNVP, neural spline), masked
//! autoregressive (MAF, IAF, affine or spline), permutations and ActNorm.

use crate::layer::{impl_bijector_for_layer, reject_context, ElementTransform, FlowLayer};
use gm_core::nn::{Made, MadeConfig, Mlp, MlpConfig, Ordering};
use gm_core::tch::{nn, Kind, Tensor};
use gm_core::{GmError, Result};
use std::cell::Cell;

fn check_vector(name: &str, x: &Tensor, d: i64) -> Result<()> {
    if x.dim() != 2 || x.size()[1] != d {
        return Err(GmError::shape(name, format!("[batch, {d}]"), &x.size()));
    }
    Ok(())
}

fn check_context(name: &str, context: Option<&Tensor>, batch: i64, c: i64) -> Result<()> {
    match (c, context) {
        (0, None) => Ok(()),
        (0, Some(_)) => Err(GmError::Unsupported(format!(
            "{name} was built without a context"
        ))),
        (_, None) => Err(GmError::Unsupported(format!(
            "{name} needs a context [batch, {c}]"
        ))),
        (_, Some(ctx)) => {
            if ctx.dim() != 2 || ctx.size() != [batch, c] {
                return Err(GmError::shape(
                    format!("{name} context"),
                    format!("[{batch}, {c}]"),
                    &ctx.size(),
                ));
            }
            Ok(())
        }
    }
}

/// Sums `[B, D]` over D.
fn row_sum(t: &Tensor) -> Result<Tensor> {
    Ok(t.f_sum_dim_intlist(1, false, None::<Kind>)?)
}

/// A coupling layer: the dimensions where `mask` is 1 pass through unchanged and parameterise an
/// element-wise transform of the others (Dinh et al. 2015, 2017; Durkan et al. 2019).
pub struct Coupling {
    net: Mlp,
    /// `true` for the pass-through (conditioning) dimensions, `[D]`.
    mask: Tensor,
    transform: ElementTransform,
    features: i64,
    context_features: i64,
}

/// Which dimensions a vector coupling layer leaves unchanged.
pub fn alternating_mask(features: i64, parity: i64) -> Vec<bool> {
    (0..features).map(|i| (i + parity) % 2 == 0).collect()
}

impl Coupling {
    /// `mask[i]` says whether dimension `i` passes through. The last layer of the conditioner
    /// starts at zero, so a new coupling layer is the identity (additive/affine) or close to it.
    pub fn new(
        path: &nn::Path,
        mask: &[bool],
        transform: ElementTransform,
        net: &MlpConfig,
        context_features: i64,
    ) -> Result<Self> {
        transform.validate()?;
        let features = mask.len() as i64;
        if features < 2 || mask.iter().all(|m| *m) || !mask.iter().any(|m| *m) {
            return Err(GmError::config(
                "mask",
                "a coupling layer needs at least one pass-through and one transformed dimension",
            ));
        }
        let mut mlp = net.init(
            path,
            features + context_features,
            features * transform.params_per_dim(),
        )?;
        gm_core::tch::no_grad(|| {
            let last = mlp.last_layer_mut();
            let _ = last.ws.zero_();
            if let Some(b) = last.bs.as_mut() {
                let _ = b.zero_();
            }
        });
        let mask_values: Vec<u8> = mask.iter().map(|&m| m as u8).collect();
        let mask = Tensor::f_from_slice(&mask_values)?
            .f_to_kind(Kind::Bool)?
            .f_to_device(path.device())?;
        Ok(Coupling {
            net: mlp,
            mask,
            transform,
            features,
            context_features,
        })
    }

    fn params(&self, x: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        let kept = x.f_where_scalarother(&self.mask, 0.0)?;
        let input = match context {
            Some(c) => Tensor::f_cat(&[&kept, &c.f_to_kind(x.kind())?], 1)?,
            None => kept,
        };
        let p = self.transform.params_per_dim();
        Ok(self
            .net
            .forward(&input)?
            .f_reshape([-1, self.features, p])?)
    }

    fn run(&self, x: &Tensor, context: Option<&Tensor>, inverse: bool) -> Result<(Tensor, Tensor)> {
        check_vector("Coupling", x, self.features)?;
        check_context("Coupling", context, x.size()[0], self.context_features)?;
        let params = self.params(x, context)?;
        let (moved, log_d) = self.transform.apply(x, &params, inverse)?;
        let y = x.f_where_self(&self.mask, &moved)?;
        let log_d = log_d.f_where_scalarother(&self.mask.f_logical_not()?, 0.0)?;
        Ok((y, row_sum(&log_d)?))
    }
}

impl FlowLayer for Coupling {
    fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
        self.run(x, context, false)
    }
    fn inverse(&self, y: &Tensor, context: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
        // The pass-through dimensions are the same in x and y, so the parameters are too.
        self.run(y, context, true)
    }
    fn name(&self) -> &'static str {
        "coupling"
    }
}
impl_bijector_for_layer!(Coupling);

/// Which direction of a masked autoregressive layer is the fast one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoregressiveKind {
    /// MAF (Papamakarios et al., 2017): density in one pass, sampling in D passes.
    Maf,
    /// IAF (Kingma et al., 2016): sampling in one pass, density in D passes.
    Iaf,
}

/// A masked autoregressive layer on a MADE conditioner.
pub struct MaskedAutoregressive {
    made: Made,
    transform: ElementTransform,
    kind: AutoregressiveKind,
    features: i64,
    context_features: i64,
}

impl MaskedAutoregressive {
    pub fn new(
        path: &nn::Path,
        features: i64,
        hidden: &[i64],
        ordering: Ordering,
        transform: ElementTransform,
        kind: AutoregressiveKind,
        context_features: i64,
    ) -> Result<Self> {
        transform.validate()?;
        let config = MadeConfig {
            hidden: hidden.to_vec(),
            outputs_per_input: transform.params_per_dim(),
            ordering,
            context_features,
            ..Default::default()
        };
        let mut made = config.init(path, features)?;
        // Start at the identity (or near it for splines): zero output weights and biases.
        gm_core::tch::no_grad(|| {
            let out = made.output_layer_mut();
            let _ = out.weight.zero_();
            let _ = out.bias.zero_();
        });
        Ok(MaskedAutoregressive {
            made,
            transform,
            kind,
            features,
            context_features,
        })
    }

    fn params(&self, x: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        // MADE gives [B, P, D]; the transforms want [B, D, P].
        Ok(self.made.forward(x, context)?.f_permute([0, 2, 1])?)
    }

    /// The one-pass direction: the transform's parameters come from its input.
    fn parallel(
        &self,
        x: &Tensor,
        context: Option<&Tensor>,
        inverse: bool,
    ) -> Result<(Tensor, Tensor)> {
        let (y, ld) = self
            .transform
            .apply(x, &self.params(x, context)?, inverse)?;
        Ok((y, row_sum(&ld)?))
    }

    /// The D-pass direction: the parameters come from the output being built. After pass `k`
    /// the first `k` dimensions in the ordering are final, so `D` passes finish the job.
    fn sequential(
        &self,
        y: &Tensor,
        context: Option<&Tensor>,
        inverse: bool,
    ) -> Result<(Tensor, Tensor)> {
        let mut x = y.f_zeros_like()?;
        let mut ld = Tensor::f_zeros([y.size()[0], self.features], (y.kind(), y.device()))?;
        for _ in 0..self.features {
            let (next, next_ld) = self
                .transform
                .apply(y, &self.params(&x, context)?, inverse)?;
            x = next;
            ld = next_ld;
        }
        Ok((x, row_sum(&ld)?))
    }
}

impl FlowLayer for MaskedAutoregressive {
    fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
        check_vector("MaskedAutoregressive", x, self.features)?;
        check_context(
            "MaskedAutoregressive",
            context,
            x.size()[0],
            self.context_features,
        )?;
        match self.kind {
            // MAF: u = τ(x; θ(x_<i)).
            AutoregressiveKind::Maf => self.parallel(x, context, false),
            // IAF: the sampling map is x = τ(u; θ(u_<i)); its inverse needs D passes.
            AutoregressiveKind::Iaf => self.sequential(x, context, true),
        }
    }
    fn inverse(&self, y: &Tensor, context: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
        check_vector("MaskedAutoregressive", y, self.features)?;
        check_context(
            "MaskedAutoregressive",
            context,
            y.size()[0],
            self.context_features,
        )?;
        match self.kind {
            AutoregressiveKind::Maf => self.sequential(y, context, true),
            AutoregressiveKind::Iaf => self.parallel(y, context, false),
        }
    }
    fn name(&self) -> &'static str {
        match self.kind {
            AutoregressiveKind::Maf => "maf",
            AutoregressiveKind::Iaf => "iaf",
        }
    }
}
impl_bijector_for_layer!(MaskedAutoregressive);

/// A fixed permutation of the features (dimension 1); volume preserving.
pub struct Permutation {
    forward_index: Tensor,
    inverse_index: Tensor,
    features: i64,
}

impl Permutation {
    /// `perm[i]` is the input feature that output `i` takes.
    pub fn new(perm: &[i64], device: gm_core::tch::Device) -> Result<Self> {
        let d = perm.len() as i64;
        let mut seen = vec![false; perm.len()];
        for &p in perm {
            if p < 0 || p >= d || std::mem::replace(&mut seen[p as usize], true) {
                return Err(GmError::config(
                    "permutation",
                    format!("{perm:?} is not a permutation of 0..{d}"),
                ));
            }
        }
        let mut inv = vec![0i64; perm.len()];
        for (i, &p) in perm.iter().enumerate() {
            inv[p as usize] = i as i64;
        }
        Ok(Permutation {
            forward_index: Tensor::f_from_slice(perm)?.f_to_device(device)?,
            inverse_index: Tensor::f_from_slice(&inv)?.f_to_device(device)?,
            features: d,
        })
    }

    pub fn reverse(features: i64, device: gm_core::tch::Device) -> Result<Self> {
        Permutation::new(&(0..features).rev().collect::<Vec<_>>(), device)
    }

    pub fn random(features: i64, seed: u64, device: gm_core::tch::Device) -> Result<Self> {
        let order = Ordering::Random { seed }.degrees(features);
        Permutation::new(&order.iter().map(|d| d - 1).collect::<Vec<_>>(), device)
    }

    fn apply(&self, x: &Tensor, index: &Tensor) -> Result<(Tensor, Tensor)> {
        if x.dim() < 2 || x.size()[1] != self.features {
            return Err(GmError::shape(
                "Permutation",
                format!("[batch, {}, ...]", self.features),
                &x.size(),
            ));
        }
        let zeros = Tensor::f_zeros([x.size()[0]], (x.kind(), x.device()))?;
        Ok((x.f_index_select(1, index)?, zeros))
    }
}

impl FlowLayer for Permutation {
    fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
        reject_context("permutation", context)?;
        self.apply(x, &self.forward_index)
    }
    fn inverse(&self, y: &Tensor, context: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
        reject_context("permutation", context)?;
        self.apply(y, &self.inverse_index)
    }
    fn name(&self) -> &'static str {
        "permutation"
    }
}
impl_bijector_for_layer!(Permutation);

/// Activation normalisation (Kingma & Dhariwal, 2018): a per-feature affine map
/// `y = (x + b) · exp(s)` over dimension 1, initialised from the first batch it sees so that
/// its output has zero mean and unit variance per feature. Works for `[B, D]` and `[B, C, H, W]`.
pub struct ActNorm {
    bias: Tensor,
    log_scale: Tensor,
    /// 1 once initialised; a variable so that checkpoints remember it.
    initialized: Tensor,
    known_initialized: Cell<bool>,
    features: i64,
}

impl ActNorm {
    pub fn new(path: &nn::Path, features: i64) -> Result<Self> {
        if features < 1 {
            return Err(GmError::config(
                "features",
                "ActNorm needs at least one feature",
            ));
        }
        Ok(ActNorm {
            bias: path.zeros("bias", &[features]),
            log_scale: path.zeros("log_scale", &[features]),
            initialized: path.zeros_no_train("initialized", &[1]),
            known_initialized: Cell::new(false),
            features,
        })
    }

    /// Parameters shaped to broadcast over `x`: `[1, D]` or `[1, C, 1, 1]`.
    fn shaped(&self, t: &Tensor, x: &Tensor) -> Result<Tensor> {
        let mut shape = vec![1, self.features];
        shape.extend(std::iter::repeat_n(1, x.dim() - 2));
        Ok(t.f_reshape(shape.as_slice())?)
    }

    /// Positions per feature in one example (1 for vectors, H·W for images).
    fn positions(x: &Tensor) -> i64 {
        x.size()[2..].iter().product()
    }

    fn check(&self, x: &Tensor) -> Result<()> {
        if x.dim() < 2 || x.size()[1] != self.features {
            return Err(GmError::shape(
                "ActNorm",
                format!("[batch, {}, ...]", self.features),
                &x.size(),
            ));
        }
        Ok(())
    }

    /// The bias `b` of `y = (x + b)·eˢ`, `[features]`.
    pub(crate) fn bias(&self) -> &Tensor {
        &self.bias
    }

    /// The log-scale `s` of `y = (x + b)·eˢ`, `[features]`.
    pub(crate) fn log_scale(&self) -> &Tensor {
        &self.log_scale
    }

    /// Whether the data-dependent initialisation has run (by a forward pass, or in the
    /// checkpoint this layer was loaded from). Reads the flag back to the host until it is set.
    pub(crate) fn is_initialized(&self) -> Result<bool> {
        if !self.known_initialized.get() && self.initialized.f_double_value(&[0])? > 0.5 {
            self.known_initialized.set(true);
        }
        Ok(self.known_initialized.get())
    }

    fn initialize_from(&self, x: &Tensor) -> Result<()> {
        if self.is_initialized()? {
            return Ok(());
        }
        // The statistics of an empty or non-finite batch would leave the layer NaN for good.
        let needed = if x.dim() == 2 { 2 } else { 1 };
        if x.size().first().copied().unwrap_or(0) < needed {
            return Err(GmError::shape(
                "ActNorm initialisation",
                format!(
                    "a batch of at least {needed} example(s): its statistics set the layer's scale"
                ),
                &x.size(),
            ));
        }
        if x.f_isfinite()?.f_all()?.f_int64_value(&[])? == 0 {
            return Err(GmError::Domain(
                "ActNorm initialisation: the batch holds NaN or infinite values".into(),
            ));
        }
        gm_core::tch::no_grad(|| -> Result<()> {
            let dims: Vec<i64> = std::iter::once(0).chain(2..x.dim() as i64).collect();
            let mean = x.f_mean_dim(dims.as_slice(), false, None::<Kind>)?;
            let std = x.f_std_dim(dims.as_slice(), false, false)?;
            self.bias.shallow_clone().f_copy_(&mean.f_neg()?)?;
            self.log_scale
                .shallow_clone()
                .f_copy_(&std.f_add_scalar(1e-6)?.f_log()?.f_neg()?)?;
            let _ = self.initialized.shallow_clone().f_fill_(1.0)?;
            Ok(())
        })?;
        self.known_initialized.set(true);
        Ok(())
    }
}

impl FlowLayer for ActNorm {
    fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
        reject_context("actnorm", context)?;
        self.check(x)?;
        self.initialize_from(x)?;
        // (x + b)·eˢ as b·eˢ + x·eˢ: one pass over x (`addcmul`) instead of two.
        let scale = self.shaped(&self.log_scale, x)?.f_exp()?;
        let y = self
            .shaped(&self.bias, x)?
            .f_mul(&scale)?
            .f_addcmul(x, &scale)?;
        let ld = self
            .log_scale
            .f_sum(None::<Kind>)?
            .f_mul_scalar(Self::positions(x) as f64)?;
        Ok((y, ld.f_expand([x.size()[0]], false)?.f_contiguous()?))
    }
    fn inverse(&self, y: &Tensor, context: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
        let x = self.inverse_only(y, context)?;
        let ld = self
            .log_scale
            .f_sum(None::<Kind>)?
            .f_mul_scalar(-(Self::positions(y) as f64))?;
        Ok((x, ld.f_expand([y.size()[0]], false)?.f_contiguous()?))
    }
    fn inverse_only(&self, y: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        reject_context("actnorm", context)?;
        self.check(y)?;
        // y·e⁻ˢ − b in one pass over y.
        let inverse_scale = self.shaped(&self.log_scale, y)?.f_neg()?.f_exp()?;
        Ok(self
            .shaped(&self.bias, y)?
            .f_neg()?
            .f_addcmul(y, &inverse_scale)?)
    }
    fn name(&self) -> &'static str {
        "actnorm"
    }
}
impl_bijector_for_layer!(ActNorm);
