"""The one-electron problem H0 = -hbar^2/(2 m*) lap + V(r) in the product sine basis.

The kinetic energy is diagonal and analytic; the potential matrix is exact for pixel-wise
constant V (qdjax.basis). The lowest `config.orbitals` eigenpairs define the orbitals of the
many-body problem (Pantis-Simut et al. 2023, section III.1; paper: 32 x 32 basis, 8 orbitals).

Two solvers give the same orbitals:

- `solve` / `diagonalize`: dense symmetric eigendecomposition of the basis^2 x basis^2 matrix
  (the reference; O(basis^6)).
- `solve_iterative` (and `solve_iterative_h1`, which also returns h1 = U^T H0 U from the
  products H0 U the iteration carries): LOBPCG (qdjax.linalg.lobpcg) on the matrix-free
  H0 X = T X + <V> X (qdjax.basis.apply_potential_kernels, O(basis^3) per column, with the blocks of
  qdjax.basis.potential_kernels built once per potential), started from and preconditioned by the
  exact solution in the `COARSE_MODES` lowest kinetic modes (block Jacobi: the coarse block of
  H0 inverted exactly, (T + mean(V) - sigma)^-1 on the other modes). Its derivative is written
  out (custom JVP, transposed by JAX for jax.grad): inside the K orbitals the pair terms
  1/(w_k - w_j) with the same degenerate-pair rule as the dense path; the part outside span(U)
  from the Sternheimer equation (Q H0 Q - w_k) y_k = -Q dH0 u_k, Q = 1 - U U^T, solved by
  preconditioned conjugate gradients (qdjax.linalg.pcg). This assumes a gap between w_K and
  w_{K+1} (the K-th and (K+1)-th levels are not degenerate): a degenerate pair straddling the
  K boundary makes the truncated many-body problem itself depend on the arbitrary choice of
  vectors, and the dense path then keeps one choice without derivative coupling; the iterative
  path's Sternheimer solve is then ill-conditioned and stops at its iteration limit.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from qdjax import backend, basis, linalg
from qdjax.config import EDConfig

#: Eigenvalue gaps below this (eV) count as degenerate when differentiating orbitals; far
#: above the rounding of eigenvalues (~1e-14 eV) and far below physical level spacings.
DEGENERACY_TOL_EV = 1e-9

#: Lowest kinetic modes in which H0 is diagonalised exactly to start and precondition LOBPCG.
COARSE_MODES = 64
#: LOBPCG convergence: every target residual ||H0 u - w u|| below this (eV). In float64 this
#: gives orbital energies to ~1e-15 eV and orbitals to ~1e-11 (the error of a Ritz value is
#: quadratic in the residual); in float32 it sits just above the rounding floor.
RESIDUAL_TOL_EV = {"float64": 1e-10, "float32": 2e-5}
#: LOBPCG iteration limit. Only the K wanted orbitals carry a search direction
#: (qdjax.linalg.lobpcg, n_expand = K). Samples 0-999 of the dataset with seed 0 need 16
#: iterations (median) and at most 32 in float64; in float32 samples 0-299 need 7, at most 12.
MAX_ITERATIONS = 80
#: Sternheimer conjugate gradients: relative residual and iteration limit.
STERNHEIMER_TOL = {"float64": 1e-12, "float32": 1e-5}
STERNHEIMER_MAX_ITERATIONS = 300


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
    energies, coefficients = linalg.eigh_lowest(
        h0, config.orbitals, DEGENERACY_TOL_EV, backend.per_instance_kernels(config.batching)
    )
    return Orbitals(energies, coefficients)


def guard_vectors(orbitals: int) -> int:
    """Extra LOBPCG vectors beyond the K wanted ones: max(2, K / 2)."""
    return max(2, orbitals // 2)


@functools.lru_cache(maxsize=32)
def _coarse_modes(length_nm: float, basis_size: int, m_eff: float, count: int) -> np.ndarray:
    kinetic = basis.kinetic_energies(length_nm, basis_size, m_eff)
    modes = np.sort(np.argsort(kinetic, kind="stable")[:count])
    modes.flags.writeable = False
    return modes


def iterative_supported(config: EDConfig) -> bool:
    """Whether the basis is large enough for `solve_iterative` (3 blocks fit, coarse space too)."""
    block = config.orbitals + guard_vectors(config.orbitals)
    return config.basis**2 >= max(3 * block, 2 * COARSE_MODES) and block <= COARSE_MODES


class _Setup(NamedTuple):
    kernels: jax.Array  # (2b-1, b, b) eV, basis.potential_kernels
    kinetic: jax.Array  # (b^2,) eV
    high: jax.Array  # (b^2,) eV, T + mean(V): diagonal model of H0 outside the coarse modes
    coarse_values: jax.Array  # (s,) eV, eigenvalues of the coarse block
    coarse_vectors: jax.Array  # (s, s)


def _setup(V: jax.Array, config: EDConfig) -> _Setup:
    modes = _coarse_modes(config.length_nm, config.basis, config.m_eff, COARSE_MODES)
    _, kinetic, _ = basis.tables(config)
    kinetic = jnp.asarray(kinetic, dtype=V.dtype)
    block = basis.potential_submatrix(V, modes, config) + jnp.diag(kinetic[modes])
    lam, z = linalg.symmetric_eigh(block, backend.per_instance_kernels(config.batching))
    return _Setup(basis.potential_kernels(V, config), kinetic, kinetic + jnp.mean(V), lam, z)


def _apply_h0(setup: _Setup, x: jax.Array, config: EDConfig) -> jax.Array:
    return setup.kinetic[:, None] * x + basis.apply_potential_kernels(setup.kernels, x, config)


def _lobpcg(V: jax.Array, config: EDConfig):
    """Lowest K eigenpairs by LOBPCG; returns (energies, coefficients, H0 coefficients,
    residuals, setup)."""
    k = config.orbitals
    block = k + guard_vectors(k)
    modes = _coarse_modes(config.length_nm, config.basis, config.m_eff, COARSE_MODES)
    setup = _setup(V, config)
    lam, z = setup.coarse_values, setup.coarse_vectors
    # Block-Jacobi preconditioner around sigma, a little below the lowest coarse level (an upper
    # bound of the lowest level), so that both blocks are positive definite.
    spread = lam[block] - lam[0]
    sigma = lam[0] - 0.05 * spread
    high = jnp.maximum(setup.high - sigma, spread)
    inverse = (z / (lam - sigma)[None, :]) @ z.T

    def precondition(r, theta):
        out = r / high[:, None]
        return out.at[modes].set(inverse @ r[modes])

    x0 = jnp.zeros((config.basis**2, block), V.dtype).at[modes].set(z[:, :block])
    result = linalg.lobpcg(
        lambda x: _apply_h0(setup, x, config),
        x0,
        precondition,
        n_target=k,
        tol=RESIDUAL_TOL_EV[config.dtype],
        max_iterations=MAX_ITERATIONS,
        n_expand=k,
        sequential=backend.per_instance_kernels(config.batching),
    )
    return result.values[:k], result.vectors[:, :k], result.products[:, :k], result.residuals[:k], setup


def _symmetric(a: jax.Array) -> jax.Array:
    return 0.5 * (a + a.T)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _lowest(V: jax.Array, config: EDConfig):
    w, u, hu, residuals, _ = _lobpcg(V, config)
    return w, u, _symmetric(u.T @ hu), residuals


@_lowest.defjvp
def _lowest_jvp(config, primals, tangents):
    with backend.full_precision(primals[0].dtype):
        return _lowest_jvp_terms(config, primals, tangents)


def _lowest_jvp_terms(config, primals, tangents):
    (V,) = primals
    (dV,) = tangents
    w, u, hu, residuals, setup = _lobpcg(V, config)
    modes = _coarse_modes(config.length_nm, config.basis, config.m_eff, COARSE_MODES)
    k = config.orbitals
    # First order: dH0 u_k through the same matrix-free product.
    dhu = basis.apply_potential(basis.potential_spectrum(dV, config), u, config)
    omega = u.T @ dhu  # (K, K): <u_i| dH0 |u_k>
    gap = w[None, :] - w[:, None]  # w_k - w_i
    inside = jnp.abs(gap) > DEGENERACY_TOL_EV
    f = jnp.where(inside, 1.0 / jnp.where(inside, gap, 1.0), 0.0)
    dw = jnp.diagonal(omega)

    def project(y):
        return y - u @ (u.T @ y)

    def matvec(y):
        return project(_apply_h0(setup, y, config) - y * w[None, :])

    lam, z = setup.coarse_values, setup.coarse_vectors
    scale = lam[-1] - lam[0]
    # SPD preconditioner of Q (H0 - w_k) Q: coarse levels above K shifted by w_k (floored), the
    # coarse levels inside K (projected out anyway) and the other modes by a kinetic model.
    shifted = lam[:, None] - w[None, :]
    coarse = jnp.where(jnp.arange(lam.shape[0])[:, None] < k, scale, jnp.maximum(shifted, 1e-3 * scale))
    high = jnp.maximum(setup.high[:, None] - w[None, :], scale)

    def precondition(r):
        r = project(r)
        out = r / high
        out = out.at[modes].set(z @ ((z.T @ r[modes]) / coarse))
        return project(out)

    def solve(matvec, b):
        # The solution map b -> (Q (H0 - w) Q)^+ Q b is symmetric, so it is its own transpose
        # (reverse mode passes cotangents that are not in range(Q)).
        # Projected twice (see qdjax.linalg.lowest_eigenpairs: a cotangent nearly inside
        # range(U) keeps a rounding part there after one projection).
        b = project(project(b))
        return linalg.pcg(matvec, b, precondition, STERNHEIMER_TOL[config.dtype], STERNHEIMER_MAX_ITERATIONS)

    rhs = -(dhu - u @ omega)
    y = jax.lax.custom_linear_solve(matvec, rhs, solve, symmetric=True)
    du = u @ (f * omega) + y
    # h1 = U^T H0 U: dh1 = dU^T H0 U + U^T dH0 U + U^T H0 dU, with H0 U carried by LOBPCG.
    dh1 = _symmetric(omega + 2.0 * (du.T @ hu))
    return (w, u, _symmetric(u.T @ hu), residuals), (dw, du, dh1, jnp.zeros_like(residuals))


def solve_iterative(V: ArrayLike, config: EDConfig) -> tuple[Orbitals, jax.Array]:
    """Lowest `config.orbitals` eigenpairs by matrix-free LOBPCG (module docstring).

    Args:
      V: float array (grid, grid), eV (one potential; use jax.vmap for a batch).
      config: static settings; `iterative_supported(config)` must hold.

    Returns:
      (Orbitals, residuals): residuals (K,) eV, ||H0 u_k - w_k u_k||; converged where
      <= RESIDUAL_TOL_EV[config.dtype]. Each orbital's largest coefficient is positive (its
      sign is otherwise arbitrary, and so is the basis inside a degenerate level).
    """
    orbitals, _, residuals = solve_iterative_h1(V, config)
    return orbitals, residuals


def solve_iterative_h1(V: ArrayLike, config: EDConfig) -> tuple[Orbitals, jax.Array, jax.Array]:
    """`solve_iterative` and the one-body matrix h1 = U^T H0 U of the orbitals.

    h1 equals diag(energies) up to the residuals, but unlike diag(energies) its derivative
    keeps the coupling inside degenerate levels that the orbitals' derivative leaves out. It
    comes from the products H0 U that LOBPCG carries, so it costs no product with H0.

    Args:
      V: float array (grid, grid), eV (one potential; use jax.vmap for a batch).
      config: static settings; `iterative_supported(config)` must hold.

    Returns:
      (Orbitals, h1, residuals): h1 (K, K) eV, symmetric, in the orbitals' signs; residuals
      as in `solve_iterative`.
    """
    V = jnp.asarray(V)
    # LOBPCG solves H0 - c, c a constant (no derivative: the identity below holds for every
    # c) near the orbital energies. Its products then carry entries of the size of the
    # orbitals' own level rather than of V's range, which lowers the float32 rounding of the
    # orbital energies (docs/benchmarks.md).
    c = jax.lax.stop_gradient(reference_energy(V, config))
    w, u, h1, residuals = _lowest(V - c, config)
    w = w + c
    h1 = h1 + c * jnp.eye(h1.shape[-1], dtype=h1.dtype)
    # Sign convention: the largest coefficient of each orbital is positive, so that the output
    # does not depend on the iteration count (each Rayleigh-Ritz step picks signs anew).
    peak = jnp.take_along_axis(u, jnp.argmax(jnp.abs(u), axis=0)[None, :], axis=0)[0]
    one = jnp.ones((), u.dtype)
    sign = jax.lax.stop_gradient(jnp.where(peak < 0, -one, one))
    return Orbitals(w, u * sign[None, :]), sign[:, None] * h1 * sign[None, :], residuals


def reference_energy(V: ArrayLike, config: EDConfig) -> jax.Array:
    """min(V) plus the mean of the K lowest kinetic energies of the empty box: the orbital
    energies of the empty box lifted to the floor of V, a scale near the K lowest orbital
    energies of H0.

    Args:
      V: float array (..., grid, grid), eV.
      config: static settings (K = config.orbitals).

    Returns:
      array (...,), eV, of V's dtype.
    """
    V = jnp.asarray(V)
    kinetic = np.sort(basis.kinetic_energies(config.length_nm, config.basis, config.m_eff))[: config.orbitals]
    return jnp.min(V, axis=(-2, -1)) + jnp.asarray(np.mean(kinetic), V.dtype)


def apply_hamiltonian(V: ArrayLike, X: ArrayLike, config: EDConfig) -> jax.Array:
    """H0 X without forming H0: T X + <V> X (qdjax.basis.apply_potential).

    Args:
      V: float array (grid, grid), eV.
      X: array (basis**2, m).
      config: static settings.

    Returns:
      array (basis**2, m), eV.
    """
    V = jnp.asarray(V)
    _, kinetic, _ = basis.tables(config)
    kinetic = jnp.asarray(kinetic, dtype=X.dtype)
    return kinetic[:, None] * X + basis.apply_potential(basis.potential_spectrum(V, config), X, config)
