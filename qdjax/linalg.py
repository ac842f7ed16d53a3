"""Symmetric eigensolvers with derivatives that stay finite at degeneracies.

`jnp.linalg.eigh` differentiates eigenvectors with 1 / (w_i - w_j) for every pair, which is
infinite for degenerate eigenvalues anywhere in the spectrum. Here the pair terms with
|w_i - w_j| <= tol are dropped. That is exact for every quantity that is invariant under
rotations inside each degenerate group (projectors onto eigenspaces, traces over them, and
everything the full configuration interaction computes from the orbitals), which is what the
exact diagonalisation uses (docs/theory.md, "Derivatives").
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def eigh_lowest(h: ArrayLike, k: int, tol: float):
    """Lowest `k` eigenpairs of real symmetric matrices.

    Args:
      h: array (..., n, n), symmetric.
      k: number of eigenpairs kept (static), 1 <= k <= n.
      tol: eigenvalue gaps <= tol count as degenerate in the derivative (same unit as h).

    Returns:
      (w, u): w (..., k) ascending eigenvalues; u (..., n, k) orthonormal eigenvectors.
    """
    w, u = jnp.linalg.eigh(h)
    return w[..., :k], u[..., :, :k]


@eigh_lowest.defjvp
def _eigh_lowest_jvp(k, tol, primals, tangents):
    (h,) = primals
    (dh,) = tangents
    w, u = jnp.linalg.eigh(h)
    dh = 0.5 * (dh + jnp.swapaxes(dh, -1, -2))
    uk = u[..., :, :k]
    omega = jnp.einsum("...ji,...jl,...lk->...ik", u, dh, uk)  # (..., n, k): <u_i| dh |u_k>
    gap = w[..., None, :k] - w[..., :, None]  # (..., n, k): w_k - w_i
    safe = jnp.where(jnp.abs(gap) > tol, gap, 1.0)
    f = jnp.where(jnp.abs(gap) > tol, 1.0 / safe, 0.0)
    dw = jnp.diagonal(omega[..., :k, :], axis1=-2, axis2=-1)
    du = jnp.einsum("...ij,...jk->...ik", u, f * omega)
    return (w[..., :k], uk), (dw, du)
