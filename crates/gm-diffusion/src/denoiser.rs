//! The denoising networks: an MLP for vectors (and flattened images) and a small U-Net for
//! images. Both take the noisy example, the integer step and optionally a class label (the
//! extra index `classes` is the "no label" token of classifier-free guidance) and return
//! `outputs_per_value` predictions per data value (2 with learned variances), flattened per
//! example as `[b, outputs_per_value · values]`, the first block being the mean prediction.

use gm_core::tch::{nn, Device, Kind, Tensor};
use gm_core::train::config::Config;
use gm_core::{GmError, Result};
use serde::{Deserialize, Serialize};

/// Which network denoises.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum DenoiserConfig {
    /// `[x, step embedding]` through `hidden` layers with SiLU, the step's embedding added to
    /// every layer; any event shape (flattened).
    Mlp {
        hidden: Vec<i64>,
        /// Width of the sinusoidal step embedding.
        time_embedding: i64,
    },
    /// A U-Net for images `[c, h, w]`: one residual block (group norm, SiLU, 3×3 convolutions,
    /// the step embedding added in between) per resolution on the way down and up, skip
    /// connections between them, stride-2 convolutions down and nearest-neighbour ×2 up; at the
    /// lowest resolution two residual blocks around a self-attention layer. `channels` at full
    /// resolution, times `multipliers[i]` at the i-th (h and w divisible by 2^(levels − 1)).
    Unet {
        channels: i64,
        multipliers: Vec<i64>,
        attention: bool,
    },
}

impl Default for DenoiserConfig {
    fn default() -> Self {
        DenoiserConfig::Mlp {
            hidden: vec![128, 128, 128],
            time_embedding: 64,
        }
    }
}

/// Group-norm groups: channels are multiples of 8 (checked by `validate`).
const GROUPS: i64 = 8;

impl Config for DenoiserConfig {
    fn validate(&self) -> Result<()> {
        match self {
            DenoiserConfig::Mlp {
                hidden,
                time_embedding,
            } => {
                if hidden.is_empty() || hidden.iter().any(|&h| !(1..=1 << 20).contains(&h)) {
                    return Err(GmError::config(
                        "hidden",
                        format!(
                            "need at least one layer, each of width in [1, 2^20], got {hidden:?}"
                        ),
                    ));
                }
                if !(2..=1 << 16).contains(time_embedding) || time_embedding % 2 != 0 {
                    return Err(GmError::config(
                        "time_embedding",
                        format!("must be even and in [2, 65536], got {time_embedding}"),
                    ));
                }
            }
            DenoiserConfig::Unet {
                channels,
                multipliers,
                ..
            } => {
                if !(GROUPS..=4096).contains(channels) || channels % GROUPS != 0 {
                    return Err(GmError::config(
                        "channels",
                        format!(
                            "must be a multiple of {GROUPS} in [{GROUPS}, 4096], got {channels}"
                        ),
                    ));
                }
                if !(1..=5).contains(&multipliers.len())
                    || multipliers.iter().any(|&m| !(1..=16).contains(&m))
                {
                    return Err(GmError::config(
                        "multipliers",
                        format!(
                            "need 1 to 5 levels, each a multiplier in [1, 16], got {multipliers:?}"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl DenoiserConfig {
    /// Checks that the network can take examples of `event_shape`.
    pub fn check_fits(&self, event_shape: &[i64]) -> Result<()> {
        if let DenoiserConfig::Unet { multipliers, .. } = self {
            let factor = 1i64 << (multipliers.len() - 1);
            match event_shape {
                [_, h, w] if h % factor == 0 && w % factor == 0 => {}
                _ => {
                    return Err(GmError::config(
                        "denoiser",
                        format!(
                            "a U-Net of {} levels needs images [c, h, w] with h and w divisible by {factor}, got examples of shape {event_shape:?}",
                            multipliers.len()
                        ),
                    ))
                }
            }
        }
        Ok(())
    }

    /// The width of the step (and label) embedding the network adds to its layers.
    fn embedding_width(&self) -> i64 {
        match self {
            DenoiserConfig::Mlp { time_embedding, .. } => *time_embedding,
            DenoiserConfig::Unet { channels, .. } => 4 * channels,
        }
    }

    /// Trainable scalars for examples of `event_shape`, `outputs_per_value` outputs per value and
    /// `label_rows` rows of label embedding (0 for an unconditional network), before allocation.
    pub fn parameters(&self, event_shape: &[i64], outputs_per_value: i64, label_rows: i64) -> i128 {
        self.parameters_with_inputs(event_shape, 1, outputs_per_value, label_rows)
    }

    /// [`DenoiserConfig::parameters`] for a network that takes `inputs_per_value` numbers per
    /// data value (e.g. a value and a mask flag).
    pub fn parameters_with_inputs(
        &self,
        event_shape: &[i64],
        inputs_per_value: i64,
        outputs_per_value: i64,
        label_rows: i64,
    ) -> i128 {
        let linear = |i: i64, o: i64| (i as i128) * (o as i128) + o as i128;
        let conv = |i: i64, o: i64, k: i64| (k * k) as i128 * i as i128 * o as i128 + o as i128;
        let values: i64 = event_shape.iter().product();
        let emb = self.embedding_width();
        let labels = label_rows as i128 * emb as i128;
        match self {
            DenoiserConfig::Mlp {
                hidden,
                time_embedding,
            } => {
                let mut total = linear(*time_embedding, emb) + labels;
                let mut width = values * inputs_per_value;
                for &h in hidden {
                    total += linear(width, h) + linear(emb, h);
                    width = h;
                }
                total + linear(width, outputs_per_value * values)
            }
            DenoiserConfig::Unet {
                channels,
                multipliers,
                attention,
            } => {
                let c_in = event_shape.first().copied().unwrap_or(1);
                let res = |i: i64, o: i64| {
                    2 * i as i128
                        + conv(i, o, 3)
                        + linear(emb, o)
                        + 2 * o as i128
                        + conv(o, o, 3)
                        + if i != o { conv(i, o, 1) } else { 0 }
                };
                let widths: Vec<i64> = multipliers.iter().map(|m| m * channels).collect();
                let mut total = linear(*channels, emb) + linear(emb, emb) + labels;
                total += conv(c_in * inputs_per_value, *channels, 3);
                let mut width = *channels;
                for (i, &w) in widths.iter().enumerate() {
                    total += res(width, w);
                    width = w;
                    if i + 1 < widths.len() {
                        total += conv(w, w, 3);
                    }
                }
                total += 2 * res(width, width);
                if *attention {
                    total += 2 * width as i128 + conv(width, 3 * width, 1) + conv(width, width, 1);
                }
                for (i, &w) in widths.iter().enumerate().rev() {
                    total += res(width + w, w);
                    width = w;
                    if i > 0 {
                        total += conv(w, w, 3);
                    }
                }
                total + 2 * width as i128 + conv(width, outputs_per_value * c_in, 3)
            }
        }
    }

    /// Activation values one example keeps in a forward pass (layer outputs), for the memory
    /// budget of a batch.
    pub fn activations_per_example(&self, event_shape: &[i64]) -> i128 {
        let values: i128 = event_shape.iter().map(|&d| d as i128).product();
        match self {
            DenoiserConfig::Mlp { hidden, .. } => {
                3 * hidden.iter().map(|&h| h as i128).sum::<i128>() + 3 * values
            }
            DenoiserConfig::Unet {
                channels,
                multipliers,
                attention,
            } => {
                let (h, w) = match event_shape {
                    [_, h, w] => (*h as i128, *w as i128),
                    _ => (1, values),
                };
                let mut total = 4 * values;
                for (i, m) in multipliers.iter().enumerate() {
                    let pixels = (h >> i) * (w >> i);
                    // Down and up blocks, each about eight maps of this width (norms,
                    // activations, convolutions, the concatenated skip).
                    total += 16 * pixels * (*m * channels) as i128;
                }
                if *attention {
                    let last = multipliers.len() - 1;
                    let pixels = (h >> last) * (w >> last);
                    total +=
                        2 * pixels * pixels + 6 * pixels * (multipliers[last] * channels) as i128;
                }
                total
            }
        }
    }

    /// The network under `path`, for examples of `event_shape`; `classes > 0` adds a label
    /// embedding with `classes + 1` rows (the last is "no label").
    pub fn init(
        &self,
        path: &nn::Path,
        event_shape: &[i64],
        outputs_per_value: i64,
        classes: i64,
    ) -> Result<Denoiser> {
        self.init_with_inputs(path, event_shape, 1, outputs_per_value, classes)
    }

    /// [`DenoiserConfig::init`] for a network that takes `inputs_per_value` numbers per data
    /// value, stacked as `[b, inputs_per_value · c, h, w]` for images (or flattened to
    /// `[b, inputs_per_value · values]` for the MLP).
    pub fn init_with_inputs(
        &self,
        path: &nn::Path,
        event_shape: &[i64],
        inputs_per_value: i64,
        outputs_per_value: i64,
        classes: i64,
    ) -> Result<Denoiser> {
        self.validate()?;
        self.check_fits(event_shape)?;
        let emb = self.embedding_width();
        let (time_width, time_in) = match self {
            DenoiserConfig::Mlp { time_embedding, .. } => (*time_embedding, *time_embedding),
            DenoiserConfig::Unet { channels, .. } => (*channels, *channels),
        };
        let time = TimeEmbedding {
            width: time_width,
            first: nn::linear(path / "time_in", time_in, emb, Default::default()),
            second: match self {
                DenoiserConfig::Unet { .. } => {
                    Some(nn::linear(path / "time_out", emb, emb, Default::default()))
                }
                DenoiserConfig::Mlp { .. } => None,
            },
        };
        let labels = if classes > 0 {
            Some(path.f_var(
                "label_embedding",
                &[classes + 1, emb],
                nn::Init::Randn {
                    mean: 0.0,
                    stdev: 1.0,
                },
            )?)
        } else {
            None
        };
        let values: i64 = event_shape.iter().product();
        let body = match self {
            DenoiserConfig::Mlp { hidden, .. } => {
                let mut layers = Vec::new();
                let mut width = values * inputs_per_value;
                for (i, &h) in hidden.iter().enumerate() {
                    layers.push((
                        nn::linear(path / format!("layer{i}"), width, h, Default::default()),
                        nn::linear(path / format!("layer{i}_time"), emb, h, Default::default()),
                    ));
                    width = h;
                }
                let out = zero_linear(path / "out", width, outputs_per_value * values)?;
                Body::Mlp { layers, out }
            }
            DenoiserConfig::Unet {
                channels,
                multipliers,
                attention,
            } => Body::Unet(Box::new(Unet::new(
                path,
                ValueChannels {
                    image: event_shape[0],
                    inputs_per_value,
                    outputs_per_value,
                },
                *channels,
                multipliers,
                *attention,
                emb,
            )?)),
        };
        Ok(Denoiser {
            event_shape: event_shape.to_vec(),
            outputs_per_value,
            time,
            labels,
            body,
        })
    }
}

fn zero_linear(path: nn::Path, inputs: i64, outputs: i64) -> Result<nn::Linear> {
    let layer = nn::linear(path, inputs, outputs, Default::default());
    zero_weights(&layer.ws, layer.bs.as_ref())?;
    Ok(layer)
}

/// Sets a layer's weights and bias to zero: the untrained network predicts 0 everywhere (for
/// ε-prediction, a loss of exactly one per value) instead of a random field.
fn zero_weights(ws: &Tensor, bs: Option<&Tensor>) -> Result<()> {
    gm_core::tch::no_grad(|| -> Result<()> {
        let _ = ws.shallow_clone().f_zero_()?;
        if let Some(b) = bs {
            let _ = b.shallow_clone().f_zero_()?;
        }
        Ok(())
    })
}

fn linear(layer: &nn::Linear, x: &Tensor) -> Result<Tensor> {
    Ok(x.f_linear(&layer.ws, layer.bs.as_ref())?)
}

/// Sinusoidal features of the steps `t` (`[b]`, any real dtype): `width / 2` frequencies from 1
/// to 1/10000, sines then cosines (Vaswani et al. 2017). Steps are measured on a 1000-step
/// scale so the features do not depend on T.
pub fn sinusoidal_embedding(t: &Tensor, width: i64) -> Result<Tensor> {
    let half = width / 2;
    let device = t.device();
    let freqs = Tensor::f_arange(half, (Kind::Float, device))?
        .f_mul_scalar(-(10_000f64.ln()) / half.max(1) as f64)?
        .f_exp()?;
    let args = t
        .f_to_kind(Kind::Float)?
        .f_unsqueeze(1)?
        .f_mul(&freqs.f_unsqueeze(0)?)?;
    Ok(Tensor::f_cat(&[args.f_sin()?, args.f_cos()?], 1)?)
}

#[derive(Debug)]
struct TimeEmbedding {
    width: i64,
    first: nn::Linear,
    second: Option<nn::Linear>,
}

impl TimeEmbedding {
    fn forward(&self, t_scaled: &Tensor) -> Result<Tensor> {
        let h = linear(&self.first, &sinusoidal_embedding(t_scaled, self.width)?)?;
        match &self.second {
            Some(second) => linear(second, &h.f_silu()?),
            None => Ok(h),
        }
    }
}

#[derive(Debug)]
enum Body {
    Mlp {
        layers: Vec<(nn::Linear, nn::Linear)>,
        out: nn::Linear,
    },
    Unet(Box<Unet>),
}

/// A denoising network (see the module documentation).
#[derive(Debug)]
pub struct Denoiser {
    event_shape: Vec<i64>,
    outputs_per_value: i64,
    time: TimeEmbedding,
    labels: Option<Tensor>,
    body: Body,
}

impl Denoiser {
    /// Predictions `[b, outputs_per_value · values]` for noisy examples `x` `[b] ++ event_shape`
    /// (float), steps `t_scaled` `[b]` (on a 1000-step scale) and, for a conditional network,
    /// labels `[b]` in `0..=classes` (`classes` meaning none). Inputs are trusted: the model
    /// checks them at its boundary.
    pub fn forward(
        &self,
        x: &Tensor,
        t_scaled: &Tensor,
        labels: Option<&Tensor>,
    ) -> Result<Tensor> {
        let b = x.size()[0];
        let mut emb = self.time.forward(t_scaled)?;
        if let (Some(table), Some(labels)) = (&self.labels, labels) {
            emb = emb.f_add(&table.f_index_select(0, labels)?)?;
        }
        match &self.body {
            Body::Mlp { layers, out } => {
                let mut h = x.f_reshape([b, -1])?;
                for (layer, time) in layers {
                    h = linear(layer, &h)?.f_add(&linear(time, &emb)?)?.f_silu()?;
                }
                linear(out, &h)
            }
            Body::Unet(unet) => Ok(unet.forward(x, &emb)?.f_reshape([b, -1])?),
        }
    }

    /// Predictions per value (1, or 2 with learned variances).
    pub fn outputs_per_value(&self) -> i64 {
        self.outputs_per_value
    }

    pub fn event_shape(&self) -> &[i64] {
        &self.event_shape
    }

    /// Whether the network takes labels.
    pub fn conditional(&self) -> bool {
        self.labels.is_some()
    }

    /// The device of the weights.
    pub fn device(&self) -> Device {
        match &self.body {
            Body::Mlp { out, .. } => out.ws.device(),
            Body::Unet(u) => u.conv_in.layer.ws.device(),
        }
    }
}

/// A 2D convolution with "same" padding (odd kernels) and its stride.
#[derive(Debug)]
struct Conv {
    layer: nn::Conv2D,
    stride: i64,
    padding: i64,
}

fn conv2d(path: nn::Path, inputs: i64, outputs: i64, kernel: i64, stride: i64) -> Conv {
    let padding = kernel / 2;
    let layer = nn::conv2d(
        path,
        inputs,
        outputs,
        kernel,
        nn::ConvConfig {
            stride,
            padding,
            ..Default::default()
        },
    );
    Conv {
        layer,
        stride,
        padding,
    }
}

fn conv(c: &Conv, x: &Tensor) -> Result<Tensor> {
    Ok(x.f_conv2d(
        &c.layer.ws,
        c.layer.bs.as_ref(),
        [c.stride, c.stride],
        [c.padding, c.padding],
        [1, 1],
        1,
    )?)
}

fn group_norm(path: nn::Path, channels: i64) -> nn::GroupNorm {
    nn::group_norm(path, GROUPS, channels, Default::default())
}

fn norm(layer: &nn::GroupNorm, x: &Tensor) -> Result<Tensor> {
    Ok(x.f_group_norm(GROUPS, layer.ws.as_ref(), layer.bs.as_ref(), 1e-5, false)?)
}

#[derive(Debug)]
struct ResBlock {
    norm1: nn::GroupNorm,
    conv1: Conv,
    time: nn::Linear,
    norm2: nn::GroupNorm,
    conv2: Conv,
    skip: Option<Conv>,
}

impl ResBlock {
    fn new(path: nn::Path, inputs: i64, outputs: i64, emb: i64) -> Self {
        ResBlock {
            norm1: group_norm(&path / "norm1", inputs),
            conv1: conv2d(&path / "conv1", inputs, outputs, 3, 1),
            time: nn::linear(&path / "time", emb, outputs, Default::default()),
            norm2: group_norm(&path / "norm2", outputs),
            conv2: conv2d(&path / "conv2", outputs, outputs, 3, 1),
            skip: (inputs != outputs).then(|| conv2d(&path / "skip", inputs, outputs, 1, 1)),
        }
    }

    fn forward(&self, x: &Tensor, emb_act: &Tensor) -> Result<Tensor> {
        let h = conv(&self.conv1, &norm(&self.norm1, x)?.f_silu()?)?;
        let t = linear(&self.time, emb_act)?
            .f_unsqueeze(-1)?
            .f_unsqueeze(-1)?;
        let h = conv(&self.conv2, &norm(&self.norm2, &h.f_add(&t)?)?.f_silu()?)?;
        let skip = match &self.skip {
            Some(s) => conv(s, x)?,
            None => x.shallow_clone(),
        };
        Ok(h.f_add(&skip)?)
    }
}

/// Single-head self-attention over the pixels of a feature map, with a residual connection.
#[derive(Debug)]
struct Attention {
    norm: nn::GroupNorm,
    qkv: Conv,
    out: Conv,
}

impl Attention {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let size = x.size();
        let (b, c) = (size[0], size[1]);
        let qkv = conv(&self.qkv, &norm(&self.norm, x)?)?.f_reshape([b, 3, c, -1])?;
        let (q, k, v) = (
            qkv.f_select(1, 0)?,
            qkv.f_select(1, 1)?,
            qkv.f_select(1, 2)?,
        );
        // [b, pixels, pixels]: each query pixel's weights over key pixels.
        let weights = q
            .f_transpose(1, 2)?
            .f_matmul(&k)?
            .f_mul_scalar(1.0 / (c as f64).sqrt())?
            .f_softmax(-1, Kind::Float)?;
        let attended = v
            .f_matmul(&weights.f_transpose(1, 2)?)?
            .f_reshape(size.as_slice())?;
        Ok(x.f_add(&conv(&self.out, &attended)?)?)
    }
}

#[derive(Debug)]
struct Unet {
    conv_in: Conv,
    down: Vec<(ResBlock, Option<Conv>)>,
    mid: (ResBlock, Option<Attention>, ResBlock),
    up: Vec<(ResBlock, Option<Conv>)>,
    norm_out: nn::GroupNorm,
    conv_out: Conv,
}

/// The U-Net's outer channels: `image` values per pixel, each fed in as `inputs_per_value`
/// channels and answered with `outputs_per_value`.
struct ValueChannels {
    image: i64,
    inputs_per_value: i64,
    outputs_per_value: i64,
}

impl Unet {
    fn new(
        path: &nn::Path,
        values: ValueChannels,
        channels: i64,
        multipliers: &[i64],
        attention: bool,
        emb: i64,
    ) -> Result<Self> {
        let ValueChannels {
            image: image_channels,
            inputs_per_value,
            outputs_per_value,
        } = values;
        let widths: Vec<i64> = multipliers.iter().map(|m| m * channels).collect();
        let levels = widths.len();
        let conv_in = conv2d(
            path / "conv_in",
            image_channels * inputs_per_value,
            channels,
            3,
            1,
        );
        let mut width = channels;
        let mut down = Vec::new();
        for (i, &w) in widths.iter().enumerate() {
            let block = ResBlock::new(path / format!("down{i}"), width, w, emb);
            let sample =
                (i + 1 < levels).then(|| conv2d(path / format!("downsample{i}"), w, w, 3, 2));
            down.push((block, sample));
            width = w;
        }
        let mid = (
            ResBlock::new(path / "mid1", width, width, emb),
            attention.then(|| Attention {
                norm: group_norm(path / "attention_norm", width),
                qkv: conv2d(path / "attention_qkv", width, 3 * width, 1, 1),
                out: conv2d(path / "attention_out", width, width, 1, 1),
            }),
            ResBlock::new(path / "mid2", width, width, emb),
        );
        let mut up = Vec::new();
        for (i, &w) in widths.iter().enumerate().rev() {
            let block = ResBlock::new(path / format!("up{i}"), width + w, w, emb);
            let sample = (i > 0).then(|| conv2d(path / format!("upsample{i}"), w, w, 3, 1));
            up.push((block, sample));
            width = w;
        }
        let norm_out = group_norm(path / "norm_out", width);
        let conv_out = conv2d(
            path / "conv_out",
            width,
            outputs_per_value * image_channels,
            3,
            1,
        );
        zero_weights(&conv_out.layer.ws, conv_out.layer.bs.as_ref())?;
        Ok(Unet {
            conv_in,
            down,
            mid,
            up,
            norm_out,
            conv_out,
        })
    }

    fn forward(&self, x: &Tensor, emb: &Tensor) -> Result<Tensor> {
        let emb_act = emb.f_silu()?;
        let mut h = conv(&self.conv_in, x)?;
        let mut skips = Vec::with_capacity(self.down.len());
        for (block, sample) in &self.down {
            h = block.forward(&h, &emb_act)?;
            skips.push(h.shallow_clone());
            if let Some(s) = sample {
                h = conv(s, &h)?;
            }
        }
        h = self.mid.0.forward(&h, &emb_act)?;
        if let Some(a) = &self.mid.1 {
            h = a.forward(&h)?;
        }
        h = self.mid.2.forward(&h, &emb_act)?;
        for (block, sample) in &self.up {
            let skip = skips.pop().expect("one skip per level");
            h = block.forward(&Tensor::f_cat(&[h, skip], 1)?, &emb_act)?;
            if let Some(s) = sample {
                let size = h.size();
                h = conv(
                    s,
                    &h.f_upsample_nearest2d([2 * size[2], 2 * size[3]], None, None)?,
                )?;
            }
        }
        conv(&self.conv_out, &norm(&self.norm_out, &h)?.f_silu()?)
    }
}
