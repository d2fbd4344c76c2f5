"""PyTorch twins of gm's autoregressive training steps (crates/gm-autoregressive), for
`cargo xtask speed`.

`pixelcnn_b64`: the PixelCNN of crates/gm-autoregressive/configs/pixelcnn_mnist.toml (read here
from that file, with gm's defaults for missing keys) on `mnist_binary`, one
`Autoregressive::train_step` per `step()`:

    x      = the batch [b, 1, 28, 28] (gm's data contract for mnist_binary), checked like gm's
             `check_data` (finite binary values; one small reduction read back to the host, as
             gm does), then flattened to [b, 784]
    input  = 2x − 1 (levels_to_symmetric), as [b, 1, 28, 28]
    net    = 7×7 type-A masked conv 1→C; `blocks` × residual [ReLU, 1×1 C→C/2, ReLU,
             k×k type-B masked conv C/2→C/2, ReLU, 1×1 C/2→C, + skip]; ReLU, 1×1 C→H, ReLU,
             1×1 H→1 (masks multiply the weights every forward pass, as gm does)
    ln p   = x·l − softplus(l) per pixel (Bernoulli logits l)
    loss   = −mean_batch(Σ_pixels ln p) / 784          (nats per value)
    Adam   at lr = base · warmup_cosine(t), global gradient norm clipped to `grad_clip_norm`;
           an EMA of the weights after the step if the config keeps one (this one does not).

Initial values follow gm's scheme (uniform ±1/√fan-in over the visible taps, output layer at a
tenth with zero bias) but are drawn by PyTorch's generator.
"""

import math
import os
import tomllib

import torch

from common import check_data, first_compiled_step, lr_factor, make_optimizer, optimizer_step
from common import binary_batch
import torch.nn.functional as F
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, "..", ".."))
CONFIGS = os.path.join(REPO, "crates", "gm-autoregressive", "configs")

# gm's `Autoregressive::checked` runs `check_data` on every batch with one reduction read back
# to the host per step; the twin pays the same read.
CHECK_DATA = True

# mnist_binary (gm-core data/mod.rs `named_info`): examples [1, 28, 28], values {0, 1}.
EVENT_SHAPE = (1, 28, 28)


def _unsupported(what):
    raise NotImplementedError(f"the autoregressive twin does not implement {what}")


def load_config(file_name):
    with open(os.path.join(CONFIGS, file_name), "rb") as f:
        run = tomllib.load(f)
    if run.get("dataset") != "mnist_binary":
        _unsupported(f"dataset {run.get('dataset')!r} (only mnist_binary)")
    model = run["model"]
    network = model.get("network", {})
    if network.get("kind") != "pixelcnn":
        _unsupported(f"network {network.get('kind')!r} (only pixelcnn)")
    unknown = set(network) - {"kind", "channels", "blocks", "first_kernel", "kernel",
                              "head_channels"}
    if unknown:
        raise ValueError(f"network: unknown keys {sorted(unknown)}")
    output = model.get("output", {"kind": "auto"}).get("kind", "auto")
    if output not in ("auto", "bernoulli"):
        _unsupported(f"output {output!r} on binary data")
    if model.get("conditional", False):
        _unsupported("a conditional PixelCNN")
    if model.get("scheduled_sampling"):
        _unsupported("scheduled sampling")
    opt = model.get("optimizer", {})
    ema = model.get("ema")
    return {
        "channels": int(network.get("channels", 64)),
        "blocks": int(network.get("blocks", 5)),
        "first_kernel": int(network.get("first_kernel", 7)),
        "kernel": int(network.get("kernel", 3)),
        "head_channels": int(network.get("head_channels", 64)),
        # AutoregressiveConfig's default optimizer is training::default_optimizer (clip at 1);
        # a [model.optimizer] table fills its missing keys from AdamConfig::default (no clip).
        "optimizer": {
            "lr": float(opt.get("lr", 1e-3)),
            "beta1": float(opt.get("beta1", 0.9)),
            "beta2": float(opt.get("beta2", 0.999)),
            "eps": float(opt.get("eps", 1e-8)),
            "weight_decay": float(opt.get("weight_decay", 0.0)),
            "decoupled_weight_decay": bool(opt.get("decoupled_weight_decay", True)),
            "grad_clip_norm": (opt.get("grad_clip_norm") if "optimizer" in model else 1.0),
        },
        "lr_schedule": dict(model.get("lr_schedule", {"kind": "constant"})),
        "ema": None if ema is None else {"decay": float(ema.get("decay", 0.999)),
                                         "start_step": int(ema.get("start_step", 0))},
    }


def check_binary(x):
    """gm's data check for binary data (`common.check_data` with 2 levels)."""
    check_data(x, 2)


# ---------------------------------------------------------------------------------------------
# PixelCNN (gm-autoregressive pixelcnn.rs)
# ---------------------------------------------------------------------------------------------

def raster_mask(k, mask_type):
    """[1, 1, k, k]: rows above the centre, and left of it in its row; type B also the centre."""
    c = k // 2
    mask = torch.zeros(k, k)
    mask[:c, :] = 1.0
    mask[c, :c] = 1.0
    if mask_type == "B":
        mask[c, c] = 1.0
    return mask.reshape(1, 1, k, k)


class MaskedConv2d(nn.Module):
    def __init__(self, inputs, outputs, k, mask_type):
        super().__init__()
        mask = raster_mask(k, mask_type)
        self.register_buffer("mask", mask, persistent=False)
        bound = 1.0 / math.sqrt(inputs * max(float(mask.sum()), 1.0))
        self.weight = nn.Parameter(torch.empty(outputs, inputs, k, k).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(outputs).uniform_(-bound, bound))
        self.padding = k // 2

    def forward(self, x):
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


def pointwise(inputs, outputs, scale=1.0, zero_bias=False):
    conv = nn.Conv2d(inputs, outputs, 1)
    bound = scale / math.sqrt(inputs)
    with torch.no_grad():
        conv.weight.uniform_(-bound, bound)
        if zero_bias:
            conv.bias.zero_()
        else:
            conv.bias.uniform_(-bound, bound)
    return conv


class ResidualBlock(nn.Module):
    def __init__(self, c, k):
        super().__init__()
        half = c // 2
        self.reduce = pointwise(c, half)
        self.conv = MaskedConv2d(half, half, k, "B")
        self.expand = pointwise(half, c)

    def forward(self, h):
        r = self.reduce(F.relu(h))
        r = self.conv(F.relu(r))
        r = self.expand(F.relu(r))
        return h + r


class PixelCnn(nn.Module):
    def __init__(self, cfg, params_per_value=1):
        super().__init__()
        c = cfg["channels"]
        self.first = MaskedConv2d(1, c, cfg["first_kernel"], "A")
        self.blocks = nn.ModuleList(ResidualBlock(c, cfg["kernel"]) for _ in range(cfg["blocks"]))
        self.head_hidden = pointwise(c, cfg["head_channels"])
        # output_layer: weights at a tenth of pointwise's, bias zero.
        self.head_out = pointwise(cfg["head_channels"], params_per_value, scale=0.1,
                                  zero_bias=True)
        self.params_per_value = params_per_value

    def forward_image(self, x):
        h = self.first(x)
        for block in self.blocks:
            h = block(h)
        out = self.head_hidden(F.relu(h))
        return self.head_out(F.relu(out))

    def forward(self, x):
        """One training loss: x [b, 784] binary floats -> NLL in nats per value."""
        b, d = x.shape
        encoded = x * 2.0 - 1.0                                   # levels_to_symmetric(x, 2)
        _, height, width = EVENT_SHAPE
        params = self.forward_image(encoded.reshape(b, 1, height, width))
        params = params.reshape(b, self.params_per_value, d)
        logits = params.select(1, 0)
        log_probs = x * logits - F.softplus(logits)              # [b, D]
        nll = log_probs.sum(1).mean().neg()
        loss = nll / d
        return loss, nll.detach()


class PixelCnnCase:
    """One gm `Autoregressive::train_step` per `step()` (Training::step: Adam, clip, EMA)."""

    def __init__(self, cfg, x, device, compiled, name):
        self.cfg = cfg
        self.model = PixelCnn(cfg).to(device)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.params = sum(p.numel() for p in self.trainable)
        self.opt = make_optimizer(self.trainable, cfg["optimizer"])
        self.clip = cfg["optimizer"]["grad_clip_norm"]
        self.base_lr = cfg["optimizer"]["lr"]
        self.ema = cfg["ema"]
        self.shadow = [p.detach().clone() for p in self.trainable] if self.ema else None
        self.steps = 0
        self.x = x
        self.nll = None
        if compiled:
            self.loss_fn = torch.compile(self.model)
            first_compiled_step(self, name, device)
        else:
            self.loss_fn = self.model

    def step(self):
        if CHECK_DATA:
            check_binary(self.x)
        x = self.x.reshape(self.x.shape[0], -1)
        loss, self.nll = self.loss_fn(x)
        lr = self.base_lr * lr_factor(self.cfg["lr_schedule"], self.steps)
        optimizer_step(self.opt, loss, self.trainable, lr, self.clip)
        self.steps += 1
        if self.ema is not None:
            # gm-core ema.rs `Ema::update`: follow the weights until start_step, then lerp.
            with torch.no_grad():
                if self.steps <= max(self.ema["start_step"], 1):
                    torch._foreach_copy_(self.shadow, self.trainable)
                else:
                    torch._foreach_lerp_(self.shadow, self.trainable, 1.0 - self.ema["decay"])
        return loss


def binary_images(n, device):
    """The same draw as the VAE bench's, shaped like mnist_binary's examples [n, 1, 28, 28]."""
    return binary_batch(n, device, EVENT_SHAPE)


def _maker(file_name, batch, name):
    def make(device, compiled):
        cfg = load_config(file_name)
        return PixelCnnCase(cfg, binary_images(batch, device), device, compiled, name)
    return make


CASES = {
    "pixelcnn_b64": _maker("pixelcnn_mnist.toml", 64, "pixelcnn_b64"),
}
