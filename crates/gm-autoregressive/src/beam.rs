//! Beam search: the most likely continuations under a sequence network, found by keeping the
//! `width` best unfinished sequences at each step (their log-probabilities summed exactly), each
//! extended by every level, on a [`Stepper`] whose caches follow the surviving hypotheses.
//!
//! Width 1 is greedy decoding. Beam search is exact when the beam holds every prefix
//! (`width ≥ levels^(length − 1)`); a narrower beam can lose the best sequence behind a
//! prefix that looked unlikely. A hypothesis ends at `end_value` (a newline for text, say) or
//! at `length` values. An ended hypothesis leaves the beam for the finished list and the beam
//! is refilled with the next best unfinished candidates, so it stays `width` wide to the end.
//! Finished hypotheses are ranked by `ln p`, or with `length_penalty = α` by `ln p / len^α`
//! (α = 0 favours short endings; larger α favours longer ones), and the best `width` returned.

use crate::output::Output;
use crate::sequence::Stepper;
use gm_core::tch::{Device, Kind, Tensor};
use gm_core::{GmError, Result};

/// What to search for.
#[derive(Debug, Clone, PartialEq)]
pub struct BeamSearch {
    /// Hypotheses kept per step, and returned.
    pub width: usize,
    /// Values to generate after the prompt (at most the sequence length minus the prompt).
    pub length: i64,
    /// Values fed before the search, as levels; not scored.
    pub prompt: Vec<i64>,
    /// A level that ends a hypothesis (included in it).
    pub end_value: Option<i64>,
    /// α of the length normalisation `ln p / len^α`; `None` ranks by `ln p`.
    pub length_penalty: Option<f64>,
}

/// One found sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct Hypothesis {
    /// The generated levels (after the prompt), the end value included when it ended one.
    pub values: Vec<i64>,
    /// `ln p(values | prompt)`, exact.
    pub log_prob: f64,
    /// What hypotheses are ranked by: `log_prob`, length-normalised when asked.
    pub score: f64,
}

impl BeamSearch {
    fn validate(&self, levels: i64, d: i64) -> Result<()> {
        if self.width == 0 || self.width > 4096 {
            return Err(GmError::config(
                "width",
                format!("must be in [1, 4096], got {}", self.width),
            ));
        }
        if self.length < 1 || self.prompt.len() as i64 + self.length > d {
            return Err(GmError::config(
                "length",
                format!(
                    "must be at least 1, and the prompt ({}) + length ({}) at most {d}, the sequence length",
                    self.prompt.len(),
                    self.length
                ),
            ));
        }
        if let Some(&bad) = self.prompt.iter().find(|&&v| !(0..levels).contains(&v)) {
            return Err(GmError::config(
                "prompt",
                format!("values must be levels in [0, {levels}), found {bad}"),
            ));
        }
        if let Some(end) = self.end_value.filter(|v| !(0..levels).contains(v)) {
            return Err(GmError::config(
                "end_value",
                format!("must be a level in [0, {levels}), got {end}"),
            ));
        }
        if let Some(alpha) = self.length_penalty {
            gm_core::train::config::check_range("length_penalty", alpha, 0.0, 10.0)?;
        }
        Ok(())
    }

    fn score(&self, log_prob: f64, len: usize) -> f64 {
        match self.length_penalty {
            Some(alpha) => log_prob / (len.max(1) as f64).powf(alpha),
            None => log_prob,
        }
    }

    /// The `width` best hypotheses, best first, for a network of `d` values with `levels` levels.
    pub fn run(
        &self,
        stepper: &dyn Stepper,
        output: &Output,
        levels: i64,
        d: i64,
        device: Device,
    ) -> Result<Vec<Hypothesis>> {
        self.validate(levels, d)?;
        let mut state = stepper.begin(1, device)?;
        let mut previous: Option<Tensor> = None;
        for &v in &self.prompt {
            let _ = stepper.step(&mut state, previous.as_ref())?;
            previous = Some(Tensor::f_from_slice(&[v as f32])?.f_to_device(device)?);
        }
        // Alive hypotheses: (values, log-prob), in the order of the state's rows.
        let mut alive: Vec<(Vec<i64>, f64)> = vec![(Vec::new(), 0.0)];
        let mut finished: Vec<Hypothesis> = Vec::new();
        for step in 0..self.length {
            let params = stepper.step(&mut state, previous.as_ref())?;
            let log_probs = output
                .log_probs_of_levels(&params)?
                .f_to_kind(Kind::Double)?
                .f_to_device(Device::Cpu)?;
            let k = alive.len();
            if log_probs.size() != [k as i64, levels] {
                return Err(GmError::shape(
                    "BeamSearch: the output's log-probabilities",
                    format!("[{k}, {levels}] (hypotheses, levels)"),
                    &log_probs.size(),
                ));
            }
            let table = Vec::<f64>::try_from(log_probs.f_reshape([-1])?)?;
            // Every extension, best first; ties broken by (parent, level) for determinism.
            let mut candidates: Vec<(f64, usize, i64)> = Vec::with_capacity(k * levels as usize);
            for (parent, (_, lp)) in alive.iter().enumerate() {
                for level in 0..levels {
                    let total = lp + table[parent * levels as usize + level as usize];
                    candidates.push((total, parent, level));
                }
            }
            candidates.sort_by(|a, b| b.0.total_cmp(&a.0).then((a.1, a.2).cmp(&(b.1, b.2))));
            let last = step + 1 == self.length;
            let mut next: Vec<(Vec<i64>, f64)> = Vec::with_capacity(self.width);
            let mut rows: Vec<i64> = Vec::with_capacity(self.width);
            // Down the ranking until the beam is full again: ended candidates met on the way
            // are finished, the rest continue. On the last step every candidate ends, all of the
            // same length, so only the best `width` of them can be among the best returned.
            let mut ended_now = 0;
            for &(total, parent, level) in &candidates {
                if next.len() == self.width || (last && ended_now == self.width) {
                    break;
                }
                let mut values = alive[parent].0.clone();
                values.push(level);
                if last || self.end_value == Some(level) {
                    ended_now += 1;
                    let score = self.score(total, values.len());
                    finished.push(Hypothesis {
                        values,
                        log_prob: total,
                        score,
                    });
                } else {
                    next.push((values, total));
                    rows.push(parent as i64);
                }
            }
            if next.is_empty() {
                break;
            }
            let rows = Tensor::f_from_slice(&rows)?.f_to_device(device)?;
            state.reorder(&rows)?;
            let last_values: Vec<f32> = next.iter().map(|(v, _)| v[v.len() - 1] as f32).collect();
            previous = Some(Tensor::f_from_slice(&last_values)?.f_to_device(device)?);
            alive = next;
        }
        finished.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.values.cmp(&b.values)));
        finished.truncate(self.width);
        Ok(finished)
    }
}
