//! The laws every autoregressive network obeys: causality (exact zeros of the gradient, and
//! for the networks without a blind spot non-zeros for every earlier value), probabilities
//! that sum to 1 over a whole small data space, samples distributed as the likelihood says,
//! and fast samplers that draw exactly what the plain one draws.

mod common;

use common::*;
use gm_autoregressive::network::sample_by_full_passes;
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
            let output = m.output();
            let options = SampleOptions::new().temperature(0.9);
            let labels = (classes > 0).then(|| Tensor::from_slice(&[0i64, 1, 2, 2, 1, 0]));
            let encode = |v: &Tensor| output.encode(&v.unsqueeze(1)).map(|e| e.squeeze_dim(1));
            let net = m.network();
            // Both samplers record the parameters they draw each value from.
            let run = |fast: bool| {
                let mut seen = Vec::new();
                let mut draw = |p: &Tensor, pos: i64| {
                    seen.push((pos, p.copy()));
                    output.sample(p, &options)
                };
                gm_core::tch::manual_seed(21);
                let values = gm_core::tch::no_grad(|| {
                    if fast {
                        net.sample_sequential(
                            6,
                            labels.as_ref(),
                            0,
                            Device::Cpu,
                            &mut draw,
                            &encode,
                        )
                    } else {
                        sample_by_full_passes(
                            net,
                            6,
                            labels.as_ref(),
                            0,
                            Device::Cpu,
                            &mut draw,
                            &encode,
                        )
                    }
                })
                .unwrap();
                (values, seen)
            };
            let (fast, fast_params) = run(true);
            let (plain, plain_params) = run(false);
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
