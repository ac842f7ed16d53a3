"""Sine basis, pixel tables and the single-particle problem."""

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

import qdjax
from qdjax import basis, potentials, single_particle


def test_overlap_table_matches_quadrature():
    # Reference: scipy.integrate.quad of phi_m phi_m' over every pixel (independent of the
    # closed form used in qdjax.basis).
    length, grid, nb = 7.0, 5, 4
    a = basis.overlap_table(length, grid, nb)
    h = length / grid
    phi = lambda m, x: np.sqrt(2 / length) * np.sin(m * np.pi * x / length)
    for i in range(grid):
        for m in range(1, nb + 1):
            for mp in range(1, nb + 1):
                ref, _ = integrate.quad(lambda x: phi(m, x) * phi(mp, x), i * h, (i + 1) * h, epsabs=1e-14)
                assert a[i, m - 1, mp - 1] == pytest.approx(ref, abs=1e-13)


def test_overlap_table_sums_to_identity(config):
    # Orthonormality of the sine functions on [0, L]: the pixels tile the box.
    a = basis.overlap_table(config.length_nm, config.grid, config.basis)
    np.testing.assert_allclose(a.sum(axis=0), np.eye(config.basis), atol=1e-13)


def test_potential_matrix_slow_loop():
    # Reference: explicit Python loop over sum_ij V[i,j] A[i,m,m'] A[j,n,n'].
    cfg = qdjax.EDConfig(grid=6, basis=3, orbitals=2)
    V = np.random.default_rng(0).random((6, 6))
    a = basis.overlap_table(cfg.length_nm, cfg.grid, cfg.basis)
    ref = np.zeros((9, 9))
    for m in range(3):
        for n in range(3):
            for mp in range(3):
                for np_ in range(3):
                    ref[m * 3 + n, mp * 3 + np_] = sum(
                        V[i, j] * a[i, m, mp] * a[j, n, np_] for i in range(6) for j in range(6)
                    )
    np.testing.assert_allclose(basis.potential_matrix(jnp.asarray(V), cfg), ref, atol=1e-14)


def test_pixel_average_is_adjoint_of_potential_matrix(config):
    # Identity sum_ij V n h^2 = trace(G <V>) for any symmetric G (the definition of the adjoint).
    rng = np.random.default_rng(1)
    V = jnp.asarray(rng.random((config.grid, config.grid)))
    g = rng.normal(size=(config.basis**2, 40))
    G = jnp.asarray(g @ g.T)
    lhs = jnp.sum(V * basis.pixel_average(G, config)) * config.pixel_nm**2
    rhs = jnp.trace(G @ basis.potential_matrix(V, config))
    assert float(lhs) == pytest.approx(float(rhs), rel=1e-12)


def test_empty_box_levels_closed_form(config):
    # Closed form: e_mn = hbar^2 pi^2 (m^2 + n^2) / (2 m* L^2); lowest 8: m^2+n^2 = 2,5,5,8,10,10,13,13.
    orb = single_particle.solve(jnp.asarray(potentials.empty_box(config)), config)
    expected = config.kinetic_prefactor * np.pi**2 / config.length_nm**2 * np.array([2, 5, 5, 8, 10, 10, 13, 13])
    np.testing.assert_allclose(orb.energies, expected, rtol=1e-10)


def test_constant_potential_shifts_levels(config):
    # A constant V = c shifts every level by exactly c (the tables sum to the identity).
    flat = single_particle.solve(jnp.zeros((config.grid, config.grid)), config).energies
    shifted = single_particle.solve(jnp.full((config.grid, config.grid), 0.3), config).energies
    np.testing.assert_allclose(shifted - flat, 0.3, atol=1e-12)


def test_harmonic_levels_richardson():
    # 2D harmonic oscillator: levels hbar w (n + 1), shell n (n + 1)-fold degenerate.
    # hbar w = 0.2 eV gives an oscillator length 2.4 nm, so the walls at 15 nm (6.3 lengths) shift
    # the lowest 10 levels by far less than 1e-9 relative. Pixel-wise constant V shifts them by
    # O(h^2) (~1.6e-3 relative at grid 128); Richardson extrapolation of grids 64 and 128 removes
    # that term, leaving 1e-12 (measured), well below the 1e-8 tolerance.
    hw = 0.2
    levels = []
    for grid in (64, 128):
        cfg = qdjax.EDConfig(grid=grid, orbitals=10, eps_r=np.inf)
        levels.append(np.asarray(single_particle.solve(jnp.asarray(potentials.harmonic(cfg, hw)), cfg).energies))
    expected = hw * np.repeat(np.arange(1, 5), np.arange(1, 5))
    np.testing.assert_allclose(levels[1], expected, rtol=2e-3)
    np.testing.assert_allclose((4 * levels[1] - levels[0]) / 3, expected, rtol=1e-8)


def test_orbitals_on_grid_are_orthonormal(config, random_V):
    # Midpoint rule of psi_p psi_q: exact up to the aliasing of the 64-pixel sampling (small).
    orb = single_particle.solve(jnp.asarray(random_V[0]), config)
    psi = basis.on_grid(orb.coefficients, config)
    overlap = jnp.einsum("pij,qij->pq", psi, psi) * config.pixel_nm**2
    np.testing.assert_allclose(overlap, np.eye(config.orbitals), atol=1e-6)
