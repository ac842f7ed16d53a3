"""Symmetric eigensolvers with derivatives that stay finite at degeneracies.

`jnp.linalg.eigh` differentiates eigenvectors with 1 / (w_i - w_j) for every pair, which is
infinite for degenerate eigenvalues anywhere in the spectrum. Here the pair terms with
|w_i - w_j| <= tol are dropped. That is exact for every quantity that is invariant under
rotations inside each degenerate group (projectors onto eigenspaces, traces over them, and
everything the full configuration interaction computes from the orbitals), which is what the
exact diagonalisation uses (docs/theory.md, "Derivatives").

For large matrices that are only needed through products H X, `lobpcg` finds the lowest few
eigenpairs and `pcg` solves the shifted, projected linear systems (Sternheimer equations) that
their derivatives need.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from qdjax import backend


def symmetric_eigh(a: jax.Array, sequential: bool = False) -> tuple[jax.Array, jax.Array]:
    """jnp.linalg.eigh of one symmetric matrix (n, n) -> (w (n,), v (n, n)).

    Under jax.vmap one batched call, or, with `sequential` (the CPU layout of
    qdjax.backend), the matrices one after another. Not differentiable: used only where the
    derivative is written out (custom JVPs here).
    """
    return backend.eigh(a, sequential)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3))
def eigh_lowest(h: ArrayLike, k: int, tol: float, sequential: bool = False):
    """Lowest `k` eigenpairs of real symmetric matrices.

    Args:
      h: array (..., n, n), symmetric.
      k: number of eigenpairs kept (static), 1 <= k <= n.
      tol: eigenvalue gaps <= tol count as degenerate in the derivative (same unit as h).
      sequential: leading axes done one matrix after another (qdjax.backend), else batched.

    Returns:
      (w, u): w (..., k) ascending eigenvalues; u (..., n, k) orthonormal eigenvectors.
    """
    w, u = _eigh(h, sequential)
    return w[..., :k], u[..., :, :k]


@eigh_lowest.defjvp
def _eigh_lowest_jvp(k, tol, sequential, primals, tangents):
    (h,) = primals
    with backend.full_precision(h.dtype):
        return _eigh_lowest_jvp_terms(k, tol, sequential, h, tangents[0])


def _eigh_lowest_jvp_terms(k, tol, sequential, h, dh):
    w, u = _eigh(h, sequential)
    dh = 0.5 * (dh + jnp.swapaxes(dh, -1, -2))
    uk = u[..., :, :k]
    omega = jnp.einsum("...ji,...jl,...lk->...ik", u, dh, uk)  # (..., n, k): <u_i| dh |u_k>
    gap = w[..., None, :k] - w[..., :, None]  # (..., n, k): w_k - w_i
    safe = jnp.where(jnp.abs(gap) > tol, gap, 1.0)
    f = jnp.where(jnp.abs(gap) > tol, 1.0 / safe, 0.0)
    dw = jnp.diagonal(omega[..., :k, :], axis1=-2, axis2=-1)
    du = jnp.einsum("...ij,...jk->...ik", u, f * omega)
    return (w[..., :k], uk), (dw, du)


#: Rayleigh-Ritz drops basis directions whose Gram eigenvalue is below RR_DROP_TOL sqrt(eps)
#: times the largest (nearly dependent directions carry no new information but rounding).
RR_DROP_TOL = 1e2


def _eigh(h: jax.Array, sequential: bool):
    """symmetric_eigh over any leading axes."""
    if h.ndim == 2:
        return symmetric_eigh(h, sequential)
    flat = h.reshape((-1,) + h.shape[-2:])
    w, u = jax.vmap(functools.partial(symmetric_eigh, sequential=sequential))(flat)
    return w.reshape(h.shape[:-1]), u.reshape(h.shape)


class Eigenpairs(NamedTuple):
    """Result of `lobpcg` and `davidson`.

    values: (k,) Ritz values, ascending.
    vectors: (n, k) orthonormal Ritz vectors.
    residuals: (k,) norms ||H x - theta x|| (unit of H) of the first n_expand pairs (see
      `lobpcg`), 0 for the others.
    iterations: int32 scalar, block products with H after the first.
    products: (n, k) H @ vectors (unit of H), carried along by the iteration (equal to a
      fresh product up to rounding).
    """

    values: jax.Array
    vectors: jax.Array
    residuals: jax.Array
    iterations: jax.Array
    products: jax.Array


def _rayleigh_ritz(basis_vectors: jax.Array, h_basis: jax.Array, k: int, sequential: bool):
    """Lowest k Ritz pairs of H in span(basis_vectors), robust to a rank-deficient basis.

    The Gram matrix G = S^T S (after unit column scaling) is diagonalised; directions with an
    eigenvalue below RR_DROP_TOL sqrt(eps) of the largest are dropped (given a huge diagonal, so they are
    never among the lowest k), the rest are orthonormalised through G^(-1/2). No QR.

    Returns:
      (theta (k,), coefficients (m, k)) with S @ coefficients orthonormal.
    """
    gram = basis_vectors.T @ basis_vectors
    a = basis_vectors.T @ h_basis
    return _rayleigh_ritz_eig(gram, a, k, sequential)


def _scaled(gram: jax.Array, a: jax.Array):
    """Unit-diagonal scaling: (d, D G D, D A D) with d = diag(G)^(-1/2) (0 for zero columns)."""
    a = 0.5 * (a + a.T)
    dg = jnp.diagonal(gram)
    d = jnp.where(dg > 0, jax.lax.rsqrt(jnp.where(dg > 0, dg, 1.0)), 0.0)
    return d, d[:, None] * gram * d[None, :], d[:, None] * a * d[None, :]


def _orthonormalising(gram: jax.Array, drop: float, sequential: bool, relative: bool = False):
    """(t, t) transform T with T^T G T = 1 on the kept directions, from the Gram matrix G of t
    vectors, and the kept directions (t,) bool: the eigendecomposition of G, directions with
    an eigenvalue at or below `drop` (times the largest eigenvalue if `relative`) become zero
    columns. G need not be exactly symmetric: `symmetric_eigh` symmetrises its input."""
    lam, z = symmetric_eigh(gram, sequential)
    keep = lam > (drop * lam[-1] if relative else drop)
    return z * jnp.where(keep, jax.lax.rsqrt(jnp.where(keep, lam, 1.0)), 0.0)[None, :], keep


def _rayleigh_ritz_eig(gram: jax.Array, a: jax.Array, k: int, sequential: bool):
    """Rayleigh-Ritz from the Gram matrix G (m, m) and A = S^T H S (m, m) by the eigendecomposition
    of the scaled G (see `_rayleigh_ritz`)."""
    d, gram, a = _scaled(gram, a)
    b, keep = _orthonormalising(gram, RR_DROP_TOL * jnp.sqrt(jnp.finfo(gram.dtype).eps), sequential, relative=True)
    theta, y = symmetric_eigh(_decoupled(b.T @ a @ b, ~keep), sequential)
    return theta[:k], d[:, None] * (b @ y[:, :k])


def _decoupled(c: jax.Array, outside: jax.Array) -> jax.Array:
    """Symmetrised c (m, m), whose rows and columns `outside` are zero, with those directions
    moved above the whole spectrum: diagonal 2 max_i sum_j |c_ij| (twice a bound of every
    eigenvalue), so they are never among the lowest, while the eigendecomposition keeps the
    absolute accuracy of the scale of c (a huge constant there would cost eps times it)."""
    c = 0.5 * (c + c.T)
    bound = jnp.max(jnp.sum(jnp.abs(c), axis=1))
    return c + jnp.diag(jnp.where(outside, jnp.where(bound > 0, 2.0 * bound, 1.0), 0.0))


def _rayleigh_ritz_gram(gram: jax.Array, a: jax.Array, k: int, sequential: bool):
    """Rayleigh-Ritz from G = S^T S and A = S^T H S (both (m, m)) with one eigendecomposition.

    With unit column scaling D and the Cholesky factor D G D = L L^T, the Ritz pairs are the
    eigenpairs of L^-1 (D A D) L^-T; coefficients D L^-T y. Zero columns (an empty block, or
    unused columns of a buffer) are decoupled (`_decoupled`). When the scaled basis is nearly
    dependent (the bound (||L^-1||_F^2 - zero columns)^-1 <= lambda_min(D G D) falls below
    RR_DROP_TOL sqrt(eps), or the factorisation fails) the eigendecomposition of G drops the
    dependent directions instead (`_rayleigh_ritz_eig`), through lax.cond, so that branch
    costs nothing when not taken.

    With `sequential` (the CPU layout, qdjax.backend) the instances of a vmapped call are done
    one after another, so that the fallback stays a branch that is not evaluated; otherwise a
    vmapped call evaluates both branches and selects per lane.

    Returns:
      (theta (k,), coefficients (m, k)) with S @ coefficients orthonormal.
    """
    one = functools.partial(_rayleigh_ritz_gram_one, k=k, sequential=sequential)
    return backend.per_instance(one, sequential)(gram, a)


def _rayleigh_ritz_gram_one(gram: jax.Array, a: jax.Array, k: int, sequential: bool):
    m = gram.shape[-1]
    d, g, sa = _scaled(gram, a)
    empty = d == 0
    g = g + jnp.diag(empty.astype(g.dtype))
    chol = jnp.linalg.cholesky(g)
    linv = jax.scipy.linalg.solve_triangular(chol, jnp.eye(m, dtype=g.dtype), lower=True)
    eps = jnp.finfo(g.dtype).eps
    bound = jnp.sum(linv * linv) - jnp.sum(empty)
    ok = jnp.isfinite(bound) & (bound * RR_DROP_TOL * jnp.sqrt(eps) < 1.0)

    def factored(_):
        theta, y = symmetric_eigh(_decoupled(linv @ sa @ linv.T, empty), sequential)
        return theta[:k], d[:, None] * (linv.T @ y[:, :k])

    return jax.lax.cond(ok, factored, lambda _: _rayleigh_ritz_eig(gram, a, k, sequential), None)


def lobpcg(
    apply_h: Callable[[jax.Array], jax.Array],
    x0: jax.Array,
    precondition: Callable[[jax.Array, jax.Array], jax.Array],
    n_target: int,
    tol: float,
    max_iterations: int,
    n_expand: int | None = None,
    sequential: bool = False,
) -> Eigenpairs:
    """Lowest eigenpairs of a symmetric operator by the locally optimal block preconditioned
    conjugate gradient method (A. V. Knyazev, SIAM J. Sci. Comput. 23, 517 (2001)).

    Only the first n_expand pairs carry a search direction: each iteration costs one product
    of H with W, their preconditioned residuals (projected once against X and P), and P holds
    their last steps; the other columns of X are improved through the Rayleigh-Ritz step only,
    which keeps that step at k + 2 n_expand columns. The products H X and H P are carried
    along (updated with the Ritz coefficients), never recomputed; the blocks live in two
    buffers S = [X, P, W] and HS = [HX, HP, HW], updated in place. Rayleigh-Ritz on span(S)
    uses the Cholesky factor of the Gram matrix and one eigendecomposition
    (`_rayleigh_ritz_gram`). P is not each column's last step but an orthonormal basis of the
    steps' part outside the new X, among the other Ritz directions (a QR of a
    (2 n_expand, n_expand) coefficient matrix; J. A. Duersch, M. Shao, C. Yang and M. Gu,
    SIAM J. Sci. Comput. 40, C655 (2018)): the same span, but once a column has converged to
    rounding its step is rounding noise, the H P carried along with such a P no longer matches
    H times P, and Rayleigh-Ritz mixed those wrong directions back into X (8 of 1000 paper
    potentials, docs/benchmarks.md). Iterates inside `lax.while_loop` until
    the first `n_target` residual norms are <= tol or `max_iterations` is reached; under
    `jax.vmap` every lane stops updating once it has converged (the loop runs until the slowest
    lane is done).

    Args:
      apply_h: X (n, m) -> H X, linear, H symmetric.
      x0: (n, k) starting block, full column rank; k - n_target extra vectors guard the
        convergence of the last target pairs.
      precondition: (R (n, n_expand), theta (n_expand,)) -> approximate (H - theta)^-1 R,
        column by column, symmetric positive.
      n_target: the first n_target pairs must meet tol.
      tol: residual norm threshold, unit of H.
      max_iterations: upper bound on iterations.
      n_expand: columns with a search direction (residual and last step), n_target <=
        n_expand <= k (default k, the standard method). n_expand = n_target saves work per
        iteration at a few more iterations.
      sequential: the CPU layout of qdjax.backend (same results to rounding).

    Returns:
      Eigenpairs (values and vectors of all k columns; residuals of the first n_target tell
      whether they converged; those beyond n_expand are not computed and returned as 0).
    """
    n, k = x0.shape
    t = k if n_expand is None else n_expand
    if not n_target <= t <= k:
        raise ValueError(f"need n_target <= n_expand <= k, got {n_target}, {t}, {k}")
    hx0 = apply_h(x0)
    theta, c = _rayleigh_ritz(x0, hx0, k, sequential)
    tr = functools.partial(backend.transposed, is_sequential=sequential)
    x, hx = x0 @ c, hx0 @ c
    # Columns of S (and HS): X 0:k, P k:k+t (0 before the first step), W k+t:k+2t.
    m = k + 2 * t
    s = jnp.zeros((n, m), x.dtype).at[:, :k].set(x)
    hs = jnp.zeros((n, m), x.dtype).at[:, :k].set(hx)

    def residual_norms(x, hx, theta):
        r = jnp.linalg.norm(hx[:, :t] - x[:, :t] * theta[None, :t], axis=0)
        return jnp.concatenate([r, jnp.zeros((k - t,), r.dtype)])

    def cond(state):
        _, _, _, res, it = state
        return jnp.logical_and(it < max_iterations, jnp.max(res[:n_target]) > tol)

    def body(state):
        s, hs, theta, _, it = state
        x, hx = s[:, :k], hs[:, :k]
        w = precondition(hx[:, :t] - x[:, :t] * theta[None, :t], theta[:t])
        xp = s[:, :k + t]
        w = w - xp @ (tr(xp) @ w)
        s = jax.lax.dynamic_update_slice(s, w, (0, k + t))
        hs = jax.lax.dynamic_update_slice(hs, apply_h(w), (0, k + t))
        st = tr(s)
        gram = st @ s
        theta, c = _rayleigh_ritz_gram(gram, st @ hs, m, sequential)
        # New X = S c_X. New P: the P and W part of the first t columns' step, S c_X without
        # its X rows, taken outside the new X (onto the other Ritz directions c_rest,
        # orthonormal in the metric of the Gram matrix) and orthonormalised there: same span
        # as [X, step], and P and H P stay consistent to rounding however small the step has
        # become.
        c_x, c_rest = c[:, :k], c[:, k:]
        q = backend.qr(tr(c_rest) @ (gram @ c_x[:, :t].at[:k].set(0.0)), sequential)
        update = jnp.concatenate([c_x, c_rest @ q], axis=1)
        xp, hxp = s @ update, hs @ update
        s = jax.lax.dynamic_update_slice(s, xp, (0, 0))
        hs = jax.lax.dynamic_update_slice(hs, hxp, (0, 0))
        theta = theta[:k]
        return s, hs, theta, residual_norms(xp, hxp, theta), it + 1

    state = (s, hs, theta, residual_norms(x, hx, theta), jnp.int32(0))
    s, hs, theta, res, it = jax.lax.while_loop(cond, body, state)
    return Eigenpairs(theta, s[:, :k], res, it, hs[:, :k])


def _orthonormal_block(v: jax.Array, w: jax.Array, sequential: bool) -> jax.Array:
    """The columns of w (n, t) made orthonormal to each other and, up to rounding, to those of
    v (n, m; orthonormal or zero): unit columns, one pass of classical Gram-Schmidt against v,
    then `_orthonormalising` (directions with nothing but rounding left, Gram eigenvalue at or
    below RR_DROP_TOL eps, become zero columns). What rounding leaves of the overlap with v,
    Rayleigh-Ritz with the Gram matrix absorbs."""
    norms = jnp.linalg.norm(w, axis=0)
    w = w * jnp.where(norms > 0, 1.0 / jnp.where(norms > 0, norms, 1.0), 0.0)[None, :]
    tr = functools.partial(backend.transposed, is_sequential=sequential)
    w = w - v @ (tr(v) @ w)
    return w @ _orthonormalising(tr(w) @ w, RR_DROP_TOL * jnp.finfo(w.dtype).eps, sequential)[0]


def _set_rows_and_columns(b: jax.Array, new: jax.Array, m: jax.Array) -> jax.Array:
    """Symmetric b (s, s) with columns m:m+t set to new (s, t) and rows m:m+t to new^T."""
    zero = jnp.int32(0)
    b = jax.lax.dynamic_update_slice(b, new, (zero, m))
    return jax.lax.dynamic_update_slice(b, new.T, (m, zero))


def davidson(
    apply_h: Callable[[jax.Array], jax.Array],
    x0: jax.Array,
    precondition: Callable[[jax.Array, jax.Array], jax.Array],
    n_target: int,
    tol: float,
    max_iterations: int,
    max_space: int,
    sequential: bool = False,
) -> Eigenpairs:
    """Lowest eigenpairs of a symmetric operator by block (generalised) Davidson with thick
    restart (E. R. Davidson, J. Comput. Phys. 17, 87 (1975); the block form used by CI codes).

    The search space V (at most max_space columns), H V, A = V^T H V and G = V^T V are kept in
    buffers and grown by one block per iteration: the preconditioned residuals of the first
    n_target Ritz pairs, orthonormalised against V (`_orthonormal_block`), so one iteration
    costs n_target products with H. Rayleigh-Ritz uses G (`_rayleigh_ritz_gram`), so the
    orthogonality V loses to rounding (float32) does not bias the Ritz pairs. When the next
    block would not fit, V restarts from the k current Ritz vectors and the n_target of the
    iteration before (combined in the coefficients of V: H V, A and G follow without
    products), which keeps the step LOBPCG takes even at the smallest space. Every column added
    since the last restart stays in the space, which makes the method robust where the last
    target has a close neighbour outside the target block (there a LOBPCG that expands only
    the targets can stagnate). Iterates inside `lax.while_loop` until the first n_target
    residual norms are <= tol or max_iterations is reached; under jax.vmap every lane stops
    changing once it has converged.

    Args:
      apply_h: X (n, m) -> H X, linear, H symmetric.
      x0: (n, k) orthonormal starting block; k - n_target extra vectors guard the
        convergence of the last target pairs.
      precondition: (R (n, n_target), theta (n_target,)) -> approximate (H - theta)^-1 R,
        column by column.
      n_target: the first n_target pairs must meet tol, 1 <= n_target <= k.
      tol: residual norm threshold, unit of H.
      max_iterations: upper bound on iterations.
      max_space: columns of the search space, >= k + 2 n_target.
      sequential: the CPU layout of qdjax.backend (same results to rounding).

    Returns:
      Eigenpairs: the k lowest Ritz pairs, the residual norms of the first n_target (0 for the
      others), the iterations (blocks of products after the first) and H times the Ritz
      vectors.
    """
    n, k = x0.shape
    t = n_target
    if not 1 <= t <= k or max_space < k + 2 * t:
        raise ValueError(f"need 1 <= n_target <= k and max_space >= k + 2 n_target, got {t}, {k}, {max_space}")
    zero = jnp.int32(0)
    tr = functools.partial(backend.transposed, is_sequential=sequential)
    hx0 = apply_h(x0)
    v = jnp.zeros((n, max_space), x0.dtype).at[:, :k].set(x0)
    hv = jnp.zeros((n, max_space), x0.dtype).at[:, :k].set(hx0)
    a = jnp.zeros((max_space, max_space), x0.dtype).at[:k, :k].set(tr(x0) @ hx0)
    g = jnp.zeros((max_space, max_space), x0.dtype).at[:k, :k].set(tr(x0) @ x0)

    def residuals(v, hv, theta, y):
        """R (n, t) of the target pairs and the residual norms (k,), 0 beyond t."""
        r = hv @ y[:, :t] - (v @ y[:, :t]) * theta[None, :t]
        return r, jnp.concatenate([jnp.linalg.norm(r, axis=0), jnp.zeros((k - t,), r.dtype)])

    def restarted(v, hv, a, g, y, y_prev):
        """The space of [Ritz vectors, previous Ritz vectors], k + t columns: (v, hv, a, g).
        Previous directions (nearly) in the span of the current ones are dropped (Gram
        eigenvalue at or below RR_DROP_TOL sqrt(eps))."""
        extra = y_prev
        for _ in range(2):
            extra = extra - y @ (y.T @ (g @ extra))
        extra = extra @ _orthonormalising(extra.T @ g @ extra, RR_DROP_TOL * jnp.sqrt(jnp.finfo(y.dtype).eps), sequential)[0]
        z = jnp.concatenate([y, extra, jnp.zeros((max_space, max_space - k - t), y.dtype)], axis=1)
        return v @ z, hv @ z, z.T @ a @ z, z.T @ g @ z

    def cond(state):
        *_, res, it = state
        return jnp.logical_and(it < max_iterations, jnp.max(res[:t]) > tol)

    def body(state):
        v, hv, a, g, m, theta, y, y_prev, r, _, it = state
        w = precondition(r, theta[:t])
        restart = m + t > max_space
        v, hv, a, g = jax.lax.cond(
            restart, restarted, lambda v, hv, a, g, *_: (v, hv, a, g), v, hv, a, g, y, y_prev
        )
        m = jnp.where(restart, jnp.int32(k + t), m)
        w = _orthonormal_block(v, w, sequential)
        hw = apply_h(w)
        v = jax.lax.dynamic_update_slice(v, w, (zero, m))
        hv = jax.lax.dynamic_update_slice(hv, hw, (zero, m))
        vt = tr(v)
        a, g = _set_rows_and_columns(a, vt @ hw, m), _set_rows_and_columns(g, vt @ w, m)
        # the previous Ritz coefficients in the (possibly restarted) basis
        y_prev = jnp.where(restart, jnp.eye(max_space, k, dtype=y.dtype), y)[:, :t]
        theta, y = _rayleigh_ritz_gram(g, a, k, sequential)
        return (v, hv, a, g, m + t, theta, y, y_prev, *residuals(v, hv, theta, y), it + 1)

    theta, y = _rayleigh_ritz_gram(g, a, k, sequential)
    state = (v, hv, a, g, jnp.int32(k), theta, y, y[:, :t], *residuals(v, hv, theta, y), zero)
    v, hv, _, _, _, theta, y, _, _, res, it = jax.lax.while_loop(cond, body, state)
    return Eigenpairs(theta, v @ y, res, it, hv @ y)


def pcg(
    matvec: Callable[[jax.Array], jax.Array],
    b: jax.Array,
    precondition: Callable[[jax.Array], jax.Array],
    tol: float,
    max_iterations: int,
) -> jax.Array:
    """Preconditioned conjugate gradients, column by column, for symmetric positive A.

    Solves A x_j = b_j for every column j of b (n, m) at once (each column has its own step
    lengths). Stops when every column has ||r_j|| <= tol ||b_j|| or after max_iterations.

    Args:
      matvec: X (n, m) -> A X, A symmetric positive definite on the space the b_j live in.
      b: (n, m) right-hand sides.
      precondition: R (n, m) -> M^-1 R, symmetric positive definite.
      tol: relative residual threshold.
      max_iterations: upper bound on iterations.

    Returns:
      x (n, m).
    """
    bnorm = jnp.linalg.norm(b, axis=0)
    x = jnp.zeros_like(b)
    r = b
    z = precondition(r)
    rz = jnp.sum(r * z, axis=0)

    def safe_div(num, den):
        ok = den != 0
        return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)

    def cond(state):
        _, r, _, _, it = state
        return jnp.logical_and(it < max_iterations, jnp.any(jnp.linalg.norm(r, axis=0) > tol * bnorm))

    def body(state):
        x, r, p, rz, it = state
        ap = matvec(p)
        alpha = safe_div(rz, jnp.sum(p * ap, axis=0))
        x = x + alpha * p
        r = r - alpha * ap
        z = precondition(r)
        rz_new = jnp.sum(r * z, axis=0)
        p = z + safe_div(rz_new, rz) * p
        return x, r, p, rz_new, it + 1

    x, *_ = jax.lax.while_loop(cond, body, (x, r, z, rz, jnp.int32(0)))
    return x


def _within_block_terms(w: jax.Array, omega: jax.Array, tol: float) -> jax.Array:
    """F * omega with F[i, k] = 1 / (w_k - w_i) for |w_k - w_i| > tol, else 0."""
    gap = w[None, :] - w[:, None]
    inside = jnp.abs(gap) > tol
    return jnp.where(inside, 1.0 / jnp.where(inside, gap, 1.0), 0.0) * omega


class Preconditioner(NamedTuple):
    """Data of the block-Jacobi preconditioner of `lowest_eigenpairs` (not differentiated).

    diagonal: (n,) diagonal of H, the model of H outside the coarse block.
    coarse: (s,) int indices of the coarse block, in which H is inverted exactly.
    coarse_values, coarse_vectors: (s,), (s, s) eigendecomposition of H restricted to it.
    """

    diagonal: jax.Array
    coarse: jax.Array
    coarse_values: jax.Array
    coarse_vectors: jax.Array


def block_jacobi(h_coarse: jax.Array, diagonal: jax.Array, coarse: jax.Array, block: int, sequential: bool = False):
    """Starting block and `Preconditioner` from the exact solution in a coarse subspace.

    Args:
      h_coarse: (s, s) H restricted to the coarse indices, H[coarse][:, coarse] (computed
        directly, without products with H: `qdjax.fock.hamiltonian_block` for a many-body
        sector).
      diagonal: (n,) diagonal of H.
      coarse: (s,) int indices, s >= block (e.g. the lowest diagonal entries).
      block: number of starting vectors.
      sequential: the CPU layout of qdjax.backend.

    Returns:
      (x0 (n, block), Preconditioner). Not differentiated (stop_gradient).
    """
    h_coarse = jax.lax.stop_gradient(h_coarse)
    lam, z = symmetric_eigh(0.5 * (h_coarse + h_coarse.T), sequential)
    x0 = jnp.zeros((diagonal.shape[0], block), diagonal.dtype).at[coarse].set(z[:, :block])
    return x0, Preconditioner(jax.lax.stop_gradient(diagonal), coarse, lam, z)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 4, 5, 6, 7, 8, 9, 10, 11))
def lowest_eigenpairs(
    apply_h: Callable,
    params,
    preconditioner: Preconditioner,
    x0: jax.Array,
    n_target: int,
    tol: float,
    max_iterations: int,
    max_space: int,
    degeneracy_tol: float,
    solve_tol: float,
    solve_max_iterations: int,
    sequential: bool = False,
):
    """Lowest eigenpairs of H(params) by `davidson`, differentiable with respect to params.

    H(params) is given only through apply_h(params, X) = H(params) X, which must be linear in
    params (a matrix, or the integrals of a many-body Hamiltonian). Preconditioner: block
    Jacobi around sigma, a little below the lowest coarse level: (H_cc - sigma)^-1 exactly on
    the coarse block, (diagonal - sigma)^-1 (floored) elsewhere (`block_jacobi` builds it).

    Derivative (custom JVP; jax.grad transposes it): for the n_target returned pairs,
    dw_k = u_k^T dH u_k and du_k = sum_{j != k} u_j <u_j|dH|u_k> / (w_k - w_j) (pairs closer than
    degeneracy_tol dropped, as in `eigh_lowest`) plus y_k from the projected Sternheimer
    equation (Q H Q - w_k) y_k = -Q dH u_k, Q = 1 - U U^T, solved by `pcg` to solve_tol. It is
    exact for quantities invariant under rotations inside degenerate groups, provided
    w_{n_target} < w_{n_target + 1} (a gap after the returned block).

    Args:
      apply_h: (params, X (n, m)) -> H X. Static (hashable) under jit.
      params: pytree of arrays defining H, differentiable.
      preconditioner: `Preconditioner` (not differentiated).
      x0: (n, k) starting block, k > n_target.
      n_target, tol, max_iterations, max_space: see `davidson`.
      degeneracy_tol: gaps at or below this count as degenerate in the derivative.
      solve_tol, solve_max_iterations: Sternheimer conjugate gradients settings.
      sequential: the CPU layout of qdjax.backend (same results to rounding).

    Returns:
      (values (n_target,), vectors (n, n_target), residuals (n_target,)).
    """
    w, u, res, _ = _lowest_eigenpairs(
        apply_h, params, preconditioner, x0, n_target, tol, max_iterations, max_space, sequential
    )
    return w, u, res


def _lowest_eigenpairs(apply_h, params, pre: Preconditioner, x0, n_target, tol, max_iterations, max_space,
                       sequential):
    k = x0.shape[-1]
    lam, z = pre.coarse_values, pre.coarse_vectors
    spread = lam[k] - lam[0] if lam.shape[0] > k else lam[-1] - lam[0]
    spread = spread + jnp.finfo(lam.dtype).eps * (jnp.abs(lam[0]) + 1.0)
    sigma = lam[0] - 0.05 * spread
    outside = jnp.maximum(pre.diagonal - sigma, spread)
    inverse = (z / (lam - sigma)[None, :]) @ z.T

    def precondition(r, theta):
        return (r / outside[:, None]).at[pre.coarse].set(inverse @ r[pre.coarse])

    result = davidson(
        lambda x: apply_h(params, x), x0, precondition, n_target, tol, max_iterations, max_space, sequential
    )
    return result.values[:n_target], result.vectors[:, :n_target], result.residuals[:n_target], result.values


@lowest_eigenpairs.defjvp
def _lowest_eigenpairs_jvp(
    apply_h, n_target, tol, max_iterations, max_space, degeneracy_tol, solve_tol, solve_max, sequential,
    primals, tangents,
):
    with backend.full_precision(primals[2].dtype):
        return _lowest_eigenpairs_jvp_terms(
            apply_h, n_target, tol, max_iterations, max_space, degeneracy_tol, solve_tol, solve_max, sequential,
            primals, tangents,
        )


def _lowest_eigenpairs_jvp_terms(
    apply_h, n_target, tol, max_iterations, max_space, degeneracy_tol, solve_tol, solve_max, sequential,
    primals, tangents,
):
    params, pre, x0 = primals
    dparams = tangents[0]
    w, u, res, _ = _lowest_eigenpairs(
        apply_h, params, pre, x0, n_target, tol, max_iterations, max_space, sequential
    )
    dhu = apply_h(dparams, u)
    omega = u.T @ dhu
    dw = jnp.diagonal(omega)

    def project(y):
        return y - u @ (u.T @ y)

    def matvec(y):
        return project(apply_h(params, y) - y * w[None, :])

    # SPD model of Q (H - w_k) Q: coarse levels above the targets shifted by w_k (floored);
    # coarse levels among the targets (projected out anyway) and the rest by a diagonal model.
    lam, z = pre.coarse_values, pre.coarse_vectors
    scale = lam[-1] - lam[0] + jnp.finfo(lam.dtype).eps * (jnp.abs(lam[0]) + 1.0)
    shifted = lam[:, None] - w[None, :]
    coarse = jnp.where(jnp.arange(lam.shape[0])[:, None] < n_target, scale, jnp.maximum(shifted, 1e-3 * scale))
    outside = jnp.maximum(pre.diagonal[:, None] - w[None, :], scale)

    def precondition(r):
        r = project(r)
        out = (r / outside).at[pre.coarse].set(z @ ((z.T @ r[pre.coarse]) / coarse))
        return project(out)

    def solve(matvec, b):
        # b -> (Q (H - w) Q)^+ Q b is symmetric, hence its own transpose (reverse mode passes
        # cotangents outside range(Q)). Projected twice: a cotangent nearly inside range(U)
        # (that of U^T H U is H U = U W up to the residual) keeps, after one projection, a
        # rounding part in range(U) of eps times its norm, which Q (H - w) Q cannot reduce;
        # relative to the small remainder that part is large, and the iteration diverged.
        return pcg(matvec, project(project(b)), precondition, solve_tol, solve_max)

    y = jax.lax.custom_linear_solve(matvec, -(dhu - u @ omega), solve, symmetric=True)
    du = u @ _within_block_terms(w, omega, degeneracy_tol) + y
    return (w, u, res), (dw, du, jnp.zeros_like(res))
