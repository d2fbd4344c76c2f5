//! The training state of a model with one network: its weights' var store, one Adam optimizer
//! with a learning-rate schedule and an optional weight average, saved under the same names
//! (`model.`, `adam.`, `ema.`) by every model that uses it (diffusion, flow matching, masked
//! diffusion, the autoregressive models); and the family registration those crates share.

use crate::model::{load_var_store, var_store_state, WeightChoice};
use crate::spec::{Budget, Registry};
use crate::train::config::{in_section, Config};
use crate::train::{Adam, AdamConfig, Ema, EmaConfig, LrSchedule, StateDict};
use crate::Result;
use tch::{nn, Tensor};

/// The defaults of the models that train with [`Training`]: Adam at 1e-3 with the gradient norm clipped at 1,
/// and an average of decay 0.999 from the start.
pub fn default_optimizer() -> AdamConfig {
    AdamConfig {
        lr: 1e-3,
        grad_clip_norm: Some(1.0),
        ..AdamConfig::default()
    }
}

/// See [`default_optimizer`].
pub fn default_ema() -> Option<EmaConfig> {
    Some(EmaConfig {
        decay: 0.999,
        start_step: 0,
    })
}

/// The optimizer settings of a config, checked under their TOML keys.
pub fn validate(
    optimizer: &AdamConfig,
    schedule: &LrSchedule,
    ema: Option<&EmaConfig>,
) -> Result<()> {
    in_section("optimizer", optimizer.validate())?;
    in_section("lr_schedule", schedule.validate())?;
    if let Some(ema) = ema {
        in_section("ema", ema.validate())?;
    }
    Ok(())
}

/// The schedule's and the average's lengths scaled to the run's step budget.
pub fn scale(schedule: &mut LrSchedule, ema: Option<&mut EmaConfig>, budget: &Budget) {
    *schedule = schedule.scaled(budget);
    if let Some(ema) = ema {
        *ema = ema.scaled(budget);
    }
}

/// Registers `family`'s config type and its shipped run files as `family/<stem>`.
pub fn register_family<C>(
    registry: &mut Registry,
    family: &'static str,
    shipped: &[(&str, &'static str)],
) where
    C: crate::spec::ModelSpec + Config + Clone + 'static,
{
    registry.add_family::<C>(family);
    for (name, text) in shipped {
        registry.add_shipped(format!("{family}/{name}"), text);
    }
}

/// A var store's weights with their optimizer, learning-rate schedule and average.
#[derive(Debug)]
pub struct Training {
    pub vs: nn::VarStore,
    optimizer: Adam,
    schedule: LrSchedule,
    base_lr: f64,
    ema: Option<Ema>,
}

impl Training {
    /// The optimizer (and average) of every trainable variable of `vs`.
    pub fn new(
        vs: nn::VarStore,
        optimizer: &AdamConfig,
        schedule: &LrSchedule,
        ema: Option<&EmaConfig>,
    ) -> Result<Self> {
        let adam = Adam::new(vs.trainable_variables(), optimizer.clone())?;
        let ema = ema.map(|e| e.init(&vs)).transpose()?;
        Ok(Training {
            vs,
            optimizer: adam,
            schedule: schedule.clone(),
            base_lr: optimizer.lr,
            ema,
        })
    }

    /// Optimizer steps taken.
    pub fn steps(&self) -> u64 {
        self.optimizer.steps().max(0) as u64
    }

    /// One update on `loss` at the schedule's learning rate, then the average's.
    pub fn step(&mut self, loss: &Tensor) -> Result<()> {
        let lr = self.schedule.lr(self.base_lr, self.steps());
        self.optimizer.backward_step(loss, lr)?;
        let steps = self.steps();
        if let Some(ema) = &mut self.ema {
            ema.update(steps)?;
        }
        Ok(())
    }

    /// Runs `f` with the weights `choice` asks for: the average (once trained) or the live ones.
    pub fn with_weights<R>(
        &self,
        choice: WeightChoice,
        f: impl FnOnce() -> Result<R>,
    ) -> Result<R> {
        Ema::with_choice(self.ema.as_ref(), self.steps() > 0, choice, f)
    }

    /// Trainable scalars.
    pub fn parameters(&self) -> i64 {
        crate::nn::count_parameters(&self.vs.trainable_variables())
    }

    /// Weights (`model.`), optimizer state (`adam.`) and average (`ema.`).
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut state = var_store_state(&self.vs, "model.");
        state.extend(self.optimizer.state("adam."));
        if let Some(ema) = &self.ema {
            state.extend(ema.state("ema."));
        }
        state
    }

    /// Restores what [`Training::state`] produced.
    pub fn load_state(&mut self, state: &mut StateDict) -> Result<()> {
        load_var_store(&self.vs, "model.", state)?;
        self.optimizer.load_state("adam.", state)?;
        if let Some(ema) = &mut self.ema {
            ema.load_state("ema.", state)?;
        }
        Ok(())
    }
}
