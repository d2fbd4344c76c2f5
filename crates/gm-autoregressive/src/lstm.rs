//! An LSTM language model (the recurrent baseline): token embeddings, `layers` stacked LSTMs
//! (libtorch's fused kernel, weights named as PyTorch's `nn.LSTM` names them) and a dense head.
//! Input `t` is value `t − 1` (see [`crate::sequence`]). Sampling and beam search carry the
//! hidden and cell states, one LSTM step per value.
//!
//! Scheduled sampling runs here as Bengio et al. (2015) describe it, step by step: the input
//! at `t` is, with the scheduled probability, a value drawn from the model's own conditional at
//! `t − 1`, which itself followed the mixed inputs before it.

use crate::network::{check_input, check_order, Network, NetworkShape};
use crate::sequence::{token_levels, Dense, StepState, Stepper, TokenInput};
use gm_core::tch::{nn, Device, Kind, Tensor};
use gm_core::train::config::Config;
use gm_core::{GmError, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LstmConfig {
    /// Width of the token embedding.
    pub embedding: i64,
    /// Hidden (and cell) units per layer.
    pub hidden: i64,
    /// Stacked LSTM layers.
    pub layers: i64,
}

impl Default for LstmConfig {
    fn default() -> Self {
        LstmConfig {
            embedding: 64,
            hidden: 512,
            layers: 1,
        }
    }
}

impl Config for LstmConfig {
    fn validate(&self) -> Result<()> {
        for (key, v, hi) in [
            ("network.embedding", self.embedding, 16_384),
            ("network.hidden", self.hidden, 16_384),
            ("network.layers", self.layers, 64),
        ] {
            if !(1..=hi).contains(&v) {
                return Err(GmError::config(
                    key,
                    format!("must be in [1, {hi}], got {v}"),
                ));
            }
        }
        Ok(())
    }
}

impl LstmConfig {
    pub fn parameters(&self, shape: &NetworkShape) -> i128 {
        let levels = match shape.data.values {
            gm_core::data::ValueKind::Discrete { levels } => levels as i64,
            gm_core::data::ValueKind::Continuous => 0,
        };
        let h = self.hidden as i128;
        let layers: i128 = (0..self.layers)
            .map(|i| {
                let inputs = if i == 0 { self.embedding } else { self.hidden } as i128;
                4 * h * (inputs + h + 2)
            })
            .sum();
        TokenInput::parameters(levels, self.embedding)
            + layers
            + Dense::parameters(self.hidden, shape.params_per_value)
    }

    pub fn init(&self, path: &nn::Path, shape: &NetworkShape) -> Result<LstmNet> {
        self.validate()?;
        let levels = token_levels(shape, "lstm")?;
        let d = shape.data.elements();
        let h = self.hidden;
        // PyTorch's LSTM initialisation: every weight and bias U(−1/√h, 1/√h).
        let bound = 1.0 / (h as f64).sqrt();
        let uniform = nn::Init::Uniform {
            lo: -bound,
            up: bound,
        };
        let lstm = path / "lstm";
        let mut weights = Vec::with_capacity(4 * self.layers as usize);
        for i in 0..self.layers {
            let inputs = if i == 0 { self.embedding } else { h };
            weights.push(lstm.var(&format!("weight_ih_l{i}"), &[4 * h, inputs], uniform));
            weights.push(lstm.var(&format!("weight_hh_l{i}"), &[4 * h, h], uniform));
            weights.push(lstm.var(&format!("bias_ih_l{i}"), &[4 * h], uniform));
            weights.push(lstm.var(&format!("bias_hh_l{i}"), &[4 * h], uniform));
        }
        Ok(LstmNet {
            input: TokenInput::new(&(path / "tokens"), levels, self.embedding, 1.0),
            weights,
            // Small enough that an untrained model is near the uniform one.
            head: Dense::new(&(path / "head"), h, shape.params_per_value, 0.01),
            layers: self.layers,
            hidden: h,
            d,
            orders: vec![crate::network::raster_order(d)],
        })
    }
}

/// The network (see the module documentation).
#[derive(Debug)]
pub struct LstmNet {
    input: TokenInput,
    /// Per layer: input weights, recurrent weights, their two biases.
    weights: Vec<Tensor>,
    head: Dense,
    layers: i64,
    hidden: i64,
    d: i64,
    orders: Vec<Vec<i64>>,
}

impl LstmNet {
    /// The LSTM over inputs `[b, t, embedding]` from states `(h, c)` `[layers, b, hidden]`:
    /// outputs `[b, t, hidden]` and the final states.
    fn run(&self, inputs: &Tensor, h: &Tensor, c: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let weights: Vec<&Tensor> = self.weights.iter().collect();
        // `train = true` with no dropout: the same arithmetic, and cuDNN keeps what its backward
        // pass needs (it refuses a backward after an inference-mode forward).
        Ok(inputs.f_lstm(&[h, c], &weights, true, self.layers, 0.0, true, false, true)?)
    }

    fn zero_state(&self, n: i64, device: Device) -> Result<Tensor> {
        Ok(Tensor::f_zeros(
            [self.layers, n, self.hidden],
            (Kind::Float, device),
        )?)
    }

    /// Scheduled sampling, step by step (see the module documentation): parameters `[b, P, D]`
    /// of every position for encoded data `x`, each input the true value before it or, with
    /// probability `own`, a draw `draw(params [b, P]) → levels [b]` from the model's conditional.
    ///
    /// The cells run one step at a time here (the inputs are not known in advance), written
    /// out rather than through libtorch's sequence kernel, whose per-call set-up dominated a
    /// one-step call: the first layer's input projection of every token is one table
    /// `[levels + 1, 4·hidden]` computed once per call, so each step looks its row up.
    /// Same gates, same order (input, forget, cell, output) as the kernel; a test checks the
    /// two agree.
    pub fn forward_scheduled_exact(
        &self,
        x: &Tensor,
        own: f64,
        draw: &mut dyn FnMut(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let b = check_input(x, self.d, "LstmNet.forward_scheduled x")?;
        let truth = self.input.tokens(x)?;
        let device = x.device();
        let first_layer_inputs = self
            .input
            .table()
            .f_linear(&self.weights[0], Some(&self.weights[2]))?;
        let start = Tensor::f_full([b], self.input.start_token(), (Kind::Int64, device))?;
        let zero = Tensor::f_zeros([b, self.hidden], (Kind::Float, device))?;
        let mut h: Vec<Tensor> = (0..self.layers).map(|_| zero.shallow_clone()).collect();
        let mut c: Vec<Tensor> = (0..self.layers).map(|_| zero.shallow_clone()).collect();
        let mut previous = start;
        let mut params = Vec::with_capacity(self.d as usize);
        for t in 0..self.d {
            let mut input = first_layer_inputs.f_index_select(0, &previous)?;
            for layer in 0..self.layers as usize {
                let w = &self.weights[4 * layer..4 * layer + 4];
                let gates = if layer == 0 {
                    input.f_add(&h[0].f_linear(&w[1], Some(&w[3]))?)?
                } else {
                    input
                        .f_linear(&w[0], Some(&w[2]))?
                        .f_add(&h[layer].f_linear(&w[1], Some(&w[3]))?)?
                };
                let parts = gates.f_chunk(4, 1)?;
                let (i, f, g, o) = (
                    parts[0].f_sigmoid()?,
                    parts[1].f_sigmoid()?,
                    parts[2].f_tanh()?,
                    parts[3].f_sigmoid()?,
                );
                c[layer] = f.f_mul(&c[layer])?.f_add(&i.f_mul(&g)?)?;
                h[layer] = o.f_mul(&c[layer].f_tanh()?)?;
                input = h[layer].shallow_clone();
            }
            let p = self.head.forward(&input)?;
            let drawn = gm_core::tch::no_grad(|| draw(&p.f_detach()?))?.f_to_kind(Kind::Int64)?;
            let mix = Tensor::f_rand([b], (Kind::Float, device))?.f_lt(own)?;
            previous = drawn.f_where_self(&mix, &truth.f_select(1, t)?)?;
            params.push(p);
        }
        Ok(Tensor::f_stack(&params, 2)?)
    }
}

impl Network for LstmNet {
    fn forward(&self, x: &Tensor, _labels: Option<&Tensor>, order: usize) -> Result<Tensor> {
        check_order(self, order)?;
        let b = check_input(x, self.d, "LstmNet.forward x")?;
        let inputs = self.input.shifted(&self.input.tokens(x)?)?;
        let zero = self.zero_state(b, x.device())?;
        let (out, _, _) = self.run(&inputs, &zero, &zero)?;
        Ok(self.head.forward(&out)?.f_permute([0, 2, 1])?)
    }

    fn orders(&self) -> &[Vec<i64>] {
        &self.orders
    }

    fn activations_per_example(&self) -> i128 {
        // Gates, states and outputs per layer and position, kept for the backward pass.
        self.layers as i128 * self.d as i128 * 8 * self.hidden as i128
    }

    fn stepper(&self) -> Option<&dyn Stepper> {
        Some(self)
    }

    fn forward_scheduled(
        &self,
        x: &Tensor,
        _labels: Option<&Tensor>,
        order: usize,
        own: f64,
        draw: &mut dyn FnMut(&Tensor) -> Result<Tensor>,
        _encode: &dyn Fn(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        check_order(self, order)?;
        self.forward_scheduled_exact(x, own, draw)
    }
}

impl Stepper for LstmNet {
    /// The hidden and cell states `[layers, n, hidden]` (batch dimension 1).
    fn begin(&self, n: i64, device: Device) -> Result<StepState> {
        Ok(StepState::new(vec![
            (self.zero_state(n, device)?, 1),
            (self.zero_state(n, device)?, 1),
        ]))
    }

    fn step(&self, state: &mut StepState, previous: Option<&Tensor>) -> Result<Tensor> {
        if state.position() >= self.d {
            return Err(GmError::Domain(format!(
                "LstmNet.step: all {} positions are already produced",
                self.d
            )));
        }
        let n = state.tensor(0).size()[1];
        let input = self.input.step(previous, n, state.tensor(0).device())?;
        let (out, h, c) = self.run(&input, state.tensor(0), state.tensor(1))?;
        state.set_tensor(0, h);
        state.set_tensor(1, c);
        state.advance();
        self.head.forward(&out.f_squeeze_dim(1)?)
    }
}
