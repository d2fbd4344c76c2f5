//! PixelCNN on colour images: values generated pixel by pixel and channel by channel within a
//! pixel. Causality across pixels and channels (by gradients), the earlier channels of a pixel
//! seen, probabilities that sum to 1 over whole small colour spaces, window sampling that draws
//! what full passes draw, the conformance harness, and a start near the uniform model.

mod common;

use common::*;
use gm_autoregressive::pixelcnn::colour_raster_order;
use gm_autoregressive::{NetworkConfig, OutputConfig, PixelCnnConfig};
use gm_core::data::ValueKind;
use gm_core::model::{GenerativeModel, SampleOptions};
use gm_core::spec::DataInfo;
use gm_core::tch::{Device, Kind, Tensor};
use gm_core::testing::{assert_causal, MustSee};

fn colour_pixelcnn(blocks: i64) -> NetworkConfig {
    NetworkConfig::Pixelcnn(PixelCnnConfig {
        channels: 12,
        blocks,
        first_kernel: 3,
        kernel: 3,
        head_channels: 9,
    })
}

/// Widths that are not multiples of 3 channels: groups of unequal sizes.
fn uneven_colour_pixelcnn() -> NetworkConfig {
    NetworkConfig::Pixelcnn(PixelCnnConfig {
        channels: 16,
        blocks: 1,
        first_kernel: 3,
        kernel: 3,
        head_channels: 10,
    })
}

fn colour_data(shape: &[i64], levels: u32) -> DataInfo {
    DataInfo::new(shape, ValueKind::Discrete { levels }, 0)
}

/// The order is pixels in raster order, channels within each pixel; no output sees its own
/// value or a later one; each channel sees the earlier channels of its own pixel (the
/// dependence that distinguishes a colour model from three grey ones) and every channel of
/// earlier pixels within reach.
#[test]
fn colour_pixelcnn_is_causal_across_pixels_and_channels() {
    single_thread();
    assert_eq!(colour_raster_order(3, 1, 2), [0, 2, 4, 1, 3, 5]);
    for (network, levels) in [
        (colour_pixelcnn(2), 2u32),
        (colour_pixelcnn(2), 4),
        (uneven_colour_pixelcnn(), 3),
    ] {
        let data = colour_data(&[3, 4, 4], levels);
        let m = model(&network, OutputConfig::Auto, &data, 1);
        let net = m.network();
        assert_eq!(net.orders()[0], colour_raster_order(3, 4, 4));
        gm_core::tch::manual_seed(5);
        let x = Tensor::randn([48], (Kind::Float, Device::Cpu));
        assert_causal(
            |input| net.forward(input, None, 0).unwrap(),
            &x,
            &net.orders()[0],
            MustSee::Nothing,
        );
        // Channel g of pixel (1, 2) sees channels 0..g of the same pixel.
        let pixel = 4 + 2;
        for g in 0..3i64 {
            let input = x.reshape([1, 48]).set_requires_grad(true);
            let out = net.forward(&input, None, 0).unwrap();
            out.select(2, g * 16 + pixel).sum(Kind::Float).backward();
            let grad = input.grad();
            for earlier in 0..3i64 {
                let dependence = grad.double_value(&[0, earlier * 16 + pixel]);
                if earlier < g {
                    assert!(
                        dependence != 0.0,
                        "{levels} levels: channel {g} misses channel {earlier}"
                    );
                } else {
                    assert_eq!(
                        dependence, 0.0,
                        "{levels} levels: channel {g} sees channel {earlier}"
                    );
                }
                // Every channel of the pixel to the left and of the one above.
                for before in [pixel - 1, pixel - 4] {
                    let seen = grad.double_value(&[0, earlier * 16 + before]);
                    assert!(
                        seen != 0.0,
                        "channel {g} misses channel {earlier} of pixel {before}"
                    );
                }
            }
        }
    }
}

/// exp(ln p(x)) summed over every colour image of a small space is 1.
#[test]
fn colour_probabilities_sum_to_one() {
    single_thread();
    for (shape, levels, network) in [
        (vec![3i64, 1, 2], 2i64, colour_pixelcnn(1)),
        (vec![2, 2, 1], 3, colour_pixelcnn(1)),
        (vec![3, 1, 2], 2, uneven_colour_pixelcnn()),
    ] {
        let d: i64 = shape.iter().product();
        let data = colour_data(&shape, levels as u32);
        let m = model(&network, OutputConfig::Auto, &data, 2);
        let points = all_points(d, levels);
        let mut batch_shape = vec![points.size()[0]];
        batch_shape.extend_from_slice(&shape);
        let ll = m
            .log_likelihood(&points.reshape(batch_shape.as_slice()))
            .unwrap()
            .unwrap()
            .to_kind(Kind::Double);
        let total = ll.exp().sum(Kind::Double).double_value(&[]);
        assert!(
            (total - 1.0).abs() < 1e-5,
            "{shape:?}, {levels} levels: sum {total}"
        );
    }
}

/// Window sampling visits the values in the colour order and draws exactly what full passes
/// draw, from the same conditionals.
#[test]
fn colour_window_sampling_draws_what_full_passes_draw() {
    single_thread();
    // 6×6 with a reach of 2: the windows are cropped.
    let data = colour_data(&[3, 6, 6], 4);
    let m = model(&colour_pixelcnn(1), OutputConfig::Auto, &data, 5);
    let options = SampleOptions::new().temperature(0.9);
    let (fast, fast_params) = sample_recording(&m, 4, None, &options, true);
    let (plain, plain_params) = sample_recording(&m, 4, None, &options, false);
    let visited: Vec<i64> = fast_params.iter().map(|(p, _)| *p).collect();
    assert_eq!(visited, colour_raster_order(3, 6, 6));
    for ((pa, a), (pb, b)) in fast_params.iter().zip(&plain_params) {
        assert_eq!(pa, pb);
        let gap = (a - b).abs().max().double_value(&[]);
        assert!(gap < 1e-5, "value {pa}'s parameters differ by {gap}");
    }
    assert!(fast.equal(&plain));
    // And the model's own sampler gives images of the data's shape and levels.
    let samples = m.sample(3).unwrap();
    assert_eq!(samples.size(), [3, 3, 6, 6]);
    assert!(samples.max().double_value(&[]) <= 3.0 && samples.min().double_value(&[]) >= 0.0);
}

/// The harness on a colour PixelCNN, and an untrained one within 3% of the uniform model.
#[test]
fn colour_pixelcnn_conforms_and_starts_near_uniform() {
    single_thread();
    let data = colour_data(&[3, 4, 4], 4);
    let config = gm_autoregressive::AutoregressiveConfig {
        network: colour_pixelcnn(1),
        ..Default::default()
    };
    let x = gm_core::testing::example_data(&data, 16);
    gm_core::testing::check_conformance(&gm_core::testing::ConformanceCase {
        name: "colour pixelcnn",
        spec: &config,
        data: &data,
        x: &x,
        labels: None,
        batch_size: 4,
        steps: 2,
    });
    gm_core::tch::manual_seed(0);
    let untrained = gm_autoregressive::Autoregressive::new(&config, &data, Device::Cpu).unwrap();
    let nll = -untrained
        .log_likelihood(&x)
        .unwrap()
        .unwrap()
        .mean(Kind::Double)
        .double_value(&[]);
    let uniform = 48.0 * 4f64.ln();
    assert!(
        (nll / uniform - 1.0).abs() < 0.03,
        "untrained NLL {nll} against {uniform}"
    );
    // Too few features for one group per channel: refused, naming the key.
    let narrow = gm_autoregressive::AutoregressiveConfig {
        network: NetworkConfig::Pixelcnn(PixelCnnConfig {
            channels: 4,
            ..PixelCnnConfig::default()
        }),
        ..Default::default()
    };
    let e = gm_autoregressive::Autoregressive::new(&narrow, &data, Device::Cpu).unwrap_err();
    assert!(e.to_string().contains("network.channels"), "{e}");
    let narrow_head = gm_autoregressive::AutoregressiveConfig {
        network: NetworkConfig::Pixelcnn(PixelCnnConfig {
            head_channels: 2,
            ..PixelCnnConfig::default()
        }),
        ..Default::default()
    };
    let e = gm_autoregressive::Autoregressive::new(&narrow_head, &data, Device::Cpu).unwrap_err();
    assert!(e.to_string().contains("network.head_channels"), "{e}");
    // No channels: refused, not a division by zero.
    let empty = colour_data(&[0, 4, 4], 4);
    assert!(gm_autoregressive::Autoregressive::new(&config, &empty, Device::Cpu).is_err());
}

/// The parameter count a config announces (checked against the budget before building) is the
/// count of the network it builds, grey and colour, at 2 to 256 levels.
#[test]
fn pixelcnn_parameter_counts_are_exact() {
    use gm_autoregressive::network::NetworkShape;
    for (shape, levels) in [
        (vec![1i64, 5, 5], 2u32),
        (vec![3, 5, 5], 2),
        (vec![3, 4, 4], 256),
        (vec![2, 3, 3], 5),
    ] {
        let data = colour_data(&shape, levels);
        for network in [colour_pixelcnn(2), uneven_colour_pixelcnn()] {
            let config = gm_autoregressive::AutoregressiveConfig {
                network: network.clone(),
                ..Default::default()
            };
            let m = gm_autoregressive::Autoregressive::new(&config, &data, Device::Cpu).unwrap();
            let announced = network.parameters(&NetworkShape {
                data: &data,
                params_per_value: m.output().params_per_value(),
                classes: 0,
            });
            assert_eq!(
                announced,
                m.num_parameters() as i128,
                "{shape:?}, {levels} levels"
            );
        }
    }
}
