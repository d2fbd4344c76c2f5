//! The multi-scale (Glow-style) flow on MNIST, two ways:
//! (a) 8-bit grey digits, uniform dequantisation: bits/dim on the 1,000 test digits;
//! (b) binarised digits (the protocol every family shares): the dequantised flow gives an upper
//!     bound on the discrete NLL, in nats, comparable with VAEs and autoregressive models.
//!
//! ```text
//! cargo xtask data && eval "$(cargo xtask env)"
//! cargo run --release -p gm-flow --example flow_mnist -- --steps 3000
//! ```
//! Checkpoints go to `target/gm-flow/mnist_*/`, so an interrupted run resumes where it stopped.

use clap::Parser;
use gm_core::bounds::bits_per_dim;
use gm_core::data::load_named;
use gm_core::data::ValueKind;
use gm_core::spec::Registry;
use gm_core::tch::{Device, Kind, Tensor};
use gm_core::train::Trainer;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser)]
struct Args {
    #[arg(long, num_args = 1..)]
    configs: Vec<PathBuf>,
    #[arg(long)]
    steps: Option<u64>,
    /// Dequantisation draws averaged per test digit.
    #[arg(long, default_value_t = 4)]
    eval_draws: i64,
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
        vec![
            dir.join("glow_mnist_grey.toml"),
            dir.join("glow_mnist_binary.toml"),
        ]
    } else {
        args.configs.clone()
    };
    for path in configs {
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("glow")
            .to_string();
        let mut run = registry.load_run(&path.to_string_lossy())?;
        if let Some(steps) = args.steps {
            run = run.with_steps(steps)?;
        }
        let data = load_named(&run.dataset, device, 0, 0, run.train.seed)?;
        gm_core::device::seed_everything(run.train.seed);
        let mut model = run.model.build(&data.info(), device)?;
        let dir = args.out.join(&name);
        let started = Instant::now();
        let history = Trainer::new(run.train.clone())?
            .with_checkpoint(dir.join("checkpoint.safetensors"))
            .fit(model.as_mut(), &data.train.x, None, |step, losses| {
                eprintln!("  {name} step {step}: {losses:?}")
            })?;
        let wall = started.elapsed().as_secs_f64();
        // Average the bound over several dequantisation draws, in batches.
        gm_core::device::seed_torch(2024);
        let mut total = 0.0;
        let n = data.test.x.size()[0];
        for _ in 0..args.eval_draws {
            for chunk in data.test.x.split(250, 0) {
                total += model
                    .log_likelihood(&chunk)?
                    .expect("bound")
                    .sum(Kind::Double)
                    .double_value(&[]);
            }
        }
        let nll = -total / (n * args.eval_draws) as f64;
        let dims = 784;
        let levels = match data.values {
            ValueKind::Discrete { levels } => levels,
            ValueKind::Continuous => 0,
        };
        println!(
            "{name}: test NLL bound {nll:.2} nats = {:.4} bits/dim (levels {levels}), {} steps, {:.0} s training this process, {} parameters",
            bits_per_dim(nll, dims),
            history.steps_done,
            wall,
            model.num_parameters()
        );
        let samples = model
            .sample(64)?
            .to_device(Device::Cpu)
            .to_kind(Kind::Float)
            / (levels.max(2) - 1) as f64;
        write_grid(
            &samples.reshape([64, 28, 28]),
            8,
            &args.out.join(format!("{name}_samples.png")),
        )?;
    }
    Ok(())
}

/// Writes `[n, 28, 28]` images in [0, 1] as a grid with `cols` columns.
fn write_grid(images: &Tensor, cols: i64, path: &std::path::Path) -> gm_core::Result<()> {
    let n = images.size()[0];
    let rows = (n + cols - 1) / cols;
    let (h, w) = (28u32, 28u32);
    let mut img = image::GrayImage::new(w * cols as u32, h * rows as u32);
    let values = Vec::<f32>::try_from(&images.clamp(0.0, 1.0).reshape([-1])).expect("float");
    for k in 0..n as usize {
        let (r, c) = ((k as i64 / cols) as u32, (k as i64 % cols) as u32);
        for y in 0..h {
            for x in 0..w {
                let v = values[k * 784 + (y * w + x) as usize];
                img.put_pixel(c * w + x, r * h + y, image::Luma([(v * 255.0) as u8]));
            }
        }
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| gm_core::GmError::io(parent, e))?;
    }
    img.save(path)
        .map_err(|e| gm_core::GmError::io(path, std::io::Error::other(e.to_string())))
}
