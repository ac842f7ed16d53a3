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
positive and even in k_x and k_y separately, so only the real transforms
F rho F^T with F = [cos(2 pi k x / M), k = 0..grid; sin(2 pi k x / M), k = 1..grid-1] survive:
(a|b) = sum_kl w_kl (F rho_a F^T)_kl (F rho_b F^T)_kl. Two matrix products per pair density and
one Gram matrix, no inverse transform (about twice as fast as the FFT form, equal to rounding).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from qdjax import units
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
def spectral_tables(length_nm: float, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """Real transform F and the square roots of the Gram weights (module docstring).

    Returns:
      F: float64 (2 grid, grid), the cos rows k = 0..grid then the sin rows k = 1..grid - 1.
      sqrt_weights: float64 (4 grid^2,), nm^(1/2), flattened over (row of F, row of F),
        sqrt(mult_k mult_l What(k, l)) / (2 grid) with mult = 1 at k = 0, grid and 2 otherwise.
    """
    m = 2 * grid
    x = np.arange(grid)
    kc = np.arange(grid + 1)
    ks = np.arange(1, grid)
    f = np.concatenate([np.cos(2 * np.pi * np.outer(kc, x) / m), np.sin(2 * np.pi * np.outer(ks, x) / m)])
    w_hat = np.fft.rfft2(vico_kernel(length_nm, grid)).real[: grid + 1, :]  # (grid + 1, grid + 1)
    if not np.all(w_hat > 0):
        raise ValueError("the Coulomb kernel's transform is not positive; increase grid")
    mult = np.where((kc == 0) | (kc == grid), 1.0, 2.0)
    w = w_hat * mult[:, None] * mult[None, :] / m**2
    rows = np.concatenate([kc, ks])  # F row -> frequency index
    sqrt_w = np.sqrt(w[np.ix_(rows, rows)]).reshape(-1)
    for a in (f, sqrt_w):
        a.flags.writeable = False
    return f, sqrt_w


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
    f, sqrt_w = spectral_tables(config.length_nm, g)
    f = jnp.asarray(f, dtype=psi.dtype)
    sqrt_w = jnp.asarray(sqrt_w, dtype=psi.dtype)
    lead = psi.shape[:-3]
    n_pairs = len(p)
    # Layout (..., y, x, pair) so that both transforms are plain matrix products.
    ps = jnp.swapaxes(jnp.moveaxis(psi, -3, -1), -3, -2)
    rho = ps[..., p] * ps[..., q]  # (..., y, x, P), nm^-2
    t = f @ rho.reshape(lead + (g, g * n_pairs))  # (..., l, x P)
    t = jnp.swapaxes(t.reshape(lead + (2 * g, g, n_pairs)), -3, -2)  # (..., x, l, P)
    t = f @ t.reshape(lead + (g, 2 * g * n_pairs))  # (..., k, l P)
    t = t.reshape(lead + (4 * g * g, n_pairs)) * sqrt_w[:, None]
    prefactor = units.COULOMB_K / config.eps_r * config.pixel_nm**2
    pairs = prefactor * (jnp.swapaxes(t, -1, -2) @ t)
    pairs = 0.5 * (pairs + jnp.swapaxes(pairs, -1, -2))
    return pairs[..., index[:, :, None, None], index[None, None, :, :]]
