"""Mappings between ED quantities, scoring of trained generators, and generators as JAX functions.

The four mappings of Pantis-Simut et al. (2023) (section III.2 and the inverse problem of
section IV): "V->n0", "V->n_int", "n0->n_int" and "n_int->V", where V is the confinement
potential (eV), n0 the non-interacting and n_int the interacting ground-state density (nm^-2)
for a given N. Images are scaled to [-1, 1] with `qdjax.ml.scaling` scalers fitted on the
training split only.

Scores are reported twice:
- standard, in physical units: L1, L2, Linf (eqs. 14-16), Wang et al. SSIM and the 8 x 8
  uniform-window MSSIM (data range = the target scaler's interval, i.e. 0.5 eV for potentials
  and 1.1 x the largest training density for densities), and R^2 (eqs. 17-19) with the
  training-set mean map, as the paper's text says;
- in the paper authors' convention (DESIGN.md): references quantised to 8-bit images on the
  scaler's interval and mapped to [-1, 1], global "SSIM", windowed "MSSIM" with stride 4, and
  R^2 with the mean map of the scored set.
"""

from __future__ import annotations

import functools
from typing import Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.typing import ArrayLike

from qdjax import metrics
from qdjax.ml import scaling, symmetry, train

#: mapping name -> (input quantity, target quantity).
MAPPINGS = {
    "V->n0": ("V", "n0"),
    "V->n_int": ("V", "n_int"),
    "n0->n_int": ("n0", "n_int"),
    "n_int->V": ("n_int", "V"),
}

#: quantity -> scaler kind.
KINDS = {"V": "potential", "n0": "density", "n_int": "density"}


def check_finite(name: str, images: ArrayLike) -> np.ndarray:
    """`images` as a NumPy array, after checking that every value is finite.

    Args:
      name: what the images are, for the message (e.g. "test V").
      images: array of any shape.
    Returns:
      ``np.asarray(images)``.
    Raises:
      ValueError: a NaN or inf; the message gives their number and the first index.
    """
    arr = np.asarray(images)
    bad = ~np.isfinite(arr)
    if np.any(bad):
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{name} images are not finite: {int(bad.sum())} NaN/inf value(s), the first at index {first}")
    return arr


def check_mapping(mapping: str) -> tuple[str, str]:
    """(input, target) quantity names of a mapping; ValueError for an unknown name."""
    if mapping not in MAPPINGS:
        raise ValueError(f"unknown mapping {mapping!r}; choose one of {sorted(MAPPINGS)}")
    return MAPPINGS[mapping]


class Scalers(NamedTuple):
    """Scalers of the input and target images of one mapping."""

    inputs: scaling.Scaler
    targets: scaling.Scaler

    def to_dict(self) -> dict:
        """JSON-ready {"inputs": {...}, "targets": {...}}."""
        return {"inputs": self.inputs.to_dict(), "targets": self.targets.to_dict()}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Scalers":
        """Inverse of `to_dict`."""
        return cls(scaling.Scaler.from_dict(d["inputs"]), scaling.Scaler.from_dict(d["targets"]))


def fit_scalers(mapping: str, train_inputs: ArrayLike, train_targets: ArrayLike, input_transform: str = "linear") -> Scalers:
    """Scalers for a mapping, fitted on the training images.

    Args:
      mapping: one of MAPPINGS.
      train_inputs, train_targets: (n, grid, grid) physical images (eV or nm^-2).
      input_transform: "linear" (the paper) or "log" (density inputs only:
        `qdjax.ml.scaling` explains why); targets are always scaled linearly.

    Returns:
      Scalers (potentials: fixed [0, 0.5] eV; densities: [0, 1.1 max] nm^-2, or for log
      inputs [1e-12 max, 1.1 max] nm^-2 on a log scale).
    """
    src, dst = check_mapping(mapping)
    return Scalers(
        scaling.fit_scaler(train_inputs, KINDS[src], transform=input_transform),
        scaling.fit_scaler(train_targets, KINDS[dst]),
    )


def per_sample_r2(pred: ArrayLike, ref: ArrayLike, mean_map: ArrayLike) -> np.ndarray:
    """R^2 of each image against a reference mean map: 1 - ||ref - pred||^2 / ||ref - mean||^2.

    Args:
      pred, ref: (n, H, W), same unit.
      mean_map: (H, W), same unit (the training-set mean).

    Returns:
      float64 array (n,), dimensionless.
    """
    pred, ref, mean_map = (np.asarray(a, dtype=np.float64) for a in (pred, ref, mean_map))
    res = np.sum((ref - pred) ** 2, axis=(-1, -2))
    tot = np.sum((ref - mean_map) ** 2, axis=(-1, -2))
    return 1.0 - res / tot


def score(pred: ArrayLike, ref: ArrayLike, target_scaler: scaling.Scaler, train_mean: ArrayLike) -> dict:
    """Standard and paper-convention scores of predicted against reference images.

    Args:
      pred, ref: (n, grid, grid) physical images (target unit), n >= 2.
      target_scaler: the target scaler (its interval is the SSIM data range and the 8-bit
        range of the paper convention).
      train_mean: (grid, grid) mean target image of the training split.

    Returns:
      dict with per-image arrays "l1", "l2", "linf", "ssim", "mssim", "r2_sample",
      "paper_ssim", "paper_mssim" (n,), and set-level floats "r2" (training mean map) and
      "paper_r2" (8-bit references on [-1, 1], mean map of the scored set). A non-finite
      prediction gives non-finite scores (the caller decides what that means).

    Raises:
      ValueError: `ref` or `train_mean` holds a NaN or inf (an infinite mean map would
        make R^2 = 1 - finite / inf = 1).
    """
    if target_scaler.transform != "linear":
        raise ValueError(f"scores need a linear target scaler, got transform={target_scaler.transform!r}")
    pred = np.asarray(pred, dtype=np.float64)
    ref = check_finite("ref", np.asarray(ref, dtype=np.float64))
    train_mean = check_finite("train_mean", np.asarray(train_mean, dtype=np.float64))
    data_range = target_scaler.hi - target_scaler.lo
    out = {k: np.asarray(v) for k, v in metrics.summary(pred, ref, data_range, train_mean).items()}
    out["r2"] = float(out["r2"])
    out["r2_sample"] = per_sample_r2(pred, ref, train_mean)
    ref_paper = metrics.to_paper_images(ref, target_scaler.lo, target_scaler.hi)
    pred_paper = jnp.asarray(target_scaler.to_unit(pred))
    out["paper_ssim"] = np.asarray(metrics.paper_ssim(pred_paper, ref_paper))
    out["paper_mssim"] = np.asarray(metrics.paper_mssim(pred_paper, ref_paper))
    out["paper_r2"] = float(metrics.paper_r2(pred_paper, ref_paper))
    return out


def aggregate(scores: Mapping) -> dict:
    """Means and medians of per-image scores plus the set-level ones, JSON-ready floats."""
    out = {}
    for k, v in scores.items():
        if np.ndim(v) == 0:
            out[k] = float(v)
        else:
            out[f"{k}_mean"] = float(np.mean(v))
            out[f"{k}_median"] = float(np.median(v))
    return out


def worst(scores: Mapping, fraction: float = 0.05, by: str = "r2_sample") -> np.ndarray:
    """Indices of the worst `fraction` of images (at least one), worst first.

    Lower is worse for "r2_sample", "ssim", "mssim" and the paper SSIMs; higher is worse for
    "l1", "l2" and "linf".
    """
    values = np.asarray(scores[by])
    count = max(1, int(round(fraction * values.size)))
    order = np.argsort(values if by not in ("l1", "l2", "linf") else -values)
    return order[:count]


def predict_physical(state: train.TrainState, inputs: ArrayLike, scalers: Scalers, symmetrize: bool = False) -> np.ndarray:
    """Generator prediction in physical units.

    Args:
      state: trained `TrainState`.
      inputs: (n, grid, grid) physical input images.
      scalers: the mapping's scalers.
      symmetrize: average over the 8 symmetries of the square (exactly equivariant).

    Returns:
      float64 array (n, grid, grid) in the target unit.

    Raises:
      ValueError: `inputs` holds a NaN or inf.
    """
    inputs = check_finite("inputs", np.asarray(inputs, dtype=np.float64))
    x = scalers.inputs.to_unit(inputs).astype(np.float32)
    y = train.predict(state, x, symmetrize=symmetrize)
    return scalers.targets.from_unit(np.asarray(y, dtype=np.float64))


class GeneratorFunction(NamedTuple):
    """A generator as a pure JAX function of its variables, for use inside larger graphs.

    apply: static, hashable callable apply(variables, images_physical) -> images_physical,
      (batch, grid, grid) in the input unit -> (batch, grid, grid) in the target unit.
    variables: pytree of arrays (parameters and batch statistics), traced.
    """

    apply: object
    variables: object


def _apply_generator(g_def, scalers: Scalers, symmetrize: bool, variables, images):
    params, stats = variables
    gen = nnx.merge(g_def, params, stats)
    x = scalers.inputs.to_unit(images).astype(jnp.float32)[..., None]
    if symmetrize and not gen.config.equivariant:  # an equivariant generator is its own average
        y = symmetry.d4_average(lambda z: gen(z, train=False), x)
    else:
        y = gen(x, train=False)
    return scalers.targets.from_unit(y[..., 0].astype(images.dtype))


def generator_function(state: train.TrainState, scalers: Scalers, symmetrize: bool = False) -> GeneratorFunction:
    """The trained generator of `state` as (static apply, traced variables).

    Used by `qdjax.inverse.check` to run generator and ED in one jitted graph.
    """
    g_def = train._generator_graphdef(state.config.generator)
    apply = functools.partial(_apply_generator, g_def, scalers, bool(symmetrize))
    return GeneratorFunction(apply, (state.g_params, state.g_stats))
