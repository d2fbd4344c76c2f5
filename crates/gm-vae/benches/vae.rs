//! One training step and sampling for the MNIST-sized MLP and convolutional VAEs, and one
//! batch of the K = 100 importance-sampling estimate.

use criterion::{criterion_group, criterion_main, Criterion};
use gm_core::model::{Batch, GenerativeModel};
use gm_core::spec::Registry;
use gm_core::tch::{Device, Kind, Tensor};
use gm_vae::{Vae, VaeConfig};

fn model(config_name: &str) -> Vae {
    let mut registry = Registry::new();
    gm_vae::register(&mut registry);
    let name = format!("vae/{}", config_name.trim_end_matches(".toml"));
    let run = registry.load_run(&name).expect("ready config");
    let mut config: VaeConfig = run.model_config().expect("a VAE config");
    if config.data_shape.len() == 1 {
        config.data_shape = vec![784];
    }
    gm_core::tch::manual_seed(0);
    Vae::new(&config, Device::Cpu).expect("model")
}

fn binary_batch(n: i64) -> Tensor {
    gm_core::tch::manual_seed(1);
    Tensor::rand([n, 784], (Kind::Float, Device::Cpu))
        .lt(0.13)
        .to_kind(Kind::Float)
}

fn bench_vae(c: &mut Criterion) {
    let batch = Batch::new(binary_batch(128));
    for (name, file) in [("mlp", "mnist_mlp.toml"), ("conv", "mnist_conv.toml")] {
        let mut vae = model(file);
        c.bench_function(&format!("{name}_train_step_batch128"), |b| {
            b.iter(|| vae.train_step(&batch).expect("step"))
        });
        c.bench_function(&format!("{name}_sample_64"), |b| {
            b.iter(|| vae.sample(64).expect("sample"))
        });
    }
    let mut vae = model("mnist_mlp.toml");
    vae.net_mut().set_eval_samples(100).expect("K");
    let x = binary_batch(100);
    c.bench_function("mlp_log_likelihood_k100_batch100", |b| {
        b.iter(|| vae.log_likelihood(&x).expect("estimate"))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = bench_vae
}
criterion_main!(benches);
