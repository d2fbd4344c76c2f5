//! The conformance harness of gm-core, run on every shipped VAE and VQ-VAE config (shrunk to a
//! tiny size), on a label-conditional VAE, and on a VQ-VAE with its code prior attached; plus
//! the data-space checks of the specs.

mod common;

use common::single_thread;
use gm_core::code_prior::UniformCodePrior;
use gm_core::data::ValueKind;
use gm_core::model::{GenerativeModel, LikelihoodKind};
use gm_core::spec::{DataInfo, ModelSpec, Registry};
use gm_core::tch::{Device, Kind, Tensor};
use gm_core::testing::{assert_refuses_data, check_conformance, example_data, ConformanceCase};
use gm_vae::{
    ContextConfig, LikelihoodConfig, NetworkConfig, VaeConfig, VqVae, VqVaeConfig, SHIPPED_CONFIGS,
};

fn shrink_network(net: &mut NetworkConfig) {
    match net {
        NetworkConfig::Mlp(m) => m.hidden = vec![16],
        NetworkConfig::Conv(c) => {
            c.channels = c.channels.iter().map(|_| 4).collect();
            c.hidden = c.hidden.iter().map(|_| 16).collect();
        }
    }
}

fn registry() -> Registry {
    let mut r = Registry::new();
    gm_vae::register(&mut r);
    r
}

fn case_for(name: &str, spec: &dyn ModelSpec, info: &DataInfo, x: &Tensor, labels: &Tensor) {
    check_conformance(&ConformanceCase {
        name,
        spec,
        data: info,
        x,
        labels: (info.classes > 0).then_some(labels),
        batch_size: 8,
        steps: 4,
    });
}

#[test]
fn every_shipped_vae_conforms() {
    single_thread();
    let registry = registry();
    for (name, _) in SHIPPED_CONFIGS {
        let run = registry.load_run(&format!("vae/{name}")).unwrap();
        let info = gm_core::data::named_info(&run.dataset).unwrap();
        let x = example_data(&info, 32);
        let labels = Tensor::randint(10, [32], (Kind::Int64, Device::Cpu));
        match run.family() {
            "vae" => {
                let mut c: VaeConfig = run.model_config().unwrap();
                shrink_network(&mut c.encoder);
                shrink_network(&mut c.decoder);
                c.latent_dim = c.latent_dim.min(4);
                c.eval_samples = 16;
                case_for(name, &c, &info, &x, &labels);
            }
            "vq_vae" => {
                let mut c: VqVaeConfig = run.model_config().unwrap();
                shrink_network(&mut c.encoder);
                shrink_network(&mut c.decoder);
                c.quantizer.num_codes = 8;
                c.quantizer.code_dim = 4;
                case_for(name, &c, &info, &x, &labels);
            }
            other => panic!("{name}: unexpected family {other}"),
        }
    }
}

/// A label-conditional VAE requires its labels and refuses out-of-range ones.
#[test]
fn conditional_vae_conforms() {
    single_thread();
    let mut c: VaeConfig = registry()
        .load_run("vae/mnist_mlp")
        .unwrap()
        .model_config()
        .unwrap();
    shrink_network(&mut c.encoder);
    shrink_network(&mut c.decoder);
    c.latent_dim = 4;
    c.eval_samples = 16;
    c.context = ContextConfig::Labels { classes: 10 };
    let info = gm_core::data::named_info("mnist_binary").unwrap();
    let x = example_data(&info, 32);
    let labels = Tensor::randint(10, [32], (Kind::Int64, Device::Cpu));
    case_for("conditional mlp VAE", &c, &info, &x, &labels);
}

/// A VQ-VAE with a uniform prior: the prior travels in the checkpoint, and a checkpoint with a
/// prior does not load into a model without one (or the other way round).
#[test]
fn vq_vae_saves_its_prior() {
    single_thread();
    let mut c: VqVaeConfig = registry()
        .load_run("vae/vq_vae_mnist")
        .unwrap()
        .model_config()
        .unwrap();
    shrink_network(&mut c.encoder);
    shrink_network(&mut c.decoder);
    c.quantizer.num_codes = 8;
    c.quantizer.code_dim = 4;
    let with_prior = |seed: i64| {
        gm_core::tch::manual_seed(seed);
        let mut m = VqVae::new(&c, Device::Cpu).unwrap();
        let grid = m.code_grid().to_vec();
        m.set_prior(Box::new(UniformCodePrior::new(&grid, 8, Device::Cpu)))
            .unwrap();
        m
    };
    let a = with_prior(1);
    assert_eq!(a.likelihood_kind(), LikelihoodKind::LowerBound);
    let dir = std::env::temp_dir().join(format!("gm-vq-prior-{}", std::process::id()));
    let path = dir.join("vq.safetensors");
    a.save(&path).unwrap();
    let mut b = with_prior(2);
    b.load(&path).unwrap();
    let x = example_data(&gm_core::data::named_info("mnist_binary").unwrap(), 4).reshape([4, 784]);
    gm_core::tch::manual_seed(5);
    let la = a.log_likelihood(&x).unwrap().unwrap();
    gm_core::tch::manual_seed(5);
    let lb = b.log_likelihood(&x).unwrap().unwrap();
    assert!(la.equal(&lb));
    gm_core::tch::manual_seed(3);
    let mut bare = VqVae::new(&c, Device::Cpu).unwrap();
    let err = bare.load(&path).unwrap_err().to_string();
    assert!(err.contains("set_prior"), "{err}");
    let no_prior = dir.join("bare.safetensors");
    bare.save(&no_prior).unwrap();
    let err = with_prior(4).load(&no_prior).unwrap_err().to_string();
    assert!(err.contains("uniform code prior"), "{err}");
    // A prior over other codes is refused when it is attached.
    let mut other = VqVae::new(&c, Device::Cpu).unwrap();
    let grid = other.code_grid().to_vec();
    assert!(other
        .set_prior(Box::new(UniformCodePrior::new(&grid, 9, Device::Cpu)))
        .is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn vae_specs_refuse_data_they_cannot_describe() {
    let registry = registry();
    let mlp = registry.load_run("vae/mnist_mlp").unwrap().model;
    // A Bernoulli decoder refuses grey data and real values.
    assert_refuses_data(
        mlp.as_ref(),
        &gm_core::data::named_info("mnist_grey").unwrap(),
        "model.likelihood",
    );
    assert_refuses_data(
        mlp.as_ref(),
        &DataInfo::new(&[1, 28, 28], ValueKind::Continuous, 10),
        "model.likelihood",
    );
    assert_refuses_data(
        mlp.as_ref(),
        &DataInfo::new(&[10], ValueKind::Discrete { levels: 2 }, 0),
        "model.data_shape",
    );
    let grey = registry.load_run("vae/mnist_grey_logistic").unwrap().model;
    assert_refuses_data(
        grey.as_ref(),
        &gm_core::data::named_info("mnist_binary").unwrap(),
        "model.likelihood",
    );
    let conv = registry.load_run("vae/mnist_conv").unwrap().model;
    assert_refuses_data(
        conv.as_ref(),
        &DataInfo::new(&[784], ValueKind::Discrete { levels: 2 }, 10),
        "convolutional",
    );
    let vq = registry.load_run("vae/vq_vae_mnist").unwrap().model;
    assert_refuses_data(
        vq.as_ref(),
        &gm_core::data::named_info("mnist_grey").unwrap(),
        "model.likelihood",
    );
    let toy = registry.load_run("vae/toy_two_moons").unwrap().model;
    assert_refuses_data(
        toy.as_ref(),
        &DataInfo::new(&[2], ValueKind::Discrete { levels: 2 }, 0),
        "model.likelihood",
    );
    assert_refuses_data(
        toy.as_ref(),
        &gm_core::data::named_info("mnist_binary").unwrap(),
        "model.data_shape",
    );
    let conditional = VaeConfig {
        context: ContextConfig::Labels { classes: 3 },
        likelihood: LikelihoodConfig::Bernoulli,
        ..Default::default()
    };
    assert_refuses_data(
        &conditional,
        &gm_core::data::named_info("mnist_binary").unwrap(),
        "context.classes",
    );
}
