//! NADE (Larochelle & Murray, 2011): one hidden layer whose input weights are shared by every
//! conditional. The pre-activation of conditional `d` is `c + Σ_{j<d} W_j x_j`, a running sum,
//! so all D conditionals cost O(D·H) together rather than O(D²·H); sampling keeps the same
//! running sum and costs O(D·H) per example too.
//!
//! Binary data (Bernoulli output) only: the conditionals are `σ(b_d + V_d · σ(a_d))`.
//!
//! With `orderings > 1` the same weights are trained under several orders, one per step, and
//! the likelihood is the ensemble `ln (1/K) Σ_k p_k(x)` (Uria et al. 2016), as for MADE; it
//! costs K passes.
//!
//! On the CPU in single precision, training and scoring take a hand-written pass (`kernel`);
//! elsewhere (CUDA, double precision) autograd runs through [`Network::forward`].

mod kernel;

use crate::network::{
    check_input, check_order, check_orderings, several_orders, FusedNll, Network, NetworkShape,
};
use gm_core::data::ValueKind;
use gm_core::nn::Ordering;
use gm_core::tch::{nn, Device, Kind, Tensor};
use gm_core::train::config::Config;
use gm_core::{GmError, Result};
use serde::{Deserialize, Serialize};

/// Values per chunk of NADE's running sum.
const CHUNK: i64 = 16;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NadeConfig {
    /// Hidden units H.
    pub hidden: i64,
    /// The first (or only) order in which values are generated.
    pub ordering: Ordering,
    /// Orders trained with the same weights (1: an ordinary NADE).
    pub orderings: usize,
    /// The seed of the further orders' permutations.
    pub ordering_seed: u64,
}

impl Default for NadeConfig {
    fn default() -> Self {
        NadeConfig {
            hidden: 500,
            ordering: Ordering::Natural,
            orderings: 1,
            ordering_seed: 0,
        }
    }
}

impl Config for NadeConfig {
    fn validate(&self) -> Result<()> {
        if !(1..=65_536).contains(&self.hidden) {
            return Err(GmError::config(
                "network.hidden",
                format!("must be in [1, 65536], got {}", self.hidden),
            ));
        }
        check_orderings(self.orderings)
    }
}

impl NadeConfig {
    pub fn parameters(&self, shape: &NetworkShape) -> i128 {
        let d = shape.data.elements() as i128;
        let h = self.hidden as i128;
        2 * d * h + h + d
    }

    pub fn init(&self, path: &nn::Path, shape: &NetworkShape) -> Result<Nade> {
        self.validate()?;
        if shape.data.values != (ValueKind::Discrete { levels: 2 }) || shape.params_per_value != 1 {
            return Err(GmError::config(
                "network.kind",
                format!(
                    "NADE models binary values with a Bernoulli output; this data set's values are {:?}",
                    shape.data.values
                ),
            ));
        }
        let d = shape.data.elements();
        let h = self.hidden;
        // Input weights as in a layer of fan-in D; output weights of fan-in H.
        let w_bound = (1.0 / d as f64).sqrt();
        let v_bound = (1.0 / h as f64).sqrt();
        let uniform = |b: f64| nn::Init::Uniform { lo: -b, up: b };
        let orders: Vec<Vec<i64>> =
            several_orders(&self.ordering, self.orderings, self.ordering_seed, d)
                .iter()
                .map(|degrees| order_from_degrees(degrees))
                .collect();
        Ok(Nade {
            input_weight: path.var("input_weight", &[d, h], uniform(w_bound)),
            hidden_bias: path.var("hidden_bias", &[h], nn::Init::Const(0.0)),
            output_weight: path.var("output_weight", &[d, h], uniform(v_bound)),
            output_bias: path.var("output_bias", &[d], nn::Init::Const(0.0)),
            order_indices: orders
                .iter()
                .map(|o| Tensor::from_slice(o).to_device(path.device()))
                .collect(),
            orders,
        })
    }
}

/// The order that lists positions by increasing degree (degree `g` goes `g`-th).
pub fn order_from_degrees(degrees: &[i64]) -> Vec<i64> {
    let mut order: Vec<i64> = (0..degrees.len() as i64).collect();
    order.sort_by_key(|&i| degrees[i as usize]);
    order
}

#[derive(Debug)]
pub struct Nade {
    input_weight: Tensor,
    hidden_bias: Tensor,
    output_weight: Tensor,
    output_bias: Tensor,
    /// Each generation order as an index tensor on the weights' device, built once.
    order_indices: Vec<Tensor>,
    orders: Vec<Vec<i64>>,
}

impl Network for Nade {
    /// Inputs are encoded on {−1, 1}; NADE's sums use {0, 1}.
    fn forward(&self, x: &Tensor, _labels: Option<&Tensor>, order: usize) -> Result<Tensor> {
        check_input(x, self.input_weight.size()[0], "Nade.forward")?;
        check_order(self, order)?;
        let order = &self.order_indices[order];
        let bits = x
            .f_add_scalar(1.0)?
            .f_mul_scalar(0.5)?
            .f_index_select(1, order)?;
        let w = self.input_weight.f_index_select(0, order)?; // [D, H] in generation order
        let v = self.output_weight.f_index_select(0, order)?;
        let b = self.output_bias.f_index_select(0, order)?;
        // The running sum a_s = c + Σ_{t<s} W_t x_t, a chunk of values at a time: an
        // exclusive cumulative sum inside the chunk plus the total carried from earlier chunks.
        // Short chunks keep each step's tensors in cache (a cumulative sum over all D values
        // at once runs several times slower on a CPU).
        let (n, d) = (bits.size()[0], w.size()[0]);
        let mut carried = self.hidden_bias.f_unsqueeze(0)?.f_expand([n, -1], false)?;
        let mut logits = Vec::new();
        let mut start = 0;
        while start < d {
            let len = CHUNK.min(d - start);
            let contributions = bits
                .f_narrow(1, start, len)?
                .f_unsqueeze(2)?
                .f_mul(&w.f_narrow(0, start, len)?.f_unsqueeze(0)?)?; // [n, len, H]
            let running = contributions.f_cumsum(1, Kind::Float)?;
            // Exclusive: the sums up to the value before each one, by shifting (a subtraction
            // would leave x_s in its own pre-activation at rounding level).
            let before = Tensor::f_cat(
                &[
                    contributions.f_narrow(1, 0, 1)?.f_zeros_like()?,
                    running.f_narrow(1, 0, len - 1)?,
                ],
                1,
            )?;
            let hidden = before.f_add(&carried.f_unsqueeze(1)?)?.f_sigmoid()?;
            // Σ_h hidden[·, s, h] V[s, h], one dot product per value.
            logits.push(
                hidden
                    .f_mul(&v.f_narrow(0, start, len)?.f_unsqueeze(0)?)?
                    .f_sum_dim_intlist(&[2i64][..], false, Kind::Float)?,
            );
            carried = carried.f_add(&running.f_select(1, len - 1)?)?;
            start += len;
        }
        let logits = Tensor::f_cat(&logits, 1)?.f_add(&b)?; // [n, D] in generation order
                                                            // Back to storage order.
        let out = logits.f_zeros_like()?.f_index_copy(1, order, &logits)?;
        Ok(out.f_unsqueeze(1)?)
    }

    /// On the CPU in single precision, NADE's own O(D·H) algorithm (`kernel`), several
    /// times faster than autograd through the running sum; elsewhere `None`.
    fn fused_bernoulli_nll(
        &self,
        x: &Tensor,
        order: usize,
        gradients: bool,
    ) -> Result<Option<FusedNll>> {
        let (d, h) = (self.input_weight.size()[0], self.input_weight.size()[1]);
        check_input(x, d, "Nade.fused_bernoulli_nll")?;
        check_order(self, order)?;
        let on_cpu_f32 = |t: &Tensor| t.device() == Device::Cpu && t.kind() == Kind::Float;
        if !on_cpu_f32(&self.input_weight) || x.device() != Device::Cpu || d == 0 || h == 0 {
            return Ok(None);
        }
        // The kernel reads bits, not `forward`'s {−1, 1} encoding: refuse anything else.
        let bits = x.f_eq(0.0)?.f_logical_or(&x.f_eq(1.0)?)?.f_all()?;
        if bits.f_int64_value(&[])? == 0 {
            return Err(GmError::Domain(format!(
                "Nade.fused_bernoulli_nll: x must hold 0s and 1s (data, not the network's \
                 {{−1, 1}} input); got values in [{}, {}]",
                x.f_min()?.f_double_value(&[])?,
                x.f_max()?.f_double_value(&[])?
            )));
        }
        let values = |t: &Tensor| -> Result<Vec<f32>> {
            Ok(Vec::<f32>::try_from(
                &t.f_detach()?.f_to_kind(Kind::Float)?.f_reshape([-1])?,
            )?)
        };
        let (w, c, v, b) = (
            values(&self.input_weight)?,
            values(&self.hidden_bias)?,
            values(&self.output_weight)?,
            values(&self.output_bias)?,
        );
        let weights = kernel::Weights {
            w: &w,
            c: &c,
            v: &v,
            b: &b,
            d: d as usize,
            h: h as usize,
        };
        let positions: Vec<usize> = self.orders[order].iter().map(|&p| p as usize).collect();
        let threads = gm_core::tch::get_num_threads().max(1) as usize;
        let (nll, grads) = kernel::nll(&weights, &positions, &values(x)?, threads, gradients);
        let gradients = match grads {
            None => Vec::new(),
            Some(g) => vec![
                (
                    self.input_weight.shallow_clone(),
                    Tensor::f_from_slice(&g.w)?.f_view([d, h])?,
                ),
                (
                    self.hidden_bias.shallow_clone(),
                    Tensor::f_from_slice(&g.c)?,
                ),
                (
                    self.output_weight.shallow_clone(),
                    Tensor::f_from_slice(&g.v)?.f_view([d, h])?,
                ),
                (
                    self.output_bias.shallow_clone(),
                    Tensor::f_from_slice(&g.b)?,
                ),
            ],
        };
        Ok(Some(FusedNll {
            nll: Tensor::f_from_slice(&nll)?,
            gradients,
        }))
    }

    fn orders(&self) -> &[Vec<i64>] {
        &self.orders
    }

    fn activations_per_example(&self) -> i128 {
        // Three [D, H] tensors per example kept for the backward pass.
        3 * self.input_weight.numel() as i128
    }

    /// The running pre-activation, one value at a time: O(D·H) per example.
    fn sample_sequential(
        &self,
        n: i64,
        _labels: Option<&Tensor>,
        order: usize,
        device: Device,
        draw: &mut dyn FnMut(&Tensor, i64) -> Result<Tensor>,
        _encode: &dyn Fn(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        check_order(self, order)?;
        let d = self.input_weight.size()[0];
        let values = Tensor::f_zeros([n, d], (Kind::Float, device))?;
        let mut pre = self
            .hidden_bias
            .f_unsqueeze(0)?
            .f_expand([n, -1], false)?
            .f_contiguous()?;
        for &pos in &self.orders[order] {
            let hidden = pre.f_sigmoid()?;
            let logit = hidden
                .f_matmul(&self.output_weight.f_get(pos)?)?
                .f_add(&self.output_bias.f_get(pos)?)?;
            let v = draw(&logit.f_unsqueeze(1)?, pos)?; // 0/1
            values.f_select(1, pos)?.f_copy_(&v)?;
            pre = pre.f_add(
                &v.f_unsqueeze(1)?
                    .f_mul(&self.input_weight.f_get(pos)?.f_unsqueeze(0)?)?,
            )?;
        }
        Ok(values)
    }
}
