//! What the sequence networks (the causal [`crate::transformer`] and the [`crate::lstm`]
//! language model) share: discrete values read as tokens, the input shifted one step right
//! behind a start token, and the [`Stepper`] seam, one value at a time with a cache, that
//! O(T) sampling and [`crate::beam`] search run on.
//!
//! A sequence network sees the value before each position, never the position itself: input
//! `t` is the embedding of token `t − 1` (a start token at `t = 0`), so output `t` depends on
//! values `0..t` only, which the causality tests check.

use crate::network::NetworkShape;
use gm_core::data::ValueKind;
use gm_core::tch::{nn, Device, Kind, Tensor};
use gm_core::{GmError, Result};

/// A network that can run one position at a time, keeping what it computed for the earlier
/// ones (a key/value cache, a recurrent state) in a [`StepState`].
pub trait Stepper {
    /// The state before the first value, for `n` sequences.
    fn begin(&self, n: i64, device: Device) -> Result<StepState>;

    /// The parameters `[n, P]` of the conditional of position `state.position()`, given the
    /// value at the position before (`None` at position 0) as data levels `[n]`; advances the
    /// state by one position.
    fn step(&self, state: &mut StepState, previous: Option<&Tensor>) -> Result<Tensor>;
}

/// The cache of a [`Stepper`]: tensors with a batch dimension each, and the next position.
#[derive(Debug)]
pub struct StepState {
    position: i64,
    /// `(tensor, its batch dimension)`.
    tensors: Vec<(Tensor, i64)>,
}

impl StepState {
    pub fn new(tensors: Vec<(Tensor, i64)>) -> Self {
        StepState {
            position: 0,
            tensors,
        }
    }

    /// The position the next [`Stepper::step`] produces.
    pub fn position(&self) -> i64 {
        self.position
    }

    pub fn advance(&mut self) {
        self.position += 1;
    }

    pub fn tensor(&self, i: usize) -> &Tensor {
        &self.tensors[i].0
    }

    pub fn set_tensor(&mut self, i: usize, t: Tensor) {
        self.tensors[i].0 = t;
    }

    /// Keeps the sequences `rows` (indices `[m]`, repeats allowed) in that order: beam search
    /// moves each surviving hypothesis's cache to its new slot.
    pub fn reorder(&mut self, rows: &Tensor) -> Result<()> {
        for (t, dim) in &mut self.tensors {
            *t = t.f_index_select(*dim, rows)?;
        }
        Ok(())
    }
}

/// The number of levels of discrete data, or an error naming `network.kind` for real data.
pub fn token_levels(shape: &NetworkShape, kind: &str) -> Result<i64> {
    match shape.data.values {
        ValueKind::Discrete { levels } => Ok(levels as i64),
        ValueKind::Continuous => Err(GmError::config(
            "network.kind",
            format!(
                "a {kind} network reads discrete values as tokens; this data set's values are real"
            ),
        )),
    }
}

/// The token embedding shared by the sequence networks: one row per level and one for the
/// start token (index `levels`).
#[derive(Debug)]
pub struct TokenInput {
    levels: i64,
    table: Tensor,
}

impl TokenInput {
    /// Rows drawn from N(0, stdev²).
    pub fn new(path: &nn::Path, levels: i64, width: i64, stdev: f64) -> Self {
        TokenInput {
            levels,
            table: path.var(
                "embedding",
                &[levels + 1, width],
                nn::Init::Randn { mean: 0.0, stdev },
            ),
        }
    }

    pub fn parameters(levels: i64, width: i64) -> i128 {
        (levels as i128 + 1) * width as i128
    }

    /// The embedding table `[levels + 1, width]`, the start token's row last.
    pub fn table(&self) -> &Tensor {
        &self.table
    }

    /// The start token's index.
    pub fn start_token(&self) -> i64 {
        self.levels
    }

    /// Tokens `[b, D]` (int64) of the network's input, values mapped onto [-1, 1] as
    /// [`crate::Output::encode`] presents them.
    pub fn tokens(&self, encoded: &Tensor) -> Result<Tensor> {
        Ok(
            gm_core::data::transforms::symmetric_to_levels(encoded, self.levels as u32)?
                .f_to_kind(Kind::Int64)?,
        )
    }

    /// The embeddings `[b, D, width]` of the input of every position: the start token, then
    /// tokens `0..D-1`.
    pub fn shifted(&self, tokens: &Tensor) -> Result<Tensor> {
        let size = tokens.size();
        let (b, d) = (size[0], size[1]);
        let start = Tensor::f_full([b, 1], self.levels, (Kind::Int64, tokens.device()))?;
        let input = Tensor::f_cat(&[start, tokens.f_narrow(1, 0, d - 1)?], 1)?;
        Ok(Tensor::f_embedding(&self.table, &input, -1, false, false)?)
    }

    /// The embedding `[n, 1, width]` of one step's input: the previous value (levels `[n]`) or
    /// the start token.
    pub fn step(&self, previous: Option<&Tensor>, n: i64, device: Device) -> Result<Tensor> {
        let tokens = match previous {
            Some(v) => v.f_to_kind(Kind::Int64)?.f_reshape([n, 1])?,
            None => Tensor::f_full([n, 1], self.levels, (Kind::Int64, device))?,
        };
        Ok(Tensor::f_embedding(&self.table, &tokens, -1, false, false)?)
    }
}

/// Draws `n` sequences `[n, D]` (data levels) with a stepper: one cached step per value, so
/// T values cost O(T) steps. `draw(params [n, P], position)` draws one value per sequence.
pub fn sample_by_steps(
    stepper: &dyn Stepper,
    n: i64,
    d: i64,
    device: Device,
    draw: &mut dyn FnMut(&Tensor, i64) -> Result<Tensor>,
) -> Result<Tensor> {
    let mut state = stepper.begin(n, device)?;
    let mut values = Vec::with_capacity(d as usize);
    let mut previous: Option<Tensor> = None;
    for pos in 0..d {
        let params = stepper.step(&mut state, previous.as_ref())?;
        let v = draw(&params, pos)?;
        values.push(v.shallow_clone());
        previous = Some(v);
    }
    Ok(Tensor::f_stack(&values, 1)?)
}

/// A pre-norm layer normalisation of the last dimension with a learned gain and bias.
#[derive(Debug)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    width: i64,
}

impl LayerNorm {
    pub fn new(path: &nn::Path, width: i64) -> Self {
        LayerNorm {
            weight: path.var("weight", &[width], nn::Init::Const(1.0)),
            bias: path.var("bias", &[width], nn::Init::Const(0.0)),
            width,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.f_layer_norm(
            [self.width],
            Some(&self.weight),
            Some(&self.bias),
            1e-5,
            false,
        )?)
    }
}

/// A dense layer `y = x Wᵀ + b` with weights drawn from N(0, stdev²) and a zero bias.
#[derive(Debug)]
pub struct Dense {
    weight: Tensor,
    bias: Tensor,
}

impl Dense {
    pub fn new(path: &nn::Path, inputs: i64, outputs: i64, stdev: f64) -> Self {
        Dense {
            weight: path.var(
                "weight",
                &[outputs, inputs],
                nn::Init::Randn { mean: 0.0, stdev },
            ),
            bias: path.var("bias", &[outputs], nn::Init::Const(0.0)),
        }
    }

    pub fn parameters(inputs: i64, outputs: i64) -> i128 {
        (inputs as i128 + 1) * outputs as i128
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.f_linear(&self.weight, Some(&self.bias))?)
    }
}
