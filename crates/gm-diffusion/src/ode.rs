//! ODE solvers shared by the continuous-time models: Euler, Heun, classic Runge–Kutta 4 with a
//! fixed number of steps, and the adaptive Dormand–Prince 5(4) pair.
//!
//! The state is a list of tensors that all lead with the batch dimension (an example and, for
//! likelihoods, its accumulated divergence). Time is a `[batch]` float64 tensor, so the adaptive
//! solver can give **every example its own step size**: each example's trajectory, its accepted
//! and rejected steps depend on that example alone, which keeps a likelihood independent of the
//! batch it is computed in (the conformance harness checks this). Examples that have arrived
//! take steps of length zero until the last one arrives; one batched call of the vector field is
//! one function evaluation, and that count is reported.

use crate::schedule::per_example;
use gm_core::tch::{Kind, Tensor};
use gm_core::train::config::{check_range, Config};
use gm_core::{GmError, Result};
use serde::{Deserialize, Serialize};
use std::str::FromStr;

/// Which solver integrates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OdeSolver {
    /// Explicit Euler: one evaluation per step, first order.
    Euler,
    /// Heun's method (explicit trapezoid): two evaluations per step, second order.
    Heun,
    /// Classic Runge–Kutta: four evaluations per step, fourth order.
    Rk4,
    /// Dormand–Prince 5(4) with per-example step-size control to `rtol` and `atol` (six
    /// evaluations per attempted step; the last stage is reused as the next step's first).
    Dopri5,
}

impl OdeSolver {
    /// The names `SampleOptions::solver` accepts.
    pub const NAMES: [&'static str; 4] = ["euler", "heun", "rk4", "dopri5"];

    /// Evaluations per step of a fixed-step solver.
    pub fn evaluations_per_step(self) -> usize {
        match self {
            OdeSolver::Euler => 1,
            OdeSolver::Heun => 2,
            OdeSolver::Rk4 => 4,
            OdeSolver::Dopri5 => 6,
        }
    }
}

impl FromStr for OdeSolver {
    type Err = GmError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "euler" => Ok(OdeSolver::Euler),
            "heun" => Ok(OdeSolver::Heun),
            "rk4" => Ok(OdeSolver::Rk4),
            "dopri5" => Ok(OdeSolver::Dopri5),
            other => Err(GmError::config(
                "solver",
                format!(
                    "unknown ODE solver {other:?}; expected one of {}",
                    OdeSolver::NAMES.join(", ")
                ),
            )),
        }
    }
}

/// How an ODE is integrated: the solver, the steps of a fixed-step solver, and the tolerances
/// of the adaptive one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OdeConfig {
    pub solver: OdeSolver,
    /// Steps of Euler, Heun or RK4 over the whole interval.
    pub steps: usize,
    /// Relative tolerance of Dormand–Prince.
    pub rtol: f64,
    /// Absolute tolerance of Dormand–Prince.
    pub atol: f64,
    /// Dormand–Prince gives up (with an error) after this many evaluations.
    pub max_evaluations: usize,
}

impl OdeConfig {
    /// The solver in words for reports: `dopri5 (rtol 1e-5, atol 1e-5)` or `rk4, 20 steps`.
    pub fn describe(&self) -> String {
        match self.solver {
            OdeSolver::Dopri5 => format!("dopri5 (rtol {:e}, atol {:e})", self.rtol, self.atol),
            solver => format!("{solver:?}, {} steps", self.steps).to_lowercase(),
        }
    }
}

impl Default for OdeConfig {
    fn default() -> Self {
        OdeConfig {
            solver: OdeSolver::Dopri5,
            steps: 100,
            rtol: 1e-5,
            atol: 1e-5,
            max_evaluations: 20_000,
        }
    }
}

impl Config for OdeConfig {
    fn validate(&self) -> Result<()> {
        if !(1..=1_000_000).contains(&self.steps) {
            return Err(GmError::config(
                "steps",
                format!("must be in [1, 1000000], got {}", self.steps),
            ));
        }
        check_range("rtol", self.rtol, 1e-12, 1.0)?;
        check_range("atol", self.atol, 1e-12, 1.0)?;
        if !(1..=10_000_000).contains(&self.max_evaluations) {
            return Err(GmError::config(
                "max_evaluations",
                format!("must be in [1, 10000000], got {}", self.max_evaluations),
            ));
        }
        Ok(())
    }
}

impl OdeConfig {
    /// A fixed-step solver with `steps` steps.
    pub fn fixed(solver: OdeSolver, steps: usize) -> Self {
        OdeConfig {
            solver,
            steps,
            ..OdeConfig::default()
        }
    }

    /// Dormand–Prince to the given tolerances.
    pub fn adaptive(rtol: f64, atol: f64) -> Self {
        OdeConfig {
            solver: OdeSolver::Dopri5,
            rtol,
            atol,
            ..OdeConfig::default()
        }
    }
}

/// The right-hand side dy/dt = f(t, y): times `[batch]` (float64) and the state.
pub type VectorField<'a> = dyn Fn(&Tensor, &[Tensor]) -> Result<Vec<Tensor>> + 'a;

/// The state at the end of the interval and what it cost.
#[derive(Debug)]
pub struct OdeSolution {
    pub state: Vec<Tensor>,
    /// Batched evaluations of the vector field.
    pub evaluations: usize,
    /// Batched step attempts, accepted or rejected (fixed-step solvers: `steps`).
    pub steps: usize,
    /// Rejected attempts summed over examples (Dormand–Prince only).
    pub rejected: i64,
}

/// The boolean `mask` `[b]` reshaped to broadcast over `like` `[b, ...]`.
fn mask_like(mask: &Tensor, like: &Tensor) -> Result<Tensor> {
    let mut shape = vec![1i64; like.dim()];
    shape[0] = -1;
    Ok(mask.f_reshape(shape.as_slice())?)
}

/// `y + Σ_j w_j k_j`, with per-example weights `w_j` `[b]` (a weight of `None` is skipped).
fn combine(y: &[Tensor], ks: &[(&[Tensor], Option<&Tensor>)]) -> Result<Vec<Tensor>> {
    y.iter()
        .enumerate()
        .map(|(c, yc)| {
            let mut out = yc.shallow_clone();
            for (k, w) in ks {
                if let Some(w) = w {
                    out = out.f_add(&k[c].f_mul(&per_example(w, yc)?)?)?;
                }
            }
            Ok(out)
        })
        .collect()
}

/// `field` at (t, y), checked to return one tensor per state tensor, each of its shape: a
/// field that does not is an error, not a panic or a silent broadcast.
fn evaluate(field: &VectorField, t: &Tensor, y: &[Tensor]) -> Result<Vec<Tensor>> {
    let k = field(t, y)?;
    if k.len() != y.len() || k.iter().zip(y).any(|(a, b)| a.size() != b.size()) {
        return Err(GmError::Domain(format!(
            "ODE solve: the vector field returned shapes {:?} for a state of shapes {:?}",
            k.iter().map(|a| a.size()).collect::<Vec<_>>(),
            y.iter().map(|b| b.size()).collect::<Vec<_>>()
        )));
    }
    Ok(k)
}

fn batch_of(y0: &[Tensor]) -> Result<i64> {
    let first = y0
        .first()
        .ok_or_else(|| GmError::Domain("ODE solve: the state is empty".into()))?;
    let b = first.size().first().copied().unwrap_or(0);
    if b == 0 || y0.iter().any(|y| y.size().first() != Some(&b)) {
        return Err(GmError::Domain(format!(
            "ODE solve: every state tensor must lead with the same non-empty batch, got {:?}",
            y0.iter().map(|y| y.size()).collect::<Vec<_>>()
        )));
    }
    Ok(b)
}

/// Integrates dy/dt = `field`(t, y) from `t0` to `t1` (either direction) starting at `y0`.
pub fn solve(
    field: &VectorField,
    y0: Vec<Tensor>,
    t0: f64,
    t1: f64,
    config: &OdeConfig,
) -> Result<OdeSolution> {
    config.validate()?;
    if !t0.is_finite() || !t1.is_finite() {
        return Err(GmError::Domain(format!(
            "ODE solve: the interval [{t0}, {t1}] must be finite"
        )));
    }
    let b = batch_of(&y0)?;
    let device = y0[0].device();
    if t0 == t1 {
        return Ok(OdeSolution {
            state: y0,
            evaluations: 0,
            steps: 0,
            rejected: 0,
        });
    }
    match config.solver {
        OdeSolver::Dopri5 => dopri5(field, y0, t0, t1, config, b, device),
        fixed => {
            let h = (t1 - t0) / config.steps as f64;
            let hs = Tensor::f_full([b], h, (Kind::Double, device))?;
            let half = hs.f_mul_scalar(0.5)?;
            let sixth = hs.f_div_scalar(6.0)?;
            let third = hs.f_div_scalar(3.0)?;
            let mut y = y0;
            for i in 0..config.steps {
                let t = Tensor::f_full([b], t0 + i as f64 * h, (Kind::Double, device))?;
                let k1 = evaluate(field, &t, &y)?;
                y = match fixed {
                    OdeSolver::Euler => combine(&y, &[(&k1, Some(&hs))])?,
                    OdeSolver::Heun => {
                        let k2 =
                            evaluate(field, &t.f_add(&hs)?, &combine(&y, &[(&k1, Some(&hs))])?)?;
                        combine(&y, &[(&k1, Some(&half)), (&k2, Some(&half))])?
                    }
                    _ => {
                        let mid = t.f_add(&half)?;
                        let k2 = evaluate(field, &mid, &combine(&y, &[(&k1, Some(&half))])?)?;
                        let k3 = evaluate(field, &mid, &combine(&y, &[(&k2, Some(&half))])?)?;
                        let k4 =
                            evaluate(field, &t.f_add(&hs)?, &combine(&y, &[(&k3, Some(&hs))])?)?;
                        combine(
                            &y,
                            &[
                                (&k1, Some(&sixth)),
                                (&k2, Some(&third)),
                                (&k3, Some(&third)),
                                (&k4, Some(&sixth)),
                            ],
                        )?
                    }
                };
            }
            Ok(OdeSolution {
                state: y,
                evaluations: config.steps * fixed.evaluations_per_step(),
                steps: config.steps,
                rejected: 0,
            })
        }
    }
}

/// Dormand & Prince (1980): nodes, the stage matrix, the 5th-order weights (also the last
/// stage's row, so that stage is f at the new point) and the embedded 4th-order weights.
const C: [f64; 7] = [0.0, 0.2, 0.3, 0.8, 8.0 / 9.0, 1.0, 1.0];
const A: [[f64; 6]; 7] = [
    [0.0; 6],
    [0.2, 0.0, 0.0, 0.0, 0.0, 0.0],
    [3.0 / 40.0, 9.0 / 40.0, 0.0, 0.0, 0.0, 0.0],
    [44.0 / 45.0, -56.0 / 15.0, 32.0 / 9.0, 0.0, 0.0, 0.0],
    [
        19372.0 / 6561.0,
        -25360.0 / 2187.0,
        64448.0 / 6561.0,
        -212.0 / 729.0,
        0.0,
        0.0,
    ],
    [
        9017.0 / 3168.0,
        -355.0 / 33.0,
        46732.0 / 5247.0,
        49.0 / 176.0,
        -5103.0 / 18656.0,
        0.0,
    ],
    [
        35.0 / 384.0,
        0.0,
        500.0 / 1113.0,
        125.0 / 192.0,
        -2187.0 / 6784.0,
        11.0 / 84.0,
    ],
];
const B4: [f64; 7] = [
    5179.0 / 57600.0,
    0.0,
    7571.0 / 16695.0,
    393.0 / 640.0,
    -92097.0 / 339200.0,
    187.0 / 2100.0,
    1.0 / 40.0,
];

fn dopri5(
    field: &VectorField,
    y0: Vec<Tensor>,
    t0: f64,
    t1: f64,
    config: &OdeConfig,
    b: i64,
    device: gm_core::tch::Device,
) -> Result<OdeSolution> {
    let direction = (t1 - t0).signum();
    let span = (t1 - t0).abs();
    let double = (Kind::Double, device);
    // Error weights of the embedded pair: b5 − b4 (b5 is the last row of A plus 0 for stage 7).
    let mut err_weights = [0.0; 7];
    for (j, w) in err_weights.iter_mut().enumerate() {
        let b5 = if j < 6 { A[6][j] } else { 0.0 };
        *w = b5 - B4[j];
    }
    let mut t = Tensor::f_full([b], t0, double)?;
    // Per-example step magnitudes; a first step of 1% of the interval is corrected at once.
    let mut h = Tensor::f_full([b], 0.01 * span, double)?;
    let mut y = y0;
    let mut k1 = evaluate(field, &t, &y)?;
    let mut evaluations = 1usize;
    let mut steps = 0usize;
    let mut rejected = Tensor::f_zeros([b], (Kind::Int64, device))?;
    let elements: i64 = y.iter().map(|c| c.numel() as i64 / b).sum();
    loop {
        let remaining = Tensor::f_full([b], t1, double)?
            .f_sub(&t)?
            .f_mul_scalar(direction)?;
        let active = remaining.f_gt(1e-12 * span)?;
        if !bool::try_from(active.f_any()?)? {
            break;
        }
        if evaluations + 6 > config.max_evaluations {
            return Err(GmError::Domain(format!(
                "ODE solve: Dormand–Prince needed more than {} evaluations (rtol {}, atol {}); the vector field may be stiff or not finite",
                config.max_evaluations, config.rtol, config.atol
            )));
        }
        let h_step = h
            .f_minimum(&remaining)?
            .f_mul(&active.f_to_kind(Kind::Double)?)?;
        let hs = h_step.f_mul_scalar(direction)?;
        let mut ks: Vec<Vec<Tensor>> = vec![k1];
        for stage in 1..7 {
            let weights: Vec<Tensor> = (0..stage)
                .map(|j| hs.f_mul_scalar(A[stage][j]))
                .collect::<std::result::Result<_, _>>()?;
            let terms: Vec<(&[Tensor], Option<&Tensor>)> = (0..stage)
                .map(|j| {
                    (
                        ks[j].as_slice(),
                        (A[stage][j] != 0.0).then_some(&weights[j]),
                    )
                })
                .collect();
            let y_stage = combine(&y, &terms)?;
            let t_stage = t.f_add(&hs.f_mul_scalar(C[stage])?)?;
            let k = evaluate(field, &t_stage, &y_stage)?;
            if stage == 6 {
                // The 6th stage's input is the 5th-order solution.
                ks.push(k);
                ks.push(y_stage);
                break;
            }
            ks.push(k);
        }
        evaluations += 6;
        let y5 = ks.pop().expect("the new point");
        // Local error estimate per example: RMS of err / (atol + rtol · max(|y|, |y5|)).
        let mut sum_sq = Tensor::f_zeros([b], double)?;
        for c in 0..y.len() {
            let mut err = y[c].f_zeros_like()?.f_to_kind(Kind::Double)?;
            for (j, k) in ks.iter().enumerate() {
                if err_weights[j] != 0.0 {
                    err = err.f_add(
                        &k[c]
                            .f_to_kind(Kind::Double)?
                            .f_mul(&per_example(&hs.f_mul_scalar(err_weights[j])?, &err)?)?,
                    )?;
                }
            }
            let scale = y[c]
                .f_abs()?
                .f_maximum(&y5[c].f_abs()?)?
                .f_to_kind(Kind::Double)?
                .f_mul_scalar(config.rtol)?
                .f_add_scalar(config.atol)?;
            let ratio = err.f_div(&scale)?.f_reshape([b, -1])?;
            sum_sq = sum_sq.f_add(&ratio.f_square()?.f_sum_dim_intlist(
                1,
                false,
                Kind::Double,
            )?)?;
        }
        let norm = sum_sq.f_div_scalar(elements as f64)?.f_sqrt()?;
        // NaN norms compare false: the step is rejected and shrunk until the budget runs out.
        let accept = norm.f_le(1.0)?.f_logical_and(&active)?;
        let k7 = ks.pop().expect("the last stage");
        y = y
            .iter()
            .zip(&y5)
            .map(|(old, new)| Ok(new.f_where_self(&mask_like(&accept, new)?, old)?))
            .collect::<Result<_>>()?;
        k1 = ks
            .swap_remove(0)
            .iter()
            .zip(&k7)
            .map(|(old, new)| Ok(new.f_where_self(&mask_like(&accept, new)?, old)?))
            .collect::<Result<_>>()?;
        t = t.f_add(&hs.f_mul(&accept.f_to_kind(Kind::Double)?)?)?;
        rejected = rejected.f_add(
            &active
                .f_logical_and(&accept.f_logical_not()?)?
                .f_to_kind(Kind::Int64)?,
        )?;
        // h ← h · clamp(0.9 · norm^(−1/5), 0.2, 5); a NaN norm shrinks by 5.
        let factor = norm
            .f_clamp_min(1e-10)?
            .f_pow_tensor_scalar(-0.2)?
            .f_mul_scalar(0.9)?
            .f_clamp(0.2, 5.0)?
            .f_nan_to_num(0.2, 5.0, 0.2)?;
        h = h_step.f_mul(&factor)?.f_where_self(&active, &h)?;
        steps += 1;
        // Only examples still on their way can be stuck: a finished one's last step may be tiny.
        let still = Tensor::f_full([b], t1, double)?
            .f_sub(&t)?
            .f_mul_scalar(direction)?
            .f_gt(1e-12 * span)?;
        let smallest = h
            .f_where_scalarother(&still, f64::INFINITY)?
            .f_min()?
            .f_double_value(&[])?;
        if smallest < 1e-10 * span {
            return Err(GmError::Domain(format!(
                "ODE solve: Dormand–Prince's step size fell below {:e} of the interval; the vector field may be stiff or not finite",
                1e-10
            )));
        }
    }
    Ok(OdeSolution {
        state: y,
        evaluations,
        steps,
        rejected: rejected.f_sum(Kind::Int64)?.f_int64_value(&[])?,
    })
}
