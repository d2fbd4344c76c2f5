//! Flow models: normalised densities, sanity at initialisation, bad input, save/load, training.

mod common;

use common::*;
use gm_core::data::toy::ToyDataset;
use gm_core::distributions::{Distribution, StandardNormal};
use gm_core::model::{Batch, GenerativeModel, LikelihoodKind, SampleOptions};
use gm_core::tch::{Device, Kind, Tensor};
use gm_core::testing::{assert_close, assert_density_integrates_2d};
use gm_core::train::Config;
use gm_flow::*;

fn configs() -> Vec<(&'static str, FlowConfig)> {
    let coupling = |transform| FlowConfig {
        architecture: Architecture::Coupling {
            layers: 4,
            hidden: vec![32, 32],
            transform,
            actnorm: false,
        },
        ..Default::default()
    };
    let ar = |transform, inverse| FlowConfig {
        architecture: Architecture::Autoregressive {
            layers: 3,
            hidden: vec![32, 32],
            transform,
            inverse,
            actnorm: true,
        },
        ..Default::default()
    };
    vec![
        ("nice", coupling(ElementTransform::Additive)),
        (
            "realnvp",
            coupling(ElementTransform::Affine { scale_bound: 3.0 }),
        ),
        (
            "nsf",
            coupling(ElementTransform::Spline {
                bins: 8,
                tail_bound: 4.0,
            }),
        ),
        (
            "maf",
            ar(ElementTransform::Affine { scale_bound: 3.0 }, false),
        ),
        (
            "iaf",
            ar(ElementTransform::Affine { scale_bound: 3.0 }, true),
        ),
        (
            "maf_spline",
            ar(
                ElementTransform::Spline {
                    bins: 6,
                    tail_bound: 4.0,
                },
                false,
            ),
        ),
    ]
}

/// Each flow, moved away from its identity initialisation, is a normalised density on the
/// plane: the trapezoid rule over [-10, 10]² gives 1 within 2%.
#[test]
fn flow_densities_integrate_to_one() {
    for (name, config) in configs() {
        gm_core::tch::manual_seed(3);
        let model = FlowModel::new(&config, &[2], Device::Cpu).unwrap();
        // Initialise ActNorm from a batch, then perturb the weights.
        let _ = model
            .log_likelihood(&Tensor::randn([64, 2], (Kind::Float, Device::Cpu)))
            .unwrap();
        randomize(model.var_store(), 0.08);
        let integral = assert_density_integrates_2d(
            |x| {
                model
                    .log_likelihood(&x.to_kind(Kind::Float))
                    .unwrap()
                    .unwrap()
                    .to_kind(Kind::Double)
            },
            -10.0,
            10.0,
            401,
            0.02,
        );
        eprintln!("{name}: ∫p = {integral:.4}");
    }
}

/// Sanity at initialisation: coupling and autoregressive layers start at the identity, so an
/// untrained flow's density is exactly the standard Normal's.
#[test]
fn untrained_flow_is_the_base_density() {
    let x = randn(&[32, 2], 1).to_kind(Kind::Float);
    let base = StandardNormal::new(&[2], Device::Cpu).log_prob(&x).unwrap();
    for (name, config) in configs()
        .into_iter()
        .filter(|(n, _)| !n.starts_with("maf") && *n != "iaf")
    {
        let model = FlowModel::new(&config, &[2], Device::Cpu).unwrap();
        let lp = model.log_likelihood(&x).unwrap().unwrap();
        assert_close(&lp, &base, 1e-5, name);
    }
    // The image flow on uniform 8-bit noise at initialisation: ActNorm whitens the first batch,
    // so the flow starts near the uniform model's 8 bits/dim rather than far from it.
    let config = FlowConfig {
        architecture: Architecture::MultiScale {
            levels: 2,
            steps: 2,
            hidden_channels: 16,
            logit_alpha: 0.05,
        },
        data: DataSpace::Discrete { levels: 256 },
        ..Default::default()
    };
    let model = FlowModel::new(&config, &[1, 8, 8], Device::Cpu).unwrap();
    let pixels = Tensor::randint(256, [16, 1, 8, 8], (Kind::Float, Device::Cpu));
    let nll = -model
        .log_likelihood(&pixels)
        .unwrap()
        .unwrap()
        .mean(Kind::Float)
        .double_value(&[]);
    let bpd = gm_core::bounds::bits_per_dim(nll, 64);
    // Uniform pixels have exactly 8 bits/dim; the untrained flow must be close to that and not
    // below it by more than the dequantisation bound allows.
    assert!(
        bpd > 7.9 && bpd < 9.5,
        "untrained image flow: {bpd} bits/dim on uniform pixels"
    );
}

#[test]
fn bad_inputs_are_errors() {
    let model = FlowModel::new(&FlowConfig::default(), &[2], Device::Cpu).unwrap();
    let err = model
        .log_likelihood(&Tensor::zeros([4, 3], (Kind::Float, Device::Cpu)))
        .unwrap_err()
        .to_string();
    assert!(err.contains("expected shape"), "{err}");
    assert!(model
        .log_likelihood(&Tensor::zeros([4], (Kind::Float, Device::Cpu)))
        .is_err());
    let image = FlowConfig {
        architecture: Architecture::MultiScale {
            levels: 2,
            steps: 1,
            hidden_channels: 8,
            logit_alpha: 0.05,
        },
        data: DataSpace::Discrete { levels: 256 },
        ..Default::default()
    };
    assert!(
        FlowModel::new(&image, &[1, 6, 6], Device::Cpu).is_err(),
        "6×6 cannot be squeezed twice"
    );
    let m = FlowModel::new(&image, &[1, 8, 8], Device::Cpu).unwrap();
    assert!(m
        .log_likelihood(&Tensor::zeros([2, 1, 8, 9], (Kind::Float, Device::Cpu)))
        .is_err());
    assert!(
        FlowModel::new(&image, &[2], Device::Cpu).is_err(),
        "an image flow on vectors"
    );
    assert!(
        FlowModel::new(&FlowConfig::default(), &[1, 8, 8], Device::Cpu).is_err(),
        "a vector flow on images"
    );
    let err = FlowConfig::from_toml_str("[architecture]\nkind = \"coupling\"\nlayers = 0\nhidden = [8]\nactnorm = false\ntransform = { kind = \"additive\" }").unwrap_err().to_string();
    assert!(err.contains("layers"), "{err}");
    let err = FlowConfig::from_toml_str("depth = 3")
        .unwrap_err()
        .to_string();
    assert!(err.contains("depth"), "{err}");
}

#[test]
fn save_load_gives_identical_outputs() {
    gm_core::tch::manual_seed(0);
    let config = &configs()[3].1;
    let mut a = FlowModel::new(config, &[2], Device::Cpu).unwrap();
    let x = ToyDataset::TwoMoons.sample(128, Device::Cpu).unwrap();
    for _ in 0..3 {
        a.train_step(&Batch::new(x.shallow_clone())).unwrap();
    }
    let dir = std::env::temp_dir().join(format!("gm-flow-save-{}", std::process::id()));
    let path = dir.join("flow.safetensors");
    a.save(&path).unwrap();
    gm_core::tch::manual_seed(99);
    let mut b = FlowModel::new(config, &[2], Device::Cpu).unwrap();
    b.load(&path).unwrap();
    assert!(a
        .log_likelihood(&x)
        .unwrap()
        .unwrap()
        .equal(&b.log_likelihood(&x).unwrap().unwrap()));
    // The ActNorm initialisation flag travels too: b does not re-initialise on the next batch.
    a.train_step(&Batch::new(x.shallow_clone())).unwrap();
    b.train_step(&Batch::new(x.shallow_clone())).unwrap();
    assert!(a
        .log_likelihood(&x)
        .unwrap()
        .unwrap()
        .equal(&b.log_likelihood(&x).unwrap().unwrap()));
}

/// A short training run halves the gap to the data's entropy on two moons, and the dequantised
/// discrete model reports a lower bound.
#[test]
fn training_reduces_nll() {
    gm_core::tch::manual_seed(1);
    let config = FlowConfig {
        architecture: Architecture::Coupling {
            layers: 6,
            hidden: vec![64, 64],
            transform: ElementTransform::Affine { scale_bound: 3.0 },
            actnorm: false,
        },
        optimizer: gm_core::train::AdamConfig {
            lr: 3e-3,
            ..Default::default()
        },
        ..Default::default()
    };
    let mut model = FlowModel::new(&config, &[2], Device::Cpu).unwrap();
    let test = ToyDataset::TwoMoons.sample(2000, Device::Cpu).unwrap();
    let nll = |m: &FlowModel| {
        -m.log_likelihood(&test)
            .unwrap()
            .unwrap()
            .mean(Kind::Float)
            .double_value(&[])
    };
    let before = nll(&model);
    for _ in 0..300 {
        let x = ToyDataset::TwoMoons.sample(256, Device::Cpu).unwrap();
        model.train_step(&Batch::new(x)).unwrap();
    }
    let after = nll(&model);
    let (entropy, _) = ToyDataset::TwoMoons.entropy(20_000, Device::Cpu).unwrap();
    assert!(
        after - entropy < 0.5 * (before - entropy),
        "NLL {before:.3} → {after:.3}, entropy {entropy:.3}"
    );
    assert_eq!(model.likelihood_kind(), LikelihoodKind::Exact);
    let samples = model.sample(100).unwrap();
    assert_eq!(samples.size(), [100, 2]);
}

/// A conditional flow: the density depends on the label, and sampling honours it.
#[test]
fn conditional_flow() {
    gm_core::tch::manual_seed(2);
    let config = FlowConfig {
        context_classes: 2,
        ..configs()[1].1.clone()
    };
    let mut model = FlowModel::new(&config, &[2], Device::Cpu).unwrap();
    // Class 0 lives around (-2, 0), class 1 around (2, 0).
    for _ in 0..200 {
        let labels = Tensor::randint(2, [128], (Kind::Int64, Device::Cpu));
        let centre = (labels.to_kind(Kind::Float) * 4.0 - 2.0).unsqueeze(1)
            * Tensor::from_slice(&[1.0f32, 0.0]);
        let x = centre + Tensor::randn([128, 2], (Kind::Float, Device::Cpu)) * 0.3;
        model.train_step(&Batch::with_labels(x, labels)).unwrap();
    }
    let ones = Tensor::ones([200], (Kind::Int64, Device::Cpu));
    let s = model
        .sample_with(200, &SampleOptions::new().labels(ones.shallow_clone()))
        .unwrap();
    let mean_x = s.select(1, 0).mean(Kind::Float).double_value(&[]);
    assert!(
        (mean_x - 2.0).abs() < 0.5,
        "class-1 samples centre at x = {mean_x}"
    );
    let p1_each = model.log_prob(&s, Some(&ones)).unwrap();
    let p0_each = model.log_prob(&s, Some(&ones.zeros_like())).unwrap();
    let p1 = p1_each.mean(Kind::Float).double_value(&[]);
    let p0 = p0_each.mean(Kind::Float).double_value(&[]);
    // Without labels, a conditional flow scores the mixture over labels with a uniform prior.
    let marginal = model.log_likelihood(&s).unwrap().unwrap();
    let expected = Tensor::stack(&[p0_each, p1_each], 0).logsumexp([0], false) - 2f64.ln();
    assert_close(&marginal, &expected, 1e-5, "label-marginal log-likelihood");
    // Given labels, the conditional density.
    let given = model
        .log_likelihood_given(&s, Some(&ones))
        .unwrap()
        .unwrap();
    assert_close(
        &given,
        &model.log_prob(&s, Some(&ones)).unwrap(),
        1e-6,
        "ln p(x | y)",
    );
    assert!(
        p1 > p0 + 5.0,
        "the right label explains the samples better: {p1} vs {p0}"
    );
}

/// Every shipped TOML config parses and validates through the registry, and builds a model for
/// its data set's shape.
#[test]
fn shipped_configs_load() {
    let mut registry = gm_core::spec::Registry::new();
    register(&mut registry);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let run = registry
            .load_run(path.to_str().unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(run.family(), "flow");
        let info = gm_core::data::named_info(&run.dataset).unwrap();
        run.model.build(&info, Device::Cpu).unwrap();
        n += 1;
    }
    assert_eq!(
        n,
        SHIPPED_CONFIGS.len(),
        "every file in configs/ is listed in SHIPPED_CONFIGS"
    );
    for (name, _) in SHIPPED_CONFIGS {
        registry.load_run(&format!("flow/{name}")).unwrap();
    }
}

/// `decode` inverts `encode`: every 2-D flow, moved away from its identity initialisation,
/// returns continuous points within 1e-4 (float32), and a multi-scale flow returns 8-bit and
/// binary images exactly (the encoding maps each level to its cell's centre, deterministically).
#[test]
fn decode_inverts_encode() {
    for (name, config) in configs() {
        gm_core::tch::manual_seed(4);
        let model = FlowModel::new(&config, &[2], Device::Cpu).unwrap();
        let x = Tensor::randn([64, 2], (Kind::Float, Device::Cpu));
        // Initialise ActNorm from a batch, then perturb the weights.
        let _ = model.log_likelihood(&x).unwrap();
        randomize(model.var_store(), 0.08);
        let z = model.encode(&x).unwrap().unwrap();
        assert_eq!(z.size(), [64, 2], "{name}");
        let moved = (&z - &x).abs().max().double_value(&[]);
        assert!(moved > 1e-2, "{name}: the flow is still the identity");
        let back = model.decode(&z).unwrap().unwrap();
        assert_eq!(back.kind(), Kind::Float, "{name}");
        let err = (&back - &x).abs().max().double_value(&[]);
        eprintln!("{name}: |decode(encode(x)) - x| ≤ {err:.2e} (z moved {moved:.2})");
        assert!(
            err < 1e-4,
            "{name}: decode(encode(x)) differs from x by {err}"
        );
    }
    for levels in [256u32, 2] {
        gm_core::tch::manual_seed(5);
        let config = FlowConfig {
            architecture: Architecture::MultiScale {
                levels: 2,
                steps: 2,
                hidden_channels: 16,
                logit_alpha: 0.05,
            },
            data: DataSpace::Discrete { levels },
            ..Default::default()
        };
        let model = FlowModel::new(&config, &[1, 8, 8], Device::Cpu).unwrap();
        let pixels = Tensor::randint(levels as i64, [16, 1, 8, 8], (Kind::Float, Device::Cpu));
        let _ = model.log_likelihood(&pixels).unwrap();
        randomize(model.var_store(), 0.02);
        let z = model.encode(&pixels).unwrap().unwrap();
        assert_eq!(z.size(), [16, 64]);
        assert!(
            z.isfinite().all().int64_value(&[]) == 1,
            "{levels} levels: finite latent"
        );
        let again = model.encode(&pixels).unwrap().unwrap();
        assert!(
            z.equal(&again),
            "{levels} levels: the encoding is deterministic"
        );
        let back = model.decode(&z).unwrap().unwrap();
        assert_eq!(back.size(), pixels.size());
        let wrong = back.ne_tensor(&pixels).sum(Kind::Int64).int64_value(&[]);
        assert_eq!(
            wrong, 0,
            "{levels} levels: {wrong} pixels decode to another level"
        );
        // Decoded latents are in the data space, as samples are: prior draws give levels.
        let drawn = model
            .decode(&Tensor::randn([4, 64], (Kind::Float, Device::Cpu)))
            .unwrap()
            .unwrap();
        let (lo, hi) = (drawn.min().double_value(&[]), drawn.max().double_value(&[]));
        assert!(lo >= 0.0 && hi <= (levels - 1) as f64);
        assert!(drawn.equal(&drawn.floor()));
    }
}
