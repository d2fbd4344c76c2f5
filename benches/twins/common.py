"""What several twins share: gm's data check, its Adam and learning-rate schedule, and the
batches of the MNIST-shaped data sets."""

import math

import torch


def check_data(x, levels=None):
    """gm-core model.rs `check_data`: finite values (continuous data, `levels=None`) or integers
    in 0..levels-1; one pass and one host read in the common case, the counts only when
    something is wrong, as gm's."""
    if levels is None:
        valid = torch.isfinite(x).all()
    else:
        valid = x.eq(x.round().clamp(0.0, float(levels - 1))).all()
    if bool(valid):
        return x
    finite = torch.isfinite(x)
    non_finite = int(finite.logical_not().sum())
    outside = 0
    if levels is not None:
        outside = int(((x.lt(0.0) | x.gt(float(levels - 1)) | x.ne(x.floor())) & finite).sum())
    raise ValueError(f"bad data: {non_finite} non-finite, {outside} outside 0..{levels}")


def lr_factor(schedule, step):
    """gm-core train/schedule.rs `LrSchedule::factor` (step is 0-based)."""
    kind = schedule.get("kind", "constant")
    if kind == "constant":
        return 1.0
    if kind != "warmup_cosine":
        raise NotImplementedError(f"the twins do not implement lr_schedule {kind!r}")
    warmup, total = int(schedule["warmup_steps"]), int(schedule["total_steps"])
    min_ratio = float(schedule["min_ratio"])
    if step < warmup:
        return (step + 1) / warmup
    span = float(max(total - (warmup + 1), 1))
    t = min((step - warmup) / span, 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


def make_optimizer(params, opt):
    """gm's Adam (gm-core train/optim.rs) as a PyTorch user writes it."""
    kwargs = dict(lr=opt["lr"], betas=(opt["beta1"], opt["beta2"]), eps=opt["eps"])
    if opt["weight_decay"] > 0 and opt["decoupled_weight_decay"]:
        return torch.optim.AdamW(params, weight_decay=opt["weight_decay"], **kwargs)
    return torch.optim.Adam(params, weight_decay=opt["weight_decay"], **kwargs)


def mnist_grey_batch(device, b, levels=256, image=(1, 28, 28)):
    """What gm's trainer hands `train_step` for mnist_grey: x float32 [b, 1, 28, 28] holding
    integer grey levels 0..255, labels int64 [b] in 0..9 (ignored by unconditional models)."""
    x = torch.randint(0, levels, (b, *image), device=device).float()
    labels = torch.randint(0, 10, (b,), device=device)
    return x, labels


def first_compiled_step(case, name, device):
    """Runs one step of a case whose computation was wrapped in `torch.compile`, which compiles
    on the first call, so that a failure is reported at set-up with the case's name."""
    try:
        case.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    except Exception as error:
        raise RuntimeError(
            f"torch.compile failed for {name}: {type(error).__name__}: {error}") from error


def optimizer_step(optimizer, loss, params, lr, clip=None):
    """gm's `Adam::backward_step` at learning rate `lr`: zero the gradients, back-propagate,
    clip the global norm (when `clip` is set) and update."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad()
    loss.backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(params, float(clip))
    optimizer.step()


def binary_batch(n, device, shape=(784,)):
    """crates/gm-vae/benches/vae.rs `binary_batch`: n examples of `shape` in {0, 1} with
    P(1) = 0.13, drawn from a generator seeded with 1 (the same values whatever the shape)."""
    generator = torch.Generator().manual_seed(1)
    x = (torch.rand(n, 784, generator=generator) < 0.13).float()
    return x.reshape(n, *shape).to(device)
