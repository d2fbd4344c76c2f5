//! Bad input at gm-vae's public boundaries: errors that say what was found, never a panic,
//! never a silent NaN training, and the model's state unchanged by a refused call.

mod common;

use common::{mlp, single_thread};
use gm_core::distributions::Distribution;
use gm_core::model::{Batch, GenerativeModel, SampleOptions};
use gm_core::nn::Activation;
use gm_core::tch::{Device, Kind, Tensor};
use gm_core::testing::{assert_states_identical, error_text, state_snapshot};
use gm_core::train::Config;
use gm_vae::{
    ContextConfig, ConvNetConfig, LikelihoodConfig, NetworkConfig, Vae, VaeConfig, VqVae,
    VqVaeConfig,
};

fn small() -> VaeConfig {
    VaeConfig {
        data_shape: vec![16],
        latent_dim: 3,
        encoder: mlp(&[8]),
        decoder: mlp(&[8]),
        eval_samples: 4,
        ..Default::default()
    }
}

fn binary(n: i64) -> Tensor {
    gm_core::tch::manual_seed(9);
    Tensor::randint(2, [n, 16], (Kind::Float, Device::Cpu))
}

/// NaN, infinity, a half and a two in Bernoulli data, and an empty batch: each refused by the
/// VAE and the VQ-VAE with the weights and Adam's step count unchanged.
#[test]
fn bad_batches_are_refused_and_nothing_changes() {
    single_thread();
    gm_core::tch::manual_seed(0);
    let mut vae = Vae::new(&small(), Device::Cpu).unwrap();
    let vq_config = VqVaeConfig {
        data_shape: vec![16],
        encoder: mlp(&[8]),
        decoder: mlp(&[8]),
        num_latents: 2,
        ..Default::default()
    };
    let mut vq = VqVae::new(&vq_config, Device::Cpu).unwrap();
    let x = binary(8);
    vae.train_step(&Batch::new(x.shallow_clone())).unwrap();
    vq.train_step(&Batch::new(x.shallow_clone())).unwrap();
    for (value, needle) in [
        (f64::NAN, "NaN"),
        (f64::INFINITY, "infinite"),
        (0.5, "outside"),
        (2.0, "integers in [0, 1]"),
    ] {
        let bad = x.copy();
        let _ = bad.get(2).get(5).fill_(value);
        for model in [&mut vae as &mut dyn GenerativeModel, &mut vq] {
            let before = state_snapshot(model);
            let err = error_text(model.train_step(&Batch::new(bad.shallow_clone())));
            assert!(err.contains(needle), "{}: {value}: {err}", model.family());
            assert_states_identical(&before, &state_snapshot(model), "after a refused batch");
            if model.likelihood_kind() != gm_core::model::LikelihoodKind::None {
                assert!(error_text(model.log_likelihood(&bad)).contains(needle));
            }
            assert!(error_text(model.encode(&bad)).contains(needle));
        }
    }
    let empty = Tensor::zeros([0, 16], (Kind::Float, Device::Cpu));
    let before = state_snapshot(&vae);
    assert!(error_text(vae.train_step(&Batch::new(empty.shallow_clone()))).contains("non-empty"));
    assert_eq!(vae.steps(), 1, "Adam's step count did not move");
    assert_states_identical(&before, &state_snapshot(&vae), "after an empty batch");
    assert!(error_text(vq.train_step(&Batch::new(empty))).contains("non-empty"));
    // Grey levels for a 256-way decoder: 256 and 3.5 are outside.
    let grey = VaeConfig {
        likelihood: LikelihoodConfig::Categorical { classes: 256 },
        ..small()
    };
    let mut grey_vae = Vae::new(&grey, Device::Cpu).unwrap();
    for v in [256.0, 3.5, -1.0] {
        let x = Tensor::zeros([2, 16], (Kind::Float, Device::Cpu));
        let _ = x.get(0).get(0).fill_(v);
        assert!(error_text(grey_vae.train_step(&Batch::new(x))).contains("[0, 255]"));
    }
}

/// Latents and data of other dtypes are converted (no panic inside tch); booleans are refused.
#[test]
fn other_dtypes_are_converted_or_refused() {
    single_thread();
    gm_core::tch::manual_seed(1);
    let vae = Vae::new(&small(), Device::Cpu).unwrap();
    let z = Tensor::randn([4, 3], (Kind::Float, Device::Cpu));
    let reference = vae.decode(&z).unwrap().mean().unwrap();
    let from_double = vae
        .decode(&z.to_kind(Kind::Double))
        .unwrap()
        .mean()
        .unwrap();
    assert!(from_double.allclose(&reference, 1e-6, 1e-6, false));
    assert!(vae.decode(&z.to_kind(Kind::Int64)).is_ok());
    assert!(error_text(vae.decode(&z.to_kind(Kind::Bool))).contains("real values"));
    let x = binary(4);
    assert!(GenerativeModel::log_likelihood(&vae, &x.to_kind(Kind::Double)).is_ok());
    assert!(GenerativeModel::log_likelihood(&vae, &x.to_kind(Kind::Int64)).is_ok());
    assert!(GenerativeModel::log_likelihood(&vae, &x.to_kind(Kind::Uint8)).is_ok());
}

/// Sizes that cannot be allocated are refused before allocation, with the estimate.
#[test]
fn oversized_configs_are_refused_before_allocation() {
    single_thread();
    let wide = VaeConfig {
        encoder: mlp(&[1_000_000_000]),
        ..small()
    };
    assert!(error_text(Vae::new(&wide, Device::Cpu)).contains("parameters"));
    let deep_latent = VaeConfig {
        latent_dim: 1_000_000_000,
        ..small()
    };
    assert!(error_text(Vae::new(&deep_latent, Device::Cpu)).contains("GM_MAX_PARAMETERS"));
    let conv = VaeConfig {
        data_shape: vec![1, 28, 28],
        encoder: NetworkConfig::Conv(ConvNetConfig {
            channels: vec![100_000, 100_000],
            hidden: vec![],
            activation: Activation::Relu,
        }),
        ..small()
    };
    let err = error_text(conv.validate());
    assert!(err.contains("convolutional network would need"), "{err}");
    let codes = VqVaeConfig {
        quantizer: gm_vae::QuantizerConfig {
            num_codes: 1 << 40,
            ..Default::default()
        },
        ..Default::default()
    };
    assert!(error_text(codes.validate()).contains("the codebook would need"));
}

/// A batch whose activations would not fit is refused before the forward pass.
#[test]
fn oversized_batches_are_refused_before_running() {
    single_thread();
    let wide = VaeConfig {
        encoder: mlp(&[100_000]),
        ..small()
    };
    let mut vae = Vae::new(&wide, Device::Cpu).unwrap();
    let x = Tensor::zeros([40_000, 16], (Kind::Float, Device::Cpu));
    let err = error_text(vae.train_step(&Batch::new(x)));
    assert!(
        err.contains("activation values") && err.contains("batch_size"),
        "{err}"
    );
    assert_eq!(vae.steps(), 0);
}

/// Conditional VAEs require labels in range; unconditional ones ignore labels.
#[test]
fn labels_are_checked_or_ignored() {
    single_thread();
    gm_core::tch::manual_seed(2);
    let config = VaeConfig {
        context: ContextConfig::Labels { classes: 3 },
        ..small()
    };
    let mut vae = Vae::new(&config, Device::Cpu).unwrap();
    let x = binary(4);
    assert!(error_text(vae.train_step(&Batch::new(x.shallow_clone()))).contains("conditional"));
    let float_labels = Tensor::from_slice(&[0.0f32, 1.7, 2.0, 1.0]);
    assert!(
        error_text(vae.train_step(&Batch::with_labels(x.shallow_clone(), float_labels)))
            .contains("integers")
    );
    let soft = Tensor::full([4, 3], f64::NAN, (Kind::Float, Device::Cpu));
    assert!(
        error_text(vae.train_step(&Batch::with_labels(x.shallow_clone(), soft))).contains("NaN")
    );
    let bad = Tensor::from_slice(&[0i64, 1, 2, 3]);
    assert!(error_text(
        vae.train_step(&Batch::with_labels(x.shallow_clone(), bad.shallow_clone()))
    )
    .contains("[0, 3)"));
    assert!(error_text(vae.sample_with(4, &SampleOptions::new().labels(bad))).contains("[0, 3)"));
    assert!(error_text(vae.sample_with(0, &SampleOptions::new())).contains("at least 1"));
    let mut plain = Vae::new(&small(), Device::Cpu).unwrap();
    let labels = Tensor::from_slice(&[9i64, 9, 9, 9]);
    assert!(plain.train_step(&Batch::with_labels(x, labels)).is_ok());
}

/// Non-finite or absurd values in a VAE config are refused with the key's name.
#[test]
fn bad_vae_configs_name_the_key() {
    for (text, key) in [
        ("[optimizer]\nlr = inf", "optimizer.lr"),
        ("[optimizer]\nlr = 1e300", "optimizer.lr"),
        ("[optimizer]\neps = inf", "optimizer.eps"),
        ("[objective]\nkind = \"elbo\"\nbeta = inf", "objective.beta"),
        ("[objective]\nkind = \"elbo\"\nbeta = nan", "objective.beta"),
        ("latent_dim = 0", "latent_dim"),
        ("[likelihood]\nkind = \"bernoulli\"\nstd = 1.0", "likelihood.std"),
        ("[lr_schedule]\nkind = \"constant\"\nwarmup_steps = 5", "lr_schedule.warmup_steps"),
        ("[context]\nkind = \"none\"\nclasses = 10", "context.classes"),
        ("eval_samples = 0", "eval_samples"),
        ("[lr_schedule]\nkind = \"warmup_cosine\"\nwarmup_steps = 10\ntotal_steps = 5\nmin_ratio = 0.1", "lr_schedule.total_steps"),
    ] {
        let err = error_text(VaeConfig::from_toml_str(text));
        assert!(err.contains(key), "{text}: {err}");
    }
}

/// `decode` refuses latents of the wrong shape, a boolean dtype, non-finite values and empty
/// batches (the VAE), and code grids of the wrong shape, non-integer or out-of-range codes
/// (the VQ-VAE), with errors; a conditional VAE refuses as its `encode` does.
#[test]
fn bad_latents_are_refused() {
    single_thread();
    gm_core::tch::manual_seed(2);
    let vae = Vae::new(&small(), Device::Cpu).unwrap();
    let z = Tensor::randn([4, 3], (Kind::Float, Device::Cpu));
    assert_eq!(
        GenerativeModel::decode(&vae, &z).unwrap().unwrap().size(),
        [4, 16]
    );
    assert!(GenerativeModel::decode(&vae, &z.to_kind(Kind::Double)).is_ok());
    for (bad, needle) in [
        (
            Tensor::zeros([4, 2], (Kind::Float, Device::Cpu)),
            "expected shape",
        ),
        (
            Tensor::zeros([3], (Kind::Float, Device::Cpu)),
            "expected shape",
        ),
        (
            Tensor::zeros([2, 4, 3], (Kind::Float, Device::Cpu)),
            "expected shape",
        ),
        (
            Tensor::zeros([0, 3], (Kind::Float, Device::Cpu)),
            "non-empty",
        ),
        (z.to_kind(Kind::Bool), "real or integer"),
        (z.copy().fill_(f64::NAN), "NaN"),
        (z.copy().fill_(f64::NEG_INFINITY), "infinite"),
    ] {
        let err = error_text(GenerativeModel::decode(&vae, &bad));
        assert!(err.contains(needle), "{bad:?}: {err}");
    }
    let conditional = Vae::new(
        &VaeConfig {
            context: ContextConfig::Labels { classes: 3 },
            ..small()
        },
        Device::Cpu,
    )
    .unwrap();
    let err = error_text(GenerativeModel::decode(&conditional, &z));
    assert!(err.contains("conditional"), "{err}");

    let vq_config = VqVaeConfig {
        data_shape: vec![16],
        encoder: mlp(&[8]),
        decoder: mlp(&[8]),
        num_latents: 2,
        ..Default::default()
    };
    let vq = VqVae::new(&vq_config, Device::Cpu).unwrap();
    let codes = GenerativeModel::encode(&vq, &binary(4)).unwrap().unwrap();
    assert_eq!(codes.size(), [4, 2]);
    assert!(GenerativeModel::decode(&vq, &codes).unwrap().is_some());
    let k = vq.num_codes();
    for (bad, needle) in [
        (
            Tensor::zeros([4, 3], (Kind::Int64, Device::Cpu)),
            "expected shape",
        ),
        (
            Tensor::zeros([4], (Kind::Int64, Device::Cpu)),
            "expected shape",
        ),
        (
            Tensor::zeros([0, 2], (Kind::Int64, Device::Cpu)),
            "non-empty",
        ),
        (codes.to_kind(Kind::Float), "integers"),
        (codes.to_kind(Kind::Bool), "integers"),
        (codes.full_like(k), &format!("[0, {k})")),
        (codes.full_like(-1), "[0, "),
    ] {
        let err = error_text(GenerativeModel::decode(&vq, &bad));
        assert!(err.contains(needle), "{bad:?}: {err}");
    }
}
