//! Sanity at initialisation on real binarised digits, and the training loss against an
//! independent formula.

mod common;

use common::*;
use gm_autoregressive::{Autoregressive, AutoregressiveConfig};
use gm_core::model::{Batch, GenerativeModel};
use gm_core::tch::{Device, Kind, Tensor};

/// Untrained, every shipped model of binarised MNIST scores within 3% of the uniform model's
/// 784 ln 2 = 543.4 nats on 200 real test digits: a residual path that doubles per block, or a
/// loss on the wrong quantity, fails here rather than after a long run.
#[test]
fn untrained_models_score_near_the_uniform_model() {
    single_thread();
    let data = gm_core::data::load_named("mnist_binary", Device::Cpu, 0, 0, 0).unwrap();
    let x = data.test.x.narrow(0, 0, 200);
    let uniform = 784.0 * 2f64.ln();
    for name in [
        "nade_mnist",
        "made_mnist",
        "pixelcnn_mnist",
        "gated_pixelcnn_mnist",
    ] {
        let (c, dataset) = shipped(name);
        assert_eq!(dataset, "mnist_binary");
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
        let order = m.network().orders().len() as usize;
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
