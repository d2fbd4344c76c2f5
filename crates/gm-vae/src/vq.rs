//! VQ-VAE (van den Oord et al., 2017): an encoder's vectors snapped to the nearest entry of a
//! learned codebook, with straight-through gradients, a commitment loss, codebook updates by
//! exponential moving averages (or by gradient), and restarts of codes that fell out of use.
//!
//! A VQ-VAE trains without a prior over its codes (the uniform prior's KL is a constant), but
//! sampling and likelihoods need one. gm-core's [`CodePrior`] is that seam: gm-autoregressive's
//! models of discrete grids (e.g. a PixelCNN fitted to [`VqVae::encode_codes`] of the training
//! set) implement it, and [`VqVae::set_prior`] attaches one; its state is saved and loaded with
//! the VQ-VAE's. Until a prior is attached, [`GenerativeModel::sample`] returns
//! [`GmError::Unsupported`] and `log_likelihood` returns `None`.
//! [`gm_core::code_prior::UniformCodePrior`] is the baseline prior of the paper.

use crate::config::check_data_shape;
use crate::likelihood::LikelihoodConfig;
use crate::likelihood::{Likelihood, LikelihoodHead};
use crate::network::NetworkConfig;
use crate::network::{GridDecoder, GridEncoder};
use gm_core::code_prior::CodePrior;
use gm_core::distributions::Distribution;
use gm_core::model::{
    check_integers, load_var_store, var_store_state, Batch, GenerativeModel, LikelihoodKind,
    SampleOptions, StepOutput,
};
use gm_core::tch::{nn, Device, Kind, Tensor};
use gm_core::train::config::{check_positive, check_range, in_section, with_section};
use gm_core::train::{Adam, AdamConfig, Config, LrSchedule, StateDict};
use gm_core::{GmError, Result};
use serde::{Deserialize, Serialize};

fn default_decay() -> f64 {
    0.99
}
fn default_epsilon() -> f64 {
    1e-5
}

/// How the codebook learns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum CodebookUpdate {
    /// Each code moves to the running mean of the encoder vectors assigned to it:
    /// `N_k ← γ N_k + (1-γ) n_k`, `m_k ← γ m_k + (1-γ) Σ_{i→k} z_i`, and
    /// `e_k = m_k / Ñ_k` with the Laplace-smoothed count
    /// `Ñ_k = (N_k + ε) / (Σ_j N_j + K ε) · Σ_j N_j`.
    Ema {
        #[serde(default = "default_decay")]
        decay: f64,
        #[serde(default = "default_epsilon")]
        epsilon: f64,
    },
    /// The codebook is a trained parameter with the loss `‖sg(z_e) - e‖²`.
    Gradient,
}

impl Default for CodebookUpdate {
    fn default() -> Self {
        CodebookUpdate::Ema {
            decay: 0.99,
            epsilon: 1e-5,
        }
    }
}

/// The vector quantizer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuantizerConfig {
    /// Codebook size `K`.
    pub num_codes: i64,
    /// Length of each code vector.
    pub code_dim: i64,
    /// β of the commitment loss `β ‖z_e - sg(e)‖²`.
    pub commitment_cost: f64,
    pub update: CodebookUpdate,
    /// A code whose moving-average usage (vectors per batch) falls below this value is
    /// restarted at a random encoder vector of the current batch; 0 turns restarts off.
    pub dead_code_threshold: f64,
}

impl Default for QuantizerConfig {
    fn default() -> Self {
        QuantizerConfig {
            num_codes: 128,
            code_dim: 16,
            commitment_cost: 0.25,
            update: CodebookUpdate::default(),
            dead_code_threshold: 0.5,
        }
    }
}

impl Config for QuantizerConfig {
    fn validate(&self) -> Result<()> {
        if self.num_codes < 2 {
            return Err(GmError::config(
                "num_codes",
                format!("a codebook needs at least 2 codes, got {}", self.num_codes),
            ));
        }
        if self.code_dim < 1 {
            return Err(GmError::config(
                "code_dim",
                format!("must be at least 1, got {}", self.code_dim),
            ));
        }
        gm_core::nn::check_parameter_budget(
            self.num_codes as i128 * self.code_dim as i128,
            "the codebook",
        )?;
        check_range("commitment_cost", self.commitment_cost, 0.0, f64::MAX)?;
        check_range(
            "dead_code_threshold",
            self.dead_code_threshold,
            0.0,
            f64::MAX,
        )?;
        if let CodebookUpdate::Ema { decay, epsilon } = self.update {
            check_range("update.decay", decay, 0.0, 0.999_999)?;
            check_positive("update.epsilon", epsilon)?;
        }
        Ok(())
    }
}

/// The usage counts of a gradient-trained codebook are averaged with this decay, for restarts.
const USAGE_DECAY: f64 = 0.99;

impl QuantizerConfig {
    /// Creates the codebook and its moving-average buffers under `vs_path` (all saved with the
    /// var store; only a gradient-trained codebook is trainable).
    pub fn init(&self, vs_path: &nn::Path) -> Result<VectorQuantizer> {
        self.validate()?;
        let (k, d) = (self.num_codes, self.code_dim);
        let kind = vs_path.kind();
        let device = vs_path.device();
        let initial = Tensor::f_randn([k, d], (kind, device))?;
        let codebook = match self.update {
            CodebookUpdate::Gradient => vs_path.f_var_copy("codebook", &initial)?,
            CodebookUpdate::Ema { .. } => vs_path.add("codebook", initial.f_detach()?, false),
        };
        // Every code starts as if it had been chosen once by itself: N = 1, m = e. Starting from
        // N = 0 would divide an unused code by a near-zero smoothed count on the first update.
        let cluster_size = vs_path.add("cluster_size", Tensor::f_ones([k], (kind, device))?, false);
        let embed_sum = vs_path.add("embed_sum", codebook.f_detach()?.copy(), false);
        Ok(VectorQuantizer {
            config: self.clone(),
            codebook,
            cluster_size,
            embed_sum,
        })
    }
}

/// The output of [`VectorQuantizer::quantize`].
#[derive(Debug)]
pub struct Quantized {
    /// `z_e + sg(e - z_e)`: the chosen codes in the forward pass, the identity for gradients.
    pub quantized: Tensor,
    /// Index of the chosen code per vector, `Int64`, the input's shape without its last dim.
    pub codes: Tensor,
    /// `β Σ ‖z_e - sg(e)‖²` per example, averaged over the batch.
    pub commitment_loss: Tensor,
    /// `Σ ‖sg(z_e) - e‖²` per example, averaged over the batch (0 for an EMA codebook).
    pub codebook_loss: Tensor,
    /// `exp(H)` of the batch's code frequencies: the effective number of codes in use.
    pub perplexity: Tensor,
}

/// A codebook `[num_codes, code_dim]` with its moving-average state.
#[derive(Debug)]
pub struct VectorQuantizer {
    config: QuantizerConfig,
    codebook: Tensor,
    cluster_size: Tensor,
    embed_sum: Tensor,
}

impl VectorQuantizer {
    pub fn config(&self) -> &QuantizerConfig {
        &self.config
    }

    pub fn codebook(&self) -> &Tensor {
        &self.codebook
    }

    /// The moving-average usage counts `N_k`.
    pub fn cluster_size(&self) -> &Tensor {
        &self.cluster_size
    }

    /// The moving-average sums `m_k` of assigned vectors.
    pub fn embed_sum(&self) -> &Tensor {
        &self.embed_sum
    }

    fn check_vectors(&self, z: &Tensor, what: &str) -> Result<()> {
        let size = z.size();
        if size.len() < 2 || size[size.len() - 1] != self.config.code_dim {
            return Err(GmError::shape(
                what,
                format!("[batch, ..., {}]", self.config.code_dim),
                &size,
            ));
        }
        Ok(())
    }

    /// The index of the nearest code (squared Euclidean distance) for each vector of `z`
    /// `[..., code_dim]`, as `Int64` `[...]`.
    pub fn nearest_codes(&self, z: &Tensor) -> Result<Tensor> {
        self.check_vectors(z, "VectorQuantizer.nearest_codes")?;
        let size = z.size();
        let flat = z.f_reshape([-1, self.config.code_dim])?.f_detach()?;
        let codebook = self.codebook.f_detach()?;
        // ‖z - e‖² = ‖z‖² - 2 z·e + ‖e‖²; the ‖z‖² term does not change the arg-min.
        let distances = codebook
            .f_square()?
            .f_sum_dim_intlist(1, false, None::<Kind>)?
            .f_unsqueeze(0)?
            .f_sub(&flat.f_matmul(&codebook.f_tr()?)?.f_mul_scalar(2.0)?)?;
        let codes = distances.f_argmin(1, false)?;
        Ok(codes.f_reshape(&size[..size.len() - 1])?)
    }

    /// The code vectors of `codes` `[...]`, as `[..., code_dim]`.
    pub fn lookup(&self, codes: &Tensor) -> Result<Tensor> {
        let k = self.config.num_codes;
        let codes = codes.f_to_kind(Kind::Int64)?;
        let outside = codes.f_lt(0)?.f_logical_or(&codes.f_ge(k)?)?;
        if outside.f_any()?.f_int64_value(&[])? != 0 {
            return Err(GmError::Domain(format!(
                "VectorQuantizer.lookup: codes must lie in [0, {k})"
            )));
        }
        let size = codes.size();
        let flat = self.codebook.f_index_select(0, &codes.f_reshape([-1])?)?;
        let mut shape = size.clone();
        shape.push(self.config.code_dim);
        Ok(flat.f_reshape(shape.as_slice())?)
    }

    /// Quantizes `z_e` `[batch, ..., code_dim]` with straight-through gradients.
    pub fn quantize(&self, z_e: &Tensor) -> Result<Quantized> {
        self.check_vectors(z_e, "VectorQuantizer.quantize")?;
        let codes = self.nearest_codes(z_e)?;
        let chosen = self.codebook.f_index_select(0, &codes.f_reshape([-1])?)?;
        let chosen = chosen.f_reshape(z_e.size().as_slice())?;
        let per_example = |t: Tensor| -> Result<Tensor> {
            Ok(t.f_flatten(1, -1)?
                .f_sum_dim_intlist(1, false, None::<Kind>)?
                .f_mean(None::<Kind>)?)
        };
        let commitment_loss = per_example(z_e.f_sub(&chosen.f_detach()?)?.f_square()?)?
            .f_mul_scalar(self.config.commitment_cost)?;
        let codebook_loss = match self.config.update {
            CodebookUpdate::Gradient => per_example(z_e.f_detach()?.f_sub(&chosen)?.f_square()?)?,
            CodebookUpdate::Ema { .. } => commitment_loss.f_zeros_like()?,
        };
        let quantized = z_e.f_add(&chosen.f_sub(z_e)?.f_detach()?)?;
        let perplexity = self.perplexity(&codes)?;
        Ok(Quantized {
            quantized,
            codes,
            commitment_loss,
            codebook_loss,
            perplexity,
        })
    }

    /// `exp(-Σ p_k ln p_k)` of the code frequencies in `codes`.
    pub fn perplexity(&self, codes: &Tensor) -> Result<Tensor> {
        let counts = self.counts(codes)?;
        let p = counts.f_div_scalar(codes.numel().max(1) as f64)?;
        let entropy = p
            .f_mul(&p.f_add_scalar(1e-10)?.f_log()?)?
            .f_sum(None::<Kind>)?
            .f_neg()?;
        Ok(entropy.f_exp()?)
    }

    /// How many vectors chose each code, `[num_codes]` in the codebook's kind.
    fn counts(&self, codes: &Tensor) -> Result<Tensor> {
        Ok(codes
            .f_reshape([-1])?
            .f_bincount(None::<Tensor>, self.config.num_codes)?
            .f_to_kind(self.codebook.kind())?)
    }

    /// One moving-average step from the encoder vectors `z_e` and their `codes`: the usage
    /// counts always, the codebook itself for an EMA codebook. No gradient.
    pub fn ema_update(&mut self, z_e: &Tensor, codes: &Tensor) -> Result<()> {
        self.check_vectors(z_e, "VectorQuantizer.ema_update")?;
        let (k, d) = (self.config.num_codes, self.config.code_dim);
        gm_core::tch::no_grad(|| -> Result<()> {
            let flat = z_e.f_detach()?.f_reshape([-1, d])?;
            let flat_codes = codes.f_reshape([-1])?;
            if flat_codes.size()[0] != flat.size()[0] {
                return Err(GmError::shape(
                    "VectorQuantizer.ema_update codes",
                    format!("{} codes, one per vector", flat.size()[0]),
                    &codes.size(),
                ));
            }
            let counts = self.counts(&flat_codes)?;
            match self.config.update {
                CodebookUpdate::Gradient => {
                    let _ = self.cluster_size.f_lerp_(&counts, 1.0 - USAGE_DECAY)?;
                }
                CodebookUpdate::Ema { decay, epsilon } => {
                    let sums = Tensor::f_zeros([k, d], (flat.kind(), flat.device()))?.f_index_add(
                        0,
                        &flat_codes,
                        &flat,
                    )?;
                    let _ = self.cluster_size.f_lerp_(&counts, 1.0 - decay)?;
                    let _ = self.embed_sum.f_lerp_(&sums, 1.0 - decay)?;
                    let total = self.cluster_size.f_sum(None::<Kind>)?;
                    let smoothed = self
                        .cluster_size
                        .f_add_scalar(epsilon)?
                        .f_div(&total.f_add_scalar(k as f64 * epsilon)?)?
                        .f_mul(&total)?;
                    self.codebook
                        .f_copy_(&self.embed_sum.f_div(&smoothed.f_unsqueeze(1)?)?)?;
                }
            }
            Ok(())
        })
    }

    /// Restarts every code whose usage count is below `dead_code_threshold` at a randomly
    /// chosen vector of `z_e` (libtorch's generator), giving it a fresh count of twice the
    /// threshold so it has time to attract vectors. Returns how many codes were restarted, as
    /// a scalar tensor (reading it is a host synchronisation).
    pub fn restart_dead_codes(&mut self, z_e: &Tensor) -> Result<Tensor> {
        self.check_vectors(z_e, "VectorQuantizer.restart_dead_codes")?;
        let threshold = self.config.dead_code_threshold;
        let (k, d) = (self.config.num_codes, self.config.code_dim);
        gm_core::tch::no_grad(|| -> Result<Tensor> {
            let dead = self.cluster_size.f_lt(threshold)?;
            if threshold <= 0.0 {
                return Ok(dead.f_sum(Kind::Int64)?);
            }
            let flat = z_e.f_detach()?.f_reshape([-1, d])?;
            let n = flat.size()[0];
            let picks = Tensor::f_randint(n, [k], (Kind::Int64, flat.device()))?;
            let candidates = flat.f_index_select(0, &picks)?;
            let dead_rows = dead.f_unsqueeze(1)?;
            let fresh_count = 2.0 * threshold;
            let new_codebook = candidates.f_where_self(&dead_rows, &self.codebook)?;
            let new_sizes = self
                .cluster_size
                .f_full_like(fresh_count)?
                .f_where_self(&dead, &self.cluster_size)?;
            let new_sums = candidates
                .f_mul_scalar(fresh_count)?
                .f_where_self(&dead_rows, &self.embed_sum)?;
            self.codebook.f_copy_(&new_codebook)?;
            self.cluster_size.f_copy_(&new_sizes)?;
            self.embed_sum.f_copy_(&new_sums)?;
            Ok(dead.f_sum(Kind::Int64)?)
        })
    }
}

/// A VQ-VAE: networks, likelihood, quantizer and optimizer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VqVaeConfig {
    /// As for `VaeConfig::data_shape`.
    pub data_shape: Vec<i64>,
    pub encoder: NetworkConfig,
    pub decoder: NetworkConfig,
    pub likelihood: LikelihoodConfig,
    /// Number of code vectors per example for an MLP encoder; a convolutional encoder has one
    /// per cell of its final feature map instead, and this value is ignored.
    pub num_latents: i64,
    pub quantizer: QuantizerConfig,
    pub optimizer: AdamConfig,
    pub lr_schedule: LrSchedule,
}

impl Default for VqVaeConfig {
    fn default() -> Self {
        VqVaeConfig {
            data_shape: vec![1, 28, 28],
            encoder: NetworkConfig::Conv(Default::default()),
            decoder: NetworkConfig::Conv(Default::default()),
            likelihood: LikelihoodConfig::Bernoulli,
            num_latents: 16,
            quantizer: QuantizerConfig::default(),
            optimizer: AdamConfig::default(),
            lr_schedule: LrSchedule::Constant,
        }
    }
}

impl Config for VqVaeConfig {
    fn validate(&self) -> Result<()> {
        check_data_shape(&self.data_shape)?;
        in_section("encoder", self.encoder.validate())?;
        in_section("decoder", self.decoder.validate())?;
        self.encoder.check_fits("encoder", &self.data_shape)?;
        self.decoder.check_fits("decoder", &self.data_shape)?;
        in_section("likelihood", self.likelihood.validate())?;
        in_section("quantizer", self.quantizer.validate())?;
        in_section("optimizer", self.optimizer.validate())?;
        in_section("lr_schedule", self.lr_schedule.validate())?;
        if self.num_latents < 1 {
            return Err(GmError::config(
                "num_latents",
                format!("must be at least 1, got {}", self.num_latents),
            ));
        }
        Ok(())
    }
}

/// The forward pass of a VQ-VAE on a batch.
#[derive(Debug)]
pub struct VqForward {
    /// The encoder's continuous vectors `[batch] ++ grid ++ [code_dim]`.
    pub z_e: Tensor,
    pub quantized: Quantized,
    /// `p(x | z_q)`.
    pub likelihood: Likelihood,
}

/// A trainable VQ-VAE; it owns its variables (codebook and moving averages included) and its
/// Adam optimizer. See the module documentation for the code prior.
pub struct VqVae {
    config: VqVaeConfig,
    vs: nn::VarStore,
    encoder: GridEncoder,
    decoder: GridDecoder,
    head: LikelihoodHead,
    quantizer: VectorQuantizer,
    opt: Adam,
    prior: Option<Box<dyn CodePrior>>,
    grid: Vec<i64>,
    kind: Kind,
}

impl std::fmt::Debug for VqVae {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VqVae")
            .field("config", &self.config)
            .field("grid", &self.grid)
            .field("has_prior", &self.prior.is_some())
            .finish_non_exhaustive()
    }
}

impl VqVae {
    pub fn new(config: &VqVaeConfig, device: Device) -> Result<Self> {
        VqVae::with_kind(config, device, Kind::Float)
    }

    pub fn with_kind(config: &VqVaeConfig, device: Device, kind: Kind) -> Result<Self> {
        config.validate()?;
        let mut vs = nn::VarStore::new(device);
        vs.set_kind(kind);
        let root = vs.root();
        let q = &config.quantizer;
        let encoder = config
            .encoder
            .init_grid_encoder(
                &(&root / "encoder"),
                &config.data_shape,
                config.num_latents,
                q.code_dim,
            )
            .map_err(|e| with_section("encoder", e))?;
        let head = config
            .likelihood
            .init(&(&root / "decoder" / "likelihood"), &config.data_shape)?;
        let decoder = config
            .decoder
            .init_grid_decoder(
                &(&root / "decoder"),
                &config.data_shape,
                config.num_latents,
                q.code_dim,
                head.params_per_element(),
            )
            .map_err(|e| with_section("decoder", e))?;
        let encoder_grid = encoder.grid().to_vec();
        let decoder_grid = config
            .decoder
            .code_grid(&config.data_shape, config.num_latents)?;
        if encoder_grid != decoder_grid {
            return Err(GmError::config(
                "decoder",
                format!(
                    "the encoder produces a code grid {encoder_grid:?} but the decoder expects {decoder_grid:?}; give both the same kind and number of convolutions"
                ),
            ));
        }
        let quantizer = q
            .init(&(&root / "quantizer"))
            .map_err(|e| with_section("quantizer", e))?;
        let opt = Adam::new(vs.trainable_variables(), config.optimizer.clone())?;
        Ok(VqVae {
            config: config.clone(),
            vs,
            encoder,
            decoder,
            head,
            quantizer,
            opt,
            prior: None,
            grid: encoder_grid,
            kind,
        })
    }

    pub fn config(&self) -> &VqVaeConfig {
        &self.config
    }

    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    pub fn quantizer(&self) -> &VectorQuantizer {
        &self.quantizer
    }

    /// The shape of one example's grid of codes.
    pub fn code_grid(&self) -> &[i64] {
        &self.grid
    }

    pub fn num_codes(&self) -> i64 {
        self.config.quantizer.num_codes
    }

    /// Attaches a prior over code grids, enabling `sample` and `log_likelihood`.
    pub fn set_prior(&mut self, prior: Box<dyn CodePrior>) -> Result<()> {
        if prior.grid() != self.grid || prior.num_codes() != self.num_codes() {
            return Err(GmError::config(
                "prior",
                format!(
                    "the prior models grids {:?} of {} codes, this VQ-VAE has grids {:?} of {} codes",
                    prior.grid(),
                    prior.num_codes(),
                    self.grid,
                    self.num_codes()
                ),
            ));
        }
        self.prior = Some(prior);
        Ok(())
    }

    /// Detaches the prior and returns it.
    pub fn take_prior(&mut self) -> Option<Box<dyn CodePrior>> {
        self.prior.take()
    }

    /// One step of the attached prior on the codes of data `x` (the VQ-VAE's weights stay
    /// as they are): how a prior is fitted to `encode_codes` of the training set a batch at a
    /// time.
    pub fn train_prior_step(&mut self, x: &Tensor) -> Result<StepOutput> {
        if self.prior.is_none() {
            return Err(no_prior());
        }
        let codes = self.encode_codes(x)?;
        self.prior.as_mut().ok_or_else(no_prior)?.train_step(&codes)
    }

    /// Optimizer steps taken by the VQ-VAE itself (not its prior).
    pub fn steps(&self) -> u64 {
        self.opt.steps().max(0) as u64
    }

    fn data_batch(&self, x: &Tensor, what: &str) -> Result<Tensor> {
        let size = x.size();
        let shape = &self.config.data_shape;
        let elements: i64 = shape.iter().product();
        let ok = (size.len() == shape.len() + 1 && size[1..] == shape[..])
            || (size.len() == 2 && size[1] == elements);
        if size.first() == Some(&0) {
            return Err(GmError::Domain(format!(
                "{what}: got an empty batch {size:?}; expected a non-empty batch"
            )));
        }
        if !ok {
            return Err(GmError::shape(
                what,
                format!("[batch, {elements}] or [batch] ++ {shape:?}"),
                &size,
            ));
        }
        let full: Vec<i64> = std::iter::once(size[0])
            .chain(shape.iter().copied())
            .collect();
        let x = x.f_reshape(full.as_slice())?;
        self.head.check_support(&x)?;
        Ok(x)
    }

    /// The encoder's continuous vectors `[batch] ++ grid ++ [code_dim]`.
    pub fn encode_continuous(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.data_batch(x, "VqVae.encode x")?;
        self.encoder
            .forward(&self.head.network_input(&x, self.kind)?)
    }

    /// The code grid of each example, `Int64` `[batch] ++ grid`: the data a code prior learns.
    pub fn encode_codes(&self, x: &Tensor) -> Result<Tensor> {
        gm_core::tch::no_grad(|| self.quantizer.nearest_codes(&self.encode_continuous(x)?))
    }

    /// `p(x | z_q)` for code vectors `[batch] ++ grid ++ [code_dim]`.
    pub fn decode_latents(&self, z_q: &Tensor) -> Result<Likelihood> {
        let mut expected = vec![-1];
        expected.extend_from_slice(&self.grid);
        expected.push(self.config.quantizer.code_dim);
        let size = z_q.size();
        if size.len() != expected.len() || size[1..] != expected[1..] {
            return Err(GmError::shape(
                "VqVae.decode_latents",
                format!("[batch, {:?}]", &expected[1..]),
                &size,
            ));
        }
        self.head.distribution(&self.decoder.forward(z_q)?)
    }

    /// `p(x | codes)` for code grids `[batch] ++ grid`.
    pub fn decode_codes(&self, codes: &Tensor) -> Result<Likelihood> {
        let size = codes.size();
        if size.len() != self.grid.len() + 1 || size[1..] != self.grid[..] {
            return Err(GmError::shape(
                "VqVae.decode_codes",
                format!("[batch] ++ {:?}", self.grid),
                &size,
            ));
        }
        self.decode_latents(&self.quantizer.lookup(codes)?)
    }

    /// Encoder, quantizer and decoder on a batch, with straight-through gradients.
    pub fn forward(&self, x: &Tensor) -> Result<VqForward> {
        let z_e = self.encode_continuous(x)?;
        let quantized = self.quantizer.quantize(&z_e)?;
        let likelihood = self
            .head
            .distribution(&self.decoder.forward(&quantized.quantized)?)?;
        Ok(VqForward {
            z_e,
            quantized,
            likelihood,
        })
    }

    /// The mean of `p(x | z_q(x))`, in the shape `x` was given in.
    pub fn reconstruct(&self, x: &Tensor) -> Result<Tensor> {
        gm_core::tch::no_grad(|| {
            let out = self.forward(x)?;
            Ok(out.likelihood.mean()?.f_reshape(x.size().as_slice())?)
        })
    }

    /// `ln p(x | z_q(x))` per example, `[batch]`: the reconstruction term.
    pub fn reconstruction_log_likelihood(&self, x: &Tensor) -> Result<Tensor> {
        let xb = self.data_batch(x, "VqVae.reconstruction_log_likelihood x")?;
        self.head.check_support(&xb)?;
        gm_core::tch::no_grad(|| self.forward(&xb)?.likelihood.log_prob(&xb))
    }

    /// The means of `p(x | codes)` for `n` code grids drawn from the prior.
    pub fn sample_means(&self, n: i64) -> Result<Tensor> {
        let prior = self.prior.as_ref().ok_or_else(no_prior)?;
        gm_core::tch::no_grad(|| self.decode_codes(&prior.sample(n)?)?.mean())
    }
}

fn no_prior() -> GmError {
    GmError::Unsupported(
        "sampling from a VQ-VAE needs a prior over its codes; fit one to VqVae::encode_codes (e.g. gm-autoregressive's PixelCNN) and attach it with VqVae::set_prior".into(),
    )
}

impl GenerativeModel for VqVae {
    fn family(&self) -> &'static str {
        "vq_vae"
    }

    fn train_step(&mut self, batch: &Batch) -> Result<StepOutput> {
        let x = self.data_batch(&batch.x, "VqVae.train_step x")?;
        let elements: i128 = self.config.data_shape.iter().map(|&d| d as i128).product();
        let codes = self.grid.iter().map(|&g| g as i128).product::<i128>()
            * self.config.quantizer.code_dim as i128;
        let per_example = self
            .config
            .encoder
            .activations_per_example(&self.config.data_shape)
            + self
                .config
                .decoder
                .activations_per_example(&self.config.data_shape)
            + 3 * codes
            + codes / self.config.quantizer.code_dim.max(1) as i128
                * self.config.quantizer.num_codes as i128
            + elements * self.head.params_per_element() as i128;
        gm_core::nn::check_activation_budget(x.size()[0], per_example, "VqVae.train_step")?;
        let out = self.forward(&x)?;
        let reconstruction = out.likelihood.log_prob(&x)?.f_mean(None::<Kind>)?.f_neg()?;
        let q = &out.quantized;
        let loss = reconstruction
            .f_add(&q.commitment_loss)?
            .f_add(&q.codebook_loss)?;
        let lr = self
            .config
            .lr_schedule
            .lr(self.config.optimizer.lr, self.opt.steps().max(0) as u64);
        self.opt.backward_step(&loss, lr)?;
        self.quantizer.ema_update(&out.z_e, &q.codes)?;
        let restarted = self.quantizer.restart_dead_codes(&out.z_e)?;
        Ok(StepOutput::new()
            .with("loss", &loss)
            .with("reconstruction", &reconstruction)
            .with("commitment", &q.commitment_loss)
            .with("perplexity", &q.perplexity)
            .with("restarted_codes", &restarted.f_to_kind(Kind::Float)?))
    }

    /// Draws from `p(x | codes)` with codes from the attached prior (reads `seed`); without one,
    /// an [`GmError::Unsupported`] error that says how to attach one.
    fn sample_with(&self, n: i64, options: &SampleOptions) -> Result<Tensor> {
        options.begin(n)?;
        let prior = self.prior.as_ref().ok_or_else(no_prior)?;
        gm_core::tch::no_grad(|| self.decode_codes(&prior.sample(n)?)?.sample(&[]))
    }

    fn likelihood_estimator(&self) -> Option<String> {
        self.prior.as_ref().map(|_| {
            "ELBO of the deterministic code assignment: ln p(x | codes) + ln p(codes) under the code prior".to_string()
        })
    }

    fn likelihood_kind(&self) -> LikelihoodKind {
        if self.prior.is_some() {
            LikelihoodKind::LowerBound
        } else {
            LikelihoodKind::None
        }
    }

    /// With a prior: the ELBO of the deterministic one-hot posterior,
    /// `ln p(x | z_q(x)) + ln p(codes(x))`, a lower bound on `ln p(x)`. Without: `None`.
    fn log_likelihood(&self, x: &Tensor) -> Result<Option<Tensor>> {
        let Some(prior) = self.prior.as_ref() else {
            return Ok(None);
        };
        let reconstruction = self.reconstruction_log_likelihood(x)?;
        let codes = self.encode_codes(x)?;
        let log_prior = prior.log_prob(&codes)?.f_to_kind(reconstruction.kind())?;
        Ok(Some(reconstruction.f_add(&log_prior)?))
    }

    /// The code grid `[batch] ++ grid` (`Int64`).
    fn encode(&self, x: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(self.encode_codes(x)?))
    }

    /// The mean of `p(x | codes)` for code grids `[batch] ++ grid` (integers in
    /// `0..num_codes`), as `[batch] ++ data_shape` in the units of the samples but not rounded
    /// (see [`crate::Vae`]'s `decode`): `decode(encode(x))` is [`VqVae::reconstruct`]`(x)`.
    fn decode(&self, codes: &Tensor) -> Result<Option<Tensor>> {
        let what = "VqVae.decode codes";
        let size = codes.size();
        if size.len() != self.grid.len() + 1 || size[1..] != self.grid[..] {
            let grid: Vec<String> = self.grid.iter().map(|d| d.to_string()).collect();
            return Err(GmError::shape(
                what,
                format!("[batch, {}]", grid.join(", ")),
                &size,
            ));
        }
        if size[0] == 0 {
            return Err(GmError::Domain(format!(
                "{what}: got an empty batch {size:?}; expected a non-empty batch"
            )));
        }
        check_integers(codes, self.config.quantizer.num_codes, what, "codes")?;
        let elements: i128 = self.config.data_shape.iter().map(|&d| d as i128).product();
        gm_core::nn::check_activation_budget(
            size[0],
            self.config
                .decoder
                .activations_per_example(&self.config.data_shape)
                + elements * self.head.params_per_element() as i128,
            what,
        )?;
        let codes = codes
            .f_to_kind(Kind::Int64)?
            .f_to_device(self.vs.device())?;
        gm_core::tch::no_grad(|| Ok(Some(self.decode_codes(&codes)?.mean()?)))
    }

    fn spec_fingerprint(&self) -> Option<String> {
        gm_core::spec::ModelSpec::fingerprint(&self.config).ok()
    }

    fn num_parameters(&self) -> i64 {
        gm_core::nn::count_parameters(&self.vs.trainable_variables())
    }

    /// Weights, optimizer state and, when one is attached, the code prior's state under
    /// `prior.<name>.`.
    fn state(&self) -> Vec<(String, Tensor)> {
        let mut state = var_store_state(&self.vs, "vq_vae.");
        state.extend(self.opt.state("adam."));
        if let Some(prior) = &self.prior {
            let prefix = format!("prior.{}.", prior.name());
            state.extend(
                prior
                    .state()
                    .into_iter()
                    .map(|(n, t)| (format!("{prefix}{n}"), t)),
            );
        }
        state
    }

    /// Loads the prior's state too: a checkpoint with a prior needs a prior of the same kind
    /// attached before loading, and one without a prior does not load into a model with one.
    fn load_state(&mut self, state: &mut StateDict) -> Result<()> {
        let saved_priors = state.names_with_prefix("prior.");
        match &mut self.prior {
            Some(prior) => {
                let prefix = format!("prior.{}.", prior.name());
                if saved_priors.iter().all(|n| !n.starts_with(&prefix)) {
                    return Err(GmError::Checkpoint {
                        path: "<state>".into(),
                        message: format!(
                            "this VQ-VAE has a {} code prior but the checkpoint holds {}",
                            prior.name(),
                            if saved_priors.is_empty() {
                                "none".to_string()
                            } else {
                                format!("{saved_priors:?}")
                            }
                        ),
                    });
                }
                prior.load_state(&prefix, state)?;
            }
            None if !saved_priors.is_empty() => {
                return Err(GmError::Checkpoint {
                    path: "<state>".into(),
                    message: format!(
                        "the checkpoint holds a code prior ({saved_priors:?}); attach a prior of the same kind with VqVae::set_prior before loading"
                    ),
                });
            }
            None => {}
        }
        load_var_store(&self.vs, "vq_vae.", state)?;
        self.opt.load_state("adam.", state)
    }
}
