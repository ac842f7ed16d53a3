"""Cost of the ED in the training loop: one n_int -> V pix2pix step with and without the ED term.

The same generator and batch (random potentials of the paper's kind and their ED densities)
are timed as a plain pix2pix step (`qdjax.ml.train.make_train_step(config)`) and as a step
with the ED-consistency term (`make_train_step(config, ed_term=EDTerm(...))`) in each ED
precision asked for, and (with --d4-weight W) with the ED term in the first precision plus
the D4-consistency term (`Pix2PixConfig.lambda_d4 = W`, one more generator pass), and (with
--equivariant) with the ED term in the first precision and the D4-equivariant generator
(`GeneratorConfig.equivariant`, 8 U-Net passes per image). Rounds alternate between the variants (plain, ED float64, ED float32,
plain, ...) so that a shared machine's load falls on all alike; each variant's median over
the rounds is reported with the ratio to the plain step.

    python benchmarks/bench_ed_step.py                                  # N = 2, batch 16, paper size
    python benchmarks/bench_ed_step.py --n-electrons 2 3 4 --dtypes float64 float32 \\
        --out benchmarks/results/bench_ed_step.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import jax
import numpy as np

import qdjax
from qdjax import benchmark, ed, potentials
from qdjax.ml import experiment, physics, scaling, train


def bench_case(n_electrons: int, batch: int, dtypes, repeats: int, steps: int, cfg: qdjax.EDConfig,
               discriminator: str = "image70", seed: int = 0, d4_weight: float = 0.0,
               equivariant: bool = False) -> dict:
    """Median wall time (ms) of `steps` training steps per round, plain and with the ED term."""
    V = np.stack([potentials.random_potential(seed + i, cfg) for i in range(batch)])
    n = np.asarray(ed.ground_density(V, n_electrons, cfg))
    density, potential = scaling.fit_scaler(n, "density"), scaling.fit_scaler(None, "potential")
    x = density.to_unit(n).astype(np.float32)[..., None]
    y = potential.to_unit(V).astype(np.float32)[..., None]
    pix = experiment.pix2pix_config("authors", discriminator, batch, 1e-4, d4=True, image_size=cfg.grid)
    state = train.init_state(pix, jax.random.key(seed))
    variants = {"plain": (train.make_train_step(pix), state)}
    for dtype in dtypes:
        term = physics.EDTerm(1000.0, n_electrons, cfg.replace(dtype=dtype), density, potential)
        variants[f"ed_{dtype}"] = (train.make_train_step(pix, ed_term=term), state)
    if d4_weight > 0:
        term = physics.EDTerm(1000.0, n_electrons, cfg.replace(dtype=dtypes[0]), density, potential)
        pix_d4 = pix.replace(lambda_d4=d4_weight)  # same networks: the same weights start every variant
        variants[f"ed_{dtypes[0]}_d4"] = (train.make_train_step(pix_d4, ed_term=term), state.replace(config=pix_d4))
    if equivariant:
        term = physics.EDTerm(1000.0, n_electrons, cfg.replace(dtype=dtypes[0]), density, potential)
        pix_eq = pix.replace(generator=dataclasses.replace(pix.generator, equivariant=True))
        variants[f"ed_{dtypes[0]}_equivariant"] = (train.make_train_step(pix_eq, ed_term=term),
                                                   state.replace(config=pix_eq))  # fmt: skip
    first = {}
    for name, (step, start) in variants.items():
        t = time.perf_counter()
        jax.block_until_ready(step(start, (x, y), jax.random.key(0)))
        first[name] = time.perf_counter() - t
    times = {name: [] for name in variants}
    for r in range(repeats):
        for name, (step, start) in variants.items():
            s = start
            t = time.perf_counter()
            for k in range(steps):
                s, _ = step(s, (x, y), jax.random.key(1 + r * steps + k))
            jax.block_until_ready(s)
            times[name].append((time.perf_counter() - t) / steps)
    median = {name: 1e3 * float(np.median(v)) for name, v in times.items()}
    return {
        "n_electrons": n_electrons,
        "batch": batch,
        "first_call_s": first,
        "median_ms": median,
        "ratio_to_plain": {name: median[name] / median["plain"] for name in variants},
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--n-electrons", type=int, nargs="+", default=[2])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--dtypes", nargs="+", choices=["float64", "float32"], default=["float64", "float32"])
    p.add_argument("--repeats", type=int, default=5, help="timed rounds per variant (median)")
    p.add_argument("--steps", type=int, default=3, help="training steps per round")
    p.add_argument("--discriminator", default="image70", help="discriminator preset (patch16 for grids below 32)")
    p.add_argument("--grid", type=int, default=64)
    p.add_argument("--basis", type=int, default=32)
    p.add_argument("--orbitals", type=int, default=8)
    p.add_argument("--d4-weight", type=float, default=0.0,
                   help="also time the ED step with this D4-consistency weight (default 0: not timed)")
    p.add_argument("--equivariant", action="store_true",
                   help="also time the ED step with the D4-equivariant generator (GeneratorConfig.equivariant)")
    p.add_argument("--out", help="write the results as JSON to this file")
    args = p.parse_args(argv)
    if args.batch < 1 or args.repeats < 1 or args.steps < 1:
        p.error("--batch, --repeats and --steps must be positive")
    cfg = qdjax.EDConfig(grid=args.grid, basis=args.basis, orbitals=args.orbitals)
    cases = []
    for n in args.n_electrons:
        case = bench_case(n, args.batch, args.dtypes, args.repeats, args.steps, cfg, args.discriminator,
                          d4_weight=args.d4_weight, equivariant=args.equivariant)
        cases.append(case)
        cells = ", ".join(f"{k} {v:.0f} ms ({case['ratio_to_plain'][k]:.2f}x)" for k, v in case["median_ms"].items())
        print(f"N = {n}, batch {args.batch}: {cells}")
    result = {"machine": benchmark.machine(), "config": {k: getattr(cfg, k) for k in ("grid", "basis", "orbitals")},
              "cases": cases}  # fmt: skip
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
