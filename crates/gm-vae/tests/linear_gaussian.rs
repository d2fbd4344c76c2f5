//! The linear-Gaussian VAE against probabilistic PCA, whose marginal likelihood is known in
//! closed form: `z ~ N(0, I_k)`, `x | z ~ N(W z + b, σ² I)` gives `x ~ N(b, W Wᵀ + σ² I)`.
//!
//! The VAE is built from the crate's own parts (MLP encoder and decoder without hidden layers,
//! a Gaussian likelihood with one learned standard deviation), in double precision.

mod common;

use common::{get_var, mean_and_stderr, ppca_log_likelihood, set_var, single_thread};
use gm_core::distributions::Distribution;
use gm_core::model::GenerativeModel;
use gm_core::nn::{Activation, MlpConfig};
use gm_core::tch::{Device, Kind, Tensor};
use gm_core::train::{AdamConfig, LrSchedule, TrainConfig, Trainer};
use gm_vae::{GaussianVariance, LikelihoodConfig, NetworkConfig, ObjectiveConfig, Vae, VaeConfig};

const D: i64 = 5;
const K: i64 = 2;

fn linear() -> NetworkConfig {
    NetworkConfig::Mlp(MlpConfig {
        hidden: vec![],
        activation: Activation::Relu,
    })
}

fn linear_vae_config(sigma: f64) -> VaeConfig {
    VaeConfig {
        data_shape: vec![D],
        latent_dim: K,
        encoder: linear(),
        decoder: linear(),
        likelihood: LikelihoodConfig::Gaussian {
            variance: GaussianVariance::Shared,
            std: sigma,
            min_std: 1e-3,
        },
        ..Default::default()
    }
}

fn opts() -> (Kind, Device) {
    (Kind::Double, Device::Cpu)
}

/// A pPCA model: loading `w` `[D, K]`, offset `b` `[D]`, noise `sigma`.
struct Ppca {
    w: Tensor,
    b: Tensor,
    sigma: f64,
}

impl Ppca {
    fn sample(&self, n: i64) -> Tensor {
        let z = Tensor::randn([n, K], opts());
        z.matmul(&self.w.tr()) + &self.b + Tensor::randn([n, D], opts()) * self.sigma
    }

    fn log_likelihood(&self, x: &Tensor) -> Tensor {
        ppca_log_likelihood(x, &self.w, &self.b, self.sigma)
    }

    /// `M = WᵀW + σ² I`; the exact posterior is `N(M⁻¹Wᵀ(x - b), σ² M⁻¹)`.
    fn m_inverse(&self) -> Tensor {
        let m = self.w.tr().matmul(&self.w) + Tensor::eye(K, opts()) * (self.sigma * self.sigma);
        m.inverse()
    }

    /// Puts this model in the VAE's decoder, and into its encoder the exact posterior mean
    /// (shifted by `mean_shift`) with the diagonal of the exact posterior covariance (standard
    /// deviations multiplied by `scale_factor`).
    fn load_into(&self, vae: &Vae, mean_shift: f64, scale_factor: f64) {
        let vs = vae.var_store();
        set_var(vs, "decoder.mlp.layer0.weight", &self.w);
        set_var(vs, "decoder.mlp.layer0.bias", &self.b);
        set_var(
            vs,
            "decoder.likelihood.log_std",
            &Tensor::from_slice(&[self.sigma.ln()]),
        );
        let m_inv = self.m_inverse();
        let gain = m_inv.matmul(&self.w.tr()); // [K, D]
        let mean_bias = -gain.matmul(&self.b) + mean_shift;
        let post_var = m_inv.diagonal(0, 0, 1) * (self.sigma * self.sigma);
        let log_scale_bias = post_var.log() * 0.5 + scale_factor.ln();
        let weight = Tensor::cat(&[gain, Tensor::zeros([K, D], opts())], 0);
        let bias = Tensor::cat(&[mean_bias, log_scale_bias], 0);
        set_var(vs, "encoder.mlp.layer0.weight", &weight);
        set_var(vs, "encoder.mlp.layer0.bias", &bias);
    }
}

/// A pPCA whose loading has orthogonal columns, so its exact posterior is diagonal and the
/// VAE's encoder can represent it exactly.
fn orthogonal_ppca() -> Ppca {
    gm_core::tch::manual_seed(11);
    let (q, _) = Tensor::linalg_qr(&Tensor::randn([D, K], opts()), "reduced");
    let scales = Tensor::from_slice(&[2.0f64, 1.0]);
    Ppca {
        w: q * scales,
        b: Tensor::randn([D], opts()),
        sigma: 0.5,
    }
}

/// A pPCA with a generic loading: its posterior has correlations a diagonal encoder lacks.
fn generic_ppca(seed: i64, sigma: f64) -> Ppca {
    gm_core::tch::manual_seed(seed);
    Ppca {
        w: Tensor::randn([D, K], opts()) * 1.5,
        b: Tensor::randn([D], opts()),
        sigma,
    }
}

/// With the exact posterior every importance weight equals `p(x)`: the log-weights, the
/// chunked importance-sampling estimate (even one sample per chunk) and the ELBO (its KL in
/// closed form) all equal the closed-form `ln p(x)`.
#[test]
fn exact_posterior_makes_every_bound_exact() {
    single_thread();
    let ppca = orthogonal_ppca();
    let config = VaeConfig {
        eval_chunk_elements: 1,
        ..linear_vae_config(ppca.sigma)
    };
    let vae = Vae::with_kind(&config, Device::Cpu, Kind::Double).unwrap();
    ppca.load_into(&vae, 0.0, 1.0);
    let x = ppca.sample(64);
    let exact = ppca.log_likelihood(&x);

    let log_w = vae.net().log_weights(&x, 50).unwrap();
    let spread = (&log_w - exact.unsqueeze(0)).abs().max().double_value(&[]);
    assert!(
        spread < 1e-9,
        "log-weights differ from ln p(x) by {spread:e}"
    );

    let estimate = vae.net().log_likelihood_k(&x, None, 7).unwrap();
    let err = (&estimate - &exact).abs().max().double_value(&[]);
    assert!(err < 1e-9, "chunked IS estimate off by {err:e}");

    // The ELBO with an analytic KL: E_q[ln p(x|z)] is a Monte Carlo mean, so compare within
    // its standard error, computed from the same kind of draws.
    let samples = 4000;
    let terms = vae.net().elbo_terms(&x, samples).unwrap();
    let z = vae.encode(&x).unwrap().sample(&[samples]).unwrap();
    let per_draw = vae
        .decode(&z)
        .unwrap()
        .log_prob(&x.unsqueeze(0).expand([samples, 64, D], false))
        .unwrap();
    let stderr = per_draw.std_dim(0, true, false) / (samples as f64).sqrt();
    let z_scores = ((&terms.elbo - &exact).abs() / (stderr + 1e-12))
        .max()
        .double_value(&[]);
    assert!(
        z_scores < 5.0,
        "ELBO differs from ln p(x) by {z_scores:.2} standard errors"
    );
}

/// With an imperfect (shifted, over-dispersed, diagonal) posterior:
/// `ELBO < IWAE_1 ≤ IWAE_10 ≤ IWAE_100 ≤ IWAE_1000 ≤ ln p(x)`, each inequality checked on the
/// mean over 100 examples within 3 standard errors of paired differences, and the
/// importance-sampling estimate converges to `ln p(x)`:
/// - `(1/K) Σ w_k / p(x)` is unbiased for 1 at every `K`, so its mean is 1 within 4 standard
///   errors;
/// - the remaining IWAE gap at `K = 1000` is within twice its leading-order (delta-method)
///   value `Var[w/p(x)] / 2K` plus 3 standard errors.
#[test]
fn bounds_are_ordered_and_converge_to_the_exact_likelihood() {
    single_thread();
    let ppca = generic_ppca(5, 0.5);
    let vae = Vae::with_kind(&linear_vae_config(ppca.sigma), Device::Cpu, Kind::Double).unwrap();
    ppca.load_into(&vae, 0.2, 1.3);
    gm_core::tch::manual_seed(21);
    let n = 100;
    let x = ppca.sample(n);
    let exact = ppca.log_likelihood(&x);

    let elbo = vae.net().elbo_terms(&x, 2000).unwrap().elbo.detach();
    let (elbo_gap, elbo_se) = mean_and_stderr(&(&exact - &elbo));
    assert!(
        elbo_gap > 3.0 * elbo_se,
        "the diagonal posterior is not exact, so the ELBO must sit clearly below ln p(x): gap {elbo_gap} ± {elbo_se}"
    );

    let ks = [1i64, 10, 100, 1000];
    let gaps: Vec<Tensor> = ks
        .iter()
        .map(|&k| &exact - vae.net().log_likelihood_k(&x, None, k).unwrap())
        .collect();
    for (k, gap) in ks.iter().zip(&gaps) {
        let (m, se) = mean_and_stderr(gap);
        assert!(m > -3.0 * se, "IWAE_{k} exceeds ln p(x): gap {m} ± {se}");
    }
    let (d, se) = mean_and_stderr(&(&gaps[0] - (&exact - &elbo)));
    assert!(
        d.abs() < 4.0 * se + 1e-9,
        "IWAE_1 is an unbiased estimate of the ELBO: differs by {d} ± {se}"
    );
    for i in 0..ks.len() - 1 {
        let (d, se) = mean_and_stderr(&(&gaps[i] - &gaps[i + 1]));
        assert!(
            d > -3.0 * se,
            "IWAE_{} is below IWAE_{}: {d} ± {se}",
            ks[i + 1],
            ks[i]
        );
    }
    let (first, _) = mean_and_stderr(&gaps[0]);
    let (last, last_se) = mean_and_stderr(&gaps[ks.len() - 1]);
    assert!(last < first, "the gap must shrink: {first} → {last}");

    // Unbiasedness of the weights themselves, and the size of the remaining gap.
    let k_max = 1000;
    let log_w = vae.net().log_weights(&x, k_max).unwrap().detach();
    let normalised = (&log_w - exact.unsqueeze(0)).exp(); // w / p(x), [K, n]
    let per_example_mean = normalised.mean_dim(0, false, Kind::Double);
    let (m, se) = mean_and_stderr(&per_example_mean);
    assert!(
        (m - 1.0).abs() < 4.0 * se,
        "E[w] / p(x) = {m} ± {se}, not 1"
    );
    let var_w = normalised.var_dim(0, true, false);
    let predicted = (var_w / (2.0 * k_max as f64))
        .mean(Kind::Double)
        .double_value(&[]);
    assert!(
        last <= 2.0 * predicted + 3.0 * last_se,
        "IWAE_{k_max} gap {last} ± {last_se} exceeds twice its leading-order value {predicted}"
    );
}

/// Tipping & Bishop's closed-form maximum likelihood of pPCA for data `x` `[n, D]`: with the
/// eigenvalues `λ₁ ≥ … ≥ λ_D` of the sample covariance, `σ²_ML` is the mean of the last
/// `D - K`, and the average log-likelihood at the optimum is
/// `-½ (D ln 2π + Σ_{j≤K} ln λ_j + (D-K) ln σ²_ML + D)`.
fn ppca_max_log_likelihood(x: &Tensor) -> f64 {
    let n = x.size()[0] as f64;
    let centred = x - x.mean_dim(0, true, Kind::Double);
    let cov = centred.tr().matmul(&centred) / n;
    let (eigenvalues, _) = cov.linalg_eigh("L"); // ascending
    let ev = Vec::<f64>::try_from(&eigenvalues).unwrap();
    let (discarded, kept) = ev.split_at((D - K) as usize);
    let sigma2 = discarded.iter().sum::<f64>() / discarded.len() as f64;
    let log_det: f64 = kept.iter().map(|l| l.ln()).sum::<f64>() + (D - K) as f64 * sigma2.ln();
    -0.5 * (D as f64 * (2.0 * std::f64::consts::PI).ln() + log_det + D as f64)
}

/// Maximising the ELBO of the linear VAE on pPCA data recovers pPCA's maximum likelihood:
/// at the optimum the loading's columns are orthogonal, the diagonal posterior is exact, and
/// the ELBO is tight (Lucas et al., 2019). Tolerance: 0.01 nats per example (0.15% of the
/// average log-likelihood, about -6.6 nats) for the learned model's exact log-likelihood and
/// for its ELBO.
#[test]
fn elbo_training_recovers_ppca_maximum_likelihood() {
    single_thread();
    let ppca = generic_ppca(7, 0.4);
    gm_core::tch::manual_seed(8);
    let n = 2000;
    let x = ppca.sample(n);
    let ml = ppca_max_log_likelihood(&x);

    let steps = 2500;
    let config = VaeConfig {
        objective: ObjectiveConfig::Elbo {
            beta: 1.0,
            kl_warmup_steps: 0,
            samples: 4,
        },
        optimizer: AdamConfig {
            lr: 0.02,
            ..Default::default()
        },
        lr_schedule: LrSchedule::WarmupCosine {
            warmup_steps: 50,
            total_steps: steps,
            min_ratio: 0.005,
        },
        ..linear_vae_config(1.0)
    };
    gm_core::tch::manual_seed(9);
    let mut vae = Vae::with_kind(&config, Device::Cpu, Kind::Double).unwrap();
    Trainer::new(TrainConfig {
        steps,
        batch_size: n,
        seed: 3,
        log_every: steps,
        checkpoint_every: 0,
    })
    .unwrap()
    .fit(&mut vae, &x, None, |_, _| {})
    .unwrap();

    let vs = vae.var_store();
    let w = get_var(vs, "decoder.mlp.layer0.weight").detach();
    let b = get_var(vs, "decoder.mlp.layer0.bias").detach();
    let sigma = get_var(vs, "decoder.likelihood.log_std")
        .exp()
        .double_value(&[0]);
    let learned = ppca_log_likelihood(&x, &w, &b, sigma)
        .mean(Kind::Double)
        .double_value(&[]);
    assert!(
        learned <= ml + 1e-9,
        "no pPCA can beat the maximum likelihood: {learned} > {ml}"
    );
    assert!(
        ml - learned < 0.01,
        "learned model's exact log-likelihood {learned} is not within 0.01 of the pPCA optimum {ml}"
    );
    // Compare the ELBO with the learned model's exact log-likelihood example by example, so
    // the standard error measures only the Monte Carlo noise of the ELBO.
    let elbo = vae.net().elbo_terms(&x, 200).unwrap().elbo.detach();
    let exact_learned = ppca_log_likelihood(&x, &w, &b, sigma);
    let (gap, gap_se) = mean_and_stderr(&(&exact_learned - &elbo));
    eprintln!("pPCA optimum {ml:.5}, learned model {learned:.5}, ELBO gap {gap:.5} ± {gap_se:.5}");
    assert!(
        gap > -4.0 * gap_se,
        "ELBO above the exact log-likelihood by {gap} ± {gap_se}"
    );
    assert!(
        (ml - learned) + gap < 0.01 + 4.0 * gap_se,
        "ELBO {} ± {gap_se} is not within 0.01 of the pPCA optimum {ml}",
        learned - gap
    );
    // The estimate users get from the model interface agrees too.
    let mut vae = vae;
    vae.net_mut().set_eval_samples(100).unwrap();
    let is = vae.log_likelihood(&x.narrow(0, 0, 200)).unwrap();
    let exact = ppca_log_likelihood(&x.narrow(0, 0, 200), &w, &b, sigma);
    let (gap, gap_se) = mean_and_stderr(&(&exact - &is));
    assert!(
        gap.abs() < 0.01 + 4.0 * gap_se,
        "IS estimate off by {gap} ± {gap_se}"
    );
    assert!(matches!(
        vae.likelihood_kind(),
        gm_core::model::LikelihoodKind::LowerBound
    ));
}
