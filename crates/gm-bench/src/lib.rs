//! # gm-bench
//!
//! Trains every model family on the data sets that suit it, under one protocol, and writes a
//! report (`report.json`, `report.md`, `index.html` with sample grids and training curves).
//!
//! - [`suite`]: which model runs on which data set, with budgets per profile, read from
//!   `suite.toml`; models are built through gm-core's registry of family specs.
//! - [`runner`]: trains one entry through gm-core's `Trainer` (resuming from its checkpoint,
//!   keyed by a hash of its configuration), evaluates it, and survives a failing entry.
//! - [`metrics`]: negative log-likelihoods with their standard errors, the paired KL to a toy
//!   set's true density, the [`metrics::Metric`] trait of two-sample distances (energy, MMD,
//!   sliced Wasserstein, Fréchet) with the data's own floor.
//! - [`classifier`], [`image_metrics`]: a digit classifier trained once and cached in the data
//!   folder, and the Fréchet distance, class balance and conditional accuracy of image samples
//!   in its features.
//! - [`report`]: `report.json`, `report.md` and `index.html` with [`charts`] (SVG, drawn
//!   with plotters), the family summary table, and the tables the terminal prints.
//! - [`memory`], [`provenance`]: a phase's peak memory; the code version, device, threads
//!   and date each result records (results are keyed by the code that produced them).
//! - [`saved`]: a trained model rebuilt from its checkpoint alone (`gm sample`, `gm eval`).
//! - [`vq_prior`]: family `vq_vae_prior`, a VQ-VAE (gm-vae) and its PixelCNN code prior
//!   (gm-autoregressive) trained in one two-phase run, so the suite samples and scores it.

pub mod charts;
pub mod classifier;
pub mod image_metrics;
pub mod images;
pub mod memory;
pub mod metrics;
pub mod provenance;
pub mod report;
pub mod runner;
pub mod saved;
pub mod suite;
pub mod text;
pub mod vq_prior;
