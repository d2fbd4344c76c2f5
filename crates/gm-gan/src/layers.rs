//! The layers both players are built from: linear, convolution and transposed convolution
//! with an optional spectral normalisation (Miyato et al. 2018), and group normalisation.
//!
//! Spectral normalisation divides a weight by an estimate of its largest singular value,
//! refined by one power-iteration step per training forward pass. The estimate's vector `u`
//! is a non-trainable variable of the var store, so it is saved with the model and a resumed
//! run continues the same iteration.

use gm_core::tch::{nn, Kind, Tensor};
use gm_core::Result;

/// `x / ‖x‖` (with a floor so a zero vector stays finite).
fn normalize(x: &Tensor) -> Result<Tensor> {
    Ok(x.f_div(
        &x.f_square()?
            .f_sum(Kind::Float)?
            .f_sqrt()?
            .f_add_scalar(1e-12)?,
    )?)
}

/// The power-iteration state of one weight.
#[derive(Debug)]
pub struct SpectralNorm {
    /// The left singular vector estimate `[rows]`.
    u: Tensor,
}

impl SpectralNorm {
    /// `rows`: the weight's first dimension (output features or channels).
    pub fn new(path: &nn::Path, rows: i64) -> Result<Self> {
        let u = path.f_zeros_no_train("sn_u", &[rows])?;
        gm_core::tch::no_grad(|| -> Result<()> {
            let start = normalize(&Tensor::f_randn([rows], (Kind::Float, u.device()))?)?;
            u.shallow_clone().f_copy_(&start)?;
            Ok(())
        })?;
        Ok(SpectralNorm { u })
    }

    /// The estimate `σ = uᵀ W v` of the largest singular value of `weight` (as a `[rows, -1]`
    /// matrix), differentiable in the weight. With `update`, one power-iteration step refines
    /// `u` first (in place, outside the graph).
    pub fn sigma(&self, weight: &Tensor, update: bool) -> Result<Tensor> {
        let rows = gm_core::model::leading_dim(weight, "[rows, ...]", "SpectralNorm weight")?;
        if rows != self.u.size()[0] {
            return Err(gm_core::GmError::shape(
                "SpectralNorm weight",
                format!("[{}, ...]", self.u.size()[0]),
                &weight.size(),
            ));
        }
        let w = weight.f_reshape([rows, -1])?;
        let (u, v) = gm_core::tch::no_grad(|| -> Result<(Tensor, Tensor)> {
            let w = w.f_detach()?;
            let v = normalize(&w.f_tr()?.f_mv(&self.u)?)?;
            if update {
                let u = normalize(&w.f_mv(&v)?)?;
                self.u.shallow_clone().f_copy_(&u)?;
            }
            // Copies: later in-place updates of `u` must not touch tensors the graph saved.
            Ok((self.u.copy(), v))
        })?;
        Ok(u.f_dot(&w.f_mv(&v)?)?)
    }

    /// The current estimate of the left singular vector.
    pub fn u(&self) -> &Tensor {
        &self.u
    }
}

/// What a [`Layer`] computes with its weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    /// `x Wᵀ + b`, weight `[out, in]`.
    Linear,
    /// A 2D convolution, weight `[out, in, k, k]`.
    Conv { stride: i64, padding: i64 },
    /// A 2D transposed convolution, weight `[in, out, k, k]`.
    ConvTranspose { stride: i64, padding: i64 },
}

/// A linear or convolutional layer with a bias and optional spectral normalisation.
#[derive(Debug)]
pub struct Layer {
    weight: Tensor,
    bias: Tensor,
    kind: LayerKind,
    spectral_norm: Option<SpectralNorm>,
}

impl Layer {
    fn build(
        path: &nn::Path,
        dims: &[i64],
        fan_in: i64,
        bias: i64,
        kind: LayerKind,
        spectral_norm: bool,
    ) -> Result<Self> {
        // PyTorch's default initialisation: U(±1/√fan_in) for weight and bias.
        let bound = 1.0 / (fan_in as f64).sqrt();
        let init = nn::Init::Uniform {
            lo: -bound,
            up: bound,
        };
        let weight = path.f_var("weight", dims, init)?;
        let bias = path.f_var("bias", &[bias], init)?;
        let spectral_norm = if spectral_norm {
            Some(SpectralNorm::new(path, dims[0])?)
        } else {
            None
        };
        Ok(Layer {
            weight,
            bias,
            kind,
            spectral_norm,
        })
    }

    pub fn linear(path: &nn::Path, inputs: i64, outputs: i64, spectral_norm: bool) -> Result<Self> {
        Layer::build(
            path,
            &[outputs, inputs],
            inputs,
            outputs,
            LayerKind::Linear,
            spectral_norm,
        )
    }

    /// A `k × k` convolution.
    pub fn conv(
        path: &nn::Path,
        inputs: i64,
        outputs: i64,
        k: i64,
        stride: i64,
        padding: i64,
        spectral_norm: bool,
    ) -> Result<Self> {
        Layer::build(
            path,
            &[outputs, inputs, k, k],
            inputs * k * k,
            outputs,
            LayerKind::Conv { stride, padding },
            spectral_norm,
        )
    }

    /// A `k × k` transposed convolution.
    pub fn conv_transpose(
        path: &nn::Path,
        inputs: i64,
        outputs: i64,
        k: i64,
        stride: i64,
        padding: i64,
    ) -> Result<Self> {
        Layer::build(
            path,
            &[inputs, outputs, k, k],
            outputs * k * k,
            outputs,
            LayerKind::ConvTranspose { stride, padding },
            false,
        )
    }

    pub fn spectral_norm(&self) -> Option<&SpectralNorm> {
        self.spectral_norm.as_ref()
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// Applies the layer; `update_spectral_norm` runs one power-iteration step first (once per
    /// training forward pass of the discriminator).
    pub fn forward(&self, x: &Tensor, update_spectral_norm: bool) -> Result<Tensor> {
        let w = match &self.spectral_norm {
            Some(sn) => self
                .weight
                .f_div(&sn.sigma(&self.weight, update_spectral_norm)?)?,
            None => self.weight.shallow_clone(),
        };
        Ok(match self.kind {
            LayerKind::Linear => x.f_linear(&w, Some(&self.bias))?,
            LayerKind::Conv { stride, padding } => {
                x.f_conv2d(&w, Some(&self.bias), [stride], [padding], [1], 1)?
            }
            LayerKind::ConvTranspose { stride, padding } => {
                x.f_conv_transpose2d(&w, Some(&self.bias), [stride], [padding], [0], 1, [1])?
            }
        })
    }
}

/// Group normalisation with a learned scale and shift per channel: unlike batch
/// normalisation, it keeps examples independent and has no running statistics, so samples do
/// not depend on their batch and the weight average covers everything.
#[derive(Debug)]
pub struct GroupNorm {
    groups: i64,
    scale: Tensor,
    shift: Tensor,
}

impl GroupNorm {
    pub fn new(path: &nn::Path, channels: i64) -> Result<Self> {
        let groups = if channels % 8 == 0 { 8 } else { 1 };
        Ok(GroupNorm {
            groups,
            scale: path.f_ones("scale", &[channels])?,
            shift: path.f_zeros("shift", &[channels])?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.f_group_norm(
            self.groups,
            Some(&self.scale),
            Some(&self.shift),
            1e-5,
            false,
        )?)
    }
}

/// LeakyReLU with slope 0.2 (the DCGAN discriminator's), as `x · (x > 0 ? 1 : 0.2)`: the
/// backward pass is one multiplication by the saved factor, where `max(x, 0.2 x)` costs about
/// six kernels and a fixed-slope PReLU a reduction for the slope's unused gradient. (libtorch's
/// own `leaky_relu` takes its slope as an argument that tch does not pass: it is 0.01 there.)
pub fn leaky_relu(x: &Tensor) -> Result<Tensor> {
    // The factor as max(sign(x), 0.2): 1 above zero, 0.2 at and below it, in the input's dtype,
    // from two vectorised kernels (libtorch's CPU comparison and `where` kernels are scalar
    // loops: they took a tenth of a DCGAN step). Detached: the factor is piecewise constant.
    let mut factor = x.f_detach()?.f_sign()?;
    let _ = factor.f_clamp_min_(0.2)?;
    Ok(x.f_mul(&factor)?)
}
