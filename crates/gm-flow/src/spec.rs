//! [`FlowConfig`] as a gm-core model spec, and the family's registration.

use crate::config::{DataSpace, FlowConfig, SHIPPED_CONFIGS};
use crate::flow::FlowModel;
use gm_core::data::ValueKind;
use gm_core::model::GenerativeModel;
use gm_core::spec::{Budget, DataInfo, ModelSpec, Registry};
use gm_core::tch::Device;
use gm_core::{GmError, Result};

impl ModelSpec for FlowConfig {
    fn family(&self) -> &'static str {
        "flow"
    }

    fn scale_to_budget(&mut self, budget: &Budget) {
        self.schedule = self.schedule.scaled(budget);
        if let Some(ema) = &mut self.ema {
            *ema = ema.scaled(budget);
        }
    }

    /// Refuses data whose space differs from `data` (a flow for continuous values on discrete
    /// data would report a density where only a bound is honest) and label counts that differ
    /// from `context_classes`.
    fn build(&self, data: &DataInfo, device: Device) -> Result<Box<dyn GenerativeModel>> {
        let fits = matches!(
            (self.data, data.values),
            (DataSpace::Continuous, ValueKind::Continuous)
        ) || matches!(
            (self.data, data.values),
            (DataSpace::Discrete { levels: a }, ValueKind::Discrete { levels: b }) if a == b
        );
        if !fits {
            return Err(GmError::config(
                "model.data",
                format!(
                    "the config says {:?} but the data set's values are {:?}",
                    self.data, data.values
                ),
            ));
        }
        if self.context_classes > 0 && self.context_classes != data.classes {
            return Err(GmError::config(
                "model.context_classes",
                format!(
                    "{} classes, but the data set has {}",
                    self.context_classes, data.classes
                ),
            ));
        }
        Ok(Box::new(FlowModel::new(self, &data.event_shape, device)?))
    }
}

/// Registers the `flow` family and its shipped run files (`flow/nsf_toy`, ...).
pub fn register(registry: &mut Registry) {
    registry.add_family::<FlowConfig>("flow");
    for (name, text) in SHIPPED_CONFIGS {
        registry.add_shipped(format!("flow/{name}"), text);
    }
}
