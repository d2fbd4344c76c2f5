//! The conditional VAE: labels or context vectors reach encoder and decoder, and the
//! label-conditional model's likelihood is the mixture over a uniform label prior.

mod common;

use common::single_thread;
use gm_core::distributions::Distribution;
use gm_core::model::{Batch, GenerativeModel, SampleOptions};
use gm_core::nn::{Activation, MlpConfig};
use gm_core::tch::{Device, Kind, Tensor};
use gm_core::GmError;
use gm_vae::{ContextConfig, NetworkConfig, Vae, VaeConfig};

fn config(context: ContextConfig) -> VaeConfig {
    let mlp = NetworkConfig::Mlp(MlpConfig {
        hidden: vec![32],
        activation: Activation::Relu,
    });
    VaeConfig {
        data_shape: vec![20],
        latent_dim: 3,
        encoder: mlp.clone(),
        decoder: mlp,
        context,
        eval_samples: 16,
        ..Default::default()
    }
}

fn data(n: i64) -> Tensor {
    gm_core::tch::manual_seed(1);
    Tensor::rand([n, 20], (Kind::Float, Device::Cpu))
        .lt(0.4)
        .to_kind(Kind::Float)
}

/// Labels are required, checked, and change what the decoder outputs; training uses the
/// batch's labels.
#[test]
fn labels_condition_encoder_and_decoder() {
    single_thread();
    gm_core::tch::manual_seed(2);
    let mut vae = Vae::new(&config(ContextConfig::Labels { classes: 4 }), Device::Cpu).unwrap();
    let x = data(8);
    let labels = Tensor::from_slice(&[0i64, 1, 2, 3, 0, 1, 2, 3]);
    assert!(matches!(vae.encode(&x), Err(GmError::Unsupported(m)) if m.contains("_with")));
    let err = vae
        .train_step(&Batch::new(x.shallow_clone()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("conditional"), "{err}");
    let bad = Tensor::from_slice(&[0i64, 1, 2, 4, 0, 1, 2, 3]);
    assert!(matches!(
        vae.encode_with(&x, Some(&bad)),
        Err(GmError::Domain(_))
    ));
    let short = Tensor::from_slice(&[0i64, 1]);
    let err = vae.encode_with(&x, Some(&short)).unwrap_err().to_string();
    assert!(
        err.contains("[8] class indices or [8, 4] one-hot rows"),
        "{err}"
    );

    for _ in 0..30 {
        vae.train_step(&Batch::with_labels(
            x.shallow_clone(),
            labels.shallow_clone(),
        ))
        .unwrap();
    }
    // One-hot rows are accepted as well as indices, with the same result.
    let one_hot = labels.one_hot(4).to_kind(Kind::Float);
    let a = vae.encode_with(&x, Some(&labels)).unwrap().mean().unwrap();
    let b = vae.encode_with(&x, Some(&one_hot)).unwrap().mean().unwrap();
    assert!(a.equal(&b));
    let z = Tensor::zeros([2, 3], (Kind::Float, Device::Cpu));
    let m0 = vae
        .decode_with(&z, Some(&Tensor::from_slice(&[0i64, 0])))
        .unwrap()
        .mean()
        .unwrap();
    let m1 = vae
        .decode_with(&z, Some(&Tensor::from_slice(&[1i64, 1])))
        .unwrap()
        .mean()
        .unwrap();
    assert!(
        (m0 - m1).abs().max().double_value(&[]) > 1e-4,
        "the decoder ignores the label"
    );
    assert_eq!(
        vae.sample(5).unwrap().size(),
        [5, 20],
        "labels are drawn uniformly"
    );
}

/// `ln p(x) = ln (1/C) Σ_y p(x | y)`: the model-interface estimate equals the log-mean-exp of
/// the per-label estimates made with the same random draws.
#[test]
fn label_marginal_likelihood_is_the_mixture_over_labels() {
    single_thread();
    gm_core::tch::manual_seed(3);
    let vae = Vae::new(&config(ContextConfig::Labels { classes: 3 }), Device::Cpu).unwrap();
    let x = data(5);
    gm_core::tch::manual_seed(4);
    let marginal = vae.log_likelihood(&x).unwrap();
    gm_core::tch::manual_seed(4);
    let per_label: Vec<Tensor> = (0..3)
        .map(|y| {
            let labels = Tensor::full([5], y, (Kind::Int64, Device::Cpu));
            vae.net().log_likelihood_k(&x, Some(&labels), 16).unwrap()
        })
        .collect();
    let by_hand = Tensor::stack(&per_label, 0).logsumexp([0i64], false) - 3f64.ln();
    assert!((marginal - by_hand).abs().max().double_value(&[]) < 1e-5);
}

/// A context vector conditions the model too; it cannot be sampled or scored without one.
#[test]
fn context_vectors_condition_the_model() {
    single_thread();
    gm_core::tch::manual_seed(5);
    let mut vae = Vae::new(&config(ContextConfig::Vector { features: 2 }), Device::Cpu).unwrap();
    let x = data(6);
    let context = Tensor::randn([6, 2], (Kind::Float, Device::Cpu));
    vae.train_step(&Batch::with_labels(
        x.shallow_clone(),
        context.shallow_clone(),
    ))
    .unwrap();
    let lw = vae.net().log_weights_with(&x, Some(&context), 4).unwrap();
    assert_eq!(lw.size(), [4, 6]);
    assert_eq!(
        vae.sample_with(6, &SampleOptions::new().context(context.shallow_clone()))
            .unwrap()
            .size(),
        [6, 20]
    );
    assert!(matches!(vae.sample(2), Err(GmError::Unsupported(_))));
    assert!(matches!(
        vae.log_likelihood(&x),
        Err(GmError::Unsupported(_))
    ));
    let err = vae
        .encode_with(&x, Some(&Tensor::zeros([6, 3], (Kind::Float, Device::Cpu))))
        .unwrap_err();
    assert!(
        matches!(err, GmError::Shape { ref expected, .. } if expected == "[6, 2]"),
        "{err}"
    );
}
