//! The multi-scale architecture (Dinh et al., 2017; Kingma & Dhariwal, 2018).
//!
//! Each level squeezes, runs `steps` flow steps (ActNorm → invertible 1×1 convolution → affine
//! coupling on half the channels), then factors out half of the channels straight to the base
//! distribution; the last level keeps all of them. The output is the concatenation of every
//! factored-out part, flattened to `[batch, C·H·W]`, so a standard Normal base applies.

use crate::image::{ImageCoupling, ImageMask, InvertibleConv1x1, Squeeze};
use crate::layer::{impl_bijector_for_layer, reject_context, FlowLayer};
use crate::vector::ActNorm;
use gm_core::tch::{nn, Tensor};
use gm_core::{GmError, Result};

/// One level: squeeze, steps, and the channels it factors out (`None` on the last level).
struct Level {
    steps: Vec<Box<dyn FlowLayer>>,
    /// Shape `[C, H, W]` after the squeeze.
    shape: [i64; 3],
    factor_out: Option<i64>,
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
            let mut layers: Vec<Box<dyn FlowLayer>> = Vec::with_capacity(3 * steps);
            for s in 0..steps {
                let sp = &lp / format!("step{s}");
                layers.push(Box::new(ActNorm::new(&(&sp / "actnorm"), c)?));
                layers.push(Box::new(InvertibleConv1x1::new(&(&sp / "conv1x1"), c)?));
                layers.push(Box::new(ImageCoupling::new(
                    &(&sp / "coupling"),
                    c,
                    hidden_channels,
                    ImageMask::Channel {
                        second_half: s % 2 == 1,
                    },
                )?));
            }
            let last = level + 1 == levels;
            let factor_out = (!last).then_some(c / 2);
            out.push(Level {
                steps: layers,
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
            for layer in &level.steps {
                let (next, ld) = layer.forward(&h, None)?;
                h = next;
                total = total.f_add(&ld)?;
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

    fn inverse(&self, z: &Tensor, context: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
        let (x, ld, _) = self.run_inverse(z, context, Inverse::WithLogDet)?;
        Ok((x, ld.expect("asked for the log-determinant")))
    }

    fn inverse_only(&self, z: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        Ok(self.run_inverse(z, context, Inverse::Only)?.0)
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

/// What [`MultiScale::run_inverse`] computes besides the inverse.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Inverse {
    /// The log-determinant too.
    WithLogDet,
    /// Nothing else: each layer's [`FlowLayer::inverse_only`], for sampling.
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
            // Three layers per step: ActNorm, 1×1 convolution, coupling.
            for (i, layer) in level.steps.iter().enumerate().rev() {
                h = match total {
                    Some(sum) => {
                        let (prev, ld) = layer.inverse(&h, None)?;
                        total = Some(sum.f_add(&ld)?);
                        prev
                    }
                    None => layer.inverse_only(&h, None)?,
                };
                if locate && !crate::layer::all_finite(&h)? {
                    let place = format!("multi_scale level {l} step {} {}", i / 3, layer.name());
                    return Ok((h, total, Some(place)));
                }
            }
            h = Squeeze.inverse_only(&h, None)?;
        }
        let place = (locate && !crate::layer::all_finite(&h)?).then(|| "multi_scale".to_string());
        Ok((h, total, place))
    }
}
