"""PyTorch twin of gm's diffusion U-Net (crates/gm-diffusion, configs/mnist_unet.toml) for
`cargo xtask speed`.

One `step()` is one `Diffusion::train_step` (crates/gm-diffusion/src/model.rs) on a batch of 64
mnist_grey examples:

1. the data check every gm model runs at its boundary (`check_data`: a non-finite count and an
   out-of-range-or-fractional count, read back to the host: gm's step synchronises here once);
2. levels 0..255 to [-1, 1] (`x * 2/255 - 1`);
3. t ~ U{1..1000} per example (int64), ε ~ N(0, I), x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε with ᾱ from
   the cosine schedule (offset 0.008, β capped at 0.999) kept as a float64 table and gathered
   per example, the coefficients cast to float32;
4. the U-Net at (x_t, t · 1000/T) with 2 outputs per value (learned variances): the ε
   prediction and the variance interpolation v;
5. mse = mean((ε̂ − ε)²) (target ε); the bound's term at each example's t in float64 with the
   mean prediction detached (x̂₀ clipped to [-1, 1]; KL of the posteriors for t ≥ 2, the
   discretised-Gaussian decoder over 256 levels for t = 1; learned log-variance
   ½(v + 1) ln β_t + ½(1 − v) ln β̃_t), averaged over the batch and divided by 784 values;
   loss = mse + (λ T = 0.001 · 1000) · term;
6. zero grads, backward, global-norm clipping at 1 (`clip_grad_norm_`), Adam(lr, 0.9, 0.999,
   eps 1e-8, no weight decay) at the warmup-cosine rate of the step (warm-up 100 steps,
   total 3000, min ratio 0.05);
7. the EMA (decay 0.995, start_step 300: the shadow copies the weights through update 300 and
   interpolates after it, exactly as gm's `Ema::update`).

The U-Net (`denoiser.rs`), channels 16, multipliers [1, 2, 2], attention, 1x28x28 images:
time: sinusoidal(t, 16) -> Linear(16, 64) -> SiLU -> Linear(64, 64), its SiLU fed to every
residual block; conv_in 3x3 (1 -> 16); down: Res(16, 16) @28, Conv 3x3/2, Res(16, 32) @14,
Conv 3x3/2, Res(32, 32) @7; mid: Res(32, 32), single-head self-attention (GroupNorm, 1x1 qkv,
1x1 out, residual), Res(32, 32); up: Res(64, 32) @7, nearest x2 + Conv 3x3, Res(64, 32) @14,
nearest x2 + Conv 3x3, Res(48, 16) @28; GroupNorm, SiLU, conv_out 3x3 (16 -> 2, zero init).
Res(i, o): GN(8, i), SiLU, Conv 3x3, + Linear(64, o)(emb), GN(8, o), SiLU, Conv 3x3, + skip
(1x1 conv when i != o). All group norms have 8 groups and eps 1e-5.
"""

import math

import torch

from common import check_data, mnist_grey_batch
import torch.nn as nn
import torch.nn.functional as F

IMAGE = (1, 28, 28)
LEVELS = 256
BATCH = 64
TIMESTEPS = 1000
COSINE_OFFSET = 0.008
CHANNELS = 16
MULTIPLIERS = (1, 2, 2)
ATTENTION = True
OUTPUTS_PER_VALUE = 2  # variance = "learned"
HYBRID_WEIGHT = 0.001
LR = 2e-3
GRAD_CLIP = 1.0
WARMUP, TOTAL, MIN_RATIO = 100, 3000, 0.05
EMA_DECAY = 0.995
EMA_START = 300
GROUPS = 8


def cosine_alpha_bars(timesteps, offset):
    """ᾱ_t for t in 0..=T (ᾱ_0 = 1), float64, as gm's `Schedule::new`."""

    def f(t):
        return math.cos((t / timesteps + offset) / (1.0 + offset) * math.pi / 2) ** 2

    alpha_bars = [1.0]
    for t in range(1, timesteps + 1):
        beta = min(max(1.0 - f(t) / f(t - 1), 0.0), 0.999)
        alpha_bars.append(alpha_bars[-1] * (1.0 - beta))
    return alpha_bars


def lr_factor(step):
    """gm's `LrSchedule::WarmupCosine::factor` at 0-based optimizer step `step`."""
    if step < WARMUP:
        return (step + 1) / WARMUP
    span = max(TOTAL - (WARMUP + 1), 1)
    t = min((step - WARMUP) / span, 1.0)
    return MIN_RATIO + (1.0 - MIN_RATIO) * 0.5 * (1.0 + math.cos(math.pi * t))


# ---- the network -------------------------------------------------------------------------------


def sinusoidal_embedding(t, width):
    half = width // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=t.device)
                      * (-math.log(10_000.0) / max(half, 1)))
    args = t.float()[:, None] * freqs[None, :]
    return torch.cat([args.sin(), args.cos()], 1)


class ResBlock(nn.Module):
    def __init__(self, inputs, outputs, emb):
        super().__init__()
        self.norm1 = nn.GroupNorm(GROUPS, inputs, eps=1e-5)
        self.conv1 = nn.Conv2d(inputs, outputs, 3, 1, 1)
        self.time = nn.Linear(emb, outputs)
        self.norm2 = nn.GroupNorm(GROUPS, outputs, eps=1e-5)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, 1, 1)
        self.skip = nn.Conv2d(inputs, outputs, 1) if inputs != outputs else None

    def forward(self, x, emb_act):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time(emb_act)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return h + (self.skip(x) if self.skip is not None else x)


class Attention(nn.Module):
    """Single-head self-attention over the pixels, scaled by 1/√c, with a residual."""

    def __init__(self, width):
        super().__init__()
        self.norm = nn.GroupNorm(GROUPS, width, eps=1e-5)
        self.qkv = nn.Conv2d(width, 3 * width, 1)
        self.out = nn.Conv2d(width, width, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, c, h * w)
        # [b, pixels, c] each; one head of width c, so SDPA's default scale is 1/√c.
        q, k, v = (qkv[:, i].transpose(1, 2) for i in range(3))
        attended = F.scaled_dot_product_attention(q, k, v)  # [b, pixels, c]
        return x + self.out(attended.transpose(1, 2).reshape(b, c, h, w))


class UNet(nn.Module):
    def __init__(self):
        super().__init__()
        c_in = IMAGE[0]
        emb = 4 * CHANNELS
        widths = [m * CHANNELS for m in MULTIPLIERS]
        self.time_in = nn.Linear(CHANNELS, emb)
        self.time_out = nn.Linear(emb, emb)
        self.conv_in = nn.Conv2d(c_in, CHANNELS, 3, 1, 1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        width = CHANNELS
        for i, w in enumerate(widths):
            self.down.append(ResBlock(width, w, emb))
            self.downsample.append(nn.Conv2d(w, w, 3, 2, 1) if i + 1 < len(widths) else
                                   nn.Identity())
            width = w
        self.mid1 = ResBlock(width, width, emb)
        self.attention = Attention(width) if ATTENTION else None
        self.mid2 = ResBlock(width, width, emb)
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i, w in reversed(list(enumerate(widths))):
            self.up.append(ResBlock(width + w, w, emb))
            self.upsample.append(nn.Conv2d(w, w, 3, 1, 1) if i > 0 else nn.Identity())
            width = w
        self.norm_out = nn.GroupNorm(GROUPS, width, eps=1e-5)
        self.conv_out = nn.Conv2d(width, OUTPUTS_PER_VALUE * c_in, 3, 1, 1)
        # Zero output layer: the untrained network predicts 0 (an ε-loss of one per value).
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x, t_scaled):
        emb = self.time_out(F.silu(self.time_in(sinusoidal_embedding(t_scaled, CHANNELS))))
        emb_act = F.silu(emb)
        h = self.conv_in(x)
        skips = []
        for block, sample in zip(self.down, self.downsample):
            h = block(h, emb_act)
            skips.append(h)
            h = sample(h)
        h = self.mid1(h, emb_act)
        if self.attention is not None:
            h = self.attention(h)
        h = self.mid2(h, emb_act)
        for block, sample in zip(self.up, self.upsample):
            h = block(torch.cat([h, skips.pop()], 1), emb_act)
            if not isinstance(sample, nn.Identity):
                h = sample(F.interpolate(h, scale_factor=2, mode="nearest"))
        out = self.conv_out(F.silu(self.norm_out(h)))
        return out.reshape(x.shape[0], -1)


# ---- the bound's term (process.rs, likelihood.rs), float64 -------------------------------------


def per_example(coef, like):
    return coef.view(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def log_normal_interval(a, b):
    upper_tail = (a + b) > 0.0
    lo = torch.where(upper_tail.logical_not(), a, -b)
    hi = torch.where(upper_tail.logical_not(), b, -a)
    log_lo, log_hi = torch.special.log_ndtr(lo), torch.special.log_ndtr(hi)
    d = log_lo - log_hi
    log1m_exp = torch.where(d > -math.log(2.0), (-torch.expm1(d)).log(), torch.log1p(-d.exp()))
    return log_hi + log1m_exp


def discretized_gaussian_log_prob(x, mean, log_variance, levels):
    half_width = 1.0 / max(levels - 1, 1)
    inv_std = (log_variance * -0.5).exp()
    centred = x - mean
    lower = (centred - half_width) * inv_std
    upper = (centred + half_width) * inv_std
    inner = log_normal_interval(lower, upper)
    bottom = x < -1.0 + half_width
    top = x > 1.0 - half_width
    below = torch.special.log_ndtr(upper)
    above = torch.special.log_ndtr(-lower)
    return torch.where(bottom, below, torch.where(top, above, inner))


def normal_kl(m1, lv1, m2, lv2):
    return 0.5 * (lv2 - lv1 + (lv1 - lv2).exp() + (m1 - m2).square() * (-lv2).exp() - 1.0)


def sum_per_example(x):
    return x.reshape(x.shape[0], -1).sum(1)


class Schedule:
    def __init__(self, device):
        self.table = torch.tensor(cosine_alpha_bars(TIMESTEPS, COSINE_OFFSET), dtype=torch.float64,
                                  device=device)

    def alpha_bar(self, t):
        return self.table.index_select(0, t.flatten()).view(t.shape)

    def q_sample(self, x0, t, noise):
        ab = self.alpha_bar(t)
        return x0 * per_example(ab.sqrt(), x0) + noise * per_example((1.0 - ab).sqrt(), x0)

    def jump(self, t, s):
        ab_t, ab_s = self.alpha_bar(t), self.alpha_bar(s)
        ratio = ab_t / ab_s
        beta = 1.0 - ratio
        one_minus_t, one_minus_s = 1.0 - ab_t, 1.0 - ab_s
        posterior_variance = one_minus_s / one_minus_t * beta
        coef_x0 = ab_s.sqrt() * beta / one_minus_t
        coef_xt = ratio.sqrt() * one_minus_s / one_minus_t
        return beta, posterior_variance, coef_x0, coef_xt

    def clipped_log_posterior_variance(self, t):
        t_safe = t.clamp_min(2)
        return self.jump(t_safe, t_safe - 1)[1].log()


def vlb_term(schedule, x0, xt, t, prediction, variance):
    """gm's `Process::term` for ε-prediction, learned variances and 256 levels, in float64."""
    x0, xt = x0.double(), xt.double()
    prediction, variance = prediction.double(), variance.double()
    ab = schedule.alpha_bar(t)
    a, s_ = per_example(ab.sqrt(), xt), per_example((1.0 - ab).sqrt(), xt)
    x0_hat = ((xt - prediction * s_) / a).clamp(-1.0, 1.0)
    _eps = (xt - x0_hat * a) / s_  # gm derives ε̂ from the clipped x̂₀ too (unused by the term)
    s = t - 1
    beta, posterior, coef_x0, coef_xt = schedule.jump(t, s)
    cx0, cxt = per_example(coef_x0, x0), per_example(coef_xt, x0)
    true_mean = x0 * cx0 + xt * cxt
    model_mean = x0_hat * cx0 + xt * cxt
    true_lv = per_example(schedule.clipped_log_posterior_variance(t), x0).expand_as(x0)
    clipped = schedule.clipped_log_posterior_variance(t)
    small = torch.where(s == 0, clipped, posterior.log())
    frac = (variance + 1.0) * 0.5
    model_lv = (frac * per_example(beta.log(), variance)
                + (1.0 - frac) * per_example(small, variance)).expand_as(x0)
    kl = sum_per_example(normal_kl(true_mean, true_lv, model_mean, model_lv))
    nll_decoder = -sum_per_example(discretized_gaussian_log_prob(x0, model_mean, model_lv, LEVELS))
    return torch.where(t == 1, nll_decoder, kl)


# ---- the case ----------------------------------------------------------------------------------


class UnetCase:
    def __init__(self, device, compiled):
        self.device = device
        self.net = UNet().to(device)
        self.schedule = Schedule(device)
        self.param_list = [p for p in self.net.parameters() if p.requires_grad]
        self.params = sum(p.numel() for p in self.param_list)
        self.opt = torch.optim.Adam(self.param_list, lr=LR, betas=(0.9, 0.999), eps=1e-8)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_factor)
        self.ema = [p.detach().clone() for p in self.param_list]
        self.steps = 0
        self.x, self.labels = mnist_grey_batch(device, BATCH)
        self.loss_fn = self._loss
        if compiled:
            try:
                self.loss_fn = torch.compile(self._loss)
                # Compile now, so that a failure surfaces here with a clear message (this is
                # one ordinary training step more, which changes nothing that is timed).
                self.step()
            except Exception as error:
                raise RuntimeError(f"torch.compile failed for unet_b64: {error}") from error

    def _loss(self, y, t, noise):
        xt = self.schedule.q_sample(y, t, noise)
        b = xt.shape[0]
        out = self.net(xt, t.float() * (1000.0 / TIMESTEPS))
        parts = out.reshape(b, OUTPUTS_PER_VALUE, -1)
        prediction = parts[:, 0].reshape(xt.shape)
        variance = parts[:, 1].reshape(xt.shape)
        _ab = self.schedule.alpha_bar(t)  # gm gathers ᾱ again for the target (unused by ε)
        target = noise  # prediction = "epsilon"
        mse = (prediction - target).square().mean()
        term = vlb_term(self.schedule, y, xt, t, prediction.detach(), variance)
        per_value = (term.mean() / float(y[0].numel())).float()
        loss = mse + per_value * (HYBRID_WEIGHT * TIMESTEPS)
        return loss, mse, per_value

    def step(self):
        x = self.x
        check_data(x, LEVELS)
        y = x * (2.0 / (LEVELS - 1)) - 1.0
        b = y.shape[0]
        t = torch.randint(1, TIMESTEPS + 1, (b,), device=self.device)
        noise = torch.randn_like(y)
        loss, mse, per_value = self.loss_fn(y, t, noise)
        self.opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.param_list, GRAD_CLIP)
        self.opt.step()
        self.sched.step()
        self.steps += 1
        with torch.no_grad():
            follow = self.steps <= max(EMA_START, 1)
            for e, p in zip(self.ema, self.param_list):
                if follow:
                    e.copy_(p)
                else:
                    e.lerp_(p, 1.0 - EMA_DECAY)
        self.last = {"loss": loss.detach(), "mse": mse.detach(), "vlb_term": per_value.detach()}
        return self.last


def gm_parameters():
    """`DenoiserConfig::parameters` for mnist_unet on [1, 28, 28] (2 outputs per value, no
    labels)."""
    linear = lambda i, o: i * o + o  # noqa: E731
    conv = lambda i, o, k: k * k * i * o + o  # noqa: E731
    emb = 4 * CHANNELS
    c_in = IMAGE[0]

    def res(i, o):
        return 2 * i + conv(i, o, 3) + linear(emb, o) + 2 * o + conv(o, o, 3) + (
            conv(i, o, 1) if i != o else 0)

    widths = [m * CHANNELS for m in MULTIPLIERS]
    total = linear(CHANNELS, emb) + linear(emb, emb) + conv(c_in, CHANNELS, 3)
    width = CHANNELS
    for i, w in enumerate(widths):
        total += res(width, w)
        width = w
        if i + 1 < len(widths):
            total += conv(w, w, 3)
    total += 2 * res(width, width)
    if ATTENTION:
        total += 2 * width + conv(width, 3 * width, 1) + conv(width, width, 1)
    for i, w in reversed(list(enumerate(widths))):
        total += res(width + w, w)
        width = w
        if i > 0:
            total += conv(w, w, 3)
    return total + 2 * width + conv(width, OUTPUTS_PER_VALUE * c_in, 3)


def make_unet_b64(device, compiled):
    return UnetCase(device, compiled)


CASES = {"unet_b64": make_unet_b64}
