//! A fused CPU kernel for the optimizer: one pass over contiguous
//! buffers instead of one libtorch operation (and one pass over memory) per term of the
//! formula. Adam touches each element's weight, gradient and two moments once; the
//! tensor-operation version streams them about twenty times, which is most of an optimizer
//! step's cost for a model of a million weights.
//!
//! Only float32 and float64 CPU tensors that are contiguous take this path; everything else
//! (CUDA, half precision) uses tensor operations, which on a GPU are fused by the device.

use crate::{GmError, Result};
use tch::{Device, Kind, Tensor};

/// The scalars of one Adam update.
#[derive(Debug, Clone)]
pub struct AdamStep {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// `lr / (1 − β₁ᵗ)`.
    pub step_size: f64,
    /// `√(1 − β₂ᵗ)`.
    pub bias2_sqrt: f64,
    /// L2 weight decay added to the gradient (Adam), or 0.
    pub coupled_decay: f64,
    /// `1 − lr · weight_decay` for decoupled weight decay (AdamW), or 1.
    pub decoupled_factor: f64,
    /// Factor applied to the gradient first (gradient clipping), or 1.
    pub grad_scale: f64,
}

/// Whether `t` can be updated by the fused kernels.
pub fn supports(t: &Tensor) -> bool {
    t.device() == Device::Cpu && matches!(t.kind(), Kind::Float | Kind::Double) && t.is_contiguous()
}

/// The arithmetic the kernels need, for `f32` and `f64`.
trait Real:
    Copy
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
{
    fn of(x: f64) -> Self;
    fn sqrt(self) -> Self;
}

impl Real for f32 {
    fn of(x: f64) -> Self {
        x as f32
    }
    fn sqrt(self) -> Self {
        f32::sqrt(self)
    }
}

impl Real for f64 {
    fn of(x: f64) -> Self {
        x
    }
    fn sqrt(self) -> Self {
        f64::sqrt(self)
    }
}

/// Checks that the four buffers can be updated together and returns their length.
fn check_buffers(tensors: &[&Tensor]) -> Result<usize> {
    let n = tensors[0].numel();
    let kind = tensors[0].kind();
    for t in tensors {
        if !supports(t) || t.kind() != kind || t.numel() != n {
            return Err(GmError::config(
                "params",
                format!(
                    "the fused update needs contiguous CPU buffers of one float dtype and length \
                     {n}; got {:?} {:?} of {} elements",
                    t.device(),
                    t.kind(),
                    t.numel()
                ),
            ));
        }
    }
    Ok(n)
}

/// `p`, `m`, `v` updated in place from `g` by one Adam step (see [`AdamStep`]).
pub fn adam_step(
    p: &mut Tensor,
    g: &Tensor,
    m: &mut Tensor,
    v: &mut Tensor,
    c: &AdamStep,
) -> Result<()> {
    let n = check_buffers(&[p, g, m, v])?;
    if n == 0 {
        return Ok(());
    }
    // SAFETY: the four tensors are distinct contiguous CPU buffers of `n` elements of the
    // dtype read (checked above); `g` is only read. The optimizer owns `m` and `v`, and `p`/`g`
    // are its flat buffers, so no other reference writes them during the call.
    unsafe {
        match p.kind() {
            Kind::Float => adam_slices::<f32>(p, g, m, v, n, c),
            _ => adam_slices::<f64>(p, g, m, v, n, c),
        }
    }
    Ok(())
}

unsafe fn adam_slices<T: Real>(
    p: &Tensor,
    g: &Tensor,
    m: &Tensor,
    v: &Tensor,
    n: usize,
    c: &AdamStep,
) {
    // Every element is updated on its own, so splitting the buffers changes no bit of the
    // result. Large ones are split across libtorch's threads (the pass is bound by memory
    // traffic and by division and square root, and one core saturates neither), on libtorch's
    // own OpenMP team: see `openmp`.
    let threads = if n >= PARALLEL_MIN_ELEMENTS {
        tch::get_num_threads().max(1) as usize
    } else {
        1
    };
    // Addresses, not pointers, so that the closure may be shared between threads.
    let (p, g, m, v) = (
        p.data_ptr() as usize,
        g.data_ptr() as usize,
        m.data_ptr() as usize,
        v.data_ptr() as usize,
    );
    super::openmp::run_on_team(threads, &|part, parts| {
        let start = n * part / parts;
        let len = n * (part + 1) / parts - start;
        // SAFETY: the parts are disjoint stretches of the four buffers (see the caller).
        unsafe {
            let p = std::slice::from_raw_parts_mut((p as *mut T).add(start), len);
            let g = std::slice::from_raw_parts((g as *const T).add(start), len);
            let m = std::slice::from_raw_parts_mut((m as *mut T).add(start), len);
            let v = std::slice::from_raw_parts_mut((v as *mut T).add(start), len);
            adam_chunk(p, g, m, v, c)
        }
    });
}

/// Below this many elements, one thread does the update: starting the others costs more.
const PARALLEL_MIN_ELEMENTS: usize = 1 << 15;

unsafe fn adam_chunk<T: Real>(p: &mut [T], g: &[T], m: &mut [T], v: &mut [T], c: &AdamStep) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            return adam_avx2(p, g, m, v, c);
        }
    }
    adam_loop(p, g, m, v, c)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn adam_avx2<T: Real>(p: &mut [T], g: &[T], m: &mut [T], v: &mut [T], c: &AdamStep) {
    adam_loop(p, g, m, v, c)
}

/// The update itself, written so the compiler vectorises it.
#[inline(always)]
fn adam_loop<T: Real>(p: &mut [T], g: &[T], m: &mut [T], v: &mut [T], c: &AdamStep) {
    let beta1 = T::of(c.beta1);
    let one_minus_beta1 = T::of(1.0 - c.beta1);
    let beta2 = T::of(c.beta2);
    let one_minus_beta2 = T::of(1.0 - c.beta2);
    let eps = T::of(c.eps);
    let step_size = T::of(c.step_size);
    let inv_bias2_sqrt = T::of(1.0 / c.bias2_sqrt);
    let coupled = T::of(c.coupled_decay);
    let decoupled = T::of(c.decoupled_factor);
    let scale = T::of(c.grad_scale);
    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        let g = g * scale + coupled * *p;
        let w = *p * decoupled;
        let m_new = beta1 * *m + one_minus_beta1 * g;
        let v_new = beta2 * *v + one_minus_beta2 * (g * g);
        *m = m_new;
        *v = v_new;
        *p = w - step_size * m_new / (v_new.sqrt() * inv_bias2_sqrt + eps);
    }
}
