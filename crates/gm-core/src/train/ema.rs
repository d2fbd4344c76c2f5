//! Exponential moving average of weights (Polyak averaging), used for evaluation and sampling.

use super::checkpoint::StateDict;
use crate::Result;
use tch::Tensor;

/// `shadow ← decay · shadow + (1 - decay) · param`, after each update.
#[derive(Debug)]
pub struct Ema {
    decay: f64,
    shadow: Vec<Tensor>,
}

impl Ema {
    /// Starts from a copy of the current parameters.
    pub fn new(params: &[Tensor], decay: f64) -> Result<Self> {
        super::config::check_range("ema_decay", decay, 0.0, 1.0)?;
        let shadow = tch::no_grad(|| {
            params
                .iter()
                .map(|p| Ok::<_, tch::TchError>(p.f_detach()?.copy()))
                .collect::<Result<Vec<_>, _>>()
        })?;
        Ok(Ema { decay, shadow })
    }

    pub fn decay(&self) -> f64 {
        self.decay
    }

    pub fn update(&mut self, params: &[Tensor]) -> Result<()> {
        tch::no_grad(|| -> Result<()> {
            for (s, p) in self.shadow.iter_mut().zip(params) {
                let _ = s.f_lerp_(p, 1.0 - self.decay)?;
            }
            Ok(())
        })
    }

    /// The averaged tensors, in parameter order.
    pub fn shadow(&self) -> &[Tensor] {
        &self.shadow
    }

    /// Swaps the averaged values into `params` (call again to swap back).
    pub fn swap_into(&mut self, params: &mut [Tensor]) -> Result<()> {
        tch::no_grad(|| -> Result<()> {
            for (s, p) in self.shadow.iter_mut().zip(params.iter_mut()) {
                let tmp = p.f_detach()?.copy();
                p.f_copy_(s)?;
                s.f_copy_(&tmp)?;
            }
            Ok(())
        })
    }

    pub fn state(&self, prefix: &str) -> Vec<(String, Tensor)> {
        self.shadow
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("{prefix}{i}"), s.shallow_clone()))
            .collect()
    }

    pub fn load_state(&mut self, prefix: &str, state: &mut StateDict) -> Result<()> {
        tch::no_grad(|| -> Result<()> {
            for (i, s) in self.shadow.iter_mut().enumerate() {
                let src = state.take(&format!("{prefix}{i}"), &s.size())?;
                s.f_copy_(&src)?;
            }
            Ok(())
        })
    }
}
