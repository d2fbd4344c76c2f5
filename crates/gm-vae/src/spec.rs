//! [`VaeConfig`] and [`VqVaeConfig`] as gm-core model specs, and the family's registration.

use crate::config::{ContextConfig, ObjectiveConfig, VaeConfig};
use crate::likelihood::LikelihoodConfig;
use crate::vae::Vae;
use crate::vq::{VqVae, VqVaeConfig};
use gm_core::model::GenerativeModel;
use gm_core::spec::{Budget, DataInfo, ModelSpec, Registry};
use gm_core::tch::Device;
use gm_core::{GmError, Result};

/// The TOML run files shipped in `configs/`, by file stem; registered as `vae/<stem>`.
pub const SHIPPED_CONFIGS: [(&str, &str); 8] = [
    ("mnist_mlp", include_str!("../configs/mnist_mlp.toml")),
    ("mnist_conv", include_str!("../configs/mnist_conv.toml")),
    (
        "mnist_grey_logistic",
        include_str!("../configs/mnist_grey_logistic.toml"),
    ),
    ("vq_vae_mnist", include_str!("../configs/vq_vae_mnist.toml")),
    (
        "toy_checkerboard",
        include_str!("../configs/toy_checkerboard.toml"),
    ),
    (
        "toy_eight_gaussians",
        include_str!("../configs/toy_eight_gaussians.toml"),
    ),
    (
        "toy_two_moons",
        include_str!("../configs/toy_two_moons.toml"),
    ),
    (
        "toy_two_spirals",
        include_str!("../configs/toy_two_spirals.toml"),
    ),
];

/// Registers the `vae` and `vq_vae` families and the shipped run files (`vae/mnist_mlp`, ...).
pub fn register(registry: &mut Registry) {
    registry.add_family::<VaeConfig>("vae");
    registry.add_family::<VqVaeConfig>("vq_vae");
    for (name, text) in SHIPPED_CONFIGS {
        registry.add_shipped(format!("vae/{name}"), text);
    }
}

/// The data shape a model is built with: the data set's own event shape, provided it holds as
/// many values as the config's `data_shape` (an MLP flattens either way).
fn fitted_shape(data_shape: &[i64], data: &DataInfo) -> Result<Vec<i64>> {
    let elements: i64 = data_shape.iter().product();
    if elements != data.elements() {
        return Err(GmError::config(
            "model.data_shape",
            format!(
                "{data_shape:?} holds {elements} values but the data set's examples {:?} hold {}",
                data.event_shape,
                data.elements()
            ),
        ));
    }
    Ok(data.event_shape.clone())
}

/// The likelihood must describe the data set's values: a Bernoulli decoder binary data, a
/// 256-way one 8-bit data, a Gaussian real values.
fn check_likelihood(likelihood: &LikelihoodConfig, data: &DataInfo) -> Result<()> {
    let wanted = likelihood.value_kind();
    if wanted != data.values {
        return Err(GmError::config(
            "model.likelihood",
            format!(
                "this likelihood describes {wanted:?} values but the data set's are {:?}",
                data.values
            ),
        ));
    }
    Ok(())
}

impl ModelSpec for VaeConfig {
    fn family(&self) -> &'static str {
        "vae"
    }

    fn scale_to_budget(&mut self, budget: &Budget) {
        self.lr_schedule = self.lr_schedule.scaled(budget);
        if let ObjectiveConfig::Elbo {
            kl_warmup_steps, ..
        } = &mut self.objective
        {
            *kl_warmup_steps = budget.scale(*kl_warmup_steps);
        }
    }

    fn build(&self, data: &DataInfo, device: Device) -> Result<Box<dyn GenerativeModel>> {
        let data_shape = fitted_shape(&self.data_shape, data)?;
        check_likelihood(&self.likelihood, data)?;
        match self.context {
            ContextConfig::None => {}
            ContextConfig::Labels { classes } if classes == data.classes => {}
            ContextConfig::Labels { classes } => {
                return Err(GmError::config(
                    "model.context.classes",
                    format!("{classes} classes, but the data set has {}", data.classes),
                ))
            }
            ContextConfig::Vector { .. } => {
                return Err(GmError::config(
                    "model.context",
                    "a data set carries class labels, not context vectors: use kind = \"labels\" or \"none\"",
                ))
            }
        }
        let mut config = self.clone();
        config.data_shape = data_shape;
        Ok(Box::new(Vae::new(&config, device)?))
    }
}

impl ModelSpec for VqVaeConfig {
    fn family(&self) -> &'static str {
        "vq_vae"
    }

    fn scale_to_budget(&mut self, budget: &Budget) {
        self.lr_schedule = self.lr_schedule.scaled(budget);
    }

    fn build(&self, data: &DataInfo, device: Device) -> Result<Box<dyn GenerativeModel>> {
        Ok(Box::new(self.build_vq_vae(data, device)?))
    }
}

impl VqVaeConfig {
    /// [`ModelSpec::build`] with the concrete type, for models built around a VQ-VAE (one
    /// with a trained code prior).
    pub fn build_vq_vae(&self, data: &DataInfo, device: Device) -> Result<VqVae> {
        let data_shape = fitted_shape(&self.data_shape, data)?;
        check_likelihood(&self.likelihood, data)?;
        let mut config = self.clone();
        config.data_shape = data_shape;
        VqVae::new(&config, device)
    }
}
