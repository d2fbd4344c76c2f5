//! Helpers shared by the integration tests.
#![allow(dead_code)]

use gm_autoregressive::pixelrnn::PixelRnnVariant;
use gm_autoregressive::transformer::Positional;
use gm_autoregressive::{
    Autoregressive, AutoregressiveConfig, GatedPixelCnnConfig, LstmConfig, MadeNetConfig,
    NadeConfig, NetworkConfig, OutputConfig, PixelCnnConfig, PixelRnnConfig, TransformerConfig,
    WaveNetConfig,
};
use gm_core::data::ValueKind;
use gm_core::model::{Batch, GenerativeModel};
use gm_core::nn::{Activation, Ordering};
use gm_core::spec::{DataInfo, Registry};
use gm_core::tch::{Device, Kind, Tensor};

/// One libtorch thread: the test tensors are small, and spinning threads on a shared two-core
/// machine slow a test far more than they help.
pub fn single_thread() {
    gm_core::tch::set_num_threads(1);
}

pub fn registry() -> Registry {
    let mut r = Registry::new();
    gm_autoregressive::register(&mut r);
    r
}

/// A shipped config's model table and data set.
pub fn shipped(name: &str) -> (AutoregressiveConfig, String) {
    let run = registry()
        .load_run(&format!("autoregressive/{name}"))
        .unwrap();
    (run.model_config().unwrap(), run.dataset.clone())
}

/// The same model at a tiny size, for fast law checks.
pub fn shrink(c: &mut AutoregressiveConfig) {
    match &mut c.network {
        NetworkConfig::Nade(n) => n.hidden = 8,
        NetworkConfig::Made(m) => m.hidden = vec![16],
        NetworkConfig::Pixelcnn(p) => {
            p.channels = 8;
            p.blocks = 1;
            p.head_channels = 8;
        }
        NetworkConfig::GatedPixelcnn(g) => {
            g.channels = 4;
            g.layers = 2;
            g.head_channels = 4;
        }
        NetworkConfig::Transformer(t) => {
            t.width = 16;
            t.heads = 2;
            t.layers = 1;
            t.ff_multiple = 2;
        }
        NetworkConfig::Lstm(l) => {
            l.embedding = 8;
            l.hidden = 16;
            l.layers = 1;
        }
        NetworkConfig::Pixelrnn(p) => {
            p.hidden = 4;
            p.layers = 2;
            p.head_channels = 4;
        }
        NetworkConfig::Wavenet(w) => {
            w.channels = 8;
            w.skip_channels = 8;
            w.head_channels = 8;
            w.dilations = vec![1, 2];
        }
    }
}

/// Every network kind at a small size, by name, with smooth activations where there is a
/// choice (so no gradient vanishes at a dead unit).
pub fn small_networks() -> Vec<(&'static str, NetworkConfig)> {
    vec![
        (
            "nade",
            NetworkConfig::Nade(NadeConfig {
                hidden: 12,
                ordering: Ordering::Natural,
                ..NadeConfig::default()
            }),
        ),
        (
            "nade (random order)",
            NetworkConfig::Nade(NadeConfig {
                hidden: 12,
                ordering: Ordering::Random { seed: 3 },
                ..NadeConfig::default()
            }),
        ),
        (
            "nade (3 orders)",
            NetworkConfig::Nade(NadeConfig {
                hidden: 12,
                ordering: Ordering::Reversed,
                orderings: 3,
                ordering_seed: 5,
            }),
        ),
        (
            "made",
            NetworkConfig::Made(MadeNetConfig {
                hidden: vec![32, 32],
                activation: Activation::Tanh,
                ..MadeNetConfig::default()
            }),
        ),
        (
            "made (3 orders)",
            NetworkConfig::Made(MadeNetConfig {
                hidden: vec![32],
                activation: Activation::Tanh,
                orderings: 3,
                ordering: Ordering::Reversed,
                ordering_seed: 7,
            }),
        ),
        (
            "pixelcnn",
            NetworkConfig::Pixelcnn(PixelCnnConfig {
                channels: 8,
                blocks: 2,
                first_kernel: 3,
                kernel: 3,
                head_channels: 8,
            }),
        ),
        (
            "gated_pixelcnn",
            NetworkConfig::GatedPixelcnn(GatedPixelCnnConfig {
                channels: 6,
                layers: 5,
                kernel: 3,
                // Wide enough that no position has every ReLU of the head switched off (which
                // would zero its whole gradient and look like a blind spot).
                head_channels: 32,
            }),
        ),
        (
            "pixelrnn (row lstm)",
            NetworkConfig::Pixelrnn(PixelRnnConfig {
                variant: PixelRnnVariant::RowLstm,
                hidden: 6,
                layers: 3,
                kernel: 3,
                head_channels: 16,
            }),
        ),
        (
            "pixelrnn (diagonal bilstm)",
            NetworkConfig::Pixelrnn(PixelRnnConfig {
                variant: PixelRnnVariant::DiagonalBilstm,
                hidden: 6,
                layers: 2,
                kernel: 3,
                head_channels: 16,
            }),
        ),
        (
            "transformer",
            NetworkConfig::Transformer(TransformerConfig {
                width: 16,
                heads: 2,
                layers: 2,
                ff_multiple: 2,
                positional: Positional::Learned,
            }),
        ),
        (
            "transformer (sinusoidal)",
            NetworkConfig::Transformer(TransformerConfig {
                width: 16,
                heads: 4,
                layers: 1,
                ff_multiple: 2,
                positional: Positional::Sinusoidal,
            }),
        ),
        (
            "lstm (2 layers)",
            NetworkConfig::Lstm(LstmConfig {
                embedding: 8,
                hidden: 12,
                layers: 2,
            }),
        ),
        (
            "wavenet",
            NetworkConfig::Wavenet(WaveNetConfig {
                channels: 8,
                skip_channels: 12,
                head_channels: 16,
                // Receptive field 32: every earlier value of the 25-value causality test is seen.
                dilations: vec![1, 2, 4, 8, 16],
            }),
        ),
    ]
}

/// Networks that read values as tokens (an embedding lookup): their causality is checked by
/// enumeration, not gradients.
pub fn is_token_network(c: &NetworkConfig) -> bool {
    matches!(
        c,
        NetworkConfig::Transformer(_) | NetworkConfig::Lstm(_) | NetworkConfig::Wavenet(_)
    )
}

pub fn is_image_network(c: &NetworkConfig) -> bool {
    matches!(
        c,
        NetworkConfig::Pixelcnn(_) | NetworkConfig::GatedPixelcnn(_) | NetworkConfig::Pixelrnn(_)
    )
}

/// Data of `d` values in `0..levels`: images `[1, side, side]` for the convolutional networks
/// (d must then be a square), vectors `[d]` otherwise.
pub fn data_for(network: &NetworkConfig, d: i64, levels: u32, classes: i64) -> DataInfo {
    let shape: Vec<i64> = if is_image_network(network) {
        let side = (d as f64).sqrt() as i64;
        assert_eq!(side * side, d);
        vec![1, side, side]
    } else {
        vec![d]
    };
    DataInfo::new(&shape, ValueKind::Discrete { levels }, classes)
}

/// A model built from `network` for `data`, moved off its initial point by a few Adam steps on
/// random data (so biases and class embeddings are no longer zero).
pub fn model(
    network: &NetworkConfig,
    output: OutputConfig,
    data: &DataInfo,
    seed: i64,
) -> Autoregressive {
    gm_core::tch::manual_seed(seed);
    let config = AutoregressiveConfig {
        network: network.clone(),
        output,
        conditional: data.classes > 0,
        ..AutoregressiveConfig::default()
    };
    let mut m = Autoregressive::new(&config, data, Device::Cpu).unwrap();
    let x = gm_core::testing::example_data(data, 16);
    let labels = Tensor::randint(data.classes.max(1), [16], (Kind::Int64, Device::Cpu));
    for _ in 0..3 {
        let batch = if data.classes > 0 {
            Batch::with_labels(x.shallow_clone(), labels.shallow_clone())
        } else {
            Batch::new(x.shallow_clone())
        };
        m.train_step(&batch).unwrap();
    }
    // Output layers start small (the pixel networks' at a tenth of the usual scale, see
    // `pixelcnn::output_layer`); scaled up, the conditionals are far from uniform, so a sampler
    // that drew from the wrong conditional would show.
    let (output_layer, factor) = match network {
        NetworkConfig::Nade(_) => ("output_weight".to_string(), 5.0),
        NetworkConfig::Made(c) => (format!("layer{}.", c.hidden.len()), 5.0),
        // Heads start at 0.01 (LSTM) or below 0.002 (Transformer) in standard deviation.
        NetworkConfig::Transformer(_) => ("network.head.".to_string(), 1000.0),
        NetworkConfig::Lstm(_) => ("network.head.".to_string(), 200.0),
        NetworkConfig::Wavenet(_) => ("head_out".to_string(), 60.0),
        // The Row LSTM's hidden states are small at first: its head needs a larger push.
        NetworkConfig::Pixelrnn(_) => ("head_out".to_string(), 600.0),
        _ => ("head_out".to_string(), 60.0),
    };
    if matches!(output, OutputConfig::MixtureOfGaussians { .. }) {
        return m; // a density, integrated on a grid: keep its components wide
    }
    gm_core::tch::no_grad(|| {
        for (name, mut t) in m.state() {
            if name.starts_with("model.") && name.contains(&output_layer) {
                let _ = t.f_mul_scalar_(factor).unwrap();
            }
        }
    });
    m
}

/// Every point of `{0..levels}^d`, `[levels^d, d]` (float).
pub fn all_points(d: i64, levels: i64) -> Tensor {
    let n = levels.pow(d as u32);
    let values: Vec<f32> = (0..n)
        .flat_map(|c| (0..d).map(move |i| ((c / levels.pow(i as u32)) % levels) as f32))
        .collect();
    Tensor::from_slice(&values).reshape([n, d])
}

/// Draws `n` examples from `m`'s network in its first order, seeded alike each time: with the
/// network's own sampler (`fast`) or with one full pass per value. Returns the values and, in
/// the order drawn, each value's position and the parameters it was drawn from.
pub fn sample_recording(
    m: &Autoregressive,
    n: i64,
    labels: Option<&Tensor>,
    options: &gm_core::model::SampleOptions,
    fast: bool,
) -> (Tensor, Vec<(i64, Tensor)>) {
    let output = m.output();
    let encode = |v: &Tensor| output.encode(&v.unsqueeze(1)).map(|e| e.squeeze_dim(1));
    let net = m.network();
    let mut seen = Vec::new();
    let mut draw = |p: &Tensor, pos: i64| {
        seen.push((pos, p.copy()));
        output.sample(p, options)
    };
    gm_core::tch::manual_seed(21);
    let values = gm_core::tch::no_grad(|| {
        if fast {
            net.sample_sequential(n, labels, 0, Device::Cpu, &mut draw, &encode)
        } else {
            gm_autoregressive::network::sample_by_full_passes(
                net,
                n,
                labels,
                0,
                Device::Cpu,
                &mut draw,
                &encode,
            )
        }
    })
    .unwrap();
    (values, seen)
}
