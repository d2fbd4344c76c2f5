//! Exponential moving average of weights (Polyak averaging), bound to a var store by variable
//! name, used for sampling and evaluation.
//!
//! The averages are kept beside the live variables and are swapped in only for the duration of
//! a closure ([`Ema::with_averaged`]), which needs just `&self`: a model's `sample_with` can use
//! them without being mutable. They are saved and loaded by variable name, so a checkpoint
//! stays readable when variables are added or reordered elsewhere in the model.

use super::checkpoint::StateDict;
use super::config::{check_range, Config};
use super::flat::contiguous_span;
use crate::model::WeightChoice;
use crate::spec::Budget;
use crate::{GmError, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

/// `shadow ← decay · shadow + (1 − decay) · param` after each optimizer step from `start_step`
/// on; before it the shadow simply follows the weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmaConfig {
    pub decay: f64,
    /// Optimizer steps before averaging starts (scaled with the run's step budget).
    pub start_step: u64,
}

impl Default for EmaConfig {
    fn default() -> Self {
        EmaConfig {
            decay: 0.999,
            start_step: 0,
        }
    }
}

impl Config for EmaConfig {
    fn validate(&self) -> Result<()> {
        check_range("decay", self.decay, 0.0, 1.0)?;
        if self.decay >= 1.0 {
            return Err(GmError::config(
                "decay",
                "must be below 1 (a decay of 1 never moves the average)",
            ));
        }
        Ok(())
    }
}

impl EmaConfig {
    /// The same average for another step budget: the start step keeps its share of the run,
    /// and so does the averaging horizon `1 / (1 − decay)` (a length in steps too), so a
    /// shortened run does not average over more steps than it has. An unchanged budget keeps
    /// the decay exactly.
    pub fn scaled(&self, budget: &Budget) -> EmaConfig {
        let ratio = budget.ratio();
        let decay = if ratio == 1.0 {
            self.decay
        } else {
            let horizon = (ratio / (1.0 - self.decay)).max(1.0);
            1.0 - 1.0 / horizon
        };
        EmaConfig {
            decay,
            start_step: budget.scale(self.start_step),
        }
    }

    /// Averages of every trainable variable of `vs`, starting from their current values.
    pub fn init(&self, vs: &nn::VarStore) -> Result<Ema> {
        Ema::new(vs, self)
    }
}

/// See the module documentation.
#[derive(Debug)]
pub struct Ema {
    config: EmaConfig,
    names: Vec<String>,
    live: Vec<Tensor>,
    /// Each variable's average (views into `pairs`' averages when those are flat).
    shadow: Vec<Tensor>,
    /// (live, average) tensors the update runs over: one pair spanning every variable when the
    /// live weights sit in one buffer (an optimizer's), one pair per variable otherwise.
    pairs: Vec<(Tensor, Tensor)>,
    /// With one flat pair: each variable's offset into it, to notice the weights moving.
    span_offsets: Option<Vec<i64>>,
}

impl Ema {
    /// Averages of every trainable variable of `vs`, by name, starting from their current values.
    pub fn new(vs: &nn::VarStore, config: &EmaConfig) -> Result<Self> {
        config.validate()?;
        let mut vars: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let (names, live): (Vec<String>, Vec<Tensor>) = vars.into_iter().unzip();
        let (shadow, pairs, span_offsets) = Self::averages_of(&live)?;
        Ok(Ema {
            config: config.clone(),
            names,
            live,
            shadow,
            pairs,
            span_offsets,
        })
    }

    /// Fresh averages equal to `live`: one buffer in the live weights' layout when they share
    /// one, so an update is one operation.
    #[allow(clippy::type_complexity)]
    fn averages_of(
        live: &[Tensor],
    ) -> Result<(Vec<Tensor>, Vec<(Tensor, Tensor)>, Option<Vec<i64>>)> {
        tch::no_grad(|| {
            if let Some((span, offsets)) = contiguous_span(live) {
                let average = span.f_detach()?.copy();
                let shadow = live
                    .iter()
                    .zip(&offsets)
                    .map(|(t, &offset)| {
                        average
                            .f_narrow(0, offset, t.numel() as i64)?
                            .f_view(&t.size()[..])
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                return Ok((shadow, vec![(span, average)], Some(offsets)));
            }
            let shadow = live
                .iter()
                .map(|t| Ok::<_, tch::TchError>(t.f_detach()?.copy()))
                .collect::<Result<Vec<_>, _>>()?;
            let pairs = live
                .iter()
                .zip(&shadow)
                .map(|(l, s)| (l.shallow_clone(), s.shallow_clone()))
                .collect();
            Ok((shadow, pairs, None))
        })
    }

    /// Whether the (live, average) pairs are one flat pair that no longer covers the live
    /// weights: an optimizer built after the average gathers the weights into its own buffer.
    /// Pairs per variable hold the variables themselves and follow them wherever they move.
    /// Cheap enough for every step: one address per variable, no tensor operation.
    fn span_moved(&self) -> bool {
        match (self.pairs.as_slice(), &self.span_offsets) {
            ([(span, _)], Some(offsets)) => {
                let base = span.data_ptr() as usize;
                let size = span.kind().elt_size_in_bytes();
                self.live
                    .iter()
                    .zip(offsets)
                    .any(|(t, &offset)| t.data_ptr() as usize != base + offset as usize * size)
            }
            _ => false,
        }
    }

    /// Re-points the update at the live weights if their storage moved, keeping the averages.
    fn follow_storage(&mut self) -> Result<()> {
        if !self.span_moved() {
            return Ok(());
        }
        let (shadow, pairs, span_offsets) = Self::averages_of(&self.live)?;
        tch::no_grad(|| -> Result<()> {
            for (new, old) in shadow.iter().zip(&self.shadow) {
                new.shallow_clone().f_copy_(old)?;
            }
            Ok(())
        })?;
        self.shadow = shadow;
        self.pairs = pairs;
        self.span_offsets = span_offsets;
        Ok(())
    }

    pub fn config(&self) -> &EmaConfig {
        &self.config
    }

    /// The averaged variables' names, sorted.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The average of variable `name`.
    pub fn averaged(&self, name: &str) -> Option<&Tensor> {
        self.names
            .iter()
            .position(|n| n == name)
            .map(|i| &self.shadow[i])
    }

    /// Folds the current weights in, after the optimizer's `step`-th update (1-based). Through
    /// `start_step`, and always on the first update, the average is set to the weights: the
    /// random initialisation (and layers initialised from the first batch, such as ActNorm)
    /// never enter the average.
    pub fn update(&mut self, step: u64) -> Result<()> {
        self.follow_storage()?;
        let follow = step <= self.config.start_step.max(1);
        tch::no_grad(|| -> Result<()> {
            for (p, s) in &mut self.pairs {
                if follow {
                    s.f_copy_(p)?;
                } else {
                    let _ = s.f_lerp_(p, 1.0 - self.config.decay)?;
                }
            }
            Ok(())
        })
    }

    /// Runs `f` with the averaged weights in the var store, then puts the live weights back
    /// (also when `f` fails or panics).
    pub fn with_averaged<R>(&self, f: impl FnOnce() -> Result<R>) -> Result<R> {
        // One copy each way over the flat pair when it is current, else one per variable.
        let (live, averages): (Vec<Tensor>, Vec<Tensor>) = if self.span_moved() {
            self.live
                .iter()
                .zip(&self.shadow)
                .map(|(l, s)| (l.shallow_clone(), s.shallow_clone()))
                .unzip()
        } else {
            self.pairs
                .iter()
                .map(|(l, s)| (l.shallow_clone(), s.shallow_clone()))
                .unzip()
        };
        let backup = tch::no_grad(|| -> Result<Vec<Tensor>> {
            let mut backup = Vec::with_capacity(live.len());
            for (p, s) in live.iter().zip(&averages) {
                backup.push(p.f_detach()?.copy());
                p.shallow_clone().f_copy_(s)?;
            }
            Ok(backup)
        })?;
        let _restore = Restore {
            live: &live,
            backup,
        };
        f()
    }

    /// Runs `f` with the weights `choice` asks for: the average when `choice` is
    /// [`WeightChoice::Ema`], the model keeps one and has been `trained` (made at least one
    /// optimizer step), the live weights otherwise. Before the first update the average equals
    /// the weights; swapping them in then would also let a data-dependent initialisation
    /// (ActNorm) write into the swapped values and be undone when they are swapped back.
    pub fn with_choice<R>(
        ema: Option<&Ema>,
        trained: bool,
        choice: WeightChoice,
        f: impl FnOnce() -> Result<R>,
    ) -> Result<R> {
        match (ema, choice) {
            (Some(ema), WeightChoice::Ema) if trained => ema.with_averaged(f),
            _ => f(),
        }
    }

    /// The averages as named tensors, `prefix` + variable name.
    pub fn state(&self, prefix: &str) -> Vec<(String, Tensor)> {
        self.names
            .iter()
            .zip(&self.shadow)
            .map(|(n, s)| (format!("{prefix}{n}"), s.shallow_clone()))
            .collect()
    }

    /// Restores what [`Ema::state`] produced, by name, checking every shape.
    pub fn load_state(&mut self, prefix: &str, state: &mut StateDict) -> Result<()> {
        // Take (and so check) every tensor before copying any.
        let sources = self
            .names
            .iter()
            .zip(&self.shadow)
            .map(|(n, s)| state.take(&format!("{prefix}{n}"), &s.size()))
            .collect::<Result<Vec<_>>>()?;
        tch::no_grad(|| -> Result<()> {
            for (s, src) in self.shadow.iter_mut().zip(&sources) {
                s.f_copy_(src)?;
            }
            Ok(())
        })
    }
}

/// Puts the live weights back when dropped.
struct Restore<'a> {
    live: &'a [Tensor],
    backup: Vec<Tensor>,
}

impl Drop for Restore<'_> {
    fn drop(&mut self) {
        tch::no_grad(|| {
            for (p, b) in self.live.iter().zip(&self.backup) {
                // Copying a tensor of the same shape and device cannot fail.
                let _ = p.shallow_clone().f_copy_(b);
            }
        });
    }
}
