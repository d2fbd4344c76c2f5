//! Family `vq_vae_prior`: a VQ-VAE and its autoregressive code prior in one two-phase run.

use gm_autoregressive::{NetworkConfig, PixelCnnConfig};
use gm_core::model::GenerativeModel;
use gm_core::tch::{Device, Tensor};

/// The shipped `vq_vae_prior` run file at a small size: two phases, the first training the
/// VQ-VAE alone and the second the prior alone.
fn small_vq_vae_prior() -> gm_bench::vq_prior::VqVaePriorConfig {
    let run = gm_bench::suite::registry()
        .load_run("bench/vq_vae_prior_mnist")
        .unwrap();
    let mut c: gm_bench::vq_prior::VqVaePriorConfig = run.model_config().unwrap();
    c.vq_vae_steps = 2;
    c.vq_vae.quantizer.num_codes = 16;
    c.prior.network = NetworkConfig::Pixelcnn(PixelCnnConfig {
        channels: 8,
        blocks: 1,
        first_kernel: 3,
        kernel: 3,
        head_channels: 8,
    });
    c
}

/// The harness on the two-phase model; its resume check splits 4 steps at the phase change.
#[test]
fn vq_vae_prior_conforms() {
    gm_core::tch::set_num_threads(1);
    gm_core::testing::check_conformance_on(
        "vq_vae_prior",
        &small_vq_vae_prior(),
        "mnist_binary",
        16,
        4,
        4,
    );
}

/// Phase 1 changes the VQ-VAE's weights and not the prior's; phase 2 the prior's and not the
/// VQ-VAE's (codebook included). The phase follows the step budget, and a bad config names
/// its key.
#[test]
fn vq_vae_prior_trains_one_part_per_phase() {
    use gm_core::model::Batch;
    use gm_core::spec::{Budget, ModelSpec};
    use gm_core::train::config::Config;
    gm_core::tch::set_num_threads(1);
    gm_core::tch::manual_seed(3);
    let config = small_vq_vae_prior();
    let data = gm_core::data::named_info("mnist_binary").unwrap();
    let mut m = gm_bench::vq_prior::VqVaePrior::new(&config, &data, Device::Cpu).unwrap();
    let x = gm_core::testing::example_data(&data, 8);
    let snapshot = |m: &gm_bench::vq_prior::VqVaePrior| -> Vec<(String, Tensor)> {
        m.state()
            .into_iter()
            .filter(|(n, _)| !n.contains("adam.") && !n.contains("step"))
            .map(|(n, t)| (n, t.copy()))
            .collect()
    };
    let changed = |before: &[(String, Tensor)], after: &[(String, Tensor)], prior: bool| {
        before
            .iter()
            .zip(after)
            .filter(|((n, _), _)| n.starts_with("prior.") == prior)
            .any(|((_, a), (_, b))| !a.equal(b))
    };
    for (step, phase) in [(0, 1.0), (1, 1.0), (2, 2.0), (3, 2.0)] {
        assert_eq!(m.training_prior(), phase == 2.0, "step {step}");
        let before = snapshot(&m);
        let out = m.train_step(&Batch::new(x.shallow_clone())).unwrap();
        let reported = out.to_host(0).unwrap();
        assert!(
            reported.contains(&("phase".to_string(), phase)),
            "{reported:?}"
        );
        let after = snapshot(&m);
        assert_eq!(
            changed(&before, &after, false),
            phase == 1.0,
            "VQ-VAE, step {step}"
        );
        assert_eq!(
            changed(&before, &after, true),
            phase == 2.0,
            "prior, step {step}"
        );
    }
    // Half the budget: half the first phase, and the prior's schedule halves with it.
    let mut scaled = config.clone();
    scaled.scale_to_budget(&Budget::new(4, 2).unwrap());
    assert_eq!(scaled.vq_vae_steps, 1);
    match scaled.prior.lr_schedule {
        gm_core::train::LrSchedule::WarmupCosine { total_steps, .. } => {
            assert_eq!(total_steps, 1000)
        }
        other => panic!("the shipped prior's schedule changed kind: {other:?}"),
    }
    let mut bad = config.clone();
    bad.vq_vae_steps = 0;
    assert!(bad
        .validate()
        .unwrap_err()
        .to_string()
        .contains("vq_vae_steps"));
    let mut conditional = config.clone();
    conditional.prior.conditional = true;
    let e = gm_bench::vq_prior::VqVaePrior::new(&conditional, &data, Device::Cpu).unwrap_err();
    assert!(e.to_string().contains("prior.conditional"), "{e}");
}
