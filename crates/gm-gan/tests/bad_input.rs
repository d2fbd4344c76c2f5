//! Bad configs and bad calls are errors that say what was wrong, never panics, and a refused
//! call leaves the model unchanged.

mod common;

use common::{registry, shipped, shrink, single_thread};
use gm_core::model::{Batch, GenerativeModel, SampleOptions};
use gm_core::tch::{Device, Kind, Tensor};
use gm_core::testing::{assert_states_identical, error_text, state_snapshot};
use gm_core::train::Config;
use gm_gan::{Gan, GanConfig};

#[test]
fn bad_gan_configs_name_the_key() {
    for (text, key) in [
        ("latent_dim = 0", "latent_dim"),
        ("n_critic = 0", "n_critic"),
        ("label_embedding = 0", "label_embedding"),
        ("diversity_batch = 1", "diversity_batch"),
        ("[regularizer]\nkind = \"r1\"\nweight = -1.0", "regularizer.weight"),
        ("[regularizer]\nkind = \"gradient_penalty\"\nweight = nan", "regularizer.weight"),
        ("[generator]\nkind = \"mlp\"\nhidden = [0]", "generator.hidden"),
        ("[discriminator]\nkind = \"dcgan\"\nchannels = 0", "discriminator.channels"),
        ("[generator_optimizer]\nlr = inf", "generator_optimizer.lr"),
        ("[discriminator_optimizer]\nbeta1 = 1.5", "discriminator_optimizer.beta1"),
        ("[ema]\ndecay = 1.0", "ema.decay"),
        ("[lr_schedule]\nkind = \"warmup_cosine\"\nwarmup_steps = 10\ntotal_steps = 5\nmin_ratio = 0.1", "lr_schedule.total_steps"),
        ("loss = \"wasserstain\"", "wasserstain"),
        ("n_critics = 5", "n_critics"),
    ] {
        let err = error_text(GanConfig::from_toml_str(text));
        assert!(err.contains(key), "{text}: {err}");
    }
    // In a run file the key is named with its section.
    let run = "family = \"gan\"\ndataset = \"eight_gaussians\"\n[model]\nn_critic = 0\n[train]\nsteps = 10\nbatch_size = 8\n";
    let err = error_text(registry().parse_run(run, "run.toml"));
    assert!(err.contains("model.n_critic"), "{err}");
}

#[test]
fn oversized_models_and_batches_are_refused_before_allocation() {
    single_thread();
    let info = gm_core::data::named_info("eight_gaussians").unwrap();
    let huge =
        GanConfig::from_toml_str("[generator]\nkind = \"mlp\"\nhidden = [2000000000, 2000000000]")
            .unwrap();
    let err = error_text(Gan::new(&huge, &info, Device::Cpu));
    assert!(err.contains("parameters"), "{err}");
    // A generator with one hidden layer of a million units: 4·10⁶ parameters, but 2·10⁶
    // activation values an example in a training step, so 1,200 examples pass the default
    // limit of 2³² values.
    let wide = GanConfig::from_toml_str(
        "latent_dim = 1\ndiversity_batch = 0\n[generator]\nkind = \"mlp\"\nhidden = [1000000]\n[discriminator]\nkind = \"mlp\"\nhidden = [8]",
    )
    .unwrap();
    let mut gan = Gan::new(&wide, &info, Device::Cpu).unwrap();
    let x = Tensor::zeros([1200, 2], (Kind::Float, Device::Cpu));
    let err = error_text(gan.train_step(&Batch::new(x)));
    let sample_err = error_text(gan.sample_with(3_000, &SampleOptions::new()));
    let z = Tensor::zeros([1], (Kind::Float, Device::Cpu));
    let path_err = error_text(gan.interpolate(&z, &z, 3_000, None, Default::default()));
    assert!(path_err.contains("activation values"), "{path_err}");
    assert!(err.contains("activation values"), "{err}");
    assert!(sample_err.contains("activation values"), "{sample_err}");
    assert_eq!(gan.updates(), (0, 0));
}

#[test]
fn bad_calls_are_refused_and_leave_the_model_unchanged() {
    single_thread();
    let (mut c, dataset) = shipped("mnist_dcgan_conditional");
    shrink(&mut c);
    let info = gm_core::data::named_info(&dataset).unwrap();
    gm_core::tch::manual_seed(0);
    let mut gan = Gan::new(&c, &info, Device::Cpu).unwrap();
    let before = state_snapshot(&gan);
    let x = Tensor::randint(256, [4, 1, 28, 28], (Kind::Float, Device::Cpu));
    let labels = Tensor::from_slice(&[0i64, 1, 2, 3]);
    for (what, batch, needle) in [
        (
            "flat images",
            Batch::with_labels(x.reshape([4, 784]), labels.shallow_clone()),
            "[batch, 1, 28, 28]",
        ),
        (
            "float labels",
            Batch::with_labels(x.shallow_clone(), labels.to_kind(Kind::Float)),
            "integers",
        ),
        (
            "too few labels",
            Batch::with_labels(x.shallow_clone(), labels.narrow(0, 0, 3)),
            "[4]",
        ),
        ("no labels", Batch::new(x.shallow_clone()), "labels"),
        (
            "values above 255",
            Batch::with_labels(&x + 1000.0, labels.shallow_clone()),
            "outside",
        ),
    ] {
        let err = error_text(gan.train_step(&batch));
        assert!(err.contains(needle), "{what}: {err}");
        assert_states_identical(&before, &state_snapshot(&gan), what);
    }
    for (what, options) in [
        ("n = 0", (0, SampleOptions::new())),
        (
            "a NaN temperature",
            (2, SampleOptions::new().temperature(f64::NAN)),
        ),
        (
            "a label out of range",
            (
                2,
                SampleOptions::new().labels(Tensor::from_slice(&[3i64, 10])),
            ),
        ),
    ] {
        assert!(gan.sample_with(options.0, &options.1).is_err(), "{what}");
    }
    // No likelihood, but the data are still checked.
    assert!(gan.log_likelihood(&x).unwrap().is_none());
    assert!(gan.log_likelihood(&x.reshape([4, 784])).is_err());
}
