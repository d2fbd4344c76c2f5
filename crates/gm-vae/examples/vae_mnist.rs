//! Trains a VAE on MNIST's 9,000 training digits and reports the test NLL by importance
//! sampling, then writes reconstructions, samples and interpolations as PNG grids.
//!
//! ```text
//! cargo run --release -p gm-vae --example vae_mnist -- [--arch mlp|conv|grey] [--steps N]
//!     [--config FILE] [--eval-k K] [--eval-examples N] [--out DIR] [--seed S] [--threads T]
//! ```
//!
//! `mlp` and `conv` use binarized digits and a Bernoulli decoder (NLL in nats); `grey` uses
//! the 8-bit digits with a discretized-logistic decoder (NLL in nats and bits per dimension).

use clap::Parser;
use gm_core::bounds::bits_per_dim;
use gm_core::data::load_named;
use gm_core::model::GenerativeModel;
use gm_core::spec::Registry;
use gm_core::tch::{Device, Kind, Tensor};
use gm_core::train::Trainer;
use gm_vae::{Vae, VaeConfig};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(about = "Train a VAE on MNIST and report its test NLL")]
struct Args {
    /// Which ready config to use: mlp, conv (binarized) or grey (8-bit, discretized logistic).
    #[arg(long, default_value = "mlp")]
    arch: String,
    /// A config file instead of the ready one for --arch.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Training steps (overrides the config; the spec rescales its schedule and KL warm-up).
    #[arg(long)]
    steps: Option<u64>,
    /// Importance samples per test digit.
    #[arg(long, default_value_t = 1000)]
    eval_k: i64,
    /// Number of test digits to evaluate (at most 1,000).
    #[arg(long, default_value_t = 1000)]
    eval_examples: i64,
    /// Where the PNG grids go.
    #[arg(long, default_value = "target/gm-vae")]
    out: PathBuf,
    #[arg(long)]
    seed: Option<u64>,
    /// libtorch CPU threads (default: libtorch's choice). On a machine shared with other busy
    /// processes, 1 avoids threads spinning while they wait for each other.
    #[arg(long)]
    threads: Option<i32>,
}

fn main() -> gm_core::Result<()> {
    let args = Args::parse();
    let config_path = args.config.clone().unwrap_or_else(|| {
        let name = match args.arch.as_str() {
            "conv" => "mnist_conv.toml",
            "grey" => "mnist_grey_logistic.toml",
            _ => "mnist_mlp.toml",
        };
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("configs")
            .join(name)
    });
    let mut registry = Registry::new();
    gm_vae::register(&mut registry);
    let mut run = registry.load_run(&config_path.to_string_lossy())?;
    if let Some(steps) = args.steps {
        run = run.with_steps(steps)?;
    }
    if let Some(seed) = args.seed {
        run.train.seed = seed;
    }
    run.validate()?;
    let model_config: VaeConfig = run.model_config()?;
    if let Some(threads) = args.threads {
        gm_core::tch::set_num_threads(threads.max(1));
    }
    let device = gm_core::device::default_device()?;
    println!("config {}", config_path.display());
    println!(
        "device {device:?}, {} torch threads",
        gm_core::tch::get_num_threads()
    );

    let data = load_named(&run.dataset, device, 20_000, 5_000, run.train.seed)?;
    let flat = |x: &Tensor| x.reshape([x.size()[0], -1]);
    let (train, test_all) = (flat(&data.train.x), flat(&data.test.x));
    let mut config = model_config.clone();
    config.data_shape = vec![train.size()[1]];
    if let [c, h, w] = model_config.data_shape[..] {
        config.data_shape = vec![c, h, w];
    }
    gm_core::device::seed_everything(run.train.seed);
    let mut vae = Vae::new(&config, device)?;
    println!(
        "{} parameters; {} training and {} test examples",
        vae.num_parameters(),
        train.size()[0],
        test_all.size()[0]
    );

    let started = Instant::now();
    let history =
        Trainer::new(run.train.clone())?.fit(&mut vae, &train, None, |step, values| {
            let text: Vec<String> = values.iter().map(|(k, v)| format!("{k} {v:.3}")).collect();
            println!("step {step:>6}  {}", text.join("  "));
        })?;
    let train_seconds = started.elapsed().as_secs_f64();
    println!(
        "trained {} steps in {train_seconds:.1} s",
        history.steps_done
    );

    let n_test = args.eval_examples.clamp(1, test_all.size()[0]);
    let test = test_all.narrow(0, 0, n_test);
    let started = Instant::now();
    let (nll, stderr) = evaluate(&mut vae, &test, args.eval_k)?;
    let eval_seconds = started.elapsed().as_secs_f64();
    let (elbo_nll, _) = evaluate(&mut vae, &test, 1)?;
    println!(
        "test NLL (IWAE, K = {}) on {n_test} digits: {nll:.2} ± {stderr:.2} nats  (K = 1 ELBO: {elbo_nll:.2} nats); evaluation took {eval_seconds:.1} s",
        args.eval_k
    );
    if config.likelihood.levels().is_some() {
        println!(
            "test NLL in bits/dim: {:.4}",
            bits_per_dim(nll, test.size()[1] as usize)
        );
    }
    let train_subset = train.narrow(0, 0, n_test.min(1000));
    let (train_nll, _) = evaluate(&mut vae, &train_subset, 100)?;
    println!(
        "train NLL (IWAE, K = 100) on {} training digits: {train_nll:.2} nats",
        train_subset.size()[0]
    );

    if test.size()[1] != 784 {
        println!("not MNIST-shaped data: no image grids written");
        return Ok(());
    }
    write_images(
        &vae,
        &test,
        &args.out,
        &args.arch,
        config.likelihood.levels(),
    )?;
    println!(
        "wrote {0}/{1}_reconstructions.png, {0}/{1}_samples.png, {0}/{1}_interpolation.png",
        args.out.display(),
        args.arch
    );
    Ok(())
}

/// Mean test NLL in nats and its standard error, in batches of 100 digits.
fn evaluate(vae: &mut Vae, x: &Tensor, k: i64) -> gm_core::Result<(f64, f64)> {
    vae.net_mut().set_eval_samples(k)?;
    let mut parts = Vec::new();
    let n = x.size()[0];
    let mut start = 0;
    while start < n {
        let len = 100.min(n - start);
        parts.push(vae.log_likelihood(&x.narrow(0, start, len))?);
        start += len;
    }
    let ll = Tensor::cat(&parts, 0).to_kind(Kind::Double);
    let nll = -ll.mean(Kind::Double).double_value(&[]);
    let stderr = ll.std(true).double_value(&[]) / (n as f64).sqrt();
    Ok((nll, stderr))
}

/// Writes rows of 28x28 tiles with values in [0, 1] as a grey PNG.
fn save_grid(images: &Tensor, columns: i64, path: &Path) -> gm_core::Result<()> {
    let images = images
        .to_device(Device::Cpu)
        .to_kind(Kind::Float)
        .clamp(0.0, 1.0)
        .reshape([-1, 28, 28]);
    let n = images.size()[0];
    let rows = (n + columns - 1) / columns;
    let pad = 2;
    let (width, height) = (columns * (28 + pad) + pad, rows * (28 + pad) + pad);
    let values = Vec::<f32>::try_from(&images.reshape([-1])).map_err(gm_core::GmError::Torch)?;
    let mut canvas = image::GrayImage::from_pixel(width as u32, height as u32, image::Luma([64]));
    for i in 0..n {
        let (row, col) = (i / columns, i % columns);
        for y in 0..28 {
            for x in 0..28 {
                let v = values[(i * 784 + y * 28 + x) as usize];
                canvas.put_pixel(
                    (pad + col * (28 + pad) + x) as u32,
                    (pad + row * (28 + pad) + y) as u32,
                    image::Luma([(v * 255.0).round() as u8]),
                );
            }
        }
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| gm_core::GmError::io(parent, e))?;
    }
    canvas
        .save(path)
        .map_err(|e| gm_core::GmError::io(path, std::io::Error::other(e.to_string())))
}

fn write_images(
    vae: &Vae,
    test: &Tensor,
    out: &Path,
    arch: &str,
    levels: Option<i64>,
) -> gm_core::Result<()> {
    // Integer data are shown as fractions of the top level.
    let scale = levels.map(|l| (l - 1) as f64).unwrap_or(1.0);
    let shown = test.size()[0].min(16);
    let originals = test.narrow(0, 0, shown).reshape([shown, 784]);
    let reconstructions = vae.reconstruct(&originals)?.reshape([shown, 784]);
    let pairs = Tensor::cat(&[originals, reconstructions], 0) / scale;
    save_grid(
        &pairs,
        shown,
        &out.join(format!("{arch}_reconstructions.png")),
    )?;

    let samples = vae.net().sample_means_with(64, None)?.reshape([64, 784]) / scale;
    save_grid(&samples, 8, &out.join(format!("{arch}_samples.png")))?;

    let mut rows = Vec::new();
    for pair in 0..(test.size()[0] / 2).min(6) {
        let a = test.get(2 * pair);
        let b = test.get(2 * pair + 1);
        rows.push(vae.interpolate(&a, &b, 10)?.reshape([10, 784]));
    }
    if rows.is_empty() {
        return Ok(());
    }
    let grid = Tensor::cat(&rows, 0) / scale;
    save_grid(&grid, 10, &out.join(format!("{arch}_interpolation.png")))
}
