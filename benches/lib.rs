//! The models gm's speed comparison times (`cargo xtask speed`), built the same way for the
//! criterion benches and for the `gm-speed` harness that `cargo xtask speed` drives beside the
//! PyTorch twins in `twins/`. Each case is one unit of work: a whole training step (forward,
//! loss, backward, clipping, optimizer, weight average) on a fixed batch, or one sampling call.
//! The twins in `twins/*.py` use the same names and the same models.

use gm_core::data::{named_info, ValueKind};
use gm_core::model::{Batch, GenerativeModel};
use gm_core::spec::{DataInfo, ModelSpec};
use gm_core::tch::{Device, Kind, Tensor};
use gm_core::{GmError, Result};
use gm_flow::{Architecture, DataSpace, ElementTransform, FlowConfig};

/// What one timed call does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// One training step on the case's batch.
    Train,
    /// Drawing this many samples.
    Sample(i64),
}

/// A model with its batch and the work to time.
pub struct SpeedCase {
    pub name: &'static str,
    pub model: Box<dyn GenerativeModel>,
    pub batch: Batch,
    pub work: Work,
    /// Values per example.
    pub example_elements: i64,
}

impl SpeedCase {
    /// The libtorch thread count gm trains this model with on the CPU.
    pub fn threads(&self) -> i32 {
        gm_core::device::threads_for(self.model.num_parameters(), self.example_elements)
    }

    /// One unit of work.
    pub fn run(&mut self) -> Result<()> {
        match self.work {
            Work::Train => {
                self.model.train_step(&self.batch)?;
            }
            Work::Sample(n) => {
                let _ = self.model.sample(n)?;
            }
        }
        Ok(())
    }
}

/// Every case, in the order of the table: `(name, what it is)`.
pub const CASES: &[(&str, &str)] = &[
    (
        "flow_tiny_b128",
        "NICE flow, 4 additive couplings, MLP 2-64-64-2, batch 128",
    ),
    (
        "realnvp_b256",
        "RealNVP, 8 affine couplings, MLP 2-128-128-4, batch 256",
    ),
    (
        "vae_mlp_b128",
        "MLP VAE 784-512-256-32, Bernoulli, batch 128",
    ),
    (
        "vae_conv_b128",
        "convolutional VAE (vae/mnist_conv), batch 128",
    ),
    (
        "glow_train_b64",
        "Glow, 2 levels x 4 steps, 64 channels, 28x28, batch 64",
    ),
    ("glow_sample_64", "Glow as above, drawing 64 samples"),
    (
        "pixelcnn_b64",
        "PixelCNN (autoregressive/pixelcnn_mnist), batch 64",
    ),
    (
        "dcgan_b64",
        "DCGAN (gan/mnist_dcgan): D and G steps, batch 64",
    ),
    (
        "unet_b64",
        "diffusion U-Net (diffusion/mnist_unet), batch 64",
    ),
];

/// Builds case `name` on `device`, seeded so that every build is the same.
pub fn build_case(name: &str, device: Device) -> Result<SpeedCase> {
    let (name, spec, dataset, batch_size, work): (
        &'static str,
        Box<dyn ModelSpec>,
        &str,
        i64,
        Work,
    ) = match name {
        "flow_tiny_b128" => (
            "flow_tiny_b128",
            Box::new(vector_flow(4, 64, ElementTransform::Additive)),
            "two_moons",
            128,
            Work::Train,
        ),
        "realnvp_b256" => (
            "realnvp_b256",
            Box::new(FlowConfig::default()),
            "two_moons",
            256,
            Work::Train,
        ),
        "glow_train_b64" | "glow_sample_64" => {
            let (name, work) = if name == "glow_train_b64" {
                ("glow_train_b64", Work::Train)
            } else {
                ("glow_sample_64", Work::Sample(64))
            };
            (name, Box::new(glow()), "mnist_grey", 64, work)
        }
        "vae_mlp_b128" => (
            "vae_mlp_b128",
            shipped("vae/mnist_mlp")?,
            "mnist_binary",
            128,
            Work::Train,
        ),
        "vae_conv_b128" => (
            "vae_conv_b128",
            shipped("vae/mnist_conv")?,
            "mnist_binary",
            128,
            Work::Train,
        ),
        "pixelcnn_b64" => (
            "pixelcnn_b64",
            shipped("autoregressive/pixelcnn_mnist")?,
            "mnist_binary",
            64,
            Work::Train,
        ),
        "dcgan_b64" => (
            "dcgan_b64",
            shipped("gan/mnist_dcgan")?,
            "mnist_grey",
            64,
            Work::Train,
        ),
        "unet_b64" => (
            "unet_b64",
            shipped("diffusion/mnist_unet")?,
            "mnist_grey",
            64,
            Work::Train,
        ),
        other => {
            return Err(GmError::config(
                "case",
                format!(
                    "no speed case {other:?}; expected one of {:?}",
                    CASES.iter().map(|c| c.0).collect::<Vec<_>>()
                ),
            ))
        }
    };
    let data = named_info(dataset)?;
    gm_core::tch::manual_seed(0);
    let model = spec.build(&data, device)?;
    let batch = Batch::new(random_batch(&data, batch_size, device)?);
    Ok(SpeedCase {
        name,
        model,
        batch,
        work,
        example_elements: data.elements(),
    })
}

/// A coupling flow on 2D points with `layers` layers of MLP width `hidden` (two hidden layers).
fn vector_flow(layers: usize, hidden: i64, transform: ElementTransform) -> FlowConfig {
    FlowConfig {
        architecture: Architecture::Coupling {
            layers,
            hidden: vec![hidden, hidden],
            transform,
            actnorm: false,
        },
        ..Default::default()
    }
}

/// The Glow of the flow benches: 2 levels of 4 steps, 64 hidden channels, 8-bit pixels.
pub fn glow() -> FlowConfig {
    FlowConfig {
        architecture: Architecture::MultiScale {
            levels: 2,
            steps: 4,
            hidden_channels: 64,
            logit_alpha: 0.05,
        },
        data: DataSpace::Discrete { levels: 256 },
        ..Default::default()
    }
}

/// The model spec of a shipped run file (`family/name`).
fn shipped(name: &str) -> Result<Box<dyn ModelSpec>> {
    let registry = gm_bench::suite::registry();
    Ok(registry.load_run(name)?.model)
}

/// `n` random examples of the data set's kind: standard normal points, or integer levels
/// (binary pixels at MNIST's ink share of 13%).
fn random_batch(data: &DataInfo, n: i64, device: Device) -> Result<Tensor> {
    gm_core::tch::manual_seed(1);
    let mut shape = vec![n];
    shape.extend(&data.event_shape);
    let options = (Kind::Float, device);
    Ok(match data.values {
        ValueKind::Continuous => Tensor::f_randn(&shape[..], options)?,
        ValueKind::Discrete { levels: 2 } => Tensor::f_rand(&shape[..], options)?
            .f_lt(0.13)?
            .f_to_kind(Kind::Float)?,
        ValueKind::Discrete { levels } => {
            Tensor::f_randint(i64::from(levels), &shape[..], options)?
        }
    })
}
