//! Bijector laws: invertibility, log-det against the autograd Jacobian, composition.

use gm_core::bijectors::*;
use gm_core::nn::{MadeConfig, Ordering};
use gm_core::testing::*;
use proptest::prelude::*;
use tch::{nn, Device, Kind, Tensor};

fn random(shape: &[i64], seed: i64) -> Tensor {
    tch::manual_seed(seed);
    Tensor::randn(shape, (Kind::Double, Device::Cpu))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(20))]

    #[test]
    fn elementwise_bijectors_invert_and_match_autograd(batch in 1i64..5, d in 1i64..6, seed in 0i64..10_000) {
        let x = random(&[batch, d], seed);
        let shift = random(&[d], seed + 1);
        let log_scale = random(&[d], seed + 2) * 0.5;
        let parts: Vec<(&str, Box<dyn Bijector>, Tensor)> = vec![
            ("affine", Box::new(ElementwiseAffine::new(&shift, &log_scale)), x.shallow_clone()),
            ("sigmoid", Box::new(Sigmoid), x.shallow_clone()),
            ("tanh", Box::new(Tanh), x.shallow_clone()),
            ("exp", Box::new(Exp), x.shallow_clone()),
            // The logit's domain is (0, 1).
            ("logit", Box::new(Inverse(Sigmoid)), x.sigmoid() * 0.98 + 0.01),
        ];
        for (_name, b, input) in &parts {
            assert_bijector_inverts(b.as_ref(), input, 1e-9);
            assert_log_det_matches_autograd(b.as_ref(), input, 1e-8, 3);
        }
    }

    #[test]
    fn chain_adds_log_dets(batch in 1i64..4, d in 1i64..5, seed in 0i64..10_000) {
        // Halved inputs and shifts keep tanh's input within about ±3 even for 4σ draws:
        // beyond ±8 inverting tanh loses digits (its slope is e^-2|y|), and the test is about
        // log-dets adding up, not about tanh's saturation.
        let x = random(&[batch, d], seed) * 0.5;
        let shift = random(&[d], seed + 3) * 0.5;
        let log_scale = random(&[d], seed + 4) * 0.3;
        let chain = Chain::new(vec![
            Box::new(ElementwiseAffine::new(&shift, &log_scale)),
            Box::new(Tanh),
            Box::new(ElementwiseAffine::new(&(shift.shallow_clone() * 0.1), &(log_scale.shallow_clone() * -1.0))),
        ]);
        let (_, total) = chain.forward(&x).unwrap();
        let (y1, l1) = ElementwiseAffine::new(&shift, &log_scale).forward(&x).unwrap();
        let (y2, l2) = Tanh.forward(&y1).unwrap();
        let (_, l3) = ElementwiseAffine::new(&(shift.shallow_clone() * 0.1), &(log_scale.shallow_clone() * -1.0)).forward(&y2).unwrap();
        assert_close(&total, &(l1 + l2 + l3), 1e-12, "chain log-det = sum of parts");
        assert_bijector_inverts(&chain, &x, 1e-9);
        assert_log_det_matches_autograd(&chain, &x, 1e-8, 2);
    }

    /// Images: log-dets sum over every non-batch dimension.
    #[test]
    fn image_shaped_inputs(c in 1i64..3, h in 1i64..4, seed in 0i64..10_000) {
        let x = random(&[2, c, h, h], seed);
        let log_scale = random(&[c, 1, 1], seed + 1) * 0.5;
        let b = ElementwiseAffine::new(&log_scale.zeros_like(), &log_scale);
        assert_bijector_inverts(&b, &x, 1e-9);
        assert_log_det_matches_autograd(&b, &x, 1e-8, 2);
        let (_, ld) = b.forward(&x).unwrap();
        let want = log_scale.sum(Kind::Double).double_value(&[]) * (h * h) as f64;
        prop_assert!((ld.double_value(&[0]) - want).abs() < 1e-9);
    }
}

#[test]
fn float32_inverts_within_1e4() {
    let x = random(&[64, 8], 9).to_kind(Kind::Float) * 3.0;
    // Well-conditioned inputs: |x| < 1 for tanh, |x| < 5 for the sigmoid.
    assert_bijector_inverts(&Tanh, &(x.shallow_clone() * 0.1).clamp(-0.99, 0.99), 1e-4);
    assert_bijector_inverts(&Sigmoid, &x.clamp(-5.0, 5.0), 1e-4);
    assert_bijector_inverts_from_output(&Sigmoid, &x.sigmoid(), 1e-5);
    let empty = Chain::default();
    assert_bijector_inverts(&empty, &x, 0.0);
}

#[test]
fn scalar_input_is_an_error() {
    let x = Tensor::from_slice(&[1.0f32, 2.0]);
    assert!(
        Tanh.forward(&x).is_err(),
        "a 1-D tensor has no event dimension"
    );
    assert!(Exp.inverse(&x).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    /// MADE: output i depends only on inputs strictly earlier in the ordering, for several
    /// orderings and hidden sizes (checked with the autograd Jacobian).
    #[test]
    fn made_is_autoregressive(d in 1i64..7, h in 1i64..20, layers in 1usize..3, k in 1i64..4, order in 0u8..3, seed in 0u64..1000) {
        let vs = nn::VarStore::new(Device::Cpu);
        let ordering = match order { 0 => Ordering::Natural, 1 => Ordering::Reversed, _ => Ordering::Random { seed } };
        let config = MadeConfig { hidden: vec![h; layers], outputs_per_input: k, ordering, ..Default::default() };
        let made = config.init(&vs.root(), d).unwrap();
        let x = random(&[d], seed as i64);
        let degrees = made.degrees().to_vec();
        assert_autoregressive(|z| made.forward(&z.to_kind(Kind::Float), None).unwrap().to_kind(Kind::Double), &x, &degrees);
        let out = made.forward(&x.to_kind(Kind::Float).unsqueeze(0), None).unwrap();
        prop_assert_eq!(out.size(), vec![1, k, d]);
    }
}

/// The MADE masks connect every allowed pair when the hidden layer is wide enough: the
/// Jacobian of the last output in the ordering is non-zero on every earlier input.
#[test]
fn made_connects_all_allowed_inputs() {
    gm_core::tch::manual_seed(21);
    let vs = nn::VarStore::new(Device::Cpu);
    let made = MadeConfig {
        hidden: vec![64, 64],
        outputs_per_input: 1,
        ..Default::default()
    }
    .init(&vs.root(), 5)
    .unwrap();
    let x = random(&[5], 3);
    let (j, _) = autograd_jacobian(
        |z| {
            Ok(made
                .forward(&z.to_kind(Kind::Float), None)?
                .to_kind(Kind::Double))
        },
        &x,
    )
    .unwrap();
    for col in 0..4 {
        assert!(
            j.double_value(&[4, col]) != 0.0,
            "output 4 should see input {col}"
        );
    }
    assert!(made
        .forward(&Tensor::zeros([2, 4], (Kind::Float, Device::Cpu)), None)
        .is_err());
}
