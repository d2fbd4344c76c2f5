//! The laws every autoregressive network obeys: causality (exact zeros of the gradient, and
//! for the networks without a blind spot non-zeros for every earlier value), probabilities
//! that sum to 1 over a whole small data space, samples distributed as the likelihood says,
//! and fast samplers that draw exactly what the plain one draws.

mod common;

use common::*;
use gm_autoregressive::pixelrnn::PixelRnnVariant;
use gm_autoregressive::{NetworkConfig, OutputConfig};
use gm_core::model::{GenerativeModel, SampleOptions};
use gm_core::tch::{Device, Kind, Tensor};
use gm_core::testing::{assert_causal, assert_causal_discrete, MustSee};

/// Output position d of every network depends on no value at or after d in its order; all but
/// PixelCNN see every earlier value (on inputs inside their receptive field), and PixelCNN has
/// its known blind spot.
#[test]
fn every_network_is_causal() {
    single_thread();
    for (name, network) in small_networks() {
        for levels in [2u32, 4] {
            if matches!(network, NetworkConfig::Nade(_)) && levels != 2 {
                continue; // NADE is binary only.
            }
            let classes = if matches!(network, NetworkConfig::GatedPixelcnn(_)) {
                3
            } else {
                0
            };
            let data = data_for(&network, 25, levels, classes);
            let m = model(&network, OutputConfig::Auto, &data, 1);
            let net = m.network();
            let labels = (classes > 0).then(|| Tensor::from_slice(&[2i64]));
            for (k, order) in net.orders().iter().enumerate() {
                eprintln!("causality: {name}, {levels} levels, order {k}");
                gm_core::tch::manual_seed(5);
                let x = Tensor::randn([25], (Kind::Float, Device::Cpu));
                // PixelCNN's blind spot; the Row LSTM's triangular context.
                let must_see = if has_unseen_past(&network) {
                    MustSee::Nothing
                } else {
                    MustSee::AllEarlier
                };
                let seen = if is_token_network(&network) {
                    let output = m.output();
                    let x = (x.abs() * 7.0).floor().remainder(levels as i64);
                    assert_causal_discrete(
                        |input| {
                            net.forward(&output.encode(input).unwrap(), labels.as_ref(), k)
                                .unwrap()
                        },
                        &x,
                        levels as i64,
                        order,
                        must_see,
                    )
                } else {
                    assert_causal(
                        |input| net.forward(input, labels.as_ref(), k).unwrap(),
                        &x,
                        order,
                        must_see,
                    )
                };
                if has_unseen_past(&network) {
                    // PixelCNN's blind spot, the Row LSTM's triangle: some pixel misses earlier
                    // pixels.
                    let blind = seen.iter().enumerate().any(|(s, &c)| c < s);
                    assert!(
                        blind,
                        "{name}: expected PixelCNN's blind spot, saw {seen:?}"
                    );
                }
            }
        }
    }
}

/// The networks some of whose outputs miss part of the past: PixelCNN (its blind spot) and the
/// Row LSTM (a triangle of rows above). The Diagonal BiLSTM sees all of it.
fn has_unseen_past(network: &NetworkConfig) -> bool {
    match network {
        NetworkConfig::Pixelcnn(_) => true,
        NetworkConfig::Pixelrnn(p) => p.variant == PixelRnnVariant::RowLstm,
        _ => false,
    }
}

/// exp(ln p(x)) summed over every point of a small space is 1: 2×2 images / 4-vectors of
/// bits, and 3 levels on 4 values, for every network (a conditional one for every label and
/// for its label-marginal).
#[test]
fn probabilities_sum_to_one_over_the_whole_space() {
    single_thread();
    for (name, network) in small_networks() {
        for levels in [2i64, 3] {
            if matches!(network, NetworkConfig::Nade(_)) && levels != 2 {
                continue;
            }
            let classes = if matches!(network, NetworkConfig::GatedPixelcnn(_)) {
                2
            } else {
                0
            };
            let data = data_for(&network, 4, levels as u32, classes);
            let m = model(&network, OutputConfig::Auto, &data, 2);
            let points = all_points(4, levels);
            let mut shape = vec![points.size()[0]];
            shape.extend_from_slice(&data.event_shape);
            let x = points.reshape(shape.as_slice());
            let mut cases: Vec<Option<Tensor>> = vec![None];
            for y in 0..classes {
                cases.push(Some(Tensor::full(
                    [x.size()[0]],
                    y,
                    (Kind::Int64, Device::Cpu),
                )));
            }
            for labels in cases {
                let ll = m
                    .log_likelihood_given(&x, labels.as_ref())
                    .unwrap()
                    .unwrap()
                    .to_kind(Kind::Double);
                let total = ll.exp().sum(Kind::Double).double_value(&[]);
                assert!(
                    (total - 1.0).abs() < 1e-5,
                    "{name}, {levels} levels, labels {:?}: probabilities sum to {total}",
                    labels.as_ref().map(|l| l.int64_value(&[0]))
                );
            }
        }
    }
}

/// A mixture-of-Gaussians MADE on 2D real data is a density: it integrates to 1 on a grid.
#[test]
fn mixture_output_integrates_to_one() {
    single_thread();
    let network = NetworkConfig::Made(gm_autoregressive::MadeNetConfig {
        hidden: vec![16],
        ..Default::default()
    });
    let data = gm_core::spec::DataInfo::new(&[2], gm_core::data::ValueKind::Continuous, 0);
    let m = model(
        &network,
        OutputConfig::MixtureOfGaussians { components: 3 },
        &data,
        3,
    );
    gm_core::testing::assert_density_integrates_2d(
        |x| m.log_likelihood(x).unwrap().unwrap(),
        -9.0,
        9.0,
        361,
        2e-3,
    );
}

/// Sample frequencies over all 16 binary 2×2 images (or 4-vectors) match exp(ln p) within 5
/// standard errors (plus 1e-3), for every network, and for the conditional Gated PixelCNN per
/// label against ln p(x | y): the sampler and the likelihood describe the same distribution.
#[test]
fn samples_follow_the_likelihood() {
    single_thread();
    let n = 20_000;
    for (name, network) in small_networks() {
        let classes = if matches!(network, NetworkConfig::GatedPixelcnn(_)) {
            2
        } else {
            0
        };
        let data = data_for(&network, 4, 2, classes);
        let m = model(&network, OutputConfig::Auto, &data, 4);
        let mut shape = vec![16];
        shape.extend_from_slice(&data.event_shape);
        let points = all_points(4, 2).reshape(shape.as_slice());
        let label_cases: Vec<Option<i64>> = if classes > 0 {
            (0..classes).map(Some).collect()
        } else {
            vec![None]
        };
        for label in label_cases {
            let mut options = SampleOptions::new().seed(11);
            let mut given = None;
            if let Some(y) = label {
                options = options.labels(Tensor::full([n], y, (Kind::Int64, Device::Cpu)));
                given = Some(Tensor::full([16], y, (Kind::Int64, Device::Cpu)));
            }
            let samples = m.sample_with(n, &options).unwrap().reshape([n, 4]);
            let code = (samples.to_kind(Kind::Int64)
                * Tensor::from_slice(&[1i64, 2, 4, 8]).unsqueeze(0))
            .sum_dim_intlist(&[1i64][..], false, Kind::Int64);
            let counts = code.bincount::<Tensor>(None, 16).to_kind(Kind::Double) / n as f64;
            let p = m
                .log_likelihood_given(&points, given.as_ref())
                .unwrap()
                .unwrap()
                .to_kind(Kind::Double)
                .exp();
            let spread = (p.max() - p.min()).double_value(&[]);
            // The probabilities must span at least half the uniform value (1/16), so a sampler
            // that ignored its conditionals would fail.
            assert!(
                spread > 0.5 / 16.0,
                "{name}: the test distribution is too close to uniform ({spread})"
            );
            let se = (&p * (p.ones_like() - &p) / n as f64).sqrt();
            let excess = ((&counts - &p).abs() - se * 5.0 - 1e-3)
                .max()
                .double_value(&[]);
            assert!(
                excess <= 0.0,
                "{name}, label {label:?}: frequencies {counts:?} vs probabilities {p:?}"
            );
        }
    }
}

/// NADE's running sum and the window samplers of PixelCNN and Gated PixelCNN (conditional
/// too) draw exactly what one full network pass per value draws, from the same seed.
#[test]
fn fast_samplers_draw_what_full_passes_draw() {
    single_thread();
    for (name, network) in small_networks() {
        let classes = if matches!(network, NetworkConfig::GatedPixelcnn(_)) {
            3
        } else {
            0
        };
        for levels in [2u32, 5] {
            if matches!(network, NetworkConfig::Nade(_)) && levels != 2 {
                continue;
            }
            // 10×10: wider than the small networks' reach, so the windows are cropped.
            let data = data_for(&network, 100, levels, classes);
            let m = model(&network, OutputConfig::Auto, &data, 5);
            let options = SampleOptions::new().temperature(0.9);
            let labels = (classes > 0).then(|| Tensor::from_slice(&[0i64, 1, 2, 2, 1, 0]));
            // Both samplers record the parameters they draw each value from.
            let (fast, fast_params) = sample_recording(&m, 6, labels.as_ref(), &options, true);
            let (plain, plain_params) = sample_recording(&m, 6, labels.as_ref(), &options, false);
            assert_eq!(fast_params.len(), plain_params.len());
            for ((pa, a), (pb, b)) in fast_params.iter().zip(&plain_params) {
                assert_eq!(
                    pa, pb,
                    "{name}: the samplers visit values in different orders"
                );
                let gap = (a - b).abs().max().double_value(&[]);
                assert!(
                    gap < 1e-5,
                    "{name}, {levels} levels: value {pa}'s parameters differ by {gap}"
                );
            }
            assert!(
                fast.equal(&plain),
                "{name}, {levels} levels: {fast:?} vs {plain:?}"
            );
        }
    }
}

/// Temperature 0 and top-k = 1 both take the most likely value at each step (greedy), and a
/// greedy sample's every value is the argmax of its conditional given the values before it.
#[test]
fn greedy_decoding_takes_the_most_likely_value() {
    single_thread();
    for (name, network) in small_networks() {
        let data = data_for(&network, 9, 3, 0);
        if matches!(network, NetworkConfig::Nade(_)) {
            continue;
        }
        let m = model(&network, OutputConfig::Auto, &data, 6);
        // The same seed: an ensemble draws each example's order first.
        let cold = m
            .sample_with(4, &SampleOptions::new().temperature(0.0).seed(1))
            .unwrap();
        let top1 = m
            .sample_with(4, &SampleOptions::new().top_k(1).seed(1))
            .unwrap();
        assert!(
            cold.equal(&top1),
            "{name}: temperature 0 and top-k 1 differ"
        );
        if m.network().orders().len() > 1 {
            continue; // each example of an ensemble uses its own order
        }
        let flat = cold.reshape([4, 9]);
        let lp = m.conditional_log_probs(&flat, None, 0).unwrap(); // ln p(x_d | x_<d) of the drawn values
        for level in 0..3 {
            let other = flat.full_like(level as f64);
            // Replacing one value changes only its own conditional among those at or before it;
            // the drawn value must score at least as high as any alternative.
            for d in 0..9i64 {
                let alt = flat.copy();
                alt.select(1, d).copy_(&other.select(1, d));
                let lp_alt = m.conditional_log_probs(&alt, None, 0).unwrap();
                let diff = (lp.select(1, d) - lp_alt.select(1, d))
                    .min()
                    .double_value(&[]);
                assert!(
                    diff >= -1e-6,
                    "{name}: value {d} is not the most likely ({diff})"
                );
            }
        }
    }
}

/// NADE's hand-written pass (the CPU kernel `fused_bernoulli_nll`) gives the NLL of every
/// example and the gradient of their sum that autograd gives through `forward`, in natural
/// and random orders and at hidden sizes that are and are not multiples of the kernel's
/// vector width; and the same bits on one thread as on three.
#[test]
fn nade_hand_written_pass_matches_autograd() {
    use gm_autoregressive::NadeConfig;
    use gm_core::nn::Ordering;
    single_thread();
    for (d, hidden, ordering, order) in [
        (16, 12, Ordering::Natural, 0),
        (25, 37, Ordering::Random { seed: 5 }, 0),
        (9, 8, Ordering::Reversed, 0),
        (16, 20, Ordering::Natural, 2),
    ] {
        let network = NetworkConfig::Nade(NadeConfig {
            hidden,
            ordering,
            orderings: order + 1,
            ordering_seed: 9,
        });
        let data = data_for(&network, d, 2, 0);
        let m = model(&network, OutputConfig::Auto, &data, 4);
        gm_core::tch::manual_seed(11);
        let x = Tensor::rand([13, d], (Kind::Float, Device::Cpu))
            .lt(0.4)
            .to_kind(Kind::Float);
        let fused = m
            .network()
            .fused_bernoulli_nll(&x, order, true)
            .unwrap()
            .expect("NADE has a CPU pass in single precision");
        assert_eq!(fused.gradients.len(), 4);
        for (param, _) in &fused.gradients {
            param.shallow_clone().zero_grad();
        }
        let log_probs = m.conditional_log_probs(&x, None, order).unwrap();
        let nll = log_probs
            .sum_dim_intlist(&[1i64][..], false, Kind::Double)
            .neg();
        let nll_gap = (&nll - &fused.nll).abs().max().double_value(&[]);
        assert!(
            nll_gap < 2e-4,
            "d {d}, H {hidden}: NLLs differ by {nll_gap}"
        );
        nll.sum(Kind::Double).backward();
        for (param, grad) in &fused.gradients {
            let want = param.grad();
            let scale = want.abs().max().double_value(&[]).max(1e-3);
            let gap = (&want - grad).abs().max().double_value(&[]);
            assert!(
                gap < 1e-5 * scale.max(1.0) + 1e-4 * scale,
                "d {d}, H {hidden}, {:?}: gradient differs by {gap} (largest {scale})",
                param.size()
            );
        }
        // The parts of the batch are fixed: more threads give the same bits.
        gm_core::tch::set_num_threads(3);
        let again = m
            .network()
            .fused_bernoulli_nll(&x, order, true)
            .unwrap()
            .unwrap();
        single_thread();
        assert!(again.nll.equal(&fused.nll));
        for ((_, a), (_, b)) in again.gradients.iter().zip(&fused.gradients) {
            assert!(a.equal(b));
        }
        // Without gradients: the same NLLs and none of the work.
        let plain = m
            .network()
            .fused_bernoulli_nll(&x, order, false)
            .unwrap()
            .unwrap();
        assert!(plain.nll.equal(&fused.nll) && plain.gradients.is_empty());
    }
}

/// A NADE training step on the hand-written pass hands the optimizer exactly autograd's
/// gradient of the loss, `−mean_b Σ_d ln p(x_d | x before d) / D` (no clipping, so the
/// gradients are read as they were applied).
#[test]
fn nade_training_step_applies_the_gradient_of_its_loss() {
    use gm_autoregressive::{Autoregressive, AutoregressiveConfig, NadeConfig};
    use gm_core::model::Batch;
    use gm_core::nn::Ordering;
    single_thread();
    gm_core::tch::manual_seed(2);
    let network = NetworkConfig::Nade(NadeConfig {
        hidden: 10,
        ordering: Ordering::Random { seed: 1 },
        ..NadeConfig::default()
    });
    let data = data_for(&network, 16, 2, 0);
    let mut config = AutoregressiveConfig {
        network,
        ..AutoregressiveConfig::default()
    };
    config.optimizer.grad_clip_norm = None;
    let mut m = Autoregressive::new(&config, &data, Device::Cpu).unwrap();
    let x = Tensor::rand([6, 16], (Kind::Float, Device::Cpu))
        .lt(0.3)
        .to_kind(Kind::Float);
    let params: Vec<Tensor> = m
        .network()
        .fused_bernoulli_nll(&x, 0, true)
        .unwrap()
        .unwrap()
        .gradients
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    let loss = m
        .conditional_log_probs(&x, None, 0)
        .unwrap()
        .sum_dim_intlist(&[1i64][..], false, Kind::Float)
        .mean(Kind::Float)
        .neg()
        / 16.0;
    let want = Tensor::run_backward(&[loss], &params, false, false);
    m.train_step(&Batch::new(x.shallow_clone())).unwrap();
    for (p, want) in params.iter().zip(&want) {
        let got = p.grad();
        let scale = want.abs().max().double_value(&[]).max(1e-6);
        let gap = (&got - want).abs().max().double_value(&[]);
        assert!(
            gap < 1e-4 * scale,
            "{:?}: applied gradient off by {gap} (largest {scale})",
            p.size()
        );
    }
}
