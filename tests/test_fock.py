"""Fock-space tables and the many-body Hamiltonian against independent references."""

import itertools
import math

import numpy as np
import pytest
from pyscf import fci

from qdjax import fock
from conftest import random_symmetric


def random_integrals(k, seed):
    """Random h1 (K, K) and eri (K, K, K, K) with the 8-fold symmetry, eri positive-ish."""
    rng = np.random.default_rng(seed)
    h1 = random_symmetric(k, seed)
    p, q = np.triu_indices(k)
    b = rng.normal(size=(len(p), len(p)))
    pair = b @ b.T / len(p)
    index = np.zeros((k, k), dtype=int)
    index[p, q] = index[q, p] = np.arange(len(p))
    return h1, pair[index[:, :, None, None], index[None, None, :, :]]


def jordan_wigner_hamiltonian(h1, eri):
    """Full Fock-space Hamiltonian from Jordan-Wigner matrices, spin-orbital 2p + s."""
    k = h1.shape[0]
    n_so = 2 * k
    z = np.diag([1.0, -1.0])
    lower = np.array([[0.0, 1.0], [0.0, 0.0]])  # annihilates the occupied state |1> -> |0>
    def annihilator(j):
        ops = [z] * j + [lower] + [np.eye(2)] * (n_so - j - 1)
        out = ops[0]
        for o in ops[1:]:
            out = np.kron(out, o)
        return out
    a = [annihilator(j) for j in range(n_so)]
    so = lambda p, s: 2 * p + s
    dim = 2**n_so
    h = np.zeros((dim, dim))
    for p, q in itertools.product(range(k), repeat=2):
        for s in (0, 1):
            h += h1[p, q] * a[so(p, s)].T @ a[so(q, s)]
    for p, q, r, t in itertools.product(range(k), repeat=4):
        if eri[p, q, r, t] == 0:
            continue
        for s1 in (0, 1):
            for s2 in (0, 1):
                h += 0.5 * eri[p, q, r, t] * a[so(p, s1)].T @ a[so(r, s2)].T @ a[so(t, s2)] @ a[so(q, s1)]
    number = sum(a[j].T @ a[j] for j in range(n_so))
    sz = sum(0.5 * (a[so(p, 0)].T @ a[so(p, 0)] - a[so(p, 1)].T @ a[so(p, 1)]) for p in range(k))
    return h, np.diag(number), np.diag(sz)


@pytest.mark.parametrize("k, n", [(1, 1), (2, 2), (3, 1), (3, 2), (3, 3), (3, 4), (4, 3)])
def test_dimension_and_strings(k, n):
    # Counting: C(K, N_up) C(K, N_down) with (N_up, N_down) = ((N + 1) // 2, N // 2).
    space = fock.fock_space(k, n)
    assert space.dimension == math.comb(k, (n + 1) // 2) * math.comb(k, n // 2)
    assert len({tuple(s) for s in space.strings_up}) == len(space.strings_up)


@pytest.mark.parametrize("k, n", [(3, 1), (3, 2), (3, 3), (3, 4)])
def test_spectrum_matches_jordan_wigner(k, n):
    # Reference: brute-force second quantisation (Jordan-Wigner matrices of a_p,sigma over the
    # whole 2^(2K) Fock space), restricted to particle number N and S_z = (N mod 2) / 2.
    h1, eri = random_integrals(k, seed=10 * k + n)
    big, number, sz = jordan_wigner_hamiltonian(h1, eri)
    keep = (number == n) & np.isclose(sz, 0.5 * (n % 2))
    ref = np.linalg.eigvalsh(big[np.ix_(keep, keep)])
    ours = np.linalg.eigvalsh(np.asarray(fock.hamiltonian(fock.fock_space(k, n), h1, eri)))
    np.testing.assert_allclose(ours, ref, atol=1e-11)


@pytest.mark.parametrize("k, n", [(4, 2), (5, 3), (5, 4), (6, 4)])
def test_energy_and_rdm1_match_pyscf(k, n):
    # Reference: PySCF FCI (direct_spin1) on the same integrals, solved exactly in its P-space.
    h1, eri = random_integrals(k, seed=k + 7 * n)
    space = fock.fock_space(k, n)
    h = np.asarray(fock.hamiltonian(space, h1, eri))
    np.testing.assert_allclose(h, h.T, atol=1e-13)
    w, c = np.linalg.eigh(h)
    gamma = np.asarray(fock.rdm1(space, c[:, :1], np.ones(1)))
    solver = fci.direct_spin1.FCI()
    solver.pspace_size = space.dimension + 1
    solver.conv_tol = 1e-14
    nelec = fock.spin_sector(n)
    e_ref, civec = solver.kernel(h1, eri, k, nelec)
    assert w[0] == pytest.approx(e_ref, abs=1e-10)
    np.testing.assert_allclose(gamma, solver.make_rdm1(civec, k, nelec), atol=1e-9)
    assert np.trace(gamma) == pytest.approx(n, abs=1e-12)


def test_rdm1_of_mixture_is_weighted_sum():
    # Linearity: the 1-RDM of a mixture is the weighted sum of the states' 1-RDMs.
    space = fock.fock_space(4, 3)
    c = np.linalg.qr(np.random.default_rng(3).normal(size=(space.dimension, 3)))[0]
    w = np.array([0.2, 0.5, 0.3])
    mixed = fock.rdm1(space, c, w)
    parts = sum(wi * fock.rdm1(space, c[:, i : i + 1], np.ones(1)) for i, wi in enumerate(w))
    np.testing.assert_allclose(mixed, parts, atol=1e-13)


def test_out_of_range_electrons():
    with pytest.raises(ValueError, match="n_electrons"):
        fock.fock_space(3, 7)


# ----------------------------------------------------------------------------- matrix-free


@pytest.mark.parametrize("k, n", [(1, 1), (3, 2), (4, 3), (5, 4), (5, 5), (6, 3), (3, 5), (4, 7)])
def test_matrix_free_product_diagonal_block_and_rdm1_equal_the_assembled_ones(k, n):
    # Oracle: the assembled Hamiltonian (itself checked against Jordan-Wigner and PySCF above).
    # The block is taken on random determinants, repeats included, and on all of them.
    # (3, 5) and (4, 7) have more excitations per down string than per up string, so the
    # opposite-spin product runs over the up strings; the other cases over the down strings.
    h1, eri = random_integrals(k, seed=3 * k + n)
    space, lists = fock.fock_space(k, n), fock.excitation_lists(k, n)
    assert lists.dimension == space.dimension
    h = np.asarray(fock.hamiltonian(space, h1, eri))
    x = np.random.default_rng(k + n).normal(size=(space.dimension, 3))
    np.testing.assert_allclose(np.asarray(fock.apply_hamiltonian(lists, h1, eri, x)), h @ x, atol=1e-12)
    np.testing.assert_allclose(np.asarray(fock.hamiltonian_diagonal(lists, h1, eri)), np.diag(h), atol=1e-12)
    some = np.random.default_rng(n).integers(0, space.dimension, size=min(2 * space.dimension, 40))
    for idx in (some, np.arange(space.dimension)):
        block = np.asarray(fock.hamiltonian_block(lists, h1, eri, idx))
        np.testing.assert_allclose(block, h[np.ix_(idx, idx)], atol=1e-12)
    w = np.array([0.25, 0.45, 0.3])
    np.testing.assert_allclose(
        np.asarray(fock.rdm1_from_lists(lists, x, w)), np.asarray(fock.rdm1(space, x, w)), atol=1e-12
    )


@pytest.mark.parametrize("k, n", [(6, 4), (7, 5)])
def test_matrix_free_product_matches_pyscf_sigma(k, n):
    # Independent reference: PySCF's direct_spin1 contraction (its H c) on the same integrals.
    # PySCF orders the strings of a spin by their occupation bit mask, qdjax lexicographically
    # by occupied orbitals; the sign conventions agree, so a permutation maps one to the other.
    h1, eri = random_integrals(k, seed=k * n)
    nelec = fock.spin_sector(n)

    def pyscf_order(m):
        ours = [sum(1 << p for p in s) for s in itertools.combinations(range(k), m)]
        return np.array([ours.index(t) for t in fci.cistring.make_strings(range(k), m)])

    up, down = pyscf_order(nelec[0]), pyscf_order(nelec[1])
    c = np.random.default_rng(n).normal(size=(len(up), len(down)))  # PySCF's order
    ours = np.zeros_like(c)
    ours[np.ix_(up, down)] = c
    lists = fock.excitation_lists(k, n)
    hc = np.asarray(fock.apply_hamiltonian(lists, h1, eri, ours.reshape(-1, 1)))[:, 0].reshape(c.shape)
    ref = fci.direct_spin1.contract_2e(fci.direct_spin1.absorb_h1e(h1, eri, k, nelec, 0.5), c, k, nelec)
    np.testing.assert_allclose(hc[np.ix_(up, down)], ref, atol=1e-11)
