//! One pass over a CPU tensor's values to tell whether all of them are valid data: the common
//! case of every model's input check ([`check_data`](crate::model::check_data)), which as
//! tensor operations costs a rounding, a clamp, a comparison (a scalar loop in libtorch) and a
//! reduction, each with its own pass and allocation, on every training step.

use super::ValueKind;
use crate::train::openmp::run_on_team;
use std::sync::atomic::{AtomicBool, Ordering};
use tch::{Device, Kind, Tensor};

/// From this many values on, the scan is split across libtorch's threads.
const PARALLEL_MIN_VALUES: usize = 1 << 18;

/// Values scanned between two looks at whether another part already failed.
const BLOCK: usize = 4096;

/// Whether every value of `x` is valid data of kind `values`: finite, and for discrete data an
/// integer in `0..levels`. `None` where this pass does not apply (not a contiguous CPU tensor
/// of `Float` or `Double`, or levels that single precision cannot tell apart); the caller then
/// checks with tensor operations.
pub(crate) fn all_valid(x: &Tensor, values: ValueKind) -> Option<bool> {
    if x.device() != Device::Cpu || !x.is_contiguous() {
        return None;
    }
    match x.kind() {
        Kind::Float => scan::<f32>(x, values),
        Kind::Double => scan::<f64>(x, values),
        _ => None,
    }
}

/// The float types scanned.
trait Value: Copy + PartialOrd + std::ops::Add<Output = Self> + std::ops::Sub<Output = Self> {
    /// `2^(mantissa bits)`: adding it to a value in `[0, 2^mantissa)` rounds away the
    /// fraction, so `(v + C) − C == v` exactly when `v` is an integer there.
    const INTEGER_SHIFT: f64;
    const ZERO: Self;
    fn of(x: f64) -> Self;
    /// `|v| < ∞`: false for NaN and the infinities, without a branch.
    fn finite(self) -> bool;
}

impl Value for f32 {
    const INTEGER_SHIFT: f64 = 8_388_608.0; // 2^23
    const ZERO: f32 = 0.0;
    fn of(x: f64) -> f32 {
        x as f32
    }
    fn finite(self) -> bool {
        self.is_finite()
    }
}

impl Value for f64 {
    const INTEGER_SHIFT: f64 = 4_503_599_627_370_496.0; // 2^52
    const ZERO: f64 = 0.0;
    fn of(x: f64) -> f64 {
        x
    }
    fn finite(self) -> bool {
        self.is_finite()
    }
}

fn scan<T: Value>(x: &Tensor, values: ValueKind) -> Option<bool> {
    let n = x.numel();
    let test = match values {
        ValueKind::Continuous => Test::Finite,
        ValueKind::Discrete { levels } => {
            let top = f64::from(levels.max(1) - 1);
            if top >= T::INTEGER_SHIFT {
                return None;
            }
            Test::Levels { top }
        }
    };
    if n == 0 {
        return Some(true);
    }
    let parts = if n >= PARALLEL_MIN_VALUES {
        tch::get_num_threads().max(1) as usize
    } else {
        1
    };
    let address = x.data_ptr() as usize;
    let valid = AtomicBool::new(true);
    run_on_team(parts, parts, &|part, parts| {
        let start = n * part / parts;
        let end = n * (part + 1) / parts;
        // SAFETY: `x` is a contiguous CPU tensor of `n` values of type `T` (checked by the
        // caller), alive and only read for the duration of the call.
        let values =
            unsafe { std::slice::from_raw_parts((address as *const T).add(start), end - start) };
        for block in values.chunks(BLOCK) {
            if !valid.load(Ordering::Relaxed) {
                return;
            }
            if !test.holds_for_all(block) {
                valid.store(false, Ordering::Relaxed);
                return;
            }
        }
    });
    Some(valid.into_inner())
}

#[derive(Clone, Copy)]
enum Test {
    Finite,
    Levels { top: f64 },
}

impl Test {
    /// Written without branches per value, so that the compiler vectorises it. NaN fails
    /// every comparison; an infinity fails `|v| < ∞` and the range.
    fn holds_for_all<T: Value>(self, block: &[T]) -> bool {
        match self {
            Test::Finite => block.iter().fold(true, |ok, &v| ok & v.finite()),
            Test::Levels { top } => {
                let (top, shift) = (T::of(top), T::of(T::INTEGER_SHIFT));
                block.iter().fold(true, |ok, &v| {
                    ok & (v >= T::ZERO) & (v <= top) & ((v + shift) - shift == v)
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind of value, in both dtypes, against the tensor-operation definition: finite,
    /// and for discrete data equal to itself rounded and clamped into `0..levels`.
    #[test]
    fn agrees_with_the_tensor_definition() {
        let specials = [
            0.0,
            -0.0,
            1.0,
            2.0,
            3.0,
            255.0,
            256.0,
            0.5,
            1.5,
            2.5,
            -1.0,
            -0.5,
            1e-30,
            254.99999,
            8_388_607.0,
            8_388_608.0,
            8_388_609.0,
            1e30,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ];
        for kind in [Kind::Float, Kind::Double] {
            for values in [
                ValueKind::Continuous,
                ValueKind::Discrete { levels: 1 },
                ValueKind::Discrete { levels: 2 },
                ValueKind::Discrete { levels: 256 },
                ValueKind::Discrete { levels: 8_388_608 },
            ] {
                for &special in &specials {
                    // The value alone, and in the middle of a long run of valid values (past
                    // the vectorised loop's prologue and across blocks and threads).
                    for len in [1usize, 3 * BLOCK + 7, PARALLEL_MIN_VALUES + 5] {
                        let mut data = vec![0.0f64; len];
                        data[len / 2] = special;
                        let x = Tensor::from_slice(&data).to_kind(kind);
                        let expected = match values {
                            ValueKind::Continuous => x.isfinite().all(),
                            ValueKind::Discrete { levels } => x
                                .eq_tensor(&x.round().clamp(0.0, f64::from(levels - 1)))
                                .all(),
                        }
                        .int64_value(&[])
                            != 0;
                        let got = all_valid(&x, values);
                        assert_eq!(
                            got,
                            Some(expected),
                            "{kind:?} {values:?}: {special} among {len} values"
                        );
                    }
                }
            }
        }
    }

    /// Tensors the pass does not read are left to the caller.
    #[test]
    fn declines_what_it_cannot_read() {
        let x = Tensor::from_slice(&[0.0f32, 1.0, 0.0, 1.0]).view([2, 2]);
        assert_eq!(all_valid(&x.tr(), ValueKind::Continuous), None);
        assert_eq!(
            all_valid(&x.to_kind(Kind::Half), ValueKind::Continuous),
            None
        );
        assert_eq!(all_valid(&x, ValueKind::Continuous), Some(true));
        assert_eq!(
            all_valid(
                &x.to_kind(Kind::Float),
                ValueKind::Discrete { levels: 1 << 24 }
            ),
            None
        );
    }
}
