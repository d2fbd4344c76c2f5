//! Gated PixelCNN (van den Oord et al., 2016, "Conditional Image Generation with PixelCNN
//! Decoders"): two stacks that together see every earlier pixel, with no blind spot.
//!
//! - The **vertical stack** convolves a `(n+1) × k` window (n = k/2) of the rows at and above
//!   each pixel: at row r it has seen input rows ≤ r only. Its features reach the horizontal
//!   stack shifted down one row, so they bring rows < r.
//! - The **horizontal stack** convolves a `1 × (n+1)` window of the row to the left of and at
//!   each pixel; in the first layer shifted right one pixel, so the pixel itself is never seen.
//!   It has residual connections from the second layer on.
//! - Both use the gated unit `tanh(a) ⊙ σ(b)`; a class-conditional model adds a learned
//!   per-class bias to a and b in every layer.
//!
//! The reach is `layers · n + 1` rows up and columns either side, which
//! [`crate::pixelcnn::sample_raster`] uses to sample each pixel from a window.

use crate::network::{Network, NetworkShape};
use crate::pixelcnn::{
    check_kernel, check_width, output_layer, pointwise, pointwise_scaled, PixelGrid,
};
use gm_core::tch::{nn, Device, Kind, Tensor};
use gm_core::train::config::Config;
use gm_core::{GmError, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatedPixelCnnConfig {
    /// Channels of each stack.
    pub channels: i64,
    /// Gated layers.
    pub layers: i64,
    /// Kernel size k (odd): the vertical stack sees `(k/2 + 1) × k`, the horizontal `1 × (k/2 + 1)`.
    pub kernel: i64,
    /// Hidden channels of the 1×1 output head.
    pub head_channels: i64,
}

impl Default for GatedPixelCnnConfig {
    fn default() -> Self {
        GatedPixelCnnConfig {
            channels: 64,
            layers: 8,
            kernel: 5,
            head_channels: 64,
        }
    }
}

impl Config for GatedPixelCnnConfig {
    fn validate(&self) -> Result<()> {
        check_width("network.channels", self.channels)?;
        if !(1..=64).contains(&self.layers) {
            return Err(GmError::config(
                "network.layers",
                format!("must be in [1, 64], got {}", self.layers),
            ));
        }
        check_kernel("network.kernel", self.kernel)?;
        if self.kernel < 3 {
            return Err(GmError::config(
                "network.kernel",
                "must be at least 3: a 1×1 gated stack sees no other pixel",
            ));
        }
        check_width("network.head_channels", self.head_channels)
    }
}

/// A convolution over an asymmetric window, with the padding that keeps the output the size of
/// the input and aligns output (r, c) with the window's last row and, for `right_aligned`, last
/// column.
#[derive(Debug)]
struct WindowConv {
    weight: Tensor,
    bias: Tensor,
    /// Left, right, top, bottom padding.
    pad: [i64; 4],
}

impl WindowConv {
    fn new(
        path: &nn::Path,
        inputs: i64,
        outputs: i64,
        (kh, kw): (i64, i64),
        pad: [i64; 4],
    ) -> Self {
        let bound = 1.0 / ((inputs * kh * kw) as f64).sqrt();
        let init = nn::Init::Uniform {
            lo: -bound,
            up: bound,
        };
        WindowConv {
            weight: path.var("weight", &[outputs, inputs, kh, kw], init),
            bias: path.var("bias", &[outputs], init),
            pad,
        }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.f_constant_pad_nd(self.pad)?.f_conv2d(
            &self.weight,
            Some(&self.bias),
            [1, 1],
            [0, 0],
            [1, 1],
            1,
        )?)
    }
}

/// Shifts `[b, c, h, w]` down one row (zeros enter at the top).
fn shift_down(x: &Tensor) -> Result<Tensor> {
    let h = x.size()[2];
    Ok(x.f_constant_pad_nd([0, 0, 1, 0])?.f_narrow(2, 0, h)?)
}

/// Shifts `[b, c, h, w]` right one column (zeros enter at the left).
fn shift_right(x: &Tensor) -> Result<Tensor> {
    let w = x.size()[3];
    Ok(x.f_constant_pad_nd([1, 0, 0, 0])?.f_narrow(3, 0, w)?)
}

/// `tanh(a) ⊙ σ(b)` over the two halves of the channels.
fn gate(x: &Tensor) -> Result<Tensor> {
    let halves = x.f_chunk(2, 1)?;
    Ok(halves[0].f_tanh()?.f_mul(&halves[1].f_sigmoid()?)?)
}

#[derive(Debug)]
struct GatedLayer {
    vertical: WindowConv,
    horizontal: WindowConv,
    vertical_to_horizontal: nn::Conv2D,
    horizontal_out: nn::Conv2D,
    /// Per-class biases of the vertical and horizontal gates `[classes, 2c]`.
    class_bias: Option<(Tensor, Tensor)>,
    first: bool,
}

impl GatedPixelCnnConfig {
    pub fn parameters(&self, shape: &NetworkShape) -> i128 {
        let (c, k, l) = (
            self.channels as i128,
            self.kernel as i128,
            self.layers as i128,
        );
        let n = k / 2;
        let per_layer = |cin: i128| {
            (cin * 2 * c * (n + 1) * k + 2 * c)
                + (cin * 2 * c * (n + 1) + 2 * c)
                + (2 * c * 2 * c + 2 * c)
                + (c * c + c)
                + 2 * 2 * c * shape.classes as i128
        };
        let head = (c * self.head_channels as i128 + self.head_channels as i128)
            + (self.head_channels as i128 + 1) * shape.params_per_value as i128;
        per_layer(1) + (l - 1) * per_layer(c) + head
    }

    pub fn init(&self, path: &nn::Path, shape: &NetworkShape) -> Result<GatedPixelCnn> {
        self.validate()?;
        let (c, k) = (self.channels, self.kernel);
        let n = k / 2;
        let grid = PixelGrid::new(shape, "gated_pixelcnn", self.layers * n + 1)?;
        let residual_scale = 1.0 / (self.layers as f64).sqrt();
        let layers = (0..self.layers)
            .map(|i| {
                let p = path / format!("layer{i}");
                let cin = if i == 0 { 1 } else { c };
                GatedLayer {
                    // Rows r−n..=r, columns c−n..=c+n.
                    vertical: WindowConv::new(
                        &(&p / "vertical"),
                        cin,
                        2 * c,
                        (n + 1, k),
                        [n, n, n, 0],
                    ),
                    // Columns c−n..=c of the same row.
                    horizontal: WindowConv::new(
                        &(&p / "horizontal"),
                        cin,
                        2 * c,
                        (1, n + 1),
                        [n, 0, 0, 0],
                    ),
                    vertical_to_horizontal: pointwise(&p / "vertical_to_horizontal", 2 * c, 2 * c),
                    // Each layer adds to the horizontal residual stream: branches start scaled
                    // by 1/√layers so the stream's variance does not grow with depth.
                    horizontal_out: pointwise_scaled(&p / "horizontal_out", c, c, residual_scale),
                    class_bias: (shape.classes > 0).then(|| {
                        (
                            p.var(
                                "class_bias_vertical",
                                &[shape.classes, 2 * c],
                                nn::Init::Const(0.0),
                            ),
                            p.var(
                                "class_bias_horizontal",
                                &[shape.classes, 2 * c],
                                nn::Init::Const(0.0),
                            ),
                        )
                    }),
                    first: i == 0,
                }
            })
            .collect();
        Ok(GatedPixelCnn {
            layers,
            head_hidden: pointwise(path / "head_hidden", c, self.head_channels),
            head_out: output_layer(
                path / "head_out",
                self.head_channels,
                shape.params_per_value,
            ),
            grid,
            classes: shape.classes,
            channels: c,
        })
    }
}

#[derive(Debug)]
pub struct GatedPixelCnn {
    layers: Vec<GatedLayer>,
    head_hidden: nn::Conv2D,
    head_out: nn::Conv2D,
    grid: PixelGrid,
    classes: i64,
    channels: i64,
}

impl GatedPixelCnn {
    /// Parameters `[b, P, h, W]` for encoded images `[b, 1, h, W]` (any number of rows h) and,
    /// for a conditional network, labels `[b]`.
    pub fn forward_image(&self, x: &Tensor, labels: Option<&Tensor>) -> Result<Tensor> {
        use gm_core::tch::nn::Module;
        let biases = match (self.classes > 0, labels) {
            (true, Some(y)) => Some(y.f_to_kind(Kind::Int64)?),
            (true, None) => {
                return Err(GmError::Domain(
                    "a class-conditional Gated PixelCNN needs labels".into(),
                ))
            }
            (false, _) => None,
        };
        let (mut v, mut h) = (x.shallow_clone(), x.shallow_clone());
        for layer in &self.layers {
            let mut v_feat = layer.vertical.forward(&v)?;
            let h_in = if layer.first {
                shift_right(&h)?
            } else {
                h.shallow_clone()
            };
            let mut h_feat = layer.horizontal.forward(&h_in)?;
            // The vertical stack's view (rows ≤ r) reaches row r one row late: rows < r.
            h_feat = h_feat.f_add(&layer.vertical_to_horizontal.forward(&shift_down(&v_feat)?))?;
            if let (Some((bv, bh)), Some(y)) = (&layer.class_bias, &biases) {
                let per = |b: &Tensor| -> Result<Tensor> {
                    Ok(b.f_index_select(0, y)?.f_unsqueeze(-1)?.f_unsqueeze(-1)?)
                };
                v_feat = v_feat.f_add(&per(bv)?)?;
                h_feat = h_feat.f_add(&per(bh)?)?;
            }
            v = gate(&v_feat)?;
            let h_out = layer.horizontal_out.forward(&gate(&h_feat)?);
            h = if layer.first { h_out } else { h.f_add(&h_out)? };
        }
        let out = self.head_hidden.forward(&h.f_relu()?);
        Ok(self.head_out.forward(&out.f_relu()?))
    }
}

impl Network for GatedPixelCnn {
    fn forward(&self, x: &Tensor, labels: Option<&Tensor>, order: usize) -> Result<Tensor> {
        self.grid.forward(x, order, "GatedPixelCnn.forward", |img| {
            self.forward_image(img, labels)
        })
    }

    fn orders(&self) -> &[Vec<i64>] {
        self.grid.orders()
    }

    fn activations_per_example(&self) -> i128 {
        self.grid.pixels() as i128
            * (self.channels as i128 * 12 * self.layers.len() as i128
                + 2 * self.grid.params_per_value as i128)
    }

    fn sample_sequential(
        &self,
        n: i64,
        labels: Option<&Tensor>,
        order: usize,
        device: Device,
        draw: &mut dyn FnMut(&Tensor, i64) -> Result<Tensor>,
        encode: &dyn Fn(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        self.grid.sample(
            n,
            order,
            device,
            &|window| self.forward_image(window, labels),
            draw,
            encode,
        )
    }
}
