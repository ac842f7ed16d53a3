"""Peer exact-diagonalisation pipeline in NumPy / SciPy / PySCF.

An independent reference for qdjax's ED (DESIGN.md, "Anchors to beat"): the same
physics and numerical conventions, written with the standard scientific-Python tools a
physicist would reach for, and used to check energies (to 1e-8 eV on identical integrals)
and to measure throughput side by side. It does not import qdjax.

Model (Pantis-Simut et al., Mach. Learn.: Sci. Technol. 4, 025023 (2023)): N electrons in the
hard-wall box [0, L]^2 with a pixel-wise constant confinement potential V, effective mass m*,
dielectric constant eps_r,

    H = sum_i [-hbar^2/(2 m*) lap_i + V(r_i)] + sum_{i<j} k_e / (eps_r |r_i - r_j|).

Stages:
  1. single-particle problem in the product sine basis phi_m(x) phi_n(y),
     phi_m(x) = sqrt(2/L) sin(m pi x / L), m, n = 1..basis, flat index (m-1)*basis + (n-1);
     exact pixel integrals for V, analytic kinetic energy, LAPACK eigh for the lowest K;
  2. Coulomb tensor (pq|rs) of the K orbitals (pixel-centre sampling, Vico-Greengard-Ferrando
     free-space kernel, zero-padded FFT convolution);
  3. FCI with pyscf.fci.direct_spin1 in the sector ((N+1)//2, N//2), averaged over a
     degenerate ground manifold;
  4. pixel-averaged ground-state density from the spin-summed one-body density matrix.

Units: energies eV, lengths nm, densities nm^-2. Constants: CODATA 2018.

Command line:
    python benchmarks/peer_ed.py --n-electrons 2 --seed 0
prints the ground-state energy and the wall time of each stage for a random test potential.
BLAS (eigh) and PySCF (FCI) use OpenMP threads; on a busy machine
OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 gives much steadier (and there, faster) timings.
"""

from __future__ import annotations

import argparse
import math
import functools
import time
import warnings

import numpy as np
import scipy
import scipy.linalg
import scipy.special

#: hbar^2 / (2 m_e), eV nm^2 (CODATA 2018).
HBAR2_OVER_2ME = 0.0380998212
#: e^2 / (4 pi eps0), eV nm (CODATA 2018).
COULOMB_K = 1.439964548


# ----------------------------------------------------------------------------- basis


def overlap_table(L: float, grid: int, basis: int) -> np.ndarray:
    """Pixel integrals of products of sine functions.

    A[i, m, m'] = int_{i h}^{(i+1) h} phi_m(x) phi_m'(x) dx,  h = L / grid,
    phi_m(x) = sqrt(2/L) sin(m pi x / L)  (m, m' = 1..basis stored at index m-1).

    Closed form: phi_m phi_m' = (1/L) [cos((m-m') pi x/L) - cos((m+m') pi x/L)] and
    int_{c-h/2}^{c+h/2} cos(k x) dx = h cos(k c) sinc(k h / (2 pi)) (numpy sinc), with c the
    pixel centre; this form has no cancellation between the two pixel edges.

    Args:
      L: box side, nm. grid: pixels per side. basis: sine functions per direction.
    Returns:
      A: float64 (grid, basis, basis), dimensionless. sum_i A[i] = identity.
    """
    h = L / grid
    centres = (np.arange(grid) + 0.5) * h
    m = np.arange(1, basis + 1)
    k_minus = (m[:, None] - m[None, :]) * np.pi / L
    k_plus = (m[:, None] + m[None, :]) * np.pi / L

    def cos_integral(k):  # (basis, basis) -> (grid, basis, basis)
        return h * np.cos(k[None] * centres[:, None, None]) * np.sinc(k * h / (2 * np.pi))[None]

    return (cos_integral(k_minus) - cos_integral(k_plus)) / L


def potential_matrix(V: np.ndarray, A: np.ndarray) -> np.ndarray:
    """Matrix of a pixel-wise constant potential in the product sine basis.

    <mn|V|m'n'> = sum_ij V[i, j] A[i, m, m'] A[j, n, n'], evaluated as
    A2^T V A2 with A2 = A reshaped to (grid, basis^2).

    Args:
      V: float (grid, grid), eV; V[i, j] = V(x_i, y_j).
      A: float (grid, basis, basis), from `overlap_table`.
    Returns:
      float64 (basis^2, basis^2), eV, rows (m, n) -> (m-1)*basis + (n-1), symmetric.
    """
    grid, basis, _ = A.shape
    A2 = A.reshape(grid, basis * basis)
    M = A2.T @ (np.asarray(V, dtype=np.float64) @ A2)           # [(m, m'), (n, n')]
    M = M.reshape(basis, basis, basis, basis).transpose(0, 2, 1, 3)  # [m, n, m', n']
    return M.reshape(basis * basis, basis * basis)


def kinetic(L: float, basis: int, m_eff: float) -> np.ndarray:
    """Kinetic energies of the product sine functions (the kinetic matrix is diagonal).

    T_mn = hbar^2 pi^2 (m^2 + n^2) / (2 m* L^2).

    Args:
      L: box side, nm. basis: sine functions per direction. m_eff: m* / m_e.
    Returns:
      float64 (basis^2,), eV, index (m-1)*basis + (n-1).
    """
    m = np.arange(1, basis + 1)
    m2n2 = (m[:, None] ** 2 + m[None, :] ** 2).ravel()
    return HBAR2_OVER_2ME / m_eff * np.pi**2 * m2n2 / L**2


def single_particle(V, L: float, basis: int, orbitals: int, m_eff: float, A=None):
    """Lowest single-particle orbitals of -hbar^2/(2 m*) lap + V in the box.

    Dense Hamiltonian diag(T) + <mn|V|m'n'> of size basis^2, LAPACK eigh (scipy.linalg.eigh,
    subset_by_index=[0, K-1]).

    Args:
      V: float (grid, grid), eV. L: box side, nm. basis: sine functions per direction.
      orbitals: K. m_eff: m* / m_e. A: optional precomputed `overlap_table(L, grid, basis)`.
    Returns:
      energies: float64 (K,), eV, ascending.
      U: float64 (basis^2, K), orthonormal expansion coefficients of the orbitals.
    """
    V = np.asarray(V, dtype=np.float64)
    if A is None:
        A = overlap_table(L, V.shape[0], basis)
    H = potential_matrix(V, A)
    H[np.diag_indices_from(H)] += kinetic(L, basis, m_eff)
    energies, U = scipy.linalg.eigh(H, subset_by_index=[0, orbitals - 1])
    return energies, U


def orbitals_on_grid(U: np.ndarray, L: float, grid: int, basis: int) -> np.ndarray:
    """Orbitals sampled at the pixel centres ((i+1/2) h, (j+1/2) h).

    psi_p(x_i, y_j) = sum_mn U[(m, n), p] phi_m(x_i) phi_n(y_j).

    Returns:
      float64 (K, grid, grid), nm^-1.
    """
    centres = (np.arange(grid) + 0.5) * (L / grid)
    S = np.sqrt(2.0 / L) * np.sin(np.outer(centres, np.arange(1, basis + 1)) * np.pi / L)
    C = U.reshape(basis, basis, -1)
    return np.einsum("im,mnp,jn->pij", S, C, S, optimize=True)


# ----------------------------------------------------------------------------- Coulomb


@functools.cache
def _check_itj0y0() -> None:
    """Refuse a SciPy whose itj0y0 is wrong for large arguments.

    Before SciPy 1.17, scipy.special.itj0y0 returned values far from the integral of J0 for
    arguments above about 19 (scipy/scipy#22436: 1.4e8 at x = 100, where the integral is
    0.92266); the kernel here needs x up to about 300.
    """
    value = float(scipy.special.itj0y0(100.0)[0])
    if abs(value - 0.9226625570) > 1e-8:
        raise RuntimeError(
            f"scipy.special.itj0y0(100) = {value:.6g}, not 0.92266: this SciPy "
            f"({scipy.__version__}) computes the J0 integral wrongly for large arguments "
            "(scipy/scipy#22436); install scipy>=1.17"
        )


def vico_fourier(k, R: float):
    """Fourier transform of the 2D Coulomb kernel 1/r truncated at radius R.

    Khat(k) = (2 pi / k) int_0^{kR} J0(t) dt,  Khat(0) = 2 pi R
    (Vico, Greengard, Ferrando, J. Comput. Phys. 323, 191 (2016), arXiv:1604.03155).
    The J0 integral is scipy.special.itj0y0.

    Args:
      k: float array, nm^-1 (|k| is used). R: truncation radius, nm.
    Returns:
      float64 array of k's shape, nm.
    """
    _check_itj0y0()
    k = np.abs(np.asarray(k, dtype=np.float64))
    safe_k = np.where(k > 0, k, 1.0)
    j0_integral, _ = scipy.special.itj0y0(safe_k * R)
    return np.where(k > 0, 2 * np.pi * j0_integral / safe_k, 2 * np.pi * R)


def vico_kernel(L: float, grid: int) -> np.ndarray:
    """Real-space free-space Coulomb kernel for a zero-padded FFT convolution.

    Khat(|k|) with R = sqrt(2) L on a 4*grid FFT grid (k = 2 pi fftfreq(4 grid, d=h)),
    kernel = real(ifft2(Khat)); this includes the quadrature weight h^2, so the potential of
    a pixel-sampled density is phi[i] = sum_j kernel[i - j] rho[j]. The offsets
    -(grid-1)..(grid-1) are kept and stored periodically in a 2*grid array (offset grid is 0).

    Args:
      L: box side, nm. grid: pixels per side.
    Returns:
      float64 (2 grid, 2 grid), nm (1/r times nm^2); kernel[d mod 2grid, e mod 2grid] for the
      pixel offset (d, e).
    """
    h = L / grid
    n_big = 4 * grid
    k1 = 2 * np.pi * np.fft.fftfreq(n_big, d=h)
    k = np.hypot(k1[:, None], k1[None, :])
    big = np.fft.ifft2(vico_fourier(k, math.sqrt(2.0) * L)).real
    offsets = np.arange(-(grid - 1), grid)
    kernel = np.zeros((2 * grid, 2 * grid))
    kernel[np.ix_(offsets % (2 * grid), offsets % (2 * grid))] = big[
        np.ix_(offsets % n_big, offsets % n_big)
    ]
    return kernel


def coulomb_tensor(U, L: float, grid: int, basis: int, eps_r: float, kernel=None) -> np.ndarray:
    """Coulomb integrals of the orbitals in chemists' notation.

    (pq|rs) = (k_e / eps_r) int int rho_pq(r) rho_rs(r') / |r - r'| dr dr'
            = (k_e / eps_r) h^2 sum_pixels rho_rs (kernel * rho_pq),
    rho_pq = psi_p psi_q at the pixel centres, '*' the zero-padded (2 grid) FFT convolution
    with `vico_kernel`. Computed for the K(K+1)/2 pairs p <= q, symmetrised over
    (pq) <-> (rs) and unpacked, so the result has the exact 8-fold symmetry.

    Args:
      U: float (basis^2, K). L: nm. grid, basis: sizes. eps_r: relative permittivity
        (math.inf gives the zero tensor). kernel: optional precomputed `vico_kernel(L, grid)`.
    Returns:
      eri: float64 (K, K, K, K), eV.
    """
    K = U.shape[1]
    if math.isinf(eps_r):
        return np.zeros((K, K, K, K))
    if kernel is None:
        kernel = vico_kernel(L, grid)
    h = L / grid
    psi = orbitals_on_grid(U, L, grid, basis)
    p_idx, q_idx = np.triu_indices(K)
    rho = psi[p_idx] * psi[q_idx]                                  # (P, grid, grid)
    kernel_hat = np.fft.rfft2(kernel)
    potential = np.fft.irfft2(np.fft.rfft2(rho, s=(2 * grid, 2 * grid)) * kernel_hat,
                              s=(2 * grid, 2 * grid))[:, :grid, :grid]
    n_pairs = len(p_idx)
    J = potential.reshape(n_pairs, -1) @ rho.reshape(n_pairs, -1).T
    J = 0.5 * (J + J.T) * (COULOMB_K / eps_r) * h**2
    pair = np.empty((K, K), dtype=int)
    pair[p_idx, q_idx] = np.arange(n_pairs)
    pair[q_idx, p_idx] = np.arange(n_pairs)
    return J[pair[:, :, None, None], pair[None, None, :, :]]


# ----------------------------------------------------------------------------- many-body


def fci(h1e, eri, n_electrons: int, degeneracy_tol: float = 1e-6):
    """Many-body ground state in the orbital basis with PySCF FCI.

    Sector (n_up, n_down) = ((N+1)//2, N//2), which contains the global ground state.
    pyscf.fci.direct_spin1.FCI().kernel(h1e, eri, K, (n_up, n_down)), ecore 0, with as many
    roots as needed to see the whole ground manifold (states within degeneracy_tol of the
    lowest); energy and spin-summed 1-RDM (fcisolver.make_rdm1) are averaged over it. N = 1 is
    solved directly (lowest eigenpairs of h1e).

    Args:
      h1e: float (K,) orbital energies or (K, K) one-body matrix, eV.
      eri: float (K, K, K, K), eV, chemists' notation (pq|rs).
      n_electrons: N, 1 <= N <= 2K.
      degeneracy_tol: eV.
    Returns:
      energy: float, eV. rdm1: float64 (K, K), spin-summed gamma_pq = sum_s <c+_ps c_qs>,
      trace N.
    """
    h1e = np.asarray(h1e, dtype=np.float64)
    if h1e.ndim == 1:
        h1e = np.diag(h1e)
    K = h1e.shape[0]
    if not 1 <= n_electrons <= 2 * K:
        raise ValueError(f"n_electrons must be in 1..{2 * K} for {K} orbitals, got {n_electrons}")
    if n_electrons == 1:
        w, v = np.linalg.eigh(h1e)
        ground = w <= w[0] + degeneracy_tol
        vg = v[:, ground]
        return float(w[ground].mean()), vg @ vg.T / ground.sum()

    from pyscf.fci import cistring, direct_spin1

    nelec = ((n_electrons + 1) // 2, n_electrons // 2)
    n_det = cistring.num_strings(K, nelec[0]) * cistring.num_strings(K, nelec[1])
    solver = direct_spin1.FCI()
    solver.verbose = 0
    # Davidson residual sqrt(conv_tol) = 1e-6 eV: energies to ~1e-13 eV, 1-RDM to ~1e-7.
    solver.conv_tol = 1e-12
    eri = np.asarray(eri, dtype=np.float64)
    nroots = min(2, n_det)
    while True:
        energies, civecs = solver.kernel(h1e, eri, K, nelec, nroots=nroots)
        energies = np.atleast_1d(energies)
        civecs = [civecs] if nroots == 1 else list(civecs)
        if not np.all(solver.converged):
            warnings.warn(f"FCI (N={n_electrons}, {nroots} roots) did not converge", RuntimeWarning)
        ground = energies <= energies[0] + degeneracy_tol
        if not ground.all() or nroots == n_det:
            break
        nroots = min(2 * nroots, n_det)
    rdm1 = sum(solver.make_rdm1(c, K, nelec) for c, g in zip(civecs, ground) if g)
    return float(energies[ground].mean()), rdm1 / ground.sum()


def sigma(h1e, eri, n_electrons: int, vectors) -> np.ndarray:
    """H c of the ((N+1)//2, N//2) sector with PySCF, one column after another, as its FCI
    Davidson forms it: ``direct_spin1.absorb_h1e`` once, then ``direct_spin1.contract_2e``.

    Args:
      h1e: float (K, K) eV. eri: float (K, K, K, K) eV, (pq|rs).
      n_electrons: N >= 2 (N = 1 has no two-body part).
      vectors: float (d, m), columns in PySCF's determinant order.
    Returns:
      (d, m) float64, eV times the vectors.
    """
    from pyscf.fci import cistring, direct_spin1

    K = h1e.shape[0]
    nelec = ((n_electrons + 1) // 2, n_electrons // 2)
    shape = (cistring.num_strings(K, nelec[0]), cistring.num_strings(K, nelec[1]))
    h2e = direct_spin1.absorb_h1e(np.asarray(h1e, np.float64), np.asarray(eri, np.float64), K, nelec, 0.5)
    columns = [direct_spin1.contract_2e(h2e, v.reshape(shape), K, nelec).reshape(-1) for v in np.asarray(vectors).T]
    return np.stack(columns, axis=1)


def density(rdm1, U, A, L: float) -> np.ndarray:
    """Pixel-averaged ground-state density.

    n[i, j] = (1/h^2) sum_pq gamma_pq sum U[mn, p] U[m'n', q] A[i, m, m'] A[j, n, n'],
    i.e. the average over pixel (i, j) of sum_pq gamma_pq psi_p psi_q (the adjoint of
    `potential_matrix`), so sum(n) h^2 = trace(gamma) = N exactly.

    Args:
      rdm1: float (K, K), spin-summed one-body density matrix. U: float (basis^2, K).
      A: float (grid, basis, basis) from `overlap_table`. L: box side, nm.
    Returns:
      float64 (grid, grid), nm^-2.
    """
    grid, basis, _ = A.shape
    h = L / grid
    D = U @ rdm1 @ U.T                                              # [(m, n), (m', n')]
    D = D.reshape(basis, basis, basis, basis).transpose(0, 2, 1, 3).reshape(basis**2, basis**2)
    A2 = A.reshape(grid, basis * basis)
    return (A2 @ D @ A2.T) / h**2


# ----------------------------------------------------------------------------- pipeline


@functools.lru_cache(maxsize=8)
def _tables(L: float, grid: int, basis: int):
    """Potential-independent tables (read-only): overlap table A and the Vico kernel."""
    A = overlap_table(L, grid, basis)
    kernel = vico_kernel(L, grid)
    A.setflags(write=False)
    kernel.setflags(write=False)
    return A, kernel


def ground_state(V, n_electrons: int, L: float = 30.0, grid: int = 64, basis: int = 32,
                 orbitals: int = 8, m_eff: float = 0.067, eps_r: float = 12.9) -> dict:
    """Interacting ground state of N electrons in the potential V (the full pipeline).

    Args:
      V: float (grid, grid), eV, V[i, j] = V(x_i, y_j) on pixel [i h, (i+1) h] x [j h, (j+1) h].
      n_electrons: N. L: box side, nm. grid: pixels per side (must match V). basis: sine
      functions per direction. orbitals: K. m_eff: m* / m_e. eps_r: relative permittivity
      (math.inf: no interaction).
    Returns:
      dict with
        energy: float, eV (averaged over a degenerate ground manifold);
        orbital_energies: (K,), eV; U: (basis^2, K);
        h1e: (K, K), eV, diag(orbital_energies); eri: (K, K, K, K), eV;
        rdm1: (K, K), spin-summed; density: (grid, grid), nm^-2;
        timings: dict stage -> wall seconds (tables, single_particle, coulomb, fci, density);
          the potential-independent tables (overlap table, Coulomb kernel) are built once per
          (L, grid, basis) and reused, so "tables" is ~0 after the first call.
    """
    V = np.asarray(V, dtype=np.float64)
    if V.shape != (grid, grid):
        raise ValueError(f"V must have shape ({grid}, {grid}), got {V.shape}")
    if not np.all(np.isfinite(V)):
        raise ValueError("V contains non-finite values")
    if not 1 <= n_electrons <= 2 * orbitals:
        raise ValueError(f"n_electrons must be in 1..{2 * orbitals}, got {n_electrons}")
    timings = {}
    t = time.perf_counter()
    A, kernel = _tables(float(L), grid, basis)
    timings["tables"] = time.perf_counter() - t

    t = time.perf_counter()
    energies, U = single_particle(V, L, basis, orbitals, m_eff, A=A)
    timings["single_particle"] = time.perf_counter() - t

    t = time.perf_counter()
    eri = coulomb_tensor(U, L, grid, basis, eps_r, kernel=kernel)
    timings["coulomb"] = time.perf_counter() - t

    t = time.perf_counter()
    h1e = np.diag(energies)
    energy, rdm1 = fci(h1e, eri, n_electrons)
    timings["fci"] = time.perf_counter() - t

    t = time.perf_counter()
    n = density(rdm1, U, A, L)
    timings["density"] = time.perf_counter() - t
    return dict(energy=energy, orbital_energies=energies, rdm1=rdm1, density=n, h1e=h1e,
                eri=eri, U=U, timings=timings)


def random_potential(seed: int, L: float = 30.0, grid: int = 64, n_discs: int = 8,
                     plateau: float = 0.5) -> np.ndarray:
    """A simple random test potential: discs at 0 eV on a plateau (not the paper's generator).

    Disc centres uniform in the box, radii uniform in (L/16, L/8).

    Returns:
      float64 (grid, grid), eV.
    """
    rng = np.random.default_rng(seed)
    centres = (np.arange(grid) + 0.5) * (L / grid)
    x, y = np.meshgrid(centres, centres, indexing="ij")
    V = np.full((grid, grid), plateau)
    for cx, cy, r in zip(rng.uniform(0, L, n_discs), rng.uniform(0, L, n_discs),
                         rng.uniform(L / 16, L / 8, n_discs)):
        V[(x - cx) ** 2 + (y - cy) ** 2 <= r**2] = 0.0
    return V


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-electrons", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=5,
                        help="timed runs after one warm-up run")
    parser.add_argument("--length", type=float, default=30.0, help="box side L, nm")
    parser.add_argument("--grid", type=int, default=64)
    parser.add_argument("--basis", type=int, default=32)
    parser.add_argument("--orbitals", type=int, default=8)
    parser.add_argument("--m-eff", type=float, default=0.067)
    parser.add_argument("--eps-r", type=float, default=12.9)
    args = parser.parse_args(argv)

    V = random_potential(args.seed, args.length, args.grid)
    kwargs = dict(L=args.length, grid=args.grid, basis=args.basis, orbitals=args.orbitals,
                  m_eff=args.m_eff, eps_r=args.eps_r)
    first = ground_state(V, args.n_electrons, **kwargs)["timings"]
    runs = []
    for _ in range(max(args.repeat, 1)):
        t = time.perf_counter()
        gs = ground_state(V, args.n_electrons, **kwargs)
        runs.append(dict(gs["timings"], total=time.perf_counter() - t))
    h = args.length / args.grid
    print(f"N = {args.n_electrons}, seed = {args.seed}")
    print(f"energy           {gs['energy']:.10f} eV")
    print(f"orbital energies {np.array2string(gs['orbital_energies'], precision=6)} eV")
    print(f"sum(n) h^2       {gs['density'].sum() * h**2:.12f}")
    print(f"first call: tables (overlap table + Coulomb kernel) {first['tables'] * 1e3:.2f} ms")
    print(f"wall time per stage over {len(runs)} warm runs (min / median):")
    for stage in runs[0]:
        values = np.array([run[stage] for run in runs]) * 1e3
        print(f"  {stage:16s}{values.min():9.2f} ms {np.median(values):9.2f} ms")

if __name__ == "__main__":
    main()
