//! The README's example, kept compiling: `cargo run --release -p gm-flow --example quickstart`.

use gm_core::data::toy::ToyDataset;
use gm_core::data::ValueKind;
use gm_core::model::{Batch, SampleOptions};
use gm_core::spec::{DataInfo, Registry};
use gm_core::tch::{Device, Kind};

fn main() -> gm_core::Result<()> {
    let mut registry = Registry::new();
    gm_flow::register(&mut registry);
    let run = registry.load_run("flow/nsf_toy")?; // configs/nsf_toy.toml
    let data = DataInfo::new(&[2], ValueKind::Continuous, 0);
    let mut flow = run.model.build(&data, Device::Cpu)?;
    for _ in 0..500 {
        let x = ToyDataset::TwoMoons.sample(512, Device::Cpu)?;
        flow.train_step(&Batch::new(x))?;
    }
    let test = ToyDataset::TwoMoons.sample(10_000, Device::Cpu)?;
    let nll = -flow
        .log_likelihood(&test)?
        .unwrap()
        .mean(Kind::Double)
        .double_value(&[]);
    let cooler = flow.sample_with(4, &SampleOptions::new().temperature(0.8).seed(7))?;
    println!("test NLL {nll:.3} nats; samples: {:?}", cooler.size());
    Ok(())
}
