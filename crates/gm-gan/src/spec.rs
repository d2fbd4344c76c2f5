//! [`GanConfig`] as a gm-core model spec, and the family's registration.

use crate::config::GanConfig;
use crate::model::Gan;
use gm_core::model::GenerativeModel;
use gm_core::spec::{Budget, DataInfo, ModelSpec, Registry};
use gm_core::tch::Device;
use gm_core::Result;

/// The TOML run files shipped in `configs/`, by file stem; registered as `gan/<stem>`.
pub const SHIPPED_CONFIGS: [(&str, &str); 4] = [
    ("toy_mlp", include_str!("../configs/toy_mlp.toml")),
    ("toy_wgan_gp", include_str!("../configs/toy_wgan_gp.toml")),
    ("mnist_dcgan", include_str!("../configs/mnist_dcgan.toml")),
    (
        "mnist_dcgan_conditional",
        include_str!("../configs/mnist_dcgan_conditional.toml"),
    ),
];

/// Registers the `gan` family and the shipped run files (`gan/toy_mlp`, ...).
pub fn register(registry: &mut Registry) {
    registry.add_family::<GanConfig>("gan");
    for (name, text) in SHIPPED_CONFIGS {
        registry.add_shipped(format!("gan/{name}"), text);
    }
}

impl ModelSpec for GanConfig {
    fn family(&self) -> &'static str {
        "gan"
    }

    fn scale_to_budget(&mut self, budget: &Budget) {
        self.lr_schedule = self.lr_schedule.scaled(budget);
        if let Some(ema) = &mut self.ema {
            *ema = ema.scaled(budget);
        }
    }

    fn build(&self, data: &DataInfo, device: Device) -> Result<Box<dyn GenerativeModel>> {
        Ok(Box::new(Gan::new(self, data, device)?))
    }
}
