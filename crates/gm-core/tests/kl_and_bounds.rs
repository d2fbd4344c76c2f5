//! KL laws and agreement with Monte Carlo; ELBO ≤ IWAE_K ≤ ln p(x) on a model with a known marginal.

use gm_core::bounds::*;
use gm_core::distributions::*;
use gm_core::kl::*;
use gm_core::testing::*;
use proptest::prelude::*;
use tch::{Device, Kind, Tensor};

fn dt(v: &[f64]) -> Tensor {
    Tensor::from_slice(v).to_kind(Kind::Double)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn normal_kl_laws_and_monte_carlo(m1 in prop::collection::vec(-2.0f64..2.0, 3), m2 in prop::collection::vec(-2.0f64..2.0, 3),
                                      s1 in prop::collection::vec(0.3f64..2.0, 3), s2 in prop::collection::vec(0.3f64..2.0, 3), seed in 0i64..1000) {
        tch::manual_seed(seed);
        let p = Normal::new(&dt(&m1), &dt(&s1)).unwrap();
        let q = Normal::new(&dt(&m2), &dt(&s2)).unwrap();
        let kl = p.kl_divergence(&q).unwrap();
        assert_kl_laws(&kl, &p.kl_divergence(&p).unwrap(), 1e-12);
        let (est, se) = kl_monte_carlo(&p, &q, 40_000).unwrap();
        assert_kl_matches_monte_carlo(&kl, &est, &se, 5.0, 1e-9);
        // Independent sums the per-dimension KL.
        let pi = Independent::new(Normal::new(&dt(&m1), &dt(&s1)).unwrap(), 1).unwrap();
        let qi = Independent::new(Normal::new(&dt(&m2), &dt(&s2)).unwrap(), 1).unwrap();
        assert_close(&pi.kl_divergence(&qi).unwrap(), &kl.sum(Kind::Double), 1e-12, "Independent KL");
    }

    /// The standard-normal pair against the general pair with a prior of zeros and ones (a
    /// different formula: variance ratio and its logarithm), in value and in gradient for both
    /// ways of building the posterior, and against Monte Carlo.
    #[test]
    fn kl_to_standard_normal_matches_the_general_pair(m in prop::collection::vec(-3.0f64..3.0, 6),
                                                       s in prop::collection::vec(-2.0f64..1.5, 6), seed in 0i64..1000) {
        tch::manual_seed(seed);
        let loc = dt(&m).reshape([2, 3]).set_requires_grad(true);
        let log_scale = dt(&s).reshape([2, 3]).set_requires_grad(true);
        let prior = StandardNormal::new(&[3], Device::Cpu).with_kind(Kind::Double);
        let p = Independent::new(Normal::from_log_scale(&loc, &log_scale).unwrap(), 1).unwrap();
        let kl = p.kl_divergence(&prior).unwrap();
        let general_prior = Independent::new(
            Normal::new(&Tensor::zeros([3], (Kind::Double, Device::Cpu)), &Tensor::ones([3], (Kind::Double, Device::Cpu))).unwrap(), 1).unwrap();
        let general = p.kl_divergence(&general_prior).unwrap();
        assert_close(&kl, &general, 1e-12, "KL to N(0, I)");
        let grads = Tensor::run_backward(&[kl.sum(Kind::Double)], &[&loc, &log_scale], true, false);
        let general_grads = Tensor::run_backward(&[general.sum(Kind::Double)], &[&loc, &log_scale], false, false);
        for (g, want) in grads.iter().zip(&general_grads) {
            assert_close(g, want, 1e-12, "gradient of the KL to N(0, I)");
        }
        // Built from the scale (no kept log-scale), the same value.
        let from_scale = Independent::new(Normal::new(&loc, &log_scale.exp()).unwrap(), 1).unwrap();
        assert_close(&from_scale.kl_divergence(&prior).unwrap(), &kl, 1e-12, "KL to N(0, I) from the scale");
        let (est, se) = kl_monte_carlo(&p, &prior, 40_000).unwrap();
        assert_kl_matches_monte_carlo(&kl.detach(), &est, &se, 5.0, 1e-9);
    }

    #[test]
    fn bernoulli_kl_laws_and_monte_carlo(a in prop::collection::vec(-6.0f64..6.0, 4), b in prop::collection::vec(-6.0f64..6.0, 4), seed in 0i64..1000) {
        tch::manual_seed(seed);
        let p = Bernoulli::new(&dt(&a));
        let q = Bernoulli::new(&dt(&b));
        let kl = p.kl_divergence(&q).unwrap();
        assert_kl_laws(&kl, &p.kl_divergence(&p).unwrap(), 1e-12);
        let (est, se) = kl_monte_carlo(&p, &q, 40_000).unwrap();
        assert_kl_matches_monte_carlo(&kl, &est, &se, 5.0, 1e-9);
    }

    #[test]
    fn categorical_kl_laws_and_monte_carlo(a in prop::collection::vec(-4.0f64..4.0, 5), b in prop::collection::vec(-4.0f64..4.0, 5), seed in 0i64..1000) {
        tch::manual_seed(seed);
        let p = Categorical::new(&dt(&a)).unwrap();
        let q = Categorical::new(&dt(&b)).unwrap();
        let kl = p.kl_divergence(&q).unwrap();
        assert_kl_laws(&kl, &p.kl_divergence(&p).unwrap(), 1e-12);
        let (est, se) = kl_monte_carlo(&p, &q, 40_000).unwrap();
        assert_kl_matches_monte_carlo(&kl, &est, &se, 5.0, 1e-9);
    }
}

#[test]
fn extreme_bernoulli_kl_is_finite() {
    let p = Bernoulli::new(&Tensor::from_slice(&[-200.0f32, 200.0, 0.0]));
    let q = Bernoulli::new(&Tensor::from_slice(&[200.0f32, -200.0, 50.0]));
    let kl = p.kl_divergence(&q).unwrap();
    assert_eq!(kl.isfinite().all().int64_value(&[]), 1, "{kl}");
    assert!(kl.min().double_value(&[]) >= 0.0);
}

/// KL between mixtures has no closed form; the Monte Carlo estimate handles it, and is zero on
/// identical mixtures.
#[test]
fn monte_carlo_kl_for_mixtures() {
    tch::manual_seed(5);
    let p = MixtureOfDiagNormals::new(
        &dt(&[0.0, 0.5]),
        &dt(&[-1.0, 1.0]).reshape([2, 1]),
        &dt(&[0.5, 0.5]).reshape([2, 1]),
    )
    .unwrap();
    let q = MixtureOfDiagNormals::new(
        &dt(&[0.0, 0.5]),
        &dt(&[-1.0, 1.0]).reshape([2, 1]),
        &dt(&[0.5, 0.5]).reshape([2, 1]),
    )
    .unwrap();
    let (est, _) = kl_monte_carlo(&p, &q, 1000).unwrap();
    assert!(est.abs().double_value(&[]) < 1e-12);
    assert!(kl_monte_carlo(&p, &q, 1).is_err());
}

/// Linear-Gaussian model: z ~ N(0, 1), x | z ~ N(a z, s²). Then p(x) = N(0, a² + s²) exactly, and
/// the true posterior is Gaussian. A deliberately imperfect proposal q(z | x) gives a strict ELBO gap.
fn log_weights(x: f64, k: i64, a: f64, s: f64) -> (Tensor, f64) {
    let q = Normal::new(&dt(&[0.3 * x]), &dt(&[1.2])).unwrap();
    let z = q.sample(&[k]).unwrap(); // [k, 1]
    let prior = Normal::new(&dt(&[0.0]), &dt(&[1.0])).unwrap();
    let lik = Normal::new(
        &(&z * a),
        &Tensor::full([k, 1], s, (Kind::Double, Device::Cpu)),
    )
    .unwrap();
    let lw = lik.log_prob(&dt(&[x]).expand([k, 1], false)).unwrap() + prior.log_prob(&z).unwrap()
        - q.log_prob(&z).unwrap();
    let var = a * a + s * s;
    let log_px = -0.5 * x * x / var - 0.5 * (2.0 * std::f64::consts::PI * var).ln();
    (lw, log_px)
}

#[test]
fn iwae_with_one_sample_is_the_elbo() {
    tch::manual_seed(1);
    let lw = Tensor::randn([1, 10], (Kind::Double, Device::Cpu));
    assert_close(
        &iwae_bound(&lw).unwrap(),
        &elbo_from_log_weights(&lw).unwrap(),
        1e-12,
        "IWAE_1 = ELBO",
    );
}

#[test]
fn elbo_le_iwae_le_log_marginal_and_gap_shrinks() {
    tch::manual_seed(2);
    let (a, s, x) = (1.5, 0.5, 1.1);
    let reps = 400;
    let mut means = Vec::new();
    let mut stderrs = Vec::new();
    let mut elbo_mean = 0.0;
    let mut log_px = 0.0;
    for k in [1i64, 10, 100, 1000] {
        let mut values = Vec::with_capacity(reps);
        for _ in 0..reps {
            let (lw, lp) = log_weights(x, k, a, s);
            log_px = lp;
            values.push(iwae_bound(&lw).unwrap().double_value(&[0]));
            if k == 1000 {
                elbo_mean += elbo_from_log_weights(&lw).unwrap().double_value(&[0]);
            }
        }
        let mean = values.iter().sum::<f64>() / reps as f64;
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (reps - 1) as f64;
        means.push(mean);
        stderrs.push((var / reps as f64).sqrt());
    }
    elbo_mean /= reps as f64;
    assert!(
        elbo_mean < means[1],
        "ELBO {elbo_mean} !< IWAE_10 {}",
        means[1]
    );
    for i in 0..3 {
        let slack = 4.0 * (stderrs[i] + stderrs[i + 1]);
        assert!(
            means[i] < means[i + 1] + slack,
            "IWAE_K must grow with K: {means:?} ± {stderrs:?}"
        );
    }
    assert!(
        means[3] <= log_px + 4.0 * stderrs[3],
        "IWAE_1000 {} exceeds ln p(x) {log_px}",
        means[3]
    );
    let gaps: Vec<f64> = means.iter().map(|m| log_px - m).collect();
    assert!(
        gaps[0] > 0.05,
        "the proposal is imperfect, so the ELBO gap is visible: {gaps:?}"
    );
    assert!(
        gaps[3] < 0.02 * gaps[0] + 1e-3,
        "the IWAE gap shrinks with K: {gaps:?}"
    );
    // The analytic-KL ELBO equals the Monte Carlo one in expectation.
    let q = Normal::new(&dt(&[0.3 * x]), &dt(&[1.2])).unwrap();
    let prior = Normal::new(&dt(&[0.0]), &dt(&[1.0])).unwrap();
    let kl = q.kl_divergence(&prior).unwrap();
    // E_q[ln N(x; a z, s²)] in closed form for z ~ N(m, v).
    let (m, v) = (0.3 * x, 1.44);
    let ell = -0.5 * ((x - a * m).powi(2) + a * a * v) / (s * s)
        - 0.5 * (2.0 * std::f64::consts::PI * s * s).ln();
    let analytic = elbo(&dt(&[ell]), &kl).unwrap().double_value(&[0]);
    assert!(
        (analytic - elbo_mean).abs() < 0.02,
        "analytic ELBO {analytic} vs Monte Carlo {elbo_mean}"
    );
}

#[test]
fn units_and_helpers() {
    assert!((bits_per_dim(784.0 * std::f64::consts::LN_2, 784) - 1.0).abs() < 1e-12);
    let x = dt(&[1.0, 2.0, 3.0]);
    let lme = log_mean_exp(&x, 0).unwrap().double_value(&[]);
    assert!((lme - ((1f64.exp() + 2f64.exp() + 3f64.exp()) / 3.0).ln()).abs() < 1e-12);
    assert!(log_mean_exp(&x, 3).is_err());
    assert!(iwae_bound(&x).is_err(), "log-weights must be [K, batch]");
    // A uniform density on [0,1)^D has ln p = 0; its dequantised NLL is D ln 256 nats = 8 bits/dim.
    let nll = dequantized_nll_nats(&dt(&[0.0]), 10, 256)
        .unwrap()
        .double_value(&[0]);
    assert!((bits_per_dim(nll, 10) - 8.0).abs() < 1e-12);
}

#[test]
fn kl_to_standard_normal_refuses_other_events() {
    let p = Independent::new(
        Normal::from_log_scale(
            &Tensor::zeros([4, 3], (Kind::Float, Device::Cpu)),
            &Tensor::zeros([4, 3], (Kind::Float, Device::Cpu)),
        )
        .unwrap(),
        1,
    )
    .unwrap();
    let err = p
        .kl_divergence(&StandardNormal::new(&[4], Device::Cpu))
        .unwrap_err();
    assert!(err.to_string().contains("[3]"), "{err}");
    // A zero posterior against its own prior: exactly zero.
    let kl = p
        .kl_divergence(&StandardNormal::new(&[3], Device::Cpu))
        .unwrap();
    assert_eq!(kl.size(), vec![4]);
    assert_eq!(kl.abs().max().double_value(&[]), 0.0);
}
