//! Bad input at gm-flow's public boundaries: errors that say what was found, never a panic,
//! never a silent NaN training, and the model's state unchanged by a refused call.

mod common;

use gm_core::model::{Batch, GenerativeModel, SampleOptions};
use gm_core::spec::{ModelSpec, Registry};
use gm_core::tch::{nn, Device, Kind, Tensor};
use gm_core::testing::{assert_states_identical, error_text, state_snapshot};
use gm_core::train::Config;
use gm_flow::vector::ActNorm;
use gm_flow::{build_flow, register, Architecture, DataSpace, FlowConfig, FlowLayer, FlowModel};

fn small_glow() -> FlowConfig {
    FlowConfig {
        architecture: Architecture::MultiScale {
            levels: 2,
            steps: 1,
            hidden_channels: 8,
            logit_alpha: 0.05,
        },
        data: DataSpace::Discrete { levels: 2 },
        ..Default::default()
    }
}

/// One NaN row must not reach the optimizer: refused, and every weight and Adam's step count
/// unchanged.
#[test]
fn a_nan_row_is_refused_and_nothing_changes() {
    gm_core::tch::manual_seed(0);
    let mut model = FlowModel::new(&FlowConfig::default(), &[2], Device::Cpu).unwrap();
    let x = Tensor::randn([16, 2], (Kind::Float, Device::Cpu));
    model.train_step(&Batch::new(x.shallow_clone())).unwrap();
    let before = state_snapshot(&model);
    let bad = x.copy();
    let _ = bad.get(3).fill_(f64::NAN);
    let err = error_text(model.train_step(&Batch::new(bad.shallow_clone())));
    assert!(err.contains("found 2 NaN or infinite value"), "{err}");
    assert_states_identical(&before, &state_snapshot(&model), "after a NaN batch");
    assert!(error_text(model.log_likelihood(&bad)).contains("NaN"));
    assert!(error_text(model.encode(&bad)).contains("NaN"));
    let empty = Tensor::zeros([0, 2], (Kind::Float, Device::Cpu));
    assert!(error_text(model.train_step(&Batch::new(empty))).contains("non-empty"));
    assert_states_identical(&before, &state_snapshot(&model), "after an empty batch");
}

/// A Glow for 2-level data given a 255, or a half, is refused instead of training on NaN.
#[test]
fn values_outside_the_data_space_are_refused() {
    gm_core::tch::manual_seed(1);
    let mut glow = FlowModel::new(&small_glow(), &[1, 8, 8], Device::Cpu).unwrap();
    let before = state_snapshot(&glow);
    for (v, needle) in [(255.0, "outside"), (0.5, "outside"), (-1.0, "[0, 1]")] {
        let x = Tensor::zeros([4, 1, 8, 8], (Kind::Float, Device::Cpu));
        let _ = x.get(0).get(0).get(0).get(0).fill_(v);
        let err = error_text(glow.train_step(&Batch::new(x.shallow_clone())));
        assert!(err.contains(needle), "{v}: {err}");
        assert!(error_text(glow.log_likelihood(&x)).contains(needle));
    }
    assert_states_identical(&before, &state_snapshot(&glow), "after refused batches");
    // Flat image batches are not the contract: the event shape is [1, 8, 8].
    let flat = Tensor::zeros([4, 64], (Kind::Float, Device::Cpu));
    assert!(error_text(glow.log_likelihood(&flat)).contains("[batch, 1, 8, 8]"));
}

/// Doubles and integers go in without a panic; booleans are refused.
#[test]
fn other_dtypes_are_converted_or_refused() {
    gm_core::tch::manual_seed(2);
    let vs = nn::VarStore::new(Device::Cpu);
    let flow = build_flow(&FlowConfig::default(), &vs.root(), &[2]).unwrap();
    let x = Tensor::randn([5, 2], (Kind::Float, Device::Cpu));
    let reference = flow.log_prob(&x, None).unwrap();
    let doubles = flow.log_prob(&x.to_kind(Kind::Double), None).unwrap();
    assert!(doubles.allclose(&reference, 1e-5, 1e-5, false));
    assert!(flow.log_prob(&x.to_kind(Kind::Int64), None).is_ok());
    assert!(flow.inverse(&x.to_kind(Kind::Double), None).is_ok());
    assert!(flow.inverse(&x.to_kind(Kind::Int64), None).is_ok());
    assert!(error_text(flow.log_prob(&x.to_kind(Kind::Bool), None)).contains("real values"));
    let glow = FlowModel::new(&small_glow(), &[1, 8, 8], Device::Cpu).unwrap();
    let ints = Tensor::randint(2, [3, 1, 8, 8], (Kind::Int64, Device::Cpu));
    assert!(glow.log_likelihood(&ints).is_ok());
    let model = FlowModel::new(&FlowConfig::default(), &[2], Device::Cpu).unwrap();
    assert!(model.log_likelihood(&x.to_kind(Kind::Double)).is_ok());
}

/// A float64 flow samples and scores in float64, including coupling and Glow layers.
#[test]
fn float64_flows_sample_and_score_in_float64() {
    gm_core::tch::manual_seed(3);
    for (config, shape) in [
        (FlowConfig::default(), vec![2i64]),
        (small_glow(), vec![1, 8, 8]),
    ] {
        let mut vs = nn::VarStore::new(Device::Cpu);
        vs.set_kind(Kind::Double);
        let flow = build_flow(&config, &vs.root(), &shape).unwrap();
        let s = flow.sample(4, None, 1.0).unwrap();
        assert_eq!(s.kind(), Kind::Double);
        let lp = flow.log_prob(&s, None).unwrap();
        assert_eq!(lp.kind(), Kind::Double);
        // The base density is exact in float64: for z = f(x), ln N(z) + log-det.
        let (z, ld) = flow.transform_to_noise(&s, None).unwrap();
        let d = z.size()[1] as f64;
        let expected = z.square().sum_dim_intlist(1, false, Kind::Double) * -0.5
            - 0.5 * d * (2.0 * std::f64::consts::PI).ln()
            + ld;
        assert!(lp.allclose(&expected, 1e-12, 1e-12, false));
    }
}

/// ActNorm refuses to initialise from an empty or non-finite batch instead of staying NaN.
#[test]
fn actnorm_refuses_bad_initialisation_batches() {
    let vs = nn::VarStore::new(Device::Cpu);
    let layer = ActNorm::new(&(vs.root() / "an"), 2).unwrap();
    let empty = Tensor::zeros([0, 2], (Kind::Float, Device::Cpu));
    assert!(error_text(layer.forward(&empty, None)).contains("at least 2"));
    let nan = Tensor::from_slice(&[1.0f32, f32::NAN, 0.0, 1.0]).reshape([2, 2]);
    assert!(error_text(layer.forward(&nan, None)).contains("NaN"));
    // Still uninitialised: a good batch initialises it to zero mean.
    let good = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 6.0]).reshape([2, 2]);
    let (y, _) = layer.forward(&good, None).unwrap();
    let mean = y.mean_dim(0, false, Kind::Float);
    assert!(mean.abs().max().double_value(&[]) < 1e-5);
}

/// A conditional flow refuses missing or out-of-range labels; an unconditional one ignores them.
#[test]
fn labels_are_checked_or_ignored() {
    gm_core::tch::manual_seed(4);
    let config = FlowConfig {
        context_classes: 3,
        ..Default::default()
    };
    let mut model = FlowModel::new(&config, &[2], Device::Cpu).unwrap();
    let x = Tensor::randn([4, 2], (Kind::Float, Device::Cpu));
    assert!(error_text(model.train_step(&Batch::new(x.shallow_clone()))).contains("give labels"));
    let bad = Tensor::from_slice(&[0i64, 1, 2, 3]);
    let err =
        error_text(model.train_step(&Batch::with_labels(x.shallow_clone(), bad.shallow_clone())));
    assert!(err.contains("[0, 3)"), "{err}");
    let float_labels = Tensor::from_slice(&[0.0f32, 1.0, 2.0, 1.0]);
    assert!(
        error_text(model.train_step(&Batch::with_labels(x.shallow_clone(), float_labels)))
            .contains("integers")
    );
    let options = SampleOptions::new().labels(bad);
    assert!(error_text(model.sample_with(4, &options)).contains("[0, 3)"));
    let mut plain = FlowModel::new(&FlowConfig::default(), &[2], Device::Cpu).unwrap();
    let labels = Tensor::from_slice(&[7i64, 7, 7, 7]);
    assert!(plain.train_step(&Batch::with_labels(x, labels)).is_ok());
}

/// A MAF's checkpoint does not load into an IAF of the same shapes (the spec fingerprint
/// differs), and a failed load leaves the model as it was.
#[test]
fn checkpoints_of_another_spec_are_refused_whole() {
    let mut registry = Registry::new();
    register(&mut registry);
    let maf = registry.load_run("flow/maf_toy").unwrap().model;
    let mut iaf_config: FlowConfig = registry
        .load_run("flow/maf_toy")
        .unwrap()
        .model_config()
        .unwrap();
    if let Architecture::Autoregressive { inverse, .. } = &mut iaf_config.architecture {
        *inverse = true;
    }
    let info = gm_core::data::named_info("two_moons").unwrap();
    gm_core::tch::manual_seed(5);
    let maf_model = maf.build(&info, Device::Cpu).unwrap();
    let mut iaf_model = ModelSpec::build(&iaf_config, &info, Device::Cpu).unwrap();
    let dir = std::env::temp_dir().join(format!("gm-flow-bad-{}", std::process::id()));
    let path = dir.join("maf.safetensors");
    maf_model.save(&path).unwrap();
    let before = state_snapshot(iaf_model.as_ref());
    let err = error_text(iaf_model.load(&path));
    assert!(err.contains("another configuration"), "{err}");
    assert_states_identical(
        &before,
        &state_snapshot(iaf_model.as_ref()),
        "after a refused load",
    );
    // A checkpoint with a tensor missing fails after other tensors were copied: all restored.
    let glow_a = FlowModel::new(&small_glow(), &[1, 8, 8], Device::Cpu).unwrap();
    let mut state = glow_a.state();
    state.retain(|(n, _)| !n.starts_with("adam."));
    let partial = dir.join("partial.safetensors");
    gm_core::train::checkpoint::save_tensors(
        &partial,
        &state,
        &gm_core::model::checkpoint_meta(&glow_a),
    )
    .unwrap();
    let mut glow_b = FlowModel::new(&small_glow(), &[1, 8, 8], Device::Cpu).unwrap();
    let before = state_snapshot(&glow_b);
    let err = error_text(glow_b.load(&partial));
    assert!(err.contains("missing tensor"), "{err}");
    assert_states_identical(
        &before,
        &state_snapshot(&glow_b),
        "after a half-way failed load",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A batch whose activations would not fit is refused before the forward pass, with the
/// estimate, and nothing changes.
#[test]
fn oversized_batches_are_refused_before_running() {
    gm_core::tch::manual_seed(6);
    let mut model = FlowModel::new(&FlowConfig::default(), &[2], Device::Cpu).unwrap();
    let before = state_snapshot(&model);
    let huge = Tensor::zeros([2_000_000, 2], (Kind::Float, Device::Cpu));
    let err = error_text(model.train_step(&Batch::new(huge.shallow_clone())));
    assert!(
        err.contains("batch_size")
            && err.contains("2144 per example")
            && err.contains("GM_MAX_ACTIVATIONS"),
        "{err}"
    );
    assert_states_identical(&before, &state_snapshot(&model), "after a refused batch");
    assert!(error_text(model.log_likelihood(&huge)).contains("activation values"));
}

/// A Glow too large to allocate is refused before allocation.
#[test]
fn oversized_glow_is_refused() {
    let mut config = small_glow();
    config.architecture = Architecture::MultiScale {
        levels: 2,
        steps: 4,
        hidden_channels: 1_000_000,
        logit_alpha: 0.05,
    };
    let err = error_text(FlowModel::new(&config, &[1, 8, 8], Device::Cpu));
    assert!(err.contains("the multi-scale flow would need"), "{err}");
}

/// Non-finite or absurd values in a flow config are refused with the key's name.
#[test]
fn bad_flow_configs_name_the_key() {
    for (text, key) in [
        (
            "[architecture]\nkind = \"coupling\"\nlayers = 2\nhidden = [8]\nactnorm = false\ntransform = { kind = \"affine\", scale_bound = inf }",
            "architecture.transform.scale_bound",
        ),
        (
            "[architecture]\nkind = \"coupling\"\nlayers = 2\nhidden = [8]\nactnorm = false\ntransform = { kind = \"spline\", bins = 8, tail_bound = nan }",
            "architecture.transform.tail_bound",
        ),
        ("[optimizer]\nlr = inf", "optimizer.lr"),
        (
            "[architecture]\nkind = \"coupling\"\nlayers = 2\nhidden = [8]\nactnorm = false\ntransform = { kind = \"additive\", scale_bound = 2.0 }",
            "architecture.transform.scale_bound",
        ),
        ("[data]\nkind = \"continuous\"\nlevels = 2", "data.levels"),
        ("[optimizer]\neps = inf", "optimizer.eps"),
        ("[ema]\ndecay = 1.0", "ema.decay"),
        ("[architecture]\nkind = \"coupling\"\nlayers = 2\nhidden = [1000000000, 1000000000]\nactnorm = false\ntransform = { kind = \"additive\" }", "parameters"),
    ] {
        let result = FlowConfig::from_toml_str(text)
            .and_then(|c| FlowModel::new(&c, &[2], Device::Cpu).map(|_| ()));
        let err = error_text(result);
        assert!(err.contains(key), "{text}: {err}");
    }
}

/// `decode` refuses latents of the wrong shape, dtype (booleans) or values with an error, and
/// a conditional flow has no encoder to invert.
#[test]
fn bad_latents_are_refused() {
    let model = FlowModel::new(&FlowConfig::default(), &[2], Device::Cpu).unwrap();
    let ok = Tensor::randn([3, 2], (Kind::Float, Device::Cpu));
    let reference = model.decode(&ok).unwrap().unwrap();
    assert_eq!(reference.size(), [3, 2]);
    // Other real and integer dtypes are converted to the flow's, as data are.
    let from_double = model.decode(&ok.to_kind(Kind::Double)).unwrap().unwrap();
    assert_eq!(from_double.kind(), Kind::Float);
    assert!(from_double.allclose(&reference, 1e-6, 1e-6, false));
    assert!(model.decode(&ok.to_kind(Kind::Int64)).is_ok());
    for (bad, needle) in [
        (
            Tensor::zeros([3, 3], (Kind::Float, Device::Cpu)),
            "expected shape",
        ),
        (
            Tensor::zeros([3], (Kind::Float, Device::Cpu)),
            "expected shape",
        ),
        (
            Tensor::zeros([3, 2, 1], (Kind::Float, Device::Cpu)),
            "expected shape",
        ),
        (
            Tensor::zeros([0, 2], (Kind::Float, Device::Cpu)),
            "non-empty",
        ),
        (
            Tensor::zeros([3, 2], (Kind::Bool, Device::Cpu)),
            "real or integer",
        ),
        (ok.copy().fill_(f64::NAN), "NaN"),
        (ok.copy().fill_(f64::INFINITY), "infinite"),
    ] {
        let err = error_text(model.decode(&bad));
        assert!(err.contains(needle), "{bad:?}: {err}");
    }
    let image = FlowModel::new(&small_glow(), &[1, 4, 4], Device::Cpu).unwrap();
    let err = error_text(image.decode(&Tensor::zeros([2, 1, 4, 4], (Kind::Float, Device::Cpu))));
    assert!(err.contains("[batch, 16]"), "{err}");
    let conditional = FlowModel::new(
        &FlowConfig {
            context_classes: 2,
            ..FlowConfig::default()
        },
        &[2],
        Device::Cpu,
    )
    .unwrap();
    assert!(conditional.decode(&ok).unwrap().is_none());
}
