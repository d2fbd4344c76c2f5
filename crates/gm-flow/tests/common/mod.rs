//! Helpers shared by the gm-flow test files.
#![allow(dead_code)]

use gm_core::tch::{nn, Device, Kind, Tensor};

/// A double-precision var store, so the autograd comparisons are limited by the maths, not rounding.
pub fn double_store() -> nn::VarStore {
    let mut vs = nn::VarStore::new(Device::Cpu);
    vs.set_kind(Kind::Double);
    vs
}

/// Moves every trainable variable away from its (often identity-making) initial value, so the
/// laws are checked on a non-trivial map.
pub fn randomize(vs: &nn::VarStore, scale: f64) {
    gm_core::tch::no_grad(|| {
        for mut v in vs.trainable_variables() {
            let noise = v.randn_like() * scale;
            let _ = v.g_add_(&noise);
        }
    });
}

pub fn randn(shape: &[i64], seed: i64) -> Tensor {
    gm_core::tch::manual_seed(seed);
    Tensor::randn(shape, (Kind::Double, Device::Cpu))
}
