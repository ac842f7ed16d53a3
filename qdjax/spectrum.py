"""Spin-resolved many-body spectrum, chemical potentials and pair correlation.

Built on the exact diagonalisation of qdjax.ed (same integrals, Fock sector and solvers):

- `spectrum`: the lowest spin multiplets, each once. The sector (N_up, N_down) = ((N + 1) // 2,
  N // 2) that the ED solves, S_z = (N mod 2) / 2, holds exactly one member of every multiplet
  with S >= S_z, and S^2 commutes with H, so its lowest eigenstates are the lowest multiplets,
  one state each. The lowest R = n_states + `SPECTRUM_GUARD` of them are computed (+
  `SPECTRUM_GUARD_DENSE` with the dense solver); inside each degenerate group (consecutive
  energies closer than `EDConfig.degeneracy_tol`) S^2 is diagonalised
  (`qdjax.fock.apply_spin_squared`), so that every state has a definite S even where levels of
  different spin coincide (the non-interacting limit). S follows from <S^2> = S(S + 1). States
  of one group with equal S (a spatially degenerate level, e.g. in a symmetric trap) form a
  class; energy, density and spin density are averaged over the class, which makes them
  independent of the vectors an eigensolver returns. Within a group, classes are ordered by S.
- Spin densities of the member with S_z = S, from the S_z = (N mod 2)/2 member by the
  projection theorem (Wigner-Eckart for the vector operator t_pq = (1/2) sum_ab
  a+_pa sigma_ab a_qb): <S S| t_z |S S> = <t . S> / (S + 1), where the scalar <t . S> is the
  same for every member of the multiplet and is evaluated in the solved sector as
  <t . S>_pq = S_z (gamma^up - gamma^down)_pq / 2 + (gamma_pq - F_pq - F_qp) / 2,
  F_pq = sum_r <E^up_pr E^down_rq> (qdjax.fock.spin_rdm1). Then
  gamma^up/down(S_z = S) = gamma / 2 +- <t . S> / (S + 1). No other sector is solved.
- Derivatives of the energies with respect to V: each energy is the class-averaged diagonal of
  U^T H U in the spin-adapted basis, with the eigensolvers' degeneracy-safe derivatives
  (qdjax.linalg). Away from degeneracies this is dE_i = <i| dH |i> (Hellmann-Feynman). At a
  degenerate level, states of different S are resolved exactly (V does not couple spins), and
  the derivative of a class of states with equal S and energy is the derivative of its mean
  energy, tr(P dH P) / m over the class subspace P of dimension m. Finite everywhere.
- `chemical_potentials`: mu(N) = E0(N) - E0(N - 1), E0(0) = 0, from `qdjax.ed.ground_states`
  (one single-particle solve and Coulomb tensor for all N).
- `pair_correlation`: the conditional pair density g(r) = rho2(r0, r) / n(r0) of the ground
  manifold (averaged over it), rho2(r1, r2) = sum_{sigma tau} <psi+_sigma(r1) psi+_tau(r2)
  psi_tau(r2) psi_sigma(r1)>, pixel-averaged in r; sum(g) h^2 = N - 1.

All three accept leading batch axes of V and work under jax.jit (N, n_states, config static),
jax.vmap and jax.grad with respect to V; inputs are validated before tracing, and an eager
call recomputes unconverged instances with the dense solvers (as qdjax.ed does).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from qdjax import backend, basis, ed, fock, linalg
from qdjax.config import EDConfig

__all__ = ["SPECTRUM_GUARD", "SPECTRUM_GUARD_DENSE", "Spectrum", "spectrum", "chemical_potentials",
           "pair_correlation"]

#: States computed beyond the n_states returned by Davidson, so that a degenerate class at the
#: boundary is complete (a class must end before the last computed state, or the instance
#: counts as not converged, and an eager call recomputes it densely). Davidson's cost grows
#: with the number of roots (docs/benchmarks.md, "Spectrum").
SPECTRUM_GUARD = 2
#: The same for the dense solver, which finds every state anyway.
SPECTRUM_GUARD_DENSE = 8


class Spectrum(NamedTuple):
    """Lowest spin multiplets, each once (module docstring); leading axes follow V's batch axes.

    energies: (..., n_states) eV, ascending (ties ordered by S).
    total_spin: (..., n_states) S, from <S^2> = S(S + 1) (half-integers up to rounding).
    densities: (..., n_states, grid, grid) nm^-2, spin-summed, pixel-averaged; each sums to
      N / h^2 (the same for every member of a multiplet).
    spin_densities: (..., n_states, 2, grid, grid) nm^-2, [..., 0, :, :] spin up and
      [..., 1, :, :] spin down, of the multiplet's member with S_z = S (so up - down integrates
      to 2 S).
    converged: (...,) bool, every solver behind it converged and the last returned class
      ended inside the computed states (for the dense solver: unless a class reaches
      beyond n_states + SPECTRUM_GUARD_DENSE states).
    """

    energies: jax.Array
    total_spin: jax.Array
    densities: jax.Array
    spin_densities: jax.Array
    converged: jax.Array


def _roots(config: EDConfig, n_electrons: int, n_states: int) -> int:
    """States computed for n_states returned: n_states + the guard of the solver used."""
    d = fock.sector_dimension(config.orbitals, n_electrons)
    roots = n_states + SPECTRUM_GUARD
    iterative = ed._matrix_free(config, n_electrons) or ed._iterative_fock(config, n_electrons, roots)
    return min(d, roots if iterative else n_states + SPECTRUM_GUARD_DENSE)


def _check_states(n_states, config: EDConfig, n_electrons: int) -> int:
    if isinstance(n_states, bool) or not isinstance(n_states, (int, np.integer)) or n_states < 1:
        raise ValueError(f"n_states must be a positive integer, got {n_states!r}")
    d = fock.sector_dimension(config.orbitals, n_electrons)
    if n_states > d:
        raise ValueError(
            f"n_states={n_states} exceeds the {d} states of N={n_electrons} in {config.orbitals} orbitals "
            f"(sector S_z={(n_electrons % 2) / 2})"
        )
    return int(n_states)


def _spin_from_square(s2: jax.Array) -> jax.Array:
    """S from S(S + 1) (clipped at 0)."""
    return 0.5 * (jnp.sqrt(1.0 + 4.0 * jnp.maximum(s2, 0.0)) - 1.0)


class _States(NamedTuple):
    """Spin-adapted lowest states of one instance, before class averaging (R states)."""

    energies: jax.Array  # (R,) diagonal of U^T H U in the spin-adapted basis
    spin: jax.Array  # (R,) S from <S^2>
    vectors: jax.Array  # (D, R)
    classes: jax.Array  # (R, R) averaging matrix: 1/m within a class of m states, else 0
    converged: jax.Array


def _spin_adapted(states: ed.LowestStates, roots: int, n_electrons: int, config: EDConfig) -> _States:
    """The lowest `roots` states with S^2 diagonalised inside each degenerate group."""
    w = states.energies[:roots]
    c = states.vectors[:, :roots]
    tol = config.degeneracy_tol
    group = jnp.concatenate([jnp.zeros(1, jnp.int32), jnp.cumsum(jnp.diff(w) > tol, dtype=jnp.int32)])
    same_group = group[:, None] == group[None, :]
    s2 = c.T @ fock.apply_spin_squared(states.lists, c)
    s2 = 0.5 * (s2 + s2.T)
    # Block-diagonal in the groups, each block shifted by `big` times its index, so that the
    # eigenvectors stay inside their group and come out ordered by group, then by S.
    s_max = 0.5 * n_electrons
    big = s_max * (s_max + 1.0) + 1.0
    q = jnp.where(same_group, s2, 0.0) + big * jnp.diag(group.astype(w.dtype))
    _, z = linalg.symmetric_eigh(jax.lax.stop_gradient(q), backend.per_instance_kernels(config.batching))
    z = jax.lax.stop_gradient(z)
    vectors = c @ z
    spin = _spin_from_square(jnp.einsum("ai,ab,bi->i", z, s2, z))
    energies = jnp.einsum("ai,ab,bi->i", z, c.T @ states.apply(c), z)
    twice = jnp.round(2.0 * jax.lax.stop_gradient(spin))
    same_class = (same_group & (twice[:, None] == twice[None, :])).astype(w.dtype)
    classes = same_class / jnp.sum(same_class, axis=1, keepdims=True)
    return _States(energies, spin, vectors, jax.lax.stop_gradient(classes), states.converged)


def _spin_matrices(lists: fock.ExcitationLists, vectors: jax.Array, spin: jax.Array, n_electrons: int):
    """Spin-summed gamma (R, K, K) and the up / down 1-RDMs of the S_z = S members (R, 2, K, K)
    by the projection theorem (module docstring); `spin` (R,) the S of each state."""
    up, down, flip = jax.lax.map(functools.partial(fock.spin_rdm1, lists), vectors.T)
    gamma = up + down
    sz = 0.5 * (n_electrons % 2)
    t_dot_s = 0.5 * sz * (up - down) + 0.5 * (gamma - flip - jnp.swapaxes(flip, -1, -2))
    t_dot_s = 0.5 * (t_dot_s + jnp.swapaxes(t_dot_s, -1, -2))
    polarisation = t_dot_s / (spin + 1.0)[:, None, None]
    return gamma, jnp.stack([0.5 * gamma + polarisation, 0.5 * gamma - polarisation], axis=1)


def _spectrum_single(V: jax.Array, n_electrons: int, n_states: int, config: EDConfig) -> Spectrum:
    ints, orbitals_converged = ed._integrals(V, config)
    roots = _roots(config, n_electrons, n_states)
    lowest = ed.lowest_states(ints.h1, ints.eri, n_electrons, config, roots)
    states = _spin_adapted(lowest, roots, n_electrons, config)
    d = fock.sector_dimension(config.orbitals, n_electrons)
    w = lowest.energies
    complete = jnp.bool_(True) if roots == d else (w[roots - 1] - w[n_states - 1] > config.degeneracy_tol)
    # S per class (rounded to a half-integer) for the projection theorem
    spin = jnp.round(2.0 * jax.lax.stop_gradient(states.spin)) / 2.0
    gamma, spin_gamma = _spin_matrices(lowest.lists, states.vectors, spin, n_electrons)
    average = functools.partial(jnp.einsum, "ij,j...->i...", states.classes[:n_states])
    coefficients = ints.orbitals.coefficients
    densities = ed.density_from_rdm1(average(gamma), coefficients, config)
    spin_densities = ed.density_from_rdm1(average(spin_gamma), coefficients, config)
    return Spectrum(
        average(states.energies),
        average(states.spin),
        densities,
        spin_densities,
        orbitals_converged & states.converged & complete,
    )


def _over_batch(fn, V, config: EDConfig, mesh):
    """fn of one (grid, grid) potential mapped over the leading axes of V (`ed.map_batch`)."""
    batch = V.shape[:-2]
    flat = V.reshape((-1,) + V.shape[-2:])
    with backend.full_precision(V.dtype):
        out = ed.map_batch(fn, flat, backend.sequential(config.batching), mesh)
    return jax.tree.map(lambda a: a.reshape(batch + a.shape[1:]), out)


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _spectrum_batched(V, n_electrons: int, n_states: int, config: EDConfig, mesh=None):
    out = _over_batch(lambda v: _spectrum_single(v, n_electrons, n_states, config), V, config, mesh)
    return out, out.converged


def spectrum(V: ArrayLike, n_electrons: int, n_states: int = 6, config: EDConfig = EDConfig()) -> Spectrum:
    """The lowest `n_states` spin multiplets of N electrons in V, each once.

    Energies of the ((N + 1) // 2, N // 2) sector (one member per multiplet with
    S >= (N mod 2) / 2), total spin from <S^2>, densities and the spin densities of each
    multiplet's S_z = S member (module docstring for the method and the derivative rule at
    degenerate levels).

    Args:
      V: float array (..., grid, grid), eV; leading axes are a batch.
      n_electrons: N, 1 <= N <= 2 * config.orbitals (static under jit).
      n_states: multiplets returned, at most the sector dimension (static under jit).
      config: EDConfig (static under jit).

    Returns:
      Spectrum: energies (..., n_states) eV; total_spin (..., n_states); densities
      (..., n_states, grid, grid) nm^-2; spin_densities (..., n_states, 2, grid, grid) nm^-2;
      converged (...,).

    Raises:
      ValueError: invalid V, N, config (qdjax.ed.validate) or n_states.
    """
    ed.validate(V, n_electrons, config)
    n = int(n_electrons)
    k = _check_states(n_states, config, n)
    V = jnp.asarray(V, dtype=config.dtype)
    return ed.solve_with_fallback(lambda v, cfg, mesh: _spectrum_batched(v, n, k, cfg, mesh), V, (n,), config)


def chemical_potentials(V: ArrayLike, n_max: int, config: EDConfig = EDConfig()) -> jax.Array:
    """Chemical potentials mu(N) = E0(N) - E0(N - 1) for N = 1..n_max, E0(0) = 0.

    Ground-state energies from `qdjax.ed.ground_states` (one single-particle solve and Coulomb
    tensor shared by all N). Addition energies are the differences of mu,
    mu(N + 1) - mu(N) = E0(N + 1) - 2 E0(N) + E0(N - 1).

    Args:
      V: float array (..., grid, grid), eV.
      n_max: largest N, 1 <= n_max <= 2 * config.orbitals (static under jit).
      config: EDConfig (static under jit).

    Returns:
      array (..., n_max), eV; [..., N - 1] is mu(N).
    """
    if isinstance(n_max, bool) or not isinstance(n_max, (int, np.integer)) or n_max < 1:
        raise ValueError(f"n_max must be a positive integer, got {n_max!r}")
    states = ed.ground_states(V, tuple(range(1, int(n_max) + 1)), config)
    return _differences_from_zero(jnp.stack([s.energy for s in states.interacting], axis=-1))


def _differences_from_zero(energies: ArrayLike) -> jax.Array:
    """mu(N) = E0(N) - E0(N - 1) from ground-state energies (..., n_max) of N = 1..n_max, E0(0) = 0."""
    energies = jnp.asarray(energies)
    return jnp.diff(energies, axis=-1, prepend=jnp.zeros_like(energies[..., :1]))


def _orbital_values(coefficients: jax.Array, r0: jax.Array, config: EDConfig) -> jax.Array:
    """psi_p(r0) of the orbitals (basis**2, K) at the point r0 (2,) nm: (K,) nm^-1."""
    b = config.basis
    m = jnp.arange(1, b + 1, dtype=coefficients.dtype)
    length = config.length_nm
    sx = jnp.sqrt(2.0 / length) * jnp.sin(m * jnp.pi * r0[0] / length)
    sy = jnp.sqrt(2.0 / length) * jnp.sin(m * jnp.pi * r0[1] / length)
    return jnp.einsum("m,n,mnp->p", sx, sy, coefficients.reshape(b, b, -1))


def _pair_matrices(ints: ed.Integrals, n_electrons: int, r0: jax.Array, config: EDConfig):
    """Orbital matrices (K, K) of the conditional pair density of the ground manifold, for
    like and for unlike spins of the electron at r0, g(r) = sum_rs D_rs psi_r(r) psi_s(r);
    and the convergence flag."""
    lowest = ed.lowest_states(ints.h1, ints.eri, n_electrons, config)
    d = fock.sector_dimension(config.orbitals, n_electrons)
    roots = min(d, ed.FOCK_ROOTS)
    w = lowest.energies[:roots]
    converged = lowest.converged
    if roots < d:
        converged = converged & (lowest.energies[roots - 1] - w[0] > config.degeneracy_tol)
    weights = jax.lax.stop_gradient(ed._ground_manifold(w, config.degeneracy_tol))
    psi = _orbital_values(ints.orbitals.coefficients, r0, config)
    a = jnp.outer(psi, psi)
    k = config.orbitals

    def one(vector):
        phis = fock.excitation_vectors(lowest.lists, vector)
        c = vector.reshape(phis[0].shape[1:])
        gammas = [jnp.einsum("xab,ab->x", phi, c).reshape(k, k) for phi in phis]
        # sum_pq A_pq E^sigma_qp c (A symmetric), then <that| E^tau_rs c>
        contracted = [jnp.einsum("x,xab->ab", a.reshape(-1), phi) for phi in phis]
        blocks = [[jnp.einsum("ab,xab->x", contracted[s], phis[t]).reshape(k, k) for t in range(2)] for s in range(2)]
        like = blocks[0][0] + blocks[1][1] - a @ (gammas[0] + gammas[1])
        unlike = blocks[0][1] + blocks[1][0]
        return like, unlike, gammas[0] + gammas[1]

    like, unlike, gamma = jax.lax.map(one, lowest.vectors[:, :roots].T)
    like, unlike, gamma = (jnp.einsum("s,s...->...", weights, x) for x in (like, unlike, gamma))
    density_r0 = jnp.sum(a * gamma)
    sym = lambda m: 0.5 * (m + m.T) / density_r0  # noqa: E731
    return sym(like), sym(unlike), converged


def _pair_single(V, r0, n_electrons: int, config: EDConfig):
    ints, orbitals_converged = ed._integrals(V, config)
    like, unlike, converged = _pair_matrices(ints, n_electrons, r0, config)
    images = basis.orbital_density(ints.orbitals.coefficients, jnp.stack([like, unlike]), config)
    return images, orbitals_converged & converged


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _pair_batched(V, r0, n_electrons: int, config: EDConfig, mesh=None):
    out = _over_batch(lambda v: _pair_single(v, r0, n_electrons, config), V, config, mesh)
    return out, out[1]


def pair_correlation(V: ArrayLike, n_electrons: int, r0: ArrayLike, config: EDConfig = EDConfig(),
                     spin_resolved: bool = False) -> jax.Array:
    """Density of the other electrons given one at r0, in the ground state (manifold average).

    g(r) = rho2(r0, r) / n(r0), pixel-averaged in r, with the pair density
    rho2(r1, r2) = sum_pqrs Gamma_pqrs psi_p(r1) psi_q(r1) psi_r(r2) psi_s(r2),
    Gamma_pqrs = <E_pq E_rs> - delta_qr <E_ps>; sum(g) h^2 = N - 1. Spin-resolved, the electron
    at r0 has either spin and the other electron the same (like) or the opposite (unlike)
    spin; like + unlike = g, and the like part vanishes at r0 (Pauli).

    Args:
      V: float array (..., grid, grid), eV.
      n_electrons: N >= 2 (static under jit).
      r0: (2,) nm, the point (x, y) of the fixed electron (may be traced); n(r0) must not
        vanish.
      config: EDConfig (static under jit).
      spin_resolved: return (..., 2, grid, grid), [like, unlike], instead of their sum.

    Returns:
      array (..., grid, grid) nm^-2, or (..., 2, grid, grid) with `spin_resolved`.
    """
    ed.validate(V, n_electrons, config)
    if n_electrons < 2:
        raise ValueError(f"pair_correlation needs n_electrons >= 2, got {n_electrons}")
    r0 = jnp.asarray(r0, dtype=config.dtype)
    if r0.shape != (2,):
        raise ValueError(f"r0 must be a point (x, y) in nm of shape (2,), got shape {r0.shape}")
    n = int(n_electrons)
    V = jnp.asarray(V, dtype=config.dtype)
    images, _ = ed.solve_with_fallback(lambda v, cfg, mesh: (_pair_batched(v, r0, n, cfg, mesh)), V, (n,), config)
    return images if spin_resolved else images.sum(axis=-3)
