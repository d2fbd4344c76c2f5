//! gm-autoregressive: models that factor a density by the chain rule,
//! `p(x) = Π_d p(x_d | x_<d)`, so their likelihood is exact and costs one network pass.
//!
//! - [`output`]: the conditional of one value (Bernoulli, a softmax over levels, a mixture of
//!   Gaussians) and sampling filters (temperature, top-k, top-p).
//! - [`network`]: the [`Network`] seam and [`NetworkConfig`], which builds each of:
//!   - [`nade`]: NADE, tied input weights and an O(D·H) running sum;
//!   - [`made`]: MADE, a masked MLP with one or several (order-agnostic) orders;
//!   - [`pixelcnn`]: PixelCNN, masked convolutions of types A and B with residual blocks;
//!   - [`pixelrnn`]: PixelRNN's Row LSTM, masked row convolutions and a row-wise LSTM state;
//!   - [`gated`]: Gated PixelCNN, vertical and horizontal stacks without a blind spot, gated
//!     units, class conditioning;
//!   - [`transformer`]: a decoder-only causal Transformer with a key/value cache;
//!   - [`lstm`]: an LSTM language model;
//!   - [`wavenet`]: WaveNet, dilated causal convolutions with activation queues for generation.
//! - [`sequence`]: what the sequence networks share: tokens, the [`sequence::Stepper`] seam
//!   (one cached step per value) and O(T) sampling on it.
//! - [`beam`]: beam search over a stepper.
//! - [`scheduled`]: scheduled sampling's probability schedules.
//! - [`model`]: [`Autoregressive`], any network and output behind the model interface, and the
//!   `autoregressive` family's registration.
//! - [`code_prior`]: [`AutoregressiveCodePrior`], a PixelCNN prior over a VQ-VAE's code grids
//!   (gm-core's `CodePrior`).
//!
//! Causality (no output sees its own value or a later one) is checked for every network: by
//! gradients with `gm_core::testing::assert_causal`, and for the networks that read values as
//! tokens (Transformer, LSTM, WaveNet) by enumeration with `assert_causal_discrete`.

pub use gm_core;

pub mod beam;
pub mod code_prior;
pub mod gated;
pub mod lstm;
pub mod made;
pub mod model;
pub mod nade;
pub mod network;
pub mod output;
pub mod pixelcnn;
pub mod pixelrnn;
pub mod scheduled;
pub mod sequence;
pub mod transformer;
pub mod wavenet;

pub use beam::{BeamSearch, Hypothesis};
pub use code_prior::{default_prior_config, AutoregressiveCodePrior};
pub use gated::GatedPixelCnnConfig;
pub use lstm::LstmConfig;
pub use made::MadeNetConfig;
pub use model::{register, Autoregressive, AutoregressiveConfig, SHIPPED_CONFIGS};
pub use nade::NadeConfig;
pub use network::{FusedNll, Network, NetworkConfig};
pub use output::{draw_categorical, filter_logits, Output, OutputConfig};
pub use pixelcnn::PixelCnnConfig;
pub use pixelrnn::PixelRnnConfig;
pub use scheduled::ScheduledSampling;
pub use transformer::TransformerConfig;
pub use wavenet::WaveNetConfig;
