//! Cached against uncached sampling at T = 784: the shipped `transformer_mnist` (binarised
//! digits as 784-step sequences) drawing one digit with its key/value cache (one position per
//! step) and with one full pass over the whole sequence per value; and the shipped
//! `wavenet_oscillator` drawing one 256-value window with its activation queues and with full
//! passes.
//!
//! `cargo bench -p gm-autoregressive --bench sampling` (after `eval "$(cargo xtask env)"`).

use criterion::{criterion_group, criterion_main, Criterion};
use gm_autoregressive::network::sample_by_full_passes;
use gm_autoregressive::{Autoregressive, AutoregressiveConfig};
use gm_core::model::SampleOptions;
use gm_core::spec::Registry;
use gm_core::tch::{Device, Tensor};

fn shipped(name: &str) -> (Autoregressive, i64) {
    let mut registry = Registry::new();
    gm_autoregressive::register(&mut registry);
    let run = registry
        .load_run(&format!("autoregressive/{name}"))
        .expect("shipped config");
    let config: AutoregressiveConfig = run.model_config().expect("an autoregressive config");
    let info = gm_core::data::named_info(&run.dataset).expect("data set");
    gm_core::tch::manual_seed(0);
    let m = Autoregressive::new(&config, &info, Device::Cpu).expect("model");
    (m, info.elements())
}

fn bench_sampling(c: &mut Criterion) {
    for (name, length) in [("transformer_mnist", 784), ("wavenet_oscillator", 256)] {
        bench_model(c, name, length);
    }
}

fn bench_model(c: &mut Criterion, name: &str, length: i64) {
    let (m, d) = shipped(name);
    assert_eq!(d, length);
    let output = m.output();
    let options = SampleOptions::default();
    let encode = |v: &Tensor| output.encode(&v.unsqueeze(1)).map(|e| e.squeeze_dim(1));
    let net = m.network();
    let mut group = c.benchmark_group(format!("{name}_sample_1_T{length}"));
    group.sample_size(10);
    group.bench_function("cached", |b| {
        b.iter(|| {
            let mut draw = |p: &Tensor, _: i64| output.sample(p, &options);
            gm_core::tch::no_grad(|| {
                net.sample_sequential(1, None, 0, Device::Cpu, &mut draw, &encode)
            })
            .expect("sample")
        })
    });
    group.bench_function("full_pass_per_value", |b| {
        b.iter(|| {
            let mut draw = |p: &Tensor, _: i64| output.sample(p, &options);
            gm_core::tch::no_grad(|| {
                sample_by_full_passes(net, 1, None, 0, Device::Cpu, &mut draw, &encode)
            })
            .expect("sample")
        })
    });
    group.finish();
}

criterion_group!(benches, bench_sampling);
criterion_main!(benches);
