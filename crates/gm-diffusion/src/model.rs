//! [`Diffusion`]: a trainable diffusion model behind the model interface. Its likelihood is
//! the variational bound (kind "lower bound") or, as the config chooses, its probability-flow
//! ODE's (kind "exact" on continuous data, "lower bound" on dequantised discrete data).

use crate::conditioning;
use crate::config::{DiffusionConfig, DiffusionLikelihood};
use crate::data_space::DataSpace;
use crate::denoiser::Denoiser;
use crate::ode::{OdeConfig, OdeSolver};
use crate::probability_flow::{self, Divergence, FlowLogDensity};
use crate::process::{Decoder, DenoiseFn, DenoiserOutput, Process, Solver, Variance};
use crate::schedule::Schedule;
use crate::training::Training;
use gm_core::data::ValueKind;
use gm_core::model::{
    check_data, check_latent, Batch, GenerativeModel, LikelihoodKind, SampleOptions, StepOutput,
    WeightChoice,
};
use gm_core::spec::DataInfo;
use gm_core::tch::{nn, Device, Kind, Tensor};
use gm_core::train::{Config, StateDict};
use gm_core::{GmError, Result};

/// Chains of at least this many denoiser calls show a progress bar (on a terminal).
const PROGRESS_FROM_STEPS: usize = 100;

/// Fixed-point refinements of each step of the DDIM encoding (see [`Process::ddim_encode`]).
const ENCODE_REFINEMENTS: usize = 2;

/// A diffusion model: a denoiser with its optimizer and weight average, and the process it
/// reverses. One [`GenerativeModel::train_step`] draws a step per example, noises the batch
/// in closed form and regresses the denoiser's prediction on its target (plus λ times the
/// bound's term for learned variances).
///
/// Discrete data `0..levels` are mapped to [-1, 1] (and samples rounded back to levels);
/// continuous data are divided by `data_scale`. The likelihood is by default the variational
/// bound with a discretised Gaussian last step for discrete data (so it is a bound on the
/// probability of the discrete values, comparable with every other family's), in nats; the
/// config may choose the probability-flow ODE's instead.
#[derive(Debug)]
pub struct Diffusion {
    config: DiffusionConfig,
    data: DataInfo,
    /// Label classes of a conditional model, 0 otherwise.
    classes: i64,
    space: DataSpace,
    training: Training,
    denoiser: Denoiser,
    process: Process,
    evaluations: std::cell::Cell<Option<usize>>,
}

impl Diffusion {
    /// A model for data described by `data`, with weights on `device`.
    pub fn new(config: &DiffusionConfig, data: &DataInfo, device: Device) -> Result<Self> {
        config.validate()?;
        config.denoiser.check_fits(&data.event_shape)?;
        if let DiffusionLikelihood::ProbabilityFlow { divergence, .. } = &config.likelihood {
            probability_flow::check_divergence_fits(
                *divergence,
                data.elements(),
                "likelihood.divergence",
            )?;
        }
        let classes =
            data.condition_classes(config.conditional, "a conditional diffusion model")?;
        let label_rows = if classes > 0 { classes + 1 } else { 0 };
        gm_core::nn::check_parameter_budget(
            config
                .denoiser
                .parameters(&data.event_shape, config.outputs_per_value(), label_rows),
            "this diffusion model",
        )?;
        let vs = nn::VarStore::new(device);
        let denoiser = config.denoiser.init(
            &(vs.root() / "denoiser"),
            &data.event_shape,
            config.outputs_per_value(),
            classes,
        )?;
        let schedule = Schedule::new(&config.schedule, config.timesteps, device)?;
        let clip = match data.values {
            ValueKind::Discrete { .. } => Some(1.0),
            ValueKind::Continuous => None,
        };
        let process = Process {
            schedule,
            prediction: config.prediction,
            variance: config.variance,
            clip,
        };
        let training = Training::new(
            vs,
            &config.optimizer,
            &config.lr_schedule,
            config.ema.as_ref(),
        )?;
        Ok(Diffusion {
            config: config.clone(),
            data: data.clone(),
            classes,
            space: DataSpace {
                values: data.values,
                elements: data.elements(),
                scale: config.data_scale,
            },
            training,
            denoiser,
            process,
            evaluations: std::cell::Cell::new(None),
        })
    }

    pub fn config(&self) -> &DiffusionConfig {
        &self.config
    }

    pub fn process(&self) -> &Process {
        &self.process
    }

    pub fn denoiser(&self) -> &Denoiser {
        &self.denoiser
    }

    fn device(&self) -> Device {
        self.training.vs.device()
    }

    fn decoder(&self) -> Decoder {
        match self.data.values {
            ValueKind::Discrete { levels } => Decoder::Discrete {
                levels: levels as i64,
            },
            ValueKind::Continuous => Decoder::Continuous,
        }
    }

    /// Data values in the model's space (discrete levels on [-1, 1], continuous values divided
    /// by `data_scale`).
    pub fn to_model_space(&self, x: &Tensor) -> Result<Tensor> {
        self.space.to_model(&x.f_to_device(self.device())?)
    }

    /// Model-space values in the data space (discrete values rounded to levels).
    pub fn to_data_space(&self, y: &Tensor) -> Result<Tensor> {
        self.space.to_data(y)
    }

    /// The log-density change of the map into the model's space, per example: continuous data
    /// divided by `data_scale` gain −D ln(scale); discrete probabilities do not change.
    fn log_jacobian(&self) -> f64 {
        self.space.log_jacobian()
    }

    /// The denoiser at `(xt, t)` with `labels` (`[b]`, `classes` meaning none) split into its
    /// prediction and variance outputs (live weights; inputs trusted, in the model's space).
    pub fn denoise(
        &self,
        xt: &Tensor,
        t: &Tensor,
        labels: Option<&Tensor>,
    ) -> Result<DenoiserOutput> {
        let b = xt.size()[0];
        let scale = 1000.0 / self.config.timesteps as f64;
        let t_scaled = t.f_to_kind(Kind::Float)?.f_mul_scalar(scale)?;
        let out = self.denoiser.forward(xt, &t_scaled, labels)?;
        let k = self.config.outputs_per_value();
        let parts = out.f_reshape([b, k, -1])?;
        let shape = xt.size();
        let prediction = parts.f_select(1, 0)?.f_reshape(shape.as_slice())?;
        let variance = if k == 2 {
            Some(parts.f_select(1, 1)?.f_reshape(shape.as_slice())?)
        } else {
            None
        };
        Ok(DenoiserOutput {
            prediction,
            variance,
        })
    }

    /// The denoiser with classifier-free guidance at scale `w`: the prediction
    /// `u + w (c − u)` from the unconditional (`u`, "no label") and conditional (`c`) outputs,
    /// in one batched call; the variance output is the conditional one. A prediction that is an
    /// affine function of ε with x_t's coefficient fixed makes this the same mix of ε's.
    pub fn guided(
        &self,
        xt: &Tensor,
        t: &Tensor,
        labels: &Tensor,
        w: f64,
    ) -> Result<DenoiserOutput> {
        if w == 1.0 {
            return self.denoise(xt, t, Some(labels));
        }
        let variance = std::cell::RefCell::new(None);
        let prediction = conditioning::guided(xt, t, labels, self.classes, w, |x, t, l| {
            let out = self.denoise(x, t, Some(l))?;
            let b = x.size()[0] / 2;
            *variance.borrow_mut() = out.variance.map(|v| v.f_narrow(0, 0, b)).transpose()?;
            Ok(out.prediction)
        })?;
        Ok(DenoiserOutput {
            prediction,
            variance: variance.into_inner(),
        })
    }

    /// Runs `f` with the weights `choice` asks for: the average (once trained) or the live ones.
    fn with_weights<R>(&self, choice: WeightChoice, f: impl FnOnce() -> Result<R>) -> Result<R> {
        self.training.with_weights(choice, f)
    }

    /// The labels the likelihood conditions on (see [`conditioning::likelihood_labels`]).
    fn likelihood_labels(
        &self,
        labels: Option<&Tensor>,
        b: i64,
        what: &str,
    ) -> Result<Option<Tensor>> {
        conditioning::likelihood_labels(
            labels,
            b,
            self.classes,
            self.config.label_dropout,
            self.device(),
            what,
        )
    }

    fn checked(&self, x: &Tensor, what: &str) -> Result<Tensor> {
        check_data(x, &self.data.event_shape, self.data.values, what)
    }

    /// Data and labels checked for the bound (`what` names the caller) and the data in the
    /// model's space.
    fn bound_inputs(
        &self,
        x: &Tensor,
        labels: Option<&Tensor>,
        what: &str,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let x = self.checked(x, &format!("{what} x"))?;
        let b = x.size()[0];
        gm_core::nn::check_activation_budget(
            b,
            self.config
                .denoiser
                .activations_per_example(&self.data.event_shape),
            what,
        )?;
        let labels = self.likelihood_labels(labels, b, &format!("{what} labels"))?;
        Ok((self.to_model_space(&x)?, labels))
    }

    /// The estimate of the NLL bound per example in nats `[b]` with `strata` steps each (see
    /// [`Process::nll_bound`]), for data `x` and optional labels, with the chosen weights.
    pub fn nll_bound(
        &self,
        x: &Tensor,
        labels: Option<&Tensor>,
        strata: i64,
        weights: WeightChoice,
    ) -> Result<Tensor> {
        let (y, labels) = self.bound_inputs(x, labels, "Diffusion.nll_bound")?;
        let denoise = |xt: &Tensor, t: &Tensor| self.denoise(xt, t, labels.as_ref());
        let nll = gm_core::tch::no_grad(|| {
            self.with_weights(weights, || {
                self.process.nll_bound(&y, &denoise, self.decoder(), strata)
            })
        })?;
        Ok(nll.f_sub_scalar(self.log_jacobian())?)
    }

    /// Every term of the bound per example `[b, T + 1]` in nats (column 0 the prior, column t
    /// step t's term; for continuous data the scale's log-Jacobian is in column 0).
    pub fn bound_terms(&self, x: &Tensor, labels: Option<&Tensor>) -> Result<Tensor> {
        let (y, labels) = self.bound_inputs(x, labels, "Diffusion.bound_terms")?;
        let denoise = |xt: &Tensor, t: &Tensor| self.denoise(xt, t, labels.as_ref());
        let terms = gm_core::tch::no_grad(|| {
            self.with_weights(WeightChoice::Ema, || {
                self.process.all_terms(&y, &denoise, self.decoder())
            })
        })?;
        let shift = Tensor::f_zeros([self.config.timesteps + 1], (Kind::Double, self.device()))?;
        let _ = shift.f_get(0)?.f_fill_(-self.log_jacobian())?;
        Ok(terms.f_add(&shift)?)
    }

    /// The velocity of the probability-flow ODE at `y` (model space) and continuous times `tau`
    /// `[b]` in (0, 1]: dy/dτ = −½ β(τ) (y − ε̂(y, τT) / σ(τ)), with σ(τ)² = 1 − ᾱ(τ) of the
    /// schedule's continuous-time limit and ε̂ the denoiser's noise prediction.
    pub fn probability_flow_velocity(
        &self,
        y: &Tensor,
        tau: &Tensor,
        labels: Option<&Tensor>,
        guidance: f64,
    ) -> Result<Tensor> {
        let t_max = self.config.timesteps;
        let steps = tau.f_mul_scalar(t_max as f64)?;
        let out = match labels {
            Some(l) => self.guided(y, &steps, l, guidance)?,
            None => self.denoise(y, &steps, None)?,
        };
        let alpha_bar = self
            .config
            .schedule
            .continuous_log_alpha_bar(tau, t_max)?
            .f_exp()?;
        let (_, eps) = self.config.prediction.to_x0_eps(
            &out.prediction,
            y,
            &alpha_bar.f_to_kind(Kind::Float)?,
        )?;
        probability_flow::variance_preserving_velocity(y, &eps, tau, &self.config.schedule, t_max)
    }

    /// ln p(x | labels) per example in nats through the probability-flow ODE (see
    /// [`crate::probability_flow`]), with its standard error (Hutchinson) and cost: exact for
    /// continuous data up to the solver's tolerance, a bound on dequantised discrete data.
    pub fn probability_flow_log_density(
        &self,
        x: &Tensor,
        labels: Option<&Tensor>,
        ode: &OdeConfig,
        divergence: Divergence,
        weights: WeightChoice,
    ) -> Result<FlowLogDensity> {
        let what = "Diffusion.probability_flow_log_density";
        let x = self.checked(x, &format!("{what} x"))?;
        let b = x.size()[0];
        let probes = divergence.probes();
        gm_core::nn::check_activation_budget(
            b.saturating_mul(probes),
            self.config
                .denoiser
                .activations_per_example(&self.data.event_shape),
            what,
        )?;
        let labels = self
            .likelihood_labels(labels, b, &format!("{what} labels"))?
            .map(|l| l.f_repeat([probes]))
            .transpose()?;
        let y = self
            .space
            .to_model_dequantized(&x.f_to_device(self.device())?)?;
        let log_jacobian = self.space.dequantized_log_jacobian();
        let (start, end) = self.config.schedule.continuous_range(self.config.timesteps);
        let v =
            |y: &Tensor, tau: &Tensor| self.probability_flow_velocity(y, tau, labels.as_ref(), 1.0);
        let mut out = self.with_weights(weights, || {
            probability_flow::log_density(&v, &y, start, end, divergence, ode)
        })?;
        self.evaluations.set(Some(out.evaluations));
        out.log_density = out.log_density.f_add_scalar(log_jacobian)?;
        Ok(out)
    }

    /// The DDIM steps of [`GenerativeModel::encode`] and [`GenerativeModel::decode`]: the
    /// config's sampler steps, or T.
    fn latent_steps(&self) -> usize {
        self.config
            .sampler
            .steps
            .unwrap_or(self.config.timesteps as usize)
    }

    /// The sampler, steps and η `options` ask for, or the config's defaults.
    fn sampler_choice(&self, options: &SampleOptions) -> Result<(Solver, usize, f64)> {
        let solver = match &options.solver {
            Some(name) => name.parse()?,
            None => self.config.sampler.solver,
        };
        let steps = options
            .steps
            .or(self.config.sampler.steps)
            .unwrap_or(self.config.timesteps as usize);
        let eta = options.eta.unwrap_or(self.config.sampler.eta);
        Ok((solver, steps, eta))
    }
}

fn progress_bar(steps: usize) -> Option<indicatif::ProgressBar> {
    (steps >= PROGRESS_FROM_STEPS).then(|| {
        let bar = indicatif::ProgressBar::new(steps as u64);
        if let Ok(style) =
            indicatif::ProgressStyle::with_template("sampling {bar:30} {pos}/{len} steps {elapsed}")
        {
            bar.set_style(style);
        }
        bar
    })
}

impl GenerativeModel for Diffusion {
    fn family(&self) -> &'static str {
        "diffusion"
    }

    /// One step: per-example steps t ~ U{1..T}, x_t from q(x_t | x_0), the simple loss (mean
    /// squared error of the prediction against its target) plus, for learned variances, λ times
    /// the bound's term per value with the mean's gradient stopped. Conditional models drop each
    /// label with probability `label_dropout`. Reports `loss`, `mse` and (learned variances)
    /// `vlb_term`.
    fn train_step(&mut self, batch: &Batch) -> Result<StepOutput> {
        let x = self.checked(&batch.x, "Diffusion.train_step x")?;
        let b = x.size()[0];
        gm_core::nn::check_activation_budget(
            b,
            self.config
                .denoiser
                .activations_per_example(&self.data.event_shape),
            "Diffusion.train_step",
        )?;
        let device = self.device();
        let labels = conditioning::training_labels(
            batch,
            b,
            self.classes,
            self.config.label_dropout,
            device,
            "Diffusion.train_step",
        )?;
        let y = self.to_model_space(&x)?;
        let t = Tensor::f_randint_low(1, self.config.timesteps + 1, [b], (Kind::Int64, device))?;
        let noise = y.f_randn_like()?;
        let xt = self.process.schedule.q_sample(&y, &t, &noise)?;
        let out = self.denoise(&xt, &t, labels.as_ref())?;
        let ab = self.process.schedule.alpha_bar(&t)?;
        let target = self.config.prediction.target(&y, &noise, &ab)?;
        let mse = out
            .prediction
            .f_sub(&target)?
            .f_square()?
            .f_mean(Kind::Float)?;
        let mut vlb_term = None;
        let loss = if self.config.variance == Variance::Learned {
            // The bound trains the variance only: the mean's prediction is detached.
            let detached = DenoiserOutput {
                prediction: out.prediction.f_detach()?,
                variance: out.variance.as_ref().map(|v| v.shallow_clone()),
            };
            let term = self.process.term(&y, &xt, &t, &detached, self.decoder())?;
            let per_value = term
                .f_mean(Kind::Double)?
                .f_div_scalar(self.data.elements() as f64)?
                .f_to_kind(Kind::Float)?;
            // λ weighs the whole bound, the sum of T terms, of which T times one uniformly
            // drawn term is the unbiased estimate.
            let weight = self.config.hybrid_weight * self.config.timesteps as f64;
            let loss = mse.f_add(&per_value.f_mul_scalar(weight)?)?;
            vlb_term = Some(per_value);
            loss
        } else {
            mse.shallow_clone()
        };
        self.training.step(&loss)?;
        let mut out = StepOutput::new().with("loss", &loss).with("mse", &mse);
        if let Some(v) = &vlb_term {
            out = out.with("vlb_term", v);
        }
        Ok(out)
    }

    /// Reads `labels` (conditional models; drawn uniformly when absent), `guidance` (the
    /// classifier-free guidance scale; the config's by default), `solver` (`ddpm`, `ddim`,
    /// `dpm_solver_2m`, or an ODE solver `euler`, `heun`, `rk4`, `dopri5` on the
    /// probability-flow ODE), `steps` (denoiser calls; an ODE solver's steps), `tolerance`
    /// (`dopri5`), `eta` (DDIM), `temperature` (scales the initial and injected noise),
    /// `weights` and `seed`.
    fn sample_with(&self, n: i64, options: &SampleOptions) -> Result<Tensor> {
        options.begin(n)?;
        let ode_solver = options
            .solver
            .as_deref()
            .and_then(|s| s.parse::<OdeSolver>().ok());
        let (solver, steps, eta) = match ode_solver {
            // The ODE solvers integrate the probability-flow ODE instead (steps: fixed-step
            // solvers' steps; tolerance: Dormand–Prince's, 1e-4 by default).
            Some(_) => (
                Solver::Ddim,
                options.steps.or(self.config.sampler.steps).unwrap_or(50),
                0.0,
            ),
            None => self.sampler_choice(options).map_err(|e| match &options.solver {
                Some(name) => GmError::config(
                    "solver",
                    format!(
                        "unknown solver {name:?}; expected ddpm, ddim or dpm_solver_2m, or an ODE solver on the probability-flow ODE: {}",
                        OdeSolver::NAMES.join(", ")
                    ),
                ),
                None => e,
            })?,
        };
        let guidance = options.guidance.unwrap_or(self.config.guidance);
        conditioning::check_guidance(self.classes, guidance, self.config.label_dropout)?;
        let per_example = self
            .config
            .denoiser
            .activations_per_example(&self.data.event_shape);
        let factor = if guidance != 1.0 { 2 } else { 1 };
        gm_core::nn::check_activation_budget(
            n.saturating_mul(factor),
            per_example / 2,
            "Diffusion.sample_with",
        )?;
        let (labels, noise) = conditioning::start_sampling(
            options,
            n,
            self.classes,
            &self.data.event_shape,
            self.device(),
        )?;
        let per_call = if guidance != 1.0 && self.classes > 0 {
            2
        } else {
            1
        };
        if let Some(ode_solver) = ode_solver {
            let tolerance = options.tolerance.unwrap_or(1e-4);
            let ode = OdeConfig {
                solver: ode_solver,
                steps,
                rtol: tolerance,
                atol: tolerance,
                ..OdeConfig::default()
            };
            let (start, end) = self.config.schedule.continuous_range(self.config.timesteps);
            let v = |y: &Tensor, tau: &Tensor| {
                self.probability_flow_velocity(y, tau, labels.as_ref(), guidance)
            };
            let (y, evaluations) = gm_core::tch::no_grad(|| {
                self.with_weights(options.weights, || {
                    probability_flow::transport(&v, &noise, end, start, &ode)
                })
            })?;
            self.evaluations.set(Some(evaluations * per_call));
            return self.to_data_space(&y);
        }
        let denoise = |xt: &Tensor, t: &Tensor| match &labels {
            Some(l) => self.guided(xt, t, l, guidance),
            None => self.denoise(xt, t, None),
        };
        let calls = self.process.schedule.sampling_steps(steps).len() - 1;
        let bar = progress_bar(calls);
        let report = |done: usize, _total: usize| {
            if let Some(b) = &bar {
                b.set_position(done as u64);
            }
        };
        let y = gm_core::tch::no_grad(|| {
            self.with_weights(options.weights, || {
                self.process.sample(
                    &noise,
                    &denoise as &DenoiseFn,
                    solver,
                    steps,
                    eta,
                    options.temperature,
                    Some(&report),
                )
            })
        })?;
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        let per_call = if guidance != 1.0 && self.classes > 0 {
            2
        } else {
            1
        };
        self.evaluations.set(Some(calls * per_call));
        self.to_data_space(&y)
    }

    fn likelihood_kind(&self) -> LikelihoodKind {
        match (&self.config.likelihood, self.data.values) {
            (DiffusionLikelihood::ProbabilityFlow { .. }, ValueKind::Continuous) => {
                LikelihoodKind::Exact
            }
            _ => LikelihoodKind::LowerBound,
        }
    }

    fn likelihood_estimator(&self) -> Option<String> {
        let dequantised = match self.data.values {
            ValueKind::Discrete { .. } => ", uniform dequantisation (1 draw)",
            ValueKind::Continuous => "",
        };
        Some(match &self.config.likelihood {
            DiffusionLikelihood::Bound => format!(
                "variational bound over T = {} steps, {} stratified random steps per example",
                self.config.timesteps, self.config.likelihood_strata
            ),
            DiffusionLikelihood::ProbabilityFlow { ode, divergence } => format!(
                "probability-flow ODE, {}, {}{dequantised}",
                ode.describe(),
                divergence.describe()
            ),
        })
    }

    /// The config's likelihood with the EMA weights: the variational bound (an unbiased
    /// stratified estimate, `likelihood_strata` steps per example) or the probability-flow
    /// ODE's; a conditional model trained with label dropout gives its unconditional one.
    fn log_likelihood(&self, x: &Tensor) -> Result<Option<Tensor>> {
        self.log_likelihood_given(x, None)
    }

    fn log_likelihood_given(&self, x: &Tensor, labels: Option<&Tensor>) -> Result<Option<Tensor>> {
        let log_p = match &self.config.likelihood {
            DiffusionLikelihood::Bound => {
                self.evaluations.set(Some(self.config.strata() as usize));
                self.nll_bound(x, labels, self.config.strata(), WeightChoice::Ema)?
                    .f_neg()?
            }
            DiffusionLikelihood::ProbabilityFlow { ode, divergence } => {
                self.probability_flow_log_density(x, labels, ode, *divergence, WeightChoice::Ema)?
                    .log_density
            }
        };
        Ok(Some(log_p.f_to_kind(Kind::Float)?))
    }

    fn last_evaluations(&self) -> Option<usize> {
        self.evaluations.get()
    }

    fn label_classes(&self) -> i64 {
        self.classes
    }

    /// The deterministic DDIM latent x_T `[batch] ++ event_shape` (unconditional models; the
    /// config's sampler steps, the EMA weights), which [`GenerativeModel::decode`] maps back
    /// to about `x`.
    fn encode(&self, x: &Tensor) -> Result<Option<Tensor>> {
        if self.classes > 0 {
            return Ok(None);
        }
        let x = self.checked(x, "Diffusion.encode x")?;
        gm_core::nn::check_activation_budget(
            x.size()[0],
            self.config
                .denoiser
                .activations_per_example(&self.data.event_shape)
                / 2,
            "Diffusion.encode",
        )?;
        let y = self.to_model_space(&x)?;
        let steps = self.latent_steps();
        let denoise = |xt: &Tensor, t: &Tensor| self.denoise(xt, t, None);
        let z = gm_core::tch::no_grad(|| {
            self.with_weights(WeightChoice::Ema, || {
                self.process
                    .ddim_encode(&y, &denoise, steps, ENCODE_REFINEMENTS)
            })
        })?;
        let calls = self.process.schedule.sampling_steps(steps).len() - 1;
        self.evaluations.set(Some(calls * (ENCODE_REFINEMENTS + 1)));
        Ok(Some(z))
    }

    /// Deterministic DDIM (η = 0) from the latent x_T `[batch] ++ event_shape` with the steps
    /// and weights `encode` uses (unconditional models; `None` for a conditional one), mapped
    /// to the data space as `sample_with` maps samples: continuous values multiplied back by
    /// `data_scale`, discrete ones rounded to the nearest level (as floats). The encoding
    /// solves each DDIM step by fixed-point iteration, so `decode(encode(x))` returns `x` up
    /// to that iteration's residual (and exactly, for discrete data, while the residual stays
    /// under half a level).
    fn decode(&self, z: &Tensor) -> Result<Option<Tensor>> {
        if self.classes > 0 {
            return Ok(None);
        }
        let what = "Diffusion.decode z";
        let z = check_latent(z, &self.data.event_shape, Kind::Float, self.device(), what)?;
        gm_core::nn::check_activation_budget(
            z.size()[0],
            self.config
                .denoiser
                .activations_per_example(&self.data.event_shape)
                / 2,
            what,
        )?;
        let steps = self.latent_steps();
        let denoise = |xt: &Tensor, t: &Tensor| self.denoise(xt, t, None);
        let y = gm_core::tch::no_grad(|| {
            self.with_weights(WeightChoice::Ema, || {
                self.process.sample(
                    &z,
                    &denoise as &DenoiseFn,
                    Solver::Ddim,
                    steps,
                    0.0,
                    1.0,
                    None,
                )
            })
        })?;
        self.evaluations
            .set(Some(self.process.schedule.sampling_steps(steps).len() - 1));
        self.to_data_space(&y).map(Some)
    }

    fn spec_fingerprint(&self) -> Option<String> {
        gm_core::spec::ModelSpec::fingerprint(&self.config).ok()
    }

    fn num_parameters(&self) -> i64 {
        self.training.parameters()
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        self.training.state()
    }

    fn load_state(&mut self, state: &mut StateDict) -> Result<()> {
        self.training.load_state(state)
    }
}
