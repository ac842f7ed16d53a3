"""The one-electron problem H0 = -hbar^2/(2 m*) lap + V(r) in the product sine basis.

The kinetic energy is diagonal and analytic; the potential matrix is exact for pixel-wise
constant V (qdjax.basis). The lowest `config.orbitals` eigenpairs define the orbitals of the
many-body problem (Pantis-Simut et al. 2023, section III.1; paper: 32 x 32 basis, 8 orbitals).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from qdjax import basis, linalg
from qdjax.config import EDConfig

#: Eigenvalue gaps below this (eV) count as degenerate when differentiating orbitals; far
#: above the rounding of eigenvalues (~1e-14 eV) and far below physical level spacings.
DEGENERACY_TOL_EV = 1e-9


class Orbitals(NamedTuple):
    """Lowest single-particle eigenstates.

    energies: (..., K) eV, ascending.
    coefficients: (..., basis**2, K), orthonormal columns in the product sine basis.
    """

    energies: jax.Array
    coefficients: jax.Array


def hamiltonian(V: ArrayLike, config: EDConfig) -> jax.Array:
    """Single-particle Hamiltonian matrix.

    H0[(m, n), (m', n')] = delta hbar^2 pi^2 (m^2 + n^2) / (2 m* L^2) + <mn|V|m'n'>.

    Args:
      V: float array (..., grid, grid), eV.
      config: static settings.

    Returns:
      array (..., basis**2, basis**2), eV.
    """
    V = jnp.asarray(V)
    _, kinetic, _ = basis.tables(config)
    return basis.potential_matrix(V, config) + jnp.diag(jnp.asarray(kinetic, dtype=V.dtype))


def solve(V: ArrayLike, config: EDConfig) -> Orbitals:
    """Lowest `config.orbitals` eigenpairs of the single-particle Hamiltonian.

    Dense symmetric diagonalisation; derivatives stay finite at degenerate levels
    (qdjax.linalg.eigh_lowest).

    Args:
      V: float array (..., grid, grid), eV.
      config: static settings.

    Returns:
      Orbitals with energies (..., K) in eV and coefficients (..., basis**2, K).
    """
    return diagonalize(hamiltonian(V, config), config)


def diagonalize(h0: ArrayLike, config: EDConfig) -> Orbitals:
    """Lowest `config.orbitals` eigenpairs of a single-particle Hamiltonian matrix.

    Args:
      h0: array (..., basis**2, basis**2), eV, from `hamiltonian`.
      config: static settings.

    Returns:
      Orbitals with energies (..., K) in eV and coefficients (..., basis**2, K).
    """
    energies, coefficients = linalg.eigh_lowest(h0, config.orbitals, DEGENERACY_TOL_EV)
    return Orbitals(energies, coefficients)
