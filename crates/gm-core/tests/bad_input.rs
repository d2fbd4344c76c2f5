//! Bad input at gm-core's public boundaries: each case is an error of the right kind whose
//! message says what was found and what was expected, never a panic, and state is unchanged
//! where the call could have changed it.

use gm_core::data::ValueKind;
use gm_core::distributions::Categorical;
use gm_core::kl::kl_divergence;
use gm_core::model::{check_data, check_labels, SampleOptions};
use gm_core::nn::{Activation, MlpConfig};
use gm_core::spec::{Budget, Registry};
use gm_core::testing::error_text;
use gm_core::train::checkpoint::{load_tensors, save_tensors, META_KEY};
use gm_core::train::{AdamConfig, Config, EmaConfig, TrainConfig};
use tch::{nn, Device, Kind, Tensor};

fn f32s(v: &[f32], shape: &[i64]) -> Tensor {
    Tensor::from_slice(v).reshape(shape)
}

#[test]
fn data_checks_name_what_they_found() {
    let event = [2i64];
    let binary = ValueKind::Discrete { levels: 2 };
    let cases: Vec<(Tensor, ValueKind, &str)> = vec![
        (
            f32s(&[0.0, f32::NAN], &[1, 2]),
            ValueKind::Continuous,
            "NaN",
        ),
        (
            f32s(&[0.0, f32::INFINITY], &[1, 2]),
            ValueKind::Continuous,
            "infinite",
        ),
        (
            f32s(&[f32::NEG_INFINITY, 0.0], &[1, 2]),
            ValueKind::Continuous,
            "infinite",
        ),
        (f32s(&[0.0, f32::NAN], &[1, 2]), binary, "NaN"),
        (
            f32s(&[0.0, 2.0], &[1, 2]),
            binary,
            "outside the discrete data space",
        ),
        (f32s(&[-1.0, 0.0], &[1, 2]), binary, "integers in [0, 1]"),
        (f32s(&[0.5, 0.0], &[1, 2]), binary, "outside"),
        (
            f32s(&[255.0, 256.0], &[1, 2]),
            ValueKind::Discrete { levels: 256 },
            "[0, 255]",
        ),
        (
            Tensor::zeros([0, 2], (Kind::Float, Device::Cpu)),
            binary,
            "non-empty",
        ),
        (
            Tensor::zeros([3, 3], (Kind::Float, Device::Cpu)),
            binary,
            "[batch, 2]",
        ),
        (
            Tensor::zeros([3], (Kind::Float, Device::Cpu)),
            binary,
            "[batch, 2]",
        ),
        (
            Tensor::zeros([3, 2], (Kind::Bool, Device::Cpu)),
            binary,
            "real or integer",
        ),
    ];
    for (x, values, needle) in cases {
        let err = error_text(check_data(&x, &event, values, "test"));
        assert!(err.contains(needle), "{err} should contain {needle:?}");
        assert!(err.starts_with("test"), "the caller is named: {err}");
    }
    // Integers and doubles are accepted and converted where safe.
    let ints = Tensor::from_slice(&[0i64, 1, 1, 0]).reshape([2, 2]);
    assert_eq!(
        check_data(&ints, &event, binary, "t").unwrap().kind(),
        Kind::Float
    );
    let doubles = Tensor::from_slice(&[0.5f64, -3.0]).reshape([1, 2]);
    assert_eq!(
        check_data(&doubles, &event, ValueKind::Continuous, "t")
            .unwrap()
            .kind(),
        Kind::Double
    );
}

#[test]
fn label_checks() {
    let float_labels = Tensor::from_slice(&[0.0f32, 1.0]);
    assert!(error_text(check_labels(&float_labels, 2, 3, "l")).contains("integers"));
    let out_of_range = Tensor::from_slice(&[0i64, 3]);
    assert!(error_text(check_labels(&out_of_range, 2, 3, "l")).contains("[0, 3)"));
    let negative = Tensor::from_slice(&[-1i64, 0]);
    assert!(error_text(check_labels(&negative, 2, 3, "l")).contains("[-1, 0]"));
    let wrong_length = Tensor::from_slice(&[0i64, 1, 2]);
    assert!(error_text(check_labels(&wrong_length, 2, 3, "l")).contains("[2]"));
}

#[test]
fn sample_options_are_checked() {
    assert!(error_text(SampleOptions::new().begin(0)).contains("at least 1"));
    assert!(error_text(SampleOptions::new().begin(-5)).contains("at least 1"));
    for t in [f64::NAN, f64::INFINITY, -1.0] {
        assert!(error_text(SampleOptions::new().temperature(t).begin(4)).contains("temperature"));
    }
    assert!(error_text(SampleOptions::new().steps(0).begin(4)).contains("steps"));
    let labels = SampleOptions::new().labels(Tensor::from_slice(&[0i64, 9]));
    assert!(error_text(labels.labels_for(2, 3, Device::Cpu)).contains("[0, 3)"));
    assert!(error_text(labels.labels_for(3, 10, Device::Cpu)).contains("[3]"));
}

#[test]
fn non_finite_and_absurd_config_values_are_refused_with_their_key() {
    for (text, key) in [
        ("lr = inf", "lr"),
        ("lr = nan", "lr"),
        ("lr = 1e300", "lr"),
        ("lr = -0.1", "lr"),
        ("eps = inf", "eps"),
        ("eps = 0.0", "eps"),
        ("beta1 = 1.5", "beta1"),
        ("beta2 = nan", "beta2"),
        ("weight_decay = -1.0", "weight_decay"),
        ("grad_clip_norm = inf", "grad_clip_norm"),
        ("grad_clip_norm = 0.0", "grad_clip_norm"),
        ("learning_rate = 0.1", "learning_rate"),
    ] {
        let err = error_text(AdamConfig::from_toml_str(text));
        assert!(err.contains(key), "{text}: {err}");
    }
    for (text, key) in [
        ("decay = 1.0", "decay"),
        ("decay = nan", "decay"),
        ("decay = -0.5", "decay"),
        ("start = 3", "start"),
    ] {
        let err = error_text(EmaConfig::from_toml_str(text));
        assert!(err.contains(key), "{text}: {err}");
    }
    // A key beside a variant that takes no fields is refused, not ignored.
    let err = error_text(gm_core::train::LrSchedule::from_toml_str(
        "kind = \"constant\"\nwarmup_steps = 5",
    ));
    assert!(
        err.contains("`warmup_steps`") && err.contains("unknown key"),
        "{err}"
    );
    assert!(error_text(TrainConfig::from_toml_str("log_every = 0")).contains("log_every"));
    assert!(error_text(TrainConfig::from_toml_str("batch_size = -3")).contains("batch_size"));
    assert!(error_text(Budget::new(0, 10)).contains("train.steps"));
    assert!(error_text(Budget::new(10, 0)).contains("train.steps"));
}

#[test]
fn run_files_name_what_is_wrong() {
    let registry = Registry::new();
    let err = error_text(registry.parse_run("family = \"flow\"\ndataset = \"two_moons\"", "t"));
    assert!(err.contains("unknown family \"flow\""), "{err}");
    let err = error_text(registry.parse_run("dataset = \"two_moons\"", "t"));
    assert!(err.contains("family"), "{err}");
    let err =
        error_text(registry.parse_run("family = \"x\"\ndataset = \"two_moons\"\nmodle = 3", "t"));
    assert!(err.contains("modle"), "{err}");
    let err = error_text(registry.load_run("flow/nope"));
    assert!(
        err.contains("no shipped config named \"flow/nope\""),
        "{err}"
    );
    let err = error_text(registry.load_run("/no/such/file.toml"));
    assert!(err.contains("/no/such/file.toml"), "{err}");
}

#[test]
fn oversized_networks_are_refused_before_allocation() {
    let vs = nn::VarStore::new(Device::Cpu);
    let huge = MlpConfig {
        hidden: vec![1_000_000_000],
        activation: Activation::Relu,
    };
    let err = error_text(huge.init(&vs.root(), 784, 10));
    assert!(
        err.contains("would need 795000000010 parameters") && err.contains("GM_MAX_PARAMETERS"),
        "{err}"
    );
    assert!(vs.variables().is_empty(), "nothing was allocated");
}

#[test]
fn mlps_take_any_real_dtype_and_refuse_others() {
    let vs = nn::VarStore::new(Device::Cpu);
    let mlp = MlpConfig {
        hidden: vec![4],
        activation: Activation::Tanh,
    }
    .init(&vs.root(), 3, 2)
    .unwrap();
    let x = Tensor::ones([5, 3], (Kind::Float, Device::Cpu));
    let reference = mlp.forward(&x).unwrap();
    for kind in [Kind::Double, Kind::Int64, Kind::Int, Kind::Uint8] {
        let y = mlp.forward(&x.to_kind(kind)).unwrap();
        assert!(y.allclose(&reference, 1e-6, 1e-6, false), "{kind:?}");
    }
    assert!(error_text(mlp.forward(&x.to_kind(Kind::Bool))).contains("real values"));
    assert!(
        error_text(mlp.forward(&Tensor::ones([5, 4], (Kind::Float, Device::Cpu))))
            .contains("[batch, 3]")
    );
}

#[test]
fn devices_that_cannot_work_are_refused() {
    for (name, needle) in [
        ("mps", "Metal"),
        ("tpu", "unknown device"),
        ("cuda:x", "bad CUDA index"),
        ("cuda:7", "CUDA device"),
    ] {
        let err = error_text(gm_core::device::parse_device(name));
        assert!(err.contains(needle), "{name}: {err}");
    }
}

/// KL(p ‖ q) is +∞ where q gives zero probability to a class p can draw, and finite and exact
/// where only p has zeros (independent closed forms).
#[test]
fn categorical_kl_is_infinite_where_q_has_no_mass() {
    let neg_inf = f64::NEG_INFINITY;
    let p = Categorical::new(&Tensor::from_slice(&[0.0f32, 0.0])).unwrap();
    let q = Categorical::new(&Tensor::from_slice(&[0.0f32, neg_inf as f32])).unwrap();
    let kl = kl_divergence(&p, &q).unwrap().double_value(&[]);
    assert!(kl == f64::INFINITY, "KL = {kl}");
    // Reversed: KL([1, 0] ‖ [½, ½]) = ln 2.
    let kl = kl_divergence(&q, &p).unwrap().double_value(&[]);
    assert!((kl - std::f64::consts::LN_2).abs() < 1e-6, "KL = {kl}");
    // Batched: only the row with the impossible class is infinite.
    let pb =
        Categorical::new(&Tensor::from_slice(&[0.0f32, 0.0, 0.0, 0.0]).reshape([2, 2])).unwrap();
    let qb =
        Categorical::new(&Tensor::from_slice(&[0.0f32, neg_inf as f32, 0.0, 1.0]).reshape([2, 2]))
            .unwrap();
    let kl = Vec::<f64>::try_from(&kl_divergence(&pb, &qb).unwrap().to_kind(Kind::Double)).unwrap();
    assert!(kl[0] == f64::INFINITY);
    // KL([½, ½] ‖ softmax([0, 1])) = ln(½) − ½ (ln q₀ + ln q₁).
    let (l0, l1) = (
        -(1.0f64 + 1f64.exp()).ln(),
        1.0 - (1.0f64 + 1f64.exp()).ln(),
    );
    let expected = 0.5f64.ln() - 0.5 * (l0 + l1);
    assert!((kl[1] - expected).abs() < 1e-6, "{} vs {expected}", kl[1]);
}

fn temp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("gm-bad-input-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn damaged_checkpoints_are_refused() {
    let good = vec![
        ("w".to_string(), Tensor::from_slice(&[1.0f32, 2.0, 3.0])),
        ("steps".to_string(), Tensor::from_slice(&[4i64])),
    ];
    let meta = serde_json::json!({ "family": "test" });
    // Never written from non-finite state, and nothing (no .tmp) left behind.
    let path = temp("nan.safetensors");
    let nan = vec![("w".to_string(), Tensor::from_slice(&[1.0f32, f32::NAN]))];
    assert!(error_text(save_tensors(&path, &nan, &meta)).contains("NaN or infinite"));
    assert!(!path.exists());
    assert!(!path.with_extension("safetensors.tmp").exists());
    // A flipped bit in a weight fails the checksum.
    let path = temp("flipped.safetensors");
    save_tensors(&path, &good, &meta).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    bytes[8 + header] ^= 0x01; // the first data byte
    std::fs::write(&path, &bytes).unwrap();
    assert!(error_text(load_tensors(&path)).contains("checksum"));
    // A NaN weight written by something else is refused by name.
    let path = temp("foreign-nan.safetensors");
    let meta_bytes = serde_json::to_vec(&meta).unwrap();
    Tensor::write_safetensors(
        &[
            ("w".to_string(), Tensor::from_slice(&[f32::NAN])),
            (META_KEY.to_string(), Tensor::from_slice(&meta_bytes)),
        ],
        &path,
    )
    .unwrap();
    let err = error_text(load_tensors(&path));
    assert!(err.contains("\"w\"") && err.contains("NaN"), "{err}");
    // Not a checkpoint at all.
    let path = temp("garbage.safetensors");
    std::fs::write(&path, b"not a safetensors file").unwrap();
    assert!(error_text(load_tensors(&path)).contains("not a readable safetensors file"));
    assert!(error_text(load_tensors(&temp("missing.safetensors"))).contains("no such checkpoint"));
}

/// The one-pass validity check accepts exactly the values the counting check would: every value
/// of a list of edge cases, in every data space, alone and beside valid values, in f32 and f64.
#[test]
fn data_check_accepts_exactly_the_data_space() {
    let values = [
        0.0,
        -0.0,
        1.0,
        2.0,
        254.0,
        255.0,
        256.0,
        -1.0,
        0.5,
        1.5,
        254.5,
        1e-7,
        0.999_999,
        1e30,
        -1e30,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
    ];
    let spaces = [
        ValueKind::Continuous,
        ValueKind::Discrete { levels: 2 },
        ValueKind::Discrete { levels: 256 },
    ];
    for kind in [Kind::Float, Kind::Double] {
        for &space in &spaces {
            for &v in &values {
                let expected = match space {
                    ValueKind::Continuous => v.is_finite(),
                    ValueKind::Discrete { levels } => {
                        v.is_finite() && v.fract() == 0.0 && v >= 0.0 && v <= (levels - 1) as f64
                    }
                };
                // Values that f32 cannot hold exactly are judged as f32 holds them.
                let held = Tensor::from_slice(&[v]).to_kind(kind).double_value(&[0]);
                let expected = if kind == Kind::Float && held != v && v.is_finite() {
                    match space {
                        ValueKind::Continuous => held.is_finite(),
                        ValueKind::Discrete { levels } => {
                            held.fract() == 0.0 && held >= 0.0 && held <= (levels - 1) as f64
                        }
                    }
                } else {
                    expected
                };
                let x = Tensor::from_slice(&[0.0, v, 1.0])
                    .to_kind(kind)
                    .reshape([3, 1]);
                let got = check_data(&x, &[1], space, "t").is_ok();
                assert_eq!(got, expected, "{v} in {space:?} as {kind:?}");
            }
        }
    }
}
