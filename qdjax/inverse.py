"""Inverse design: from a target ground-state density back to a confinement potential.

Two stages, both batched and jit-compiled with the exact diagonalisation in the same graph:

1. `check`: a learned density -> potential map (e.g. the pix2pix generator trained on
   n_int -> V, Pantis-Simut et al. 2023, section IV and Fig. 10) proposes V; the ED recomputes
   the density of that V and scores it against the target. A proposal is accepted when the
   recomputed density reproduces the target (the paper's "if the calculated density fits the
   input density well, adopt it, otherwise dismiss"), judged by the displaced charge

       q = (1 / 2N) sum_ij |n[i, j] - n_target[i, j]| h^2          (0 <= q <= 1),

   the fraction of the N electrons that sit in the wrong place. Default threshold q <= 0.05.

2. `refine`: gradient descent on V through the whole ED (jax.grad of the density misfit), with
   V kept physical by the smooth bounded parameterisation

       V = v_lo + (v_hi - v_lo) sigmoid(theta),   theta unconstrained,

   between the well depth V0 = 0 eV and the step height Vs = 0.5 eV of the paper's potentials
   by default. Loss per sample: sum_ij (n - n_target)^2 h^2 / sum_ij n_target^2 h^2 (relative
   squared L2 error); Optax Adam on theta; samples stop updating individually once their
   displaced charge falls below `target_charge`, and the whole run stops when all have, or
   after `steps` steps. The best V seen for each sample is returned.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from qdjax import ed, metrics
from qdjax.config import EDConfig

#: Potential bounds (V0, Vs) of the paper's random potentials, eV.
POTENTIAL_BOUNDS_EV = (0.0, 0.5)
#: Default acceptance threshold on the displaced-charge fraction.
ACCEPT_CHARGE = 0.05


def displaced_charge(density: ArrayLike, target: ArrayLike, n_electrons: int, config: EDConfig) -> jax.Array:
    """Fraction of electrons displaced between two densities, (1/2N) sum |n - n_t| h^2.

    Args:
      density, target: arrays (..., grid, grid), nm^-2, each integrating to N.
      n_electrons: N.
      config: gives the pixel area h^2.

    Returns:
      array (...,), dimensionless in [0, 1].
    """
    diff = jnp.abs(jnp.asarray(density) - jnp.asarray(target))
    return 0.5 * jnp.sum(diff, axis=(-1, -2)) * config.pixel_nm**2 / n_electrons


def to_theta(V: ArrayLike, bounds: tuple[float, float] = POTENTIAL_BOUNDS_EV, margin: float = 1e-3) -> jax.Array:
    """Unconstrained parameters of a potential: logit((V - v_lo) / (v_hi - v_lo)).

    V is first clipped into [v_lo + margin (v_hi - v_lo), v_hi - margin (v_hi - v_lo)] so that
    theta is finite (|theta| <= log((1 - margin) / margin) ~ 6.9 by default).

    Args:
      V: array (..., grid, grid), eV.
      bounds: (v_lo, v_hi) in eV.

    Returns:
      array like V, dimensionless.
    """
    lo, hi = bounds
    frac = jnp.clip((jnp.asarray(V) - lo) / (hi - lo), margin, 1.0 - margin)
    return jnp.log(frac) - jnp.log1p(-frac)


def from_theta(theta: ArrayLike, bounds: tuple[float, float] = POTENTIAL_BOUNDS_EV) -> jax.Array:
    """Potential v_lo + (v_hi - v_lo) sigmoid(theta) in eV, strictly inside the bounds."""
    lo, hi = bounds
    return lo + (hi - lo) * jax.nn.sigmoid(jnp.asarray(theta))


def scores(density: ArrayLike, target: ArrayLike, n_electrons: int, config: EDConfig, mean_map: ArrayLike | None = None) -> dict:
    """Per-sample agreement of recomputed and target densities.

    Args:
      density, target: arrays (batch, grid, grid), nm^-2.
      n_electrons: N.
      config: static settings.
      mean_map: (grid, grid) reference mean for R^2 (paper: training-set mean); default the
        mean of `target`.

    Returns:
      dict of arrays (batch,): "l1", "l2", "linf" (nm^-2), "ssim" (data range = the target's
      peak), "displaced_charge"; and "r2", a scalar over the batch.
    """
    density = jnp.asarray(density)
    target = jnp.asarray(target)
    peak = jnp.max(target, axis=(-1, -2))
    out = {
        "l1": metrics.l1(density, target),
        "l2": metrics.l2(density, target),
        "linf": metrics.linf(density, target),
        "ssim": metrics.ssim(density, target, peak),
        "displaced_charge": displaced_charge(density, target, n_electrons, config),
    }
    if mean_map is None and target.shape[0] < 2:
        out["r2"] = jnp.asarray(jnp.nan)
    else:
        out["r2"] = metrics.r2(density, target, mean_map)
    return out


class CheckResult(NamedTuple):
    """Outcome of `check`, per sample (batch axis first).

    potential: (batch, grid, grid) eV, proposed by the map.
    density: (batch, grid, grid) nm^-2, recomputed by ED from `potential`.
    scores: dict from `scores` (per-sample arrays and the batch R^2).
    accepted: (batch,) bool, displaced charge <= threshold.
    """

    potential: jax.Array
    density: jax.Array
    scores: dict
    accepted: jax.Array


@functools.partial(jax.jit, static_argnums=(0, 3, 4, 5))
def _check_graph(apply, variables, target, n_electrons, config, bounds, threshold, mean_map):
    V = jnp.clip(apply(variables, target), bounds[0], bounds[1])
    density = ed.ground_density(V, n_electrons, config)
    s = scores(density, target, n_electrons, config, mean_map)
    return CheckResult(V, density, s, s["displaced_charge"] <= threshold)


def check(
    proposer,
    target: ArrayLike,
    n_electrons: int,
    config: EDConfig = EDConfig(),
    *,
    threshold: float = ACCEPT_CHARGE,
    bounds: tuple[float, float] = POTENTIAL_BOUNDS_EV,
    mean_map: ArrayLike | None = None,
) -> CheckResult:
    """Propose potentials for target densities and verify them by ED, in one jitted graph.

    Args:
      proposer: a pair (apply, variables): `apply(variables, density)` maps (batch, grid, grid)
        densities in nm^-2 to potentials in eV; `apply` must be hashable (a function or
        functools.partial; it is static), `variables` any pytree of arrays (traced). The
        trained n_int -> V generator gives one with `qdjax.ml.evaluate.generator_function`.
      target: array (batch, grid, grid), nm^-2.
      n_electrons: N of the target densities.
      config: ED settings.
      threshold: acceptance bound on the displaced-charge fraction.
      bounds: (v_lo, v_hi) eV; proposals are clipped into them.
      mean_map: (grid, grid) mean density for R^2 (paper: the training-set mean).

    Returns:
      CheckResult.
    """
    apply, variables = proposer
    target = jnp.asarray(target, dtype=config.dtype)
    if target.ndim != 3:
        raise ValueError(f"target must have shape (batch, grid, grid), got {target.shape}")
    ed.validate(target, n_electrons, config)
    if not 0 <= threshold <= 1:
        raise ValueError(f"threshold is a charge fraction in [0, 1], got {threshold}")
    mm = None if mean_map is None else jnp.asarray(mean_map, dtype=config.dtype)
    bounds = tuple(float(b) for b in bounds)
    return _check_graph(apply, variables, target, int(n_electrons), config, bounds, float(threshold), mm)


class RefineResult(NamedTuple):
    """Outcome of `refine`, per sample.

    potential: (batch, grid, grid) eV, best potential found.
    density: (batch, grid, grid) nm^-2, its ED density.
    displaced_charge: (batch,), of the best potential.
    history: (steps_run, batch) displaced charge after each step.
    converged: (batch,) bool, displaced charge reached `target_charge`.
    steps: number of steps run.
    """

    potential: jax.Array
    density: jax.Array
    displaced_charge: jax.Array
    history: np.ndarray
    converged: np.ndarray
    steps: int


def _loss_terms(theta, target, n_electrons, config, bounds):
    density = ed.ground_density(from_theta(theta, bounds), n_electrons, config)
    err = jnp.sum((density - target) ** 2, axis=(-1, -2)) / jnp.sum(target**2, axis=(-1, -2))
    return jnp.sum(err), (density, err)


@functools.partial(jax.jit, static_argnums=(4, 5, 6, 7))
def _refine_step(theta, opt_state, target, active, n_electrons, config, bounds, optimizer):
    (_, (density, err)), grad = jax.value_and_grad(_loss_terms, has_aux=True)(theta, target, n_electrons, config, bounds)
    updates, new_opt_state = optimizer.update(grad, opt_state, theta)
    mask = active[:, None, None]
    new_theta = jnp.where(mask, optax.apply_updates(theta, updates), theta)
    new_opt_state = jax.tree.map(
        lambda new, old: jnp.where(mask, new, old) if getattr(new, "ndim", 0) == 3 else new, new_opt_state, opt_state
    )
    return new_theta, new_opt_state, density, err


def refine(
    V_init: ArrayLike,
    target: ArrayLike,
    n_electrons: int,
    config: EDConfig = EDConfig(),
    *,
    steps: int = 200,
    learning_rate: float = 0.05,
    target_charge: float = 2e-3,
    bounds: tuple[float, float] = POTENTIAL_BOUNDS_EV,
    progress: bool = True,
) -> RefineResult:
    """Refine potentials by gradient descent through the ED until their densities match.

    Args:
      V_init: array (batch, grid, grid), eV, starting potentials (e.g. from `check`).
      target: array (batch, grid, grid), nm^-2, target densities.
      n_electrons: N.
      config: ED settings.
      steps: maximum number of Adam steps.
      learning_rate: Adam step size on theta (dimensionless).
      target_charge: a sample stops once its displaced-charge fraction is below this.
      bounds: (v_lo, v_hi) eV of the parameterisation.
      progress: show a progress bar (tqdm) with the worst displaced charge.

    Returns:
      RefineResult with the best potential per sample.
    """
    V_init = jnp.asarray(V_init, dtype=config.dtype)
    target = jnp.asarray(target, dtype=config.dtype)
    if V_init.ndim != 3 or V_init.shape != target.shape:
        raise ValueError(f"V_init and target must both have shape (batch, grid, grid), got {V_init.shape} and {target.shape}")
    ed.validate(V_init, n_electrons, config)
    ed.validate(target, n_electrons, config)
    if not (isinstance(steps, int) and steps >= 0):
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    if not (learning_rate > 0 and math.isfinite(learning_rate)):
        raise ValueError(f"learning_rate must be positive, got {learning_rate!r}")
    bounds = tuple(float(b) for b in bounds)
    if not bounds[1] > bounds[0]:
        raise ValueError(f"bounds must be (v_lo, v_hi) with v_hi > v_lo, got {bounds}")

    optimizer = optax.adam(learning_rate)
    theta = to_theta(V_init, bounds)
    opt_state = optimizer.init(theta)
    best_theta = theta
    best_q = jnp.full(theta.shape[0], jnp.inf, dtype=theta.dtype)
    active = jnp.ones(theta.shape[0], dtype=bool)
    history = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="refine", unit="step")
    n = int(n_electrons)
    for _ in range(steps + 1):
        # The density returned by a step belongs to theta before that step's update.
        new_theta, new_opt_state, density, _ = _refine_step(theta, opt_state, target, active, n, config, bounds, optimizer)
        q = displaced_charge(density, target, n, config)
        better = q < best_q
        best_q = jnp.where(better, q, best_q)
        best_theta = jnp.where(better[:, None, None], theta, best_theta)
        history.append(np.asarray(q))
        active = active & (q > target_charge)
        if bar is not None:
            bar.set_postfix(worst=f"{float(jnp.max(q)):.2e}", done=f"{int(jnp.sum(~active))}/{q.shape[0]}")
        if not bool(jnp.any(active)) or len(history) > steps:
            break
        theta, opt_state = new_theta, new_opt_state
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    best_V = from_theta(best_theta, bounds)
    best_density = ed.ground_density(best_V, n, config)
    q = displaced_charge(best_density, target, n, config)
    return RefineResult(best_V, best_density, q, np.stack(history), np.asarray(q <= target_charge), len(history) - 1)
