//! A VQ-VAE with an autoregressive prior over its codes, trained in one run (family
//! `vq_vae_prior`): the two-stage recipe of van den Oord et al. (2017) as one model, so the
//! benchmark can train, sample and score it like any other.
//!
//! The first `vq_vae_steps` steps train the VQ-VAE alone; every later step trains the prior on
//! the codes of that step's batch (`VqVae::train_prior_step`), the VQ-VAE frozen. The prior is
//! attached from the start, so the model can be sampled and scored at any point (before its
//! second phase the prior is untrained and near uniform). The phase is read from the VQ-VAE's
//! own step count, which its checkpoint holds, so a run resumes in the right phase. The
//! likelihood is the VQ-VAE's bound `ln p(x | z_q(x)) + ln p(codes(x))` under the prior.
//!
//! It lives here, beside the suite, because it joins two family crates (gm-vae and
//! gm-autoregressive), which depend on gm-core alone and meet only through its `CodePrior`.

use gm_autoregressive::{default_prior_config, AutoregressiveCodePrior, AutoregressiveConfig};
use gm_core::model::{Batch, GenerativeModel, LikelihoodKind, SampleOptions, StepOutput};
use gm_core::spec::{Budget, DataInfo, ModelSpec};
use gm_core::tch::{Device, Tensor};
use gm_core::train::config::{in_section, with_section, Config};
use gm_core::train::StateDict;
use gm_core::{GmError, Result};
use gm_vae::{VqVae, VqVaeConfig};
use serde::{Deserialize, Serialize};

/// The `[model]` table of family `vq_vae_prior`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VqVaePriorConfig {
    /// Steps of the first phase (the VQ-VAE alone); the rest of the run trains the prior.
    /// Scaled with the run's step budget.
    pub vq_vae_steps: u64,
    /// The VQ-VAE (`[model.vq_vae]`, as family `vq_vae`'s `[model]` table).
    pub vq_vae: VqVaeConfig,
    /// The prior over its code grids (`[model.prior]`, as family `autoregressive`'s `[model]`
    /// table; an unconditional network with a categorical output). Without the table it is
    /// `default_prior_config()` (a PixelCNN); a table fills the keys it leaves out from the
    /// autoregressive family's defaults (a MADE network), so name the network.
    pub prior: AutoregressiveConfig,
}

impl Default for VqVaePriorConfig {
    fn default() -> Self {
        VqVaePriorConfig {
            vq_vae_steps: 1000,
            vq_vae: VqVaeConfig::default(),
            prior: default_prior_config(),
        }
    }
}

impl Config for VqVaePriorConfig {
    fn validate(&self) -> Result<()> {
        if self.vq_vae_steps == 0 {
            return Err(GmError::config(
                "vq_vae_steps",
                "must be at least 1 (the VQ-VAE trains before its prior)",
            ));
        }
        in_section("vq_vae", self.vq_vae.validate())?;
        in_section("prior", self.prior.validate())
    }
}

impl ModelSpec for VqVaePriorConfig {
    fn family(&self) -> &'static str {
        "vq_vae_prior"
    }

    fn scale_to_budget(&mut self, budget: &Budget) {
        // The prior keeps at least one step of any run of two or more.
        self.vq_vae_steps = budget
            .scale(self.vq_vae_steps)
            .min(budget.steps().saturating_sub(1))
            .max(1);
        self.vq_vae.scale_to_budget(budget);
        self.prior.scale_to_budget(budget);
    }

    fn build(&self, data: &DataInfo, device: Device) -> Result<Box<dyn GenerativeModel>> {
        Ok(Box::new(VqVaePrior::new(self, data, device)?))
    }
}

/// The shipped run file, registered as `bench/vq_vae_prior_mnist`.
pub const VQ_VAE_PRIOR_MNIST: &str = include_str!("../configs/vq_vae_prior_mnist.toml");

/// Registers family `vq_vae_prior` and its run file.
pub fn register(registry: &mut gm_core::spec::Registry) {
    registry.add_family::<VqVaePriorConfig>("vq_vae_prior");
    registry.add_shipped("bench/vq_vae_prior_mnist", VQ_VAE_PRIOR_MNIST);
}

/// The model of [`VqVaePriorConfig`] (see the module documentation).
#[derive(Debug)]
pub struct VqVaePrior {
    vq_vae: VqVae,
    vq_vae_steps: u64,
    prior_parameters: i64,
    fingerprint: Option<String>,
}

impl VqVaePrior {
    pub fn new(config: &VqVaePriorConfig, data: &DataInfo, device: Device) -> Result<Self> {
        config.validate()?;
        let mut vq_vae = config
            .vq_vae
            .build_vq_vae(data, device)
            .map_err(|e| with_section("vq_vae", e))?;
        let prior = AutoregressiveCodePrior::new(
            &config.prior,
            vq_vae.code_grid(),
            vq_vae.num_codes(),
            device,
        )
        .map_err(|e| with_section("prior", e))?;
        let prior_parameters = prior.model().num_parameters();
        vq_vae.set_prior(Box::new(prior))?;
        Ok(VqVaePrior {
            vq_vae,
            vq_vae_steps: config.vq_vae_steps,
            prior_parameters,
            fingerprint: config.fingerprint().ok(),
        })
    }

    /// The VQ-VAE, its prior attached.
    pub fn vq_vae(&self) -> &VqVae {
        &self.vq_vae
    }

    /// Whether the next step trains the prior (the second phase).
    pub fn training_prior(&self) -> bool {
        self.vq_vae.steps() >= self.vq_vae_steps
    }
}

impl GenerativeModel for VqVaePrior {
    fn family(&self) -> &'static str {
        "vq_vae_prior"
    }

    /// A VQ-VAE step (its losses) in the first phase, a prior step (`loss` and `nll`, nats per
    /// code grid) in the second; `phase` is 1 or 2.
    fn train_step(&mut self, batch: &Batch) -> Result<StepOutput> {
        let (out, phase) = if self.training_prior() {
            (self.vq_vae.train_prior_step(&batch.x)?, 2.0f32)
        } else {
            (self.vq_vae.train_step(batch)?, 1.0)
        };
        Ok(out.with("phase", &Tensor::from(phase)))
    }

    fn sample_with(&self, n: i64, options: &SampleOptions) -> Result<Tensor> {
        self.vq_vae.sample_with(n, options)
    }

    fn likelihood_kind(&self) -> LikelihoodKind {
        self.vq_vae.likelihood_kind()
    }

    fn likelihood_estimator(&self) -> Option<String> {
        self.vq_vae.likelihood_estimator()
    }

    fn log_likelihood(&self, x: &Tensor) -> Result<Option<Tensor>> {
        self.vq_vae.log_likelihood(x)
    }

    fn last_evaluations(&self) -> Option<usize> {
        self.vq_vae.last_evaluations()
    }

    fn encode(&self, x: &Tensor) -> Result<Option<Tensor>> {
        self.vq_vae.encode(x)
    }

    fn decode(&self, codes: &Tensor) -> Result<Option<Tensor>> {
        self.vq_vae.decode(codes)
    }

    fn spec_fingerprint(&self) -> Option<String> {
        self.fingerprint.clone()
    }

    /// The VQ-VAE's and the prior's.
    fn num_parameters(&self) -> i64 {
        self.vq_vae.num_parameters() + self.prior_parameters
    }

    /// The VQ-VAE's state, which holds the prior's under `prior.autoregressive.`.
    fn state(&self) -> Vec<(String, Tensor)> {
        self.vq_vae.state()
    }

    fn load_state(&mut self, state: &mut StateDict) -> Result<()> {
        self.vq_vae.load_state(state)
    }
}
