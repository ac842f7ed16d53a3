"""Exact diagonalisation of one random potential for N = 1..4 (paper Figs. 1 and 9).

Run: python examples/ed_one_potential.py [--seed 3236] [--out runs/ed]

Prints the ground-state energies (eV) with and without interaction and saves a figure of the
potential and the interacting densities for N = 1..4.
"""

import argparse
import pathlib
import time

import numpy as np

import qdjax
from qdjax import ed, plot, potentials


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=3236, help="random-potential seed")
    parser.add_argument("--out", default="runs/ed", help="output folder")
    args = parser.parse_args(argv)

    config = qdjax.EDConfig()
    V = potentials.random_potential(args.seed, config)
    start = time.perf_counter()
    states = ed.ground_states(V, (1, 2, 3, 4), config, with_non_interacting=True)
    elapsed = time.perf_counter() - start
    print(f"random potential seed {args.seed}: {config}")
    print(" N   E_int (eV)   E_0 (eV)    E_int - E_0 (meV)")
    for n, s_int, s_0 in zip((1, 2, 3, 4), states.interacting, states.non_interacting):
        e_int, e_0 = float(s_int.energy), float(s_0.energy)
        print(f" {n}   {e_int:10.6f}   {e_0:10.6f}   {1e3 * (e_int - e_0):8.3f}")
    print(f"ED for N = 1..4 (with and without interaction) took {elapsed:.2f} s including compilation")
    densities = {f"n_int, N={n}": np.asarray(s.density) for n, s in zip((1, 2, 3, 4), states.interacting)}
    path = plot.potential_and_densities(
        V, densities, config.length_nm, pathlib.Path(args.out) / f"densities_seed{args.seed}.png",
        title=f"random potential (seed {args.seed}) and ground-state densities",
    )
    print(f"figure: {path}")


if __name__ == "__main__":
    main()
