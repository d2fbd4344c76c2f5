//! Binarisation and dequantisation of 8-bit images.

use crate::{GmError, Result};
use tch::{Kind, Tensor};

/// The shared binarisation protocol: `pixel > 127 → 1.0`, else `0.0` (input `Uint8`).
pub fn binarize_threshold(pixels: &Tensor) -> Result<Tensor> {
    check_u8(pixels, "binarize_threshold")?;
    Ok(pixels.f_gt(127)?.f_to_kind(Kind::Float)?)
}

/// Stochastic binarisation: each pixel is 1 with probability `pixel / 255` (libtorch's generator).
pub fn binarize_stochastic(pixels: &Tensor) -> Result<Tensor> {
    check_u8(pixels, "binarize_stochastic")?;
    Ok(pixels
        .f_to_kind(Kind::Float)?
        .f_div_scalar(255.0)?
        .f_bernoulli()?)
}

/// Uniform dequantisation: `(pixel + u) / 256` with `u ~ U[0, 1)`, values in `[0, 1)`.
pub fn dequantize_uniform(pixels: &Tensor) -> Result<Tensor> {
    check_u8(pixels, "dequantize_uniform")?;
    let x = pixels.f_to_kind(Kind::Float)?;
    Ok(x.f_add(&x.f_rand_like()?)?.f_div_scalar(256.0)?)
}

/// Pixels scaled to `[0, 1]` without noise: `pixel / 255`.
pub fn to_unit_interval(pixels: &Tensor) -> Result<Tensor> {
    check_u8(pixels, "to_unit_interval")?;
    Ok(pixels.f_to_kind(Kind::Float)?.f_div_scalar(255.0)?)
}

/// Discrete values `0..levels` mapped linearly onto `[-1, 1]` (0 → −1, levels − 1 → 1), as
/// float: the space of networks that end in tanh and of diffusion processes.
pub fn levels_to_symmetric(x: &Tensor, levels: u32) -> Result<Tensor> {
    let top = (levels as i64 - 1).max(1) as f64;
    Ok(x.f_to_kind(Kind::Float)?
        .f_mul_scalar(2.0 / top)?
        .f_sub_scalar(1.0)?)
}

/// The inverse of [`levels_to_symmetric`] for any real values: rounded to the nearest level and
/// clamped into `0..levels`, so the result lies in the data space.
pub fn symmetric_to_levels(y: &Tensor, levels: u32) -> Result<Tensor> {
    let top = (levels as i64 - 1).max(1) as f64;
    Ok(y.f_add_scalar(1.0)?
        .f_mul_scalar(top / 2.0)?
        .f_round()?
        .f_clamp(0.0, top)?)
}

/// Uniform dequantisation onto the scale of [`levels_to_symmetric`]: the value `v` becomes
/// `levels_to_symmetric(v + u − ½)` with `u ~ U[0, 1)`, so each level owns a cell of width
/// `2 / (levels − 1)` centred on its symmetric value. A density p on these values bounds the
/// probability of the levels: ln P(v) ≥ E_u[ln p(y)] + D ln(2 / (levels − 1)), the second term
/// being [`dequantized_symmetric_log_jacobian`].
pub fn dequantize_to_symmetric(x: &Tensor, levels: u32) -> Result<Tensor> {
    let x = x.f_to_kind(Kind::Float)?;
    levels_to_symmetric(&x.f_add(&x.f_rand_like()?)?.f_sub_scalar(0.5)?, levels)
}

/// The log-Jacobian ln(2 / (levels − 1)) per value of [`dequantize_to_symmetric`].
pub fn dequantized_symmetric_log_jacobian(levels: u32) -> f64 {
    (2.0 / (levels as i64 - 1).max(1) as f64).ln()
}

fn check_u8(pixels: &Tensor, what: &str) -> Result<()> {
    if pixels.kind() != Kind::Uint8 {
        return Err(GmError::Domain(format!(
            "{what}: expected Uint8 pixels, got {:?}",
            pixels.kind()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols() {
        let p = Tensor::from_slice(&[0u8, 127, 128, 255]);
        let b = binarize_threshold(&p).unwrap();
        assert_eq!(Vec::<f32>::try_from(&b).unwrap(), vec![0.0, 0.0, 1.0, 1.0]);
        tch::manual_seed(0);
        let d = dequantize_uniform(&p).unwrap();
        let v = Vec::<f32>::try_from(&d).unwrap();
        for (x, byte) in v.iter().zip([0.0f32, 127.0, 128.0, 255.0]) {
            assert!(
                *x >= byte / 256.0 && *x < (byte + 1.0) / 256.0,
                "dequantised value stays in its bin"
            );
        }
        let s = binarize_stochastic(&Tensor::from_slice(&[0u8, 255])).unwrap();
        assert_eq!(Vec::<f32>::try_from(&s).unwrap(), vec![0.0, 1.0]);
        assert!(binarize_threshold(&Tensor::from_slice(&[0.5f32])).is_err());
    }

    #[test]
    fn symmetric_levels_round_trip() {
        for levels in [2u32, 4, 256] {
            let x = Tensor::arange(levels as i64, (Kind::Float, tch::Device::Cpu));
            let y = levels_to_symmetric(&x, levels).unwrap();
            assert_eq!(y.min().double_value(&[]), -1.0);
            assert_eq!(y.max().double_value(&[]), 1.0);
            assert!(symmetric_to_levels(&y, levels).unwrap().equal(&x));
            // Off-grid and out-of-range values land on the nearest level inside the space.
            let off = Tensor::from_slice(&[-3.0f32, 0.99 * 2.0 / (levels - 1) as f32 - 1.0, 7.0]);
            let back = Vec::<f32>::try_from(&symmetric_to_levels(&off, levels).unwrap()).unwrap();
            assert_eq!(back, vec![0.0, 1.0, (levels - 1) as f32]);
        }
    }
}
