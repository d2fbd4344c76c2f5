//! Flow matching and the diffusion model's probability-flow likelihood behind the model
//! interface: trained toy models give one log-density whatever the solver, a density that
//! integrates to one, and the kinds and errors the contract promises; reflow freezes its
//! teacher at its step; guidance mixes velocities.

mod common;

use gm_core::data::toy::ToyDataset;
use gm_core::model::{Batch, GenerativeModel, LikelihoodKind, SampleOptions, WeightChoice};
use gm_core::spec::{DataInfo, ModelSpec};
use gm_core::tch::{Device, Kind, Tensor};
use gm_core::testing::error_text;
use gm_diffusion::ode::{OdeConfig, OdeSolver};
use gm_diffusion::{
    DenoiserConfig, Diffusion, DiffusionConfig, Divergence, FlowMatching, FlowMatchingConfig,
    ProbabilityFlowConfig,
};

fn toy_info() -> DataInfo {
    gm_core::data::named_info("eight_gaussians").unwrap()
}

fn small_mlp() -> DenoiserConfig {
    DenoiserConfig::Mlp {
        hidden: vec![64, 64],
        time_embedding: 16,
    }
}

fn train(model: &mut dyn GenerativeModel, set: ToyDataset, steps: usize) {
    for _ in 0..steps {
        let x = set.sample(256, Device::Cpu).unwrap();
        model.train_step(&Batch::new(x)).unwrap();
    }
}

fn trained_flow_matching() -> FlowMatching {
    let run = common::registry().load_run("flow_matching/toy").unwrap();
    let mut c: FlowMatchingConfig = run.model_config().unwrap();
    c.velocity = small_mlp();
    c.ema = None;
    c.sampler = OdeConfig::adaptive(1e-6, 1e-6);
    gm_core::device::seed_torch(11);
    let mut model = FlowMatching::new(&c, &toy_info(), Device::Cpu).unwrap();
    train(&mut model, ToyDataset::EightGaussians, 400);
    model
}

fn trained_diffusion() -> Diffusion {
    let run = common::registry()
        .load_run("diffusion/toy_mlp_ode")
        .unwrap();
    let mut c: DiffusionConfig = run.model_config().unwrap();
    c.denoiser = small_mlp();
    c.ema = None;
    gm_core::device::seed_torch(12);
    let mut model = Diffusion::new(&c, &toy_info(), Device::Cpu).unwrap();
    train(&mut model, ToyDataset::EightGaussians, 400);
    model
}

/// exp(ln p) summed over a 90 × 90 grid covering [-6, 6]² (data space), times the cell area.
fn grid_mass(log_p: impl Fn(&Tensor) -> Tensor) -> f64 {
    let n = 90;
    let h = 12.0 / n as f64;
    let axis = Tensor::arange(n, (Kind::Float, Device::Cpu)) * h + (-6.0 + h / 2.0);
    let gx = axis.unsqueeze(1).expand([n, n], false).reshape([-1]);
    let gy = axis.unsqueeze(0).expand([n, n], false).reshape([-1]);
    let grid = Tensor::stack(&[gx, gy], 1);
    let lp = log_p(&grid);
    lp.to_kind(Kind::Double)
        .exp()
        .sum(Kind::Double)
        .double_value(&[])
        * h
        * h
}

/// A trained flow-matching model: its exact ODE log-density at the shipped tolerance (1e-7)
/// agrees with a tighter solve and with RK4 of 2,000 steps within 3e-4 nats, and integrates to 1
/// within 3% over a grid. (Local error control does not bound the global error: at tolerance
/// 1e-5 this field's log-densities are off by up to 1e-2 nats, which is why 1e-7 is shipped.)
#[test]
fn a_trained_flow_matching_density_is_consistent_and_normalised() {
    common::single_thread();
    let model = trained_flow_matching();
    assert_eq!(model.likelihood_kind(), LikelihoodKind::Exact);
    let x = ToyDataset::EightGaussians.sample(16, Device::Cpu).unwrap();
    let score = |ode: OdeConfig| {
        let config = ProbabilityFlowConfig {
            ode,
            divergence: Divergence::Exact,
        };
        model
            .flow_log_density(&x, None, &config, WeightChoice::Ema)
            .unwrap()
            .log_density
    };
    let reference = score(OdeConfig::adaptive(1e-8, 1e-8));
    for (what, ode) in [
        ("dopri5 1e-7", model.config().likelihood.ode.clone()),
        ("rk4 2000 steps", OdeConfig::fixed(OdeSolver::Rk4, 2000)),
    ] {
        let err = (score(ode) - &reference).abs().max().double_value(&[]);
        assert!(err < 3e-4, "{what}: {err:e} nats from the tight solve");
    }
    let coarse = ProbabilityFlowConfig {
        ode: OdeConfig::adaptive(1e-5, 1e-5),
        divergence: Divergence::Exact,
    };
    let mass = grid_mass(|g| {
        model
            .flow_log_density(g, None, &coarse, WeightChoice::Ema)
            .unwrap()
            .log_density
    });
    assert!(
        (mass - 1.0).abs() < 0.03,
        "the density integrates to {mass}"
    );
    // Better than the untrained N(0, 2²) it started from (ln p averages about −3.6 there).
    let mean = reference.mean(Kind::Double).double_value(&[]);
    assert!(mean > -3.4, "mean test log-density {mean}");
}

/// The diffusion model's probability-flow likelihood: exact kind, consistent across solvers,
/// normalised over the grid.
#[test]
fn a_trained_diffusion_probability_flow_density_is_consistent_and_normalised() {
    common::single_thread();
    let model = trained_diffusion();
    assert_eq!(model.likelihood_kind(), LikelihoodKind::Exact);
    let x = ToyDataset::EightGaussians.sample(16, Device::Cpu).unwrap();
    let score = |ode: OdeConfig| {
        model
            .probability_flow_log_density(&x, None, &ode, Divergence::Exact, WeightChoice::Ema)
            .unwrap()
            .log_density
    };
    let reference = score(OdeConfig::adaptive(1e-8, 1e-8));
    let err = (score(OdeConfig::adaptive(1e-7, 1e-7)) - &reference)
        .abs()
        .max()
        .double_value(&[]);
    assert!(err < 3e-4, "dopri5 1e-7: {err:e} nats from the tight solve");
    // The ODE solvers also sample the diffusion through its probability-flow ODE. DDIM is a
    // first-order discretisation of the same ODE (in other variables, on the discrete
    // schedule): from the same noise, DDIM with 500 steps lies closer to Dormand–Prince's
    // points than DDIM with 20 does, i.e. DDIM converges towards the ODE solution.
    let draw = |solver: &str, steps: usize| {
        model
            .sample_with(
                500,
                &SampleOptions::new()
                    .solver(solver)
                    .steps(steps)
                    .tolerance(1e-5)
                    .seed(3),
            )
            .unwrap()
    };
    let ode = draw("dopri5", 1);
    assert!(model.last_evaluations().unwrap() > 6);
    let median = |a: &Tensor, b: &Tensor| {
        (a - b)
            .square()
            .sum_dim_intlist(1, false, Kind::Double)
            .sqrt()
            .median()
            .double_value(&[])
    };
    let (coarse, fine) = (
        median(&draw("ddim", 20), &ode),
        median(&draw("ddim", 500), &ode),
    );
    println!("median distance to the ODE's points: DDIM-20 {coarse}, DDIM-500 {fine}");
    assert!(
        fine < 0.6 * coarse,
        "DDIM-500 {fine} is not closer than DDIM-20 {coarse}"
    );
    // The fixed-step solvers on the same ODE converge towards it too.
    let (euler20, euler100) = (
        median(&draw("euler", 20), &ode),
        median(&draw("euler", 100), &ode),
    );
    let rk4 = median(&draw("rk4", 20), &ode);
    assert!(
        euler100 < 0.5 * euler20 && rk4 < euler20,
        "Euler-20 {euler20}, Euler-100 {euler100}, RK4-20 {rk4}"
    );
    let mass = grid_mass(|g| {
        model
            .probability_flow_log_density(
                g,
                None,
                &OdeConfig::adaptive(1e-5, 1e-5),
                Divergence::Exact,
                WeightChoice::Ema,
            )
            .unwrap()
            .log_density
    });
    assert!(
        (mass - 1.0).abs() < 0.03,
        "the density integrates to {mass}"
    );
}

/// Sampling reports its network evaluations: steps × stages for fixed-step solvers.
#[test]
fn samplers_report_their_evaluations_and_refuse_bad_options() {
    common::single_thread();
    let run = common::registry().load_run("flow_matching/toy").unwrap();
    let mut c: FlowMatchingConfig = run.model_config().unwrap();
    c.velocity = small_mlp();
    let model = FlowMatching::new(&c, &toy_info(), Device::Cpu).unwrap();
    for (solver, steps, calls) in [("euler", 3, 3), ("heun", 3, 6), ("rk4", 2, 8)] {
        let x = model
            .sample_with(5, &SampleOptions::new().solver(solver).steps(steps))
            .unwrap();
        assert_eq!(x.size(), [5, 2]);
        assert_eq!(model.last_evaluations(), Some(calls), "{solver}");
    }
    let _ = model
        .sample_with(5, &SampleOptions::new().solver("dopri5").tolerance(1e-3))
        .unwrap();
    assert!(model.last_evaluations().unwrap() >= 7);
    let bad = model.sample_with(5, &SampleOptions::new().solver("ddim"));
    assert!(error_text(bad).contains("unknown ODE solver"));
    let bad = model.sample_with(5, &SampleOptions::new().tolerance(0.0));
    assert!(error_text(bad).contains("tolerance"));
    // Images are refused an exact divergence (one backward pass per pixel) when the model is
    // built, not after training; the Hutchinson one scores them, as a bound.
    let grey = gm_core::data::named_info("mnist_grey").unwrap();
    let mut img: FlowMatchingConfig = common::registry()
        .load_run("flow_matching/mnist_unet")
        .unwrap()
        .model_config()
        .unwrap();
    if let DenoiserConfig::Unet { channels, .. } = &mut img.velocity {
        *channels = 8;
    }
    let m = FlowMatching::new(&img, &grey, Device::Cpu).unwrap();
    assert_eq!(m.likelihood_kind(), LikelihoodKind::LowerBound);
    img.likelihood.divergence = Divergence::Exact;
    let refused = FlowMatching::new(&img, &grey, Device::Cpu);
    let text = error_text(refused);
    assert!(
        text.contains("likelihood.divergence") && text.contains("hutchinson"),
        "{text}"
    );
}

/// Reflow: before its step the model trains on data, at its step the teacher becomes the
/// model's weights, and after it the teacher stays frozen while the model moves on.
#[test]
fn reflow_freezes_the_teacher_at_its_step() {
    common::single_thread();
    let run = common::registry()
        .load_run("flow_matching/toy_reflow")
        .unwrap();
    let mut c: FlowMatchingConfig = run.model_config().unwrap();
    c.velocity = small_mlp();
    c.ema = None;
    c.reflow.as_mut().unwrap().start_step = 3;
    let mut model = FlowMatching::new(&c, &toy_info(), Device::Cpu).unwrap();
    let teacher = |m: &FlowMatching| -> Vec<Tensor> {
        let mut s = m.state();
        s.sort_by(|a, b| a.0.cmp(&b.0));
        s.into_iter()
            .filter(|(n, _)| n.starts_with("teacher."))
            .map(|(_, t)| t.copy())
            .collect()
    };
    let weights = |m: &FlowMatching| -> Vec<Tensor> {
        let mut s = m.state();
        s.sort_by(|a, b| a.0.cmp(&b.0));
        s.into_iter()
            .filter(|(n, _)| n.starts_with("model."))
            .map(|(_, t)| t.copy())
            .collect()
    };
    let x = ToyDataset::TwoMoons.sample(64, Device::Cpu).unwrap();
    for _ in 0..3 {
        model.train_step(&Batch::new(x.shallow_clone())).unwrap();
    }
    let before = weights(&model);
    model.train_step(&Batch::new(x.shallow_clone())).unwrap();
    assert!(model.reflowing());
    for (t, w) in teacher(&model).iter().zip(&before) {
        assert!(
            t.equal(w),
            "the teacher is not the model at the reflow step"
        );
    }
    let frozen = teacher(&model);
    model.train_step(&Batch::new(x)).unwrap();
    for (a, b) in teacher(&model).iter().zip(&frozen) {
        assert!(a.equal(b), "the teacher moved after the reflow step");
    }
    // The budget scales the reflow step with the run.
    let mut scaled = c.clone();
    scaled.reflow.as_mut().unwrap().start_step = 2500;
    scaled.scale_to_budget(&gm_core::spec::Budget::new(5000, 1000).unwrap());
    assert_eq!(scaled.reflow.unwrap().start_step, 500);
}

/// Guidance at scale w is u + w (c − u) of the unconditional and conditional velocities.
#[test]
fn guided_velocity_mixes_the_two_models() {
    common::single_thread();
    let run = common::registry()
        .load_run("flow_matching/mnist_unet_conditional")
        .unwrap();
    let mut c: FlowMatchingConfig = run.model_config().unwrap();
    if let DenoiserConfig::Unet { channels, .. } = &mut c.velocity {
        *channels = 8;
    }
    let info = gm_core::data::named_info("mnist_grey").unwrap();
    let mut model = FlowMatching::new(&c, &info, Device::Cpu).unwrap();
    // One step so the (zero-initialised) output layer is no longer zero.
    let x = gm_core::testing::example_data(&info, 4);
    let labels = Tensor::from_slice(&[1i64, 2, 3, 4]);
    model
        .train_step(&Batch::with_labels(
            x.shallow_clone(),
            labels.shallow_clone(),
        ))
        .unwrap();
    let y = Tensor::randn([4, 1, 28, 28], (Kind::Float, Device::Cpu));
    let t = Tensor::from_slice(&[0.2f64, 0.4, 0.6, 0.8]);
    let none = labels.full_like(10);
    let cond = model.velocity(&y, &t, Some(&labels), 1.0).unwrap();
    let uncond = model.velocity(&y, &t, Some(&none), 1.0).unwrap();
    let guided = model.velocity(&y, &t, Some(&labels), 3.0).unwrap();
    let want = &uncond + (&cond - &uncond) * 3.0;
    assert!((guided - want).abs().max().double_value(&[]) < 1e-4);
    assert!((&cond - &uncond).abs().max().double_value(&[]) > 0.0);
    // Labels are required to train and checked for the likelihood.
    let err = model.train_step(&Batch::new(x.shallow_clone()));
    assert!(error_text(err).contains("labels"));
    let bad = Tensor::from_slice(&[0i64, 1, 2, 10]);
    assert!(error_text(model.log_likelihood_given(&x, Some(&bad))).contains("labels"));
}

/// Encoding then sampling deterministically returns a continuous example (the ODE is
/// invertible), and `decode` is that ODE from t = 0 to 1 with the sampler's settings, in the
/// data space (times `data_scale`): measured 1.1e-3 at most from `x` at tolerance 1e-6 (the
/// assertion allows 5e-3), while the latents decoded against other examples miss by 4.3.
#[test]
fn encoding_and_sampling_invert_each_other() {
    common::single_thread();
    let model = trained_flow_matching();
    let x = ToyDataset::EightGaussians.sample(16, Device::Cpu).unwrap();
    let z = model.encode(&x).unwrap().unwrap();
    let v = |y: &Tensor, t: &Tensor| model.velocity(y, t, None, 1.0);
    let (back, _) = gm_diffusion::probability_flow::transport(
        &v,
        &z,
        0.0,
        1.0,
        &OdeConfig::adaptive(1e-6, 1e-6),
    )
    .unwrap();
    let back = back * 2.0;
    let err = (&back - &x).abs().max().double_value(&[]);
    assert!(err < 5e-3, "transport(encode(x)) differs from x by {err}");
    let decoded = model.decode(&z).unwrap().unwrap();
    assert_eq!(decoded.size(), x.size());
    assert!(model.last_evaluations().unwrap() > 0);
    assert!(
        decoded.allclose(&back, 1e-6, 1e-6, false),
        "decode is not the sampler's ODE"
    );
    let err = (&decoded - &x).abs().max().double_value(&[]);
    let shuffled = model.decode(&z.roll([1], [0])).unwrap().unwrap();
    let miss = (&shuffled - &x).abs().max().double_value(&[]);
    eprintln!("FlowMatching: |decode(encode(x)) - x| ≤ {err:.2e}; other latents miss by {miss:.2}");
    assert!(err < 5e-3, "decode(encode(x)) differs from x by {err}");
    assert!(miss > 0.5, "decode ignores its latent: {miss}");
}

/// On 16-level data `encode` dequantises (so its latent is random) and `decode` rounds back to
/// levels. A dequantised value can lie arbitrarily near its cell's edge, so the ODE's round-trip
/// error moves a few values to the next level: after a short training run, with the solver at
/// tolerance 1e-6, measured 2 of 512 values one level off (19 at the shipped 1e-4); asserted
/// at most 10 and never more than one level, while the latents decoded against other examples
/// get most values wrong. Bad latents are refused with errors, and a conditional model has no
/// encoder to invert.
#[test]
fn flow_matching_decode_rounds_to_levels_and_refuses_bad_latents() {
    common::single_thread();
    let run = common::registry().load_run("flow_matching/toy").unwrap();
    let mut c: FlowMatchingConfig = run.model_config().unwrap();
    c.velocity = small_mlp();
    c.sampler = OdeConfig::adaptive(1e-6, 1e-6);
    let levels = DataInfo::new(&[8], gm_core::data::ValueKind::Discrete { levels: 16 }, 0);
    gm_core::device::seed_torch(17);
    let mut model = FlowMatching::new(&c, &levels, Device::Cpu).unwrap();
    let x = gm_core::testing::example_data(&levels, 64);
    for _ in 0..50 {
        model.train_step(&Batch::new(x.shallow_clone())).unwrap();
    }
    let z = model.encode(&x).unwrap().unwrap();
    let back = model.decode(&z).unwrap().unwrap();
    assert_eq!(back.size(), x.size());
    let wrong = back.ne_tensor(&x).sum(Kind::Int64).int64_value(&[]);
    let far = (&back - &x).abs().max().double_value(&[]);
    let shuffled = model.decode(&z.roll([1], [0])).unwrap().unwrap();
    let missed = shuffled.ne_tensor(&x).sum(Kind::Int64).int64_value(&[]);
    eprintln!(
        "FlowMatching, 16 levels: {wrong} of 512 values decode to another level (at most {far} \
         away); other examples' latents get {missed} wrong"
    );
    assert!(
        wrong <= 10 && far <= 1.0,
        "{wrong} values decode to another level, up to {far} away"
    );
    assert!(
        missed > 256,
        "decode ignores its latent: {missed} of 512 differ"
    );

    for (bad, needle) in [
        (
            Tensor::zeros([3, 2], (Kind::Float, Device::Cpu)),
            "expected shape",
        ),
        (
            Tensor::zeros([0, 8], (Kind::Float, Device::Cpu)),
            "non-empty",
        ),
        (z.to_kind(Kind::Bool), "real or integer"),
        (z.copy().fill_(f64::INFINITY), "infinite"),
    ] {
        let err = error_text(model.decode(&bad));
        assert!(err.contains(needle), "{bad:?}: {err}");
    }
    let mut conditional = c.clone();
    conditional.conditional = true;
    let labelled = DataInfo::new(&[2], gm_core::data::ValueKind::Continuous, 3);
    let model = FlowMatching::new(&conditional, &labelled, Device::Cpu).unwrap();
    let z = Tensor::randn([2, 2], (Kind::Float, Device::Cpu));
    assert!(model.decode(&z).unwrap().is_none());
}

/// One training step's reported loss is the mean squared error of the velocity against
/// x₁ − (1 − σ_min) x₀ on x_t = t x₁ + (1 − (1 − σ_min) t) x₀, recomputed here from the same
/// random draws (noise, then times) for σ_min = 0.05.
#[test]
fn the_training_loss_is_the_conditional_flow_matching_loss() {
    common::single_thread();
    let run = common::registry().load_run("flow_matching/toy").unwrap();
    let mut c: FlowMatchingConfig = run.model_config().unwrap();
    c.velocity = small_mlp();
    c.sigma_min = 0.05;
    let mut model = FlowMatching::new(&c, &toy_info(), Device::Cpu).unwrap();
    // One step first, so the zero-initialised output layer no longer predicts 0.
    let x = ToyDataset::TwoMoons.sample(32, Device::Cpu).unwrap();
    model.train_step(&Batch::new(x.shallow_clone())).unwrap();
    gm_core::device::seed_torch(77);
    let x1 = &x / 2.0;
    let x0 = x1.randn_like();
    let t = Tensor::rand([32], (Kind::Float, Device::Cpu));
    let c_ = 1.0 - 0.05;
    let te = t.unsqueeze(1);
    let xt = &te * &x1 + (-(&te * c_) + 1.0) * &x0;
    let v = model.velocity(&xt, &t, None, 1.0).unwrap();
    let want = (v - (&x1 - &x0 * c_))
        .square()
        .mean(Kind::Double)
        .double_value(&[]);
    gm_core::device::seed_torch(77);
    let got = model
        .train_step(&Batch::new(x))
        .unwrap()
        .to_host(1)
        .unwrap()[0]
        .1;
    assert!(
        (got - want).abs() < 1e-6 * want.max(1.0),
        "loss {got}, recomputed {want}"
    );
}

/// Dequantisation onto [-1, 1]: each level's values fill its own cell of width 2/(L − 1) around
/// its symmetric value, and the bound it gives is a sub-probability: for a density q on the
/// line, Σ_v exp(E_u[ln q(y)] + ln(2/(L − 1))) ≤ 1 (Jensen, then the cells tile the line).
#[test]
fn dequantisation_fills_each_levels_cell_and_bounds_probabilities() {
    use gm_core::data::transforms::{
        dequantize_to_symmetric, dequantized_symmetric_log_jacobian, levels_to_symmetric,
    };
    gm_core::device::seed_torch(78);
    let levels = 4u32;
    let width: f64 = 2.0 / 3.0;
    assert!((dequantized_symmetric_log_jacobian(levels) - width.ln()).abs() < 1e-15);
    let v = Tensor::from_slice(&[0i64, 1, 2, 3])
        .repeat([5000])
        .to_kind(Kind::Float);
    let y = dequantize_to_symmetric(&v, levels).unwrap();
    let centre = levels_to_symmetric(&v, levels).unwrap();
    let offset = (&y - &centre) / width;
    assert!(offset.min().double_value(&[]) >= -0.5 && offset.max().double_value(&[]) < 0.5);
    assert!(
        offset.abs().max().double_value(&[]) > 0.49,
        "the cells are filled to their edges"
    );
    // q = N(0.2, 0.5²): the bound's probabilities, E_u by the mean over 5,000 draws per level.
    let lq =
        -((&y - 0.2) / 0.5).square() * 0.5 - (0.5f64 * (2.0 * std::f64::consts::PI).sqrt()).ln();
    let per_level = lq.reshape([5000, 4]).mean_dim(0, false, Kind::Double);
    let total = (per_level + dequantized_symmetric_log_jacobian(levels))
        .exp()
        .sum(Kind::Double)
        .double_value(&[]);
    assert!(total <= 1.0 && total > 0.8, "the bounds sum to {total}");
}
