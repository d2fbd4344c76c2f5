//! Sanity at initialisation on real binarised digits, and the training loss against an
//! independent formula.

mod common;

use common::*;
use gm_autoregressive::{Autoregressive, AutoregressiveConfig};
use gm_core::model::{Batch, GenerativeModel};
use gm_core::tch::{Device, Kind, Tensor};

/// Untrained, each of the shipped models `names` (all of data set `dataset`) scores within 3% of
/// the uniform model's NLL `uniform` on the first `n` real test examples.
fn assert_untrained_near_uniform(names: &[&str], dataset: &str, n: i64, uniform: f64) {
    let data = gm_core::data::load_named(dataset, Device::Cpu, 0, 0, 0).unwrap();
    let x = data.test.x.narrow(0, 0, n);
    for name in names {
        let (c, shipped_on) = shipped(name);
        assert_eq!(shipped_on, dataset);
        gm_core::tch::manual_seed(0);
        let m = Autoregressive::new(&c, &data.info(), Device::Cpu).unwrap();
        let nll = -m
            .log_likelihood(&x)
            .unwrap()
            .unwrap()
            .mean(Kind::Double)
            .double_value(&[]);
        assert!(
            (nll / uniform - 1.0).abs() < 0.03,
            "{name}: untrained NLL {nll:.1} nats, the uniform model's is {uniform:.1}"
        );
    }
}

/// Untrained, every shipped model of binarised MNIST scores within 3% of the uniform model's
/// 784 ln 2 = 543.4 nats on 200 real test digits: a residual path that doubles per block, or a
/// loss on the wrong quantity, fails here rather than after a long run.
#[test]
fn untrained_models_score_near_the_uniform_model() {
    single_thread();
    assert_untrained_near_uniform(
        &[
            "nade_mnist",
            "made_mnist",
            "pixelcnn_mnist",
            "gated_pixelcnn_mnist",
            "pixelrnn_mnist",
            "pixelrnn_diagonal_mnist",
            "transformer_mnist",
        ],
        "mnist_binary",
        200,
        784.0 * 2f64.ln(),
    );
}

/// The same on text and on the μ-law signal: untrained, the shipped sequence models score within
/// 3% of the uniform model's 256 ln 256 = 1419.6 nats (8 bits per value) on 100 real test windows.
#[test]
fn untrained_sequence_models_score_near_the_uniform_model() {
    single_thread();
    let uniform = 256.0 * 256f64.ln();
    assert_untrained_near_uniform(
        &["transformer_text", "lstm_text", "lstm_text_scheduled"],
        "kjv_text",
        100,
        uniform,
    );
    assert_untrained_near_uniform(&["wavenet_oscillator"], "oscillator_mulaw", 100, uniform);
}

/// The `nll` a training step reports is −(1/B) Σ_b Σ_d ln p(x_bd | x_b,<d) of the weights
/// before the step, recomputed here from the network's logits with libtorch's binary cross
/// entropy in float64; and the step's `loss` is that per value.
#[test]
fn training_loss_is_the_exact_nll() {
    single_thread();
    for (name, network) in small_networks() {
        let data = data_for(&network, 16, 2, 0);
        gm_core::tch::manual_seed(3);
        let config = AutoregressiveConfig {
            network: network.clone(),
            ..AutoregressiveConfig::default()
        };
        let mut m = Autoregressive::new(&config, &data, Device::Cpu).unwrap();
        let x = gm_core::testing::example_data(&data, 8);
        let flat = x.reshape([8, 16]).to_kind(Kind::Double);
        let order = m.network().orders().len();
        assert!(order >= 1);
        let logits = gm_core::tch::no_grad(|| {
            m.network()
                .forward(&(&flat * 2.0 - 1.0).to_kind(Kind::Float), None, 0)
                .unwrap()
        })
        .select(1, 0)
        .to_kind(Kind::Double);
        let expected = logits
            .sigmoid()
            .binary_cross_entropy::<Tensor>(&flat, None, gm_core::tch::Reduction::Sum)
            .double_value(&[])
            / 8.0;
        let out = m.train_step(&Batch::new(x)).unwrap();
        let reported = out.to_host(0).unwrap();
        let nll = reported.iter().find(|(n, _)| n == "nll").unwrap().1;
        let loss = reported.iter().find(|(n, _)| n == "loss").unwrap().1;
        assert!(
            (nll - expected).abs() < 1e-4 * expected,
            "{name}: nll {nll} vs {expected}"
        );
        assert!((loss - expected / 16.0).abs() < 1e-5, "{name}: loss {loss}");
    }
}
