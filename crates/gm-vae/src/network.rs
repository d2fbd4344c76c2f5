//! The feature networks behind every encoder and decoder: an MLP, or a stack of stride-2
//! convolutions (kernel 4, padding 1) that halves the image at each layer, mirrored by
//! transposed convolutions on the way back.
//!
//! Encoders see data `[batch] ++ data_shape` and return a vector `[batch, outputs]` (VAE) or a
//! grid of code vectors `[batch] ++ grid ++ [code_dim]` (VQ-VAE). Decoders return
//! `[batch] ++ data_shape ++ [params]`: the likelihood's parameters for every data element.

use gm_core::nn::{Activation, Mlp, MlpConfig};
use gm_core::tch::nn::{self, Module};
use gm_core::tch::Tensor;
use gm_core::train::Config;
use gm_core::{GmError, Result};
use serde::{Deserialize, Serialize};

/// Initial weights of every output layer are shrunk by this factor, so an untrained VAE starts
/// close to the uniform model with a posterior close to the prior (negative ELBO near
/// `D ln 2` on binary data) instead of at a random, confidently wrong model.
pub(crate) const OUTPUT_INIT_SCALE: f64 = 0.1;

/// Which network an encoder or decoder uses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum NetworkConfig {
    /// A multi-layer perceptron on the flattened data.
    Mlp(MlpConfig),
    /// Strided convolutions on images `[channels, height, width]`.
    Conv(ConvNetConfig),
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig::Mlp(MlpConfig {
            hidden: vec![512, 256],
            activation: Activation::Relu,
        })
    }
}

impl Config for NetworkConfig {
    fn validate(&self) -> Result<()> {
        match self {
            NetworkConfig::Mlp(m) => m.validate(),
            NetworkConfig::Conv(c) => c.validate(),
        }
    }
}

/// A convolutional trunk: one stride-2 convolution (kernel 4, padding 1) per entry of
/// `channels`, each halving height and width, then dense layers of the `hidden` widths.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConvNetConfig {
    pub channels: Vec<i64>,
    pub hidden: Vec<i64>,
    pub activation: Activation,
}

impl Default for ConvNetConfig {
    fn default() -> Self {
        ConvNetConfig {
            channels: vec![32, 64],
            hidden: vec![256],
            activation: Activation::Relu,
        }
    }
}

impl Config for ConvNetConfig {
    fn validate(&self) -> Result<()> {
        if self.channels.is_empty() {
            return Err(GmError::config(
                "channels",
                "a convolutional network needs at least one convolution",
            ));
        }
        if let Some(c) = self.channels.iter().find(|c| **c < 1) {
            return Err(GmError::config(
                "channels",
                format!("every channel count must be at least 1, got {c}"),
            ));
        }
        if let Some(h) = self.hidden.iter().find(|h| **h < 1) {
            return Err(GmError::config(
                "hidden",
                format!("every hidden width must be at least 1, got {h}"),
            ));
        }
        Ok(())
    }
}

impl NetworkConfig {
    /// Checks that this network can take data of `data_shape`: a convolutional network needs
    /// images `[channels, height, width]` big enough for its stride-2 layers. The error names
    /// `data_shape` or `<section>.channels`.
    pub fn check_fits(&self, section: &str, data_shape: &[i64]) -> Result<()> {
        if let NetworkConfig::Conv(c) = self {
            let [_, h, w] = image_shape(data_shape).map_err(|e| match e {
                GmError::Config { key, message } => {
                    GmError::config(key, format!("the {section} is convolutional: {message}"))
                }
                other => other,
            })?;
            let sizes = halving_sizes(h, w, c.channels.len())
                .map_err(|e| gm_core::train::config::with_section(section, e))?;
            // Refuse what cannot be allocated before anything is: 4×4 kernels between
            // consecutive channel counts, then the dense layers on the flattened feature map.
            let mut parameters: i128 = 0;
            let mut previous = data_shape[0] as i128;
            for &ch in &c.channels {
                parameters += previous * ch as i128 * 16 + ch as i128;
                previous = ch as i128;
            }
            let (fh, fw) = sizes.last().copied().unwrap_or((h, w));
            let mut width = previous * fh as i128 * fw as i128;
            for &hidden in &c.hidden {
                parameters += (width + 1) * hidden as i128;
                width = hidden as i128;
            }
            gm_core::nn::check_parameter_budget(
                parameters,
                &format!("the {section}'s convolutional network"),
            )?;
        }
        Ok(())
    }
}

impl NetworkConfig {
    /// Activation values one example keeps through this network on data of `data_shape` (an
    /// estimate for the memory budget: the input, every convolution's feature map and every
    /// dense layer).
    pub fn activations_per_example(&self, data_shape: &[i64]) -> i128 {
        let input: i128 = data_shape.iter().map(|&d| d as i128).product();
        match self {
            NetworkConfig::Mlp(m) => input + m.hidden.iter().map(|&h| h as i128).sum::<i128>(),
            NetworkConfig::Conv(c) => {
                let maps: i128 = match image_shape(data_shape)
                    .and_then(|[_, h, w]| halving_sizes(h, w, c.channels.len()))
                {
                    Ok(sizes) => c
                        .channels
                        .iter()
                        .zip(sizes.iter().skip(1))
                        .map(|(&ch, &(h, w))| ch as i128 * h as i128 * w as i128)
                        .sum(),
                    Err(_) => 0,
                };
                input + maps + c.hidden.iter().map(|&h| h as i128).sum::<i128>()
            }
        }
    }
}

/// `[channels, height, width]` from a data shape, or an error naming the key.
fn image_shape(data_shape: &[i64]) -> Result<[i64; 3]> {
    match data_shape {
        [c, h, w] if *c >= 1 && *h >= 1 && *w >= 1 => Ok([*c, *h, *w]),
        _ => Err(GmError::config(
            "data_shape",
            format!(
                "a convolutional network needs images [channels, height, width], got {data_shape:?}"
            ),
        )),
    }
}

/// Spatial sizes after each stride-2 convolution, starting with the input's.
fn halving_sizes(height: i64, width: i64, layers: usize) -> Result<Vec<(i64, i64)>> {
    let mut sizes = vec![(height, width)];
    for _ in 0..layers {
        let (h, w) = *sizes.last().expect("starts non-empty");
        if h < 2 || w < 2 {
            return Err(GmError::config(
                "channels",
                format!(
                    "{layers} stride-2 convolutions shrink a {height}x{width} image below 1 pixel; use fewer"
                ),
            ));
        }
        sizes.push((h / 2, w / 2));
    }
    Ok(sizes)
}

/// `U(-1/√fan_in, 1/√fan_in)`, PyTorch's default for convolutions, times `scale`.
fn uniform_init(fan_in: i64, scale: f64) -> nn::Init {
    let bound = scale / (fan_in.max(1) as f64).sqrt();
    nn::Init::Uniform {
        lo: -bound,
        up: bound,
    }
}

/// A 2D convolution with explicit stride and padding, built from raw variables so the
/// forward pass can use the fallible `f_` functions.
#[derive(Debug)]
struct Conv2d {
    weight: Tensor,
    bias: Tensor,
    stride: i64,
    padding: i64,
}

impl Conv2d {
    fn new(
        path: &nn::Path,
        inputs: i64,
        outputs: i64,
        kernel: i64,
        stride: i64,
        scale: f64,
    ) -> Self {
        let padding = if kernel == 4 { 1 } else { 0 };
        let fan_in = inputs * kernel * kernel;
        Conv2d {
            weight: path.var(
                "weight",
                &[outputs, inputs, kernel, kernel],
                uniform_init(fan_in, scale),
            ),
            bias: path.var("bias", &[outputs], uniform_init(fan_in, scale)),
            stride,
            padding,
        }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.f_conv2d(
            &self.weight,
            Some(&self.bias),
            [self.stride, self.stride],
            [self.padding, self.padding],
            [1, 1],
            1,
        )?)
    }
}

/// A stride-2 transposed convolution (kernel 4, padding 1) that doubles the size, plus an
/// output padding of 0 or 1 per axis so it lands exactly on the encoder's odd sizes (7 → 14
/// needs none, 3 → 7 needs one).
#[derive(Debug)]
struct ConvTranspose2d {
    weight: Tensor,
    bias: Tensor,
    output_padding: [i64; 2],
}

impl ConvTranspose2d {
    fn new(
        path: &nn::Path,
        inputs: i64,
        outputs: i64,
        output_padding: [i64; 2],
        scale: f64,
    ) -> Self {
        // PyTorch computes a transposed convolution's fan-in from weight dimension 1.
        let fan_in = outputs * 16;
        ConvTranspose2d {
            weight: path.var(
                "weight",
                &[inputs, outputs, 4, 4],
                uniform_init(fan_in, scale),
            ),
            bias: path.var("bias", &[outputs], uniform_init(fan_in, scale)),
            output_padding,
        }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.f_conv_transpose2d(
            &self.weight,
            Some(&self.bias),
            [2, 2],
            [1, 1],
            self.output_padding,
            1,
            [1, 1],
        )?)
    }
}

/// Stride-2 convolutions with an activation after each.
#[derive(Debug)]
struct ConvTrunk {
    layers: Vec<Conv2d>,
    activation: Activation,
}

impl ConvTrunk {
    fn new(path: &nn::Path, in_channels: i64, channels: &[i64], activation: Activation) -> Self {
        let mut layers = Vec::with_capacity(channels.len());
        let mut width = in_channels;
        for (i, &c) in channels.iter().enumerate() {
            layers.push(Conv2d::new(
                &(path / format!("conv{i}")),
                width,
                c,
                4,
                2,
                1.0,
            ));
            width = c;
        }
        ConvTrunk { layers, activation }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // Channels-last through the stack (`gm_core::nn::channels_last`; free for one channel).
        let mut h = gm_core::nn::channels_last(x)?;
        for layer in &self.layers {
            h = self.activation.apply(&layer.forward(&h)?);
        }
        Ok(h)
    }
}

/// Transposed convolutions retracing [`ConvTrunk`]'s sizes in reverse; no activation after the
/// last one, which produces the likelihood parameters.
#[derive(Debug)]
struct DeconvTrunk {
    layers: Vec<ConvTranspose2d>,
    activation: Activation,
}

impl DeconvTrunk {
    /// `channels` as in the encoder (input side first); `sizes` from [`halving_sizes`].
    fn new(
        path: &nn::Path,
        channels: &[i64],
        sizes: &[(i64, i64)],
        out_channels: i64,
        activation: Activation,
    ) -> Self {
        let n = channels.len();
        let mut layers = Vec::with_capacity(n);
        for i in (0..n).rev() {
            let inputs = channels[i];
            let outputs = if i == 0 {
                out_channels
            } else {
                channels[i - 1]
            };
            let (target, source) = (sizes[i], sizes[i + 1]);
            let padding = [target.0 - 2 * source.0, target.1 - 2 * source.1];
            let scale = if i == 0 { OUTPUT_INIT_SCALE } else { 1.0 };
            layers.push(ConvTranspose2d::new(
                &(path / format!("deconv{}", n - 1 - i)),
                inputs,
                outputs,
                padding,
                scale,
            ));
        }
        DeconvTrunk { layers, activation }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = gm_core::nn::channels_last(x)?;
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate() {
            h = layer.forward(&h)?;
            if i < last {
                h = self.activation.apply(&h);
            }
        }
        Ok(h)
    }
}

/// Shrinks the freshly initialised last layer of an MLP (see [`OUTPUT_INIT_SCALE`]).
fn shrink_last_layer(mlp: &mut Mlp) {
    let layer = mlp.last_layer_mut();
    gm_core::tch::no_grad(|| {
        let _ = layer.ws.f_mul_scalar_(OUTPUT_INIT_SCALE);
        if let Some(b) = layer.bs.as_mut() {
            let _ = b.f_mul_scalar_(OUTPUT_INIT_SCALE);
        }
    });
}

/// Joins an optional context `[batch, C]` to features `[batch, F]`.
fn with_context(features: Tensor, context: Option<&Tensor>) -> Result<Tensor> {
    match context {
        Some(c) => Ok(Tensor::f_cat(
            &[&features, &c.f_to_kind(features.kind())?],
            1,
        )?),
        None => Ok(features),
    }
}

/// Maps data `[batch] ++ data_shape` (and a context `[batch, C]`) to a vector `[batch, outputs]`.
#[derive(Debug)]
pub struct VectorEncoder {
    body: VectorEncoderBody,
}

#[derive(Debug)]
enum VectorEncoderBody {
    Mlp(Mlp),
    Conv { trunk: ConvTrunk, head: Mlp },
}

impl NetworkConfig {
    /// An encoder network from data of `data_shape` plus `context_features` to `outputs`.
    pub fn init_vector_encoder(
        &self,
        path: &nn::Path,
        data_shape: &[i64],
        context_features: i64,
        outputs: i64,
    ) -> Result<VectorEncoder> {
        self.validate()?;
        let body = match self {
            NetworkConfig::Mlp(m) => {
                let inputs: i64 = data_shape.iter().product();
                let mut mlp = m.init(&(path / "mlp"), inputs + context_features, outputs)?;
                shrink_last_layer(&mut mlp);
                VectorEncoderBody::Mlp(mlp)
            }
            NetworkConfig::Conv(c) => {
                let [ch, h, w] = image_shape(data_shape)?;
                let sizes = halving_sizes(h, w, c.channels.len())?;
                let (fh, fw) = *sizes.last().expect("non-empty");
                let features = c.channels.last().expect("validated non-empty") * fh * fw;
                let trunk = ConvTrunk::new(&(path / "trunk"), ch, &c.channels, c.activation);
                let head_config = MlpConfig {
                    hidden: c.hidden.clone(),
                    activation: c.activation,
                };
                let mut head =
                    head_config.init(&(path / "head"), features + context_features, outputs)?;
                shrink_last_layer(&mut head);
                VectorEncoderBody::Conv { trunk, head }
            }
        };
        Ok(VectorEncoder { body })
    }

    /// A decoder network from a vector `[batch, inputs]` to `params` numbers per element of
    /// `data_shape`, returned as `[batch] ++ data_shape ++ [params]`.
    pub fn init_vector_decoder(
        &self,
        path: &nn::Path,
        inputs: i64,
        data_shape: &[i64],
        params: i64,
    ) -> Result<VectorDecoder> {
        self.validate()?;
        let elements: i64 = data_shape.iter().product();
        let body = match self {
            NetworkConfig::Mlp(m) => {
                let mut mlp = m.init(&(path / "mlp"), inputs, elements * params)?;
                shrink_last_layer(&mut mlp);
                VectorDecoderBody::Mlp(mlp)
            }
            NetworkConfig::Conv(c) => {
                let [ch, h, w] = image_shape(data_shape)?;
                let sizes = halving_sizes(h, w, c.channels.len())?;
                let (fh, fw) = *sizes.last().expect("non-empty");
                let top = *c.channels.last().expect("validated non-empty");
                // The dense stem ends in an activation, because a transposed convolution follows.
                let mut stem_widths = c.hidden.clone();
                stem_widths.push(top * fh * fw);
                let stem = DenseStack::new(&(path / "stem"), inputs, &stem_widths, c.activation);
                let trunk = DeconvTrunk::new(
                    &(path / "trunk"),
                    &c.channels,
                    &sizes,
                    ch * params,
                    c.activation,
                );
                VectorDecoderBody::Conv {
                    stem,
                    trunk,
                    feature_shape: [top, fh, fw],
                }
            }
        };
        Ok(VectorDecoder {
            body,
            data_shape: data_shape.to_vec(),
            params,
        })
    }
}

impl VectorEncoder {
    /// `x` is `[batch] ++ data_shape` (already checked by the caller).
    pub fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        match &self.body {
            VectorEncoderBody::Mlp(mlp) => {
                let flat = x.f_flatten(1, -1)?;
                mlp.forward(&with_context(flat, context)?)
            }
            VectorEncoderBody::Conv { trunk, head } => {
                let features = trunk.forward(x)?.f_flatten(1, -1)?;
                head.forward(&with_context(features, context)?)
            }
        }
    }
}

/// Dense layers, each followed by the activation (the stem of a convolutional decoder).
#[derive(Debug)]
struct DenseStack {
    layers: Vec<nn::Linear>,
    activation: Activation,
}

impl DenseStack {
    fn new(path: &nn::Path, inputs: i64, widths: &[i64], activation: Activation) -> Self {
        let mut layers = Vec::with_capacity(widths.len());
        let mut width = inputs;
        for (i, &w) in widths.iter().enumerate() {
            layers.push(nn::linear(
                path / format!("layer{i}"),
                width,
                w,
                Default::default(),
            ));
            width = w;
        }
        DenseStack { layers, activation }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        self.layers.iter().fold(x.shallow_clone(), |h, l| {
            self.activation.apply(&l.forward(&h))
        })
    }
}

/// Maps a vector `[batch, inputs]` to likelihood parameters `[batch] ++ data_shape ++ [params]`.
#[derive(Debug)]
pub struct VectorDecoder {
    body: VectorDecoderBody,
    data_shape: Vec<i64>,
    params: i64,
}

#[derive(Debug)]
enum VectorDecoderBody {
    Mlp(Mlp),
    Conv {
        stem: DenseStack,
        trunk: DeconvTrunk,
        feature_shape: [i64; 3],
    },
}

impl VectorDecoder {
    pub fn forward(&self, v: &Tensor) -> Result<Tensor> {
        let batch = v.size()[0];
        let raw = match &self.body {
            VectorDecoderBody::Mlp(mlp) => mlp.forward(v)?,
            VectorDecoderBody::Conv {
                stem,
                trunk,
                feature_shape,
            } => {
                let [c, h, w] = *feature_shape;
                let features = stem.forward(v).f_reshape([batch, c, h, w])?;
                trunk.forward(&features)?
            }
        };
        to_params_last(&raw, batch, &self.data_shape, self.params)
    }
}

/// Reinterprets a network output `[batch, params * elements]` (or `[batch, params * C, H, W]`)
/// as `[batch] ++ data_shape ++ [params]`: parameter `p` of element `e` is output `p * E + e`.
fn to_params_last(raw: &Tensor, batch: i64, data_shape: &[i64], params: i64) -> Result<Tensor> {
    let mut shape = vec![batch, params];
    shape.extend_from_slice(data_shape);
    Ok(raw.f_reshape(shape.as_slice())?.f_movedim(1, -1)?)
}

/// Maps data `[batch] ++ data_shape` to a grid of code vectors `[batch] ++ grid ++ [code_dim]`
/// (VQ-VAE): `grid = [num_latents]` for an MLP, the final feature map `[h, w]` for convolutions.
#[derive(Debug)]
pub struct GridEncoder {
    body: GridEncoderBody,
    grid: Vec<i64>,
    code_dim: i64,
}

#[derive(Debug)]
enum GridEncoderBody {
    Mlp(Mlp),
    Conv { trunk: ConvTrunk, project: Conv2d },
}

/// Maps code vectors `[batch] ++ grid ++ [code_dim]` back to `[batch] ++ data_shape ++ [params]`.
#[derive(Debug)]
pub struct GridDecoder {
    body: GridDecoderBody,
    data_shape: Vec<i64>,
    params: i64,
}

#[derive(Debug)]
enum GridDecoderBody {
    Mlp(Mlp),
    Conv {
        project: Conv2d,
        trunk: DeconvTrunk,
        activation: Activation,
    },
}

impl NetworkConfig {
    /// The grid a [`GridEncoder`] of this config produces for `data_shape`.
    pub fn code_grid(&self, data_shape: &[i64], num_latents: i64) -> Result<Vec<i64>> {
        match self {
            NetworkConfig::Mlp(_) => Ok(vec![num_latents]),
            NetworkConfig::Conv(c) => {
                let [_, h, w] = image_shape(data_shape)?;
                let sizes = halving_sizes(h, w, c.channels.len())?;
                let (fh, fw) = *sizes.last().expect("non-empty");
                Ok(vec![fh, fw])
            }
        }
    }

    /// A VQ-VAE encoder; a convolutional one ignores `hidden` and ends in a 1×1 convolution
    /// to `code_dim` channels.
    pub fn init_grid_encoder(
        &self,
        path: &nn::Path,
        data_shape: &[i64],
        num_latents: i64,
        code_dim: i64,
    ) -> Result<GridEncoder> {
        self.validate()?;
        let grid = self.code_grid(data_shape, num_latents)?;
        let body = match self {
            NetworkConfig::Mlp(m) => {
                let inputs: i64 = data_shape.iter().product();
                GridEncoderBody::Mlp(m.init(&(path / "mlp"), inputs, num_latents * code_dim)?)
            }
            NetworkConfig::Conv(c) => {
                let [ch, _, _] = image_shape(data_shape)?;
                let trunk = ConvTrunk::new(&(path / "trunk"), ch, &c.channels, c.activation);
                let top = *c.channels.last().expect("validated non-empty");
                let project = Conv2d::new(&(path / "project"), top, code_dim, 1, 1, 1.0);
                GridEncoderBody::Conv { trunk, project }
            }
        };
        Ok(GridEncoder {
            body,
            grid,
            code_dim,
        })
    }

    /// The decoder matching [`NetworkConfig::init_grid_encoder`].
    pub fn init_grid_decoder(
        &self,
        path: &nn::Path,
        data_shape: &[i64],
        num_latents: i64,
        code_dim: i64,
        params: i64,
    ) -> Result<GridDecoder> {
        self.validate()?;
        let elements: i64 = data_shape.iter().product();
        let body = match self {
            NetworkConfig::Mlp(m) => {
                let mut mlp = m.init(&(path / "mlp"), num_latents * code_dim, elements * params)?;
                shrink_last_layer(&mut mlp);
                GridDecoderBody::Mlp(mlp)
            }
            NetworkConfig::Conv(c) => {
                let [ch, h, w] = image_shape(data_shape)?;
                let sizes = halving_sizes(h, w, c.channels.len())?;
                let top = *c.channels.last().expect("validated non-empty");
                let project = Conv2d::new(&(path / "project"), code_dim, top, 1, 1, 1.0);
                let trunk = DeconvTrunk::new(
                    &(path / "trunk"),
                    &c.channels,
                    &sizes,
                    ch * params,
                    c.activation,
                );
                GridDecoderBody::Conv {
                    project,
                    trunk,
                    activation: c.activation,
                }
            }
        };
        Ok(GridDecoder {
            body,
            data_shape: data_shape.to_vec(),
            params,
        })
    }
}

impl GridEncoder {
    pub fn grid(&self) -> &[i64] {
        &self.grid
    }

    pub fn code_dim(&self) -> i64 {
        self.code_dim
    }

    /// `x` is `[batch] ++ data_shape` (already checked by the caller).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let batch = x.size()[0];
        match &self.body {
            GridEncoderBody::Mlp(mlp) => {
                let flat = mlp.forward(&x.f_flatten(1, -1)?)?;
                Ok(flat.f_reshape([batch, self.grid[0], self.code_dim])?)
            }
            GridEncoderBody::Conv { trunk, project } => {
                // Channels last, so that each grid cell's code vector is the last dimension.
                Ok(project
                    .forward(&trunk.forward(x)?)?
                    .f_permute([0, 2, 3, 1])?)
            }
        }
    }
}

impl GridDecoder {
    /// `z` is `[batch] ++ grid ++ [code_dim]`.
    pub fn forward(&self, z: &Tensor) -> Result<Tensor> {
        let batch = z.size()[0];
        let raw = match &self.body {
            GridDecoderBody::Mlp(mlp) => mlp.forward(&z.f_flatten(1, -1)?)?,
            GridDecoderBody::Conv {
                project,
                trunk,
                activation,
            } => {
                let h = activation.apply(&project.forward(&z.f_permute([0, 3, 1, 2])?)?);
                trunk.forward(&h)?
            }
        };
        to_params_last(&raw, batch, &self.data_shape, self.params)
    }
}
