//! Density estimation on the 2D toy sets: the gap between each flow's test NLL and the data's
//! true entropy (from gm-core's exact densities), in nats.
//!
//! ```text
//! eval "$(cargo xtask env)"
//! cargo run --release -p gm-flow --example flow_toy -- --steps 5000
//! ```
//! Writes `target/gm-flow/toy.json` and a density heat map per (model, data set).

use clap::Parser;
use gm_core::data::load_named;
use gm_core::data::toy::ToyDataset;
use gm_core::model::GenerativeModel;
use gm_core::spec::Registry;
use gm_core::tch::{Device, Kind, Tensor};
use gm_core::train::Trainer;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser)]
struct Args {
    /// Run configs (TOML); default: the three toy configs shipped with gm-flow.
    #[arg(long, num_args = 1..)]
    configs: Vec<PathBuf>,
    /// Toy sets to train on.
    #[arg(long, num_args = 1.., default_values_t = ["checkerboard".to_string(), "eight_gaussians".to_string(), "two_moons".to_string(), "two_spirals".to_string()])]
    datasets: Vec<String>,
    /// Override the number of training steps (the spec rescales its schedule).
    #[arg(long)]
    steps: Option<u64>,
    /// Training examples drawn once per data set.
    #[arg(long, default_value_t = 100_000)]
    train_size: i64,
    #[arg(long, default_value_t = 20_000)]
    test_size: i64,
    #[arg(long, default_value = "target/gm-flow")]
    out: PathBuf,
}

fn main() -> gm_core::Result<()> {
    let args = Args::parse();
    let device = gm_core::device::default_device()?;
    let mut registry = Registry::new();
    gm_flow::register(&mut registry);
    let configs = if args.configs.is_empty() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("configs");
        ["realnvp_toy.toml", "maf_toy.toml", "nsf_toy.toml"]
            .iter()
            .map(|f| dir.join(f))
            .collect()
    } else {
        args.configs.clone()
    };
    std::fs::create_dir_all(&args.out).map_err(|e| gm_core::GmError::io(&args.out, e))?;
    let mut rows = Vec::new();
    println!("| model | data set | test NLL (nats) | entropy (nats) | gap | steps | train s |");
    println!("|---|---|---|---|---|---|---|");
    for path in &configs {
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("flow")
            .trim_end_matches("_toy")
            .to_string();
        for dataset in &args.datasets {
            let mut run = registry.load_run(&path.to_string_lossy())?;
            run.dataset = dataset.clone();
            if let Some(steps) = args.steps {
                run = run.with_steps(steps)?;
            }
            run.validate()?;
            let data = load_named(
                dataset,
                device,
                args.train_size,
                args.test_size,
                run.train.seed,
            )?;
            gm_core::device::seed_everything(run.train.seed);
            let mut model = run.model.build(&data.info(), device)?;
            let started = Instant::now();
            let history = Trainer::new(run.train.clone())?.fit(
                model.as_mut(),
                &data.train.x,
                None,
                |step, losses| {
                    eprintln!("  {name}/{dataset} step {step}: {losses:?}");
                },
            )?;
            let train_seconds = started.elapsed().as_secs_f64();
            let test_nll = -model
                .log_likelihood(&data.test.x)?
                .expect("flows have likelihoods")
                .mean(Kind::Double)
                .double_value(&[]);
            let set: ToyDataset = dataset.parse()?;
            gm_core::device::seed_torch(12345);
            let (entropy, se) = set.entropy(200_000, device)?;
            let gap = test_nll - entropy;
            println!("| {name} | {dataset} | {test_nll:.4} | {entropy:.4} ± {se:.4} | {gap:.4} | {} | {train_seconds:.0} |", history.steps_done);
            write_heatmap(
                model.as_ref(),
                set,
                &args.out.join(format!("{name}_{dataset}.png")),
            )?;
            rows.push(serde_json::json!({
                "model": name, "dataset": dataset, "test_nll_nats": test_nll, "entropy_nats": entropy,
                "entropy_stderr": se, "gap_nats": gap, "steps": history.steps_done, "train_seconds": train_seconds,
                "parameters": model.num_parameters(),
            }));
        }
    }
    let json = serde_json::to_string_pretty(&rows).expect("serialisable");
    let out = args.out.join("toy.json");
    std::fs::write(&out, json).map_err(|e| gm_core::GmError::io(&out, e))?;
    eprintln!("wrote {}", out.display());
    Ok(())
}

/// The model density on the data set's box, as a grey-scale image (brighter is denser).
fn write_heatmap(
    model: &dyn GenerativeModel,
    set: ToyDataset,
    path: &std::path::Path,
) -> gm_core::Result<()> {
    let n = 160i64;
    let (lo, hi) = set.bounds();
    let axis = Tensor::linspace(lo, hi, n, (Kind::Float, Device::Cpu));
    let grid = Tensor::meshgrid_indexing(&[&axis, &axis], "xy");
    // Rows run top to bottom, so flip y.
    let pts = Tensor::stack(&[grid[0].reshape([-1]), grid[1].flip([0]).reshape([-1])], 1)
        .to_device(gm_core::device::default_device()?);
    let p = model
        .log_likelihood(&pts)?
        .expect("exact")
        .exp()
        .to_device(Device::Cpu);
    let p = &p / p.max().clamp_min(1e-12);
    let bytes: Vec<u8> = Vec::<f32>::try_from(&p)
        .expect("float")
        .iter()
        .map(|v| (v.clamp(0.0, 1.0) * 255.0) as u8)
        .collect();
    image::GrayImage::from_raw(n as u32, n as u32, bytes)
        .expect("n*n bytes")
        .save(path)
        .map_err(|e| gm_core::GmError::io(path, std::io::Error::other(e.to_string())))
}
