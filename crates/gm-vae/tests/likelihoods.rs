//! Decoder likelihoods: normalisation over their support, hand formulas, sampling laws,
//! numerical stability and support checks.

mod common;

use common::{mlp, single_thread};
use gm_core::distributions::Distribution;
use gm_core::model::{Batch, GenerativeModel};
use gm_core::tch::{nn, Device, Kind, Tensor};
use gm_core::testing::{assert_density_integrates_1d, assert_sample_moments};
use gm_core::GmError;
use gm_vae::likelihood::LikelihoodHead;
use gm_vae::{DiscretizedLogistic, GaussianVariance, LikelihoodConfig, Vae, VaeConfig};
use proptest::prelude::*;

fn double() -> (Kind, Device) {
    (Kind::Double, Device::Cpu)
}

/// A likelihood head over one-element examples, in double precision.
fn head(config: &LikelihoodConfig, vs: &nn::VarStore) -> LikelihoodHead {
    config.init(&vs.root(), &[1]).unwrap()
}

fn double_store() -> nn::VarStore {
    let mut vs = nn::VarStore::new(Device::Cpu);
    vs.set_kind(Kind::Double);
    vs
}

/// `ln Σ_levels P(level)` for a likelihood over one-element examples with `levels` values.
fn log_total_mass(d: &dyn Distribution, batch: i64, levels: i64) -> Tensor {
    let per_level: Vec<Tensor> = (0..levels)
        .map(|v| d.log_prob(&Tensor::full([batch, 1], v, double())).unwrap())
        .collect();
    Tensor::stack(&per_level, 0).logsumexp([0i64], false)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// The discretized logistic's masses over all bins sum to 1, in double precision, for any
    /// location (also far outside the data range), scale and number of bins; `log_prob` of
    /// each level agrees with `log_probs_all`.
    #[test]
    fn discretized_logistic_sums_to_one(
        loc in -3.0f64..3.0,
        log_scale in -7.0f64..2.0,
        bins in prop::sample::select(vec![2i64, 3, 16, 256]),
    ) {
        let d = DiscretizedLogistic::new(
            &Tensor::from_slice(&[loc]),
            &Tensor::from_slice(&[log_scale]),
            bins,
        ).unwrap();
        let all = d.log_probs_all().unwrap();
        let total = all.logsumexp([-1i64], false).double_value(&[0]);
        prop_assert!(total.abs() < 1e-9, "log Σ P = {total}");
        let levels = Tensor::arange(bins, double()).unsqueeze(1);
        let each = d.log_prob(&levels).unwrap().squeeze_dim(1);
        let gap = (each - all.squeeze_dim(0)).abs().max().double_value(&[]);
        prop_assert!(gap < 1e-12, "log_prob and log_probs_all disagree by {gap}");
    }

    /// The same through the decoder head, for the 256-level discretized logistic and the
    /// 256-way categorical: `Σ_v p(x = v) = 1` for random decoder outputs.
    #[test]
    fn eight_bit_likelihoods_sum_to_one(seed in 0i64..10_000) {
        single_thread();
        gm_core::tch::manual_seed(seed);
        let vs = double_store();
        for config in [
            LikelihoodConfig::DiscretizedLogistic { bins: 256, min_log_scale: -7.0 },
            LikelihoodConfig::Categorical { classes: 256 },
        ] {
            let h = head(&config, &vs);
            let params = Tensor::randn([3, 1, h.params_per_element()], double()) * 2.0;
            let d = h.distribution(&params).unwrap();
            let total = log_total_mass(&d, 3, 256);
            let err = total.abs().max().double_value(&[]);
            prop_assert!(err < 1e-9, "{config:?}: log Σ p = {err}");
        }
    }
}

/// In single precision (what training uses) the masses still sum to 1 within 1e-4.
#[test]
fn discretized_logistic_is_normalised_in_float() {
    single_thread();
    gm_core::tch::manual_seed(0);
    let loc = Tensor::rand([200], (Kind::Float, Device::Cpu)) * 3.0 - 1.5;
    let log_scale = Tensor::rand([200], (Kind::Float, Device::Cpu)) * 8.0 - 7.0;
    let d = DiscretizedLogistic::new(&loc, &log_scale, 256).unwrap();
    let total = d.log_probs_all().unwrap().logsumexp([-1i64], false);
    let err = total.abs().max().double_value(&[]);
    assert!(err < 1e-4, "float masses sum to exp({err})");
}

/// Each mass against the logistic CDF `F(t) = 1 / (1 + e^{-(t-μ)/s})` evaluated on the host:
/// `P(0) = F(c₀ + h)`, `P(255) = 1 - F(c₂₅₅ - h)`, otherwise `F(c + h) - F(c - h)`, with bin
/// centres `c_v = 2v/255 - 1` and half-width `h = 1/255`.
#[test]
fn discretized_logistic_matches_the_logistic_cdf() {
    single_thread();
    let cases = [
        (0.0, 0.1, 0),
        (0.0, 0.1, 255),
        (0.0, 0.1, 128),
        (0.3, 0.02, 166),
        (-0.9, 0.5, 3),
        (0.99, 0.005, 254),
        (-1.2, 0.05, 0),
    ];
    for (mu, s, v) in cases {
        let cdf = |t: f64| 1.0 / (1.0 + (-(t - mu) / s).exp());
        let (c, h) = (2.0 * v as f64 / 255.0 - 1.0, 1.0 / 255.0);
        let p = match v {
            0 => cdf(c + h),
            255 => 1.0 - cdf(c - h),
            _ => cdf(c + h) - cdf(c - h),
        };
        let d = DiscretizedLogistic::new(
            &Tensor::from_slice(&[mu]),
            &Tensor::from_slice(&[f64::ln(s)]),
            256,
        )
        .unwrap();
        let got = d
            .log_prob(&Tensor::from_slice(&[v as f64]))
            .unwrap()
            .double_value(&[0]);
        assert!(
            (got - p.ln()).abs() < 1e-9 * p.ln().abs().max(1.0),
            "μ={mu} s={s} v={v}: ln P = {got}, CDF gives {}",
            p.ln()
        );
    }
}

/// Extreme parameters give finite log-masses and finite gradients (no NaN from the unused
/// branches of the bin formula), in single precision.
#[test]
fn discretized_logistic_is_stable_at_extremes() {
    single_thread();
    let mut loc =
        Tensor::from_slice(&[-20.0f32, -1.0, 0.0, 1.0, 20.0, 0.5]).set_requires_grad(true);
    let mut log_scale =
        Tensor::from_slice(&[-7.0f32, -7.0, -7.0, -7.0, -7.0, 3.0]).set_requires_grad(true);
    for level in [0.0f32, 1.0, 127.0, 254.0, 255.0] {
        let d = DiscretizedLogistic::new(&loc, &log_scale, 256).unwrap();
        let lp = d
            .log_prob(&Tensor::full([6], level as f64, (Kind::Float, Device::Cpu)))
            .unwrap();
        let finite = lp.isfinite().all().int64_value(&[]) != 0;
        assert!(finite, "level {level}: non-finite log-mass {lp:?}");
        loc.zero_grad();
        log_scale.zero_grad();
        lp.sum(Kind::Float).backward();
        for g in [loc.grad(), log_scale.grad()] {
            assert!(
                g.isfinite().all().int64_value(&[]) != 0,
                "level {level}: gradient {g:?}"
            );
        }
    }
}

/// Draws follow the masses: with 8 bins and 40,000 draws every bin's frequency is within 4.5
/// binomial standard errors of its mass; mean and variance match their exact sums.
#[test]
fn discretized_logistic_samples_follow_its_masses() {
    single_thread();
    gm_core::tch::manual_seed(3);
    let d = DiscretizedLogistic::new(
        &Tensor::from_slice(&[0.2f64]),
        &Tensor::from_slice(&[(0.4f64).ln()]),
        8,
    )
    .unwrap();
    let n = 40_000;
    let draws = d.sample(&[n]).unwrap().reshape([-1]).to_kind(Kind::Int64);
    let counts = Vec::<i64>::try_from(&draws.bincount(None::<Tensor>, 8)).unwrap();
    let probs = Vec::<f64>::try_from(&d.log_probs_all().unwrap().exp().reshape([-1])).unwrap();
    for (v, (&c, &p)) in counts.iter().zip(&probs).enumerate() {
        let freq = c as f64 / n as f64;
        let se = (p * (1.0 - p) / n as f64).sqrt();
        assert!(
            (freq - p).abs() <= 4.5 * se,
            "bin {v}: frequency {freq} vs mass {p}"
        );
    }
    assert_sample_moments(&d, n, 4.5);
}

/// A Gaussian likelihood with a fixed standard deviation integrates to 1 over the line, and
/// each variance mode gives `-½ ((x-μ)/σ)² - ln σ - ½ ln 2π` with its own σ.
#[test]
fn gaussian_likelihoods_match_their_density() {
    single_thread();
    let vs = double_store();
    let fixed = head(
        &LikelihoodConfig::Gaussian {
            variance: GaussianVariance::Fixed,
            std: 0.7,
            min_std: 1e-3,
        },
        &vs,
    );
    let params = Tensor::from_slice(&[0.3f64]).reshape([1, 1, 1]);
    let d = fixed.distribution(&params).unwrap();
    assert_density_integrates_1d(
        |x| {
            d.log_prob(&x.reshape([-1, 1, 1]).expand([-1, 1, 1], false))
                .unwrap()
                .reshape([-1])
        },
        -8.0,
        8.0,
        4001,
        1e-6,
    );

    gm_core::tch::manual_seed(4);
    let x = Tensor::randn([5, 1], double());
    let raw = Tensor::randn([5, 1, 2], double());
    let density = |x: &Tensor, mu: &Tensor, sigma: &Tensor| {
        (((x - mu) / sigma).square() * -0.5 - sigma.log() - 0.5 * (2.0 * std::f64::consts::PI).ln())
            .reshape([-1])
    };
    let mu = raw.select(-1, 0);
    let modes = [
        (GaussianVariance::Shared, 1),
        (GaussianVariance::PerElement, 1),
        (GaussianVariance::Predicted, 2),
    ];
    for (variance, params_needed) in modes {
        let vs = double_store();
        let config = LikelihoodConfig::Gaussian {
            variance,
            std: 0.5,
            min_std: 0.01,
        };
        let h = head(&config, &vs);
        assert_eq!(h.params_per_element(), params_needed);
        let params = raw.narrow(-1, 0, params_needed);
        let got = h.distribution(&params).unwrap().log_prob(&x).unwrap();
        let sigma = match variance {
            GaussianVariance::Predicted => raw.select(-1, 1).softplus() + 0.01,
            _ => Tensor::full([5, 1], 0.5, double()),
        };
        let err = (got - density(&x, &mu, &sigma))
            .abs()
            .max()
            .double_value(&[]);
        assert!(
            err < 1e-12,
            "{variance:?}: differs from the density by {err:e}"
        );
    }
}

/// A Bernoulli likelihood's two masses sum to 1, and its log-mass is the formula.
#[test]
fn bernoulli_likelihood_is_normalised() {
    single_thread();
    let vs = double_store();
    let h = head(&LikelihoodConfig::Bernoulli, &vs);
    let logits = Tensor::from_slice(&[-30.0f64, -2.0, 0.0, 0.5, 30.0]).reshape([5, 1, 1]);
    let d = h.distribution(&logits).unwrap();
    let total = log_total_mass(&d, 5, 2);
    assert!(total.abs().max().double_value(&[]) < 1e-12);
}

/// Data outside a likelihood's support are errors that say what the support is.
#[test]
fn data_outside_the_support_are_errors() {
    single_thread();
    let vs = double_store();
    let bernoulli = head(&LikelihoodConfig::Bernoulli, &vs);
    let err = bernoulli
        .check_support(&Tensor::from_slice(&[0.0f64, 2.0]))
        .unwrap_err();
    assert!(
        matches!(err, GmError::Domain(_)) && err.to_string().contains("[0, 1]"),
        "{err}"
    );
    let logistic = head(
        &LikelihoodConfig::DiscretizedLogistic {
            bins: 256,
            min_log_scale: -7.0,
        },
        &vs,
    );
    for bad in [256.0f64, -1.0, 3.5] {
        let err = logistic
            .check_support(&Tensor::from_slice(&[bad]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("integers in [0, 255]"), "{err}");
    }
    assert!(logistic
        .check_support(&Tensor::from_slice(&[0u8, 17, 255]))
        .is_ok());
    let gaussian = head(
        &LikelihoodConfig::Gaussian {
            variance: GaussianVariance::Fixed,
            std: 1.0,
            min_std: 1e-3,
        },
        &vs,
    );
    assert!(gaussian
        .check_support(&Tensor::from_slice(&[f64::NAN]))
        .is_err());
}

/// `decode` is the mean of `p(x | z)` in the units of the samples, so `decode(encode(x))` is
/// the deterministic reconstruction for every likelihood: `x`'s shape (and the samples'), in
/// the data range, and equal to `Vae::reconstruct`. A short training run on six binary
/// examples brings the reconstruction close to them (a decode that ignored `z`, or returned
/// another scale, would not).
#[test]
fn decode_of_encode_is_the_mean_reconstruction() {
    single_thread();
    gm_core::tch::manual_seed(21);
    let binary = Tensor::randint(2, [6, 16], (Kind::Float, Device::Cpu));
    let grey = Tensor::randint(256, [6, 16], (Kind::Float, Device::Cpu));
    let real = Tensor::randn([6, 16], (Kind::Float, Device::Cpu));
    let config = |likelihood| VaeConfig {
        data_shape: vec![16],
        latent_dim: 3,
        encoder: mlp(&[16]),
        decoder: mlp(&[16]),
        likelihood,
        eval_samples: 4,
        ..Default::default()
    };
    let cases = [
        (LikelihoodConfig::Bernoulli, &binary, Some(1.0)),
        (
            LikelihoodConfig::Gaussian {
                variance: GaussianVariance::Fixed,
                std: 0.5,
                min_std: 1e-3,
            },
            &real,
            None,
        ),
        (
            LikelihoodConfig::DiscretizedLogistic {
                bins: 256,
                min_log_scale: -7.0,
            },
            &grey,
            Some(255.0),
        ),
        (
            LikelihoodConfig::Categorical { classes: 256 },
            &grey,
            Some(255.0),
        ),
    ];
    for (likelihood, x, top) in cases {
        let name = format!("{likelihood:?}");
        let vae = Vae::new(&config(likelihood), Device::Cpu).unwrap();
        let z = GenerativeModel::encode(&vae, x).unwrap().unwrap();
        assert_eq!(z.size(), [6, 3], "{name}");
        let back = GenerativeModel::decode(&vae, &z).unwrap().unwrap();
        assert_eq!(back.size(), x.size(), "{name}");
        assert_eq!(back.size(), vae.sample(6).unwrap().size(), "{name}");
        let reconstruction = vae.reconstruct(x).unwrap();
        assert!(back.allclose(&reconstruction, 1e-6, 1e-6, false), "{name}");
        assert_eq!(back.isfinite().all().int64_value(&[]), 1, "{name}");
        if let Some(top) = top {
            let (lo, hi) = (back.min().double_value(&[]), back.max().double_value(&[]));
            assert!(
                lo >= 0.0 && hi <= top,
                "{name}: decoded values in [{lo}, {hi}]"
            );
        }
    }
    let mut vae = Vae::new(
        &VaeConfig {
            optimizer: gm_core::train::AdamConfig {
                lr: 1e-2,
                ..Default::default()
            },
            ..config(LikelihoodConfig::Bernoulli)
        },
        Device::Cpu,
    )
    .unwrap();
    let error = |vae: &Vae| {
        let z = GenerativeModel::encode(vae, &binary).unwrap().unwrap();
        let back = GenerativeModel::decode(vae, &z).unwrap().unwrap();
        (back - &binary).abs().mean(Kind::Float).double_value(&[])
    };
    let before = error(&vae);
    for _ in 0..300 {
        vae.train_step(&Batch::new(binary.shallow_clone())).unwrap();
    }
    let after = error(&vae);
    eprintln!("mean |decode(encode(x)) - x|: {before:.3} untrained, {after:.3} after 300 steps");
    assert!(after < 0.1 && before > 0.3, "{before} → {after}");
}
