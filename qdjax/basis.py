"""The product sine basis of the hard-wall box and its pixel tables.

Basis functions phi_m(x) phi_n(y), phi_m(x) = sqrt(2/L) sin(m pi x / L), m, n = 1..basis, with
the flat index (m, n) -> (m - 1) * basis + (n - 1). The potential is piecewise constant on
pixels; pixel i covers [i h, (i + 1) h], h = L / grid. Everything that couples the basis to the
pixel grid goes through one table,

    A[i, m, m'] = int_{i h}^{(i+1) h} phi_m(x) phi_m'(x) dx        (dimensionless),

evaluated in closed form (phi_m phi_m' = (cos((m - m') pi x / L) - cos((m + m') pi x / L)) / L).
It gives the exact potential matrix and, as its adjoint, the pixel-averaged density
(docs/theory.md, "Pixels").

Host tables are NumPy float64, built once per configuration (functools.lru_cache; they depend
only on the static configuration) and marked read-only.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from qdjax import units
from qdjax.config import EDConfig


def _read_only(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


@functools.lru_cache(maxsize=32)
def overlap_table(length_nm: float, grid: int, basis: int) -> np.ndarray:
    """Pixel overlap integrals A[i, m, m'] of the sine functions.

    Args:
      length_nm: box side L, nm.
      grid: pixels per side.
      basis: sine functions per direction.

    Returns:
      float64 array (grid, basis, basis), dimensionless; sum over i is the identity matrix.
    """
    h = length_nm / grid
    edges = np.arange(grid + 1) * h
    m = np.arange(1, basis + 1)
    k_minus = (m[:, None] - m[None, :]) * np.pi / length_nm
    k_plus = (m[:, None] + m[None, :]) * np.pi / length_nm

    def cos_integral(k):
        # int_{x0}^{x1} cos(k x) dx for every pixel, k of shape (basis, basis).
        x0 = edges[:-1, None, None]
        x1 = edges[1:, None, None]
        safe_k = np.where(k == 0.0, 1.0, k)
        return np.where(k == 0.0, x1 - x0, (np.sin(k * x1) - np.sin(k * x0)) / safe_k)

    return _read_only((cos_integral(k_minus) - cos_integral(k_plus)) / length_nm)


@functools.lru_cache(maxsize=32)
def sine_values(length_nm: float, grid: int, basis: int) -> np.ndarray:
    """phi_m at the pixel centres x_i = (i + 1/2) h.

    Returns:
      float64 array (grid, basis), nm^-1/2.
    """
    x = (np.arange(grid) + 0.5) * (length_nm / grid)
    m = np.arange(1, basis + 1)
    return _read_only(np.sqrt(2.0 / length_nm) * np.sin(np.pi * x[:, None] * m[None, :] / length_nm))


@functools.lru_cache(maxsize=32)
def kinetic_energies(length_nm: float, basis: int, m_eff: float) -> np.ndarray:
    """Kinetic energies of the product functions, hbar^2 pi^2 (m^2 + n^2) / (2 m* L^2).

    Returns:
      float64 array (basis**2,), eV, flat index (m - 1) * basis + (n - 1).
    """
    m2 = np.arange(1, basis + 1) ** 2
    e = units.kinetic_prefactor(m_eff) * (np.pi / length_nm) ** 2 * (m2[:, None] + m2[None, :])
    return _read_only(e.reshape(-1))


def tables(config: EDConfig):
    """(A, kinetic energies, sine values at pixel centres) for `config`, see above."""
    return (
        overlap_table(config.length_nm, config.grid, config.basis),
        kinetic_energies(config.length_nm, config.basis, config.m_eff),
        sine_values(config.length_nm, config.grid, config.basis),
    )


def potential_matrix(V: ArrayLike, config: EDConfig) -> jnp.ndarray:
    """Exact matrix of a pixel-wise constant potential in the product sine basis.

    <mn|V|m'n'> = sum_ij V[i, j] A[i, m, m'] A[j, n, n'].

    Args:
      V: float array (..., grid, grid), eV, V[i, j] = V(x_i, y_j).
      config: static settings.

    Returns:
      array (..., basis**2, basis**2), eV, symmetric.
    """
    a = jnp.asarray(overlap_table(config.length_nm, config.grid, config.basis), dtype=V.dtype)
    t = jnp.einsum("...ij,jnl->...inl", V, a)
    vm = jnp.einsum("imk,...inl->...mnkl", a, t)
    b2 = config.basis**2
    return vm.reshape(vm.shape[:-4] + (b2, b2))


def pixel_average(G: ArrayLike, config: EDConfig) -> jnp.ndarray:
    """Pixel averages of a one-body density given by its matrix in the product sine basis.

    n[i, j] = (1 / h^2) sum G[(m, n), (m', n')] A[i, m, m'] A[j, n, n'], the adjoint of
    `potential_matrix`, so that sum_ij V[i, j] n[i, j] h^2 = trace(G <V>) exactly.

    Args:
      G: array (..., basis**2, basis**2), the density matrix sum_pq gamma_pq c_p c_q^T.
      config: static settings.

    Returns:
      array (..., grid, grid), nm^-2 (pixel-averaged density).
    """
    b = config.basis
    a = jnp.asarray(overlap_table(config.length_nm, config.grid, b), dtype=G.dtype)
    g4 = G.reshape(G.shape[:-2] + (b, b, b, b))
    t = jnp.einsum("jnl,...mnkl->...jmk", a, g4)
    n = jnp.einsum("imk,...jmk->...ij", a, t)
    return n / config.pixel_nm**2


def on_grid(coefficients: ArrayLike, config: EDConfig) -> jnp.ndarray:
    """Orbitals sampled at pixel centres.

    psi_p(x_i, y_j) = sum_mn C[(m, n), p] phi_m(x_i) phi_n(y_j).

    Args:
      coefficients: array (..., basis**2, K), orthonormal columns.
      config: static settings.

    Returns:
      array (..., K, grid, grid), nm^-1.
    """
    b = config.basis
    s = jnp.asarray(sine_values(config.length_nm, config.grid, b), dtype=coefficients.dtype)
    c = coefficients.reshape(coefficients.shape[:-2] + (b, b, coefficients.shape[-1]))
    return jnp.einsum("im,...mnp,jn->...pij", s, c, s)
