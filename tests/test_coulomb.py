"""Coulomb tensor: kernel, closed forms and symmetries."""

import math

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, special

import qdjax
from qdjax import basis, coulomb, potentials, single_particle, units


@pytest.mark.parametrize("x", [0.0, 1e-6, 0.3, 2.0, 17.5, 120.0, 450.0])
def test_j0_integral_ratio_matches_scipy(x):
    # Reference: adaptive quadrature of scipy.special.j0 (Cephes). scipy.special.itj0y0 was
    # measured to be off by 7e-12 at x = 17.5, so it is not used as the oracle.
    if x == 0:
        ref = 1.0
    else:
        ref = integrate.quad(special.j0, 0, x, epsabs=1e-15, epsrel=1e-15, limit=2000)[0] / x
    assert coulomb.j0_integral_ratio(x) == pytest.approx(ref, abs=1e-12)


def test_empty_box_j11_anchor():
    # Anchor (DESIGN.md): empty 30 nm box, one orbital, two electrons:
    # E - 2 e_11 = J_11,11 = 4.758855 e^2 / (4 pi eps0 eps_r L) = 17.7069 meV.
    cfg = qdjax.EDConfig(orbitals=1)
    gs = qdjax.ed.ground_state(potentials.empty_box(cfg), 2, cfg)
    e11 = cfg.kinetic_prefactor * 2 * np.pi**2 / cfg.length_nm**2
    j11 = 4.758855 * units.COULOMB_K / (cfg.eps_r * cfg.length_nm)
    assert float(gs.energy) - 2 * e11 == pytest.approx(j11, rel=1e-5)


@pytest.mark.parametrize("sigma", [1.5, 2.5])
def test_gaussian_self_energy_closed_form(sigma):
    # Closed form: a normalised 2D Gaussian charge rho = exp(-r^2 / 2 sigma^2) / (2 pi sigma^2)
    # has int int rho rho' / |r - r'| = sqrt(pi) / (2 sigma) (the difference of two points is a
    # Gaussian of variance 2 sigma^2 per axis, and <1/|d|> = sqrt(pi/2) / sqrt(2 sigma^2)).
    # Centred in the 30 nm box its tails beyond the walls are below exp(-50).
    cfg = qdjax.EDConfig(eps_r=1.0)
    x = (np.arange(cfg.grid) + 0.5) * cfg.pixel_nm - cfg.length_nm / 2
    rho = np.exp(-(x[:, None] ** 2 + x[None, :] ** 2) / (2 * sigma**2)) / (2 * np.pi * sigma**2)
    eri = coulomb.coulomb_tensor(jnp.asarray(np.sqrt(rho))[None], cfg)
    expected = units.COULOMB_K * math.sqrt(math.pi) / (2 * sigma)
    assert float(eri[0, 0, 0, 0]) == pytest.approx(expected, rel=1e-6)


def test_eri_symmetries_and_positivity(config, random_V):
    # Invariants of real-orbital Coulomb integrals: 8-fold permutation symmetry, and the matrix
    # (pq),(rs) is positive definite (the Coulomb kernel is positive definite).
    orb = single_particle.solve(jnp.asarray(random_V[1]), config)
    eri = np.asarray(coulomb.coulomb_tensor(basis.on_grid(orb.coefficients, config), config))
    for perm in [(1, 0, 2, 3), (0, 1, 3, 2), (2, 3, 0, 1), (3, 2, 1, 0), (1, 0, 3, 2), (2, 3, 1, 0), (3, 2, 0, 1)]:
        np.testing.assert_allclose(eri, eri.transpose(perm), atol=1e-15)
    k = config.orbitals
    p, q, _ = coulomb.pair_indices(k)
    pair_matrix = eri[p, q][:, p, q]
    assert np.linalg.eigvalsh(pair_matrix).min() > 0


def test_eri_scales_with_permittivity(config, random_V):
    # (pq|rs) is proportional to 1 / eps_r; eps_r = inf gives exactly zero.
    orb = single_particle.solve(jnp.asarray(random_V[2]), config)
    psi = basis.on_grid(orb.coefficients, config)
    e1 = coulomb.coulomb_tensor(psi, config.replace(eps_r=1.0))
    e2 = coulomb.coulomb_tensor(psi, config)
    np.testing.assert_allclose(e2 * config.eps_r, e1, rtol=1e-12)
    assert not np.any(np.asarray(coulomb.coulomb_tensor(psi, config.non_interacting())))
