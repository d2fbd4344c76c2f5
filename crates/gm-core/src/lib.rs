//! # gm-core
//!
//! The ground every gm model crate stands on: devices and seeds, probability distributions
//! (named as in `torch.distributions`), KL divergences, variational bounds and units,
//! bijectors with log-determinants, masked layers, the one model interface every family
//! implements, data sets, and the training kit (optimizer with saveable state, clipping, EMA,
//! schedules, atomic checkpoints, TOML configs).
//!
//! Model crates reach libtorch only through this crate's re-export, [`tch`], so the whole tree
//! shares one tch version.
//!
//! Conventions used throughout:
//! - A batch is the first dimension; everything after it is the event of one example.
//! - Log-densities and log-determinants are per example, in nats, with shape `[batch]`.
//! - Library functions return [`Result`] for anything a caller can get wrong.

pub use tch;
pub use toml;

pub mod bijectors;
pub mod bounds;
pub mod code_prior;
pub mod data;
pub mod device;
pub mod distributions;
pub mod error;
pub mod kl;
pub mod metrics;
pub mod model;
pub mod nn;
pub mod spec;
pub mod testing;
pub mod train;

pub use error::{GmError, Result};

/// The items most programs need, for `use gm_core::prelude::*`.
pub mod prelude {
    pub use crate::bijectors::{Bijector, Chain};
    pub use crate::bounds::{bits_per_dim, elbo, iwae_bound, log_mean_exp};
    pub use crate::device::{default_device, seed_everything};
    pub use crate::distributions::{
        Bernoulli, Categorical, Distribution, Independent, MixtureOfDiagNormals, Normal,
        StandardNormal,
    };
    pub use crate::error::{GmError, Result};
    pub use crate::kl::{kl_divergence, kl_monte_carlo, KlDivergence};
    pub use crate::model::{
        Batch, GenerativeModel, LikelihoodKind, SampleOptions, StepOutput, WeightChoice,
    };
    pub use crate::spec::{Budget, DataInfo, ModelSpec, Registry, RunConfig};
    pub use crate::train::config::Config;
    pub use tch::{Device, Kind, Tensor};
}
