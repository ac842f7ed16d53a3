"""Coulomb matrix elements between orbitals sampled on the pixel grid.

Chemists' notation, real orbitals:

    (pq|rs) = e^2 / (4 pi eps0 eps_r) int int psi_p psi_q (r) psi_r psi_s (r') / |r - r'| dr dr',

with the pair densities psi_p psi_q sampled at pixel centres and the free-space 1/r
convolution done by a zero-padded (2 grid) FFT with the Vico-Greengard-Ferrando truncated
kernel (F. Vico, L. Greengard, M. Ferrando, J. Comput. Phys. 323, 191 (2016);
arXiv:1604.03155): the kernel 1/r cut at R = sqrt(2) L (the box diagonal, so no pair of points
in the box is cut) has the smooth Fourier transform

    Khat(k) = (2 pi / k) int_0^{kR} J0(t) dt,       Khat(0) = 2 pi R,

which is sampled on a 4 grid FFT grid, transformed back and cut to the 2 grid real-space kernel
once per configuration (docs/theory.md, "Coulomb").

Evaluation. With M = 2 grid, the integrals are the quadratic form of the circular convolution,
(a|b) = sum_x rho_a(x) (W * rho_b)(x) = (1/M^2) sum_k What(k) conj(rhohat_a(k)) rhohat_b(k)
(Parseval; exact because rho vanishes outside the first grid x grid block). What is real,
positive and even in k_x and k_y separately. Transforming only x (real transforms: cos and sin
rows, k = 0..grid) leaves, for every x row k, the quadratic form of a symmetric positive
definite Toeplitz matrix in y,

    (a|b) = sum_k U_a[k]^T G_k U_b[k],   U = F_x rho,
    G_k[y, y'] = (mult_k / M^2) sum_{l=0..grid} mult_l What(k, l) cos(2 pi l (y - y') / M)

(mult = 1 at 0 and grid, else 2). Two symmetries halve the work: pixel coordinates are taken
from the centre of the box (a common shift of the samples multiplies rhohat_a and rhohat_b by
the same phase, which leaves the sum unchanged), so that the cos rows of F_x see only the part
of rho that is even under x -> L - x and the sin rows only the odd part; and G_k commutes with
the mirror y -> L - y, so it splits into an even and an odd block. With the Cholesky factors
L of those blocks (computed once per configuration; condition number ~1e2 at the paper size),
Y = U L and (a|b) = sum Y_a Y_b: per pair density one (grid+1) x grid/2 product for each
x parity, one batch of grid/2 x grid/2 products, then one Gram matrix over 4 (grid+1) grid/2
entries (about a third of the work of transforming both directions, equal to rounding).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from qdjax import backend, units
from qdjax.config import EDConfig

_QUADRATURE_NODES = 2048


def j0_integral_ratio(x: ArrayLike) -> np.ndarray:
    """g(x) = (1/x) int_0^x J0(t) dt, with g(0) = 1, in NumPy float64.

    Uses J0(t) = (1/pi) int_0^pi cos(t sin u) du, which gives
    g(x) = (2/pi) int_0^{pi/2} sinc(x sin u) du, evaluated by Gauss-Legendre quadrature with
    2048 nodes (exact to rounding for x up to ~2000; the kernels here need x < 500).

    Args:
      x: non-negative values, any shape.

    Returns:
      float64 array of the same shape.
    """
    x = np.asarray(x, dtype=np.float64)
    nodes, weights = np.polynomial.legendre.leggauss(_QUADRATURE_NODES)
    u = 0.25 * np.pi * (nodes + 1.0)  # map [-1, 1] -> [0, pi/2]
    flat = x.reshape(-1)
    out = np.empty_like(flat)
    for start in range(0, flat.size, 4096):
        chunk = flat[start : start + 4096]
        integrand = np.sinc(chunk[:, None] * np.sin(u)[None, :] / np.pi)  # sin(x sin u)/(x sin u)
        out[start : start + 4096] = 0.25 * np.pi * (integrand @ weights) * (2.0 / np.pi)
    return out.reshape(x.shape)


@functools.lru_cache(maxsize=16)
def vico_kernel(length_nm: float, grid: int) -> np.ndarray:
    """Real-space 1/r convolution weights for pixel-centre samples, zero-padded layout.

    The potential of a density rho sampled at pixel centres is
    phi[i] = sum_j W[i - j] rho[j] (units of rho times nm), where W already contains the
    pixel area h^2. W is returned in the periodic layout of a (2 grid, 2 grid) FFT: offset d
    sits at index d mod 2 grid, for |d| < grid.

    Returns:
      float64 array (2 grid, 2 grid), nm.
    """
    h = length_nm / grid
    m = 4 * grid
    radius = np.sqrt(2.0) * length_nm
    k1 = 2.0 * np.pi * np.fft.fftfreq(m, d=h)
    kk = np.sqrt(k1[:, None] ** 2 + k1[None, :] ** 2)
    unique, inverse = np.unique(np.round(kk * radius, 12), return_inverse=True)
    khat = 2.0 * np.pi * radius * j0_integral_ratio(unique)[inverse].reshape(kk.shape)
    w4 = np.fft.ifft2(khat).real  # includes the 1/(m h)^2 * h^2 normalisation
    idx = np.concatenate([np.arange(grid), np.arange(-grid, 0)])  # offsets for the 2 grid layout
    w2 = w4[np.ix_(idx % m, idx % m)]
    w2[grid, :] = 0.0  # offset -grid never occurs between two pixels of the box
    w2[:, grid] = 0.0
    w2.flags.writeable = False
    return w2


@functools.lru_cache(maxsize=16)
def factored_tables(length_nm: float, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """x transforms of the folded pair densities and the Cholesky factors of the y blocks
    (module docstring).

    The fold takes the h = ceil(grid / 2) pixels of the upper half of each axis, s(i) =
    rho(i) +- rho(grid - 1 - i) (the centre pixel of an odd grid is its own mirror).

    Returns:
      F: float64 (2, grid + 1, h), dimensionless: [0] cos rows k = 0..grid acting on the even
        fold, [1] sin rows k = 0..grid acting on the odd fold (rows that vanish identically
        contribute zero).
      L: float64 (2 (grid + 1) * 2, h, h), nm: lower Cholesky factors, one per (x parity,
        x row, y parity), of the y blocks (1/4) E^T G_k E, E the unfold of that y parity.
    """
    with backend.host_blas_single_threaded():  # bits independent of the BLAS thread count
        return _factored_tables(length_nm, grid)


def _factored_tables(length_nm: float, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """`factored_tables`, computed."""
    g = grid
    m = 2 * g
    h = (g + 1) // 2
    upper = np.arange(g - h, g)
    mirror = g - 1 - upper
    centred = upper - (g - 1) / 2.0  # 0 or 1/2 for the first upper pixel
    k = np.arange(g + 1)
    phase = 2 * np.pi * np.outer(k, centred) / m
    # Unfolds E: the even (odd) part of u is E s / 2 with s the fold of u; the centre pixel of
    # an odd grid has s = 2 u in the even fold and s = 0 in the odd one.
    centre = upper == mirror
    unfold_even = np.zeros((g, h))
    unfold_even[upper, np.arange(h)] = 1.0
    unfold_even[mirror, np.arange(h)] = 1.0
    unfold_odd = np.zeros((g, h))
    unfold_odd[upper, np.arange(h)] = 1.0
    unfold_odd[mirror, np.arange(h)] = -1.0
    unfold_odd[:, centre] = 0.0
    # cos rows see only the even part of rho: F rho = (F E / 2) s, i.e. F on the upper pixels,
    # with half weight on a self-mirrored centre.
    centre_weight = np.where(centre, 0.5, 1.0)
    f = np.stack([np.cos(phase) * centre_weight, np.sin(phase) * centre_weight])
    w_hat = np.fft.rfft2(vico_kernel(length_nm, g)).real[: g + 1, : g + 1]  # What(k, l), l = 0..grid
    if not np.all(w_hat > 0):
        raise ValueError("the Coulomb kernel's transform is not positive; increase grid")
    mult = np.where((k == 0) | (k == g), 1.0, 2.0)
    d = np.arange(g)[:, None] - np.arange(g)[None, :]
    toeplitz = np.cos(2 * np.pi * np.multiply.outer(d, k) / m)  # (g, g, l)
    g_k = np.einsum("kl,yzl->kyz", mult[:, None] * mult[None, :] * w_hat / m**2, toeplitz)  # (k, g, g)
    blocks = []
    for k_row in range(g + 1):
        for e in (unfold_even, unfold_odd):
            b = 0.25 * e.T @ g_k[k_row] @ e
            empty = ~e.any(axis=0)  # odd fold at an odd grid's centre: s = 0 there
            b[empty, empty] = 1.0
            blocks.append(np.linalg.cholesky(b))
    chol = np.stack(blocks).reshape(g + 1, 2, h, h)
    chol = np.stack([chol, chol]).reshape(-1, h, h)  # the same y blocks for both x parities
    for a in (f, chol):
        a.flags.writeable = False
    return f, chol


def pair_indices(n_orbitals: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Upper-triangle pairs (p <= q) and the map (p, q) -> pair index.

    Returns:
      (p, q, index): p, q int arrays (P,), P = K (K + 1) / 2; index int array (K, K), symmetric.
    """
    p, q = np.triu_indices(n_orbitals)
    index = np.zeros((n_orbitals, n_orbitals), dtype=np.int32)
    index[p, q] = np.arange(p.size)
    index[q, p] = np.arange(p.size)
    return p, q, index


def coulomb_tensor(orbitals_on_grid: ArrayLike, config: EDConfig) -> jax.Array:
    """Coulomb tensor (pq|rs) of real orbitals.

    Args:
      orbitals_on_grid: array (..., K, grid, grid), nm^-1, orbitals at pixel centres
        (qdjax.basis.on_grid).
      config: static settings; eps_r = inf gives zeros.

    Returns:
      array (..., K, K, K, K), eV, with the 8-fold symmetry of real orbitals.
    """
    psi = jnp.asarray(orbitals_on_grid)
    k = psi.shape[-3]
    g = config.grid
    if not config.interacting:
        return jnp.zeros(psi.shape[:-3] + (k, k, k, k), dtype=psi.dtype)
    p, q, index = pair_indices(k)
    f, chol = factored_tables(config.length_nm, g)
    h = chol.shape[-1]
    lead = psi.shape[:-3]
    n_pairs = len(p)
    # Layout (..., x, pair, y): the x transform and the y blocks are then plain (batched) products.
    ps = jnp.swapaxes(psi, -3, -2)  # (..., x, K, y)
    rho = ps[..., :, p, :] * ps[..., :, q, :]  # (..., x, P, y), nm^-2
    upper, lower = slice(g - h, g), slice(h - 1, None, -1)  # pixel i and its mirror grid - 1 - i
    folded = []
    for sx in (rho[..., upper, :, :] + rho[..., lower, :, :], rho[..., upper, :, :] - rho[..., lower, :, :]):
        yu, yl = sx[..., upper], sx[..., lower]
        folded.append(jnp.stack([yu + yl, yu - yl], axis=-3))  # (..., x', y parity, P, y')
    folded = jnp.stack(folded, axis=-5)  # (..., x parity, x', y parity, P, y')
    u = jnp.asarray(f, dtype=psi.dtype) @ folded.reshape(lead + (2, h, 2 * n_pairs * h))
    u = u.reshape(lead + (chol.shape[0], n_pairs, h))  # (..., (x parity, k, y parity), P, y')
    y = u @ jnp.asarray(chol, dtype=psi.dtype)
    prefactor = units.COULOMB_K / config.eps_r * config.pixel_nm**2
    pairs = prefactor * jnp.sum(y @ jnp.swapaxes(y, -1, -2), axis=-3)
    pairs = 0.5 * (pairs + jnp.swapaxes(pairs, -1, -2))
    return pairs[..., index[:, :, None, None], index[None, None, :, :]]
