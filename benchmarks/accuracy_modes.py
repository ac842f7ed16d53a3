"""Size of the paper's diagonal-density approximation and of float32 ED errors.

Run: python benchmarks/accuracy_modes.py [--samples 8] [--emulate tf32 bf16]

For random potentials of the paper's class (seeds 0..samples-1) and N = 1..4 prints
- the largest pixel difference between the full-gamma density (default) and the paper's eq. (9)
  diagonal density, in nm^-2 and relative to the density's peak;
- the largest float32 - float64 differences of energy (eV) and density (largest pixel relative
  to the peak, and relative L2 norm), with the float32 ED in the accelerator layout
  (EDConfig(batching="vectorized")), and, with --emulate, the same under emulated TF32 / bf16
  matrix products (tests/emulation.py: what a GPU / TPU does to default-precision float32
  products).
"""

import argparse
import contextlib
import pathlib
import sys

import numpy as np

import qdjax
from qdjax import ed, potentials


def _errors(state, reference):
    de = np.abs(np.asarray(state.energy, dtype=float) - np.asarray(reference.energy)).max()
    x, y = np.asarray(reference.density), np.asarray(state.density, dtype=float)
    peak = x.max(axis=(1, 2))
    dn = (np.abs(x - y).max(axis=(1, 2)) / peak).max()
    l2 = (np.linalg.norm((x - y).reshape(len(x), -1), axis=1) / np.linalg.norm(x.reshape(len(x), -1), axis=1)).max()
    return de, dn, l2, bool(np.all(np.asarray(state.converged)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--emulate", nargs="*", default=[], choices=["tf32", "bf16"])
    args = parser.parse_args(argv)
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
    from emulation import reduced_precision_matmuls

    cfg = qdjax.EDConfig()
    V = potentials.random_potentials(range(args.samples), cfg)
    ns = (1, 2, 3, 4)
    full = ed.ground_states(V, ns, cfg).interacting
    diag = ed.ground_states(V, ns, cfg.replace(density_mode="diagonal")).interacting
    print("N  diag-vs-full max|dn| nm^-2 (min..max)  relative to peak")
    for n, f, g in zip(ns, full, diag):
        peak = np.asarray(f.density).max(axis=(1, 2))
        d = np.abs(np.asarray(f.density - g.density)).max(axis=(1, 2))
        print(f"{n}  {d.min():.1e}..{d.max():.1e}  {(d / peak).min():.2f}..{(d / peak).max():.2f}")
    print("products  N  float32 |dE| eV  |dn|/peak  ||dn||/||n||  converged")
    cfg32 = cfg.replace(dtype="float32", batching="vectorized")
    for kind in ["float32"] + list(args.emulate):
        scope = contextlib.nullcontext() if kind == "float32" else reduced_precision_matmuls(kind)
        with scope:
            f32 = ed.ground_states(V, ns, cfg32).interacting
        for n, s, f in zip(ns, f32, full):
            de, dn, l2, conv = _errors(s, f)
            print(f"{kind:8s}  {n}  {de:.2e}  {dn:.2e}  {l2:.2e}  {conv}")


if __name__ == "__main__":
    main()
