"""Confinement potentials on the pixel grid: random quantum-well maps, harmonic trap, empty box.

All maps are float64 NumPy arrays of shape (grid, grid) in eV with V[i, j] = V(x_i, y_j)
(x is the first index); pixel (i, j) covers [i h, (i+1) h] x [j h, (j+1) h], h = L / grid.
They are built on the host (NumPy), are pure functions of their arguments, and are meant to
be passed to the exact diagonalisation, which treats V as piecewise constant on pixels.

Random maps follow Pantis-Simut et al., Mach. Learn.: Sci. Technol. 4, 025023 (2023),
arXiv:2301.02122, section II:

1. start from a flat step V = v_step (paper: Vs = 0.5 eV);
2. place n_wells (paper: N_qw = 25) flat circular wells of depth v_well (paper: V0 = 0 eV),
   centres uniform in [0, L]^2, radii uniform in radius_range * L (paper: L/16 < R < L/8);
3. the first well is placed freely; each further well must touch the well placed just before
   it (centre distance <= r_new + r_current) and may overlap it by at most max_overlap
   (paper: 3/4) of the NEW well's area, with the exact circle-circle lens area; otherwise its
   centre and radius are drawn again;
4. if the wells cover more than max_coverage (paper: 80%) of the box, the whole map is
   discarded and drawn again from step 2.

Conventions fixed here (the paper leaves them open):

- Rasterisation: a pixel takes v_well when its centre lies in a closed disk of some well,
  otherwise v_step. Wells may reach past the box edges; only pixels inside the box exist.
- Coverage is the fraction of pixels at v_well (the area the ED actually sees), not the
  continuum area of the union of disks.
- Random stream: seed -> ``np.random.default_rng(np.random.SeedSequence(entropy))`` with
  ``entropy = seed`` for a non-negative integer, and ``entropy`` = the list of uint32 words of
  ``jax.random.key_data(key)`` for a jax key (typed or legacy uint32[2]; both forms of the same
  key give the same map). A well is drawn from uniforms u = rng.random(3) (first well) or from
  blocks u = rng.random((32, 3)) whose first admissible row is taken (further wells), as
  (cx, cy, r) = (L u0, L u1, L (r_lo + (r_hi - r_lo) u2)).
- Guards: a well that finds no admissible position in 100_000 draws, or a map that exceeds
  max_coverage 1000 times in a row, raises RuntimeError naming the parameter to relax.

With the paper's parameters the 80% rule is inactive in practice: over seeds 0..9999 the
coverage has mean 0.30, 99th percentile 0.46 and maximum 0.54.

Measured speed (2-core CPU, paper parameters, 64 x 64): 1000 maps in 0.5-0.8 s
(benchmarks/bench_potentials.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.typing import ArrayLike

from qdjax.config import EDConfig

__all__ = ["random_wells", "random_potential", "random_potentials", "harmonic", "empty_box"]

#: Candidates drawn at once when placing a well after the first (part of the random stream).
_BLOCK = 32
#: Draws allowed per well before giving up (max_overlap or radius_range too restrictive).
_MAX_DRAWS_PER_WELL = 100_000
#: Whole maps allowed to exceed max_coverage before giving up.
_MAX_MAPS = 1000


# ----------------------------------------------------------------------------- validation


def _check_config(config: Any) -> None:
    if not isinstance(config, EDConfig):
        raise ValueError(f"config must be a qdjax.EDConfig, got {type(config).__name__}")


def _entropy(seed: Any) -> int | list[int]:
    """SeedSequence entropy for a non-negative integer seed or a single jax.random key."""
    if isinstance(seed, bool):
        raise ValueError(f"seed must be a non-negative integer or a jax.random key, got {seed!r}")
    if isinstance(seed, (int, np.integer)):
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {int(seed)}")
        return int(seed)
    if isinstance(seed, jax.core.Tracer):
        raise ValueError("random potentials are drawn on the host; pass a concrete seed or key, not a traced value")
    if isinstance(seed, (jax.Array, np.ndarray)):
        if jax.dtypes.issubdtype(seed.dtype, jax.dtypes.prng_key):
            if seed.shape != ():
                raise ValueError(f"expected a single jax.random key, got a key array of shape {seed.shape}")
            data = np.asarray(jax.random.key_data(seed))
            return [int(w) for w in data.ravel()]
        if seed.dtype == np.uint32 and seed.shape == (2,):  # legacy jax.random.PRNGKey
            return [int(w) for w in np.asarray(seed)]
        if seed.shape == () and np.issubdtype(seed.dtype, np.integer):
            return _entropy(int(seed))
    raise ValueError(
        "seed must be a non-negative integer or a jax.random key (typed key or legacy uint32[2]), "
        f"got {seed!r}"
    )


def _check_geometry(n_wells: int, radius_range: Sequence[float], max_overlap: float, max_coverage: float) -> None:
    if isinstance(n_wells, bool) or not isinstance(n_wells, (int, np.integer)) or n_wells < 1:
        raise ValueError(f"n_wells must be an integer >= 1, got {n_wells!r}")
    try:
        lo, hi = (float(r) for r in radius_range)
    except (TypeError, ValueError):
        raise ValueError(
            f"radius_range must be a pair (r_min, r_max) of fractions of L, got {radius_range!r}"
        ) from None
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= hi):
        raise ValueError(f"radius_range must satisfy 0 < r_min <= r_max (finite, fractions of L), got {radius_range!r}")
    if not (isinstance(max_overlap, (int, float)) and 0 < max_overlap <= 1):
        raise ValueError(f"max_overlap must be in (0, 1] (fraction of the new well's area), got {max_overlap!r}")
    if not (isinstance(max_coverage, (int, float)) and 0 < max_coverage <= 1):
        raise ValueError(f"max_coverage must be in (0, 1] (fraction of the box), got {max_coverage!r}")


def _check_levels(v_step: float, v_well: float) -> None:
    for name, value in (("v_step", v_step), ("v_well", v_well)):
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)):
            raise ValueError(f"{name} must be a finite number (eV), got {value!r}")


# ----------------------------------------------------------------------------- geometry


def _lens_area(d: float, r1: float, r2: float) -> float:
    """Exact area of the intersection of two disks (radii r1, r2, centre distance d), nm^2."""
    if d >= r1 + r2:
        return 0.0
    if d <= abs(r1 - r2):
        return math.pi * min(r1, r2) ** 2
    a1 = math.acos(min(1.0, max(-1.0, (d * d + r1 * r1 - r2 * r2) / (2 * d * r1))))
    a2 = math.acos(min(1.0, max(-1.0, (d * d + r2 * r2 - r1 * r1) / (2 * d * r2))))
    kite = (-d + r1 + r2) * (d + r1 - r2) * (d - r1 + r2) * (d + r1 + r2)
    return r1 * r1 * a1 + r2 * r2 * a2 - 0.5 * math.sqrt(max(kite, 0.0))


def _well_mask(centres: np.ndarray, radii: np.ndarray, config: EDConfig) -> np.ndarray:
    """Pixels whose centre lies in any closed disk: bool (grid, grid), [i, j] <-> (x_i, y_j)."""
    x = (np.arange(config.grid) + 0.5) * config.pixel_nm  # pixel centres, nm
    dx2 = (x[None, :] - centres[:, :1]) ** 2  # (n_wells, grid)
    dy2 = (x[None, :] - centres[:, 1:]) ** 2
    return (dx2[:, :, None] + dy2[:, None, :] <= (radii**2)[:, None, None]).any(axis=0)


def _place_wells(rng: np.random.Generator, config: EDConfig, n_wells: int, lo: float, hi: float,
                 max_overlap: float) -> tuple[np.ndarray, np.ndarray]:
    """One chain of wells by the paper's rules, before the coverage test."""
    L = config.length_nm
    centres = np.empty((n_wells, 2))
    radii = np.empty(n_wells)
    u = rng.random(3)
    centres[0], radii[0] = L * u[:2], L * (lo + (hi - lo) * u[2])
    for k in range(1, n_wells):
        c_cur, r_cur = centres[k - 1], float(radii[k - 1])
        for _ in range(-(-_MAX_DRAWS_PER_WELL // _BLOCK)):
            u = rng.random((_BLOCK, 3))
            c = L * u[:, :2]
            r = L * (lo + (hi - lo) * u[:, 2])
            d = np.hypot(c[:, 0] - c_cur[0], c[:, 1] - c_cur[1])
            first = next(
                (int(m) for m in np.flatnonzero(d <= r + r_cur)  # touches the current well
                 if _lens_area(float(d[m]), float(r[m]), r_cur) <= max_overlap * math.pi * float(r[m]) ** 2),
                None,
            )
            if first is not None:
                centres[k], radii[k] = c[first], r[first]
                break
        else:
            raise RuntimeError(
                f"could not place well {k} touching its predecessor with overlap <= "
                f"max_overlap={max_overlap} of its area in {_MAX_DRAWS_PER_WELL} draws; "
                "relax max_overlap (or widen radius_range)"
            )
    return centres, radii


def _draw_map(seed: Any, config: EDConfig, n_wells: int, radius_range: Sequence[float], max_overlap: float,
              max_coverage: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(centres, radii, mask) of one accepted map; inputs already validated."""
    rng = np.random.default_rng(np.random.SeedSequence(_entropy(seed)))
    lo, hi = (float(r) for r in radius_range)
    for _ in range(_MAX_MAPS):
        centres, radii = _place_wells(rng, config, int(n_wells), lo, hi, max_overlap)
        mask = _well_mask(centres, radii, config)
        if mask.mean() <= max_coverage:
            return centres, radii, mask
    raise RuntimeError(
        f"every one of {_MAX_MAPS} maps covered more than max_coverage={max_coverage} of the box; "
        "relax max_coverage (or lower n_wells / radius_range)"
    )


# ----------------------------------------------------------------------------- public API


def random_wells(
    seed: int | ArrayLike,
    config: EDConfig = EDConfig(),
    *,
    n_wells: int = 25,
    radius_range: tuple[float, float] = (1 / 16, 1 / 8),
    max_overlap: float = 0.75,
    max_coverage: float = 0.8,
) -> tuple[np.ndarray, np.ndarray]:
    """Well geometry of one random map (Pantis-Simut et al. 2023, section II).

    Args:
      seed: non-negative Python/NumPy integer, or one jax.random key (typed key or legacy
        uint32[2]); the result is a deterministic function of it (see module docstring).
      config: sets L = config.length_nm and the grid used for the coverage test.
      n_wells: number of wells N_qw (paper: 25).
      radius_range: (r_min, r_max) as fractions of L; radii are uniform in [r_min L, r_max L]
        (paper: 1/16, 1/8).
      max_overlap: largest allowed lens area between a new well and its predecessor, as a
        fraction of the new well's area, in (0, 1] (paper: 3/4).
      max_coverage: largest allowed fraction of pixels inside wells, in (0, 1] (paper: 0.8).

    Returns:
      centres: float64 (n_wells, 2), nm, in [0, L]^2, in placement order (x, y).
      radii: float64 (n_wells,), nm.

    Raises:
      ValueError: invalid seed, config or parameters.
      RuntimeError: the parameters make a map (practically) impossible to complete.
    """
    _check_config(config)
    _entropy(seed)
    _check_geometry(n_wells, radius_range, max_overlap, max_coverage)
    centres, radii, _ = _draw_map(seed, config, n_wells, radius_range, max_overlap, max_coverage)
    return centres, radii


def random_potential(
    seed: int | ArrayLike,
    config: EDConfig = EDConfig(),
    *,
    v_step: float = 0.5,
    v_well: float = 0.0,
    n_wells: int = 25,
    radius_range: tuple[float, float] = (1 / 16, 1 / 8),
    max_overlap: float = 0.75,
    max_coverage: float = 0.8,
) -> np.ndarray:
    """One random quantum-well confinement potential (Pantis-Simut et al. 2023, section II).

    The wells of `random_wells` (same seed and parameters) rasterised on the pixel grid:
    V[i, j] = v_well if the centre ((i + 1/2) h, (j + 1/2) h) of pixel (i, j) lies in a well,
    else v_step.

    Args:
      seed: non-negative integer or one jax.random key; see `random_wells`.
      config: box size L (nm) and grid.
      v_step: barrier height Vs outside the wells, eV (paper: 0.5).
      v_well: well bottom V0, eV (paper: 0).
      n_wells, radius_range, max_overlap, max_coverage: see `random_wells`.

    Returns:
      float64 (grid, grid), eV, values in {v_well, v_step}, V[i, j] = V(x_i, y_j).
    """
    _check_config(config)
    _entropy(seed)
    _check_levels(v_step, v_well)
    _check_geometry(n_wells, radius_range, max_overlap, max_coverage)
    _, _, mask = _draw_map(seed, config, n_wells, radius_range, max_overlap, max_coverage)
    return np.where(mask, float(v_well), float(v_step))


def _seed_list(seeds: Any) -> list[Any]:
    """Split a batch of seeds or keys into single seeds."""
    if isinstance(seeds, (jax.Array, np.ndarray)):
        if jax.dtypes.issubdtype(seeds.dtype, jax.dtypes.prng_key):
            if seeds.ndim != 1:
                raise ValueError(f"seeds: expected a 1-D array of jax.random keys, got shape {seeds.shape}")
            return [seeds[k] for k in range(seeds.shape[0])]
        if seeds.dtype == np.uint32 and seeds.ndim == 2 and seeds.shape[1] == 2:  # legacy keys
            return [seeds[k] for k in range(seeds.shape[0])]
        if seeds.ndim == 1 and np.issubdtype(seeds.dtype, np.integer):
            return [int(s) for s in np.asarray(seeds)]
        raise ValueError(
            "seeds: expected a 1-D integer array, a 1-D array of typed keys or an (n, 2) uint32 "
            f"array of legacy keys, got dtype {seeds.dtype} and shape {seeds.shape}"
        )
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, (Sequence, range)):
        raise ValueError(f"seeds must be a sequence of seeds or an array of keys, got {type(seeds).__name__}")
    return list(seeds)


def random_potentials(
    seeds: Sequence[int] | ArrayLike,
    config: EDConfig = EDConfig(),
    *,
    v_step: float = 0.5,
    v_well: float = 0.0,
    n_wells: int = 25,
    radius_range: tuple[float, float] = (1 / 16, 1 / 8),
    max_overlap: float = 0.75,
    max_coverage: float = 0.8,
) -> np.ndarray:
    """A stack of random potentials, out[k] == random_potential(seeds[k], ...).

    Each map is generated independently from its own seed, so a data set can be grown or
    split without changing existing maps. Rasterisation and well placement are vectorised
    with NumPy; measured on a 2-core CPU, 1000 paper-size maps (64 x 64) take 0.5-0.8 s
    (``python benchmarks/bench_potentials.py``, docs/benchmarks.md).

    Args:
      seeds: sequence of non-negative integers or jax.random keys, a 1-D integer array, a
        1-D array of typed keys (e.g. ``jax.random.split(key, n)``) or an (n, 2) uint32 array
        of legacy keys.
      config, v_step, v_well, n_wells, radius_range, max_overlap, max_coverage: see
        `random_potential`.

    Returns:
      float64 (n, grid, grid), eV.
    """
    _check_config(config)
    seed_list = _seed_list(seeds)
    for s in seed_list:
        _entropy(s)
    _check_levels(v_step, v_well)
    _check_geometry(n_wells, radius_range, max_overlap, max_coverage)
    out = np.empty((len(seed_list), config.grid, config.grid))
    for k, s in enumerate(seed_list):
        _, _, mask = _draw_map(s, config, n_wells, radius_range, max_overlap, max_coverage)
        out[k] = np.where(mask, float(v_well), float(v_step))
    return out


def harmonic(config: EDConfig, hbar_omega: float, center: ArrayLike | None = None) -> np.ndarray:
    """Pixel-averaged isotropic harmonic trap V = (1/2) m* w^2 |r - c|^2.

    With (1/2) m* w^2 = (hbar w)^2 / (4 hbar^2 / (2 m*)) (hbar^2/(2 m*) =
    config.kinetic_prefactor, eV nm^2). Because the ED treats V as piecewise constant on
    pixels, each pixel holds the exact average of V over it: the mean of (x - c_x)^2 over
    [x0, x1] is (u0^2 + u0 u1 + u1^2) / 3 with u = x - c_x, i.e. ((x_mid - c_x)^2 + h^2/12).
    Used as the oscillator test case of the ED (levels hbar w (n + 1) when the box is large
    compared to the oscillator length); not part of the paper's data set.

    Args:
      config: box size L (nm), grid, effective mass.
      hbar_omega: oscillator energy hbar w > 0, eV.
      center: (2,) trap centre (x, y) in nm; default (L/2, L/2).

    Returns:
      float64 (grid, grid), eV, V[i, j] = average over pixel (i, j).
    """
    _check_config(config)
    if isinstance(hbar_omega, bool) or not isinstance(hbar_omega, (int, float, np.floating, np.integer)) \
            or not (math.isfinite(hbar_omega) and hbar_omega > 0):
        raise ValueError(f"hbar_omega must be a positive finite energy in eV, got {hbar_omega!r}")
    L = config.length_nm
    c = np.array([L / 2, L / 2]) if center is None else np.asarray(center, dtype=float)
    if c.shape != (2,) or not np.all(np.isfinite(c)):
        raise ValueError(f"center must be a finite (x, y) pair in nm, got {center!r}")
    k = float(hbar_omega) ** 2 / (4.0 * config.kinetic_prefactor)  # (1/2) m* w^2, eV / nm^2
    edges = np.arange(config.grid + 1) * config.pixel_nm
    u = edges[None, :] - c[:, None]  # (2, grid + 1), nm
    mean_sq = (u[:, :-1] ** 2 + u[:, :-1] * u[:, 1:] + u[:, 1:] ** 2) / 3.0  # (2, grid), nm^2
    return k * (mean_sq[0][:, None] + mean_sq[1][None, :])


def empty_box(config: EDConfig) -> np.ndarray:
    """V = 0 everywhere: the hard-wall square box alone. float64 (grid, grid), eV."""
    _check_config(config)
    return np.zeros((config.grid, config.grid))
