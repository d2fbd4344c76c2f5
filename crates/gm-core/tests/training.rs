//! The training kit: Adam against a reference computation, clipping, EMA, checkpoints, exact
//! resume, and configs.

use gm_core::distributions::{Distribution, Independent, Normal};
use gm_core::model::{
    load_var_store, var_store_state, Batch, GenerativeModel, LikelihoodKind, SampleOptions,
    StepOutput,
};
use gm_core::train::checkpoint::{load_tensors, save_tensors, StateDict};
use gm_core::train::*;
use gm_core::{GmError, Result};
use tch::{nn, Device, Kind, Tensor};

/// A small but real density model: a diagonal Gaussian whose mean and log-scale are produced by
/// a learned affine map of a fixed input, fitted by maximum likelihood with Adam and an EMA.
struct GaussianModel {
    vs: nn::VarStore,
    loc: Tensor,
    log_scale: Tensor,
    opt: Adam,
    ema: Ema,
}

impl GaussianModel {
    fn new(d: i64) -> Self {
        let vs = nn::VarStore::new(Device::Cpu);
        let loc = vs.root().randn("loc", &[d], 0.0, 1.0);
        let log_scale = vs.root().zeros("log_scale", &[d]);
        let opt = Adam::new(
            vs.trainable_variables(),
            AdamConfig {
                lr: 0.05,
                grad_clip_norm: Some(10.0),
                ..Default::default()
            },
        )
        .unwrap();
        let ema = EmaConfig {
            decay: 0.9,
            start_step: 0,
        }
        .init(&vs)
        .unwrap();
        GaussianModel {
            vs,
            loc,
            log_scale,
            opt,
            ema,
        }
    }
    fn dist(&self) -> Independent<Normal> {
        Independent::new(
            Normal::from_log_scale(&self.loc, &self.log_scale).unwrap(),
            1,
        )
        .unwrap()
    }
}

impl GenerativeModel for GaussianModel {
    fn family(&self) -> &'static str {
        "gaussian"
    }
    fn train_step(&mut self, batch: &Batch) -> Result<StepOutput> {
        // A little noise in the objective makes the RNG stream part of what must resume exactly.
        let noisy = batch.x.f_add(&(batch.x.randn_like() * 0.01))?;
        let loss = self.dist().log_prob(&noisy)?.mean(Kind::Float).neg();
        self.opt.backward_step(&loss, 0.05)?;
        self.ema.update(self.opt.steps() as u64)?;
        Ok(StepOutput::new().with("nll", &loss))
    }
    fn sample_with(&self, n: i64, options: &SampleOptions) -> Result<Tensor> {
        options.begin(n)?;
        self.dist().sample(&[n])
    }
    fn likelihood_kind(&self) -> LikelihoodKind {
        LikelihoodKind::Exact
    }
    fn log_likelihood(&self, x: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(self.dist().log_prob(x)?))
    }
    fn num_parameters(&self) -> i64 {
        gm_core::nn::count_parameters(&self.vs.trainable_variables())
    }
    fn state(&self) -> Vec<(String, Tensor)> {
        let mut s = var_store_state(&self.vs, "model.");
        s.extend(self.opt.state("adam."));
        s.extend(self.ema.state("ema."));
        s
    }
    fn load_state(&mut self, state: &mut StateDict) -> Result<()> {
        load_var_store(&self.vs, "model.", state)?;
        self.opt.load_state("adam.", state)?;
        self.ema.load_state("ema.", state)
    }
}

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("gm-core-train-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn data() -> Tensor {
    tch::manual_seed(123);
    Tensor::randn([256, 3], (Kind::Float, Device::Cpu)) * 2.0 + 1.0
}

fn params(m: &GaussianModel) -> Vec<Tensor> {
    m.state().into_iter().map(|(_, t)| t.copy()).collect()
}

#[test]
fn resume_is_bit_identical() {
    let x = data();
    let config = TrainConfig {
        steps: 40,
        batch_size: 32,
        seed: 9,
        log_every: 5,
        checkpoint_every: 0,
    };
    tch::manual_seed(0);
    let mut straight = GaussianModel::new(3);
    let nll_before = -straight
        .log_likelihood(&x)
        .unwrap()
        .unwrap()
        .mean(Kind::Float)
        .double_value(&[]);
    let dir = tmp("straight");
    Trainer::new(config.clone())
        .unwrap()
        .with_checkpoint(dir.join("ckpt.safetensors"))
        .fit(&mut straight, &x, None, |_, _| {})
        .unwrap();

    let dir = tmp("resumed");
    let path = dir.join("ckpt.safetensors");
    tch::manual_seed(0);
    let mut first = GaussianModel::new(3);
    let half = TrainConfig {
        steps: 20,
        ..config.clone()
    };
    Trainer::new(half)
        .unwrap()
        .with_checkpoint(&path)
        .fit(&mut first, &x, None, |_, _| {})
        .unwrap();
    // A fresh model with different initial weights resumes from the checkpoint.
    tch::manual_seed(777);
    let mut second = GaussianModel::new(3);
    let history = Trainer::new(config)
        .unwrap()
        .with_checkpoint(&path)
        .fit(&mut second, &x, None, |_, _| {})
        .unwrap();
    assert_eq!(history.steps_done, 40);
    assert_eq!(
        history.points.len(),
        8,
        "history carries over the first half's log points"
    );
    for (a, b) in params(&straight).iter().zip(params(&second)) {
        assert!(
            a.equal(&b),
            "resumed parameters differ from the uninterrupted run"
        );
    }
    // Training did something: the data's NLL fell by a clear margin.
    let nll_after = -straight
        .log_likelihood(&x)
        .unwrap()
        .unwrap()
        .mean(Kind::Float)
        .double_value(&[]);
    assert!(
        nll_after < nll_before - 0.5,
        "NLL {nll_before} -> {nll_after}"
    );
}

#[test]
fn checkpoint_round_trip_gives_identical_outputs() {
    tch::manual_seed(1);
    let mut a = GaussianModel::new(4);
    let x = Tensor::randn([8, 4], (Kind::Float, Device::Cpu));
    a.train_step(&Batch::new(x.copy())).unwrap();
    let dir = tmp("roundtrip");
    let path = dir.join("m.safetensors");
    a.save(&path).unwrap();
    assert!(
        !dir.join("m.safetensors.tmp").exists(),
        "the temporary file is renamed away"
    );
    let mut b = GaussianModel::new(4);
    b.load(&path).unwrap();
    let la = a.log_likelihood(&x).unwrap().unwrap();
    let lb = b.log_likelihood(&x).unwrap().unwrap();
    assert!(la.equal(&lb));
    // Optimizer state came back too: one more identical step gives identical weights.
    let x2 = Tensor::randn([8, 4], (Kind::Float, Device::Cpu));
    tch::manual_seed(5);
    a.train_step(&Batch::new(x2.copy())).unwrap();
    tch::manual_seed(5);
    b.train_step(&Batch::new(x2)).unwrap();
    for (p, q) in params(&a).iter().zip(params(&b)) {
        assert!(p.equal(&q));
    }
}

#[test]
fn bad_checkpoints_are_errors() {
    let dir = tmp("bad");
    let mut m = GaussianModel::new(4);
    assert!(matches!(
        m.load(&dir.join("none.safetensors")),
        Err(GmError::Io { .. })
    ));
    std::fs::write(dir.join("junk.safetensors"), b"not a checkpoint").unwrap();
    assert!(m
        .load(&dir.join("junk.safetensors"))
        .unwrap_err()
        .to_string()
        .contains("safetensors"));
    // A model of another size: the shape mismatch is named.
    let other = GaussianModel::new(5);
    other.save(&dir.join("five.safetensors")).unwrap();
    let err = m
        .load(&dir.join("five.safetensors"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("shape") && err.contains("expected [4]"),
        "{err}"
    );
    // Extra tensors are reported rather than silently ignored.
    let mut extra = m.state();
    extra.push((
        "stray".into(),
        Tensor::zeros([1], (Kind::Float, Device::Cpu)),
    ));
    save_tensors(
        &dir.join("extra.safetensors"),
        &extra,
        &serde_json::json!({"family": "gaussian"}),
    )
    .unwrap();
    assert!(m
        .load(&dir.join("extra.safetensors"))
        .unwrap_err()
        .to_string()
        .contains("stray"));
    let (_, meta) = load_tensors(&dir.join("extra.safetensors")).unwrap();
    assert_eq!(meta["family"], "gaussian");
}

/// Adam against the update rule written out independently in f64 on the host.
#[test]
fn adam_matches_reference() {
    let p = Tensor::from_slice(&[1.0f64, -2.0, 0.5]).set_requires_grad(true);
    let config = AdamConfig {
        lr: 0.1,
        beta1: 0.8,
        beta2: 0.95,
        eps: 1e-6,
        weight_decay: 0.01,
        decoupled_weight_decay: true,
        grad_clip_norm: None,
    };
    let mut opt = Adam::new(vec![p.shallow_clone()], config.clone()).unwrap();
    let mut w = [1.0f64, -2.0, 0.5];
    let (mut m, mut v) = ([0.0f64; 3], [0.0f64; 3]);
    for t in 1..=5 {
        // loss = Σ w³ / 3, so the gradient is w².
        let loss = p.pow_tensor_scalar(3).sum(Kind::Double) / 3.0;
        opt.backward_step(&loss, config.lr).unwrap();
        for i in 0..3 {
            let g = w[i] * w[i];
            w[i] *= 1.0 - config.lr * config.weight_decay;
            m[i] = config.beta1 * m[i] + (1.0 - config.beta1) * g;
            v[i] = config.beta2 * v[i] + (1.0 - config.beta2) * g * g;
            let mh = m[i] / (1.0 - config.beta1.powi(t));
            let vh = v[i] / (1.0 - config.beta2.powi(t));
            w[i] -= config.lr * mh / (vh.sqrt() + config.eps);
        }
    }
    let got = Vec::<f64>::try_from(&p.detach()).unwrap();
    for i in 0..3 {
        assert!((got[i] - w[i]).abs() < 1e-12, "{got:?} vs {w:?}");
    }
}

/// The flat-buffer optimizer over parameters of two dtypes (so two buffers), with the global
/// norm clipped and L2 weight decay through the gradient, against the update written out on
/// the host in f64.
#[test]
fn flat_adam_with_clipping_matches_reference() {
    let a = Tensor::from_slice(&[1.0f64, -2.0, 0.5, 3.0])
        .reshape([2, 2])
        .set_requires_grad(true);
    let b = Tensor::from_slice(&[0.25f32, -1.5, 2.0]).set_requires_grad(true);
    let config = AdamConfig {
        lr: 0.05,
        beta1: 0.8,
        beta2: 0.9,
        eps: 1e-6,
        weight_decay: 0.1,
        decoupled_weight_decay: false,
        grad_clip_norm: Some(2.0),
    };
    let mut opt = Adam::new(vec![a.shallow_clone(), b.shallow_clone()], config.clone()).unwrap();
    assert_eq!(opt.parameters().groups().len(), 2, "one buffer per dtype");
    let mut w = vec![1.0f64, -2.0, 0.5, 3.0, 0.25, -1.5, 2.0];
    let (mut m, mut v) = (vec![0.0f64; 7], vec![0.0f64; 7]);
    for t in 1..=6 {
        // loss = Σ a³/3 + Σ b²: gradients a² and 2b, well above the clipping norm.
        let loss = a.pow_tensor_scalar(3).sum(Kind::Double) / 3.0
            + b.square().sum(Kind::Float).to_kind(Kind::Double);
        let norm = opt.backward_step(&loss, config.lr).unwrap().unwrap();
        let mut g: Vec<f64> = (0..7)
            .map(|i| if i < 4 { w[i] * w[i] } else { 2.0 * w[i] })
            .collect();
        let expected_norm = g.iter().map(|x| x * x).sum::<f64>().sqrt();
        let got_norm = norm.double_value(&[]);
        assert!(
            (got_norm - expected_norm).abs() < 1e-5 * expected_norm,
            "step {t}: norm {got_norm} vs {expected_norm}"
        );
        let scale = (2.0 / (expected_norm + 1e-6)).min(1.0);
        for i in 0..7 {
            g[i] = g[i] * scale + config.weight_decay * w[i];
            m[i] = config.beta1 * m[i] + (1.0 - config.beta1) * g[i];
            v[i] = config.beta2 * v[i] + (1.0 - config.beta2) * g[i] * g[i];
            let mh = m[i] / (1.0 - config.beta1.powi(t));
            let vh = v[i] / (1.0 - config.beta2.powi(t));
            w[i] -= config.lr * mh / (vh.sqrt() + config.eps);
        }
    }
    let got_a = Vec::<f64>::try_from(&a.detach().flatten(0, -1)).unwrap();
    let got_b = Vec::<f64>::try_from(&b.detach().to_kind(Kind::Double)).unwrap();
    // The norm is computed in single precision, so the clipping factor is exact to ~1e-7.
    for i in 0..4 {
        assert!((got_a[i] - w[i]).abs() < 1e-8, "{got_a:?} vs {w:?}");
    }
    for i in 0..3 {
        assert!((got_b[i] - w[4 + i]).abs() < 1e-5, "{got_b:?} vs {w:?}");
    }
}

/// The parameters a module holds move into the optimizer's buffer and stay the module's: the
/// module computes with the buffer's values, the optimizer's updates reach it, gradients land
/// in the gradient buffer, and names, shapes and the state layout are unchanged.
#[test]
fn parameters_live_in_the_optimizer_buffer() {
    let vs = nn::VarStore::new(Device::Cpu);
    tch::manual_seed(3);
    let layer = nn::linear(vs.root() / "layer", 3, 2, Default::default());
    let x = Tensor::randn([5, 3], (Kind::Float, Device::Cpu));
    let before = x.apply(&layer);
    let names_before: Vec<(String, Vec<i64>)> = {
        let mut v: Vec<_> = vs
            .variables()
            .into_iter()
            .map(|(n, t)| (n, t.size()))
            .collect();
        v.sort();
        v
    };
    let mut opt = Adam::new(vs.trainable_variables(), AdamConfig::default()).unwrap();
    let flat = opt.parameters();
    assert_eq!(flat.groups().len(), 1);
    let group = &flat.groups()[0];
    assert_eq!(group.params.numel(), 3 * 2 + 2);
    let span = gm_core::train::flat::contiguous_span(&vs.trainable_variables())
        .expect("the weights tile one buffer");
    assert_eq!(span.0.data_ptr(), group.params.data_ptr());
    // Same values, same outputs; names and shapes unchanged.
    assert_eq!(x.apply(&layer), before);
    let mut names_after: Vec<_> = vs
        .variables()
        .into_iter()
        .map(|(n, t)| (n, t.size()))
        .collect();
    names_after.sort();
    assert_eq!(names_after, names_before);
    // Backward writes into the gradient buffer; a step moves what the module computes with.
    let loss = x.apply(&layer).square().sum(Kind::Float);
    opt.backward_step(&loss, 0.1).unwrap();
    flat_is_bound(&opt);
    let grads = opt.parameters().groups()[0].grads.shallow_clone();
    assert!(grads.abs().sum(Kind::Float).double_value(&[]) > 0.0);
    let params = vs.trainable_variables();
    let weight = params
        .iter()
        .position(|p| p.data_ptr() == layer.ws.data_ptr())
        .expect("the layer's weight is trainable");
    let group = &opt.parameters().groups()[0];
    let k = group.members.iter().position(|m| m.0 == weight).unwrap();
    assert_eq!(
        group.member_view(&grads, k, &[2, 3]).unwrap(),
        layer.ws.grad(),
        "the weight's gradient is its stretch of the buffer"
    );
    let after = x.apply(&layer);
    assert!((after - before).abs().max().double_value(&[]) > 1e-3);
    // The state keeps one pair of moments per parameter, shaped like it.
    let state = opt.state("adam.");
    let shapes: Vec<Vec<i64>> = state.iter().map(|(_, t)| t.size()).collect();
    assert_eq!(state.len(), 2 * params.len() + 1);
    for (i, p) in params.iter().enumerate() {
        assert_eq!(shapes[2 * i], p.size());
        assert_eq!(shapes[2 * i + 1], p.size());
    }
}

/// `backward_step` gives gradients to its own parameters only: another network's weights in
/// the same graph (a discriminator in a generator step) keep the `.grad` they had, the own
/// gradients are exactly autograd's (not added to the previous step's), and a parameter the
/// loss does not reach gets zero, not a stale gradient. Both ways of writing the buffer: one
/// concatenation (small) and a copy per parameter on several threads (large).
#[test]
fn backward_step_fills_only_its_own_gradients() {
    let threads = tch::get_num_threads();
    tch::set_num_threads(2);
    for size in [2i64, 1 << 17] {
        let own =
            Tensor::linspace(-2.0, 1.0, size, (Kind::Double, Device::Cpu)).set_requires_grad(true);
        let unreached = Tensor::from_slice(&[5.0f64]).set_requires_grad(true);
        let other = Tensor::from_slice(&[3.0f64]).set_requires_grad(true);
        let config = AdamConfig {
            lr: 0.1,
            ..AdamConfig::default()
        };
        let mut opt =
            Adam::new(vec![own.shallow_clone(), unreached.shallow_clone()], config).unwrap();
        // The other network's gradient holds a marker that must survive the steps.
        let marker = Tensor::from_slice(&[7.0f64]);
        (&other * &marker).sum(Kind::Double).backward();
        // A first step with `unreached` in the graph, so that its gradient is not zero...
        let loss = (&own * &other).sum(Kind::Double) + unreached.square().sum(Kind::Double);
        opt.backward_step(&loss, 0.1).unwrap();
        assert_eq!(
            other.grad(),
            marker,
            "size {size}: the other leaf's gradient is kept"
        );
        assert_eq!(
            unreached.grad(),
            Tensor::from_slice(&[10.0f64]),
            "size {size}"
        );
        assert_eq!(
            own.grad(),
            Tensor::full([size], 3.0, (Kind::Double, Device::Cpu))
        );
        // ...then one without it: its gradient is zero, and the own one is this step's alone.
        let w = own.detach().copy();
        let loss = (own.square() * &other).sum(Kind::Double);
        opt.backward_step(&loss, 0.1).unwrap();
        assert_eq!(
            unreached.grad(),
            Tensor::from_slice(&[0.0f64]),
            "size {size}"
        );
        assert_eq!(own.grad(), w * 6.0, "size {size}");
        assert_eq!(other.grad(), marker, "size {size}");
    }
    tch::set_num_threads(threads);
}

/// A loss of several elements, or one that does not depend on trainable tensors, is refused
/// with an error (not summed, not a crash) and the weights stay as they were.
#[test]
fn backward_step_refuses_losses_it_cannot_differentiate() {
    let p = Tensor::from_slice(&[1.0f64, 2.0]).set_requires_grad(true);
    let mut opt = Adam::new(vec![p.shallow_clone()], AdamConfig::default()).unwrap();
    let before = p.detach().copy();
    let several = p.square();
    let constant = Tensor::from_slice(&[1.0f64]).sum(Kind::Double);
    let detached = p.detach().sum(Kind::Double);
    for loss in [several, constant, detached] {
        let e = opt.backward_step(&loss, 0.1).unwrap_err().to_string();
        assert!(e.contains("single-element loss"), "{e}");
    }
    assert_eq!(p.detach(), before);
    assert_eq!(opt.steps(), 0);
}

/// The fused update splits large buffers across libtorch's threads; each element's update is
/// on its own, so one thread and two give the same bits (float32 and float64, with clipping).
#[test]
fn fused_adam_on_several_threads_gives_the_same_bits() {
    let threads = tch::get_num_threads();
    let n = (1i64 << 16) + 3;
    for kind in [Kind::Float, Kind::Double] {
        let run = |t: i32| {
            tch::set_num_threads(t);
            let start = Tensor::linspace(-3.0, 3.0, n, (kind, Device::Cpu));
            let p = start.sin().set_requires_grad(true);
            let target = start.cos();
            let config = AdamConfig {
                lr: 0.01,
                weight_decay: 0.1,
                grad_clip_norm: Some(1.0),
                ..AdamConfig::default()
            };
            let mut opt = Adam::new(vec![p.shallow_clone()], config).unwrap();
            for _ in 0..3 {
                let loss = (&p - &target).pow_tensor_scalar(3).sum(kind);
                opt.backward_step(&loss, 0.01).unwrap();
            }
            p.detach().copy()
        };
        let (one, two) = (run(1), run(2));
        assert_eq!(one, two, "{kind:?}");
        // Three steps of about lr each moved the weights.
        let start = Tensor::linspace(-3.0, 3.0, n, (kind, Device::Cpu)).sin();
        let moved = (&one - start).abs().mean(Kind::Double).double_value(&[]);
        assert!((0.02..0.04).contains(&moved), "{kind:?}: moved {moved}");
    }
    tch::set_num_threads(threads);
}

/// Without clipping, `backward_step` updates from the gradients where autograd left them and
/// writes them into the gradient buffer in the same pass. It must give what the update from
/// the buffer gives after `backward()` accumulated into it: the same weights and moments, and
/// the same gradients left in the buffer, for a large float32 matrix (split across threads),
/// a convolution weight whose gradient comes channels-last, a parameter the loss does not
/// reach (zero gradient) and a float64 group beside the float32 one.
#[test]
fn update_from_autograd_gradients_matches_update_from_the_buffer() {
    let threads = tch::get_num_threads();
    let make = || {
        let float = (Kind::Float, Device::Cpu);
        vec![
            Tensor::linspace(-1.0, 1.0, 70_000, float)
                .view([350, 200])
                .set_requires_grad(true),
            Tensor::linspace(-0.5, 0.7, 288, float)
                .view([8, 4, 3, 3])
                .set_requires_grad(true),
            Tensor::ones([5], float).set_requires_grad(true),
            Tensor::linspace(-2.0, 3.0, 1001, (Kind::Double, Device::Cpu)).set_requires_grad(true),
        ]
    };
    let loss_of = |p: &[Tensor]| {
        let x = gm_core::nn::channels_last(
            &Tensor::linspace(-1.0, 1.0, 288, (Kind::Float, Device::Cpu)).view([2, 4, 6, 6]),
        )
        .unwrap();
        let conv = x.conv2d(&p[1], None::<Tensor>, [1, 1], [1, 1], [1, 1], 1);
        (p[0].sin().sum(Kind::Float) + conv.square().sum(Kind::Float)).to_kind(Kind::Double)
            + p[3].cos().sum(Kind::Double)
    };
    let config = AdamConfig {
        lr: 0.01,
        weight_decay: 0.1,
        ..AdamConfig::default()
    };
    for t in [1, 2] {
        tch::set_num_threads(t);
        let (gathered, accumulated) = (make(), make());
        let shallow = |p: &[Tensor]| p.iter().map(|t| t.shallow_clone()).collect::<Vec<_>>();
        let mut a = Adam::new(shallow(&gathered), config.clone()).unwrap();
        let mut b = Adam::new(shallow(&accumulated), config.clone()).unwrap();
        for step in 0..3 {
            a.backward_step(&loss_of(&gathered), 0.01).unwrap();
            b.zero_grad().unwrap();
            loss_of(&accumulated).backward();
            b.step(0.01).unwrap();
            flat_is_bound(&a);
            for (i, (p, q)) in gathered.iter().zip(&accumulated).enumerate() {
                assert_eq!(
                    p.detach(),
                    q.detach(),
                    "{t} threads, step {step}: weight {i}"
                );
                assert_eq!(p.grad(), q.grad(), "{t} threads, step {step}: gradient {i}");
            }
            assert_eq!(
                a.state(""),
                b.state(""),
                "{t} threads, step {step}: moments"
            );
        }
        // Every weight the loss reaches moved, and the unreached one's gradient is zero.
        assert!(gathered[2].grad().eq(0.0).all().int64_value(&[]) != 0);
        let first = make();
        for i in [0, 1, 3] {
            let moved = (gathered[i].detach() - &first[i])
                .abs()
                .max()
                .double_value(&[]);
            assert!(moved > 1e-3, "{t} threads: weight {i} moved by {moved}");
        }
    }
    tch::set_num_threads(threads);
}

fn flat_is_bound(opt: &Adam) {
    opt.parameters()
        .check_bound(true)
        .expect("parameters stay in the buffer");
}

/// An average built before the optimizer (whose buffer then moves the weights), one built
/// after it (which averages the buffer in one operation) and one built over one optimizer's
/// buffer before a second optimizer moves the weights again all follow the formula by name.
#[test]
fn ema_follows_the_weights_into_the_optimizer_buffer() {
    for (ema_first, rebuilt) in [(true, false), (false, false), (false, true)] {
        let vs = nn::VarStore::new(Device::Cpu);
        let p = vs
            .root()
            .var_copy("weight", &Tensor::from_slice(&[1.0f32, 3.0]));
        let q = vs.root().var_copy("bias", &Tensor::from_slice(&[2.0f32]));
        let config = EmaConfig {
            decay: 0.5,
            start_step: 1,
        };
        let (mut ema, mut opt) = if ema_first {
            let ema = config.init(&vs).unwrap();
            (
                ema,
                Adam::new(vs.trainable_variables(), AdamConfig::default()).unwrap(),
            )
        } else {
            let opt = Adam::new(vs.trainable_variables(), AdamConfig::default()).unwrap();
            let ema = config.init(&vs).unwrap();
            if rebuilt {
                // A second optimizer gathers the weights into its own buffer.
                (
                    ema,
                    Adam::new(vs.trainable_variables(), AdamConfig::default()).unwrap(),
                )
            } else {
                (ema, opt)
            }
        };
        let mut expected = [1.0f64, 3.0, 2.0];
        for step in 1..=4u64 {
            let loss = (p.square().sum(Kind::Float) + q.sum(Kind::Float)) * 1.0;
            opt.backward_step(&loss, 0.1).unwrap();
            ema.update(step).unwrap();
            let live: Vec<f64> = [
                p.double_value(&[0]),
                p.double_value(&[1]),
                q.double_value(&[0]),
            ]
            .to_vec();
            for i in 0..3 {
                expected[i] = if step <= 1 {
                    live[i]
                } else {
                    0.5 * expected[i] + 0.5 * live[i]
                };
            }
            let w = Vec::<f32>::try_from(ema.averaged("weight").unwrap()).unwrap();
            let b = Vec::<f32>::try_from(ema.averaged("bias").unwrap()).unwrap();
            let got = [w[0] as f64, w[1] as f64, b[0] as f64];
            for i in 0..3 {
                assert!(
                    (got[i] - expected[i]).abs() < 1e-6,
                    "ema_first {ema_first} rebuilt {rebuilt} step {step}: {got:?} vs {expected:?}"
                );
            }
        }
        // Swapping the average in and out restores the live weights exactly.
        let live = p.copy();
        let seen = ema.with_averaged(|| Ok(p.copy())).unwrap();
        assert!((seen.double_value(&[0]) - expected[0]).abs() < 1e-6);
        assert_eq!(p, live);
    }
}

#[test]
fn clipping_scales_to_max_norm() {
    let a = Tensor::from_slice(&[3.0f64]).set_requires_grad(true);
    let b = Tensor::from_slice(&[4.0f64]).set_requires_grad(true);
    (&a * &a / 2.0 + &b * &b / 2.0).sum(Kind::Double).backward(); // gradients (3, 4), norm 5
    let norm = clip_grad_norm(&[a.shallow_clone(), b.shallow_clone()], 1.0).unwrap();
    assert!((norm.double_value(&[]) - 5.0).abs() < 1e-6);
    let clipped = (a.grad().square() + b.grad().square())
        .sqrt()
        .double_value(&[0]);
    assert!((clipped - 1.0).abs() < 1e-5, "clipped norm {clipped}");
    assert!(
        (a.grad().double_value(&[0]) / b.grad().double_value(&[0]) - 0.75).abs() < 1e-9,
        "direction kept"
    );
}

#[test]
fn ema_follows_its_formula_by_name() {
    let vs = nn::VarStore::new(Device::Cpu);
    let mut p = vs
        .root()
        .var_copy("weight", &Tensor::from_slice(&[0.0f32, 10.0]));
    let mut q = vs.root().var_copy("bias", &Tensor::from_slice(&[4.0f32]));
    let config = EmaConfig {
        decay: 0.5,
        start_step: 1,
    };
    let mut ema = config.init(&vs).unwrap();
    assert_eq!(ema.names(), ["bias", "weight"]);
    tch::no_grad(|| {
        let _ = p.fill_(2.0);
        let _ = q.fill_(0.0);
    });
    // Step 1 is not after start_step = 1: the average follows the weights.
    ema.update(1).unwrap();
    assert_eq!(
        Vec::<f32>::try_from(ema.averaged("weight").unwrap()).unwrap(),
        vec![2.0, 2.0]
    );
    tch::no_grad(|| {
        let _ = p.fill_(4.0);
        let _ = q.fill_(2.0);
    });
    ema.update(2).unwrap();
    // 0.5 · 2 + 0.5 · 4 = 3; 0.5 · 0 + 0.5 · 2 = 1.
    assert_eq!(
        Vec::<f32>::try_from(ema.averaged("weight").unwrap()).unwrap(),
        vec![3.0, 3.0]
    );
    // Swapped in through &self for the closure only, also when it fails.
    let seen = ema
        .with_averaged(|| Ok(Vec::<f32>::try_from(&p).unwrap()))
        .unwrap();
    assert_eq!(seen, vec![3.0, 3.0]);
    assert_eq!(Vec::<f32>::try_from(&p).unwrap(), vec![4.0, 4.0]);
    let failed: Result<()> = ema.with_averaged(|| Err(GmError::Unsupported("x".into())));
    assert!(failed.is_err());
    assert_eq!(Vec::<f32>::try_from(&p).unwrap(), vec![4.0, 4.0]);
    // Saved and loaded by name.
    let state = ema.state("ema.");
    let names: Vec<&str> = state.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["ema.bias", "ema.weight"]);
    let mut fresh = config.init(&vs).unwrap();
    fresh
        .load_state("ema.", &mut StateDict::from_tensors(state))
        .unwrap();
    assert_eq!(
        Vec::<f32>::try_from(fresh.averaged("bias").unwrap()).unwrap(),
        vec![1.0]
    );
    // The start step and the averaging horizon 1/(1 − decay) scale with the budget; an
    // unchanged budget keeps the decay bit for bit; decays of 1 or more are refused.
    let budget = gm_core::spec::Budget::new(100, 1000).unwrap();
    assert_eq!(config.scaled(&budget).start_step, 10);
    let long = EmaConfig {
        decay: 0.999,
        start_step: 500,
    };
    let tenth = long.scaled(&gm_core::spec::Budget::new(5000, 500).unwrap());
    assert_eq!(tenth.start_step, 50);
    assert!(
        (1.0 / (1.0 - tenth.decay) - 100.0).abs() < 1e-6,
        "{}",
        tenth.decay
    );
    let double = long.scaled(&gm_core::spec::Budget::new(5000, 10_000).unwrap());
    assert!(
        (1.0 / (1.0 - double.decay) - 2000.0).abs() < 1e-6,
        "{}",
        double.decay
    );
    assert_eq!(
        long.scaled(&gm_core::spec::Budget::new(5000, 5000).unwrap()),
        long
    );
    // A horizon shorter than one step copies the weights (decay 0).
    let tiny = long.scaled(&gm_core::spec::Budget::new(1_000_000, 10).unwrap());
    assert_eq!(tiny.decay, 0.0);
    assert!(EmaConfig {
        decay: 1.0,
        start_step: 0
    }
    .init(&vs)
    .is_err());
}

#[test]
fn configs_reject_unknown_keys_and_bad_values() {
    let ok = AdamConfig::from_toml_str("lr = 0.01\ngrad_clip_norm = 1.0").unwrap();
    assert_eq!(ok.lr, 0.01);
    let err = AdamConfig::from_toml_str("lr = 0.01\nlearning_rate = 3")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("learning_rate"),
        "the unknown key is named: {err}"
    );
    let err = AdamConfig::from_toml_str("beta1 = 1.5")
        .unwrap_err()
        .to_string();
    assert!(err.contains("beta1"), "{err}");
    let err = TrainConfig::from_toml_str("batch_size = 0")
        .unwrap_err()
        .to_string();
    assert!(err.contains("batch_size"), "{err}");
    let err = LrSchedule::from_toml_str(
        "kind = \"warmup_cosine\"\nwarmup_steps = 5\ntotal_steps = 100\nmin_ratio = 2.0",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("min_ratio"), "{err}");
    let round =
        TrainConfig::from_toml_str(&TrainConfig::default().to_toml_string().unwrap()).unwrap();
    assert_eq!(round, TrainConfig::default());
}

#[test]
fn non_finite_loss_is_an_error() {
    let out = StepOutput::new().with("loss", &Tensor::from_slice(&[f64::NAN]).reshape([]));
    assert!(matches!(
        out.to_host(3),
        Err(GmError::NonFinite { step: 3, .. })
    ));
}

#[test]
fn trainer_rejects_too_little_data() {
    let mut m = GaussianModel::new(2);
    let x = Tensor::zeros([4, 2], (Kind::Float, Device::Cpu));
    let t = Trainer::new(TrainConfig {
        batch_size: 8,
        ..Default::default()
    })
    .unwrap();
    assert!(t.fit(&mut m, &x, None, |_, _| {}).is_err());
}

/// A model whose weights turn NaN after its `at`-th update, as a diverging run's would.
struct Diverging {
    inner: GaussianModel,
    at: i64,
}

impl GenerativeModel for Diverging {
    fn family(&self) -> &'static str {
        "gaussian"
    }
    fn train_step(&mut self, batch: &Batch) -> Result<StepOutput> {
        let out = self.inner.train_step(batch)?;
        if self.inner.opt.steps() == self.at {
            tch::no_grad(|| {
                let _ = self.inner.loc.shallow_clone().fill_(f64::NAN);
            });
        }
        Ok(out)
    }
    fn sample_with(&self, n: i64, options: &SampleOptions) -> Result<Tensor> {
        self.inner.sample_with(n, options)
    }
    fn likelihood_kind(&self) -> LikelihoodKind {
        LikelihoodKind::Exact
    }
    fn log_likelihood(&self, x: &Tensor) -> Result<Option<Tensor>> {
        self.inner.log_likelihood(x)
    }
    fn num_parameters(&self) -> i64 {
        self.inner.num_parameters()
    }
    fn state(&self) -> Vec<(String, Tensor)> {
        self.inner.state()
    }
    fn load_state(&mut self, state: &mut StateDict) -> Result<()> {
        self.inner.load_state(state)
    }
}

/// A divergence between checks stops training with an error that names the steps and the last
/// good checkpoint, and that checkpoint is never overwritten with non-finite weights.
#[test]
fn divergence_stops_training_and_keeps_the_last_good_checkpoint() {
    tch::manual_seed(0);
    let x = Tensor::randn([64, 3], (Kind::Float, Device::Cpu));
    let dir = std::env::temp_dir().join(format!("gm-diverge-{}", std::process::id()));
    let path = dir.join("ckpt.safetensors");
    let _ = std::fs::remove_dir_all(&dir);
    let trainer = Trainer::new(TrainConfig {
        steps: 20,
        batch_size: 16,
        seed: 1,
        log_every: 5,
        checkpoint_every: 4,
    })
    .unwrap()
    .with_checkpoint(&path);
    let mut model = Diverging {
        inner: GaussianModel::new(3),
        at: 6,
    };
    let err = trainer.fit(&mut model, &x, None, |_, _| {}).unwrap_err();
    match &err {
        GmError::Diverged {
            from_step,
            to_step,
            last_checkpoint,
            what,
        } => {
            // Checked at step 5 (a log point); the NaN came at step 6; the checkpoint at 8 is
            // where it was caught, before anything was written.
            assert_eq!((*from_step, *to_step), (6, 8), "{err}");
            assert!(last_checkpoint.contains("step 4"), "{err}");
            assert!(what.contains("weights"), "{err}");
        }
        other => panic!("expected a divergence error, got {other}"),
    }
    let (state, meta) = load_tensors(&path).unwrap();
    assert_eq!(meta["history"]["steps_done"], 4);
    drop(state);
    // A stale temporary file from a crashed save is removed when training resumes.
    let stale = gm_core::train::checkpoint::tmp_path(&path);
    std::fs::write(&stale, b"half a checkpoint").unwrap();
    // The checkpoint still resumes into a healthy model.
    let mut healthy = GaussianModel::new(3);
    let resumed = Trainer::new(TrainConfig {
        steps: 6,
        batch_size: 16,
        seed: 1,
        log_every: 5,
        checkpoint_every: 4,
    })
    .unwrap()
    .with_checkpoint(&path)
    .fit(&mut healthy, &x, None, |_, _| {})
    .unwrap();
    assert_eq!(resumed.steps_done, 6);
    assert!(!stale.exists(), "the stale temporary file is gone");
    // A divergence in the very last update is caught too, and nothing is written.
    let mut late = Diverging {
        inner: GaussianModel::new(3),
        at: 3,
    };
    let no_ckpt = Trainer::new(TrainConfig {
        steps: 3,
        batch_size: 16,
        seed: 1,
        log_every: 100,
        checkpoint_every: 0,
    })
    .unwrap();
    let err = no_ckpt.fit(&mut late, &x, None, |_, _| {}).unwrap_err();
    assert!(
        matches!(
            err,
            GmError::Diverged {
                from_step: 1,
                to_step: 3,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("none was written"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A checkpoint whose Adam step count is negative, or whose second moments are negative, is
/// refused, and the model keeps the state it had (the load is all or nothing).
#[test]
fn impossible_optimizer_state_is_refused_whole() {
    tch::manual_seed(3);
    let mut a = GaussianModel::new(2);
    let x = Tensor::randn([16, 2], (Kind::Float, Device::Cpu));
    a.train_step(&Batch::new(x.shallow_clone())).unwrap();
    let dir = std::env::temp_dir().join(format!("gm-adam-bad-{}", std::process::id()));
    for (what, edit) in [
        ("negative step count", 0usize),
        ("negative second moment", 1usize),
    ] {
        let state: Vec<(String, Tensor)> = a
            .state()
            .into_iter()
            .map(|(n, t)| {
                let mut t = t.detach().copy();
                match edit {
                    0 if n == "adam.steps" => (n, Tensor::from_slice(&[-3i64])),
                    1 if n.starts_with("adam.exp_avg_sq.") => (n, t.fill_(-1.0)),
                    _ => (n, t),
                }
            })
            .collect();
        let path = dir.join(format!("{edit}.safetensors"));
        save_tensors(&path, &state, &serde_json::json!({ "family": "gaussian" })).unwrap();
        let mut b = GaussianModel::new(2);
        let before: Vec<Tensor> = b.state().iter().map(|(_, t)| t.detach().copy()).collect();
        let err = b.load(&path).unwrap_err().to_string();
        assert!(err.contains("cannot be negative"), "{what}: {err}");
        for ((name, now), then) in b.state().iter().zip(&before) {
            assert!(now.equal(then), "{what}: {name} changed by a refused load");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
