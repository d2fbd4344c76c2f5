//! The conformance harness of gm-core on every shipped GAN config (shrunk to a tiny width),
//! and the data-space checks of the spec.

mod common;

use common::{registry, shipped, shrink, single_thread};
use gm_core::data::ValueKind;
use gm_core::spec::DataInfo;
use gm_core::testing::check_conformance_on;
use gm_core::testing::{assert_refuses_data, check_conformance, example_data, ConformanceCase};
use gm_gan::{DiscriminatorConfig, GanConfig, GeneratorConfig, SHIPPED_CONFIGS};

#[test]
fn every_shipped_gan_conforms() {
    single_thread();
    let registry = registry();
    for (name, _) in SHIPPED_CONFIGS {
        let run = registry.load_run(&format!("gan/{name}")).unwrap();
        assert_eq!(run.family(), "gan");
        let mut c: GanConfig = run.model_config().unwrap();
        shrink(&mut c);
        check_conformance_on(name, &c, &run.dataset, 32, 8, 4);
    }
}

/// Binary digits (values 0/1) with an MLP GAN and every loss and regulariser combination a
/// config can name, so each code path passes the laws (resume included: the penalties draw
/// their own random numbers).
#[test]
fn every_loss_and_regularizer_conforms_on_binary_digits() {
    single_thread();
    let info = gm_core::data::named_info("mnist_binary").unwrap();
    let x = example_data(&info, 32);
    for (loss, reg) in [
        ("minimax", "kind = \"none\""),
        ("least_squares", "kind = \"r1\"\nweight = 1.0"),
        ("hinge", "kind = \"gradient_penalty\"\nweight = 1.0"),
    ] {
        let text = format!(
            "latent_dim = 4\nloss = \"{loss}\"\nn_critic = 2\ndiversity_batch = 4\n[regularizer]\n{reg}\n[generator]\nkind = \"mlp\"\nhidden = [8]\n[discriminator]\nkind = \"mlp\"\nhidden = [8]\nspectral_norm = true\n"
        );
        let c: GanConfig = gm_core::train::Config::from_toml_str(&text).unwrap();
        check_conformance(&ConformanceCase {
            name: &format!("{loss} with {reg}"),
            spec: &c,
            data: &info,
            x: &x,
            labels: None,
            batch_size: 8,
            steps: 4,
        });
    }
}

#[test]
fn specs_refuse_data_they_cannot_describe() {
    let (mut dcgan, _) = shipped("mnist_dcgan");
    shrink(&mut dcgan);
    let toy = gm_core::data::named_info("eight_gaussians").unwrap();
    assert_refuses_data(&dcgan, &toy, "generator.kind");
    dcgan.generator = GeneratorConfig::Mlp {
        hidden: vec![8],
        activation: Default::default(),
    };
    assert_refuses_data(&dcgan, &toy, "discriminator.kind");
    dcgan.discriminator = DiscriminatorConfig::Mlp {
        hidden: vec![8],
        spectral_norm: false,
    };
    dcgan.conditional = true;
    assert_refuses_data(&dcgan, &toy, "conditional");
    // Images whose sides are not divisible by 4.
    let (c, _) = shipped("mnist_dcgan");
    let odd = DataInfo::new(&[1, 30, 30], ValueKind::Discrete { levels: 256 }, 0);
    assert_refuses_data(&c, &odd, "divisible by 4");
}
