//! gm-autoregressive: see the crate's issue; filled in by its own work.
pub use gm_core;
