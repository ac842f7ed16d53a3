"""Size of the paper's diagonal-density approximation and of float32 ED errors.

Run: python benchmarks/accuracy_modes.py [--samples 8]

For random potentials of the paper's class (seeds 0..samples-1) and N = 2, 3, 4 prints
- the largest pixel difference between the full-gamma density (default) and the paper's eq. (9)
  diagonal density, in nm^-2 and relative to the density's peak;
- the largest float32 - float64 differences of energy (eV) and density (relative to peak).
"""

import argparse

import numpy as np

import qdjax
from qdjax import ed, potentials


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=8)
    args = parser.parse_args(argv)
    cfg = qdjax.EDConfig()
    V = potentials.random_potentials(range(args.samples), cfg)
    print("N  diag-vs-full max|dn| nm^-2 (min..max)  relative to peak  float32 |dE| eV  float32 |dn|/peak")
    for n in (2, 3, 4):
        full = ed.ground_state(V, n, cfg)
        diag = ed.ground_state(V, n, cfg.replace(density_mode="diagonal"))
        f32 = ed.ground_state(V, n, cfg.replace(dtype="float32"))
        peak = np.asarray(full.density).max(axis=(1, 2))
        d = np.abs(np.asarray(full.density - diag.density)).max(axis=(1, 2))
        de = np.abs(np.asarray(f32.energy, dtype=float) - np.asarray(full.energy)).max()
        dn = (np.abs(np.asarray(f32.density, dtype=float) - np.asarray(full.density)).max(axis=(1, 2)) / peak).max()
        print(f"{n}  {d.min():.1e}..{d.max():.1e}  {(d / peak).min():.2f}..{(d / peak).max():.2f}  {de:.1e}  {dn:.1e}")


if __name__ == "__main__":
    main()
