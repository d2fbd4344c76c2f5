//! How much a probability-flow likelihood depends on its solver: scores the first N test
//! examples of a trained flow-matching checkpoint with Dormand–Prince at several tolerances
//! (the same Hutchinson probes and dequantisation each time) and prints the mean NLL, its
//! standard error across examples, the mean probe standard error, and the evaluations.
//!
//! ```text
//! cargo run --release -p gm-diffusion --example ode_likelihood -- \
//!     RUN_FOLDER/checkpoint.safetensors flow_matching/mnist_unet 50 1e-3 1e-4 1e-5
//! ```

use gm_core::data::load_named;
use gm_core::model::{GenerativeModel, WeightChoice};
use gm_core::spec::Registry;
use gm_core::tch::{Device, Kind};
use gm_diffusion::ode::OdeConfig;
use gm_diffusion::{FlowMatching, FlowMatchingConfig, ProbabilityFlowConfig};
use std::path::Path;

fn main() -> gm_core::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 4 {
        eprintln!("usage: ode_likelihood CHECKPOINT CONFIG N TOLERANCE...");
        std::process::exit(2);
    }
    gm_core::tch::set_num_threads(1);
    let mut registry = Registry::new();
    gm_diffusion::register(&mut registry);
    let run = registry.load_run(&args[1])?;
    let config: FlowMatchingConfig = run.model_config()?;
    let n: i64 = args[2]
        .parse()
        .map_err(|_| gm_core::GmError::config("N", format!("not a count: {}", args[2])))?;
    let data = load_named(&run.dataset, Device::Cpu, 1000, 1000, run.train.seed)?;
    let mut model = FlowMatching::new(&config, &data.info(), Device::Cpu)?;
    model.load(Path::new(&args[0]))?;
    let x = data.test.x.f_narrow(0, 0, n.min(data.test.x.size()[0]))?;
    let dims = x.numel() as f64 / x.size()[0] as f64;
    for tol in &args[3..] {
        let tol: f64 = tol
            .parse()
            .map_err(|_| gm_core::GmError::config("TOLERANCE", format!("not a number: {tol}")))?;
        let probability_flow = ProbabilityFlowConfig {
            ode: OdeConfig::adaptive(tol, tol),
            ..config.likelihood.clone()
        };
        gm_core::device::seed_torch(1);
        let started = std::time::Instant::now();
        let out = gm_core::tch::no_grad(|| {
            model.flow_log_density(&x, None, &probability_flow, WeightChoice::Ema)
        })?;
        let nll = out.log_density.f_neg()?;
        let mean = nll.f_mean(Kind::Double)?.f_double_value(&[])?;
        let se = nll.f_std(true)?.f_double_value(&[])? / (nll.size()[0] as f64).sqrt();
        let probe_se = out
            .standard_error
            .map(|s| s.f_mean(Kind::Double).and_then(|m| m.f_double_value(&[])))
            .transpose()?;
        println!(
            "tolerance {tol:e}: NLL {mean:.2} ± {se:.2} nats ({:.4} bits/dim), mean probe s.e. {}, {} evaluations, {:.0} s",
            mean / (dims * std::f64::consts::LN_2),
            probe_se.map(|s| format!("{s:.2}")).unwrap_or_else(|| "–".into()),
            out.evaluations,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
