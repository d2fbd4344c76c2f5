//! Helpers shared by the integration tests.
#![allow(dead_code)]

use gm_core::spec::Registry;
use gm_diffusion::{DenoiserConfig, DiffusionConfig};

/// Runs libtorch on one thread: the test tensors are small, and two threads spinning on a
/// shared two-core machine can slow a test a hundredfold when other processes need the cores.
pub fn single_thread() {
    gm_core::tch::set_num_threads(1);
}

pub fn registry() -> Registry {
    let mut r = Registry::new();
    gm_diffusion::register(&mut r);
    r
}

/// A shipped config's model table and data set.
pub fn shipped(name: &str) -> (DiffusionConfig, String) {
    let run = registry().load_run(&format!("diffusion/{name}")).unwrap();
    (run.model_config().unwrap(), run.dataset.clone())
}

/// The same model at a tiny size for fast law checks: narrow networks, 20 steps, 4 strata.
pub fn shrink(c: &mut DiffusionConfig) {
    match &mut c.denoiser {
        DenoiserConfig::Mlp {
            hidden,
            time_embedding,
        } => {
            *hidden = vec![16];
            *time_embedding = 8;
        }
        DenoiserConfig::Unet { channels, .. } => *channels = 8,
    }
    c.timesteps = 20;
    c.likelihood_strata = 4;
    c.sampler.steps = Some(5);
}
