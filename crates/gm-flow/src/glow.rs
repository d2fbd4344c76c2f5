//! The multi-scale architecture (Dinh et al., 2017; Kingma & Dhariwal, 2018).
//!
//! Each level squeezes, runs `steps` flow steps (ActNorm → invertible 1×1 convolution → affine
//! coupling on half the channels), then factors out half of the channels straight to the base
//! distribution; the last level keeps all of them. The output is the concatenation of every
//! factored-out part, flattened to `[batch, C·H·W]`, so a standard Normal base applies.
//!
//! ActNorm and the 1×1 convolution are both linear per pixel, so sampling, and the forward pass
//! once a level's ActNorms are initialised, run each pair as one 1×1 convolution with a bias and
//! compute the level's weights in one batched pass: fewer and larger operations for the same map
//! and parameters (see `Level::folded_forward`).

use crate::image::{ImageCoupling, ImageMask, InvertibleConv1x1, Squeeze};
use crate::layer::{impl_bijector_for_layer, reject_context, FlowLayer};
use crate::vector::ActNorm;
use gm_core::tch::{nn, Kind, Tensor};
use gm_core::{GmError, Result};

/// One flow step: ActNorm → invertible 1×1 convolution → affine coupling.
struct Step {
    actnorm: ActNorm,
    conv: InvertibleConv1x1,
    coupling: ImageCoupling,
}

impl Step {
    /// The three layers in the data → noise order.
    fn layers(&self) -> [&dyn FlowLayer; 3] {
        [&self.actnorm, &self.conv, &self.coupling]
    }
}

/// One level: squeeze, steps, and the channels it factors out (`None` on the last level).
struct Level {
    steps: Vec<Step>,
    /// Shape `[C, H, W]` after the squeeze.
    shape: [i64; 3],
    factor_out: Option<i64>,
}

/// A level's ActNorms and 1×1 convolutions folded together: per step, one 1×1 convolution
/// with a bias computing both (see [`Level::folded_forward`] and [`Level::folded_inverse`]).
struct Folded {
    /// `[S, C, C, 1, 1]`.
    weights: Tensor,
    /// `[S, C]`.
    biases: Tensor,
}

impl Folded {
    /// Step `s`'s folded map applied to `h`.
    fn apply(&self, s: usize, h: &Tensor) -> Result<Tensor> {
        let s = s as i64;
        Ok(h.f_conv2d(
            &self.weights.f_select(0, s)?,
            Some(&self.biases.f_select(0, s)?),
            [1, 1],
            [0, 0],
            [1, 1],
            1,
        )?)
    }
}

impl Level {
    /// Whether every ActNorm has its data-dependent initialisation; until then the forward pass
    /// runs layer by layer, since each ActNorm's statistics are those of its own input.
    fn initialized(&self) -> Result<bool> {
        for step in &self.steps {
            if !step.actnorm.is_initialized()? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The stacked ActNorm parameters `(b, s)`, `[S, C]` each, and the stacked 1×1 weights.
    fn stacked(&self) -> Result<(Tensor, Tensor, crate::image::StackedWeights)> {
        let stack = |part: fn(&Step) -> &Tensor| -> Result<Tensor> {
            let parts: Vec<&Tensor> = self.steps.iter().map(part).collect();
            Ok(Tensor::f_stack(&parts, 0)?)
        };
        let convs: Vec<&InvertibleConv1x1> = self.steps.iter().map(|s| &s.conv).collect();
        Ok((
            stack(|s| s.actnorm.bias())?,
            stack(|s| s.actnorm.log_scale())?,
            InvertibleConv1x1::stacked_weights(&convs)?,
        ))
    }

    /// The forward maps `y = W·((x + b)·eˢ) = (W·diag(eˢ))·x + W·(eˢ ⊙ b)` of every step, and
    /// the log-determinant per position they add together, `Σ s + Σ log|diag U|` over all
    /// steps: one convolution with a bias per step instead of ActNorm's pass over the
    /// activations, its gradient's three, and a dozen small operations per layer.
    fn folded_forward(&self) -> Result<(Folded, Tensor)> {
        let (bias, log_scale, stacked) = self.stacked()?;
        let c = bias.size()[1];
        let weights = stacked.weights.f_mul(&log_scale.f_exp()?.f_unsqueeze(1)?)?;
        let biases = weights.f_matmul(&bias.f_unsqueeze(2)?)?.f_squeeze_dim(2)?;
        let log_det = log_scale
            .f_sum(None::<Kind>)?
            .f_add(&stacked.log_s.f_sum(None::<Kind>)?)?;
        let weights = weights.f_reshape([-1, c, c, 1, 1])?;
        Ok((Folded { weights, biases }, log_det))
    }

    /// The inverse maps `x = e⁻ˢ ⊙ (W⁻¹·y) − b = (diag(e⁻ˢ)·W⁻¹)·y − b` of every step, the
    /// level's weights inverted in one batched call.
    fn folded_inverse(&self) -> Result<Folded> {
        let (bias, log_scale, stacked) = self.stacked()?;
        let c = bias.size()[1];
        let weights = Tensor::f_linalg_inv(&stacked.weights)?
            .f_mul(&log_scale.f_neg()?.f_exp()?.f_unsqueeze(2)?)?
            .f_reshape([-1, c, c, 1, 1])?;
        Ok(Folded {
            weights,
            biases: bias.f_neg()?,
        })
    }
}

/// See the module documentation.
pub struct MultiScale {
    levels: Vec<Level>,
    input_shape: [i64; 3],
}

impl MultiScale {
    /// `input_shape` is `[C, H, W]`; H and W must be divisible by `2^levels`.
    pub fn new(
        path: &nn::Path,
        input_shape: [i64; 3],
        levels: usize,
        steps: usize,
        hidden_channels: i64,
    ) -> Result<Self> {
        if levels == 0 || steps == 0 {
            return Err(GmError::config(
                "levels",
                "the multi-scale flow needs at least one level and one step",
            ));
        }
        // Refuse what cannot be allocated before anything is: per step, ActNorm and the 1×1
        // convolution (about c² + 3c) and the coupling's 3×3, 1×1 and 3×3 convolutions.
        let mut parameters: i128 = 0;
        let [mut c, _, _] = input_shape;
        for level in 0..levels {
            let ch = c as i128 * 4;
            let hid = hidden_channels as i128;
            let per_step =
                ch * ch + 3 * ch + (ch / 2 * 9 + 1) * hid + (hid + 1) * hid + (hid * 9 + 1) * ch;
            parameters += per_step * steps as i128;
            c = if level + 1 == levels {
                c * 4
            } else {
                c * 4 - c * 2
            };
        }
        gm_core::nn::check_parameter_budget(parameters, "the multi-scale flow")?;
        let [mut c, mut h, mut w] = input_shape;
        let mut out = Vec::with_capacity(levels);
        for level in 0..levels {
            if h % 2 != 0 || w % 2 != 0 {
                return Err(GmError::config(
                    "levels",
                    format!("level {level} would squeeze a {h}×{w} image; H and W must be divisible by 2^levels"),
                ));
            }
            c *= 4;
            h /= 2;
            w /= 2;
            let lp = path / format!("level{level}");
            let mut level_steps = Vec::with_capacity(steps);
            for s in 0..steps {
                let sp = &lp / format!("step{s}");
                level_steps.push(Step {
                    actnorm: ActNorm::new(&(&sp / "actnorm"), c)?,
                    conv: InvertibleConv1x1::new(&(&sp / "conv1x1"), c)?,
                    coupling: ImageCoupling::new(
                        &(&sp / "coupling"),
                        c,
                        hidden_channels,
                        ImageMask::Channel {
                            second_half: s % 2 == 1,
                        },
                    )?,
                });
            }
            let last = level + 1 == levels;
            let factor_out = (!last).then_some(c / 2);
            out.push(Level {
                steps: level_steps,
                shape: [c, h, w],
                factor_out,
            });
            if !last {
                c -= c / 2;
            }
        }
        Ok(MultiScale {
            levels: out,
            input_shape,
        })
    }

    pub fn input_shape(&self) -> [i64; 3] {
        self.input_shape
    }

    pub fn output_features(&self) -> i64 {
        self.input_shape.iter().product()
    }
}

impl FlowLayer for MultiScale {
    fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
        self.run_forward(x, context, true)
    }

    fn inverse(&self, z: &Tensor, context: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
        let (x, ld, _) = self.run_inverse(z, context, Inverse::WithLogDet)?;
        Ok((x, ld.expect("asked for the log-determinant")))
    }

    fn inverse_only(&self, z: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        gm_core::tch::no_grad(|| Ok(self.run_inverse(z, context, Inverse::Only)?.0))
    }

    /// Names the level, step and layer whose output first holds a NaN or an infinity.
    fn inverse_located(
        &self,
        y: &Tensor,
        context: Option<&Tensor>,
    ) -> Result<(Tensor, Option<String>)> {
        let (x, _, place) = self.run_inverse(y, context, Inverse::Located)?;
        Ok((x, place))
    }

    fn name(&self) -> &'static str {
        "multi_scale"
    }
}
impl_bijector_for_layer!(MultiScale);

impl MultiScale {
    /// The forward pass; with `fold`, each level whose ActNorms are initialised runs its
    /// ActNorm and 1×1 convolution pairs folded into one convolution each (the same map to
    /// rounding), otherwise every layer runs on its own.
    fn run_forward(
        &self,
        x: &Tensor,
        context: Option<&Tensor>,
        fold: bool,
    ) -> Result<(Tensor, Tensor)> {
        reject_context("multi-scale flow", context)?;
        let [c, h, w] = self.input_shape;
        if x.dim() != 4 || x.size()[1..] != [c, h, w] {
            return Err(GmError::shape(
                "MultiScale",
                format!("[batch, {c}, {h}, {w}]"),
                &x.size(),
            ));
        }
        let batch = x.size()[0];
        let mut total = Tensor::f_zeros([batch], (x.kind(), x.device()))?;
        let mut parts = Vec::with_capacity(self.levels.len());
        let mut h = x.shallow_clone();
        for level in &self.levels {
            // Channels-last from here on (see `gm_core::nn::channels_last`): a no-op when the
            // squeezed tensor already is.
            h = gm_core::nn::channels_last(&Squeeze.forward(&h, None)?.0)?;
            if fold && level.initialized()? {
                let (folded, log_det) = level.folded_forward()?;
                let positions = (level.shape[1] * level.shape[2]) as f64;
                total = total.f_add(&log_det.f_mul_scalar(positions)?)?;
                for (s, step) in level.steps.iter().enumerate() {
                    let (next, ld) = step.coupling.forward(&folded.apply(s, &h)?, None)?;
                    h = next;
                    total = total.f_add(&ld)?;
                }
            } else {
                for layer in level.steps.iter().flat_map(Step::layers) {
                    let (next, ld) = layer.forward(&h, None)?;
                    h = next;
                    total = total.f_add(&ld)?;
                }
            }
            if let Some(out) = level.factor_out {
                let keep = level.shape[0] - out;
                parts.push(h.f_narrow(1, keep, out)?.f_reshape([batch, -1])?);
                h = h.f_narrow(1, 0, keep)?;
            }
        }
        parts.push(h.f_reshape([batch, -1])?);
        Ok((Tensor::f_cat(&parts, 1)?, total))
    }
}

/// What [`MultiScale::run_inverse`] computes besides the inverse.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Inverse {
    /// The log-determinant too.
    WithLogDet,
    /// Nothing else, for sampling: each coupling's [`FlowLayer::inverse_only`] and each
    /// ActNorm and 1×1 convolution pair folded into one convolution (see `Level::folded_inverse`).
    Only,
    /// The log-determinant, and the first layer whose output is not finite.
    Located,
}

impl MultiScale {
    /// The inverse, `(x, ln |det ∂x/∂z|, place)`, the log-determinant unless `mode` is
    /// [`Inverse::Only`]; with [`Inverse::Located`] it checks every layer's output and stops at
    /// the first that is not finite, naming it in `place` (a diagnosis: each check reads back to
    /// the host).
    fn run_inverse(
        &self,
        z: &Tensor,
        context: Option<&Tensor>,
        mode: Inverse,
    ) -> Result<(Tensor, Option<Tensor>, Option<String>)> {
        let locate = mode == Inverse::Located;
        reject_context("multi-scale flow", context)?;
        let d = self.output_features();
        if z.dim() != 2 || z.size()[1] != d {
            return Err(GmError::shape(
                "MultiScale inverse",
                format!("[batch, {d}]"),
                &z.size(),
            ));
        }
        let batch = z.size()[0];
        // Split the flat latent back into the factored-out parts, in order.
        let mut sizes = Vec::new();
        for level in &self.levels {
            let [c, hh, ww] = level.shape;
            let kept_c = match level.factor_out {
                Some(out) => {
                    sizes.push((out, hh, ww));
                    c - out
                }
                None => c,
            };
            if level.factor_out.is_none() {
                sizes.push((kept_c, hh, ww));
            }
        }
        let mut offset = 0;
        let mut pieces = Vec::with_capacity(sizes.len());
        for &(c, hh, ww) in &sizes {
            let n = c * hh * ww;
            pieces.push(z.f_narrow(1, offset, n)?.f_reshape([batch, c, hh, ww])?);
            offset += n;
        }
        let mut total = match mode {
            Inverse::Only => None,
            _ => Some(Tensor::f_zeros([batch], (z.kind(), z.device()))?),
        };
        let mut h = pieces.pop().expect("at least one level");
        for (l, level) in self.levels.iter().enumerate().rev() {
            if level.factor_out.is_some() {
                let out = pieces.pop().expect("one piece per factored-out level");
                h = Tensor::f_cat(&[&h, &out], 1)?;
            }
            h = gm_core::nn::channels_last(&h)?;
            match total {
                None => {
                    let folded = level.folded_inverse()?;
                    for (s, step) in level.steps.iter().enumerate().rev() {
                        h = folded.apply(s, &step.coupling.inverse_only(&h, None)?)?;
                    }
                }
                Some(ref mut sum) => {
                    for (s, step) in level.steps.iter().enumerate().rev() {
                        for layer in step.layers().into_iter().rev() {
                            let (prev, ld) = layer.inverse(&h, None)?;
                            *sum = sum.f_add(&ld)?;
                            h = prev;
                            if locate && !crate::layer::all_finite(&h)? {
                                let place =
                                    format!("multi_scale level {l} step {s} {}", layer.name());
                                return Ok((h, total, Some(place)));
                            }
                        }
                    }
                }
            }
            h = Squeeze.inverse_only(&h, None)?;
        }
        let place = (locate && !crate::layer::all_finite(&h)?).then(|| "multi_scale".to_string());
        Ok((h, total, place))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gm_core::tch::Device;

    /// The folded forward pass against the layer-by-layer one, output and log-determinant, entry
    /// by entry, in both precisions, on weights moved away from their start.
    #[test]
    fn folded_forward_matches_layer_by_layer() {
        for (kind, tol) in [(Kind::Double, 1e-12), (Kind::Float, 1e-5)] {
            gm_core::tch::manual_seed(3);
            let mut vs = nn::VarStore::new(Device::Cpu);
            vs.set_kind(kind);
            let flow = MultiScale::new(&vs.root(), [1, 8, 8], 2, 3, 8).unwrap();
            let x = Tensor::randn([6, 1, 8, 8], (kind, Device::Cpu));
            // The first pass initialises ActNorm (layer by layer); then every weight moves.
            let _ = flow.forward(&x, None).unwrap();
            gm_core::tch::no_grad(|| {
                for mut v in vs.trainable_variables() {
                    let noise = v.randn_like() * 0.2;
                    let _ = v.g_add_(&noise);
                }
            });
            let (folded, folded_ld) = flow.run_forward(&x, None, true).unwrap();
            let (plain, plain_ld) = flow.run_forward(&x, None, false).unwrap();
            let check = gm_core::testing::assert_close_per_element;
            check(&folded, &plain, tol, &format!("{kind:?} output"));
            check(&folded_ld, &plain_ld, tol, &format!("{kind:?} log-det"));
            // The folded branch ran, and on a map with a sizeable log-determinant.
            assert!(flow.levels.iter().all(|l| l.initialized().unwrap()));
            assert!(plain_ld.abs().min().double_value(&[]) > 0.1);
        }
    }
}
