//! Flow matching (Lipman et al. 2023) with the conditional optimal-transport path, and
//! rectified flow (Liu et al. 2022) with an optional reflow round, behind the model interface.
//!
//! Time runs from noise (t = 0, x₀ ~ N(0, I)) to data (t = 1, x₁). The conditional path is
//! x_t = t x₁ + (1 − (1 − σ_min) t) x₀ with velocity u = x₁ − (1 − σ_min) x₀; a network v(x, t)
//! regresses u, and its ODE dx/dt = v carries noise to data. σ_min = 0 is rectified flow's
//! straight path. **Reflow** retrains on pairs (z, ODE(z)) that the model itself couples, which
//! straightens the paths so few Euler steps suffice: from `reflow.start_step` a frozen copy of
//! the model (the teacher) draws each batch's pairs.
//!
//! The likelihood is the ODE's (see [`crate::probability_flow`]): exact on continuous data (up
//! to the solver's tolerance), a lower bound on dequantised discrete data.

use crate::conditioning;
use crate::data_space::DataSpace;
use crate::denoiser::{Denoiser, DenoiserConfig};
use crate::ode::{OdeConfig, OdeSolver};
use crate::probability_flow::{self, Divergence, FlowLogDensity};
use crate::training::{self, Training};
use gm_core::data::ValueKind;
use gm_core::model::{
    check_data, check_latent, load_var_store, var_store_state, Batch, GenerativeModel,
    LikelihoodKind, SampleOptions, StepOutput, WeightChoice,
};
use gm_core::spec::{Budget, DataInfo, ModelSpec, Registry};
use gm_core::tch::{nn, Device, Kind, Tensor};
use gm_core::train::config::{check_range, in_section, Config};
use gm_core::train::{AdamConfig, EmaConfig, LrSchedule, StateDict};
use gm_core::{GmError, Result};
use serde::{Deserialize, Serialize};
use std::cell::Cell;

/// How a likelihood is computed through the probability-flow ODE.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProbabilityFlowConfig {
    pub ode: OdeConfig,
    pub divergence: Divergence,
}

impl Default for ProbabilityFlowConfig {
    fn default() -> Self {
        ProbabilityFlowConfig {
            ode: OdeConfig::adaptive(1e-7, 1e-7),
            divergence: Divergence::Exact,
        }
    }
}

impl Config for ProbabilityFlowConfig {
    fn validate(&self) -> Result<()> {
        in_section("ode", self.ode.validate())?;
        in_section("divergence", self.divergence.validate())
    }
}

/// One reflow round: from `start_step` on, training pairs come from a frozen copy of the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReflowConfig {
    /// The step at which the teacher is frozen (the EMA weights where kept); scaled with the
    /// run's step budget.
    pub start_step: u64,
    /// How the teacher integrates noise into the pairs' data ends.
    pub ode: OdeConfig,
}

impl Default for ReflowConfig {
    fn default() -> Self {
        ReflowConfig {
            start_step: 1000,
            ode: OdeConfig::fixed(OdeSolver::Rk4, 25),
        }
    }
}

impl Config for ReflowConfig {
    fn validate(&self) -> Result<()> {
        if self.start_step == 0 {
            return Err(GmError::config(
                "start_step",
                "must be at least 1 (the teacher is the model after training starts)",
            ));
        }
        in_section("ode", self.ode.validate())
    }
}

/// A flow-matching model (see the module documentation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlowMatchingConfig {
    /// The noise left at t = 1 by the optimal-transport path (0: rectified flow's straight
    /// path).
    pub sigma_min: f64,
    /// The velocity network (the diffusion denoisers, one output per value).
    pub velocity: DenoiserConfig,
    /// Condition on the data set's class labels.
    pub conditional: bool,
    /// The probability of training without the label (for guidance and the unconditional
    /// likelihood).
    pub label_dropout: f64,
    /// The default classifier-free guidance scale (1: the conditional model).
    pub guidance: f64,
    /// Continuous data are divided by this (the path starts from unit noise); the likelihood
    /// accounts for it. Discrete data are dequantised into the cells of their levels on [-1, 1]
    /// (so values span [−1 − 1/(L − 1), 1 + 1/(L − 1))).
    pub data_scale: f64,
    /// The default sampler (each call may override the solver, steps and tolerance).
    pub sampler: OdeConfig,
    /// How the likelihood is computed.
    pub likelihood: ProbabilityFlowConfig,
    pub reflow: Option<ReflowConfig>,
    pub optimizer: AdamConfig,
    pub lr_schedule: LrSchedule,
    pub ema: Option<EmaConfig>,
}

impl Default for FlowMatchingConfig {
    fn default() -> Self {
        FlowMatchingConfig {
            sigma_min: 0.0,
            velocity: DenoiserConfig::default(),
            conditional: false,
            label_dropout: 0.1,
            guidance: 1.0,
            data_scale: 1.0,
            sampler: OdeConfig::adaptive(1e-4, 1e-4),
            likelihood: ProbabilityFlowConfig::default(),
            reflow: None,
            optimizer: training::default_optimizer(),
            lr_schedule: LrSchedule::Constant,
            ema: training::default_ema(),
        }
    }
}

impl Config for FlowMatchingConfig {
    fn validate(&self) -> Result<()> {
        check_range("sigma_min", self.sigma_min, 0.0, 0.5)?;
        conditioning::validate(self.conditional, self.label_dropout, self.guidance)?;
        check_range("data_scale", self.data_scale, 1e-6, 1e6)?;
        if self.data_scale <= 0.0 {
            return Err(GmError::config("data_scale", "must be positive"));
        }
        in_section("velocity", self.velocity.validate())?;
        in_section("sampler", self.sampler.validate())?;
        in_section("likelihood", self.likelihood.validate())?;
        if let Some(r) = &self.reflow {
            in_section("reflow", r.validate())?;
        }
        training::validate(&self.optimizer, &self.lr_schedule, self.ema.as_ref())
    }
}

/// The run files shipped in `configs/`, registered as `flow_matching/<stem>`.
pub const SHIPPED_CONFIGS: [(&str, &str); 4] = [
    ("toy", include_str!("../configs/flow_matching/toy.toml")),
    (
        "toy_reflow",
        include_str!("../configs/flow_matching/toy_reflow.toml"),
    ),
    (
        "mnist_unet",
        include_str!("../configs/flow_matching/mnist_unet.toml"),
    ),
    (
        "mnist_unet_conditional",
        include_str!("../configs/flow_matching/mnist_unet_conditional.toml"),
    ),
];

/// Registers the `flow_matching` family and its shipped run files.
pub fn register(registry: &mut Registry) {
    training::register_family::<FlowMatchingConfig>(registry, "flow_matching", &SHIPPED_CONFIGS);
}

impl ModelSpec for FlowMatchingConfig {
    fn family(&self) -> &'static str {
        "flow_matching"
    }

    fn scale_to_budget(&mut self, budget: &Budget) {
        training::scale(&mut self.lr_schedule, self.ema.as_mut(), budget);
        if let Some(reflow) = &mut self.reflow {
            reflow.start_step = budget.scale(reflow.start_step).max(1);
        }
    }

    fn build(&self, data: &DataInfo, device: Device) -> Result<Box<dyn GenerativeModel>> {
        Ok(Box::new(FlowMatching::new(self, data, device)?))
    }
}

/// A trainable flow-matching model (see the module documentation).
#[derive(Debug)]
pub struct FlowMatching {
    config: FlowMatchingConfig,
    data: DataInfo,
    classes: i64,
    space: DataSpace,
    training: Training,
    velocity: Denoiser,
    /// The frozen copy that draws reflow pairs (present when the config has a reflow round).
    teacher: Option<(nn::VarStore, Denoiser)>,
    evaluations: Cell<Option<usize>>,
}

impl FlowMatching {
    pub fn new(config: &FlowMatchingConfig, data: &DataInfo, device: Device) -> Result<Self> {
        config.validate()?;
        config.velocity.check_fits(&data.event_shape)?;
        probability_flow::check_divergence_fits(
            config.likelihood.divergence,
            data.elements(),
            "likelihood.divergence",
        )?;
        let classes =
            data.condition_classes(config.conditional, "a conditional flow-matching model")?;
        let label_rows = if classes > 0 { classes + 1 } else { 0 };
        let per_copy = config.velocity.parameters(&data.event_shape, 1, label_rows);
        let copies = if config.reflow.is_some() { 2 } else { 1 };
        gm_core::nn::check_parameter_budget(per_copy * copies, "this flow-matching model")?;
        let vs = nn::VarStore::new(device);
        let velocity =
            config
                .velocity
                .init(&(vs.root() / "velocity"), &data.event_shape, 1, classes)?;
        let teacher = match &config.reflow {
            Some(_) => {
                let tvs = nn::VarStore::new(device);
                let net = config.velocity.init(
                    &(tvs.root() / "velocity"),
                    &data.event_shape,
                    1,
                    classes,
                )?;
                Some((tvs, net))
            }
            None => None,
        };
        let training = Training::new(
            vs,
            &config.optimizer,
            &config.lr_schedule,
            config.ema.as_ref(),
        )?;
        Ok(FlowMatching {
            config: config.clone(),
            data: data.clone(),
            classes,
            space: DataSpace {
                values: data.values,
                elements: data.elements(),
                scale: config.data_scale,
            },
            training,
            velocity,
            teacher,
            evaluations: Cell::new(None),
        })
    }

    pub fn config(&self) -> &FlowMatchingConfig {
        &self.config
    }

    fn device(&self) -> Device {
        self.training.vs.device()
    }

    /// Data in the model's space: continuous values divided by `data_scale`; discrete values
    /// dequantised into their levels' cells around [-1, 1] (fresh uniform noise each call).
    pub fn to_model_space(&self, x: &Tensor) -> Result<Tensor> {
        self.space
            .to_model_dequantized(&x.f_to_device(self.device())?)
    }

    /// The network's velocity at `x` (model space), times `t` `[b]` in [0, 1] and labels.
    fn net_velocity(
        net: &Denoiser,
        x: &Tensor,
        t: &Tensor,
        labels: Option<&Tensor>,
    ) -> Result<Tensor> {
        let out = net.forward(x, &t.f_to_kind(Kind::Float)?.f_mul_scalar(1000.0)?, labels)?;
        Ok(out.f_reshape(x.size().as_slice())?)
    }

    /// The velocity of the live network (under whichever weights are swapped in), guided at
    /// scale `w` when labels are given.
    pub fn velocity(
        &self,
        x: &Tensor,
        t: &Tensor,
        labels: Option<&Tensor>,
        w: f64,
    ) -> Result<Tensor> {
        match labels {
            Some(l) => conditioning::guided(x, t, l, self.classes, w, |x, t, l| {
                Self::net_velocity(&self.velocity, x, t, Some(l))
            }),
            None => Self::net_velocity(&self.velocity, x, t, None),
        }
    }

    fn with_weights<R>(&self, choice: WeightChoice, f: impl FnOnce() -> Result<R>) -> Result<R> {
        self.training.with_weights(choice, f)
    }

    fn checked(&self, x: &Tensor, what: &str) -> Result<Tensor> {
        let x = check_data(x, &self.data.event_shape, self.data.values, what)?;
        gm_core::nn::check_activation_budget(
            x.size()[0],
            self.config
                .velocity
                .activations_per_example(&self.data.event_shape),
            what,
        )?;
        Ok(x)
    }

    /// Whether training has reached the reflow round.
    pub fn reflowing(&self) -> bool {
        self.config
            .reflow
            .as_ref()
            .is_some_and(|r| self.training.steps() >= r.start_step)
    }

    /// Copies the model's weights (the average where kept) into the teacher.
    fn freeze_teacher(&self) -> Result<()> {
        let Some((tvs, _)) = &self.teacher else {
            return Ok(());
        };
        self.with_weights(WeightChoice::Ema, || {
            let mine = self.training.vs.variables();
            gm_core::tch::no_grad(|| {
                for (name, mut var) in tvs.variables() {
                    let src = mine.get(&name).ok_or_else(|| {
                        GmError::Domain(format!("reflow: the teacher's {name} has no source"))
                    })?;
                    var.f_copy_(src)?;
                }
                Ok(())
            })
        })
    }

    /// Reflow pairs: noise `[b, ...]` and the teacher's ODE image of it (conditioned on the
    /// step's labels, "no label" included).
    fn reflow_pair(&self, b: i64, labels: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
        let (Some((_, net)), Some(reflow)) = (&self.teacher, &self.config.reflow) else {
            return Err(GmError::Domain("reflow without a teacher".into()));
        };
        let shape: Vec<i64> = std::iter::once(b)
            .chain(self.data.event_shape.iter().copied())
            .collect();
        let z = Tensor::f_randn(shape.as_slice(), (Kind::Float, self.device()))?;
        let v = |x: &Tensor, t: &Tensor| Self::net_velocity(net, x, t, labels);
        let (x1, _) =
            gm_core::tch::no_grad(|| probability_flow::transport(&v, &z, 0.0, 1.0, &reflow.ode))?;
        Ok((z, x1))
    }

    /// ln p(x | labels) through the ODE with its standard error and cost, in nats per example,
    /// with the given weights: exact for continuous data, a bound for dequantised discrete data.
    pub fn flow_log_density(
        &self,
        x: &Tensor,
        labels: Option<&Tensor>,
        config: &ProbabilityFlowConfig,
        weights: WeightChoice,
    ) -> Result<FlowLogDensity> {
        let x = self.checked(x, "FlowMatching.log_likelihood x")?;
        let b = x.size()[0];
        let labels = conditioning::likelihood_labels(
            labels,
            b,
            self.classes,
            self.config.label_dropout,
            self.device(),
            "FlowMatching.log_likelihood labels",
        )?;
        let probes = config.divergence.probes();
        gm_core::nn::check_activation_budget(
            b.saturating_mul(probes),
            self.config
                .velocity
                .activations_per_example(&self.data.event_shape),
            "FlowMatching.log_likelihood",
        )?;
        let y = self.to_model_space(&x)?;
        let labels = match labels {
            Some(l) => Some(l.f_repeat([probes])?),
            None => None,
        };
        let v = |x: &Tensor, t: &Tensor| self.velocity(x, t, labels.as_ref(), 1.0);
        let mut out = self.with_weights(weights, || {
            probability_flow::log_density(&v, &y, 1.0, 0.0, config.divergence, &config.ode)
        })?;
        self.evaluations.set(Some(out.evaluations));
        out.log_density = out
            .log_density
            .f_add_scalar(self.space.dequantized_log_jacobian())?;
        Ok(out)
    }

    /// The ODE settings of a sampling call: the config's, overridden by the options.
    fn sampler_config(&self, options: &SampleOptions) -> Result<OdeConfig> {
        let mut ode = self.config.sampler.clone();
        if let Some(name) = &options.solver {
            ode.solver = name.parse()?;
        }
        if let Some(steps) = options.steps {
            ode.steps = steps;
        }
        if let Some(tol) = options.tolerance {
            ode.rtol = tol;
            ode.atol = tol;
        }
        ode.validate()?;
        Ok(ode)
    }
}

impl GenerativeModel for FlowMatching {
    fn family(&self) -> &'static str {
        "flow_matching"
    }

    /// One step: t ~ U(0, 1) per example, x_t on the path between noise x₀ and data x₁ (the
    /// teacher's pair in the reflow round), and the mean squared error of v(x_t, t) against
    /// x₁ − (1 − σ_min) x₀. Reports `loss`.
    fn train_step(&mut self, batch: &Batch) -> Result<StepOutput> {
        let x = self.checked(&batch.x, "FlowMatching.train_step x")?;
        let b = x.size()[0];
        let device = self.device();
        let labels = conditioning::training_labels(
            batch,
            b,
            self.classes,
            self.config.label_dropout,
            device,
            "FlowMatching.train_step",
        )?;
        if let Some(reflow) = &self.config.reflow {
            if self.training.steps() == reflow.start_step {
                self.freeze_teacher()?;
            }
        }
        let (x0, x1) = if self.reflowing() {
            self.reflow_pair(b, labels.as_ref())?
        } else {
            let x1 = self.to_model_space(&x)?;
            (x1.f_randn_like()?, x1)
        };
        let t = Tensor::f_rand([b], (Kind::Float, device))?;
        let c = 1.0 - self.config.sigma_min;
        let te = crate::schedule::per_example(&t, &x1)?;
        let xt = x1
            .f_mul(&te)?
            .f_add(&x0.f_mul(&te.f_mul_scalar(-c)?.f_add_scalar(1.0)?)?)?;
        let target = x1.f_sub(&x0.f_mul_scalar(c)?)?;
        let v = Self::net_velocity(&self.velocity, &xt, &t, labels.as_ref())?;
        let loss = v.f_sub(&target)?.f_square()?.f_mean(Kind::Float)?;
        self.training.step(&loss)?;
        Ok(StepOutput::new().with("loss", &loss))
    }

    /// Reads `solver` (`euler`, `heun`, `rk4`, `dopri5`), `steps` (fixed-step solvers),
    /// `tolerance` (dopri5), `labels`, `guidance`, `temperature` (scales the initial noise),
    /// `weights` and `seed`.
    fn sample_with(&self, n: i64, options: &SampleOptions) -> Result<Tensor> {
        options.begin(n)?;
        let ode = self.sampler_config(options)?;
        let guidance = options.guidance.unwrap_or(self.config.guidance);
        conditioning::check_guidance(self.classes, guidance, self.config.label_dropout)?;
        let factor = if guidance != 1.0 { 2 } else { 1 };
        gm_core::nn::check_activation_budget(
            n.saturating_mul(factor),
            self.config
                .velocity
                .activations_per_example(&self.data.event_shape)
                / 2,
            "FlowMatching.sample_with",
        )?;
        let (labels, z) = conditioning::start_sampling(
            options,
            n,
            self.classes,
            &self.data.event_shape,
            self.device(),
        )?;
        let v = |x: &Tensor, t: &Tensor| self.velocity(x, t, labels.as_ref(), guidance);
        let (y, evaluations) = gm_core::tch::no_grad(|| {
            self.with_weights(options.weights, || {
                probability_flow::transport(&v, &z, 0.0, 1.0, &ode)
            })
        })?;
        // A guided evaluation runs the network on the doubled batch: count it twice, as the
        // diffusion sampler does.
        let per_call = if labels.is_some() && guidance != 1.0 {
            2
        } else {
            1
        };
        self.evaluations.set(Some(evaluations * per_call));
        self.space.to_data(&y)
    }

    fn likelihood_kind(&self) -> LikelihoodKind {
        match self.data.values {
            ValueKind::Continuous => LikelihoodKind::Exact,
            ValueKind::Discrete { .. } => LikelihoodKind::LowerBound,
        }
    }

    fn log_likelihood(&self, x: &Tensor) -> Result<Option<Tensor>> {
        self.log_likelihood_given(x, None)
    }

    fn likelihood_estimator(&self) -> Option<String> {
        Some(format!(
            "ODE change of variables, {}, {}{}",
            self.config.likelihood.ode.describe(),
            self.config.likelihood.divergence.describe(),
            match self.data.values {
                ValueKind::Discrete { .. } => ", uniform dequantisation (1 draw)",
                ValueKind::Continuous => "",
            }
        ))
    }

    /// The ODE log-density with the config's solver and divergence and the EMA weights; a
    /// conditional model trained with label dropout gives its unconditional density when no
    /// labels are passed.
    fn log_likelihood_given(&self, x: &Tensor, labels: Option<&Tensor>) -> Result<Option<Tensor>> {
        let out = self.flow_log_density(x, labels, &self.config.likelihood, WeightChoice::Ema)?;
        Ok(Some(out.log_density.f_to_kind(Kind::Float)?))
    }

    fn label_classes(&self) -> i64 {
        self.classes
    }

    fn last_evaluations(&self) -> Option<usize> {
        self.evaluations.get()
    }

    /// The noise `[batch] ++ event_shape` the ODE maps `x` to from t = 1 to t = 0
    /// (unconditional models; the config's sampler, the EMA weights), which
    /// [`GenerativeModel::decode`] maps back to about `x`. Discrete data are dequantised first
    /// (fresh uniform noise within each level's cell), so their latent is random.
    fn encode(&self, x: &Tensor) -> Result<Option<Tensor>> {
        if self.classes > 0 {
            return Ok(None);
        }
        let x = self.checked(x, "FlowMatching.encode x")?;
        let y = self.to_model_space(&x)?;
        let v = |x: &Tensor, t: &Tensor| self.velocity(x, t, None, 1.0);
        let (z, evaluations) = gm_core::tch::no_grad(|| {
            self.with_weights(WeightChoice::Ema, || {
                probability_flow::transport(&v, &y, 1.0, 0.0, &self.config.sampler)
            })
        })?;
        self.evaluations.set(Some(evaluations));
        Ok(Some(z))
    }

    /// The ODE from the noise `z` `[batch] ++ event_shape` at t = 0 to t = 1 with the solver
    /// and weights `encode` uses (unconditional models; `None` for a conditional one), mapped
    /// to the data space as `sample_with` maps samples: continuous values multiplied back by
    /// `data_scale`, discrete ones rounded to the nearest level (as floats). So
    /// `decode(encode(x))` is `x` up to the solver's error for continuous data; for discrete
    /// data the dequantisation noise (up to half a level) is rounded away, and the result is
    /// exactly `x` unless the solver's error carries a value across its cell's edge.
    fn decode(&self, z: &Tensor) -> Result<Option<Tensor>> {
        if self.classes > 0 {
            return Ok(None);
        }
        let what = "FlowMatching.decode z";
        let z = check_latent(z, &self.data.event_shape, Kind::Float, self.device(), what)?;
        gm_core::nn::check_activation_budget(
            z.size()[0],
            self.config
                .velocity
                .activations_per_example(&self.data.event_shape),
            what,
        )?;
        let v = |x: &Tensor, t: &Tensor| self.velocity(x, t, None, 1.0);
        let (y, evaluations) = gm_core::tch::no_grad(|| {
            self.with_weights(WeightChoice::Ema, || {
                probability_flow::transport(&v, &z, 0.0, 1.0, &self.config.sampler)
            })
        })?;
        self.evaluations.set(Some(evaluations));
        self.space.to_data(&y).map(Some)
    }

    fn spec_fingerprint(&self) -> Option<String> {
        ModelSpec::fingerprint(&self.config).ok()
    }

    fn num_parameters(&self) -> i64 {
        self.training.parameters()
    }

    /// The training state, and the reflow teacher (`teacher.`) where there is one.
    fn state(&self) -> Vec<(String, Tensor)> {
        let mut state = self.training.state();
        if let Some((tvs, _)) = &self.teacher {
            state.extend(var_store_state(tvs, "teacher."));
        }
        state
    }

    fn load_state(&mut self, state: &mut StateDict) -> Result<()> {
        self.training.load_state(state)?;
        if let Some((tvs, _)) = &self.teacher {
            load_var_store(tvs, "teacher.", state)?;
        }
        Ok(())
    }
}
