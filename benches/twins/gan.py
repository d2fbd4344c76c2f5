"""PyTorch twin of gm's DCGAN (crates/gm-gan, configs/mnist_dcgan.toml) for `cargo xtask speed`.

One `step()` is one `Gan::train_step` (crates/gm-gan/src/model.rs) on a batch of 64 mnist_grey
examples, in gm's order:

1. the data check every gm model runs at its boundary (`check_data`: a non-finite count and an
   out-of-range-or-fractional count, read back to the host: gm's step synchronises here once);
2. levels 0..255 to [-1, 1] (`x * 2/255 - 1`);
3. fakes from fresh noise under no_grad; the discriminator on real and fake together, with one
   power-iteration step of every spectral norm; the non-saturating loss
   `mean(softplus(-r)) + mean(softplus(f))`; the real/fake accuracies (kept on the device);
   zero grads, backward, Adam(5e-4, 0.5, 0.999);
4. (n_critic = 1: every step) fakes from fresh noise with grad, the discriminator without a
   power-iteration step, `mean(softplus(-f))`, zero grads, backward (which also fills the
   discriminator's gradients, as in gm), Adam(5e-4, 0.5, 0.999);
5. the generator's EMA (decay 0.999, start_step 500: the shadow copies the weights through
   update 500 and interpolates after it, exactly as gm's `Ema::update`);
6. the diversity signal: the generator on its 32 fixed noise vectors under no_grad and the mean
   pairwise distance of the outputs, in float64 (kept on the device).

Networks (`network.rs`, `layers.rs`), latent 64, channels 32, 1x28x28 images:
- generator: Linear(64, 64*7*7) -> [64, 7, 7] -> GroupNorm(8, 64) -> ReLU ->
  ConvT(64, 32, 4, 2, 1) -> GroupNorm(8, 32) -> ReLU -> ConvT(32, 1, 4, 2, 1) -> tanh;
- discriminator: SN-Conv(1, 32, 4, 2, 1) -> LeakyReLU(0.2) -> SN-Conv(32, 64, 4, 2, 1) ->
  LeakyReLU(0.2) -> flatten 3136 -> SN-Linear(3136, 1).
Spectral normalisation is gm's own (not torch's parametrization, which would run a power
iteration in the generator's pass too): v = n(Wᵀu), [u = n(Wv) when updating], σ = u·(Wv) with
u, v constants, n(x) = x / (‖x‖ + 1e-12).
"""

import torch

from common import check_data, mnist_grey_batch
import torch.nn as nn
import torch.nn.functional as F

LATENT = 64
CHANNELS = 32
IMAGE = (1, 28, 28)
LEVELS = 256
BATCH = 64
DIVERSITY_BATCH = 32
LR = 5e-4
BETAS = (0.5, 0.999)
EMA_DECAY = 0.999
EMA_START = 500
N_CRITIC = 1


def _normalize(x):
    return x / (x.square().sum().sqrt() + 1e-12)


class SNLayer(nn.Module):
    """A linear or convolutional layer whose weight is divided by gm's spectral-norm estimate."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer
        rows = layer.weight.shape[0]
        self.register_buffer("u", _normalize(torch.randn(rows)))

    def forward(self, x, update):
        weight = self.layer.weight
        w = weight.reshape(weight.shape[0], -1)
        with torch.no_grad():
            wd = w.detach()
            v = _normalize(wd.t().mv(self.u))
            if update:
                self.u.copy_(_normalize(wd.mv(v)))
            u = self.u.clone()
        sigma = u.dot(w.mv(v))
        w_sn = weight / sigma
        if isinstance(self.layer, nn.Conv2d):
            return F.conv2d(x, w_sn, self.layer.bias, self.layer.stride, self.layer.padding)
        return F.linear(x, w_sn, self.layer.bias)


class Generator(nn.Module):
    def __init__(self):
        super().__init__()
        c, h, w = IMAGE
        wide = 2 * CHANNELS
        self.start = (wide, h // 4, w // 4)
        self.project = nn.Linear(LATENT, wide * (h // 4) * (w // 4))
        self.norm0 = nn.GroupNorm(8, wide, eps=1e-5)
        self.up1 = nn.ConvTranspose2d(wide, CHANNELS, 4, 2, 1)
        self.norm1 = nn.GroupNorm(8, CHANNELS, eps=1e-5)
        self.up2 = nn.ConvTranspose2d(CHANNELS, c, 4, 2, 1)

    def forward(self, z):
        h = self.project(z).reshape(z.shape[0], *self.start)
        h = F.relu(self.norm0(h))
        h = F.relu(self.norm1(self.up1(h)))
        return torch.tanh(self.up2(h).reshape(z.shape[0], *IMAGE))


class Discriminator(nn.Module):
    def __init__(self):
        super().__init__()
        c, h, w = IMAGE
        self.conv1 = SNLayer(nn.Conv2d(c, CHANNELS, 4, 2, 1))
        self.conv2 = SNLayer(nn.Conv2d(CHANNELS, 2 * CHANNELS, 4, 2, 1))
        self.head = SNLayer(nn.Linear(2 * CHANNELS * (h // 4) * (w // 4), 1))

    def forward(self, x, update):
        h = F.leaky_relu(self.conv1(x, update), 0.2)
        h = F.leaky_relu(self.conv2(h, update), 0.2)
        return self.head(h.reshape(x.shape[0], -1), update).reshape(x.shape[0])


def mean_pairwise_distance(x):
    """gm's `metrics::mean_pairwise_distance`, in float64 on the device."""
    n = x.shape[0]
    rows = x.reshape(n, -1).double()
    sq = rows.pow(2).sum(1, keepdim=True)
    d = (sq + sq.t() - 2.0 * (rows @ rows.t())).clamp_min(0.0).sqrt()
    return (d.sum() - d.diagonal().sum()) / (n * (n - 1))


class DcganCase:
    def __init__(self, device, compiled):
        self.device = device
        self.G = Generator().to(device)
        self.D = Discriminator().to(device)
        self.fixed_noise = torch.randn(DIVERSITY_BATCH, LATENT, device=device)
        # gm's Adam: no weight decay, no clipping, a constant rate (lr_schedule: constant).
        self.g_opt = torch.optim.Adam(self.G.parameters(), lr=LR, betas=BETAS)
        self.d_opt = torch.optim.Adam(self.D.parameters(), lr=LR, betas=BETAS)
        self.g_params = [p for p in self.G.parameters() if p.requires_grad]
        self.ema = [p.detach().clone() for p in self.g_params]
        self.d_steps = 0
        self.g_steps = 0
        self.x, self.labels = mnist_grey_batch(device, BATCH)
        self.params = sum(p.numel() for p in self.G.parameters() if p.requires_grad) + sum(
            p.numel() for p in self.D.parameters() if p.requires_grad
        )
        self.d_forward = self._d_forward
        self.g_forward = self._g_forward
        self.diversity = self._diversity
        if compiled:
            try:
                self.d_forward = torch.compile(self._d_forward)
                self.g_forward = torch.compile(self._g_forward)
                self.diversity = torch.compile(self._diversity)
                # Compile now, so that a failure surfaces here with a clear message (this is
                # one ordinary training step more, which changes nothing that is timed).
                self.step()
            except Exception as error:
                raise RuntimeError(f"torch.compile failed for dcgan_b64: {error}") from error

    def _d_forward(self, real, z):
        with torch.no_grad():
            fake = self.G(z)
        b = real.shape[0]
        logits = self.D(torch.cat([real, fake], 0), True)
        real_logits, fake_logits = logits[:b], logits[b:]
        d_loss = F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
        real_accuracy = (real_logits > 0.0).float().mean()
        fake_accuracy = (fake_logits <= 0.0).float().mean()
        return d_loss, real_accuracy, fake_accuracy

    def _g_forward(self, z):
        return F.softplus(-self.D(self.G(z), False)).mean()

    def _diversity(self, noise):
        with torch.no_grad():
            return mean_pairwise_distance(self.G(noise))

    def step(self):
        x = self.x
        check_data(x, LEVELS)
        real = x * (2.0 / (LEVELS - 1)) - 1.0
        b = x.shape[0]
        z = torch.randn(b, LATENT, device=self.device)
        d_loss, real_acc, fake_acc = self.d_forward(real, z)
        self.d_opt.zero_grad()
        d_loss.backward()
        self.d_opt.step()
        self.d_steps += 1
        out = {"discriminator_loss": d_loss.detach(), "real_accuracy": real_acc,
               "fake_accuracy": fake_acc}
        if self.d_steps % N_CRITIC == 0:
            z = torch.randn(b, LATENT, device=self.device)
            g_loss = self.g_forward(z)
            self.g_opt.zero_grad()
            g_loss.backward()
            self.g_opt.step()
            self.g_steps += 1
            with torch.no_grad():
                follow = self.g_steps <= max(EMA_START, 1)
                for e, p in zip(self.ema, self.g_params):
                    if follow:
                        e.copy_(p)
                    else:
                        e.lerp_(p, 1.0 - EMA_DECAY)
            out["generator_loss"] = g_loss.detach()
        out["diversity"] = self.diversity(self.fixed_noise)
        self.last = out
        return out


def gm_parameters():
    """`GanConfig::parameters` for mnist_dcgan on [1, 28, 28] (unconditional)."""
    c, h, w = IMAGE
    ch = CHANNELS
    linear = lambda i, o: i * o + o  # noqa: E731
    generator = (linear(LATENT, 2 * ch * (h // 4) * (w // 4)) + 4 * ch + 2 * ch * ch * 16 + ch
                 + 2 * ch + ch * c * 16 + c)
    features = 2 * ch * (h // 4) * (w // 4)
    discriminator = c * ch * 16 + ch + 2 * ch * ch * 16 + 2 * ch + linear(features, 1)
    return generator + discriminator


def make_dcgan_b64(device, compiled):
    return DcganCase(device, compiled)


CASES = {"dcgan_b64": make_dcgan_b64}
