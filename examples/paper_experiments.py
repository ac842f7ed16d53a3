"""The experiments behind docs/results.md, on the paper protocol (5000 potentials, 4800/100/100).

    python examples/paper_experiments.py --data runs/data/paper                 # everything, in order
    python examples/paper_experiments.py --data runs/data/paper --only best_V_n_int_N2 paper_V_n_int_N2
    python examples/paper_experiments.py --list
    python examples/paper_experiments.py --figures docs/figures     # sweep figures from finished runs

Every experiment is one `qdjax.ml.experiment.run_mapping` call in --out/<name>/ (resumable: rerun
the same command after an interruption), and its test scores are collected in
--out/results.json with the wall time. Standard scores are in physical units with the training-set
mean map; "paper_r2" is the authors' convention (8-bit references, mean of the scored set).
The dataset is made with `qdjax generate --out runs/data/paper` if it is missing.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import numpy as np

import qdjax
from qdjax import data
from qdjax.ml import evaluate, experiment

#: Our configuration: batch 16, lr 2e-4, exact symmetry augmentation, normalised density head.
BEST = dict(batch=16, lr=2e-4, d4=True, density_head=True, steps=4000)
#: The paper's Table I: batch 1, lr 1e-4, ImageGAN, no augmentation, tanh output. The paper trains
#: for many epochs; 6000 single-sample steps (1.25 epochs) is what a 2-core CPU affords here.
PAPER = dict(batch=1, lr=1e-4, d4=False, density_head=False, steps=6000)
SWEEP = dict(batch=16, lr=2e-4, d4=True, density_head=True, steps=1000)
#: BEST trained longer, with the learning rate decayed linearly to zero over the second half.
LONG = dict(BEST, steps=6000, decay_start=3000, decay_steps=3000)
#: LONG with 10000 steps (33 epochs), the decay over the second half.
XLONG = dict(BEST, steps=10000, decay_start=5000, decay_steps=5000)

EXPERIMENTS = {
    "best_V_n_int_N2": dict(mapping="V->n_int", n=2, **BEST),
    "paper_V_n_int_N2": dict(mapping="V->n_int", n=2, **PAPER),
    "best_V_n_int_N3": dict(mapping="V->n_int", n=3, **BEST),
    "best_V_n_int_N4": dict(mapping="V->n_int", n=4, **BEST),
    "best_n_int_V_N2": dict(mapping="n_int->V", n=2, **{**BEST, "density_head": False}),
    "best_V_n0_N2": dict(mapping="V->n0", n=2, **BEST),
    "best_n0_n_int_N2": dict(mapping="n0->n_int", n=2, **BEST),
    "long_V_n_int_N3": dict(mapping="V->n_int", n=3, **LONG),
    "long_V_n_int_N4": dict(mapping="V->n_int", n=4, **LONG),
    "long_V_n0_N2": dict(mapping="V->n0", n=2, **LONG),
    "long_n0_n_int_N2": dict(mapping="n0->n_int", n=2, **LONG),
    "long_n_int_V_N2": dict(mapping="n_int->V", n=2, **{**LONG, "density_head": False}),
    # density inputs on a log scale (floor 1e-12 of the training peak; qdjax.ml.scaling)
    "log_n_int_V_N2": dict(mapping="n_int->V", n=2, **{**LONG, "density_head": False}, input_transform="log"),
    "log_n0_n_int_N2": dict(mapping="n0->n_int", n=2, **LONG, input_transform="log"),
    "xlong_log_n_int_V_N2": dict(mapping="n_int->V", n=2, **{**XLONG, "density_head": False}, input_transform="log"),
    "xlong_log_n0_n_int_N2": dict(mapping="n0->n_int", n=2, **XLONG, input_transform="log"),
    **{f"disc_{d}_N2": dict(mapping="V->n_int", n=2, discriminator=d, **SWEEP)
       for d in ("image70", "patch34", "patch16", "patch7", "patch4", "pixel1")},
    "ablate_no_d4_N2": dict(mapping="V->n_int", n=2, **{**SWEEP, "d4": False}),
    "ablate_no_head_N2": dict(mapping="V->n_int", n=2, **{**SWEEP, "density_head": False}),
    **{f"size_{m}_N2": dict(mapping="V->n_int", n=2, train_size=m, **SWEEP) for m in (100, 400, 1200, 2400)},
}


def run_one(name, spec, splits_by_n, ed_config, out, seed, progress, metadata=None):
    splits = splits_by_n[spec["n"]]
    if "train_size" in spec:
        splits = {**splits, "train": {q: a[: spec["train_size"]] for q, a in splits["train"].items()}}
    config = experiment.pix2pix_config("authors", spec.get("discriminator", "image70"), spec["batch"], spec["lr"], spec["d4"],
                                       image_size=ed_config.grid, decay_start=spec.get("decay_start", 0),
                                       decay_steps=spec.get("decay_steps", 0))
    start = time.perf_counter()
    run = experiment.run_mapping(
        splits, spec["mapping"], config, steps=spec["steps"], out_dir=out / name, key=seed,
        eval_every=max(100, spec["steps"] // 10), density_head=spec["density_head"], progress=progress,
        input_transform=spec.get("input_transform", "linear"), length_nm=ed_config.length_nm, metadata=metadata,
    )
    seconds = time.perf_counter() - start
    sym = evaluate.predict_physical(run.state, splits["test"][evaluate.MAPPINGS[spec["mapping"]][0]], run.scalers, True)
    target = splits["test"][evaluate.MAPPINGS[spec["mapping"]][1]]
    train_mean = np.asarray(splits["train"][evaluate.MAPPINGS[spec["mapping"]][1]]).mean(axis=0)
    r2_sym = float(evaluate.metrics.r2(sym, target, train_mean))
    t = run.summary["test"]
    return {"name": name, **{k: v for k, v in spec.items()}, "best_step": run.best_step, "r2": t["r2"],
            "r2_symmetrized": r2_sym, "ssim": t["ssim_mean"], "mssim": t["mssim_mean"], "l1": t["l1_mean"],
            "l2": t["l2_mean"], "linf": t["linf_mean"], "paper_r2": t["paper_r2"], "paper_ssim": t["paper_ssim_mean"],
            "paper_mssim": t["paper_mssim_mean"], "worst_r2_sample": t["r2_sample_min"] if "r2_sample_min" in t else
            float(np.min(run.scores["r2_sample"])), "seconds_this_call": seconds}  # fmt: skip


def sweep_figures(out: pathlib.Path, figures: pathlib.Path) -> None:
    """Fig. 6 (validation R^2 vs step per discriminator) and Fig. 7b (test R^2 vs training-set size)."""
    from qdjax import plot
    from qdjax.ml import checkpoint

    figures.mkdir(parents=True, exist_ok=True)
    curves = {}
    for name in (n for n in EXPERIMENTS if n.startswith("disc_")):
        if (out / name / "checkpoints").exists():
            h = checkpoint.load_state(out / name / "checkpoints", "latest").history
            curves[name.split("_")[1]] = (np.asarray(h["val_step"]), np.asarray(h["val_r2"]))
    if curves:
        path = plot.curves(curves, "step", "validation R$^2$ (scaled images)", figures / "disc_sweep.png",
                           title="V -> n_int, N = 2: discriminators (receptive field)")
        print(f"wrote {path}")
    results = json.loads((out / "results.json").read_text())
    sizes = sorted((r["train_size"], r["r2"]) for n, r in results.items() if n.startswith("size_"))
    if "disc_image70_N2" in results:  # the same configuration on the full 4800
        sizes.append((4800, results["disc_image70_N2"]["r2"]))
    if sizes:
        x, y = np.array(sizes).T
        path = plot.curves({"test R$^2$": (x, y)}, "training pairs", "test R$^2$", figures / "size_sweep.png",
                           title="V -> n_int, N = 2: training-set size (1000 steps of batch 16)")
        print(f"wrote {path}")


def markdown_table(out: pathlib.Path) -> str:
    """The collected test scores of results.json as a Markdown table (the one in docs/results.md)."""
    results = json.loads((out / "results.json").read_text())
    head = ("| experiment | mapping | N | steps (best) | R^2 | R^2 D4-avg | SSIM | MSSIM | L1 | Linf | paper-conv. R^2 "
            "| paper-conv. SSIM | worst-sample R^2 | train time |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name in EXPERIMENTS:
        if name not in results:
            continue
        r = results[name]
        lines.append(
            f"| {name} | {r['mapping']} | {r['n']} | {r['steps']} ({r['best_step']}) | {r['r2']:.4f} | "
            f"{r['r2_symmetrized']:.4f} | {r['ssim']:.4f} | {r['mssim']:.4f} | {r['l1']:.2e} | {r['linf']:.2e} | "
            f"{r['paper_r2']:.4f} | {r['paper_ssim']:.4f} | {r['worst_r2_sample']:.3f} | "
            f"{r['seconds_this_call'] / 60:.0f} min |"
        )
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--data", default="runs/data/paper")
    p.add_argument("--out", default="runs/experiments")
    p.add_argument("--only", nargs="+", default=None, choices=sorted(EXPERIMENTS))
    p.add_argument("--list", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--figures", default=None, help="only write the sweep figures of finished runs to this folder")
    p.add_argument("--table", action="store_true", help="only print the results of finished runs as Markdown")
    args = p.parse_args(argv)
    if args.table:
        print(markdown_table(pathlib.Path(args.out)))
        return
    if args.figures:
        sweep_figures(pathlib.Path(args.out), pathlib.Path(args.figures))
        return
    if args.list:
        for name, spec in EXPERIMENTS.items():
            print(name, spec)
        return
    if not (pathlib.Path(args.data, "manifest.json").exists() and data.describe(args.data)["complete"]):
        data.generate(args.data, 5000, (1, 2, 3, 4), qdjax.EDConfig(), 0, progress=not args.no_progress)
    ed_config = data.config_from_manifest(data.read_manifest(args.data))
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    names = args.only or list(EXPERIMENTS)
    splits_by_n = {}
    for name in names:
        spec = EXPERIMENTS[name]
        if spec["n"] not in splits_by_n:
            splits_by_n[spec["n"]] = experiment.splits_from_dataset(args.data, spec["n"])
        print(f"== {name}: {spec}", flush=True)
        metadata = experiment.dataset_metadata(args.data, spec["n"])  # checked by qdjax evaluate / invert
        results[name] = run_one(name, spec, splits_by_n, ed_config, out, args.seed, not args.no_progress, metadata)
        results_file.write_text(json.dumps(results, indent=2))
        r = results[name]
        print(f"== {name}: R^2 {r['r2']:.5f} (D4-averaged {r['r2_symmetrized']:.5f}), SSIM {r['ssim']:.5f}, "
              f"paper R^2 {r['paper_r2']:.5f}, best step {r['best_step']}", flush=True)


if __name__ == "__main__":
    main()
