//! # gm-bench
//!
//! Trains every model family on the data sets that suit it, under one protocol, and writes a
//! report (`report.json`, `report.md`, `index.html` with sample grids and training curves).
//!
//! - [`suite`]: which model runs on which data set, with budgets per profile, read from
//!   `suite.toml`; models are built through gm-core's registry of family specs.
//! - [`runner`]: trains one entry through gm-core's `Trainer` (resuming from its checkpoint,
//!   keyed by a hash of its configuration), evaluates it, and survives a failing entry.
//! - [`metrics`]: negative log-likelihoods, the gap to a toy set's true entropy, sample
//!   distances to held-out data (with the data's own floor), throughput.
//! - [`classifier`], [`image_metrics`]: a digit classifier trained once and cached in the data
//!   folder, and the Fréchet distance, class balance and conditional accuracy of image samples
//!   in its features.
//! - [`report`]: the three report files.

pub mod classifier;
pub mod image_metrics;
pub mod images;
pub mod metrics;
pub mod report;
pub mod runner;
pub mod suite;
