//! [`Gan`]: a trainable GAN behind the model interface (likelihood kind "none").

use crate::config::GanConfig;
use crate::loss::GanLoss;
use crate::network::{Discriminator, Generator};
use crate::regularizer::{gradient_penalty, r1_penalty, RegularizerConfig};
use gm_core::data::transforms::{levels_to_symmetric, symmetric_to_levels};
use gm_core::data::ValueKind;
use gm_core::model::{
    check_data, check_labels, load_var_store, var_store_state, Batch, GenerativeModel,
    LikelihoodKind, SampleOptions, StepOutput, WeightChoice,
};
use gm_core::spec::DataInfo;
use gm_core::tch::{nn, Device, Kind, Tensor};
use gm_core::train::{Adam, Config, Ema, StateDict};
use gm_core::{GmError, Result};

/// A GAN: generator and discriminator, each with its own var store and Adam optimizer, and the
/// generator's weight average. One [`GenerativeModel::train_step`] updates the discriminator
/// once and, every `n_critic`-th step, the generator; its state holds both players, both
/// optimizers, the average, the spectral-norm vectors and the fixed diversity noise, so a
/// resumed run continues bit for bit.
///
/// Data are mapped to the networks' space once: discrete values `0..levels` to `[-1, 1]` (the
/// generator ends in tanh), continuous values unchanged. Samples are mapped back, and discrete
/// ones rounded to the nearest level, so they lie in the data space.
#[derive(Debug)]
pub struct Gan {
    config: GanConfig,
    data: DataInfo,
    /// Label classes of a conditional GAN, 0 otherwise.
    classes: i64,
    g_vs: nn::VarStore,
    d_vs: nn::VarStore,
    generator: Generator,
    discriminator: Discriminator,
    /// `[classes, label_embedding]` for a conditional generator.
    label_embedding: Option<Tensor>,
    g_opt: Adam,
    d_opt: Adam,
    ema: Option<Ema>,
    /// `[diversity_batch, latent_dim]`, a non-trainable variable of the generator's store.
    fixed_noise: Option<Tensor>,
}

impl Gan {
    /// A GAN for data described by `data`, with weights on `device`.
    pub fn new(config: &GanConfig, data: &DataInfo, device: Device) -> Result<Self> {
        config.validate()?;
        config.generator.check_fits(&data.event_shape)?;
        config.discriminator.check_fits(&data.event_shape)?;
        let classes = data.condition_classes(config.conditional, "a conditional GAN")?;
        gm_core::nn::check_parameter_budget(
            config.parameters(&data.event_shape, classes),
            "this GAN",
        )?;
        let g_vs = nn::VarStore::new(device);
        let d_vs = nn::VarStore::new(device);
        let bounded = matches!(data.values, ValueKind::Discrete { .. });
        let conditioning = if classes > 0 {
            config.label_embedding
        } else {
            0
        };
        let generator = config.generator.init(
            &(g_vs.root() / "net"),
            config.latent_dim,
            conditioning,
            &data.event_shape,
            bounded,
        )?;
        let label_embedding = if classes > 0 {
            Some(g_vs.root().f_var(
                "label_embedding",
                &[classes, config.label_embedding],
                nn::Init::Randn {
                    mean: 0.0,
                    stdev: 1.0,
                },
            )?)
        } else {
            None
        };
        let discriminator =
            config
                .discriminator
                .init(&(d_vs.root() / "net"), &data.event_shape, classes)?;
        let fixed_noise = if config.diversity_batch > 0 {
            let noise = g_vs
                .root()
                .f_zeros_no_train("fixed_noise", &[config.diversity_batch, config.latent_dim])?;
            gm_core::tch::no_grad(|| {
                noise
                    .shallow_clone()
                    .f_copy_(&Tensor::f_randn(noise.size(), (Kind::Float, device))?)
            })?;
            Some(noise)
        } else {
            None
        };
        let g_opt = Adam::new(
            g_vs.trainable_variables(),
            config.generator_optimizer.clone(),
        )?;
        let d_opt = Adam::new(
            d_vs.trainable_variables(),
            config.discriminator_optimizer.clone(),
        )?;
        let ema = config.ema.as_ref().map(|e| e.init(&g_vs)).transpose()?;
        Ok(Gan {
            config: config.clone(),
            data: data.clone(),
            classes,
            g_vs,
            d_vs,
            generator,
            discriminator,
            label_embedding,
            g_opt,
            d_opt,
            ema,
            fixed_noise,
        })
    }

    pub fn config(&self) -> &GanConfig {
        &self.config
    }

    pub fn generator(&self) -> &Generator {
        &self.generator
    }

    pub fn discriminator(&self) -> &Discriminator {
        &self.discriminator
    }

    /// Discriminator and generator updates so far.
    pub fn updates(&self) -> (i64, i64) {
        (self.d_opt.steps(), self.g_opt.steps())
    }

    fn device(&self) -> Device {
        self.g_vs.device()
    }

    /// Data values in the networks' space.
    fn to_network_space(&self, x: &Tensor) -> Result<Tensor> {
        match self.data.values {
            ValueKind::Discrete { levels } => levels_to_symmetric(x, levels),
            ValueKind::Continuous => Ok(x.f_to_kind(Kind::Float)?),
        }
    }

    /// Generator outputs mapped into the data space (discrete values rounded to levels).
    fn to_data_space(&self, y: &Tensor) -> Result<Tensor> {
        match self.data.values {
            ValueKind::Discrete { levels } => symmetric_to_levels(y, levels),
            ValueKind::Continuous => Ok(y.shallow_clone()),
        }
    }

    /// The generator's input for noise `z` `[b, latent]` and labels `[b]`.
    fn generator_input(&self, z: &Tensor, labels: Option<&Tensor>) -> Result<Tensor> {
        match (&self.label_embedding, labels) {
            (Some(table), Some(labels)) => Ok(Tensor::f_cat(
                &[z.shallow_clone(), table.f_index_select(0, labels)?],
                1,
            )?),
            (Some(_), None) => Err(GmError::Domain(
                "a conditional GAN needs labels to generate".into(),
            )),
            (None, _) => Ok(z.shallow_clone()),
        }
    }

    /// Generator outputs in the networks' space for noise `z` `[b, latent_dim]` and, for a
    /// conditional GAN, labels `[b]` in `0..classes` (live weights).
    pub fn generate(&self, z: &Tensor, labels: Option<&Tensor>) -> Result<Tensor> {
        let size = z.size();
        if size.len() != 2 || size[1] != self.config.latent_dim {
            return Err(GmError::shape(
                "Gan.generate z",
                format!("[batch, {}]", self.config.latent_dim),
                &size,
            ));
        }
        if let Some(l) = labels.filter(|_| self.classes > 0) {
            check_labels(l, size[0], self.classes, "Gan.generate labels")?;
        }
        self.generate_trusted(z, labels)
    }

    /// [`Gan::generate`] for noise and labels the caller made or checked itself.
    fn generate_trusted(&self, z: &Tensor, labels: Option<&Tensor>) -> Result<Tensor> {
        self.generator.forward(&self.generator_input(z, labels)?)
    }

    fn noise(&self, n: i64) -> Result<Tensor> {
        Ok(Tensor::f_randn(
            [n, self.config.latent_dim],
            (Kind::Float, self.device()),
        )?)
    }

    /// Runs `f` with the weights `choice` asks for: the average (once the generator has been
    /// updated) or the live ones.
    fn with_weights<R>(&self, choice: WeightChoice, f: impl FnOnce() -> Result<R>) -> Result<R> {
        Ema::with_choice(self.ema.as_ref(), self.g_opt.steps() > 0, choice, f)
    }

    /// Checks a conditional GAN's labels for `n` examples (integers in `0..classes`), or
    /// `None` for an unconditional one (which ignores labels).
    fn checked_labels(
        &self,
        labels: Option<&Tensor>,
        n: i64,
        what: &str,
    ) -> Result<Option<Tensor>> {
        if self.classes == 0 {
            return Ok(None);
        }
        let labels = labels.ok_or_else(|| {
            GmError::Domain(format!("{what}: a conditional GAN needs labels, got none"))
        })?;
        check_labels(labels, n, self.classes, what)?;
        Ok(Some(
            labels.f_to_kind(Kind::Int64)?.f_to_device(self.device())?,
        ))
    }

    /// The mean pairwise distance between the generator's outputs (live weights) for the fixed
    /// noise batch: a falling value is a sign of mode collapse.
    pub fn diversity(&self) -> Result<Option<Tensor>> {
        let Some(noise) = &self.fixed_noise else {
            return Ok(None);
        };
        let labels = if self.classes > 0 {
            Some(
                Tensor::f_arange(noise.size()[0], (Kind::Int64, self.device()))?
                    .f_remainder(self.classes)?,
            )
        } else {
            None
        };
        let out = gm_core::tch::no_grad(|| self.generate_trusted(noise, labels.as_ref()))?;
        Ok(Some(gm_core::metrics::mean_pairwise_distance(&out)?))
    }

    /// `steps` examples along the great circle (spherical interpolation, which keeps the
    /// noise's norm typical) from noise `z0` to `z1` (each `[latent_dim]`), with `label` for a
    /// conditional GAN; in the data space, with the weights `weights` asks for.
    pub fn interpolate(
        &self,
        z0: &Tensor,
        z1: &Tensor,
        steps: i64,
        label: Option<i64>,
        weights: WeightChoice,
    ) -> Result<Tensor> {
        let latent = self.config.latent_dim;
        for (name, z) in [("z0", z0), ("z1", z1)] {
            if z.size() != [latent] {
                return Err(GmError::shape(
                    format!("Gan.interpolate {name}"),
                    format!("[{latent}]"),
                    &z.size(),
                ));
            }
            let _ = check_data(
                &z.f_unsqueeze(0)?,
                &[latent],
                ValueKind::Continuous,
                &format!("Gan.interpolate {name}"),
            )?;
        }
        if steps < 2 {
            return Err(GmError::config(
                "steps",
                format!("an interpolation needs at least 2 points, got {steps}"),
            ));
        }
        let (g_acts, _) = self.config.activations_per_example(&self.data.event_shape);
        gm_core::nn::check_activation_budget(steps, g_acts, "Gan.interpolate")?;
        let (a, b) = (
            z0.f_to_kind(Kind::Float)?.f_to_device(self.device())?,
            z1.f_to_kind(Kind::Float)?.f_to_device(self.device())?,
        );
        let cos = a.f_dot(&b)?.f_double_value(&[])?
            / (a.f_norm()?.f_double_value(&[])? * b.f_norm()?.f_double_value(&[])?).max(1e-12);
        let omega = cos.clamp(-1.0, 1.0).acos();
        let rows = (0..steps)
            .map(|i| {
                let t = i as f64 / (steps - 1) as f64;
                let (wa, wb) = if omega.sin().abs() < 1e-6 {
                    (1.0 - t, t)
                } else {
                    (
                        ((1.0 - t) * omega).sin() / omega.sin(),
                        (t * omega).sin() / omega.sin(),
                    )
                };
                Ok(a.f_mul_scalar(wa)?.f_add(&b.f_mul_scalar(wb)?)?)
            })
            .collect::<Result<Vec<_>>>()?;
        let z = Tensor::f_stack(&rows, 0)?;
        let labels = match label {
            Some(l) => Some(Tensor::f_full([steps], l, (Kind::Int64, self.device()))?),
            None => None,
        };
        let labels = self.checked_labels(labels.as_ref(), steps, "Gan.interpolate label")?;
        let out = gm_core::tch::no_grad(|| {
            self.with_weights(weights, || self.generate_trusted(&z, labels.as_ref()))
        })?;
        self.to_data_space(&out)
    }

    /// Both players' rates at this training step. The schedule runs in training steps (one
    /// discriminator update each), the unit of the run's budget, so with `n_critic > 1` the
    /// generator's rate still follows the whole schedule.
    fn learning_rates(&self) -> (f64, f64) {
        let s = &self.config.lr_schedule;
        let step = self.d_opt.steps().max(0) as u64;
        (
            s.lr(self.config.discriminator_optimizer.lr, step),
            s.lr(self.config.generator_optimizer.lr, step),
        )
    }
}

impl GenerativeModel for Gan {
    fn family(&self) -> &'static str {
        "gan"
    }

    /// One discriminator update on the batch against fresh fakes and, every `n_critic`-th
    /// step, one generator update; reports both losses, the penalty, the discriminator's
    /// accuracy on real and fake examples (for a Wasserstein critic, the gap of its mean
    /// values instead) and the diversity of the fixed-noise batch.
    fn train_step(&mut self, batch: &Batch) -> Result<StepOutput> {
        let x = check_data(
            &batch.x,
            &self.data.event_shape,
            self.data.values,
            "Gan.train_step x",
        )?;
        let b = x.size()[0];
        // Real and fake examples through the discriminator, twice with a penalty (and its
        // double back-propagation), and fakes through the generator twice.
        let (g_acts, d_acts) = self.config.activations_per_example(&self.data.event_shape);
        gm_core::nn::check_activation_budget(b, 2 * g_acts + 6 * d_acts, "Gan.train_step")?;
        let labels = self.checked_labels(batch.labels.as_ref(), b, "Gan.train_step labels")?;
        let real = self.to_network_space(&x)?.f_to_device(self.device())?;
        let (lr_d, lr_g) = self.learning_rates();
        let loss = self.config.loss;
        let threshold = loss.decision_threshold();

        // The discriminator: one pass over real and fake together (one power-iteration step).
        let fake =
            gm_core::tch::no_grad(|| self.generate_trusted(&self.noise(b)?, labels.as_ref()))?;
        let both_labels = match &labels {
            Some(l) => Some(Tensor::f_cat(&[l.shallow_clone(), l.shallow_clone()], 0)?),
            None => None,
        };
        let logits = self.discriminator.forward_trusted(
            &Tensor::f_cat(&[real.shallow_clone(), fake.shallow_clone()], 0)?,
            both_labels.as_ref(),
            true,
        )?;
        let (real_logits, fake_logits) = (logits.f_narrow(0, 0, b)?, logits.f_narrow(0, b, b)?);
        let mut d_loss = loss.discriminator(&real_logits, &fake_logits)?;
        let critic = |p: &Tensor| {
            self.discriminator
                .forward_trusted(p, labels.as_ref(), false)
        };
        let penalty = match self.config.regularizer {
            RegularizerConfig::None => None,
            RegularizerConfig::GradientPenalty { weight } => {
                Some(gradient_penalty(&critic, &real, &fake)?.f_mul_scalar(weight)?)
            }
            RegularizerConfig::R1 { weight } => {
                Some(r1_penalty(&critic, &real)?.f_mul_scalar(weight / 2.0)?)
            }
        };
        if let Some(p) = &penalty {
            d_loss = d_loss.f_add(p)?;
        }
        let accuracy =
            |t: Tensor| -> Result<Tensor> { Ok(t.f_to_kind(Kind::Float)?.f_mean(Kind::Float)?) };
        let mut out = StepOutput::new().with("discriminator_loss", &d_loss);
        out = if loss == GanLoss::Wasserstein {
            // A critic's values have no fixed offset, so accuracies at a threshold mean nothing;
            // its estimate of the distance, E[D(real)] − E[D(fake)], is what to watch.
            out.with(
                "critic_gap",
                &real_logits
                    .f_mean(Kind::Float)?
                    .f_sub(&fake_logits.f_mean(Kind::Float)?)?,
            )
        } else {
            out.with("real_accuracy", &accuracy(real_logits.f_gt(threshold)?)?)
                .with("fake_accuracy", &accuracy(fake_logits.f_le(threshold)?)?)
        };
        if let Some(p) = &penalty {
            out = out.with("penalty", p);
        }
        self.d_opt.backward_step(&d_loss, lr_d)?;

        // The generator, every n_critic-th discriminator update. The discriminator's weights
        // take no gradient here: the generator's optimizer back-propagates to its own
        // parameters only, so the discriminator's weight gradients are not even computed.
        if self.d_opt.steps() as u64 % self.config.n_critic == 0 {
            let fake = self.generate_trusted(&self.noise(b)?, labels.as_ref())?;
            let g_loss = loss.generator(&self.discriminator.forward_trusted(
                &fake,
                labels.as_ref(),
                false,
            )?)?;
            self.g_opt.backward_step(&g_loss, lr_g)?;
            if let Some(ema) = &mut self.ema {
                ema.update(self.g_opt.steps() as u64)?;
            }
            // A Wasserstein generator loss drifts with the critic's offset, so it goes under its
            // own name, outside the divergence rule of `collapse_signs`.
            let name = if loss == GanLoss::Wasserstein {
                "generator_objective"
            } else {
                "generator_loss"
            };
            out = out.with(name, &g_loss);
        }
        if let Some(d) = self.diversity()? {
            out = out.with("diversity", &d);
        }
        Ok(out)
    }

    /// Reads `labels` (conditional GANs; drawn uniformly when absent), `temperature` (scales
    /// the noise: below 1 trades diversity for typical samples), `weights` and `seed`.
    fn sample_with(&self, n: i64, options: &SampleOptions) -> Result<Tensor> {
        options.begin(n)?;
        let (g_acts, _) = self.config.activations_per_example(&self.data.event_shape);
        gm_core::nn::check_activation_budget(n, g_acts, "Gan.sample_with")?;
        let labels = if self.classes > 0 {
            Some(options.labels_for(n, self.classes, self.device())?)
        } else {
            None
        };
        let z = self.noise(n)?.f_mul_scalar(options.temperature)?;
        let out = gm_core::tch::no_grad(|| {
            self.with_weights(options.weights, || {
                self.generate_trusted(&z, labels.as_ref())
            })
        })?;
        self.to_data_space(&out)
    }

    fn likelihood_kind(&self) -> LikelihoodKind {
        LikelihoodKind::None
    }

    /// A GAN has no likelihood: `None`, after checking the data like every model does.
    fn log_likelihood(&self, x: &Tensor) -> Result<Option<Tensor>> {
        let _ = check_data(
            x,
            &self.data.event_shape,
            self.data.values,
            "Gan.log_likelihood x",
        )?;
        Ok(None)
    }

    fn label_classes(&self) -> i64 {
        self.classes
    }

    fn spec_fingerprint(&self) -> Option<String> {
        gm_core::spec::ModelSpec::fingerprint(&self.config).ok()
    }

    fn num_parameters(&self) -> i64 {
        gm_core::nn::count_parameters(
            &self
                .g_vs
                .trainable_variables()
                .into_iter()
                .chain(self.d_vs.trainable_variables())
                .collect::<Vec<_>>(),
        )
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        let mut state = var_store_state(&self.g_vs, "generator.");
        state.extend(var_store_state(&self.d_vs, "discriminator."));
        state.extend(self.g_opt.state("generator_adam."));
        state.extend(self.d_opt.state("discriminator_adam."));
        if let Some(ema) = &self.ema {
            state.extend(ema.state("generator_ema."));
        }
        state
    }

    fn load_state(&mut self, state: &mut StateDict) -> Result<()> {
        load_var_store(&self.g_vs, "generator.", state)?;
        load_var_store(&self.d_vs, "discriminator.", state)?;
        self.g_opt.load_state("generator_adam.", state)?;
        self.d_opt.load_state("discriminator_adam.", state)?;
        if let Some(ema) = &mut self.ema {
            ema.load_state("generator_ema.", state)?;
        }
        Ok(())
    }
}
