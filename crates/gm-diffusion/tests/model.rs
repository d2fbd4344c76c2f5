//! The model behind the interface: sanity at initialisation, the bound's terms, guidance, the
//! data maps, and bad options and configs refused.

mod common;

use common::{shipped, shrink, single_thread};
use gm_core::model::{Batch, GenerativeModel, SampleOptions, WeightChoice};
use gm_core::spec::DataInfo;
use gm_core::tch::{Device, Kind, Tensor};
use gm_core::testing::{error_text, example_data};
use gm_diffusion::{DenoiserConfig, Diffusion, DiffusionConfig, Variance};

fn grey_digits() -> (DataInfo, Tensor) {
    let info = gm_core::data::named_info("mnist_grey").unwrap();
    let x = example_data(&info, 64);
    (info, x)
}

/// Untrained, the U-Net's last layer is zero: ε-prediction starts at the mean square of the
/// noise, 1 per value (a batch of 64 · 784 values: standard error 0.006), and the first
/// reported loss is exactly the simple loss of that prediction.
#[test]
fn untrained_model_has_the_loss_of_predicting_zero() {
    single_thread();
    let (info, x) = grey_digits();
    let (mut c, _) = shipped("mnist_unet");
    c.variance = Variance::Small;
    if let DenoiserConfig::Unet { channels, .. } = &mut c.denoiser {
        *channels = 8;
    }
    gm_core::device::seed_torch(1);
    let mut model = Diffusion::new(&c, &info, Device::Cpu).unwrap();
    let losses = model
        .train_step(&Batch::new(x))
        .unwrap()
        .to_host(0)
        .unwrap();
    let mse = losses.iter().find(|(n, _)| n == "mse").unwrap().1;
    assert!(
        (mse - 1.0).abs() < 0.03,
        "untrained simple loss {mse}, expected 1 ± 0.03"
    );
}

/// Every term of the bound is non-negative (KLs, and −ln of a probability for discrete data),
/// and the total of an untrained model is finite: near the prior's cost of a uniform model
/// (784 · ln 256 ≈ 4347 nats) or above, never below the data's own entropy.
#[test]
fn bound_terms_are_non_negative_and_finite_at_initialisation() {
    single_thread();
    let (info, x) = grey_digits();
    for variance in ["small", "large", "learned"] {
        let text = format!(
            "timesteps = 50\nlikelihood_strata = 10\nvariance = \"{variance}\"\n[denoiser]\nkind = \"unet\"\nchannels = 8\nmultipliers = [1, 2]\nattention = true\n"
        );
        let c: DiffusionConfig = gm_core::train::Config::from_toml_str(&text).unwrap();
        gm_core::device::seed_torch(2);
        let model = Diffusion::new(&c, &info, Device::Cpu).unwrap();
        let terms = model.bound_terms(&x.narrow(0, 0, 4), None).unwrap();
        assert_eq!(terms.size(), [4, 51]);
        let min = terms.min().double_value(&[]);
        assert!(min >= 0.0, "{variance}: a negative term {min}");
        let total = terms.sum_dim_intlist(1, false, Kind::Double);
        for v in Vec::<f64>::try_from(&total).unwrap() {
            assert!(v.is_finite() && v > 0.0, "{variance}: total {v}");
        }
        // The model's log-likelihood is the negative sum of the same terms in expectation.
        gm_core::device::seed_torch(3);
        let ll = model.log_likelihood(&x.narrow(0, 0, 4)).unwrap().unwrap();
        assert!(ll.isfinite().all().int64_value(&[]) == 1);
    }
}

/// Classifier-free guidance at scale 0 is the unconditional model: the labels no longer
/// matter. At scale 1 it is the conditional model: the labels do.
#[test]
fn guidance_scale_zero_ignores_labels_and_one_does_not() {
    single_thread();
    let (mut c, dataset) = shipped("mnist_unet_conditional");
    shrink(&mut c);
    let info = gm_core::data::named_info(&dataset).unwrap();
    let x = example_data(&info, 8);
    gm_core::device::seed_torch(4);
    let mut model = Diffusion::new(&c, &info, Device::Cpu).unwrap();
    // One step so the label embedding has been trained off its start.
    let labels = Tensor::randint(10, [8], (Kind::Int64, Device::Cpu));
    model.train_step(&Batch::with_labels(x, labels)).unwrap();
    let draw = |label: i64, scale: f64| {
        model
            .sample_with(
                3,
                &SampleOptions::new()
                    .labels(Tensor::full([3], label, (Kind::Int64, Device::Cpu)))
                    .guidance(scale)
                    .weights(WeightChoice::Raw)
                    .solver("ddim")
                    .seed(5),
            )
            .unwrap()
    };
    assert!(
        draw(0, 0.0).equal(&draw(7, 0.0)),
        "guidance 0 depends on the label"
    );
    assert!(
        !draw(0, 1.0).equal(&draw(7, 1.0)),
        "the conditional model ignores its label"
    );
}

/// Guidance mixes the two halves' predictions as u + w (c − u), u the "no label" row's.
#[test]
fn guidance_mixes_conditional_and_unconditional_predictions() {
    single_thread();
    let (mut c, dataset) = shipped("mnist_unet_conditional");
    shrink(&mut c);
    let info = gm_core::data::named_info(&dataset).unwrap();
    gm_core::device::seed_torch(6);
    let mut model = Diffusion::new(&c, &info, Device::Cpu).unwrap();
    let x = example_data(&info, 4);
    model
        .train_step(&Batch::with_labels(x, Tensor::from_slice(&[1i64, 2, 3, 4])))
        .unwrap();
    let xt = Tensor::randn([3, 1, 28, 28], (Kind::Float, Device::Cpu));
    let t = Tensor::from_slice(&[3i64, 10, 19]);
    let labels = Tensor::from_slice(&[0i64, 5, 9]);
    let none = Tensor::full([3], 10, (Kind::Int64, Device::Cpu));
    let c_out = model.denoise(&xt, &t, Some(&labels)).unwrap().prediction;
    let u_out = model.denoise(&xt, &t, Some(&none)).unwrap().prediction;
    assert!(
        !c_out.allclose(&u_out, 1e-6, 1e-6, false),
        "the halves agree, so the check could not fail"
    );
    for w in [0.0, 2.5] {
        let guided = model.guided(&xt, &t, &labels, w).unwrap().prediction;
        let expected = &u_out + (&c_out - &u_out) * w;
        assert!(
            guided.allclose(&expected, 1e-5, 1e-5, false),
            "guidance {w}"
        );
    }
}

/// Continuous data divided by `data_scale` gain its log-Jacobian: a model of scale 2 on `x`
/// scores exactly a model of scale 1 on `x / 2` (same weights, same draws) plus D ln 2.
#[test]
fn data_scale_enters_the_likelihood_with_its_jacobian() {
    single_thread();
    let (mut c, dataset) = shipped("toy_mlp");
    shrink(&mut c);
    let info = gm_core::data::named_info(&dataset).unwrap();
    let x = example_data(&info, 8);
    let score = |scale: f64, data: &Tensor| {
        let mut c = c.clone();
        c.data_scale = scale;
        gm_core::device::seed_torch(13);
        let model = Diffusion::new(&c, &info, Device::Cpu).unwrap();
        gm_core::device::seed_torch(14);
        model.log_likelihood(data).unwrap().unwrap()
    };
    let scaled = score(2.0, &x);
    let plain = score(1.0, &(&x / 2.0));
    let expected = plain - 2.0 * 2f64.ln();
    assert!(
        scaled.allclose(&expected, 1e-4, 1e-4, false),
        "{scaled} vs {expected}"
    );
}

/// Discrete levels map onto [-1, 1] end to end and back.
#[test]
fn discrete_levels_map_onto_the_unit_interval_and_back() {
    let (mut c, _) = shipped("mnist_unet");
    shrink(&mut c);
    let info = gm_core::data::named_info("mnist_grey").unwrap();
    let model = Diffusion::new(&c, &info, Device::Cpu).unwrap();
    let x = Tensor::from_slice(&[0f32, 1.0, 127.0, 128.0, 255.0]);
    let y = model.to_model_space(&x).unwrap();
    let expected = Tensor::from_slice(&[
        -1f32,
        2.0 / 255.0 - 1.0,
        254.0 / 255.0 - 1.0,
        256.0 / 255.0 - 1.0,
        1.0,
    ]);
    assert!(y.allclose(&expected, 1e-6, 1e-6, false), "{y}");
    assert!(model.to_data_space(&y).unwrap().equal(&x));
}

#[test]
fn bad_options_and_configs_are_refused_with_their_names() {
    single_thread();
    let (mut c, dataset) = shipped("toy_mlp");
    shrink(&mut c);
    let info = gm_core::data::named_info(&dataset).unwrap();
    let model = Diffusion::new(&c, &info, Device::Cpu).unwrap();
    // Every solver by the name a config uses.
    for solver in ["ddpm", "ddim", "dpm_solver_2m"] {
        let text = format!("[sampler]\nsolver = \"{solver}\"");
        <DiffusionConfig as gm_core::train::Config>::from_toml_str(&text).unwrap();
        let _ = model
            .sample_with(2, &SampleOptions::new().solver(solver))
            .unwrap();
    }
    let msg = error_text(model.sample_with(2, &SampleOptions::new().solver("leapfrog")));
    assert!(
        msg.contains("unknown solver") && msg.contains("leapfrog") && msg.contains("dopri5"),
        "{msg}"
    );
    // The ODE solvers integrate the probability-flow ODE, with their evaluations counted.
    let _ = model
        .sample_with(2, &SampleOptions::new().solver("heun").steps(3))
        .unwrap();
    assert_eq!(model.last_evaluations(), Some(6));
    let msg = error_text(model.sample_with(2, &SampleOptions::new().eta(1.5)));
    assert!(msg.contains("eta"), "{msg}");
    let msg = error_text(model.sample_with(2, &SampleOptions::new().guidance(f64::NAN)));
    assert!(msg.contains("guidance"), "{msg}");
    for (text, needle) in [
        ("timesteps = 1", "timesteps"),
        ("label_dropout = 1.0", "label_dropout"),
        ("likelihood_strata = 5000", "likelihood_strata"),
        ("data_scale = 0.0", "data_scale"),
        (
            "conditional = true\nlabel_dropout = 0.0\nguidance = 2.0",
            "guidance",
        ),
        (
            "[schedule]\nkind = \"linear\"\nbeta_start = 0.1\nbeta_end = 0.01",
            "beta_start",
        ),
        (
            "[denoiser]\nkind = \"unet\"\nchannels = 12\nmultipliers = [1]\nattention = false",
            "channels",
        ),
        ("[sampler]\nsolver = \"rk4\"", "solver"),
        ("[sampler]\nsteps = 0", "steps"),
        ("noise_schedule = \"cosine\"", "noise_schedule"),
    ] {
        let msg = error_text(<DiffusionConfig as gm_core::train::Config>::from_toml_str(
            text,
        ));
        assert!(msg.contains(needle), "{text:?}: {msg}");
    }
}

/// A conditional model trained without label dropout has no unconditional model: its
/// likelihood without labels is refused, with labels it is given.
#[test]
fn a_conditional_likelihood_without_dropout_needs_labels() {
    single_thread();
    let (mut c, dataset) = shipped("mnist_unet_conditional");
    shrink(&mut c);
    c.label_dropout = 0.0;
    c.guidance = 1.0;
    let info = gm_core::data::named_info(&dataset).unwrap();
    let x = example_data(&info, 2);
    let model = Diffusion::new(&c, &info, Device::Cpu).unwrap();
    let msg = error_text(model.log_likelihood(&x));
    assert!(msg.contains("pass labels"), "{msg}");
    let labels = Tensor::from_slice(&[1i64, 2]);
    assert!(model
        .log_likelihood_given(&x, Some(&labels))
        .unwrap()
        .is_some());
}

/// `decode` runs DDIM (η = 0) from `encode`'s latent with the same steps and weights, so on a
/// briefly trained toy model (100 steps; T = 1000 and the shipped 50 DDIM steps; two moons,
/// spread about ±2) `decode(encode(x))` returns `x` up to the fixed-point residual of the
/// encoding: measured 3.4e-3 at most over 256 points (mean 1.1e-3), asserted below 1e-2,
/// while the latents decoded against other examples miss by 5.9. (The residual grows with the
/// jump: 3.4e-2 at 20 steps, 0.2 at 10; an untrained denoiser predicts 0 and inverts to 1e-6.)
/// On 16-level data the rounding to levels absorbs the residual: every value comes back.
#[test]
fn decode_inverts_the_ddim_encoding() {
    single_thread();
    let (mut c, dataset) = shipped("toy_mlp");
    c.denoiser = DenoiserConfig::Mlp {
        hidden: vec![64, 64],
        time_embedding: 16,
    };
    let info = gm_core::data::named_info(&dataset).unwrap();
    gm_core::device::seed_torch(15);
    let mut model = Diffusion::new(&c, &info, Device::Cpu).unwrap();
    for _ in 0..100 {
        let x = gm_core::data::toy::ToyDataset::TwoMoons
            .sample(256, Device::Cpu)
            .unwrap();
        model.train_step(&Batch::new(x)).unwrap();
    }
    let x = example_data(&info, 256);
    let z = model.encode(&x).unwrap().unwrap();
    assert_eq!(z.size(), x.size());
    assert_eq!(
        model.last_evaluations(),
        Some(150),
        "50 steps, 3 calls each"
    );
    let back = model.decode(&z).unwrap().unwrap();
    assert_eq!(model.last_evaluations(), Some(50));
    assert_eq!(back.size(), x.size());
    let err = (&back - &x).abs().max().double_value(&[]);
    let shuffled = model.decode(&z.roll([1], [0])).unwrap().unwrap();
    let miss = (&shuffled - &x).abs().max().double_value(&[]);
    eprintln!(
        "Diffusion: |decode(encode(x)) - x| ≤ {err:.2e}; other examples' latents miss by {miss:.2}"
    );
    assert!(err < 1e-2, "decode(encode(x)) differs from x by {err}");
    assert!(miss > 0.5, "decode ignores its latent: {miss}");

    let levels = DataInfo::new(&[8], gm_core::data::ValueKind::Discrete { levels: 16 }, 0);
    gm_core::device::seed_torch(16);
    let mut model = Diffusion::new(&c, &levels, Device::Cpu).unwrap();
    let x = example_data(&levels, 64);
    for _ in 0..50 {
        model.train_step(&Batch::new(x.shallow_clone())).unwrap();
    }
    let z = model.encode(&x).unwrap().unwrap();
    let back = model.decode(&z).unwrap().unwrap();
    let wrong = back.ne_tensor(&x).sum(Kind::Int64).int64_value(&[]);
    eprintln!("Diffusion, 16 levels: {wrong} of 512 values decode to another level");
    assert_eq!(wrong, 0, "{wrong} values decode to another level");
}

/// `decode` refuses latents of the wrong shape, a boolean dtype, non-finite values and empty
/// batches; a conditional model has no encoder to invert.
#[test]
fn diffusion_decode_refuses_bad_latents() {
    single_thread();
    let (mut c, dataset) = shipped("toy_mlp");
    shrink(&mut c);
    let info = gm_core::data::named_info(&dataset).unwrap();
    let model = Diffusion::new(&c, &info, Device::Cpu).unwrap();
    let z = Tensor::randn([3, 2], (Kind::Float, Device::Cpu));
    assert_eq!(model.decode(&z).unwrap().unwrap().size(), [3, 2]);
    assert!(model.decode(&z.to_kind(Kind::Double)).is_ok());
    for (bad, needle) in [
        (
            Tensor::zeros([3, 3], (Kind::Float, Device::Cpu)),
            "expected shape",
        ),
        (
            Tensor::zeros([2], (Kind::Float, Device::Cpu)),
            "expected shape",
        ),
        (
            Tensor::zeros([0, 2], (Kind::Float, Device::Cpu)),
            "non-empty",
        ),
        (z.to_kind(Kind::Bool), "real or integer"),
        (z.copy().fill_(f64::NAN), "NaN"),
    ] {
        let err = error_text(model.decode(&bad));
        assert!(err.contains(needle), "{bad:?}: {err}");
    }
    let (mut c, dataset) = shipped("mnist_unet_conditional");
    shrink(&mut c);
    let info = gm_core::data::named_info(&dataset).unwrap();
    let conditional = Diffusion::new(&c, &info, Device::Cpu).unwrap();
    let z = Tensor::randn([1, 1, 28, 28], (Kind::Float, Device::Cpu));
    assert!(conditional.decode(&z).unwrap().is_none());
}
