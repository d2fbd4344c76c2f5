//! An autoregressive prior over a VQ-VAE's grids of codes (gm-core's [`CodePrior`]): an
//! [`Autoregressive`] model whose data are the grids `[1, h, w]` with `K` levels, a PixelCNN or
//! Gated PixelCNN with a K-way softmax per cell by default. Fit it to `VqVae::encode_codes` of
//! the training set and attach it with `VqVae::set_prior`: the VQ-VAE can then be sampled, and
//! scored by its decoder term plus the prior's exact `ln p(codes)`.
//!
//! The network sees each code as one number on [-1, 1] (its index), as it sees pixel levels;
//! codes are nominal, so an embedding would serve them better (not built yet).

use crate::model::{Autoregressive, AutoregressiveConfig};
use crate::network::NetworkConfig;
use crate::output::OutputConfig;
use crate::pixelcnn::PixelCnnConfig;
use gm_core::code_prior::{check_codes, CodePrior};
use gm_core::data::ValueKind;
use gm_core::model::{Batch, GenerativeModel, SampleOptions, StepOutput};
use gm_core::spec::DataInfo;
use gm_core::tch::{Device, Kind, Tensor};
use gm_core::train::{AdamConfig, StateDict};
use gm_core::{GmError, Result};

/// An autoregressive model of code grids (see the module documentation).
#[derive(Debug)]
pub struct AutoregressiveCodePrior {
    model: Autoregressive,
    grid: Vec<i64>,
    num_codes: i64,
}

/// A PixelCNN prior's default: 4 residual blocks of width 64 and a 5×5 first layer (code grids
/// are small), Adam at 1e-3.
pub fn default_prior_config() -> AutoregressiveConfig {
    AutoregressiveConfig {
        network: NetworkConfig::Pixelcnn(PixelCnnConfig {
            channels: 64,
            blocks: 4,
            first_kernel: 5,
            kernel: 3,
            head_channels: 64,
        }),
        output: OutputConfig::Categorical,
        optimizer: AdamConfig {
            lr: 1e-3,
            grad_clip_norm: Some(1.0),
            ..AdamConfig::default()
        },
        ..AutoregressiveConfig::default()
    }
}

impl AutoregressiveCodePrior {
    /// A prior over grids `grid` (`[h, w]`) of `num_codes` codes, built from `config` (an
    /// unconditional model with a categorical output).
    pub fn new(
        config: &AutoregressiveConfig,
        grid: &[i64],
        num_codes: i64,
        device: Device,
    ) -> Result<Self> {
        if grid.len() != 2 || grid.iter().any(|g| *g < 1) {
            return Err(GmError::config(
                "grid",
                format!("a code prior models 2-D grids [h, w], got {grid:?}"),
            ));
        }
        if !(2..=65_536).contains(&num_codes) {
            return Err(GmError::config(
                "num_codes",
                format!("must be in [2, 65536], got {num_codes}"),
            ));
        }
        if config.conditional {
            return Err(GmError::config(
                "conditional",
                "a code prior is unconditional",
            ));
        }
        let data = DataInfo::new(
            &[1, grid[0], grid[1]],
            ValueKind::Discrete {
                levels: num_codes as u32,
            },
            0,
        );
        Ok(AutoregressiveCodePrior {
            model: Autoregressive::new(config, &data, device)?,
            grid: grid.to_vec(),
            num_codes,
        })
    }

    /// Codes `[b, h, w]` as the model's data `[b, 1, h, w]` (float levels).
    fn as_data(&self, codes: &Tensor, what: &str) -> Result<Tensor> {
        check_codes(codes, &self.grid, self.num_codes, what)?;
        let b = codes.size()[0];
        Ok(codes
            .f_to_kind(Kind::Float)?
            .f_reshape([b, 1, self.grid[0], self.grid[1]])?)
    }

    /// One Adam step, its losses left on the device (reading them syncs with the host).
    fn step(&mut self, codes: &Tensor) -> Result<StepOutput> {
        let x = self.as_data(codes, "AutoregressiveCodePrior.train_step")?;
        self.model.train_step(&Batch::new(x))
    }

    /// `steps` Adam steps on minibatches of `batch_size` grids drawn (with the generator's
    /// current state) from `codes`; returns the last batch's NLL.
    pub fn fit(&mut self, codes: &Tensor, steps: usize, batch_size: i64) -> Result<f64> {
        check_codes(
            codes,
            &self.grid,
            self.num_codes,
            "AutoregressiveCodePrior.fit",
        )?;
        if batch_size < 1 || steps == 0 {
            return Err(GmError::config(
                "fit",
                format!("needs steps ≥ 1 and batch_size ≥ 1, got {steps} and {batch_size}"),
            ));
        }
        let n = codes.size()[0];
        let mut last = StepOutput::new();
        for _ in 0..steps {
            let idx = Tensor::f_randint(n, [batch_size.min(n)], (Kind::Int64, codes.device()))?;
            last = self.step(&codes.f_index_select(0, &idx)?)?;
        }
        nll_of(&last)
    }

    /// The model behind the prior.
    pub fn model(&self) -> &Autoregressive {
        &self.model
    }
}

/// The `nll` of a training step, read to the host (an error if it is not finite).
fn nll_of(out: &StepOutput) -> Result<f64> {
    out.to_host(0)?
        .into_iter()
        .find(|(n, _)| n == "nll")
        .map(|(_, v)| v)
        .ok_or_else(|| GmError::Unsupported("the training step reported no nll".into()))
}

impl CodePrior for AutoregressiveCodePrior {
    fn name(&self) -> &'static str {
        "autoregressive"
    }

    fn grid(&self) -> Vec<i64> {
        self.grid.clone()
    }

    fn num_codes(&self) -> i64 {
        self.num_codes
    }

    fn sample(&self, n: i64) -> Result<Tensor> {
        let x = self.model.sample_with(n, &SampleOptions::new())?;
        Ok(x.f_reshape([n, self.grid[0], self.grid[1]])?
            .f_to_kind(Kind::Int64)?)
    }

    fn log_prob(&self, codes: &Tensor) -> Result<Tensor> {
        let x = self.as_data(codes, "AutoregressiveCodePrior.log_prob")?;
        self.model
            .log_likelihood(&x)?
            .ok_or_else(|| GmError::Unsupported("the prior has no likelihood".into()))
    }

    fn train_step(&mut self, codes: &Tensor) -> Result<StepOutput> {
        self.step(codes)
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        self.model.state()
    }

    /// Takes every tensor named `prefix…`, restores the model from them and refuses any left
    /// over or missing.
    fn load_state(&mut self, prefix: &str, state: &mut StateDict) -> Result<()> {
        let mut mine = Vec::new();
        for name in state.names_with_prefix(prefix) {
            let t = state.take_any(&name)?;
            mine.push((name[prefix.len()..].to_string(), t));
        }
        let mut sub = StateDict::from_tensors(mine);
        self.model.load_state(&mut sub)?;
        sub.finish(std::path::Path::new("<code prior>"))
    }
}
