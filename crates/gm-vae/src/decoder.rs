//! Decoders `p(x | z)`: a network whose output is a likelihood over one data example.

use crate::likelihood::{Likelihood, LikelihoodConfig, LikelihoodHead};
use crate::network::{NetworkConfig, VectorDecoder};
use gm_core::tch::{nn, Tensor};
use gm_core::{GmError, Result};

/// A network from latent vectors (and a context) to the parameters of a [`Likelihood`].
#[derive(Debug)]
pub struct Decoder {
    net: VectorDecoder,
    head: LikelihoodHead,
    inputs: i64,
    data_shape: Vec<i64>,
}

impl Decoder {
    /// Builds the network under `path` for inputs of `latent_dim + context_features` values.
    pub fn new(
        network: &NetworkConfig,
        likelihood: &LikelihoodConfig,
        path: &nn::Path,
        latent_dim: i64,
        context_features: i64,
        data_shape: &[i64],
    ) -> Result<Self> {
        let head = likelihood.init(&(path / "likelihood"), data_shape)?;
        let inputs = latent_dim + context_features;
        let net =
            network.init_vector_decoder(path, inputs, data_shape, head.params_per_element())?;
        Ok(Decoder {
            net,
            head,
            inputs,
            data_shape: data_shape.to_vec(),
        })
    }

    pub fn head(&self) -> &LikelihoodHead {
        &self.head
    }

    /// The raw decoder outputs for `v` `[...lead, latent_dim + context_features]`:
    /// `lead ++ data_shape ++ [params]`.
    pub fn params(&self, v: &Tensor) -> Result<Tensor> {
        let size = v.size();
        if size.len() < 2 || size[size.len() - 1] != self.inputs {
            return Err(GmError::shape(
                "Decoder input",
                format!("[..., batch, {}]", self.inputs),
                &size,
            ));
        }
        let lead = &size[..size.len() - 1];
        let flat = v.f_reshape([-1, self.inputs])?;
        let params = self.net.forward(&flat)?;
        let mut shape: Vec<i64> = lead.to_vec();
        shape.extend_from_slice(&self.data_shape);
        shape.push(self.head.params_per_element());
        Ok(params.f_reshape(shape.as_slice())?)
    }

    /// The likelihood for `v` `[...lead, inputs]`, with batch shape `lead`.
    pub fn likelihood(&self, v: &Tensor) -> Result<Likelihood> {
        self.head.distribution(&self.params(v)?)
    }
}
