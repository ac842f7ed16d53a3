"""The whole qdjax loop on one command: potentials -> ED dataset -> pix2pix -> metrics -> inverse check.

Small default (a few minutes on 2 CPU cores): 240 random potentials solved by ED for N = 2
(192 / 24 / 24 split); pix2pix trained for V -> n_int and for n_int -> V; the test split scored;
the inverse generator's potentials checked by ED in the same graph and 4 of them refined by
gradients through the ED; figures and metrics written to --out (default runs/pipeline).

    python examples/pipeline.py
    python examples/pipeline.py --samples 5000 --splits 4800 100 100 --steps 40000 --batch 1 --lr 1e-4   # paper protocol

Every stage resumes after an interruption (dataset chunks and training checkpoints are kept):
run the same command again.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import numpy as np

import qdjax
from qdjax import data, ed, plot, potentials
from qdjax.ml import experiment


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--out", default="runs/pipeline", help="output folder")
    p.add_argument("--samples", type=int, default=240, help="random potentials in the dataset")
    p.add_argument("--splits", type=int, nargs=3, default=None, metavar=("TRAIN", "VAL", "TEST"), help="default 80/10/10 %%")
    p.add_argument("--n-electrons", type=int, default=2)
    p.add_argument("--steps", type=int, default=800, help="training steps per mapping")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--eval-every", type=int, default=200)
    p.add_argument("--refine", type=int, default=4, help="test samples refined by gradients through the ED")
    p.add_argument("--refine-steps", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.splits is None:
        held_out = max(2, args.samples // 10)
        args.splits = [args.samples - 2 * held_out, held_out, held_out]
    return args


def main(argv=None):
    args = parse(argv)
    start = time.perf_counter()
    out = pathlib.Path(args.out)
    progress = not args.no_progress
    config = qdjax.EDConfig()
    n = args.n_electrons

    print(f"[1/5] random potential and ED for N = 1..4 (paper Figs. 1 and 9)")
    V = potentials.random_potential(args.seed, config)
    states = ed.ground_states(V, (1, 2, 3, 4), config)
    plot.potential_and_densities(
        V, {f"n_int, N={k}": np.asarray(s.density) for k, s in zip((1, 2, 3, 4), states.interacting)},
        config.length_nm, out / "densities_N1-4.png", title=f"random potential (seed {args.seed}) and ED densities",
    )
    for k, s in zip((1, 2, 3, 4), states.interacting):
        print(f"      N={k}: E = {float(s.energy):.6f} eV")

    print(f"[2/5] dataset: {args.samples} potentials, ED for N = {n} (with and without interaction)")
    data.generate(out / "data", args.samples, (n,), config, args.seed, splits=args.splits, progress=progress)
    splits = experiment.splits_from_dataset(out / "data", n)

    pix = experiment.pix2pix_config("authors", "image70", args.batch, args.lr)
    runs = {}
    for step, mapping in (("3/5", "V->n_int"), ("4/5", "n_int->V")):
        print(f"[{step}] pix2pix {mapping}, {args.steps} steps at batch {args.batch}")
        runs[mapping] = experiment.run_mapping(
            splits, mapping, pix, steps=args.steps, out_dir=out / mapping.replace("->", "_to_"), key=args.seed,
            eval_every=args.eval_every, progress=progress,
        )
        t = runs[mapping].summary["test"]
        print(f"      test R^2 = {t['r2']:.4f}, SSIM = {t['ssim_mean']:.4f}, L1 = {t['l1_mean']:.3e}")

    print(f"[5/5] inverse design: generated potentials checked by ED, {args.refine} refined by gradients")
    inv = experiment.run_inverse(
        runs["n_int->V"].state, runs["n_int->V"].scalers, splits, n, config, out_dir=out / "inverse",
        refine_samples=args.refine, refine_steps=args.refine_steps, progress=progress,
    )
    g = inv.summary["generator"]
    print(f"      recomputed-density R^2 = {g['density_r2']:.4f}, potential R^2 = {g['potential_r2']:.4f}, "
          f"accepted {g['accepted']}/{inv.summary['samples']}")
    if "refinement" in inv.summary:
        r = inv.summary["refinement"]
        print(f"      refinement of {r['samples']}: density R^2 {r['density_r2_before']:.4f} -> {r['density_r2_after']:.4f}")

    summary = {
        "args": vars(args),
        "forward": runs["V->n_int"].summary["test"],
        "inverse_mapping": runs["n_int->V"].summary["test"],
        "inverse_check": inv.summary,
        "seconds": time.perf_counter() - start,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"done in {summary['seconds']:.0f} s; results in {out}/: summary.json, densities_N1-4.png, "
          f"V_to_n_int/, n_int_to_V/ (metrics.json, mapping.png, losses.png, r2.png, ssim.png, worst.png), inverse/")


if __name__ == "__main__":
    main()
