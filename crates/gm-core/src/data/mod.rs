//! Data sets and batching.
//!
//! - [`toy`]: 2D sets with exact log-densities.
//! - [`mnist`]: the IDX reader/writer, the shared MNIST split and binarisation protocol.
//! - [`transforms`]: binarisation and dequantisation.

pub mod mnist;
pub mod toy;
pub mod transforms;

use crate::device::derive_seed;
use rand::seq::SliceRandom;
use rand_chacha::rand_core::SeedableRng;

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
