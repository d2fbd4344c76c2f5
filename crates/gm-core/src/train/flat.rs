//! Trainable tensors as views into one contiguous buffer per dtype and device, and their
//! gradients as views into a second one, so that zeroing, the global gradient norm, clipping,
//! the Adam update and the weight average are a handful of operations over one tensor instead
//! of a handful per parameter (the idea behind multi-tensor optimizers).
//!
//! The parameters keep their identity: every module that holds one (a shallow clone of the
//! same tensor) sees the moved storage, names and shapes are unchanged, and checkpoints still
//! read and write them one by one (copies into the views).
//!
//! Gradients become views through autograd's own accumulation rule: once a parameter's `.grad`
//! is defined, backward adds into it in place. The buffer is made so by one backward pass of a
//! zero loss (which defines every `.grad`), after which each `.grad` is re-pointed into the flat
//! gradient buffer.

use crate::{GmError, Result};
use tch::{Device, Kind, Tensor};

/// From this many gradient elements on, [`FlatParameters::write_grads`] copies parameter
/// by parameter (in parallel) rather than with one concatenation (serial).
const PARALLEL_COPY_ELEMENTS: usize = 1 << 17;

/// One dtype and device's share of the parameters.
#[derive(Debug)]
pub struct FlatGroup {
    /// Every parameter of the group, end to end (detached: updates to it are not recorded).
    pub params: Tensor,
    /// Every gradient of the group, in the same layout.
    pub grads: Tensor,
    /// Positions of the group's parameters in the list given to [`FlatParameters::new`], with
    /// their offset into the buffers and their element count.
    pub members: Vec<(usize, i64, i64)>,
}

impl FlatGroup {
    /// The view of `params`-shaped buffer `buffer` (same layout as the group) for the `k`-th
    /// member, shaped like the parameter.
    pub fn member_view(&self, buffer: &Tensor, k: usize, shape: &[i64]) -> Result<Tensor> {
        let (_, offset, count) = self.members[k];
        Ok(buffer.f_narrow(0, offset, count)?.f_view(shape)?)
    }
}

/// See the module documentation.
#[derive(Debug)]
pub struct FlatParameters {
    tensors: Vec<Tensor>,
    groups: Vec<FlatGroup>,
}

impl FlatParameters {
    /// Moves `params` (tensors that require grad, e.g. a var store's trainable variables) into
    /// flat buffers, keeping their values and any gradient they already hold.
    pub fn new(params: Vec<Tensor>) -> Result<Self> {
        if params.is_empty() {
            return Err(GmError::config("params", "no parameters were given"));
        }
        let mut keys: Vec<(Kind, Device)> = Vec::new();
        let mut by_key: Vec<Vec<usize>> = Vec::new();
        for (i, p) in params.iter().enumerate() {
            if !p.requires_grad() {
                return Err(GmError::config(
                    "params",
                    format!("parameter {i} does not require grad, so it cannot be trained"),
                ));
            }
            if !p.is_floating_point() {
                return Err(GmError::config(
                    "params",
                    format!(
                        "parameter {i} has dtype {:?}; trainable parameters are floating point",
                        p.kind()
                    ),
                ));
            }
            let key = (p.kind(), p.device());
            match keys.iter().position(|k| *k == key) {
                Some(g) => by_key[g].push(i),
                None => {
                    keys.push(key);
                    by_key.push(vec![i]);
                }
            }
        }
        define_grads(&params)?;
        let mut groups = Vec::with_capacity(keys.len());
        tch::no_grad(|| -> Result<()> {
            for ((kind, device), indices) in keys.iter().zip(&by_key) {
                let mut members = Vec::with_capacity(indices.len());
                let mut total = 0i64;
                for &i in indices {
                    let count = params[i].numel() as i64;
                    members.push((i, total, count));
                    total += count;
                }
                let flat_params = Tensor::f_empty([total], (*kind, *device))?;
                let flat_grads = Tensor::f_empty([total], (*kind, *device))?;
                for &(i, offset, count) in &members {
                    let p = &params[i];
                    let shape = p.size();
                    let view = flat_params.f_narrow(0, offset, count)?.f_view(&shape[..])?;
                    view.shallow_clone().f_copy_(p)?;
                    p.shallow_clone().f_set_data(&view)?;
                    let grad_view = flat_grads.f_narrow(0, offset, count)?.f_view(&shape[..])?;
                    let mut grad = p.f_grad()?;
                    grad_view.shallow_clone().f_copy_(&grad)?;
                    grad.f_set_data(&grad_view)?;
                }
                groups.push(FlatGroup {
                    params: flat_params,
                    grads: flat_grads,
                    members,
                });
            }
            Ok(())
        })?;
        let flat = FlatParameters {
            tensors: params,
            groups,
        };
        flat.check_bound(true)?;
        Ok(flat)
    }

    /// The parameters, in the order given.
    pub fn tensors(&self) -> &[Tensor] {
        &self.tensors
    }

    pub fn groups(&self) -> &[FlatGroup] {
        &self.groups
    }

    /// Zeroes every gradient (one operation per group).
    pub fn zero_grad(&mut self) -> Result<()> {
        for g in &mut self.groups {
            let _ = g.grads.f_zero_()?;
        }
        Ok(())
    }

    /// Back-propagates `loss` to these parameters only and writes the gradients into the
    /// gradient buffer, replacing what it held. Other leaves of the graph get no gradient and
    /// autograd computes nothing that only they need: a GAN's generator step skips the
    /// discriminator's weight gradients, which `backward()` would compute and accumulate for
    /// nothing. A parameter the loss does not reach gets zero.
    pub fn backward_into_grads(&mut self, loss: &Tensor) -> Result<()> {
        let grads = self.gradients(loss)?;
        for group in 0..self.groups.len() {
            self.write_grads(group, &grads)?;
        }
        Ok(())
    }

    /// The gradients of `loss` with respect to these parameters, in their order, as autograd
    /// returns them (undefined for a parameter the loss does not reach), without writing them
    /// anywhere: [`FlatParameters::backward_into_grads`] is this and [`FlatParameters::write_grads`].
    pub fn gradients(&self, loss: &Tensor) -> Result<Vec<Tensor>> {
        // `loss.backward()` refuses these itself; autograd's engine, called directly, would
        // sum a tensor of losses silently and dereference a missing graph.
        if !loss.requires_grad() || loss.numel() != 1 {
            return Err(GmError::config(
                "loss",
                format!(
                    "back-propagation needs a single-element loss computed from trainable \
                     parameters; got shape {:?}, which does {}require a gradient",
                    loss.size(),
                    if loss.requires_grad() { "" } else { "not " }
                ),
            ));
        }
        Ok(Tensor::f_run_backward(
            &[loss],
            &self.tensors,
            false,
            false,
        )?)
    }

    /// Writes group `group`'s share of `grads` (from [`FlatParameters::gradients`]) over its
    /// gradient buffer, zero for an undefined gradient.
    pub fn write_grads(&self, group: usize, grads: &[Tensor]) -> Result<()> {
        let g = &self.groups[group];
        // A large CPU buffer takes one copy per parameter, which libtorch spreads over its
        // threads; others a single concatenation (serial on the CPU, but one operation).
        let parallel = g.grads.device() == Device::Cpu
            && tch::get_num_threads() > 1
            && g.grads.numel() >= PARALLEL_COPY_ELEMENTS;
        if parallel {
            for &(i, offset, count) in &g.members {
                let grad = &grads[i];
                let mut slot = g.grads.f_narrow(0, offset, count)?;
                if grad.defined() {
                    // In the gradient's shape: a channels-last gradient is reordered once,
                    // by the copy.
                    slot.f_view(grad.size().as_slice())?.f_copy_(grad)?;
                } else {
                    let _ = slot.f_zero_()?;
                }
            }
            return Ok(());
        }
        let mut parts = Vec::with_capacity(g.members.len());
        for &(i, _, count) in &g.members {
            let grad = &grads[i];
            parts.push(if grad.defined() {
                grad.f_reshape([count])?
            } else {
                g.grads
                    .f_new_zeros([count], (g.grads.kind(), g.grads.device()))?
            });
        }
        let _ = Tensor::f_cat_out(&g.grads, &parts, 0)?;
        Ok(())
    }

    /// The global L2 norm of the gradients as a one-element float tensor on the first group's
    /// device, computed without reading anything back to the host.
    pub fn grad_norm(&self) -> Result<Tensor> {
        tch::no_grad(|| -> Result<Tensor> {
            let mut squares = Vec::with_capacity(self.groups.len());
            let device = self.groups[0].grads.device();
            for g in &self.groups {
                // In single precision at least: a half-precision norm overflows at 65504.
                let norm = g
                    .grads
                    .f_to_kind(Kind::Float)?
                    .f_norm()?
                    .f_to_device(device)?;
                squares.push(norm.f_square()?);
            }
            if squares.len() == 1 {
                return Ok(squares.pop().expect("one group").f_sqrt()?);
            }
            Ok(Tensor::f_stack(&squares, 0)?.f_sum(Kind::Float)?.f_sqrt()?)
        })
    }

    /// Checks that every parameter still lives in the buffer (one address per parameter, no
    /// tensor operation: cheap enough for every step): a model that replaced a parameter's
    /// storage after the optimizer was built (moved it to another device, say) would otherwise
    /// stop training silently. With `grads`, also every gradient.
    pub fn check_bound(&self, grads: bool) -> Result<()> {
        for g in &self.groups {
            let base = g.params.data_ptr() as usize;
            let grad_base = g.grads.data_ptr() as usize;
            let size = g.params.kind().elt_size_in_bytes();
            for &(i, offset, count) in &g.members {
                if count == 0 {
                    continue; // an empty tensor has no address
                }
                let p = &self.tensors[i];
                let at = offset as usize * size;
                let moved = p.data_ptr() as usize != base + at
                    || (grads && p.grad().data_ptr() as usize != grad_base + at);
                if moved {
                    return Err(GmError::config(
                        "params",
                        format!(
                            "parameter {i} no longer lives in the optimizer's buffer (was it moved \
                             or replaced after the optimizer was built?)"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// One tensor over all of `tensors` when they tile a contiguous stretch of one buffer (as an
/// optimizer's parameters do), with each tensor's offset into it; `None` otherwise.
pub fn contiguous_span(tensors: &[Tensor]) -> Option<(Tensor, Vec<i64>)> {
    let first = tensors.first()?;
    let (kind, device) = (first.kind(), first.device());
    if tensors
        .iter()
        .any(|t| t.kind() != kind || t.device() != device || !t.is_contiguous())
    {
        return None;
    }
    let size = kind.elt_size_in_bytes();
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by_key(|&i| tensors[i].data_ptr() as usize);
    let start = tensors[order[0]].data_ptr() as usize;
    let mut end = start;
    let mut offsets = vec![0i64; tensors.len()];
    for &i in &order {
        let at = tensors[i].data_ptr() as usize;
        if at != end {
            return None;
        }
        offsets[i] = ((at - start) / size) as i64;
        end = at + tensors[i].numel() * size;
    }
    let total = ((end - start) / size) as i64;
    // Out of the first tensor's storage, `as_strided` fails: then the tensors only happen to
    // sit side by side in memory.
    let span = tensors[order[0]]
        .f_detach()
        .ok()?
        .f_as_strided([total], [1], None::<i64>)
        .ok()?;
    (span.data_ptr() as usize == start).then_some((span, offsets))
}

/// Gives every parameter a defined `.grad` (zero where it had none) with a backward pass of a
/// zero-valued loss on it.
fn define_grads(params: &[Tensor]) -> Result<()> {
    tch::with_grad(|| -> Result<()> {
        for p in params.iter().filter(|p| !p.grad().defined()) {
            p.f_sum(Kind::Double)?.f_mul_scalar(0.0)?.f_backward()?;
        }
        Ok(())
    })
}
