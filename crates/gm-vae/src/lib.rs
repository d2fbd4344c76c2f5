//! # gm-vae
//!
//! The VAE family of gm as reusable parts and ready models:
//!
//! - **Parts.** Encoders that output a posterior ([`encoder::GaussianEncoder`], a diagonal
//!   Gaussian sampled with the reparameterisation trick), decoders that output a likelihood
//!   ([`decoder::Decoder`] with [`likelihood::LikelihoodConfig`]: Bernoulli, Gaussian with fixed,
//!   learned or predicted variance, discretized logistic and 256-way categorical for 8-bit data),
//!   MLP or convolutional networks ([`network::NetworkConfig`]), and a vector quantizer with
//!   straight-through gradients, EMA codebook and dead-code restarts ([`vq::VectorQuantizer`]).
//! - **Models.** [`Vae`] covers the plain VAE, the β-VAE (with optional KL warm-up), the IWAE
//!   and the conditional VAE, chosen by [`VaeConfig`]; [`VqVae`] is the VQ-VAE. Both implement
//!   gm-core's [`GenerativeModel`](gm_core::model::GenerativeModel), own their Adam optimizer and
//!   save their whole training state, so gm-core's `Trainer` resumes them exactly.
//! - **Likelihoods you can trust.** [`Vae::log_likelihood`] estimates `ln p(x)` by importance
//!   sampling with `K` posterior draws (`eval_samples`, default 1000), processed in chunks so
//!   memory stays bounded; it is the IWAE bound, a lower bound in expectation that tightens
//!   with `K`. The tests check it against the closed-form likelihood of a linear-Gaussian model.
//! - **VQ-VAE priors.** Sampling from a VQ-VAE needs a prior over its codes: gm-core's
//!   [`CodePrior`] is the seam for gm-autoregressive. Until one is attached with
//!   [`VqVae::set_prior`], sampling returns `GmError::Unsupported`; an attached prior is saved
//!   and loaded with the model.
//! - **Specs.** [`VaeConfig`] (family `vae`) and [`VqVaeConfig`] (family `vq_vae`) are gm-core
//!   model specs; [`register`] adds both families and the run files in `configs/` (binarized
//!   MNIST with MLP and convolutional networks, 8-bit MNIST, the 2D toy sets, the VQ-VAE).
//!
//! Data are `[batch] ++ data_shape` (or flattened `[batch, D]`); a spec builds its model with the
//! data set's own event shape.
//!
//! ```no_run
//! use gm_core::model::{Batch, GenerativeModel};
//! use gm_core::tch::{Device, Kind, Tensor};
//! use gm_core::train::Config;
//! use gm_vae::{Vae, VaeConfig};
//!
//! # fn main() -> gm_core::Result<()> {
//! let config = VaeConfig::from_toml_str("latent_dim = 16\n[encoder]\nkind = \"mlp\"\nhidden = [128]")?;
//! let mut vae = Vae::new(&config, Device::Cpu)?;
//! let x = Tensor::rand([64, 784], (Kind::Float, Device::Cpu)).round();
//! vae.train_step(&Batch::new(x.shallow_clone()))?;
//! let posterior = vae.encode(&x)?; // q(z | x), a diagonal Gaussian
//! let nll = vae.log_likelihood(&x)?.mean(Kind::Float).neg(); // IWAE estimate, K = 1000
//! let samples = vae.sample(16)?; // [16, 784], through GenerativeModel::sample
//! # Ok(())
//! # }
//! ```

pub use gm_core;

pub mod config;
pub mod decoder;
pub mod encoder;
pub mod likelihood;
pub mod network;
pub mod spec;
pub mod vae;
pub mod vq;

pub use config::{ContextConfig, ObjectiveConfig, VaeConfig};
pub use encoder::DiagGaussian;
pub use gm_core::code_prior::{CodePrior, UniformCodePrior};
pub use likelihood::{DiscretizedLogistic, GaussianVariance, Likelihood, LikelihoodConfig};
pub use network::{ConvNetConfig, NetworkConfig};
pub use spec::{register, SHIPPED_CONFIGS};
pub use vae::{ElboTerms, Vae, VaeNet};
pub use vq::{CodebookUpdate, QuantizerConfig, VqVae, VqVaeConfig};
