//! Helpers shared by the integration tests.
#![allow(dead_code)]

use gm_core::nn::{Activation, MlpConfig};
use gm_core::tch::{nn, Device, Kind, Tensor};
use gm_vae::NetworkConfig;
use std::f64::consts::PI;

/// Runs libtorch on one thread: the test tensors are small, and two threads spinning on a
/// shared two-core machine can slow a test a hundredfold when other processes need the cores.
pub fn single_thread() {
    gm_core::tch::set_num_threads(1);
}

/// Overwrites the variable `name` of `vs` with `value` (shapes must agree).
pub fn set_var(vs: &nn::VarStore, name: &str, value: &Tensor) {
    let vars = vs.variables();
    let mut var = vars
        .get(name)
        .unwrap_or_else(|| {
            let mut names: Vec<_> = vars.keys().collect();
            names.sort();
            panic!("no variable {name:?}; the store has {names:?}")
        })
        .shallow_clone();
    assert_eq!(var.size(), value.size(), "shape of {name}");
    gm_core::tch::no_grad(|| var.copy_(&value.to_kind(var.kind())));
}

/// The variable `name` of `vs`.
pub fn get_var(vs: &nn::VarStore, name: &str) -> Tensor {
    vs.variables()
        .get(name)
        .unwrap_or_else(|| panic!("no variable {name:?}"))
        .shallow_clone()
}

/// The exact pPCA marginal `ln N(x; b, W Wᵀ + σ² I)` per row of `x` `[n, d]`, in double.
pub fn ppca_log_likelihood(x: &Tensor, w: &Tensor, b: &Tensor, sigma: f64) -> Tensor {
    let x = x.to_kind(Kind::Double);
    let w = w.to_kind(Kind::Double);
    let d = x.size()[1];
    let cov = w.matmul(&w.tr()) + Tensor::eye(d, (Kind::Double, Device::Cpu)) * (sigma * sigma);
    let chol = cov.linalg_cholesky(false);
    let centred = (&x - b.to_kind(Kind::Double)).tr();
    let solved = Tensor::linalg_solve_triangular(&chol, &centred, false, true, false);
    let quad = solved.square().sum_dim_intlist(0, false, Kind::Double);
    let log_det = chol.diagonal(0, 0, 1).log().sum(Kind::Double) * 2.0;
    (quad + log_det + d as f64 * (2.0 * PI).ln()) * -0.5
}

/// Binarized MNIST digits if the data are installed, else random strokes with MNIST's ink
/// density (about 13% of pixels on), `[n, 784]`.
pub fn mnist_like_binary(n: i64) -> Tensor {
    if let Ok(mnist) = gm_core::data::mnist::Mnist::load_default() {
        return mnist.train.head(n as usize).binarized(Device::Cpu).unwrap();
    }
    gm_core::tch::manual_seed(1234);
    Tensor::rand([n, 784], (Kind::Float, Device::Cpu))
        .lt(0.13)
        .to_kind(Kind::Float)
}

/// A fresh temporary folder for one test.
pub fn tmp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("gm-vae-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Mean and standard error of a 1-D tensor.
pub fn mean_and_stderr(t: &Tensor) -> (f64, f64) {
    let t = t.to_kind(Kind::Double);
    let n = t.size()[0] as f64;
    (
        t.mean(Kind::Double).double_value(&[]),
        t.std(true).double_value(&[]) / n.sqrt(),
    )
}

/// An MLP network with ReLU activations and the given hidden widths.
pub fn mlp(hidden: &[i64]) -> NetworkConfig {
    NetworkConfig::Mlp(MlpConfig {
        hidden: hidden.to_vec(),
        activation: Activation::Relu,
    })
}
