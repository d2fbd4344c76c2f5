//! The vector quantizer and the VQ-VAE: nearest codes, straight-through gradients, the EMA
//! codebook update on a hand-computed example, restarts, perplexity and the code-prior seam.

mod common;

use common::{set_var, single_thread};
use gm_core::distributions::Distribution;
use gm_core::model::{Batch, GenerativeModel, LikelihoodKind};
use gm_core::nn::{Activation, MlpConfig};
use gm_core::tch::{nn, Device, Kind, Tensor};
use gm_core::GmError;
use gm_vae::{
    CodebookUpdate, ConvNetConfig, NetworkConfig, QuantizerConfig, UniformCodePrior, VqVae,
    VqVaeConfig,
};

fn double_store() -> nn::VarStore {
    let mut vs = nn::VarStore::new(Device::Cpu);
    vs.set_kind(Kind::Double);
    vs
}

fn rows(values: &[[f64; 2]]) -> Tensor {
    let flat: Vec<f64> = values.iter().flatten().copied().collect();
    Tensor::from_slice(&flat).reshape([values.len() as i64, 2])
}

fn small_vq_config(update: CodebookUpdate) -> VqVaeConfig {
    VqVaeConfig {
        data_shape: vec![36],
        encoder: NetworkConfig::Mlp(MlpConfig {
            hidden: vec![32],
            activation: Activation::Relu,
        }),
        decoder: NetworkConfig::Mlp(MlpConfig {
            hidden: vec![32],
            activation: Activation::Relu,
        }),
        num_latents: 3,
        quantizer: QuantizerConfig {
            num_codes: 8,
            code_dim: 4,
            update,
            ..Default::default()
        },
        ..Default::default()
    }
}

fn binary_data(n: i64, d: i64, seed: i64) -> Tensor {
    gm_core::tch::manual_seed(seed);
    Tensor::rand([n, d], (Kind::Float, Device::Cpu))
        .lt(0.3)
        .to_kind(Kind::Float)
}

/// Two codes `e₀ = (0, 0)`, `e₁ = (4, 4)` with counts `N = (1, 1)` and sums `m = e`; decay
/// `γ = 0.5`, `ε = 0.1`; vectors `(1, 0)`, `(0, 1)` (nearest `e₀`) and `(5, 4)` (nearest `e₁`).
///
/// By hand: `n = (2, 1)`, so `N = ½(1, 1) + ½(2, 1) = (1.5, 1)`;
/// `m₀ = ½(0, 0) + ½(1, 1) = (0.5, 0.5)`, `m₁ = ½(4, 4) + ½(5, 4) = (4.5, 4)`;
/// `Σ N = 2.5`, `Ñ = (N + 0.1) / (2.5 + 0.2) · 2.5 = (1.6, 1.1) · 2.5 / 2.7`;
/// `e₀ = m₀ / Ñ₀ = (0.3375, 0.3375)`, `e₁ = m₁ / Ñ₁ = (4.5, 4) · 2.7 / 2.75`.
#[test]
fn ema_update_matches_the_hand_computed_example() {
    single_thread();
    let vs = double_store();
    let config = QuantizerConfig {
        num_codes: 2,
        code_dim: 2,
        commitment_cost: 0.25,
        update: CodebookUpdate::Ema {
            decay: 0.5,
            epsilon: 0.1,
        },
        dead_code_threshold: 0.0,
    };
    let mut q = config.init(&vs.root()).unwrap();
    set_var(&vs, "codebook", &rows(&[[0.0, 0.0], [4.0, 4.0]]));
    set_var(&vs, "embed_sum", &rows(&[[0.0, 0.0], [4.0, 4.0]]));
    set_var(&vs, "cluster_size", &Tensor::from_slice(&[1.0f64, 1.0]));
    let z = rows(&[[1.0, 0.0], [0.0, 1.0], [5.0, 4.0]]);
    let codes = q.nearest_codes(&z).unwrap();
    assert_eq!(Vec::<i64>::try_from(&codes).unwrap(), vec![0, 0, 1]);
    q.ema_update(&z, &codes).unwrap();

    let n_tilde: [f64; 2] = [1.6 * 2.5 / 2.7, 1.1 * 2.5 / 2.7];
    let expected_codebook: [f64; 4] = [
        0.5 / n_tilde[0],
        0.5 / n_tilde[0],
        4.5 / n_tilde[1],
        4.0 / n_tilde[1],
    ];
    assert!((expected_codebook[0] - 0.3375).abs() < 1e-12);
    let check = |t: &Tensor, expected: &[f64], what: &str| {
        let got = Vec::<f64>::try_from(&t.reshape([-1])).unwrap();
        for (g, e) in got.iter().zip(expected) {
            assert!((g - e).abs() < 1e-12, "{what}: {got:?} vs {expected:?}");
        }
    };
    check(q.cluster_size(), &[1.5, 1.0], "counts N");
    check(q.embed_sum(), &[0.5, 0.5, 4.5, 4.0], "sums m");
    check(q.codebook(), &expected_codebook, "codebook e");
}

/// Nearest codes agree with a brute-force search, and `lookup` returns those codes' vectors.
#[test]
fn nearest_codes_match_brute_force() {
    single_thread();
    gm_core::tch::manual_seed(1);
    let vs = double_store();
    let q = QuantizerConfig {
        num_codes: 10,
        code_dim: 3,
        ..Default::default()
    }
    .init(&vs.root())
    .unwrap();
    let z = Tensor::randn([4, 5, 3], (Kind::Double, Device::Cpu));
    let codes = q.nearest_codes(&z).unwrap();
    assert_eq!(codes.size(), [4, 5]);
    let distances =
        (z.unsqueeze(-2) - q.codebook())
            .square()
            .sum_dim_intlist(-1, false, Kind::Double);
    assert!(codes.equal(&distances.argmin(-1, false)));
    let chosen = q.lookup(&codes).unwrap();
    let direct = (z.unsqueeze(-2) - q.codebook())
        .square()
        .sum_dim_intlist(-1, false, Kind::Double)
        .min_dim(-1, false)
        .0;
    let err = ((&z - &chosen)
        .square()
        .sum_dim_intlist(-1, false, Kind::Double)
        - direct)
        .abs()
        .max()
        .double_value(&[]);
    assert!(err < 1e-12);
    assert!(
        q.lookup(&Tensor::from_slice(&[10i64])).is_err(),
        "code 10 of 10 is out of range"
    );
}

/// Straight-through: the quantized output equals the chosen codes, and the gradient of any
/// function of it passes to the encoder output unchanged; the commitment loss is
/// `β · mean_batch Σ ‖z_e - e‖²`, and with a gradient-trained codebook the codebook loss
/// reaches only the codebook.
#[test]
fn straight_through_gradients_and_losses() {
    single_thread();
    gm_core::tch::manual_seed(2);
    let vs = double_store();
    let q = QuantizerConfig {
        num_codes: 6,
        code_dim: 2,
        commitment_cost: 0.25,
        update: CodebookUpdate::Gradient,
        dead_code_threshold: 0.0,
    }
    .init(&vs.root())
    .unwrap();
    let z_e = Tensor::randn([3, 4, 2], (Kind::Double, Device::Cpu)).set_requires_grad(true);
    let out = q.quantize(&z_e).unwrap();
    let chosen = q.lookup(&out.codes).unwrap();
    assert!((&out.quantized - &chosen).abs().max().double_value(&[]) < 1e-12);
    let weights = Tensor::randn([3, 4, 2], (Kind::Double, Device::Cpu));
    (&out.quantized * &weights).sum(Kind::Double).backward();
    assert!(
        (z_e.grad() - &weights).abs().max().double_value(&[]) < 1e-12,
        "the straight-through gradient is the identity"
    );
    let by_hand = (&z_e - &chosen)
        .square()
        .sum_dim_intlist(&[1i64, 2][..], false, Kind::Double)
        .mean(Kind::Double)
        * 0.25;
    assert!((&out.commitment_loss - by_hand).abs().double_value(&[]) < 1e-12);

    let codebook = q.codebook().shallow_clone();
    let mut z2 = z_e.detach().set_requires_grad(true);
    let out = q.quantize(&z2).unwrap();
    out.codebook_loss.backward();
    assert!(codebook.grad().abs().sum(Kind::Double).double_value(&[]) > 0.0);
    assert!(
        !z2.grad().defined() || z2.grad().abs().sum(Kind::Double).double_value(&[]) == 0.0,
        "the codebook loss must not move the encoder"
    );
    z2.zero_grad();
}

/// Through a whole VQ-VAE, the reconstruction loss alone gives every encoder parameter a
/// gradient: the straight-through estimator connects decoder and encoder.
#[test]
fn reconstruction_gradients_reach_the_encoder() {
    single_thread();
    gm_core::tch::manual_seed(3);
    let vq = VqVae::new(&small_vq_config(CodebookUpdate::default()), Device::Cpu).unwrap();
    let x = binary_data(16, 36, 4);
    let out = vq.forward(&x).unwrap();
    out.likelihood
        .log_prob(&x)
        .unwrap()
        .mean(Kind::Float)
        .neg()
        .backward();
    let mut checked = 0;
    for (name, var) in vq.var_store().variables() {
        if name.starts_with("encoder.") {
            let g = var.grad();
            assert!(
                g.defined() && g.abs().sum(Kind::Float).double_value(&[]) > 0.0,
                "{name} has no gradient"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 4);
}

/// Perplexity is `exp(H)` of the code frequencies: 2 for two equally used codes, `K` for all.
#[test]
fn perplexity_counts_codes_in_use() {
    single_thread();
    let vs = double_store();
    let q = QuantizerConfig {
        num_codes: 4,
        code_dim: 2,
        ..Default::default()
    }
    .init(&vs.root())
    .unwrap();
    let two = q.perplexity(&Tensor::from_slice(&[0i64, 0, 3, 3])).unwrap();
    assert!((two.double_value(&[]) - 2.0).abs() < 1e-6);
    let all = q.perplexity(&Tensor::from_slice(&[0i64, 1, 2, 3])).unwrap();
    assert!((all.double_value(&[]) - 4.0).abs() < 1e-6);
}

/// A code whose usage fell below the threshold restarts at one of the batch's vectors with a
/// fresh count of twice the threshold; live codes are untouched.
#[test]
fn dead_codes_restart_at_encoder_vectors() {
    single_thread();
    gm_core::tch::manual_seed(5);
    let vs = double_store();
    let mut q = QuantizerConfig {
        num_codes: 3,
        code_dim: 2,
        dead_code_threshold: 0.5,
        ..Default::default()
    }
    .init(&vs.root())
    .unwrap();
    set_var(
        &vs,
        "cluster_size",
        &Tensor::from_slice(&[5.0f64, 0.1, 2.0]),
    );
    let before = q.codebook().copy();
    let z = rows(&[[10.0, 10.0], [20.0, 20.0], [30.0, 30.0]]);
    let restarted = q.restart_dead_codes(&z).unwrap();
    assert_eq!(restarted.int64_value(&[]), 1);
    let after = q.codebook();
    assert!(after.get(0).equal(&before.get(0)) && after.get(2).equal(&before.get(2)));
    let new = Vec::<f64>::try_from(&after.get(1)).unwrap();
    assert!(
        [10.0, 20.0, 30.0].contains(&new[0]) && new[0] == new[1],
        "restarted at {new:?}"
    );
    assert_eq!(
        Vec::<f64>::try_from(q.cluster_size()).unwrap(),
        vec![5.0, 1.0, 2.0]
    );
    let sums = Vec::<f64>::try_from(&q.embed_sum().get(1)).unwrap();
    assert_eq!(
        sums,
        vec![new[0], new[1]],
        "m = e · N keeps the code where it was put"
    );
}

/// Without a prior a VQ-VAE cannot sample and reports no likelihood; with the uniform prior
/// its bound is `ln p(x | z_q) - |grid| ln K` and samples have the data shape.
#[test]
fn code_prior_seam() {
    single_thread();
    gm_core::tch::manual_seed(6);
    let mut vq = VqVae::new(&small_vq_config(CodebookUpdate::default()), Device::Cpu).unwrap();
    let x = binary_data(5, 36, 7);
    assert!(matches!(vq.sample(2), Err(GmError::Unsupported(m)) if m.contains("set_prior")));
    assert!(
        matches!(vq.train_prior_step(&x), Err(GmError::Unsupported(m)) if m.contains("set_prior"))
    );
    assert_eq!(vq.likelihood_kind(), LikelihoodKind::None);
    assert!(vq.log_likelihood(&x).unwrap().is_none());

    let wrong = UniformCodePrior::new(&[4], 8, Device::Cpu);
    let err = vq.set_prior(Box::new(wrong)).unwrap_err().to_string();
    assert!(err.contains("prior") && err.contains("[3]"), "{err}");
    vq.set_prior(Box::new(UniformCodePrior::new(&[3], 8, Device::Cpu)))
        .unwrap();
    assert_eq!(vq.likelihood_kind(), LikelihoodKind::LowerBound);
    // A fixed prior has nothing to train, and says so; the VQ-VAE's own steps are untouched.
    assert!(
        matches!(vq.train_prior_step(&x), Err(GmError::Unsupported(m)) if m.contains("nothing to train"))
    );
    assert_eq!(vq.steps(), 0);
    let bound = vq.log_likelihood(&x).unwrap().unwrap();
    let reconstruction = vq.reconstruction_log_likelihood(&x).unwrap();
    let expected = reconstruction - 3.0 * 8f64.ln();
    assert!((bound - expected).abs().max().double_value(&[]) < 1e-4);
    assert_eq!(vq.sample(4).unwrap().size(), [4, 36]);
    let codes = GenerativeModel::encode(&vq, &x).unwrap().unwrap();
    assert_eq!(codes.size(), [5, 3]);
    assert_eq!(codes.kind(), Kind::Int64);
    assert!(vq.take_prior().is_some());
}

/// A convolutional VQ-VAE has a 7×7 grid of codes for 28×28 images, and a few training steps
/// with each codebook update lower the reconstruction loss with several codes in use.
#[test]
fn vq_vae_trains_with_both_codebook_updates() {
    single_thread();
    let conv = VqVaeConfig {
        encoder: NetworkConfig::Conv(ConvNetConfig {
            channels: vec![8, 8],
            hidden: vec![],
            activation: Activation::Relu,
        }),
        decoder: NetworkConfig::Conv(ConvNetConfig {
            channels: vec![8, 8],
            hidden: vec![],
            activation: Activation::Relu,
        }),
        ..Default::default()
    };
    let vq = VqVae::new(&conv, Device::Cpu).unwrap();
    assert_eq!(vq.code_grid(), [7, 7]);
    let x = common::mnist_like_binary(8);
    assert_eq!(vq.reconstruct(&x).unwrap().size(), [8, 784]);

    for update in [CodebookUpdate::default(), CodebookUpdate::Gradient] {
        gm_core::tch::manual_seed(8);
        let mut vq = VqVae::new(
            &VqVaeConfig {
                optimizer: gm_core::train::AdamConfig {
                    lr: 3e-3,
                    ..Default::default()
                },
                ..small_vq_config(update.clone())
            },
            Device::Cpu,
        )
        .unwrap();
        let x = binary_data(64, 36, 9);
        let mut losses = Vec::new();
        let mut perplexity = 0.0;
        for step in 0..60 {
            let out = vq.train_step(&Batch::new(x.shallow_clone())).unwrap();
            let v: std::collections::HashMap<String, f64> =
                out.to_host(step).unwrap().into_iter().collect();
            losses.push(v["reconstruction"]);
            perplexity = v["perplexity"];
        }
        assert!(
            losses[59] < losses[0] - 1.0,
            "{update:?}: reconstruction {} → {}",
            losses[0],
            losses[59]
        );
        assert!(
            perplexity > 1.5,
            "{update:?}: only {perplexity} codes in use"
        );
    }
}

/// `decode` of a code grid is the mean of `p(x | codes)`, so `decode(encode(x))` is
/// `VqVae::reconstruct(x)`: `x`'s shape, in the Bernoulli data range [0, 1]; codes of any
/// integer dtype decode alike.
#[test]
fn decode_of_the_codes_is_the_mean_reconstruction() {
    single_thread();
    gm_core::tch::manual_seed(8);
    let vq = VqVae::new(&small_vq_config(CodebookUpdate::default()), Device::Cpu).unwrap();
    let x = binary_data(5, 36, 9);
    let codes = GenerativeModel::encode(&vq, &x).unwrap().unwrap();
    let back = GenerativeModel::decode(&vq, &codes).unwrap().unwrap();
    assert_eq!(back.size(), x.size());
    assert!(back.allclose(&vq.reconstruct(&x).unwrap(), 1e-6, 1e-6, false));
    let (lo, hi) = (back.min().double_value(&[]), back.max().double_value(&[]));
    assert!(lo >= 0.0 && hi <= 1.0, "decoded values in [{lo}, {hi}]");
    let from_int32 = GenerativeModel::decode(&vq, &codes.to_kind(Kind::Int))
        .unwrap()
        .unwrap();
    assert!(from_int32.equal(&back));
}
