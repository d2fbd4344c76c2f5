//! Property tests of invertibility and log-determinants for every gm-flow layer.
//!
//! Tolerances: double precision throughout, so inverse(forward(x)) must match x within 1e-8
//! (1e-6 where an iterative D-pass inverse or a spline root-solve is involved) and every
//! log-determinant must match the autograd Jacobian's within 1e-6 (the issue asks for 1e-3).

mod common;

use common::*;
use gm_core::nn::{MlpConfig, Ordering};
use gm_core::tch::{Kind, Tensor};
use gm_core::testing::*;
use gm_flow::glow::MultiScale;
use gm_flow::image::{ImageCoupling, ImageMask, InvertibleConv1x1, LogitPreprocess, Squeeze};
use gm_flow::spline::{params_per_dim, rational_quadratic};
use gm_flow::vector::*;
use gm_flow::ElementTransform;
use proptest::prelude::*;

fn transforms() -> Vec<ElementTransform> {
    vec![
        ElementTransform::Additive,
        ElementTransform::Affine { scale_bound: 3.0 },
        ElementTransform::Spline {
            bins: 5,
            tail_bound: 3.0,
        },
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    /// The spline alone: inverse, and the log-derivative against autograd (element-wise map,
    /// so the derivative of Σy with respect to x_i is dy_i/dx_i), inside and outside the tails.
    #[test]
    fn spline_inverts_and_log_derivative_is_exact(bins in 2i64..9, d in 1i64..5, seed in 0i64..10_000) {
        let x = randn(&[6, d], seed) * 2.5;
        let params = randn(&[6, d, params_per_dim(bins)], seed + 1) * 2.0;
        let (y, ld) = rational_quadratic(&x, &params, 3.0, false).unwrap();
        let (x2, ld_inv) = rational_quadratic(&y, &params, 3.0, true).unwrap();
        assert_close(&x2, &x, 1e-8, "spline inverse");
        assert_close(&ld_inv, &(-&ld), 1e-8, "inverse log-derivative");
        let xg = x.detach().set_requires_grad(true);
        let (yg, _) = rational_quadratic(&xg, &params, 3.0, false).unwrap();
        let g = Tensor::run_backward(&[yg.sum(Kind::Double)], &[&xg], false, false);
        assert_close(&ld, &g[0].log(), 1e-8, "spline log-derivative vs autograd");
        // Monotone: sorting x sorts y.
        let xs = Tensor::linspace(-4.0, 4.0, 101, (Kind::Double, gm_core::tch::Device::Cpu)).unsqueeze(1);
        let ps = params.get(0).get(0).unsqueeze(0).unsqueeze(0).expand([101, 1, params_per_dim(bins)], false);
        let (ys, _) = rational_quadratic(&xs, &ps, 3.0, false).unwrap();
        prop_assert!(ys.diff(1, 0, None::<Tensor>, None::<Tensor>).min().double_value(&[]) > 0.0);
    }

    #[test]
    fn coupling_layers(d in 2i64..6, parity in 0i64..2, t in 0usize..3, context in 0i64..3, seed in 0i64..10_000) {
        // Seeded first, so the weights (not only the inputs) are this case's: a failing case
        // then replays as it failed.
        gm_core::tch::manual_seed(seed);
        let vs = double_store();
        let mlp = MlpConfig { hidden: vec![16, 16], ..Default::default() };
        let layer = Coupling::new(&vs.root(), &alternating_mask(d, parity), transforms()[t], &mlp, context).unwrap();
        randomize(&vs, 0.3);
        let x = randn(&[5, d], seed + 1);
        if context == 0 {
            assert_bijector_inverts(&layer, &x, 1e-8);
            assert_bijector_inverts_from_output(&layer, &x, 1e-8);
            assert_log_det_matches_autograd(&layer, &x, 1e-6, 3);
        } else {
            // Conditional: the law holds for each fixed context.
            use gm_core::bijectors::ConditionalBijector;
            let c = randn(&[5, context], seed + 7);
            let (y, ld) = layer.forward_with(&x, &c).unwrap();
            let (x2, ld2) = layer.inverse_with(&y, &c).unwrap();
            assert_close(&x2, &x, 1e-8, "conditional coupling inverse");
            assert_close(&ld2, &(-&ld), 1e-8, "conditional log-dets cancel");
            let ci = c.get(0);
            let reference = gm_core::bijectors::autograd_log_abs_det(|z| Ok(layer.forward_with(z, &ci.unsqueeze(0))?.0), &x.get(0)).unwrap();
            prop_assert!((reference - ld.double_value(&[0])).abs() < 1e-6);
        }
    }

    #[test]
    fn autoregressive_layers(d in 2i64..6, t in 0usize..3, iaf in proptest::bool::ANY, seed in 0i64..10_000) {
        gm_core::tch::manual_seed(seed);
        let vs = double_store();
        let kind = if iaf { AutoregressiveKind::Iaf } else { AutoregressiveKind::Maf };
        let layer = MaskedAutoregressive::new(&vs.root(), d, &[24, 24], Ordering::Random { seed: seed as u64 }, transforms()[t], kind, 0).unwrap();
        randomize(&vs, 0.3);
        let x = randn(&[4, d], seed + 1);
        assert_bijector_inverts(&layer, &x, 1e-6);
        assert_bijector_inverts_from_output(&layer, &x, 1e-6);
        assert_log_det_matches_autograd(&layer, &x, 1e-6, 3);
    }

    #[test]
    fn actnorm_vectors_and_images(c in 1i64..5, h in 1i64..4, seed in 0i64..10_000) {
        let vs = double_store();
        let layer = ActNorm::new(&vs.root(), c).unwrap();
        let img = randn(&[3, c, h, h], seed) * 3.0 + 1.0;
        let (y, _) = gm_core::bijectors::Bijector::forward(&layer, &img).unwrap();
        // Data-dependent initialisation: zero mean and unit variance per channel on the first batch.
        let m = y.mean_dim([0i64, 2, 3].as_slice(), false, Kind::Double).abs().max().double_value(&[]);
        prop_assert!(m < 1e-8);
        randomize(&vs, 0.2);
        assert_bijector_inverts(&layer, &img, 1e-8);
        assert_log_det_matches_autograd(&layer, &img, 1e-6, 2);
        let vs2 = double_store();
        let vec_layer = ActNorm::new(&vs2.root(), c).unwrap();
        let x = randn(&[4, c], seed + 1);
        assert_bijector_inverts(&vec_layer, &x, 1e-8);
        assert_log_det_matches_autograd(&vec_layer, &x, 1e-6, 2);
    }

    #[test]
    fn image_layers(c in 1i64..3, h in 1i64..3, seed in 0i64..10_000) {
        let side = 2 * h;
        let x = randn(&[2, c, side, side], seed);
        assert_bijector_inverts(&Squeeze, &x, 0.0);
        assert_log_det_matches_autograd(&Squeeze, &x, 1e-9, 1);
        let vs = double_store();
        let conv = InvertibleConv1x1::new(&(vs.root() / "conv"), 4 * c).unwrap();
        let cb = ImageCoupling::new(&(vs.root() / "cb"), c, 8, ImageMask::Checkerboard { parity: seed % 2 }).unwrap();
        let ch = ImageCoupling::new(&(vs.root() / "ch"), 4 * c, 8, ImageMask::Channel { second_half: seed % 2 == 0 }).unwrap();
        randomize(&vs, 0.3);
        let squeezed = Squeeze.forward_only(&x);
        assert_bijector_inverts(&conv, &squeezed, 1e-8);
        assert_log_det_matches_autograd(&conv, &squeezed, 1e-6, 1);
        assert_bijector_inverts(&cb, &x, 1e-8);
        assert_log_det_matches_autograd(&cb, &x, 1e-6, 1);
        assert_bijector_inverts(&ch, &squeezed, 1e-8);
        assert_log_det_matches_autograd(&ch, &squeezed, 1e-6, 1);
        let logit = LogitPreprocess::new(0.05).unwrap();
        let pixels = x.sigmoid();
        assert_bijector_inverts(&logit, &pixels, 1e-8);
        assert_log_det_matches_autograd(&logit, &pixels, 1e-6, 2);
    }

    #[test]
    fn permutations(d in 1i64..8, seed in 0u64..1000) {
        let p = Permutation::random(d, seed, gm_core::tch::Device::Cpu).unwrap();
        let x = randn(&[3, d], seed as i64);
        assert_bijector_inverts(&p, &x, 0.0);
        let (y, ld) = gm_core::bijectors::Bijector::forward(&p, &x).unwrap();
        prop_assert_eq!(ld.abs().sum(Kind::Double).double_value(&[]), 0.0);
        // A permutation keeps the multiset of values.
        assert_close(&y.sort(1, false).0, &x.sort(1, false).0, 0.0, "same values");
    }
}

trait ForwardOnly {
    fn forward_only(&self, x: &Tensor) -> Tensor;
}
impl ForwardOnly for Squeeze {
    fn forward_only(&self, x: &Tensor) -> Tensor {
        gm_core::bijectors::Bijector::forward(self, x).unwrap().0
    }
}

/// Glow's multi-scale stack on a small image: inverse and the full-Jacobian log-det.
#[test]
fn multi_scale_flow() {
    // Seeded, with 8 examples for the data-dependent initialisation and perturbations of 0.1.
    // With 3 examples the second level's ActNorm saw 3 values per channel, and with 0.2 about
    // one random draw in 30 made the stack so ill-conditioned that float64 could not invert it
    // to 1e-8 (a flaky failure, not a wrong inverse: a wrong one is off by O(1)). Over 200 seeds
    // this set-up's worst inverse error was 8e-15.
    gm_core::tch::manual_seed(11);
    let vs = double_store();
    let flow = MultiScale::new(&vs.root(), [1, 4, 4], 2, 2, 8).unwrap();
    let x = randn(&[8, 1, 4, 4], 5);
    // The first forward initialises ActNorm from data; then perturb everything.
    let _ = gm_core::bijectors::Bijector::forward(&flow, &x).unwrap();
    randomize(&vs, 0.1);
    let (z, _) = gm_core::bijectors::Bijector::forward(&flow, &x).unwrap();
    assert_eq!(z.size(), [8, 16]);
    assert_bijector_inverts(&flow, &x, 1e-8);
    assert_bijector_inverts_from_output(&flow, &z, 1e-8);
    assert_log_det_matches_autograd(&flow, &x, 1e-6, 2);
    assert!(
        MultiScale::new(&vs.root(), [1, 6, 6], 2, 1, 4).is_err(),
        "6 is not divisible by 4"
    );
}

/// Single precision on well-conditioned layers (weights perturbed by 0.05, log-slopes within
/// about ±5): the 1e-4. Much larger perturbations make splines nearly flat in places
/// (log-slopes below -20), where no float32 inverse can be accurate.
#[test]
fn float32_inverts_within_1e4() {
    gm_core::tch::manual_seed(13);
    let vs = gm_core::tch::nn::VarStore::new(gm_core::tch::Device::Cpu);
    let mlp = MlpConfig {
        hidden: vec![32, 32],
        ..Default::default()
    };
    let layer = Coupling::new(
        &vs.root(),
        &alternating_mask(4, 0),
        ElementTransform::Spline {
            bins: 8,
            tail_bound: 4.0,
        },
        &mlp,
        0,
    )
    .unwrap();
    randomize(&vs, 0.05);
    let x = randn(&[256, 4], 1).to_kind(Kind::Float);
    assert_bijector_inverts(&layer, &x, 1e-4);
    let vs = gm_core::tch::nn::VarStore::new(gm_core::tch::Device::Cpu);
    let maf = MaskedAutoregressive::new(
        &vs.root(),
        4,
        &[32],
        Ordering::Natural,
        ElementTransform::Affine { scale_bound: 3.0 },
        AutoregressiveKind::Maf,
        0,
    )
    .unwrap();
    randomize(&vs, 0.1);
    assert_bijector_inverts(&maf, &x, 1e-4);
}

/// The channel-mask coupling skips the zeroed half of its conditioner's input and the discarded
/// half of its output; it must give the map, the log-determinant and every gradient of the
/// coupling computed as written (all channels in, all shifts and scales out, masks applied).
#[test]
fn channel_coupling_halves_match_the_masked_computation() {
    gm_core::tch::manual_seed(17);
    for second_half in [false, true] {
        for inverse in [false, true] {
            let vs = double_store();
            let coupling = ImageCoupling::new(
                &(vs.root() / "ch"),
                6,
                5,
                ImageMask::Channel { second_half },
            )
            .unwrap();
            randomize(&vs, 0.5);
            let x = randn(&[3, 6, 4, 4], 7).set_requires_grad(true);
            let probe = randn(&[3, 6, 4, 4], 8);
            let run = |masked: bool| {
                let (y, ld) = if masked {
                    coupling.run_masked(&x, inverse).unwrap()
                } else if inverse {
                    gm_flow::FlowLayer::inverse(&coupling, &x, None).unwrap()
                } else {
                    gm_flow::FlowLayer::forward(&coupling, &x, None).unwrap()
                };
                // One scalar touching every output, for the gradients.
                let scalar = (&y * &probe).sum(Kind::Double) + ld.sum(Kind::Double) * 0.37;
                let mut inputs = vec![x.shallow_clone()];
                inputs.extend(vs.trainable_variables());
                let grads = Tensor::run_backward(&[scalar], &inputs, false, false);
                (y.detach(), ld.detach(), grads)
            };
            let (y_half, ld_half, g_half) = run(false);
            let (y_mask, ld_mask, g_mask) = run(true);
            let what = format!("second_half {second_half}, inverse {inverse}");
            // Relative to each entry's magnitude (at least 1): the two paths may round
            // differently (their first and last convolutions see different channel counts),
            // and the inverse multiplies rounding by its factors: outputs reach 1e10 here.
            let close = |a: &Tensor, b: &Tensor, what: String| {
                assert_close_per_element(a, b, 1e-12, &what);
            };
            close(&y_half, &y_mask, format!("outputs, {what}"));
            close(&ld_half, &ld_mask, format!("log-determinants, {what}"));
            for (k, (a, b)) in g_half.iter().zip(&g_mask).enumerate() {
                close(a, b, format!("gradient {k}, {what}"));
            }
            // The map is not trivially the identity.
            assert!(
                (&y_half - &x.detach()).abs().max().double_value(&[]) > 1e-3,
                "{what}"
            );
        }
    }
}

/// `inverse_only`, the sampling direction without log-determinants, gives the inverse's output,
/// in float64 to 1e-12 and float32 to 1e-5 relative to each entry (at least 1). New code is
/// tested in the channel couplings (the factor `1 + e^-(raw+2)` in place of
/// `exp(softplus(-(raw+2)))`, also where the factors pass the cap: raw-scale biases of -80 and
/// -700, so that both clamp alike) and the multi-scale stack; ActNorm's against its formula
/// `y·e^-s − b`; the other layers' inverses are their `inverse_only`, checked for completeness.
#[test]
fn inverse_only_gives_the_inverse() {
    use gm_core::bijectors::Bijector;
    fn agree(layer: &dyn gm_flow::FlowLayer, y: &Tensor, tol: f64, what: &str) {
        let (full, _) = layer.inverse(y, None).unwrap();
        let only = layer.inverse_only(y, None).unwrap();
        assert_close_per_element(&only, &full, tol, what);
    }
    fn push_raw_scale_bias(vs: &gm_core::tch::nn::VarStore, bias: f64) {
        gm_core::tch::no_grad(|| {
            for (name, v) in vs.variables() {
                if name.ends_with("conv_out.bias") {
                    let c = v.size()[0] / 2;
                    let _ = v.narrow(0, c, c).fill_(bias);
                }
            }
        });
    }
    gm_core::tch::manual_seed(29);
    for (kind, tol) in [(Kind::Double, 1e-12), (Kind::Float, 1e-5)] {
        for bias in [None, Some(-80.0), Some(-700.0)] {
            let mut vs = gm_core::tch::nn::VarStore::new(gm_core::tch::Device::Cpu);
            vs.set_kind(kind);
            let root = vs.root();
            let x = randn(&[4, 4, 6, 6], 31).to_kind(kind);
            let actnorm = ActNorm::new(&(&root / "actnorm"), 4).unwrap();
            let _ = actnorm.forward(&x).unwrap();
            let conv = InvertibleConv1x1::new(&(&root / "conv"), 4).unwrap();
            let couplings: Vec<(String, ImageCoupling)> = [
                ImageMask::Channel { second_half: false },
                ImageMask::Channel { second_half: true },
                ImageMask::Checkerboard { parity: 0 },
                ImageMask::Checkerboard { parity: 1 },
            ]
            .into_iter()
            .enumerate()
            .map(|(i, mask)| {
                let layer = ImageCoupling::new(&(&root / format!("c{i}")), 4, 8, mask).unwrap();
                (format!("{mask:?}"), layer)
            })
            .collect();
            randomize(&vs, 0.3);
            if let Some(b) = bias {
                push_raw_scale_bias(&vs, b);
            }
            let tag = format!("{kind:?}, raw-scale bias {bias:?}");
            agree(&actnorm, &x, tol, &format!("actnorm, {tag}"));
            let by_formula = gm_core::tch::no_grad(|| {
                let shaped = |name: &str| vs.variables()[name].reshape([1, 4, 1, 1]);
                &x * shaped("actnorm.log_scale").neg().exp() - shaped("actnorm.bias")
            });
            let only = gm_flow::FlowLayer::inverse_only(&actnorm, &x, None).unwrap();
            assert_close_per_element(&only, &by_formula, tol, &format!("actnorm formula, {tag}"));
            agree(&conv, &x, tol, &format!("conv1x1, {tag}"));
            for (mask, layer) in &couplings {
                agree(layer, &x, tol, &format!("coupling {mask}, {tag}"));
            }
            agree(&Squeeze, &x, 0.0, &format!("squeeze, {tag}"));
            let logit = LogitPreprocess::new(0.05).unwrap();
            agree(&logit, &x, tol, &format!("logit, {tag}"));
        }
        // The whole stack, well-conditioned (see `multi_scale_flow`): from the latent of data
        // and from a draw of the base.
        let mut vs = gm_core::tch::nn::VarStore::new(gm_core::tch::Device::Cpu);
        vs.set_kind(kind);
        let flow = MultiScale::new(&vs.root(), [1, 12, 12], 2, 2, 8).unwrap();
        let image = randn(&[8, 1, 12, 12], 37).to_kind(kind);
        let _ = flow.forward(&image).unwrap();
        randomize(&vs, 0.1);
        let (z, _) = flow.forward(&image).unwrap();
        agree(&flow, &z, tol, &format!("multi-scale, {kind:?}"));
        let draw = randn(&[8, 144], 41).to_kind(kind);
        agree(
            &flow,
            &draw,
            tol,
            &format!("multi-scale from a draw, {kind:?}"),
        );
    }
}
