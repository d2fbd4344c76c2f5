//! The README's example, kept compiling: `cargo run --release -p gm-flow --example quickstart`.

use gm_core::data::toy::ToyDataset;
use gm_core::model::{Batch, GenerativeModel};
use gm_core::tch::{Device, Kind};
use gm_flow::{shipped_config, FlowModel};

fn main() -> gm_core::Result<()> {
    let run = shipped_config("nsf_toy")?; // configs/nsf_toy.toml
    let mut flow = FlowModel::new(&run.model, &[2], Device::Cpu)?;
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
    println!(
        "test NLL {nll:.3} nats; samples: {:?}",
        flow.sample(4)?.size()
    );
    Ok(())
}
