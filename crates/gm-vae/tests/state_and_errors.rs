//! Saving, loading and resuming; bad shapes and bad configs; the ready configs in `configs/`.

mod common;

use common::{mlp, single_thread, tmp_dir};
use gm_core::data::toy::ToyDataset;
use gm_core::data::ValueKind;
use gm_core::distributions::Distribution;
use gm_core::model::{Batch, GenerativeModel};
use gm_core::spec::{DataInfo, ModelSpec, Registry};
use gm_core::tch::{Device, Kind, Tensor};
use gm_core::train::{Config, TrainConfig, Trainer};
use gm_core::GmError;
use gm_vae::{ConvNetConfig, LikelihoodConfig, NetworkConfig, Vae, VaeConfig, VqVae, VqVaeConfig};
use proptest::prelude::*;
use std::path::Path;

fn small_config() -> VaeConfig {
    VaeConfig {
        data_shape: vec![1, 6, 6],
        latent_dim: 3,
        encoder: mlp(&[16]),
        decoder: mlp(&[16]),
        ..Default::default()
    }
}

fn binary_data(n: i64, d: i64, seed: i64) -> Tensor {
    gm_core::tch::manual_seed(seed);
    Tensor::rand([n, d], (Kind::Float, Device::Cpu))
        .lt(0.3)
        .to_kind(Kind::Float)
}

fn weights(model: &dyn GenerativeModel) -> Vec<(String, Tensor)> {
    model
        .state()
        .into_iter()
        .map(|(name, t)| (name, t.copy()))
        .collect()
}

fn assert_same_state(a: &dyn GenerativeModel, b: &dyn GenerativeModel) {
    for ((na, ta), (nb, tb)) in weights(a).iter().zip(weights(b)) {
        assert_eq!(na, &nb);
        assert!(ta.equal(&tb), "{na} differs");
    }
}

/// A saved and reloaded VAE gives identical posteriors, likelihood estimates (same seed) and,
/// because the optimizer state travels too, an identical next training step.
#[test]
fn vae_save_load_gives_identical_outputs() {
    single_thread();
    gm_core::tch::manual_seed(0);
    let mut a = Vae::new(&small_config(), Device::Cpu).unwrap();
    let x = binary_data(16, 36, 1);
    for _ in 0..3 {
        a.train_step(&Batch::new(x.shallow_clone())).unwrap();
    }
    let path = tmp_dir("vae").join("vae.safetensors");
    a.save(&path).unwrap();
    gm_core::tch::manual_seed(99);
    let mut b = Vae::new(&small_config(), Device::Cpu).unwrap();
    b.load(&path).unwrap();
    assert_eq!(b.steps(), 3);
    let (pa, pb) = (a.encode(&x).unwrap(), b.encode(&x).unwrap());
    assert!(pa.mean().unwrap().equal(&pb.mean().unwrap()));
    assert!(pa.variance().unwrap().equal(&pb.variance().unwrap()));
    assert!(a
        .reconstruct(&x)
        .unwrap()
        .equal(&b.reconstruct(&x).unwrap()));
    gm_core::tch::manual_seed(5);
    let la = a.net().log_likelihood_k(&x, None, 20).unwrap();
    gm_core::tch::manual_seed(5);
    let lb = b.net().log_likelihood_k(&x, None, 20).unwrap();
    assert!(la.equal(&lb));
    gm_core::tch::manual_seed(6);
    a.train_step(&Batch::new(x.shallow_clone())).unwrap();
    gm_core::tch::manual_seed(6);
    b.train_step(&Batch::new(x.shallow_clone())).unwrap();
    assert_same_state(&a, &b);
}

/// gm-core's trainer stopped half way and resumed from its checkpoint ends bit-identical to
/// an uninterrupted run (weights and Adam moments), for the VAE and the VQ-VAE (codebook and
/// moving averages included).
#[test]
fn trainer_resumes_exactly() {
    single_thread();
    let x = binary_data(64, 36, 2);
    let config = TrainConfig {
        steps: 12,
        batch_size: 16,
        seed: 4,
        log_every: 4,
        checkpoint_every: 0,
    };
    let vq_config = VqVaeConfig {
        data_shape: vec![36],
        encoder: mlp(&[16]),
        decoder: mlp(&[16]),
        num_latents: 2,
        ..Default::default()
    };
    type Build = Box<dyn Fn(i64) -> Box<dyn GenerativeModel>>;
    let builds: Vec<(&str, Build)> = vec![
        (
            "vae",
            Box::new(|seed| {
                gm_core::tch::manual_seed(seed);
                Box::new(Vae::new(&small_config(), Device::Cpu).unwrap())
            }),
        ),
        (
            "vq_vae",
            Box::new(move |seed| {
                gm_core::tch::manual_seed(seed);
                Box::new(VqVae::new(&vq_config, Device::Cpu).unwrap())
            }),
        ),
    ];
    for (name, build) in builds {
        let dir = tmp_dir(&format!("resume-{name}"));
        let mut straight = build(0);
        Trainer::new(config.clone())
            .unwrap()
            .with_checkpoint(dir.join("straight.safetensors"))
            .fit(straight.as_mut(), &x, None, |_, _| {})
            .unwrap();
        let path = dir.join("resumed.safetensors");
        let mut first = build(0);
        Trainer::new(TrainConfig {
            steps: 6,
            ..config.clone()
        })
        .unwrap()
        .with_checkpoint(&path)
        .fit(first.as_mut(), &x, None, |_, _| {})
        .unwrap();
        let mut second = build(123);
        let history = Trainer::new(config.clone())
            .unwrap()
            .with_checkpoint(&path)
            .fit(second.as_mut(), &x, None, |_, _| {})
            .unwrap();
        assert_eq!(history.steps_done, 12);
        assert_same_state(straight.as_ref(), second.as_ref());
    }
}

/// A VQ-VAE checkpoint reloads into identical codes and reconstructions; it cannot be loaded
/// into a VAE.
#[test]
fn vq_vae_save_load_and_family_check() {
    single_thread();
    gm_core::tch::manual_seed(3);
    let config = VqVaeConfig {
        data_shape: vec![36],
        encoder: mlp(&[16]),
        decoder: mlp(&[16]),
        num_latents: 2,
        ..Default::default()
    };
    let mut a = VqVae::new(&config, Device::Cpu).unwrap();
    let x = binary_data(32, 36, 4);
    for _ in 0..5 {
        a.train_step(&Batch::new(x.shallow_clone())).unwrap();
    }
    let path = tmp_dir("vq").join("vq.safetensors");
    a.save(&path).unwrap();
    let mut b = VqVae::new(&config, Device::Cpu).unwrap();
    b.load(&path).unwrap();
    assert!(a
        .encode_codes(&x)
        .unwrap()
        .equal(&b.encode_codes(&x).unwrap()));
    assert!(a
        .reconstruct(&x)
        .unwrap()
        .equal(&b.reconstruct(&x).unwrap()));
    assert!(a
        .quantizer()
        .cluster_size()
        .equal(b.quantizer().cluster_size()));
    let mut vae = Vae::new(&small_config(), Device::Cpu).unwrap();
    let err = vae.load(&path).unwrap_err().to_string();
    assert!(err.contains("vq_vae") && err.contains("vae"), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Any data shape other than `[batch, 1, 6, 6]` or `[batch, 36]` is a shape error that
    /// states both accepted shapes; wrong latent sizes likewise.
    #[test]
    fn wrong_shapes_are_shape_errors(shape in prop::collection::vec(1i64..8, 1..5), latent in 1i64..6) {
        single_thread();
        let vae = Vae::new(&small_config(), Device::Cpu).unwrap();
        let valid = (shape.len() == 2 && shape[1] == 36) || shape[1..] == [1, 6, 6];
        let x = Tensor::zeros(shape.as_slice(), (Kind::Float, Device::Cpu));
        match vae.encode(&x) {
            Ok(_) => prop_assert!(valid),
            Err(GmError::Shape { expected, actual, .. }) => {
                prop_assert!(!valid);
                prop_assert_eq!(expected, "[batch, 1, 6, 6] or [batch, 36]");
                prop_assert_eq!(actual, shape.clone());
            }
            Err(other) => prop_assert!(false, "unexpected error {other}"),
        }
        let z = Tensor::zeros([2, latent], (Kind::Float, Device::Cpu));
        match vae.decode(&z) {
            Ok(d) => {
                prop_assert_eq!(latent, 3);
                prop_assert_eq!(d.event_shape(), vec![1, 6, 6]);
            }
            Err(e) => {
                prop_assert!(latent != 3);
                prop_assert!(e.to_string().contains("[..., batch, 3]"), "{}", e);
            }
        }
    }
}

/// Other misuse: an empty batch, a context for an unconditional model, data outside the
/// likelihood's support, interpolating between batches, K = 0.
#[test]
fn misuse_gives_clear_errors() {
    single_thread();
    let mut vae = Vae::new(&small_config(), Device::Cpu).unwrap();
    let empty = Tensor::zeros([0, 36], (Kind::Float, Device::Cpu));
    assert!(matches!(
        vae.encode(&empty),
        Err(GmError::Domain(m)) if m.contains("empty batch")
    ));
    let x = binary_data(4, 36, 5);
    let labels = Tensor::zeros([4], (Kind::Int64, Device::Cpu));
    assert!(matches!(
        vae.encode_with(&x, Some(&labels)),
        Err(GmError::Unsupported(m)) if m.contains("unconditional")
    ));
    let grey = &x * 200.0;
    let err = vae
        .train_step(&Batch::new(grey.shallow_clone()))
        .unwrap_err();
    assert!(
        matches!(err, GmError::Domain(ref m) if m.contains("[0, 1]")),
        "{err}"
    );
    let err = vae.interpolate(&x, &x, 5).unwrap_err().to_string();
    assert!(err.contains("one example"), "{err}");
    assert_eq!(
        vae.interpolate(&x.get(0), &x.get(1), 5).unwrap().size(),
        [5, 1, 6, 6]
    );
    assert!(vae.net().log_likelihood_k(&x, None, 0).is_err());
    let err = vae.net_mut().set_eval_samples(0).unwrap_err().to_string();
    assert!(err.contains("eval_samples"), "{err}");
    assert_eq!(vae.sample(3).unwrap().size(), [3, 1, 6, 6]);
    assert_eq!(vae.reconstruct(&x).unwrap().size(), [4, 36]);
}

fn config_error(text: &str) -> String {
    VaeConfig::from_toml_str(text).unwrap_err().to_string()
}

/// Every bad config names its key, with the section it sits in.
#[test]
fn bad_configs_name_the_key() {
    single_thread();
    let cases = [
        ("latent_dims = 3", "latent_dims"),
        ("latent_dim = 0", "latent_dim"),
        ("data_shape = []", "data_shape"),
        ("eval_samples = 0", "eval_samples"),
        (
            "[objective]\nkind = \"iwae\"\nsamples = 0",
            "objective.samples",
        ),
        (
            "[objective]\nkind = \"elbo\"\nbeta = -1.0",
            "objective.beta",
        ),
        ("[objective]\nkind = \"elbo\"\nbetta = 2.0", "betta"),
        (
            "[likelihood]\nkind = \"discretized_logistic\"\nbins = 1",
            "likelihood.bins",
        ),
        (
            "[likelihood]\nkind = \"gaussian\"\nstd = 0.0",
            "likelihood.std",
        ),
        ("[likelihood]\nkind = \"poisson\"", "poisson"),
        ("[encoder]\nkind = \"mlp\"\nhidden = [0]", "encoder.hidden"),
        ("[encoder]\nkind = \"mlp\"\nwidth = 3", "width"),
        ("[encoder]\nkind = \"conv\"", "data_shape"),
        (
            "data_shape = [1, 4, 4]\n[decoder]\nkind = \"conv\"\nchannels = [8, 8, 8]",
            "decoder.channels",
        ),
        (
            "[context]\nkind = \"labels\"\nclasses = 0",
            "context.classes",
        ),
        ("[optimizer]\nlr = -1.0", "optimizer.lr"),
    ];
    for (text, key) in cases {
        let err = match VaeConfig::from_toml_str(text) {
            Ok(config) => Vae::new(&config, Device::Cpu).unwrap_err().to_string(),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains(key),
            "config {text:?} should name {key}: {err}"
        );
    }
    assert!(config_error("[encoder]\nkind = \"conv\"").contains("channels, height, width"));
    let err = VqVaeConfig::from_toml_str("[quantizer]\nnum_codes = 1")
        .unwrap_err()
        .to_string();
    assert!(err.contains("quantizer.num_codes"), "{err}");
    let err = VqVaeConfig::from_toml_str("[quantizer.update]\nkind = \"ema\"\ndecay = 1.5")
        .unwrap_err()
        .to_string();
    assert!(err.contains("quantizer.update.decay"), "{err}");
    // A spec checks its data set when it builds: values per example and the data space.
    let toy = DataInfo::new(&[2], ValueKind::Continuous, 0);
    let small = VaeConfig {
        latent_dim: 2,
        ..Default::default()
    };
    let err = ModelSpec::build(&small, &toy, Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("model.data_shape"), "{err}");
    let grey = DataInfo::new(&[1, 28, 28], ValueKind::Discrete { levels: 256 }, 10);
    let err = ModelSpec::build(&small, &grey, Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("model.likelihood"), "{err}");
    let round = VaeConfig::from_toml_str(&VaeConfig::default().to_toml_string().unwrap()).unwrap();
    assert_eq!(round, VaeConfig::default());
}

/// Synthetic data of the right kind for a data set: binary, 8-bit or toy points.
fn data_for(info: &DataInfo, n: i64) -> Tensor {
    let shape: Vec<i64> = std::iter::once(n)
        .chain(info.event_shape.iter().copied())
        .collect();
    match info.values {
        ValueKind::Discrete { levels: 2 } => binary_data(n, info.elements(), 11).reshape(shape),
        ValueKind::Discrete { levels } => {
            Tensor::randint(levels as i64, shape.as_slice(), (Kind::Float, Device::Cpu))
        }
        ValueKind::Continuous => ToyDataset::TwoMoons.sample(n, Device::Cpu).unwrap(),
    }
}

/// Every ready config parses through the registry, builds for its data set, trains one step
/// and scores a batch.
#[test]
fn ready_configs_build_and_train() {
    single_thread();
    let mut registry = Registry::new();
    gm_vae::register(&mut registry);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut seen = 0;
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        gm_core::tch::manual_seed(12);
        let run = registry
            .load_run(&path.to_string_lossy())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let info = gm_core::data::named_info(&run.dataset).unwrap();
        let mut model = run.model.build(&info, Device::Cpu).unwrap();
        let x = data_for(&info, 4);
        model
            .train_step(&Batch::with_labels(
                x.shallow_clone(),
                Tensor::zeros([4], (Kind::Int64, Device::Cpu)),
            ))
            .unwrap();
        if run.family() == "vae" {
            let config: VaeConfig = run.model_config().unwrap();
            assert_eq!(
                config.eval_samples, 1000,
                "{name}: evaluation uses K = 1000"
            );
            if let LikelihoodConfig::Bernoulli = config.likelihood {
                assert_eq!(run.dataset, "mnist_binary", "{name}");
            }
            if let NetworkConfig::Conv(ConvNetConfig { .. }) = config.encoder {
                assert_eq!(config.data_shape, [1, 28, 28]);
            }
        } else {
            assert_eq!(run.family(), "vq_vae");
        }
        seen += 1;
    }
    assert_eq!(
        seen,
        gm_vae::SHIPPED_CONFIGS.len(),
        "every file in configs/ is listed in SHIPPED_CONFIGS"
    );
}
