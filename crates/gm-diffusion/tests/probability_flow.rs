//! Likelihoods through ODEs against closed forms: for Gaussian data the optimal flow-matching
//! velocity and the optimal diffusion noise prediction are known, so the ODE's log-density,
//! its noise and its inverse can be checked exactly; Hutchinson's estimate is unbiased for
//! the exact divergence.

mod common;

use gm_core::tch::{Device, Kind, Tensor};
use gm_core::Result;
use gm_diffusion::ode::OdeConfig;
use gm_diffusion::probability_flow::{
    exact_divergence, hutchinson_divergence, log_density, rademacher_like, transport,
    variance_preserving_velocity, Divergence,
};
use gm_diffusion::ScheduleConfig;

const MU: [f64; 2] = [0.8, -0.4];
const S: [f64; 2] = [0.6, 1.7];

fn doubles(v: &[f64]) -> Tensor {
    Tensor::from_slice(v).to_kind(Kind::Double)
}

fn points() -> Tensor {
    doubles(&[0.3, -1.2, 1.9, 0.5, -0.7, 2.4, 0.8, -0.4]).reshape([4, 2])
}

/// Σ_d ln N(x_d; m_d, v_d).
fn gaussian_log_density(x: &Tensor, mean: &Tensor, var: &Tensor) -> Tensor {
    let d = x - mean;
    (d.square() / var + var.log() + (2.0 * std::f64::consts::PI).ln()).sum_dim_intlist(
        1,
        false,
        Kind::Double,
    ) * -0.5
}

/// The marginal flow-matching velocity for data N(μ, diag s²) on the path
/// x_t = t x₁ + (1 − c t) x₀, c = 1 − σ_min: x_t is Gaussian with mean tμ and variance
/// t²s² + (1 − ct)², and E[x₁ − c x₀ | x_t] = μ + (t s² − c a_t) / (t² s² + a_t²) (x − tμ).
fn gaussian_velocity(sigma_min: f64) -> impl Fn(&Tensor, &Tensor) -> Result<Tensor> {
    let c = 1.0 - sigma_min;
    move |x: &Tensor, t: &Tensor| {
        let mu = doubles(&MU).to_kind(x.kind());
        let s2 = doubles(&S).to_kind(x.kind()).square();
        let t = t.to_kind(x.kind()).unsqueeze(1);
        let a = -(&t * c) + 1.0;
        let k = (&t * &s2 - &a * c) / (t.square() * &s2 + a.square());
        Ok(&mu + k * (x - &t * &mu))
    }
}

#[test]
fn the_flow_matching_ode_of_gaussian_data_gives_its_exact_density() {
    common::single_thread();
    let x = points();
    let ode = OdeConfig::adaptive(1e-9, 1e-9);
    for sigma_min in [0.0, 0.05] {
        let v = gaussian_velocity(sigma_min);
        let out = log_density(&v, &x, 1.0, 0.0, Divergence::Exact, &ode).unwrap();
        let var = doubles(&S).square() + sigma_min * sigma_min;
        let want = gaussian_log_density(&x, &doubles(&MU), &var);
        let err = (&out.log_density - &want).abs().max().double_value(&[]);
        assert!(err < 1e-6, "σ_min {sigma_min}: log-density off by {err:e}");
        // The ODE's noise is the standardised point, and the ODE takes it back.
        let z_want = (&x - doubles(&MU)) / var.sqrt();
        let err = (&out.noise - &z_want).abs().max().double_value(&[]);
        assert!(err < 1e-6, "σ_min {sigma_min}: noise off by {err:e}");
        let (back, evaluations) = transport(&v, &out.noise, 0.0, 1.0, &ode).unwrap();
        assert!((&back - &x).abs().max().double_value(&[]) < 1e-6);
        assert!(evaluations > 6);
    }
}

/// With Hutchinson's divergence each probe's log-density is an unbiased estimate: the mean of
/// 64 probes lies within 4 standard errors of the exact value, and the error is reported.
#[test]
fn hutchinson_log_densities_are_unbiased_with_a_standard_error() {
    common::single_thread();
    gm_core::device::seed_torch(5);
    let x = points();
    // The Gaussian field plus a shear, whose Jacobian is not diagonal (for a diagonal one
    // Rademacher probes are exact and would test nothing).
    let base = gaussian_velocity(0.0);
    let v = move |x: &Tensor, t: &Tensor| -> Result<Tensor> {
        let shear = Tensor::stack(&[x.select(1, 1).sin(), x.select(1, 0) * 0.5], 1);
        Ok(base(x, t)? + shear * 0.3)
    };
    let ode = OdeConfig::adaptive(1e-7, 1e-7);
    let exact = log_density(&v, &x, 1.0, 0.0, Divergence::Exact, &ode).unwrap();
    let est = log_density(
        &v,
        &x,
        1.0,
        0.0,
        Divergence::Hutchinson { probes: 64 },
        &ode,
    )
    .unwrap();
    let se = est.standard_error.expect("a standard error with 64 probes");
    assert!(
        se.min().double_value(&[]) > 0.0,
        "an anisotropic field has probe noise"
    );
    for i in 0..4 {
        let (e, h, s) = (
            exact.log_density.double_value(&[i]),
            est.log_density.double_value(&[i]),
            se.double_value(&[i]),
        );
        assert!(
            (e - h).abs() <= 4.0 * s + 1e-6,
            "point {i}: {h} ± {s} vs exact {e}"
        );
    }
}

/// εᵀ J ε over many Rademacher probes averages to the trace of the Jacobian of a nonlinear
/// field, within 4 Monte Carlo standard errors, at several points.
#[test]
fn hutchinsons_estimator_is_unbiased_for_the_trace() {
    common::single_thread();
    gm_core::device::seed_torch(6);
    let d = 6;
    let w = Tensor::randn([d, d], (Kind::Double, Device::Cpu));
    let field = move |x: &Tensor, _t: &Tensor| -> Result<Tensor> {
        Ok(x.matmul(&w).tanh() * 2.0 + x.square().sum_dim_intlist(1, true, Kind::Double))
    };
    let x = Tensor::randn([3, d], (Kind::Double, Device::Cpu));
    let t = Tensor::zeros([3], (Kind::Double, Device::Cpu));
    let (_, exact) = exact_divergence(&field, &x, &t).unwrap();
    let n = 4000;
    let xs = x.repeat([n, 1]);
    let ts = t.repeat([n]);
    let probe = rademacher_like(&xs).unwrap();
    let (_, est) = hutchinson_divergence(&field, &xs, &ts, &probe).unwrap();
    let est = est.reshape([n, 3]);
    let mean = est.mean_dim(0, false, Kind::Double);
    let se = est.std_dim(0, true, false) / (n as f64).sqrt();
    for i in 0..3 {
        let (m, s, e) = (
            mean.double_value(&[i]),
            se.double_value(&[i]),
            exact.double_value(&[i]),
        );
        assert!(
            (m - e).abs() <= 4.0 * s,
            "point {i}: {m} ± {s} vs trace {e}"
        );
    }
    // The exact divergence itself against the trace of an autograd Jacobian built by hand.
    let eps = 1e-6;
    for i in 0..3 {
        let xi = x.narrow(0, i, 1);
        let mut trace = 0.0;
        for j in 0..d {
            let e = Tensor::zeros([1, d], (Kind::Double, Device::Cpu));
            let _ = e.narrow(1, j, 1).fill_(eps);
            let plus = field(&(&xi + &e), &t).unwrap().double_value(&[0, j]);
            let minus = field(&(&xi - &e), &t).unwrap().double_value(&[0, j]);
            trace += (plus - minus) / (2.0 * eps);
        }
        assert!((trace - exact.double_value(&[i])).abs() < 1e-6);
    }
}

/// For Gaussian data N(μ, s²) the optimal noise prediction of a variance-preserving diffusion is
/// ε̂(y, τ) = σ (y − √ᾱ μ) / (ᾱ s² + σ²); its probability-flow ODE from τ₀ carries the marginal
/// at τ₀, N(√ᾱ₀ μ, ᾱ₀ s² + σ₀²), to the marginal at the end. The model's density puts N(0, I)
/// in place of that end marginal (off by √ᾱ_end μ ≈ 0.005 in the mean, about 0.02 nats), so
/// swapping the true end marginal back in must give the density at τ₀ exactly.
#[test]
fn the_probability_flow_ode_of_a_diffusion_gives_the_exact_marginal_density() {
    common::single_thread();
    let x = points();
    let t_max = 1000;
    for schedule in [
        ScheduleConfig::Linear {
            beta_start: 1e-4,
            beta_end: 0.02,
        },
        ScheduleConfig::Cosine { offset: 0.008 },
    ] {
        let eps_hat = |y: &Tensor, tau: &Tensor| -> Result<Tensor> {
            let ab = schedule
                .continuous_log_alpha_bar(tau, t_max)?
                .exp()
                .unsqueeze(1);
            let sigma2 = -&ab + 1.0;
            let mean = ab.sqrt() * doubles(&MU);
            let var = &ab * doubles(&S).square() + &sigma2;
            Ok(sigma2.sqrt() * (y - mean) / var)
        };
        let v = |y: &Tensor, tau: &Tensor| -> Result<Tensor> {
            variance_preserving_velocity(y, &eps_hat(y, tau)?, tau, &schedule, t_max)
        };
        let (start, end) = schedule.continuous_range(t_max);
        let out = log_density(
            &v,
            &x,
            start,
            end,
            Divergence::Exact,
            &OdeConfig::adaptive(1e-8, 1e-8),
        )
        .unwrap();
        let marginal = |tau: f64, y: &Tensor| {
            let ab = schedule
                .continuous_log_alpha_bar(&doubles(&[tau]), t_max)
                .unwrap()
                .exp();
            gaussian_log_density(
                y,
                &(ab.sqrt() * doubles(&MU)),
                &(&ab * doubles(&S).square() - &ab + 1.0),
            )
        };
        let standard = gaussian_log_density(
            &out.noise,
            &Tensor::zeros([2], (Kind::Double, Device::Cpu)),
            &Tensor::ones([2], (Kind::Double, Device::Cpu)),
        );
        let got = &out.log_density - standard + marginal(end, &out.noise);
        let err = (&got - marginal(start, &x)).abs().max().double_value(&[]);
        assert!(err < 1e-6, "{schedule:?}: off by {err:e}");
        let prior_gap = (&out.log_density - marginal(start, &x))
            .abs()
            .max()
            .double_value(&[]);
        assert!(
            prior_gap < 0.05,
            "{schedule:?}: the N(0, I) prior costs {prior_gap}"
        );
    }
}

/// The continuous schedules: β(τ) is −d ln ᾱ/dτ (central differences), the cosine one matches
/// the discrete ᾱ_t at τ = t/T, and the linear one integrates the discrete ramp of βs.
#[test]
fn continuous_schedules_are_consistent_with_their_discrete_ones() {
    let t_max = 1000;
    for schedule in [
        ScheduleConfig::Linear {
            beta_start: 1e-4,
            beta_end: 0.02,
        },
        ScheduleConfig::Cosine { offset: 0.008 },
    ] {
        let h = 1e-6;
        let taus = doubles(&[0.01, 0.3, 0.7, 0.95]);
        let d = (schedule
            .continuous_log_alpha_bar(&(&taus + h), t_max)
            .unwrap()
            - schedule
                .continuous_log_alpha_bar(&(&taus - h), t_max)
                .unwrap())
            / (2.0 * h);
        let beta = schedule.continuous_beta(&taus, t_max).unwrap();
        let err = ((&beta + &d) / &beta).abs().max().double_value(&[]);
        assert!(err < 1e-6, "{schedule:?}: β off by {err:e}");
        let discrete = gm_diffusion::Schedule::new(&schedule, t_max, Device::Cpu).unwrap();
        for t in [1usize, 250, 500, 900, 1000] {
            let tau = doubles(&[t as f64 / t_max as f64]);
            let cont = schedule
                .continuous_log_alpha_bar(&tau, t_max)
                .unwrap()
                .double_value(&[0]);
            match schedule {
                // The same function at τ = t/T (before the last step, whose β the discrete
                // schedule caps at 0.999).
                ScheduleConfig::Cosine { .. } if t < t_max as usize => {
                    let disc = discrete.alpha_bars()[t].ln();
                    assert!((cont - disc).abs() < 1e-9, "cosine t={t}: {cont} vs {disc}");
                }
                // −∫β over [0, t/T] against −Σ β_s: they differ only by where the linear ramp
                // starts, n(n−1)/(2(T−1)) against n²/(2T) steps of its slope, exactly.
                ScheduleConfig::Linear { .. } => {
                    let betas = discrete.betas();
                    let sum: f64 = betas[1..=t].iter().sum();
                    let (lo, hi) = (betas[1], betas[t_max as usize]);
                    let n = t as f64;
                    let shift = (hi - lo)
                        * (n * n / (2.0 * t_max as f64)
                            - n * (n - 1.0) / (2.0 * (t_max - 1) as f64));
                    let want = -sum - shift;
                    assert!((cont - want).abs() < 1e-9, "linear t={t}: {cont} vs {want}");
                }
                ScheduleConfig::Cosine { .. } => {}
            }
        }
    }
}
