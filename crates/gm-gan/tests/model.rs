//! The GAN model: training moves samples toward the data, the two players update on their own
//! schedule, sampling uses the weight average, conditional models follow their labels,
//! interpolation and the collapse signs.

mod common;

use common::{registry, shipped, shrink, single_thread};
use gm_core::data::toy::ToyDataset;
use gm_core::metrics::energy_distance;
use gm_core::model::{Batch, GenerativeModel, SampleOptions, WeightChoice};
use gm_core::spec::{DataInfo, ModelSpec};
use gm_core::tch::{Device, Kind, Tensor};
use gm_core::train::{TrainConfig, Trainer};
use gm_gan::{collapse_signs, CollapseSign, Gan, GanConfig};

fn toy_info() -> DataInfo {
    gm_core::data::named_info("eight_gaussians").unwrap()
}

/// A short run of the shipped toy GAN moves its samples toward the eight modes: the energy
/// distance to held-out data falls to under a third of its value at initialisation.
#[test]
fn training_on_eight_gaussians_moves_samples_to_the_data() {
    single_thread();
    let run = registry()
        .load_run("gan/toy_mlp")
        .unwrap()
        .with_steps(400)
        .unwrap();
    let info = toy_info();
    gm_core::tch::manual_seed(0);
    let mut model = run.model.build(&info, Device::Cpu).unwrap();
    gm_core::tch::manual_seed(1);
    let train = ToyDataset::EightGaussians
        .sample(20_000, Device::Cpu)
        .unwrap();
    let test = ToyDataset::EightGaussians
        .sample(1000, Device::Cpu)
        .unwrap();
    let score = |m: &dyn GenerativeModel| {
        let s = m.sample_with(1000, &SampleOptions::new().seed(3)).unwrap();
        energy_distance(&s, &test).unwrap()
    };
    let before = score(model.as_ref());
    let config = TrainConfig {
        steps: 400,
        batch_size: 128,
        seed: 0,
        log_every: 50,
        checkpoint_every: 0,
    };
    let history = Trainer::new(config)
        .unwrap()
        .fit(model.as_mut(), &train, None, |_, _| {})
        .unwrap();
    let after = score(model.as_ref());
    assert!(
        after < before / 3.0,
        "energy distance to the data went from {before:.4} to {after:.4}"
    );
    // The collapse statistics are reported at every logged step.
    let names: Vec<&str> = history.points[0]
        .1
        .iter()
        .map(|(n, _)| n.as_str())
        .collect();
    for stat in [
        "discriminator_loss",
        "real_accuracy",
        "fake_accuracy",
        "generator_loss",
        "diversity",
    ] {
        assert!(names.contains(&stat), "{stat} missing from {names:?}");
    }
}

#[test]
fn the_generator_updates_every_n_critic_steps_and_the_average_follows_it() {
    single_thread();
    let (mut c, _) = shipped("toy_wgan_gp");
    shrink(&mut c);
    c.n_critic = 5;
    // Average from the first generator update on (the shipped file follows the weights longer).
    c.ema = Some(gm_core::train::EmaConfig {
        decay: 0.9,
        start_step: 0,
    });
    let info = toy_info();
    gm_core::tch::manual_seed(0);
    let mut gan = Gan::new(&c, &info, Device::Cpu).unwrap();
    let x = ToyDataset::EightGaussians.sample(32, Device::Cpu).unwrap();
    let fixed = SampleOptions::new().seed(5);
    let raw = |g: &Gan| {
        g.sample_with(8, &SampleOptions::new().seed(5).weights(WeightChoice::Raw))
            .unwrap()
    };
    let before = raw(&gan);
    for step in 1..=12 {
        let out = gan.train_step(&Batch::new(x.shallow_clone())).unwrap();
        // A Wasserstein critic reports its gap and the generator's objective, not accuracies.
        let has = |name: &str| out.losses.iter().any(|(n, _)| n == name);
        let has_g = has("generator_objective");
        assert_eq!(
            has_g,
            step % 5 == 0,
            "step {step}: generator update {has_g}"
        );
        assert!(has("penalty") && has("critic_gap") && !has("real_accuracy"));
    }
    assert_eq!(gan.updates(), (12, 2));
    // Raw weights moved; the default (averaged) weights differ from the raw ones.
    assert!(!raw(&gan).equal(&before));
    assert!(!gan.sample_with(8, &fixed).unwrap().equal(&raw(&gan)));
}

fn mnist_grey_conditional() -> (GanConfig, DataInfo) {
    let (mut c, dataset) = shipped("mnist_dcgan_conditional");
    shrink(&mut c);
    (c, gm_core::data::named_info(&dataset).unwrap())
}

#[test]
fn a_conditional_gan_follows_its_labels_and_samples_lie_in_the_data_space() {
    single_thread();
    let (c, info) = mnist_grey_conditional();
    gm_core::tch::manual_seed(0);
    let gan = Gan::new(&c, &info, Device::Cpu).unwrap();
    assert_eq!(gan.label_classes(), 10);
    let with = |label: i64| {
        gan.sample_with(
            4,
            &SampleOptions::new().seed(1).labels(Tensor::full(
                [4],
                label,
                (Kind::Int64, Device::Cpu),
            )),
        )
        .unwrap()
    };
    let (three, five) = (with(3), with(5));
    assert_eq!(three.size(), [4, 1, 28, 28]);
    assert!(!three.equal(&five), "the label must change the samples");
    assert!(three.equal(&with(3)), "same seed and labels, same samples");
    // 8-bit data: integers in 0..=255.
    assert!(three.equal(&three.round()));
    assert!(three.min().double_value(&[]) >= 0.0 && three.max().double_value(&[]) <= 255.0);
    // Wrong labels are refused with what was expected.
    let msg = gan
        .sample_with(
            4,
            &SampleOptions::new().labels(Tensor::zeros([3], (Kind::Int64, Device::Cpu))),
        )
        .unwrap_err()
        .to_string();
    assert!(msg.contains("[4]"), "{msg}");
    let x = Tensor::randint(256, [4, 1, 28, 28], (Kind::Float, Device::Cpu));
    let mut gan = gan;
    let msg = gan.train_step(&Batch::new(x)).unwrap_err().to_string();
    assert!(msg.contains("labels"), "{msg}");
}

#[test]
fn interpolation_runs_from_one_noise_to_the_other() {
    single_thread();
    let (c, info) = mnist_grey_conditional();
    gm_core::tch::manual_seed(0);
    let gan = Gan::new(&c, &info, Device::Cpu).unwrap();
    let latent = c.latent_dim;
    let z0 = Tensor::randn([latent], (Kind::Float, Device::Cpu));
    let z1 = Tensor::randn([latent], (Kind::Float, Device::Cpu));
    let path = gan
        .interpolate(&z0, &z1, 5, Some(7), WeightChoice::Ema)
        .unwrap();
    assert_eq!(path.size(), [5, 1, 28, 28]);
    let seven = Tensor::full([1], 7, (Kind::Int64, Device::Cpu));
    let end = |z: &Tensor| {
        let y = gm_core::tch::no_grad(|| gan.generate(&z.unsqueeze(0), Some(&seven)).unwrap());
        ((y + 1.0) * 127.5).round().clamp(0.0, 255.0)
    };
    assert!(path.narrow(0, 0, 1).equal(&end(&z0)));
    assert!(path.narrow(0, 4, 1).allclose(&end(&z1), 0.0, 1.0, false));
    // Refusals: wrong shape, too few points, a label out of range, a NaN.
    assert!(gan
        .interpolate(&z0.narrow(0, 0, 2), &z1, 5, Some(1), WeightChoice::Ema)
        .is_err());
    assert!(gan
        .interpolate(&z0, &z1, 1, Some(1), WeightChoice::Ema)
        .is_err());
    assert!(gan
        .interpolate(&z0, &z1, 5, Some(10), WeightChoice::Ema)
        .is_err());
    let nan = z0.copy();
    let _ = nan.get(0).fill_(f64::NAN);
    let msg = gan
        .interpolate(&nan, &z1, 5, Some(1), WeightChoice::Ema)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("NaN"), "{msg}");
}

fn history(rows: &[(f64, f64, f64, f64)]) -> Vec<(u64, Vec<(String, f64)>)> {
    rows.iter()
        .enumerate()
        .map(|(i, &(real, fake, g, d))| {
            (
                i as u64 * 10,
                vec![
                    ("real_accuracy".to_string(), real),
                    ("fake_accuracy".to_string(), fake),
                    ("generator_loss".to_string(), g),
                    ("diversity".to_string(), d),
                ],
            )
        })
        .collect()
}

#[test]
fn collapse_signs_name_each_failure_and_stay_quiet_on_a_healthy_run() {
    let healthy: Vec<_> = (0..20)
        .map(|i| (0.6, 0.55, 0.7 + 0.01 * (i % 3) as f64, 2.5))
        .collect();
    assert!(collapse_signs(&history(&healthy)).is_empty());
    // The discriminator wins for the last quarter and the generator loss runs away.
    let mut wins = healthy.clone();
    for (i, row) in wins.iter_mut().enumerate().skip(15) {
        *row = (1.0, 1.0, 5.0 + i as f64, 2.5);
    }
    let signs = collapse_signs(&history(&wins));
    assert!(
        matches!(signs[0], CollapseSign::DiscriminatorWins { .. }),
        "{signs:?}"
    );
    assert!(
        matches!(signs[1], CollapseSign::GeneratorLossDiverging { .. }),
        "{signs:?}"
    );
    assert_eq!(signs.len(), 2);
    // Fooled everywhere.
    let mut fooled = healthy.clone();
    for row in fooled.iter_mut().skip(15) {
        row.0 = 0.0;
        row.1 = 0.0;
    }
    assert!(matches!(
        collapse_signs(&history(&fooled))[..],
        [CollapseSign::DiscriminatorFooled { .. }]
    ));
    // Mode collapse: the fixed-noise samples draw together.
    let mut collapsed = healthy.clone();
    for row in collapsed.iter_mut().skip(15) {
        row.3 = 0.3;
    }
    let signs = collapse_signs(&history(&collapsed));
    assert_eq!(signs.len(), 1);
    assert!(
        signs[0]
            .to_string()
            .contains("diversity fell from 2.500 to 0.300"),
        "{}",
        signs[0]
    );
    // Too short a history says nothing.
    assert!(collapse_signs(&history(&wins[..3])).is_empty());
}

#[test]
fn the_spec_scales_its_schedules_with_the_budget() {
    let run = registry().load_run("gan/toy_mlp").unwrap();
    let c: GanConfig = run.model_config().unwrap();
    let start = c.ema.as_ref().unwrap().start_step;
    let half = run.with_steps(run.train.steps / 2).unwrap();
    let c2: GanConfig = half.model_config().unwrap();
    assert_eq!(c2.ema.as_ref().unwrap().start_step, start / 2);
    assert_eq!(ModelSpec::family(&c2), "gan");
}

fn normalized(x: &Tensor) -> Tensor {
    x / (x.square().sum(Kind::Float).sqrt() + 1e-12)
}

/// One training step runs exactly one power-iteration step in every normalised layer (the pass
/// over real and fake examples), computed here from the weights before the step; the generator's
/// update, the penalty and sampling leave the vectors alone.
#[test]
fn spectral_norm_steps_once_per_training_step() {
    single_thread();
    let (mut c, dataset) = shipped("mnist_dcgan");
    shrink(&mut c);
    c.regularizer = gm_gan::RegularizerConfig::R1 { weight: 1.0 };
    let info = gm_core::data::named_info(&dataset).unwrap();
    gm_core::tch::manual_seed(0);
    let mut gan = Gan::new(&c, &info, Device::Cpu).unwrap();
    let layers = |g: &Gan| -> Vec<(Tensor, Tensor)> {
        g.discriminator()
            .spectral_layers()
            .iter()
            .map(|l| {
                (
                    l.weight().detach().copy(),
                    l.spectral_norm().unwrap().u().copy(),
                )
            })
            .collect()
    };
    let before = layers(&gan);
    assert_eq!(before.len(), 3, "two convolutions and the head");
    let x = Tensor::randint(256, [4, 1, 28, 28], (Kind::Float, Device::Cpu));
    gan.train_step(&Batch::new(x)).unwrap();
    for ((w, u), (_, u_after)) in before.iter().zip(layers(&gan)) {
        let w = w.reshape([w.size()[0], -1]);
        let v = normalized(&w.tr().mv(u));
        let want = normalized(&w.mv(&v));
        let diff = (&u_after - &want).abs().max().double_value(&[]);
        assert!(
            diff < 1e-6,
            "u after one step differs from one power iteration by {diff}"
        );
    }
    let after = layers(&gan);
    let _ = gan.sample_with(3, &SampleOptions::new().seed(1)).unwrap();
    let _ = gan.log_likelihood(&Tensor::zeros([2, 1, 28, 28], (Kind::Float, Device::Cpu)));
    for ((_, u), (_, u_now)) in after.iter().zip(layers(&gan)) {
        assert!(u.equal(&u_now), "sampling moved a spectral-norm vector");
    }
}

/// The reported R1 penalty is `weight / 2 · E‖∇D(x)‖²`, computed here with the regulariser on
/// the discriminator before the step.
#[test]
fn the_r1_penalty_enters_the_loss_with_half_its_weight() {
    single_thread();
    let (mut c, _) = shipped("toy_mlp");
    shrink(&mut c);
    c.regularizer = gm_gan::RegularizerConfig::R1 { weight: 3.0 };
    let info = toy_info();
    gm_core::tch::manual_seed(0);
    let mut gan = Gan::new(&c, &info, Device::Cpu).unwrap();
    let x = ToyDataset::EightGaussians.sample(16, Device::Cpu).unwrap();
    let critic = |p: &Tensor| gan.discriminator().forward(p, None, false);
    let want = 1.5
        * gm_gan::regularizer::r1_penalty(&critic, &x)
            .unwrap()
            .double_value(&[]);
    let out = gan.train_step(&Batch::new(x)).unwrap();
    let (_, penalty) = out.losses.iter().find(|(n, _)| n == "penalty").unwrap();
    let got = penalty.double_value(&[]);
    assert!(
        (got - want).abs() < 1e-6 * want.abs().max(1.0),
        "penalty {got}, expected {want}"
    );
}

/// The midpoint of an interpolation is the spherical one, `(z₀ + z₁) · sin(ω/2) / sin ω`.
#[test]
fn interpolation_is_spherical() {
    single_thread();
    let (mut c, _) = shipped("toy_mlp");
    shrink(&mut c);
    let info = toy_info();
    gm_core::tch::manual_seed(0);
    let gan = Gan::new(&c, &info, Device::Cpu).unwrap();
    let z0 = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 0.0]);
    let z1 = Tensor::from_slice(&[0.0f32, 2.0, 0.0, 0.0]);
    let path = gan
        .interpolate(&z0, &z1, 3, None, WeightChoice::Raw)
        .unwrap();
    // ω = π/2: the midpoint is (z₀ + z₁)·sin(π/4), norm between |z₀| and |z₁| (linear
    // interpolation would give (z₀ + z₁)/2 instead).
    let mid = (&z0 + &z1) * (std::f64::consts::FRAC_PI_4).sin();
    let want = gm_core::tch::no_grad(|| gan.generate(&mid.unsqueeze(0), None).unwrap());
    let diff = (path.narrow(0, 1, 1) - want).abs().max().double_value(&[]);
    assert!(diff < 1e-6, "midpoint off by {diff}");
}
