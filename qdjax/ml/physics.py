"""The physics-consistency term of the inverse generator's loss: the ED in the training step.

An n_int -> V generator G maps a ground-state density n_t (the input) to a potential. The
pix2pix losses only compare G(n_t) with the potential the density came from; where the
density hardly constrains the potential they leave G free to propose potentials whose ground
state is elsewhere. This term solves the ED for the generated potential inside the training
step and compares its ground-state density with the input (the check of
`qdjax.inverse.check`, made differentiable and put into the loss):

    V = from_unit(G(a))                                   (eV; the potential scaler)
    n = ground_density(V, N)                              (nm^-2; qdjax.ed, batched)
    L_ED = mean_batch  sum_ij (n - n_t)^2 / sum_ij n_t^2  ("l2": relative squared L2)
        or mean_batch  (1 / 2N) sum_ij |n - n_t| h^2      ("charge": displaced charge)

and the generator minimises L_G + weight * L_ED. Gradients flow through the whole ED
(orbitals, Coulomb tensor, Fock-space ground state; `qdjax.ed`'s derivative rules, finite at
degenerate levels) into the generator's parameters.

Bounds: the generator's output is tanh(z) in (-1, 1) and the linear potential scaler maps it
to V = lo + (hi - lo) (tanh(z) + 1) / 2 = lo + (hi - lo) sigmoid(2 z), the same bounded
parameterisation as `qdjax.inverse.refine` (`inverse.from_theta` with theta = 2 z): every
potential the ED sees lies strictly between the well depth and the step height.

The target density n_t is the input image mapped back to nm^-2 by the density scaler (linear
or log). The ED runs in `EDConfig.dtype` (float64 by default) with the batching of
`qdjax.backend` (instance by instance on CPU, one vectorised program on accelerators); the
term enters the float32 generator gradient as float32.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from qdjax import ed
from qdjax.config import EDConfig
from qdjax.ml.scaling import Scaler

__all__ = ["ED_LOSSES", "ED_METRIC_NAMES", "EDTerm", "ed_term_loss"]

#: The density misfits the term offers (module docstring).
ED_LOSSES = ("l2", "charge")
#: Per-step metrics a training step with the ED term adds (float32 scalars): g_ed (L_ED,
#: unweighted), ed_l2 and ed_charge (both misfits, batch means).
ED_METRIC_NAMES = ("g_ed", "ed_l2", "ed_charge")


@dataclasses.dataclass(frozen=True)
class EDTerm:
    """Static settings of the ED-consistency term (hashable: a static argument of the step).

    Attributes:
      weight: weight of L_ED in the generator loss (dimensionless, >= 0; 0 leaves the step
        as plain pix2pix but still reports L_ED).
      n_electrons: N of the densities.
      ed_config: `EDConfig` of the dataset (grid = image size, box, basis, orbitals, dtype).
      density_scaler: the input scaler (unit "nm^-2"): generator input -> density.
      potential_scaler: the target scaler (unit "eV", linear): generator output -> potential.
      loss: "l2" (relative squared L2 error, as `qdjax.inverse.refine`) or "charge"
        (displaced-charge fraction, as `qdjax.inverse.displaced_charge`).
    """

    weight: float
    n_electrons: int
    ed_config: EDConfig
    density_scaler: Scaler
    potential_scaler: Scaler
    loss: str = "l2"

    def __post_init__(self):
        w = self.weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not (math.isfinite(w) and w >= 0):
            raise ValueError(f"EDTerm.weight must be a finite number >= 0, got {w!r}")
        object.__setattr__(self, "weight", float(w))
        if not isinstance(self.ed_config, EDConfig):
            raise ValueError(f"EDTerm.ed_config must be an EDConfig, got {type(self.ed_config)}")
        n = self.n_electrons
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 2 * self.ed_config.orbitals:
            raise ValueError(f"EDTerm.n_electrons must be an integer in 1..{2 * self.ed_config.orbitals}, got {n!r}")
        if not isinstance(self.density_scaler, Scaler) or self.density_scaler.unit != "nm^-2":
            raise ValueError("EDTerm.density_scaler must be the Scaler of a density input (unit nm^-2)")
        ps = self.potential_scaler
        if not isinstance(ps, Scaler) or ps.unit != "eV" or ps.transform != "linear":
            raise ValueError("EDTerm.potential_scaler must be the linear Scaler of a potential target (unit eV)")
        if self.loss not in ED_LOSSES:
            raise ValueError(f"EDTerm.loss must be one of {ED_LOSSES}, got {self.loss!r}")

    def to_dict(self) -> dict:
        """JSON-ready description (stored in checkpoints; a resumed run must match it)."""
        return {
            "weight": self.weight,
            "n_electrons": self.n_electrons,
            "ed_config": self.ed_config.to_dict(),
            "density_scaler": self.density_scaler.to_dict(),
            "potential_scaler": self.potential_scaler.to_dict(),
            "loss": self.loss,
        }


def ed_term_loss(fake: jax.Array, inputs: jax.Array, term: EDTerm) -> tuple[jax.Array, dict]:
    """L_ED of a batch of generated potentials (module docstring), traceable and differentiable.

    Args:
      fake: float array (B, S, S, 1) or (B, S, S), generator outputs in (-1, 1), S = grid.
      inputs: float array of the same layout, the generator's input densities in the unit
        range of `term.density_scaler`.
      term: `EDTerm`.
    Returns:
      (loss, metrics): loss a scalar of the ED's dtype (the batch mean of the chosen misfit);
      metrics {"ed_l2": mean relative squared L2 error, "ed_charge": mean displaced-charge
      fraction}, float32 scalars.
    """
    cfg = term.ed_config
    dtype = jnp.dtype(cfg.dtype)
    y = fake[..., 0] if fake.ndim == 4 else fake
    x = inputs[..., 0] if inputs.ndim == 4 else inputs
    if y.shape[-2:] != (cfg.grid, cfg.grid) or x.shape != y.shape:
        raise ValueError(f"generated and input images must be (B, {cfg.grid}, {cfg.grid}[, 1]), got {fake.shape}, {inputs.shape}")
    V = term.potential_scaler.from_unit(y.astype(dtype))
    target = term.density_scaler.from_unit(x.astype(dtype))
    n = ed.ground_density(V, term.n_electrons, cfg)
    diff = n - target
    l2 = jnp.sum(diff**2, axis=(-1, -2)) / jnp.sum(target**2, axis=(-1, -2))
    charge = 0.5 * jnp.sum(jnp.abs(diff), axis=(-1, -2)) * cfg.pixel_nm**2 / term.n_electrons
    loss = jnp.mean(l2) if term.loss == "l2" else jnp.mean(charge)
    metrics = {"ed_l2": jnp.mean(l2).astype(jnp.float32), "ed_charge": jnp.mean(charge).astype(jnp.float32)}
    return loss, metrics
