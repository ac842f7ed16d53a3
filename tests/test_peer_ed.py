"""Tests of the peer NumPy/SciPy/PySCF ED pipeline (benchmarks/peer_ed.py).

The pipeline is the independent reference qdjax is compared against, so it is checked here
against oracles of its own: closed forms, numerical quadrature, slow loops and a dense
two-electron diagonalisation built in this file.
"""

import importlib.util
import itertools
import math
import pathlib

import numpy as np
import pytest
import scipy.integrate
import scipy.special

from qdjax import units

_PATH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "peer_ed.py"
_SPEC = importlib.util.spec_from_file_location("peer_ed", _PATH)
peer_ed = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(peer_ed)

L = 30.0


def _random_potential(seed, grid=64):
    return peer_ed.random_potential(seed, L=L, grid=grid)


@pytest.fixture(scope="module")
def paper_n2():
    """Paper-size run (grid 64, basis 32, 8 orbitals), N = 2, on a random potential."""
    return peer_ed.ground_state(_random_potential(1), 2)


def test_constants_match_units():
    # The peer module keeps its own copy of the CODATA 2018 constants; they must agree.
    assert peer_ed.HBAR2_OVER_2ME == units.HBAR2_OVER_2ME
    assert peer_ed.COULOMB_K == units.COULOMB_K


@pytest.mark.parametrize("offset", [0.0, 0.3])
def test_box_orbital_energies_closed_form(offset):
    # Closed form for a constant potential c in the hard-wall box:
    # e_mn = hbar^2 pi^2 (m^2 + n^2) / (2 m* L^2) + c; lowest m^2 + n^2 are 2, 5, 5, 8, 10, 10, 13, 13.
    m_eff = units.GAAS_M_EFF
    V = np.full((64, 64), offset)
    energies, U = peer_ed.single_particle(V, L, 32, 8, m_eff)
    expected = units.HBAR2_OVER_2ME / m_eff * math.pi**2 / L**2 * np.array(
        [2, 5, 5, 8, 10, 10, 13, 13]) + offset
    np.testing.assert_allclose(energies, expected, rtol=1e-10)
    np.testing.assert_allclose(U.T @ U, np.eye(8), atol=1e-12)


def test_overlap_table_partition_of_unity():
    # The pixels tile [0, L], so sum_i A[i, m, m'] = int_0^L phi_m phi_m' = delta_mm'.
    A = peer_ed.overlap_table(L, 64, 32)
    np.testing.assert_allclose(A.sum(axis=0), np.eye(32), atol=1e-13)


def test_wrong_itj0y0_of_old_scipy_is_refused(monkeypatch):
    # SciPy before 1.17 returned 1.4e8 for itj0y0(100) (scipy/scipy#22436); the peer refuses
    # such a SciPy instead of building a wrong Coulomb kernel.
    monkeypatch.setattr(scipy.special, "itj0y0", lambda x: (np.full_like(np.asarray(x, float), 1.4e8),) * 2)
    peer_ed._check_itj0y0.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="scipy>=1.17"):
            peer_ed.vico_fourier(np.array([1.0]), 40.0)
    finally:
        monkeypatch.undo()
        peer_ed._check_itj0y0.cache_clear()
    assert peer_ed.vico_fourier(np.array([0.0]), 40.0)[0] == pytest.approx(2 * math.pi * 40.0)


@pytest.mark.parametrize("k", [1e-4, 0.01, 0.1, 0.3, 0.5, 1.7, 5.0])
def test_vico_fourier_matches_quadrature(k):
    # Khat(k) = (2 pi / k) int_0^{kR} J0(t) dt (Vico et al. 2016), the integral done by
    # adaptive quadrature of scipy.special.j0 here instead of scipy.special.itj0y0.
    # Tolerance: itj0y0 is accurate to ~1e-14 except near x = kR ~ 12..25, where it is off by
    # up to ~4e-10 relative (checked against quad and against the Struve-function closed form
    # x J0 + (pi x / 2)(J1 H0 - J0 H1), which agree with each other to ~1e-15); k = 0.5 gives
    # kR = 21.2.
    R = math.sqrt(2.0) * L
    edges = np.linspace(0.0, k * R, int(k * R / math.pi) + 2)  # pieces of at most pi
    integral = sum(scipy.integrate.quad(scipy.special.j0, a, b, epsabs=1e-14, epsrel=1e-13)[0]
                   for a, b in zip(edges[:-1], edges[1:]))
    np.testing.assert_allclose(peer_ed.vico_fourier(k, R), 2 * math.pi / k * integral,
                               rtol=1e-9)


def test_vico_fourier_at_zero():
    # Limit k -> 0: int_0^{kR} J0 ~ kR, so Khat(0) = 2 pi R.
    R = math.sqrt(2.0) * L
    np.testing.assert_allclose(peer_ed.vico_fourier(0.0, R), 2 * math.pi * R, rtol=1e-15)
    np.testing.assert_allclose(peer_ed.vico_fourier(1e-9, R), 2 * math.pi * R, rtol=1e-12)


def test_vico_kernel_gaussian_potential():
    # Closed form: a normalised 2D Gaussian charge of width s has the 3D-Coulomb potential
    # phi(r) = sqrt(pi/2)/s exp(-r^2/(4 s^2)) I0(r^2/(4 s^2)) and self-energy sqrt(pi)/(2 s).
    # The kernel convolution of its pixel-centre samples reproduces both (measured: ~4e-11).
    grid, s = 64, 2.0
    h = L / grid
    c = (np.arange(grid) + 0.5) * h
    r2 = (c[:, None] - L / 2) ** 2 + (c[None, :] - L / 2) ** 2
    rho = np.exp(-r2 / (2 * s**2)) / (2 * math.pi * s**2)
    kernel = peer_ed.vico_kernel(L, grid)
    phi = np.fft.irfft2(np.fft.rfft2(rho, s=(2 * grid, 2 * grid)) * np.fft.rfft2(kernel),
                        s=(2 * grid, 2 * grid))[:grid, :grid]
    expected = math.sqrt(math.pi / 2) / s * scipy.special.ive(0, r2 / (4 * s**2))
    np.testing.assert_allclose(phi, expected, rtol=1e-9)
    np.testing.assert_allclose((rho * phi).sum() * h**2, math.sqrt(math.pi) / (2 * s), rtol=1e-10)
    # Even in the offset: kernel[-d, -e] = kernel[d, e] (indices mod 2 grid).
    mirrored = np.roll(kernel[::-1, ::-1], 1, axis=(0, 1))
    np.testing.assert_allclose(mirrored, kernel, atol=1e-15 * np.abs(kernel).max())


def test_two_electrons_one_orbital_empty_box():
    # Empty 30 nm box, K = 1, N = 2: E = 2 e_11 + J_11,11, with
    # J_11,11 = 4.758855 e^2 / (4 pi eps0 eps_r L) (DESIGN.md "Anchors", = 17.7069 meV).
    eps_r = units.GAAS_EPS_R
    gs = peer_ed.ground_state(np.zeros((64, 64)), 2, orbitals=1, eps_r=eps_r)
    J = gs["energy"] - 2 * gs["orbital_energies"][0]
    expected = 4.758855 * units.COULOMB_K / (eps_r * L)
    np.testing.assert_allclose(J, expected, rtol=1e-5)
    np.testing.assert_allclose(gs["eri"][0, 0, 0, 0], J, rtol=1e-12)
    np.testing.assert_allclose(gs["rdm1"], [[2.0]], atol=1e-14)


def test_eri_symmetries(paper_n2):
    # Real orbitals: (pq|rs) = (qp|rs) = (pq|sr) = (rs|pq) (8-fold symmetry); and the Coulomb
    # kernel is positive definite, so the pair matrix [(pq), (rs)] is positive semidefinite.
    eri = paper_n2["eri"]
    K = eri.shape[0]
    for perm in [(1, 0, 2, 3), (0, 1, 3, 2), (2, 3, 0, 1), (3, 2, 1, 0), (1, 0, 3, 2)]:
        np.testing.assert_allclose(eri.transpose(perm), eri, atol=1e-14, rtol=0)
    pair_matrix = eri.reshape(K * K, K * K)
    assert np.linalg.eigvalsh(pair_matrix).min() > -1e-12
    assert np.all(np.einsum("pppp->p", eri) > 0)


@pytest.mark.parametrize("n_electrons", [1, 2, 3, 4])
def test_density_sums_to_n(n_electrons):
    # Pixel-averaged density: sum(n) h^2 = trace(gamma) = N exactly; n >= 0 since gamma is PSD.
    gs = peer_ed.ground_state(_random_potential(2), n_electrons)
    h = L / 64
    np.testing.assert_allclose(np.trace(gs["rdm1"]), n_electrons, atol=1e-10)
    np.testing.assert_allclose(gs["density"].sum() * h**2, n_electrons, atol=1e-10)
    assert gs["density"].min() > -1e-10
    assert gs["density"].shape == (64, 64)


def test_potential_matrix_against_quadrature_loop():
    # Slow reference: every pixel integral of phi_m phi_m' by scipy.integrate.quad, then the
    # four-index sum <mn|V|m'n'> = sum_ij V[i, j] A[i, m, m'] A[j, n, n'] in Python loops.
    grid, basis = 8, 4
    h = L / grid
    V = np.random.default_rng(3).uniform(0.0, 0.5, (grid, grid))

    def phi(m, x):
        return math.sqrt(2 / L) * math.sin(m * math.pi * x / L)

    A_ref = np.zeros((grid, basis, basis))
    for i in range(grid):
        for m in range(1, basis + 1):
            for mp in range(1, basis + 1):
                A_ref[i, m - 1, mp - 1] = scipy.integrate.quad(
                    lambda x: phi(m, x) * phi(mp, x), i * h, (i + 1) * h,
                    epsabs=1e-14, epsrel=1e-13)[0]
    M_ref = np.zeros((basis**2, basis**2))
    for m, n, mp, np_ in itertools.product(range(basis), repeat=4):
        total = 0.0
        for i in range(grid):
            for j in range(grid):
                total += V[i, j] * A_ref[i, m, mp] * A_ref[j, n, np_]
        M_ref[m * basis + n, mp * basis + np_] = total

    A = peer_ed.overlap_table(L, grid, basis)
    np.testing.assert_allclose(A, A_ref, atol=1e-14)
    np.testing.assert_allclose(peer_ed.potential_matrix(V, A), M_ref, atol=1e-10, rtol=0)


def test_kinetic_index_order():
    # T[(m-1)*basis + (n-1)] = hbar^2 pi^2 (m^2 + n^2) / (2 m* L^2), checked entry by entry.
    basis, m_eff = 5, 0.067
    T = peer_ed.kinetic(L, basis, m_eff)
    for m, n in itertools.product(range(1, basis + 1), repeat=2):
        expected = units.HBAR2_OVER_2ME / m_eff * math.pi**2 * (m**2 + n**2) / L**2
        np.testing.assert_allclose(T[(m - 1) * basis + (n - 1)], expected, rtol=1e-15)


def test_fci_two_electrons_equals_dense_singlet(paper_n2):
    # Independent oracle: the two-electron spatial Hamiltonian in the product basis
    # |p(1) q(2)>, H[(pq), (rs)] = h_pr d_qs + d_pr h_qs + (pr|qs), restricted to the symmetric
    # (singlet) combinations and diagonalised densely; spin-summed gamma_pr = 2 sum_q Psi_pq Psi_rq.
    h1e, eri = paper_n2["h1e"], paper_n2["eri"]
    K = h1e.shape[0]
    eye = np.eye(K)
    H = (np.einsum("pr,qs->pqrs", h1e, eye) + np.einsum("pr,qs->pqrs", eye, h1e)
         + eri.transpose(0, 2, 1, 3)).reshape(K * K, K * K)
    columns = []
    for p in range(K):
        for q in range(p, K):
            v = np.zeros((K, K))
            v[p, q] += 1.0
            v[q, p] += 1.0
            columns.append(v.ravel() / np.linalg.norm(v))
    B = np.array(columns).T
    w, c = np.linalg.eigh(B.T @ H @ B)
    assert w[1] - w[0] > 1e-3  # non-degenerate ground state on this potential
    psi = (B @ c[:, 0]).reshape(K, K)
    gamma = 2 * psi @ psi.T

    energy, rdm1 = peer_ed.fci(h1e, eri, 2)
    np.testing.assert_allclose(energy, w[0], atol=1e-10, rtol=0)
    np.testing.assert_allclose(paper_n2["energy"], w[0], atol=1e-10, rtol=0)
    np.testing.assert_allclose(rdm1, gamma, atol=1e-9)


def test_fci_accepts_diagonal_h1e(paper_n2):
    e_diag, _ = peer_ed.fci(paper_n2["orbital_energies"], paper_n2["eri"], 2)
    assert e_diag == pytest.approx(paper_n2["energy"], abs=1e-12)


def test_non_interacting_energy_is_sum_of_orbital_energies():
    # eps_r = inf: zero Coulomb tensor, E = sum of the lowest N orbital energies (aufbau,
    # two per orbital), here N = 4 on a random potential.
    gs = peer_ed.ground_state(_random_potential(4), 4, eps_r=math.inf)
    e = gs["orbital_energies"]
    assert np.all(gs["eri"] == 0)
    np.testing.assert_allclose(gs["energy"], 2 * e[0] + 2 * e[1], atol=1e-10, rtol=0)


def test_hellmann_feynman_non_interacting():
    # For non-interacting electrons dE/dV[i, j] = n[i, j] h^2 exactly (DESIGN.md numerical
    # conventions); checked by a central finite difference on a few pixels.
    grid, basis = 32, 12
    h = L / grid
    V = _random_potential(5, grid=grid)
    kwargs = dict(grid=grid, basis=basis, orbitals=4, eps_r=math.inf)
    gs = peer_ed.ground_state(V, 3, **kwargs)
    delta = 1e-4
    for i, j in [(16, 16), (5, 20), (2, 29)]:
        Vp, Vm = V.copy(), V.copy()
        Vp[i, j] += delta
        Vm[i, j] -= delta
        derivative = (peer_ed.ground_state(Vp, 3, **kwargs)["energy"]
                      - peer_ed.ground_state(Vm, 3, **kwargs)["energy"]) / (2 * delta)
        # Finite-difference error: O(delta^2) truncation plus ~1e-15 eV round-off / delta.
        np.testing.assert_allclose(derivative, gs["density"][i, j] * h**2, rtol=1e-6, atol=1e-10)


def test_degenerate_manifold_gives_symmetric_density():
    # Empty box, N = 3: the ground state is degenerate (orbitals (1,2) and (2,1)); averaging
    # over the whole manifold makes the density invariant under the symmetries of the square.
    grid = 32
    gs = peer_ed.ground_state(np.zeros((grid, grid)), 3, grid=grid, basis=12, orbitals=6)
    n = gs["density"]
    np.testing.assert_allclose(n, n.T, atol=1e-7 * n.max())
    np.testing.assert_allclose(n, n[::-1, :], atol=1e-7 * n.max())
    np.testing.assert_allclose(n, n[:, ::-1], atol=1e-7 * n.max())


@pytest.mark.parametrize("n_electrons", [0, 17])
def test_invalid_electron_number(n_electrons):
    with pytest.raises(ValueError, match="n_electrons"):
        peer_ed.ground_state(np.zeros((64, 64)), n_electrons)


def test_invalid_potential_shape():
    with pytest.raises(ValueError, match="shape"):
        peer_ed.ground_state(np.zeros((32, 32)), 2)


def test_cli_runs(capsys):
    peer_ed.main(["--n-electrons", "2", "--seed", "0", "--repeat", "1",
                  "--grid", "16", "--basis", "6", "--orbitals", "4"])
    out = capsys.readouterr().out
    assert "energy" in out and "fci" in out and "sum(n) h^2       2.0000" in out
