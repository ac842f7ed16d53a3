"""Fock space of Slater determinants and the many-body Hamiltonian in it.

Determinants of the sector (N_up, N_down) = ((N + 1) // 2, N // 2) over K spatial orbitals,
|I_up I_down> = (prod_{p in I_up} a+_{p up}) (prod_{p in I_down} a+_{p down}) |0>, strings in
lexicographic order, the full index being I_up * n_down_strings + I_down. This sector holds a
component of every spin multiplet with S >= S_z = (N mod 2) / 2, so it always contains the
global ground state.

The Hamiltonian is written with the spin-summed excitation operators E_pq = E^up_pq + E^down_pq,

    H = sum_pq k_pq E_pq + 1/2 sum_pqrs (pq|rs) E_pq E_rs,    k_pq = h_pq - 1/2 sum_r (pr|rq),

so that with E^sigma_pq tables built once on the host per (K, N) (Slater-Condon rules: the
sign of a+_p a_q on a string is (-1) to the number of occupied orbitals it passes) the matrix

    H = H_up (x) 1 + 1 (x) H_down + sum_{pq, rs} (pq|rs) E^up_pq (x) E^down_rs,
    H_sigma = sum_pq k_pq E^sigma_pq + 1/2 sum_pqrs (pq|rs) E^sigma_pq E^sigma_rs,

is assembled in traced, differentiable code from the integrals h (K, K) and (pq|rs).

Sectors too large to assemble are handled matrix-free: `excitation_lists` keeps, per spin and
per target string, the n (K - n + 1) excitations a+_p a_q |J> = sign |I> that reach it
(O(K N strings) numbers instead of O(K^2 strings^2)). `sector_operator` builds H_up and H_down
densely over the strings of each spin and the columns of (pq|rs) the excitations name, and
`apply_operator` (or `apply_hamiltonian`, both steps in one) forms H x from two products with
the string Hamiltonians and, for the opposite-spin part, gathers over these lists and one
product per string with those columns, as direct CI does; `hamiltonian_diagonal`,
`hamiltonian_block` (H among a few determinants, for the preconditioner) and
`rdm1_from_lists` complete what the eigensolver needs.

The functions that take a `FockSpace` or `ExcitationLists` are jitted with the tables as a
static argument (both hash by (K, n_up, n_down), which determine them): an eager call
compiles one program per sector and input shape, and inside a jitted caller they are inlined.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike


def _sector_hash(tables) -> int:
    """Hash of a sector's host tables (`FockSpace`, `ExcitationLists`) by (K, n_up, n_down),
    which determine them, so that functions take them as a static argument under jax.jit."""
    return hash((type(tables).__name__, tables.orbitals, tables.n_up, tables.n_down))


def _sector_eq(tables, other) -> bool:
    return type(other) is type(tables) and (tables.orbitals, tables.n_up, tables.n_down) == (
        other.orbitals, other.n_up, other.n_down)


class FockSpace(NamedTuple):
    """Host-side tables of one (K, N) sector.

    orbitals: K.  n_up, n_down: electrons per spin.
    strings_up: int array (n_up_strings, n_up), occupied orbitals of each up string.
    strings_down: int array (n_down_strings, n_down).
    e_up: float64 array (K*K, n_up_strings, n_up_strings), <I| a+_p a_q |J> at [p*K + q, I, J].
    e_down: float64 array (K*K, n_down_strings, n_down_strings).
    """

    orbitals: int
    n_up: int
    n_down: int
    strings_up: np.ndarray
    strings_down: np.ndarray
    e_up: np.ndarray
    e_down: np.ndarray

    __hash__ = _sector_hash
    __eq__ = _sector_eq

    @property
    def dimension(self) -> int:
        """Number of determinants, C(K, n_up) * C(K, n_down)."""
        return len(self.strings_up) * len(self.strings_down)


def spin_sector(n_electrons: int) -> tuple[int, int]:
    """(N_up, N_down) = ((N + 1) // 2, N // 2)."""
    return (n_electrons + 1) // 2, n_electrons // 2


def sector_dimension(orbitals: int, n_electrons: int) -> int:
    """Number of determinants of the sector, C(K, N_up) * C(K, N_down)."""
    n_up, n_down = spin_sector(n_electrons)
    return math.comb(orbitals, n_up) * math.comb(orbitals, n_down)


def _excitations(orbitals: int, n: int):
    """The strings of n electrons in K orbitals (lexicographic) and every nonzero
    <I| a+_p a_q |J> = sign between them, as (strings, [(p K + q, I, J, sign), ...])."""
    strings = list(itertools.combinations(range(orbitals), n))
    index = {sum(1 << p for p in s): i for i, s in enumerate(strings)}
    entries = []
    for j, occ in enumerate(strings):
        mask = sum(1 << p for p in occ)
        for q in occ:
            removed = mask & ~(1 << q)
            sign_q = (-1) ** bin(mask & ((1 << q) - 1)).count("1")
            for p in range(orbitals):
                if removed & (1 << p):
                    continue
                sign_p = (-1) ** bin(removed & ((1 << p) - 1)).count("1")
                entries.append((p * orbitals + q, index[removed | (1 << p)], j, sign_p * sign_q))
    return strings, entries


def _excitation_table(orbitals: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    strings, entries = _excitations(orbitals, n)
    table = np.zeros((orbitals * orbitals, len(strings), len(strings)))
    for x, i, j, sign in entries:
        table[x, i, j] = sign
    return np.array(strings, dtype=np.int32).reshape(len(strings), n), table


def _sector(orbitals: int, n_electrons: int) -> tuple[int, int]:
    """(N_up, N_down), after checking 1 <= N <= 2 K."""
    if not 1 <= n_electrons <= 2 * orbitals:
        raise ValueError(f"n_electrons must be in 1..{2 * orbitals} for {orbitals} orbitals, got {n_electrons}")
    return spin_sector(n_electrons)


@functools.lru_cache(maxsize=32)
def fock_space(orbitals: int, n_electrons: int) -> FockSpace:
    """Slater-Condon tables of the ((N + 1) // 2, N // 2) sector, built once per (K, N).

    Args:
      orbitals: K >= 1 spatial orbitals.
      n_electrons: 1 <= N <= 2 K.

    Returns:
      FockSpace (host NumPy arrays, read-only).
    """
    n_up, n_down = _sector(orbitals, n_electrons)
    strings_up, e_up = _excitation_table(orbitals, n_up)
    strings_down, e_down = _excitation_table(orbitals, n_down)
    for a in (strings_up, e_up, strings_down, e_down):
        a.flags.writeable = False
    return FockSpace(orbitals, n_up, n_down, strings_up, strings_down, e_up, e_down)


def _one_body_k(h1: jax.Array, eri: jax.Array) -> jax.Array:
    """k_pq = h_pq - 1/2 sum_r (pr|rq), (..., K, K): the one-body part of H in E_pq form."""
    return h1 - 0.5 * jnp.einsum("...prrq->...pq", eri)


def _flat_integrals(h1: jax.Array, eri: jax.Array) -> tuple[jax.Array, jax.Array]:
    """k_pq and (pq|rs) indexed by x = p K + q: (..., K*K) and (..., K*K, K*K)."""
    k2 = h1.shape[-1] ** 2
    return _one_body_k(h1, eri).reshape(h1.shape[:-2] + (k2,)), eri.reshape(eri.shape[:-4] + (k2, k2))


def _spin_blocks(c: jax.Array, weights: jax.Array) -> tuple[jax.Array, jax.Array]:
    """sum_s w_s c_s c_s^T traced over the other spin, for c (..., n_up, n_down, S): the
    (..., n_up, n_up) and (..., n_down, n_down) blocks from which the 1-RDM follows."""
    m_up = jnp.einsum("...s,...ibs,...jbs->...ij", weights, c, c)
    m_down = jnp.einsum("...s,...ais,...ajs->...ij", weights, c, c)
    return m_up, m_down


def _same_spin_block(e: jax.Array, k_flat: jax.Array, eri_flat: jax.Array) -> jax.Array:
    one_body = jnp.einsum("...x,xab->...ab", k_flat, e)
    m = jnp.einsum("...xy,yab->...xab", eri_flat, e)  # sum_rs (pq|rs) E_rs for each pq
    return one_body + 0.5 * jnp.einsum("xab,...xbc->...ac", e, m)


@functools.partial(jax.jit, static_argnums=0)
def hamiltonian(space: FockSpace, h1: ArrayLike, eri: ArrayLike) -> jax.Array:
    """Dense many-body Hamiltonian of the sector.

    Args:
      space: tables from `fock_space`.
      h1: array (..., K, K), eV, one-body integrals in the orbital basis.
      eri: array (..., K, K, K, K), eV, (pq|rs) in chemists' notation.

    Returns:
      array (..., D, D), eV, D = space.dimension.
    """
    h1 = jnp.asarray(h1)
    eri = jnp.asarray(eri)
    e_up = jnp.asarray(space.e_up, dtype=h1.dtype)
    e_down = jnp.asarray(space.e_down, dtype=h1.dtype)
    n_up, n_down = e_up.shape[-1], e_down.shape[-1]
    k_flat, eri_flat = _flat_integrals(h1, eri)
    h_up = _same_spin_block(e_up, k_flat, eri_flat)
    h_down = _same_spin_block(e_down, k_flat, eri_flat)
    cross = jnp.einsum("xab,...xy,ycd->...acbd", e_up, eri_flat, e_down)
    eye_up = jnp.eye(n_up, dtype=h1.dtype)
    eye_down = jnp.eye(n_down, dtype=h1.dtype)
    full = (
        jnp.einsum("...ab,cd->...acbd", h_up, eye_down)
        + jnp.einsum("ab,...cd->...acbd", eye_up, h_down)
        + cross
    )
    d = n_up * n_down
    return full.reshape(full.shape[:-4] + (d, d))


@functools.partial(jax.jit, static_argnums=0)
def rdm1(space: FockSpace, vectors: ArrayLike, weights: ArrayLike) -> jax.Array:
    """Spin-summed one-body density matrix of a mixture of states.

    gamma_pq = sum_s w_s <c_s| E_pq |c_s>.

    Args:
      space: tables from `fock_space`.
      vectors: array (..., D, S), states as columns.
      weights: array (..., S), mixture weights (sum to 1 for a normalised density matrix).

    Returns:
      array (..., K, K), symmetric, trace = N * sum(weights).
    """
    vectors = jnp.asarray(vectors)
    k = space.orbitals
    n_up, n_down = len(space.strings_up), len(space.strings_down)
    c = vectors.reshape(vectors.shape[:-2] + (n_up, n_down, vectors.shape[-1]))
    m_up, m_down = _spin_blocks(c, weights)
    e_up = jnp.asarray(space.e_up, dtype=vectors.dtype)
    e_down = jnp.asarray(space.e_down, dtype=vectors.dtype)
    gamma = jnp.einsum("xij,...ij->...x", e_up, m_up) + jnp.einsum("xij,...ij->...x", e_down, m_down)
    return gamma.reshape(gamma.shape[:-1] + (k, k))


# ----------------------------------------------------------------------------- matrix-free


class ExcitationLists(NamedTuple):
    """Sparse Slater-Condon tables of one (K, N) sector, for sectors too large for the dense
    tables of `FockSpace` and the assembled Hamiltonian (see `apply_hamiltonian`).

    Every target string I is reached by L = n (K - n + 1) excitations a+_p a_q |J> = sign |I>
    (p = q for each of the n occupied orbitals, and p occupied in I, q empty in I otherwise),
    listed per target string:

    orbitals: K.  n_up, n_down: electrons per spin.
    link_up: int32 (n_up_strings, L_up), x = p*K + q of each excitation into string I.
    source_up: int32 (n_up_strings, L_up), its source string J.
    sign_up: float64 (n_up_strings, L_up), its sign (+-1).
    occupation_up: float64 (n_up_strings, K), 1 where the string occupies the orbital.
    link_down, source_down, sign_down, occupation_down: the same for the down strings.
    """

    orbitals: int
    n_up: int
    n_down: int
    link_up: np.ndarray
    source_up: np.ndarray
    sign_up: np.ndarray
    occupation_up: np.ndarray
    link_down: np.ndarray
    source_down: np.ndarray
    sign_down: np.ndarray
    occupation_down: np.ndarray

    __hash__ = _sector_hash
    __eq__ = _sector_eq

    @property
    def strings(self) -> tuple[int, int]:
        """Numbers of up and of down strings."""
        return self.occupation_up.shape[0], self.occupation_down.shape[0]

    @property
    def dimension(self) -> int:
        """Number of determinants."""
        return math.prod(self.strings)


def _string_lists(orbitals: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(link, source, sign, occupation) of the strings of n electrons in K orbitals
    (lexicographic), the excitations of each target string in the order `_excitations` gives."""
    strings, entries = _excitations(orbitals, n)
    per_target = n * (orbitals - n + 1)
    link = np.zeros((len(strings), per_target), np.int32)
    source = np.zeros((len(strings), per_target), np.int32)
    sign = np.zeros((len(strings), per_target))
    filled = np.zeros(len(strings), np.int64)
    occupation = np.zeros((len(strings), orbitals))
    for j, occ in enumerate(strings):
        occupation[j, list(occ)] = 1.0
    for x, i, j, value in entries:
        link[i, filled[i]], source[i, filled[i]], sign[i, filled[i]] = x, j, value
        filled[i] += 1
    if np.any(filled != per_target):
        raise AssertionError(f"internal: excitations per string {sorted(set(filled))} != {per_target}")
    return link, source, sign, occupation


@functools.lru_cache(maxsize=8)
def excitation_lists(orbitals: int, n_electrons: int) -> ExcitationLists:
    """Sparse excitation tables of the ((N + 1) // 2, N // 2) sector, built once per (K, N).

    Memory O(K N strings) instead of the O(K^2 * strings^2) of `fock_space`.

    Args:
      orbitals: K >= 1 spatial orbitals.
      n_electrons: 1 <= N <= 2 K.

    Returns:
      ExcitationLists (host NumPy arrays, read-only).
    """
    n_up, n_down = _sector(orbitals, n_electrons)
    up = _string_lists(orbitals, n_up)
    down = _string_lists(orbitals, n_down)
    for a in up + down:
        a.flags.writeable = False
    return ExcitationLists(orbitals, n_up, n_down, *up, *down)


class _Links(NamedTuple):
    """One spin's lists as device arrays: link, source (int32) and sign (x's dtype), (n_strings, L)."""

    link: jax.Array
    source: jax.Array
    sign: jax.Array


def _links(lists: ExcitationLists, dtype) -> tuple[_Links, _Links]:
    up = _Links(jnp.asarray(lists.link_up), jnp.asarray(lists.source_up), jnp.asarray(lists.sign_up, dtype))
    down = _Links(jnp.asarray(lists.link_down), jnp.asarray(lists.source_down), jnp.asarray(lists.sign_down, dtype))
    return up, down


def _excite_rows(links: _Links, c: jax.Array) -> jax.Array:
    """E^sigma_x c for the excitations of each target string, along the first axis of c
    (n_strings, m): (n_strings, L, m), [I, l] = sign * c[source]."""
    return links.sign[:, :, None] * c[links.source]


def _string_hamiltonian(links: _Links, k_flat: jax.Array, eri_flat: jax.Array) -> jax.Array:
    """H_sigma = sum_x k_x E_x + 1/2 sum_xy (x|y) E_x E_y over all strings of one spin,
    (n_strings, n_strings): E_x E_y passes through the sources m of each target string, so
    every entry is a scatter of sign * sign' * (x|y) over the L x L excitation pairs."""
    n_strings = links.source.shape[0]
    rows = jnp.arange(n_strings)[:, None]
    middle = links.source  # (n_strings, L): the string E_x acts on
    values = links.sign[:, :, None] * links.sign[middle] * eri_flat[links.link[:, :, None], links.link[middle]]
    h = jnp.zeros((n_strings, n_strings), k_flat.dtype).at[rows, links.source].add(links.sign * k_flat[links.link])
    return h.at[rows[:, :, None], links.source[middle]].add(0.5 * values)


@functools.lru_cache(maxsize=8)
def _pairs(orbitals: int) -> tuple[np.ndarray, np.ndarray]:
    """The P = K (K + 1) / 2 orbital pairs p <= q: their x = p K + q, (P,), and for every
    x = p K + q the index of the pair {p, q}, (K*K,) (int32, host arrays)."""
    p, q = np.triu_indices(orbitals)
    pair = np.zeros((orbitals, orbitals), np.int32)
    pair[p, q] = pair[q, p] = np.arange(len(p), dtype=np.int32)
    return (p * orbitals + q).astype(np.int32), pair.reshape(-1)


def _gemm_spin_is_down(lists: ExcitationLists) -> bool:
    """Which spin's excitations `SectorOperator.pair_columns` lists: the spin with fewer
    excitations per string, down when equal."""
    return lists.link_down.shape[1] <= lists.link_up.shape[1]


class SectorOperator(NamedTuple):
    """The Hamiltonian of a matrix-free sector in the factorised form `apply_operator` uses,
    H = H_up (x) 1 + 1 (x) H_down + sum_xy (x|y) E^up_x E^down_y, x, y = pq running over the
    K^2 orbital pairs. Linear in (h1, eri), so its tangents are those of the integrals.

    h_up: (n_up_strings, n_up_strings) eV, the string Hamiltonian H_up.
    h_down: (n_down_strings, n_down_strings) eV, H_down.
    pair_columns: (n_a_strings, P, L_a) eV, (pq|y) for the P = K (K + 1) / 2 pairs p <= q and
      the L_a excitations y of each string of spin a, the spin with fewer excitations per
      string (down when equal).
    """

    h_up: jax.Array
    h_down: jax.Array
    pair_columns: jax.Array


@functools.partial(jax.jit, static_argnums=0)
def sector_operator(lists: ExcitationLists, h1: ArrayLike, eri: ArrayLike) -> SectorOperator:
    """The `SectorOperator` of a sector: string Hamiltonians and the Coulomb columns the
    opposite-spin product needs. Built once per Hamiltonian, outside the eigensolver's loop.

    Args:
      lists: tables from `excitation_lists`.
      h1: (K, K) eV, one-body integrals in the orbital basis.
      eri: (K, K, K, K) eV, (pq|rs) in chemists' notation, with the symmetries of real
        orbitals, (pq|rs) = (qp|rs) = (rs|pq).

    Returns:
      SectorOperator (shapes in its docstring), dtype of the integrals.
    """
    h1 = jnp.asarray(h1)
    eri = jnp.asarray(eri)
    k_flat, eri_flat = _flat_integrals(h1, eri)
    up, down = _links(lists, h1.dtype)
    rows, _ = _pairs(lists.orbitals)
    gemm = down if _gemm_spin_is_down(lists) else up
    pair_columns = eri_flat[jnp.asarray(rows)][:, gemm.link].transpose(1, 0, 2)
    return SectorOperator(
        _string_hamiltonian(up, k_flat, eri_flat), _string_hamiltonian(down, k_flat, eri_flat), pair_columns
    )


def _opposite_spin(a: _Links, b: _Links, pair_of: jax.Array, pair_columns: jax.Array, c: jax.Array) -> jax.Array:
    """sum_xy (x|y) E^b_x E^a_y c for one vector c (n_a_strings, n_b_strings), spin a along
    the first axis: the rows E^a_y c of each string (a gather of L_a rows), then per string
    of spin a one (P, L_a) x (L_a, n_b) product with its Coulomb columns,
    g[I, {pq}, J] = sum_y (pq|y) (E^a_y c)[I, J], then the de-excitation of spin b,
    sum_x E^b_x g_x, reading g at the pair {p, q} of each x = p K + q ((pq|y) = (qp|y)).
    The de-excitation is one gather per excitation slot l, each fused with its
    multiply-add: on XLA's CPU backend half the time of one (n_a, n_b, L_b) gather and a sum
    (K = 12, n = 3: 3.6 against 7.2 ms; the whole of `apply_operator` 6 % faster at K = 12,
    N = 6, 16 % at K = 16, N = 4, the same at N = 5)."""
    n_b = c.shape[1]
    g = jnp.einsum("ipl,ilj->ipj", pair_columns, _excite_rows(a, c)).reshape(c.shape[0], -1)  # (n_a, P n_b)
    index = pair_of[b.link] * n_b + b.source  # (n_b, L_b) into the flattened (P, n_b)
    out = jnp.zeros(c.shape, c.dtype)
    for slot in range(index.shape[1]):
        out = out + b.sign[None, :, slot] * g[:, index[:, slot]]
    return out


@functools.partial(jax.jit, static_argnums=0)
def apply_operator(lists: ExcitationLists, operator: SectorOperator, x: ArrayLike) -> jax.Array:
    """H x for a `SectorOperator` H (from `sector_operator`), without assembling H.

    H x = H_up X + X H_down^T + sum_xy (x|y) E^up_x E^down_y X, with X the (n_up_strings,
    n_down_strings) matrix of each column: the same-spin parts are two dense products, the
    opposite-spin part a gather of L rows per string, one (P, L) x (L, n_strings) product per
    string with its Coulomb columns and a gather of L entries per determinant (direct CI
    with one excitation on each side and the pq <-> qp symmetry, P = K (K + 1) / 2). Linear
    in the operator and in x; differentiable. The columns of x are applied one after
    another (memory about P d numbers at a time, d determinants).

    Args:
      lists: tables from `excitation_lists`.
      operator: SectorOperator of the same sector.
      x: (d, m) vectors as columns.

    Returns:
      (d, m), eV times x.
    """
    x = jnp.asarray(x)
    n_up, n_down = lists.strings
    up, down = _links(lists, x.dtype)
    pair_of = jnp.asarray(_pairs(lists.orbitals)[1])
    h_up, h_down, pair_columns = operator
    a_down = _gemm_spin_is_down(lists)

    def one(column):
        c = column.reshape(n_up, n_down)
        out = h_up @ c + c @ h_down.T
        if a_down:
            out = out + _opposite_spin(down, up, pair_of, pair_columns, c.T).T
        else:
            out = out + _opposite_spin(up, down, pair_of, pair_columns, c)
        return out.reshape(n_up * n_down)

    return jax.lax.map(one, x.T).T


@functools.partial(jax.jit, static_argnums=0)
def apply_hamiltonian(lists: ExcitationLists, h1: ArrayLike, eri: ArrayLike, x: ArrayLike) -> jax.Array:
    """H x without assembling H: the many-body Hamiltonian of the sector times a block of
    vectors, ``apply_operator(lists, sector_operator(lists, h1, eri), x)``.

    Same H as `hamiltonian` (same determinant order). Linear in (h1, eri) and in x;
    differentiable. Where H is applied many times (an eigensolver), build the
    `sector_operator` once and call `apply_operator`.

    Args:
      lists: tables from `excitation_lists`.
      h1: (K, K) eV, one-body integrals in the orbital basis.
      eri: (K, K, K, K) eV, (pq|rs) in chemists' notation, with the symmetries of real
        orbitals, (pq|rs) = (qp|rs) = (rs|pq).
      x: (d, m) vectors as columns.

    Returns:
      (d, m), eV times x.
    """
    return apply_operator(lists, sector_operator(lists, h1, eri), x)


def _matches(links: _Links, targets: jax.Array, sources: jax.Array) -> jax.Array:
    """[I, J, l] = sign of excitation l of string targets[I] if its source is sources[J],
    else 0: (s, s, L), the entries <targets_I| E_x |sources_J> with x = link[targets_I, l]."""
    hit = links.source[targets][:, None, :] == sources[None, :, None]
    return jnp.where(hit, links.sign[targets][:, None, :], 0.0)


@functools.partial(jax.jit, static_argnums=0)
def hamiltonian_block(lists: ExcitationLists, h1: ArrayLike, eri: ArrayLike, indices: ArrayLike) -> jax.Array:
    """H restricted to a set of determinants, <I| H |J> for I, J in `indices`, without
    assembling H or applying it: the same-spin parts from the string Hamiltonians H_up and
    H_down (dense over the strings of each spin), the opposite-spin part
    sum_xy (x|y) <I_up| E^up_x |J_up> <I_down| E^down_y |J_down> from the excitations that
    join the two strings of each spin. Same H and determinant order as `hamiltonian` and
    `apply_hamiltonian`. Memory O(s^2 L), L = n (K - n + 1) excitations per string.

    Args:
      lists: tables from `excitation_lists`.
      h1: (K, K) eV, one-body integrals in the orbital basis.
      eri: (K, K, K, K) eV, (pq|rs) in chemists' notation.
      indices: (s,) int determinant indices (traced values allowed).

    Returns:
      (s, s) eV, symmetric.
    """
    h1 = jnp.asarray(h1)
    eri = jnp.asarray(eri)
    indices = jnp.asarray(indices)
    k_flat, eri_flat = _flat_integrals(h1, eri)
    up, down = _links(lists, h1.dtype)
    n_down = lists.strings[1]
    a, b = indices // n_down, indices % n_down
    h_up = _string_hamiltonian(up, k_flat, eri_flat)[a[:, None], a[None, :]]
    h_down = _string_hamiltonian(down, k_flat, eri_flat)[b[:, None], b[None, :]]
    same_a = a[:, None] == a[None, :]
    same_b = b[:, None] == b[None, :]
    pair = eri_flat[up.link[a][:, :, None], down.link[b][:, None, :]]  # (s, L_up, L_down)
    cross = jnp.einsum("ijl,ilm,ijm->ij", _matches(up, a, a), pair, _matches(down, b, b))
    return jnp.where(same_b, h_up, 0.0) + jnp.where(same_a, h_down, 0.0) + cross


@functools.partial(jax.jit, static_argnums=0)
def hamiltonian_diagonal(lists: ExcitationLists, h1: ArrayLike, eri: ArrayLike) -> jax.Array:
    """Diagonal of the sector Hamiltonian, (d,) eV, by the Slater-Condon rule for a determinant:
    sum_{p occ} h_pp + 1/2 sum_{p, q occ} [(pp|qq) - delta_spin (pq|qp)].

    Args:
      lists: tables from `excitation_lists`.
      h1: (K, K) eV, one-body integrals in the orbital basis.
      eri: (K, K, K, K) eV, (pq|rs) in chemists' notation.

    Returns:
      (d,) eV, in the determinant order of `apply_hamiltonian`.
    """
    h1 = jnp.asarray(h1)
    eri = jnp.asarray(eri)
    hd = jnp.diagonal(h1)
    coulomb = jnp.einsum("ppqq->pq", eri)
    exchange = jnp.einsum("pqqp->pq", eri)
    n_a = jnp.asarray(lists.occupation_up, dtype=h1.dtype)
    n_b = jnp.asarray(lists.occupation_down, dtype=h1.dtype)

    def same_spin(n):
        return n @ hd + 0.5 * jnp.einsum("ip,pq,iq->i", n, coulomb - exchange, n)

    diag = same_spin(n_a)[:, None] + same_spin(n_b)[None, :] + n_a @ coulomb @ n_b.T
    return diag.reshape(-1)


@functools.partial(jax.jit, static_argnums=0)
def rdm1_from_lists(lists: ExcitationLists, vectors: ArrayLike, weights: ArrayLike) -> jax.Array:
    """`rdm1` from the sparse tables: gamma_pq = sum_s w_s <c_s| E_pq |c_s>, (K, K).

    Args:
      lists: tables from `excitation_lists`.
      vectors: (d, S) states as columns.
      weights: (S,) mixture weights.

    Returns:
      (K, K), symmetric, trace = N * sum(weights).
    """
    vectors = jnp.asarray(vectors)
    k = lists.orbitals
    n_up, n_down = lists.strings
    m_up, m_down = _spin_blocks(vectors.reshape(n_up, n_down, vectors.shape[-1]), weights)
    gamma = jnp.zeros(k * k, m_up.dtype)
    for m, links in zip((m_up, m_down), _links(lists, m_up.dtype)):
        rows = jnp.arange(m.shape[0])[:, None]
        gamma = gamma.at[links.link].add(links.sign * m[rows, links.source])
    return gamma.reshape(k, k)


# ----------------------------------------------------------------------------- spin


def _excite_all(links: _Links, c: jax.Array, orbitals: int) -> jax.Array:
    """E^sigma_x c for every x = p K + q, spin sigma along the first axis of c (n_strings, m):
    (K*K, n_strings, m). Each target string is reached by each x from one source at most."""
    rows = jnp.broadcast_to(jnp.arange(c.shape[0])[:, None], links.link.shape)
    out = jnp.zeros((orbitals * orbitals,) + c.shape, c.dtype)
    return out.at[links.link, rows].add(_excite_rows(links, c))


@functools.partial(jax.jit, static_argnums=0)
def excitation_vectors(lists: ExcitationLists, vector: ArrayLike) -> tuple[jax.Array, jax.Array]:
    """The one-spin excitations of one state, E^up_x |c> and E^down_x |c> for every
    x = p K + q, from the sparse tables.

    Every spin-resolved one- and two-body quantity of real states follows from them by inner
    products: <E^sigma_pq> = <c| E^sigma_pq c>, and
    <E^sigma_pq E^tau_rs> = <E^sigma_qp c| E^tau_rs c> (E_pq^T = E_qp).

    Args:
      lists: tables from `excitation_lists`.
      vector: (d,) one state in the determinant order of `hamiltonian`.

    Returns:
      (phi_up, phi_down), each (K*K, n_up_strings, n_down_strings), dtype of the vector.
    """
    vector = jnp.asarray(vector)
    n_up, n_down = lists.strings
    k = lists.orbitals
    c = vector.reshape(n_up, n_down)
    up, down = _links(lists, c.dtype)
    return _excite_all(up, c, k), jnp.swapaxes(_excite_all(down, c.T, k), 1, 2)


def _transposed_pairs(orbitals: int) -> np.ndarray:
    """For every x = p K + q the index q K + p, (K*K,) int32."""
    x = np.arange(orbitals * orbitals)
    return ((x % orbitals) * orbitals + x // orbitals).astype(np.int32)


@functools.partial(jax.jit, static_argnums=0)
def apply_spin_squared(lists: ExcitationLists, x: ArrayLike) -> jax.Array:
    """S^2 x, the total spin squared on the sector, without assembling it.

    S^2 = S_- S_+ + S_z (S_z + 1) with S_z = (N_up - N_down) / 2 on the sector and
    S_- S_+ = N_down - sum_pq E^down_pq E^up_qp (anticommutation of a_p,up and a+_q,up):
    the up excitations of each column (`excitation_vectors`), then the down de-excitation
    of each, gathered over the down lists. Independent of the integrals.

    Args:
      lists: tables from `excitation_lists`.
      x: (d, m) vectors as columns.

    Returns:
      (d, m), S^2 x (dimensionless).
    """
    x = jnp.asarray(x)
    n_up, n_down = lists.strings
    k = lists.orbitals
    up, down = _links(lists, x.dtype)
    sz = 0.5 * (lists.n_up - lists.n_down)
    diagonal = lists.n_down + sz * (sz + 1.0)
    transposed_link = jnp.asarray(_transposed_pairs(k))[down.link]  # (n_down, L_down)

    def one(column):
        c = column.reshape(n_up, n_down)
        phi_up = _excite_all(up, c, k)  # (K*K, n_up, n_down)
        # sum_x E^down_{x^T} phi_up[x]: [I, J] = sum_l sign[J, l] phi_up[x^T(J, l), I, source[J, l]]
        gathered = phi_up[transposed_link, :, down.source]  # (n_down, L_down, n_up)
        flip = jnp.einsum("jl,jli->ij", down.sign, gathered)
        return (diagonal * c - flip).reshape(-1)

    return jax.lax.map(one, x.T).T


@functools.partial(jax.jit, static_argnums=0)
def spin_rdm1(lists: ExcitationLists, vector: ArrayLike) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Spin-resolved one-body quantities of one real state.

    gamma^sigma_pq = <c| E^sigma_pq |c> and the spin-flip correlation
    F_pq = sum_r <c| E^up_pr E^down_rq |c>, from which the spin density of any member of the
    state's multiplet follows (qdjax.spectrum).

    Args:
      lists: tables from `excitation_lists`.
      vector: (d,) one normalised state.

    Returns:
      (gamma_up, gamma_down, flip), each (K, K).
    """
    vector = jnp.asarray(vector)
    k = lists.orbitals
    n_up, n_down = lists.strings
    c = vector.reshape(n_up, n_down)
    phi_up, phi_down = excitation_vectors(lists, vector)
    gamma_up = jnp.einsum("xab,ab->x", phi_up, c).reshape(k, k)
    gamma_down = jnp.einsum("xab,ab->x", phi_down, c).reshape(k, k)
    # <E^up_pr E^down_rq> = <E^up_rp c | E^down_rq c>
    flip = jnp.einsum("rpab,rqab->pq", phi_up.reshape(k, k, n_up, n_down), phi_down.reshape(k, k, n_up, n_down))
    return gamma_up, gamma_down, flip
