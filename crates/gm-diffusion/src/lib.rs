//! gm-diffusion: denoising diffusion models with an honest likelihood and fast samplers.
//!
//! - [`schedule`]: linear and cosine noise schedules, q(x_t | x_0) in closed form, the posterior
//!   q(x_s | x_t, x_0) of any jump.
//! - [`prediction`]: ε-, x₀- and v-prediction and the exact conversions between them.
//! - [`denoiser`]: an MLP with a sinusoidal step embedding, and a U-Net (residual blocks, group
//!   norm, self-attention at the lowest resolution), both optionally class-conditional.
//! - [`process`]: the reverse process for any denoiser: the variational bound's terms (with a
//!   discretised Gaussian last step), ancestral DDPM, DDIM with any η and number of steps,
//!   DPM-Solver++ 2M, and DDIM encoding.
//! - [`likelihood`]: the discretised Gaussian, Gaussian densities and KLs in log-variances.
//! - [`ode`]: Euler, Heun, RK4 and adaptive Dormand–Prince 5(4) with per-example step sizes.
//! - [`probability_flow`]: ln p(x) through an ODE's instantaneous change of variables, with the
//!   exact divergence or Hutchinson's estimator.
//! - [`flow_matching`]: [`FlowMatching`], flow matching on the optimal-transport path and
//!   rectified flow with reflow; likelihood kind "exact" on continuous data.
//! - [`masked`] and [`masked_model`]: [`MaskedDiffusion`], absorbing-state discrete diffusion
//!   with its continuous-time ELBO in nats.
//! - [`conditioning`]: label dropout, likelihood labels and classifier-free guidance, shared.
//! - [`model`]: [`Diffusion`], trained with the simple loss (or the hybrid loss with learned
//!   variances), label dropout for classifier-free guidance, an EMA used for sampling and
//!   evaluation by default; the variational bound (kind "lower bound") or the probability-flow
//!   ODE's likelihood.

pub use gm_core;

pub mod conditioning;
pub mod config;
pub mod data_space;
pub mod denoiser;
pub mod flow_matching;
pub mod likelihood;
pub mod masked;
pub mod masked_model;
pub mod model;
pub mod ode;
pub mod prediction;
pub mod probability_flow;
pub mod process;
pub mod schedule;
pub mod spec;
pub mod training;

pub use config::{DiffusionConfig, DiffusionLikelihood, SamplerConfig};
pub use denoiser::DenoiserConfig;
pub use flow_matching::{FlowMatching, FlowMatchingConfig, ProbabilityFlowConfig, ReflowConfig};
pub use masked::{MaskSchedule, MaskingProcess};
pub use masked_model::{MaskedDiffusion, MaskedDiffusionConfig};
pub use model::Diffusion;
pub use ode::{OdeConfig, OdeSolver};
pub use prediction::Prediction;
pub use probability_flow::Divergence;
pub use process::{Decoder, DenoiserOutput, Process, Solver, Variance};
pub use schedule::{Schedule, ScheduleConfig};
pub use spec::{register, SHIPPED_CONFIGS};
