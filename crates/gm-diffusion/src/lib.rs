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
//! - [`model`]: [`Diffusion`], trained with the simple loss (or the hybrid loss with learned
//!   variances), label dropout for classifier-free guidance, an EMA used for sampling and
//!   evaluation by default; likelihood kind "lower bound".

pub use gm_core;

pub mod config;
pub mod denoiser;
pub mod likelihood;
pub mod model;
pub mod prediction;
pub mod process;
pub mod schedule;
pub mod spec;

pub use config::{DiffusionConfig, SamplerConfig};
pub use denoiser::DenoiserConfig;
pub use model::Diffusion;
pub use prediction::Prediction;
pub use process::{Decoder, DenoiserOutput, Process, Solver, Variance};
pub use schedule::{Schedule, ScheduleConfig};
pub use spec::{register, SHIPPED_CONFIGS};
