//! Likelihoods of continuous-time models through their ODE: if dx/dt = v(x, t) carries noise
//! at `t_noise` to data at `t_data`, the instantaneous change of variables gives
//!
//!   ln p_data(x) = ln p_noise(z) + ∫_{t_data}^{t_noise} div v(x_t, t) dt,
//!
//! where z is the point the ODE takes x to. Both are integrated together, from the data to
//! the noise. The divergence is exact by autograd (one backward pass per dimension: small
//! dimensions, the 2D toy sets) or Hutchinson's estimate εᵀ (∂v/∂x) ε with Rademacher probes
//! held fixed along each trajectory (one backward pass per evaluation: images), which makes
//! each probe's ln p an unbiased estimate; several probes give its standard error.

use crate::ode::{solve, OdeConfig, VectorField};
use crate::schedule::ScheduleConfig;
use gm_core::model::leading_dim;
use gm_core::tch::{self, Kind, Tensor};
use gm_core::train::config::Config;
use gm_core::{GmError, Result};
use serde::{Deserialize, Serialize};

/// The velocity v(x, t): points `[b, ...]`, times `[b]` (float64) → `[b, ...]`.
pub type Velocity<'a> = dyn Fn(&Tensor, &Tensor) -> Result<Tensor> + 'a;

/// How the divergence of the velocity is computed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Divergence {
    /// The trace of the Jacobian, one backward pass per dimension.
    #[default]
    Exact,
    /// Hutchinson's estimator with `probes` Rademacher probes per example.
    Hutchinson { probes: i64 },
}

impl Divergence {
    /// The estimator in words for reports.
    pub fn describe(&self) -> String {
        match self {
            Divergence::Exact => "exact divergence".into(),
            Divergence::Hutchinson { probes } => {
                format!("Hutchinson divergence, {probes} Rademacher probes")
            }
        }
    }
}

impl Divergence {
    /// Trajectories per example: the probes of Hutchinson's estimator, 1 for the exact one.
    pub fn probes(self) -> i64 {
        match self {
            Divergence::Exact => 1,
            Divergence::Hutchinson { probes } => probes,
        }
    }
}

impl Config for Divergence {
    fn validate(&self) -> Result<()> {
        if let Divergence::Hutchinson { probes } = self {
            if !(1..=1024).contains(probes) {
                return Err(GmError::config(
                    "probes",
                    format!("must be in [1, 1024], got {probes}"),
                ));
            }
        }
        Ok(())
    }
}

/// Dimensions up to which an `Exact` divergence is allowed (one backward pass each).
pub const MAX_EXACT_DIMENSIONS: i64 = 64;

/// Checks at construction that `divergence` suits examples of `dimensions` values: the exact
/// one is refused above [`MAX_EXACT_DIMENSIONS`] (naming the `key` to change), so a config
/// does not train for hours and then fail to score.
pub fn check_divergence_fits(divergence: Divergence, dimensions: i64, key: &str) -> Result<()> {
    if divergence == Divergence::Exact && dimensions > MAX_EXACT_DIMENSIONS {
        return Err(GmError::config(
            key,
            format!(
                "the exact divergence takes one backward pass per dimension: allowed up to {MAX_EXACT_DIMENSIONS} dimensions, these examples have {dimensions}; use kind = \"hutchinson\""
            ),
        ));
    }
    Ok(())
}

/// The velocity at `x` and its exact divergence `[b]`.
pub fn exact_divergence(v: &Velocity, x: &Tensor, t: &Tensor) -> Result<(Tensor, Tensor)> {
    tch::with_grad(|| {
        let b = leading_dim(x, "[batch, ...]", "exact_divergence x")?;
        let x = x.f_detach()?.f_requires_grad_(true)?;
        let out = v(&x, t)?;
        let flat = out.f_reshape([b, -1])?;
        let d = flat.size()[1];
        let mut div = Tensor::f_zeros([b], (Kind::Double, x.device()))?;
        for i in 0..d {
            let g = Tensor::f_run_backward(
                &[flat.f_select(1, i)?.f_sum(Kind::Float)?],
                &[&x],
                i + 1 < d,
                false,
            )?;
            div = div.f_add(
                &g[0]
                    .f_reshape([b, -1])?
                    .f_select(1, i)?
                    .f_to_kind(Kind::Double)?,
            )?;
        }
        Ok((out.f_detach()?, div))
    })
}

/// The velocity at `x` and Hutchinson's estimate εᵀ (∂v/∂x) ε `[b]` of its divergence for the
/// probes `probe` (the shape of `x`).
pub fn hutchinson_divergence(
    v: &Velocity,
    x: &Tensor,
    t: &Tensor,
    probe: &Tensor,
) -> Result<(Tensor, Tensor)> {
    tch::with_grad(|| {
        let b = leading_dim(x, "[batch, ...]", "hutchinson_divergence x")?;
        let x = x.f_detach()?.f_requires_grad_(true)?;
        let out = v(&x, t)?;
        let g = Tensor::f_run_backward(
            &[out.f_mul(probe)?.f_sum(Kind::Float)?],
            &[&x],
            false,
            false,
        )?;
        let estimate =
            g[0].f_mul(probe)?
                .f_reshape([b, -1])?
                .f_sum_dim_intlist(1, false, Kind::Double)?;
        Ok((out.f_detach()?, estimate))
    })
}

/// Rademacher probes (±1 with equal probability) shaped like `x`.
pub fn rademacher_like(x: &Tensor) -> Result<Tensor> {
    Ok(x.f_rand_like()?
        .f_lt(0.5)?
        .f_to_kind(x.kind())?
        .f_mul_scalar(2.0)?
        .f_sub_scalar(1.0)?)
}

/// The standard normal log-density of each example `[b]` (float64).
pub fn standard_normal_log_density(z: &Tensor) -> Result<Tensor> {
    let b = leading_dim(z, "[batch, ...]", "standard_normal_log_density z")?;
    let flat = z.f_reshape([b, -1])?.f_to_kind(Kind::Double)?;
    let d = flat.size()[1] as f64;
    Ok(flat
        .f_square()?
        .f_sum_dim_intlist(1, false, Kind::Double)?
        .f_mul_scalar(-0.5)?
        .f_sub_scalar(0.5 * d * (2.0 * std::f64::consts::PI).ln())?)
}

/// The probability-flow velocity of a variance-preserving diffusion with `schedule`'s
/// continuous-time limit at `y` and times `tau` `[b]`, given the noise prediction `eps` there:
/// dy/dτ = −½ β(τ) (y − ε̂ / σ(τ)), σ(τ)² = 1 − ᾱ(τ) (the score is −ε̂ / σ).
pub fn variance_preserving_velocity(
    y: &Tensor,
    eps: &Tensor,
    tau: &Tensor,
    schedule: &ScheduleConfig,
    timesteps: i64,
) -> Result<Tensor> {
    // σ² = 1 − ᾱ = −expm1(ln ᾱ) in float64: near τ = 1/T, 1 − ᾱ of a float32 ᾱ would keep
    // only a few digits and turn the velocity into a staircase in τ.
    let sigma = schedule
        .continuous_log_alpha_bar(tau, timesteps)?
        .f_expm1()?
        .f_neg()?
        .f_sqrt()?
        .f_to_kind(y.kind())?;
    let half_beta = schedule
        .continuous_beta(tau, timesteps)?
        .f_mul_scalar(-0.5)?
        .f_to_kind(y.kind())?;
    let per = |c: &Tensor| crate::schedule::per_example(c, y);
    Ok(y.f_sub(&eps.f_div(&per(&sigma)?)?)?
        .f_mul(&per(&half_beta)?)?)
}

/// A log-density computed through the ODE.
#[derive(Debug)]
pub struct FlowLogDensity {
    /// ln p(x) per example `[b]` in nats (float64): the mean over probes for Hutchinson.
    pub log_density: Tensor,
    /// The standard error of each example's estimate over its probes (Hutchinson with at least
    /// two probes), `[b]`.
    pub standard_error: Option<Tensor>,
    /// The noise each example maps to `[b, ...]` (the first probe's, for Hutchinson).
    pub noise: Tensor,
    /// Batched evaluations of the velocity (each with one or more backward passes).
    pub evaluations: usize,
}

/// ln p(x) for the model whose ODE dx/dt = `v` carries N(0, I) at `t_noise` to the data at
/// `t_data`, with the divergence computed as `divergence` says and the ODE integrated as `ode`
/// says. `x` is in the velocity's space; the caller adds the log-Jacobian of any map into it.
pub fn log_density(
    v: &Velocity,
    x: &Tensor,
    t_data: f64,
    t_noise: f64,
    divergence: Divergence,
    ode: &OdeConfig,
) -> Result<FlowLogDensity> {
    divergence.validate()?;
    let b = leading_dim(x, "[batch, ...]", "log_density x")?;
    if b == 0 {
        return Err(GmError::Domain("log_density: empty batch".into()));
    }
    let dims = x.numel() as i64 / b;
    let probes = match divergence {
        Divergence::Exact => {
            if dims > MAX_EXACT_DIMENSIONS {
                return Err(GmError::config(
                    "divergence",
                    format!(
                        "the exact divergence takes one backward pass per dimension: allowed up to {MAX_EXACT_DIMENSIONS} dimensions, got {dims}; use kind = \"hutchinson\""
                    ),
                ));
            }
            1
        }
        Divergence::Hutchinson { probes } => probes,
    };
    // Probe-major replication: rows k·b .. (k+1)·b are the batch under probe k.
    let mut reps = vec![1i64; x.dim()];
    reps[0] = probes;
    let xs = x.f_detach()?.f_repeat(reps.as_slice())?;
    let probe = match divergence {
        Divergence::Exact => None,
        Divergence::Hutchinson { .. } => Some(rademacher_like(&xs)?),
    };
    let field = |t: &Tensor, state: &[Tensor]| -> Result<Vec<Tensor>> {
        let (velocity, div) = match &probe {
            None => exact_divergence(v, &state[0], t)?,
            Some(p) => hutchinson_divergence(v, &state[0], t, p)?,
        };
        Ok(vec![velocity, div])
    };
    let accumulated = Tensor::f_zeros([probes * b], (Kind::Double, x.device()))?;
    let solution = solve(
        &field as &VectorField,
        vec![xs, accumulated],
        t_data,
        t_noise,
        ode,
    )?;
    let z = &solution.state[0];
    let per_probe = standard_normal_log_density(z)?
        .f_add(&solution.state[1])?
        .f_reshape([probes, b])?;
    let log_density = per_probe.f_mean_dim(0, false, Kind::Double)?;
    let standard_error = if probes >= 2 {
        Some(
            per_probe
                .f_std_dim(0, true, false)?
                .f_div_scalar((probes as f64).sqrt())?,
        )
    } else {
        None
    };
    if !bool::try_from(log_density.f_isfinite()?.f_all()?)? {
        return Err(GmError::Domain(
            "log_density: the ODE produced a non-finite log-density".into(),
        ));
    }
    Ok(FlowLogDensity {
        log_density,
        standard_error,
        noise: z.f_narrow(0, 0, b)?,
        evaluations: solution.evaluations,
    })
}

/// The ODE's end point for `x` (encoding from `t_data` to `t_noise`, or sampling the other
/// way), with the number of evaluations.
pub fn transport(
    v: &Velocity,
    x: &Tensor,
    t_from: f64,
    t_to: f64,
    ode: &OdeConfig,
) -> Result<(Tensor, usize)> {
    let field =
        |t: &Tensor, state: &[Tensor]| -> Result<Vec<Tensor>> { Ok(vec![v(&state[0], t)?]) };
    let solution = solve(
        &field as &VectorField,
        vec![x.shallow_clone()],
        t_from,
        t_to,
        ode,
    )?;
    let mut state = solution.state;
    Ok((state.remove(0), solution.evaluations))
}
