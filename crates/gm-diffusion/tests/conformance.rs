//! The conformance harness of gm-core on every shipped diffusion config (shrunk to a tiny size)
//! and on every prediction and variance choice, and the data-space checks of the spec.

mod common;

use common::{registry, shipped, shrink, single_thread};
use gm_core::data::ValueKind;
use gm_core::spec::DataInfo;
use gm_core::tch::Device;
use gm_core::testing::check_conformance_on;
use gm_core::testing::{assert_refuses_data, check_conformance, example_data, ConformanceCase};
use gm_diffusion::ode::{OdeConfig, OdeSolver};
use gm_diffusion::{
    DenoiserConfig, DiffusionConfig, FlowMatchingConfig, MaskedDiffusionConfig, SHIPPED_CONFIGS,
};

fn shrink_network(d: &mut DenoiserConfig) {
    match d {
        DenoiserConfig::Mlp {
            hidden,
            time_embedding,
        } => {
            *hidden = vec![16];
            *time_embedding = 8;
        }
        DenoiserConfig::Unet { channels, .. } => *channels = 8,
    }
}

/// Flow matching and rectified flow (the reflow round starts at step 1, so the teacher crosses
/// the checkpoint of the resume check), with adaptive likelihoods: per-example step sizes keep
/// each example's log-density independent of its batch.
#[test]
fn every_shipped_flow_matching_model_conforms() {
    single_thread();
    let registry = registry();
    for (name, _) in gm_diffusion::flow_matching::SHIPPED_CONFIGS {
        let run = registry.load_run(&format!("flow_matching/{name}")).unwrap();
        assert_eq!(run.family(), "flow_matching");
        let mut c: FlowMatchingConfig = run.model_config().unwrap();
        shrink_network(&mut c.velocity);
        c.sampler = OdeConfig::fixed(OdeSolver::Euler, 3);
        c.likelihood.ode = OdeConfig::adaptive(1e-3, 1e-3);
        if let Some(r) = &mut c.reflow {
            r.start_step = 1;
            r.ode = OdeConfig::fixed(OdeSolver::Heun, 2);
        }
        check_conformance_on(name, &c, &run.dataset, 16, 4, 4);
    }
}

#[test]
fn every_shipped_masked_diffusion_model_conforms() {
    single_thread();
    let registry = registry();
    for (name, _) in gm_diffusion::masked_model::SHIPPED_CONFIGS {
        let run = registry
            .load_run(&format!("masked_diffusion/{name}"))
            .unwrap();
        let mut c: MaskedDiffusionConfig = run.model_config().unwrap();
        shrink_network(&mut c.denoiser);
        c.sampler_steps = 3;
        c.likelihood_strata = 2;
        check_conformance_on(name, &c, &run.dataset, 16, 4, 4);
    }
}

#[test]
fn every_shipped_diffusion_model_conforms() {
    single_thread();
    let registry = registry();
    for (name, _) in SHIPPED_CONFIGS {
        let run = registry.load_run(&format!("diffusion/{name}")).unwrap();
        assert_eq!(run.family(), "diffusion");
        let mut c: DiffusionConfig = run.model_config().unwrap();
        shrink(&mut c);
        check_conformance_on(name, &c, &run.dataset, 16, 4, 4);
    }
}

/// Every prediction and variance choice passes the laws on binary digits (the learned variance
/// trains through the bound's term, so resume covers its random draws too).
#[test]
fn every_prediction_and_variance_conforms() {
    single_thread();
    let info = gm_core::data::named_info("mnist_binary").unwrap();
    let x = example_data(&info, 16);
    for (prediction, variance) in [("x0", "large"), ("v", "learned"), ("epsilon", "small")] {
        let text = format!(
            "timesteps = 10\nprediction = \"{prediction}\"\nvariance = \"{variance}\"\nlikelihood_strata = 3\n[denoiser]\nkind = \"mlp\"\nhidden = [8]\ntime_embedding = 4\n"
        );
        let c: DiffusionConfig = gm_core::train::Config::from_toml_str(&text).unwrap();
        check_conformance(&ConformanceCase {
            name: &format!("{prediction} prediction, {variance} variance"),
            spec: &c,
            data: &info,
            x: &x,
            labels: None,
            batch_size: 4,
            steps: 4,
        });
    }
}

#[test]
fn specs_refuse_data_they_cannot_describe() {
    let (unet, _) = shipped("mnist_unet");
    assert_refuses_data(
        &unet,
        &DataInfo::new(&[2], ValueKind::Continuous, 0),
        "denoiser",
    );
    assert_refuses_data(
        &unet,
        &DataInfo::new(&[1, 27, 27], ValueKind::Discrete { levels: 256 }, 0),
        "divisible",
    );
    let (conditional, _) = shipped("mnist_unet_conditional");
    assert_refuses_data(
        &conditional,
        &DataInfo::new(&[1, 28, 28], ValueKind::Discrete { levels: 256 }, 0),
        "class labels",
    );
}

/// The parameter count checked against the budget before allocation is the built model's.
#[test]
fn parameter_estimate_matches_the_built_model() {
    use gm_core::model::GenerativeModel;
    let registry = registry();
    for (name, _) in SHIPPED_CONFIGS {
        let run = registry.load_run(&format!("diffusion/{name}")).unwrap();
        let c: DiffusionConfig = run.model_config().unwrap();
        let info = gm_core::data::named_info(&run.dataset).unwrap();
        let model = gm_diffusion::Diffusion::new(&c, &info, Device::Cpu).unwrap();
        let rows = if c.conditional { info.classes + 1 } else { 0 };
        let estimate = c
            .denoiser
            .parameters(&info.event_shape, c.outputs_per_value(), rows);
        assert_eq!(estimate, model.num_parameters() as i128, "{name}");
    }
}

/// The same for flow matching (one velocity network; the reflow teacher is a frozen copy, not
/// trained) and masked diffusion (two inputs and `levels` outputs per value).
#[test]
fn parameter_estimates_of_the_other_families_match() {
    use gm_core::model::GenerativeModel;
    let registry = registry();
    for (name, _) in gm_diffusion::flow_matching::SHIPPED_CONFIGS {
        let run = registry.load_run(&format!("flow_matching/{name}")).unwrap();
        let c: FlowMatchingConfig = run.model_config().unwrap();
        let info = gm_core::data::named_info(&run.dataset).unwrap();
        let model = gm_diffusion::FlowMatching::new(&c, &info, Device::Cpu).unwrap();
        let rows = if c.conditional { info.classes + 1 } else { 0 };
        let estimate = c.velocity.parameters(&info.event_shape, 1, rows);
        assert_eq!(estimate, model.num_parameters() as i128, "{name}");
    }
    for (name, _) in gm_diffusion::masked_model::SHIPPED_CONFIGS {
        let run = registry
            .load_run(&format!("masked_diffusion/{name}"))
            .unwrap();
        let c: MaskedDiffusionConfig = run.model_config().unwrap();
        let info = gm_core::data::named_info(&run.dataset).unwrap();
        let model = gm_diffusion::MaskedDiffusion::new(&c, &info, Device::Cpu).unwrap();
        let levels = match info.values {
            ValueKind::Discrete { levels } => levels as i64,
            ValueKind::Continuous => unreachable!(),
        };
        let estimate = c
            .denoiser
            .parameters_with_inputs(&info.event_shape, 2, levels, 0);
        assert_eq!(estimate, model.num_parameters() as i128, "{name}");
    }
}
