//! A trained model from its checkpoint file alone (`gm sample`, `gm eval`).
//!
//! Checkpoints written by `gm train` and `gm bench-all` carry the run file that built the model
//! in their metadata (`run`), beside the trainer's `history`; older ones are found with the
//! `config.toml` their run folder keeps next to them.

use gm_core::model::GenerativeModel;
use gm_core::spec::RunConfig;
use gm_core::tch::Device;
use gm_core::train::TrainHistory;
use gm_core::{GmError, Result};
use std::path::Path;

/// A model rebuilt from a checkpoint, with the run that defines it and its training history.
pub struct Saved {
    pub run: RunConfig,
    pub model: Box<dyn GenerativeModel>,
    pub history: TrainHistory,
}

/// Rebuilds the model a checkpoint was written from and loads its state (weights, optimizer
/// state, EMA copies) into it on `device`.
pub fn load(path: &Path, device: Device) -> Result<Saved> {
    let (run, history) = run_of(path)?;
    let info = gm_core::data::named_info(&run.dataset)?;
    let mut model = run.model.build(&info, device)?;
    model.load(path)?;
    Ok(Saved {
        run,
        model,
        history,
    })
}

/// The run a checkpoint was written from and its training history, without building the model.
pub fn run_of(path: &Path) -> Result<(RunConfig, TrainHistory)> {
    let (_, meta) = gm_core::train::checkpoint::load_tensors(path)?;
    let bad = |message: String| GmError::Checkpoint {
        path: path.display().to_string(),
        message,
    };
    let run_text = match meta.get("run").and_then(|r| r.as_str()) {
        Some(text) => text.to_string(),
        None => {
            let beside = path.with_file_name("config.toml");
            std::fs::read_to_string(&beside).map_err(|_| {
                bad(format!(
                    "it names no run file (metadata `run`) and there is no {} beside it; it was not written by `gm train` or `gm bench-all`",
                    beside.display()
                ))
            })?
        }
    };
    let run =
        crate::suite::registry().parse_run(&run_text, &format!("{} [run]", path.display()))?;
    let history: TrainHistory = meta
        .get("history")
        .cloned()
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| bad(format!("its training history is unreadable: {e}")))?
        .unwrap_or_default();
    Ok((run, history))
}
