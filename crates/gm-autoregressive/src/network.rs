//! The seam between the networks and the model: a [`Network`] maps data `[batch, D]` (as
//! [`crate::Output::encode`] presents it) to the parameters `[batch, P, D]` of every value's
//! conditional given the values before it in one of its generation orders. The model turns
//! those into a likelihood and draws values one at a time through
//! [`Network::sample_sequential`], which a network may override with an incremental scheme
//! (NADE's running pre-activations).
//!
//! [`NetworkConfig`] (the `[model.network]` table, tagged by `kind`) builds any of them.

use crate::gated::GatedPixelCnnConfig;
use crate::lstm::LstmConfig;
use crate::made::MadeNetConfig;
use crate::nade::NadeConfig;
use crate::pixelcnn::PixelCnnConfig;
use crate::pixelrnn::PixelRnnConfig;
use crate::sequence::Stepper;
use crate::transformer::TransformerConfig;
use crate::wavenet::WaveNetConfig;
use gm_core::nn::Ordering;
use gm_core::spec::DataInfo;
use gm_core::tch::{nn, Device, Kind, Tensor};
use gm_core::train::config::Config;
use gm_core::{GmError, Result};
use serde::{Deserialize, Serialize};

/// What [`Network::fused_bernoulli_nll`] returns.
#[derive(Debug)]
pub struct FusedNll {
    /// Each example's NLL in nats, `[batch]`, double precision, no autograd graph.
    pub nll: Tensor,
    /// Each trainable tensor with the gradient of the summed NLL; empty when not asked for.
    pub gradients: Vec<(Tensor, Tensor)>,
}

/// What the model needs to know to build a network.
#[derive(Debug, Clone)]
pub struct NetworkShape<'a> {
    pub data: &'a DataInfo,
    /// Parameters per value (see [`crate::Output::params_per_value`]).
    pub params_per_value: i64,
    /// Label classes to condition on; 0 for an unconditional model.
    pub classes: i64,
}

/// An autoregressive network (see the module documentation).
pub trait Network: std::fmt::Debug {
    /// Parameters `[batch, P, D]` of `p(x_d | x before d in order `order`)` for every `d`, for
    /// encoded data `[batch, D]` and, for a conditional network, labels `[batch]`.
    fn forward(&self, x: &Tensor, labels: Option<&Tensor>, order: usize) -> Result<Tensor>;

    /// The generation orders (each a permutation of `0..D`): one for most networks, several for
    /// an order-agnostic MADE.
    fn orders(&self) -> &[Vec<i64>];

    /// Activation values per example of one forward pass, for the memory budget.
    fn activations_per_example(&self) -> i128;

    /// Draws `n` examples `[n, D]` (as data: levels or real values) in order `order`: `draw(params [n, P], d)` draws
    /// value `d` (as data, e.g. levels) from its conditional's parameters; `encode` maps those
    /// draws `[n]` to the network's input. The default steps a network that has a
    /// [`Network::stepper`] (one cached position per value) and otherwise runs the whole network
    /// once per value.
    fn sample_sequential(
        &self,
        n: i64,
        labels: Option<&Tensor>,
        order: usize,
        device: Device,
        draw: &mut dyn FnMut(&Tensor, i64) -> Result<Tensor>,
        encode: &dyn Fn(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        match self.stepper() {
            Some(stepper) => {
                check_order(self, order)?;
                let d = self.orders()[order].len() as i64;
                crate::sequence::sample_by_steps(stepper, n, d, device, draw)
            }
            None => sample_by_full_passes(self, n, labels, order, device, draw, encode),
        }
    }

    /// A hand-written pass for the Bernoulli NLL, where the network has one for its device and
    /// dtype: for binary data `x` `[batch, D]` on {0, 1} (**not** [`Network::forward`]'s
    /// encoding; other values are refused), each example's
    /// `−Σ_d ln p(x_d | x before d)` in order `order`, `[batch]` nats in double precision and
    /// without an autograd graph, and with `gradients` the gradient of their sum for every
    /// trainable tensor. `None` (the default) sends the model through [`Network::forward`] and
    /// autograd; a network that overrides this is tested to agree with that path.
    fn fused_bernoulli_nll(
        &self,
        _x: &Tensor,
        _order: usize,
        _gradients: bool,
    ) -> Result<Option<FusedNll>> {
        Ok(None)
    }

    /// The network run one position at a time with a cache, where it can be (the sequence
    /// networks); beam search needs one.
    fn stepper(&self) -> Option<&dyn Stepper> {
        None
    }

    /// [`Network::forward`] under scheduled sampling (Bengio et al. 2015): each value's input is,
    /// with probability `own`, a draw from the model's own conditional instead of the true
    /// value. `draw(params [m, P])` draws levels `[m]`; `encode` maps them to network input.
    ///
    /// The default takes two passes (as Mihaylova & Martins 2019 do for Transformers, which
    /// see every position at once): draws for every position from a pass on the true data, then
    /// the pass that is trained on the mixed input. Causality makes the mix at `d` reach only the
    /// outputs after `d`. A recurrent network overrides it with the step-by-step original.
    fn forward_scheduled(
        &self,
        x: &Tensor,
        labels: Option<&Tensor>,
        order: usize,
        own: f64,
        draw: &mut dyn FnMut(&Tensor) -> Result<Tensor>,
        encode: &dyn Fn(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let drawn = gm_core::tch::no_grad(|| -> Result<Tensor> {
            let params = self.forward(x, labels, order)?;
            let size = params.size();
            let (b, p, d) = (size[0], size[1], size[2]);
            let flat = params.f_permute([0, 2, 1])?.f_reshape([b * d, p])?;
            Ok(encode(&draw(&flat)?)?.f_reshape([b, d])?)
        })?;
        let mix = x.f_rand_like()?.f_lt(own)?;
        self.forward(&drawn.f_where_self(&mix, x)?, labels, order)
    }
}

/// [`Network::sample_sequential`]'s default: the whole network runs once per value, `D`
/// passes over the whole input. Networks with a cheaper scheme override it and are tested to
/// draw the same values as this.
pub fn sample_by_full_passes<N: Network + ?Sized>(
    net: &N,
    n: i64,
    labels: Option<&Tensor>,
    order: usize,
    device: Device,
    draw: &mut dyn FnMut(&Tensor, i64) -> Result<Tensor>,
    encode: &dyn Fn(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    check_order(net, order)?;
    let positions = net.orders()[order].clone();
    let d = positions.len() as i64;
    let x = Tensor::f_zeros([n, d], (Kind::Float, device))?;
    let values = Tensor::f_zeros([n, d], (Kind::Float, device))?;
    for pos in positions {
        let params = net.forward(&x, labels, order)?.f_select(2, pos)?;
        let v = draw(&params, pos)?;
        values.f_select(1, pos)?.f_copy_(&v)?;
        x.f_select(1, pos)?.f_copy_(&encode(&v)?)?;
    }
    Ok(values)
}

/// The `[model.network]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum NetworkConfig {
    Nade(NadeConfig),
    Made(MadeNetConfig),
    Pixelcnn(PixelCnnConfig),
    GatedPixelcnn(GatedPixelCnnConfig),
    Pixelrnn(PixelRnnConfig),
    Transformer(TransformerConfig),
    Lstm(LstmConfig),
    Wavenet(WaveNetConfig),
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig::Made(MadeNetConfig::default())
    }
}

impl NetworkConfig {
    /// The kind's name, as the config writes it.
    pub fn kind(&self) -> &'static str {
        match self {
            NetworkConfig::Nade(_) => "nade",
            NetworkConfig::Made(_) => "made",
            NetworkConfig::Pixelcnn(_) => "pixelcnn",
            NetworkConfig::GatedPixelcnn(_) => "gated_pixelcnn",
            NetworkConfig::Pixelrnn(_) => "pixelrnn",
            NetworkConfig::Transformer(_) => "transformer",
            NetworkConfig::Lstm(_) => "lstm",
            NetworkConfig::Wavenet(_) => "wavenet",
        }
    }

    pub fn validate(&self) -> Result<()> {
        match self {
            NetworkConfig::Nade(c) => c.validate(),
            NetworkConfig::Made(c) => c.validate(),
            NetworkConfig::Pixelcnn(c) => c.validate(),
            NetworkConfig::GatedPixelcnn(c) => c.validate(),
            NetworkConfig::Pixelrnn(c) => c.validate(),
            NetworkConfig::Transformer(c) => c.validate(),
            NetworkConfig::Lstm(c) => c.validate(),
            NetworkConfig::Wavenet(c) => c.validate(),
        }
    }

    /// Trainable scalars the network will have (checked against the budget before building).
    pub fn parameters(&self, shape: &NetworkShape) -> i128 {
        match self {
            NetworkConfig::Nade(c) => c.parameters(shape),
            NetworkConfig::Made(c) => c.parameters(shape),
            NetworkConfig::Pixelcnn(c) => c.parameters(shape),
            NetworkConfig::GatedPixelcnn(c) => c.parameters(shape),
            NetworkConfig::Pixelrnn(c) => c.parameters(shape),
            NetworkConfig::Transformer(c) => c.parameters(shape),
            NetworkConfig::Lstm(c) => c.parameters(shape),
            NetworkConfig::Wavenet(c) => c.parameters(shape),
        }
    }

    /// Builds the network under `path`; refuses data or conditioning it cannot handle, naming
    /// the key.
    pub fn init(&self, path: &nn::Path, shape: &NetworkShape) -> Result<Box<dyn Network>> {
        if shape.classes > 0 && !matches!(self, NetworkConfig::GatedPixelcnn(_)) {
            return Err(GmError::config(
                "conditional",
                format!(
                    "a {} network is unconditional; class conditioning is built into gated_pixelcnn",
                    self.kind()
                ),
            ));
        }
        Ok(match self {
            NetworkConfig::Nade(c) => Box::new(c.init(path, shape)?),
            NetworkConfig::Made(c) => Box::new(c.init(path, shape)?),
            NetworkConfig::Pixelcnn(c) => Box::new(c.init(path, shape)?),
            NetworkConfig::GatedPixelcnn(c) => Box::new(c.init(path, shape)?),
            NetworkConfig::Pixelrnn(c) => c.init(path, shape)?,
            NetworkConfig::Transformer(c) => Box::new(c.init(path, shape)?),
            NetworkConfig::Lstm(c) => Box::new(c.init(path, shape)?),
            NetworkConfig::Wavenet(c) => Box::new(c.init(path, shape)?),
        })
    }
}

/// The image shape `[C, H, W]` of `data`, or an error naming `network.kind` for data that are
/// not images (a convolutional network needs them).
pub fn image_shape(data: &DataInfo, kind: &str) -> Result<(i64, i64, i64)> {
    match data.event_shape.as_slice() {
        [c, h, w] if *c >= 1 && *h >= 1 && *w >= 1 => Ok((*c, *h, *w)),
        other => Err(GmError::config(
            "network.kind",
            format!("{kind} models images [channels, height, width]; this data set's examples are {other:?}"),
        )),
    }
}

/// Checks that `order` names one of `net`'s orders.
pub fn check_order<N: Network + ?Sized>(net: &N, order: usize) -> Result<()> {
    check_order_index(order, net.orders().len())
}

/// Checks that `order` is below `orders`, the number of orders a network has.
pub fn check_order_index(order: usize, orders: usize) -> Result<()> {
    if order >= orders {
        return Err(GmError::Domain(format!(
            "order {order} requested; this network has {orders} order(s)"
        )));
    }
    Ok(())
}

/// Checks a network's input: `[batch, d]` with a non-empty batch. Returns the batch size.
pub fn check_input(x: &Tensor, d: i64, what: &str) -> Result<i64> {
    let size = x.size();
    if size.len() != 2 || size[1] != d || size[0] < 1 {
        return Err(GmError::shape(what, format!("[batch ≥ 1, {d}]"), &size));
    }
    Ok(size[0])
}

/// Checks `network.orderings`, the number of orders of an order-agnostic network: 1 to 64.
pub fn check_orderings(orderings: usize) -> Result<()> {
    if !(1..=64).contains(&orderings) {
        return Err(GmError::config(
            "network.orderings",
            format!("must be in [1, 64], got {orderings}"),
        ));
    }
    Ok(())
}

/// The degrees (1-based positions) of the `orderings` orders of an order-agnostic network: the
/// first is `first`, the others random permutations seeded `seed + k`.
pub fn several_orders(first: &Ordering, orderings: usize, seed: u64, d: i64) -> Vec<Vec<i64>> {
    (0..orderings)
        .map(|k| {
            if k == 0 {
                first.degrees(d)
            } else {
                Ordering::Random {
                    seed: seed.wrapping_add(k as u64),
                }
                .degrees(d)
            }
        })
        .collect()
}

/// The raster order `0..D`.
pub fn raster_order(d: i64) -> Vec<i64> {
    (0..d).collect()
}
