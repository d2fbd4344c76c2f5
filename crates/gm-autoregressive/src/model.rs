//! [`Autoregressive`]: any [`Network`] with an [`Output`] behind the model interface. The
//! likelihood is exact, `ln p(x) = Σ_d ln p(x_d | x_<d)` in one network pass (an
//! order-agnostic MADE averages its orders' probabilities); training minimises it in nats per
//! value; sampling draws one value at a time in the network's order.

use crate::beam::{BeamSearch, Hypothesis};
use crate::made::ensemble;
use crate::network::{FusedNll, Network, NetworkConfig, NetworkShape};
use crate::output::{Output, OutputConfig};
use crate::scheduled::ScheduledSampling;
use gm_core::model::{
    check_data, check_labels, Batch, GenerativeModel, LikelihoodKind, SampleOptions, StepOutput,
    WeightChoice,
};
use gm_core::spec::{Budget, DataInfo, ModelSpec, Registry};
use gm_core::tch::{nn, Device, Kind, Tensor};
use gm_core::train::config::{in_section, Config};
use gm_core::train::training::{self, Training};
use gm_core::train::{AdamConfig, EmaConfig, LrSchedule, StateDict};
use gm_core::{GmError, Result};
use serde::{Deserialize, Serialize};
use std::cell::Cell;

/// An autoregressive model (the `[model]` table of a run file of family `autoregressive`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AutoregressiveConfig {
    pub network: NetworkConfig,
    pub output: OutputConfig,
    /// Condition on the data set's class labels (Gated PixelCNN).
    pub conditional: bool,
    pub optimizer: AdamConfig,
    pub lr_schedule: LrSchedule,
    pub ema: Option<EmaConfig>,
    /// Feed the model's own draws as inputs during training, on a schedule.
    pub scheduled_sampling: Option<ScheduledSampling>,
}

impl Default for AutoregressiveConfig {
    fn default() -> Self {
        AutoregressiveConfig {
            network: NetworkConfig::default(),
            output: OutputConfig::Auto,
            conditional: false,
            optimizer: training::default_optimizer(),
            lr_schedule: LrSchedule::Constant,
            ema: None,
            scheduled_sampling: None,
        }
    }
}

impl Config for AutoregressiveConfig {
    fn validate(&self) -> Result<()> {
        self.network.validate()?;
        if let Some(s) = &self.scheduled_sampling {
            in_section("scheduled_sampling", s.validate())?;
        }
        training::validate(&self.optimizer, &self.lr_schedule, self.ema.as_ref())
    }
}

/// The run files shipped in `configs/`, registered as `autoregressive/<stem>`.
pub const SHIPPED_CONFIGS: [(&str, &str); 12] = [
    ("nade_mnist", include_str!("../configs/nade_mnist.toml")),
    ("made_mnist", include_str!("../configs/made_mnist.toml")),
    ("made_toy", include_str!("../configs/made_toy.toml")),
    (
        "pixelcnn_mnist",
        include_str!("../configs/pixelcnn_mnist.toml"),
    ),
    (
        "gated_pixelcnn_mnist",
        include_str!("../configs/gated_pixelcnn_mnist.toml"),
    ),
    (
        "pixelrnn_mnist",
        include_str!("../configs/pixelrnn_mnist.toml"),
    ),
    (
        "pixelrnn_diagonal_mnist",
        include_str!("../configs/pixelrnn_diagonal_mnist.toml"),
    ),
    (
        "transformer_mnist",
        include_str!("../configs/transformer_mnist.toml"),
    ),
    (
        "transformer_text",
        include_str!("../configs/transformer_text.toml"),
    ),
    ("lstm_text", include_str!("../configs/lstm_text.toml")),
    (
        "lstm_text_scheduled",
        include_str!("../configs/lstm_text_scheduled.toml"),
    ),
    (
        "wavenet_oscillator",
        include_str!("../configs/wavenet_oscillator.toml"),
    ),
];

/// Registers the `autoregressive` family and its shipped run files.
pub fn register(registry: &mut Registry) {
    training::register_family::<AutoregressiveConfig>(registry, "autoregressive", &SHIPPED_CONFIGS);
}

impl ModelSpec for AutoregressiveConfig {
    fn family(&self) -> &'static str {
        "autoregressive"
    }

    fn scale_to_budget(&mut self, budget: &Budget) {
        training::scale(&mut self.lr_schedule, self.ema.as_mut(), budget);
        if let Some(s) = &mut self.scheduled_sampling {
            *s = s.scaled(budget);
        }
    }

    fn build(&self, data: &DataInfo, device: Device) -> Result<Box<dyn GenerativeModel>> {
        Ok(Box::new(Autoregressive::new(self, data, device)?))
    }
}

/// A trainable autoregressive model.
#[derive(Debug)]
pub struct Autoregressive {
    config: AutoregressiveConfig,
    data: DataInfo,
    output: Output,
    classes: i64,
    network: Box<dyn Network>,
    training: Training,
    /// Sequential network steps of the last sampling call (one per value), or network passes of
    /// the last likelihood that needed more than one.
    evaluations: Cell<Option<usize>>,
}

impl Autoregressive {
    pub fn new(config: &AutoregressiveConfig, data: &DataInfo, device: Device) -> Result<Self> {
        config.validate()?;
        let classes =
            data.condition_classes(config.conditional, "a conditional autoregressive model")?;
        let output = config.output.build(data.values)?;
        let shape = NetworkShape {
            data,
            params_per_value: output.params_per_value(),
            classes,
        };
        gm_core::nn::check_parameter_budget(
            config.network.parameters(&shape),
            "this autoregressive model",
        )?;
        let vs = nn::VarStore::new(device);
        let network = config.network.init(&(vs.root() / "network"), &shape)?;
        let training = Training::new(
            vs,
            &config.optimizer,
            &config.lr_schedule,
            config.ema.as_ref(),
        )?;
        Ok(Autoregressive {
            config: config.clone(),
            data: data.clone(),
            output,
            classes,
            network,
            training,
            evaluations: Cell::new(None),
        })
    }

    pub fn output(&self) -> Output {
        self.output
    }

    pub fn network(&self) -> &dyn Network {
        self.network.as_ref()
    }

    fn device(&self) -> Device {
        self.training.vs.device()
    }

    /// Checks data and labels at the boundary; returns data `[b, D]` (float) and the labels.
    fn checked(
        &self,
        x: &Tensor,
        labels: Option<&Tensor>,
        what: &str,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let x = check_data(x, &self.data.event_shape, self.data.values, what)?;
        let b = x.size()[0];
        gm_core::nn::check_activation_budget(b, self.network.activations_per_example(), what)?;
        let labels = match labels.filter(|_| self.classes > 0) {
            Some(y) => {
                check_labels(y, b, self.classes, what)?;
                Some(y.f_to_kind(Kind::Int64)?.f_to_device(self.device())?)
            }
            None => None,
        };
        Ok((
            x.f_to_device(self.device())?
                .f_reshape([b, -1])?
                .f_to_kind(Kind::Float)?,
            labels,
        ))
    }

    /// A training step through [`Network::forward`] and autograd (under scheduled sampling,
    /// [`Network::forward_scheduled`]).
    fn autograd_train_step(
        &mut self,
        x: &Tensor,
        labels: Option<&Tensor>,
        order: usize,
        own: f64,
    ) -> Result<StepOutput> {
        let log_probs = if own > 0.0 {
            let output = self.output;
            let plain = SampleOptions::default();
            let mut draw = |params: &Tensor| output.sample(params, &plain);
            let encode = |v: &Tensor| output.encode(v);
            let params = self.network.forward_scheduled(
                &self.output.encode(x)?,
                labels,
                order,
                own,
                &mut draw,
                &encode,
            )?;
            self.output.log_prob(&params, x)?
        } else {
            self.conditional_log_probs(x, labels, order)?
        };
        let nll = log_probs
            .f_sum_dim_intlist(&[1i64][..], false, Kind::Float)?
            .f_mean(Kind::Float)?
            .f_neg()?;
        let loss = nll.f_div_scalar(self.data.elements() as f64)?;
        self.training.step(&loss)?;
        Ok(StepOutput::new().with("loss", &loss).with("nll", &nll))
    }

    /// The network's hand-written NLL pass ([`Network::fused_bernoulli_nll`]) for checked data,
    /// where the output is Bernoulli and the network has one.
    fn fused_nll(&self, x: &Tensor, order: usize, gradients: bool) -> Result<Option<FusedNll>> {
        if self.output != Output::Bernoulli {
            return Ok(None);
        }
        self.network.fused_bernoulli_nll(x, order, gradients)
    }

    /// [`GenerativeModel::train_step`] on the network's hand-written pass, where it has one:
    /// the loss is the NLL plus `s − s` for `s = Σ_θ θ · ∂NLL/∂θ` (with the gradient held
    /// constant), which is the NLL's value exactly and gives autograd the hand-written gradient,
    /// so clipping, the optimizer and the weight average run as for every other model.
    fn fused_train_step(&mut self, x: &Tensor, order: usize) -> Result<Option<StepOutput>> {
        let Some(fused) = self.fused_nll(x, order, true)? else {
            return Ok(None);
        };
        let n = fused.nll.size()[0] as f64;
        let nll = fused.nll.f_mean(Kind::Float)?;
        let mut linear = Tensor::f_zeros([], (Kind::Float, self.device()))?;
        for (param, grad) in &fused.gradients {
            linear = linear.f_add(&param.f_mul(grad)?.f_sum(Kind::Float)?)?;
        }
        let zero_with_gradient = linear.f_sub(&linear.f_detach()?)?.f_div_scalar(n)?;
        let loss = nll
            .f_add(&zero_with_gradient)?
            .f_div_scalar(self.data.elements() as f64)?;
        self.training.step(&loss)?;
        Ok(Some(
            StepOutput::new()
                .with("loss", &loss)
                .with("nll", &nll.f_detach()?),
        ))
    }

    /// `ln p(x_d | x before d)` for every value `[b, D]` under order `order`.
    pub fn conditional_log_probs(
        &self,
        x: &Tensor,
        labels: Option<&Tensor>,
        order: usize,
    ) -> Result<Tensor> {
        let params = self
            .network
            .forward(&self.output.encode(x)?, labels, order)?;
        self.output.log_prob(&params, x)
    }

    /// The exact log-likelihood `[b]` of checked data `[b, D]`: the sum over values, averaged
    /// over the orders of an order-agnostic network as probabilities.
    fn exact_log_likelihood(&self, x: &Tensor, labels: Option<&Tensor>) -> Result<Tensor> {
        if self.classes > 0 && labels.is_none() {
            // ln p(x) = ln (1/C) Σ_y p(x | y): the marginal under uniform labels, exactly.
            let b = x.size()[0];
            let per_class = (0..self.classes)
                .map(|y| {
                    let y = Tensor::f_full([b], y, (Kind::Int64, x.device()))?;
                    self.exact_log_likelihood(x, Some(&y))
                })
                .collect::<Result<Vec<_>>>()?;
            return ensemble(&Tensor::f_stack(&per_class, 0)?);
        }
        // One order: the ensemble of one is its own log-likelihood.
        let per_order = (0..self.network.orders().len())
            .map(|k| {
                if labels.is_none() {
                    if let Some(fused) = self.fused_nll(x, k, false)? {
                        return Ok(fused.nll.f_neg()?);
                    }
                }
                self.conditional_log_probs(x, labels, k)?
                    .f_sum_dim_intlist(&[1i64][..], false, Kind::Double)
                    .map_err(GmError::from)
            })
            .collect::<Result<Vec<_>>>()?;
        ensemble(&Tensor::f_stack(&per_order, 0)?)
    }

    /// The log-likelihood with labels, the weights chosen.
    pub fn log_likelihood_with(
        &self,
        x: &Tensor,
        labels: Option<&Tensor>,
        weights: WeightChoice,
    ) -> Result<Tensor> {
        let (x, labels) = self.checked(x, labels, "Autoregressive.log_likelihood x")?;
        let orders = self.network.orders().len();
        let passes = if self.classes > 0 && labels.is_none() {
            orders * self.classes as usize
        } else {
            orders
        };
        let ll = gm_core::tch::no_grad(|| {
            self.training
                .with_weights(weights, || self.exact_log_likelihood(&x, labels.as_ref()))
        })?;
        self.evaluations.set((passes > 1).then_some(passes));
        Ok(ll)
    }

    /// The `search.width` most likely continuations of `search.prompt` (see [`BeamSearch`]),
    /// with the EMA weights where kept. Needs a sequence network (one that steps with a cache)
    /// and discrete data.
    pub fn beam_search(&self, search: &BeamSearch) -> Result<Vec<Hypothesis>> {
        let stepper = self.network.stepper().ok_or_else(|| {
            GmError::config(
                "network.kind",
                format!(
                    "beam search runs on the sequence networks (transformer, lstm, wavenet); this model's is {}",
                    self.config.network.kind()
                ),
            )
        })?;
        let levels = match self.data.values {
            gm_core::data::ValueKind::Discrete { levels } => levels as i64,
            gm_core::data::ValueKind::Continuous => {
                return Err(GmError::Domain(
                    "beam search ranks sequences of levels; this model's data are real".into(),
                ))
            }
        };
        // The beam is a batch of `width` sequences, with a cache each.
        gm_core::nn::check_activation_budget(
            search.width as i64,
            self.network.activations_per_example(),
            "beam search (width)",
        )?;
        gm_core::tch::no_grad(|| {
            self.training.with_weights(WeightChoice::Ema, || {
                search.run(
                    stepper,
                    &self.output,
                    levels,
                    self.data.elements(),
                    self.device(),
                )
            })
        })
    }

    /// Draws `n` examples in the network's order `order`.
    fn sample_in_order(
        &self,
        n: i64,
        labels: Option<&Tensor>,
        order: usize,
        options: &SampleOptions,
    ) -> Result<Tensor> {
        let output = self.output;
        let mut draw = |params: &Tensor, _pos: i64| output.sample(params, options);
        let encode = |v: &Tensor| -> Result<Tensor> {
            Ok(output.encode(&v.f_unsqueeze(1)?)?.f_squeeze_dim(1)?)
        };
        self.network
            .sample_sequential(n, labels, order, self.device(), &mut draw, &encode)
    }
}

impl GenerativeModel for Autoregressive {
    fn family(&self) -> &'static str {
        "autoregressive"
    }

    /// One Adam step on the exact NLL in nats per value (`loss`); `nll` is nats per example.
    /// An order-agnostic network trains order `step mod K`. Under scheduled sampling the inputs
    /// mix in the model's own draws (`own_draw_probability`), so `loss` and `nll` are those of the
    /// true values given the mixed inputs.
    fn train_step(&mut self, batch: &Batch) -> Result<StepOutput> {
        let (x, labels) = self.checked(
            &batch.x,
            batch.labels.as_ref(),
            "Autoregressive.train_step x",
        )?;
        if self.classes > 0 && labels.is_none() {
            return Err(GmError::Domain(
                "Autoregressive.train_step: this model is conditioned on class labels; the batch has none".into(),
            ));
        }
        let step = self.training.steps();
        let order = (step % self.network.orders().len() as u64) as usize;
        let own = self
            .config
            .scheduled_sampling
            .as_ref()
            .map_or(0.0, |s| s.probability(step));
        let fused = if own == 0.0 && labels.is_none() {
            self.fused_train_step(&x, order)?
        } else {
            None
        };
        let out = match fused {
            Some(out) => out,
            None => self.autograd_train_step(&x, labels.as_ref(), order, own)?,
        };
        Ok(if self.config.scheduled_sampling.is_some() {
            out.with("own_draw_probability", &Tensor::from(own as f32))
        } else {
            out
        })
    }

    /// Reads `temperature` (divides the logits; 0 takes the most likely value; for a mixture
    /// also scales the widths), `top_k`, `top_p`, `labels`, `weights` and `seed`. An order-agnostic
    /// network draws each example's order uniformly (a draw from the ensemble).
    fn sample_with(&self, n: i64, options: &SampleOptions) -> Result<Tensor> {
        // Refused before `begin`, which seeds the generator.
        if let Some(solver) = options.solver.as_deref().filter(|s| *s != "ancestral") {
            return Err(GmError::config(
                "solver",
                format!("an autoregressive model samples value by value (\"ancestral\"), got {solver:?}"),
            ));
        }
        options.begin(n)?;
        gm_core::nn::check_activation_budget(
            n,
            self.network.activations_per_example() / 2,
            "Autoregressive.sample_with",
        )?;
        let device = self.device();
        let labels = (self.classes > 0)
            .then(|| options.labels_for(n, self.classes, device))
            .transpose()?;
        let orders = self.network.orders().len() as i64;
        let values = gm_core::tch::no_grad(|| {
            self.training.with_weights(options.weights, || {
                if orders == 1 {
                    return self.sample_in_order(n, labels.as_ref(), 0, options);
                }
                let which = Tensor::f_randint(orders, [n], (Kind::Int64, device))?;
                let mut out = Tensor::f_zeros([n, self.data.elements()], (Kind::Float, device))?;
                for k in 0..orders {
                    let rows = which.f_eq(k)?.f_nonzero()?.f_squeeze_dim(1)?;
                    let m = rows.size()[0];
                    if m == 0 {
                        continue;
                    }
                    let part_labels = labels
                        .as_ref()
                        .map(|l| l.f_index_select(0, &rows))
                        .transpose()?;
                    let part =
                        self.sample_in_order(m, part_labels.as_ref(), k as usize, options)?;
                    let _ = out.f_index_copy_(0, &rows, &part)?;
                }
                Ok(out)
            })
        })?;
        self.evaluations.set(Some(self.data.elements() as usize));
        let mut shape = vec![n];
        shape.extend_from_slice(&self.data.event_shape);
        Ok(values.f_reshape(shape.as_slice())?)
    }

    fn likelihood_kind(&self) -> LikelihoodKind {
        LikelihoodKind::Exact
    }

    fn likelihood_estimator(&self) -> Option<String> {
        let orders = self.network.orders().len();
        match (orders > 1, self.classes > 0) {
            (true, _) => Some(format!(
                "the average of the probabilities under {orders} orders"
            )),
            (false, true) => Some(format!(
                "without labels, the marginal over {} equally likely classes",
                self.classes
            )),
            (false, false) => None,
        }
    }

    fn log_likelihood(&self, x: &Tensor) -> Result<Option<Tensor>> {
        self.log_likelihood_given(x, None)
    }

    /// `ln p(x | y)` for a conditional model given labels, `ln p(x)` otherwise (for a
    /// conditional model the exact marginal `ln (1/C) Σ_y p(x | y)` under uniform labels, C
    /// passes), with the EMA weights where kept.
    fn log_likelihood_given(&self, x: &Tensor, labels: Option<&Tensor>) -> Result<Option<Tensor>> {
        Ok(Some(self.log_likelihood_with(
            x,
            labels,
            WeightChoice::Ema,
        )?))
    }

    fn label_classes(&self) -> i64 {
        self.classes
    }

    /// Sampling takes one sequential network step per value (D); a likelihood takes one pass,
    /// or one per order (and per class, for a conditional model's marginal).
    fn last_evaluations(&self) -> Option<usize> {
        self.evaluations.get()
    }

    fn spec_fingerprint(&self) -> Option<String> {
        ModelSpec::fingerprint(&self.config).ok()
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
