"""Train pix2pix on ED data and score it: the paper's mappings, end to end.

Small default (minutes on 2 CPU cores): 300 random potentials solved by ED for N = 2
(240 / 30 / 30 split), V -> n_int trained for 1500 steps at batch 8.

    python examples/train_pix2pix.py
    python examples/train_pix2pix.py --mappings V->n0 V->n_int n0->n_int n_int->V --n-electrons 2 3 4
    python examples/train_pix2pix.py --paper          # paper protocol: 5000 potentials, 4800/100/100,
                                                      # N = 1..4, Table I (batch 1, lr 1e-4, ImageGAN)

The dataset is generated into --data if that folder does not hold a finished one (resumable:
rerun after an interruption). Each (mapping, N) run writes checkpoints, metrics.json and the
figures of qdjax.ml.experiment into --out/<mapping>_N<N>/; a table of all runs is printed and
written to --out/summary.json.
"""

from __future__ import annotations

import argparse
import json
import pathlib

import qdjax
from qdjax import data
from qdjax.ml import experiment
from qdjax.ml.evaluate import MAPPINGS
from qdjax.ml.models import DISCRIMINATOR_PRESETS


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--data", default="runs/data/small", help="dataset folder (generated if missing)")
    p.add_argument("--out", default="runs/train", help="output folder")
    p.add_argument("--samples", type=int, default=300, help="potentials to generate if --data is missing")
    p.add_argument("--splits", type=int, nargs=3, default=None, metavar=("TRAIN", "VAL", "TEST"), help="split sizes (default 80/10/10 %%; paper 4800 100 100)")
    p.add_argument("--n-electrons", type=int, nargs="+", default=[2], help="N values to train for")
    p.add_argument("--mappings", nargs="+", default=["V->n_int"], choices=sorted(MAPPINGS))
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-4, help="Adam learning rate (paper Table I: 1e-4)")
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--widths", choices=["authors", "pix2pix"], default="authors")
    p.add_argument("--discriminator", choices=sorted(DISCRIMINATOR_PRESETS), default="image70")
    p.add_argument("--d4", action="store_true", help="random symmetry-of-the-square augmentation")
    p.add_argument("--symmetrize", action="store_true", help="predict with the D4-averaged generator")
    p.add_argument("--density-head", action="store_true", help="normalised density output layer (density targets)")
    p.add_argument("--log-input", action="store_true", help="density inputs on a log scale (density-input mappings)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--paper", action="store_true", help="paper protocol (overrides sizes and Table I settings)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.paper:
        args.samples, args.splits = 5000, [4800, 100, 100]
        args.n_electrons = sorted(set(args.n_electrons) | {1, 2, 3, 4})
        args.batch, args.lr = 1, 1e-4
        args.steps = max(args.steps, 40000)
        args.eval_every = max(args.eval_every, 1000)
    if args.splits is None:
        held_out = max(2, args.samples // 10)
        args.splits = [args.samples - 2 * held_out, held_out, held_out]
    return args


def ensure_dataset(path, samples, n_electrons, splits, seed, progress=True):
    """The dataset at `path` (generated or completed there if needed)."""
    try:
        manifest = data.read_manifest(path)
        if set(n_electrons) <= set(manifest["n_electrons"]) and data.describe(path)["complete"]:
            return path
    except (data.DatasetError, FileNotFoundError):
        pass
    data.generate(path, samples, tuple(n_electrons), qdjax.EDConfig(), seed, splits=splits, progress=progress)
    return path


def main(argv=None):
    args = parse(argv)
    ensure_dataset(args.data, args.samples, args.n_electrons, args.splits, args.seed, not args.no_progress)
    ed_config = data.config_from_manifest(data.read_manifest(args.data))
    config = experiment.pix2pix_config(args.widths, args.discriminator, args.batch, args.lr, args.d4,
                                       image_size=ed_config.grid)
    out = pathlib.Path(args.out)
    rows = []
    for n in args.n_electrons:
        splits = experiment.splits_from_dataset(args.data, n)
        for mapping in args.mappings:
            folder = out / f"{mapping.replace('->', '_to_')}_N{n}"
            run = experiment.run_mapping(
                splits, mapping, config, steps=args.steps, out_dir=folder, key=args.seed,
                eval_every=args.eval_every, symmetrize=args.symmetrize, progress=not args.no_progress,
                length_nm=ed_config.length_nm,
                density_head=args.density_head and MAPPINGS[mapping][1] != "V",
                input_transform="log" if args.log_input and MAPPINGS[mapping][0] != "V" else "linear",
            )
            t = run.summary["test"]
            rows.append({"mapping": mapping, "N": n, "r2": t["r2"], "ssim": t["ssim_mean"], "mssim": t["mssim_mean"],
                         "l1": t["l1_mean"], "paper_r2": t["paper_r2"], "best_step": run.best_step, "folder": str(folder)})
    print(f"\n{'mapping':>10} {'N':>2} {'R2':>8} {'SSIM':>7} {'MSSIM':>7} {'L1':>9} {'paper R2':>9} best step")
    for r in rows:
        print(f"{r['mapping']:>10} {r['N']:>2} {r['r2']:8.4f} {r['ssim']:7.4f} {r['mssim']:7.4f} {r['l1']:9.2e} {r['paper_r2']:9.4f} {r['best_step']}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps({"args": vars(args), "runs": rows}, indent=2))
    print(f"results: {out}/summary.json and the figures in each run folder")


if __name__ == "__main__":
    main()
