//! The two players' networks: MLPs for vectors (and flattened images) and DCGAN-style
//! convolutional networks for images; both optionally class-conditional (a label embedding
//! in the generator, a projection discriminator, Miyato & Koyama 2018).

use crate::layers::{leaky_relu, GroupNorm, Layer};
use gm_core::nn::Activation;
use gm_core::tch::{nn, Kind, Tensor};
use gm_core::train::config::Config;
use gm_core::{GmError, Result};
use serde::{Deserialize, Serialize};

/// The generator: latent noise (and a label) to an example.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum GeneratorConfig {
    /// `latent → hidden… → data`, with `activation` between layers.
    Mlp {
        hidden: Vec<i64>,
        #[serde(default)]
        activation: Activation,
    },
    /// A linear map to `2·channels` feature maps at a quarter of the image size, then two
    /// stride-2 transposed convolutions (4×4) with group normalisation and ReLU; for images
    /// `[c, h, w]` with `h` and `w` divisible by 4.
    Dcgan { channels: i64 },
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        GeneratorConfig::Mlp {
            hidden: vec![128, 128],
            activation: Activation::Relu,
        }
    }
}

/// The discriminator (critic): an example (and a label) to one logit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum DiscriminatorConfig {
    /// `data → hidden… → 1` with LeakyReLU(0.2).
    Mlp {
        hidden: Vec<i64>,
        #[serde(default)]
        spectral_norm: bool,
    },
    /// Two stride-2 4×4 convolutions (`channels`, `2·channels`) with LeakyReLU(0.2), then a
    /// linear map to one logit.
    Dcgan {
        channels: i64,
        #[serde(default)]
        spectral_norm: bool,
    },
}

impl Default for DiscriminatorConfig {
    fn default() -> Self {
        DiscriminatorConfig::Mlp {
            hidden: vec![128, 128],
            spectral_norm: false,
        }
    }
}

fn check_widths(key: &str, widths: &[i64]) -> Result<()> {
    if let Some(w) = widths.iter().find(|&&w| w < 1) {
        return Err(GmError::config(
            key,
            format!("every width must be at least 1, got {w} in {widths:?}"),
        ));
    }
    Ok(())
}

fn check_channels(channels: i64) -> Result<()> {
    if !(1..=4096).contains(&channels) {
        return Err(GmError::config(
            "channels",
            format!("must be in [1, 4096], got {channels}"),
        ));
    }
    Ok(())
}

/// `[c, h, w]` with `h` and `w` divisible by 4, for the DCGAN networks.
fn check_image_shape(key: &str, data_shape: &[i64]) -> Result<(i64, i64, i64)> {
    match data_shape {
        [c, h, w] if h % 4 == 0 && w % 4 == 0 && *h >= 4 && *w >= 4 => Ok((*c, *h, *w)),
        _ => Err(GmError::config(
            key,
            format!(
                "the dcgan networks need images [channels, height, width] with height and width divisible by 4, got examples of shape {data_shape:?}"
            ),
        )),
    }
}

impl Config for GeneratorConfig {
    fn validate(&self) -> Result<()> {
        match self {
            GeneratorConfig::Mlp { hidden, .. } => check_widths("hidden", hidden),
            GeneratorConfig::Dcgan { channels } => check_channels(*channels),
        }
    }
}

impl Config for DiscriminatorConfig {
    fn validate(&self) -> Result<()> {
        match self {
            DiscriminatorConfig::Mlp { hidden, .. } => check_widths("hidden", hidden),
            DiscriminatorConfig::Dcgan { channels, .. } => check_channels(*channels),
        }
    }
}

impl GeneratorConfig {
    /// Checks that the network can produce examples of `data_shape`.
    pub fn check_fits(&self, data_shape: &[i64]) -> Result<()> {
        match self {
            GeneratorConfig::Mlp { .. } => Ok(()),
            GeneratorConfig::Dcgan { .. } => {
                check_image_shape("generator.kind", data_shape).map(|_| ())
            }
        }
    }

    /// The generator for examples of `data_shape` from `latent_dim` noise plus an
    /// `conditioning`-wide label embedding (0 for none); `bounded` ends it with tanh.
    pub fn init(
        &self,
        path: &nn::Path,
        latent_dim: i64,
        conditioning: i64,
        data_shape: &[i64],
        bounded: bool,
    ) -> Result<Generator> {
        let inputs = latent_dim + conditioning;
        let elements: i64 = data_shape.iter().product();
        let body = match self {
            GeneratorConfig::Mlp { hidden, activation } => {
                let mut layers = Vec::new();
                let mut width = inputs;
                for (i, &h) in hidden.iter().enumerate() {
                    layers.push(Layer::linear(
                        &(path / format!("layer{i}")),
                        width,
                        h,
                        false,
                    )?);
                    width = h;
                }
                layers.push(Layer::linear(&(path / "out"), width, elements, false)?);
                GeneratorBody::Mlp {
                    layers,
                    activation: *activation,
                }
            }
            GeneratorConfig::Dcgan { channels } => {
                let (c, h, w) = check_image_shape("generator.kind", data_shape)?;
                let wide = 2 * channels;
                GeneratorBody::Dcgan {
                    project: Layer::linear(
                        &(path / "project"),
                        inputs,
                        wide * (h / 4) * (w / 4),
                        false,
                    )?,
                    norm0: GroupNorm::new(&(path / "norm0"), wide)?,
                    up1: Layer::conv_transpose(&(path / "up1"), wide, *channels, 4, 2, 1)?,
                    norm1: GroupNorm::new(&(path / "norm1"), *channels)?,
                    up2: Layer::conv_transpose(&(path / "up2"), *channels, c, 4, 2, 1)?,
                    start: [wide, h / 4, w / 4],
                }
            }
        };
        Ok(Generator {
            body,
            inputs,
            data_shape: data_shape.to_vec(),
            bounded,
        })
    }
}

#[derive(Debug)]
// One body per generator, built once: its size does not matter.
#[allow(clippy::large_enum_variant)]
enum GeneratorBody {
    Mlp {
        layers: Vec<Layer>,
        activation: Activation,
    },
    Dcgan {
        project: Layer,
        norm0: GroupNorm,
        up1: Layer,
        norm1: GroupNorm,
        up2: Layer,
        start: [i64; 3],
    },
}

/// See [`GeneratorConfig`].
#[derive(Debug)]
pub struct Generator {
    body: GeneratorBody,
    /// The input width: latent dimension plus label embedding.
    inputs: i64,
    data_shape: Vec<i64>,
    bounded: bool,
}

impl Generator {
    /// Examples `[b] ++ data_shape` from inputs `[b, latent + conditioning]`.
    pub fn forward(&self, input: &Tensor) -> Result<Tensor> {
        let size = input.size();
        if size.len() != 2 || size[1] != self.inputs {
            return Err(GmError::shape(
                "Generator input",
                format!("[batch, {}]", self.inputs),
                &size,
            ));
        }
        let b = size[0];
        let out = match &self.body {
            GeneratorBody::Mlp { layers, activation } => {
                let mut h = input.shallow_clone();
                for (i, layer) in layers.iter().enumerate() {
                    h = layer.forward(&h, false)?;
                    if i + 1 < layers.len() {
                        h = activation.apply(&h);
                    }
                }
                h
            }
            GeneratorBody::Dcgan {
                project,
                norm0,
                up1,
                norm1,
                up2,
                start,
            } => {
                // The ReLUs run in place (group normalisation's backward needs its input only).
                // Channels-last (`gm_core::nn::channels_last`) made this network slower: the
                // transposed convolutions and group norms of 7×7 and 14×14 maps lose by it.
                let h = project
                    .forward(input, false)?
                    .f_reshape([b, start[0], start[1], start[2]])?;
                let mut h = norm0.forward(&h)?;
                let _ = h.f_relu_()?;
                let mut h = norm1.forward(&up1.forward(&h, false)?)?;
                let _ = h.f_relu_()?;
                up2.forward(&h, false)?
            }
        };
        let mut shape = vec![b];
        shape.extend_from_slice(&self.data_shape);
        let out = out.f_reshape(shape.as_slice())?;
        Ok(if self.bounded { out.f_tanh()? } else { out })
    }
}

impl DiscriminatorConfig {
    /// Checks that the network can read examples of `data_shape`.
    pub fn check_fits(&self, data_shape: &[i64]) -> Result<()> {
        match self {
            DiscriminatorConfig::Mlp { .. } => Ok(()),
            DiscriminatorConfig::Dcgan { .. } => {
                check_image_shape("discriminator.kind", data_shape).map(|_| ())
            }
        }
    }

    /// The discriminator of examples of `data_shape`; with `classes > 0`, a projection
    /// discriminator conditioned on labels in `0..classes`.
    pub fn init(&self, path: &nn::Path, data_shape: &[i64], classes: i64) -> Result<Discriminator> {
        let elements: i64 = data_shape.iter().product();
        let (body, features) = match self {
            DiscriminatorConfig::Mlp {
                hidden,
                spectral_norm,
            } => {
                let mut layers = Vec::new();
                let mut width = elements;
                for (i, &h) in hidden.iter().enumerate() {
                    layers.push(Layer::linear(
                        &(path / format!("layer{i}")),
                        width,
                        h,
                        *spectral_norm,
                    )?);
                    width = h;
                }
                (DiscriminatorBody::Mlp { layers }, width)
            }
            DiscriminatorConfig::Dcgan {
                channels,
                spectral_norm,
            } => {
                let (c, h, w) = check_image_shape("discriminator.kind", data_shape)?;
                let convs = vec![
                    Layer::conv(&(path / "conv1"), c, *channels, 4, 2, 1, *spectral_norm)?,
                    Layer::conv(
                        &(path / "conv2"),
                        *channels,
                        2 * channels,
                        4,
                        2,
                        1,
                        *spectral_norm,
                    )?,
                ];
                (
                    DiscriminatorBody::Conv { convs },
                    2 * channels * (h / 4) * (w / 4),
                )
            }
        };
        let sn = match self {
            DiscriminatorConfig::Mlp { spectral_norm, .. }
            | DiscriminatorConfig::Dcgan { spectral_norm, .. } => *spectral_norm,
        };
        let head = Layer::linear(&(path / "head"), features, 1, sn)?;
        let projection = if classes > 0 {
            let bound = 1.0 / (features as f64).sqrt();
            Some(path.f_var(
                "label_projection",
                &[classes, features],
                nn::Init::Uniform {
                    lo: -bound,
                    up: bound,
                },
            )?)
        } else {
            None
        };
        Ok(Discriminator {
            body,
            head,
            projection,
        })
    }
}

#[derive(Debug)]
enum DiscriminatorBody {
    Mlp { layers: Vec<Layer> },
    Conv { convs: Vec<Layer> },
}

/// See [`DiscriminatorConfig`].
#[derive(Debug)]
pub struct Discriminator {
    body: DiscriminatorBody,
    head: Layer,
    /// `[classes, features]`: the class embedding of the projection term `⟨e_y, φ(x)⟩`.
    projection: Option<Tensor>,
}

impl Discriminator {
    /// Logits `[b]` for examples `[b, ...]` (and labels `[b]` for a conditional one).
    /// `update_spectral_norm`: one power-iteration step in every normalised layer (training
    /// passes only).
    pub fn forward(
        &self,
        x: &Tensor,
        labels: Option<&Tensor>,
        update_spectral_norm: bool,
    ) -> Result<Tensor> {
        let b = gm_core::model::leading_dim(x, "[batch, ...]", "Discriminator input")?;
        match (&self.projection, labels) {
            (Some(table), Some(labels)) => {
                gm_core::model::check_labels(labels, b, table.size()[0], "Discriminator labels")?
            }
            (Some(_), None) => {
                return Err(GmError::Domain(
                    "Discriminator: a conditional discriminator needs labels, got none".into(),
                ))
            }
            (None, _) => {}
        }
        self.forward_trusted(x, labels, update_spectral_norm)
    }

    /// [`Discriminator::forward`] for inputs the caller has already checked (the model's
    /// training step checks its batch once, not at every pass: each check reads the labels
    /// back to the host).
    pub(crate) fn forward_trusted(
        &self,
        x: &Tensor,
        labels: Option<&Tensor>,
        update_spectral_norm: bool,
    ) -> Result<Tensor> {
        let b = gm_core::model::leading_dim(x, "[batch, ...]", "Discriminator input")?;
        let features = match &self.body {
            DiscriminatorBody::Mlp { layers } => {
                let mut h = x.f_reshape([b, -1])?;
                for layer in layers {
                    h = leaky_relu(&layer.forward(&h, update_spectral_norm)?)?;
                }
                h
            }
            DiscriminatorBody::Conv { convs } => {
                let mut h = x.shallow_clone();
                for conv in convs {
                    h = leaky_relu(&conv.forward(&h, update_spectral_norm)?)?;
                }
                h.f_reshape([b, -1])?
            }
        };
        let mut logit = self
            .head
            .forward(&features, update_spectral_norm)?
            .f_reshape([b])?;
        if let (Some(table), Some(labels)) = (&self.projection, labels) {
            let embedded = table.f_index_select(0, labels)?;
            logit = logit.f_add(&embedded.f_mul(&features)?.f_sum_dim_intlist(
                1,
                false,
                Kind::Float,
            )?)?;
        }
        Ok(logit)
    }

    /// The layers with spectral normalisation, for inspection.
    pub fn spectral_layers(&self) -> Vec<&Layer> {
        let body: Vec<&Layer> = match &self.body {
            DiscriminatorBody::Mlp { layers } => layers.iter().collect(),
            DiscriminatorBody::Conv { convs } => convs.iter().collect(),
        };
        body.into_iter()
            .chain(std::iter::once(&self.head))
            .filter(|l| l.spectral_norm().is_some())
            .collect()
    }
}
