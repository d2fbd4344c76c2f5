//! Helpers shared by the integration tests.
#![allow(dead_code)]

use gm_core::spec::Registry;
use gm_gan::{DiscriminatorConfig, GanConfig, GeneratorConfig};

/// Runs libtorch on one thread: the test tensors are small, and two threads spinning on a
/// shared two-core machine can slow a test a hundredfold when other processes need the cores.
pub fn single_thread() {
    gm_core::tch::set_num_threads(1);
}

pub fn registry() -> Registry {
    let mut r = Registry::new();
    gm_gan::register(&mut r);
    r
}

/// A shipped config's model table.
pub fn shipped(name: &str) -> (GanConfig, String) {
    let run = registry().load_run(&format!("gan/{name}")).unwrap();
    (run.model_config().unwrap(), run.dataset.clone())
}

/// The same networks at a tiny width, for fast law checks.
pub fn shrink(c: &mut GanConfig) {
    match &mut c.generator {
        GeneratorConfig::Mlp { hidden, .. } => *hidden = vec![16],
        GeneratorConfig::Dcgan { channels } => *channels = 4,
    }
    match &mut c.discriminator {
        DiscriminatorConfig::Mlp { hidden, .. } => *hidden = vec![16],
        DiscriminatorConfig::Dcgan { channels, .. } => *channels = 4,
    }
    c.latent_dim = c.latent_dim.min(4);
    // The harness resumes after half its 4 steps: with two critic updates per generator
    // update, the generator's optimizer and average cross the checkpoint too.
    c.n_critic = c.n_critic.min(2);
    c.label_embedding = c.label_embedding.min(4);
    c.diversity_batch = 4;
}
