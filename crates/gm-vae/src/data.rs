//! The data sets a config can name, loaded as tensors.

use crate::likelihood::LikelihoodConfig;
use gm_core::data::mnist::Mnist;
use gm_core::data::toy::ToyDataset;
use gm_core::device::derive_seed;
use gm_core::tch::{Device, Kind, Tensor};
use gm_core::train::Config;
use gm_core::{GmError, Result};
use serde::{Deserialize, Serialize};

fn default_train_size() -> i64 {
    20_000
}
fn default_test_size() -> i64 {
    5_000
}

/// Which data a run trains and evaluates on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum DataConfig {
    /// MNIST with the shared threshold `pixel > 127 → 1`, as float `[n, 784]`.
    #[default]
    BinarizedMnist,
    /// MNIST's 8-bit grey levels `0..=255`, as float `[n, 784]`.
    GreyMnist,
    /// A 2D toy set, drawn with a fixed seed: float `[n, 2]`.
    Toy {
        dataset: ToyDataset,
        #[serde(default = "default_train_size")]
        train_size: i64,
        #[serde(default = "default_test_size")]
        test_size: i64,
        #[serde(default)]
        seed: u64,
    },
}

impl Config for DataConfig {
    fn validate(&self) -> Result<()> {
        if let DataConfig::Toy {
            train_size,
            test_size,
            ..
        } = self
        {
            if *train_size < 1 {
                return Err(GmError::config("train_size", "must be at least 1"));
            }
            if *test_size < 1 {
                return Err(GmError::config("test_size", "must be at least 1"));
            }
        }
        Ok(())
    }
}

/// Training and test data with their labels, where the set has any.
#[derive(Debug)]
pub struct DataSplits {
    pub train: Tensor,
    pub train_labels: Option<Tensor>,
    pub test: Tensor,
    pub test_labels: Option<Tensor>,
}

impl DataConfig {
    pub fn name(&self) -> &'static str {
        match self {
            DataConfig::BinarizedMnist => "binarized MNIST",
            DataConfig::GreyMnist => "grey MNIST",
            DataConfig::Toy { dataset, .. } => dataset.name(),
        }
    }

    /// Values per example.
    pub fn elements(&self) -> i64 {
        match self {
            DataConfig::BinarizedMnist | DataConfig::GreyMnist => 784,
            DataConfig::Toy { .. } => 2,
        }
    }

    /// Checks that `likelihood` can score these data, naming `model.likelihood` if not.
    pub fn check_likelihood(&self, likelihood: &LikelihoodConfig) -> Result<()> {
        let fits = match self {
            DataConfig::BinarizedMnist => matches!(likelihood, LikelihoodConfig::Bernoulli),
            DataConfig::GreyMnist => likelihood.levels() == Some(256),
            DataConfig::Toy { .. } => matches!(likelihood, LikelihoodConfig::Gaussian { .. }),
        };
        if fits {
            return Ok(());
        }
        let wanted = match self {
            DataConfig::BinarizedMnist => "kind = \"bernoulli\"",
            DataConfig::GreyMnist => {
                "kind = \"discretized_logistic\" (bins = 256) or \"categorical\" (classes = 256)"
            }
            DataConfig::Toy { .. } => "kind = \"gaussian\"",
        };
        Err(GmError::config(
            "model.likelihood",
            format!("{} data need {wanted}", self.name()),
        ))
    }

    /// Loads (MNIST from `GM_DATA_DIR`, see gm-core) or draws (toy sets) the data.
    pub fn load(&self, device: Device) -> Result<DataSplits> {
        self.validate()?;
        match self {
            DataConfig::BinarizedMnist | DataConfig::GreyMnist => {
                let mnist = Mnist::load_default()?;
                let images = |split: &gm_core::data::mnist::MnistSplit| -> Result<Tensor> {
                    if let DataConfig::BinarizedMnist = self {
                        split.binarized(device)
                    } else {
                        Ok(split.images_u8(device)?.f_to_kind(Kind::Float)?)
                    }
                };
                Ok(DataSplits {
                    train: images(&mnist.train)?,
                    train_labels: Some(mnist.train.labels_i64(device)?),
                    test: images(&mnist.test)?,
                    test_labels: Some(mnist.test.labels_i64(device)?),
                })
            }
            DataConfig::Toy {
                dataset,
                train_size,
                test_size,
                seed,
            } => {
                // Each split has its own seed stream, so changing one size leaves the other split alone.
                gm_core::device::seed_torch(derive_seed(*seed, 1));
                let train = dataset.sample(*train_size, device)?;
                gm_core::device::seed_torch(derive_seed(*seed, 2));
                let test = dataset.sample(*test_size, device)?;
                Ok(DataSplits {
                    train,
                    train_labels: None,
                    test,
                    test_labels: None,
                })
            }
        }
    }
}
