//! The losses, penalties and spectral normalisation against independent computations:
//! hand-computed logits, closed-form input gradients, and an SVD.

use gm_core::tch::{nn, Device, Kind, Tensor};
use gm_core::Result;
use gm_gan::layers::{leaky_relu, Layer, SpectralNorm};
use gm_gan::regularizer::{gradient_penalty_at, interpolates, r1_penalty};
use gm_gan::GanLoss;

const REAL: [f64; 3] = [2.0, -1.0, 0.3];
const FAKE: [f64; 3] = [0.5, -3.0, 1.7];

fn t(v: &[f64]) -> Tensor {
    Tensor::from_slice(v).to_kind(Kind::Double)
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = v.collect();
    v.iter().sum::<f64>() / v.len() as f64
}

fn log_sigmoid(x: f64) -> f64 {
    -(1.0 + (-x).exp()).ln()
}

/// (discriminator loss, generator loss) written out from each paper's formula.
fn by_hand(loss: GanLoss) -> (f64, f64) {
    let r = REAL.iter().copied();
    let f = || FAKE.iter().copied();
    match loss {
        GanLoss::Minimax => (
            mean(r.map(|x| -log_sigmoid(x)))
                + mean(f().map(|x| -(1.0 - 1.0 / (1.0 + (-x).exp())).ln())),
            mean(f().map(|x| (1.0 - 1.0 / (1.0 + (-x).exp())).ln())),
        ),
        GanLoss::NonSaturating => (
            mean(r.map(|x| -log_sigmoid(x))) + mean(f().map(|x| -log_sigmoid(-x))),
            mean(f().map(|x| -log_sigmoid(x))),
        ),
        GanLoss::LeastSquares => (
            mean(r.map(|x| 0.5 * (x - 1.0).powi(2))) + mean(f().map(|x| 0.5 * x * x)),
            mean(f().map(|x| 0.5 * (x - 1.0).powi(2))),
        ),
        GanLoss::Hinge => (
            mean(r.map(|x| (1.0 - x).max(0.0))) + mean(f().map(|x| (1.0 + x).max(0.0))),
            -mean(f()),
        ),
        GanLoss::Wasserstein => (mean(f()) - mean(r), -mean(f())),
    }
}

#[test]
fn every_loss_matches_its_formula_on_hand_computed_logits() {
    for loss in [
        GanLoss::Minimax,
        GanLoss::NonSaturating,
        GanLoss::LeastSquares,
        GanLoss::Hinge,
        GanLoss::Wasserstein,
    ] {
        let (d, g) = by_hand(loss);
        let got_d = loss
            .discriminator(&t(&REAL), &t(&FAKE))
            .unwrap()
            .double_value(&[]);
        let got_g = loss.generator(&t(&FAKE)).unwrap().double_value(&[]);
        assert!(
            (got_d - d).abs() < 1e-12,
            "{loss:?} discriminator: {got_d} vs {d}"
        );
        assert!(
            (got_g - g).abs() < 1e-12,
            "{loss:?} generator: {got_g} vs {g}"
        );
    }
}

#[test]
fn the_non_saturating_loss_keeps_its_gradient_where_minimax_saturates() {
    // A confident discriminator (fake logit −8): d/df ln(1 − σ(f)) = −σ(f) ≈ 0, while
    // d/df −ln σ(f) = σ(f) − 1 ≈ −1.
    let grad = |loss: GanLoss| {
        let f = Tensor::from_slice(&[-8.0f64]).set_requires_grad(true);
        loss.generator(&f).unwrap().backward();
        f.grad().double_value(&[0])
    };
    let s = 1.0 / (1.0 + 8f64.exp());
    assert!((grad(GanLoss::Minimax) + s).abs() < 1e-9);
    assert!((grad(GanLoss::NonSaturating) - (s - 1.0)).abs() < 1e-9);
}

/// The critic `D(x) = wᵀx + ½ xᵀAx` with symmetric `A`: `∇D(x) = w + A x` in closed form.
struct Quadratic {
    w: Tensor,
    a: Tensor,
}

impl Quadratic {
    fn new() -> Self {
        gm_core::tch::manual_seed(1);
        let m = Tensor::randn([3, 3], (Kind::Double, Device::Cpu));
        Quadratic {
            w: Tensor::randn([3], (Kind::Double, Device::Cpu)).set_requires_grad(true),
            a: (&m + m.tr()) * 0.5,
        }
    }

    fn critic(&self) -> impl Fn(&Tensor) -> Result<Tensor> + '_ {
        move |x: &Tensor| {
            let lin = x.matmul(&self.w);
            let quad = (x.matmul(&self.a) * x).sum_dim_intlist(1, false, Kind::Double) * 0.5;
            Ok(lin + quad)
        }
    }

    /// Closed-form input gradients `[b, 3]`.
    fn gradients(&self, x: &Tensor) -> Tensor {
        x.matmul(&self.a) + self.w.detach()
    }
}

#[test]
fn gradient_penalty_equals_the_closed_form_and_trains_the_critic() {
    let q = Quadratic::new();
    let points = Tensor::randn([5, 3], (Kind::Double, Device::Cpu));
    let gp = gradient_penalty_at(&q.critic(), &points).unwrap();
    let g = q.gradients(&points);
    let norms = g.square().sum_dim_intlist(1, false, Kind::Double).sqrt();
    let want = (&norms - 1.0).square().mean(Kind::Double).double_value(&[]);
    assert!(
        (gp.double_value(&[]) - want).abs() < 1e-9,
        "{gp:?} vs {want}"
    );
    // Double back-propagation: d GP / d w = mean over examples of 2(‖g‖ − 1) g / ‖g‖.
    gp.backward();
    let want_grad =
        (g * ((&norms - 1.0) * 2.0 / &norms).unsqueeze(1)).mean_dim(0, false, Kind::Double);
    let diff = (q.w.grad() - want_grad).abs().max().double_value(&[]);
    assert!(diff < 1e-9, "gradient of the penalty off by {diff}");
}

#[test]
fn r1_equals_the_squared_gradient_norm_on_real_data() {
    let q = Quadratic::new();
    let real = Tensor::randn([6, 3], (Kind::Double, Device::Cpu));
    let r1 = r1_penalty(&q.critic(), &real).unwrap().double_value(&[]);
    let want = q
        .gradients(&real)
        .square()
        .sum_dim_intlist(1, false, Kind::Double)
        .mean(Kind::Double)
        .double_value(&[]);
    assert!((r1 - want).abs() < 1e-9, "{r1} vs {want}");
}

#[test]
fn interpolates_lie_on_the_segments_between_pairs() {
    gm_core::tch::manual_seed(2);
    let real = Tensor::randn([64, 2, 3], (Kind::Double, Device::Cpu));
    let fake = Tensor::randn([64, 2, 3], (Kind::Double, Device::Cpu));
    let x = interpolates(&real, &fake).unwrap();
    // x − fake = α (real − fake) with one α per example, in [0, 1].
    let alpha = ((&x - &fake) / (&real - &fake)).reshape([64, -1]);
    let first = alpha.narrow(1, 0, 1);
    assert!((&alpha - &first).abs().max().double_value(&[]) < 1e-9);
    assert!(first.min().double_value(&[]) >= 0.0 && first.max().double_value(&[]) <= 1.0);
    assert!(
        first.std(true).double_value(&[]) > 0.1,
        "α must vary per example"
    );
}

fn largest_singular_value(w: &Tensor) -> f64 {
    let m = w.reshape([w.size()[0], -1]);
    let (_, singular_values, _) = m.svd(true, false);
    singular_values.max().double_value(&[])
}

#[test]
fn spectral_norm_converges_to_the_largest_singular_value() {
    gm_core::tch::manual_seed(3);
    for dims in [vec![8, 5], vec![3, 12], vec![6, 3, 3, 3]] {
        let vs = nn::VarStore::new(Device::Cpu);
        let w = Tensor::randn(dims.as_slice(), (Kind::Float, Device::Cpu));
        let sn = SpectralNorm::new(&vs.root(), dims[0]).unwrap();
        let mut sigma = 0.0;
        for _ in 0..200 {
            sigma = sn.sigma(&w, true).unwrap().double_value(&[]);
        }
        let want = largest_singular_value(&w);
        assert!(
            (sigma - want).abs() < 1e-4 * want,
            "{dims:?}: power iteration {sigma}, SVD {want}"
        );
        // Without an update the estimate does not move.
        let u = sn.u().copy();
        let _ = sn.sigma(&w, false).unwrap();
        assert!(sn.u().equal(&u));
    }
}

#[test]
fn a_spectrally_normalised_layer_has_unit_spectral_norm() {
    gm_core::tch::manual_seed(4);
    let vs = nn::VarStore::new(Device::Cpu);
    let layer = Layer::linear(&vs.root(), 6, 4, true).unwrap();
    let x = Tensor::eye(6, (Kind::Float, Device::Cpu));
    for _ in 0..100 {
        let _ = layer.forward(&x, true).unwrap();
    }
    // The identity input reads the effective weight (plus the bias) back out.
    let bias = vs.variables()["bias"].shallow_clone();
    let effective = (layer.forward(&x, false).unwrap() - bias).tr();
    let top = largest_singular_value(&effective);
    assert!((top - 1.0).abs() < 1e-4, "normalised weight has σ = {top}");
    // The vector is a saved variable of the store, so checkpoints carry it.
    assert!(vs.variables().contains_key("sn_u"));
}

/// The discriminator's LeakyReLU is `max(x, 0.2 x)` to the bit in float32 and float64 (its
/// slope is 0.2 in the input's dtype), and its gradient is 1 above zero and 0.2 at and below.
#[test]
fn leaky_relu_is_max_of_x_and_a_fifth_of_x_with_its_gradient() {
    let values = [-3.5, -1.0, -1e-30, 0.0, 1e-30, 0.7, 2.0, 1e30];
    for kind in [Kind::Float, Kind::Double] {
        let x = t(&values).to_kind(kind).set_requires_grad(true);
        let y = leaky_relu(&x).unwrap();
        assert_eq!(y.kind(), kind);
        let expected = x.detach().maximum(&(x.detach() * 0.2));
        assert_eq!(y.detach(), expected, "{kind:?}");
        y.sum(kind).backward();
        let slope = Tensor::scalar_tensor(0.2, (kind, Device::Cpu));
        let want: Vec<Tensor> = values
            .iter()
            .map(|&v| {
                if v > 0.0 {
                    Tensor::scalar_tensor(1.0, (kind, Device::Cpu))
                } else {
                    slope.copy()
                }
            })
            .collect();
        assert_eq!(x.grad(), Tensor::stack(&want, 0), "{kind:?}");
    }
}
