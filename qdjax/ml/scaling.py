"""Maps between physical images and the [-1, 1] range of the pix2pix networks.

The generator ends in tanh, so targets must live in [-1, 1]; inputs are mapped the same
way. A `Scaler` stores the physical interval [lo, hi] that is sent to [-1, 1], either
affinely (transform "linear", the paper's scaling and the only one for targets):

    to_unit(x)   = 2 (x - lo) / (hi - lo) - 1
    from_unit(y) = lo + (y + 1) (hi - lo) / 2

or logarithmically (transform "log", for density *inputs*; needs 0 < lo < hi):

    to_unit(x)   = 2 (log max(x, lo) - log lo) / (log hi - log lo) - 1
    from_unit(y) = exp(log lo + (y + 1) (log hi - log lo) / 2)

which is the exact inverse for x >= lo (values below the floor lo are sent to -1).
Why a log input: a ground-state density decays exponentially into barriers and into wells
it does not fill, so on the linear scale most of the image is within 1e-3 of zero, while the
potential there is still encoded in the density's decay (for one occupied orbital exactly:
V - E = hbar^2/(2 m*) (lap sqrt(n)) / sqrt(n) = hbar^2/(2 m*) (lap log n / 2 + |grad log n|^2 / 4)).
The log scale shows that decay to the network over the floor's orders of magnitude.

Defaults (Pantis-Simut et al. 2023, section II): potentials take values between the well
depth V0 = 0 eV and the step height Vs = 0.5 eV, so they use the fixed interval [0, 0.5] eV;
densities use [0, margin * max over the training images] nm^-2 (the margin keeps the
largest training density away from tanh's asymptote). The interval is fitted on the
training set only and then reused unchanged for validation, test and prediction.

Because R^2 with the set-mean reference is invariant under one affine map applied to both
prediction and target, R^2 on [-1, 1] images equals R^2 in physical units for the (linear)
target scalers.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

__all__ = ["Scaler", "fit_scaler", "POTENTIAL_RANGE_EV", "DENSITY_MARGIN", "LOG_FLOOR", "TRANSFORMS"]

#: Default potential interval (V0, Vs) in eV (paper section II).
POTENTIAL_RANGE_EV = (0.0, 0.5)
#: Default headroom factor above the largest training density.
DENSITY_MARGIN = 1.1
#: Default floor of the log scale, relative to the largest training density.
LOG_FLOOR = 1e-12
#: The scalings a `Scaler` offers.
TRANSFORMS = ("linear", "log")

_UNITS = {"potential": "eV", "density": "nm^-2"}


@dataclasses.dataclass(frozen=True)
class Scaler:
    """Invertible map (affine or logarithmic) from the physical interval [lo, hi] onto [-1, 1].

    Attributes:
      lo: physical value sent to -1 (e.g. eV for potentials, nm^-2 for densities); for the
        log transform the floor, > 0.
      hi: physical value sent to +1; must be > lo.
      unit: unit of lo and hi, informational ("eV", "nm^-2", or "").
      transform: "linear" (affine) or "log" (see the module docstring).
    """

    lo: float
    hi: float
    unit: str = ""
    transform: str = "linear"

    def __post_init__(self):
        for name in ("lo", "hi"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) or not math.isfinite(v):
                raise ValueError(f"Scaler.{name} must be a finite number, got {v!r}")
            object.__setattr__(self, name, float(v))
        if not self.hi > self.lo:
            raise ValueError(f"Scaler needs hi > lo, got lo={self.lo!r}, hi={self.hi!r}")
        if not isinstance(self.unit, str):
            raise ValueError(f"Scaler.unit must be a string, got {self.unit!r}")
        if self.transform not in TRANSFORMS:
            raise ValueError(f"Scaler.transform must be one of {TRANSFORMS}, got {self.transform!r}")
        if self.transform == "log" and not self.lo > 0:
            raise ValueError(f"a log Scaler needs a floor lo > 0, got lo={self.lo!r}")

    def to_unit(self, x: ArrayLike):
        """Physical values -> [-1, 1] (linear: values outside [lo, hi] map outside [-1, 1];
        log: values below lo map to -1, above hi above 1).

        Args:
          x: array of any shape in the scaler's unit (NumPy or JAX, traceable; the type and a
            floating dtype are kept).
        Returns:
          2 (x - lo) / (hi - lo) - 1 (linear) or
          2 (log max(x, lo) - log lo) / (log hi - log lo) - 1 (log), same shape.
        """
        if self.transform == "log":
            xp = jnp if isinstance(x, jax.Array) else np
            x = xp.log(xp.maximum(x, self.lo)) - math.log(self.lo)
            return x * (2.0 / (math.log(self.hi) - math.log(self.lo))) - 1.0
        return (x - self.lo) * (2.0 / (self.hi - self.lo)) - 1.0

    def from_unit(self, y: ArrayLike):
        """[-1, 1] -> physical values; the exact inverse of `to_unit` (up to rounding) on
        [lo, inf) for the log transform, everywhere for the linear one.

        Args:
          y: array of any shape, typically a generator output in (-1, 1).
        Returns:
          lo + (y + 1) (hi - lo) / 2 (linear) or
          exp(log lo + (y + 1) (log hi - log lo) / 2) (log), same shape, in the scaler's unit.
        """
        if self.transform == "log":
            xp = jnp if isinstance(y, jax.Array) else np
            return xp.exp((y + 1.0) * (0.5 * (math.log(self.hi) - math.log(self.lo))) + math.log(self.lo))
        return (y + 1.0) * (0.5 * (self.hi - self.lo)) + self.lo

    def to_dict(self) -> dict:
        """{"lo": float, "hi": float, "unit": str, "transform": str}: JSON-ready; `from_dict`
        inverts it."""
        return {"lo": self.lo, "hi": self.hi, "unit": self.unit, "transform": self.transform}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Scaler":
        """Inverse of `to_dict`; a dict without "transform" (older checkpoints) is linear."""
        return cls(**dict(d))


def fit_scaler(
    images: ArrayLike | None,
    kind: str,
    *,
    margin: float = DENSITY_MARGIN,
    potential_range: tuple[float, float] = POTENTIAL_RANGE_EV,
    transform: str = "linear",
    log_floor: float = LOG_FLOOR,
) -> Scaler:
    """The scaler for one kind of image, fitted on the training set.

    Args:
      images: training images, any shape (..., grid, grid). Potentials in eV (only checked
        for finiteness; may be None), densities in nm^-2.
      kind: "potential" -> [potential_range[0], potential_range[1]] eV (default [0, 0.5]);
        "density" -> [0, margin * max(images)] nm^-2 (linear) or
        [log_floor * max(images), margin * max(images)] nm^-2 (log).
      margin: headroom factor (>= 1) for densities.
      potential_range: (V0, Vs) in eV for potentials.
      transform: "linear" or "log" (densities only).
      log_floor: floor of the log scale relative to the largest training density, in (0, 1).
    Returns:
      `Scaler` with the unit set ("eV" or "nm^-2").
    Raises:
      ValueError: unknown kind or transform, a log potential, non-finite images, margin < 1,
        a floor outside (0, 1), or an all-zero density set.
    """
    if kind not in _UNITS:
        raise ValueError(f"kind must be one of {tuple(_UNITS)}, got {kind!r}")
    if transform not in TRANSFORMS:
        raise ValueError(f"transform must be one of {TRANSFORMS}, got {transform!r}")
    if transform == "log" and kind != "density":
        raise ValueError("the log transform needs a density input (potentials take the value 0)")
    if not (isinstance(log_floor, (int, float)) and 0 < log_floor < 1):
        raise ValueError(f"log_floor must be a number in (0, 1), got {log_floor!r}")
    arr = None
    if images is not None:
        arr = np.asarray(images)
        if arr.size == 0 or not np.all(np.isfinite(arr)):
            raise ValueError("fit_scaler needs a non-empty set of finite images")
    if kind == "potential":
        lo, hi = potential_range
        return Scaler(lo, hi, _UNITS[kind])
    if arr is None:
        raise ValueError("fit_scaler(kind='density') needs the training densities")
    if not (isinstance(margin, (int, float)) and math.isfinite(margin) and margin >= 1):
        raise ValueError(f"margin must be a finite number >= 1, got {margin!r}")
    peak = float(arr.max())
    if not peak > 0:
        raise ValueError(f"densities must have a positive maximum, got max = {peak!r} nm^-2")
    if transform == "log":
        return Scaler(log_floor * peak, margin * peak, _UNITS[kind], "log")
    return Scaler(0.0, margin * peak, _UNITS[kind])
