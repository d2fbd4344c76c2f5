//! The sample distances of `gm_core::metrics` on cases with known answers: hand-computed small
//! sets, closed forms for Gaussians, and exact 1D Wasserstein distances.

use gm_core::metrics::{
    default_bandwidths, energy_distance, mean_pairwise_distance, mmd_rbf, mode_coverage,
    sliced_wasserstein,
};
use gm_core::tch::{Device, Kind, Tensor};

fn rows(v: &[f64], d: i64) -> Tensor {
    Tensor::from_slice(v).reshape([-1, d])
}

#[test]
fn energy_distance_of_small_sets_matches_the_hand_computation() {
    // E|X−Y| = (3 + 5 + 2 + 4) / 4, E|X−X'| = 1 and E|Y−Y'| = 2 over the distinct pairs.
    let x = rows(&[0.0, 1.0], 1);
    let y = rows(&[3.0, 5.0], 1);
    assert!((energy_distance(&x, &y).unwrap() - 4.0).abs() < 1e-12);
    // Symmetric, and 2D distances are Euclidean: {(0,0), (0,0)} against {(3,4), (3,4)} → 2·5.
    let a = rows(&[0.0, 0.0, 0.0, 0.0], 2);
    let b = rows(&[3.0, 4.0, 3.0, 4.0], 2);
    assert!((energy_distance(&a, &b).unwrap() - 10.0).abs() < 1e-9);
    assert!((energy_distance(&b, &a).unwrap() - 10.0).abs() < 1e-9);
    // One row has no within-set pair.
    assert!(energy_distance(&x, &rows(&[3.0], 1)).is_err());
}

/// E|Z| for Z ~ N(μ, σ²): σ√(2/π) exp(−μ²/2σ²) + μ(1 − 2Φ(−μ/σ)).
fn mean_abs_normal(mu: f64, sigma: f64) -> f64 {
    let phi = |z: f64| 0.5 * libm_erfc(-z / std::f64::consts::SQRT_2);
    sigma * (2.0 / std::f64::consts::PI).sqrt() * (-mu * mu / (2.0 * sigma * sigma)).exp()
        + mu * (1.0 - 2.0 * phi(-mu / sigma))
}

/// erfc by its continued-fraction-free Chebyshev fit (Numerical Recipes' erfcc, |error| < 1.2e-7).
fn libm_erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.26551223
            + t * (1.00002368
                + t * (0.37409196
                    + t * (0.09678418
                        + t * (-0.18628806
                            + t * (0.27886807
                                + t * (-1.13520398
                                    + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))))))))
            .exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

#[test]
fn energy_distance_of_shifted_normals_matches_the_closed_form() {
    // X ~ N(0, 1), Y ~ N(δ, 1) in 1D: 2E|X−Y| − E|X−X'| − E|Y−Y'| with X−Y ~ N(−δ, 2) and
    // X−X' ~ N(0, 2). Monte Carlo with 4,000 draws each: standard error about 0.01.
    gm_core::tch::manual_seed(3);
    let n = 4000;
    let mut last = -1.0;
    for delta in [0.0, 0.5, 1.0, 2.0] {
        let x = Tensor::randn([n, 1], (Kind::Double, Device::Cpu));
        let y = Tensor::randn([n, 1], (Kind::Double, Device::Cpu)) + delta;
        let got = energy_distance(&x, &y).unwrap();
        let want =
            2.0 * mean_abs_normal(delta, 2f64.sqrt()) - 2.0 * mean_abs_normal(0.0, 2f64.sqrt());
        assert!(
            (got - want).abs() < 0.04,
            "δ = {delta}: energy distance {got}, closed form {want}"
        );
        assert!(got > last, "the energy distance must grow with the shift");
        last = got;
    }
}

#[test]
fn mmd_matches_an_independent_double_loop() {
    let x = rows(&[0.0, 0.0, 1.0, 0.5, -1.0, 2.0], 2);
    let y = rows(&[0.5, 0.5, 3.0, 1.0, 0.0, -1.0, 2.0, 2.0], 2);
    let bandwidths = [0.5, 2.0];
    let k = |a: &[f64], b: &[f64]| -> f64 {
        let d2: f64 = a.iter().zip(b).map(|(p, q)| (p - q) * (p - q)).sum();
        bandwidths.iter().map(|s| (-d2 / (2.0 * s * s)).exp()).sum()
    };
    let xs: Vec<Vec<f64>> = Vec::<Vec<f64>>::try_from(&x).unwrap();
    let ys: Vec<Vec<f64>> = Vec::<Vec<f64>>::try_from(&y).unwrap();
    let within = |s: &[Vec<f64>]| -> f64 {
        let mut total = 0.0;
        for i in 0..s.len() {
            for j in 0..s.len() {
                if i != j {
                    total += k(&s[i], &s[j]);
                }
            }
        }
        total / (s.len() * (s.len() - 1)) as f64
    };
    let mut cross = 0.0;
    for a in &xs {
        for b in &ys {
            cross += k(a, b);
        }
    }
    cross /= (xs.len() * ys.len()) as f64;
    let want = within(&xs) + within(&ys) - 2.0 * cross;
    let got = mmd_rbf(&x, &y, &bandwidths).unwrap();
    assert!((got - want).abs() < 1e-12, "MMD² {got}, double loop {want}");
}

#[test]
fn mmd_is_near_zero_for_equal_distributions_and_grows_with_a_shift() {
    gm_core::tch::manual_seed(4);
    let n = 1000;
    let x = Tensor::randn([n, 2], (Kind::Double, Device::Cpu));
    let same = Tensor::randn([n, 2], (Kind::Double, Device::Cpu));
    let bw = default_bandwidths(1.0);
    let floor = mmd_rbf(&x, &same, &bw).unwrap();
    assert!(
        floor.abs() < 0.01,
        "MMD² of two samples of N(0, I): {floor}"
    );
    let mut last = floor;
    for delta in [0.25, 0.5, 1.0] {
        let shifted = Tensor::randn([n, 2], (Kind::Double, Device::Cpu)) + delta;
        let m = mmd_rbf(&x, &shifted, &bw).unwrap();
        assert!(
            m > last + 0.005,
            "MMD² must grow with the shift: {m} after {last}"
        );
        last = m;
    }
}

#[test]
fn sliced_wasserstein_in_one_dimension_is_the_exact_distance() {
    // In 1D every projection is ±1, so the value is W2 of the sorted samples: a shift by 1.
    let x = rows(&[2.0, 0.0, 1.0], 1);
    let y = rows(&[1.0, 3.0, 2.0], 1);
    assert!((sliced_wasserstein(&x, &y, 16, 0).unwrap() - 1.0).abs() < 1e-12);
    // A 2D shift by δ along one axis: each projection θ moves by δ·θ₁, and E[θ₁²] = 1/2 for
    // uniform directions, so the value is δ/√2 (up to the sampled directions).
    gm_core::tch::manual_seed(5);
    let a = Tensor::randn([500, 2], (Kind::Double, Device::Cpu));
    let shift = Tensor::from_slice(&[3.0f64, 0.0]);
    let got = sliced_wasserstein(&a, &(&a + &shift), 4096, 1).unwrap();
    let want = 3.0 / 2f64.sqrt();
    assert!(
        (got - want).abs() < 0.05 * want,
        "sliced W2 {got}, expected {want}"
    );
    // Reproducible from its seed.
    assert_eq!(
        sliced_wasserstein(&a, &(&a + &shift), 64, 9).unwrap(),
        sliced_wasserstein(&a, &(&a + &shift), 64, 9).unwrap()
    );
}

#[test]
fn mode_coverage_counts_modes_and_near_samples() {
    let centres = rows(&[0.0, 0.0, 10.0, 0.0, 0.0, 10.0, 10.0, 10.0], 2);
    // Every mode hit evenly: all covered, all high quality.
    let even = centres.repeat([5, 1]);
    let c = mode_coverage(&even, &centres, 0.5).unwrap();
    assert_eq!((c.covered, c.modes), (4, 4));
    assert_eq!(c.high_quality_share, 1.0);
    assert_eq!(c.counts, vec![5, 5, 5, 5]);
    // Collapsed onto one mode, plus far-away points that count for nothing.
    let collapsed = Tensor::cat(
        &[
            centres.narrow(0, 0, 1).repeat([6, 1]),
            rows(&[5.0, 5.0, 5.0, 4.0], 2),
        ],
        0,
    );
    let c = mode_coverage(&collapsed, &centres, 0.5).unwrap();
    assert_eq!(c.covered, 1);
    assert!((c.high_quality_share - 0.75).abs() < 1e-12);
    // A point just inside 3σ counts, one just outside does not.
    let edge = rows(&[1.49, 0.0, 1.51, 0.0], 2);
    assert_eq!(
        mode_coverage(&edge, &centres, 0.5)
            .unwrap()
            .high_quality_share,
        0.5
    );
}

#[test]
fn mean_pairwise_distance_and_refusals() {
    let x = rows(&[0.0, 0.0, 3.0, 4.0], 2);
    let d = mean_pairwise_distance(&x).unwrap().double_value(&[]);
    assert!((d - 5.0).abs() < 1e-9);
    assert!(mean_pairwise_distance(&rows(&[1.0, 2.0], 2)).is_err());
    let nan = rows(&[f64::NAN, 0.0], 1);
    let msg = energy_distance(&nan, &rows(&[1.0, 2.0], 1))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("NaN"), "{msg}");
    let msg = energy_distance(&x, &rows(&[1.0, 2.0], 1))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("features"), "{msg}");
    assert!(mmd_rbf(&x, &x, &[]).is_err());
    assert!(mmd_rbf(&x, &x, &[-1.0]).is_err());
    assert!(sliced_wasserstein(&x, &x, 0, 0).is_err());
}
