//! The ELBO's pieces against independent formulas, the KL against Monte Carlo, gradients
//! through the reparameterised draws, β and warm-up, the IWAE objective, and the sanity of an
//! untrained model.

mod common;

use common::{mlp, mnist_like_binary, single_thread};
use gm_core::distributions::Distribution;
use gm_core::kl::kl_monte_carlo;
use gm_core::model::{Batch, GenerativeModel};
use gm_core::tch::{Device, Kind, Tensor};
use gm_core::testing::assert_kl_matches_monte_carlo;
use gm_vae::{Likelihood, ObjectiveConfig, Vae, VaeConfig};
use proptest::prelude::*;
use std::f64::consts::{LN_2, PI};

fn small_config(data: i64, latent: i64) -> VaeConfig {
    VaeConfig {
        data_shape: vec![data],
        latent_dim: latent,
        encoder: mlp(&[64]),
        decoder: mlp(&[64]),
        ..Default::default()
    }
}

/// Multiplies every encoder weight by `factor`, so the posterior moves well away from the
/// prior (an untrained encoder starts next to it by design).
fn spread_encoder(vae: &Vae, factor: f64) {
    for (name, mut var) in vae.var_store().variables() {
        if name.starts_with("encoder.") {
            gm_core::tch::no_grad(|| {
                let _ = var.f_mul_scalar_(factor).unwrap();
            });
        }
    }
}

fn binary_data(n: i64, d: i64, seed: i64) -> Tensor {
    gm_core::tch::manual_seed(seed);
    Tensor::rand([n, d], (Kind::Double, Device::Cpu))
        .lt(0.3)
        .to_kind(Kind::Double)
}

/// An untrained Bernoulli VAE is close to the uniform model on binarized digits: its
/// negative ELBO is within 2% of `784 ln 2 ≈ 543.4` nats (output layers start small, so the
/// decoder's logits are near 0 and the posterior is near the prior).
#[test]
fn untrained_negative_elbo_is_near_the_uniform_model() {
    single_thread();
    gm_core::tch::manual_seed(0);
    let vae = Vae::new(&VaeConfig::default(), Device::Cpu).unwrap();
    let x = mnist_like_binary(500);
    let terms = vae.net().elbo_terms(&x, 1).unwrap();
    let neg_elbo = -terms.elbo.mean(Kind::Double).double_value(&[]);
    let uniform = 784.0 * LN_2;
    eprintln!("untrained negative ELBO {neg_elbo:.2} nats; uniform model {uniform:.2}");
    assert!(
        (neg_elbo - uniform).abs() < 0.02 * uniform,
        "untrained negative ELBO {neg_elbo:.1} is not within 2% of 784 ln 2 = {uniform:.1}"
    );
    let kl = terms.kl.mean(Kind::Double).double_value(&[]);
    assert!(
        (0.0..5.0).contains(&kl),
        "untrained KL {kl} should be small and non-negative"
    );
}

/// The reconstruction term is `Σ x ln σ(l) + (1 - x) ln(1 - σ(l))` (minus the binary
/// cross-entropy) written out by hand, and the KL is
/// `½ Σ (μ² + σ² - 1 - ln σ²)`, both for the very draw the ELBO used.
#[test]
fn bernoulli_elbo_terms_match_hand_formulas() {
    single_thread();
    gm_core::tch::manual_seed(1);
    let vae = Vae::with_kind(&small_config(30, 4), Device::Cpu, Kind::Double).unwrap();
    spread_encoder(&vae, 5.0);
    let x = binary_data(16, 30, 2);
    gm_core::tch::manual_seed(77);
    let terms = vae.net().elbo_terms(&x, 1).unwrap();
    gm_core::tch::manual_seed(77);
    let posterior = vae.encode(&x).unwrap();
    let z = posterior.rsample(&[1]).unwrap();
    let logits = match vae.decode(&z).unwrap() {
        Likelihood::Bernoulli(d) => d.base().logits().detach().squeeze_dim(0),
        other => panic!("expected a Bernoulli likelihood, got {}", other.name()),
    };
    let p = (logits.neg().exp() + 1.0).reciprocal();
    let by_hand = (&x * p.log() + (x.neg() + 1.0) * (p.neg() + 1.0).log()).sum_dim_intlist(
        1,
        false,
        Kind::Double,
    );
    let err = (&terms.expected_log_likelihood - &by_hand)
        .abs()
        .max()
        .double_value(&[]);
    assert!(
        err < 1e-9,
        "reconstruction term differs from -BCE by {err:e}"
    );

    let mu = posterior.base().loc();
    let sigma = posterior.base().scale();
    let kl_by_hand = ((mu.square() + sigma.square() - 1.0 - sigma.square().log()) * 0.5)
        .sum_dim_intlist(1, false, Kind::Double);
    let err = (&terms.kl - &kl_by_hand).abs().max().double_value(&[]);
    assert!(err < 1e-9, "KL differs from its closed form by {err:e}");
    let err = (&terms.elbo - (&by_hand - &kl_by_hand))
        .abs()
        .max()
        .double_value(&[]);
    assert!(err < 1e-9, "ELBO is not reconstruction minus KL: {err:e}");
}

/// Each log-weight is `ln p(x | z) + ln N(z; 0, I) - ln N(z; μ, σ²)` with both Gaussian
/// densities written out by hand.
#[test]
fn log_weights_match_their_formula() {
    single_thread();
    gm_core::tch::manual_seed(3);
    let vae = Vae::with_kind(&small_config(12, 3), Device::Cpu, Kind::Double).unwrap();
    spread_encoder(&vae, 3.0);
    let x = binary_data(8, 12, 4);
    gm_core::tch::manual_seed(5);
    let log_w = vae.net().log_weights(&x, 6).unwrap();
    gm_core::tch::manual_seed(5);
    let posterior = vae.encode(&x).unwrap();
    let z = posterior.rsample(&[6]).unwrap();
    let log_lik = vae
        .decode(&z)
        .unwrap()
        .log_prob(&x.unsqueeze(0).expand([6, 8, 12], false))
        .unwrap();
    let gauss =
        |z: &Tensor, mu: &Tensor, sigma: &Tensor| {
            (((z - mu) / sigma).square() * -0.5 - sigma.log() - 0.5 * (2.0 * PI).ln())
                .sum_dim_intlist(-1, false, Kind::Double)
        };
    let zeros = Tensor::zeros([3], (Kind::Double, Device::Cpu));
    let ones = Tensor::ones([3], (Kind::Double, Device::Cpu));
    let by_hand = log_lik + gauss(&z, &zeros, &ones)
        - gauss(&z, posterior.base().loc(), posterior.base().scale());
    let err = (&log_w - &by_hand).abs().max().double_value(&[]);
    assert!(
        err < 1e-9,
        "log-weights differ from their formula by {err:e}"
    );
    let iwae = vae.net().iwae(&x, 6).unwrap();
    assert_eq!(iwae.size(), [8]);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    /// The closed-form KL the ELBO uses equals a Monte Carlo estimate
    /// `E_q[ln q(z|x) - ln p(z)]` within 5 standard errors, for posteriors of varied spread.
    /// Each run makes 36 such checks (6 examples × 6 cases); at 4 standard errors about 1 run in
    /// 400 would fail by chance, at 5 about 1 in 50,000, while a wrong closed form (a missing
    /// −½ per latent, a variance for a standard deviation) is off by tens of standard errors.
    #[test]
    // The spread stops at 5: from about 6 some posteriors have σ below the float64 spacing of
    // their mean, so a draw μ + σε rounds back to μ and the Monte Carlo estimate loses the −ε²/2
    // term (0.5 nats per latent): a limit of the estimator's arithmetic, not of the closed form.
    fn analytic_kl_matches_monte_carlo(seed in 0i64..1000, spread in 1.0f64..5.0) {
        single_thread();
        gm_core::tch::manual_seed(seed);
        let vae = Vae::with_kind(&small_config(10, 3), Device::Cpu, Kind::Double).unwrap();
        spread_encoder(&vae, spread);
        let x = binary_data(6, 10, seed + 1);
        let analytic = vae.net().elbo_terms(&x, 1).unwrap().kl;
        let posterior = vae.encode(&x).unwrap();
        let prior = vae.net().prior().unwrap();
        let (estimate, stderr) = kl_monte_carlo(&posterior, &prior, 20_000).unwrap();
        assert_kl_matches_monte_carlo(&analytic, &estimate, &stderr, 5.0, 1e-9);
    }
}

/// Gradients of the reconstruction term alone (no KL) reach every encoder parameter, which
/// only happens if the latent draws are reparameterised; plain draws carry none.
#[test]
fn reparameterised_draws_carry_gradients_to_the_encoder() {
    single_thread();
    gm_core::tch::manual_seed(6);
    let vae = Vae::new(&small_config(20, 4), Device::Cpu).unwrap();
    let x = binary_data(16, 20, 7).to_kind(Kind::Float);
    let terms = vae.net().elbo_terms(&x, 2).unwrap();
    terms
        .expected_log_likelihood
        .mean(Kind::Float)
        .neg()
        .backward();
    let mut checked = 0;
    for (name, var) in vae.var_store().variables() {
        if name.starts_with("encoder.") {
            let grad = var.grad();
            assert!(grad.defined(), "{name} received no gradient");
            let norm = grad.norm().double_value(&[]);
            assert!(
                norm > 0.0 && norm.is_finite(),
                "{name} gradient norm {norm}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 4, "two encoder layers, weight and bias each");
    let posterior = vae.encode(&x).unwrap();
    assert!(posterior.rsample(&[1]).unwrap().requires_grad());
    assert!(!posterior.sample(&[1]).unwrap().requires_grad());
}

/// The β-VAE loss is `reconstruction + β_t KL`, with `β_t` rising linearly over the warm-up.
#[test]
fn beta_and_kl_warmup_weight_the_kl() {
    single_thread();
    let objective = ObjectiveConfig::Elbo {
        beta: 4.0,
        kl_warmup_steps: 10,
        samples: 1,
    };
    assert!((objective.beta_at(0) - 0.4).abs() < 1e-12);
    assert!((objective.beta_at(4) - 2.0).abs() < 1e-12);
    assert!((objective.beta_at(9) - 4.0).abs() < 1e-12);
    assert!((objective.beta_at(500) - 4.0).abs() < 1e-12);
    gm_core::tch::manual_seed(8);
    let mut vae = Vae::new(
        &VaeConfig {
            objective,
            ..small_config(20, 4)
        },
        Device::Cpu,
    )
    .unwrap();
    let x = binary_data(32, 20, 9).to_kind(Kind::Float);
    for step in 0..3 {
        let out = vae.train_step(&Batch::new(x.shallow_clone())).unwrap();
        let v: std::collections::HashMap<String, f64> =
            out.to_host(step).unwrap().into_iter().collect();
        let beta = 4.0 * (step + 1) as f64 / 10.0;
        assert!(
            (v["beta"] - beta).abs() < 1e-9,
            "step {step}: β = {}",
            v["beta"]
        );
        let expected = v["reconstruction"] + beta * v["kl"];
        assert!(
            (v["loss"] - expected).abs() < 1e-3,
            "loss {} is not reconstruction + β KL = {expected}",
            v["loss"]
        );
        assert!(
            (v["elbo"] + v["reconstruction"] + v["kl"]).abs() < 1e-3,
            "the reported ELBO keeps β = 1"
        );
    }
    assert!((vae.current_beta() - 1.6).abs() < 1e-12);
}

/// The IWAE objective trains on the bound: at every step the reported IWAE bound is at least
/// the ELBO of the same draws (log-mean-exp ≥ mean), and training improves it.
#[test]
fn iwae_objective_trains_on_the_tighter_bound() {
    single_thread();
    gm_core::tch::manual_seed(10);
    let mut vae = Vae::new(
        &VaeConfig {
            objective: ObjectiveConfig::Iwae { samples: 5 },
            ..small_config(784, 8)
        },
        Device::Cpu,
    )
    .unwrap();
    let x = mnist_like_binary(64);
    let mut first = None;
    let mut last = 0.0;
    for step in 0..40 {
        let out = vae.train_step(&Batch::new(x.shallow_clone())).unwrap();
        let v: std::collections::HashMap<String, f64> =
            out.to_host(step).unwrap().into_iter().collect();
        assert!(
            v["iwae"] >= v["elbo"] - 1e-4,
            "IWAE {} < ELBO {}",
            v["iwae"],
            v["elbo"]
        );
        first.get_or_insert(v["iwae"]);
        last = v["iwae"];
    }
    let first = first.unwrap();
    assert!(
        last > first + 50.0,
        "40 steps should raise the bound clearly: {first} → {last}"
    );
}
