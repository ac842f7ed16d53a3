"""Exact diagonalisation (configuration interaction) of N electrons in a 2D box.

    H = sum_i [ -hbar^2/(2 m*) lap_i + V(r_i) ] + sum_{i<j} e^2 / (4 pi eps0 eps_r |r_i - r_j|)

in the Fock space spanned by the lowest K single-particle orbitals (Pantis-Simut et al., Mach.
Learn.: Sci. Technol. 4, 025023 (2023), section III.1):

1. single-particle orbitals in the product sine basis (qdjax.single_particle);
2. Coulomb tensor between them (qdjax.coulomb);
3. many-body Hamiltonian over the determinants of the ((N+1)//2, N//2) sector (qdjax.fock);
4. ground manifold: the many-body states within `config.degeneracy_tol` of the lowest; energy,
   one-body density matrix and density are averaged over it, so the result does not depend on
   which vectors an eigensolver returns;
5. pixel-averaged density from the full spin-summed one-body density matrix
   n = sum_pq gamma_pq psi_p psi_q (or its diagonal only, eq. (9) of the paper, with
   `config.density_mode = "diagonal"`).

Both public functions accept leading batch axes and work under jax.jit (with `n_electrons`
and `config` static), jax.vmap and jax.grad with respect to V. They call an internally jitted
implementation (one compilation per (shape, dtype, N, config)); inputs are validated before
any tracing.

Solvers (`EDConfig.eigensolver`): "dense" diagonalises everything completely (the reference);
"iterative" and "auto" find the orbitals by matrix-free LOBPCG
(qdjax.single_particle.solve_iterative) and, for many-body spaces of more than
`FOCK_DENSE_MAX` determinants ("auto") or more than `FOCK_ROOTS + FOCK_GUARD` of them
("iterative"), the lowest `FOCK_ROOTS` many-body states by block Davidson on the assembled
matrix (qdjax.linalg.lowest_eigenpairs), started from and preconditioned by the exact
solution among the `FOCK_COARSE` determinants of lowest diagonal energy. Sectors of more than
`FOCK_ASSEMBLED_MAX` determinants are not assembled: Davidson then applies H matrix-free
(qdjax.fock.apply_operator), with a coarse block of `FOCK_COARSE_MATRIX_FREE` determinants
(qdjax.fock.hamiltonian_block), up to `FOCK_MAX_DIMENSION` determinants. The ground
manifold must lie inside the roots with a gap after them. Convergence: both iterative solvers stop
when every wanted residual is below its tolerance (qdjax.single_particle.RESIDUAL_TOL_EV,
`FOCK_RESIDUAL_TOL_EV`) or at their iteration limits; an eager call (concrete V) checks this
and recomputes any instance that did not converge, or whose ground manifold fills all
`FOCK_ROOTS` roots, with the dense solvers (with a RuntimeWarning; sectors above
`FOCK_DENSE_SOLVER_MAX` determinants have no dense fallback and are returned as they are,
with a RuntimeWarning); under an outer
jax.jit or jax.grad the check is skipped and the last iterate is returned.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from qdjax import backend, basis, coulomb, fock, linalg, single_particle
from qdjax.config import EDConfig


#: Many-body spaces up to this many determinants are diagonalised densely by "auto".
FOCK_DENSE_MAX = 300
#: Many-body states found by Davidson (the ground manifold must have fewer).
FOCK_ROOTS = 4
#: Extra Ritz vectors beyond FOCK_ROOTS (they guard the convergence of the last root).
FOCK_GUARD = 4
#: Determinants of lowest diagonal energy in which the many-body start is solved exactly
#: (and the preconditioner inverts H), for assembled and for matrix-free sectors. Their block
#: of H is read off the matrix or built directly (`fock.hamiltonian_block`), without products
#: with H. The sizes are measured choices (docs/benchmarks.md).
FOCK_COARSE = 64
FOCK_COARSE_MATRIX_FREE = 256
#: Many-body Davidson convergence: residual norm of every root below this (eV). The float32
#: value is a measured choice (docs/benchmarks.md, "float32 under emulated accelerator matmuls").
FOCK_RESIDUAL_TOL_EV = {"float64": 1e-10, "float32": 2e-6}
FOCK_MAX_ITERATIONS = 200
#: Columns of the Davidson search space (restarted from the FOCK_ROOTS + FOCK_GUARD Ritz
#: vectors and the previous FOCK_ROOTS when full; at least FOCK_ROOTS + FOCK_GUARD +
#: 2 FOCK_ROOTS).
FOCK_MAX_SPACE = 24
#: Sternheimer conjugate gradients for many-body derivatives.
FOCK_SOLVE_TOL = {"float64": 1e-12, "float32": 1e-5}
FOCK_SOLVE_MAX_ITERATIONS = 500
#: Largest sector (determinants) whose many-body Hamiltonian "auto" and "iterative" assemble
#: as a dense d x d matrix for Davidson; larger sectors are solved matrix-free
#: (`fock.apply_operator`). A measured choice (docs/benchmarks.md, "Beyond the paper").
FOCK_ASSEMBLED_MAX = 1024
#: Largest sector the dense solver assembles and diagonalises completely (8 d^2 bytes in
#: float64: 0.5 GiB at this limit, per potential in flight): eigensolver="dense" is refused
#: above it, and up to it an unconverged Davidson instance is recomputed densely.
FOCK_DENSE_SOLVER_MAX = 8192
#: Largest sector accepted. Matrix-free, H x holds about P d numbers per column at a time,
#: P = K (K + 1) / 2 (K = 16: 0.4 GiB in float64 at this limit); timings in docs/benchmarks.md.
FOCK_MAX_DIMENSION = 400_000


def _iterative_orbitals(config: EDConfig) -> bool:
    return config.eigensolver != "dense" and single_particle.iterative_supported(config)


def _iterative_fock(config: EDConfig, n_electrons: int, roots: int = FOCK_ROOTS) -> bool:
    d = fock.sector_dimension(config.orbitals, n_electrons)
    if config.eigensolver == "dense" or d < 3 * (roots + FOCK_GUARD):
        return False
    return config.eigensolver == "iterative" or d > FOCK_DENSE_MAX


class GroundState(NamedTuple):
    """Ground-state quantities; leading axes follow the batch axes of V.

    energy: (...,) eV, total energy (averaged over the ground manifold).
    density: (..., grid, grid) nm^-2, pixel-averaged, sum(density) h^2 = N.
    rdm1: (..., K, K) spin-summed one-body density matrix in the orbital basis, trace N.
    orbital_energies: (..., K) eV, lowest single-particle energies.
    converged: (...,) bool, per instance: every iterative solver behind it (orbitals, many-body
      states) met its residual tolerance, with a gap after the ground manifold (True for the
      dense solvers). An eager call recomputes unconverged instances densely (module
      docstring), so this is False there only where no dense fallback exists; under an outer
      jax.jit it is the only sign of a solve that stopped at its iteration limit.
    """

    energy: jax.Array
    density: jax.Array
    rdm1: jax.Array
    orbital_energies: jax.Array
    converged: jax.Array


class Integrals(NamedTuple):
    """One- and two-body integrals in the orbital basis.

    h1: (..., K, K) eV, U^T H0 U, diagonal up to rounding (the orbitals diagonalise H0).
    eri: (..., K, K, K, K) eV, (pq|rs) in chemists' notation.
    orbitals: single_particle.Orbitals (energies (..., K) eV, coefficients (..., basis^2, K)).
    """

    h1: jax.Array
    eri: jax.Array
    orbitals: single_particle.Orbitals


def validate(V: ArrayLike, n_electrons, config: EDConfig) -> None:
    """Raise ValueError naming the problem if the inputs of an ED call are invalid.

    Checks: config type; N an integer (Python or NumPy, not bool) in 1..2 K (and K >= N_up);
    a sector of at most FOCK_MAX_DIMENSION determinants, and of at most FOCK_DENSE_SOLVER_MAX
    with eigensolver="dense"; V real (an array or nested sequences), of shape (..., grid, grid)
    with non-empty batch axes, finite and of magnitude at most sqrt(finfo(config.dtype).max) eV
    (float64: 1.3e154, float32: 1.8e19; products of two energies inside the eigensolvers stay
    finite) when V is concrete; float64 requested while JAX's 64-bit mode is off.
    """
    if not isinstance(config, EDConfig):
        raise ValueError(f"config must be a qdjax.EDConfig, got {type(config).__name__}")
    if isinstance(n_electrons, (bool, np.bool_)) or not isinstance(n_electrons, (int, np.integer)):
        raise ValueError(f"n_electrons must be an integer, got {n_electrons!r}")
    if not 1 <= n_electrons <= 2 * config.orbitals:
        raise ValueError(
            f"n_electrons must be in 1..{2 * config.orbitals} (2 x orbitals={config.orbitals}), got {n_electrons}"
        )
    dimension = fock.sector_dimension(config.orbitals, int(n_electrons))
    if dimension > FOCK_MAX_DIMENSION:
        pairs = config.orbitals * (config.orbitals + 1) // 2
        raise ValueError(
            f"N={n_electrons} in {config.orbitals} orbitals has {dimension} determinants; sectors above "
            f"FOCK_MAX_DIMENSION={FOCK_MAX_DIMENSION} are refused (the matrix-free H x would hold "
            f"{8 * pairs * dimension / 2**30:.1f} GiB per vector in float64): use fewer orbitals"
        )
    if config.eigensolver == "dense" and not _dense_fits(config, int(n_electrons)):
        raise ValueError(
            f"N={n_electrons} in {config.orbitals} orbitals has {dimension} determinants: the dense solver "
            f"would assemble a {8 * dimension**2 / 2**30:.1f} GiB matrix "
            f"(FOCK_DENSE_SOLVER_MAX={FOCK_DENSE_SOLVER_MAX}); "
            "use eigensolver='auto' (matrix-free Davidson)"
        )
    if not hasattr(V, "shape") or not hasattr(V, "dtype"):  # nested sequences, scalars
        try:
            V = np.asarray(V)
        except ValueError as e:  # ragged nesting
            raise ValueError(f"V must be an array (..., {config.grid}, {config.grid}) in eV: {e}") from None
    shape = np.shape(V)
    if len(shape) < 2 or shape[-2:] != (config.grid, config.grid):
        raise ValueError(
            f"V must have shape (..., {config.grid}, {config.grid}) for grid={config.grid}, got {shape}"
        )
    if 0 in shape:
        raise ValueError(f"V has an empty batch axis: shape {shape}")
    dtype = np.dtype(V.dtype)
    if not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)):
        raise ValueError(f"V must be real (float or integer) in eV, got dtype {dtype}")
    if config.dtype == "float64" and not jax.config.jax_enable_x64:
        raise ValueError(
            "EDConfig(dtype='float64') needs JAX's 64-bit mode, which is off: call "
            "jax.config.update('jax_enable_x64', True) or use EDConfig(dtype='float32')"
        )
    if isinstance(V, jax.core.Tracer):
        return
    if isinstance(V, jax.Array) and any(d.platform != "cpu" for d in V.sharding.device_set):
        largest = float(jnp.max(jnp.abs(V)))  # on the accelerator: one scalar to the host
    else:
        largest = float(np.max(np.abs(np.asarray(V))))  # host memory already
    if not math.isfinite(largest):
        raise ValueError("V contains NaN or infinite values")
    limit = math.sqrt(float(np.finfo(config.dtype).max))
    if largest > limit:
        raise ValueError(
            f"V reaches |V| = {largest:.3g} eV; EDConfig(dtype={config.dtype!r}) handles |V| up to "
            f"{limit:.3g} eV (the square root of the dtype's largest number)"
        )


def integrals(V: ArrayLike, config: EDConfig = EDConfig()) -> Integrals:
    """Single-particle orbitals and the one- and two-body integrals between them.

    Args:
      V: float array (..., grid, grid), eV.
      config: static settings.

    Returns:
      Integrals (h1 = U^T H0 U = diag(orbital energies), eri, orbitals). Jitted internally
      (one program per shape and config; inlined under an outer jax.jit).
    """
    return _integrals_batched(jnp.asarray(V, dtype=config.dtype), config)


@functools.partial(jax.jit, static_argnums=1)
def _integrals_batched(V: jax.Array, config: EDConfig) -> Integrals:
    """`integrals` on V (..., grid, grid) of dtype config.dtype."""
    batch = V.shape[:-2]
    flat = V.reshape((-1,) + V.shape[-2:])
    with backend.full_precision(V.dtype):
        out = backend.map_instances(lambda v: _integrals(v, config)[0], flat, backend.sequential(config.batching))
    return jax.tree.map(lambda a: a.reshape(batch + a.shape[1:]), out)


def _integrals(V: jax.Array, config: EDConfig) -> tuple[Integrals, jax.Array]:
    """Integrals and a convergence flag (True for the dense solver); V (grid, grid)."""
    orbitals, h1, converged = _orbitals_and_h1(V, config)
    eri = coulomb.coulomb_tensor(basis.on_grid(orbitals.coefficients, config), config)
    return Integrals(h1, eri, orbitals), converged


def _orbitals_and_h1(V: jax.Array, config: EDConfig):
    """Single-particle stage: (Orbitals, h1 = U^T H0 U, converged)."""
    if _iterative_orbitals(config):
        orbitals, h1, residuals = single_particle.solve_iterative_h1(V, config)
        converged = jnp.max(residuals) <= single_particle.RESIDUAL_TOL_EV[config.dtype]
        return orbitals, h1, converged
    h0 = single_particle.hamiltonian(V, config)
    orbitals = single_particle.diagonalize(h0, config)
    c = orbitals.coefficients
    # U^T H0 U equals diag(orbital energies), but unlike diag(energies) its derivative keeps
    # the coupling inside degenerate levels that the eigenvector derivative leaves out.
    h1 = jnp.einsum("...ap,...aq->...pq", c, h0 @ c)
    h1 = 0.5 * (h1 + jnp.swapaxes(h1, -1, -2))
    return orbitals, h1, jnp.bool_(True)


def _ground_manifold(w: jax.Array, tol: float) -> jax.Array:
    """Weights (..., D): 1/m on the m states within tol of the lowest, 0 elsewhere."""
    inside = ((w - w[..., :1]) <= tol).astype(w.dtype)
    return inside / jnp.sum(inside, axis=-1, keepdims=True)


def density_from_rdm1(rdm1: ArrayLike, coefficients: ArrayLike, config: EDConfig) -> jax.Array:
    """Pixel-averaged density of a one-body density matrix in the orbital basis.

    n = sum_pq gamma_pq psi_p psi_q averaged over each pixel (qdjax.basis.pixel_average);
    with config.density_mode == "diagonal" only gamma_pp enters (paper eq. (9)).

    Args:
      rdm1: array (..., K, K), spin-summed.
      coefficients: array (..., basis**2, K), orbitals in the sine basis.
      config: static settings.

    Returns:
      array (..., grid, grid), nm^-2.
    """
    gamma = jnp.asarray(rdm1)
    if config.density_mode == "diagonal":
        gamma = jnp.vectorize(lambda g: jnp.diag(jnp.diag(g)), signature="(k,k)->(k,k)")(gamma)
    # Equal to basis.pixel_average(U gamma U^T) (the adjoint of the potential matrix) up to
    # rounding, through the sine transform (qdjax.basis.orbital_density).
    return basis.orbital_density(coefficients, gamma, config)


def _dense_apply(h: jax.Array, x: jax.Array) -> jax.Array:
    return h @ x


def _dense_block(h: jax.Array, indices: jax.Array) -> jax.Array:
    return h[indices[:, None], indices[None, :]]


@dataclasses.dataclass(frozen=True)
class _SectorApply:
    """(fock.SectorOperator, X) -> H X of the (K, N) sector, matrix-free (hashable: a static
    argument)."""

    orbitals: int
    n_electrons: int

    def __call__(self, operator, x):
        return fock.apply_operator(fock.excitation_lists(self.orbitals, self.n_electrons), operator, x)


def _dense_fits(config: EDConfig, n_electrons: int) -> bool:
    """Whether the dense solver may assemble the sector (at most FOCK_DENSE_SOLVER_MAX
    determinants)."""
    return fock.sector_dimension(config.orbitals, n_electrons) <= FOCK_DENSE_SOLVER_MAX


def _matrix_free(config: EDConfig, n_electrons: int) -> bool:
    """Whether the sector is solved matrix-free: above FOCK_ASSEMBLED_MAX, unless the dense
    solver was asked for (it assembles up to FOCK_DENSE_SOLVER_MAX, `validate` refuses more)."""
    if config.eigensolver == "dense":
        return False
    return fock.sector_dimension(config.orbitals, n_electrons) > FOCK_ASSEMBLED_MAX


def _many_body(ints: Integrals, eri: jax.Array, n_electrons: int, config: EDConfig, orbitals_converged):
    """GroundState of one instance (unbatched integrals)."""
    energy, gamma, converged = _many_body_state(ints.h1, eri, n_electrons, config)
    density = density_from_rdm1(gamma, ints.orbitals.coefficients, config)
    return GroundState(energy, density, gamma, ints.orbitals.energies, orbitals_converged & converged)


def _many_body_state(h1: jax.Array, eri: jax.Array, n_electrons: int, config: EDConfig):
    """Fock-space stage of one instance: (energy, rdm1, converged), averaged over the ground
    manifold."""
    states = lowest_states(h1, eri, n_electrons, config)
    weights = jax.lax.stop_gradient(_ground_manifold(states.energies, config.degeneracy_tol))
    return jnp.sum(weights * states.energies), states.rdm1(states.vectors, weights), states.converged


class LowestStates(NamedTuple):
    """Lowest many-body states of one instance in the ((N + 1) // 2, N // 2) sector
    (`lowest_states`).

    energies: (R,) eV, ascending. vectors: (D, R) orthonormal eigenvectors (determinant order
    of qdjax.fock). converged: bool scalar (see `_lowest_many_body`; True for dense).
    apply: X (D, m) -> H X, the sector Hamiltonian (assembled or matrix-free).
    rdm1: (vectors (D, S), weights (S,)) -> (K, K) spin-summed 1-RDM of a mixture.
    lists: qdjax.fock.ExcitationLists of the sector (for spin operators).
    """

    energies: jax.Array
    vectors: jax.Array
    converged: jax.Array
    apply: object
    rdm1: object
    lists: fock.ExcitationLists


def lowest_states(h1: jax.Array, eri: jax.Array, n_electrons: int, config: EDConfig,
                  roots: int = FOCK_ROOTS) -> LowestStates:
    """Lowest many-body states of one instance (unbatched integrals h1 (K, K), eri (K, K, K, K)),
    by the solver `config` selects (module docstring): all D states when solved densely,
    otherwise the lowest `roots` by Davidson (degeneracy-safe derivatives, qdjax.linalg)."""
    tol = config.degeneracy_tol
    lists = fock.excitation_lists(config.orbitals, n_electrons)
    if _matrix_free(config, n_electrons):
        diagonal = fock.hamiltonian_diagonal(lists, h1, eri)
        restrict = functools.partial(fock.hamiltonian_block, lists, h1, eri)
        apply_h = _SectorApply(config.orbitals, n_electrons)
        operator = fock.sector_operator(lists, h1, eri)
        w, c, converged = _lowest_many_body(apply_h, operator, diagonal, restrict, FOCK_COARSE_MATRIX_FREE, config,
                                            roots)
        return LowestStates(w, c, converged, functools.partial(apply_h, operator),
                            functools.partial(fock.rdm1_from_lists, lists), lists)
    space = fock.fock_space(config.orbitals, n_electrons)
    h = fock.hamiltonian(space, h1, eri)
    if _iterative_fock(config, n_electrons, roots):
        restrict = functools.partial(_dense_block, h)
        w, c, converged = _lowest_many_body(_dense_apply, h, jnp.diagonal(h), restrict, FOCK_COARSE, config, roots)
    else:
        w, c = linalg.eigh_lowest(h, space.dimension, tol, backend.per_instance_kernels(config.batching))
        converged = jnp.bool_(True)
    return LowestStates(w, c, converged, functools.partial(_dense_apply, h), functools.partial(fock.rdm1, space),
                        lists)


def _lowest_many_body(apply_h, params, diagonal: jax.Array, restrict, n_coarse: int, config: EDConfig,
                      roots: int = FOCK_ROOTS):
    """Lowest `roots` many-body states by Davidson: apply_h(params, X) = H X, diagonal (D,)
    the diagonal of H (the assembled matrix and `_dense_apply`, or `_SectorApply`),
    restrict(indices (s,)) -> (s, s) H restricted to those determinants."""
    d = diagonal.shape[-1]
    block = roots + FOCK_GUARD
    diagonal = jax.lax.stop_gradient(diagonal)
    coarse = jnp.argsort(diagonal)[: max(min(n_coarse, d), block + 1)]
    sequential = backend.per_instance_kernels(config.batching)
    x0, pre = linalg.block_jacobi(restrict(coarse), diagonal, coarse, block, sequential)
    w, c, res = linalg.lowest_eigenpairs(
        apply_h,
        params,
        pre,
        x0,
        roots,
        FOCK_RESIDUAL_TOL_EV[config.dtype],
        FOCK_MAX_ITERATIONS,
        max(FOCK_MAX_SPACE, block + 2 * roots),
        config.degeneracy_tol,
        FOCK_SOLVE_TOL[config.dtype],
        FOCK_SOLVE_MAX_ITERATIONS,
        sequential,
    )
    converged = (jnp.max(res) <= FOCK_RESIDUAL_TOL_EV[config.dtype]) & (w[-1] - w[0] > config.degeneracy_tol)
    return w, c, converged


def _ground_states_single(V, n_electrons: tuple[int, ...], config: EDConfig, with_non_interacting: bool):
    ints, orbitals_converged = _integrals(V, config)
    jobs = [(n, ints.eri) for n in n_electrons]
    if with_non_interacting:
        zeros = jnp.zeros_like(ints.eri)
        jobs += [(n, zeros) for n in n_electrons]
    states = []
    previous = ints.h1
    for n, eri in jobs:
        # one solve after another where LAPACK kernels must not run side by side (qdjax.backend)
        state = _many_body(ints, backend.after(eri, previous), n, config, orbitals_converged)
        states.append(state)
        previous = state.energy
    k = len(n_electrons)
    return GroundStates(tuple(states[:k]), tuple(states[k:]) if with_non_interacting else None)


def map_batch(f, xs, sequential: bool, mesh: jax.sharding.Mesh | None = None):
    """f over the leading axis of xs: one instance after another (jax.lax.map) when
    `sequential`, else one vmapped program (qdjax.backend.map_instances).

    mesh: a one-axis Mesh over which the leading axis of xs is split: each of its devices maps f
      over its consecutive share (jax.shard_map), running the same program as one device on the
      whole batch, so the results do not depend on the number of devices. None (inside an outer
      jit, where the placement is not known): one map when jax.device_count() is 1, else
      vmapped across gcd(batch, device_count) groups, which XLA partitions along a sharded
      batch, with one map inside each group.
    """
    def mapped(chunk):
        return backend.map_instances(f, chunk, sequential)

    if mesh is not None:
        spec = jax.sharding.PartitionSpec(mesh.axis_names[0])
        return jax.shard_map(mapped, mesh=mesh, in_specs=spec, out_specs=spec, check_vma=False)(xs)
    b = jax.tree.leaves(xs)[0].shape[0]
    groups = math.gcd(b, jax.device_count())
    if groups == 1:
        return mapped(xs)
    grouped = jax.tree.map(lambda a: a.reshape((groups, b // groups) + a.shape[1:]), xs)
    out = jax.vmap(mapped)(grouped)
    return jax.tree.map(lambda a: a.reshape((b,) + a.shape[2:]), out)


def _batch_mesh(V) -> jax.sharding.Mesh | None:
    """The one-axis Mesh that `map_batch` should split a concrete batch V (b, grid, grid) over.

    V sharded along its leading axis with NamedSharding(Mesh(devices, (name,)), P(name)): that
    mesh; V on one device: a mesh of that device (a plain lax.map there); anything else (a
    tracer, other shardings, a batch that does not divide evenly): None.
    """
    if isinstance(V, jax.core.Tracer) or not isinstance(V, jax.Array) or V.ndim != 3:
        return None
    sharding = V.sharding
    devices = sharding.device_set
    if len(devices) == 1:
        return jax.sharding.Mesh(np.asarray(list(devices)), ("batch",))
    if isinstance(sharding, jax.sharding.NamedSharding) and len(sharding.mesh.axis_names) == 1:
        spec = tuple(sharding.spec) + (None,) * 3
        name = sharding.mesh.axis_names[0]
        if spec[0] == name and spec[1:3] == (None, None) and V.shape[0] % sharding.mesh.size == 0:
            return sharding.mesh
    return None


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _ground_states_batched(V, n_electrons: tuple[int, ...], config: EDConfig, with_non_interacting: bool,
                           mesh: jax.sharding.Mesh | None = None):
    batch = V.shape[:-2]
    flat = V.reshape((-1,) + V.shape[-2:])
    with backend.full_precision(V.dtype):
        out = map_batch(lambda v: _ground_states_single(v, n_electrons, config, with_non_interacting), flat,
                        backend.sequential(config.batching), mesh)
    out = jax.tree.map(lambda a: a.reshape(batch + a.shape[1:]), out)
    states = out.interacting + (out.non_interacting or ())
    return out, functools.reduce(jnp.logical_and, [s.converged for s in states])


def _solve(V: jax.Array, ns: tuple[int, ...], config: EDConfig, with_non_interacting: bool):
    """_ground_states_batched, with the dense solvers redoing unconverged instances (eager)."""
    return solve_with_fallback(
        lambda v, cfg, mesh: _ground_states_batched(v, ns, cfg, with_non_interacting, mesh), V, ns, config
    )


def solve_with_fallback(batched, V: jax.Array, ns: tuple[int, ...], config: EDConfig):
    """batched(V, config, mesh) -> (out, converged (batch...)), with the instances that did not
    converge redone by batched(V[bad], config with eigensolver="dense", mesh) when V is
    concrete (module docstring); `ns` are the electron numbers solved (for the size check of the
    dense fallback). Returns out."""
    out, converged = batched(V, config, _batch_mesh(V))
    if isinstance(converged, jax.core.Tracer) or config.eigensolver == "dense":
        return out
    # Only the flags (one byte per instance) come to the host; the results stay where they are.
    bad = np.flatnonzero(~np.asarray(converged).reshape(-1))
    if bad.size == 0:
        return out
    if not all(_dense_fits(config, n) for n in ns):
        warnings.warn(
            f"iterative eigensolver did not converge for {bad.size} of {converged.size} potentials; a sector "
            f"above FOCK_DENSE_SOLVER_MAX={FOCK_DENSE_SOLVER_MAX} determinants has no dense fallback, so these "
            "results are returned unconverged",
            RuntimeWarning,
            stacklevel=4,
        )
        return out
    warnings.warn(
        f"iterative eigensolver did not converge for {bad.size} of {converged.size} potentials; "
        "recomputed with eigensolver='dense'",
        RuntimeWarning,
        stacklevel=4,
    )
    batch = V.shape[:-2]
    flat_v = V.reshape((-1,) + V.shape[-2:])
    # the few instances to redo on one device of V's (a gather from a sharded V comes back
    # replicated, and a replicated batch would be solved once on every device)
    device = min(V.sharding.device_set, key=lambda d: d.id)
    redo_v = jax.device_put(flat_v[bad], device)
    redo, _ = batched(redo_v, config.replace(eigensolver="dense"), _batch_mesh(redo_v))
    redo = jax.device_get(redo)

    def merge(a, r):
        a = a.reshape((-1,) + a.shape[len(batch):])
        return a.at[bad].set(r).reshape(batch + a.shape[1:])

    return jax.tree.map(merge, out, redo)


class GroundStates(NamedTuple):
    """Ground states for several electron numbers in the same potentials.

    interacting: tuple of GroundState, one per requested N, with the Coulomb interaction of
      the configuration.
    non_interacting: the same without interaction (eps_r = inf), or None when not requested.
    """

    interacting: tuple
    non_interacting: tuple | None


def ground_states(
    V: ArrayLike,
    n_electrons,
    config: EDConfig = EDConfig(),
    with_non_interacting: bool = False,
) -> GroundStates:
    """Ground states for several N, sharing one single-particle solve and Coulomb tensor.

    Equal to calling `ground_state` for each N (and with ``config.non_interacting()``), at the
    cost of one single-particle diagonalisation per potential.

    Args:
      V: float array (..., grid, grid), eV.
      n_electrons: sequence of N values (static under jit).
      config: EDConfig (static under jit).
      with_non_interacting: also return the non-interacting ground states.

    Returns:
      GroundStates; each GroundState has the shapes documented in `ground_state`.
    """
    ns = tuple(n_electrons) if np.ndim(n_electrons) else (n_electrons,)
    if not ns:
        raise ValueError("n_electrons is empty")
    for n in ns:
        validate(V, n, config)
    ns = tuple(int(n) for n in ns)
    return _solve(jnp.asarray(V, dtype=config.dtype), ns, config, bool(with_non_interacting))


def ground_state(V: ArrayLike, n_electrons: int, config: EDConfig = EDConfig()) -> GroundState:
    """Ground state of `n_electrons` interacting electrons in the potential V.

    Args:
      V: float array (..., grid, grid), eV, V[i, j] = V(x_i, y_j) on pixel (i, j) (x first);
        leading axes are a batch.
      n_electrons: N, 1 <= N <= 2 * config.orbitals (static under jit).
      config: EDConfig (static under jit).

    Returns:
      GroundState: energy (...,) eV; density (..., grid, grid) nm^-2; rdm1 (..., K, K);
      orbital_energies (..., K) eV.

    Raises:
      ValueError: invalid shape, non-finite V, N out of range, non-real dtype, empty batch.
    """
    validate(V, n_electrons, config)
    ns = (int(n_electrons),)
    return _solve(jnp.asarray(V, dtype=config.dtype), ns, config, False).interacting[0]


def ground_density(V: ArrayLike, n_electrons: int, config: EDConfig = EDConfig()) -> jax.Array:
    """Pixel-averaged ground-state density, ``ground_state(V, n_electrons, config).density``.

    Args:
      V: float array (..., grid, grid), eV.
      n_electrons: N (static under jit).
      config: EDConfig (static under jit).

    Returns:
      array (..., grid, grid), nm^-2; sum over a map times h^2 equals N.
    """
    return ground_state(V, n_electrons, config).density


#: Names of qdjax.spectrum that this module re-exports (qdjax.spectrum builds on this module, so
#: they are imported on first use).
SPECTRUM_NAMES = ("Spectrum", "spectrum", "chemical_potentials", "pair_correlation")


def __getattr__(name: str):
    if name in SPECTRUM_NAMES:
        from qdjax import spectrum as module

        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
