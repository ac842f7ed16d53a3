"""qdjax.spectrum (re-exported in qdjax.ed): spin-resolved spectrum, chemical potentials and pair
correlation, against PySCF FCI on identical integrals, closed forms and invariants."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from pyscf import fci
from scipy.linalg import eigh_tridiagonal

import qdjax
from qdjax import ed, fock, potentials, spectrum, units

#: Small settings for fast tests: 24 pixels, 10 x 10 sine modes, 6 orbitals.
SMALL = qdjax.EDConfig(grid=24, basis=10, orbitals=6)


@pytest.fixture(scope="module")
def small_V():
    """Two random potentials of the paper's class on the small grid, (2, 24, 24) eV."""
    return potentials.random_potentials([11, 12], SMALL)


def _pyscf(ints, config, nelec, nroots):
    """PySCF direct_spin1 FCI on our integrals, solved exactly in its P-space: (energies,
    vectors, solver)."""
    solver = fci.direct_spin1.FCI()
    solver.nroots = nroots
    solver.conv_tol = 1e-14
    solver.pspace_size = math.comb(config.orbitals, nelec[0]) * math.comb(config.orbitals, nelec[1]) + 1
    e, c = solver.kernel(np.asarray(ints.h1), np.asarray(ints.eri), config.orbitals, nelec)
    return np.atleast_1d(e), c if nroots > 1 else [c], solver


@pytest.mark.parametrize("n_electrons", [2, 3, 4])
def test_energies_and_spin_match_pyscf_nroots(small_V, n_electrons):
    # Reference: PySCF FCI with nroots = 6 in the same sector ((N+1)//2, N//2) on our h1e and eri;
    # S from fci.spin_op.spin_square (multiplicity 2S + 1). Both batch entries are checked.
    sp = ed.spectrum(small_V, n_electrons, 6, SMALL)
    assert sp.energies.shape == (2, 6) and sp.densities.shape == (2, 6, 24, 24)
    assert sp.spin_densities.shape == (2, 6, 2, 24, 24) and bool(jnp.all(sp.converged))
    nelec = fock.spin_sector(n_electrons)
    for b in range(2):
        ints = ed.integrals(small_V[b], SMALL)
        e, vectors, _ = _pyscf(ints, SMALL, nelec, 6)
        multiplicity = [fci.spin_op.spin_square(c, SMALL.orbitals, nelec)[1] for c in vectors]
        np.testing.assert_allclose(sp.energies[b], e, atol=1e-8, rtol=0)
        np.testing.assert_allclose(2 * sp.total_spin[b] + 1, multiplicity, atol=1e-8)
    # invariants: every density holds N electrons, every spin density 2 S more up than down
    h2 = SMALL.pixel_nm**2
    np.testing.assert_allclose(sp.densities.sum((-1, -2)) * h2, n_electrons, atol=1e-10)
    np.testing.assert_allclose(sp.spin_densities.sum(-3), sp.densities, atol=1e-12)
    polarisation = (sp.spin_densities[..., 0, :, :] - sp.spin_densities[..., 1, :, :]).sum((-1, -2)) * h2
    np.testing.assert_allclose(polarisation, 2 * sp.total_spin, atol=1e-9)


@pytest.mark.parametrize("n_electrons", [2, 3, 4])
def test_spin_densities_match_pyscf_in_the_sz_equals_s_sector(small_V, n_electrons):
    # The lowest state with S > S_z is also the ground state of the sector S_z = S (that sector
    # holds only multiplets with spin >= S); PySCF solves that sector directly and its
    # make_rdm1s gives the up and down density matrices of that member.
    V = small_V[0]
    sp = ed.spectrum(V, n_electrons, 6, SMALL)
    spins = np.asarray(sp.total_spin)
    i = int(np.argmax(spins > (n_electrons % 2) / 2 + 0.25))
    s = round(2 * spins[i]) / 2
    nelec = (int(n_electrons / 2 + s), int(n_electrons / 2 - s))
    ints = ed.integrals(V, SMALL)
    e, (c,), solver = _pyscf(ints, SMALL, nelec, 1)
    assert float(sp.energies[i]) == pytest.approx(e[0], abs=1e-9)
    reference = ed.density_from_rdm1(np.stack(solver.make_rdm1s(c, SMALL.orbitals, nelec)),
                                     ints.orbitals.coefficients, SMALL)
    np.testing.assert_allclose(sp.spin_densities[i], reference, atol=1e-12)
    # the S_z = S member of the doublet (N odd) is the sector's own state: same as its direct densities
    if n_electrons % 2:
        j = int(np.argmax(np.abs(spins - 0.5) < 0.25))
        e, (c,), solver = _pyscf(ints, SMALL, fock.spin_sector(n_electrons), 1)
        direct = ed.density_from_rdm1(np.stack(solver.make_rdm1s(c, SMALL.orbitals, fock.spin_sector(n_electrons))),
                                      ints.orbitals.coefficients, SMALL)
        np.testing.assert_allclose(sp.spin_densities[j], direct, atol=1e-12)


def _multiplets(n_up_down_free: int) -> dict:
    """Spin multiplets of u unpaired spin-1/2 electrons: {S: count}, count = C(u, u/2 - S) -
    C(u, u/2 - S - 1)."""
    u = n_up_down_free
    out = {}
    for twice_s in range(u % 2, u + 1, 2):
        k = (u - twice_s) // 2
        out[twice_s / 2] = math.comb(u, k) - (math.comb(u, k - 1) if k >= 1 else 0)
    return out


@pytest.mark.parametrize("n_electrons", [2, 3, 4])
def test_non_interacting_spectrum_is_sums_of_orbital_energies(small_V, n_electrons):
    # eps_r = inf: every spatial configuration (occupations 0, 1, 2 per orbital) has the energy
    # sum_p n_p e_p and, with u singly occupied orbitals, the spin multiplets of u spins 1/2.
    # Enumerated here, sorted by (energy, S), the lowest six must be the spectrum's.
    cfg = SMALL.non_interacting()
    sp = ed.spectrum(small_V[1], n_electrons, 6, cfg)
    e = np.asarray(ed.integrals(small_V[1], cfg).orbitals.energies)
    levels = []
    for occupation in itertools.product((0, 1, 2), repeat=cfg.orbitals):
        if sum(occupation) != n_electrons:
            continue
        energy = float(np.dot(occupation, e))
        for s, count in _multiplets(occupation.count(1)).items():
            levels += [(energy, s)] * count
    levels.sort(key=lambda x: (round(x[0], 9), x[1]))
    expected = np.array(levels[:6])
    np.testing.assert_allclose(sp.energies, expected[:, 0], atol=1e-10, rtol=0)
    np.testing.assert_allclose(sp.total_spin, expected[:, 1], atol=1e-9)
    assert bool(sp.converged)


def _relative_motion_energy(hbar_omega, m, eps_r=units.GAAS_EPS_R, m_eff=units.GAAS_M_EFF, n=20000, extent=12.0):
    """Lowest eigenvalue (eV) of the relative motion of two electrons in a 2D trap with angular
    momentum m: -(hbar^2 / 2 mu) [(1/r)(r u')' - m^2 u / r^2] + (mu w^2 r^2 / 2 + k / (eps_r r)) u,
    mu = m* / 2, by finite volumes on a cell-centred grid (tests/test_reference_solutions.py, m = 0)."""
    t_mu = 2.0 * units.kinetic_prefactor(m_eff)
    length = np.sqrt(2.0 * t_mu / hbar_omega)
    d = extent * length / n
    r = (np.arange(n) + 0.5) * d
    r_face = r + 0.5 * d
    potential = 0.25 * hbar_omega**2 / t_mu * r**2 + units.COULOMB_K / (eps_r * r) + t_mu * m**2 / r**2
    diag = t_mu * (np.r_[0.0, r_face[:-1]] + r_face) / d**2 + r * potential
    off = -t_mu * r_face[:-1] / d**2
    s = 1.0 / np.sqrt(r)
    return eigh_tridiagonal(diag * s * s, off * s[:-1] * s[1:], select="i", select_range=(0, 0))[0][0]


def test_two_electrons_in_harmonic_trap_singlet_ground_triplet_from_above():
    # Exact: centre of mass hbar w plus relative motion, singlet m = 0 (0.12608 eV at 50 meV,
    # DESIGN.md anchor) and triplet |m| = 1 (odd relative motion). CI is variational in each
    # spin sector and the orbital spaces are nested, so the lowest triplet decreases with K and
    # stays above its exact energy.
    hbar_omega = 0.05
    exact_singlet = hbar_omega + _relative_motion_energy(hbar_omega, 0)
    exact_triplet = hbar_omega + _relative_motion_energy(hbar_omega, 1)
    assert exact_singlet == pytest.approx(0.12608014, abs=1e-6)
    triplets = []
    for k in (3, 6, 10):
        cfg = qdjax.EDConfig(grid=32, basis=16, orbitals=k)
        sp = ed.spectrum(potentials.harmonic(cfg, hbar_omega), 2, 4, cfg)
        spins = np.asarray(sp.total_spin)
        assert spins[0] == pytest.approx(0.0, abs=1e-9)  # singlet ground state
        triplets.append(float(sp.energies[int(np.argmax(spins > 0.5))]))
        assert float(sp.energies[0]) > exact_singlet
    assert all(a > b for a, b in zip(triplets, triplets[1:]))
    assert triplets[-1] > exact_triplet and triplets[-1] - exact_triplet < 3e-3


def test_parabolic_dot_four_electrons_hund_rule():
    # Circular parabolic dot, hbar w = 20 meV (oscillator length 7.5 nm, Coulomb scale
    # e^2 / (eps_r l) = 15 meV): shells 1s (2), 1p (2 x 2, half filled at N = 4). Hund's rule:
    # the two p electrons align, ground state S = 1, below the lowest singlet.
    cfg = qdjax.EDConfig(grid=32, basis=16, orbitals=6)
    sp = ed.spectrum(potentials.harmonic(cfg, 0.02), 4, 4, cfg)
    assert float(sp.total_spin[0]) == pytest.approx(1.0, abs=1e-9)
    singlet = int(np.argmax(np.abs(np.asarray(sp.total_spin)) < 0.5))
    assert float(sp.energies[singlet]) > float(sp.energies[0]) + 1e-4


def test_gradients_match_finite_differences(small_V):
    # Energies and the singlet-triplet splitting J = E_T - E_S (N = 2) against central finite
    # differences along random directions (jax.test_util.check_grads), reverse and forward mode.
    V = jnp.asarray(small_V[0])
    sp = ed.spectrum(V, 2, 4, SMALL)
    triplet = int(np.argmax(np.asarray(sp.total_spin) > 0.5))
    weights = jnp.asarray(np.random.default_rng(0).normal(size=4))

    def energies(v):
        return jnp.dot(weights, ed.spectrum(v, 2, 4, SMALL).energies)

    def exchange(v):
        e = ed.spectrum(v, 2, 4, SMALL).energies
        return e[triplet] - e[0]

    check_grads(energies, (V,), order=1, modes=("rev", "fwd"), eps=1e-4, atol=1e-8, rtol=1e-6)
    check_grads(exchange, (V,), order=1, modes=("rev",), eps=1e-4, atol=1e-8, rtol=1e-6)


def test_gradients_finite_at_degenerate_levels():
    # Harmonic trap, N = 2: the lowest triplet is two-fold degenerate (1s 1p, m = +-1) and so
    # are singlets above it. Gradients of every energy are finite; the gradient of a degenerate
    # class is that of its mean, so the class sum matches finite differences (which see the
    # split branches of the individual levels, but not of their sum).
    cfg = qdjax.EDConfig(grid=24, basis=10, orbitals=6)
    V = jnp.asarray(potentials.harmonic(cfg, 0.03))
    sp = ed.spectrum(V, 2, 4, cfg)
    np.testing.assert_allclose(sp.total_spin[:3], [0.0, 1.0, 1.0], atol=1e-9)
    assert float(sp.energies[2] - sp.energies[1]) < 1e-8
    jac = jax.jacrev(lambda v: ed.spectrum(v, 2, 4, cfg).energies)(V)
    assert bool(jnp.all(jnp.isfinite(jac)))
    np.testing.assert_allclose(jac[1], jac[2], atol=1e-12)  # class mean
    check_grads(lambda v: ed.spectrum(v, 2, 4, cfg).energies[1:3].sum(), (V,), order=1, modes=("rev",), eps=1e-5,
                atol=1e-8, rtol=1e-5)  # fmt: skip
    check_grads(lambda v: ed.spectrum(v, 2, 4, cfg).energies[0], (V,), order=1, modes=("rev",), eps=1e-5,
                atol=1e-8, rtol=1e-5)  # fmt: skip


def test_ground_state_and_transformations(small_V):
    # The lowest level is ed.ground_state's energy and density (no degeneracy here); jit equals
    # eager and vmap equals a loop; a second call with equal shapes does not recompile.
    sp = ed.spectrum(small_V, 3, 5, SMALL)
    gs = ed.ground_state(small_V, 3, SMALL)
    np.testing.assert_allclose(sp.energies[:, 0], gs.energy, atol=1e-11)
    np.testing.assert_allclose(sp.densities[:, 0], gs.density, atol=1e-10)
    jitted = jax.jit(ed.spectrum, static_argnums=(1, 2, 3))(small_V, 3, 5, SMALL)
    vmapped = jax.vmap(lambda v: ed.spectrum(v, 3, 5, SMALL))(jnp.asarray(small_V))
    for i in range(2):
        single = ed.spectrum(small_V[i], 3, 5, SMALL)
        for field in ("energies", "total_spin", "densities", "spin_densities"):
            ref = getattr(single, field)
            for out in (sp, jitted, vmapped):
                np.testing.assert_allclose(getattr(out, field)[i], ref, rtol=1e-9, atol=1e-11)


@pytest.mark.slow
@pytest.mark.parametrize("n_electrons", [2, 3, 4])
def test_paper_size_matches_pyscf_nroots(config, random_V, n_electrons):
    # Paper settings (grid 64, basis 32, 8 orbitals; Davidson for N = 4): PySCF nroots = 6.
    V = random_V[n_electrons % 3]
    sp = ed.spectrum(V, n_electrons, 6, config)
    ints = ed.integrals(V, config)
    nelec = fock.spin_sector(n_electrons)
    e, vectors, _ = _pyscf(ints, config, nelec, 6)
    np.testing.assert_allclose(sp.energies, e, atol=1e-8, rtol=0)
    multiplicity = [fci.spin_op.spin_square(c, config.orbitals, nelec)[1] for c in vectors]
    np.testing.assert_allclose(2 * sp.total_spin + 1, multiplicity, atol=1e-8)


def test_spectrum_validation(small_V):
    with pytest.raises(ValueError, match="n_states"):
        ed.spectrum(small_V, 2, 0, SMALL)
    with pytest.raises(ValueError, match="exceeds"):
        ed.spectrum(small_V, 1, 7, SMALL)  # 6 one-electron states
    with pytest.raises(ValueError, match="shape"):
        ed.spectrum(small_V[..., :10], 2, 3, SMALL)


# ----------------------------------------------------------------------------- chemical potentials


def test_chemical_potentials(small_V):
    # mu(N) = E0(N) - E0(N-1) of separate ground-state calls; without interaction mu fills the
    # orbitals two by two (aufbau); with it, the addition energy mu(2) - mu(1) is the charging
    # energy, positive.
    mu = ed.chemical_potentials(small_V, 3, SMALL)
    assert mu.shape == (2, 3)
    energies = np.stack([np.asarray(ed.ground_state(small_V, n, SMALL).energy) for n in (1, 2, 3)], -1)
    np.testing.assert_allclose(mu, np.diff(energies, prepend=0.0, axis=-1), atol=1e-11)
    assert bool(jnp.all(mu[:, 1] > mu[:, 0]))
    free = SMALL.non_interacting()
    e = ed.integrals(small_V, free).orbitals.energies
    np.testing.assert_allclose(ed.chemical_potentials(small_V, 4, free), e[:, [0, 0, 1, 1]], atol=1e-11)
    with pytest.raises(ValueError, match="n_max"):
        ed.chemical_potentials(small_V, 0, SMALL)


# ----------------------------------------------------------------------------- pair correlation


def _pair_reference(ints, config, n_electrons, r0):
    """Like- and unlike-spin conditional pair densities from PySCF's spin-resolved 2-RDMs
    (make_rdm12s, dm2[p, q, r, s] = <p+ r+ s q>) of a non-degenerate ground state."""
    nelec = fock.spin_sector(n_electrons)
    _, (c,), solver = _pyscf(ints, config, nelec, 1)
    (dm1a, dm1b), (dm2aa, dm2ab, dm2bb) = solver.make_rdm12s(c, config.orbitals, nelec)
    psi = np.asarray(spectrum._orbital_values(ints.orbitals.coefficients, jnp.asarray(r0), config))
    a = np.outer(psi, psi)
    n_r0 = np.sum(a * (dm1a + dm1b))
    like = np.einsum("pq,pqrs->rs", a, dm2aa + dm2bb) / n_r0
    unlike = np.einsum("pq,pqrs->rs", a, dm2ab + dm2ab.transpose(2, 3, 0, 1)) / n_r0
    return [ed.density_from_rdm1(0.5 * (m + m.T), ints.orbitals.coefficients, config) for m in (like, unlike)]


@pytest.mark.parametrize("n_electrons", [2, 3])
def test_pair_correlation(small_V, n_electrons):
    # Reference: PySCF 2-RDMs on the same integrals. Invariants: g integrates to N - 1, like +
    # unlike = g; for N = 2 (one up, one down) the like-spin part vanishes everywhere; for any N
    # it vanishes at r0 itself (Pauli), checked at the point from the orbital matrices.
    V = small_V[0]
    r0 = jnp.array([14.0, 16.0])
    g = ed.pair_correlation(V, n_electrons, r0, SMALL)
    resolved = ed.pair_correlation(V, n_electrons, r0, SMALL, spin_resolved=True)
    assert g.shape == (24, 24) and resolved.shape == (2, 24, 24)
    np.testing.assert_allclose(g.sum() * SMALL.pixel_nm**2, n_electrons - 1, atol=1e-10)
    np.testing.assert_allclose(resolved.sum(0), g, atol=1e-13)
    ints = ed.integrals(V, SMALL)
    for ours, ref in zip(resolved, _pair_reference(ints, SMALL, n_electrons, r0)):
        np.testing.assert_allclose(ours, ref, atol=1e-9 * float(g.max()))
    like, _, _ = spectrum._pair_matrices(ints, n_electrons, r0, SMALL)
    psi = spectrum._orbital_values(ints.orbitals.coefficients, r0, SMALL)
    assert abs(float(psi @ like @ psi)) < 1e-12 * float(g.max())
    if n_electrons == 2:
        assert float(jnp.abs(resolved[0]).max()) < 1e-12
    batched = ed.pair_correlation(small_V, n_electrons, r0, SMALL)
    np.testing.assert_allclose(batched[0], g, atol=1e-12)
    with pytest.raises(ValueError, match="r0"):
        ed.pair_correlation(V, 2, jnp.zeros(3), SMALL)
