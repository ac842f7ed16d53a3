"""Inverse design: potentials for target densities, checked by ED in the same graph, refined by gradients.

With --checkpoint, a trained n_int -> V generator (the checkpoints folder of a `qdjax train
--mapping n_int->V` run) is used as it is; without, one is trained here on --data (made with
`qdjax generate` if the folder does not exist: --samples random potentials, N = --n-electrons).
Then the generator proposes a potential for every test density, `qdjax.inverse.check` recomputes
the densities by ED in the same jitted function, and --refine of them are refined by Adam steps
on V through the ED. Figures (paper Fig. 10 and before/after refinement) and inverse.json go to --out.

With --ed-weight W the generator is then fine-tuned through the ED for --ed-steps steps
(`qdjax train --ed-weight W --init-from ...`: the loss gains W times the misfit between the ED
density of each generated potential and its input density; --d4-weight adds the
D4-consistency term), or taken from --ed-checkpoint, and
both generators are checked side by side: out/ed/inverse.json and out/ed_in_the_loop.png
(proposals and recomputed densities before and after).

    python examples/inverse_design.py                                     # small default, minutes on 2 cores
    python examples/inverse_design.py --ed-weight 1000 --ed-steps 40      # + ED-in-the-loop fine-tuning
    python examples/inverse_design.py --data runs/data/paper \\
        --checkpoint runs/experiments/log_n_int_V_N2/checkpoints --refine 100 --refine-steps 200
"""

from __future__ import annotations

import argparse
import pathlib

import qdjax
from qdjax import data
from qdjax.ml import experiment
from qdjax.ml.models import DISCRIMINATOR_PRESETS


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--data", default="runs/inverse_design/data", help="dataset folder (made if missing)")
    p.add_argument("--checkpoint", default=None, help="checkpoints folder of an n_int->V run (default: train one)")
    p.add_argument("--samples", type=int, default=240, help="potentials of a dataset made here")
    p.add_argument("--n-electrons", type=int, default=2)
    p.add_argument("--steps", type=int, default=800, help="training steps when no --checkpoint is given")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--discriminator", choices=sorted(DISCRIMINATOR_PRESETS), default="image70",
                   help="discriminator patch preset (image70 needs images of at least 32 pixels)")  # fmt: skip
    p.add_argument("--refine", type=int, default=4, help="test samples refined by gradients through the ED")
    p.add_argument("--refine-steps", type=int, default=50)
    p.add_argument("--symmetrize", action="store_true", help="average the generator over the 8 symmetries of the square")
    p.add_argument("--log-input", action="store_true", help="train the generator on log-scale densities (qdjax.ml.scaling)")
    p.add_argument("--ed-weight", type=float, default=0.0, help="fine-tune the generator through the ED with this weight")
    p.add_argument("--ed-steps", type=int, default=40, help="fine-tuning steps with --ed-weight")
    p.add_argument("--d4-weight", type=float, default=0.0,
                   help="with --ed-weight: also the D4-consistency term with this weight (qdjax train --d4-weight)")
    p.add_argument("--ed-checkpoint", default=None, help="checkpoints folder of a generator already fine-tuned through the ED")
    p.add_argument("--out", default="runs/inverse_design")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    progress = not args.no_progress
    out = pathlib.Path(args.out)

    if not pathlib.Path(args.data, "manifest.json").exists():
        data.generate(args.data, args.samples, (args.n_electrons,), qdjax.EDConfig(), args.seed, progress=progress)
    config = data.config_from_manifest(data.read_manifest(args.data))
    splits = experiment.splits_from_dataset(args.data, args.n_electrons)
    pix = experiment.pix2pix_config("authors", args.discriminator, args.batch, 2e-4, image_size=config.grid)
    checkpoint = args.checkpoint
    if checkpoint is None:
        run = experiment.run_mapping(splits, "n_int->V", pix, steps=args.steps, out_dir=out / "n_int_to_V",
                                     key=args.seed, eval_every=max(1, args.steps // 4), progress=progress,
                                     length_nm=config.length_nm, input_transform="log" if args.log_input else "linear")
        state, scalers, checkpoint = run.state, run.scalers, out / "n_int_to_V" / "checkpoints"
    else:
        loaded = experiment.load_run(checkpoint)  # run_inverse refuses other mappings
        state, scalers = loaded.state, loaded.scalers

    result = experiment.run_inverse(
        state, scalers, splits, args.n_electrons, config, out_dir=out, refine_samples=args.refine,
        refine_steps=args.refine_steps, symmetrize=args.symmetrize, progress=progress,
    )
    g = result.summary["generator"]
    print(f"generator alone, {result.summary['samples']} test densities: recomputed-density R^2 {g['density_r2']:.4f}, "
          f"potential R^2 {g['potential_r2']:.4f}, accepted {g['accepted']}, "
          f"{1e3 * g['seconds_per_sample']:.1f} ms per sample (generator + ED)")
    if "refinement" in result.summary:
        r = result.summary["refinement"]
        print(f"refined {r['samples']}: density R^2 {r['density_r2_before']:.4f} -> {r['density_r2_after']:.4f}, "
              f"potential R^2 {r['potential_r2_after']:.4f}, {r['seconds_per_sample']:.1f} s per sample")
    print(f"figures and inverse.json in {out}/ (inverse.png, refine.png)")

    if args.ed_weight > 0 or args.ed_checkpoint is not None:
        if args.ed_checkpoint is None:
            tuned = experiment.run_mapping(
                splits, "n_int->V", pix.replace(lambda_d4=args.d4_weight), steps=args.ed_steps, out_dir=out / "n_int_to_V_ed", key=args.seed,
                eval_every=max(1, args.ed_steps // 4), progress=progress, length_nm=config.length_nm,
                ed_weight=args.ed_weight, ed_config=config, n_electrons=args.n_electrons, init_from=checkpoint,
            )  # fmt: skip
            ed_state = tuned.state
        else:
            ed_state = experiment.load_run(args.ed_checkpoint).state
        after = experiment.run_inverse(ed_state, scalers, splits, args.n_electrons, config, out_dir=out / "ed",
                                       symmetrize=args.symmetrize, progress=progress)  # fmt: skip
        experiment.write_proposal_comparison(result.check, after.check, splits, out / "ed_in_the_loop.png",
                                             config.length_nm)  # fmt: skip
        a = after.summary["generator"]
        print(f"after ED-in-the-loop training: recomputed-density R^2 {g['density_r2']:.4f} -> {a['density_r2']:.4f} "
              f"(worst sample {g['density_r2_worst']:.4f} -> {a['density_r2_worst']:.4f}), accepted {g['accepted']} "
              f"-> {a['accepted']}, potential R^2 {g['potential_r2']:.4f} -> {a['potential_r2']:.4f}; "
              f"{out}/ed_in_the_loop.png")  # fmt: skip


if __name__ == "__main__":
    main()
