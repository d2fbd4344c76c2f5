//! Encoders `q(z | x)`: a network whose output is a diagonal-Gaussian posterior.

use crate::network::{NetworkConfig, VectorEncoder};
use gm_core::distributions::{Independent, Normal};
use gm_core::tch::{nn, Kind, Tensor};
use gm_core::Result;

/// A diagonal Gaussian over latent vectors: batch shape `[batch]`, event shape `[latent_dim]`.
/// It samples with the reparameterisation trick (`rsample`), so gradients reach the encoder.
pub type DiagGaussian = Independent<Normal>;

/// The prior `p(z) = N(0, I)` over `latent_dim` dimensions, written as a [`DiagGaussian`] so
/// that gm-core's closed-form `KL(DiagGaussian ‖ DiagGaussian)` applies.
pub fn standard_normal_prior(
    latent_dim: i64,
    kind: Kind,
    device: gm_core::tch::Device,
) -> Result<DiagGaussian> {
    let loc = Tensor::f_zeros([latent_dim], (kind, device))?;
    let scale = Tensor::f_ones([latent_dim], (kind, device))?;
    Independent::new(Normal::new(&loc, &scale)?, 1)
}

/// A network producing the mean and log standard deviation of `q(z | x)`.
#[derive(Debug)]
pub struct GaussianEncoder {
    net: VectorEncoder,
    latent_dim: i64,
}

impl GaussianEncoder {
    /// Builds the network under `path`: data of `data_shape`, plus `context_features` inputs
    /// for a conditional model.
    pub fn new(
        network: &NetworkConfig,
        path: &nn::Path,
        data_shape: &[i64],
        context_features: i64,
        latent_dim: i64,
    ) -> Result<Self> {
        let net =
            network.init_vector_encoder(path, data_shape, context_features, 2 * latent_dim)?;
        Ok(GaussianEncoder { net, latent_dim })
    }

    pub fn latent_dim(&self) -> i64 {
        self.latent_dim
    }

    /// The posterior for network input `[batch] ++ data_shape` (checked by the caller).
    pub fn posterior(&self, x: &Tensor, context: Option<&Tensor>) -> Result<DiagGaussian> {
        let out = self.net.forward(x, context)?;
        // One split, not two narrows: autograd joins the two halves' gradients with one
        // concatenation instead of zero-filling and adding two full-width tensors.
        let halves = out.f_split(self.latent_dim, 1)?;
        Independent::new(Normal::from_log_scale(&halves[0], &halves[1])?, 1)
    }
}
