//! Metrics of image samples in the digit classifier's feature space
//! ([`crate::classifier::DigitClassifier`]): the Fréchet distance to held-out digits, the class
//! balance of samples, and the accuracy of conditional samples on their requested labels. The
//! held-out digits scored against the training digits give the reference row.

use crate::classifier::DigitClassifier;
use crate::suite::SamplerVariant;
use gm_core::metrics::pairwise_distances;
use gm_core::model::GenerativeModel;
use gm_core::tch::{Device, Kind, Tensor};
use gm_core::{GmError, Result};
use serde::{Deserialize, Serialize};

/// The Fréchet distance between Gaussians fitted to two feature sets `[n, d]`:
/// `|μ₁ − μ₂|² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁^½ Σ₂ Σ₁^½)^½`. The matrix square roots come from
/// symmetric eigendecompositions (negative rounding-error eigenvalues clamped to 0), which is
/// exact for the positive semi-definite matrices involved.
pub fn frechet_distance(a: &Tensor, b: &Tensor) -> Result<f64> {
    let stats = |x: &Tensor| -> Result<(Tensor, Tensor)> {
        let size = x.size();
        if size.len() != 2 || size[0] < 2 {
            return Err(GmError::shape(
                "frechet_distance",
                "[n ≥ 2, features]",
                &size,
            ));
        }
        let x = x.f_to_kind(Kind::Double)?;
        let mean = x.f_mean_dim(0, false, Kind::Double)?;
        let centred = x.f_sub(&mean)?;
        let cov = centred
            .f_tr()?
            .f_matmul(&centred)?
            .f_div_scalar((size[0] - 1) as f64)?;
        Ok((mean, cov))
    };
    let ((m1, s1), (m2, s2)) = (stats(a)?, stats(b)?);
    if m1.size() != m2.size() {
        return Err(GmError::Domain(format!(
            "frechet_distance: feature sets of widths {} and {}",
            m1.size()[0],
            m2.size()[0]
        )));
    }
    let sqrt_psd = |m: &Tensor| -> Result<Tensor> {
        let (values, vectors) = m.f_linalg_eigh("L")?;
        let roots = values.f_clamp_min(0.0)?.f_sqrt()?;
        Ok(vectors
            .f_mul(&roots.f_unsqueeze(0)?)?
            .f_matmul(&vectors.f_tr()?)?)
    };
    let root1 = sqrt_psd(&s1)?;
    let middle = root1.f_matmul(&s2)?.f_matmul(&root1)?;
    let middle = middle.f_add(&middle.f_tr()?)?.f_mul_scalar(0.5)?;
    let (values, _) = middle.f_linalg_eigh("L")?;
    let cross = values
        .f_clamp_min(0.0)?
        .f_sqrt()?
        .f_sum(Kind::Double)?
        .f_double_value(&[])?;
    let mean_term = m1
        .f_sub(&m2)?
        .f_square()?
        .f_sum(Kind::Double)?
        .f_double_value(&[])?;
    let traces = s1.f_trace()?.f_double_value(&[])? + s2.f_trace()?.f_double_value(&[])?;
    Ok(mean_term + traces - 2.0 * cross)
}

/// Precision and recall of generated features against real ones (Kynkäänniemi et al. 2019),
/// and density and coverage (Naeem et al. 2020), each set's manifold the union of balls around
/// its points reaching their `k`-th nearest neighbour.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Fidelity {
    /// The share of generated points inside the real manifold.
    pub precision: f64,
    /// The share of real points inside the generated manifold.
    pub recall: f64,
    /// Real balls containing each generated point, over `k`, averaged (1 for matching sets).
    pub density: f64,
    /// The share of real balls that contain a generated point.
    pub coverage: f64,
}

/// The distance from each row to its `k`-th nearest other row.
fn knn_radii(x: &Tensor, k: i64) -> Result<Tensor> {
    // The row itself is its own nearest neighbour at distance 0 (set exactly: rounding could
    // otherwise put it behind a near-duplicate), hence `k + 1`.
    let mut d = pairwise_distances(x, x)?;
    let _ = d.f_fill_diagonal_(0.0, false)?;
    let (values, _) = d.f_topk(k + 1, 1, false, true)?;
    Ok(values.f_select(1, k)?)
}

/// [`Fidelity`] of `fake` `[m, d]` against `real` `[n, d]` with `k`-nearest-neighbour balls.
pub fn fidelity(real: &Tensor, fake: &Tensor, k: i64) -> Result<Fidelity> {
    for (what, t) in [("fidelity real", real), ("fidelity fake", fake)] {
        if t.dim() != 2 {
            return Err(GmError::shape(what, "[n, features]", &t.size()));
        }
    }
    let (n, m) = (real.size()[0], fake.size()[0]);
    if k < 1 || n <= k || m <= k {
        return Err(GmError::Domain(format!(
            "fidelity: k = {k} needs more than k real and generated points, got {n} and {m}"
        )));
    }
    let real_radii = knn_radii(real, k)?;
    let fake_radii = knn_radii(fake, k)?;
    let d = pairwise_distances(fake, real)?; // [m, n]
    let inside_real = d.f_le_tensor(&real_radii.f_unsqueeze(0)?)?; // fake i in real ball j
    let inside_fake = d.f_le_tensor(&fake_radii.f_unsqueeze(1)?)?; // real j in fake ball i
    let mean = |t: Tensor| -> Result<f64> {
        Ok(t.f_to_kind(Kind::Double)?
            .f_mean(Kind::Double)?
            .f_double_value(&[])?)
    };
    Ok(Fidelity {
        precision: mean(inside_real.f_any_dim(1, false)?)?,
        recall: mean(inside_fake.f_any_dim(0, false)?)?,
        density: inside_real
            .f_to_kind(Kind::Double)?
            .f_sum(Kind::Double)?
            .f_double_value(&[])?
            / (k * m) as f64,
        coverage: mean(inside_real.f_any_dim(0, false)?)?,
    })
}

/// The share of each class `0..classes` among `predicted` labels.
pub fn class_shares(predicted: &Tensor, classes: i64) -> Result<Vec<f64>> {
    let n = predicted.size().first().copied().unwrap_or(0);
    if n == 0 {
        return Err(GmError::Domain("class_shares: no predictions".into()));
    }
    gm_core::model::check_integers(predicted, classes, "class_shares", "predictions")?;
    let counts = predicted
        .f_to_kind(Kind::Int64)?
        .f_bincount::<Tensor>(None, classes)?;
    Ok(Vec::<i64>::try_from(&counts.f_to_device(Device::Cpu)?)?
        .into_iter()
        .map(|c| c as f64 / n as f64)
        .collect())
}

/// Image metrics of one model (or of the held-out digits: the reference row).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ImageMetrics {
    /// Samples scored.
    pub n: i64,
    /// Fréchet distance to the held-out digits in the classifier's features.
    pub frechet_distance: f64,
    /// The held-out digits against as many training digits: what a perfect model scores.
    pub frechet_distance_reference: f64,
    /// Precision, recall, density and coverage against the held-out digits (k = 5).
    pub fidelity: Fidelity,
    /// The same for the training digits against the held-out ones: the reference row.
    pub fidelity_reference: Fidelity,
    /// The share of samples the classifier assigns to each digit.
    pub class_shares: Vec<f64>,
    /// For conditional models: the share of samples classified as the label they were drawn for.
    pub conditional_accuracy: Option<f64>,
    /// The classifier's own accuracy on the held-out digits (grey; binarised).
    pub classifier_test_accuracy: f64,
    pub classifier_binary_test_accuracy: f64,
}

/// `images` `[n, 1, 28, 28]` with values `0..=top` as `[0, 1]` floats.
fn unit_range(images: &Tensor, top: f64) -> Result<Tensor> {
    Ok(images
        .f_to_kind(Kind::Float)?
        .f_div_scalar(top)?
        .f_clamp(0.0, 1.0)?)
}

/// Draws `n` samples of `model` (with labels `i mod classes` for a conditional one), the way
/// `variant` says (the model's defaults for `None`), and scores them against `test` and `train`
/// digits (values `0..=top`, `[m, 1, 28, 28]`).
pub fn image_metrics(
    model: &dyn GenerativeModel,
    classifier: &DigitClassifier,
    train: &Tensor,
    test: &Tensor,
    top: f64,
    n: i64,
    variant: Option<&SamplerVariant>,
) -> Result<ImageMetrics> {
    let classes = model.label_classes();
    let options = || variant.map(|v| v.options()).unwrap_or_default();
    let (samples, labels) = if classes > 0 {
        let labels = Tensor::f_arange(n, (Kind::Int64, Device::Cpu))?.f_remainder(classes)?;
        let s = gm_core::tch::no_grad(|| {
            model.sample_with(n, &options().labels(labels.shallow_clone()))
        })?;
        (s, Some(labels))
    } else {
        (
            gm_core::tch::no_grad(|| model.sample_with(n, &options()))?,
            None,
        )
    };
    let samples = unit_range(&samples, top)?;
    let test = unit_range(test, top)?;
    let m = gm_core::model::leading_dim(&test, "[n, 1, 28, 28]", "image_metrics test")?;
    let m_train = gm_core::model::leading_dim(train, "[n, 1, 28, 28]", "image_metrics train")?;
    // The reference row scores as many training digits as there are samples, so that the
    // Fréchet distance's small-sample bias is the same in both rows.
    let _ = m;
    let train = unit_range(&train.f_narrow(0, 0, n.min(m_train))?, top)?;
    let test_features = classifier.features(&test)?;
    let sample_features = classifier.features(&samples)?;
    let train_features = classifier.features(&train)?;
    let predicted = classifier.predict(&samples)?;
    let (frechet, frechet_reference) = crate::metrics::with_floor(
        &crate::metrics::FrechetDistance,
        &sample_features,
        &train_features,
        &test_features,
    )?;
    Ok(ImageMetrics {
        n,
        frechet_distance: frechet,
        frechet_distance_reference: frechet_reference,
        fidelity: fidelity(&test_features, &sample_features, 5)?,
        fidelity_reference: fidelity(&test_features, &train_features, 5)?,
        class_shares: class_shares(&predicted, 10)?,
        conditional_accuracy: match labels {
            Some(l) => Some(classifier.accuracy(&samples, &l)?),
            None => None,
        },
        classifier_test_accuracy: classifier.test_accuracy,
        classifier_binary_test_accuracy: classifier.binary_test_accuracy,
    })
}
