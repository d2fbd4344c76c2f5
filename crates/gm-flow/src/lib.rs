//! # gm-flow
//!
//! Normalizing flows with exact log-likelihoods and exact inversion, on gm-core's bijector and
//! model interfaces.
//!
//! - Layers ([`layer::FlowLayer`], each also a gm-core `Bijector`): additive and affine coupling
//!   (NICE, RealNVP) and rational-quadratic spline coupling for vectors; checkerboard and channel
//!   coupling for images; MAF and IAF on MADE (affine or spline); ActNorm; the invertible 1×1
//!   convolution in LU form; squeeze; Glow's multi-scale architecture; permutations; logit
//!   pre-processing of dequantised pixels. Coupling and autoregressive layers take an optional
//!   context (a one-hot label) for conditional flows.
//! - [`Flow`]: layers over a standard Normal base, with `log_prob`, `transform_to_noise`,
//!   `inverse` and `sample`.
//! - [`FlowModel`]: a trainable flow built from a TOML [`FlowConfig`], implementing gm-core's
//!   [`GenerativeModel`](gm_core::model::GenerativeModel) with likelihood kind `Exact`
//!   (continuous data) or `LowerBound` (dequantised discrete data), with an optional weight
//!   average for sampling and evaluation.
//! - [`register`]: the `flow` family and its shipped run files (`configs/`) for gm-core's
//!   registry; [`FlowConfig`] is the family's model spec.
//!
//! Direction: a layer's `forward` goes from data to noise.
//!
//! ```no_run
//! use gm_flow::{FlowConfig, FlowModel};
//! use gm_core::model::{Batch, GenerativeModel};
//! use gm_core::tch::{Device, Kind, Tensor};
//! # fn main() -> gm_core::Result<()> {
//! let mut model = FlowModel::new(&FlowConfig::default(), &[2], Device::Cpu)?;
//! let x = Tensor::randn([256, 2], (Kind::Float, Device::Cpu));
//! model.train_step(&Batch::new(x.shallow_clone()))?;
//! let log_p = model.log_likelihood(&x)?.expect("flows have exact likelihoods");
//! let samples = model.sample(16)?; // [16, 2]
//! # Ok(()) }
//! ```

pub mod config;
pub mod flow;
pub mod glow;
pub mod image;
pub mod layer;
pub mod spec;
pub mod spline;
pub mod vector;

pub use config::{Architecture, DataSpace, FlowConfig, SHIPPED_CONFIGS};
pub use flow::{build_flow, Flow, FlowModel};
pub use layer::{ElementTransform, FlowLayer};
pub use spec::register;
