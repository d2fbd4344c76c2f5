//! [`DiffusionConfig`] as a gm-core model spec, and the family's registration.

use crate::config::DiffusionConfig;
use crate::model::Diffusion;
use gm_core::model::GenerativeModel;
use gm_core::spec::{Budget, DataInfo, ModelSpec, Registry};
use gm_core::tch::Device;
use gm_core::Result;

/// The TOML run files shipped in `configs/`, by file stem; registered as `diffusion/<stem>`.
pub const SHIPPED_CONFIGS: [(&str, &str); 5] = [
    ("toy_mlp", include_str!("../configs/toy_mlp.toml")),
    ("toy_mlp_ode", include_str!("../configs/toy_mlp_ode.toml")),
    ("toy_learned", include_str!("../configs/toy_learned.toml")),
    ("mnist_unet", include_str!("../configs/mnist_unet.toml")),
    (
        "mnist_unet_conditional",
        include_str!("../configs/mnist_unet_conditional.toml"),
    ),
];

/// Registers the `diffusion`, `flow_matching` and `masked_diffusion` families and their
/// shipped run files (`diffusion/toy_mlp`, `flow_matching/toy`, ...).
pub fn register(registry: &mut Registry) {
    crate::training::register_family::<DiffusionConfig>(registry, "diffusion", &SHIPPED_CONFIGS);
    crate::flow_matching::register(registry);
    crate::masked_model::register(registry);
}

impl ModelSpec for DiffusionConfig {
    fn family(&self) -> &'static str {
        "diffusion"
    }

    fn scale_to_budget(&mut self, budget: &Budget) {
        crate::training::scale(&mut self.lr_schedule, self.ema.as_mut(), budget);
    }

    fn build(&self, data: &DataInfo, device: Device) -> Result<Box<dyn GenerativeModel>> {
        Ok(Box::new(Diffusion::new(self, data, device)?))
    }
}
