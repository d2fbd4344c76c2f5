//! A trainer that drives any [`GenerativeModel`] with exact resume.
//!
//! Determinism: before step `s` libtorch is seeded with `derive_seed(seed, s)`, and the order of
//! examples in epoch `e` is a permutation seeded with `derive_seed(seed, e)`. Neither depends on
//! what ran before, so stopping after any checkpoint and resuming gives, on CPU, bit-identical
//! parameters to a run that never stopped.

use super::checkpoint::{load_tensors, save_tensors};
use super::config::Config;
use crate::data::EpochBatches;
use crate::device::{derive_seed, seed_torch};
use crate::model::{
    check_checkpoint_meta, checkpoint_meta, load_all_or_nothing, Batch, GenerativeModel,
};
use crate::{GmError, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::Tensor;

/// How long and how to train.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub steps: u64,
    pub batch_size: i64,
    pub seed: u64,
    /// Read losses to the host (and check them for NaN) every this many steps.
    pub log_every: u64,
    /// Write a checkpoint every this many steps (0: only at the end).
    pub checkpoint_every: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            steps: 1000,
            batch_size: 128,
            seed: 0,
            log_every: 50,
            checkpoint_every: 0,
        }
    }
}

impl Config for TrainConfig {
    fn validate(&self) -> Result<()> {
        if self.batch_size < 1 {
            return Err(GmError::config(
                "batch_size",
                format!("must be at least 1, got {}", self.batch_size),
            ));
        }
        if self.log_every == 0 {
            return Err(GmError::config("log_every", "must be at least 1"));
        }
        Ok(())
    }
}

/// Logged losses over training.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainHistory {
    /// `(step, [(loss name, value)])`, at every log point.
    pub points: Vec<(u64, Vec<(String, f64)>)>,
    /// Seconds spent in training steps (this process and earlier ones, if resumed).
    pub train_seconds: f64,
    /// Steps completed.
    pub steps_done: u64,
}

/// See the module documentation.
pub struct Trainer {
    config: TrainConfig,
    checkpoint: Option<PathBuf>,
    /// Further text entries of the checkpoint's metadata (e.g. the run file that built the
    /// model, so `gm sample` can rebuild it from the checkpoint alone).
    metadata: Vec<(String, String)>,
}

impl Trainer {
    pub fn new(config: TrainConfig) -> Result<Self> {
        config.validate()?;
        Ok(Trainer {
            config,
            checkpoint: None,
            metadata: Vec::new(),
        })
    }

    /// Adds a text entry to every checkpoint's metadata (the reserved keys `family`, `spec`,
    /// `seed`, `batch_size` and `history` are the trainer's own and cannot be replaced).
    pub fn with_metadata(mut self, key: &str, value: &str) -> Self {
        if !["family", "spec", "seed", "batch_size", "history"].contains(&key) {
            self.metadata.push((key.to_string(), value.to_string()));
        }
        self
    }

    /// Saves to and resumes from this file.
    pub fn with_checkpoint(mut self, path: impl AsRef<Path>) -> Self {
        self.checkpoint = Some(path.as_ref().to_path_buf());
        self
    }

    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// Trains `model` on `x` (`[n, ...]`, with optional `labels` `[n]`) up to `config.steps`,
    /// resuming from the checkpoint if one exists. `on_log` sees each logged point.
    pub fn fit(
        &self,
        model: &mut dyn GenerativeModel,
        x: &Tensor,
        labels: Option<&Tensor>,
        mut on_log: impl FnMut(u64, &[(String, f64)]),
    ) -> Result<TrainHistory> {
        let n = x.size().first().copied().unwrap_or(0);
        if n < self.config.batch_size {
            return Err(GmError::shape(
                "Trainer.fit",
                format!("at least batch_size = {} examples", self.config.batch_size),
                &x.size(),
            ));
        }
        if let Some(l) = labels {
            if l.size().first() != Some(&n) {
                return Err(GmError::shape(
                    "Trainer.fit labels",
                    format!("[{n}]"),
                    &l.size(),
                ));
            }
        }
        let mut history = TrainHistory::default();
        if let Some(path) = &self.checkpoint {
            // A save interrupted by a crash leaves its temporary file; the checkpoint itself is
            // intact (the rename never happened), so the leftover is removed.
            let _ = std::fs::remove_file(super::checkpoint::tmp_path(path));
        }
        if let Some(path) = self.checkpoint.as_ref().filter(|p| p.exists()) {
            history = self.restore(model, path)?;
        }
        let mut batches = EpochBatches::new(n, self.config.batch_size, self.config.seed);
        let device = x.device();
        let mut step = history.steps_done;
        // Finiteness of every step's losses and of the updated state, accumulated on the
        // device and read only where it matters: at log points, before a checkpoint, at the end.
        let mut guard = FiniteGuard::new(step, device)?;
        let mut last_checkpoint = self
            .checkpoint
            .as_ref()
            .filter(|p| p.exists())
            .map(|p| (p.clone(), step));
        while step < self.config.steps {
            let started = Instant::now();
            seed_torch(derive_seed(self.config.seed, step));
            let idx = Tensor::from_slice(batches.indices(step)).to_device(device);
            let batch = Batch {
                x: x.f_index_select(0, &idx)?,
                labels: labels.map(|l| l.f_index_select(0, &idx)).transpose()?,
            };
            let out = model.train_step(&batch)?;
            step += 1;
            guard.record(&out, model)?;
            let log_now = step % self.config.log_every == 0 || step == self.config.steps;
            let ckpt_now = (self.config.checkpoint_every > 0
                && step % self.config.checkpoint_every == 0)
                || step == self.config.steps;
            if log_now || (ckpt_now && self.checkpoint.is_some()) {
                guard.check(step, last_checkpoint.as_ref())?;
            }
            if log_now {
                let values = out.to_host(step)?;
                on_log(step, &values);
                history.points.push((step, values));
            }
            history.train_seconds += started.elapsed().as_secs_f64();
            history.steps_done = step;
            if ckpt_now {
                if let Some(path) = &self.checkpoint {
                    self.save(model, path, &history)?;
                    last_checkpoint = Some((path.clone(), step));
                }
            }
        }
        Ok(history)
    }

    fn save(&self, model: &dyn GenerativeModel, path: &Path, history: &TrainHistory) -> Result<()> {
        let mut meta = checkpoint_meta(model);
        for (key, value) in &self.metadata {
            meta[key.as_str()] = value.as_str().into();
        }
        meta["seed"] = self.config.seed.into();
        meta["batch_size"] = self.config.batch_size.into();
        meta["history"] = serde_json::to_value(history).map_err(|e| GmError::Checkpoint {
            path: path.display().to_string(),
            message: format!("the training history is not serialisable: {e}"),
        })?;
        save_tensors(path, &model.state(), &meta)
    }

    fn restore(&self, model: &mut dyn GenerativeModel, path: &Path) -> Result<TrainHistory> {
        let (mut state, meta) = load_tensors(path)?;
        let bad = |message: String| GmError::Checkpoint {
            path: path.display().to_string(),
            message,
        };
        check_checkpoint_meta(model, &meta, path)?;
        if meta.get("seed").and_then(|v| v.as_u64()) != Some(self.config.seed)
            || meta.get("batch_size").and_then(|v| v.as_i64()) != Some(self.config.batch_size)
        {
            return Err(bad(
                "written with another seed or batch size; resuming would not be exact".into(),
            ));
        }
        let history: TrainHistory =
            serde_json::from_value(meta.get("history").cloned().unwrap_or_default())
                .map_err(|e| bad(format!("bad history: {e}")))?;
        load_all_or_nothing(model, &mut state, path)?;
        Ok(history)
    }
}

/// Accumulates, on the device, whether every loss and every floating tensor of the model's state
/// stayed finite since the last check, so that a divergence is caught without a host
/// synchronisation per step.
struct FiniteGuard {
    losses_ok: Tensor,
    state_ok: Tensor,
    checked_at: u64,
}

impl FiniteGuard {
    fn new(step: u64, device: tch::Device) -> Result<Self> {
        let yes = Tensor::f_ones([], (tch::Kind::Bool, device))?;
        Ok(FiniteGuard {
            losses_ok: yes.shallow_clone(),
            state_ok: yes,
            checked_at: step,
        })
    }

    fn record(
        &mut self,
        out: &crate::model::StepOutput,
        model: &dyn GenerativeModel,
    ) -> Result<()> {
        tch::no_grad(|| -> Result<()> {
            for (_, loss) in &out.losses {
                self.losses_ok = self.losses_ok.f_logical_and(
                    &loss
                        .f_isfinite()?
                        .f_all()?
                        .f_to_device(self.losses_ok.device())?,
                )?;
            }
            for (_, t) in model.state() {
                if t.is_floating_point() {
                    self.state_ok = self.state_ok.f_logical_and(
                        &t.f_isfinite()?
                            .f_all()?
                            .f_to_device(self.state_ok.device())?,
                    )?;
                }
            }
            Ok(())
        })
    }

    /// Errors if anything became non-finite since the last check, naming what, the steps and
    /// the last good checkpoint.
    fn check(&mut self, step: u64, last_checkpoint: Option<&(PathBuf, u64)>) -> Result<()> {
        let losses_ok = self.losses_ok.f_int64_value(&[])? != 0;
        let state_ok = self.state_ok.f_int64_value(&[])? != 0;
        if losses_ok && state_ok {
            self.checked_at = step;
            return Ok(());
        }
        let what = match (losses_ok, state_ok) {
            (false, false) => "the loss and the model's weights or optimizer state",
            (false, true) => "the loss",
            _ => "the model's weights or optimizer state",
        };
        Err(GmError::Diverged {
            what: what.into(),
            from_step: self.checked_at + 1,
            to_step: step,
            last_checkpoint: match last_checkpoint {
                Some((path, at)) => format!("{} (step {at}), left untouched", path.display()),
                None => "none was written".into(),
            },
        })
    }
}
