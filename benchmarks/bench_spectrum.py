"""Cost of the spin-resolved spectrum against the ground state, and against PySCF FCI with
nroots on the same integrals, in the same run.

Run: python benchmarks/bench_spectrum.py [--electrons 2 3 4] [--batch 8] [--states 6]
     [--repeats 3] [--grid 64 --basis 32 --orbitals 8] [--json out.json]

For each N: qdjax.ed.ground_state and qdjax.ed.spectrum (n_states = --states) on a batch of
the paper's random potentials (wall time per potential after compilation, best of --repeats
calls); then PySCF direct_spin1 FCI on qdjax's integrals of the same potentials with nroots = 1
and nroots = --states (Davidson, conv_tol 1e-12, the FCI stage only), and the largest
difference of the energies from qdjax's. OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 give steadier
timings on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

import qdjax
from qdjax import ed, fock, potentials


def _best(f, repeats):
    jax.block_until_ready(f())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(f())
        times.append(time.perf_counter() - start)
    return min(times)


def _pyscf(h1, eri, orbitals, nelec, nroots):
    from pyscf.fci import direct_spin1

    solver = direct_spin1.FCI()
    solver.verbose = 0
    solver.conv_tol = 1e-12
    solver.nroots = nroots
    start = time.perf_counter()
    e, _ = solver.kernel(h1, eri, orbitals, nelec)
    return np.atleast_1d(e), time.perf_counter() - start


def run(electrons, batch, n_states, repeats, config):
    V = potentials.random_potentials(list(range(100, 100 + batch)), config)
    ints = ed.integrals(V, config)
    rows = []
    for n in electrons:
        t_ground = _best(lambda: ed.ground_state(V, n, config).energy, repeats) / batch
        sp = ed.spectrum(V, n, n_states, config)
        t_spectrum = _best(lambda: ed.spectrum(V, n, n_states, config).energies, repeats) / batch
        nelec = fock.spin_sector(n)
        t_peer = {1: 0.0, n_states: 0.0}
        error = 0.0
        for b in range(batch):
            h1, eri = np.asarray(ints.h1[b]), np.asarray(ints.eri[b])
            for nroots in t_peer:
                e, t = _pyscf(h1, eri, config.orbitals, nelec, nroots)
                t_peer[nroots] += t / batch
                if nroots == n_states:
                    error = max(error, float(np.abs(e - np.asarray(sp.energies[b])).max()))
        row = {"N": n, "batch": batch, "determinants": fock.sector_dimension(config.orbitals, n),
               "ground_state_ms": 1e3 * t_ground, "spectrum_ms": 1e3 * t_spectrum,
               "ratio_spectrum_ground": t_spectrum / t_ground, "pyscf_nroots1_ms": 1e3 * t_peer[1],
               "pyscf_nroots_ms": 1e3 * t_peer[n_states], "pyscf_over_spectrum": t_peer[n_states] / t_spectrum,
               "max_energy_difference_eV": error}  # fmt: skip
        rows.append(row)
        print(f"N={n} ({row['determinants']} det.): ground state {row['ground_state_ms']:.1f} ms, spectrum "
              f"({n_states} states) {row['spectrum_ms']:.1f} ms = {row['ratio_spectrum_ground']:.2f}x; PySCF FCI "
              f"nroots=1 {row['pyscf_nroots1_ms']:.1f} ms, nroots={n_states} {row['pyscf_nroots_ms']:.1f} ms "
              f"({row['pyscf_over_spectrum']:.2f}x qdjax's spectrum, FCI stage only); max |dE| "
              f"{error:.1e} eV", flush=True)  # fmt: skip
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--electrons", type=int, nargs="+", default=[2, 3, 4])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--states", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--grid", type=int, default=64)
    parser.add_argument("--basis", type=int, default=32)
    parser.add_argument("--orbitals", type=int, default=8)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    config = qdjax.EDConfig(grid=args.grid, basis=args.basis, orbitals=args.orbitals)
    print(f"qdjax {qdjax.__version__}, jax {jax.__version__}, {jax.devices()[0].device_kind}, {config}", flush=True)
    rows = run(args.electrons, args.batch, args.states, args.repeats, config)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": str(config), "device": jax.devices()[0].device_kind, "rows": rows}, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
