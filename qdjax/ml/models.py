"""pix2pix networks: a U-Net generator and a PatchGAN discriminator (Flax NNX).

The architecture follows Isola et al., "Image-to-Image Translation with Conditional
Adversarial Networks" (CVPR 2017, arXiv:1611.07004) as used by Pantis-Simut et al.,
Mach. Learn.: Sci. Technol. 4, 025023 (2023), section III.2 and Table I:

* generator: encoder-decoder (U-Net) with `len(filters)` stride-2 convolutions down and as
  many stride-2 transposed convolutions up, kernel 4, 'SAME' padding, LeakyReLU (slope 0.3)
  in the encoder, ReLU in the decoder, tanh on the output, skip connections between mirrored
  layers, optional dropout 0.5, weights initialised from N(0, 0.02);
* discriminator: a fully convolutional classifier of the (input, target) pair whose output
  is a map of real/fake logits, one per patch of `receptive_field(config)` pixels.

The layers are Flax's own: ``nnx.Conv`` and ``nnx.ConvTranspose`` (``lax.conv_general_dilated``
and ``lax.conv_transpose``, which XLA lowers to cuDNN on a GPU), ``nnx.InstanceNorm`` and
``nnx.BatchNorm``; the networks are differentiable in reverse and forward mode.

Images are NHWC float32 arrays in [-1, 1] (see `qdjax.ml.scaling`). Importing qdjax turns
on 64-bit mode, so every layer here is built with ``param_dtype=dtype=float32`` and every
input is cast to float32: parameters, activations and outputs are float32.

Configurations are frozen, hashable dataclasses that round-trip through plain dicts
(``to_dict`` / ``from_dict``), so they can be stored in JSON checkpoints and passed to
``jax.jit`` as static arguments.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from qdjax.ml.symmetry import d4_average

__all__ = [
    "AUTHORS_GENERATOR_FILTERS",
    "PIX2PIX_GENERATOR_FILTERS",
    "AUTHORS_DISCRIMINATOR_WIDTHS",
    "PIX2PIX_DISCRIMINATOR_WIDTHS",
    "DISCRIMINATOR_PRESETS",
    "NORMS",
    "GeneratorConfig",
    "DiscriminatorConfig",
    "Pix2PixConfig",
    "UNetGenerator",
    "PatchDiscriminator",
    "receptive_field",
    "discriminator_output_size",
]

#: Generator encoder filters of the authors' public training code (decoder: 128, 128, 64, 32, 16).
AUTHORS_GENERATOR_FILTERS = (16, 32, 64, 128, 128, 128)
#: Generator encoder filters of the original pix2pix widths, cut to 6 layers for 64 x 64 images.
PIX2PIX_GENERATOR_FILTERS = (64, 128, 256, 512, 512, 512)
#: Discriminator widths of the authors' public code (then a 1-channel output layer).
AUTHORS_DISCRIMINATOR_WIDTHS = (16, 32, 64, 128)
#: Discriminator widths of the original pix2pix (then a 1-channel output layer).
PIX2PIX_DISCRIMINATOR_WIDTHS = (64, 128, 256, 512)

#: Normalisation layers a network can use.
NORMS = ("instance", "batch", "none")

_F32 = jnp.float32
_NORM_EPS = 1e-5


# ----------------------------------------------------------------------------- configs


def _as_int_tuple(name: str, value: Any) -> tuple[int, ...]:
    try:
        out = tuple(value)
    except TypeError:
        raise ValueError(f"{name} must be a sequence of positive integers, got {value!r}") from None
    if not out or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in out):
        raise ValueError(f"{name} must be a non-empty sequence of positive integers, got {value!r}")
    return out


def _check_pos_int(owner: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{owner}.{name} must be a positive integer, got {value!r}")


@dataclasses.dataclass(frozen=True)
class GeneratorConfig:
    """Shape-determining settings of `UNetGenerator`.

    Attributes:
      image_size: side of the square input and output images, pixels (paper: 64). Must be
        divisible by ``2 ** len(filters)`` so that every skip connection matches.
      in_channels: channels of the input image (1: a potential or a density).
      out_channels: channels of the output image.
      filters: output channels of the stride-2 encoder convolutions. The decoder mirrors
        them: ``reversed(filters[:-1])`` and then ``out_channels``. Default: the authors'
        public code (16, 32, 64, 128, 128, 128); `PIX2PIX_GENERATOR_FILTERS` gives the
        original pix2pix widths (64, 128, 256, 512, 512, 512).
      kernel: convolution kernel size (Table I: 4).
      norm: "instance" (default, Table I), "batch" or "none". Never applied to the first
        encoder layer (as pix2pix) nor to feature maps of 1 x 1 pixels (instance norm, and
        batch norm at batch size 1, would set them to its bias).
      dropout: dropout rate of the first three decoder layers (pix2pix: 0.5); 0 (default)
        makes the generator deterministic.
      negative_slope: LeakyReLU slope of the encoder (Table I and Keras' default: 0.3).
      density_norm: None (default) ends the decoder in tanh, as pix2pix. A positive number c
        replaces tanh by a normalised density head, y = c * softmax_over_pixels(z) - 1 per
        channel: under a density scaler with lo = 0 and upper bound hi the physical image
        (y + 1) hi / 2 is non-negative and sums to c hi / 2, so c = 2 N / (h^2 hi) makes every
        predicted density integrate to exactly N electrons.
      equivariant: False (default): the U-Net. True: the U-Net averaged over the symmetry
        group of the square, G(x) = mean_g g^-1 U(g x) (`qdjax.ml.symmetry.d4_average`), a
        generator that is D4-equivariant by construction (G(g x) = g G(x)) at 8 U-Net passes
        per image. The parameters are the U-Net's (same shapes), so either form loads the
        other's weights.
    """

    image_size: int = 64
    in_channels: int = 1
    out_channels: int = 1
    filters: tuple[int, ...] = AUTHORS_GENERATOR_FILTERS
    kernel: int = 4
    norm: str = "instance"
    dropout: float = 0.0
    negative_slope: float = 0.3
    density_norm: float | None = None
    equivariant: bool = False

    def __post_init__(self):
        object.__setattr__(self, "filters", _as_int_tuple("GeneratorConfig.filters", self.filters))
        if not isinstance(self.equivariant, bool):
            raise ValueError(f"GeneratorConfig.equivariant must be a bool, got {self.equivariant!r}")
        if self.density_norm is not None:
            if not (isinstance(self.density_norm, (int, float)) and math.isfinite(self.density_norm) and self.density_norm > 0):
                raise ValueError(f"GeneratorConfig.density_norm must be None or a positive number, got {self.density_norm!r}")
            object.__setattr__(self, "density_norm", float(self.density_norm))
        for name in ("image_size", "in_channels", "out_channels", "kernel"):
            _check_pos_int("GeneratorConfig", name, getattr(self, name))
        if self.image_size % 2 ** len(self.filters):
            raise ValueError(
                f"GeneratorConfig.image_size={self.image_size} must be divisible by "
                f"2**len(filters) = {2 ** len(self.filters)}"
            )
        if self.norm not in NORMS:
            raise ValueError(f"GeneratorConfig.norm must be one of {NORMS}, got {self.norm!r}")
        if not (isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0):
            raise ValueError(f"GeneratorConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if not (isinstance(self.negative_slope, (int, float)) and math.isfinite(self.negative_slope)):
            raise ValueError(f"GeneratorConfig.negative_slope must be a finite number, got {self.negative_slope!r}")

    @property
    def up_filters(self) -> tuple[int, ...]:
        """Output channels of the decoder layers, the last one being `out_channels`."""
        return tuple(reversed(self.filters[:-1])) + (self.out_channels,)

    def to_dict(self) -> dict:
        """Plain-dict (JSON-ready) form; `from_dict` inverts it."""
        d = dataclasses.asdict(self)
        d["filters"] = list(self.filters)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "GeneratorConfig":
        d = dict(d)
        if "filters" in d:
            d["filters"] = tuple(d["filters"])
        return cls(**d)


#: Discriminator layer geometries: preset name -> (kernels, strides). Each name carries the
#: receptive field ("patch size" N_pt of the paper) its geometry gives; see `receptive_field`.
#:   image70  5 layers, strides (2, 2, 2, 1, 1): the paper's reference configuration (6 x 6 output).
#:   patch34  4 layers: one stride-2 layer fewer.
#:   patch16  3 layers.
#:   patch7   2 stride-1 layers of kernel 4.
#:   patch4   one stride-1 kernel-4 layer followed by a 1 x 1 output layer. The paper lists
#:            only the patch size; a single kernel-4 layer (also 4 pixels) would make the
#:            discriminator linear, so a nonlinearity and a 1 x 1 classifier follow it.
#:   pixel1   PixelGAN: three 1 x 1 convolutions (as pix2pix's PixelDiscriminator).
#: All of the paper's sequence 70, 34, 16, 7, 4, 1 is produced exactly with kernel 4 (and
#: kernel 1 for the PixelGAN).
DISCRIMINATOR_PRESETS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "image70": ((4, 4, 4, 4, 4), (2, 2, 2, 1, 1)),
    "patch34": ((4, 4, 4, 4), (2, 2, 1, 1)),
    "patch16": ((4, 4, 4), (2, 1, 1)),
    "patch7": ((4, 4), (1, 1)),
    "patch4": ((4, 1), (1, 1)),
    "pixel1": ((1, 1, 1), (1, 1, 1)),
}


@dataclasses.dataclass(frozen=True)
class DiscriminatorConfig:
    """Layer geometry of `PatchDiscriminator`.

    Layer ``i`` is a convolution with ``filters[i]`` output channels, kernel ``kernels[i]``
    and stride ``strides[i]``. Stride > 1 layers use 'SAME' padding (for kernel 4, stride 2
    and an even input: one zero pixel on each side, the size halves); stride-1 layers pad
    ``(kernel - 1) // 2`` zeros on each side and then convolve without padding, as Keras'
    ``ZeroPadding2D`` + 'valid' Conv2D in pix2pix (kernel 4: the size shrinks by 1).
    Every layer but the last is followed by LeakyReLU; normalisation is applied to all
    layers except the first and the last. The last layer outputs logits (no activation).

    Attributes:
      in_channels: channels of the concatenated (input, target) pair (1 + 1 = 2).
      filters: output channels per layer; the last is normally 1. Default: the authors'
        16, 32, 64, 128, 1.
      kernels: kernel size per layer (paper: 4).
      strides: stride per layer (paper: 2, 2, 2, 1, 1).
      norm: "instance" (default), "batch" or "none".
      negative_slope: LeakyReLU slope (0.3).
    """

    in_channels: int = 2
    filters: tuple[int, ...] = AUTHORS_DISCRIMINATOR_WIDTHS + (1,)
    kernels: tuple[int, ...] = DISCRIMINATOR_PRESETS["image70"][0]
    strides: tuple[int, ...] = DISCRIMINATOR_PRESETS["image70"][1]
    norm: str = "instance"
    negative_slope: float = 0.3

    def __post_init__(self):
        for name in ("filters", "kernels", "strides"):
            object.__setattr__(self, name, _as_int_tuple(f"DiscriminatorConfig.{name}", getattr(self, name)))
        if not len(self.filters) == len(self.kernels) == len(self.strides):
            raise ValueError(
                "DiscriminatorConfig.filters, kernels and strides must have the same length, got "
                f"{len(self.filters)}, {len(self.kernels)}, {len(self.strides)}"
            )
        _check_pos_int("DiscriminatorConfig", "in_channels", self.in_channels)
        if self.norm not in NORMS:
            raise ValueError(f"DiscriminatorConfig.norm must be one of {NORMS}, got {self.norm!r}")
        if not (isinstance(self.negative_slope, (int, float)) and math.isfinite(self.negative_slope)):
            raise ValueError(
                f"DiscriminatorConfig.negative_slope must be a finite number, got {self.negative_slope!r}"
            )

    @classmethod
    def preset(
        cls,
        name: str,
        widths: Sequence[int] = AUTHORS_DISCRIMINATOR_WIDTHS,
        **changes: Any,
    ) -> "DiscriminatorConfig":
        """The named geometry of `DISCRIMINATOR_PRESETS` with hidden widths from `widths`.

        A preset with L layers uses ``widths[:L-1]`` for its hidden layers and 1 output
        channel; `changes` sets the other fields (``norm``, ``in_channels``, ...).
        """
        if name not in DISCRIMINATOR_PRESETS:
            raise ValueError(f"unknown discriminator preset {name!r}; choose from {sorted(DISCRIMINATOR_PRESETS)}")
        kernels, strides = DISCRIMINATOR_PRESETS[name]
        widths = tuple(widths)
        if len(widths) < len(kernels) - 1:
            raise ValueError(f"preset {name!r} needs {len(kernels) - 1} widths, got {widths!r}")
        filters = widths[: len(kernels) - 1] + (1,)
        return cls(filters=filters, kernels=kernels, strides=strides, **changes)

    def paddings(self) -> tuple[str | tuple[int, int], ...]:
        """Per layer: 'SAME' (stride > 1) or the symmetric zero padding (lo, hi) (stride 1)."""
        return tuple(
            "SAME" if s > 1 else ((k - 1) // 2, (k - 1) // 2) for k, s in zip(self.kernels, self.strides)
        )

    def to_dict(self) -> dict:
        """Plain-dict (JSON-ready) form; `from_dict` inverts it."""
        d = dataclasses.asdict(self)
        for name in ("filters", "kernels", "strides"):
            d[name] = list(d[name])
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DiscriminatorConfig":
        d = dict(d)
        for name in ("filters", "kernels", "strides"):
            if name in d:
                d[name] = tuple(d[name])
        return cls(**d)


_JITTER_METHODS = ("nearest", "bilinear")


@dataclasses.dataclass(frozen=True)
class Pix2PixConfig:
    """Everything that defines a pix2pix training run (networks, loss, optimiser, augmentation).

    Attributes:
      generator: `GeneratorConfig`.
      discriminator: `DiscriminatorConfig`; its ``in_channels`` must equal
        ``generator.in_channels + generator.out_channels``.
      lambda_l1: weight of the L1 term in the generator loss (paper eq. 11: 100).
      learning_rate: Adam step size for both networks (paper Table I: 1e-4; the authors'
        public code uses 2e-4).
      decay_start, decay_steps: learning-rate schedule. ``decay_steps = 0`` (default, the
        paper): constant. Otherwise constant up to step ``decay_start``, then linear to zero
        over ``decay_steps`` steps and zero after (the original pix2pix's schedule).
      beta1, beta2: Adam moment decay rates (Table I: 0.5, 0.999).
      batch_size: images per training step (Table I: 1).
      jitter_resize: random jitter: resize to jitter_resize x jitter_resize, then crop a
        random image_size x image_size window. ``image_size`` (default) means no jitter
        (the paper's best setting, Fig. 8).
      jitter_method: interpolation of the jitter resize, "nearest" (pix2pix) or "bilinear".
      random_flip: random left-right flip (mirror of the second image axis), off by default.
      random_d4: apply a uniformly random element of the symmetry group of the square
        (4 rotations x optional mirror) to each (input, target) pair. The map V -> n
        commutes with all eight, so this is exact data augmentation. Off by default.
      lambda_d4: weight of the D4-consistency term of the generator loss (0, the default:
        none). The term is the mean over pixels of (G(x) - sg(g^-1 G(g x)))^2 with g a
        uniformly random non-identity element of D4 per image and sg a stop-gradient. Its
        expected gradient is proportional to G(x) - PG(x), PG the D4 average of G (the
        `predict(..., symmetrize=True)` generator, the projection of G onto D4-equivariant
        maps), so it pulls the single-pass generator towards its own D4 average.
    """

    generator: GeneratorConfig = GeneratorConfig()
    discriminator: DiscriminatorConfig = DiscriminatorConfig()
    lambda_l1: float = 100.0
    learning_rate: float = 1e-4
    decay_start: int = 0
    decay_steps: int = 0
    beta1: float = 0.5
    beta2: float = 0.999
    batch_size: int = 1
    jitter_resize: int = 64
    jitter_method: str = "nearest"
    random_flip: bool = False
    random_d4: bool = False
    lambda_d4: float = 0.0

    def __post_init__(self):
        if isinstance(self.generator, Mapping):
            object.__setattr__(self, "generator", GeneratorConfig.from_dict(self.generator))
        if isinstance(self.discriminator, Mapping):
            object.__setattr__(self, "discriminator", DiscriminatorConfig.from_dict(self.discriminator))
        if not isinstance(self.generator, GeneratorConfig):
            raise ValueError(f"Pix2PixConfig.generator must be a GeneratorConfig, got {type(self.generator)}")
        if not isinstance(self.discriminator, DiscriminatorConfig):
            raise ValueError(
                f"Pix2PixConfig.discriminator must be a DiscriminatorConfig, got {type(self.discriminator)}"
            )
        g, d = self.generator, self.discriminator
        if d.in_channels != g.in_channels + g.out_channels:
            raise ValueError(
                f"discriminator.in_channels={d.in_channels} must equal generator.in_channels + "
                f"generator.out_channels = {g.in_channels + g.out_channels}"
            )
        for name in ("lambda_l1", "learning_rate", "beta1", "beta2", "lambda_d4"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"Pix2PixConfig.{name} must be a finite number >= 0, got {v!r}")
        if not (self.beta1 < 1 and self.beta2 < 1):
            raise ValueError(f"Adam betas must be < 1, got {self.beta1!r}, {self.beta2!r}")
        _check_pos_int("Pix2PixConfig", "batch_size", self.batch_size)
        for name in ("decay_start", "decay_steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise ValueError(f"Pix2PixConfig.{name} must be an integer >= 0, got {v!r}")
        _check_pos_int("Pix2PixConfig", "jitter_resize", self.jitter_resize)
        if self.jitter_resize < g.image_size:
            raise ValueError(
                f"Pix2PixConfig.jitter_resize={self.jitter_resize} must be >= image_size={g.image_size}"
            )
        if self.jitter_method not in _JITTER_METHODS:
            raise ValueError(
                f"Pix2PixConfig.jitter_method must be one of {_JITTER_METHODS}, got {self.jitter_method!r}"
            )
        for name in ("random_flip", "random_d4"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"Pix2PixConfig.{name} must be a bool, got {getattr(self, name)!r}")

    def replace(self, **changes: Any) -> "Pix2PixConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """Plain-dict (JSON-ready) form; `from_dict` inverts it exactly."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["generator"] = self.generator.to_dict()
        d["discriminator"] = self.discriminator.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Pix2PixConfig":
        return cls(**dict(d))


# ----------------------------------------------------------------------------- geometry


def _geometry(config: DiscriminatorConfig | str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    if isinstance(config, str):
        if config not in DISCRIMINATOR_PRESETS:
            raise ValueError(f"unknown discriminator preset {config!r}; choose from {sorted(DISCRIMINATOR_PRESETS)}")
        return DISCRIMINATOR_PRESETS[config]
    if isinstance(config, DiscriminatorConfig):
        return config.kernels, config.strides
    raise ValueError(f"expected a DiscriminatorConfig or a preset name, got {type(config)}")


def receptive_field(config: DiscriminatorConfig | str) -> int:
    """Side, in input pixels, of the square patch that one discriminator logit sees.

    Standard recursion over the layers (kernel k_l, stride s_l):
    r_0 = 1, r_l = r_{l-1} + (k_l - 1) * prod_{m<l} s_m. Reference configuration
    (kernel 4, strides 2, 2, 2, 1, 1): 4, 10, 22, 46, 70. Padding does not change r; it
    only decides where the patch sits (and patches are clipped by the image border).
    Holds with normalisation "none" or batch norm with running statistics; instance norm
    and batch norm with batch statistics couple every pixel of a feature map.

    Args:
      config: a `DiscriminatorConfig` or a name from `DISCRIMINATOR_PRESETS`.
    Returns:
      r, pixels (int).
    """
    kernels, strides = _geometry(config)
    r, jump = 1, 1
    for k, s in zip(kernels, strides):
        r += (k - 1) * jump
        jump *= s
    return r


def discriminator_output_size(config: DiscriminatorConfig | str, image_size: int = 64) -> int:
    """Side of the discriminator's logit map for a square input of `image_size` pixels.

    'SAME' layers give ceil(n / s); stride-1 layers with symmetric padding p give
    n + 2 p - k + 1. For 64 x 64 inputs: image70 -> 6, patch34 -> 14, patch16 -> 30,
    patch7 -> 62, patch4 -> 63, pixel1 -> 64.
    """
    kernels, strides = _geometry(config)
    n = image_size
    for k, s in zip(kernels, strides):
        n = -(-n // s) if s > 1 else n + 2 * ((k - 1) // 2) - k + 1
    return n


# ----------------------------------------------------------------------------- layers


@functools.partial(jax.jit, static_argnums=1)
def _normal_kernels(key: jax.Array, shapes: tuple[tuple[int, ...], ...]) -> list[jax.Array]:
    """Independent N(0, 0.02) float32 arrays of the given shapes, from a single draw
    (Table I: Gaussian initialisation, mean 0, standard deviation 0.02).

    One compiled program per architecture: drawing each kernel separately would compile
    the threefry generator once per distinct kernel shape.
    """
    sizes = [math.prod(shape) for shape in shapes]
    flat = 0.02 * jax.random.normal(key, (sum(sizes),), _F32)
    out, start = [], 0
    for shape, n in zip(shapes, sizes):
        out.append(flat[start : start + n].reshape(shape))
        start += n
    return out


def _fixed(value: jax.Array):
    """An initializer that returns a precomputed array (shape-checked)."""

    def init(key, shape, dtype=_F32):
        if tuple(shape) != value.shape:
            raise ValueError(f"internal: kernel shape {tuple(shape)} != drawn {value.shape}")
        return value.astype(dtype)

    return init


def _conv_layer(
    in_features: int,
    out_features: int,
    kernel: jax.Array,
    *,
    stride: int,
    padding: str | tuple[tuple[int, int], tuple[int, int]],
    use_bias: bool,
    rngs: nnx.Rngs,
) -> nnx.Conv:
    """``nnx.Conv`` (``lax.conv_general_dilated``, NHWC x HWIO), float32 parameters and
    compute, with the drawn (k, k, C_in, C_out) `kernel` as its initial kernel and a zero
    bias of shape (C_out,) if `use_bias`."""
    k = kernel.shape[0]
    return nnx.Conv(
        in_features, out_features, (k, k), strides=stride, padding=padding, use_bias=use_bias,
        dtype=_F32, param_dtype=_F32, kernel_init=_fixed(kernel), rngs=rngs,
    )


def _conv_transpose_layer(
    in_features: int, out_features: int, kernel: jax.Array, *, use_bias: bool, rngs: nnx.Rngs
) -> nnx.ConvTranspose:
    """``nnx.ConvTranspose`` with stride 2 and 'SAME' padding, (B, H, W, C_in) ->
    (B, 2H, 2W, C_out): ``lax.conv_transpose`` without kernel flip (``transpose_kernel=False``),
    kernel (k, k, C_in, C_out) initialised to the drawn `kernel`, float32 parameters and
    compute, zero bias (C_out,) if `use_bias`."""
    k = kernel.shape[0]
    return nnx.ConvTranspose(
        in_features, out_features, (k, k), strides=2, padding="SAME", use_bias=use_bias,
        transpose_kernel=False, dtype=_F32, param_dtype=_F32, kernel_init=_fixed(kernel), rngs=rngs,
    )


def _make_norm(kind: str, features: int, rngs: nnx.Rngs) -> nnx.Module | None:
    if kind == "instance":
        return nnx.InstanceNorm(
            features, epsilon=_NORM_EPS, use_fast_variance=False, dtype=_F32, param_dtype=_F32, rngs=rngs
        )
    if kind == "batch":
        return nnx.BatchNorm(
            features, epsilon=_NORM_EPS, use_fast_variance=False, dtype=_F32, param_dtype=_F32, rngs=rngs
        )
    return None


def _apply_norm(norm: nnx.Module | None, x: jax.Array, train: bool) -> jax.Array:
    if norm is None:
        return x
    if isinstance(norm, nnx.BatchNorm):
        return norm(x, use_running_average=not train)
    return norm(x)


def _dropout(x: jax.Array, rate: float, key: jax.Array) -> jax.Array:
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros((), x.dtype)).astype(x.dtype)

def _check_nhwc(name: str, x: jax.Array, size: int | None, channels: int) -> None:
    if x.ndim != 4:
        raise ValueError(f"{name} expects a (batch, height, width, channels) array, got shape {x.shape}")
    if size is not None and x.shape[1:3] != (size, size):
        raise ValueError(f"{name} expects {size} x {size} images, got shape {x.shape}")
    if x.shape[-1] != channels:
        raise ValueError(f"{name} expects {channels} channel(s), got shape {x.shape}")


class UNetGenerator(nnx.Module):
    """pix2pix U-Net generator: (B, S, S, C_in) -> (B, S, S, C_out), float32, values in (-1, 1).

    Layer shapes for the default configuration (S = 64, filters 16, 32, 64, 128, 128, 128):

        input                                           (B, 64, 64, C_in)
        down0  conv 4x4/2, LeakyReLU (no norm)          (B, 32, 32, 16)
        down1  conv 4x4/2, norm, LeakyReLU              (B, 16, 16, 32)
        down2  conv 4x4/2, norm, LeakyReLU              (B,  8,  8, 64)
        down3  conv 4x4/2, norm, LeakyReLU              (B,  4,  4, 128)
        down4  conv 4x4/2, norm, LeakyReLU              (B,  2,  2, 128)
        down5  conv 4x4/2, LeakyReLU (1x1: no norm)     (B,  1,  1, 128)   bottleneck
        up0    tconv 4x4/2, norm, [dropout], ReLU       (B,  2,  2, 128)  ++ down4 -> 256
        up1    tconv 4x4/2, norm, [dropout], ReLU       (B,  4,  4, 128)  ++ down3 -> 256
        up2    tconv 4x4/2, norm, [dropout], ReLU       (B,  8,  8, 64)   ++ down2 -> 128
        up3    tconv 4x4/2, norm, ReLU                  (B, 16, 16, 32)   ++ down1 -> 64
        up4    tconv 4x4/2, norm, ReLU                  (B, 32, 32, 16)   ++ down0 -> 32
        out    tconv 4x4/2, tanh                        (B, 64, 64, C_out)

    (``++`` is concatenation along channels: the U-Net skip connections.) ``down_convs`` are
    ``nnx.Conv`` with stride 2, ``up_convs`` and ``out_conv`` ``nnx.ConvTranspose`` with
    stride 2 (``lax.conv_transpose`` without kernel flip), all 'SAME'-padded, kernels
    (k, k, C_in, C_out); those followed by a normalisation have no bias. Kernels are drawn
    from N(0, 0.02), biases start at 0, norm scales at 1.
    """

    def __init__(self, config: GeneratorConfig = GeneratorConfig(), *, rngs: nnx.Rngs):
        if not isinstance(config, GeneratorConfig):
            raise ValueError(f"UNetGenerator needs a GeneratorConfig, got {type(config)}")
        self.config = config
        k = config.kernel
        # layer plan: (in channels, out channels, norm) for encoder and decoder
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
        shapes = tuple((k, k, a, b) for a, b, _ in down + up) + ((k, k, c_in, config.out_channels),)
        kernels = iter(_normal_kernels(rngs.params(), shapes))
        self.down_convs = nnx.List([
            _conv_layer(a, b, next(kernels), stride=2, padding="SAME", use_bias=norm == "none", rngs=rngs)
            for a, b, norm in down
        ])
        self.down_norms = nnx.List([_make_norm(norm, b, rngs) for _, b, norm in down])
        self.up_convs = nnx.List([
            _conv_transpose_layer(a, b, next(kernels), use_bias=norm == "none", rngs=rngs) for a, b, norm in up
        ])
        self.up_norms = nnx.List([_make_norm(norm, b, rngs) for _, b, norm in up])
        self.out_conv = _conv_transpose_layer(c_in, config.out_channels, next(kernels), use_bias=True, rngs=rngs)

    def encode(self, x: jax.Array, *, train: bool = False) -> list[jax.Array]:
        """Encoder feature maps, float32: [(B, S/2, S/2, f_0), ..., (B, 1, 1, f_-1)] for the default S.

        The last entry is the bottleneck. `train` selects batch statistics for batch norm.
        """
        cfg = self.config
        x = jnp.asarray(x).astype(_F32)
        _check_nhwc("UNetGenerator", x, cfg.image_size, cfg.in_channels)
        feats = []
        for conv, norm in zip(self.down_convs, self.down_norms):
            x = jax.nn.leaky_relu(_apply_norm(norm, conv(x), train), cfg.negative_slope)
            feats.append(x)
        return feats

    def __call__(self, x: jax.Array, *, train: bool = False, dropout_key: jax.Array | None = None) -> jax.Array:
        """Generate the output image.

        Args:
          x: (B, S, S, C_in) input images, values in [-1, 1]; cast to float32.
          train: batch norm uses batch statistics (and updates its running averages) when
            True, the running averages when False. No effect for "instance" / "none".
          dropout_key: PRNG key; with ``config.dropout > 0`` and a key, dropout is applied
            to the first three decoder layers. Without a key the output is deterministic.
        Returns:
          (B, S, S, C_out) float32 in (-1, 1) (tanh head), or in (-1, density_norm - 1) with
          every image summing to density_norm - S^2 (density head). With
          ``config.equivariant`` the mean over the 8 symmetries of the square of
          g^-1 U(g x), U the U-Net (one U-Net call on 8 B images).
        """
        if self.config.equivariant:
            return d4_average(lambda z: self._unet(z, train, dropout_key), x)
        return self._unet(x, train, dropout_key)

    def _unet(self, x: jax.Array, train: bool, dropout_key: jax.Array | None) -> jax.Array:
        """The U-Net itself (`__call__` without the group average)."""
        cfg = self.config
        feats = self.encode(x, train=train)
        h = feats[-1]
        skips = list(reversed(feats[:-1]))
        use_dropout = cfg.dropout > 0 and dropout_key is not None
        for i, (conv, norm) in enumerate(zip(self.up_convs, self.up_norms)):
            h = _apply_norm(norm, conv(h), train)
            if use_dropout and i < 3:
                h = _dropout(h, cfg.dropout, jax.random.fold_in(dropout_key, i))
            h = jax.nn.relu(h)
            h = jnp.concatenate([h, skips[i]], axis=-1)
        z = self.out_conv(h)
        if cfg.density_norm is None:
            return jnp.tanh(z)
        b, s1, s2, c = z.shape
        p = jax.nn.softmax(z.reshape(b, s1 * s2, c), axis=1).reshape(z.shape)
        return cfg.density_norm * p - 1.0


class PatchDiscriminator(nnx.Module):
    """PatchGAN discriminator: (B, S, S, C_in + C_out) pair -> (B, S', S', 1) float32 logits.

    The input is the channel concatenation of a conditioning image and a real or generated
    target. Each logit classifies one `receptive_field(config)`-pixel patch as real
    (positive) or fake (negative). Reference configuration ("image70", 64 x 64 pairs, the
    authors' widths):

        input                                            (B, 64, 64, 2)
        conv 4x4/2 'SAME', LeakyReLU (no norm)           (B, 32, 32, 16)
        conv 4x4/2 'SAME', norm, LeakyReLU               (B, 16, 16, 32)
        conv 4x4/2 'SAME', norm, LeakyReLU               (B,  8,  8, 64)
        zero-pad 1, conv 4x4/1 valid, norm, LeakyReLU    (B,  7,  7, 128)
        zero-pad 1, conv 4x4/1 valid (logits)            (B,  6,  6, 1)

    Receptive field 70 x 70 (larger than the image: an "ImageGAN"). The other presets are
    in `DISCRIMINATOR_PRESETS`; `discriminator_output_size` gives S'. Every layer of
    ``convs`` is an ``nnx.Conv`` with kernel (k, k, C_in, C_out) and the padding of
    `DiscriminatorConfig.paddings`.
    """

    def __init__(self, config: DiscriminatorConfig = DiscriminatorConfig(), *, rngs: nnx.Rngs):
        if not isinstance(config, DiscriminatorConfig):
            raise ValueError(f"PatchDiscriminator needs a DiscriminatorConfig, got {type(config)}")
        self.config = config
        n_layers = len(config.filters)
        c_ins = (config.in_channels,) + config.filters[:-1]
        shapes = tuple((k, k, a, b) for a, b, k in zip(c_ins, config.filters, config.kernels))
        kernels = _normal_kernels(rngs.params(), shapes)
        convs, norms = [], []
        for i, (f, k, pad) in enumerate(zip(config.filters, config.kernels, config.paddings())):
            norm = config.norm if 0 < i < n_layers - 1 else "none"
            convs.append(
                _conv_layer(c_ins[i], f, kernels[i], stride=config.strides[i],
                            padding=pad if pad == "SAME" else (pad, pad), use_bias=norm == "none", rngs=rngs)
            )
            norms.append(_make_norm(norm, f, rngs))
        self.convs = nnx.List(convs)
        self.norms = nnx.List(norms)

    def __call__(self, pair: jax.Array, *, train: bool = False) -> jax.Array:
        """Logits for an (input, target) pair.

        Args:
          pair: (B, H, W, in_channels), values in [-1, 1]; cast to float32. Any H, W large
            enough for the geometry (the network is fully convolutional).
          train: batch norm uses batch statistics when True.
        Returns:
          (B, H', W', filters[-1]) float32 logits (unbounded).
        """
        cfg = self.config
        x = jnp.asarray(pair).astype(_F32)
        _check_nhwc("PatchDiscriminator", x, None, cfg.in_channels)
        last = len(self.convs) - 1
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            x = _apply_norm(norm, conv(x), train)
            if i < last:
                x = jax.nn.leaky_relu(x, cfg.negative_slope)
        return x
