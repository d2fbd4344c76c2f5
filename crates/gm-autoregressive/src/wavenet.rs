//! WaveNet (van den Oord et al. 2016) for 1D discrete signals such as 8-bit μ-law audio: the
//! value before each position embedded (see [`crate::sequence`]), a stack of dilated causal
//! convolutions of width 2 with gated units `tanh(f) · σ(g)`, residual and skip connections, and a
//! head on the summed skips (ReLU, 1×1, ReLU, 1×1) giving a softmax over the levels.
//!
//! A width-2 convolution with dilation d is `W₀ h_{t−d} + W₁ h_t`, written here as two dense
//! maps on channels-last activations, so the same weights run a whole sequence and one step.
//!
//! Fast generation (Paine et al. 2016): each layer keeps a queue of its last d inputs, so
//! producing value t reads `h_{t−d}` from the queue instead of recomputing the past. T values
//! cost O(T · layers) instead of O(T² · layers) with a full pass per value; a test checks the two
//! give the same conditionals.

use crate::network::{check_input, check_order, Network, NetworkShape};
use crate::sequence::{token_levels, Dense, StepState, Stepper, TokenInput};
use gm_core::tch::{nn, Device, Kind, Tensor};
use gm_core::train::config::Config;
use gm_core::{GmError, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WaveNetConfig {
    /// Channels of the residual stream (and of the value embedding).
    pub channels: i64,
    /// Channels of the skip connections.
    pub skip_channels: i64,
    /// Hidden channels of the head.
    pub head_channels: i64,
    /// The dilation of each layer, in order; the receptive field is 1 + their sum values back.
    pub dilations: Vec<i64>,
}

impl Default for WaveNetConfig {
    fn default() -> Self {
        WaveNetConfig {
            channels: 32,
            skip_channels: 64,
            head_channels: 64,
            dilations: vec![1, 2, 4, 8, 16, 32, 64],
        }
    }
}

impl Config for WaveNetConfig {
    fn validate(&self) -> Result<()> {
        for (key, v) in [
            ("network.channels", self.channels),
            ("network.skip_channels", self.skip_channels),
            ("network.head_channels", self.head_channels),
        ] {
            if !(1..=4096).contains(&v) {
                return Err(GmError::config(
                    key,
                    format!("must be in [1, 4096], got {v}"),
                ));
            }
        }
        if self.dilations.is_empty() || self.dilations.len() > 256 {
            return Err(GmError::config(
                "network.dilations",
                format!("needs 1 to 256 layers, got {}", self.dilations.len()),
            ));
        }
        if let Some(d) = self.dilations.iter().find(|&&d| !(1..=65_536).contains(&d)) {
            return Err(GmError::config(
                "network.dilations",
                format!("each dilation must be in [1, 65536], got {d}"),
            ));
        }
        Ok(())
    }
}

impl WaveNetConfig {
    pub fn parameters(&self, shape: &NetworkShape) -> i128 {
        let levels = match shape.data.values {
            gm_core::data::ValueKind::Discrete { levels } => levels as i64,
            gm_core::data::ValueKind::Continuous => 0,
        };
        let (c, s) = (self.channels, self.skip_channels);
        let layer =
            2 * Dense::parameters(c, 2 * c) + Dense::parameters(c, c) + Dense::parameters(c, s);
        TokenInput::parameters(levels, c)
            + self.dilations.len() as i128 * layer
            + Dense::parameters(s, self.head_channels)
            + Dense::parameters(self.head_channels, shape.params_per_value)
    }

    pub fn init(&self, path: &nn::Path, shape: &NetworkShape) -> Result<WaveNet> {
        self.validate()?;
        let levels = token_levels(shape, "wavenet")?;
        let (c, s) = (self.channels, self.skip_channels);
        let layers = self.dilations.len() as f64;
        let std = |fan_in: i64| (1.0 / fan_in as f64).sqrt();
        let blocks = self
            .dilations
            .iter()
            .enumerate()
            .map(|(i, &dilation)| {
                let p = path / format!("layer{i}");
                Layer {
                    past: Dense::new(&(&p / "past"), c, 2 * c, std(2 * c)),
                    present: Dense::new(&(&p / "present"), c, 2 * c, std(2 * c)),
                    // Residual branches scaled so the stream's variance does not grow with depth.
                    residual: Dense::new(&(&p / "residual"), c, c, std(c) / layers.sqrt()),
                    skip: Dense::new(&(&p / "skip"), c, s, std(c)),
                    dilation,
                }
            })
            .collect();
        Ok(WaveNet {
            input: TokenInput::new(&(path / "tokens"), levels, c, 1.0),
            layers: blocks,
            head_hidden: Dense::new(&(path / "head_hidden"), s, self.head_channels, std(s)),
            // A tenth of the usual scale: an untrained model is near the uniform one.
            head_out: Dense::new(
                &(path / "head_out"),
                self.head_channels,
                shape.params_per_value,
                0.1 * std(self.head_channels),
            ),
            d: shape.data.elements(),
            channels: c,
            skip_channels: s,
            orders: vec![crate::network::raster_order(shape.data.elements())],
        })
    }
}

#[derive(Debug)]
struct Layer {
    /// `W₀`: the input `dilation` steps back, to filter and gate.
    past: Dense,
    /// `W₁`: the input at this step.
    present: Dense,
    residual: Dense,
    skip: Dense,
    dilation: i64,
}

impl Layer {
    /// The residual stream and this layer's skip output from its input now and `dilation` back
    /// (channels last, any leading shape).
    fn apply(&self, now: &Tensor, back: &Tensor) -> Result<(Tensor, Tensor)> {
        let pre = self
            .past
            .forward(back)?
            .f_add(&self.present.forward(now)?)?;
        let halves = pre.f_chunk(2, -1)?;
        let z = halves[0].f_tanh()?.f_mul(&halves[1].f_sigmoid()?)?;
        Ok((
            now.f_add(&self.residual.forward(&z)?)?,
            self.skip.forward(&z)?,
        ))
    }
}

/// The network (see the module documentation).
#[derive(Debug)]
pub struct WaveNet {
    input: TokenInput,
    layers: Vec<Layer>,
    head_hidden: Dense,
    head_out: Dense,
    d: i64,
    channels: i64,
    skip_channels: i64,
    orders: Vec<Vec<i64>>,
}

impl WaveNet {
    /// The receptive field: how many values back the conditional of a value reads (the value
    /// before it and, through the dilations, the sum of the dilations more).
    pub fn receptive_field(&self) -> i64 {
        1 + self.layers.iter().map(|l| l.dilation).sum::<i64>()
    }

    fn head(&self, skips: &Tensor) -> Result<Tensor> {
        let hidden = self.head_hidden.forward(&skips.f_relu()?)?.f_relu()?;
        self.head_out.forward(&hidden)
    }
}

impl Network for WaveNet {
    fn forward(&self, x: &Tensor, _labels: Option<&Tensor>, order: usize) -> Result<Tensor> {
        check_order(self, order)?;
        let b = check_input(x, self.d, "WaveNet.forward x")?;
        let mut h = self.input.shifted(&self.input.tokens(x)?)?; // [b, D, C]
        let mut skips =
            Tensor::f_zeros([b, self.d, self.skip_channels], (Kind::Float, x.device()))?;
        for layer in &self.layers {
            // h_{t−d}, zeros before the start: the causal padding.
            let k = layer.dilation.min(self.d);
            let back = Tensor::f_cat(
                &[
                    h.f_zeros_like()?.f_narrow(1, 0, k)?,
                    h.f_narrow(1, 0, self.d - k)?,
                ],
                1,
            )?;
            let (next, skip) = layer.apply(&h, &back)?;
            h = next;
            skips = skips.f_add(&skip)?;
        }
        Ok(self.head(&skips)?.f_permute([0, 2, 1])?)
    }

    fn orders(&self) -> &[Vec<i64>] {
        &self.orders
    }

    fn activations_per_example(&self) -> i128 {
        let per_layer = 6 * self.channels as i128 + 2 * self.skip_channels as i128;
        self.layers.len() as i128 * self.d as i128 * per_layer
    }

    fn stepper(&self) -> Option<&dyn Stepper> {
        Some(self)
    }
}

impl Stepper for WaveNet {
    /// One queue per layer, `[n, dilation, channels]`: a ring holding the layer's inputs of the
    /// last `dilation` steps (zeros before the start), slot `t mod dilation` for step t.
    fn begin(&self, n: i64, device: Device) -> Result<StepState> {
        let queues = self
            .layers
            .iter()
            .map(|l| {
                Ok((
                    Tensor::f_zeros([n, l.dilation, self.channels], (Kind::Float, device))?,
                    0,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(StepState::new(queues))
    }

    fn step(&self, state: &mut StepState, previous: Option<&Tensor>) -> Result<Tensor> {
        let t = state.position();
        if t >= self.d {
            return Err(GmError::Domain(format!(
                "WaveNet.step: all {} positions are already produced",
                self.d
            )));
        }
        let n = state.tensor(0).size()[0];
        let device = state.tensor(0).device();
        let mut h = self.input.step(previous, n, device)?.f_squeeze_dim(1)?; // [n, C]
        let mut skips = Tensor::f_zeros([n, self.skip_channels], (Kind::Float, device))?;
        for (i, layer) in self.layers.iter().enumerate() {
            // The slot holds the input of step t − d; it is read (eagerly) before this step's
            // input replaces it, to be read again at step t + d.
            let mut slot = state.tensor(i).f_narrow(1, t % layer.dilation, 1)?;
            let (next, skip) = layer.apply(&h, &slot.f_squeeze_dim(1)?)?;
            slot.f_copy_(&h.f_unsqueeze(1)?)?;
            h = next;
            skips = skips.f_add(&skip)?;
        }
        state.advance();
        self.head(&skips)
    }
}
