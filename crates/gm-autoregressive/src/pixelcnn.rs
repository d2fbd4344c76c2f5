//! PixelCNN (van den Oord et al., 2016, "Pixel Recurrent Neural Networks"): masked
//! convolutions over an image in raster order. The first layer's mask (type A) hides the centre
//! pixel, later ones (type B) show it; residual blocks of a 1×1 bottleneck, a masked k×k
//! convolution and a 1×1 expansion; a 1×1 head to P numbers per value.
//!
//! Colour images (C > 1 channels) are generated pixel by pixel and, within a pixel, channel by
//! channel (R, then G given R, then B given R and G): every feature map is split into C groups
//! (feature `i` belongs to channel `i mod C`), and at the centre tap a feature of group g sees
//! input groups below g (type A) or up to g (type B), the 1×1 layers included; earlier pixels
//! are seen in full ([`colour_mask`]).
//!
//! The stack of masked convolutions has a blind spot (pixels up and to the right that no path
//! reaches); [`crate::gated`] removes it.
//!
//! Sampling recomputes only a window: the value at (r, c) depends on rows `r − R..=r` and
//! columns `c − R..=c + R` (R the network's reach), so each value costs a pass over that
//! window rather than the whole image (C passes per pixel of a colour image), with outputs identical to a full pass
//! ([`sample_raster`]).

use crate::network::{
    check_input, check_order_index, image_shape, raster_order, Network, NetworkShape,
};
use gm_core::tch::{nn, Device, Kind, Tensor};
use gm_core::train::config::Config;
use gm_core::{GmError, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PixelCnnConfig {
    /// Width of the residual stream (for C colour channels, at least 2·C: the blocks halve it
    /// and every feature map has one group per channel).
    pub channels: i64,
    /// Residual blocks after the first (type A) layer.
    pub blocks: i64,
    /// Kernel size of the first layer (odd).
    pub first_kernel: i64,
    /// Kernel size inside the residual blocks (odd).
    pub kernel: i64,
    /// Hidden channels of the 1×1 output head (at least C for C colour channels).
    pub head_channels: i64,
}

impl Default for PixelCnnConfig {
    fn default() -> Self {
        PixelCnnConfig {
            channels: 64,
            blocks: 5,
            first_kernel: 7,
            kernel: 3,
            head_channels: 64,
        }
    }
}

pub(crate) fn check_kernel(key: &str, k: i64) -> Result<()> {
    if k < 1 || k % 2 == 0 || k > 31 {
        return Err(GmError::config(
            key,
            format!("must be an odd size in [1, 31], got {k}"),
        ));
    }
    Ok(())
}

pub(crate) fn check_width(key: &str, w: i64) -> Result<()> {
    if !(1..=4096).contains(&w) {
        return Err(GmError::config(
            key,
            format!("must be in [1, 4096], got {w}"),
        ));
    }
    Ok(())
}

impl Config for PixelCnnConfig {
    fn validate(&self) -> Result<()> {
        if self.channels < 2 || self.channels % 2 != 0 || self.channels > 4096 {
            return Err(GmError::config(
                "network.channels",
                format!(
                    "must be even, in [2, 4096] (the blocks halve it), got {}",
                    self.channels
                ),
            ));
        }
        if !(0..=64).contains(&self.blocks) {
            return Err(GmError::config(
                "network.blocks",
                format!("must be in [0, 64], got {}", self.blocks),
            ));
        }
        check_kernel("network.first_kernel", self.first_kernel)?;
        if self.first_kernel < 3 {
            return Err(GmError::config(
                "network.first_kernel",
                "must be at least 3: a 1×1 type-A mask sees no pixel",
            ));
        }
        check_kernel("network.kernel", self.kernel)?;
        check_width("network.head_channels", self.head_channels)
    }
}

/// The single-channel image `[C = 1, H, W]` a pixel model needs; colour images (which need
/// masks across channels too) are refused naming `network.kind`.
pub(crate) fn grey_image(shape: &NetworkShape, kind: &str) -> Result<(i64, i64)> {
    let (c, h, w) = image_shape(shape.data, kind)?;
    if c != 1 {
        return Err(GmError::config(
            "network.kind",
            format!("{kind} here models single-channel images; this data set has {c} channels"),
        ));
    }
    Ok((h, w))
}

/// What the pixel networks share: the image size and channels, the generation order, the
/// parameters per value and the reach, with the flattening [`Network::forward`] needs and
/// window sampling.
#[derive(Debug)]
pub struct PixelGrid {
    /// Colour channels C (1 for the networks that model single-channel images only).
    pub colours: i64,
    pub height: i64,
    pub width: i64,
    pub params_per_value: i64,
    /// Rows above (and columns either side of) a pixel that can reach it.
    pub reach: i64,
    orders: Vec<Vec<i64>>,
}

impl PixelGrid {
    /// The grid of a single-channel image network `kind` for `shape`, with `reach`.
    pub fn new(shape: &NetworkShape, kind: &str, reach: i64) -> Result<Self> {
        let (height, width) = grey_image(shape, kind)?;
        Ok(PixelGrid {
            colours: 1,
            height,
            width,
            params_per_value: shape.params_per_value,
            reach,
            orders: vec![raster_order(height * width)],
        })
    }

    /// The grid of an image network that also models colour images `[C, H, W]`, generated
    /// pixel by pixel and channel by channel within a pixel ([`colour_raster_order`]).
    pub fn with_colours(shape: &NetworkShape, kind: &str, reach: i64) -> Result<Self> {
        let (colours, height, width) = image_shape(shape.data, kind)?;
        Ok(PixelGrid {
            colours,
            height,
            width,
            params_per_value: shape.params_per_value,
            reach,
            orders: vec![colour_raster_order(colours, height, width)],
        })
    }

    pub fn pixels(&self) -> i64 {
        self.height * self.width
    }

    /// Values per image, `C·H·W`.
    pub fn values(&self) -> i64 {
        self.colours * self.pixels()
    }

    pub fn orders(&self) -> &[Vec<i64>] {
        &self.orders
    }

    /// [`Network::forward`] through an image network: checks `x` `[b, C·H·W]` and `order`,
    /// runs `image_forward` on `[b, C, H, W]` (whose output channel `p·C + g` holds parameter
    /// p of channel g), returns `[b, P, C·H·W]`.
    pub fn forward(
        &self,
        x: &Tensor,
        order: usize,
        what: &str,
        image_forward: impl Fn(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        check_order_index(order, self.orders.len())?;
        let b = check_input(x, self.values(), what)?;
        let img = x.f_reshape([b, self.colours, self.height, self.width])?;
        Ok(image_forward(&img)?.f_reshape([b, self.params_per_value, self.values()])?)
    }

    /// [`Network::sample_sequential`] by windows ([`sample_raster`]).
    pub fn sample(
        &self,
        n: i64,
        order: usize,
        device: Device,
        image_forward: &dyn Fn(&Tensor) -> Result<Tensor>,
        draw: &mut dyn FnMut(&Tensor, i64) -> Result<Tensor>,
        encode: &dyn Fn(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        check_order_index(order, self.orders.len())?;
        sample_raster(
            n,
            (self.colours, self.height, self.width),
            self.reach,
            device,
            image_forward,
            draw,
            encode,
        )
    }
}

/// Which pixels a masked kernel sees: rows above the centre, and in the centre row the pixels
/// to its left; type B also the centre.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskType {
    A,
    B,
}

/// The generation order of a colour image `[C, H, W]` (values stored channel-major): pixels in
/// raster order and, within a pixel, channels in order. For C = 1 the raster order.
pub fn colour_raster_order(colours: i64, height: i64, width: i64) -> Vec<i64> {
    let pixels = height * width;
    (0..pixels)
        .flat_map(|pixel| (0..colours).map(move |g| g * pixels + pixel))
        .collect()
}

/// The mask `[outputs, inputs, k, k]` of a k×k kernel over images of `colours` channels:
/// earlier pixels in full (the taps [`raster_mask`] shows off the centre) and, at the centre
/// tap, input feature `i` (of channel group `i mod C`) reaches output feature `o` (group
/// `o mod C`) when its group is below (type A) or at most (type B) the output's.
pub fn colour_mask(k: i64, kind: MaskType, inputs: i64, outputs: i64, colours: i64) -> Tensor {
    // Callers pass the channels of an image, checked positive by `image_shape`.
    let colours = colours.max(1);
    let centre = k / 2;
    // Off the centre: the rows above and, in the centre row, the columns to its left.
    let earlier = |tap: i64| tap / k < centre || (tap / k == centre && tap % k < centre);
    let mut values = Vec::with_capacity((outputs * inputs * k * k).max(0) as usize);
    for o in 0..outputs {
        for i in 0..inputs {
            let (g_out, g_in) = (o % colours, i % colours);
            let centre_seen = match kind {
                MaskType::A => g_in < g_out,
                MaskType::B => g_in <= g_out,
            };
            for tap in 0..k * k {
                let seen = if tap == centre * k + centre {
                    centre_seen
                } else {
                    earlier(tap)
                };
                values.push(if seen { 1.0f32 } else { 0.0 });
            }
        }
    }
    Tensor::from_slice(&values).reshape([outputs, inputs, k, k])
}

/// The mask `[1, 1, k, k]` of a k×k kernel.
pub fn raster_mask(k: i64, kind: MaskType) -> Tensor {
    let c = k / 2;
    let values: Vec<f32> = (0..k * k)
        .map(|i| {
            let (r, col) = (i / k, i % k);
            let seen = r < c || (r == c && (col < c || (col == c && kind == MaskType::B)));
            if seen {
                1.0
            } else {
                0.0
            }
        })
        .collect();
    Tensor::from_slice(&values).reshape([1, 1, k, k])
}

/// A k×k convolution whose kernel is multiplied by a raster mask.
#[derive(Debug)]
pub struct MaskedConv2d {
    weight: Tensor,
    bias: Tensor,
    mask: Tensor,
    padding: i64,
}

impl MaskedConv2d {
    /// Initialised uniformly in ±1/√(fan-in of the visible taps).
    pub fn new(path: &nn::Path, inputs: i64, outputs: i64, k: i64, kind: MaskType) -> Self {
        let mask = raster_mask(k, kind).to_device(path.device());
        let visible = mask.sum(Kind::Float).double_value(&[]).max(1.0);
        let bound = 1.0 / (inputs as f64 * visible).sqrt();
        let init = nn::Init::Uniform {
            lo: -bound,
            up: bound,
        };
        MaskedConv2d {
            weight: path.var("weight", &[outputs, inputs, k, k], init),
            bias: path.var("bias", &[outputs], init),
            mask,
            padding: k / 2,
        }
    }

    /// A layer over images of `colours` channels ([`colour_mask`]), initialised uniformly in
    /// ±`scale`/√(mean fan-in of the visible weights); the bias likewise, or zero.
    pub fn with_colours(
        path: &nn::Path,
        (inputs, outputs, k): (i64, i64, i64),
        kind: MaskType,
        colours: i64,
        scale: f64,
        zero_bias: bool,
    ) -> Self {
        let mask = colour_mask(k, kind, inputs, outputs, colours).to_device(path.device());
        let fan_in = (mask.sum(Kind::Float).double_value(&[]) / outputs as f64).max(1.0);
        let bound = scale / fan_in.sqrt();
        let init = nn::Init::Uniform {
            lo: -bound,
            up: bound,
        };
        MaskedConv2d {
            weight: path.var("weight", &[outputs, inputs, k, k], init),
            bias: path.var(
                "bias",
                &[outputs],
                if zero_bias {
                    nn::Init::Const(0.0)
                } else {
                    init
                },
            ),
            mask,
            padding: k / 2,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.f_conv2d(
            &self.weight.f_mul(&self.mask)?,
            Some(&self.bias),
            [1, 1],
            [self.padding, self.padding],
            [1, 1],
            1,
        )?)
    }
}

/// A 1×1 convolution, initialised uniformly in ±1/√inputs (weights and bias). The library's
/// default Kaiming init (gain √2 for ReLU) makes an untrained PixelCNN's logits so large that it
/// starts hundreds of nats above the uniform model.
pub(crate) fn pointwise(path: nn::Path, inputs: i64, outputs: i64) -> nn::Conv2D {
    pointwise_scaled(path, inputs, outputs, 1.0)
}

/// The output layer of a pixel network: a 1×1 convolution whose weights start at a tenth of
/// [`pointwise`]'s and whose bias starts at zero. Binarised digits are 87% background, so even
/// a constant logit of 0.1 costs 30 nats; starting near zero puts an untrained model within a
/// few nats of the uniform model, while a residual stream that grows with depth still shows
/// (the init test catches it).
pub(crate) fn output_layer(path: nn::Path, inputs: i64, outputs: i64) -> nn::Conv2D {
    let bound = 0.1 / (inputs as f64).sqrt();
    let config = nn::ConvConfig {
        ws_init: nn::Init::Uniform {
            lo: -bound,
            up: bound,
        },
        bs_init: nn::Init::Const(0.0),
        ..Default::default()
    };
    nn::conv2d(path, inputs, outputs, 1, config)
}

/// [`pointwise`] with its initial weights scaled by `scale` (residual branches).
pub(crate) fn pointwise_scaled(
    path: nn::Path,
    inputs: i64,
    outputs: i64,
    scale: f64,
) -> nn::Conv2D {
    let bound = scale / (inputs as f64).sqrt();
    let init = nn::Init::Uniform {
        lo: -bound,
        up: bound,
    };
    let config = nn::ConvConfig {
        ws_init: init,
        bs_init: init,
        ..Default::default()
    };
    nn::conv2d(path, inputs, outputs, 1, config)
}

impl PixelCnnConfig {
    pub fn parameters(&self, shape: &NetworkShape) -> i128 {
        let colours = match shape.data.event_shape.as_slice() {
            [c, _, _] => *c as i128,
            _ => 1,
        };
        let (c, b, h) = (
            self.channels as i128,
            self.blocks as i128,
            self.head_channels as i128,
        );
        let (k1, k) = (self.first_kernel as i128, self.kernel as i128);
        let half = c / 2;
        let outputs = shape.params_per_value as i128 * colours;
        let first = c * colours * k1 * k1 + c;
        let block = (c * half + half) + (half * half * k * k + half) + (half * c + c);
        let head = (c * h + h) + (h * outputs + outputs);
        first + b * block + head
    }

    pub fn init(&self, path: &nn::Path, shape: &NetworkShape) -> Result<PixelCnn> {
        self.validate()?;
        let grid = PixelGrid::with_colours(
            shape,
            "pixelcnn",
            self.first_kernel / 2 + self.blocks * (self.kernel / 2),
        )?;
        let colours = grid.colours;
        let c = self.channels;
        let half = c / 2;
        if colours > 1 && (half < colours || self.head_channels < colours) {
            return Err(GmError::config(
                if half < colours {
                    "network.channels"
                } else {
                    "network.head_channels"
                },
                format!(
                    "a colour PixelCNN splits its features into one group per channel: needs \
                     channels / 2 and head_channels of at least {colours}, got {} and {}",
                    half, self.head_channels
                ),
            ));
        }
        let outputs = shape.params_per_value * colours;
        // Single-channel images keep plain 1×1 convolutions; colour ones mask them too, so a
        // channel's features see the pixel's earlier channels only.
        let pointwise_layer = |p: nn::Path, inputs: i64, out: i64| -> Pointwise {
            if colours == 1 {
                Pointwise::Plain(pointwise(p, inputs, out))
            } else {
                Pointwise::Masked(MaskedConv2d::with_colours(
                    &p,
                    (inputs, out, 1),
                    MaskType::B,
                    colours,
                    1.0,
                    false,
                ))
            }
        };
        let first = if colours == 1 {
            MaskedConv2d::new(&(path / "first"), 1, c, self.first_kernel, MaskType::A)
        } else {
            MaskedConv2d::with_colours(
                &(path / "first"),
                (colours, c, self.first_kernel),
                MaskType::A,
                colours,
                1.0,
                false,
            )
        };
        let blocks = (0..self.blocks)
            .map(|i| {
                let p = path / format!("block{i}");
                // Created in the order reduce, conv, expand (the generator's draws, so a seed
                // gives the same weights as before colour images were modelled).
                let reduce = pointwise_layer(&p / "reduce", c, half);
                let conv = if colours == 1 {
                    MaskedConv2d::new(&(&p / "conv"), half, half, self.kernel, MaskType::B)
                } else {
                    MaskedConv2d::with_colours(
                        &(&p / "conv"),
                        (half, half, self.kernel),
                        MaskType::B,
                        colours,
                        1.0,
                        false,
                    )
                };
                let expand = pointwise_layer(&p / "expand", half, c);
                ResidualBlock {
                    reduce,
                    conv,
                    expand,
                }
            })
            .collect();
        let head_hidden = pointwise_layer(path / "head_hidden", c, self.head_channels);
        let head_out = if colours == 1 {
            Pointwise::Plain(output_layer(path / "head_out", self.head_channels, outputs))
        } else {
            // A tenth of the usual scale and a zero bias, as `output_layer`.
            Pointwise::Masked(MaskedConv2d::with_colours(
                &(path / "head_out"),
                (self.head_channels, outputs, 1),
                MaskType::B,
                colours,
                0.1,
                true,
            ))
        };
        Ok(PixelCnn {
            first,
            blocks,
            head_hidden,
            head_out,
            grid,
            channels: c,
        })
    }
}

/// A 1×1 convolution: plain for single-channel images, masked across channel groups for
/// colour ones.
#[derive(Debug)]
enum Pointwise {
    Plain(nn::Conv2D),
    Masked(MaskedConv2d),
}

impl Pointwise {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        use gm_core::tch::nn::Module;
        match self {
            Pointwise::Plain(conv) => Ok(conv.forward(x)),
            Pointwise::Masked(conv) => conv.forward(x),
        }
    }
}

#[derive(Debug)]
struct ResidualBlock {
    reduce: Pointwise,
    conv: MaskedConv2d,
    expand: Pointwise,
}

#[derive(Debug)]
pub struct PixelCnn {
    first: MaskedConv2d,
    blocks: Vec<ResidualBlock>,
    head_hidden: Pointwise,
    head_out: Pointwise,
    grid: PixelGrid,
    channels: i64,
}

impl PixelCnn {
    /// Parameters `[b, P·C, h, W]` (channel `p·C + g` is parameter p of colour g) for encoded
    /// images `[b, C, h, W]` (any number of rows h).
    pub fn forward_image(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = gm_core::nn::channels_last(&self.first.forward(x)?)?;
        // ReLUs of convolution outputs run in place (a convolution's backward needs its input,
        // not its output); the residual stream itself is read again, so its ReLU is a copy.
        for block in &self.blocks {
            let mut r = block.reduce.forward(&h.f_relu()?)?;
            let _ = r.f_relu_()?;
            let mut r = block.conv.forward(&r)?;
            let _ = r.f_relu_()?;
            r = block.expand.forward(&r)?;
            h = h.f_add(&r)?;
        }
        let mut out = self.head_hidden.forward(&h.f_relu()?)?;
        let _ = out.f_relu_()?;
        self.head_out.forward(&out)
    }
}

impl Network for PixelCnn {
    fn forward(&self, x: &Tensor, _labels: Option<&Tensor>, order: usize) -> Result<Tensor> {
        self.grid
            .forward(x, order, "PixelCnn.forward", |img| self.forward_image(img))
    }

    fn orders(&self) -> &[Vec<i64>] {
        self.grid.orders()
    }

    fn activations_per_example(&self) -> i128 {
        self.grid.pixels() as i128
            * (self.channels as i128 * (3 + 3 * self.blocks.len() as i128)
                + 2 * (self.grid.params_per_value * self.grid.colours) as i128)
    }

    fn sample_sequential(
        &self,
        n: i64,
        _labels: Option<&Tensor>,
        order: usize,
        device: Device,
        draw: &mut dyn FnMut(&Tensor, i64) -> Result<Tensor>,
        encode: &dyn Fn(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        self.grid.sample(
            n,
            order,
            device,
            &|window| self.forward_image(window),
            draw,
            encode,
        )
    }
}

/// Raster-order sampling of `colours × height × width` images (channels in order within each
/// pixel) with a network whose output at (r, c) depends only on input rows `r − reach..=r` and
/// columns `c − reach..=c + reach`: each value runs `forward` (encoded images
/// `[n, C, rows, cols]` → parameters `[n, P·C, rows, cols]`, channel `p·C + g` holding
/// parameter p of colour g) on that window alone. Every value the window's output at (r, c) is
/// built from lies inside the window with its own inputs, so it equals a pass over the whole
/// image (the padding at the window's edges reaches nothing that (r, c) depends on). Returns
/// the drawn values `[n, C·H·W]`, stored channel-major.
pub fn sample_raster(
    n: i64,
    (colours, height, width): (i64, i64, i64),
    reach: i64,
    device: Device,
    forward: &dyn Fn(&Tensor) -> Result<Tensor>,
    draw: &mut dyn FnMut(&Tensor, i64) -> Result<Tensor>,
    encode: &dyn Fn(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let image = Tensor::f_zeros([n, colours, height, width], (Kind::Float, device))?;
    let values = Tensor::f_zeros([n, colours * height * width], (Kind::Float, device))?;
    for r in 0..height {
        let top = (r - reach).max(0);
        for c in 0..width {
            let left = (c - reach).max(0);
            let right = (c + reach + 1).min(width);
            for g in 0..colours {
                let window =
                    image
                        .f_narrow(2, top, r - top + 1)?
                        .f_narrow(3, left, right - left)?;
                let out = forward(&window)?
                    .f_select(2, r - top)?
                    .f_select(2, c - left)?; // [n, P·C]
                let params = out.f_reshape([n, -1, colours])?.f_select(2, g)?; // [n, P]
                let pos = (g * height + r) * width + c;
                let v = draw(&params, pos)?;
                values.f_select(1, pos)?.f_copy_(&v)?;
                image
                    .f_select(1, g)?
                    .f_select(1, r)?
                    .f_select(1, c)?
                    .f_copy_(&encode(&v)?)?;
            }
        }
    }
    Ok(values)
}
