//! The conformance harness of gm-core, run on every shipped flow config (shrunk to a tiny size):
//! save/load under another seed, exact resume, batch independence, bad input refused with the
//! state unchanged, and the data-space checks.

mod common;

use gm_core::data::ValueKind;
use gm_core::spec::{DataInfo, ModelSpec, Registry};
use gm_core::tch::{Device, Kind, Tensor};
use gm_core::testing::check_conformance_on;
use gm_core::testing::{assert_refuses_data, check_conformance, example_data, ConformanceCase};
use gm_flow::{register, Architecture, FlowConfig, SHIPPED_CONFIGS};

/// The same architecture at a size a CPU test affords.
fn shrink(mut config: FlowConfig) -> FlowConfig {
    match &mut config.architecture {
        Architecture::Coupling { layers, hidden, .. }
        | Architecture::Autoregressive { layers, hidden, .. } => {
            *layers = (*layers).min(3);
            *hidden = vec![16];
        }
        Architecture::MultiScale {
            steps,
            hidden_channels,
            ..
        } => {
            *steps = 1;
            *hidden_channels = 8;
        }
    }
    config
}

fn registry() -> Registry {
    let mut r = Registry::new();
    register(&mut r);
    r
}

#[test]
fn every_shipped_flow_conforms() {
    let registry = registry();
    for (name, _) in SHIPPED_CONFIGS {
        let run = registry.load_run(&format!("flow/{name}")).unwrap();
        let config: FlowConfig = gm_core::toml::Value::Table(run.model.to_toml().unwrap())
            .try_into()
            .unwrap();
        let spec = shrink(config);
        check_conformance_on(name, &spec, &run.dataset, 32, 8, 4);
    }
}

/// A conditional flow with a weight average: labels are required and checked, and the
/// averaged weights travel with the state.
#[test]
fn conditional_flow_with_ema_conforms() {
    let mut spec = shrink(FlowConfig::default());
    spec.context_classes = 3;
    spec.ema = Some(gm_core::train::EmaConfig {
        decay: 0.9,
        start_step: 1,
    });
    let info = DataInfo::new(&[2], ValueKind::Continuous, 3);
    let x = example_data(&info, 32);
    gm_core::tch::manual_seed(3);
    let labels = Tensor::randint(3, [32], (Kind::Int64, Device::Cpu));
    check_conformance(&ConformanceCase {
        name: "conditional coupling flow with EMA",
        spec: &spec,
        data: &info,
        x: &x,
        labels: Some(&labels),
        batch_size: 8,
        steps: 4,
    });
}

#[test]
fn flows_refuse_data_they_cannot_describe() {
    let continuous = FlowConfig::default();
    assert_refuses_data(
        &continuous,
        &DataInfo::new(&[2], ValueKind::Discrete { levels: 2 }, 0),
        "model.data",
    );
    let registry = registry();
    let glow = registry.load_run("flow/glow_mnist_binary").unwrap().model;
    assert_refuses_data(
        glow.as_ref(),
        &DataInfo::new(&[1, 28, 28], ValueKind::Discrete { levels: 256 }, 10),
        "model.data",
    );
    assert_refuses_data(
        glow.as_ref(),
        &DataInfo::new(&[1, 28, 28], ValueKind::Continuous, 10),
        "model.data",
    );
    // A flow on discrete data reports a bound, on continuous data an exact density.
    let built = glow
        .build(
            &gm_core::data::named_info("mnist_binary").unwrap(),
            Device::Cpu,
        )
        .unwrap();
    assert_eq!(
        built.likelihood_kind(),
        gm_core::model::LikelihoodKind::LowerBound
    );
    let toy = continuous
        .build(
            &gm_core::data::named_info("two_moons").unwrap(),
            Device::Cpu,
        )
        .unwrap();
    assert_eq!(toy.likelihood_kind(), gm_core::model::LikelihoodKind::Exact);
    let conditional = FlowConfig {
        context_classes: 4,
        ..FlowConfig::default()
    };
    assert_refuses_data(
        &conditional,
        &DataInfo::new(&[2], ValueKind::Continuous, 10),
        "context_classes",
    );
}

/// The budget reaches the schedule through the spec: a shortened run ends its cosine decay on
/// its last step.
#[test]
fn budget_scales_the_schedule() {
    let run = registry().load_run("flow/glow_mnist_binary").unwrap();
    let short = run.with_steps(150).unwrap();
    let config: FlowConfig = gm_core::toml::Value::Table(short.model.to_toml().unwrap())
        .try_into()
        .unwrap();
    let schedule = config.schedule;
    assert_eq!(
        schedule,
        gm_core::train::LrSchedule::WarmupCosine {
            warmup_steps: 10,
            total_steps: 150,
            min_ratio: 0.05
        }
    );
    assert!((schedule.factor(149) - 0.05).abs() < 1e-12);
    assert_eq!(short.train.steps, 150);
    assert_eq!(short.train.checkpoint_every, 25);
}

/// The weight average starts from the weights after the first update, so a data-dependent
/// initialisation (ActNorm) is in it: after one step, averaged and raw weights sample alike;
/// later they differ.
#[test]
fn ema_starts_after_actnorm_initialisation() {
    let mut spec = shrink(FlowConfig::default());
    if let Architecture::Coupling { actnorm, .. } = &mut spec.architecture {
        *actnorm = true;
    }
    spec.ema = Some(gm_core::train::EmaConfig {
        decay: 0.999,
        start_step: 0,
    });
    let info = gm_core::data::named_info("two_moons").unwrap();
    gm_core::tch::manual_seed(8);
    let mut model = spec.build(&info, Device::Cpu).unwrap();
    let x = example_data(&info, 64) * 3.0 + 5.0;
    let sample = |m: &dyn gm_core::model::GenerativeModel, w| {
        m.sample_with(16, &gm_core::model::SampleOptions::new().seed(3).weights(w))
            .unwrap()
    };
    use gm_core::model::WeightChoice::{Ema, Raw};
    model
        .train_step(&gm_core::model::Batch::new(x.shallow_clone()))
        .unwrap();
    assert!(sample(model.as_ref(), Ema).equal(&sample(model.as_ref(), Raw)));
    // The initialised ActNorm is in the average: samples sit near the data's mean of 5.
    let mean = sample(model.as_ref(), Ema)
        .mean(Kind::Double)
        .double_value(&[]);
    assert!(
        (mean - 5.0).abs() < 2.0,
        "averaged model's samples centre at {mean}"
    );
    for _ in 0..3 {
        model
            .train_step(&gm_core::model::Batch::new(x.shallow_clone()))
            .unwrap();
    }
    assert!(!sample(model.as_ref(), Ema).equal(&sample(model.as_ref(), Raw)));
}
