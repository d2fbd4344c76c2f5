//! Adapters between the shared data layout and models that expect another one.

use gm_core::model::{Batch, GenerativeModel, LikelihoodKind, StepOutput};
use gm_core::tch::Tensor;
use gm_core::train::StateDict;
use gm_core::Result;

/// Presents image batches `[n, C, H, W]` to an unconditional model as flat `[n, C·H·W]` and
/// drops labels: the shared data sets carry labels, but an unconditional VAE takes none.
pub struct FlatUnlabelled<M>(pub M);

fn flat(x: &Tensor) -> Result<Tensor> {
    Ok(x.f_reshape([x.size().first().copied().unwrap_or(0), -1])?)
}

impl<M: GenerativeModel> GenerativeModel for FlatUnlabelled<M> {
    fn family(&self) -> &'static str {
        self.0.family()
    }
    fn train_step(&mut self, batch: &Batch) -> Result<StepOutput> {
        self.0.train_step(&Batch::new(flat(&batch.x)?))
    }
    fn sample(&self, n: i64) -> Result<Tensor> {
        self.0.sample(n)
    }
    fn likelihood_kind(&self) -> LikelihoodKind {
        self.0.likelihood_kind()
    }
    fn log_likelihood(&self, x: &Tensor) -> Result<Option<Tensor>> {
        self.0.log_likelihood(&flat(x)?)
    }
    fn encode(&self, x: &Tensor) -> Result<Option<Tensor>> {
        self.0.encode(&flat(x)?)
    }
    fn num_parameters(&self) -> i64 {
        self.0.num_parameters()
    }
    fn state(&self) -> Vec<(String, Tensor)> {
        self.0.state()
    }
    fn load_state(&mut self, state: &mut StateDict) -> Result<()> {
        self.0.load_state(state)
    }
}
