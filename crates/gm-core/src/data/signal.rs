//! A 1D data set with an exactly known density: a noisy oscillator (a second-order
//! autoregressive process) recorded in 8-bit μ-law, as audio models such as WaveNet see sound.
//!
//! The process is defined on the codes themselves, so every example's probability is exact:
//! with `dec(k)` the amplitude of code `k`, the next amplitude is
//! `a_t = φ₁·dec(x_{t−1}) + φ₂·dec(x_{t−2}) + σ·ε_t`, `ε_t ~ N(0, 1)`, and `x_t` is the μ-law code
//! of `a_t` (amplitudes beyond ±1 clip to the end codes). So `P(x_t = k | past)` is the normal mass
//! of code `k`'s amplitude interval, `ln p(x) = Σ_t ln P(x_t | x_{t−1}, x_{t−2})`, each window
//! starting at rest (`x_{−1} = x_{−2}` = the code of amplitude 0). φ₁ = 2r cos ω, φ₂ = −r² with
//! r = 0.95 and a period of 16 steps; σ = 0.05 gives a stationary standard deviation near 0.3.
//!
//! The benchmark scores a model against the truth as it does on the 2D toy sets: the paired
//! estimate of KL(p_data ‖ model) over test windows, and the data's own NLL per window.

use crate::device::{derive_seed, seed_torch};
use crate::Result;
use tch::{Device, Kind, Tensor};

/// μ of the 8-bit μ-law.
pub const MU: f64 = 255.0;

/// Values per window of `oscillator_mulaw`.
pub const SIGNAL_WINDOW: i64 = 256;

/// Training and test windows of `oscillator_mulaw`.
pub const SIGNAL_TRAIN: i64 = 20_000;
pub const SIGNAL_TEST: i64 = 2_000;

/// μ-law companding of amplitudes in [-1, 1] (clamped) to codes 0..=255 (float): the code of
/// `a` is the nearest integer to `(f(a) + 1)/2 · μ` with `f(a) = sign(a) ln(1 + μ|a|) / ln(1 + μ)`.
pub fn mu_law_encode(a: &Tensor) -> Result<Tensor> {
    let a = a.f_clamp(-1.0, 1.0)?;
    let y = a
        .f_sign()?
        .f_mul(&a.f_abs()?.f_mul_scalar(MU)?.f_log1p()?)?
        .f_div_scalar((1.0 + MU).ln())?;
    Ok(y.f_add_scalar(1.0)?
        .f_mul_scalar(MU / 2.0)?
        .f_add_scalar(0.5)?
        .f_floor()?
        .f_clamp(0.0, MU)?)
}

/// The amplitude of a (possibly fractional) code: the inverse of the companding,
/// `sign(y) ((1 + μ)^|y| − 1) / μ` at `y = 2·code/μ − 1`. Half-integer codes give the edges of
/// the codes' amplitude intervals.
pub fn mu_law_decode(code: &Tensor) -> Result<Tensor> {
    let y = code
        .f_to_kind(Kind::Double)?
        .f_mul_scalar(2.0 / MU)?
        .f_sub_scalar(1.0)?;
    Ok(y.f_sign()?.f_mul(
        &y.f_abs()?
            .f_mul_scalar((1.0 + MU).ln())?
            .f_exp()?
            .f_sub_scalar(1.0)?
            .f_div_scalar(MU)?,
    )?)
}

/// The oscillator (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Oscillator {
    pub phi1: f64,
    pub phi2: f64,
    pub sigma: f64,
}

impl Default for Oscillator {
    fn default() -> Self {
        let (r, omega) = (0.95f64, std::f64::consts::TAU / 16.0);
        Oscillator {
            phi1: 2.0 * r * omega.cos(),
            phi2: -r * r,
            sigma: 0.05,
        }
    }
}

impl Oscillator {
    /// The code of amplitude 0, where every window starts.
    fn rest_code() -> f64 {
        (MU / 2.0 + 0.5).floor()
    }

    /// The mean amplitude of each value given the two before it (`[n, T]`, float64).
    fn means(&self, x: &Tensor) -> Result<Tensor> {
        let size = x.size();
        let (n, t) = (size[0], size[1]);
        let rest = Tensor::f_full([n, 2], Oscillator::rest_code(), (Kind::Double, x.device()))?;
        let padded = Tensor::f_cat(&[rest, x.f_to_kind(Kind::Double)?], 1)?;
        let amp = mu_law_decode(&padded)?;
        Ok(amp
            .f_narrow(1, 1, t)?
            .f_mul_scalar(self.phi1)?
            .f_add(&amp.f_narrow(1, 0, t)?.f_mul_scalar(self.phi2)?)?)
    }

    /// Draws `n` windows `[n, length]` of codes (float), seeded from `seed`.
    pub fn sample(&self, n: i64, length: i64, seed: u64, device: Device) -> Result<Tensor> {
        seed_torch(seed);
        let noise =
            Tensor::f_randn([length, n], (Kind::Double, device))?.f_mul_scalar(self.sigma)?;
        let rest = mu_law_decode(&Tensor::f_full(
            [n],
            Oscillator::rest_code(),
            (Kind::Double, device),
        )?)?;
        let (mut before, mut last) = (rest.shallow_clone(), rest);
        let mut codes = Vec::with_capacity(length as usize);
        for t in 0..length {
            let a = last
                .f_mul_scalar(self.phi1)?
                .f_add(&before.f_mul_scalar(self.phi2)?)?
                .f_add(&noise.f_get(t)?)?;
            let code = mu_law_encode(&a)?;
            before = last;
            last = mu_law_decode(&code)?;
            codes.push(code);
        }
        Ok(Tensor::f_stack(&codes, 1)?.f_to_kind(Kind::Float)?)
    }

    /// `ln P(x_t | x_{t−1}, x_{t−2})` of every value `[n, T]` (float64), exactly: the log of the
    /// normal mass of the code's amplitude interval, computed from whichever tail keeps it accurate.
    pub fn conditional_log_probs(&self, x: &Tensor) -> Result<Tensor> {
        let codes = x.f_to_kind(Kind::Double)?;
        let m = self.means(&codes)?;
        let inf = |sign: f64| -> Result<Tensor> { Ok(codes.f_full_like(sign * f64::INFINITY)?) };
        let lo = mu_law_decode(&codes.f_sub_scalar(0.5)?)?
            .f_where_self(&codes.f_gt(0.0)?, &inf(-1.0)?)?;
        let hi =
            mu_law_decode(&codes.f_add_scalar(0.5)?)?.f_where_self(&codes.f_lt(MU)?, &inf(1.0)?)?;
        let scale = self.sigma * std::f64::consts::SQRT_2;
        let u = lo.f_sub(&m)?.f_div_scalar(scale)?;
        let v = hi.f_sub(&m)?.f_div_scalar(scale)?;
        // Φ(b) − Φ(a) = ½ (erfc(−b/√2) − erfc(−a/√2)) = ½ (erfc(a/√2) − erfc(b/√2)).
        let right_tail = u.f_erfc()?.f_sub(&v.f_erfc()?)?; // accurate when the interval is right of m
        let left_tail = v.f_neg()?.f_erfc()?.f_sub(&u.f_neg()?.f_erfc()?)?; // left of m
        let mass = right_tail
            .f_where_self(&u.f_gt(0.0)?, &left_tail)?
            .f_mul_scalar(0.5)?;
        Ok(mass.f_log()?)
    }

    /// `ln p(x)` of windows `[n, T]` (float64 `[n]`).
    pub fn log_prob(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self
            .conditional_log_probs(x)?
            .f_sum_dim_intlist(&[1i64][..], false, Kind::Double)?)
    }
}

/// The training and test windows of `oscillator_mulaw`, seeded from `seed` (train and test use
/// different streams).
pub fn oscillator_windows(seed: u64, device: Device) -> Result<(Tensor, Tensor)> {
    let o = Oscillator::default();
    Ok((
        o.sample(
            SIGNAL_TRAIN,
            SIGNAL_WINDOW,
            derive_seed(seed, 0x516A_0001),
            device,
        )?,
        o.sample(
            SIGNAL_TEST,
            SIGNAL_WINDOW,
            derive_seed(seed, 0x516A_0002),
            device,
        )?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mu_law_codes_round_trip_and_edges_bracket_amplitudes() {
        let codes = Tensor::arange(256, (Kind::Double, Device::Cpu));
        let back = mu_law_encode(&mu_law_decode(&codes).unwrap()).unwrap();
        assert!(
            back.equal(&codes),
            "every code's amplitude encodes to itself"
        );
        // Amplitudes just inside a code's interval encode to it; just outside, to a neighbour.
        let lo = mu_law_decode(&(&codes - 0.5)).unwrap();
        let hi = mu_law_decode(&(&codes + 0.5)).unwrap();
        let inside_lo = mu_law_encode(&(&lo + 1e-9)).unwrap();
        let inside_hi = mu_law_encode(&(&hi - 1e-9)).unwrap();
        assert!(inside_lo.narrow(0, 1, 255).equal(&codes.narrow(0, 1, 255)));
        assert!(inside_hi.narrow(0, 0, 255).equal(&codes.narrow(0, 0, 255)));
        // Companding: the interval around amplitude 0 is about 250 times narrower than near ±1.
        let width = &hi - &lo;
        let ratio = width.double_value(&[254]) / width.double_value(&[128]);
        assert!(ratio > 200.0, "{ratio}");
    }

    /// Each conditional is a distribution over the 256 codes (sums to 1 within 1e-12), and
    /// sampled codes follow it: the frequencies of 100,000 one-step draws from a fixed past
    /// match the exact probabilities within 5 standard errors.
    #[test]
    fn conditionals_are_exact_distributions_that_sampling_follows() {
        let o = Oscillator::default();
        for past in [[128.0, 128.0], [200.0, 180.0], [10.0, 40.0], [255.0, 250.0]] {
            let mut rows = Vec::new();
            for k in 0..256 {
                rows.push(Tensor::from_slice(&[past[0], past[1], k as f64]));
            }
            let x = Tensor::stack(&rows, 0);
            let lp = o.conditional_log_probs(&x).unwrap().select(1, 2);
            let total = lp.exp().sum(Kind::Double).double_value(&[]);
            assert!((total - 1.0).abs() < 1e-12, "{past:?}: {total}");
            // One step from that past: the mean from the two decoded codes, plus noise.
            let amp = mu_law_decode(&Tensor::from_slice(&[past[1], past[0]])).unwrap();
            let m = o.phi1 * amp.double_value(&[0]) + o.phi2 * amp.double_value(&[1]);
            tch::manual_seed(3);
            let a = Tensor::randn([100_000], (Kind::Double, Device::Cpu)) * o.sigma + m;
            let codes = mu_law_encode(&a).unwrap().to_kind(Kind::Int64);
            let counts = codes.bincount::<Tensor>(None, 256).to_kind(Kind::Double) / 100_000.0;
            let p = lp.exp();
            let se: Tensor = (&p * (-&p + 1.0) / 100_000.0).sqrt();
            let z = ((&counts - &p).abs() - se * 5.0 - 1e-6)
                .max()
                .double_value(&[]);
            assert!(z <= 0.0, "{past:?}: frequencies off by {z} beyond 5 s.e.");
        }
    }

    #[test]
    fn windows_start_at_rest_and_oscillate() {
        let o = Oscillator::default();
        let x = o.sample(200, 256, 1, Device::Cpu).unwrap();
        assert_eq!(x.size(), [200, 256]);
        let amp = mu_law_decode(&x.narrow(1, 128, 128)).unwrap();
        let sd = amp.std(true).double_value(&[]);
        assert!((0.2..0.45).contains(&sd), "stationary spread {sd}");
        let lp = o.log_prob(&x).unwrap();
        assert!(lp.isfinite().all().int64_value(&[]) == 1);
        let per_value = -lp.mean(Kind::Double).double_value(&[]) / 256.0;
        assert!(
            per_value > 0.5 && per_value < 256f64.ln(),
            "{per_value} nats per value"
        );
    }
}
