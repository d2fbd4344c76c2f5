//! The benchmark suite, read from TOML (`suite.toml` beside this crate's manifest, built in):
//! which shipped run file trains on which data sets, with a step budget per profile. Nothing
//! here knows a family: models are built through gm-core's registry and specs.

use gm_core::spec::{Registry, RunConfig};
use gm_core::{GmError, Result};
use serde::Deserialize;
use std::str::FromStr;

/// The suite shipped with gm-bench.
pub const BUILT_IN_SUITE: &str = include_str!("../suite.toml");

/// Every family gm-bench can run, with its shipped run files.
pub fn registry() -> Registry {
    let mut registry = Registry::new();
    gm_flow::register(&mut registry);
    gm_vae::register(&mut registry);
    gm_gan::register(&mut registry);
    gm_diffusion::register(&mut registry);
    gm_autoregressive::register(&mut registry);
    crate::vq_prior::register(&mut registry);
    registry
}

/// How much compute a run may use. Budgets are for 2 CPU cores unless `Full`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Profile {
    /// About 10 minutes on 2 CPU cores.
    Quick,
    /// About an hour on 2 CPU cores.
    Default,
    /// Long runs, for a GPU.
    Full,
}

impl FromStr for Profile {
    type Err = GmError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "quick" => Ok(Profile::Quick),
            "default" => Ok(Profile::Default),
            "full" => Ok(Profile::Full),
            other => Err(GmError::config(
                "profile",
                format!("unknown profile {other:?}; expected quick, default or full"),
            )),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SuiteFile {
    /// How each profile evaluates its runs; [`Evaluation::default`] where left out.
    #[serde(default)]
    evaluation: ProfileEvaluations,
    entry: Vec<SuiteEntry>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileEvaluations {
    quick: Option<Evaluation>,
    default: Option<Evaluation>,
    full: Option<Evaluation>,
}

/// How a profile evaluates a run: the sizes that trade the metrics' precision for time. Part of
/// each result's hash. Keys left out of a profile's table keep [`Evaluation::default`]'s.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Evaluation {
    /// Points of a toy set's exact density behind its entropy estimate (for the unpaired gap;
    /// the paired KL needs none).
    pub entropy_samples: i64,
    /// Samples drawn and judged per run on the 2-D toy sets (and per further sampler).
    pub toy_samples: i64,
    /// Digits drawn for the image metrics, per run and per further sampler (the reference row
    /// scores as many training digits).
    pub image_samples: i64,
    /// At most this many test examples for the likelihood (the first ones); all when left out.
    /// An entry's own `likelihood_examples` caps it further.
    pub likelihood_examples: Option<i64>,
}

impl Default for Evaluation {
    fn default() -> Self {
        Evaluation {
            entropy_samples: 100_000,
            toy_samples: 2000,
            image_samples: 1000,
            likelihood_examples: None,
        }
    }
}

impl Evaluation {
    fn validate(&self, origin: &str) -> Result<()> {
        let bad = |key: &str, v: i64, least: i64| {
            GmError::config(
                format!("evaluation.{key}"),
                format!("{origin}: must be at least {least}, got {v}"),
            )
        };
        if self.entropy_samples < 100 {
            return Err(bad("entropy_samples", self.entropy_samples, 100));
        }
        if self.toy_samples < 10 {
            return Err(bad("toy_samples", self.toy_samples, 10));
        }
        if self.image_samples < 10 {
            return Err(bad("image_samples", self.image_samples, 10));
        }
        if let Some(n) = self.likelihood_examples.filter(|n| *n < 2) {
            return Err(bad("likelihood_examples", n, 2));
        }
        Ok(())
    }

    /// Test examples for an entry that caps them at `entry_cap`.
    pub fn likelihood_examples(&self, entry_cap: Option<i64>) -> Option<i64> {
        match (self.likelihood_examples, entry_cap) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SuiteEntry {
    /// The model's short name in ids and tables (`nsf`, `glow`, `mlp`).
    model: String,
    /// A shipped run file (`flow/nsf_toy`) or a path to one.
    config: String,
    /// Data sets to train on; empty: the run file's own.
    #[serde(default)]
    datasets: Vec<String>,
    steps: PerProfile,
    /// Further ways to sample the trained model, each judged like its default samples.
    #[serde(default)]
    samplers: Vec<SamplerVariant>,
    /// Test examples the likelihood is evaluated on (the first ones of the test split); all
    /// when left out. For likelihoods that cost an ODE solve per example.
    likelihood_examples: Option<i64>,
    /// Caps the profile's `image_samples` for this entry, per profile: for models whose
    /// sampling costs a network pass per pixel (PixelCNN).
    image_samples: Option<PerProfile>,
    /// Per profile, run-file keys to replace, by dotted path (`"model.sampler.steps" = 10`):
    /// a cheaper sampler or a smaller network where a profile's time budget needs one. The
    /// patched run is validated like any run file, and its text is what the run is keyed by.
    #[serde(default)]
    overrides: ProfileOverrides,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileOverrides {
    #[serde(default)]
    quick: toml::Table,
    #[serde(default)]
    default: toml::Table,
    #[serde(default)]
    full: toml::Table,
}

impl ProfileOverrides {
    fn get(&self, profile: Profile) -> &toml::Table {
        match profile {
            Profile::Quick => &self.quick,
            Profile::Default => &self.default,
            Profile::Full => &self.full,
        }
    }
}

/// `run` with the keys of `overrides` (dotted paths into the run file) replaced, re-read through
/// `registry` so the result is validated like a run file. A path through a table the run file
/// does not have, or to a key its config does not know, is an error naming it (a misspelt key
/// must not silently do nothing).
fn apply_overrides(
    run: RunConfig,
    overrides: &toml::Table,
    registry: &Registry,
    origin: &str,
) -> Result<RunConfig> {
    if overrides.is_empty() {
        return Ok(run);
    }
    let mut table: toml::Table =
        toml::from_str(&run.to_toml_string()?).map_err(|e| GmError::ConfigParse {
            path: origin.into(),
            message: e.to_string(),
        })?;
    for (path, value) in overrides {
        let keys: Vec<&str> = path.split('.').collect();
        let (last, parents) = keys.split_last().expect("split yields at least one piece");
        let mut node = &mut table;
        for key in parents {
            node = match node.get_mut(*key) {
                Some(toml::Value::Table(t)) => t,
                _ => {
                    return Err(GmError::config(
                        format!("overrides.{path}"),
                        format!("{origin}: the run file has no table {key:?} on this path"),
                    ))
                }
            };
        }
        // A key the canonical form leaves out (an unset option) is added; a misspelt one is
        // refused when the patched run is read back (its configs deny unknown fields).
        node.insert(last.to_string(), value.clone());
    }
    let text = toml::to_string(&table).map_err(|e| GmError::config("overrides", e.to_string()))?;
    registry.parse_run(&text, &format!("{origin} (with overrides)"))
}

/// One way to draw samples from a trained model (the `SampleOptions` a suite can set); fields
/// left out keep the model's defaults.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct SamplerVariant {
    pub solver: Option<String>,
    pub steps: Option<usize>,
    pub eta: Option<f64>,
    pub guidance: Option<f64>,
    /// The tolerance of an adaptive ODE solver.
    pub tolerance: Option<f64>,
    /// Divides the logits of an autoregressive model (scales the noise of a flow or VAE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Top-k filtering of an autoregressive model's categorical draws.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<i64>,
    /// Nucleus (top-p) filtering of an autoregressive model's categorical draws.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
}

impl SamplerVariant {
    /// `solver-steps` with η and guidance where set, e.g. `ddim-50` or `ddpm-1000`.
    pub fn label(&self) -> String {
        let mut label = self.solver.clone().unwrap_or_else(|| "default".into());
        if let Some(steps) = self.steps {
            label.push_str(&format!("-{steps}"));
        }
        if let Some(tol) = self.tolerance {
            label.push_str(&format!(" tol {tol:e}"));
        }
        if let Some(eta) = self.eta {
            label.push_str(&format!(" η={eta}"));
        }
        if let Some(g) = self.guidance {
            label.push_str(&format!(" guidance {g}"));
        }
        if let Some(t) = self.temperature {
            label.push_str(&format!(" T={t}"));
        }
        if let Some(k) = self.top_k {
            label.push_str(&format!(" top-k {k}"));
        }
        if let Some(p) = self.top_p {
            label.push_str(&format!(" top-p {p}"));
        }
        label
    }

    /// The options that draw this way.
    pub fn options(&self) -> gm_core::model::SampleOptions {
        let mut options = gm_core::model::SampleOptions::new();
        options.solver = self.solver.clone();
        options.steps = self.steps;
        options.eta = self.eta;
        options.guidance = self.guidance;
        options.tolerance = self.tolerance;
        options.top_k = self.top_k;
        options.top_p = self.top_p;
        if let Some(t) = self.temperature {
            options.temperature = t;
        }
        options
    }
}

/// A number per profile (a step budget, a sample count).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PerProfile {
    quick: u64,
    default: u64,
    full: u64,
}

impl PerProfile {
    fn get(&self, profile: Profile) -> u64 {
        match profile {
            Profile::Quick => self.quick,
            Profile::Default => self.default,
            Profile::Full => self.full,
        }
    }
}

/// One (model, data set) pair to train and evaluate.
#[derive(Debug, Clone)]
pub struct Entry {
    /// `family/model/dataset`, unique in the suite.
    pub id: String,
    pub family: String,
    pub model: String,
    pub dataset: String,
    /// The run with the profile's budget applied.
    pub run: RunConfig,
    /// Everything that determines the run (the canonical TOML of `run`), hashed to name its
    /// folder: a changed config starts afresh and an unchanged one resumes.
    pub config_text: String,
    /// Further ways to sample the trained model (part of the result's hash).
    pub samplers: Vec<SamplerVariant>,
    /// Test examples the likelihood is evaluated on; all when `None` (part of the result's
    /// hash).
    pub likelihood_examples: Option<i64>,
    /// The profile's evaluation sizes (part of the result's hash).
    pub evaluation: Evaluation,
}

impl Entry {
    /// An entry for one run outside any suite (`gm eval`), with id `<family>/<model>/<dataset>`.
    pub fn for_run(model: &str, run: RunConfig) -> Result<Entry> {
        Ok(Entry {
            id: format!("{}/{model}/{}", run.family(), run.dataset),
            family: run.family().to_string(),
            model: model.to_string(),
            dataset: run.dataset.clone(),
            config_text: run.to_toml_string()?,
            run,
            samplers: Vec::new(),
            likelihood_examples: None,
            evaluation: Evaluation::default(),
        })
    }
}

/// Whether an entry id (`family/model/dataset`) matches an `--only` filter: the filter occurs
/// in it starting at a component, at the start or right after a `/`.
pub fn id_matches(id: &str, filter: &str) -> bool {
    id.starts_with(filter) || id.contains(&format!("/{filter}"))
}

/// A deterministic share of a suite: `--shard K/N` (1 ≤ K ≤ N) takes the entries whose position
/// in the suite is K − 1 modulo N, so the N shards together run every entry exactly once and
/// each can run on its own machine (a Slurm array task, a Kubernetes indexed Job).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = GmError;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            GmError::config(
                "shard",
                format!("expected K/N with 1 <= K <= N (e.g. 2/8), got {s:?}"),
            )
        };
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count): (usize, usize) = (
            k.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if index == 0 || index > count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl Shard {
    /// Whether the entry at `position` in the suite belongs to this shard.
    pub fn contains(&self, position: usize) -> bool {
        position % self.count == self.index - 1
    }
}

/// The built-in suite for a profile.
pub fn suite(profile: Profile) -> Result<Vec<Entry>> {
    suite_from(BUILT_IN_SUITE, "gm-bench/suite.toml", profile, &registry())
}

/// A suite from TOML text for a profile, its run files resolved through `registry`.
pub fn suite_from(
    text: &str,
    origin: &str,
    profile: Profile,
    registry: &Registry,
) -> Result<Vec<Entry>> {
    let file: SuiteFile = toml::from_str(text).map_err(|e| GmError::ConfigParse {
        path: origin.into(),
        message: e.to_string(),
    })?;
    let evaluation = match profile {
        Profile::Quick => file.evaluation.quick.clone(),
        Profile::Default => file.evaluation.default.clone(),
        Profile::Full => file.evaluation.full.clone(),
    }
    .unwrap_or_default();
    evaluation.validate(origin)?;
    let mut entries: Vec<Entry> = Vec::new();
    for item in &file.entry {
        let mut evaluation = evaluation.clone();
        if let Some(cap) = item.image_samples.as_ref().map(|c| c.get(profile) as i64) {
            if cap < 10 {
                return Err(GmError::config(
                    "image_samples",
                    format!(
                        "{origin}: entry {}: must be at least 10, got {cap}",
                        item.model
                    ),
                ));
            }
            evaluation.image_samples = evaluation.image_samples.min(cap);
        }
        if let Some(n) = item.likelihood_examples.filter(|n| *n < 1) {
            return Err(GmError::config(
                "likelihood_examples",
                format!(
                    "{origin}: entry {}: must be at least 1, got {n}",
                    item.model
                ),
            ));
        }
        let base = apply_overrides(
            registry.load_run(&item.config)?,
            item.overrides.get(profile),
            registry,
            &format!("{origin}: entry {}", item.model),
        )?;
        let steps = item.steps.get(profile);
        let datasets = if item.datasets.is_empty() {
            vec![base.dataset.clone()]
        } else {
            item.datasets.clone()
        };
        for dataset in datasets {
            let mut run = base.with_steps(steps)?;
            run.dataset = dataset.clone();
            run.validate()?;
            let id = format!("{}/{}/{}", run.family(), item.model, dataset);
            if entries.iter().any(|e| e.id == id) {
                return Err(GmError::config(
                    "entry",
                    format!("{origin}: the id {id} appears twice"),
                ));
            }
            entries.push(Entry {
                id,
                family: run.family().to_string(),
                model: item.model.clone(),
                dataset,
                config_text: run.to_toml_string()?,
                run,
                samplers: item.samplers.clone(),
                likelihood_examples: evaluation.likelihood_examples(item.likelihood_examples),
                evaluation: evaluation.clone(),
            });
        }
    }
    Ok(entries)
}
