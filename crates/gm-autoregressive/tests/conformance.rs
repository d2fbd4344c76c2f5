//! gm-core's conformance harness on every shipped config (shrunk), the conditional Gated
//! PixelCNN, an order-agnostic MADE and the 256-level outputs; and the data each spec refuses.

mod common;

use common::*;
use gm_autoregressive::{AutoregressiveConfig, NetworkConfig, OutputConfig, SHIPPED_CONFIGS};
use gm_core::data::{named_info, ValueKind};
use gm_core::spec::DataInfo;
use gm_core::testing::{assert_refuses_data, check_conformance_on};

#[test]
fn every_shipped_config_conforms() {
    single_thread();
    for (name, _) in SHIPPED_CONFIGS {
        let (mut c, dataset) = shipped(name);
        shrink(&mut c);
        check_conformance_on(name, &c, &dataset, 16, 4, 2);
    }
}

#[test]
fn conditional_grey_and_order_agnostic_variants_conform() {
    single_thread();
    let (mut gated, _) = shipped("gated_pixelcnn_mnist");
    shrink(&mut gated);
    gated.conditional = true;
    check_conformance_on("conditional gated", &gated, "mnist_binary", 16, 4, 2);
    let mut grey = gated.clone();
    grey.conditional = false;
    grey.output = OutputConfig::Categorical;
    check_conformance_on("gated on grey digits", &grey, "mnist_grey", 8, 2, 2);
    let (mut made, _) = shipped("made_mnist");
    shrink(&mut made);
    if let NetworkConfig::Made(m) = &mut made.network {
        m.orderings = 3;
    }
    check_conformance_on("order-agnostic made", &made, "mnist_binary", 16, 4, 2);
}

#[test]
fn specs_refuse_data_they_cannot_describe() {
    let toy = named_info("two_moons").unwrap();
    let grey = named_info("mnist_grey").unwrap();
    let binary = named_info("mnist_binary").unwrap();
    let (pixelcnn, _) = shipped("pixelcnn_mnist");
    let mut pixelcnn_auto = pixelcnn.clone();
    pixelcnn_auto.output = OutputConfig::Auto;
    assert_refuses_data(&pixelcnn_auto, &toy, "network.kind");
    assert_refuses_data(&pixelcnn, &grey, "output.kind"); // Bernoulli on 256 levels
    let (gated, _) = shipped("gated_pixelcnn_mnist");
    let colour = DataInfo::new(&[3, 8, 8], ValueKind::Discrete { levels: 2 }, 0);
    assert_refuses_data(&gated, &colour, "network.kind");
    let (nade, _) = shipped("nade_mnist");
    let mut nade_auto = nade.clone();
    nade_auto.output = OutputConfig::Auto;
    assert_refuses_data(&nade_auto, &grey, "network.kind");
    let (made_toy, _) = shipped("made_toy");
    assert_refuses_data(&made_toy, &binary, "output.kind");
    let (mut made, _) = shipped("made_mnist");
    made.output = OutputConfig::MixtureOfGaussians { components: 3 };
    assert_refuses_data(&made, &binary, "output.kind");
    let conditional_made = AutoregressiveConfig {
        conditional: true,
        ..shipped("made_mnist").0
    };
    assert_refuses_data(&conditional_made, &binary, "conditional");
    assert_refuses_data(&conditional_made, &toy, "conditional");
}
