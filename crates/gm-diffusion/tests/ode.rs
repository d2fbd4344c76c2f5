//! The ODE solvers against closed-form solutions: each fixed-step solver converges at its
//! order, Dormand–Prince meets its tolerance in either direction, per-example step sizes make a
//! solution independent of its batch, and bad fields are errors.

mod common;

use gm_core::tch::{Device, Kind, Tensor};
use gm_core::Result;
use gm_diffusion::ode::{solve, OdeConfig, OdeSolver, VectorField};
use proptest::prelude::*;

fn doubles(v: &[f64]) -> Tensor {
    Tensor::from_slice(v).to_kind(Kind::Double)
}

/// dy/dt = λ y with a per-example λ: y(t1) = y0 exp(λ (t1 − t0)).
fn linear(lambda: &Tensor) -> impl Fn(&Tensor, &[Tensor]) -> Result<Vec<Tensor>> + '_ {
    move |_t, y| Ok(vec![y[0].f_mul(lambda)?])
}

fn max_error(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// The order `solver` shows on `field` from `y0` over [0, `t1`]: log2 of the error ratio between
/// `steps` and 2 × `steps` steps against the exact end point(s), after checking its evaluations.
fn observed_order(
    field: &VectorField,
    y0: &[f64],
    t1: f64,
    exact: &Tensor,
    solver: OdeSolver,
    steps: usize,
) -> f64 {
    let error = |steps| {
        let s = solve(
            field,
            vec![doubles(y0)],
            0.0,
            t1,
            &OdeConfig::fixed(solver, steps),
        )
        .unwrap();
        assert_eq!(s.evaluations, steps * solver.evaluations_per_step());
        max_error(&s.state[0], exact)
    };
    (error(steps) / error(2 * steps)).log2()
}

const ORDERS: [(OdeSolver, f64); 3] = [
    (OdeSolver::Euler, 1.0),
    (OdeSolver::Heun, 2.0),
    (OdeSolver::Rk4, 4.0),
];

#[test]
fn fixed_step_solvers_converge_at_their_order() {
    common::single_thread();
    let lambda = doubles(&[-1.3, 0.7]);
    let exact = doubles(&[(-1.3f64).exp(), 0.7f64.exp()]);
    let field = linear(&lambda);
    for (solver, order) in ORDERS {
        let observed = observed_order(&field, &[1.0, 1.0], 1.0, &exact, solver, 16);
        assert!(
            (observed - order).abs() < 0.25,
            "{solver:?}: observed order {observed:.3}, expected {order}"
        );
    }
}

/// On a time-dependent field the fixed-step solvers keep their order only if each stage is
/// evaluated at its own time (a Heun evaluating its second stage at t would drop to order 1).
#[test]
fn fixed_step_solvers_keep_their_order_on_a_time_dependent_field() {
    let field =
        |t: &Tensor, y: &[Tensor]| -> Result<Vec<Tensor>> { Ok(vec![y[0].f_mul(&t.f_cos()?)?]) };
    let exact = doubles(&[2f64.sin().exp()]);
    for (solver, order) in ORDERS {
        let observed = observed_order(&field, &[1.0], 2.0, &exact, solver, 32);
        assert!(
            (observed - order).abs() < 0.25,
            "{solver:?}: observed order {observed:.3} on a time-dependent field, expected {order}"
        );
    }
}

#[test]
fn a_time_dependent_field_sees_the_right_times() {
    // dy/dt = cos(t) y, y(0) = 1: y(t) = exp(sin t); backwards from t = 2 to 0.5 too.
    let field =
        |t: &Tensor, y: &[Tensor]| -> Result<Vec<Tensor>> { Ok(vec![y[0].f_mul(&t.f_cos()?)?]) };
    for solver in [OdeSolver::Rk4, OdeSolver::Dopri5] {
        let config = OdeConfig {
            rtol: 1e-9,
            atol: 1e-9,
            ..OdeConfig::fixed(solver, 400)
        };
        let s = solve(
            &field as &VectorField,
            vec![doubles(&[1.0])],
            0.0,
            2.0,
            &config,
        )
        .unwrap();
        let got = s.state[0].double_value(&[0]);
        assert!((got - 2f64.sin().exp()).abs() < 1e-7, "{solver:?}: {got}");
        let back = solve(
            &field as &VectorField,
            vec![doubles(&[2f64.sin().exp()])],
            2.0,
            0.5,
            &config,
        )
        .unwrap();
        let got = back.state[0].double_value(&[0]);
        assert!(
            (got - 0.5f64.sin().exp()).abs() < 1e-7,
            "{solver:?} backwards: {got}"
        );
    }
}

#[test]
fn dormand_prince_meets_its_tolerance_and_counts_its_work() {
    let lambda = doubles(&[-2.0, 0.5, 3.0]);
    let exact = |t: f64| doubles(&[(-2.0 * t).exp(), (0.5 * t).exp(), (3.0 * t).exp()]);
    let field = linear(&lambda);
    let mut previous = 0;
    // Evaluation ceilings about 25% above what this controller needs here (31, 79, 289): an
    // embedded pair with wrong weights still converges but costs 37, 139 and 733.
    for (tol, ceiling) in [(1e-3, 40), (1e-6, 100), (1e-9, 350)] {
        let s = solve(
            &field as &VectorField,
            vec![doubles(&[1.0, 1.0, 1.0])],
            0.0,
            1.0,
            &OdeConfig::adaptive(tol, tol),
        )
        .unwrap();
        // Global error stays within a small multiple of the local tolerance times the scale.
        let rel = ((&s.state[0] - exact(1.0)) / exact(1.0))
            .abs()
            .max()
            .double_value(&[]);
        assert!(rel < 30.0 * tol, "tolerance {tol}: relative error {rel:e}");
        assert_eq!(
            (s.evaluations - 1) % 6,
            0,
            "6 evaluations per attempt plus the first"
        );
        assert!(
            s.evaluations > previous,
            "a tighter tolerance must cost more: {} after {previous}",
            s.evaluations
        );
        assert!(
            s.evaluations <= ceiling,
            "tolerance {tol}: {} evaluations, more than {ceiling}",
            s.evaluations
        );
        previous = s.evaluations;
    }
}

#[test]
fn each_example_takes_its_own_steps() {
    // A stiff-ish example beside an easy one: alone or together, each ends where it would.
    let both = doubles(&[-8.0, 0.1]);
    let field = linear(&both);
    let config = OdeConfig::adaptive(1e-6, 1e-6);
    let together = solve(
        &field as &VectorField,
        vec![doubles(&[1.0, 1.0])],
        0.0,
        1.5,
        &config,
    )
    .unwrap();
    for (i, l) in [-8.0, 0.1].into_iter().enumerate() {
        let one = doubles(&[l]);
        let f1 = linear(&one);
        let alone = solve(
            &f1 as &VectorField,
            vec![doubles(&[1.0])],
            0.0,
            1.5,
            &config,
        )
        .unwrap();
        assert_eq!(
            together.state[0].double_value(&[i as i64]),
            alone.state[0].double_value(&[0]),
            "example {i} depends on its batch"
        );
    }
}

#[test]
fn bad_fields_and_states_are_errors() {
    let nan = |_t: &Tensor, y: &[Tensor]| -> Result<Vec<Tensor>> {
        Ok(vec![y[0].f_mul_scalar(f64::NAN)?])
    };
    let err = solve(
        &nan as &VectorField,
        vec![doubles(&[1.0])],
        0.0,
        1.0,
        &OdeConfig::adaptive(1e-5, 1e-5),
    )
    .unwrap_err();
    assert!(err.to_string().contains("Dormand"), "{err}");
    let id = |_t: &Tensor, y: &[Tensor]| -> Result<Vec<Tensor>> { Ok(vec![y[0].shallow_clone()]) };
    let empty = Tensor::zeros([0, 2], (Kind::Double, Device::Cpu));
    assert!(solve(
        &id as &VectorField,
        vec![empty],
        0.0,
        1.0,
        &OdeConfig::default()
    )
    .is_err());
    assert!(solve(&id as &VectorField, vec![], 0.0, 1.0, &OdeConfig::default()).is_err());
    // A field that returns the wrong number or shape of tensors is an error, not a panic.
    let short = |_t: &Tensor, _y: &[Tensor]| -> Result<Vec<Tensor>> { Ok(vec![]) };
    let misshapen =
        |_t: &Tensor, _y: &[Tensor]| -> Result<Vec<Tensor>> { Ok(vec![doubles(&[1.0, 2.0])]) };
    for (f, solver) in [
        (&short as &VectorField, OdeSolver::Rk4),
        (&misshapen as &VectorField, OdeSolver::Dopri5),
    ] {
        let err = solve(
            f,
            vec![doubles(&[1.0])],
            0.0,
            1.0,
            &OdeConfig::fixed(solver, 4),
        );
        assert!(err
            .unwrap_err()
            .to_string()
            .contains("vector field returned"));
    }
    assert!(solve(
        &id as &VectorField,
        vec![doubles(&[1.0])],
        0.0,
        f64::INFINITY,
        &OdeConfig::default()
    )
    .is_err());
    let tight = OdeConfig {
        max_evaluations: 20,
        ..OdeConfig::adaptive(1e-12, 1e-12)
    };
    let err = solve(
        &id as &VectorField,
        vec![doubles(&[1.0])],
        0.0,
        10.0,
        &tight,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("more than 20 evaluations"),
        "{err}"
    );
    assert!("midpoint".parse::<OdeSolver>().is_err());
    for name in OdeSolver::NAMES {
        assert!(name.parse::<OdeSolver>().is_ok());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    /// Dormand–Prince solves dy/dt = λ y over any interval, forwards or backwards.
    #[test]
    fn dormand_prince_solves_linear_odes(l in -3.0f64..3.0, t1 in 0.1f64..2.0, backwards: bool) {
        let lambda = doubles(&[l]);
        let field = linear(&lambda);
        let (a, b) = if backwards { (t1, 0.0) } else { (0.0, t1) };
        let s = solve(&field as &VectorField, vec![doubles(&[1.0])], a, b, &OdeConfig::adaptive(1e-8, 1e-8)).unwrap();
        let want = (l * (b - a)).exp();
        let got = s.state[0].double_value(&[0]);
        prop_assert!(((got - want) / want).abs() < 1e-6, "{got} vs {want}");
    }
}
