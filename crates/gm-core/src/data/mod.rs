//! Data sets and batching.
//!
//! - [`toy`]: 2D sets with exact log-densities.
//! - [`mnist`]: the IDX reader/writer, the shared MNIST split and binarisation protocol.
//! - [`text`]: the byte-level text corpus in windows.
//! - [`signal`]: a μ-law noisy oscillator whose density is known exactly, and μ-law companding.
//! - [`transforms`]: binarisation and dequantisation.

pub mod mnist;
pub(crate) mod scan;
pub mod signal;
pub mod text;
pub mod toy;
pub mod transforms;

use crate::device::{derive_seed, seed_torch};
use crate::{GmError, Result};
use rand::seq::SliceRandom;
use rand_chacha::rand_core::SeedableRng;
use tch::{Device, Tensor};

/// What the values of a data set are, which decides what a likelihood means on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ValueKind {
    /// Real-valued: likelihoods are densities.
    Continuous,
    /// Integers `0..levels` stored as floats: likelihoods are masses (or bounds on them).
    Discrete { levels: u32 },
}

/// One split: examples `[n, event...]` and optional labels `[n]`.
#[derive(Debug)]
pub struct Split {
    pub x: Tensor,
    pub labels: Option<Tensor>,
}

/// A named data set with its train/test splits, as every family and gm-bench load it.
#[derive(Debug)]
pub struct NamedData {
    pub name: String,
    pub train: Split,
    pub test: Split,
    pub event_shape: Vec<i64>,
    pub values: ValueKind,
    /// The toy set, when it is one (its exact density is then known).
    pub toy: Option<toy::ToyDataset>,
    /// The oscillator, when the set is its windows (their exact probabilities are then known).
    pub signal: Option<signal::Oscillator>,
}

impl NamedData {
    /// A data set without labels (and, until the caller says so, no known density).
    pub fn unlabelled(
        name: &str,
        train: Tensor,
        test: Tensor,
        event_shape: &[i64],
        values: ValueKind,
    ) -> Self {
        NamedData {
            name: name.to_string(),
            train: Split {
                x: train,
                labels: None,
            },
            test: Split {
                x: test,
                labels: None,
            },
            event_shape: event_shape.to_vec(),
            values,
            toy: None,
            signal: None,
        }
    }

    /// What a model spec needs to build a model for these data.
    pub fn info(&self) -> crate::spec::DataInfo {
        let classes = match &self.train.labels {
            Some(_) if self.toy.is_none() => MNIST_CLASSES,
            _ => 0,
        };
        crate::spec::DataInfo::new(&self.event_shape, self.values, classes)
    }
}

/// What [`load_named`] would give for `name`, without loading anything: event shape, value
/// kind and number of classes.
pub fn named_info(name: &str) -> Result<crate::spec::DataInfo> {
    use crate::spec::DataInfo;
    if name.parse::<toy::ToyDataset>().is_ok() {
        return Ok(DataInfo::new(&[2], ValueKind::Continuous, 0));
    }
    match name {
        "mnist_binary" => Ok(DataInfo::new(
            &[1, 28, 28],
            ValueKind::Discrete { levels: 2 },
            MNIST_CLASSES,
        )),
        "mnist_grey" => Ok(DataInfo::new(
            &[1, 28, 28],
            ValueKind::Discrete { levels: 256 },
            MNIST_CLASSES,
        )),
        "kjv_text" => Ok(DataInfo::new(
            &[text::TEXT_WINDOW],
            ValueKind::Discrete { levels: 256 },
            0,
        )),
        "oscillator_mulaw" => Ok(DataInfo::new(
            &[signal::SIGNAL_WINDOW],
            ValueKind::Discrete { levels: 256 },
            0,
        )),
        other => Err(GmError::config(
            "dataset",
            format!("unknown data set {other:?}; expected one of {DATASET_NAMES:?}"),
        )),
    }
}

/// The number of digit classes.
pub const MNIST_CLASSES: i64 = 10;

/// The names [`load_named`] accepts.
pub const DATASET_NAMES: [&str; 8] = [
    "checkerboard",
    "eight_gaussians",
    "two_moons",
    "two_spirals",
    "mnist_binary",
    "mnist_grey",
    "kjv_text",
    "oscillator_mulaw",
];

/// Loads a data set by name:
/// - a toy set: `toy_train` and `toy_test` fresh draws, seeded from `seed` (train and test
///   use different streams);
/// - `mnist_binary`: the shared 9,000/1,000 split, binarised by the fixed threshold (values 0/1);
/// - `mnist_grey`: the same digits as 8-bit values 0..255;
/// - `kjv_text`: the text corpus as non-overlapping windows of [`text::TEXT_WINDOW`] bytes
///   (values 0..255), 14,409 for training and 1,947 for testing;
/// - `oscillator_mulaw`: 20,000 / 2,000 windows of 256 μ-law codes of the noisy oscillator of
///   [`signal`], seeded from `seed`, with exact probabilities.
///
/// MNIST examples have shape `[1, 28, 28]`; models that want vectors flatten them.
pub fn load_named(
    name: &str,
    device: Device,
    toy_train: i64,
    toy_test: i64,
    seed: u64,
) -> Result<NamedData> {
    if let Ok(set) = name.parse::<toy::ToyDataset>() {
        seed_torch(derive_seed(seed, 0x7041_0001));
        let train = set.sample(toy_train, device)?;
        seed_torch(derive_seed(seed, 0x7041_0002));
        let test = set.sample(toy_test, device)?;
        let mut data = NamedData::unlabelled(name, train, test, &[2], ValueKind::Continuous);
        data.toy = Some(set);
        return Ok(data);
    }
    if name == "kjv_text" {
        let corpus = text::TextCorpus::load_default()?;
        return Ok(NamedData::unlabelled(
            name,
            text::windows(&corpus.train, text::TEXT_WINDOW, device)?,
            text::windows(&corpus.test, text::TEXT_WINDOW, device)?,
            &[text::TEXT_WINDOW],
            ValueKind::Discrete { levels: 256 },
        ));
    }
    if name == "oscillator_mulaw" {
        let (train, test) = signal::oscillator_windows(seed, device)?;
        let mut data = NamedData::unlabelled(
            name,
            train,
            test,
            &[signal::SIGNAL_WINDOW],
            ValueKind::Discrete { levels: 256 },
        );
        data.signal = Some(signal::Oscillator::default());
        return Ok(data);
    }
    let (binary, levels) = match name {
        "mnist_binary" => (true, 2),
        "mnist_grey" => (false, 256),
        other => {
            return Err(GmError::config(
                "dataset",
                format!("unknown data set {other:?}; expected one of {DATASET_NAMES:?}"),
            ))
        }
    };
    let mnist = mnist::Mnist::load_default()?;
    let split = |s: &mnist::MnistSplit| -> Result<Split> {
        let x = if binary {
            s.binarized(device)?
        } else {
            s.images_u8(device)?.f_to_kind(tch::Kind::Float)?
        };
        Ok(Split {
            x: x.f_reshape([-1, 1, 28, 28])?,
            labels: Some(s.labels_i64(device)?),
        })
    };
    Ok(NamedData {
        name: name.to_string(),
        train: split(&mnist.train)?,
        test: split(&mnist.test)?,
        event_shape: vec![1, 28, 28],
        values: ValueKind::Discrete { levels },
        toy: None,
        signal: None,
    })
}

/// Shuffled mini-batches by epoch, as a pure function of `(seed, step)`: the order of epoch
/// `e` is a permutation seeded by `derive_seed(seed, e)`, and a partial last batch is dropped.
#[derive(Debug)]
pub struct EpochBatches {
    n: i64,
    batch_size: i64,
    seed: u64,
    epoch: Option<u64>,
    order: Vec<i64>,
}

impl EpochBatches {
    pub fn new(n: i64, batch_size: i64, seed: u64) -> Self {
        EpochBatches {
            n,
            batch_size: batch_size.clamp(1, n.max(1)),
            seed,
            epoch: None,
            order: Vec::new(),
        }
    }

    pub fn batches_per_epoch(&self) -> u64 {
        (self.n / self.batch_size).max(1) as u64
    }

    /// The example indices of batch `step`.
    pub fn indices(&mut self, step: u64) -> &[i64] {
        let per_epoch = self.batches_per_epoch();
        let epoch = step / per_epoch;
        if self.epoch != Some(epoch) {
            self.order = (0..self.n).collect();
            let mut rng =
                rand_chacha::ChaCha8Rng::seed_from_u64(derive_seed(self.seed, epoch ^ (1 << 62)));
            self.order.shuffle(&mut rng);
            self.epoch = Some(epoch);
        }
        let start = ((step % per_epoch) as i64 * self.batch_size) as usize;
        let end = (start + self.batch_size as usize).min(self.order.len());
        &self.order[start..end]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_cover_every_example_once() {
        let mut b = EpochBatches::new(10, 3, 1);
        assert_eq!(b.batches_per_epoch(), 3);
        let mut seen: Vec<i64> = (0..3).flat_map(|s| b.indices(s).to_vec()).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 9, "three batches of three distinct examples");
        let first = b.indices(0).to_vec();
        let next_epoch = b.indices(3).to_vec();
        assert_ne!(first, next_epoch, "each epoch reshuffles");
        let mut again = EpochBatches::new(10, 3, 1);
        assert_eq!(
            again.indices(4),
            b.indices(4),
            "a pure function of (seed, step)"
        );
    }
}
