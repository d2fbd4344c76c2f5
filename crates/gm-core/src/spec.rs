//! Model specs, run configs and the registry of families.
//!
//! A family crate describes each of its models by a config struct that implements
//! [`ModelSpec`]: it validates itself, rescales every length measured in steps to a run's step
//! budget in one method ([`ModelSpec::scale_to_budget`]), and builds a
//! `Box<dyn GenerativeModel>` for a data set described by [`DataInfo`]. A [`Registry`] maps
//! family names (`"flow"`, `"vae"`, ...) to their spec parsers and holds each family's shipped
//! TOML files, so a [`RunConfig`] whose file says `family = "flow"` builds its model with no
//! family-specific code in the caller:
//!
//! ```toml
//! family = "flow"
//! dataset = "two_moons"
//!
//! [train]
//! steps = 3000
//! batch_size = 512
//!
//! [model]            # the family's own spec, e.g. gm_flow::FlowConfig
//! ...
//! ```

use crate::data::ValueKind;
use crate::model::GenerativeModel;
use crate::train::config::{in_section, Config};
use crate::train::TrainConfig;
use crate::{GmError, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use tch::Device;

/// What a model needs to know of its data set to be built for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataInfo {
    /// The shape of one example: every model accepts `[batch] ++ event_shape`.
    pub event_shape: Vec<i64>,
    /// Continuous values, or integers `0..levels`.
    pub values: ValueKind,
    /// The number of classes of the labels, 0 for an unlabelled set.
    pub classes: i64,
}

impl DataInfo {
    pub fn new(event_shape: &[i64], values: ValueKind, classes: i64) -> Self {
        DataInfo {
            event_shape: event_shape.to_vec(),
            values,
            classes,
        }
    }

    /// The label classes a model conditions on: the data set's for a `conditional` model (an
    /// error naming the `conditional` key if the set has none), 0 otherwise. `model` names the
    /// model in the message ("a conditional GAN").
    pub fn condition_classes(&self, conditional: bool, model: &str) -> Result<i64> {
        if !conditional {
            return Ok(0);
        }
        if self.classes < 1 {
            return Err(GmError::config(
                "conditional",
                format!("{model} needs a data set with class labels; this one has none"),
            ));
        }
        Ok(self.classes)
    }

    /// Values per example.
    pub fn elements(&self) -> i64 {
        self.event_shape.iter().product()
    }
}

/// A run's step budget against the budget a config was written for: every length measured in
/// steps (schedules, warm-ups, EMA starts, log and checkpoint intervals) scales by
/// `steps / designed_for`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    designed_for: u64,
    steps: u64,
}

impl Budget {
    /// A budget of `steps` for a config written for `designed_for` steps.
    pub fn new(designed_for: u64, steps: u64) -> Result<Self> {
        if designed_for == 0 || steps == 0 {
            return Err(GmError::config(
                "train.steps",
                format!("a step budget must be positive, got {designed_for} -> {steps}"),
            ));
        }
        Ok(Budget {
            designed_for,
            steps,
        })
    }

    /// The new number of steps.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The number of steps the config was written for.
    pub fn designed_for(&self) -> u64 {
        self.designed_for
    }

    /// `steps / designed_for`: how much longer (above 1) or shorter the run is than its config
    /// was written for.
    pub fn ratio(&self) -> f64 {
        self.steps as f64 / self.designed_for as f64
    }

    /// `length` (in steps) scaled to this budget, rounded to nearest; a positive length stays
    /// at least 1 and 0 stays 0.
    pub fn scale(&self, length: u64) -> u64 {
        if length == 0 {
            return 0;
        }
        let scaled = (length as u128 * self.steps as u128 + self.designed_for as u128 / 2)
            / self.designed_for as u128;
        scaled.clamp(1, u64::MAX as u128) as u64
    }
}

/// What every spec gets from being a serde [`Config`]: validation, its TOML form and cloning
/// behind a box. Implemented for every `Config + Clone` spec; nobody writes it by hand.
pub trait SpecConfig {
    /// Checks every value; the error names the key.
    fn validate(&self) -> Result<()>;

    /// The spec as a TOML table (what `[model]` of a run file holds).
    fn to_toml(&self) -> Result<toml::Table>;

    /// A boxed copy.
    fn clone_spec(&self) -> Box<dyn ModelSpec>;
}

impl<C: ModelSpec + Config + Clone + 'static> SpecConfig for C {
    fn validate(&self) -> Result<()> {
        Config::validate(self)
    }

    fn to_toml(&self) -> Result<toml::Table> {
        config_to_table(self)
    }

    fn clone_spec(&self) -> Box<dyn ModelSpec> {
        Box::new(self.clone())
    }
}

/// A family's model config: validated once, scaled to a step budget in one place, and able to
/// build the model it describes. Validation, the TOML form and cloning come from
/// [`SpecConfig`], implemented for every serde [`Config`].
pub trait ModelSpec: SpecConfig + std::fmt::Debug {
    /// The family name the spec is registered under; the built model reports the same.
    fn family(&self) -> &'static str;

    /// Rescales every length measured in optimizer steps (learning-rate schedules, warm-ups,
    /// EMA start, phases) to `budget`.
    fn scale_to_budget(&mut self, budget: &Budget);

    /// Builds a fresh model for `data` on `device`, seeded by libtorch's generator. Refuses data
    /// the model cannot describe (e.g. a Bernoulli decoder and 8-bit pixels), naming the key.
    fn build(&self, data: &DataInfo, device: Device) -> Result<Box<dyn GenerativeModel>>;

    /// A fingerprint of the spec: the first 16 bytes, as hex, of the SHA-256 of its family name
    /// and canonical TOML. Checkpoints carry it so that weights never load into a model of
    /// another spec.
    fn fingerprint(&self) -> Result<String> {
        fingerprint_of(self.family(), &self.to_toml()?)
    }
}

impl Clone for Box<dyn ModelSpec> {
    fn clone(&self) -> Self {
        self.clone_spec()
    }
}

/// SHA-256 (hex, first 16 bytes) of a family name and a canonical TOML table.
pub fn fingerprint_of(family: &str, table: &toml::Table) -> Result<String> {
    use sha2::{Digest, Sha256};
    let text = toml::to_string(table).map_err(|e| GmError::config("model", e.to_string()))?;
    let digest = Sha256::digest(format!("{family}\n{text}").as_bytes());
    Ok(digest.iter().take(16).map(|b| format!("{b:02x}")).collect())
}

/// Serializes a serde config to a TOML table (the `to_toml` of most specs).
pub fn config_to_table<C: Serialize>(config: &C) -> Result<toml::Table> {
    toml::Table::try_from(config).map_err(|e| GmError::config("model", e.to_string()))
}

/// Parses a family's `[model]` table into its config type and validates it; errors name the
/// key under `model.`.
pub fn parse_spec<C>(table: toml::Table) -> Result<Box<dyn ModelSpec>>
where
    C: ModelSpec + Config + Clone + 'static,
{
    let config: C = crate::train::config::from_toml_value(toml::Value::Table(table), "[model]")
        .map_err(|e| crate::train::config::with_section("model", e))?;
    Ok(Box::new(config))
}

type SpecParser = fn(toml::Table) -> Result<Box<dyn ModelSpec>>;

/// Families by name, and the TOML run files each family ships.
#[derive(Default)]
pub struct Registry {
    families: BTreeMap<&'static str, SpecParser>,
    shipped: BTreeMap<String, &'static str>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("families", &self.families.keys().collect::<Vec<_>>())
            .field("shipped", &self.shipped.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Registry {
    pub fn new() -> Self {
        Registry::default()
    }

    /// Registers config type `C` as family `name`.
    pub fn add_family<C>(&mut self, name: &'static str) -> &mut Self
    where
        C: ModelSpec + Config + Clone + 'static,
    {
        self.families.insert(name, parse_spec::<C>);
        self
    }

    /// Registers a shipped run file as `<family crate>/<name>` (e.g. `flow/nsf_toy`).
    pub fn add_shipped(&mut self, name: impl Into<String>, text: &'static str) -> &mut Self {
        self.shipped.insert(name.into(), text);
        self
    }

    /// The registered family names.
    pub fn families(&self) -> Vec<&'static str> {
        self.families.keys().copied().collect()
    }

    /// The names of the shipped run files.
    pub fn shipped_names(&self) -> Vec<&str> {
        self.shipped.keys().map(|s| s.as_str()).collect()
    }

    /// The text of a shipped run file.
    pub fn shipped_text(&self, name: &str) -> Result<&'static str> {
        self.shipped.get(name).copied().ok_or_else(|| {
            GmError::config(
                "config",
                format!(
                    "no shipped config named {name:?}; shipped: {:?}",
                    self.shipped_names()
                ),
            )
        })
    }

    /// Parses a `[model]` table for `family`.
    pub fn parse_spec(&self, family: &str, table: toml::Table) -> Result<Box<dyn ModelSpec>> {
        let parser = self.families.get(family).ok_or_else(|| {
            GmError::config(
                "family",
                format!(
                    "unknown family {family:?}; registered: {:?}",
                    self.families()
                ),
            )
        })?;
        parser(table)
    }

    /// Parses and validates a run file's text.
    pub fn parse_run(&self, text: &str, origin: &str) -> Result<RunConfig> {
        let raw: RawRun = toml::from_str(text).map_err(|e| GmError::ConfigParse {
            path: origin.into(),
            message: e.to_string(),
        })?;
        let model = self
            .parse_spec(&raw.family, raw.model)
            .map_err(|e| match e {
                GmError::ConfigParse { message, .. } => GmError::ConfigParse {
                    path: format!("{origin} [model]"),
                    message,
                },
                other => other,
            })?;
        if model.family() != raw.family {
            return Err(GmError::config(
                "family",
                format!(
                    "{:?} is registered with a spec of family {:?}",
                    raw.family,
                    model.family()
                ),
            ));
        }
        let run = RunConfig {
            dataset: raw.dataset,
            train: raw.train,
            model,
        };
        run.validate()?;
        Ok(run)
    }

    /// A shipped run file (`flow/nsf_toy`) or a path to one (anything ending in `.toml`).
    pub fn load_run(&self, name_or_path: &str) -> Result<RunConfig> {
        if name_or_path.ends_with(".toml") {
            let path = Path::new(name_or_path);
            let text = std::fs::read_to_string(path).map_err(|e| GmError::io(path, e))?;
            return self.parse_run(&text, name_or_path);
        }
        self.parse_run(self.shipped_text(name_or_path)?, name_or_path)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRun {
    family: String,
    dataset: String,
    #[serde(default)]
    train: TrainConfig,
    #[serde(default)]
    model: toml::Table,
}

/// One run: a data set by name (see [`crate::data::load_named`]), a training budget and a
/// model spec. Replaces the per-family run configs.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub dataset: String,
    pub train: TrainConfig,
    pub model: Box<dyn ModelSpec>,
}

impl RunConfig {
    /// The family of the model.
    pub fn family(&self) -> &'static str {
        self.model.family()
    }

    pub fn validate(&self) -> Result<()> {
        if !crate::data::DATASET_NAMES.contains(&self.dataset.as_str()) {
            return Err(GmError::config(
                "dataset",
                format!(
                    "unknown data set {:?}; expected one of {:?}",
                    self.dataset,
                    crate::data::DATASET_NAMES
                ),
            ));
        }
        in_section("train", self.train.validate())?;
        in_section("model", self.model.validate())
    }

    /// The same run with a budget of `steps` steps: the one place where a budget is applied.
    /// The model spec rescales its schedules and warm-ups, and the log and checkpoint intervals
    /// keep their share of the run.
    pub fn with_steps(&self, steps: u64) -> Result<RunConfig> {
        let budget = Budget::new(self.train.steps, steps)?;
        let mut run = self.clone();
        run.model.scale_to_budget(&budget);
        run.train.steps = steps;
        run.train.log_every = budget.scale(self.train.log_every).max(1);
        run.train.checkpoint_every = budget.scale(self.train.checkpoint_every);
        run.validate()?;
        Ok(run)
    }

    /// The model spec as its concrete config type `C` (for code that needs the family's own
    /// model rather than the interface), through its TOML form.
    pub fn model_config<C: DeserializeOwned>(&self) -> Result<C> {
        toml::Value::Table(self.model.to_toml()?)
            .try_into()
            .map_err(|e: toml::de::Error| GmError::ConfigParse {
                path: "[model]".into(),
                message: e.to_string(),
            })
    }

    /// The run as TOML text (the canonical form, hashed to key cached results).
    pub fn to_toml_string(&self) -> Result<String> {
        let mut table = toml::Table::new();
        table.insert("family".into(), self.family().into());
        table.insert("dataset".into(), self.dataset.clone().into());
        table.insert(
            "train".into(),
            toml::Value::Table(config_to_table(&self.train)?),
        );
        table.insert("model".into(), toml::Value::Table(self.model.to_toml()?));
        toml::to_string_pretty(&table).map_err(|e| GmError::config("run", e.to_string()))
    }
}
