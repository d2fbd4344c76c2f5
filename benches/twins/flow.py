"""PyTorch twins of gm's flow models (crates/gm-flow), for `cargo xtask speed`.

Each twin mirrors the gm model it is named after: the same layers and widths, masks and
permutations, the same log-likelihood (dequantisation, logit pre-processing, base density,
log-determinants), the same reductions of the loss, and the same optimizer step (Adam, global
gradient-norm clipping at 5, constant learning rate, no EMA: `FlowConfig::default()`'s). Weights
are initialised with gm's schemes (tch's default Kaiming-uniform with ReLU gain for linear and
convolution weights, U(±1/√fan_in) linear biases, zero conv biases, zeroed last conditioner layers,
a random rotation in LU form for the 1×1 convolutions, ActNorm initialised from the first batch),
not with gm's values.

gm reads back to the host once per training step (`check_data` counts non-finite and, for
discrete data, out-of-range values, and reads the two counts) and once per sampling call
(`ensure_finite_draws` reads whether the draws are finite). The twins do the same reads, so that
both sides synchronise alike; `MIRROR_GM_HOST_READS = False` turns them off.

Cases: `flow_tiny_b128` (NICE, 4 additive couplings, MLP 2-64-64-2), `realnvp_b256` (the default
RealNVP, 8 affine couplings, MLP 2-128-128-4), `glow_train_b64` and `glow_sample_64` (Glow on
[1, 28, 28], 2 levels of 4 steps, 64 hidden channels, logit α = 0.05, 256 levels).
"""

import math

import torch

import common
import torch.nn as nn
import torch.nn.functional as F

# gm's one host read per step (input validation) and per sampling call (finiteness of draws).
MIRROR_GM_HOST_READS = True

LN_2PI = math.log(2.0 * math.pi)

# FlowConfig::default().optimizer: AdamConfig { lr: 1e-3, grad_clip_norm: Some(5.0), .. }.
LR = 1e-3
BETAS = (0.9, 0.999)
EPS = 1e-8
GRAD_CLIP_NORM = 5.0


# --------------------------------------------------------------------------------------------
# Initialisation as tch does it (tch 0.26, nn::init).


def tch_kaiming_uniform_(weight):
    """tch's DEFAULT_KAIMING_UNIFORM: U(±√3 · √2 / √fan_in), fan_in = dims[1] · receptive field."""
    nn.init.kaiming_uniform_(weight, a=0.0, mode="fan_in", nonlinearity="relu")


def tch_linear(inputs, outputs):
    """`nn::linear(.., Default::default())`: Kaiming-uniform weight, U(±1/√inputs) bias."""
    layer = nn.Linear(inputs, outputs)
    with torch.no_grad():
        tch_kaiming_uniform_(layer.weight)
        bound = 1.0 / math.sqrt(inputs)
        layer.bias.uniform_(-bound, bound)
    return layer


def tch_conv2d(inputs, outputs, kernel, padding, zero=False):
    """`nn::conv2d`: Kaiming-uniform weight and zero bias, or both zero (`Init::Const(0.0)`)."""
    layer = nn.Conv2d(inputs, outputs, kernel, padding=padding)
    with torch.no_grad():
        if zero:
            layer.weight.zero_()
        else:
            tch_kaiming_uniform_(layer.weight)
        layer.bias.zero_()
    return layer


# --------------------------------------------------------------------------------------------
# gm-core pieces: check_data, the standard Normal base.


def check_data(x, levels=None):
    """gm_core::model::check_data (`common.check_data`), when mirroring gm's host reads."""
    if MIRROR_GM_HOST_READS:
        common.check_data(x, levels)
    return x


def ensure_finite(x):
    """gm_flow::layer::ensure_finite_draws: one read of whether every draw is finite."""
    if MIRROR_GM_HOST_READS and not bool(torch.isfinite(x).all()):
        raise FloatingPointError("flow sample holds non-finite values")


def standard_normal_log_prob(z, latent):
    """Flow::log_prob's base term: -½ Σ z² - ½ D ln 2π over dimension 1."""
    return z.square().sum(1).mul(-0.5).sub(0.5 * latent * LN_2PI)


# --------------------------------------------------------------------------------------------
# Vector flows (gm-flow vector.rs / layer.rs): coupling layers with alternating masks.


class Coupling(nn.Module):
    """gm_flow::vector::Coupling with an MLP conditioner (ReLU between layers, no final
    activation), input the masked x [B, D], output D · P reshaped to [B, D, P]."""

    def __init__(self, features, hidden, transform, parity, scale_bound=None):
        super().__init__()
        assert transform in ("additive", "affine")
        self.features = features
        self.transform = transform
        self.scale_bound = scale_bound
        self.per_dim = 1 if transform == "additive" else 2
        # alternating_mask: dimension i passes through when (i + parity) is even.
        mask = torch.tensor([(i + parity) % 2 == 0 for i in range(features)])
        self.register_buffer("mask", mask)
        self.register_buffer("moved_mask", mask.logical_not())
        widths = [features, *hidden, features * self.per_dim]
        self.layers = nn.ModuleList(tch_linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        # A new coupling layer starts at the identity: the last layer's weight and bias are zero.
        with torch.no_grad():
            self.layers[-1].weight.zero_()
            self.layers[-1].bias.zero_()

    def conditioner(self, x):
        h = torch.where(self.mask, x, 0.0)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i < last:
                h = F.relu(h)
        return h.reshape(-1, self.features, self.per_dim)

    def forward(self, x):
        params = self.conditioner(x)
        t = params.select(-1, 0)
        if self.transform == "additive":
            moved = x + t
            log_d = torch.zeros_like(x)
        else:
            s = torch.tanh(params.select(-1, 1) / self.scale_bound) * self.scale_bound
            moved = x * s.exp() + t
            log_d = s
        y = torch.where(self.mask, x, moved)
        log_d = torch.where(self.moved_mask, log_d, 0.0)
        return y, log_d.sum(1)


class Reverse(nn.Module):
    """gm_flow::vector::Permutation::reverse, between coupling layers when D > 2."""

    def __init__(self, features):
        super().__init__()
        self.register_buffer("index", torch.arange(features - 1, -1, -1))

    def forward(self, x):
        return x.index_select(1, self.index), torch.zeros(x.shape[0], device=x.device)


class VectorFlow(nn.Module):
    """build_flow for Architecture::Coupling { layers, hidden, transform, actnorm: false }."""

    def __init__(self, features, layers, hidden, transform, scale_bound=None):
        super().__init__()
        self.latent = features
        modules = []
        for i in range(layers):
            modules.append(Coupling(features, hidden, transform, i, scale_bound))
            if features > 2 and i + 1 < layers:
                modules.append(Reverse(features))
        self.layers = nn.ModuleList(modules)

    def log_prob(self, x):
        total = torch.zeros(x.shape[0], device=x.device)
        h = x
        for layer in self.layers:
            h, ld = layer(h)
            total = total + ld
        return standard_normal_log_prob(h, self.latent) + total


# --------------------------------------------------------------------------------------------
# Glow (gm-flow glow.rs / image.rs / vector.rs ActNorm).


class ActNorm(nn.Module):
    """gm_flow::vector::ActNorm on [B, C, H, W]: y = (x + b) · exp(s), data-initialised from the
    first batch it sees (mean 0, unit std per channel)."""

    def __init__(self, channels):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))
        self.log_scale = nn.Parameter(torch.zeros(channels))
        # gm keeps this flag in the var store, not trainable; a plain attribute here.
        self.initialized = False

    def _initialize(self, x):
        with torch.no_grad():
            mean = x.mean(dim=(0, 2, 3))
            std = x.std(dim=(0, 2, 3), unbiased=False)
            self.bias.copy_(-mean)
            self.log_scale.copy_(-(std + 1e-6).log())
        self.initialized = True

    def forward(self, x):
        if not self.initialized:
            self._initialize(x)
        c = x.shape[1]
        y = (x + self.bias.reshape(1, c, 1, 1)) * self.log_scale.reshape(1, c, 1, 1).exp()
        ld = self.log_scale.sum() * float(x.shape[2] * x.shape[3])
        return y, ld.expand(x.shape[0]).contiguous()

    def inverse(self, y):
        x = self.inverse_only(y)
        ld = self.log_scale.sum() * -float(y.shape[2] * y.shape[3])
        return x, ld.expand(y.shape[0]).contiguous()

    def inverse_only(self, y):
        c = y.shape[1]
        return y * self.log_scale.reshape(1, c, 1, 1).neg().exp() - self.bias.reshape(1, c, 1, 1)


class InvertibleConv1x1(nn.Module):
    """Glow's 1×1 convolution in LU form, W = P (L ⊙ M + I) (U ⊙ Mᵀ + diag(sign · exp(log_s))),
    started from a random rotation; P and the signs are fixed buffers, L, U, log_s trained."""

    def __init__(self, channels):
        super().__init__()
        q, _ = torch.linalg.qr(torch.randn(channels, channels, dtype=torch.float64), mode="reduced")
        p, lower, upper = torch.linalg.lu(q, pivot=True)
        s = upper.diagonal()
        self.register_buffer("permutation", p.float())
        self.lower = nn.Parameter(lower.float())
        self.upper = nn.Parameter(upper.triu(1).float())
        self.log_s = nn.Parameter(s.abs().log().float())
        self.register_buffer("sign_s", s.sign().float())
        self.register_buffer("lower_mask", torch.ones(channels, channels).tril(-1))
        self.register_buffer("eye", torch.eye(channels))
        self.channels = channels

    def weight(self):
        lower = self.lower * self.lower_mask + self.eye
        upper = self.upper * self.lower_mask.t() + torch.diag_embed(self.sign_s * self.log_s.exp())
        return self.permutation.matmul(lower).matmul(upper)

    def _log_det(self, x, sign):
        ld = self.log_s.sum() * (float(x.shape[2] * x.shape[3]) * sign)
        return ld.expand(x.shape[0]).contiguous()

    def forward(self, x):
        w = self.weight().reshape(self.channels, self.channels, 1, 1)
        return F.conv2d(x, w), self._log_det(x, 1.0)

    def inverse(self, y):
        return self.inverse_only(y), self._log_det(y, -1.0)

    def inverse_only(self, y):
        w_inv = torch.linalg.inv(self.weight()).reshape(self.channels, self.channels, 1, 1)
        return F.conv2d(y, w_inv)


# image.rs: the float32 caps of ImageCoupling's inverse.
MAX_INVERSE_LOG_SCALE = 64.0
INVERSE_BOUND = 1e15


class ImageCoupling(nn.Module):
    """gm_flow::image::ImageCoupling with a channel mask: conditioner conv3×3(C→h) → ReLU →
    conv1×1(h→h) → ReLU → conv3×3(h→2C, zero-initialised) on the masked input (all C channels,
    the transformed ones zeroed); scale sigmoid(raw + 2)."""

    def __init__(self, channels, hidden, second_half):
        super().__init__()
        self.channels = channels
        self.conv_in = tch_conv2d(channels, hidden, 3, padding=1)
        self.conv_mid = tch_conv2d(hidden, hidden, 1, padding=0)
        self.conv_out = tch_conv2d(hidden, 2 * channels, 3, padding=1, zero=True)
        first = torch.arange(channels) < channels // 2
        keep = first.logical_not() if second_half else first
        self.register_buffer("keep", keep.reshape(1, channels, 1, 1))
        self.register_buffer("moved", keep.logical_not().reshape(1, channels, 1, 1))

    def _conditioner(self, x):
        kept = torch.where(self.keep, x, 0.0)
        h = F.relu(self.conv_in(kept))
        h = F.relu(self.conv_mid(h))
        out = self.conv_out(h)
        return out.narrow(1, 0, self.channels), out.narrow(1, self.channels, self.channels)

    def _params(self, x):
        shift, raw = self._conditioner(x)
        # ln sigmoid(raw + 2) = -softplus(-(raw + 2)).
        log_scale = F.softplus((raw + 2.0).neg()).neg()
        return shift, log_scale

    def forward(self, x):
        shift, log_scale = self._params(x)
        moved = x * log_scale.exp() + shift
        y = torch.where(self.keep, x, moved)
        ld = torch.where(self.moved, log_scale, 0.0).sum(dim=(1, 2, 3))
        return y, ld

    def inverse(self, y):
        shift, log_scale = self._params(y)
        factor = log_scale.neg().clamp_max(MAX_INVERSE_LOG_SCALE).exp()
        moved = ((y - shift) * factor).clamp(-INVERSE_BOUND, INVERSE_BOUND)
        x = torch.where(self.keep, y, moved)
        ld = torch.where(self.moved, log_scale, 0.0).sum(dim=(1, 2, 3))
        return x, ld.neg()

    def inverse_only(self, y):
        """gm's ImageCoupling::inverse_only: 1 / sigmoid(raw + 2) = 1 + exp(-(raw + 2)), the
        exponent capped, in place (no gradients), no log-determinant."""
        shift, raw = self._conditioner(y)
        factor = (-2.0 - raw).clamp_max_(MAX_INVERSE_LOG_SCALE).exp_().add_(1.0)
        moved = (y - shift).mul_(factor).clamp_(-INVERSE_BOUND, INVERSE_BOUND)
        return torch.where(self.keep, y, moved)


class LogitPreprocess(nn.Module):
    """y = logit(α + (1 - 2α) x), with log|dy/dx| = ln(1 - 2α) - ln t - ln(1 - t)."""

    def __init__(self, alpha):
        super().__init__()
        self.alpha = alpha

    def forward(self, x):
        a = self.alpha
        t = x * (1.0 - 2.0 * a) + a
        log_t, log_1mt = t.log(), t.neg().log1p()
        y = log_t - log_1mt
        ld = (log_t + log_1mt).neg() + math.log(1.0 - 2.0 * a)
        return y, ld.sum(dim=tuple(range(1, ld.dim())))

    def inverse(self, y):
        a = self.alpha
        x = (torch.sigmoid(y) - a) / (1.0 - 2.0 * a)
        ld = (F.softplus(y.neg()) + F.softplus(y)).neg() - math.log(1.0 - 2.0 * a)
        return x, ld.sum(dim=tuple(range(1, ld.dim())))

    def inverse_only(self, y):
        return (torch.sigmoid(y) - self.alpha) / (1.0 - 2.0 * self.alpha)


class MultiScale(nn.Module):
    """gm_flow::glow::MultiScale: per level squeeze (pixel_unshuffle 2), `steps` × (ActNorm,
    1×1 conv, channel coupling alternating first/second half), then factor out the second half
    of the channels (not on the last level). Output: the factored-out parts, then the last
    level's output, each flattened, concatenated to [B, C·H·W]."""

    def __init__(self, shape, levels, steps, hidden):
        super().__init__()
        c, h, w = shape
        self.shape = shape
        self.level_shapes = []
        self.factor_out = []
        self.levels = nn.ModuleList()
        for level in range(levels):
            c, h, w = c * 4, h // 2, w // 2
            layers = nn.ModuleList()
            for s in range(steps):
                layers.append(ActNorm(c))
                layers.append(InvertibleConv1x1(c))
                layers.append(ImageCoupling(c, hidden, second_half=(s % 2 == 1)))
            self.levels.append(layers)
            last = level + 1 == levels
            self.level_shapes.append((c, h, w))
            self.factor_out.append(None if last else c // 2)
            if not last:
                c -= c // 2

    def forward(self, x):
        batch = x.shape[0]
        total = torch.zeros(batch, device=x.device)
        parts = []
        h = x
        for layers, (c, _, _), out in zip(self.levels, self.level_shapes, self.factor_out):
            h = F.pixel_unshuffle(h, 2)
            for layer in layers:
                h, ld = layer(h)
                total = total + ld
            if out is not None:
                keep = c - out
                parts.append(h.narrow(1, keep, out).reshape(batch, -1))
                h = h.narrow(1, 0, keep)
        parts.append(h.reshape(batch, -1))
        return torch.cat(parts, 1), total

    def _pieces(self, z):
        """The flat latent split back into the factored-out parts, in order, then the last
        level's output."""
        batch = z.shape[0]
        pieces, offset = [], 0
        for (c, hh, ww), out in zip(self.level_shapes, self.factor_out):
            c = out if out is not None else c
            n = c * hh * ww
            pieces.append(z.narrow(1, offset, n).reshape(batch, c, hh, ww))
            offset += n
        return pieces

    def inverse(self, z):
        pieces = self._pieces(z)
        total = torch.zeros(z.shape[0], device=z.device)
        h = pieces.pop()
        for layers, out in zip(reversed(self.levels), reversed(self.factor_out)):
            if out is not None:
                h = torch.cat([h, pieces.pop()], 1)
            for layer in reversed(layers):
                h, ld = layer.inverse(h)
                total = total + ld
            h = F.pixel_shuffle(h, 2)
        return h, total

    def inverse_only(self, z):
        """gm's MultiScale::inverse_only: the inverse without log-determinants, for sampling."""
        pieces = self._pieces(z)
        h = pieces.pop()
        for layers, out in zip(reversed(self.levels), reversed(self.factor_out)):
            if out is not None:
                h = torch.cat([h, pieces.pop()], 1)
            for layer in reversed(layers):
                h = layer.inverse_only(h)
            h = F.pixel_shuffle(h, 2)
        return h


class GlowFlow(nn.Module):
    """build_flow for Architecture::MultiScale: LogitPreprocess then MultiScale, standard Normal
    base on the flat latent."""

    def __init__(self, shape, levels, steps, hidden, alpha):
        super().__init__()
        self.shape = shape
        self.latent = shape[0] * shape[1] * shape[2]
        self.logit = LogitPreprocess(alpha)
        self.glow = MultiScale(shape, levels, steps, hidden)

    def log_prob(self, x):
        total = torch.zeros(x.shape[0], device=x.device)
        h, ld = self.logit(x)
        total = total + ld
        h, ld = self.glow(h)
        total = total + ld
        z = h.reshape(x.shape[0], self.latent)
        return standard_normal_log_prob(z, self.latent) + total

    def inverse(self, z):
        total = torch.zeros(z.shape[0], device=z.device)
        h, ld = self.glow.inverse(z)
        total = total + ld
        h, ld = self.logit.inverse(h)
        total = total + ld
        return h.reshape(z.shape[0], *self.shape), total

    def inverse_only(self, z):
        """gm's Flow::inverse_only (what sampling uses): no log-determinants."""
        h = self.logit.inverse_only(self.glow.inverse_only(z))
        return h.reshape(z.shape[0], *self.shape)


# --------------------------------------------------------------------------------------------
# FlowModel::train_step and sample.


def continuous_loss(flow):
    """DataSpace::Continuous: nll = -mean ln p(x); loss = nll / D."""
    dims = flow.latent

    def loss(x):
        lp = flow.log_prob(x)
        nll = lp.mean().neg()
        return nll / dims, nll.detach()

    return loss


def dequantise(x, levels):
    return (x + torch.rand_like(x)) / levels


def discrete_loss(flow, levels):
    """DataSpace::Discrete: y = (x + u) / levels, u ~ U[0,1); ln P ≥ ln p(y) - D ln levels;
    nll = -mean of that bound; loss = nll / D."""
    dims = flow.latent
    shift = dims * math.log(levels)

    def loss(x):
        lp = flow.log_prob(dequantise(x, levels))
        bound = (lp.neg() + shift).neg()  # -dequantized_nll_nats
        nll = bound.mean().neg()
        return nll / dims, nll.detach()

    return loss


def compile_or_explain(fn, name):
    try:
        return torch.compile(fn)
    except Exception as error:  # torch.compile itself is lazy; this catches setup errors
        raise RuntimeError(f"torch.compile failed for {name}: {type(error).__name__}: {error}") from error


class TrainCase:
    """One gm train_step: input check (one host read), loss, zero grads, backward, global-norm
    clip at 5, Adam step with the constant learning rate."""

    def __init__(self, name, model, loss, batch, levels, compiled):
        self.name = name
        self.model = model
        self.batch = batch
        self.levels = levels
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        self.params = sum(p.numel() for p in self.trainable)
        self.optimizer = torch.optim.Adam(self.trainable, lr=LR, betas=BETAS, eps=EPS)
        self.loss = compile_or_explain(loss, name) if compiled else loss
        self.compiled = compiled
        self.last_nll = None
        if compiled:
            common.first_compiled_step(self, name, batch.device)

    def step(self):
        x = check_data(self.batch, self.levels)
        loss, nll = self.loss(x)
        self.optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.trainable, GRAD_CLIP_NORM)
        self.optimizer.step()
        self.last_nll = nll  # StepOutput keeps the detached nll, unread


class SampleCase:
    """FlowModel::sample(n): z ~ N(0, I) · temperature, the inverse pass without
    log-determinants (gm's Flow::inverse_only), the finiteness read, then the data space:
    floor(y · levels) clamped into 0..levels."""

    def __init__(self, name, flow, n, levels, compiled, temperature=1.0):
        self.flow = flow
        self.n = n
        self.params = sum(p.numel() for p in flow.parameters() if p.requires_grad)

        def draw():
            z = torch.randn(n, flow.latent, device=device_of(flow)) * temperature
            y = flow.inverse_only(z)
            data = (y * levels).floor().clamp(0.0, levels - 1.0)
            return y, data

        self.draw = compile_or_explain(draw, name) if compiled else draw
        self.last = None
        if compiled:
            common.first_compiled_step(self, name, device_of(flow))

    def step(self):
        with torch.no_grad():
            y, data = self.draw()
            ensure_finite(y)
        self.last = data
        return data


def device_of(module):
    return next(module.parameters()).device


# --------------------------------------------------------------------------------------------
# Cases.


def make_flow_tiny_b128(device, compiled):
    # Coupling { layers: 4, hidden: [64, 64], transform: Additive, actnorm: false }, D = 2:
    # conditioner 2-64-64-2 (in: D + 0 context features, out: D · 1 parameter per dimension).
    flow = VectorFlow(2, layers=4, hidden=[64, 64], transform="additive").to(device)
    batch = torch.randn(128, 2, device=device)
    return TrainCase("flow_tiny_b128", flow, continuous_loss(flow), batch, None, compiled)


def make_realnvp_b256(device, compiled):
    # FlowConfig::default(): Coupling { layers: 8, hidden: [128, 128], Affine { scale_bound: 3 } },
    # conditioner 2-128-128-4.
    flow = VectorFlow(2, layers=8, hidden=[128, 128], transform="affine", scale_bound=3.0).to(device)
    batch = torch.randn(256, 2, device=device)
    return TrainCase("realnvp_b256", flow, continuous_loss(flow), batch, None, compiled)


GLOW_SHAPE = (1, 28, 28)
GLOW_LEVELS = 256


def build_glow(device):
    return GlowFlow(GLOW_SHAPE, levels=2, steps=4, hidden=64, alpha=0.05).to(device)


def actnorm_data_init(flow, x):
    """gm initialises every ActNorm from the first batch it sees, inside the first training step;
    here that is done once, eagerly, on the first dequantised batch, before any compilation."""
    with torch.no_grad():
        flow.log_prob(dequantise(x, GLOW_LEVELS))


def make_glow_train_b64(device, compiled):
    flow = build_glow(device)
    # gm's harness (benches/lib.rs random_batch): randint(256, [64, 1, 28, 28], Float). (The
    # criterion bench's [64, 784] would be refused by gm's check_data: the event shape is
    # [1, 28, 28].)
    batch = torch.randint(0, GLOW_LEVELS, (64, *GLOW_SHAPE), device=device).float()
    actnorm_data_init(flow, batch)
    return TrainCase(
        "glow_train_b64", flow, discrete_loss(flow, GLOW_LEVELS), batch, GLOW_LEVELS, compiled
    )


def make_glow_sample_64(device, compiled):
    flow = build_glow(device)
    batch = torch.randint(0, GLOW_LEVELS, (64, *GLOW_SHAPE), device=device).float()
    actnorm_data_init(flow, batch)
    return SampleCase("glow_sample_64", flow, 64, float(GLOW_LEVELS), compiled)


CASES = {
    "flow_tiny_b128": make_flow_tiny_b128,
    "realnvp_b256": make_realnvp_b256,
    "glow_train_b64": make_glow_train_b64,
    "glow_sample_64": make_glow_sample_64,
}
