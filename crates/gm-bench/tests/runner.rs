//! The runner survives failing entries, resumes finished ones, and the report says what happened.

use gm_bench::report::{self, Report};
use gm_bench::runner::{config_hash, result_hash, run_entry};
use gm_bench::suite::{suite, Entry, Profile};
use gm_core::data::load_named;
use gm_core::model::GenerativeModel;
use gm_core::spec::{Budget, DataInfo, ModelSpec, RunConfig};
use gm_core::tch::Device;
use gm_core::train::{LrSchedule, TrainConfig};
use gm_core::GmError;

/// A spec whose build fails or panics, to check that the runner survives both.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct BrokenSpec {
    panics: bool,
}

impl gm_core::train::Config for BrokenSpec {
    fn validate(&self) -> gm_core::Result<()> {
        Ok(())
    }
}

impl ModelSpec for BrokenSpec {
    fn family(&self) -> &'static str {
        "test"
    }
    fn scale_to_budget(&mut self, _: &Budget) {}
    fn build(&self, _: &DataInfo, _: Device) -> gm_core::Result<Box<dyn GenerativeModel>> {
        if self.panics {
            panic!("boom");
        }
        Err(GmError::Unsupported("no such model".into()))
    }
}

fn entry(id: &str, panics: bool) -> Entry {
    Entry {
        samplers: vec![],
        likelihood_examples: None,
        evaluation: Default::default(),
        id: id.into(),
        family: "test".into(),
        model: "m".into(),
        dataset: "two_moons".into(),
        run: RunConfig {
            dataset: "two_moons".into(),
            train: TrainConfig {
                steps: 5,
                batch_size: 16,
                seed: 0,
                log_every: 1,
                checkpoint_every: 0,
            },
            model: Box::new(BrokenSpec { panics }),
        },
        config_text: format!("panics = {panics}"),
    }
}

fn out_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("gm-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn failures_are_recorded_not_fatal() {
    let data = load_named("two_moons", Device::Cpu, 64, 64, 0).unwrap();
    let out = out_dir("fail");
    let erroring = entry("test/error/two_moons", false);
    let panicking = entry("test/panic/two_moons", true);
    let a = run_entry(&erroring, &data, &out, Device::Cpu, None, &mut |_, _, _| {});
    let b = run_entry(
        &panicking,
        &data,
        &out,
        Device::Cpu,
        None,
        &mut |_, _, _| {},
    );
    assert_eq!(a.status, "failed");
    assert!(a.error.as_deref().unwrap().contains("no such model"));
    assert_eq!(b.status, "failed");
    assert!(b.error.as_deref().unwrap().contains("boom"));
    let r = Report::new("test", "Cpu", 0.0, vec![a, b]);
    report::write(&r, &out).unwrap();
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        md.contains("Failed runs") && md.contains("test/panic/two_moons"),
        "{md}"
    );
    assert!(std::fs::read_to_string(out.join("index.html"))
        .unwrap()
        .contains("failed"));
}

#[test]
fn a_real_entry_trains_and_is_reused() {
    let data = load_named("two_moons", Device::Cpu, 256, 256, 0).unwrap();
    let out = out_dir("ok");
    let mut entries = suite(Profile::Quick).unwrap();
    let mut e = entries.remove(
        entries
            .iter()
            .position(|e| e.id == "flow/realnvp/two_moons")
            .unwrap(),
    );
    e.run.train.steps = 3;
    e.run.train.batch_size = 64;
    e.run.train.log_every = 1;
    e.config_text.push_str("\n# shortened for the test\n");
    let first = run_entry(&e, &data, &out, Device::Cpu, None, &mut |_, _, _| {});
    assert_eq!(first.status, "ok", "{:?}", first.error);
    assert_eq!(first.nll_kind.as_deref(), Some("exact"));
    assert_eq!(first.curve.len(), 3);
    assert!(first.gap_nats.unwrap().is_finite());
    assert!(out.join(first.samples_png.as_deref().unwrap()).exists());
    // A second run of the same config reuses the finished result.
    let again = run_entry(&e, &data, &out, Device::Cpu, None, &mut |_, _, _| {});
    assert_eq!(again.nll_nats, first.nll_nats);
    assert_eq!(again.train_seconds, first.train_seconds);
    // Changing the config changes the hash, hence the run folder.
    let h1 = config_hash(&e);
    e.config_text.push('#');
    assert_ne!(h1, config_hash(&e));
}

/// An entry's further samplers are each drawn and judged, and are part of the result's hash.
#[test]
fn sampler_variants_are_judged_and_hashed() {
    let data = load_named("eight_gaussians", Device::Cpu, 256, 256, 0).unwrap();
    let out = out_dir("samplers");
    let text = "[[entry]]\nmodel = \"ddpm\"\nconfig = \"diffusion/toy_mlp\"\ndatasets = [\"eight_gaussians\"]\nsteps = { quick = 3, default = 3, full = 3 }\nsamplers = [{ solver = \"ddpm\", steps = 20 }, { solver = \"dpm_solver_2m\", steps = 4 }, { solver = \"ddim\", steps = 5, eta = 1.0 }]";
    let registry = gm_bench::suite::registry();
    let mut e = gm_bench::suite::suite_from(text, "t", Profile::Quick, &registry)
        .unwrap()
        .remove(0);
    e.run.train.batch_size = 32;
    let result = run_entry(&e, &data, &out, Device::Cpu, None, &mut |_, _, _| {});
    assert_eq!(result.status, "ok", "{:?}", result.error);
    let labels: Vec<&str> = result.samplers.iter().map(|s| s.label.as_str()).collect();
    assert_eq!(labels, ["ddpm-20", "dpm_solver_2m-4", "ddim-5 η=1"]);
    for s in &result.samplers {
        let m = s.sample_metrics.as_ref().expect("toy data are judged");
        assert!(m.energy_distance.is_finite() && s.seconds_per_10k > 0.0);
        assert_eq!(m.modes, Some(8));
    }
    // A changed sampler list is a new result of the same training: the checkpoint is reused.
    let (config, hash) = (config_hash(&e), result_hash(&e));
    e.samplers.pop();
    assert_eq!(
        config,
        config_hash(&e),
        "a sampler is not part of the training"
    );
    assert_ne!(
        hash,
        result_hash(&e),
        "dropping a sampler must change the result's hash"
    );
    // A sampler the model does not know fails alone, with its error; the run stands.
    e.samplers.push(gm_bench::suite::SamplerVariant {
        solver: Some("leapfrog".into()),
        steps: None,
        eta: None,
        guidance: None,
        tolerance: None,
        temperature: None,
        top_k: None,
        top_p: None,
    });
    let again = run_entry(&e, &data, &out, Device::Cpu, None, &mut |_, _, _| {});
    assert_eq!(again.status, "ok", "{:?}", again.error);
    assert_eq!(again.steps, result.steps);
    let failed = again.samplers.last().unwrap();
    assert!(
        failed.error.as_deref().unwrap_or("").contains("leapfrog"),
        "{failed:?}"
    );
    let bad = text.replace("eta = 1.0", "eta = 1.0, temperture = 2.0");
    assert!(gm_bench::suite::suite_from(&bad, "t", Profile::Quick, &registry).is_err());
}

#[test]
fn every_profile_builds_a_suite() {
    for p in ["quick", "default", "full"] {
        let entries = suite(p.parse().unwrap()).unwrap();
        assert!(entries.len() >= 14);
        let mut ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), entries.len(), "entry ids are unique");
    }
    assert!("fast".parse::<Profile>().is_err());
}

/// `--only` matches from the start of a component: a family's prefix does not pick up another
/// family whose name ends the same way.
#[test]
fn only_filters_match_whole_components() {
    use gm_bench::suite::id_matches;
    let ids = [
        "diffusion/unet/mnist_grey",
        "diffusion/unet_conditional/mnist_grey",
        "masked_diffusion/absorbing/mnist_binary",
        "flow_matching/unet/mnist_grey",
        "flow/nsf/two_moons",
    ];
    let picked =
        |f: &str| -> Vec<&str> { ids.iter().copied().filter(|id| id_matches(id, f)).collect() };
    assert_eq!(
        picked("diffusion/"),
        [
            "diffusion/unet/mnist_grey",
            "diffusion/unet_conditional/mnist_grey"
        ]
    );
    assert_eq!(picked("flow/"), ["flow/nsf/two_moons"]);
    assert_eq!(
        picked("masked_diffusion"),
        ["masked_diffusion/absorbing/mnist_binary"]
    );
    assert_eq!(
        picked("mnist_binary"),
        ["masked_diffusion/absorbing/mnist_binary"]
    );
    assert_eq!(picked("flow_matching/unet").len(), 1);
    assert!(picked("iffusion").is_empty());
}

/// The budget reaches every step-measured length through the spec: the quick profile's VAE
/// decays its learning rate to the minimum on its last step and shortens its KL warm-up in
/// proportion.
#[test]
fn budgets_are_applied_by_the_specs() {
    for profile in [Profile::Quick, Profile::Default, Profile::Full] {
        for e in suite(profile).unwrap() {
            let steps = e.run.train.steps;
            let schedule = match e.family.as_str() {
                "vae" => {
                    let c: gm_vae::VaeConfig = e.run.model_config().unwrap();
                    if let gm_vae::ObjectiveConfig::Elbo {
                        kl_warmup_steps, ..
                    } = c.objective
                    {
                        assert!(
                            kl_warmup_steps < steps,
                            "{}: KL warm-up {kl_warmup_steps} of {steps} steps",
                            e.id
                        );
                    }
                    c.lr_schedule
                }
                "flow" => {
                    e.run
                        .model_config::<gm_flow::FlowConfig>()
                        .unwrap()
                        .schedule
                }
                "gan" => {
                    let c: gm_gan::GanConfig = e.run.model_config().unwrap();
                    // The average counts generator updates: one per n_critic steps.
                    if let Some(ema) = &c.ema {
                        assert!(
                            ema.start_step < steps / c.n_critic,
                            "{}: EMA start {} of {} generator updates",
                            e.id,
                            ema.start_step,
                            steps / c.n_critic
                        );
                    }
                    c.lr_schedule
                }
                "diffusion" => {
                    let c: gm_diffusion::DiffusionConfig = e.run.model_config().unwrap();
                    if let Some(ema) = &c.ema {
                        assert!(
                            ema.start_step < steps,
                            "{}: EMA start {} of {steps} steps",
                            e.id,
                            ema.start_step
                        );
                    }
                    c.lr_schedule
                }
                "flow_matching" => {
                    let c: gm_diffusion::FlowMatchingConfig = e.run.model_config().unwrap();
                    if let Some(ema) = &c.ema {
                        assert!(ema.start_step < steps, "{}: EMA start", e.id);
                    }
                    if let Some(reflow) = &c.reflow {
                        // The reflow round keeps its share of the run (half, as written).
                        assert_eq!(reflow.start_step, steps / 2, "{}: reflow start", e.id);
                    }
                    c.lr_schedule
                }
                "masked_diffusion" => {
                    let c: gm_diffusion::MaskedDiffusionConfig = e.run.model_config().unwrap();
                    if let Some(ema) = &c.ema {
                        assert!(ema.start_step < steps, "{}: EMA start", e.id);
                    }
                    c.lr_schedule
                }
                "autoregressive" => {
                    let c: gm_autoregressive::AutoregressiveConfig = e.run.model_config().unwrap();
                    if let Some(ema) = &c.ema {
                        assert!(ema.start_step < steps, "{}: EMA start", e.id);
                    }
                    c.lr_schedule
                }
                "vq_vae_prior" => {
                    let c: gm_bench::vq_prior::VqVaePriorConfig = e.run.model_config().unwrap();
                    // The first phase keeps its share of the run (3 of 5 parts, as written),
                    // and the prior's schedule spans the second phase and ends at its minimum.
                    assert_eq!(c.vq_vae_steps, steps * 3 / 5, "{}: first phase", e.id);
                    let prior_steps = steps - c.vq_vae_steps;
                    let LrSchedule::WarmupCosine {
                        total_steps,
                        min_ratio,
                        ..
                    } = c.prior.lr_schedule
                    else {
                        panic!("{}: the prior's schedule is not a warm-up cosine", e.id)
                    };
                    assert_eq!(total_steps, prior_steps, "{}: prior schedule", e.id);
                    let last = c.prior.lr_schedule.factor(prior_steps - 1);
                    assert!(
                        (last - min_ratio).abs() < 1e-12,
                        "{}: prior ends at {last}",
                        e.id
                    );
                    // The VQ-VAE's own schedule (constant as shipped) would span its phase.
                    if let LrSchedule::WarmupCosine { total_steps, .. } = c.vq_vae.lr_schedule {
                        assert_eq!(total_steps, c.vq_vae_steps, "{}: VQ-VAE schedule", e.id);
                    }
                    LrSchedule::Constant
                }
                other => panic!("unexpected family {other}"),
            };
            if let LrSchedule::WarmupCosine {
                total_steps,
                min_ratio,
                warmup_steps,
            } = schedule
            {
                assert_eq!(total_steps, steps, "{}", e.id);
                assert!(warmup_steps < steps / 5, "{}: warm-up {warmup_steps}", e.id);
                assert!(
                    (schedule.factor(steps - 1) - min_ratio).abs() < 1e-12,
                    "{}: the last step runs at {} of the peak rate, not the minimum {min_ratio}",
                    e.id,
                    schedule.factor(steps - 1)
                );
            }
        }
    }
    // The quick-profile MLP VAE: 400 of the 6,000 steps its file was written for, so its
    // 1,000-step KL warm-up becomes round(1000 · 400 / 6000) = 67 steps.
    let quick = suite(Profile::Quick).unwrap();
    let vae = quick
        .iter()
        .find(|e| e.id == "vae/mlp/mnist_binary")
        .unwrap();
    let c: gm_vae::VaeConfig = vae.run.model_config().unwrap();
    assert_eq!(
        c.objective,
        gm_vae::ObjectiveConfig::Elbo {
            beta: 1.0,
            kl_warmup_steps: 67,
            samples: 1
        }
    );
}

/// A suite file that names an unknown config or repeats an id is refused.
#[test]
fn bad_suites_are_refused() {
    let registry = gm_bench::suite::registry();
    let unknown = "[[entry]]\nmodel = \"x\"\nconfig = \"flow/nope\"\nsteps = { quick = 1, default = 1, full = 1 }";
    let err = gm_bench::suite::suite_from(unknown, "t", Profile::Quick, &registry)
        .unwrap_err()
        .to_string();
    assert!(err.contains("flow/nope"), "{err}");
    let twice = "[[entry]]\nmodel = \"g\"\nconfig = \"flow/glow_mnist_grey\"\nsteps = { quick = 10, default = 1, full = 1 }\n[[entry]]\nmodel = \"g\"\nconfig = \"flow/glow_mnist_grey\"\nsteps = { quick = 10, default = 1, full = 1 }";
    let err = gm_bench::suite::suite_from(twice, "t", Profile::Quick, &registry)
        .unwrap_err()
        .to_string();
    assert!(err.contains("twice"), "{err}");
    let typo = "[[entry]]\nmodel = \"g\"\nconfg = \"flow/glow_mnist_grey\"\nsteps = { quick = 10, default = 1, full = 1 }";
    assert!(gm_bench::suite::suite_from(typo, "t", Profile::Quick, &registry).is_err());
}

/// A model that trains nothing, with a likelihood of our choosing: NaN everywhere (as a
/// diverged evaluation would report), or, as the oracle, two moons' exact log-density with the
/// data's own sampler.
struct StubModel {
    w: gm_core::tch::Tensor,
    oracle: bool,
}

impl GenerativeModel for StubModel {
    fn family(&self) -> &'static str {
        "test"
    }
    fn train_step(
        &mut self,
        _: &gm_core::model::Batch,
    ) -> gm_core::Result<gm_core::model::StepOutput> {
        Ok(gm_core::model::StepOutput::new().with("loss", &self.w.sum(gm_core::tch::Kind::Float)))
    }
    fn sample_with(
        &self,
        n: i64,
        _: &gm_core::model::SampleOptions,
    ) -> gm_core::Result<gm_core::tch::Tensor> {
        if self.oracle {
            return gm_core::data::toy::ToyDataset::TwoMoons.sample(n, Device::Cpu);
        }
        Ok(gm_core::tch::Tensor::zeros(
            [n, 2],
            (gm_core::tch::Kind::Float, Device::Cpu),
        ))
    }
    fn likelihood_kind(&self) -> gm_core::model::LikelihoodKind {
        gm_core::model::LikelihoodKind::Exact
    }
    fn log_likelihood(
        &self,
        x: &gm_core::tch::Tensor,
    ) -> gm_core::Result<Option<gm_core::tch::Tensor>> {
        if self.oracle {
            return Ok(Some(gm_core::data::toy::ToyDataset::TwoMoons.log_prob(x)?));
        }
        Ok(Some(gm_core::tch::Tensor::full(
            [x.size()[0]],
            f64::NAN,
            (gm_core::tch::Kind::Float, Device::Cpu),
        )))
    }
    fn num_parameters(&self) -> i64 {
        1
    }
    fn state(&self) -> Vec<(String, gm_core::tch::Tensor)> {
        vec![("w".into(), self.w.shallow_clone())]
    }
    fn load_state(&mut self, state: &mut gm_core::train::StateDict) -> gm_core::Result<()> {
        let t = state.take("w", &[1])?;
        gm_core::tch::no_grad(|| self.w.f_copy_(&t))?;
        Ok(())
    }
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct StubSpec {
    oracle: bool,
}

impl gm_core::train::Config for StubSpec {
    fn validate(&self) -> gm_core::Result<()> {
        Ok(())
    }
}

impl ModelSpec for StubSpec {
    fn family(&self) -> &'static str {
        "test"
    }
    fn scale_to_budget(&mut self, _: &Budget) {}
    fn build(&self, _: &DataInfo, _: Device) -> gm_core::Result<Box<dyn GenerativeModel>> {
        Ok(Box::new(StubModel {
            w: gm_core::tch::Tensor::ones([1], (gm_core::tch::Kind::Float, Device::Cpu)),
            oracle: self.oracle,
        }))
    }
}

/// A non-finite metric marks the run failed and is never cached as a success.
#[test]
fn non_finite_metrics_fail_the_run() {
    let data = load_named("two_moons", Device::Cpu, 64, 64, 0).unwrap();
    let out = out_dir("nan-metric");
    let mut e = entry("test/nan/two_moons", false);
    e.run.model = Box::new(StubSpec { oracle: false });
    e.config_text = "nan = true".into();
    let result = run_entry(&e, &data, &out, Device::Cpu, None, &mut |_, _, _| {});
    assert_eq!(result.status, "failed");
    let error = result.error.as_deref().unwrap();
    assert!(error.contains("non-finite test NLL"), "{error}");
    assert!(gm_bench::runner::stored_result(&e, &out).is_none());
}

/// A model equal to the data's density (the oracle stub): the paired KL is exactly 0 with a
/// zero standard error, the reported NLL is exactly the mean of −ln p_data over the test points
/// (computed here independently), and its standard error is the spread of those values over √n.
#[test]
fn a_model_equal_to_the_data_scores_zero_paired_kl_and_its_exact_nll() {
    let data = load_named("two_moons", Device::Cpu, 64, 300, 0).unwrap();
    let out = out_dir("oracle");
    let mut e = entry("test/oracle/two_moons", false);
    e.run.model = Box::new(StubSpec { oracle: true });
    e.config_text = "oracle = true".into();
    let r = run_entry(&e, &data, &out, Device::Cpu, None, &mut |_, _, _| {});
    assert_eq!(r.status, "ok", "{:?}", r.error);
    assert_eq!(r.kl_nats, Some(0.0));
    assert_eq!(r.kl_stderr, Some(0.0));
    let lp: Vec<f64> = Vec::try_from(
        &gm_core::data::toy::ToyDataset::TwoMoons
            .log_prob(&data.test.x)
            .unwrap()
            .to_kind(gm_core::tch::Kind::Double),
    )
    .unwrap();
    let n = lp.len() as f64;
    let nll = -lp.iter().sum::<f64>() / n;
    let sd = (lp.iter().map(|v| (v + nll).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
    assert!(
        (r.nll_nats.unwrap() - nll).abs() < 1e-12,
        "{:?} vs {nll}",
        r.nll_nats
    );
    assert!((r.nll_stderr.unwrap() - sd / n.sqrt()).abs() < 1e-12);
    // The unpaired gap of the same perfect model is off by the entropy estimate's noise.
    assert!(r.gap_nats.unwrap().abs() < 4.0 * (r.nll_stderr.unwrap() + r.entropy_stderr.unwrap()));
}

/// The paired KL of shifted log-densities is the shift with no spread; unequal or too short
/// lists are errors.
#[test]
fn paired_kl_on_known_cases() {
    use gm_bench::metrics::{mean_and_stderr, paired_kl};
    let p = [-1.0, -2.0, -0.5, -3.0];
    let q: Vec<f64> = p.iter().map(|v| v - 0.25).collect();
    assert_eq!(paired_kl(&p, &q).unwrap(), (0.25, 0.0));
    let q2 = [-1.5, -2.0, -1.5, -3.0];
    let (mean, se) = paired_kl(&p, &q2).unwrap();
    // Differences 0.5, 0, 1, 0: mean 0.375, sample sd √(0.229166…), over √4.
    assert!((mean - 0.375).abs() < 1e-15);
    assert!((se - (0.6875f64 / 3.0).sqrt() / 2.0).abs() < 1e-15);
    assert!(paired_kl(&p, &q2[..3]).is_err());
    assert!(paired_kl(&p[..1], &q2[..1]).is_err());
    assert_eq!(mean_and_stderr(&[2.0]), (2.0, 0.0));
}
