//! The autoregressive code prior: a normalised distribution over code grids, fitted to codes,
//! and attached to a VQ-VAE, which can then be sampled, scored and saved with its prior.

mod common;

use common::{all_points, single_thread};
use gm_autoregressive::{
    default_prior_config, AutoregressiveCodePrior, NetworkConfig, PixelCnnConfig,
};
use gm_core::code_prior::CodePrior;
use gm_core::model::GenerativeModel;
use gm_core::tch::{Device, Kind, Tensor};
use gm_vae::{VqVae, VqVaeConfig};

fn tiny_prior(grid: &[i64], codes: i64) -> AutoregressiveCodePrior {
    let mut c = default_prior_config();
    c.network = NetworkConfig::Pixelcnn(PixelCnnConfig {
        channels: 8,
        blocks: 1,
        first_kernel: 3,
        kernel: 3,
        head_channels: 8,
    });
    AutoregressiveCodePrior::new(&c, grid, codes, Device::Cpu).unwrap()
}

/// Over every 2×2 grid of 3 codes the prior's probabilities sum to 1, before and after
/// fitting; fitted to grids of entropy ln 2 its NLL approaches ln 2; samples are valid grids.
#[test]
fn the_prior_is_normalised_and_learns() {
    single_thread();
    gm_core::tch::manual_seed(0);
    let mut prior = tiny_prior(&[2, 2], 3);
    let grids = all_points(4, 3).to_kind(Kind::Int64).reshape([81, 2, 2]);
    let total = |p: &AutoregressiveCodePrior| {
        p.log_prob(&grids)
            .unwrap()
            .to_kind(Kind::Double)
            .exp()
            .sum(Kind::Double)
            .double_value(&[])
    };
    assert!((total(&prior) - 1.0).abs() < 1e-5);
    // Codes mostly 0 with the last cell copying the first.
    let first = Tensor::randint(2, [256], (Kind::Int64, Device::Cpu));
    let codes = Tensor::stack(
        &[&first, &first.zeros_like(), &first.zeros_like(), &first],
        1,
    )
    .reshape([256, 2, 2]);
    let before = -prior
        .log_prob(&codes)
        .unwrap()
        .mean(Kind::Double)
        .double_value(&[]);
    prior.fit(&codes, 400, 64).unwrap();
    let after = -prior
        .log_prob(&codes)
        .unwrap()
        .mean(Kind::Double)
        .double_value(&[]);
    // The grids' entropy is ln 2 = 0.69 nats (the first cell; the others follow from it).
    assert!(
        after < 1.2,
        "fitting did not approach ln 2: {before} → {after}"
    );
    assert!((total(&prior) - 1.0).abs() < 1e-5);
    let s = prior.sample(16).unwrap();
    assert_eq!(s.size(), [16, 2, 2]);
    assert!(s.min().int64_value(&[]) >= 0 && s.max().int64_value(&[]) < 3);
    // Bad codes are refused.
    assert!(prior
        .log_prob(&Tensor::full([1, 2, 2], 3, (Kind::Int64, Device::Cpu)))
        .is_err());
    assert!(prior
        .log_prob(&Tensor::zeros([1, 3, 2], (Kind::Int64, Device::Cpu)))
        .is_err());
}

/// A VQ-VAE with the prior fitted to its codes samples digits, has a finite bound that
/// includes the prior's ln p(codes), and saves and loads the prior with its weights.
#[test]
fn a_vq_vae_samples_and_scores_through_the_prior() {
    single_thread();
    let text = "data_shape = [1, 28, 28]\nnum_latents = 4\n[encoder]\nkind = \"conv\"\nchannels = [8, 8]\nhidden = []\n[decoder]\nkind = \"conv\"\nchannels = [8, 8]\nhidden = []\n[likelihood]\nkind = \"bernoulli\"\n[quantizer]\nnum_codes = 8\ncode_dim = 4\n";
    let c: VqVaeConfig = gm_core::train::Config::from_toml_str(text).unwrap();
    // A VQ-VAE with a fresh (unfitted) prior attached: what a checkpoint with a prior loads into.
    let with_fresh_prior = |seed: i64| {
        gm_core::tch::manual_seed(seed);
        let mut vq = VqVae::new(&c, Device::Cpu).unwrap();
        let grid = vq.code_grid().to_vec();
        vq.set_prior(Box::new(tiny_prior(&grid, vq.num_codes())))
            .unwrap();
        vq
    };
    let x = gm_core::testing::example_data(&gm_core::data::named_info("mnist_binary").unwrap(), 32)
        .reshape([32, 784]);
    gm_core::tch::manual_seed(1);
    let mut vq = VqVae::new(&c, Device::Cpu).unwrap();
    let grid = vq.code_grid().to_vec();
    let codes = vq.encode_codes(&x).unwrap();
    assert_eq!(codes.size()[1..], grid[..]);
    let mut prior = tiny_prior(&grid, vq.num_codes());
    prior.fit(&codes, 20, 16).unwrap();
    let prior_ll = prior.log_prob(&codes).unwrap();
    vq.set_prior(Box::new(prior)).unwrap();
    let samples = vq.sample(3).unwrap();
    assert_eq!(samples.size()[0], 3);
    let ll = vq.log_likelihood(&x).unwrap().unwrap();
    assert!(bool::try_from(ll.isfinite().all()).unwrap());
    // The bound is the decoder term plus ln p(codes): below the prior's own term.
    assert!(bool::try_from(ll.le_tensor(&(prior_ll.to_kind(ll.kind()) + 1e-3)).all()).unwrap());
    let dir = std::env::temp_dir().join(format!("gm-ar-prior-{}", std::process::id()));
    let path = dir.join("vq.safetensors");
    vq.save(&path).unwrap();
    let mut other = with_fresh_prior(7);
    other.load(&path).unwrap();
    let again = other.log_likelihood(&x).unwrap().unwrap();
    assert!(
        ll.allclose(&again, 1e-6, 1e-5, false),
        "the prior did not travel with the checkpoint"
    );
    let _ = std::fs::remove_dir_all(dir);
}
