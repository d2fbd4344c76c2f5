//! The seam between a discrete-latent model and a prior over its codes.
//!
//! A VQ-VAE (gm-vae) trains without a prior over its grid of codes but needs one to sample and
//! to bound its likelihood; gm-autoregressive's models of discrete grids implement
//! [`CodePrior`] and are attached to it. The prior's state travels in the VQ-VAE's checkpoint.

use crate::model::StepOutput;
use crate::train::StateDict;
use crate::{GmError, Result};
use tch::{Device, Kind, Tensor};

/// A prior over grids of codes `[batch] ++ grid`, each code in `0..num_codes`.
pub trait CodePrior {
    /// A short name of the prior's kind; its state is saved under `prior.<name>.`.
    fn name(&self) -> &'static str;

    /// The shape of one grid of codes, e.g. `[7, 7]`.
    fn grid(&self) -> Vec<i64>;

    /// The number of distinct codes `K`.
    fn num_codes(&self) -> i64;

    /// `n` grids `[n] ++ grid` of `Int64` codes in `[0, K)`.
    fn sample(&self, n: i64) -> Result<Tensor>;

    /// `ln p(codes)` for grids `[batch] ++ grid`, as `[batch]`.
    fn log_prob(&self, codes: &Tensor) -> Result<Tensor>;

    /// One optimizer step on a batch of grids, for a prior that learns; the default refuses
    /// (a fixed prior has nothing to fit).
    fn train_step(&mut self, _codes: &Tensor) -> Result<StepOutput> {
        Err(GmError::Unsupported(format!(
            "the {} code prior has nothing to train",
            self.name()
        )))
    }

    /// Everything that defines the prior (weights, and for parameter-free priors the values
    /// that fix it), as named tensors.
    fn state(&self) -> Vec<(String, Tensor)>;

    /// Restores what [`CodePrior::state`] produced (names without the `prior.<name>.` prefix).
    fn load_state(&mut self, prefix: &str, state: &mut StateDict) -> Result<()>;
}

/// Checks that `codes` are grids `[batch] ++ grid` of integers in `0..num_codes`.
pub fn check_codes(codes: &Tensor, grid: &[i64], num_codes: i64, what: &str) -> Result<()> {
    let size = codes.size();
    if size.len() != grid.len() + 1 || size[1..] != *grid {
        return Err(GmError::shape(what, format!("[batch] ++ {grid:?}"), &size));
    }
    crate::model::check_integers(codes, num_codes, what, "codes")
}

/// Every code grid equally likely: `ln p = −|grid| ln K`. The baseline prior of VQ-VAE.
#[derive(Debug, Clone)]
pub struct UniformCodePrior {
    grid: Vec<i64>,
    num_codes: i64,
    device: Device,
}

impl UniformCodePrior {
    pub fn new(grid: &[i64], num_codes: i64, device: Device) -> Self {
        UniformCodePrior {
            grid: grid.to_vec(),
            num_codes,
            device,
        }
    }

    fn shape_tensor(&self) -> Tensor {
        let mut v = self.grid.clone();
        v.push(self.num_codes);
        Tensor::from_slice(&v)
    }
}

impl CodePrior for UniformCodePrior {
    fn name(&self) -> &'static str {
        "uniform"
    }

    fn grid(&self) -> Vec<i64> {
        self.grid.clone()
    }

    fn num_codes(&self) -> i64 {
        self.num_codes
    }

    fn sample(&self, n: i64) -> Result<Tensor> {
        let shape: Vec<i64> = std::iter::once(n)
            .chain(self.grid.iter().copied())
            .collect();
        Ok(Tensor::f_randint(
            self.num_codes,
            shape.as_slice(),
            (Kind::Int64, self.device),
        )?)
    }

    fn log_prob(&self, codes: &Tensor) -> Result<Tensor> {
        check_codes(
            codes,
            &self.grid,
            self.num_codes,
            "UniformCodePrior.log_prob",
        )?;
        let cells: i64 = self.grid.iter().product();
        Ok(Tensor::f_full(
            [codes.size()[0]],
            -(cells as f64) * (self.num_codes as f64).ln(),
            (Kind::Float, codes.device()),
        )?)
    }

    /// The grid and the number of codes, so that loading checks they agree.
    fn state(&self) -> Vec<(String, Tensor)> {
        vec![("shape".into(), self.shape_tensor())]
    }

    fn load_state(&mut self, prefix: &str, state: &mut StateDict) -> Result<()> {
        let mine = self.shape_tensor();
        let saved = state.take(&format!("{prefix}shape"), &mine.size())?;
        if Vec::<i64>::try_from(&saved)? != Vec::<i64>::try_from(&mine)? {
            return Err(GmError::Checkpoint {
                path: "<state>".into(),
                message: format!(
                    "the saved uniform prior has grid and codes {:?}, this one {:?}",
                    Vec::<i64>::try_from(&saved)?,
                    Vec::<i64>::try_from(&mine)?
                ),
            });
        }
        Ok(())
    }
}
