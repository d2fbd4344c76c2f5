//! Distances between two sets of samples, for models judged by their samples (GANs, diffusion)
//! and for every family's samples on vector data. They live here, below every family crate, so
//! gm-gan's tests and gm-bench use the same code without a dependency cycle.
//!
//! All of them are computed in double precision on `[n, d]` tensors (images flatten), and
//! each compares two *samples*, so each has a noise floor: the same statistic between two
//! independent samples of the data itself. Report them side by side.
//!
//! - [`mmd_rbf`]: the unbiased estimate of the squared maximum mean discrepancy with a sum of
//!   Gaussian kernels (Gretton et al. 2012); 0 in expectation for equal distributions, so it
//!   can be slightly negative.
//! - [`energy_distance`]: `2 E|X−Y| − E|X−X'| − E|Y−Y'|` (Székely & Rizzo), with the
//!   within-set means over distinct pairs.
//! - [`sliced_wasserstein`]: the 2-Wasserstein distance averaged over random 1D projections.
//! - [`mode_coverage`]: for mixtures with known modes, which modes the samples cover and the
//!   share of samples near any mode.

use crate::{GmError, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use tch::{Kind, Tensor};

/// The samples as `[n, features]` doubles, checked finite and non-empty.
fn as_rows(x: &Tensor, what: &str) -> Result<Tensor> {
    let size = x.size();
    if size.is_empty() || size[0] < 1 {
        return Err(GmError::shape(what, "[n ≥ 1, ...]", &size));
    }
    let rows = x.f_reshape([size[0], -1])?.f_to_kind(Kind::Double)?;
    let finite = rows.f_isfinite()?.f_all()?.f_int64_value(&[])? != 0;
    if !finite {
        return Err(GmError::Domain(format!(
            "{what}: the samples hold NaN or infinite values"
        )));
    }
    Ok(rows)
}

fn pair(x: &Tensor, y: &Tensor, what: &str) -> Result<(Tensor, Tensor)> {
    let (x, y) = (as_rows(x, what)?, as_rows(y, what)?);
    if x.size()[1] != y.size()[1] {
        return Err(GmError::Domain(format!(
            "{what}: the two sample sets have {} and {} features; they must match",
            x.size()[1],
            y.size()[1]
        )));
    }
    Ok((x, y))
}

/// The mean of a square matrix's off-diagonal entries (0 for a 1×1 matrix).
fn off_diagonal_mean(m: &Tensor) -> Result<f64> {
    let n = m.size()[0];
    if n < 2 {
        return Ok(0.0);
    }
    let total = m.f_sum(Kind::Double)?.f_double_value(&[])?;
    let diagonal = m
        .f_diagonal(0, 0, 1)?
        .f_sum(Kind::Double)?
        .f_double_value(&[])?;
    Ok((total - diagonal) / (n * (n - 1)) as f64)
}

/// Squared Euclidean distances `[n, m]` between rows.
fn squared_distances(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    let xx = x
        .f_pow_tensor_scalar(2)?
        .f_sum_dim_intlist(1, true, Kind::Double)?;
    let yy = y
        .f_pow_tensor_scalar(2)?
        .f_sum_dim_intlist(1, true, Kind::Double)?;
    let cross = x.f_matmul(&y.f_tr()?)?;
    Ok(xx
        .f_add(&yy.f_tr()?)?
        .f_sub(&cross.f_mul_scalar(2.0)?)?
        .f_clamp_min(0.0)?)
}

/// Euclidean distances `[n, m]` between the rows of `x` `[n, d]` and `y` `[m, d]`, in double
/// precision (through the expansion `|a|² + |b|² − 2a·b`, clamped at 0 against rounding).
pub fn pairwise_distances(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    Ok(squared_distances(&x.f_to_kind(Kind::Double)?, &y.f_to_kind(Kind::Double)?)?.f_sqrt()?)
}

/// The mean Euclidean distance between distinct rows of `x` `[n ≥ 2, ...]`, as a scalar
/// tensor on `x`'s device (no host read): the spread of a sample set, whose fall during GAN
/// training is a sign of mode collapse.
pub fn mean_pairwise_distance(x: &Tensor) -> Result<Tensor> {
    let n = x.size().first().copied().unwrap_or(0);
    if n < 2 {
        return Err(GmError::shape(
            "mean_pairwise_distance",
            "[n ≥ 2, ...]",
            &x.size(),
        ));
    }
    let rows = x.f_reshape([n, -1])?.f_to_kind(Kind::Double)?;
    let d = pairwise_distances(&rows, &rows)?;
    let off_diagonal = d
        .f_sum(Kind::Double)?
        .f_sub(&d.f_diagonal(0, 0, 1)?.f_sum(Kind::Double)?)?;
    Ok(off_diagonal.f_div_scalar((n * (n - 1)) as f64)?)
}

/// The unbiased estimate of MMD² between the distributions of `x` and `y` (`[n, ...]` and
/// `[m, ...]`, each with at least 2 rows) under the kernel `Σ_σ exp(−|a−b|² / (2σ²))` summed
/// over `bandwidths`. Memory is `O(n·m)`: subsample large sets.
pub fn mmd_rbf(x: &Tensor, y: &Tensor, bandwidths: &[f64]) -> Result<f64> {
    let (x, y) = pair(x, y, "mmd_rbf")?;
    if x.size()[0] < 2 || y.size()[0] < 2 {
        return Err(GmError::Domain(
            "mmd_rbf: each sample set needs at least 2 rows for the unbiased estimate".into(),
        ));
    }
    if bandwidths.is_empty() || bandwidths.iter().any(|b| !(b.is_finite() && *b > 0.0)) {
        return Err(GmError::config(
            "bandwidths",
            format!("need at least one finite positive bandwidth, got {bandwidths:?}"),
        ));
    }
    let kernel = |d2: &Tensor| -> Result<Tensor> {
        let mut k = d2.f_zeros_like()?;
        for &b in bandwidths {
            k = k.f_add(&d2.f_mul_scalar(-1.0 / (2.0 * b * b))?.f_exp()?)?;
        }
        Ok(k)
    };
    let kxx = off_diagonal_mean(&kernel(&squared_distances(&x, &x)?)?)?;
    let kyy = off_diagonal_mean(&kernel(&squared_distances(&y, &y)?)?)?;
    let kxy = kernel(&squared_distances(&x, &y)?)?
        .f_mean(Kind::Double)?
        .f_double_value(&[])?;
    Ok(kxx + kyy - 2.0 * kxy)
}

/// The bandwidths gm reports MMD with for data of typical scale `scale` (e.g. the data's
/// standard deviation): a ladder from a tenth of it to four times it.
pub fn default_bandwidths(scale: f64) -> Vec<f64> {
    [0.1, 0.25, 0.5, 1.0, 2.0, 4.0]
        .iter()
        .map(|f| f * scale)
        .collect()
}

/// The energy distance `2 E|X−Y| − E|X−X'| − E|Y−Y'|` between the distributions of `x` and
/// `y` (Euclidean norm; the within-set terms over distinct pairs, so each set needs at least 2
/// rows). Zero in expectation for equal distributions.
pub fn energy_distance(x: &Tensor, y: &Tensor) -> Result<f64> {
    let (x, y) = pair(x, y, "energy_distance")?;
    if x.size()[0] < 2 || y.size()[0] < 2 {
        return Err(GmError::Domain(
            "energy_distance: each sample set needs at least 2 rows for the within-set means"
                .into(),
        ));
    }
    let xy = pairwise_distances(&x, &y)?
        .f_mean(Kind::Double)?
        .f_double_value(&[])?;
    let xx = off_diagonal_mean(&pairwise_distances(&x, &x)?)?;
    let yy = off_diagonal_mean(&pairwise_distances(&y, &y)?)?;
    Ok(2.0 * xy - xx - yy)
}

/// The sliced 2-Wasserstein distance: the root mean square, over `projections` random unit
/// directions (drawn from `seed`, so the value is reproducible), of the 1D 2-Wasserstein
/// distance between the projected samples. Unequal sets are compared at the quantiles of the
/// smaller one (the larger is cut to its first rows, so shuffle it first).
pub fn sliced_wasserstein(x: &Tensor, y: &Tensor, projections: usize, seed: u64) -> Result<f64> {
    let (x, y) = pair(x, y, "sliced_wasserstein")?;
    if projections == 0 {
        return Err(GmError::config("projections", "must be at least 1"));
    }
    let n = x.size()[0].min(y.size()[0]);
    let (x, y) = (x.f_narrow(0, 0, n)?, y.f_narrow(0, 0, n)?);
    let d = x.size()[1] as usize;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // Gaussian directions by Box–Muller, normalised: uniform on the sphere.
    let mut dirs = Vec::with_capacity(projections * d);
    for _ in 0..projections {
        let v: Vec<f64> = (0..d)
            .map(|_| {
                let (u1, u2): (f64, f64) = (rng.gen::<f64>().max(1e-300), rng.gen());
                (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
            })
            .collect();
        let norm = v.iter().map(|a| a * a).sum::<f64>().sqrt().max(1e-300);
        dirs.extend(v.iter().map(|a| a / norm));
    }
    let dirs = Tensor::f_from_slice(&dirs)?
        .f_reshape([projections as i64, d as i64])?
        .f_to_device(x.device())?
        .f_tr()?;
    let (px, _) = x.f_matmul(&dirs)?.f_sort(0, false)?;
    let (py, _) = y.f_matmul(&dirs)?.f_sort(0, false)?;
    let mean_square = px
        .f_sub(&py)?
        .f_pow_tensor_scalar(2)?
        .f_mean(Kind::Double)?
        .f_double_value(&[])?;
    Ok(mean_square.sqrt())
}

/// How samples of a mixture with known, equally weighted isotropic modes spread over them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModeCoverage {
    /// Modes that received at least a quarter of their fair share (`n / modes`) of the
    /// high-quality samples.
    pub covered: usize,
    pub modes: usize,
    /// The share of samples within 3σ of their nearest mode.
    pub high_quality_share: f64,
    /// High-quality samples per mode.
    pub counts: Vec<i64>,
}

/// Assigns each sample `[n, d]` to its nearest mode (`centers` `[modes, d]`) and counts it as
/// high-quality when it lies within `3 · std` of it (`std`: the modes' common standard
/// deviation). A mode is covered when it gets at least a quarter of its fair share `n / modes`
/// of high-quality samples, so a handful of stray points does not cover it.
pub fn mode_coverage(samples: &Tensor, centers: &Tensor, std: f64) -> Result<ModeCoverage> {
    let (x, c) = pair(samples, centers, "mode_coverage")?;
    if !(std.is_finite() && std > 0.0) {
        return Err(GmError::config(
            "std",
            format!("must be finite and positive, got {std}"),
        ));
    }
    let n = x.size()[0];
    let modes = c.size()[0];
    let (d2, nearest) = squared_distances(&x, &c)?.f_min_dim(1, false)?;
    let good = d2.f_le((3.0 * std) * (3.0 * std))?;
    let hq = good.f_sum(Kind::Int64)?.f_int64_value(&[])?;
    let counts_t = Tensor::f_zeros([modes], (Kind::Int64, x.device()))?.f_index_add(
        0,
        &nearest,
        &good.f_to_kind(Kind::Int64)?,
    )?;
    let counts = Vec::<i64>::try_from(&counts_t)?;
    let threshold = 0.25 * n as f64 / modes as f64;
    Ok(ModeCoverage {
        covered: counts.iter().filter(|&&k| k as f64 >= threshold).count(),
        modes: modes as usize,
        high_quality_share: hq as f64 / n as f64,
        counts,
    })
}
