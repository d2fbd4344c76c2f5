//! The benchmark suite: every family on every suitable data set, with budgets per profile.

use gm_core::data::NamedData;
use gm_core::model::GenerativeModel;
use gm_core::tch::Device;
use gm_core::train::{Config, TrainConfig};
use gm_core::{GmError, Result};
use std::str::FromStr;

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

/// Builds a fresh model for a loaded data set.
pub type Builder = Box<dyn Fn(&NamedData, Device) -> Result<Box<dyn GenerativeModel>>>;

/// One (model, data set) pair to train and evaluate.
pub struct Entry {
    /// `family/model/dataset`, unique in the suite.
    pub id: String,
    pub family: String,
    pub model: String,
    pub dataset: String,
    pub train: TrainConfig,
    /// Everything that determines the run, hashed to name its folder (so a changed config
    /// starts afresh and an unchanged one resumes).
    pub config_text: String,
    pub build: Builder,
}

fn steps_for(profile: Profile, quick: u64, default: u64, full: u64) -> u64 {
    match profile {
        Profile::Quick => quick,
        Profile::Default => default,
        Profile::Full => full,
    }
}

/// The suite for a profile: every family that exists, on every data set that suits it.
pub fn suite(profile: Profile) -> Result<Vec<Entry>> {
    let mut entries = Vec::new();
    let toy_sets = [
        "checkerboard",
        "eight_gaussians",
        "two_moons",
        "two_spirals",
    ];
    for (model, config_name) in [
        ("realnvp", "realnvp_toy"),
        ("maf", "maf_toy"),
        ("nsf", "nsf_toy"),
    ] {
        for dataset in toy_sets {
            let mut run = gm_flow::shipped_config(config_name)?;
            let steps = steps_for(profile, 400, 3000, 10_000);
            run.dataset = dataset.to_string();
            run.train.steps = steps;
            run.train.log_every = (steps / 20).max(1);
            run.model.schedule = run.model.schedule.with_total_steps(steps);
            run.validate()?;
            entries.push(flow_entry(model, dataset, run)?);
        }
    }
    for (model, config_name, dataset) in [
        ("glow", "glow_mnist_binary", "mnist_binary"),
        ("glow", "glow_mnist_grey", "mnist_grey"),
    ] {
        let mut run = gm_flow::shipped_config(config_name)?;
        let steps = steps_for(profile, 150, 1500, 20_000);
        run.train.steps = steps;
        run.train.log_every = (steps / 20).max(1);
        run.train.checkpoint_every = (steps / 5).max(1);
        run.model.schedule = run.model.schedule.with_total_steps(steps);
        run.validate()?;
        entries.push(flow_entry(model, dataset, run)?);
    }
    for (model, text) in [
        ("mlp", include_str!("../../gm-vae/configs/mnist_mlp.toml")),
        ("conv", include_str!("../../gm-vae/configs/mnist_conv.toml")),
    ] {
        let mut run = gm_vae::VaeExperiment::from_toml_str(text)?;
        let steps = steps_for(profile, 1500, 6000, 30_000);
        run.train.steps = steps;
        run.train.log_every = (steps / 20).max(1);
        run.train.checkpoint_every = (steps / 5).max(1);
        run.validate()?;
        let config_text = run.to_toml_string()?;
        let model_config = run.model.clone();
        entries.push(Entry {
            id: format!("vae/{model}/mnist_binary"),
            family: "vae".into(),
            model: model.into(),
            dataset: "mnist_binary".into(),
            train: run.train.clone(),
            config_text,
            build: Box::new(
                move |_data: &NamedData, device: Device| -> Result<Box<dyn GenerativeModel>> {
                    Ok(Box::new(crate::adapt::FlatUnlabelled(gm_vae::Vae::new(
                        &model_config,
                        device,
                    )?)))
                },
            ),
        });
    }
    Ok(entries)
}

fn flow_entry(model: &str, dataset: &str, run: gm_flow::FlowRunConfig) -> Result<Entry> {
    let config_text = run.to_toml_string()?;
    let model_config = run.model.clone();
    Ok(Entry {
        id: format!("flow/{model}/{dataset}"),
        family: "flow".into(),
        model: model.into(),
        dataset: dataset.into(),
        train: run.train.clone(),
        config_text,
        build: Box::new(
            move |data: &NamedData, device: Device| -> Result<Box<dyn GenerativeModel>> {
                Ok(Box::new(gm_flow::FlowModel::new(
                    &model_config,
                    &data.event_shape,
                    device,
                )?))
            },
        ),
    })
}
