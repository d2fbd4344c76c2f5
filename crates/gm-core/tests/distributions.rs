//! Each distribution against closed forms, normalisation on a grid, and sample moments.

use gm_core::distributions::*;
use gm_core::testing::*;
use proptest::prelude::*;
use tch::{Device, Kind, Tensor};

fn dt(v: &[f64]) -> Tensor {
    Tensor::from_slice(v).to_kind(Kind::Double)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Normal log-density against the textbook formula, computed independently in f64.
    #[test]
    fn normal_log_prob_closed_form(mu in -5.0f64..5.0, sigma in 0.05f64..5.0, x in -10.0f64..10.0) {
        let d = Normal::new(&dt(&[mu]), &dt(&[sigma])).unwrap();
        let got = d.log_prob(&dt(&[x])).unwrap().double_value(&[0]);
        let want = -0.5 * ((x - mu) / sigma).powi(2) - sigma.ln() - 0.5 * (2.0 * std::f64::consts::PI).ln();
        prop_assert!((got - want).abs() < 1e-9);
        let h = d.entropy().unwrap().double_value(&[0]);
        prop_assert!((h - (0.5 * (2.0 * std::f64::consts::PI * std::f64::consts::E * sigma * sigma).ln())).abs() < 1e-9);
    }

    /// Bernoulli against `x ln p + (1 - x) ln(1 - p)`, for moderate logits where the naive form is exact enough.
    #[test]
    fn bernoulli_log_prob_closed_form(l in -15.0f64..15.0, x in 0u8..2) {
        let d = Bernoulli::new(&dt(&[l]));
        let got = d.log_prob(&dt(&[x as f64])).unwrap().double_value(&[0]);
        let p = 1.0 / (1.0 + (-l).exp());
        let want = if x == 1 { p.ln() } else { (1.0 - p).ln() };
        prop_assert!((got - want).abs() < 1e-8);
        let h = d.entropy().unwrap().double_value(&[0]);
        let want_h = -(p * p.ln() + (1.0 - p) * (1.0 - p).ln());
        prop_assert!((h - want_h).abs() < 1e-8);
    }

    /// Categorical against `logits_k - ln Σ exp(logits)`.
    #[test]
    fn categorical_log_prob_closed_form(logits in prop::collection::vec(-8.0f64..8.0, 2..7), pick in 0usize..64) {
        let k = pick % logits.len();
        let d = Categorical::new(&dt(&logits)).unwrap();
        let got = d.log_prob(&Tensor::from_slice(&[k as i64]).reshape([])).unwrap().double_value(&[]);
        let lse = logits.iter().map(|l| l.exp()).sum::<f64>().ln();
        prop_assert!((got - (logits[k] - lse)).abs() < 1e-9);
        let h = d.entropy().unwrap().double_value(&[]);
        let want_h: f64 = logits.iter().map(|l| { let p = (l - lse).exp(); -p * (l - lse) }).sum();
        prop_assert!((h - want_h).abs() < 1e-9);
    }

    /// A one-component mixture is its component; a two-component one is the weighted sum.
    #[test]
    fn mixture_log_prob_closed_form(w in -3.0f64..3.0, m1 in -2.0f64..2.0, m2 in -2.0f64..2.0, s in 0.2f64..2.0, x in -4.0f64..4.0) {
        let logits = dt(&[w, 0.0]);
        let loc = dt(&[m1, m2]).reshape([2, 1]);
        let scale = dt(&[s, 2.0 * s]).reshape([2, 1]);
        let d = MixtureOfDiagNormals::new(&logits, &loc, &scale).unwrap();
        let got = d.log_prob(&dt(&[x]).reshape([1, 1])).unwrap().double_value(&[0]);
        let pw = 1.0 / (1.0 + (-w).exp());
        let n = |x: f64, m: f64, s: f64| (-0.5 * ((x - m) / s).powi(2)).exp() / (s * (2.0 * std::f64::consts::PI).sqrt());
        let want = (pw * n(x, m1, s) + (1.0 - pw) * n(x, m2, 2.0 * s)).ln();
        prop_assert!((got - want).abs() < 1e-9);
    }
}

#[test]
fn one_dimensional_densities_integrate_to_one() {
    let normal = Normal::new(&dt(&[0.7]), &dt(&[1.3])).unwrap();
    assert_density_integrates_1d(
        |x| {
            normal
                .log_prob(&x.unsqueeze(1).expand([-1, 1], false))
                .unwrap()
                .squeeze_dim(1)
        },
        -12.0,
        12.0,
        20_001,
        1e-6,
    );
    let mix = MixtureOfDiagNormals::new(
        &dt(&[0.3, -1.0, 0.5]),
        &dt(&[-2.0, 0.0, 3.0]).reshape([3, 1]),
        &dt(&[0.5, 1.0, 0.3]).reshape([3, 1]),
    )
    .unwrap();
    assert_density_integrates_1d(
        |x| mix.log_prob(&x.unsqueeze(1)).unwrap(),
        -10.0,
        10.0,
        20_001,
        1e-6,
    );
    let std = StandardNormal::new(&[1], Device::Cpu).with_kind(Kind::Double);
    assert_density_integrates_1d(
        |x| std.log_prob(&x.unsqueeze(1)).unwrap(),
        -10.0,
        10.0,
        20_001,
        1e-6,
    );
}

#[test]
fn discrete_masses_sum_to_one() {
    let cat = Categorical::new(&dt(&[1.0, -2.0, 0.5, 3.0])).unwrap();
    let total: f64 = (0..4)
        .map(|k| {
            cat.log_prob(&Tensor::from_slice(&[k as i64]).reshape([]))
                .unwrap()
                .double_value(&[])
                .exp()
        })
        .sum();
    assert!((total - 1.0).abs() < 1e-12);
    let b = Bernoulli::new(&dt(&[0.3]));
    let total = b.log_prob(&dt(&[0.0])).unwrap().exp() + b.log_prob(&dt(&[1.0])).unwrap().exp();
    assert!((total.double_value(&[0]) - 1.0).abs() < 1e-12);
}

#[test]
fn sample_moments_match() {
    tch::manual_seed(11);
    let n = 200_000;
    assert_sample_moments(
        &Normal::new(&dt(&[1.0, -2.0]), &dt(&[0.5, 2.0])).unwrap(),
        n,
        5.0,
    );
    assert_sample_moments(&Bernoulli::new(&dt(&[-1.0, 0.0, 2.0])), n, 5.0);
    assert_sample_moments(
        &Categorical::new(&dt(&[0.1, 1.0, -0.5, 0.3])).unwrap(),
        n,
        5.0,
    );
    let mix = MixtureOfDiagNormals::new(
        &dt(&[0.0, 1.0]),
        &dt(&[-1.0, 2.0, 3.0, 0.0]).reshape([2, 2]),
        &dt(&[0.5, 0.2, 1.0, 0.7]).reshape([2, 2]),
    )
    .unwrap();
    assert_sample_moments(&mix, n, 5.0);
    assert_sample_moments(&StandardNormal::new(&[3], Device::Cpu), n, 5.0);
}

#[test]
fn extreme_logits_give_no_nan() {
    let l = Tensor::from_slice(&[-1e4f32, -100.0, 0.0, 100.0, 1e4]);
    let b = Bernoulli::new(&l);
    for x in [0.0f32, 1.0] {
        let lp = b
            .log_prob(&Tensor::full([5], x as f64, (Kind::Float, Device::Cpu)))
            .unwrap();
        assert_eq!(
            lp.isnan().any().int64_value(&[]),
            0,
            "Bernoulli log_prob NaN at x = {x}"
        );
    }
    assert_eq!(b.entropy().unwrap().isnan().any().int64_value(&[]), 0);
    let c = Categorical::new(&Tensor::from_slice(&[1e4f32, -1e4, 0.0, f32::NEG_INFINITY])).unwrap();
    assert!(c.entropy().unwrap().double_value(&[]).is_finite());
    assert!(c
        .log_prob(&Tensor::from_slice(&[0i64]).reshape([]))
        .unwrap()
        .double_value(&[])
        .is_finite());
}

#[test]
fn shapes_follow_torch() {
    let loc = Tensor::zeros([4, 3], (Kind::Float, Device::Cpu));
    let normal = Normal::new(&loc, &loc.ones_like()).unwrap();
    assert_eq!(normal.sample(&[5]).unwrap().size(), [5, 4, 3]);
    let ind = Independent::new(Normal::new(&loc, &loc.ones_like()).unwrap(), 1).unwrap();
    assert_eq!(ind.batch_shape(), [4]);
    assert_eq!(ind.event_shape(), [3]);
    let x = ind.sample(&[2]).unwrap();
    assert_eq!(ind.log_prob(&x).unwrap().size(), [2, 4]);
    // Independent sums the element-wise log-densities.
    let summed = normal
        .log_prob(&x)
        .unwrap()
        .sum_dim_intlist(-1, false, Kind::Float);
    assert_close(
        &ind.log_prob(&x).unwrap(),
        &summed,
        1e-5,
        "Independent = sum over event",
    );
    let cat = Categorical::new(&Tensor::zeros([4, 6], (Kind::Float, Device::Cpu))).unwrap();
    assert_eq!(cat.sample(&[7]).unwrap().size(), [7, 4]);
    assert_eq!(
        cat.log_prob(&cat.sample(&[7]).unwrap()).unwrap().size(),
        [7, 4]
    );
    let std = StandardNormal::new(&[2, 3], Device::Cpu);
    assert_eq!(
        std.log_prob(&std.sample(&[5]).unwrap()).unwrap().size(),
        [5]
    );
}

#[test]
fn bad_shapes_are_errors_not_panics() {
    let loc = Tensor::zeros([4, 3], (Kind::Float, Device::Cpu));
    let ind = Independent::new(Normal::new(&loc, &loc.ones_like()).unwrap(), 1).unwrap();
    let err = ind
        .log_prob(&Tensor::zeros([4, 5], (Kind::Float, Device::Cpu)))
        .unwrap_err();
    assert!(err.to_string().contains("expected shape"), "{err}");
    assert!(Normal::new(&loc, &Tensor::ones([5], (Kind::Float, Device::Cpu))).is_err());
    assert!(Independent::new(Normal::new(&loc, &loc.ones_like()).unwrap(), 3).is_err());
    assert!(
        MixtureOfDiagNormals::new(&Tensor::zeros([2], (Kind::Float, Device::Cpu)), &loc, &loc)
            .is_err()
    );
    let cat = Categorical::new(&Tensor::zeros([3], (Kind::Float, Device::Cpu))).unwrap();
    assert!(cat
        .log_prob(&Tensor::from_slice(&[5i64]).reshape([]))
        .is_err());
    assert!(StandardNormal::new(&[2], Device::Cpu)
        .log_prob(&Tensor::zeros([4, 3], (Kind::Float, Device::Cpu)))
        .is_err());
    let bad_scale = Normal::new(&loc, &loc.zeros_like()).unwrap();
    assert!(bad_scale.validate().is_err());
    assert!(MixtureOfDiagNormals::new(
        &Tensor::zeros([2], (Kind::Float, Device::Cpu)),
        &Tensor::zeros([2, 1], (Kind::Float, Device::Cpu)),
        &Tensor::ones([2, 1], (Kind::Float, Device::Cpu))
    )
    .unwrap()
    .entropy()
    .is_err());
}

#[test]
fn rsample_carries_gradients() {
    let loc = Tensor::zeros([3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let log_scale = Tensor::zeros([3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let d = Normal::from_log_scale(&loc, &log_scale).unwrap();
    let z = d.rsample(&[8]).unwrap();
    z.sum(Kind::Float).backward();
    assert!(loc.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
    assert!(log_scale.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
    assert!(
        Bernoulli::new(&loc).rsample(&[1]).is_err(),
        "Bernoulli is not reparameterisable"
    );
}

/// An independent Bernoulli's summed negative log-probability: against a per-element sum of
/// `softplus(l) - x·l` computed on the host, for zero, one and two event dimensions (with
/// values broadcast over a sample dimension), so that the shortcut the VAE's likelihood takes
/// is its own check, not `log_prob` restated.
#[test]
fn independent_bernoulli_negative_log_prob_sums_each_event() {
    tch::manual_seed(3);
    let logits = Tensor::randn([2, 3, 4], (Kind::Double, Device::Cpu)) * 4.0;
    let x = Tensor::rand([5, 2, 3, 4], (Kind::Double, Device::Cpu))
        .lt(0.4)
        .to_kind(Kind::Double);
    let l: Vec<f64> = Vec::try_from(logits.flatten(0, -1)).unwrap();
    let xs: Vec<f64> = Vec::try_from(x.flatten(0, -1)).unwrap();
    let per_element: Vec<f64> = (0..xs.len())
        .map(|i| {
            let (l, x) = (l[i % l.len()], xs[i]);
            l.max(0.0) + (-l.abs()).exp().ln_1p() - x * l
        })
        .collect();
    for dims in 0..=2usize {
        let d = Independent::new(Bernoulli::new(&logits), dims).unwrap();
        let got = d.negative_log_prob(&x).unwrap();
        let event: usize = [1, 4, 12][dims];
        let want: Vec<f64> = per_element.chunks(event).map(|c| c.iter().sum()).collect();
        let want = Tensor::from_slice(&want).reshape(got.size());
        assert_close(
            &got,
            &want,
            1e-12,
            "Independent<Bernoulli>::negative_log_prob",
        );
        assert_close(&d.log_prob(&x).unwrap(), &(-&want), 1e-12, "log_prob");
    }
}
