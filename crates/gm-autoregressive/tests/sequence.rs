//! The sequence networks' generation tools: beam search (width 1 is greedy; a beam that holds
//! every prefix finds the exact best sequences, checked by enumeration; every returned
//! log-probability is the exact one) and scheduled sampling (its schedules, and the inputs it
//! feeds the network checked against plain passes on those inputs).

mod common;

use common::*;
use gm_autoregressive::scheduled::Curve;
use gm_autoregressive::{BeamSearch, NetworkConfig, OutputConfig, ScheduledSampling};
use gm_core::model::{GenerativeModel, SampleOptions};
use gm_core::spec::Budget;
use gm_core::tch::{Kind, Tensor};

fn sequence_networks() -> Vec<(&'static str, NetworkConfig)> {
    small_networks()
        .into_iter()
        .filter(|(_, n)| is_token_network(n))
        .collect()
}

fn search(width: usize, length: i64) -> BeamSearch {
    BeamSearch {
        width,
        length,
        prompt: Vec::new(),
        end_value: None,
        length_penalty: None,
    }
}

/// `ln p` of the first `values.len()` values of a sequence `prefix ++ values` (padded with
/// zeros: causality makes the padding irrelevant), minus the prefix's, from one full pass.
fn exact_log_prob(
    m: &gm_autoregressive::Autoregressive,
    d: i64,
    prefix: &[i64],
    values: &[i64],
) -> f64 {
    let mut seq: Vec<f32> = prefix.iter().chain(values).map(|&v| v as f32).collect();
    let scored = seq.len() as i64;
    seq.resize(d as usize, 0.0);
    let x = Tensor::from_slice(&seq).reshape([1, d]);
    let lp = m.conditional_log_probs(&x, None, 0).unwrap();
    lp.narrow(1, prefix.len() as i64, scored - prefix.len() as i64)
        .sum(Kind::Double)
        .double_value(&[])
}

#[test]
fn beam_of_width_one_is_greedy_decoding() {
    single_thread();
    for (name, network) in sequence_networks() {
        for levels in [2u32, 5] {
            let data = data_for(&network, 12, levels, 0);
            let m = model(&network, OutputConfig::Auto, &data, 8);
            let greedy = m
                .sample_with(1, &SampleOptions::new().temperature(0.0).seed(1))
                .unwrap();
            let greedy: Vec<i64> =
                Vec::try_from(greedy.reshape([-1]).to_kind(Kind::Int64)).unwrap();
            let found = m.beam_search(&search(1, 12)).unwrap();
            assert_eq!(found.len(), 1);
            assert_eq!(found[0].values, greedy, "{name}, {levels} levels");
            let exact = exact_log_prob(&m, 12, &[], &greedy);
            assert!(
                (found[0].log_prob - exact).abs() < 1e-4,
                "{name}: {} vs {exact}",
                found[0].log_prob
            );
        }
    }
}

/// On 3 values of 3 levels, a beam of 9 = 3² holds every prefix, so it returns exactly the 9
/// most likely of the 27 sequences, in order, with their exact log-probabilities (by
/// enumeration). A beam of 3 is only guaranteed its best to be a sequence of the space.
#[test]
fn a_beam_holding_every_prefix_finds_the_exact_best_sequences() {
    single_thread();
    for (name, network) in sequence_networks() {
        let data = data_for(&network, 3, 3, 0);
        let m = model(&network, OutputConfig::Auto, &data, 2);
        let points = all_points(3, 3);
        let lp: Vec<f64> = Vec::try_from(
            m.log_likelihood(&points)
                .unwrap()
                .unwrap()
                .to_kind(Kind::Double),
        )
        .unwrap();
        let rows: Vec<Vec<i64>> = (0..27)
            .map(|i| Vec::try_from(points.get(i).to_kind(Kind::Int64)).unwrap())
            .collect();
        let mut ranked: Vec<usize> = (0..27).collect();
        ranked.sort_by(|&a, &b| lp[b].total_cmp(&lp[a]));
        let found = m.beam_search(&search(9, 3)).unwrap();
        assert_eq!(found.len(), 9, "{name}");
        for (h, &i) in found.iter().zip(&ranked) {
            assert_eq!(h.values, rows[i], "{name}: {found:?}");
            assert!(
                (h.log_prob - lp[i]).abs() < 1e-5,
                "{name}: {} vs {}",
                h.log_prob,
                lp[i]
            );
        }
        // The distributions are far from uniform: the best sequence stands out.
        assert!(lp[ranked[0]] - lp[ranked[8]] > 0.5, "{name}: {lp:?}");
    }
}

/// With a prompt, an end value and length normalisation, every hypothesis ends at the end value
/// or at full length, its log-probability is the exact one given the prompt, and the ranking is
/// by `ln p / len^α`.
#[test]
fn beam_scores_are_exact_with_prompts_and_end_values() {
    single_thread();
    for (name, network) in sequence_networks() {
        let data = data_for(&network, 10, 4, 0);
        let m = model(&network, OutputConfig::Auto, &data, 4);
        let s = BeamSearch {
            width: 5,
            length: 7,
            prompt: vec![3, 1, 0],
            end_value: Some(2),
            length_penalty: Some(0.7),
        };
        let found = m.beam_search(&s).unwrap();
        assert_eq!(found.len(), 5, "{name}");
        for h in &found {
            assert!(
                h.values.len() == 7 || h.values.last() == Some(&2),
                "{name}: {h:?} neither ended nor reached the length"
            );
            assert!(
                h.values[..h.values.len() - 1].iter().all(|&v| v != 2),
                "{name}: {h:?}"
            );
            let exact = exact_log_prob(&m, 10, &s.prompt, &h.values);
            assert!(
                (h.log_prob - exact).abs() < 1e-4,
                "{name}: {} vs {exact}",
                h.log_prob
            );
            let score = h.log_prob / (h.values.len() as f64).powf(0.7);
            assert!((h.score - score).abs() < 1e-12);
        }
        assert!(found.windows(2).all(|w| w[0].score >= w[1].score), "{name}");
    }
}

#[test]
fn beam_search_refuses_what_it_cannot_do() {
    single_thread();
    let (name, network) = sequence_networks().remove(0);
    let data = data_for(&network, 6, 3, 0);
    let m = model(&network, OutputConfig::Auto, &data, 4);
    for (bad, key) in [
        (search(0, 3), "width"),
        (search(2, 7), "length"),
        (
            BeamSearch {
                prompt: vec![3],
                ..search(2, 3)
            },
            "prompt",
        ),
        (
            BeamSearch {
                end_value: Some(-1),
                ..search(2, 3)
            },
            "end_value",
        ),
        (
            BeamSearch {
                length_penalty: Some(f64::NAN),
                ..search(2, 3)
            },
            "length_penalty",
        ),
    ] {
        let e = gm_core::testing::error_text(m.beam_search(&bad));
        assert!(e.contains(key), "{name}: {e}");
    }
    let made = small_networks()
        .into_iter()
        .find(|(n, _)| *n == "made")
        .unwrap()
        .1;
    let m = model(&made, OutputConfig::Auto, &data_for(&made, 6, 3, 0), 4);
    let e = gm_core::testing::error_text(m.beam_search(&search(2, 3)));
    assert!(e.contains("network.kind"), "{e}");
}

/// Every curve is 0 before the start, reaches its maximum at the end of the ramp, never falls,
/// and its steps scale with the budget.
#[test]
fn scheduled_sampling_curves() {
    for curve in [Curve::Linear, Curve::Exponential, Curve::InverseSigmoid] {
        let s = ScheduledSampling {
            curve,
            max_probability: 0.4,
            start_step: 100,
            ramp_steps: 200,
        };
        assert_eq!(s.probability(0), 0.0);
        assert_eq!(s.probability(100), 0.0);
        assert!((s.probability(300) - 0.4).abs() < 1e-12, "{curve:?}");
        assert!((s.probability(10_000) - 0.4).abs() < 1e-12);
        let p: Vec<f64> = (0..400).map(|t| s.probability(t)).collect();
        assert!(p.windows(2).all(|w| w[1] >= w[0]), "{curve:?} falls");
        let half = s.probability(200) / 0.4;
        match curve {
            Curve::Linear => assert!((half - 0.5).abs() < 1e-12),
            Curve::Exponential => assert!(half > 0.9),
            Curve::InverseSigmoid => assert!((half - 0.5).abs() < 1e-9),
        }
        let scaled = s.scaled(&Budget::new(1000, 250).unwrap());
        assert_eq!((scaled.start_step, scaled.ramp_steps), (25, 50));
    }
}

/// Scheduled sampling with probability 0 is the plain pass; with probability 1 every input is
/// the model's own draw, so its outputs equal a plain pass on the drawn sequence. Checked for
/// the step-by-step LSTM and the two-pass default (Transformer, MADE).
#[test]
fn scheduled_inputs_are_the_models_own_draws() {
    single_thread();
    let networks: Vec<_> = small_networks()
        .into_iter()
        .filter(|(n, _)| ["transformer", "lstm (2 layers)", "made", "wavenet"].contains(n))
        .collect();
    assert_eq!(networks.len(), 4);
    for (name, network) in networks {
        let data = data_for(&network, 8, 4, 0);
        let m = model(&network, OutputConfig::Auto, &data, 3);
        let output = m.output();
        let x = gm_core::testing::example_data(&data, 5).reshape([5, 8]);
        let encoded = output.encode(&x).unwrap();
        let net = m.network();
        let plain = net.forward(&encoded, None, 0).unwrap();
        let options = SampleOptions::default();
        let encode = |v: &Tensor| output.encode(v);
        let drawn = std::cell::RefCell::new(Vec::<Tensor>::new());
        let seen = std::cell::RefCell::new(Vec::<Tensor>::new());
        let mut draw = |p: &Tensor| {
            let v = output.sample(p, &options)?;
            drawn.borrow_mut().push(v.shallow_clone());
            seen.borrow_mut().push(p.copy());
            Ok(v)
        };
        let none = net
            .forward_scheduled(&encoded, None, 0, 0.0, &mut draw, &encode)
            .unwrap();
        assert!(
            (&none - &plain).abs().max().double_value(&[]) < 1e-6,
            "{name}: probability 0 is not teacher forcing"
        );
        drawn.borrow_mut().clear();
        seen.borrow_mut().clear();
        let all = net
            .forward_scheduled(&encoded, None, 0, 1.0, &mut draw, &encode)
            .unwrap();
        // The LSTM draws one value per step ([5] each), the default all at once ([5·8]).
        let drawn = drawn.into_inner();
        let seen = seen.into_inner();
        // Each draw came from the conditional of the position it fills: step by step, from the
        // parameters the pass returns for that position; two-pass, from the true-data pass.
        let p = plain.size()[1];
        if seen.len() == 8 {
            for (t, params) in seen.iter().enumerate() {
                let gap = (params - all.select(2, t as i64))
                    .abs()
                    .max()
                    .double_value(&[]);
                assert!(
                    gap < 1e-6,
                    "{name}: step {t} drew from other parameters ({gap})"
                );
            }
        } else {
            let flat = plain.permute([0, 2, 1]).reshape([40, p]);
            let gap = (&seen[0] - flat).abs().max().double_value(&[]);
            assert!(
                gap < 1e-6,
                "{name}: the draws came from other positions ({gap})"
            );
        }
        let sequence = if drawn.len() == 8 {
            Tensor::stack(&drawn, 1)
        } else {
            drawn.last().unwrap().reshape([5, 8])
        };
        let replay = net
            .forward(&output.encode(&sequence).unwrap(), None, 0)
            .unwrap();
        let gap = (&all - &replay).abs().max().double_value(&[]);
        assert!(
            gap < 1e-5,
            "{name}: own-draw pass differs from a pass on the draws by {gap}"
        );
        assert!(
            (&all - &plain).abs().max().double_value(&[]) > 1e-3,
            "{name}: the draws changed nothing"
        );
    }
}

/// A training step under scheduled sampling reports the schedule's probability and trains on
/// inputs that are partly the model's draws: its loss differs from teacher forcing's on the same
/// weights and batch once the probability is above 0.
#[test]
fn training_follows_the_schedule() {
    single_thread();
    use gm_core::model::Batch;
    let network = sequence_networks().remove(0).1;
    let data = data_for(&network, 8, 4, 0);
    let x = gm_core::testing::example_data(&data, 16);
    let losses = |scheduled: Option<ScheduledSampling>| -> Vec<(f64, f64)> {
        gm_core::tch::manual_seed(9);
        let config = gm_autoregressive::AutoregressiveConfig {
            network: network.clone(),
            scheduled_sampling: scheduled,
            ..Default::default()
        };
        let mut m =
            gm_autoregressive::Autoregressive::new(&config, &data, gm_core::tch::Device::Cpu)
                .unwrap();
        (0..4)
            .map(|_| {
                let out = m
                    .train_step(&Batch::new(x.shallow_clone()))
                    .unwrap()
                    .to_host(0)
                    .unwrap();
                let get = |k: &str| out.iter().find(|(n, _)| n == k).map_or(0.0, |v| v.1);
                (get("loss"), get("own_draw_probability"))
            })
            .collect()
    };
    let plain = losses(None);
    let scheduled = losses(Some(ScheduledSampling {
        curve: Curve::Linear,
        max_probability: 0.5,
        start_step: 1,
        ramp_steps: 2,
    }));
    let probs: Vec<f64> = scheduled.iter().map(|v| v.1).collect();
    assert_eq!(probs, vec![0.0, 0.0, 0.25, 0.5]);
    assert_eq!(
        plain[0].0, scheduled[0].0,
        "before the ramp: teacher forcing"
    );
    assert_eq!(plain[1].0, scheduled[1].0);
    assert!(
        (plain[3].0 - scheduled[3].0).abs() > 1e-4,
        "{plain:?} vs {scheduled:?}"
    );
}
