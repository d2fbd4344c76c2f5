//! gm-core hot paths: one Adam step over a mid-sized parameter set, clipping, and log-densities.
//!
//! Run with `eval "$(cargo xtask env)" && cargo bench -p gm-benches --bench core`.

use criterion::{criterion_group, criterion_main, Criterion};
use gm_core::distributions::{Distribution, Independent, MixtureOfDiagNormals, Normal};
use gm_core::tch::{Device, Kind, Tensor};
use gm_core::train::{clip_grad_norm, Adam, AdamConfig};

fn bench_optimizer(c: &mut Criterion) {
    gm_core::tch::manual_seed(0);
    // Two 784×256 layers and biases: the size of a small MNIST MLP.
    let params: Vec<Tensor> = [vec![256, 784], vec![256], vec![784, 256], vec![784]]
        .iter()
        .map(|s| Tensor::randn(s.as_slice(), (Kind::Float, Device::Cpu)).set_requires_grad(true))
        .collect();
    let loss = || {
        params
            .iter()
            .map(|p| p.square().sum(Kind::Float))
            .fold(Tensor::from(0.0f32), |a, b| a + b)
    };
    let mut adam = Adam::new(
        params.iter().map(|p| p.shallow_clone()).collect(),
        AdamConfig::default(),
    )
    .expect("adam");
    c.bench_function("core/adam_backward_step_400k_params", |b| {
        b.iter(|| adam.backward_step(&loss(), 1e-3).expect("step"))
    });
    loss().backward();
    c.bench_function("core/clip_grad_norm_400k_params", |b| {
        b.iter(|| clip_grad_norm(&params, 1.0).expect("clip"))
    });
}

fn bench_log_prob(c: &mut Criterion) {
    let x = Tensor::randn([4096, 32], (Kind::Float, Device::Cpu));
    let normal = Independent::new(
        Normal::new(&x.zeros_like(), &x.ones_like()).expect("normal"),
        1,
    )
    .expect("ind");
    c.bench_function("core/diag_normal_log_prob_4096x32", |b| {
        b.iter(|| normal.log_prob(&x).expect("lp"))
    });
    let mix = MixtureOfDiagNormals::new(
        &Tensor::zeros([16], (Kind::Float, Device::Cpu)),
        &Tensor::randn([16, 32], (Kind::Float, Device::Cpu)),
        &Tensor::ones([16, 32], (Kind::Float, Device::Cpu)),
    )
    .expect("mixture");
    c.bench_function("core/mixture16_log_prob_4096x32", |b| {
        b.iter(|| mix.log_prob(&x).expect("lp"))
    });
}

criterion_group!(benches, bench_optimizer, bench_log_prob);
criterion_main!(benches);
