"""The pix2pix networks and training step of `qdjax.ml` written in PyTorch (peer for timings).

Same architecture, losses and optimiser as `qdjax.ml.models` / `qdjax.ml.train` for a
`Pix2PixConfig` with kernel 4, instance (or no) normalisation and no dropout:

* generator: U-Net, stride-2 4x4 convolutions with padding 1 (= 'SAME' on even sizes),
  LeakyReLU(0.3) in the encoder, stride-2 4x4 transposed convolutions with padding 1 in the
  decoder, ReLU, skip connections, tanh; no normalisation on the first encoder layer nor on
  1 x 1 maps; layers followed by a normalisation have no bias;
* discriminator: PatchGAN, 4x4 convolutions, padding 1 (stride 2: 'SAME'; stride 1: zero pad
  1 and 'VALID', as Keras' ZeroPadding2D + Conv2D), LeakyReLU(0.3), normalisation on all but
  the first and the last layer;
* normalisation: ``nn.InstanceNorm2d(eps=1e-5, affine=True)`` (biased variance, as
  ``nnx.InstanceNorm(use_fast_variance=False)``);
* losses: L_G = BCE(D(a, G(a)), 1) + lambda |b - G(a)|_1, L_D = BCE(D(a, b), 1) + BCE(D(a, G(a)), 0);
* Adam (lr, beta1, beta2 from the config, eps 1e-8) for both networks, from gradients taken
  at the same parameters (simultaneous update, as `qdjax.ml.train.make_train_step`).

Tensors are NCHW (PyTorch's layout). `load_jax_params` copies the parameters of a
`qdjax.ml.train.TrainState` into the modules (HWIO -> OIHW; for the transposed
convolutions HWIO -> (C_in, C_out, kH, kW) with the spatial axes flipped, since qdjax's
``nnx.ConvTranspose`` is ``lax.conv_transpose`` without kernel flip while PyTorch's is the
adjoint of a convolution).

Only needed by ``benchmarks/bench_train.py`` and its test; torch is not a dependency of qdjax.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from qdjax.ml.models import DiscriminatorConfig, GeneratorConfig, Pix2PixConfig


def _check_supported(config: Pix2PixConfig) -> None:
    g, d = config.generator, config.discriminator
    if g.kernel != 4 or any(k != 4 for k in d.kernels):
        raise ValueError("the PyTorch peer supports kernel 4 only")
    if g.norm not in ("instance", "none") or d.norm not in ("instance", "none"):
        raise ValueError("the PyTorch peer supports instance norm or no norm only")
    if g.dropout != 0:
        raise ValueError("the PyTorch peer supports dropout 0 only")
    if getattr(g, "density_norm", None) is not None:
        raise ValueError("the PyTorch peer supports the tanh output head only")
    if any(s not in (1, 2) for s in d.strides):
        raise ValueError("the PyTorch peer supports discriminator strides 1 and 2 only")


def _norm(kind: str, features: int) -> nn.Module:
    if kind == "instance":
        return nn.InstanceNorm2d(features, eps=1e-5, affine=True)
    return nn.Identity()


class UNetGenerator(nn.Module):
    """pix2pix U-Net: (B, C_in, S, S) -> (B, C_out, S, S) in (-1, 1)."""

    def __init__(self, config: GeneratorConfig):
        super().__init__()
        self.negative_slope = config.negative_slope
        down, up = [], []
        size, c_in = config.image_size, config.in_channels
        for i, f in enumerate(config.filters):
            size //= 2
            down.append((c_in, f, config.norm if (i > 0 and size > 1) else "none"))
            c_in = f
        skips = list(reversed(config.filters[:-1]))
        for i, f in enumerate(config.up_filters[:-1]):
            size *= 2
            up.append((c_in, f, config.norm if size > 1 else "none"))
            c_in = f + skips[i]
        self.down_convs = nn.ModuleList(
            [nn.Conv2d(a, b, 4, stride=2, padding=1, bias=norm == "none") for a, b, norm in down]
        )
        self.down_norms = nn.ModuleList([_norm(norm, b) for _, b, norm in down])
        self.up_convs = nn.ModuleList(
            [nn.ConvTranspose2d(a, b, 4, stride=2, padding=1, bias=norm == "none") for a, b, norm in up]
        )
        self.up_norms = nn.ModuleList([_norm(norm, b) for _, b, norm in up])
        self.out_conv = nn.ConvTranspose2d(c_in, config.out_channels, 4, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = []
        for conv, norm in zip(self.down_convs, self.down_norms):
            x = F.leaky_relu(norm(conv(x)), self.negative_slope)
            feats.append(x)
        h = feats[-1]
        skips = feats[-2::-1]
        for i, (conv, norm) in enumerate(zip(self.up_convs, self.up_norms)):
            h = torch.cat([F.relu(norm(conv(h))), skips[i]], dim=1)
        return torch.tanh(self.out_conv(h))


class PatchDiscriminator(nn.Module):
    """PatchGAN: (B, C_in + C_out, S, S) pair -> (B, 1, S', S') logits."""

    def __init__(self, config: DiscriminatorConfig):
        super().__init__()
        self.negative_slope = config.negative_slope
        n = len(config.filters)
        c_ins = (config.in_channels,) + config.filters[:-1]
        norms = [config.norm if 0 < i < n - 1 else "none" for i in range(n)]
        self.convs = nn.ModuleList(
            [
                nn.Conv2d(a, f, 4, stride=s, padding=1, bias=norm == "none")
                for a, f, s, norm in zip(c_ins, config.filters, config.strides, norms)
            ]
        )
        self.norms = nn.ModuleList([_norm(norm, f) for f, norm in zip(config.filters, norms)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.convs) - 1
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            x = norm(conv(x))
            if i < last:
                x = F.leaky_relu(x, self.negative_slope)
        return x


def build(config: Pix2PixConfig) -> tuple[UNetGenerator, PatchDiscriminator]:
    """Generator and discriminator for `config` (PyTorch's default initialisation)."""
    _check_supported(config)
    return UNetGenerator(config.generator), PatchDiscriminator(config.discriminator)


# ----------------------------------------------------------------------------- weights from JAX


def _conv_weight(kernel) -> torch.Tensor:
    """HWIO (JAX) -> OIHW (nn.Conv2d)."""
    return torch.from_numpy(np.ascontiguousarray(np.asarray(kernel, np.float32).transpose(3, 2, 0, 1)))


def _tconv_weight(kernel) -> torch.Tensor:
    """HWIO of ``lax.conv_transpose`` (no flip) -> (I, O, kH, kW) of nn.ConvTranspose2d, flipped."""
    k = np.asarray(kernel, np.float32)[::-1, ::-1].transpose(2, 3, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(k))


def _vec(v) -> torch.Tensor:
    return torch.from_numpy(np.array(v, np.float32))


@torch.no_grad()
def _load_layer(conv: nn.Module, norm: nn.Module, p_conv: dict, p_norm: dict | None, transposed: bool) -> None:
    conv.weight.copy_(_tconv_weight(p_conv["kernel"]) if transposed else _conv_weight(p_conv["kernel"]))
    if conv.bias is not None:
        conv.bias.copy_(_vec(p_conv["bias"]))
    elif "bias" in p_conv:
        raise ValueError("internal: a JAX layer has a bias the PyTorch layer lacks")
    if isinstance(norm, nn.InstanceNorm2d):
        norm.weight.copy_(_vec(p_norm["scale"]))
        norm.bias.copy_(_vec(p_norm["bias"]))


def load_jax_params(gen: UNetGenerator, disc: PatchDiscriminator, g_params: dict, d_params: dict) -> None:
    """Copies qdjax parameter dicts (`TrainState.g_params`, `.d_params`) into the modules."""
    for i, (conv, norm) in enumerate(zip(gen.down_convs, gen.down_norms)):
        _load_layer(conv, norm, g_params["down_convs"][i], g_params.get("down_norms", {}).get(i), False)
    for i, (conv, norm) in enumerate(zip(gen.up_convs, gen.up_norms)):
        _load_layer(conv, norm, g_params["up_convs"][i], g_params.get("up_norms", {}).get(i), True)
    _load_layer(gen.out_conv, nn.Identity(), g_params["out_conv"], None, True)
    for i, (conv, norm) in enumerate(zip(disc.convs, disc.norms)):
        _load_layer(conv, norm, d_params["convs"][i], d_params.get("norms", {}).get(i), False)


# ----------------------------------------------------------------------------- training step


class Pix2PixTrainer:
    """One pix2pix training step in PyTorch: ``metrics = trainer.step(x, y)``.

    x, y: (B, C, S, S) float32 tensors in [-1, 1]. Returns the losses of
    `qdjax.ml.train.METRIC_NAMES` as 0-d tensors (computed before the update).
    """

    def __init__(self, config: Pix2PixConfig, gen: UNetGenerator, disc: PatchDiscriminator, compile: bool = False):
        self.lambda_l1 = float(config.lambda_l1)
        self.gen, self.disc = gen, disc
        betas = (config.beta1, config.beta2)
        self.g_params = list(gen.parameters())
        self.d_params = list(disc.parameters())
        self.opt_g = torch.optim.Adam(self.g_params, lr=config.learning_rate, betas=betas, eps=1e-8)
        self.opt_d = torch.optim.Adam(self.d_params, lr=config.learning_rate, betas=betas, eps=1e-8)
        if compile:
            # the two backward passes share one graph (retain_graph), which compiled graphs
            # only allow without buffer donation
            torch._functorch.config.donated_buffer = False
            self._losses = torch.compile(self._forward_losses)
        else:
            self._losses = self._forward_losses

    def _forward_losses(self, x: torch.Tensor, y: torch.Tensor):
        fake = self.gen(x)
        real_logits = self.disc(torch.cat([x, y], dim=1))
        fake_logits = self.disc(torch.cat([x, fake], dim=1))
        g_gan = F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))
        g_l1 = torch.mean(torch.abs(y - fake))
        g_loss = g_gan + self.lambda_l1 * g_l1
        d_loss = F.binary_cross_entropy_with_logits(
            real_logits, torch.ones_like(real_logits)
        ) + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
        return g_loss, g_gan, g_l1, d_loss, real_logits, fake_logits

    def step(self, x: torch.Tensor, y: torch.Tensor) -> dict:
        self.gen.train()
        self.disc.train()
        g_loss, g_gan, g_l1, d_loss, real_logits, fake_logits = self._losses(x, y)
        self.opt_g.zero_grad(set_to_none=True)
        self.opt_d.zero_grad(set_to_none=True)
        # dL_G/dtheta_G and dL_D/dtheta_D at the same parameters; autograd skips the rest
        g_loss.backward(inputs=self.g_params, retain_graph=True)
        d_loss.backward(inputs=self.d_params)
        self.opt_g.step()
        self.opt_d.step()
        with torch.no_grad():
            return {
                "g_loss": g_loss.detach(),
                "g_gan": g_gan.detach(),
                "g_l1": g_l1.detach(),
                "d_loss": d_loss.detach(),
                "d_real": torch.sigmoid(real_logits).mean(),
                "d_fake": torch.sigmoid(fake_logits).mean(),
            }
