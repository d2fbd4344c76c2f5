//! PixelRNN's Row LSTM (van den Oord et al., 2016): single-channel images processed a row at a
//! time by LSTM layers whose state is a whole row. Each layer's gates at row r are
//! - input-to-state: a masked 1×k convolution along row r of the layer's input (type A in the
//!   first layer, hiding the pixel itself and those to its right; type B after it), computed for
//!   every row at once; plus
//! - state-to-state: a 1D convolution of width k over the previous row's hidden state,
//!
//! then the usual LSTM update per position. A layer's output is a 1×1 projection of its hidden
//! state added to its input (a residual connection; the first layer has none), and a head (ReLU,
//! 1×1, ReLU, 1×1) gives each pixel's conditional. Each position sees a triangle of the rows above
//! that widens by k/2 per row, and the pixels to its left; not the whole past (a test asserts the
//! causality and that some earlier pixels go unseen).
//!
//! Sampling keeps each layer's state of the finished rows: a pixel costs one pass over its own
//! row per layer (the positions of a row are independent given the row above), not a pass over
//! the image.
//!
//! The Diagonal BiLSTM (`variant = "diagonal_bilstm"`) sees the whole past instead. A 7×7 type-A
//! masked convolution reads the image first; then each layer skews its input (row r shifted r
//! places right) so that the diagonals become columns, and an LSTM runs column by column with a
//! width-2 state-to-state convolution: the state at (r, c) follows those at (r, c − 1) and
//! (r − 1, c). A second LSTM does the same on the mirrored image (right to left), and its output
//! moves down one row so that it reads only rows above; the two are added. Its sampling runs the
//! network on rows `0..=r` for a pixel of row r (nothing depends on later rows).
//!
//! One addition to the paper's layout closes a gap the causality test found: the last pixel of
//! row r − 1 is hidden from most of row r, because the type-A convolution shows it only to the
//! pixels after it (in row r, near the right edge). Since the right-to-left direction's output
//! is only ever read a row lower, its first layer may also read each pixel itself: a 1×1
//! convolution of the image is added to its input, and every earlier pixel is then seen.

use crate::network::{Network, NetworkShape};
use crate::pixelcnn::{
    check_kernel, check_width, output_layer, pointwise, pointwise_scaled, PixelGrid,
};
use gm_core::tch::nn::Module;
use gm_core::tch::{nn, Device, Kind, Tensor};
use gm_core::train::config::Config;
use gm_core::{GmError, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PixelRnnConfig {
    pub variant: PixelRnnVariant,
    /// Hidden (and cell) channels of each LSTM layer.
    pub hidden: i64,
    /// LSTM layers.
    pub layers: i64,
    /// Row LSTM: width k of the input-to-state and state-to-state convolutions (odd). Diagonal
    /// BiLSTM: the size of the first masked k×k convolution.
    pub kernel: i64,
    /// Hidden channels of the 1×1 output head.
    pub head_channels: i64,
}

/// Which PixelRNN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PixelRnnVariant {
    RowLstm,
    DiagonalBilstm,
}

impl Default for PixelRnnConfig {
    fn default() -> Self {
        PixelRnnConfig {
            variant: PixelRnnVariant::RowLstm,
            hidden: 32,
            layers: 4,
            kernel: 3,
            head_channels: 64,
        }
    }
}

impl Config for PixelRnnConfig {
    fn validate(&self) -> Result<()> {
        check_width("network.hidden", self.hidden)?;
        check_width("network.head_channels", self.head_channels)?;
        check_kernel("network.kernel", self.kernel)?;
        if !(1..=64).contains(&self.layers) {
            return Err(GmError::config(
                "network.layers",
                format!("must be in [1, 64], got {}", self.layers),
            ));
        }
        Ok(())
    }
}

impl PixelRnnConfig {
    pub fn parameters(&self, shape: &NetworkShape) -> i128 {
        let (h, k, l) = (
            self.hidden as i128,
            self.kernel as i128,
            self.layers as i128,
        );
        let head = self.head_channels as i128;
        let head = h * head
            + head
            + head * shape.params_per_value as i128
            + shape.params_per_value as i128;
        match self.variant {
            PixelRnnVariant::RowLstm => {
                let layer = |inputs: i128| 4 * h * inputs * k + 4 * h + 4 * h * h * k + h * h + h;
                layer(1) + (l - 1) * layer(h) + head
            }
            PixelRnnVariant::DiagonalBilstm => {
                let direction = 4 * h * h + 4 * h + 4 * h * h * 2;
                (k * k * h + h) + (h + h) + l * (2 * direction + h * h + h) + head
            }
        }
    }

    pub fn init(&self, path: &nn::Path, shape: &NetworkShape) -> Result<Box<dyn Network>> {
        self.validate()?;
        if self.variant == PixelRnnVariant::DiagonalBilstm {
            return Ok(Box::new(self.init_diagonal(path, shape)?));
        }
        // Unbounded reach upwards: sampling keeps the rows' states instead of windows.
        let grid = PixelGrid::new(shape, "pixelrnn", i64::MAX)?;
        let (h, k) = (self.hidden, self.kernel);
        let layers = (0..self.layers)
            .map(|i| {
                let p = path / format!("layer{i}");
                let inputs = if i == 0 { 1 } else { h };
                // Uniform in ±1/√(fan-in of the visible taps), as PixelCNN's masked layers.
                let visible = if i == 0 { k / 2 } else { k / 2 + 1 }.max(1);
                let bound = 1.0 / ((inputs * visible) as f64).sqrt();
                let uniform = |b: f64| nn::Init::Uniform { lo: -b, up: b };
                let mask: Vec<f32> = (0..k)
                    .map(|c| {
                        if c < k / 2 || (c == k / 2 && i > 0) {
                            1.0
                        } else {
                            0.0
                        }
                    })
                    .collect();
                RowLstmLayer {
                    input_to_state: p.var("input_to_state", &[4 * h, inputs, 1, k], uniform(bound)),
                    input_bias: p.var("input_bias", &[4 * h], nn::Init::Const(0.0)),
                    state_to_state: p.var(
                        "state_to_state",
                        &[4 * h, h, k],
                        uniform(1.0 / ((h * k) as f64).sqrt()),
                    ),
                    mask: Tensor::from_slice(&mask)
                        .reshape([1, 1, 1, k])
                        .to_device(path.device()),
                    output: pointwise_scaled(
                        &p / "output",
                        h,
                        h,
                        1.0 / (self.layers as f64).sqrt(),
                    ),
                    residual: i > 0,
                    hidden: h,
                    kernel: k,
                }
            })
            .collect();
        Ok(Box::new(PixelRnn {
            layers,
            head_hidden: pointwise(path / "head_hidden", h, self.head_channels),
            head_out: output_layer(
                path / "head_out",
                self.head_channels,
                shape.params_per_value,
            ),
            grid,
            hidden: h,
        }))
    }

    fn init_diagonal(&self, path: &nn::Path, shape: &NetworkShape) -> Result<DiagonalBiLstm> {
        let grid = PixelGrid::new(shape, "pixelrnn", i64::MAX)?;
        let h = self.hidden;
        let direction = |p: nn::Path| DiagonalLstm {
            input_to_state: pointwise(&p / "input_to_state", h, 4 * h),
            state_to_state: p.var(
                "state_to_state",
                &[4 * h, h, 2],
                nn::Init::Uniform {
                    lo: -1.0 / ((2 * h) as f64).sqrt(),
                    up: 1.0 / ((2 * h) as f64).sqrt(),
                },
            ),
            hidden: h,
        };
        let layers = (0..self.layers)
            .map(|i| {
                let p = path / format!("layer{i}");
                BiLayer {
                    left: direction(&p / "left"),
                    right: direction(&p / "right"),
                    output: pointwise_scaled(
                        &p / "output",
                        h,
                        h,
                        1.0 / (self.layers as f64).sqrt(),
                    ),
                }
            })
            .collect();
        Ok(DiagonalBiLstm {
            first_right: pointwise(path / "first_right", 1, h),
            first: crate::pixelcnn::MaskedConv2d::new(
                &(path / "first"),
                1,
                h,
                self.kernel,
                crate::pixelcnn::MaskType::A,
            ),
            layers,
            head_hidden: pointwise(path / "head_hidden", h, self.head_channels),
            head_out: output_layer(
                path / "head_out",
                self.head_channels,
                shape.params_per_value,
            ),
            grid,
            hidden: h,
        })
    }
}

#[derive(Debug)]
struct RowLstmLayer {
    /// `[4h, inputs, 1, k]`, multiplied by `mask`.
    input_to_state: Tensor,
    input_bias: Tensor,
    /// `[4h, h, k]`.
    state_to_state: Tensor,
    mask: Tensor,
    output: nn::Conv2D,
    residual: bool,
    hidden: i64,
    kernel: i64,
}

impl RowLstmLayer {
    /// The input-to-state part of the gates `[b, 4h, rows, W]` of inputs `[b, C, rows, W]`.
    fn input_gates(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.f_conv2d(
            &self.input_to_state.f_mul(&self.mask)?,
            Some(&self.input_bias),
            [1, 1],
            [0, self.kernel / 2],
            [1, 1],
            1,
        )?)
    }

    /// One row's LSTM update from its input gates `[b, 4h, W]` and the previous row's state
    /// `(h, c)` `[b, h, W]`: the new `(h, c)`.
    fn row(&self, gates: &Tensor, h: &Tensor, c: &Tensor) -> Result<(Tensor, Tensor)> {
        let recurrent = h.f_conv1d(
            &self.state_to_state,
            None::<Tensor>,
            [1],
            [self.kernel / 2],
            [1],
            1,
        )?;
        let parts = gates.f_add(&recurrent)?.f_chunk(4, 1)?;
        let c = parts[1]
            .f_sigmoid()?
            .f_mul(c)?
            .f_add(&parts[0].f_sigmoid()?.f_mul(&parts[2].f_tanh()?)?)?;
        let h = parts[3].f_sigmoid()?.f_mul(&c.f_tanh()?)?;
        Ok((h, c))
    }

    /// The layer's output `[b, h, rows, W]` from its input and its hidden states.
    fn output(&self, input: &Tensor, hidden: &Tensor) -> Result<Tensor> {
        let out = self.output.forward(hidden);
        Ok(if self.residual {
            out.f_add(input)?
        } else {
            out
        })
    }
}

/// The network (see the module documentation).
#[derive(Debug)]
pub struct PixelRnn {
    layers: Vec<RowLstmLayer>,
    head_hidden: nn::Conv2D,
    head_out: nn::Conv2D,
    grid: PixelGrid,
    hidden: i64,
}

impl PixelRnn {
    fn head(&self, x: &Tensor) -> Result<Tensor> {
        let hidden = self.head_hidden.forward(&x.f_relu()?);
        Ok(self.head_out.forward(&hidden.f_relu()?))
    }

    /// Parameters `[b, P, H, W]` for encoded images `[b, 1, H, W]`.
    pub fn forward_image(&self, x: &Tensor) -> Result<Tensor> {
        let size = x.size();
        let (b, rows, w) = (size[0], size[2], size[3]);
        let mut input = x.shallow_clone();
        for layer in &self.layers {
            let gates = layer.input_gates(&input)?;
            let mut h = Tensor::f_zeros([b, layer.hidden, w], (Kind::Float, x.device()))?;
            let mut c = h.f_zeros_like()?;
            let mut hs = Vec::with_capacity(rows as usize);
            for r in 0..rows {
                (h, c) = layer.row(&gates.f_select(2, r)?, &h, &c)?;
                hs.push(h.shallow_clone());
            }
            input = layer.output(&input, &Tensor::f_stack(&hs, 2)?)?;
        }
        self.head(&input)
    }
}

impl Network for PixelRnn {
    fn forward(&self, x: &Tensor, _labels: Option<&Tensor>, order: usize) -> Result<Tensor> {
        self.grid
            .forward(x, order, "PixelRnn.forward", |img| self.forward_image(img))
    }

    fn orders(&self) -> &[Vec<i64>] {
        self.grid.orders()
    }

    fn activations_per_example(&self) -> i128 {
        // Gates, cell and hidden states and the output per layer and pixel.
        self.grid.pixels() as i128 * self.layers.len() as i128 * 8 * self.hidden as i128
    }

    /// Pixel by pixel in raster order; each pixel runs every layer over its own row only,
    /// from the layers' states of the row above, kept when a row is finished.
    fn sample_sequential(
        &self,
        n: i64,
        _labels: Option<&Tensor>,
        order: usize,
        device: Device,
        draw: &mut dyn FnMut(&Tensor, i64) -> Result<Tensor>,
        encode: &dyn Fn(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        crate::network::check_order_index(order, 1)?;
        let zero = Tensor::f_zeros([n, self.hidden, self.grid.width], (Kind::Float, device))?;
        let mut above: Vec<(Tensor, Tensor)> = self
            .layers
            .iter()
            .map(|_| (zero.shallow_clone(), zero.shallow_clone()))
            .collect();
        // Every layer over row r of the image: the head's input and each layer's state.
        let row_pass = |x: &Tensor,
                        r: i64,
                        above: &[(Tensor, Tensor)]|
         -> Result<(Tensor, Vec<(Tensor, Tensor)>)> {
            let mut input = x.f_narrow(2, r, 1)?;
            let mut states = Vec::with_capacity(self.layers.len());
            for (layer, (h, c)) in self.layers.iter().zip(above) {
                let gates = layer.input_gates(&input)?.f_squeeze_dim(2)?;
                let (h, c) = layer.row(&gates, h, c)?;
                input = layer.output(&input, &h.f_unsqueeze(2)?)?;
                states.push((h, c));
            }
            Ok((input, states))
        };
        let mut finished_rows = 0;
        sample_pixels(n, &self.grid, device, draw, encode, |x, r, col| {
            // A new row: the one above is complete, so its states are final.
            while finished_rows < r {
                above = row_pass(x, finished_rows, &above)?.1;
                finished_rows += 1;
            }
            let (top, _) = row_pass(x, r, &above)?;
            self.head(&top.f_narrow(3, col, 1)?)
        })
    }
}

/// Raster-order sampling of a pixel network's grid: `params(x, r, c)` gives the parameters
/// (any shape of `n · P` numbers) of pixel (r, c) from the encoded image `x` `[n, 1, H, W]`,
/// whose pixels before (r, c) are drawn and the rest zero. Returns the values `[n, H·W]`.
fn sample_pixels(
    n: i64,
    grid: &PixelGrid,
    device: Device,
    draw: &mut dyn FnMut(&Tensor, i64) -> Result<Tensor>,
    encode: &dyn Fn(&Tensor) -> Result<Tensor>,
    mut params: impl FnMut(&Tensor, i64, i64) -> Result<Tensor>,
) -> Result<Tensor> {
    let (rows, w) = (grid.height, grid.width);
    let x = Tensor::f_zeros([n, 1, rows, w], (Kind::Float, device))?;
    let values = Tensor::f_zeros([n, rows * w], (Kind::Float, device))?;
    for r in 0..rows {
        for col in 0..w {
            let p = params(&x, r, col)?.f_reshape([n, grid.params_per_value])?;
            let pos = r * w + col;
            let v = draw(&p, pos)?;
            values.f_select(1, pos)?.f_copy_(&v)?;
            x.f_select(2, r)?
                .f_select(2, col)?
                .f_copy_(&encode(&v)?.f_unsqueeze(1)?)?;
        }
    }
    Ok(values)
}

/// One direction of a Diagonal BiLSTM layer, left to right over the skewed image.
#[derive(Debug)]
struct DiagonalLstm {
    input_to_state: nn::Conv2D,
    /// `[4h, h, 2]`: the states of the row above and of the same row, one column back.
    state_to_state: Tensor,
    hidden: i64,
}

// The rows and columns below are taken apart with one `unbind` each, not one `narrow` or
// `select` per row or column: the backward of each of those builds a zero tensor of the whole
// input and adds it in, which made a training step of 64 digits take seconds.

/// Row r shifted r places right: `[b, C, H, W]` → `[b, C, H, W + H − 1]`.
fn skew(x: &Tensor) -> Result<Tensor> {
    let rows = x.size()[2];
    let padded = x.f_constant_pad_nd([0, rows - 1])?; // [b, C, H, W + H − 1]
    let shifted = padded
        .f_unbind(2)?
        .iter()
        .zip(0..)
        .map(|(row, r)| row.f_roll([r], [2]).map_err(Into::into))
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::f_stack(&shifted, 2)?)
}

/// The inverse of [`skew`]: `[b, C, H, W + H − 1]` → `[b, C, H, W]`.
fn unskew(x: &Tensor, w: i64) -> Result<Tensor> {
    let parts = x
        .f_unbind(2)?
        .iter()
        .zip(0..)
        .map(|(row, r)| row.f_narrow(2, r, w).map_err(Into::into))
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::f_stack(&parts, 2)?)
}

impl DiagonalLstm {
    /// Hidden states `[b, h, H, W]` for inputs `[b, h, H, W]`: state (r, c) from the input at
    /// (r, c) and the states at (r, c − 1) and (r − 1, c).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let size = x.size();
        let (b, rows, w) = (size[0], size[2], size[3]);
        let gates = self.input_to_state.forward(&skew(x)?); // [b, 4h, H, W + H − 1]
        let gate_columns = gates.f_unbind(3)?;
        let mut h = Tensor::f_zeros([b, self.hidden, rows], (Kind::Float, x.device()))?;
        let mut c = h.f_zeros_like()?;
        let mut columns = Vec::with_capacity(gate_columns.len());
        for gate_column in &gate_columns {
            // Padding one row on top: output row r reads rows r − 1 and r of the last column.
            let recurrent = h
                .f_conv1d(&self.state_to_state, None::<Tensor>, [1], [1], [1], 1)?
                .f_narrow(2, 0, rows)?;
            let parts = gate_column.f_add(&recurrent)?.f_chunk(4, 1)?;
            c = parts[1]
                .f_sigmoid()?
                .f_mul(&c)?
                .f_add(&parts[0].f_sigmoid()?.f_mul(&parts[2].f_tanh()?)?)?;
            h = parts[3].f_sigmoid()?.f_mul(&c.f_tanh()?)?;
            columns.push(h.shallow_clone());
        }
        unskew(&Tensor::f_stack(&columns, 3)?, w)
    }
}

#[derive(Debug)]
struct BiLayer {
    left: DiagonalLstm,
    right: DiagonalLstm,
    output: nn::Conv2D,
}

/// PixelRNN's Diagonal BiLSTM (see the module documentation).
#[derive(Debug)]
pub struct DiagonalBiLstm {
    first: crate::pixelcnn::MaskedConv2d,
    /// The image itself, for the first right-to-left direction (read a row lower).
    first_right: nn::Conv2D,
    layers: Vec<BiLayer>,
    head_hidden: nn::Conv2D,
    head_out: nn::Conv2D,
    grid: PixelGrid,
    hidden: i64,
}

impl DiagonalBiLstm {
    /// Parameters `[b, P, h, W]` for encoded images `[b, 1, h, W]` (any number of rows h).
    pub fn forward_image(&self, x: &Tensor) -> Result<Tensor> {
        let mut input = self.first.forward(x)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let left = layer.left.forward(&input)?;
            // Right to left: the mirrored image, mirrored back, then one row down so that
            // position (r, c) reads only rows above r.
            let right_input = if i == 0 {
                input.f_add(&self.first_right.forward(x))?
            } else {
                input.shallow_clone()
            };
            let right = layer
                .right
                .forward(&right_input.f_flip([3])?)?
                .f_flip([3])?;
            let rows = right.size()[2];
            let down = Tensor::f_cat(
                &[
                    right.f_narrow(2, 0, 1)?.f_zeros_like()?,
                    right.f_narrow(2, 0, rows - 1)?,
                ],
                2,
            )?;
            input = input.f_add(&layer.output.forward(&left.f_add(&down)?))?;
        }
        let hidden = self.head_hidden.forward(&input.f_relu()?);
        Ok(self.head_out.forward(&hidden.f_relu()?))
    }
}

impl Network for DiagonalBiLstm {
    fn forward(&self, x: &Tensor, _labels: Option<&Tensor>, order: usize) -> Result<Tensor> {
        self.grid
            .forward(x, order, "DiagonalBiLstm.forward", |img| {
                self.forward_image(img)
            })
    }

    fn orders(&self) -> &[Vec<i64>] {
        self.grid.orders()
    }

    fn activations_per_example(&self) -> i128 {
        // Two directions of gates, cells and states over the skewed image, per layer.
        let skewed = self.grid.height as i128 * (self.grid.width + self.grid.height - 1) as i128;
        self.layers.len() as i128 * skewed * 16 * self.hidden as i128
    }

    /// Pixel by pixel; a pixel of row r runs the network on rows `0..=r` only.
    fn sample_sequential(
        &self,
        n: i64,
        _labels: Option<&Tensor>,
        order: usize,
        device: Device,
        draw: &mut dyn FnMut(&Tensor, i64) -> Result<Tensor>,
        encode: &dyn Fn(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        crate::network::check_order_index(order, 1)?;
        sample_pixels(n, &self.grid, device, draw, encode, |x, r, col| {
            self.forward_image(&x.f_narrow(2, 0, r + 1)?)?
                .f_select(2, r)?
                .f_select(2, col)
                .map_err(Into::into)
        })
    }
}
