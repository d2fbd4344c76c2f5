//! Masked discrete diffusion: with the true conditionals of a small discrete distribution the
//! ELBO is the exact NLL (by enumeration of every mask pattern, and as the model's Monte Carlo
//! estimate) and the sampler draws the distribution; untrained, the bound is D ln(levels);
//! the schedules' weights are −α'/(1 − α).

mod common;

use gm_core::model::{Batch, GenerativeModel, SampleOptions};
use gm_core::spec::DataInfo;
use gm_core::tch::{Device, Kind, Tensor};
use gm_core::testing::{error_text, example_data};
use gm_diffusion::{
    DenoiserConfig, MaskSchedule, MaskedDiffusion, MaskedDiffusionConfig, MaskingProcess,
};

const K: i64 = 3;
const D: i64 = 3;

/// Every configuration of D values in 0..K, `[K^D, D]`, and a fixed uneven distribution on them.
fn table() -> (Tensor, Tensor) {
    let n = K.pow(D as u32);
    let configs: Vec<i64> = (0..n)
        .flat_map(|c| (0..D).map(move |i| (c / K.pow(i as u32)) % K))
        .collect();
    let configs = Tensor::from_slice(&configs).reshape([n, D]);
    let weights: Vec<f64> = (0..n)
        .map(|c| 1.0 + ((c * 7) % 5) as f64 + (c % 2) as f64 * 3.0)
        .collect();
    let p = Tensor::from_slice(&weights);
    let p = &p / p.sum(Kind::Double);
    (configs, p)
}

/// The true conditionals p(x_i = v | unmasked values of x_t) `[b, K, D]` (log), by enumeration.
fn perfect_log_probs(xt: &Tensor, configs: &Tensor, p: &Tensor) -> Tensor {
    let masked = xt.eq(K).unsqueeze(1); // [b, 1, D]
    let agree = configs
        .unsqueeze(0)
        .eq_tensor(&xt.unsqueeze(1))
        .logical_or(&masked); // [b, n, D]
    let consistent = agree.all_dim(2, false).to_kind(Kind::Double) * p.unsqueeze(0); // [b, n]
    let mut out = Vec::new();
    for v in 0..K {
        let has_v = configs.eq(v).to_kind(Kind::Double); // [n, D]
        out.push(consistent.matmul(&has_v)); // [b, D]
    }
    let joint = Tensor::stack(&out, 1); // [b, K, D]
    (&joint / joint.sum_dim_intlist(1, true, Kind::Double)).log()
}

fn ln_factorial(n: i64) -> f64 {
    (1..=n).map(|k| (k as f64).ln()).sum()
}

/// The ELBO with exact expectations, linear schedule: Σ over non-empty mask sets S of
/// B(|S|, D − |S| + 1) Σ_{i∈S} −ln p(x_i | x outside S), since ∫ (1/t) t^k (1 − t)^(D−k) dt is
/// that Beta function.
fn enumerated_elbo(x: &[i64], configs: &Tensor, p: &Tensor) -> f64 {
    let mut total = 0.0;
    for set in 1..(1 << D) {
        let k = (0..D).filter(|i| set & (1 << i) != 0).count() as i64;
        let xt: Vec<i64> = (0..D)
            .map(|i| {
                if set & (1 << i) != 0 {
                    K
                } else {
                    x[i as usize]
                }
            })
            .collect();
        let lp = perfect_log_probs(&Tensor::from_slice(&xt).unsqueeze(0), configs, p);
        let nll: f64 = (0..D)
            .filter(|i| set & (1 << i) != 0)
            .map(|i| -lp.double_value(&[0, x[i as usize], i]))
            .sum();
        let beta = (ln_factorial(k - 1) + ln_factorial(D - k) - ln_factorial(D)).exp();
        total += beta * nll;
    }
    total
}

#[test]
fn with_true_conditionals_the_elbo_is_the_nll() {
    common::single_thread();
    gm_core::device::seed_torch(21);
    let (configs, p) = table();
    let n = configs.size()[0];
    // Exact, by enumeration: equal to −ln p(x) for every configuration.
    for c in 0..n {
        let x: Vec<i64> = Vec::try_from(configs.get(c)).unwrap();
        let elbo = enumerated_elbo(&x, &configs, &p);
        let nll = -p.double_value(&[c]).ln();
        assert!(
            (elbo - nll).abs() < 1e-10,
            "config {c}: ELBO {elbo} vs NLL {nll}"
        );
    }
    // The model's integrand at fixed times, averaged over 20,000 mask draws, against its exact
    // expectation w(t) Σ_S t^|S| (1 − t)^(D − |S|) Σ_{i∈S} −ln p(x_i | x outside S) (4 standard
    // errors; at a fixed t the integrand is bounded).
    let x: Vec<i64> = Vec::try_from(configs.get(5)).unwrap();
    let lp = |xt: &Tensor, _t: &Tensor| -> gm_core::Result<Tensor> {
        Ok(perfect_log_probs(xt, &configs, &p))
    };
    for schedule in [MaskSchedule::Linear, MaskSchedule::Cosine] {
        let process = MaskingProcess {
            schedule,
            levels: K,
        };
        for t in [0.2, 0.5, 0.8] {
            let draws = 20_000;
            let xs = Tensor::from_slice(&x).unsqueeze(0).repeat([draws, 1]);
            let ts = Tensor::full([draws], t, (Kind::Double, Device::Cpu));
            let xt = process.mask(&xs, &ts).unwrap();
            let values = process
                .integrand(&xs, &xt, &ts, &lp(&xt, &ts).unwrap())
                .unwrap();
            let mean = values.mean(Kind::Double).double_value(&[]);
            let se = values.std(true).double_value(&[]) / (draws as f64).sqrt();
            let alpha = schedule.alpha_at(t);
            let w = schedule
                .weight(&Tensor::from_slice(&[t]))
                .unwrap()
                .double_value(&[0]);
            let mut exact = 0.0;
            for set in 1..(1 << D) {
                let k = (0..D).filter(|i| set & (1 << i) != 0).count() as i32;
                let masked: Vec<i64> = (0..D)
                    .map(|i| {
                        if set & (1 << i) != 0 {
                            K
                        } else {
                            x[i as usize]
                        }
                    })
                    .collect();
                let l = perfect_log_probs(&Tensor::from_slice(&masked).unsqueeze(0), &configs, &p);
                let nll: f64 = (0..D)
                    .filter(|i| set & (1 << i) != 0)
                    .map(|i| -l.double_value(&[0, x[i as usize], i]))
                    .sum();
                exact += (1.0 - alpha).powi(k) * alpha.powi(D as i32 - k) * nll;
            }
            exact *= w;
            assert!(
                (mean - exact).abs() <= 4.0 * se,
                "{schedule:?} t={t}: integrand {mean} ± {se} vs exact {exact}"
            );
        }
        // The whole estimator (stratified times too), averaged over the distribution and over
        // 10 replications: its entropy within 4 standard errors of the replications.
        let reps: Vec<f64> = (0..10)
            .map(|_| {
                let est = process.nelbo(&configs, &lp, 400, 400).unwrap();
                (est * &p).sum(Kind::Double).double_value(&[])
            })
            .collect();
        let mean = reps.iter().sum::<f64>() / 10.0;
        let se = (reps.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / 9.0 / 10.0).sqrt();
        let entropy = -(&p * p.log()).sum(Kind::Double).double_value(&[]);
        assert!(
            (mean - entropy).abs() <= 4.0 * se,
            "{schedule:?}: {mean} ± {se} vs entropy {entropy}"
        );
    }
}

#[test]
fn with_true_conditionals_the_sampler_draws_the_distribution() {
    common::single_thread();
    gm_core::device::seed_torch(22);
    let (configs, p) = table();
    let process = MaskingProcess {
        schedule: MaskSchedule::Linear,
        levels: K,
    };
    let lp = |xt: &Tensor, _t: &Tensor| Ok(perfect_log_probs(xt, &configs, &p));
    let draws = 20_000;
    let (x, calls) = process
        .sample(draws, D, &lp, 200, 1.0, Device::Cpu)
        .unwrap();
    assert_eq!(calls, 200);
    assert!(x.lt(K).all().int64_value(&[]) == 1, "values left masked");
    let index = (x.select(1, 0) + x.select(1, 1) * K + x.select(1, 2) * K * K).to_kind(Kind::Int64);
    let counts = index
        .bincount::<Tensor>(None, K.pow(D as u32))
        .to_kind(Kind::Double);
    for c in 0..configs.size()[0] {
        let pc = p.double_value(&[c]);
        let freq = counts.double_value(&[c]) / draws as f64;
        let se = (pc * (1.0 - pc) / draws as f64).sqrt();
        // Two values revealed in the same step are drawn independently: with 200 steps that
        // happens for about 1% of samples, a bias well under 0.005.
        assert!(
            (freq - pc).abs() < 4.0 * se + 0.005,
            "config {c}: {freq} vs {pc}"
        );
    }
}

#[test]
fn schedule_weights_are_the_elbo_weights() {
    // Seeded: the mask shares below are checked against 4.3 standard errors.
    gm_core::device::seed_torch(25);
    let t = Tensor::from_slice(&[0.05f64, 0.3, 0.6, 0.95]);
    for s in [MaskSchedule::Linear, MaskSchedule::Cosine] {
        let h = 1e-6;
        let d = (s.alpha(&(&t + h)).unwrap() - s.alpha(&(&t - h)).unwrap()) / (2.0 * h);
        let want = -d / (-s.alpha(&t).unwrap() + 1.0);
        let err = (s.weight(&t).unwrap() - want).abs().max().double_value(&[]);
        assert!(err < 1e-6, "{s:?}: {err}");
        assert!((s.alpha_at(0.0) - 1.0).abs() < 1e-12);
        assert!(s.alpha_at(1.0).abs() < 1e-12);
        // The share masked at t is 1 − α_t.
        let process = MaskingProcess {
            schedule: s,
            levels: 2,
        };
        let x = Tensor::zeros([4, 20_000], (Kind::Int64, Device::Cpu));
        let masked = process
            .mask(&x, &t)
            .unwrap()
            .eq(2)
            .to_kind(Kind::Double)
            .mean_dim(1, false, Kind::Double);
        let err = (masked - (-s.alpha(&t).unwrap() + 1.0))
            .abs()
            .max()
            .double_value(&[]);
        assert!(err < 0.015, "{s:?}: masked share off by {err}");
    }
}

fn binary_model(kind: &str) -> (MaskedDiffusion, DataInfo) {
    let info = gm_core::data::named_info("mnist_binary").unwrap();
    let run = common::registry()
        .load_run("masked_diffusion/mnist_binary")
        .unwrap();
    let mut c: MaskedDiffusionConfig = run.model_config().unwrap();
    c.denoiser = match kind {
        "unet" => DenoiserConfig::Unet {
            channels: 8,
            multipliers: vec![1, 2, 2],
            attention: true,
        },
        _ => DenoiserConfig::Mlp {
            hidden: vec![32],
            time_embedding: 8,
        },
    };
    (MaskedDiffusion::new(&c, &info, Device::Cpu).unwrap(), info)
}

/// Untrained, the model predicts uniform values (zero last layer): the ELBO is 784 ln 2 =
/// 543.4 nats in expectation; 48 digits × 16 strata put the mean within 1% of it.
#[test]
fn untrained_binary_model_scores_the_uniform_model() {
    common::single_thread();
    gm_core::device::seed_torch(23);
    for kind in ["unet", "mlp"] {
        let (model, info) = binary_model(kind);
        let x = example_data(&info, 48);
        let ll = model.log_likelihood(&x).unwrap().unwrap();
        let nats = -ll.mean(Kind::Double).double_value(&[]);
        let uniform = 784.0 * 2f64.ln();
        assert!(
            (nats - uniform).abs() < 0.01 * uniform,
            "{kind}: {nats} vs {uniform}"
        );
        assert_eq!(model.last_evaluations(), Some(16));
    }
}

/// Training on a fixed pattern lowers the bound far below the uniform model's; samples are binary digits of the right
/// shape; bad options and data are refused.
#[test]
fn training_lowers_the_bound_and_samples_are_in_the_data_space() {
    common::single_thread();
    gm_core::device::seed_torch(24);
    let info = gm_core::data::named_info("mnist_binary").unwrap();
    let mut c = MaskedDiffusionConfig {
        denoiser: DenoiserConfig::Mlp {
            hidden: vec![32],
            time_embedding: 8,
        },
        ..MaskedDiffusionConfig::default()
    };
    c.ema = None;
    let mut model = MaskedDiffusion::new(&c, &info, Device::Cpu).unwrap();
    // A fixed stripe pattern: learnable, unlike uniform noise (whose entropy is 784 ln 2).
    let pattern = (Tensor::arange(784, (Kind::Int64, Device::Cpu)).remainder(3)).eq(0);
    let x = pattern
        .to_kind(Kind::Float)
        .reshape([1, 1, 28, 28])
        .repeat([64, 1, 1, 1]);
    for _ in 0..30 {
        model.train_step(&Batch::new(x.shallow_clone())).unwrap();
    }
    let nats = -model
        .log_likelihood(&x)
        .unwrap()
        .unwrap()
        .mean(Kind::Double)
        .double_value(&[]);
    assert!(
        nats < 0.9 * 784.0 * 2f64.ln(),
        "after 30 steps: {nats} nats"
    );
    let s = model
        .sample_with(3, &SampleOptions::new().steps(10))
        .unwrap();
    assert_eq!(s.size(), [3, 1, 28, 28]);
    assert!(s.eq(0.0).logical_or(&s.eq(1.0)).all().int64_value(&[]) == 1);
    assert_eq!(model.last_evaluations(), Some(10));
    let greedy = model.sample_with(2, &SampleOptions::new().steps(4).temperature(0.0));
    assert!(greedy.is_ok());
    assert!(
        error_text(model.sample_with(2, &SampleOptions::new().solver("ddim")))
            .contains("ancestral")
    );
    let continuous = DataInfo::new(&[2], gm_core::data::ValueKind::Continuous, 0);
    let c = MaskedDiffusionConfig::default();
    assert!(error_text(MaskedDiffusion::new(&c, &continuous, Device::Cpu)).contains("discrete"));
    assert!(error_text(model.nelbo(&x, 0, gm_core::model::WeightChoice::Ema)).contains("strata"));
}
