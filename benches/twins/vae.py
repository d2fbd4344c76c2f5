"""PyTorch twins of gm's VAE training steps (crates/gm-vae), for `cargo xtask speed`.

Each case builds the VAE that gm builds from a shipped run file's `[model]` table (read here
from the same TOML file, with gm's defaults for missing keys) and runs one `Vae::train_step`
per `step()`:

    x      = the batch as [batch] ++ data_shape, checked like gm's `VaeNet::data_batch`
             (finite binary values; one small reduction read back to the host, as gm does)
    q      = N(loc, exp(log_scale)) from the encoder's 2·latent outputs
    z      = loc + ε·scale, ε ~ N(0, I), `samples` draws          (reparameterised)
    ln p   = Σ_pixels −BCEWithLogits(decoder(z), x), mean over the draws
    KL     = Σ_latent ½ (r + m − 1 − ln r),  r = (σ/1)², m = ((μ − 0)/1)²  (closed form vs N(0, I))
    loss   = −mean_batch(ln p − β_t · KL),  β_t = β · min((t + 1) / kl_warmup_steps, 1)
    Adam   (AdamW when weight_decay > 0 and decoupled) at lr = base · warmup_cosine(t),
           gradients clipped to the global norm `grad_clip_norm` when set.

gm also reports mean ELBO, KL and reconstruction (detached, no host read); the twin computes
the same three means. Initial values differ from gm's (PyTorch's default initialisation, with
the output layers shrunk by 0.1 as gm does); shapes, operations and the objective do not.
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
CONFIGS = os.path.join(REPO, "crates", "gm-vae", "configs")

# gm's `VaeNet::data_batch` checks every batch (finite values in the likelihood's support) with
# one reduction read back to the host per step; the twin pays the same read.
CHECK_DATA = True

# gm shrinks the freshly initialised output layers by this factor (network.rs OUTPUT_INIT_SCALE).
OUTPUT_INIT_SCALE = 0.1


# ---------------------------------------------------------------------------------------------
# Config: gm's VaeConfig with its serde defaults (config.rs, network.rs, gm-core nn.rs/optim.rs).
# ---------------------------------------------------------------------------------------------

def _unsupported(what):
    raise NotImplementedError(f"the VAE twin does not implement {what}")


def _network(table, section):
    kind = table.get("kind")
    if kind == "mlp":
        unknown = set(table) - {"kind", "hidden", "activation"}
        if unknown:
            raise ValueError(f"{section}: unknown keys {sorted(unknown)}")
        return {"kind": "mlp", "hidden": list(table.get("hidden", [256, 256])),
                "activation": table.get("activation", "relu")}
    if kind == "conv":
        unknown = set(table) - {"kind", "channels", "hidden", "activation"}
        if unknown:
            raise ValueError(f"{section}: unknown keys {sorted(unknown)}")
        return {"kind": "conv", "channels": list(table.get("channels", [32, 64])),
                "hidden": list(table.get("hidden", [256])),
                "activation": table.get("activation", "relu")}
    raise ValueError(f"{section}.kind must be mlp or conv, got {kind!r}")


def load_config(file_name):
    with open(os.path.join(CONFIGS, file_name), "rb") as f:
        model = tomllib.load(f)["model"]
    default_net = {"kind": "mlp", "hidden": [512, 256], "activation": "relu"}
    cfg = {
        "data_shape": list(model.get("data_shape", [784])),
        "latent_dim": int(model.get("latent_dim", 32)),
        "encoder": _network(model["encoder"], "encoder") if "encoder" in model else default_net,
        "decoder": (_network(model["decoder"], "decoder") if "decoder" in model
                    else dict(default_net, hidden=[256, 512])),
    }
    likelihood = model.get("likelihood", {"kind": "bernoulli"})
    if likelihood.get("kind") != "bernoulli":
        _unsupported(f"likelihood {likelihood.get('kind')!r} (only bernoulli)")
    context = model.get("context", {"kind": "none"})
    if context.get("kind", "none") != "none":
        _unsupported("a conditional VAE")
    objective = model.get("objective", {"kind": "elbo"})
    if objective.get("kind") != "elbo":
        _unsupported(f"objective {objective.get('kind')!r} (only elbo)")
    cfg["beta"] = float(objective.get("beta", 1.0))
    cfg["kl_warmup_steps"] = int(objective.get("kl_warmup_steps", 0))
    cfg["samples"] = int(objective.get("samples", 1))
    opt = model.get("optimizer", {})
    cfg["optimizer"] = {
        "lr": float(opt.get("lr", 1e-3)),
        "beta1": float(opt.get("beta1", 0.9)),
        "beta2": float(opt.get("beta2", 0.999)),
        "eps": float(opt.get("eps", 1e-8)),
        "weight_decay": float(opt.get("weight_decay", 0.0)),
        "decoupled_weight_decay": bool(opt.get("decoupled_weight_decay", True)),
        "grad_clip_norm": opt.get("grad_clip_norm"),
    }
    cfg["lr_schedule"] = dict(model.get("lr_schedule", {"kind": "constant"}))
    return cfg


def beta_at(cfg, step):
    """gm-vae config.rs `ObjectiveConfig::beta_at`: linear KL warm-up."""
    if cfg["kl_warmup_steps"] == 0:
        return cfg["beta"]
    return cfg["beta"] * min((step + 1) / cfg["kl_warmup_steps"], 1.0)


# gm-core nn.rs `Activation::apply` (leaky ReLU at libtorch's default slope 0.01).
ACTIVATIONS = {
    "relu": F.relu,
    "leaky_relu": F.leaky_relu,
    "elu": F.elu,
    "gelu": F.gelu,
    "silu": F.silu,
    "tanh": torch.tanh,
}


def check_binary(x):
    """gm's data check for binary data (`common.check_data` with 2 levels)."""
    check_data(x, 2)


# ---------------------------------------------------------------------------------------------
# Networks (gm-vae network.rs)
# ---------------------------------------------------------------------------------------------

class Mlp(nn.Module):
    """gm-core `Mlp`: linear layers with the activation between them (none after the last)."""

    def __init__(self, inputs, hidden, outputs, activation, shrink_last=False):
        super().__init__()
        widths = [inputs] + list(hidden) + [outputs]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.act = ACTIVATIONS[activation]
        if shrink_last:
            with torch.no_grad():
                self.layers[-1].weight.mul_(OUTPUT_INIT_SCALE)
                self.layers[-1].bias.mul_(OUTPUT_INIT_SCALE)

    def forward(self, h):
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i < last:
                h = self.act(h)
        return h


def halving_sizes(h, w, layers):
    sizes = [(h, w)]
    for _ in range(layers):
        ph, pw = sizes[-1]
        if ph < 2 or pw < 2:
            raise ValueError("too many stride-2 convolutions for the image")
        sizes.append((ph // 2, pw // 2))
    return sizes


def _uniform_(t, fan_in, scale):
    bound = scale / math.sqrt(max(fan_in, 1))
    with torch.no_grad():
        t.uniform_(-bound, bound)


class Encoder(nn.Module):
    """`VectorEncoder`: data [batch] ++ data_shape -> [batch, 2 * latent]."""

    def __init__(self, net, data_shape, outputs):
        super().__init__()
        self.kind = net["kind"]
        self.act = ACTIVATIONS[net["activation"]]
        if self.kind == "mlp":
            self.mlp = Mlp(math.prod(data_shape), net["hidden"], outputs, net["activation"],
                           shrink_last=True)
        else:
            ch, h, w = data_shape
            sizes = halving_sizes(h, w, len(net["channels"]))
            convs, width = [], ch
            for c in net["channels"]:
                # stride-2, kernel 4, padding 1: halves height and width
                conv = nn.Conv2d(width, c, 4, stride=2, padding=1)
                _uniform_(conv.weight, width * 16, 1.0)
                _uniform_(conv.bias, width * 16, 1.0)
                convs.append(conv)
                width = c
            self.trunk = nn.ModuleList(convs)
            fh, fw = sizes[-1]
            self.head = Mlp(width * fh * fw, net["hidden"], outputs, net["activation"],
                            shrink_last=True)

    def forward(self, x):
        if self.kind == "mlp":
            return self.mlp(x.flatten(1))
        h = x
        for conv in self.trunk:
            h = self.act(conv(h))
        return self.head(h.flatten(1))


class Decoder(nn.Module):
    """`VectorDecoder` + `Decoder::params`: latents [N, L] -> logits [N] ++ data_shape ++ [1]."""

    def __init__(self, net, inputs, data_shape, params=1):
        super().__init__()
        self.kind = net["kind"]
        self.act = ACTIVATIONS[net["activation"]]
        self.data_shape = list(data_shape)
        self.params = params
        elements = math.prod(data_shape)
        if self.kind == "mlp":
            self.mlp = Mlp(inputs, net["hidden"], elements * params, net["activation"],
                           shrink_last=True)
        else:
            ch, h, w = data_shape
            channels = net["channels"]
            sizes = halving_sizes(h, w, len(channels))
            fh, fw = sizes[-1]
            top = channels[-1]
            self.feature_shape = (top, fh, fw)
            # Dense stem: every layer (the last, to top·fh·fw, included) ends in the activation.
            widths = [inputs] + list(net["hidden"]) + [top * fh * fw]
            self.stem = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
            deconvs = []
            n = len(channels)
            for i in reversed(range(n)):
                cin = channels[i]
                cout = ch * params if i == 0 else channels[i - 1]
                (th, tw), (sh, sw) = sizes[i], sizes[i + 1]
                deconv = nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1,
                                            output_padding=(th - 2 * sh, tw - 2 * sw))
                scale = OUTPUT_INIT_SCALE if i == 0 else 1.0
                _uniform_(deconv.weight, cout * 16, scale)
                _uniform_(deconv.bias, cout * 16, scale)
                deconvs.append(deconv)
            self.trunk = nn.ModuleList(deconvs)

    def forward(self, v):
        batch = v.shape[0]
        if self.kind == "mlp":
            raw = self.mlp(v)
        else:
            h = v
            for layer in self.stem:
                h = self.act(layer(h))
            h = h.reshape(batch, *self.feature_shape)
            last = len(self.trunk) - 1
            for i, deconv in enumerate(self.trunk):
                h = deconv(h)
                if i < last:
                    h = self.act(h)
            raw = h
        # to_params_last: parameter p of element e is output p * E + e.
        return raw.reshape(batch, self.params, *self.data_shape).movedim(1, -1)


class VaeTwin(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.data_shape = list(cfg["data_shape"])
        self.latent = cfg["latent_dim"]
        self.samples = cfg["samples"]
        self.encoder = Encoder(cfg["encoder"], self.data_shape, 2 * self.latent)
        self.decoder = Decoder(cfg["decoder"], self.latent, self.data_shape)
        # The prior N(0, I) (gm builds it as a DiagGaussian each call).
        self.register_buffer("prior_loc", torch.zeros(self.latent), persistent=False)
        self.register_buffer("prior_scale", torch.ones(self.latent), persistent=False)

    def forward(self, x, beta):
        """x: [batch] ++ data_shape (float, binary). Returns the loss and gm's reported means."""
        L, S = self.latent, self.samples
        out = self.encoder(x)
        loc = out.narrow(1, 0, L)
        scale = out.narrow(1, L, L).exp()
        eps = torch.randn((S,) + tuple(loc.shape), dtype=loc.dtype, device=loc.device)
        z = loc + eps * scale                                          # [S, B, L]
        params = self.decoder(z.reshape(-1, L))                        # [S·B] ++ data ++ [1]
        logits = params.reshape(S, x.shape[0], *self.data_shape, 1).select(-1, 0)
        value = x.expand((S,) + tuple(x.shape))
        bce = F.binary_cross_entropy_with_logits(logits.expand_as(value), value,
                                                 reduction="none")
        event_dims = tuple(range(-len(self.data_shape), 0))
        log_lik = bce.neg().sum(dim=event_dims)                        # [S, B]
        expected_log_likelihood = log_lik.mean(0)                      # [B]
        var_ratio = (scale / self.prior_scale).square()
        mean_term = ((loc - self.prior_loc) / self.prior_scale).square()
        kl = ((var_ratio + mean_term - 1.0 - var_ratio.log()) * 0.5).sum(-1)   # [B]
        elbo = expected_log_likelihood - kl
        objective = expected_log_likelihood - kl * beta
        loss = objective.mean().neg()
        report = (elbo.mean().detach(), kl.mean().detach(),
                  expected_log_likelihood.mean().neg().detach())
        return loss, report


class VaeCase:
    """One gm `Vae::train_step` per `step()`."""

    def __init__(self, cfg, x, device, compiled, name):
        self.cfg = cfg
        self.device = device
        self.model = VaeTwin(cfg).to(device)
        self.params = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = make_optimizer(self.trainable, cfg["optimizer"])
        self.clip = cfg["optimizer"]["grad_clip_norm"]
        self.base_lr = cfg["optimizer"]["lr"]
        self.steps = 0
        self.x = x
        self.compiled = compiled
        self.report = None
        if compiled:
            # β changes every step of the warm-up: a 0-dim tensor, so the graph is compiled once.
            self.beta = torch.zeros((), device=device)
            self.loss_fn = torch.compile(self.model)
            first_compiled_step(self, name, device)
        else:
            self.loss_fn = self.model

    def step(self):
        # VaeNet::data_batch: [batch] ++ data_shape (a flat [batch, D] is reshaped), checked.
        x = self.x.reshape(self.x.shape[0], *self.cfg["data_shape"])
        if CHECK_DATA:
            check_binary(x)
        beta = beta_at(self.cfg, self.steps)
        if self.compiled:
            self.beta.fill_(beta)
            loss, self.report = self.loss_fn(x, self.beta)
        else:
            loss, self.report = self.loss_fn(x, beta)
        lr = self.base_lr * lr_factor(self.cfg["lr_schedule"], self.steps)
        optimizer_step(self.opt, loss, self.trainable, lr, self.clip)
        self.steps += 1
        return loss


def _maker(file_name, batch, name):
    def make(device, compiled):
        cfg = load_config(file_name)
        return VaeCase(cfg, binary_batch(batch, device), device, compiled, name)
    return make


CASES = {
    "vae_mlp_b128": _maker("mnist_mlp.toml", 128, "vae_mlp_b128"),
    "vae_conv_b128": _maker("mnist_conv.toml", 128, "vae_conv_b128"),
}
