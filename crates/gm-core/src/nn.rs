//! Layers shared by several families: activations, an MLP, and MADE's masked layers (used by
//! gm-flow's MAF/IAF and by gm-autoregressive's MADE).

use crate::train::config::Config;
use crate::{GmError, Result};
use rand::seq::SliceRandom;
use rand_chacha::rand_core::SeedableRng;
use serde::{Deserialize, Serialize};
use tch::nn;
use tch::{Kind, Tensor};

/// Element-wise non-linearities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    #[default]
    Relu,
    LeakyRelu,
    Elu,
    Gelu,
    Silu,
    Tanh,
}

impl Activation {
    pub fn apply(&self, x: &Tensor) -> Tensor {
        match self {
            Activation::Relu => x.relu(),
            Activation::LeakyRelu => x.leaky_relu(),
            Activation::Elu => x.elu(),
            Activation::Gelu => x.gelu("none"),
            Activation::Silu => x.silu(),
            Activation::Tanh => x.tanh(),
        }
    }
}

/// A multi-layer perceptron `in → hidden… → out` with an activation between layers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MlpConfig {
    pub hidden: Vec<i64>,
    pub activation: Activation,
}

impl Default for MlpConfig {
    fn default() -> Self {
        MlpConfig {
            hidden: vec![256, 256],
            activation: Activation::Relu,
        }
    }
}

impl Config for MlpConfig {
    fn validate(&self) -> Result<()> {
        if let Some(h) = self.hidden.iter().find(|h| **h < 1) {
            return Err(GmError::config(
                "hidden",
                format!("every hidden width must be at least 1, got {h}"),
            ));
        }
        Ok(())
    }
}

impl MlpConfig {
    pub fn init(&self, path: &nn::Path, inputs: i64, outputs: i64) -> Result<Mlp> {
        self.validate()?;
        if inputs < 1 || outputs < 1 {
            return Err(GmError::config(
                "mlp",
                format!("inputs and outputs must be positive, got {inputs} → {outputs}"),
            ));
        }
        let widths: Vec<i64> = std::iter::once(inputs)
            .chain(self.hidden.iter().copied())
            .chain(std::iter::once(outputs))
            .collect();
        let parameters = widths
            .windows(2)
            .map(|w| (w[0] as i128 + 1) * w[1] as i128)
            .sum::<i128>();
        check_parameter_budget(parameters, &format!("an MLP {widths:?}"))?;
        let mut layers = Vec::new();
        let mut width = inputs;
        for (i, &h) in self
            .hidden
            .iter()
            .chain(std::iter::once(&outputs))
            .enumerate()
        {
            layers.push(nn::linear(
                path / format!("layer{i}"),
                width,
                h,
                Default::default(),
            ));
            width = h;
        }
        Ok(Mlp {
            layers,
            activation: self.activation,
            inputs,
            kind: path.kind(),
        })
    }
}

/// A positive integer limit from environment variable `var`, or `default` when it is unset. A
/// value that is set but is not a positive integer is an error, never silently ignored.
fn limit_from_env(var: &str, default: i128) -> Result<i128> {
    match std::env::var(var) {
        Err(_) => Ok(default),
        Ok(v) => match v.trim().parse::<i128>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(GmError::config(
                var,
                format!("expected a positive whole number (e.g. 4294967296), got {v:?}"),
            )),
        },
    }
}

/// The largest number of parameters a model may allocate, from `GM_MAX_PARAMETERS` (default
/// 2³¹, about 8 GiB of float weights): a config that asks for more is refused before anything is
/// allocated, with the estimate in the message.
pub fn max_parameters() -> Result<i128> {
    limit_from_env("GM_MAX_PARAMETERS", 1 << 31)
}

/// Refuses `parameters` above [`max_parameters`], naming `what` would need them.
pub fn check_parameter_budget(parameters: i128, what: &str) -> Result<()> {
    let limit = max_parameters()?;
    if parameters > limit {
        return Err(GmError::config(
            "model",
            format!(
                "{what} would need {parameters} parameters, above the limit of {limit} (set GM_MAX_PARAMETERS to raise it)"
            ),
        ));
    }
    Ok(())
}

/// The largest number of activation values one call may keep for its backward pass, from
/// `GM_MAX_ACTIVATIONS` (default 2³², about 16 GiB in float32).
pub fn max_activations() -> Result<i128> {
    limit_from_env("GM_MAX_ACTIVATIONS", 1 << 32)
}

/// Refuses a batch of `batch` examples of `per_example` activation values each (forward values
/// kept for the backward pass, and their gradients: counted twice) above [`max_activations`],
/// before anything runs, naming `what` and the estimate.
pub fn check_activation_budget(batch: i64, per_example: i128, what: &str) -> Result<()> {
    let needed = 2 * batch.max(0) as i128 * per_example;
    let limit = max_activations()?;
    if needed > limit {
        return Err(GmError::config(
            "batch_size",
            format!(
                "{what}: a batch of {batch} would keep about {needed} activation values ({per_example} per example, forward and backward), above the limit of {limit}; use a smaller batch or set GM_MAX_ACTIVATIONS"
            ),
        ));
    }
    Ok(())
}

/// `x` in the weights' dtype: real and integer inputs are converted, others refused.
pub fn to_weight_kind(x: &Tensor, kind: Kind, what: &str) -> Result<Tensor> {
    if x.kind() == kind {
        return Ok(x.shallow_clone());
    }
    if x.is_complex() || x.kind() == Kind::Bool {
        return Err(GmError::Domain(format!(
            "{what}: expected real values, got a {:?} tensor",
            x.kind()
        )));
    }
    Ok(x.f_to_kind(kind)?)
}

/// See [`MlpConfig`].
#[derive(Debug)]
pub struct Mlp {
    layers: Vec<nn::Linear>,
    activation: Activation,
    inputs: i64,
    kind: Kind,
}

impl Mlp {
    /// Maps `[batch, in]` to `[batch, out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.dim() != 2 || x.size()[1] != self.inputs {
            return Err(GmError::shape(
                "Mlp.forward",
                format!("[batch, {}]", self.inputs),
                &x.size(),
            ));
        }
        let mut h = to_weight_kind(x, self.kind, "Mlp.forward")?;
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate() {
            h = h.f_linear(&layer.ws, layer.bs.as_ref())?;
            if i < last {
                h = match self.activation {
                    // In place on the layer's fresh output, which the linear layer's backward
                    // does not read (ReLU's own backward reads its result): one allocation
                    // fewer per layer.
                    Activation::Relu => h.f_relu_()?,
                    other => other.apply(&h),
                };
            }
        }
        Ok(h)
    }

    /// The last layer, e.g. to zero it so that a residual block starts as the identity.
    pub fn last_layer_mut(&mut self) -> &mut nn::Linear {
        self.layers
            .last_mut()
            .expect("an MLP has at least one layer")
    }
}

/// A linear layer whose weight is multiplied by a fixed 0/1 mask `[out, in]`.
#[derive(Debug)]
pub struct MaskedLinear {
    pub weight: Tensor,
    pub bias: Tensor,
    mask: Tensor,
}

impl MaskedLinear {
    /// Initialised uniformly in ±1/√(connected inputs), as for an ordinary linear layer.
    pub fn new(path: &nn::Path, mask: &Tensor) -> Result<Self> {
        if mask.dim() != 2 {
            return Err(GmError::shape(
                "MaskedLinear::new",
                "a mask [out, in]",
                &mask.size(),
            ));
        }
        let (out, inp) = (mask.size()[0], mask.size()[1]);
        let fan_in = (inp as f64).max(1.0);
        let bound = 1.0 / fan_in.sqrt();
        let weight = path.var(
            "weight",
            &[out, inp],
            nn::Init::Uniform {
                lo: -bound,
                up: bound,
            },
        );
        let bias = path.var(
            "bias",
            &[out],
            nn::Init::Uniform {
                lo: -bound,
                up: bound,
            },
        );
        let mask = mask
            .f_to_kind(weight.kind())?
            .f_to_device(weight.device())?;
        Ok(MaskedLinear { weight, bias, mask })
    }

    pub fn mask(&self) -> &Tensor {
        &self.mask
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.f_linear(&self.weight.f_mul(&self.mask)?, Some(&self.bias))?)
    }
}

/// How MADE orders the input dimensions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Ordering {
    /// x₁, x₂, …, x_D.
    #[default]
    Natural,
    /// x_D, …, x₁.
    Reversed,
    /// A random permutation fixed by the seed.
    Random { seed: u64 },
}

impl Ordering {
    /// Degree of each input (1-based position in the autoregressive order).
    pub fn degrees(&self, d: i64) -> Vec<i64> {
        match self {
            Ordering::Natural => (1..=d).collect(),
            Ordering::Reversed => (1..=d).rev().collect(),
            Ordering::Random { seed } => {
                let mut v: Vec<i64> = (1..=d).collect();
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(*seed);
                v.shuffle(&mut rng);
                v
            }
        }
    }
}

/// MADE (Germain et al., 2015): an MLP whose masks make output `i` depend only on inputs that
/// come strictly before `i` in the ordering.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MadeConfig {
    pub hidden: Vec<i64>,
    /// Parameters produced per input dimension (2 for an affine transform, more for splines or mixtures).
    pub outputs_per_input: i64,
    pub ordering: Ordering,
    /// Size of an optional context vector fed, unmasked, to the first hidden layer.
    pub context_features: i64,
    pub activation: Activation,
}

impl Default for MadeConfig {
    fn default() -> Self {
        MadeConfig {
            hidden: vec![128, 128],
            outputs_per_input: 2,
            ordering: Ordering::Natural,
            context_features: 0,
            activation: Activation::Relu,
        }
    }
}

impl Config for MadeConfig {
    fn validate(&self) -> Result<()> {
        if self.hidden.is_empty() || self.hidden.iter().any(|h| *h < 1) {
            return Err(GmError::config(
                "hidden",
                "MADE needs at least one hidden layer of positive width",
            ));
        }
        if self.outputs_per_input < 1 {
            return Err(GmError::config("outputs_per_input", "must be at least 1"));
        }
        if self.context_features < 0 {
            return Err(GmError::config("context_features", "must not be negative"));
        }
        Ok(())
    }
}

/// The masks of a MADE, from degrees: a hidden unit of degree m sees inputs of degree ≤ m; an
/// output of degree d sees hidden units of degree < d.
pub fn made_masks(input_degrees: &[i64], hidden: &[i64], outputs_per_input: i64) -> Vec<Tensor> {
    let d = input_degrees.len() as i64;
    let mut prev: Vec<i64> = input_degrees.to_vec();
    let mut masks = Vec::new();
    for &h in hidden {
        let lo = prev.iter().copied().min().unwrap_or(1).min(d - 1).max(0);
        let span = (d - lo).max(1);
        let degrees: Vec<i64> = (0..h).map(|k| lo + k % span).collect();
        masks.push(mask_from(&degrees, &prev, |out, inp| out >= inp));
        prev = degrees;
    }
    let out_degrees: Vec<i64> = (0..outputs_per_input)
        .flat_map(|_| input_degrees.iter().copied())
        .collect();
    masks.push(mask_from(&out_degrees, &prev, |out, inp| out > inp));
    masks
}

fn mask_from(out_deg: &[i64], in_deg: &[i64], connect: impl Fn(i64, i64) -> bool) -> Tensor {
    let values: Vec<f32> = out_deg
        .iter()
        .flat_map(|&o| in_deg.iter().map(move |&i| (o, i)))
        .map(|(o, i)| if connect(o, i) { 1.0 } else { 0.0 })
        .collect();
    Tensor::from_slice(&values).reshape([out_deg.len() as i64, in_deg.len() as i64])
}

impl MadeConfig {
    pub fn init(&self, path: &nn::Path, features: i64) -> Result<Made> {
        self.validate()?;
        if features < 1 {
            return Err(GmError::config(
                "features",
                format!("MADE needs at least one input, got {features}"),
            ));
        }
        let degrees = self.ordering.degrees(features);
        let masks = made_masks(&degrees, &self.hidden, self.outputs_per_input);
        let layers = masks
            .iter()
            .enumerate()
            .map(|(i, m)| {
                MaskedLinear::new(&(path / format!("layer{i}")), &m.to_device(path.device()))
            })
            .collect::<Result<Vec<_>>>()?;
        let context = (self.context_features > 0).then(|| {
            nn::linear(
                path / "context",
                self.context_features,
                self.hidden[0],
                Default::default(),
            )
        });
        Ok(Made {
            layers,
            context,
            activation: self.activation,
            features,
            outputs_per_input: self.outputs_per_input,
            degrees,
        })
    }
}

/// See [`MadeConfig`].
#[derive(Debug)]
pub struct Made {
    layers: Vec<MaskedLinear>,
    context: Option<nn::Linear>,
    activation: Activation,
    features: i64,
    outputs_per_input: i64,
    degrees: Vec<i64>,
}

impl Made {
    /// Maps `[batch, D]` (and an optional context `[batch, C]`) to `[batch, outputs_per_input, D]`;
    /// `out[:, k, i]` depends only on inputs before `i` in the ordering.
    pub fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        if x.dim() != 2 || x.size()[1] != self.features {
            return Err(GmError::shape(
                "Made.forward",
                format!("[batch, {}]", self.features),
                &x.size(),
            ));
        }
        let x = to_weight_kind(x, self.layers[0].weight.kind(), "Made.forward")?;
        let mut h = self.layers[0].forward(&x)?;
        match (&self.context, context) {
            (Some(layer), Some(c)) => {
                let width = layer.ws.size()[1];
                if c.dim() != 2 || c.size()[0] != x.size()[0] || c.size()[1] != width {
                    return Err(GmError::shape(
                        "Made.forward context",
                        format!("[{}, {width}]", x.size()[0]),
                        &c.size(),
                    ));
                }
                let c = to_weight_kind(c, layer.ws.kind(), "Made.forward context")?;
                h = h.f_add(&c.f_linear(&layer.ws, layer.bs.as_ref())?)?;
            }
            (None, None) => {}
            (Some(_), None) => {
                return Err(GmError::Unsupported(
                    "this MADE was built with a context; pass one".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(GmError::Unsupported(
                    "this MADE has no context input".into(),
                ))
            }
        }
        for layer in &self.layers[1..] {
            h = layer.forward(&self.activation.apply(&h))?;
        }
        Ok(h.f_reshape([-1, self.outputs_per_input, self.features])?)
    }

    /// The degree (1-based position in the ordering) of each input.
    pub fn degrees(&self) -> &[i64] {
        &self.degrees
    }

    /// The final layer, e.g. to start an autoregressive flow at the identity.
    pub fn output_layer_mut(&mut self) -> &mut MaskedLinear {
        self.layers.last_mut().expect("MADE has an output layer")
    }
}

/// Counts the elements of the given tensors.
pub fn count_parameters<'a>(tensors: impl IntoIterator<Item = &'a Tensor>) -> i64 {
    tensors.into_iter().map(|t| t.numel() as i64).sum()
}

/// The same `[b, C, H, W]` values laid out channels-last in memory (NHWC strides, NCHW shape);
/// other ranks are returned as they are.
///
/// oneDNN, which runs libtorch's CPU convolutions, works in channels-last internally: an NCHW
/// input is reordered on the way into every convolution and its result reordered back, forward
/// and backward. A convolution stack fed channels-last keeps that layout from layer to layer
/// (convolutions, element-wise operations and group normalisation all preserve it), which
/// made a 64-channel 3×3 convolution's forward and backward 1.5× faster on the 2-core CPU the
/// speed table is measured on. Values are unchanged; only strides differ, so callers must
/// `reshape` rather than `view` the result.
pub fn channels_last(x: &Tensor) -> Result<Tensor> {
    if x.dim() != 4 {
        return Ok(x.shallow_clone());
    }
    Ok(x.f_permute([0, 2, 3, 1])?
        .f_contiguous()?
        .f_permute([0, 3, 1, 2])?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Channels-last keeps shape and values, lays channels innermost, is free on a tensor that
    /// already is, and passes gradients through unchanged; a convolution of it gives the same
    /// result as of the NCHW original and keeps the layout.
    #[test]
    fn channels_last_changes_layout_only() {
        tch::manual_seed(0);
        let x =
            Tensor::randn([2, 3, 4, 5], (Kind::Double, tch::Device::Cpu)).set_requires_grad(true);
        let y = channels_last(&x).unwrap();
        assert_eq!(y.size(), vec![2, 3, 4, 5]);
        assert_eq!(y.stride(), vec![60, 1, 15, 3]);
        assert_eq!(y.detach(), x.detach());
        let again = channels_last(&y).unwrap();
        assert_eq!(
            again.data_ptr(),
            y.data_ptr(),
            "no copy when already channels-last"
        );
        let weights = Tensor::randn([2, 3, 4, 5], (Kind::Double, tch::Device::Cpu));
        (&y * &weights).sum(Kind::Double).backward();
        assert_eq!(x.grad(), weights);
        let w = Tensor::randn([6, 3, 3, 3], (Kind::Double, tch::Device::Cpu));
        let nchw = x
            .detach()
            .conv2d(&w, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1);
        let nhwc = y
            .detach()
            .conv2d(&w, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1);
        assert!((&nchw - &nhwc).abs().max().double_value(&[]) < 1e-12);
        assert_eq!(
            nhwc.stride()[1],
            1,
            "the convolution keeps channels innermost"
        );
        let v = Tensor::randn([7], (Kind::Float, tch::Device::Cpu));
        assert_eq!(channels_last(&v).unwrap().data_ptr(), v.data_ptr());
    }
}
