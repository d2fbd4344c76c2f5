//! The image metrics on cases with known answers: the Fréchet distance between Gaussians
//! against its closed form, class shares, and the classifier on separable synthetic digits.

use gm_bench::classifier::DigitClassifier;
use gm_bench::image_metrics::{class_shares, fidelity, frechet_distance};
use gm_core::tch::{Device, Kind, Tensor};

/// `n` rows whose sample mean is exactly `mean` and whose sample covariance (divisor `n − 1`)
/// is exactly `l lᵀ`: standard Normal draws, centred and whitened, then coloured.
fn exact_sample(n: i64, mean: &[f64], l: &Tensor) -> Tensor {
    let d = mean.len() as i64;
    let z = Tensor::randn([n, d], (Kind::Double, Device::Cpu));
    let z = &z - z.mean_dim(0, true, Kind::Double);
    let cov = z.tr().matmul(&z) / (n - 1) as f64;
    let chol = cov.linalg_cholesky(false);
    // z chol⁻ᵀ has identity covariance.
    let white = Tensor::linalg_solve(&chol, &z.tr(), true).tr();
    white.matmul(&l.tr()) + Tensor::from_slice(mean)
}

fn lower(values: &[f64]) -> Tensor {
    Tensor::from_slice(values).reshape([2, 2])
}

#[test]
fn frechet_distance_matches_the_closed_form_for_gaussians() {
    gm_core::tch::manual_seed(0);
    // Non-commuting covariances in 2D: the eigenvalues of Σ₁^½ Σ₂ Σ₁^½ are those of Σ₁Σ₂, and a
    // 2×2 PSD matrix M has tr √M = √(tr M + 2 √det M).
    let (l1, l2) = (lower(&[1.0, 0.0, 0.6, 0.8]), lower(&[2.0, 0.0, -0.5, 0.3]));
    let (s1, s2) = (l1.matmul(&l1.tr()), l2.matmul(&l2.tr()));
    let (m1, m2) = ([0.5, -1.0], [2.0, 1.0]);
    let a = exact_sample(500, &m1, &l1);
    let b = exact_sample(700, &m2, &l2);
    let p = s1.matmul(&s2);
    let tr_sqrt = (p.trace().double_value(&[]) + 2.0 * p.det().double_value(&[]).sqrt()).sqrt();
    let want = (m1[0] - m2[0]).powi(2)
        + (m1[1] - m2[1]).powi(2)
        + s1.trace().double_value(&[])
        + s2.trace().double_value(&[])
        - 2.0 * tr_sqrt;
    let got = frechet_distance(&a, &b).unwrap();
    assert!(
        (got - want).abs() < 1e-8,
        "Fréchet distance {got}, closed form {want}"
    );
    // Diagonal covariances: |Δμ|² + Σ (√a − √b)².
    let c = exact_sample(400, &[0.0, 0.0], &lower(&[3.0, 0.0, 0.0, 1.0]));
    let e = exact_sample(400, &[1.0, 0.0], &lower(&[1.0, 0.0, 0.0, 2.0]));
    let want = 1.0 + (3.0f64 - 1.0).powi(2) + (1.0f64 - 2.0).powi(2);
    assert!((frechet_distance(&c, &e).unwrap() - want).abs() < 1e-8);
    // A set against itself, and symmetry.
    assert!(frechet_distance(&a, &a).unwrap().abs() < 1e-8);
    assert!((frechet_distance(&a, &b).unwrap() - frechet_distance(&b, &a).unwrap()).abs() < 1e-8);
    // Refusals: too few rows, mismatched widths.
    assert!(frechet_distance(&a.narrow(0, 0, 1), &b).is_err());
    assert!(frechet_distance(&a, &Tensor::zeros([5, 3], (Kind::Double, Device::Cpu))).is_err());
}

#[test]
fn class_shares_count_predictions() {
    let p = Tensor::from_slice(&[0i64, 0, 1, 3]);
    assert_eq!(class_shares(&p, 4).unwrap(), vec![0.5, 0.25, 0.0, 0.25]);
    assert!(class_shares(&p, 3).is_err());
    assert!(class_shares(&Tensor::zeros([0], (Kind::Int64, Device::Cpu)), 3).is_err());
}

/// Digit `k` is a bright horizontal bar at rows `2k + 4 ..= 2k + 5`, on noise.
fn bars(labels: &Tensor) -> Tensor {
    let n = labels.size()[0];
    let rows = Tensor::arange(28, (Kind::Int64, Device::Cpu)).reshape([1, 28]);
    let start = (labels * 2 + 4).reshape([n, 1]);
    let on = rows
        .ge_tensor(&start)
        .logical_and(&rows.le_tensor(&(&start + 1)));
    let image = on
        .to_kind(Kind::Float)
        .reshape([n, 1, 28, 1])
        .repeat([1, 1, 1, 28]);
    (image * 0.8 + Tensor::rand([n, 1, 28, 28], (Kind::Float, Device::Cpu)) * 0.2).clamp(0.0, 1.0)
}

#[test]
fn the_classifier_learns_separable_digits_and_refuses_bad_images() {
    gm_core::tch::set_num_threads(1);
    gm_core::tch::manual_seed(1);
    let y = Tensor::randint(10, [600], (Kind::Int64, Device::Cpu));
    let classifier = DigitClassifier::train(&bars(&y), &y).unwrap();
    assert!(DigitClassifier::train(&bars(&y), &(&y + 10)).is_err());
    let test_y = Tensor::randint(10, [300], (Kind::Int64, Device::Cpu));
    let accuracy = classifier.accuracy(&bars(&test_y), &test_y).unwrap();
    assert!(accuracy > 0.95, "accuracy {accuracy}");
    assert_eq!(
        classifier.features(&bars(&test_y)).unwrap().size(),
        [300, 128]
    );
    let msg = classifier
        .predict(&(bars(&test_y) * 255.0))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("[0, 1]"), "{msg}");
    assert!(classifier
        .predict(&Tensor::zeros([2, 784], (Kind::Float, Device::Cpu)))
        .is_err());
}

#[test]
fn fidelity_of_matching_disjoint_and_collapsed_sets() {
    gm_core::tch::manual_seed(2);
    let real = Tensor::randn([300, 4], (Kind::Double, Device::Cpu));
    // The same set: every point inside the other manifold, each fake in exactly k + 1 balls'
    // worth on average is not guaranteed, but precision, recall and coverage are 1.
    let same = fidelity(&real, &real, 5).unwrap();
    assert_eq!(
        (same.precision, same.recall, same.coverage),
        (1.0, 1.0, 1.0)
    );
    assert!(same.density >= 1.0);
    // Far away: nothing inside anything.
    let far = fidelity(&real, &(&real + 100.0), 5).unwrap();
    assert_eq!(
        (far.precision, far.recall, far.density, far.coverage),
        (0.0, 0.0, 0.0, 0.0)
    );
    // Collapsed onto one real point: precise (it lies in real balls) but no recall and almost
    // no coverage.
    let collapsed = real.narrow(0, 0, 1).repeat([300, 1])
        + Tensor::randn([300, 4], (Kind::Double, Device::Cpu)) * 1e-6;
    let c = fidelity(&real, &collapsed, 5).unwrap();
    assert_eq!(c.precision, 1.0);
    assert!(c.recall < 0.05 && c.coverage < 0.05, "{c:?}");
    // A hand-checked 1D case with k = 1: real {0, 1, 2} have radii {1, 1, 1}; fakes {0.5, 5}.
    let r = Tensor::from_slice(&[0.0f64, 1.0, 2.0]).reshape([3, 1]);
    let f = Tensor::from_slice(&[0.5f64, 5.0, 5.5]).reshape([3, 1]);
    let h = fidelity(&r, &f, 1).unwrap();
    assert!((h.precision - 1.0 / 3.0).abs() < 1e-12);
    assert!((h.density - 2.0 / 3.0).abs() < 1e-12); // 0.5 lies in the balls of 0 and 1
    assert!((h.coverage - 2.0 / 3.0).abs() < 1e-12);
    // Fake radii {4.5, 0.5, 0.5}: the ball of 0.5 reaches every real point.
    assert_eq!(h.recall, 1.0);
    assert!(fidelity(&r, &f, 3).is_err());
}
