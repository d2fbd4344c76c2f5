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
    + Send
    + Sync
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
            Kind::Float => adam_slices::<f32>(p, g, m, v, n, None, c),
            _ => adam_slices::<f64>(p, g, m, v, n, None, c),
        }
    }
    Ok(())
}

/// One member of a flat buffer and its gradient as autograd returned it, for
/// [`adam_step_gathering`]: `len` elements from `offset`, and `grad` (a contiguous CPU tensor of
/// the buffer's dtype and `len` elements), or `None` for a parameter the loss did not reach.
pub struct MemberGrad<'a> {
    pub offset: usize,
    pub len: usize,
    pub grad: Option<&'a Tensor>,
}

/// One Adam step like [`adam_step`], reading each member's gradient from the tensor autograd
/// returned for it (zero for `None`) and storing it into `g` on the way, in the same pass:
/// `g` ends as [`adam_step`] would have found it after the gradients were copied in, and the
/// weights and moments get the same bits, without a separate pass that reads and writes the
/// whole gradient buffer first. `members` must tile `0..len(p)`.
pub fn adam_step_gathering(
    p: &mut Tensor,
    g: &mut Tensor,
    m: &mut Tensor,
    v: &mut Tensor,
    members: &[MemberGrad],
    c: &AdamStep,
) -> Result<()> {
    let n = check_buffers(&[p, g, m, v])?;
    let mut covered = 0;
    for member in members {
        let fits = member.offset == covered
            && member
                .grad
                .is_none_or(|t| supports(t) && t.kind() == p.kind() && t.numel() == member.len);
        if !fits {
            return Err(GmError::config(
                "params",
                format!(
                    "the fused update needs gradients that tile the buffer in order, each a \
                     contiguous CPU tensor of {:?} with its member's length; the member at \
                     offset {} of {} elements does not fit",
                    p.kind(),
                    member.offset,
                    member.len
                ),
            ));
        }
        covered += member.len;
    }
    if covered != n {
        return Err(GmError::config(
            "params",
            format!("the members cover {covered} of the buffer's {n} elements"),
        ));
    }
    if n == 0 {
        return Ok(());
    }
    // The pass reads the sources while it writes the four buffers: a source inside one of them
    // would be read after it was overwritten (and alias a mutable slice). Autograd returns
    // fresh tensors, so this is a check of that, not a case that arises.
    let bytes = n * p.kind().elt_size_in_bytes();
    let written = [&*p, &*g, &*m, &*v].map(|t| t.data_ptr() as usize);
    for (member, grad) in members
        .iter()
        .filter_map(|member| member.grad.map(|t| (member, t)))
    {
        let start = grad.data_ptr() as usize;
        let end = start + member.len * p.kind().elt_size_in_bytes();
        if written.iter().any(|&w| start < w + bytes && w < end) {
            return Err(GmError::config(
                "params",
                format!(
                    "the gradient of the member at offset {} shares memory with the buffers \
                     the fused update writes",
                    member.offset
                ),
            ));
        }
    }
    let sources: Vec<Source> = members
        .iter()
        .map(|member| Source {
            offset: member.offset,
            len: member.len,
            address: member.grad.map_or(0, |t| t.data_ptr() as usize),
        })
        .collect();
    // SAFETY: as for `adam_step`; the sources are checked above to be CPU buffers of the
    // dtype read, of their member's length, and are only read.
    unsafe {
        match p.kind() {
            Kind::Float => adam_slices::<f32>(p, g, m, v, n, Some(&sources), c),
            _ => adam_slices::<f64>(p, g, m, v, n, Some(&sources), c),
        }
    }
    Ok(())
}

/// A member's gradient by address (0 for a zero gradient), so that it may cross threads.
struct Source {
    offset: usize,
    len: usize,
    address: usize,
}

/// The update of `n` elements, split across libtorch's threads. With `sources`, the gradient
/// of each element is read from its member's source and stored into `g`; without, read from
/// `g`.
unsafe fn adam_slices<T: Real>(
    p: &Tensor,
    g: &Tensor,
    m: &Tensor,
    v: &Tensor,
    n: usize,
    sources: Option<&[Source]>,
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
    let k = Coefficients::<T>::of(c);
    // More parts than threads, claimed as each thread frees up: with one part per thread, the
    // calling thread did 56% of the MLP VAE's update and the other waited for it (perf samples
    // per thread), as the two read gradients that autograd left in different caches.
    let parts = if threads > 1 {
        threads * PARTS_PER_THREAD
    } else {
        1
    };
    super::openmp::run_on_team(threads, parts, &|part, parts| {
        let start = n * part / parts;
        let end = n * (part + 1) / parts;
        // SAFETY: the parts are disjoint stretches of the four buffers (see the caller), and
        // each source is read within its member's length.
        unsafe {
            let slices = |from: usize, to: usize| {
                let len = to - from;
                (
                    std::slice::from_raw_parts_mut((p as *mut T).add(from), len),
                    std::slice::from_raw_parts_mut((g as *mut T).add(from), len),
                    std::slice::from_raw_parts_mut((m as *mut T).add(from), len),
                    std::slice::from_raw_parts_mut((v as *mut T).add(from), len),
                )
            };
            let Some(sources) = sources else {
                let (p, g, m, v) = slices(start, end);
                return adam_chunk(p, Grads::InBuffer(g), m, v, &k);
            };
            for source in sources {
                let from = start.max(source.offset);
                let to = end.min(source.offset + source.len);
                if from >= to {
                    continue;
                }
                let (p, g, m, v) = slices(from, to);
                if source.address == 0 {
                    g.fill(T::of(0.0));
                    adam_chunk(p, Grads::InBuffer(g), m, v, &k);
                } else {
                    let read = std::slice::from_raw_parts(
                        (source.address as *const T).add(from - source.offset),
                        to - from,
                    );
                    adam_chunk(p, Grads::Gathered { read, into: g }, m, v, &k);
                }
            }
        }
    });
}

/// Below this many elements, one thread does the update: starting the others costs more.
const PARALLEL_MIN_ELEMENTS: usize = 1 << 15;

/// Parts of the buffers per thread of the update, for balance between the threads.
const PARTS_PER_THREAD: usize = 8;

/// The scalars of [`AdamStep`] in the buffers' dtype.
struct Coefficients<T> {
    beta1: T,
    one_minus_beta1: T,
    beta2: T,
    one_minus_beta2: T,
    eps: T,
    step_size: T,
    inv_bias2_sqrt: T,
    coupled: T,
    decoupled: T,
    scale: T,
}

impl<T: Real> Coefficients<T> {
    fn of(c: &AdamStep) -> Self {
        Coefficients {
            beta1: T::of(c.beta1),
            one_minus_beta1: T::of(1.0 - c.beta1),
            beta2: T::of(c.beta2),
            one_minus_beta2: T::of(1.0 - c.beta2),
            eps: T::of(c.eps),
            step_size: T::of(c.step_size),
            inv_bias2_sqrt: T::of(1.0 / c.bias2_sqrt),
            coupled: T::of(c.coupled_decay),
            decoupled: T::of(c.decoupled_factor),
            scale: T::of(c.grad_scale),
        }
    }
}

/// Where a stretch's gradients come from: the gradient buffer itself, or a member's own
/// gradient, stored into the buffer as it is read.
enum Grads<'a, T> {
    InBuffer(&'a [T]),
    Gathered { read: &'a [T], into: &'a mut [T] },
}

unsafe fn adam_chunk<T: Real>(
    p: &mut [T],
    g: Grads<T>,
    m: &mut [T],
    v: &mut [T],
    k: &Coefficients<T>,
) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            return adam_avx2(p, g, m, v, k);
        }
    }
    adam_stretch(p, g, m, v, k)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn adam_avx2<T: Real>(
    p: &mut [T],
    g: Grads<T>,
    m: &mut [T],
    v: &mut [T],
    k: &Coefficients<T>,
) {
    adam_stretch(p, g, m, v, k)
}

/// One loop per source of gradients, chosen once per stretch, not per element.
#[inline(always)]
fn adam_stretch<T: Real>(p: &mut [T], g: Grads<T>, m: &mut [T], v: &mut [T], k: &Coefficients<T>) {
    match g {
        Grads::InBuffer(g) => adam_loop(p, g, m, v, k),
        Grads::Gathered { read, into } => adam_gathering_loop(p, read, into, m, v, k),
    }
}

/// The update, written so the compiler vectorises it.
#[inline(always)]
fn adam_loop<T: Real>(p: &mut [T], g: &[T], m: &mut [T], v: &mut [T], k: &Coefficients<T>) {
    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        adam_element(p, g, m, v, k);
    }
}

/// The update reading the gradients from `read` and storing them into `g`.
#[inline(always)]
fn adam_gathering_loop<T: Real>(
    p: &mut [T],
    read: &[T],
    g: &mut [T],
    m: &mut [T],
    v: &mut [T],
    k: &Coefficients<T>,
) {
    for ((((p, &r), g), m), v) in p
        .iter_mut()
        .zip(read)
        .zip(g.iter_mut())
        .zip(m.iter_mut())
        .zip(v.iter_mut())
    {
        *g = r;
        adam_element(p, r, m, v, k);
    }
}

#[inline(always)]
fn adam_element<T: Real>(p: &mut T, g: T, m: &mut T, v: &mut T, k: &Coefficients<T>) {
    let g = g * k.scale + k.coupled * *p;
    let w = *p * k.decoupled;
    let m_new = k.beta1 * *m + k.one_minus_beta1 * g;
    let v_new = k.beta2 * *v + k.one_minus_beta2 * (g * g);
    *m = m_new;
    *v = v_new;
    *p = w - k.step_size * m_new / (v_new.sqrt() * k.inv_bias2_sqrt + k.eps);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step() -> AdamStep {
        AdamStep {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            step_size: 0.01,
            bias2_sqrt: 1.0,
            coupled_decay: 0.0,
            decoupled_factor: 1.0,
            grad_scale: 1.0,
        }
    }

    /// Members that do not tile the buffer in order, a gradient of the wrong length or dtype,
    /// and a gradient inside one of the written buffers are refused, and nothing is written.
    #[test]
    fn gathering_refuses_sources_it_cannot_read_safely() {
        let buffer = || Tensor::zeros([6], (Kind::Float, Device::Cpu));
        let (mut p, mut g, mut m, mut v) = (buffer(), buffer(), buffer(), buffer());
        let a = Tensor::ones([2], (Kind::Float, Device::Cpu));
        let b = Tensor::ones([4], (Kind::Float, Device::Cpu));
        let b_double = Tensor::ones([4], (Kind::Double, Device::Cpu));
        let inside_p = p.narrow(0, 2, 4);
        let inside_v = v.narrow(0, 0, 4);
        let member = |offset, len, grad| MemberGrad { offset, len, grad };
        let cases: Vec<(&str, Vec<MemberGrad>)> = vec![
            (
                "out of order",
                vec![member(2, 4, Some(&b)), member(0, 2, Some(&a))],
            ),
            ("short", vec![member(0, 2, Some(&a))]),
            (
                "wrong length",
                vec![member(0, 2, Some(&a)), member(2, 4, Some(&a))],
            ),
            (
                "wrong dtype",
                vec![member(0, 2, Some(&a)), member(2, 4, Some(&b_double))],
            ),
            (
                "inside p",
                vec![member(0, 2, Some(&a)), member(2, 4, Some(&inside_p))],
            ),
            (
                "inside v",
                vec![member(0, 2, None), member(2, 4, Some(&inside_v))],
            ),
        ];
        for (what, members) in cases {
            let result = adam_step_gathering(&mut p, &mut g, &mut m, &mut v, &members, &step());
            assert!(result.is_err(), "{what}: accepted");
            for t in [&p, &g, &m, &v] {
                assert_eq!(t.abs().sum(Kind::Double).double_value(&[]), 0.0, "{what}");
            }
        }
        // The same members, well formed, are accepted and move the weights.
        let members = [member(0, 2, Some(&a)), member(2, 4, Some(&b))];
        adam_step_gathering(&mut p, &mut g, &mut m, &mut v, &members, &step()).unwrap();
        assert_eq!(g, Tensor::ones([6], (Kind::Float, Device::Cpu)));
        assert!(p.lt(0.0).all().int64_value(&[]) != 0);
    }
}
