//! NADE's negative log-likelihood and its gradient written out by hand for the CPU, the
//! O(D·H)-per-example algorithm of Larochelle & Murray (2011, section 3).
//!
//! Through autograd, NADE's running sum becomes `[batch, D, H]` tensors that the backward pass
//! streams through memory several times (0.8 s per step of 100 digits). Here one example at a
//! time keeps its `D × H` hidden units in cache: the forward pass walks the values in order,
//! adding `W_d` to the pre-activation only when `x_d ≠ 0`, and the backward pass walks them in
//! reverse, carrying `Σ_{s>d} ∂/∂a_s` so every `∂W_d` is one addition. The loops are written so
//! the compiler vectorises them (and compiled for AVX2/FMA when the CPU has it); the sigmoid
//! uses a polynomial exponential accurate to a few units in the last place of an `f32`.
//!
//! Examples are split into at most [`PARTS`] fixed parts, each with its own gradient
//! accumulator, and the parts are added in order: the result depends on the batch only, not
//! on the number of threads, so training resumes bit-identically.

/// The most parts a batch is split into (each holds a gradient accumulator of `2·D·H` values).
const PARTS: usize = 8;

/// NADE's weights, row-major: `w` and `v` are `[D, H]`, `c` is `[H]`, `b` is `[D]`.
pub(crate) struct Weights<'a> {
    pub w: &'a [f32],
    pub c: &'a [f32],
    pub v: &'a [f32],
    pub b: &'a [f32],
    pub d: usize,
    pub h: usize,
}

/// The gradients of the summed NLL, shaped like [`Weights`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Gradients {
    pub w: Vec<f32>,
    pub c: Vec<f32>,
    pub v: Vec<f32>,
    pub b: Vec<f32>,
}

impl Gradients {
    fn zeros(d: usize, h: usize) -> Self {
        Gradients {
            w: vec![0.0; d * h],
            c: vec![0.0; h],
            v: vec![0.0; d * h],
            b: vec![0.0; d],
        }
    }

    fn add(&mut self, other: &Gradients) {
        for (mine, theirs) in [
            (&mut self.w, &other.w),
            (&mut self.c, &other.c),
            (&mut self.v, &other.v),
            (&mut self.b, &other.b),
        ] {
            for (a, b) in mine.iter_mut().zip(theirs) {
                *a += *b;
            }
        }
    }
}

/// The NLL in nats of each example of `x` (`[n, D]` row-major, values 0 or 1, stored in
/// the weights' order) under the conditionals taken in `order` (a permutation of `0..D`), and,
/// when `gradients`, the gradient of their sum. Runs on up to `threads` threads.
pub(crate) fn nll(
    weights: &Weights,
    order: &[usize],
    x: &[f32],
    threads: usize,
    gradients: bool,
) -> (Vec<f64>, Option<Gradients>) {
    let d = weights.d;
    let n = x.len() / d.max(1);
    debug_assert_eq!(order.len(), d);
    debug_assert_eq!(x.len(), n * d);
    let parts = n.clamp(1, PARTS);
    let bounds: Vec<(usize, usize)> = (0..parts)
        .map(|p| (p * n / parts, (p + 1) * n / parts))
        .collect();
    let run = |p: usize| -> (Vec<f64>, Option<Gradients>) {
        let (start, end) = bounds[p];
        run_part(weights, order, &x[start * d..end * d], gradients)
    };
    let threads = threads.clamp(1, parts);
    let mut results: Vec<Option<(Vec<f64>, Option<Gradients>)>> =
        (0..parts).map(|_| None).collect();
    if threads == 1 {
        for (p, slot) in results.iter_mut().enumerate() {
            *slot = Some(run(p));
        }
    } else {
        let share = |t: usize| {
            (t..parts)
                .step_by(threads)
                .map(|p| (p, run(p)))
                .collect::<Vec<_>>()
        };
        let share = &share;
        std::thread::scope(|scope| {
            // Thread 0's share runs here; a thread the system refuses to start has its share
            // run here too (the parts are fixed, so the result is the same).
            let handles: Vec<_> = (1..threads)
                .map(|t| {
                    std::thread::Builder::new()
                        .spawn_scoped(scope, move || share(t))
                        .map_err(|_| t)
                })
                .collect();
            let mut done = share(0);
            for handle in handles {
                match handle {
                    // A panic in a worker is a bug in this module, not bad input: pass it on.
                    Ok(h) => done.extend(h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))),
                    Err(t) => done.extend(share(t)),
                }
            }
            for (p, result) in done {
                results[p] = Some(result);
            }
        });
    }
    let mut nlls = Vec::with_capacity(n);
    let mut total: Option<Gradients> = None;
    for (part_nll, part_grads) in results.into_iter().flatten() {
        nlls.extend(part_nll);
        if let Some(g) = part_grads {
            match &mut total {
                None => total = Some(g),
                Some(t) => t.add(&g),
            }
        }
    }
    (nlls, total)
}

/// One part's examples, on the best instruction set the CPU offers.
fn run_part(
    weights: &Weights,
    order: &[usize],
    x: &[f32],
    gradients: bool,
) -> (Vec<f64>, Option<Gradients>) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has the features the function is compiled for (checked above).
            return unsafe { run_part_avx2(weights, order, x, gradients) };
        }
    }
    run_part_portable(weights, order, x, gradients)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_part_avx2(
    weights: &Weights,
    order: &[usize],
    x: &[f32],
    gradients: bool,
) -> (Vec<f64>, Option<Gradients>) {
    run_part_portable(weights, order, x, gradients)
}

#[inline(always)]
fn run_part_portable(
    weights: &Weights,
    order: &[usize],
    x: &[f32],
    gradients: bool,
) -> (Vec<f64>, Option<Gradients>) {
    let (d, h) = (weights.d, weights.h);
    let mut grads = gradients.then(|| Gradients::zeros(d, h));
    let mut pre = vec![0f32; h];
    let mut hidden = vec![0f32; d * h];
    let mut logits = vec![0f32; d];
    let mut carried = vec![0f32; h];
    let mut nlls = Vec::new();
    for example in x.chunks_exact(d) {
        // Forward: hidden units and logit of each conditional, in generation order.
        pre.copy_from_slice(weights.c);
        let mut nll = 0f64;
        for (s, &pos) in order.iter().enumerate() {
            let units = &mut hidden[s * h..(s + 1) * h];
            for (u, &a) in units.iter_mut().zip(&pre) {
                *u = sigmoid(a);
            }
            let logit = weights.b[pos] + dot(&weights.v[pos * h..(pos + 1) * h], units);
            logits[s] = logit;
            let value = example[pos];
            // −ln σ(l) for a 1 and −ln σ(−l) for a 0, without the cancellation of
            // softplus(l) − l.
            nll += f64::from(softplus(if value != 0.0 { -logit } else { logit }));
            if value != 0.0 {
                axpy(value, &weights.w[pos * h..(pos + 1) * h], &mut pre);
            }
        }
        nlls.push(nll);
        // Backward, in reverse order: `carried` holds Σ_{t>s} ∂nll/∂a_t.
        let Some(g) = grads.as_mut() else { continue };
        carried.fill(0.0);
        for (s, &pos) in order.iter().enumerate().rev() {
            let value = example[pos];
            let row = pos * h..(pos + 1) * h;
            if value != 0.0 {
                axpy(value, &carried, &mut g.w[row.clone()]);
            }
            let dlogit = sigmoid_exact(logits[s]) - value;
            g.b[pos] += dlogit;
            let units = &hidden[s * h..(s + 1) * h];
            axpy(dlogit, units, &mut g.v[row.clone()]);
            for ((c, &u), &v) in carried.iter_mut().zip(units).zip(&weights.v[row]) {
                *c += dlogit * v * (u * (1.0 - u));
            }
        }
        for (gc, &c) in g.c.iter_mut().zip(&carried) {
            *gc += c;
        }
    }
    (nlls, grads)
}

/// `y += a · x`.
#[inline(always)]
fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// `Σ a_i b_i` with eight running sums, so the compiler can keep them in one vector register.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut sums = [0f32; 8];
    let (a_main, a_rest) = a.split_at(a.len() - a.len() % 8);
    let (b_main, b_rest) = b.split_at(a_main.len());
    for (a, b) in a_main.chunks_exact(8).zip(b_main.chunks_exact(8)) {
        for k in 0..8 {
            sums[k] += a[k] * b[k];
        }
    }
    let mut total = sums.iter().sum::<f32>();
    for (a, b) in a_rest.iter().zip(b_rest) {
        total += a * b;
    }
    total
}

/// `ln(1 + eᶻ)` without overflow.
fn softplus(z: f32) -> f32 {
    z.max(0.0) + (-z.abs()).exp().ln_1p()
}

/// The logistic function with the standard library's exponential (used once per value).
fn sigmoid_exact(z: f32) -> f32 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// The logistic function for the hidden units (D·H per example), with [`exp`]; pure
/// arithmetic, so a loop of it vectorises.
#[inline(always)]
fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + exp(-z))
}

/// `eˣ` for `f32`, clamped to `[-87, 87]` (beyond which the logistic is within an `f32`
/// rounding of 0 or 1): `2ⁿ · e^r` with `n = round(x / ln 2)`, `|r| ≤ ln 2 / 2` and a degree-6 Taylor
/// polynomial for `e^r` (truncation error below 1.3e-7 relative).
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that n · LN2_HIGH is exact for |n| < 2⁹.
    const LN2_HIGH: f32 = 0.693_145_75;
    const LN2_LOW: f32 = 1.428_606_8e-6;
    // Adding and subtracting 1.5 · 2²³ rounds to the nearest integer without a call.
    const ROUNDER: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 87.0);
    let n = (x * LOG2_E + ROUNDER) - ROUNDER;
    let r = (x - n * LN2_HIGH) - n * LN2_LOW;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    p * scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polynomial_exponential_is_accurate_to_a_few_ulps_over_its_range() {
        let mut worst = 0f64;
        let steps = 200_000;
        for i in 0..=steps {
            let x = -87.0 + 174.0 * i as f64 / steps as f64;
            let x = x as f32;
            let got = f64::from(exp(x));
            let want = f64::from(x).exp();
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 4e-7, "worst relative error {worst:e}");
        // Clamped beyond the range, and finite.
        assert_eq!(exp(1000.0), exp(87.0));
        assert_eq!(exp(-1000.0), exp(-87.0));
        assert!(sigmoid(-1000.0) >= 0.0 && sigmoid(1000.0) <= 1.0);
    }

    #[test]
    fn dot_and_softplus_agree_with_plain_formulas() {
        let a: Vec<f32> = (0..21).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..21).map(|i| (i as f32 * 0.11).cos()).collect();
        let plain: f64 = a
            .iter()
            .zip(&b)
            .map(|(x, y)| f64::from(*x) * f64::from(*y))
            .sum();
        assert!((f64::from(dot(&a, &b)) - plain).abs() < 1e-5);
        for z in [-100.0f32, -3.0, -1e-3, 0.0, 2.5, 50.0] {
            let want = (1.0 + f64::from(z).exp()).ln();
            assert!(
                (f64::from(softplus(z)) - want).abs() <= 1e-6 * want.max(1.0),
                "{z}"
            );
        }
    }
}
