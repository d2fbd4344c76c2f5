//! Criterion benches: one training step and sampling, for a 2D flow and the image flow.
//!
//! Run with `eval "$(cargo xtask env)" && cargo bench -p gm-benches --bench flow`.

use criterion::{criterion_group, criterion_main, Criterion};
use gm_core::model::{Batch, GenerativeModel};
use gm_core::tch::{Device, Kind, Tensor};
use gm_flow::{Architecture, ElementTransform, FlowConfig, FlowModel};

fn toy_configs() -> Vec<(&'static str, FlowConfig)> {
    let realnvp = FlowConfig::default();
    let maf = FlowConfig {
        architecture: Architecture::Autoregressive {
            layers: 5,
            hidden: vec![64, 64],
            transform: ElementTransform::Affine { scale_bound: 3.0 },
            inverse: false,
            actnorm: false,
        },
        ..Default::default()
    };
    let nsf = FlowConfig {
        architecture: Architecture::Coupling {
            layers: 6,
            hidden: vec![64, 64],
            transform: ElementTransform::Spline {
                bins: 8,
                tail_bound: 5.0,
            },
            actnorm: false,
        },
        ..Default::default()
    };
    vec![("realnvp", realnvp), ("maf", maf), ("nsf", nsf)]
}

fn bench_toy(c: &mut Criterion) {
    gm_core::tch::manual_seed(0);
    let x = Tensor::randn([256, 2], (Kind::Float, Device::Cpu));
    for (name, config) in toy_configs() {
        let mut model = FlowModel::new(&config, &[2], Device::Cpu).expect("model");
        let batch = Batch::new(x.shallow_clone());
        c.bench_function(&format!("flow2d/{name}/train_step_b256"), |b| {
            b.iter(|| model.train_step(&batch).expect("step"))
        });
        c.bench_function(&format!("flow2d/{name}/sample_1024"), |b| {
            b.iter(|| model.sample(1024).expect("sample"))
        });
    }
}

fn bench_image(c: &mut Criterion) {
    gm_core::tch::manual_seed(0);
    let config = gm_benches::glow();
    let mut model = FlowModel::new(&config, &[1, 28, 28], Device::Cpu).expect("model");
    let x = Tensor::randint(256, [64, 1, 28, 28], (Kind::Float, Device::Cpu));
    let batch = Batch::new(x);
    let mut group = c.benchmark_group("flow_mnist");
    group.sample_size(10);
    group.bench_function("glow_l2_k4/train_step_b64", |b| {
        b.iter(|| model.train_step(&batch).expect("step"))
    });
    group.bench_function("glow_l2_k4/sample_64", |b| {
        b.iter(|| model.sample(64).expect("sample"))
    });
    group.finish();
}

criterion_group!(benches, bench_toy, bench_image);
criterion_main!(benches);
