//! Sampling the multi-scale (Glow) flow stays finite where its couplings expand sharply.
//!
//! The affine coupling's forward scale is `sigmoid(raw + 2) ∈ (0, 1)`, so its inverse divides
//! by it: a trained flow fed a latent off its data can reach a coupling whose conditioner
//! outputs a very negative `raw`, expand the values by orders of magnitude, and hand them to the
//! next conditioner, whose `raw` is then of the same size: `exp(-log_scale)` overflows, the
//! infinities meet in the 1×1 convolutions and become NaN (the quick benchmark's
//! `flow/glow/mnist_binary` drew 1000 digits holding 1378 NaN values that way).

use gm_core::model::{GenerativeModel, SampleOptions};
use gm_core::tch::{nn, Device, Kind, Tensor};
use gm_core::GmError;
use gm_flow::image::{ImageCoupling, ImageMask};
use gm_flow::*;

fn glow() -> FlowModel {
    let config = FlowConfig {
        architecture: Architecture::MultiScale {
            levels: 2,
            steps: 2,
            hidden_channels: 8,
            logit_alpha: 0.05,
        },
        data: DataSpace::Discrete { levels: 2 },
        ..Default::default()
    };
    FlowModel::new(&config, &[1, 8, 8], Device::Cpu).unwrap()
}

/// Gives every coupling random output weights and a raw-scale bias of `bias`, so that its
/// inverse multiplies by about `exp(-bias - 2)` and feeds the next conditioner huge values.
fn push_couplings(vs: &nn::VarStore, bias: f64) {
    gm_core::tch::no_grad(|| {
        for (name, mut v) in vs.variables() {
            if name.ends_with("conv_out.bias") {
                let c = v.size()[0] / 2;
                let _ = v.narrow(0, c, c).fill_(bias);
            } else if name.ends_with("conv_out.weight") {
                let noise = v.randn_like() * 0.3;
                v.copy_(&noise);
            }
        }
    });
}

fn non_finite(t: &Tensor) -> i64 {
    t.isfinite().logical_not().sum(Kind::Int64).int64_value(&[])
}

#[test]
fn sampling_a_glow_with_tiny_coupling_scales_stays_finite() {
    for (seed, bias) in [(0, -30.0), (1, -60.0), (2, -200.0)] {
        gm_core::tch::manual_seed(seed);
        let model = glow();
        push_couplings(model.var_store(), bias);
        let x = model
            .sample_with(64, &SampleOptions::default())
            .unwrap_or_else(|e| panic!("bias {bias}: sampling failed: {e}"));
        assert_eq!(x.size(), [64, 1, 8, 8]);
        assert_eq!(non_finite(&x), 0, "bias {bias}: non-finite samples");
        // Binary levels, nothing else.
        let ones = x.eq(1.0).sum(Kind::Int64).int64_value(&[]);
        let zeros = x.eq(0.0).sum(Kind::Int64).int64_value(&[]);
        assert_eq!(ones + zeros, 64 * 64, "bias {bias}");
    }
}

#[test]
fn the_coupling_inverse_stays_finite_where_its_scale_underflows() {
    for kind in [Kind::Float, Kind::Double] {
        let mut vs = nn::VarStore::new(Device::Cpu);
        vs.set_kind(kind);
        let layer = ImageCoupling::new(&vs.root(), 4, 8, ImageMask::Channel { second_half: false })
            .unwrap();
        gm_core::tch::manual_seed(3);
        // sigmoid(raw + 2) is below 1e-300, 0 in float32: the exact inverse has no float value.
        push_couplings(&vs, -800.0);
        let y = Tensor::randn([16, 4, 6, 6], (kind, Device::Cpu)) * 1e3;
        let (x, ld) = FlowLayer::inverse(&layer, &y, None).unwrap();
        assert_eq!(non_finite(&x), 0, "{kind:?}: inverse not finite");
        assert_eq!(non_finite(&ld), 0, "{kind:?}: inverse log-det not finite");
        // The passed-through half is untouched.
        assert!(x.narrow(1, 0, 2).equal(&y.narrow(1, 0, 2)));
    }
}

#[test]
fn a_non_finite_draw_is_refused_naming_the_layer() {
    gm_core::tch::manual_seed(4);
    let model = glow();
    // A NaN in one ActNorm of the coarser level poisons every draw from there on.
    gm_core::tch::no_grad(|| {
        let vars = model.var_store().variables();
        let (_, v) = vars
            .iter()
            .find(|(name, _)| name.ends_with("level1.step1.actnorm.bias"))
            .expect("the second step of the second level has an ActNorm");
        let _ = v.shallow_clone().fill_(f64::NAN);
    });
    match model.sample_with(8, &SampleOptions::default()) {
        Err(GmError::NonFinite { what, .. }) => {
            assert!(
                what.contains("level 1") && what.contains("step 1") && what.contains("actnorm"),
                "the error should name the layer: {what}"
            );
        }
        Err(e) => panic!("expected a NonFinite error, got {e}"),
        Ok(x) => panic!(
            "a NaN parameter gave samples with {} non-finite values and no error",
            non_finite(&x)
        ),
    }
}
