//! gm-gan: generative adversarial networks as parts that mix freely and ready models.
//!
//! - [`loss`]: the games (minimax, non-saturating, least squares, hinge, Wasserstein).
//! - [`regularizer`]: the WGAN-GP gradient penalty and R1.
//! - [`layers`]: linear and convolutional layers with spectral normalisation (one
//!   power-iteration step per training pass, its vector saved with the model).
//! - [`network`]: MLP and DCGAN-style generators and discriminators, class-conditional through
//!   a label embedding and a projection discriminator.
//! - [`model`]: [`Gan`], two players with one optimizer each, `n_critic`, two learning rates
//!   and an EMA generator used for sampling; collapse signs in the training statistics.
//! - [`collapse`]: reads those statistics and names the signs of collapse.
//!
//! A GAN has no likelihood (kind "none"): it is judged by its samples, with the distances of
//! `gm_core::metrics`.

pub use gm_core;

pub mod collapse;
pub mod config;
pub mod layers;
pub mod loss;
pub mod model;
pub mod network;
pub mod regularizer;
pub mod spec;

pub use collapse::{collapse_signs, CollapseSign};
pub use config::GanConfig;
pub use loss::GanLoss;
pub use model::Gan;
pub use network::{DiscriminatorConfig, GeneratorConfig};
pub use regularizer::RegularizerConfig;
pub use spec::{register, SHIPPED_CONFIGS};
