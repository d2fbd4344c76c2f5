//! gm-autoregressive: models that factor a density by the chain rule,
//! `p(x) = Π_d p(x_d | x_<d)`, so their likelihood is exact and costs one network pass.
//!
//! - [`output`]: the conditional of one value (Bernoulli, a softmax over levels, a mixture of
//!   Gaussians) and sampling filters (temperature, top-k, top-p).
//! - [`network`]: the [`Network`] seam and [`NetworkConfig`], which builds each of:
//!   - [`nade`]: NADE, tied input weights and an O(D·H) running sum;
//!   - [`made`]: MADE, a masked MLP with one or several (order-agnostic) orders;
//!   - [`pixelcnn`]: PixelCNN, masked convolutions of types A and B with residual blocks;
//!   - [`gated`]: Gated PixelCNN, vertical and horizontal stacks without a blind spot, gated
//!     units, class conditioning.
//! - [`model`]: [`Autoregressive`], any network and output behind the model interface, and the
//!   `autoregressive` family's registration.
//! - [`code_prior`]: [`AutoregressiveCodePrior`], a PixelCNN prior over a VQ-VAE's code grids
//!   (gm-core's `CodePrior`).
//!
//! Causality (no output sees its own value or a later one) is checked for every network with
//! `gm_core::testing::assert_causal`.

pub use gm_core;

pub mod code_prior;
pub mod gated;
pub mod made;
pub mod model;
pub mod nade;
pub mod network;
pub mod output;
pub mod pixelcnn;

pub use code_prior::{default_prior_config, AutoregressiveCodePrior};
pub use gated::GatedPixelCnnConfig;
pub use made::MadeNetConfig;
pub use model::{register, Autoregressive, AutoregressiveConfig, SHIPPED_CONFIGS};
pub use nade::NadeConfig;
pub use network::{Network, NetworkConfig};
pub use output::{draw_categorical, filter_logits, Output, OutputConfig};
pub use pixelcnn::PixelCnnConfig;
