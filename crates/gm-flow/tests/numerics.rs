//! Float32 accuracy of the rational-quadratic spline's inverse in steep bins, against the same
//! spline evaluated in float64.

use gm_core::tch::{Device, Kind, Tensor};
use gm_flow::spline::rational_quadratic;

/// Parameters for one dimension with 8 bins where one bin is 40 times steeper than the rest.
fn steep_params() -> Tensor {
    let k = 8;
    let mut raw = vec![0.0f64; 3 * k - 1];
    raw[3] = -3.0; // a narrow bin...
    raw[k + 3] = 3.0; // ...that is tall: a slope of about 400 there
    raw[2 * k + 2] = 4.0; // and steep derivatives at its knots
    raw[2 * k + 3] = 4.0;
    Tensor::from_slice(&raw).reshape([1, 1, 3 * k as i64 - 1])
}

#[test]
fn float32_inverse_matches_float64_in_steep_bins() {
    let params64 = steep_params();
    // The float64 reference takes the same float32-rounded inputs, so that only the solver's
    // own error is measured, not the conditioning of the problem.
    let params32 = params64.to_kind(Kind::Float);
    let params64 = params32.to_kind(Kind::Double);
    // Points across the whole range of y, many of them inside the steep bin.
    let ys: Vec<f64> = (0..401).map(|i| -2.9 + 5.8 * i as f64 / 400.0).collect();
    let mut worst_x = 0.0f64;
    let mut worst_ld = 0.0f64;
    for y in ys {
        let y32 = Tensor::from_slice(&[y as f32]).reshape([1, 1]);
        let y64 = y32.to_kind(Kind::Double);
        let y = y64.double_value(&[0, 0]);
        let (x64, ld64) = rational_quadratic(&y64, &params64, 3.0, true).unwrap();
        let (x32, ld32) = rational_quadratic(&y32, &params32, 3.0, true).unwrap();
        assert_eq!(x32.kind(), Kind::Float);
        worst_x = worst_x.max((x32.double_value(&[0, 0]) - x64.double_value(&[0, 0])).abs());
        worst_ld = worst_ld.max((ld32.double_value(&[0, 0]) - ld64.double_value(&[0, 0])).abs());
        // And the float64 inverse really inverts the forward map.
        let (back, ld_f) = rational_quadratic(&x64, &params64, 3.0, false).unwrap();
        assert!((back.double_value(&[0, 0]) - y).abs() < 1e-10);
        assert!((ld_f.double_value(&[0, 0]) + ld64.double_value(&[0, 0])).abs() < 1e-9);
    }
    // Float32 rounding of the result: 2.4e-7 for |x| ≤ 3, and of the log-derivative.
    assert!(worst_x < 5e-7, "x off by {worst_x:e}");
    assert!(worst_ld < 5e-6, "log|det| off by {worst_ld:e}");
    let _ = Device::Cpu;
}
