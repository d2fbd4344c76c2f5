//! Reusable law checks for tests, called by every crate's property tests.
//!
//! Each `assert_*` function panics with a message that says which law failed, by how much,
//! and at which tolerance, so a failing proptest case shrinks to a readable counter-example.

pub mod conformance;

pub use conformance::{
    assert_refuses_data, assert_states_identical, check_conformance, check_conformance_on,
    example_data, state_snapshot, ConformanceCase,
};

use crate::bijectors::{autograd_jacobian, autograd_log_abs_det, Bijector};
use crate::distributions::Distribution;
use tch::{Kind, Tensor};

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    a.to_kind(Kind::Double)
        .f_sub(&b.to_kind(Kind::Double))
        .expect("same shapes")
        .abs()
        .max()
        .double_value(&[])
}

/// `inverse(forward(x)) ≈ x` within `tol` (max abs), and the two log-dets cancel within `tol`
/// per unit of event size.
pub fn assert_bijector_inverts(b: &dyn Bijector, x: &Tensor, tol: f64) {
    let (y, ld_f) = b.forward(x).expect("forward");
    let (x2, ld_i) = b.inverse(&y).expect("inverse");
    assert_eq!(x2.size(), x.size(), "inverse(forward(x)) changed the shape");
    let err = max_abs_diff(&x2, x);
    assert!(
        err <= tol,
        "inverse(forward(x)) differs from x by {err:e} > {tol:e}"
    );
    let event: i64 = x.size()[1..].iter().product();
    let ld_err = max_abs_diff(&ld_f, &ld_i.f_neg().expect("neg"));
    assert!(
        ld_err <= tol * event.max(1) as f64,
        "forward and inverse log-dets do not cancel: off by {ld_err:e}"
    );
}

/// `forward(inverse(y)) ≈ y` within `tol`.
pub fn assert_bijector_inverts_from_output(b: &dyn Bijector, y: &Tensor, tol: f64) {
    let (x, _) = b.inverse(y).expect("inverse");
    let (y2, _) = b.forward(&x).expect("forward");
    let err = max_abs_diff(&y2, y);
    assert!(
        err <= tol,
        "forward(inverse(y)) differs from y by {err:e} > {tol:e}"
    );
}

/// The forward log-det of each of the first `max_examples` examples equals `ln |det|` of the
/// full autograd Jacobian, within `tol`. Use double-precision inputs and parameters.
pub fn assert_log_det_matches_autograd(b: &dyn Bijector, x: &Tensor, tol: f64, max_examples: i64) {
    let (_, ld) = b.forward(x).expect("forward");
    let n = x.size()[0].min(max_examples);
    for i in 0..n {
        let xi = x.get(i);
        let reference =
            autograd_log_abs_det(|z| Ok(b.forward(z)?.0), &xi).expect("autograd Jacobian");
        let got = ld.double_value(&[i]);
        assert!(
            (got - reference).abs() <= tol,
            "example {i}: log|det J| = {got}, autograd Jacobian gives {reference} (tolerance {tol:e})"
        );
    }
}

/// Output `i` of `f` (a map `[1, D] → [1, K, D]` or `[1, D]`) does not depend on any input whose
/// degree is at least that of `i`: the autoregressive property, checked with autograd at `x` `[D]`.
pub fn assert_autoregressive<F>(f: F, x: &Tensor, degrees: &[i64])
where
    F: Fn(&Tensor) -> Tensor,
{
    let d = degrees.len() as i64;
    let (j, _) = autograd_jacobian(|z| Ok(f(z)), x).expect("Jacobian");
    let n_out = j.size()[0];
    assert_eq!(n_out % d, 0, "outputs must be a multiple of the {d} inputs");
    for row in 0..n_out {
        let i = row % d;
        for col in 0..d {
            if degrees[col as usize] >= degrees[i as usize] {
                let v = j.double_value(&[row, col]);
                assert!(
                    v == 0.0,
                    "output for dimension {i} (degree {}) depends on input {col} (degree {}): ∂ = {v}",
                    degrees[i as usize],
                    degrees[col as usize]
                );
            }
        }
    }
}

/// `∫ exp(log_prob(x)) dx ≈ 1` over `[lo, hi]` by the trapezoid rule with `n` points; `log_prob`
/// maps `[n]` to `[n]`.
pub fn assert_density_integrates_1d<F>(log_prob: F, lo: f64, hi: f64, n: i64, tol: f64)
where
    F: Fn(&Tensor) -> Tensor,
{
    let x = Tensor::linspace(lo, hi, n, (Kind::Double, tch::Device::Cpu));
    let p = log_prob(&x).to_kind(Kind::Double).exp();
    let integral = Tensor::trapezoid_x(&p, &x, -1).double_value(&[]);
    assert!(
        (integral - 1.0).abs() <= tol,
        "density integrates to {integral} over [{lo}, {hi}], not 1 ± {tol}"
    );
}

/// The same over the square `[lo, hi]²` with `n × n` points; `log_prob` maps `[m, 2]` to `[m]`.
/// Returns the integral.
pub fn assert_density_integrates_2d<F>(log_prob: F, lo: f64, hi: f64, n: i64, tol: f64) -> f64
where
    F: Fn(&Tensor) -> Tensor,
{
    let axis = Tensor::linspace(lo, hi, n, (Kind::Double, tch::Device::Cpu));
    let grid = Tensor::meshgrid_indexing(&[&axis, &axis], "ij");
    let pts = Tensor::stack(&[grid[0].reshape([-1]), grid[1].reshape([-1])], 1);
    let mut parts = Vec::new();
    let total = pts.size()[0];
    let chunk = 65_536;
    let mut start = 0;
    while start < total {
        let len = chunk.min(total - start);
        parts.push(
            log_prob(&pts.narrow(0, start, len))
                .to_kind(Kind::Double)
                .exp(),
        );
        start += len;
    }
    let p = Tensor::cat(&parts, 0).reshape([n, n]);
    let integral =
        Tensor::trapezoid_x(&Tensor::trapezoid_x(&p, &axis, 1), &axis, 0).double_value(&[]);
    assert!(
        (integral - 1.0).abs() <= tol,
        "density integrates to {integral} over [{lo}, {hi}]², not 1 ± {tol}"
    );
    integral
}

/// Sample mean and variance of `n` draws match `mean()` and `variance()` within `sigmas`
/// standard errors (the variance's error estimated from the sample fourth moment).
pub fn assert_sample_moments(d: &dyn Distribution, n: i64, sigmas: f64) {
    let x = d.sample(&[n]).expect("sample").to_kind(Kind::Double);
    let mean = d.mean().expect("mean").to_kind(Kind::Double);
    let var = d.variance().expect("variance").to_kind(Kind::Double);
    let m = x.mean_dim(0, false, Kind::Double);
    let centred = &x - &m;
    let v = centred.square().mean_dim(0, false, Kind::Double);
    let m4 = centred
        .pow_tensor_scalar(4)
        .mean_dim(0, false, Kind::Double);
    let se_mean = (&var / n as f64).sqrt();
    let se_var = ((&m4 - &v.square()).clamp_min(0.0) / n as f64).sqrt();
    let z_mean = ((&m - &mean).abs() / (se_mean + 1e-12))
        .max()
        .double_value(&[]);
    let z_var = ((&v - &var).abs() / (se_var + 1e-12))
        .max()
        .double_value(&[]);
    assert!(
        z_mean <= sigmas,
        "{}: sample mean is {z_mean:.2} standard errors from mean()",
        d.name()
    );
    assert!(
        z_var <= sigmas,
        "{}: sample variance is {z_var:.2} standard errors from variance()",
        d.name()
    );
}

/// `KL(p ‖ q) ≥ 0` everywhere (up to `tol` below zero) and `KL(p ‖ p) ≈ 0` within `tol`.
pub fn assert_kl_laws(kl_pq: &Tensor, kl_pp: &Tensor, tol: f64) {
    let min = kl_pq.min().double_value(&[]);
    assert!(min >= -tol, "KL(p‖q) is negative: {min}");
    let self_kl = kl_pp.abs().max().double_value(&[]);
    assert!(self_kl <= tol, "KL(p‖p) is {self_kl}, not 0");
}

/// The analytic KL agrees with a Monte Carlo estimate within `sigmas` standard errors (plus
/// `abs_tol`, for estimates whose standard error is near zero).
pub fn assert_kl_matches_monte_carlo(
    analytic: &Tensor,
    estimate: &Tensor,
    stderr: &Tensor,
    sigmas: f64,
    abs_tol: f64,
) {
    let gap = (analytic.to_kind(Kind::Double) - estimate.to_kind(Kind::Double)).abs();
    let allowed = stderr.to_kind(Kind::Double) * sigmas + abs_tol;
    let worst = (&gap - &allowed).max().double_value(&[]);
    assert!(
        worst <= 0.0,
        "analytic KL and Monte Carlo estimate differ by {worst} beyond {sigmas} standard errors"
    );
}

/// `log_prob` of a `[n]` grid of values equals `expected` within `tol` (closed-form checks).
pub fn assert_close(actual: &Tensor, expected: &Tensor, tol: f64, what: &str) {
    assert_eq!(actual.size(), expected.size(), "{what}: shapes differ");
    let err = max_abs_diff(actual, expected);
    assert!(err <= tol, "{what}: differs by {err:e} > {tol:e}");
}

/// `|actual − expected| ≤ tol · max(|expected|, 1)` at every entry: a relative tolerance for
/// large entries and an absolute one near zero, for maps computed two ways (fused against plain)
/// whose values span orders of magnitude.
pub fn assert_close_per_element(actual: &Tensor, expected: &Tensor, tol: f64, what: &str) {
    assert_eq!(actual.size(), expected.size(), "{what}: shapes differ");
    let excess = (actual - expected).abs() - expected.abs().clamp_min(1.0) * tol;
    let excess = excess.max().double_value(&[]);
    assert!(
        excess <= 0.0,
        "{what}: an entry differs by {excess:e} more than allowed ({tol:e} relative)"
    );
}

/// The message of the error `result` must be, panicking if it is `Ok`: for tests of bad input.
pub fn error_text<T>(result: crate::Result<T>) -> String {
    match result {
        Ok(_) => panic!("expected an error, got Ok"),
        Err(e) => e.to_string(),
    }
}

/// Which earlier inputs [`assert_causal`] requires each output to see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MustSee {
    /// Only the zero pattern is checked (models with a limited receptive field or a known
    /// blind spot, such as PixelCNN's).
    Nothing,
    /// Every earlier input must have a non-zero gradient: no blind spot (Gated PixelCNN, MADE,
    /// NADE, a Transformer), on an input small enough to lie inside the receptive field.
    AllEarlier,
}

/// The causality of an autoregressive network, by autograd. `f` maps an input `[1, D]` (`D`
/// values in storage order: raster order for images, time for sequences) to outputs
/// `[1, K, D]` or `[1, D]` whose position `d` parameterises the conditional of value `d`;
/// `order` lists the values in generation order. For every position `order[s]`, the gradient
/// of its outputs with respect to the inputs `order[s..]` (itself and everything after it) must
/// be exactly zero; with [`MustSee::AllEarlier`] its gradient with respect to each of
/// `order[..s]` must also be non-zero. `x` `[D]` is the point the gradients are taken at (use
/// generic values, so that no gradient vanishes by accident). Returns, for each position, how
/// many earlier inputs it sees.
pub fn assert_causal<F>(f: F, x: &Tensor, order: &[i64], must_see: MustSee) -> Vec<usize>
where
    F: Fn(&Tensor) -> Tensor,
{
    let d = x.numel() as i64;
    let rank = order_ranks(order, d);
    let input = x.detach().reshape([1, d]).copy().set_requires_grad(true);
    let out = causal_outputs(&f(&input), d);
    // A fixed random projection of each position's outputs, so that dependences of several
    // outputs cannot cancel in their sum.
    let projection = Tensor::from_slice(
        &(0..out.size()[1])
            .map(|k| 1.0 + 0.618_033_988_75 * k as f64 % 1.0)
            .collect::<Vec<f64>>(),
    )
    .to_kind(out.kind());
    let mut seen = Vec::with_capacity(order.len());
    for (s, &pos) in order.iter().enumerate() {
        let target = (out.select(2, pos).squeeze_dim(0) * &projection).sum(Kind::Double);
        let g = Tensor::run_backward(&[&target], &[&input], true, false)
            .remove(0)
            .reshape([d]);
        let g: Vec<f64> = Vec::try_from(&g.to_kind(Kind::Double)).expect("gradient to host");
        let mut count = 0;
        for (j, gj) in g.iter().enumerate() {
            if rank[j] >= s {
                assert!(
                    *gj == 0.0,
                    "position {pos} (step {s} of the order) depends on input {j} (step {}): ∂ = {gj}",
                    rank[j]
                );
            } else if *gj != 0.0 {
                count += 1;
            } else if must_see == MustSee::AllEarlier {
                panic!(
                    "position {pos} (step {s} of the order) does not see the earlier input {j} (step {}): a blind spot",
                    rank[j]
                );
            }
        }
        seen.push(count);
    }
    seen
}

/// Each input's step in `order`, checking that `order` is a permutation of `0..d`.
fn order_ranks(order: &[i64], d: i64) -> Vec<usize> {
    assert_eq!(
        order.len() as i64,
        d,
        "the order must list each of the {d} inputs once"
    );
    let mut sorted = order.to_vec();
    sorted.sort_unstable();
    assert!(
        sorted.iter().copied().eq(0..d),
        "the order must be a permutation of 0..{d}, got {order:?}"
    );
    let mut rank = vec![0usize; d as usize];
    for (s, &pos) in order.iter().enumerate() {
        rank[pos as usize] = s;
    }
    rank
}

/// Outputs `[1, K, D]` from `[1, K, D]` or `[1, D]`.
fn causal_outputs(out: &Tensor, d: i64) -> Tensor {
    let out = match out.dim() {
        2 => out.unsqueeze(1),
        3 => out.shallow_clone(),
        _ => panic!("outputs must be [1, K, D] or [1, D], got {:?}", out.size()),
    };
    assert_eq!(out.size()[2], d, "outputs must have one position per input");
    out
}

/// The causality of a network that reads its inputs as discrete tokens (an embedding lookup
/// has no gradient with respect to the value), by enumeration: `x` `[D]` holds levels in
/// `0..levels`; for every input `j` and every other level, the outputs of every position at
/// or before `j` in `order` must stay bit-identical, and with [`MustSee::AllEarlier`] every
/// position after `j` must change for some level. `f` maps levels `[1, D]` (float) to outputs as
/// for [`assert_causal`]. Returns, for each position in order, how many earlier inputs it sees.
pub fn assert_causal_discrete<F>(
    f: F,
    x: &Tensor,
    levels: i64,
    order: &[i64],
    must_see: MustSee,
) -> Vec<usize>
where
    F: Fn(&Tensor) -> Tensor,
{
    let d = x.numel() as i64;
    let rank = order_ranks(order, d);
    let x = x.detach().reshape([1, d]).to_kind(Kind::Float);
    let base = causal_outputs(&f(&x), d);
    let mut seen = vec![0usize; d as usize];
    for j in 0..d {
        let current = x.double_value(&[0, j]) as i64;
        let mut changed = vec![false; d as usize];
        for level in (0..levels).filter(|&l| l != current) {
            let alt = x.copy();
            let _ = alt.select(1, j).fill_(level as f64);
            let out = causal_outputs(&f(&alt), d);
            for pos in 0..d {
                let same = out.select(2, pos).equal(&base.select(2, pos));
                if rank[pos as usize] <= rank[j as usize] {
                    assert!(
                        same,
                        "position {pos} (step {} of the order) changes with input {j} (step {}) set to {level}",
                        rank[pos as usize], rank[j as usize]
                    );
                } else if !same {
                    changed[pos as usize] = true;
                }
            }
        }
        for pos in 0..d {
            if rank[pos as usize] > rank[j as usize] {
                if changed[pos as usize] {
                    seen[rank[pos as usize]] += 1;
                } else if must_see == MustSee::AllEarlier {
                    panic!(
                        "position {pos} (step {} of the order) does not see the earlier input {j} (step {}): a blind spot",
                        rank[pos as usize], rank[j as usize]
                    );
                }
            }
        }
    }
    seen
}
