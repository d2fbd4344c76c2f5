//! Layers for images `[batch, C, H, W]`: squeeze, invertible 1×1 convolution (LU form), affine
//! coupling with checkerboard or channel masks, and the logit pre-processing of dequantised pixels.

use crate::layer::{impl_bijector_for_layer, reject_context, FlowLayer};
use gm_core::tch::{nn, Kind, Tensor};
use gm_core::{GmError, Result};

/// The largest log-factor [`ImageCoupling`]'s inverse multiplies by in float32, `-ln sigmoid(raw
/// + 2)` capped so that `exp` of it stays finite (`e^64 ≈ 6e27`).
pub const MAX_INVERSE_LOG_SCALE: f64 = 64.0;

/// The magnitude [`ImageCoupling`]'s inverse clamps its output to in float32: far beyond any
/// value of a flow on data, yet leaving `1e23` of headroom below float32's largest value for the
/// linear layers and conditioners that follow in the sampling direction.
pub const INVERSE_BOUND: f64 = 1e15;

/// The same two limits in float64, whose range is far wider (`e^600 ≈ 4e260`): there the
/// inverse stays exact for every factor a double can hold, as the law tests require.
pub const MAX_INVERSE_LOG_SCALE_F64: f64 = 600.0;
pub const INVERSE_BOUND_F64: f64 = 1e150;

fn check_image(name: &str, x: &Tensor, channels: i64) -> Result<()> {
    if x.dim() != 4 || x.size()[1] != channels {
        return Err(GmError::shape(
            name,
            format!("[batch, {channels}, H, W]"),
            &x.size(),
        ));
    }
    Ok(())
}

fn zeros_for(x: &Tensor) -> Result<Tensor> {
    Ok(Tensor::f_zeros([x.size()[0]], (x.kind(), x.device()))?)
}

/// Trades space for channels: `[B, C, H, W] → [B, 4C, H/2, W/2]` (each 2×2 patch becomes four
/// channels). A permutation of the entries, so its log-determinant is 0.
pub struct Squeeze;

impl FlowLayer for Squeeze {
    fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
        reject_context("squeeze", context)?;
        let s = x.size();
        if x.dim() != 4 || s[2] % 2 != 0 || s[3] % 2 != 0 {
            return Err(GmError::shape(
                "Squeeze",
                "[batch, C, H, W] with even H and W",
                &s,
            ));
        }
        Ok((x.f_pixel_unshuffle(2)?, zeros_for(x)?))
    }
    fn inverse(&self, y: &Tensor, context: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
        Ok((self.inverse_only(y, context)?, zeros_for(y)?))
    }
    fn inverse_only(&self, y: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        reject_context("squeeze", context)?;
        let s = y.size();
        if y.dim() != 4 || s[1] % 4 != 0 {
            return Err(GmError::shape("Squeeze inverse", "[batch, 4C, H, W]", &s));
        }
        Ok(y.f_pixel_shuffle(2)?)
    }
    fn name(&self) -> &'static str {
        "squeeze"
    }
}
impl_bijector_for_layer!(Squeeze);

/// Glow's invertible 1×1 convolution, `W = P L (U + diag(sign · exp(log_s)))`: `P` a fixed
/// permutation, `L` unit lower-triangular, `U` strictly upper-triangular. The log-determinant is
/// `H · W · Σ log_s`, with no O(C³) determinant.
pub struct InvertibleConv1x1 {
    permutation: Tensor,
    lower: Tensor,
    upper: Tensor,
    log_s: Tensor,
    sign_s: Tensor,
    lower_mask: Tensor,
    eye: Tensor,
    channels: i64,
}

impl InvertibleConv1x1 {
    /// Starts from a random rotation (LU-decomposed), seeded by libtorch's generator.
    pub fn new(path: &nn::Path, channels: i64) -> Result<Self> {
        if channels < 1 {
            return Err(GmError::config(
                "channels",
                "a 1×1 convolution needs at least one channel",
            ));
        }
        let kind = path.kind();
        let device = path.device();
        let (q, _) = Tensor::f_linalg_qr(
            &Tensor::f_randn([channels, channels], (Kind::Double, device))?,
            "reduced",
        )?;
        let (p, l, u) = Tensor::f_linalg_lu(&q, true)?;
        let s = u.f_diagonal(0, 0, 1)?;
        let lower_mask = Tensor::f_ones([channels, channels], (kind, device))?.f_tril(-1)?;
        let eye = Tensor::f_eye(channels, (kind, device))?;
        // The permutation and the signs of U's diagonal are drawn at random and never trained,
        // but they define the layer: they live in the var store (not trainable) so that a
        // checkpoint restores them into a model built with another seed.
        Ok(InvertibleConv1x1 {
            permutation: path.add("permutation", p.f_to_kind(kind)?, false),
            lower: path.var_copy("lower", &l.f_to_kind(kind)?),
            upper: path.var_copy("upper", &u.f_triu(1)?.f_to_kind(kind)?),
            log_s: path.var_copy("log_s", &s.f_abs()?.f_log()?.f_to_kind(kind)?),
            sign_s: path.add("sign_s", s.f_sign()?.f_to_kind(kind)?, false),
            lower_mask,
            eye,
            channels,
        })
    }

    /// The `[C, C]` weight (what `InvertibleConv1x1::stacked_weights` stacks, for one layer).
    pub fn weight(&self) -> Result<Tensor> {
        Ok(Self::stacked_weights(&[self])?.weights.f_squeeze_dim(0)?)
    }

    /// The weights `P (L ⊙ M + I) (U ⊙ Mᵀ + diag(sign · exp(log_s)))` of several 1×1
    /// convolutions of the same width, `[S, C, C]`, with their log-diagonals `[S, C]` (the
    /// log-determinant per position is their sum), in one batched pass: a dozen operations for
    /// the whole stack instead of a dozen per layer (and as many gradient nodes).
    pub(crate) fn stacked_weights(convs: &[&InvertibleConv1x1]) -> Result<StackedWeights> {
        let first = convs.first().ok_or_else(|| {
            GmError::config("steps", "stacking the weights of no 1×1 convolution")
        })?;
        if convs.iter().any(|c| c.channels != first.channels) {
            return Err(GmError::config(
                "steps",
                "stacked 1×1 convolutions must have the same number of channels",
            ));
        }
        let stack = |part: fn(&InvertibleConv1x1) -> &Tensor| -> Result<Tensor> {
            let parts: Vec<&Tensor> = convs.iter().map(|c| part(c)).collect();
            Ok(Tensor::f_stack(&parts, 0)?)
        };
        let log_s = stack(|c| &c.log_s)?;
        let l = stack(|c| &c.lower)?
            .f_mul(&first.lower_mask)?
            .f_add(&first.eye)?;
        let u = stack(|c| &c.upper)?
            .f_mul(&first.lower_mask.f_tr()?)?
            .f_add(
                &stack(|c| &c.sign_s)?
                    .f_mul(&log_s.f_exp()?)?
                    .f_diag_embed(0, -2, -1)?,
            )?;
        let weights = stack(|c| &c.permutation)?.f_matmul(&l)?.f_matmul(&u)?;
        Ok(StackedWeights { weights, log_s })
    }

    fn log_det(&self, x: &Tensor, sign: f64) -> Result<Tensor> {
        let hw = (x.size()[2] * x.size()[3]) as f64;
        let ld = self.log_s.f_sum(None::<Kind>)?.f_mul_scalar(hw * sign)?;
        Ok(ld.f_expand([x.size()[0]], false)?.f_contiguous()?)
    }
}

impl FlowLayer for InvertibleConv1x1 {
    fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
        reject_context("conv1x1", context)?;
        check_image("InvertibleConv1x1", x, self.channels)?;
        let w = self
            .weight()?
            .f_reshape([self.channels, self.channels, 1, 1])?;
        Ok((
            x.f_conv2d(&w, None::<Tensor>, [1, 1], [0, 0], [1, 1], 1)?,
            self.log_det(x, 1.0)?,
        ))
    }
    fn inverse(&self, y: &Tensor, context: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
        Ok((self.inverse_only(y, context)?, self.log_det(y, -1.0)?))
    }
    fn inverse_only(&self, y: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        reject_context("conv1x1", context)?;
        check_image("InvertibleConv1x1 inverse", y, self.channels)?;
        let w_inv = Tensor::f_linalg_inv(&self.weight()?)?.f_reshape([
            self.channels,
            self.channels,
            1,
            1,
        ])?;
        Ok(y.f_conv2d(&w_inv, None::<Tensor>, [1, 1], [0, 0], [1, 1], 1)?)
    }
    fn name(&self) -> &'static str {
        "conv1x1"
    }
}
impl_bijector_for_layer!(InvertibleConv1x1);

/// What [`InvertibleConv1x1::stacked_weights`] computes.
pub(crate) struct StackedWeights {
    /// `[S, C, C]`.
    pub weights: Tensor,
    /// `[S, C]`: the log-magnitudes of each weight's triangular factor's diagonal.
    pub log_s: Tensor,
}

/// Which entries an image coupling layer passes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageMask {
    /// Pixels with `(i + j + parity)` even pass through (RealNVP's checkerboard).
    Checkerboard { parity: i64 },
    /// The first half of the channels (or the second, with `second_half`) pass through.
    Channel { second_half: bool },
}

/// Affine coupling for images with a small convolutional conditioner. The scale is
/// `sigmoid(raw + 2)`, as in Glow: bounded, and close to 1 at the start.
///
/// The forward map only contracts (scale ≤ 1), but the inverse divides by the scale, which has
/// no lower bound: a latent off the data can reach a conditioner whose `raw` is very negative,
/// be expanded by orders of magnitude, and feed the next conditioner values so large that its
/// `exp(-log_scale)` overflows; the infinities then meet in the following 1×1 convolution as
/// `inf - inf = NaN`. The inverse therefore caps the factor it multiplies by at
/// `exp(`[`MAX_INVERSE_LOG_SCALE`]`)` and clamps its output to `±`[`INVERSE_BOUND`]. Both only act
/// where the exact inverse has left every scale the flow was trained on (an output beyond
/// `1e15`, more than `1e14` times what the forward pass sees on data, where float32 keeps no
/// digit of the O(1) values it is later mixed with), so the inverse is unchanged wherever it was
/// meaningful, and a draw stays finite. The forward map and both log-determinants are unchanged.
pub struct ImageCoupling {
    conv_in: nn::Conv2D,
    conv_mid: nn::Conv2D,
    conv_out: nn::Conv2D,
    mask: ImageMask,
    channels: i64,
}

impl ImageCoupling {
    pub fn new(path: &nn::Path, channels: i64, hidden: i64, mask: ImageMask) -> Result<Self> {
        if let ImageMask::Channel { .. } = mask {
            if channels < 2 || channels % 2 != 0 {
                return Err(GmError::config(
                    "channels",
                    format!("a channel mask needs an even number of channels, got {channels}"),
                ));
            }
        }
        if hidden < 1 {
            return Err(GmError::config("hidden_channels", "must be at least 1"));
        }
        let pad = nn::ConvConfig {
            padding: 1,
            ..Default::default()
        };
        let conv_in = nn::conv2d(path / "conv_in", channels, hidden, 3, pad);
        let conv_mid = nn::conv2d(path / "conv_mid", hidden, hidden, 1, Default::default());
        // A zero last layer makes the new coupling layer the identity up to a constant scale.
        let zero = nn::ConvConfig {
            padding: 1,
            ws_init: nn::Init::Const(0.0),
            bs_init: nn::Init::Const(0.0),
            ..Default::default()
        };
        let conv_out = nn::conv2d(path / "conv_out", hidden, 2 * channels, 3, zero);
        Ok(ImageCoupling {
            conv_in,
            conv_mid,
            conv_out,
            mask,
            channels,
        })
    }

    /// A boolean mask broadcastable to `x`, true where entries pass through.
    fn keep_mask(&self, x: &Tensor) -> Result<Tensor> {
        let (c, h, w) = (x.size()[1], x.size()[2], x.size()[3]);
        let device = x.device();
        match self.mask {
            ImageMask::Checkerboard { parity } => {
                let i = Tensor::f_arange(h, (Kind::Int64, device))?.f_reshape([h, 1])?;
                let j = Tensor::f_arange(w, (Kind::Int64, device))?.f_reshape([1, w])?;
                Ok(i.f_add(&j)?
                    .f_add_scalar(parity)?
                    .f_remainder(2)?
                    .f_eq(0)?
                    .f_reshape([1, 1, h, w])?)
            }
            ImageMask::Channel { second_half } => {
                let idx = Tensor::f_arange(c, (Kind::Int64, device))?;
                let first = idx.f_lt(c / 2)?;
                let keep = if second_half {
                    first.f_logical_not()?
                } else {
                    first
                };
                Ok(keep.f_reshape([1, c, 1, 1])?)
            }
        }
    }

    fn run(&self, x: &Tensor, context: Option<&Tensor>, inverse: bool) -> Result<(Tensor, Tensor)> {
        reject_context("image coupling", context)?;
        check_image("ImageCoupling", x, self.channels)?;
        match self.mask {
            ImageMask::Channel { second_half } => self.run_halves(x, second_half, inverse),
            ImageMask::Checkerboard { .. } => self.run_masked(x, inverse),
        }
    }

    /// The map computed as written: the conditioner sees every channel with the moving entries
    /// zeroed and produces a shift and scale for every entry, of which the kept ones are
    /// discarded. Any mask; the reference for [`ImageCoupling::run_halves`].
    #[doc(hidden)]
    pub fn run_masked(&self, x: &Tensor, inverse: bool) -> Result<(Tensor, Tensor)> {
        check_image("ImageCoupling", x, self.channels)?;
        let keep = self.keep_mask(x)?;
        let kept = x.f_where_scalarother(&keep, 0.0)?;
        use gm_core::tch::nn::Module;
        let h = self.conv_in.forward(&kept).relu();
        let h = self.conv_mid.forward(&h).relu();
        let out = self.conv_out.forward(&h);
        let shift = out.f_narrow(1, 0, self.channels)?;
        let raw = out.f_narrow(1, self.channels, self.channels)?;
        let (moved, log_scale) = affine(x, &shift, &raw, inverse)?;
        let y = x.f_where_self(&keep.f_expand_as(x)?, &moved)?;
        let ld = log_scale.f_where_scalarother(&keep.f_logical_not()?.f_expand_as(x)?, 0.0)?;
        let ld = ld.f_sum_dim_intlist([1, 2, 3].as_slice(), false, None::<Kind>)?;
        Ok((y, if inverse { ld.f_neg()? } else { ld }))
    }

    /// The same map for a channel mask without the work whose result is discarded: the zeroed
    /// half of the conditioner's input contributes nothing, so the first convolution runs on the
    /// kept half with the matching half of its weights, and the last produces only the moving
    /// half's shift and scale. The first and last convolutions cost half as much; the weights,
    /// the map and its gradients are those of [`ImageCoupling::run_masked`].
    fn run_halves(&self, x: &Tensor, second_half: bool, inverse: bool) -> Result<(Tensor, Tensor)> {
        let halves = self.halves(x, second_half)?;
        let (moved, log_scale) = affine(&halves.moving, &halves.shift, &halves.raw, inverse)?;
        let y = halves.join(moved)?;
        let ld = log_scale.f_sum_dim_intlist([1, 2, 3].as_slice(), false, None::<Kind>)?;
        Ok((y, if inverse { ld.f_neg()? } else { ld }))
    }

    /// The kept and moving halves of `x` and the conditioner's shift and raw scale for the
    /// moving half (see [`ImageCoupling::run_halves`]).
    fn halves(&self, x: &Tensor, second_half: bool) -> Result<Halves> {
        let c = self.channels;
        let half = c / 2;
        let (keep_at, move_at) = if second_half { (half, 0) } else { (0, half) };
        let kept = x.f_narrow(1, keep_at, half)?;
        let moving = x.f_narrow(1, move_at, half)?;
        let w_in = self.conv_in.ws.f_narrow(1, keep_at, half)?;
        // ReLUs in place: a convolution's backward needs its input, not its output, so the
        // output can be overwritten, saving an allocation and a pass over the hidden layer.
        let mut h = kept.f_conv2d(&w_in, self.conv_in.bs.as_ref(), [1, 1], [1, 1], [1, 1], 1)?;
        let _ = h.f_relu_()?;
        use gm_core::tch::nn::Module;
        let mut h = self.conv_mid.forward(&h);
        let _ = h.f_relu_()?;
        // Output channels [0, c) are shifts and [c, 2c) raw scales; keep the moving half of each.
        let w = &self.conv_out.ws;
        let w_out = Tensor::f_cat(
            &[
                w.f_narrow(0, move_at, half)?,
                w.f_narrow(0, c + move_at, half)?,
            ],
            0,
        )?;
        let b_out = match &self.conv_out.bs {
            Some(b) => Some(Tensor::f_cat(
                &[
                    b.f_narrow(0, move_at, half)?,
                    b.f_narrow(0, c + move_at, half)?,
                ],
                0,
            )?),
            None => None,
        };
        let out = h.f_conv2d(&w_out, b_out.as_ref(), [1, 1], [1, 1], [1, 1], 1)?;
        Ok(Halves {
            shift: out.f_narrow(1, 0, half)?,
            raw: out.f_narrow(1, half, half)?,
            kept,
            moving,
            second_half,
        })
    }
}

/// A channel-mask coupling's input split for its conditioner, and the conditioner's output.
struct Halves {
    kept: Tensor,
    moving: Tensor,
    shift: Tensor,
    raw: Tensor,
    second_half: bool,
}

impl Halves {
    /// The layer's output: the kept half unchanged and `moved` in the moving half's place.
    fn join(&self, moved: Tensor) -> Result<Tensor> {
        Ok(if self.second_half {
            Tensor::f_cat(&[&moved, &self.kept], 1)?
        } else {
            Tensor::f_cat(&[&self.kept, &moved], 1)?
        })
    }
}

/// The limits of [`affine`]'s inverse for tensors of `kind`: `(largest log-factor, bound)`.
fn inverse_limits(kind: Kind) -> (f64, f64) {
    match kind {
        Kind::Double => (MAX_INVERSE_LOG_SCALE_F64, INVERSE_BOUND_F64),
        _ => (MAX_INVERSE_LOG_SCALE, INVERSE_BOUND),
    }
}

/// The affine map of the moving entries `x` given the conditioner's `shift` and `raw` scale:
/// `(moved, ln scale)`, with scale `sigmoid(raw + 2)`.
fn affine(x: &Tensor, shift: &Tensor, raw: &Tensor, inverse: bool) -> Result<(Tensor, Tensor)> {
    // ln sigmoid(raw + 2): an addition and one `log_sigmoid` kernel.
    let log_scale = raw.f_add_scalar(2.0)?.f_log_sigmoid()?;
    let moved = if inverse {
        // Finite factor times finite difference: at worst ±inf, never NaN; then clamped.
        // Exact wherever the factor is below e^64 and the result below the bound (see the
        // type's documentation).
        let (cap, bound) = inverse_limits(x.kind());
        let factor = log_scale.f_neg()?.f_clamp_max(cap)?.f_exp()?;
        x.f_sub(shift)?.f_mul(&factor)?.f_clamp(-bound, bound)?
    } else {
        shift.f_addcmul(x, &log_scale.f_exp()?)?
    };
    Ok((moved, log_scale))
}

/// [`affine`]'s inverse without the log-scale, for sampling (call it without gradients: it
/// works in place):
/// `1 / sigmoid(a) = 1 + e^(−a)` with `a = raw + 2`, so the factor is one exponential, and the
/// element-wise work is seven kernels, five of them in place, instead of [`affine`]'s eight and
/// the log-determinant's sum. The same limits: the exponent is capped at the largest log-factor
/// and the result clamped to the bound.
fn affine_inverse_only(x: &Tensor, shift: &Tensor, raw: &Tensor) -> Result<Tensor> {
    let (cap, bound) = inverse_limits(x.kind());
    let mut factor = raw.f_rsub_scalar(-2.0)?;
    let _ = factor.f_clamp_max_(cap)?;
    let _ = factor.f_exp_()?;
    let _ = factor.f_add_scalar_(1.0)?;
    let mut moved = x.f_sub(shift)?;
    let _ = moved.f_mul_(&factor)?;
    let _ = moved.f_clamp_(-bound, bound)?;
    Ok(moved)
}

impl FlowLayer for ImageCoupling {
    fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
        self.run(x, context, false)
    }
    fn inverse(&self, y: &Tensor, context: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
        self.run(y, context, true)
    }
    fn inverse_only(&self, y: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        reject_context("image coupling", context)?;
        check_image("ImageCoupling", y, self.channels)?;
        gm_core::tch::no_grad(|| match self.mask {
            ImageMask::Channel { second_half } => {
                let halves = self.halves(y, second_half)?;
                halves.join(affine_inverse_only(
                    &halves.moving,
                    &halves.shift,
                    &halves.raw,
                )?)
            }
            ImageMask::Checkerboard { .. } => Ok(self.run_masked(y, true)?.0),
        })
    }
    fn name(&self) -> &'static str {
        "image_coupling"
    }
}
impl_bijector_for_layer!(ImageCoupling);

/// `y = logit(α + (1 - 2α) x)` for dequantised pixels `x ∈ [0, 1)`: maps the bounded data to the
/// real line, where the Gaussian base lives (Dinh et al., 2017). `α` keeps away from 0 and 1.
pub struct LogitPreprocess {
    alpha: f64,
}

impl LogitPreprocess {
    pub fn new(alpha: f64) -> Result<Self> {
        gm_core::train::config::check_range("logit_alpha", alpha, 0.0, 0.49)?;
        Ok(LogitPreprocess { alpha })
    }

    fn per_example(t: &Tensor) -> Result<Tensor> {
        gm_core::bijectors::sum_per_example(t)
    }
}

impl FlowLayer for LogitPreprocess {
    fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
        reject_context("logit", context)?;
        let a = self.alpha;
        let t = x.f_mul_scalar(1.0 - 2.0 * a)?.f_add_scalar(a)?;
        let (log_t, log_1mt) = (t.f_log()?, t.f_neg()?.f_log1p()?);
        let y = log_t.f_sub(&log_1mt)?;
        // dy/dx = (1 - 2α) / (t (1 - t)).
        let ld = log_t
            .f_add(&log_1mt)?
            .f_neg()?
            .f_add_scalar((1.0 - 2.0 * a).ln())?;
        Ok((y, Self::per_example(&ld)?))
    }
    fn inverse(&self, y: &Tensor, context: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
        let a = self.alpha;
        let x = self.inverse_only(y, context)?;
        let ld = y
            .f_neg()?
            .f_softplus()?
            .f_add(&y.f_softplus()?)?
            .f_neg()?
            .f_sub_scalar((1.0 - 2.0 * a).ln())?;
        Ok((x, Self::per_example(&ld)?))
    }
    fn inverse_only(&self, y: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        reject_context("logit", context)?;
        let a = self.alpha;
        Ok(y.f_sigmoid()?
            .f_sub_scalar(a)?
            .f_div_scalar(1.0 - 2.0 * a)?)
    }
    fn name(&self) -> &'static str {
        "logit"
    }
}
impl_bijector_for_layer!(LogitPreprocess);
