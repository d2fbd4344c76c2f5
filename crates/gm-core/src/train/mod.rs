//! The training kit: an Adam/AdamW with saveable state, clipping, EMA, schedules, atomic
//! checkpoints with exact resume, TOML configs, and a trainer that drives any
//! [`crate::model::GenerativeModel`].

pub mod checkpoint;
pub mod config;
pub mod ema;
pub mod flat;
pub(crate) mod fused;
pub(crate) mod openmp;
pub mod optim;
pub mod schedule;
pub mod trainer;
pub mod training;

pub use checkpoint::StateDict;
pub use config::Config;
pub use ema::{Ema, EmaConfig};
pub use flat::FlatParameters;
pub use optim::{clip_grad_norm, Adam, AdamConfig};
pub use schedule::LrSchedule;
pub use trainer::{TrainConfig, TrainHistory, Trainer};
pub use training::Training;
