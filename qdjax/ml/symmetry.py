"""The symmetry group of the square (dihedral group D4) acting on images.

The maps between a confinement potential and its densities commute with the eight
symmetries of the square box (4 rotations, each with or without a mirror): rotating or
mirroring V rotates or mirrors n. `d4_transform` and `d4_inverse` apply one element to a batch
of images; `d4_average` turns any image-to-image map into a D4-equivariant one, the mean of
g^-1 f(g x) over the group (the projection of f onto equivariant maps). It backs
`qdjax.ml.train.predict(..., symmetrize=True)`, the generator of
`GeneratorConfig(equivariant=True)` and the D4-consistency term (`Pix2PixConfig.lambda_d4`).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

__all__ = ["d4_transform", "d4_inverse", "d4_average"]


def d4_transform(images: ArrayLike, g: int, axes: tuple[int, int] = (-3, -2)) -> jax.Array:
    """Element g of the symmetry group of the square (dihedral group D4) applied to images.

    g = 0..3: rotation by g * 90 degrees (``jnp.rot90`` in the plane `axes`); g = 4..7:
    the mirror x -> reversed along ``axes[1]`` followed by rotation by (g - 4) * 90
    degrees. g = 0 is the identity.

    Args:
      images: array with two equal spatial axes `axes` (default: (..., S, S, C) NHWC).
      g: Python int in 0..7.
    Returns:
      Transformed array, same shape and dtype.
    """
    if not (isinstance(g, (int, np.integer)) and 0 <= g < 8):
        raise ValueError(f"g must be an integer in 0..7, got {g!r}")
    x = jnp.asarray(images)
    if g >= 4:
        x = jnp.flip(x, axis=axes[1])
    return jnp.rot90(x, k=int(g) % 4, axes=axes)


def d4_inverse(images: ArrayLike, g: int, axes: tuple[int, int] = (-3, -2)) -> jax.Array:
    """Inverse of `d4_transform`: ``d4_inverse(d4_transform(x, g), g) == x``."""
    if not (isinstance(g, (int, np.integer)) and 0 <= g < 8):
        raise ValueError(f"g must be an integer in 0..7, got {g!r}")
    x = jnp.rot90(jnp.asarray(images), k=-(int(g) % 4), axes=axes)
    if g >= 4:
        x = jnp.flip(x, axis=axes[1])
    return x


def d4_average(fn: Callable[[jax.Array], jax.Array], images: ArrayLike) -> jax.Array:
    """mean over the eight g of g^-1 fn(g x): a D4-equivariant version of fn.

    fn is called once, on the 8 B transformed images stacked along the batch axis.

    Args:
      fn: (8 B, S, S, C_in) -> (8 B, S, S, C_out), applied image by image (an image's output
        may depend on the others only through batch statistics).
      images: (B, S, S, C_in).
    Returns:
      (B, S, S, C_out); average(T x) = T average(x) for every element T, up to rounding.
    """
    x = jnp.asarray(images)
    b = x.shape[0]
    ys = fn(jnp.concatenate([d4_transform(x, g, axes=(1, 2)) for g in range(8)], axis=0))
    return jnp.mean(jnp.stack([d4_inverse(ys[g * b : (g + 1) * b], g, axes=(1, 2)) for g in range(8)]), axis=0)
