//! The output distributions against independent formulas, and the sampling filters
//! (temperature, top-k, top-p) against their definitions, enumerated over every k and a grid
//! of p; filtered draws against the renormalised probabilities by Monte Carlo.

use gm_autoregressive::{draw_categorical, filter_logits, Output};
use gm_core::model::SampleOptions;
use gm_core::tch::{Device, Kind, Tensor};
use proptest::prelude::*;

fn softmax(v: &[f64]) -> Vec<f64> {
    let m = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = v.iter().map(|x| (x - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|x| x / s).collect()
}

fn kept(filtered: &Tensor) -> Vec<bool> {
    Vec::<f64>::try_from(&filtered.to_kind(Kind::Double))
        .unwrap()
        .iter()
        .map(|v| v.is_finite())
        .collect()
}

proptest! {
    /// Top-k keeps exactly the k largest logits (distinct values), for every k.
    #[test]
    fn top_k_keeps_the_k_largest(values in proptest::collection::hash_set(-1000i32..1000, 2..12)) {
        let v: Vec<f64> = values.into_iter().map(|x| x as f64 / 100.0).collect();
        let logits = Tensor::from_slice(&v).unsqueeze(0);
        let mut sorted = v.clone();
        sorted.sort_by(|a, b| b.partial_cmp(a).unwrap());
        for k in 1..=v.len() as i64 {
            let keep = kept(&filter_logits(&logits, 1.0, Some(k), None).unwrap().squeeze_dim(0));
            let threshold = sorted[k as usize - 1];
            for (x, kept) in v.iter().zip(keep) {
                prop_assert_eq!(kept, *x >= threshold);
            }
        }
    }

    /// Top-p keeps the smallest set of most likely values whose probabilities reach p.
    #[test]
    fn top_p_keeps_the_smallest_set_reaching_p(values in proptest::collection::hash_set(-400i32..400, 2..10)) {
        let v: Vec<f64> = values.into_iter().map(|x| x as f64 / 100.0).collect();
        let p = softmax(&v);
        let logits = Tensor::from_slice(&v).unsqueeze(0);
        let mut idx: Vec<usize> = (0..v.len()).collect();
        idx.sort_by(|a, b| p[*b].partial_cmp(&p[*a]).unwrap());
        for step in 1..=20 {
            let top_p = step as f64 / 20.0;
            let keep = kept(&filter_logits(&logits, 1.0, None, Some(top_p)).unwrap().squeeze_dim(0));
            let mut mass = 0.0;
            let mut expected = vec![false; v.len()];
            for &i in &idx {
                if mass >= top_p - 1e-6 { break; }
                expected[i] = true;
                mass += p[i];
            }
            // A p within float error of a cumulative sum may keep one more or one fewer.
            let boundary = idx.iter().scan(0.0, |m, &i| { *m += p[i]; Some(*m) }).any(|m| (m - top_p).abs() < 1e-5);
            if !boundary {
                prop_assert_eq!(keep, expected, "p = {}", top_p);
            }
        }
    }
}

/// Temperature T turns the probabilities into softmax(l / T).
#[test]
fn temperature_divides_the_logits() {
    let v = [0.3, -1.2, 2.0, 0.0];
    let logits = Tensor::from_slice(&v).unsqueeze(0);
    for t in [0.25, 0.5, 2.0, 7.0] {
        let got = filter_logits(&logits, t, None, None)
            .unwrap()
            .softmax(-1, Kind::Double);
        let want = softmax(&v.iter().map(|x| x / t).collect::<Vec<_>>());
        for (i, w) in want.iter().enumerate() {
            assert!((got.double_value(&[0, i as i64]) - w).abs() < 1e-6);
        }
    }
}

/// Draws with top-k 2 and top-p 0.8 at temperature 0.7 follow the renormalised filtered
/// probabilities within 5 standard errors, and temperature 0 is the argmax.
#[test]
fn filtered_draws_follow_the_renormalised_probabilities() {
    gm_core::tch::manual_seed(0);
    let v = [1.0, 0.5, 0.2, -0.3, -2.0];
    let n = 40_000;
    let logits = Tensor::from_slice(&v)
        .to_kind(Kind::Float)
        .unsqueeze(0)
        .expand([n, 5], false);
    for (options, keep) in [
        (SampleOptions::new().temperature(0.7).top_k(2), 2usize),
        (SampleOptions::new().top_p(0.8), 3),
        (SampleOptions::new(), 5),
    ] {
        let t = options.temperature;
        let draws = draw_categorical(&logits, &options).unwrap();
        let counts = draws.bincount::<Tensor>(None, 5).to_kind(Kind::Double) / n as f64;
        let mut p = softmax(&v.iter().map(|x| x / t).collect::<Vec<_>>());
        let total: f64 = p[..keep].iter().sum();
        for (i, pi) in p.iter_mut().enumerate() {
            *pi = if i < keep { *pi / total } else { 0.0 };
        }
        for (i, pi) in p.iter().enumerate() {
            let f = counts.double_value(&[i as i64]);
            let se = (pi * (1.0 - pi) / n as f64).sqrt();
            assert!(
                (f - pi).abs() <= 5.0 * se + 1e-9,
                "{options:?}: value {i}: {f} vs {pi}"
            );
        }
    }
    let greedy = draw_categorical(
        &logits.narrow(0, 0, 3),
        &SampleOptions::new().temperature(0.0),
    )
    .unwrap();
    assert_eq!(Vec::<i64>::try_from(&greedy).unwrap(), vec![0, 0, 0]);
}

/// The three outputs' log-probabilities against host formulas in float64.
#[test]
fn log_probs_match_closed_forms() {
    gm_core::tch::manual_seed(1);
    let (b, d) = (3i64, 4i64);
    // Bernoulli: x ln σ(l) + (1 − x) ln(1 − σ(l)).
    let l = Tensor::randn([b, 1, d], (Kind::Double, Device::Cpu)) * 3.0;
    let x = Tensor::randint(2, [b, d], (Kind::Double, Device::Cpu));
    let got = Output::Bernoulli.log_prob(&l, &x).unwrap();
    for i in 0..b {
        for j in 0..d {
            let (li, xi) = (l.double_value(&[i, 0, j]), x.double_value(&[i, j]));
            let s = 1.0 / (1.0 + (-li).exp());
            let want = xi * s.ln() + (1.0 - xi) * (1.0 - s).ln();
            assert!((got.double_value(&[i, j]) - want).abs() < 1e-9);
        }
    }
    // Categorical over 5 levels.
    let l = Tensor::randn([b, 5, d], (Kind::Double, Device::Cpu));
    let x = Tensor::randint(5, [b, d], (Kind::Double, Device::Cpu));
    let got = Output::Categorical { levels: 5 }.log_prob(&l, &x).unwrap();
    for i in 0..b {
        for j in 0..d {
            let v: Vec<f64> = (0..5).map(|k| l.double_value(&[i, k, j])).collect();
            let want = softmax(&v)[x.double_value(&[i, j]) as usize].ln();
            assert!((got.double_value(&[i, j]) - want).abs() < 1e-6);
        }
    }
    // A mixture of 3 Gaussians: ln Σ_k π_k N(x; μ_k, σ_k).
    let l = Tensor::randn([b, 9, d], (Kind::Double, Device::Cpu));
    let x = Tensor::randn([b, d], (Kind::Double, Device::Cpu));
    let got = Output::MixtureOfGaussians { components: 3 }
        .log_prob(&l, &x)
        .unwrap();
    for i in 0..b {
        for j in 0..d {
            let w = softmax(
                &(0..3)
                    .map(|k| l.double_value(&[i, k, j]))
                    .collect::<Vec<_>>(),
            );
            let xi = x.double_value(&[i, j]);
            let p: f64 = (0..3)
                .map(|k| {
                    let mu = l.double_value(&[i, 3 + k, j]);
                    let s = l.double_value(&[i, 6 + k, j]).exp();
                    w[k as usize] * (-(xi - mu).powi(2) / (2.0 * s * s)).exp()
                        / (s * (2.0 * std::f64::consts::PI).sqrt())
                })
                .sum();
            assert!((got.double_value(&[i, j]) - p.ln()).abs() < 1e-6);
        }
    }
}

#[test]
fn bad_filters_are_refused() {
    for (options, key) in [
        (SampleOptions::new().top_k(0), "top_k"),
        (SampleOptions::new().top_p(0.0), "top_p"),
        (SampleOptions::new().top_p(1.5), "top_p"),
        (SampleOptions::new().top_p(f64::NAN), "top_p"),
    ] {
        let e = gm_core::testing::error_text(options.begin(4));
        assert!(e.contains(key), "{e}");
    }
}

/// Ties: top-k keeps exactly k values (a Bernoulli logit of 0 with top-k 1 is deterministic).
#[test]
fn top_k_keeps_exactly_k_among_ties() {
    let logits = Tensor::from_slice(&[1.0f32, 1.0, 1.0, 0.0]).unsqueeze(0);
    for k in 1..=3 {
        let keep = kept(
            &filter_logits(&logits, 1.0, Some(k), None)
                .unwrap()
                .squeeze_dim(0),
        );
        assert_eq!(keep.iter().filter(|k| **k).count() as i64, k);
        assert!(!keep[3]);
    }
    let zero = Tensor::zeros([500, 1], (Kind::Float, Device::Cpu));
    let draws = Output::Bernoulli
        .sample(&zero, &SampleOptions::new().top_k(1))
        .unwrap();
    let distinct = draws.unique_dim(0, true, false, false).0.size()[0];
    assert_eq!(distinct, 1, "top-k 1 must draw one outcome");
}

/// Mixture draws have the tempered mixture's mean and variance at temperature 1 and 0.5 (the
/// weights softmax(logits / T), the widths Tσ: Σπμ and Σπ(T²σ² + μ²) − mean²), within 5
/// standard errors.
#[test]
fn mixture_draws_have_the_mixtures_moments() {
    gm_core::tch::manual_seed(4);
    let params =
        Tensor::from_slice(&[0.2f32, -0.5, 1.0, -2.0, 0.5, 3.0, -0.3, 0.4, -1.0]).unsqueeze(0);
    let n = 100_000;
    let many = params.expand([n, 9], false);
    let mu = [-2.0, 0.5, 3.0];
    let sigma: Vec<f64> = [-0.3f64, 0.4, -1.0].iter().map(|l| l.exp()).collect();
    for t in [1.0, 0.5] {
        let w = softmax(&[0.2 / t, -0.5 / t, 1.0 / t]);
        let x = Output::MixtureOfGaussians { components: 3 }
            .sample(&many, &SampleOptions::new().temperature(t))
            .unwrap()
            .to_kind(Kind::Double);
        let mean: f64 = (0..3).map(|k| w[k] * mu[k]).sum();
        let var: f64 = (0..3)
            .map(|k| w[k] * (t * t * sigma[k] * sigma[k] + mu[k] * mu[k]))
            .sum::<f64>()
            - mean * mean;
        let m = x.mean(Kind::Double).double_value(&[]);
        let v = x.var(true).double_value(&[]);
        assert!(
            (m - mean).abs() < 5.0 * (var / n as f64).sqrt(),
            "T={t}: mean {m} vs {mean}"
        );
        // The variance's standard error, bounded using the fourth central moment's estimate.
        let m4 = (&x - m)
            .pow_tensor_scalar(4)
            .mean(Kind::Double)
            .double_value(&[]);
        let se = ((m4 - v * v) / n as f64).sqrt();
        assert!((v - var).abs() < 5.0 * se, "T={t}: variance {v} vs {var}");
    }
}
