"""The product sine basis of the hard-wall box and its pixel tables.

Basis functions phi_m(x) phi_n(y), phi_m(x) = sqrt(2/L) sin(m pi x / L), m, n = 1..basis, with
the flat index (m, n) -> (m - 1) * basis + (n - 1). The potential is piecewise constant on
pixels; pixel i covers [i h, (i + 1) h], h = L / grid. Everything that couples the basis to the
pixel grid goes through one table,

    A[i, m, m'] = int_{i h}^{(i+1) h} phi_m(x) phi_m'(x) dx        (dimensionless),

evaluated in closed form (phi_m phi_m' = (cos((m - m') pi x / L) - cos((m + m') pi x / L)) / L).
It gives the exact potential matrix and, as its adjoint, the pixel-averaged density
(docs/theory.md, "Pixels").

Fast form (no basis^2 x basis^2 matrix). Write phi_m phi_m' as cosines of (m -+ m') pi x / L;
with C[i, k] = int_pixel i cos(k pi x / L) dx (k = 0..2 basis), the potential matrix is a 2D
Toeplitz-minus-Hankel matrix of W = C^T V C / L^2. Acting on the odd extension of a
coefficient array it is a circular convolution of period M = 4 basis (exact: offsets
|m -+ m'| <= 2 basis = M / 2 never alias), so a real discrete sine transform diagonalises it:

    <mn|V|m'n'> = sum_{xi, eta} What[xi, eta] S[xi, m] S[eta, n] S[xi, m'] S[eta, n'],
    S[xi, m] = sin(2 pi xi m / M),  What = (4 / M)^2 / L^2 Phi^T V Phi,  Phi = C Ck^T,

xi, eta = 1..M/2 - 1, Ck[xi, k] = w_k cos(2 pi xi k / M) (w_0 = w_{M/2} = 1, else 2). A product
H0 X then costs four (M/2) x basis matrix products per column instead of a basis^2 row, and
the adjoint gives the pixel-averaged density n = (4/M)^2 / (L^2 h^2) Phi D Phi^T with
D[xi, eta] = sum_pq gamma_pq (S C_p S^T)[xi, eta] (S C_q S^T)[xi, eta]. Both are equal to the
table form up to rounding (tests/test_solvers.py).

Mixed form (the fastest product for a fixed V). The sine transform in x alone, with the pixel
table in y, gives one basis x basis block per x frequency,

    K_xi[n, n'] = sum_eta What[xi, eta] S[eta, n] S[eta, n'] = (4 / M) / L sum_ij Phi[i, xi] V[i, j] A[j, n, n'],

and <V> X = S^T_x K S_x X: two (M/2) x basis products and one batch of basis x basis products
per column, half the work of the spectral form, after the K_xi are built once per potential.
Since L A[j, n, n'] = C[j, |n - n'|] - C[j, n + n'], the blocks are a Toeplitz minus a Hankel
matrix of U = Phi^T V C: K_xi[n, n'] = (4 / M) / L^2 (U[xi, |n - n'|] - U[xi, n + n']), read
off a (M/2 - 1) x (2 basis + 1) product instead of a product with the whole pixel table.

Host tables are NumPy float64, built once per configuration (functools.lru_cache; they depend
only on the static configuration) and marked read-only.
"""

from __future__ import annotations

import functools

import jax
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


@functools.lru_cache(maxsize=32)
def cosine_integrals(length_nm: float, grid: int, basis: int) -> np.ndarray:
    """C[i, k] = int over pixel i of cos(k pi x / L) dx, k = 0..2 basis.

    Returns:
      float64 array (grid, 2 basis + 1), nm.
    """
    h = length_nm / grid
    centres = (np.arange(grid) + 0.5) * h
    q = np.arange(2 * basis + 1) * np.pi / length_nm
    # int over [c - h/2, c + h/2] of cos(q x) = h cos(q c) sinc(q h / 2 pi): no cancellation.
    return _read_only(h * np.cos(centres[:, None] * q[None, :]) * np.sinc(q * h / (2 * np.pi))[None, :])


@functools.lru_cache(maxsize=32)
def sine_transform_tables(length_nm: float, grid: int, basis: int) -> tuple[np.ndarray, np.ndarray]:
    """(Phi, S) of the fast potential action and density (see the module docstring).

    Returns:
      Phi: float64 (grid, 2 basis - 1), nm, pixel integrals C of the cosines times Ck^T.
      S: float64 (2 basis - 1, basis), S[xi, m] = sin(2 pi (xi + 1) m / (4 basis)).
    """
    k = np.arange(2 * basis + 1)
    c = cosine_integrals(length_nm, grid, basis)
    period = 4 * basis
    xi = np.arange(1, period // 2)
    weights = np.where((k == 0) | (k == period // 2), 1.0, 2.0)
    ck = weights[None, :] * np.cos(2 * np.pi * np.outer(xi, k) / period)
    s = np.sin(2 * np.pi * np.outer(xi, np.arange(1, basis + 1)) / period)
    return _read_only(c @ ck.T), _read_only(s)


def potential_spectrum(V: ArrayLike, config: EDConfig) -> jax.Array:
    """Diagonal of the potential matrix in the sine-transform basis, What (module docstring).

    Args:
      V: float array (..., grid, grid), eV.
      config: static settings.

    Returns:
      array (..., 2 basis - 1, 2 basis - 1), eV; linear in V.
    """
    V = jnp.asarray(V)
    phi, _ = sine_transform_tables(config.length_nm, config.grid, config.basis)
    phi = jnp.asarray(phi, dtype=V.dtype)
    scale = (1.0 / config.basis) ** 2 / config.length_nm**2  # (4 / M)^2 / L^2, M = 4 basis
    return scale * jnp.einsum("ik,...ij,jl->...kl", phi, V, phi)


def potential_submatrix(V: ArrayLike, modes: np.ndarray, config: EDConfig) -> jax.Array:
    """Rows and columns `modes` of the potential matrix, from W = C^T V C / L^2.

    <mn|V|m'n'> = W[|m - m'|, |n - n'|] - W[|m - m'|, n + n'] - W[m + m', |n - n'|] + W[m + m', n + n'].

    Args:
      V: float array (..., grid, grid), eV.
      modes: int array (s,), flat indices (m - 1) * basis + (n - 1) (static, host NumPy).
      config: static settings.

    Returns:
      array (..., s, s), eV.
    """
    V = jnp.asarray(V)
    b = config.basis
    c = jnp.asarray(cosine_integrals(config.length_nm, config.grid, b), dtype=V.dtype)
    w = jnp.einsum("ik,...ij,jl->...kl", c, V, c) / config.length_nm**2
    m = np.asarray(modes) // b + 1
    n = np.asarray(modes) % b + 1
    dm, sm = np.abs(m[:, None] - m[None, :]), m[:, None] + m[None, :]
    dn, sn = np.abs(n[:, None] - n[None, :]), n[:, None] + n[None, :]
    return w[..., dm, dn] - w[..., dm, sn] - w[..., sm, dn] + w[..., sm, sn]


def apply_potential(spectrum: ArrayLike, X: ArrayLike, config: EDConfig) -> jax.Array:
    """Product of the potential matrix with vectors, without forming the matrix.

    (<V> X)[(m, n), v] = sum What[xi, eta] S[xi, m] S[eta, n] (S X_v S^T)[xi, eta].

    Args:
      spectrum: array (..., 2 basis - 1, 2 basis - 1) from `potential_spectrum`, eV.
      X: array (..., basis**2, v), coefficients in the product sine basis.
      config: static settings.

    Returns:
      array (..., basis**2, v), eV; equals potential_matrix(V) @ X up to rounding.
    """
    b = config.basis
    _, s = sine_transform_tables(config.length_nm, config.grid, b)
    s = jnp.asarray(s, dtype=X.dtype)
    c = X.reshape(X.shape[:-2] + (b, b, X.shape[-1]))
    t = jnp.einsum("xm,...mnv->...xnv", s, c)
    t = jnp.einsum("yn,...xnv->...xyv", s, t)
    t = spectrum[..., None] * t
    t = jnp.einsum("yn,...xyv->...xnv", s, t)
    t = jnp.einsum("xm,...xnv->...mnv", s, t)
    return t.reshape(X.shape)


def potential_kernels(V: ArrayLike, config: EDConfig) -> jax.Array:
    """Blocks K_xi of the mixed form of the potential matrix (module docstring).

    Args:
      V: float array (..., grid, grid), eV.
      config: static settings.

    Returns:
      array (..., 2 basis - 1, basis, basis), eV; each block symmetric; linear in V.
    """
    V = jnp.asarray(V)
    b = config.basis
    phi, _ = sine_transform_tables(config.length_nm, config.grid, b)
    c = cosine_integrals(config.length_nm, config.grid, b)
    u = jnp.asarray(phi.T, dtype=V.dtype) @ V @ jnp.asarray(c, dtype=V.dtype)  # (..., xi, 2 b + 1), eV nm^2
    n = np.arange(1, b + 1)
    toeplitz, hankel = np.abs(n[:, None] - n[None, :]), n[:, None] + n[None, :]
    return (u[..., toeplitz] - u[..., hankel]) / (b * config.length_nm**2)  # (4 / M) / L^2, M = 4 basis


def apply_potential_kernels(kernels: ArrayLike, X: ArrayLike, config: EDConfig) -> jax.Array:
    """Product of the potential matrix with vectors in the mixed form, <V> X = S^T K S X.

    Args:
      kernels: array (2 basis - 1, basis, basis) from `potential_kernels`, eV (one potential).
      X: array (basis**2, v), coefficients in the product sine basis.
      config: static settings.

    Returns:
      array (basis**2, v), eV; equals potential_matrix(V) @ X up to rounding.
    """
    b = config.basis
    _, s = sine_transform_tables(config.length_nm, config.grid, b)
    v = X.shape[-1]
    t = jnp.asarray(s, dtype=X.dtype) @ X.reshape(b, b * v)  # (xi, n v): transform over m
    t = kernels @ t.reshape(2 * b - 1, b, v)  # (xi, n, v): K_xi on the y index
    t = jnp.asarray(s.T, dtype=X.dtype) @ t.reshape(2 * b - 1, b * v)  # (m, n v)
    return t.reshape(b * b, v)


def orbital_density(coefficients: ArrayLike, gamma: ArrayLike, config: EDConfig) -> jax.Array:
    """Pixel-averaged density sum_pq gamma_pq psi_p psi_q, by the sine transform.

    Equal to ``pixel_average(U gamma U^T)`` up to rounding, at a cost of O(K basis^3) instead
    of O(grid basis^4).

    Args:
      coefficients: array (..., basis**2, K), orbitals in the product sine basis.
      gamma: array (..., K, K), symmetric.
      config: static settings.

    Returns:
      array (..., grid, grid), nm^-2.
    """
    b = config.basis
    u = jnp.asarray(coefficients)
    phi, s = sine_transform_tables(config.length_nm, config.grid, b)
    phi = jnp.asarray(phi, dtype=u.dtype)
    s = jnp.asarray(s, dtype=u.dtype)
    c = u.reshape(u.shape[:-2] + (b, b, u.shape[-1]))
    z = jnp.einsum("xm,yn,...mnp->...xyp", s, s, c)
    d = jnp.einsum("...xyp,...pq,...xyq->...xy", z, gamma, z)
    scale = (1.0 / b) ** 2 / (config.length_nm**2 * config.pixel_nm**2)
    return scale * jnp.einsum("ik,...kl,jl->...ij", phi, d, phi)


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
