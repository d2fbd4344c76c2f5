//! The training kit every model of the crate shares lives in gm-core (the autoregressive
//! models use it too); re-exported here under its old path.

pub use gm_core::train::training::*;
