//! MADE (Germain et al., 2015) as a density model: an MLP whose weight masks (gm-core's
//! [`made_masks`]) make the outputs of value `d` depend only on values before `d` in the order.
//!
//! With `orderings > 1` the same weights are trained under several orders (order-agnostic
//! training): training step `t` uses order `t mod K`, and the likelihood is the ensemble
//! `ln (1/K) Σ_k p_k(x)`, a mixture of K exact autoregressive models and so exactly normalised.
//! The first order is the configured `ordering`; the others are random permutations.

use crate::nade::order_from_degrees;
use crate::network::{
    check_input, check_order, check_orderings, several_orders, Network, NetworkShape,
};
use gm_core::nn::{made_masks, Activation, Ordering};
use gm_core::tch::{nn, Kind, Tensor};
use gm_core::train::config::Config;
use gm_core::{GmError, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MadeNetConfig {
    pub hidden: Vec<i64>,
    pub activation: Activation,
    /// The first (or only) order.
    pub ordering: Ordering,
    /// Orders trained with the same weights (1: an ordinary MADE).
    pub orderings: usize,
    /// The seed of the further orders' permutations.
    pub ordering_seed: u64,
}

impl Default for MadeNetConfig {
    fn default() -> Self {
        MadeNetConfig {
            hidden: vec![500],
            activation: Activation::Relu,
            ordering: Ordering::Natural,
            orderings: 1,
            ordering_seed: 0,
        }
    }
}

impl Config for MadeNetConfig {
    fn validate(&self) -> Result<()> {
        if self.hidden.is_empty() || self.hidden.iter().any(|h| !(1..=65_536).contains(h)) {
            return Err(GmError::config(
                "network.hidden",
                format!(
                    "needs at least one hidden layer, each of width in [1, 65536]; got {:?}",
                    self.hidden
                ),
            ));
        }
        check_orderings(self.orderings)
    }
}

impl MadeNetConfig {
    fn widths(&self, shape: &NetworkShape) -> Vec<i64> {
        let d = shape.data.elements();
        std::iter::once(d)
            .chain(self.hidden.iter().copied())
            .chain(std::iter::once(d * shape.params_per_value))
            .collect()
    }

    pub fn parameters(&self, shape: &NetworkShape) -> i128 {
        self.widths(shape)
            .windows(2)
            .map(|w| (w[0] as i128 + 1) * w[1] as i128)
            .sum()
    }

    /// The degrees (1-based positions) of each order.
    fn degrees(&self, d: i64) -> Vec<Vec<i64>> {
        several_orders(&self.ordering, self.orderings, self.ordering_seed, d)
    }

    pub fn init(&self, path: &nn::Path, shape: &NetworkShape) -> Result<Made> {
        self.validate()?;
        let d = shape.data.elements();
        let widths = self.widths(shape);
        let device = path.device();
        let mut weights = Vec::new();
        for (i, w) in widths.windows(2).enumerate() {
            let bound = 1.0 / (w[0] as f64).sqrt();
            let init = nn::Init::Uniform {
                lo: -bound,
                up: bound,
            };
            let layer = path / format!("layer{i}");
            weights.push((
                layer.var("weight", &[w[1], w[0]], init),
                layer.var("bias", &[w[1]], init),
            ));
        }
        let degrees = self.degrees(d);
        let masks = degrees
            .iter()
            .map(|deg| {
                made_masks(deg, &self.hidden, shape.params_per_value)
                    .into_iter()
                    .map(|m| m.to_device(device))
                    .collect()
            })
            .collect();
        Ok(Made {
            weights,
            masks,
            orders: degrees.iter().map(|g| order_from_degrees(g)).collect(),
            activation: self.activation,
            params_per_value: shape.params_per_value,
            hidden: self.hidden.iter().map(|h| *h as i128).sum(),
        })
    }
}

#[derive(Debug)]
pub struct Made {
    weights: Vec<(Tensor, Tensor)>,
    /// One set of masks per order.
    masks: Vec<Vec<Tensor>>,
    orders: Vec<Vec<i64>>,
    activation: Activation,
    params_per_value: i64,
    hidden: i128,
}

impl Network for Made {
    fn forward(&self, x: &Tensor, _labels: Option<&Tensor>, order: usize) -> Result<Tensor> {
        check_order(self, order)?;
        check_input(x, self.orders[0].len() as i64, "Made.forward")?;
        let masks = &self.masks[order];
        let mut h = x.shallow_clone();
        let last = self.weights.len() - 1;
        for (i, ((w, b), m)) in self.weights.iter().zip(masks).enumerate() {
            h = h.f_linear(&w.f_mul(m)?, Some(b))?;
            if i < last {
                h = self.activation.apply(&h);
            }
        }
        // made_masks lays the outputs out as [P, D].
        let d = x.size()[1];
        Ok(h.f_reshape([-1, self.params_per_value, d])?)
    }

    fn orders(&self) -> &[Vec<i64>] {
        &self.orders
    }

    fn activations_per_example(&self) -> i128 {
        2 * self.hidden
            + 2 * self
                .weights
                .last()
                .map(|(w, _)| w.size()[0] as i128)
                .unwrap_or(0)
    }
}

/// The ensemble log-likelihood `ln (1/K) Σ_k exp(ll_k)` of per-order log-likelihoods
/// `[K, batch]`.
pub fn ensemble(per_order: &Tensor) -> Result<Tensor> {
    let k = per_order.size()[0] as f64;
    Ok(per_order
        .f_logsumexp(&[0i64][..], false)?
        .f_sub_scalar(k.ln())?
        .f_to_kind(Kind::Float)?)
}
