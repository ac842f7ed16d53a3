"""The ``qdjax`` command line: ``qdjax <command> [options]``; ``qdjax <command> --help``.

Commands: ``generate`` (ED training data, `qdjax.data.generate`), ``train`` and ``evaluate``
(pix2pix, `qdjax.ml.experiment`), ``invert`` (inverse design checked by ED), ``bench`` (ED and
training throughput), ``plot`` (potentials and densities), ``info`` (versions, devices,
default EDConfig, summary of a dataset folder) and ``spectrum`` (spin-resolved levels).

Adding a command: write ``_add_<name>(subparsers)``, which registers the subparser (with
``help=`` and ``description=``) and sets ``func`` to a function ``args -> exit status``, and
append it to `COMMANDS`. `add_config_arguments` / `config_from_args` give any command the
flags of every EDConfig field. User errors (ValueError, which includes
`qdjax.data.DatasetError`, and OSError) end the command with a one-line message
``qdjax <command>: error: ...`` on stderr and exit status 1; bad arguments exit with status 2
(argparse); an interrupt exits with status 130.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import pathlib
import re
import sys
from collections.abc import Callable, Sequence

import qdjax
from qdjax.config import EDConfig

#: Extra spellings of EDConfig fields on the command line.
_FLAG_ALIASES = {"length_nm": ("--length",)}


def _field_help() -> dict[str, str]:
    """EDConfig field -> its description, from the "Attributes:" section of its docstring."""
    doc = EDConfig.__doc__ or ""
    out: dict[str, str] = {}
    current = None
    for line in doc.split("Attributes:", 1)[-1].splitlines():
        match = re.match(r"^\s{4,8}(\w+): (.*)$", line)
        if match and match.group(1) in {f.name for f in dataclasses.fields(EDConfig)}:
            current = match.group(1)
            out[current] = match.group(2).strip()
        elif current and line.strip():
            out[current] += " " + line.strip()
        else:
            current = None
    return {k: v.replace("``", "").replace("math.inf", "inf").replace("%", "%%") for k, v in out.items()}


def _number(text: str) -> float:
    """float, accepting 'inf' (e.g. --eps-r inf: no interaction)."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per EDConfig field (``--grid``, ``--eps-r``, ...; default: EDConfig())."""
    group = parser.add_argument_group("ED configuration (qdjax.EDConfig; defaults are the paper's values)")
    helps = _field_help()
    defaults = EDConfig()
    for field in dataclasses.fields(EDConfig):
        default = getattr(defaults, field.name)
        kind = int if isinstance(default, int) and not isinstance(default, bool) else (
            _number if isinstance(default, float) else str)  # fmt: skip
        flags = ("--" + field.name.replace("_", "-"),) + _FLAG_ALIASES.get(field.name, ())
        group.add_argument(
            *flags,
            dest=f"config_{field.name}",
            type=kind,
            default=None,
            metavar=field.name.upper() if kind is str else ("N" if kind is int else "X"),
            help=f"{helps.get(field.name, 'EDConfig.' + field.name)} (default: {default})",
        )


def config_from_args(args: argparse.Namespace) -> EDConfig:
    """EDConfig from the flags of `add_config_arguments` (unset flags keep the defaults)."""
    changes = {
        f.name: getattr(args, f"config_{f.name}")
        for f in dataclasses.fields(EDConfig)
        if getattr(args, f"config_{f.name}", None) is not None
    }
    return EDConfig(**changes)


def check_out(text: str, kind: str = "folder") -> None:
    """Raise ValueError naming --out unless `text` can be written as a `kind` ("folder" or "file").

    Refused: an empty name; a dangling symbolic link; for a folder, an existing file; for a
    file, an existing folder; a path under an existing file. Checked before any work.
    """
    import pathlib

    if not text.strip():
        raise ValueError(f"--out must name a {kind}, got an empty string")
    path = pathlib.Path(text)
    if path.is_symlink() and not path.exists():
        raise ValueError(f"--out {text} is a dangling symbolic link (to {path.readlink()}); remove it or choose another")
    if kind == "folder" and path.exists() and not path.is_dir():
        raise ValueError(f"--out {text} is a file, not a folder; choose another")
    if kind == "file" and path.is_dir():
        raise ValueError(f"--out {text} is a folder; give a file name, e.g. {path / 'figure.png'}")
    for parent in path.parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise ValueError(f"--out {text}: {parent} is not a folder")
            break


def check_counts(args: argparse.Namespace, minimum: dict[str, int]) -> None:
    """Raise ValueError naming the flag unless each integer option (dest -> its least value) is
    at least that value (None, an unset optional count, passes)."""
    for dest, low in minimum.items():
        value = getattr(args, dest)
        if value is not None and value < low:
            flag = "--" + dest.replace("_", "-")
            raise ValueError(f"{flag} must be {'positive' if low == 1 else f'at least {low}'}, got {value}")


# ----------------------------------------------------------------------------- generate


def _add_generate(subparsers) -> None:
    p = subparsers.add_parser(
        "generate",
        help="make (or resume) an ED training dataset",
        description=(
            "Random confinement potentials with their non-interacting and interacting ground-state "
            "densities and energies for each N (with --spectrum K also the lowest K spin multiplets and the "
            "chemical potentials), solved by exact diagonalisation in jitted batches and "
            "written in checksummed chunks (docs/data.md). Running the same command again after an "
            "interruption continues where it stopped; a folder made with other settings is refused. "
            "Paper data set: qdjax generate --out data/paper (5000 samples, N = 1 2 3 4)."
        ),
    )
    p.add_argument("--out", required=True, help="dataset folder (created if missing)")
    p.add_argument("--samples", type=int, default=5000, help="number of samples (default: 5000, the paper's)")
    p.add_argument("--n-electrons", type=int, nargs="+", default=[1, 2, 3, 4], metavar="N",
                   help="electron numbers solved for every potential (default: 1 2 3 4)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0,
                   help="dataset seed; sample k uses SeedSequence([seed, k]) (default: 0)")  # fmt: skip
    p.add_argument("--chunk-size", type=int, default=50, help="samples per chunk file (default: 50)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="samples per device in one call of the ED program (vmap width); part of the dataset's "
                        "settings (default: 1 on CPU, 16 on accelerators)")  # fmt: skip
    p.add_argument("--splits", type=int, nargs=3, default=None, metavar=("TRAIN", "VALIDATION", "TEST"),
                   help="split sizes, contiguous in sample index (default: 2%% validation, 2%% test: "
                        "4800 100 100 of 5000)")  # fmt: skip
    p.add_argument("--spectrum", type=int, default=0, metavar="K",
                   help="also store, for every N, the lowest K spin multiplets of the interacting problem (energies "
                        "in eV and total spin S) and the chemical potentials mu(N) = E0(N) - E0(N-1) for N = 1..max N "
                        "(eV), checksummed with the rest; part of the dataset's settings (default: 0, none)")  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bar and summary line")
    multi = p.add_argument_group("several processes (hosts)")
    multi.add_argument("--distributed", action="store_true",
                       help="call jax.distributed.initialize() first (cluster auto-detection); each process "
                            "then makes chunks i, i + P, ... of the P processes")  # fmt: skip
    multi.add_argument("--process-index", type=int, default=None, help="this process's index i (default: JAX's)")
    multi.add_argument("--process-count", type=int, default=None, help="number of processes P (default: JAX's)")
    multi.add_argument("--merge", action="store_true",
                       help="only merge the per-process manifests in --out into manifest.json (after all "
                            "processes finished) and exit")  # fmt: skip
    add_config_arguments(p)
    p.set_defaults(func=_run_generate)


def _run_generate(args: argparse.Namespace) -> int:
    from qdjax import data

    check_out(args.out)
    check_counts(args, {"spectrum": 0})
    if args.merge:
        path = data.merge(args.out)
        print(f"qdjax generate: merged manifests into {path.resolve()}")
        return 0
    if args.distributed:
        import jax

        jax.distributed.initialize()
    result = data.generate(
        args.out,
        n_samples=args.samples,
        n_electrons=tuple(args.n_electrons),
        config=config_from_args(args),
        seed=args.seed,
        chunk_size=args.chunk_size,
        batch_size=args.batch_size,
        splits=args.splits,
        progress=not args.no_progress,
        process_index=args.process_index,
        process_count=args.process_count,
        spectrum=args.spectrum,
    )
    del result
    return 0


# ----------------------------------------------------------------------------- info


def _add_info(subparsers) -> None:
    p = subparsers.add_parser(
        "info",
        help="versions, devices, default EDConfig; summary of a dataset folder",
        description="Print qdjax's and JAX's versions, the devices JAX sees, the default EDConfig and, "
        "given a dataset folder, its settings and progress.",
    )
    p.add_argument("dataset", nargs="?", default=None, help="dataset folder made by qdjax generate")
    p.add_argument("--verify", action="store_true", help="also check every chunk's sha256")
    p.set_defaults(func=_run_info)


def _run_info(args: argparse.Namespace) -> int:
    import jax
    import jaxlib

    print(f"qdjax {qdjax.__version__} (jax {jax.__version__}, jaxlib {jaxlib.__version__}, "
          f"Python {sys.version.split()[0]})")  # fmt: skip
    devices = jax.devices()
    kinds = sorted({d.device_kind for d in devices})
    print(f"devices: {len(devices)} x {', '.join(kinds)} (backend {jax.default_backend()}); "
          f"process {jax.process_index()} of {jax.process_count()}; "
          f"64-bit mode {jax.config.jax_enable_x64}")  # fmt: skip
    print("default EDConfig:")
    for field in dataclasses.fields(EDConfig):
        print(f"  {field.name} = {getattr(EDConfig(), field.name)!r}")
    if args.dataset is None:
        return 0
    from qdjax import data

    info = data.describe(args.dataset, verify=args.verify)
    status = "complete" if info["complete"] else "unfinished: run the same qdjax generate command again"
    print(f"dataset {info['path']}:")
    print(f"  {info['n_samples']} samples, N = {' '.join(map(str, info['n_electrons']))}, seed {info['seed']}, "
          f"qdjax {info['qdjax_version']}, format {info['format_version']}")  # fmt: skip
    print(f"  chunks: {info['chunks_done']} of {info['n_chunks']} ({status}); {info['chunk_size']} samples each, "
          f"batch size {info['batch_size']}; {info['bytes'] / 1e6:.1f} MB")  # fmt: skip
    print("  splits: " + ", ".join(f"{k} {info['splits'][k][0]}..{info['splits'][k][1]}" for k in data.SPLITS))
    if info["spectrum"]:
        print(f"  spectrum: the lowest {info['spectrum']} spin multiplets of each N (energies, S) and "
              f"mu(N) for N = 1..{max(info['n_electrons'])}")  # fmt: skip
    print("  config: " + ", ".join(f"{k}={v}" for k, v in info["config"].items()))
    if info["stray_files"]:
        print(f"  temporary files of an interrupted write (removed by the next run): {', '.join(info['stray_files'])}")
    if len(info["code"]) > 1:
        print(f"  note: the chunks were made by {len(info['code'])} different versions of the code "
              f"(fingerprints {', '.join(info['code'])}); their bits are not comparable")  # fmt: skip
    if len(info["manifests"]) > 1:
        print(f"  per-process manifests: {', '.join(info['manifests'])} (qdjax generate --merge --out ...)")
    if args.verify:
        if info["damaged"]:
            raise data.DatasetError(
                f"damaged chunks {info['damaged']} in {info['path']}; run the same qdjax generate command again "
                "to recompute them"
            )
        if info["problems"]:
            raise data.DatasetError(
                f"{len(info['problems'])} chunk(s) disagree with the manifest or hold non-finite values; first: "
                f"{info['problems'][0]}"
            )
        print(f"  checksums and contents: all {info['chunks_done']} chunks verified")
    return 0


# ----------------------------------------------------------------------------- train


def _add_train(subparsers) -> None:
    from qdjax.ml.evaluate import MAPPINGS
    from qdjax.ml.models import DISCRIMINATOR_PRESETS

    p = subparsers.add_parser(
        "train",
        help="train pix2pix on one mapping of a dataset (resumable)",
        description=(
            "Train the pix2pix generator and discriminator on a mapping (V->n0, V->n_int, n0->n_int, n_int->V) "
            "of a dataset made by qdjax generate, for one electron number. Checkpoints every --eval-every steps "
            "(latest and best validation R^2 kept; running the same command again resumes the same trajectory), "
            "then restores the best, scores the test split and writes metrics.json and figures into --out. "
            "Each batch is split over all of JAX's devices (--devices; docs/multi-device.md). "
            "Paper settings (Table I): --batch 1 --lr 1e-4 --discriminator image70 --devices 1."
        ),
    )
    p.add_argument("--data", required=True, help="dataset folder (qdjax generate)")
    p.add_argument("--out", required=True, help="run folder (checkpoints/, metrics.json, figures)")
    p.add_argument("--mapping", choices=sorted(MAPPINGS), default="V->n_int", help="default: V->n_int")
    p.add_argument("--n-electrons", type=int, default=2, metavar="N", help="electron number (default: 2)")
    p.add_argument("--steps", type=int, default=5000, help="training steps (default: 5000)")
    p.add_argument("--batch", type=int, default=8, help="images per step (default: 8; paper: 1)")
    p.add_argument("--lr", type=float, default=2e-4, help="Adam learning rate (default: 2e-4; paper: 1e-4)")
    p.add_argument("--eval-every", type=int, default=500, help="steps between evaluations/checkpoints (default: 500)")
    p.add_argument("--lr-decay", type=int, default=0, metavar="STEPS",
                   help="decay the learning rate linearly to zero over the last STEPS steps (default: 0, constant)")  # fmt: skip
    p.add_argument("--widths", choices=["authors", "pix2pix"], default="authors",
                   help="network widths: the authors' public code (16..128, default) or pix2pix (64..512)")  # fmt: skip
    p.add_argument("--discriminator", choices=sorted(DISCRIMINATOR_PRESETS), default="image70",
                   help="discriminator patch size preset (default: image70)")  # fmt: skip
    p.add_argument("--d4", action="store_true", help="random symmetry-of-the-square augmentation (exact)")
    p.add_argument("--symmetrize", action="store_true", help="evaluate with the D4-averaged generator")
    p.add_argument("--equivariant", action="store_true",
                   help="generator equivariant by construction: the U-Net averaged over the 8 symmetries of the "
                        "square in training and inference (8 U-Net passes per image; loads plain U-Net weights)")  # fmt: skip
    p.add_argument("--d4-weight", type=float, default=0.0, metavar="W",
                   help="add W times the D4-consistency term (the generator against its output on a rotated or "
                        "mirrored input, rotated back) to the generator loss; pulls the single-pass generator "
                        "towards its D4 average (default: 0, none)")  # fmt: skip
    p.add_argument("--density-head", action="store_true",
                   help="normalised density output layer (non-negative, integrates to N) for density targets")  # fmt: skip
    p.add_argument("--log-input", action="store_true",
                   help="density inputs on a log scale (floor 1e-12 of the training peak) instead of linear")  # fmt: skip
    p.add_argument("--ed-weight", type=float, default=0.0, metavar="W",
                   help="n_int->V only: add W times the ED-consistency term (the ED density of the generated "
                        "potential against the input density, differentiated through the ED) to the generator "
                        "loss; the best checkpoint is then chosen by the R^2 of the ED-recomputed validation "
                        "densities (default: 0, plain pix2pix)")  # fmt: skip
    p.add_argument("--ed-loss", choices=["l2", "charge"], default="l2",
                   help="misfit of the ED term: relative squared L2 error or displaced charge (default: l2)")  # fmt: skip
    p.add_argument("--init-from", default=None, metavar="CKPT",
                   help="start from the networks of this checkpoint folder (RUN/checkpoints, its best step) and "
                        "keep its scalers: fine-tuning")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation and data order (default: 0)")
    p.add_argument("--devices", default="all", metavar="N|all",
                   help="data-parallel training on the first N of JAX's devices, or on all of them (default: all); "
                        "--batch must be a multiple of their number")  # fmt: skip
    p.add_argument("--distributed", action="store_true",
                   help="call jax.distributed.initialize() first (cluster auto-detection) and train on the devices "
                        "of all processes; run the same command on every host")  # fmt: skip
    p.add_argument("--no-figures", action="store_true", help="write checkpoints and metrics.json only, no PNG figures")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_train)


def _devices(text: str) -> list:
    """The devices of ``--devices N|all``: the first N of ``jax.devices()``, or all of them."""
    import jax

    available = jax.devices()
    if text == "all":
        return available
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= len(available):
        raise ValueError(f"--devices must be 'all' or a number from 1 to {len(available)} (devices: {len(available)}), got {text!r}")
    return available[:n]


def _split_size(path: str, split: str) -> int:
    """Samples in a split of a dataset, from its manifest."""
    from qdjax import data

    start, stop = data.read_manifest(path)["splits"][split]
    return stop - start


def _run_train(args: argparse.Namespace) -> int:
    from qdjax import data
    from qdjax.ml import experiment

    check_out(args.out)
    check_counts(args, {"steps": 1, "batch": 1, "eval_every": 1, "lr_decay": 0})
    train_size = _split_size(args.data, "train")
    if args.batch > train_size:
        raise ValueError(f"--batch {args.batch} is larger than the training split of {args.data} ({train_size} "
                         "samples)")  # fmt: skip
    if not 0 <= args.lr_decay <= args.steps:
        raise ValueError(f"--lr-decay must be between 0 and --steps={args.steps}, got {args.lr_decay}")
    for flag, value in (("--ed-weight", args.ed_weight), ("--d4-weight", args.d4_weight)):
        if not (value >= 0 and math.isfinite(value)):
            raise ValueError(f"{flag} must be a finite number >= 0, got {value}")
    if args.ed_weight > 0 and args.mapping != "n_int->V":
        raise ValueError(f"--ed-weight needs --mapping n_int->V, got {args.mapping}")
    if args.init_from is not None and not pathlib.Path(args.init_from).is_dir():
        raise ValueError(f"--init-from: no checkpoint folder at {args.init_from}")
    if args.distributed:
        import jax

        jax.distributed.initialize()
    devices = _devices(args.devices)
    if args.batch % len(devices):
        raise ValueError(f"--batch {args.batch} must be a multiple of the number of devices ({len(devices)}); "
                         "change --batch or --devices")  # fmt: skip
    ed_config = data.config_from_manifest(data.read_manifest(args.data))
    config = experiment.pix2pix_config(args.widths, args.discriminator, args.batch, args.lr, args.d4,
                                       image_size=ed_config.grid,
                                       decay_start=args.steps - args.lr_decay if args.lr_decay else 0,
                                       decay_steps=args.lr_decay, lambda_d4=args.d4_weight,
                                       equivariant=args.equivariant)  # fmt: skip
    splits = experiment.splits_from_dataset(args.data, args.n_electrons)
    run = experiment.run_mapping(
        splits, args.mapping, config, steps=args.steps, out_dir=args.out, key=args.seed,
        eval_every=args.eval_every, symmetrize=args.symmetrize, density_head=args.density_head,
        input_transform="log" if args.log_input else "linear",
        progress=not args.no_progress, length_nm=ed_config.length_nm, figures=not args.no_figures,
        devices=devices, metadata=experiment.dataset_metadata(args.data, args.n_electrons),
        ed_weight=args.ed_weight, ed_config=ed_config, n_electrons=args.n_electrons, ed_loss=args.ed_loss,
        init_from=args.init_from,
    )
    t = run.summary["test"]
    print(f"qdjax train: {args.mapping} N={args.n_electrons}: best step {run.best_step}, test R^2 {t['r2']:.4f}, "
          f"SSIM {t['ssim_mean']:.4f}, L1 {t['l1_mean']:.3e}; results in {run.out_dir.resolve()}")  # fmt: skip
    e = run.summary["ed_check_test"]
    if e is not None:
        print(f"qdjax train: ED check of the test proposals: recomputed-density R^2 {e['density_r2']:.4f} "
              f"(worst sample {e['density_r2_worst']:.4f}), accepted {e['accepted']} of {run.summary['n_test']}")  # fmt: skip
    return 0


# ----------------------------------------------------------------------------- evaluate


def _add_trust_arguments(p: argparse.ArgumentParser) -> None:
    """--allow-mismatch and --allow-unverified of evaluate and invert."""
    p.add_argument("--allow-mismatch", action="store_true",
                   help="use the checkpoint on data with another N, grid, box length, effective mass, eps_r or "
                        "density mode than it was trained on (refused otherwise), with a warning")  # fmt: skip
    p.add_argument("--allow-unverified", action="store_true",
                   help="load a checkpoint that has no sha256 record of its files (written before qdjax kept "
                        "one), with a warning; damaged files are refused either way")  # fmt: skip


def _warn(args: argparse.Namespace, message: str) -> None:
    print(f"qdjax {args.command}: warning: {message}", file=sys.stderr)


def _load_checked_run(args: argparse.Namespace, n_electrons: int, ed_config: EDConfig, step="best"):
    """The run of ``--checkpoint``, verified, and checked to fit data of (N, EDConfig).

    Raises ValueError for a damaged checkpoint, or one trained on other physics unless
    ``--allow-mismatch`` (then a warning); a checkpoint that records no data warns.
    """
    from qdjax.ml import experiment

    try:
        run = experiment.load_run(args.checkpoint, step)
    except ValueError as e:
        if not (args.allow_unverified and "no checksum record" in str(e)):
            raise
        _warn(args, f"{args.checkpoint} has no checksum record; its files are not verified")
        run = experiment.load_run(args.checkpoint, step, verify=False)
    diffs = experiment.dataset_mismatch(run.metadata or {}, n_electrons, ed_config)
    if diffs is None:
        _warn(args, f"{args.checkpoint} records no training data settings; N, grid and box length are not checked")
    elif diffs and not args.allow_mismatch:
        raise ValueError(f"{args.checkpoint} was trained on other data than {args.data} (N = {n_electrons}): "
                         f"{'; '.join(diffs)}; pass --allow-mismatch to use it anyway")  # fmt: skip
    elif diffs:
        _warn(args, f"using a checkpoint trained on other data: {'; '.join(diffs)}")
    return run, diffs


def _same_dataset(metadata: dict | None, path: str) -> bool | None:
    """Whether the dataset at `path` is the one the checkpoint was trained on (None: not recorded)."""
    from qdjax.ml import experiment

    recorded = ((metadata or {}).get("dataset") or {}).get("fingerprint")
    return None if recorded is None else recorded == experiment.dataset_metadata(path, 0)["dataset"]["fingerprint"]


def _check_scores_finite(values: dict, where: str) -> None:
    """ValueError naming every number of `values` that is not finite."""
    import math

    bad = [f"{k} = {v}" for k, v in values.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise ValueError(f"scores not finite: {', '.join(bad)} (written to {where})")


def _add_evaluate(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="score a trained generator on a dataset split",
        description=(
            "Restore a checkpoint written by qdjax train (default: best validation R^2) and score it on a split "
            "of any dataset in the qdjax format: L1, L2, Linf, SSIM, MSSIM and R^2 (training-split mean map of "
            "that dataset) in physical units, and the paper authors' convention; writes metrics.json, "
            "mapping.png and worst.png into --out. The checkpoint files are verified against their sha256, its "
            "training data (N, grid, box length, ...) against the dataset, and every image against NaN/inf; a "
            "score that is not finite ends with status 1."
        ),
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint folder (RUN/checkpoints)")
    p.add_argument("--data", required=True, help="dataset folder")
    p.add_argument("--split", choices=["train", "validation", "test"], default="test", help="default: test")
    p.add_argument("--n-electrons", type=int, default=2, metavar="N", help="electron number (default: 2)")
    p.add_argument("--step", default="best", help="checkpoint step: best (default), latest or a number")
    p.add_argument("--symmetrize", action="store_true", help="predict with the D4-averaged generator")
    p.add_argument("--out", required=True, help="folder for metrics.json and figures")
    _add_trust_arguments(p)
    p.set_defaults(func=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    import json
    import pathlib

    from qdjax import data
    from qdjax.ml import evaluate, experiment

    check_out(args.out)
    step = int(args.step) if args.step.isdigit() else args.step
    config = data.config_from_manifest(data.read_manifest(args.data))
    run, diffs = _load_checked_run(args, args.n_electrons, config, step)
    src, dst = evaluate.check_mapping(run.mapping)
    scored = data.load(args.data, args.split, n_electrons=args.n_electrons)
    train_split = data.load(args.data, "train", n_electrons=args.n_electrons)
    inputs = evaluate.check_finite(f"the dataset's {args.split} {src}", getattr(scored, src))
    targets = evaluate.check_finite(f"the dataset's {args.split} {dst}", getattr(scored, dst))
    if len(inputs) < 2:
        raise ValueError(f"the {args.split} split has {len(inputs)} sample(s); scoring needs at least 2")
    reference = getattr(train_split, dst) if len(train_split.V) else targets
    mean_map = evaluate.check_finite(f"the dataset's train {dst} (the R^2 mean map)", reference).mean(axis=0)
    prediction = evaluate.predict_physical(run.state, inputs, run.scalers, args.symmetrize)
    scores = evaluate.score(prediction, targets, run.scalers.targets, mean_map)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"checkpoint": str(pathlib.Path(args.checkpoint).resolve()), "step": run.step, "mapping": run.mapping,
               "data": str(pathlib.Path(args.data).resolve()), "split": args.split, "n_electrons": args.n_electrons,
               "samples": len(inputs), "symmetrize": args.symmetrize, "scores": evaluate.aggregate(scores),
               "mismatch": diffs, "same_dataset": _same_dataset(run.metadata, args.data)}  # fmt: skip
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    _check_scores_finite(summary["scores"], out / "metrics.json")
    experiment.write_image_figures(inputs, targets, prediction, scores, run.mapping, out, config.length_nm,
                                   log_input=run.scalers.inputs.transform == "log")
    a = summary["scores"]
    print(f"qdjax evaluate: {run.mapping} on {args.split} ({len(inputs)} samples): R^2 {a['r2']:.4f}, "
          f"SSIM {a['ssim_mean']:.4f}, MSSIM {a['mssim_mean']:.4f}, L1 {a['l1_mean']:.3e}, "
          f"paper R^2 {a['paper_r2']:.4f}; written to {out.resolve()}")  # fmt: skip
    return 0


# ----------------------------------------------------------------------------- invert


def _add_invert(subparsers) -> None:
    p = subparsers.add_parser(
        "invert",
        help="inverse design: potentials for target densities, checked by ED and refined",
        description=(
            "Run a trained n_int->V generator on the target densities of a dataset split, recompute the densities "
            "of the generated potentials by ED in the same jitted graph, accept those that displace at most 5%% of "
            "the charge, and optionally refine some by gradient descent through the ED. Writes inverse.json, "
            "inverse.png (paper Fig. 10) and refine.png into --out. The checkpoint is verified and checked against "
            "the dataset as by qdjax evaluate; a score that is not finite ends with status 1."
        ),
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint folder of an n_int->V run (RUN/checkpoints)")
    p.add_argument("--data", required=True, help="dataset folder with the target densities")
    p.add_argument("--n-electrons", type=int, default=2, metavar="N", help="electron number (default: 2)")
    p.add_argument("--samples", type=int, default=None, help="test samples to check (default: all)")
    p.add_argument("--refine", type=int, default=0, help="samples to refine by gradients (default: 0)")
    p.add_argument("--refine-steps", type=int, default=100, help="maximum refinement steps (default: 100)")
    p.add_argument("--symmetrize", action="store_true", help="use the D4-averaged generator")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_trust_arguments(p)
    p.set_defaults(func=_run_invert)


def _run_invert(args: argparse.Namespace) -> int:
    from qdjax import data
    from qdjax.ml import experiment

    check_out(args.out)
    check_counts(args, {"samples": 1, "refine": 0, "refine_steps": 1})
    config = data.config_from_manifest(data.read_manifest(args.data))
    run, _ = _load_checked_run(args, args.n_electrons, config)
    if run.mapping != "n_int->V":
        raise ValueError(f"qdjax invert needs an n_int->V checkpoint, {args.checkpoint} holds {run.mapping}")
    splits = experiment.splits_from_dataset(args.data, args.n_electrons)
    result = experiment.run_inverse(
        run.state, run.scalers, splits, args.n_electrons, config, out_dir=args.out, samples=args.samples,
        refine_samples=args.refine, refine_steps=args.refine_steps, symmetrize=args.symmetrize,
        progress=not args.no_progress,
    )
    g = result.summary["generator"]
    where = f"{args.out}/inverse.json"
    _check_scores_finite(g, where)
    _check_scores_finite(result.summary.get("refinement", {}), where)
    print(f"qdjax invert: {result.summary['samples']} densities: recomputed-density R^2 {g['density_r2']:.4f}, "
          f"potential R^2 {g['potential_r2']:.4f}, accepted {g['accepted']}, {g['seconds_per_sample'] * 1e3:.1f} ms "
          f"per sample")  # fmt: skip
    if "refinement" in result.summary:
        r = result.summary["refinement"]
        print(f"qdjax invert: refined {r['samples']}: density R^2 {r['density_r2_before']:.4f} -> "
              f"{r['density_r2_after']:.4f} in {r['steps']} steps")  # fmt: skip
    print(f"qdjax invert: written to {args.out}")
    return 0


# ----------------------------------------------------------------------------- plot


def _add_plot(subparsers) -> None:
    p = subparsers.add_parser(
        "plot",
        help="figures of a random potential or a dataset sample with its densities",
        description=(
            "Draw a potential and its ground-state densities (paper Figs. 1 and 9): either sample --index of a "
            "dataset (stored densities, no ED), or the random potential of --seed solved by ED for --n-electrons."
        ),
    )
    p.add_argument("--data", default=None, help="dataset folder (plot a stored sample)")
    p.add_argument("--index", type=int, default=0, help="sample index in the dataset (default: 0)")
    p.add_argument("--seed", type=int, default=0, help="random-potential seed when no --data (default: 0)")
    p.add_argument("--n-electrons", type=int, nargs="+", default=[1, 2, 3, 4], metavar="N",
                   help="electron numbers to solve when no --data (default: 1 2 3 4)")  # fmt: skip
    p.add_argument("--out", required=True, help="PNG file to write (.png is added to a name without a suffix)")
    add_config_arguments(p)
    p.set_defaults(func=_run_plot)


def _run_plot(args: argparse.Namespace) -> int:
    import numpy as np

    from qdjax import data, ed, plot, potentials

    check_out(args.out, "file")
    if args.data is not None:
        manifest = data.read_manifest(args.data)
        config = data.config_from_manifest(manifest)
        ds = data.load(args.data)
        if not 0 <= args.index < len(ds.V):
            raise ValueError(f"--index must be in 0..{len(ds.V) - 1}, got {args.index}")
        V = ds.V[args.index]
        panels = {f"n_int, N={n}": ds.n_int[args.index, k] for k, n in enumerate(ds.n_electrons.tolist())}
        title = f"{args.data}: sample {args.index}"
    else:
        config = config_from_args(args)
        V = potentials.random_potential(args.seed, config)
        states = ed.ground_states(V, tuple(args.n_electrons), config)
        panels = {f"n_int, N={n}": np.asarray(s.density) for n, s in zip(args.n_electrons, states.interacting)}
        title = f"random potential, seed {args.seed}"
    path = plot.potential_and_densities(V, panels, config.length_nm, args.out, title=title)
    print(f"qdjax plot: wrote {path.resolve()}")
    return 0


# ----------------------------------------------------------------------------- spectrum


def _add_spectrum(subparsers) -> None:
    p = subparsers.add_parser(
        "spectrum",
        help="spin-resolved many-body spectrum of a potential (levels, total spin, spin densities)",
        description="The lowest --states spin multiplets of --n-electrons electrons (qdjax.ed.spectrum): "
        "energies, excitation energies and total spin S, printed as a table, and a figure of the levels "
        "coloured by S with the up and down densities of each multiplet's S_z = S member. The potential is "
        "the random potential of --seed, or a harmonic trap with --harmonic HBAR_OMEGA (eV).",
    )
    p.add_argument("--n-electrons", type=int, default=2, metavar="N", help="electrons (default: 2)")
    p.add_argument("--states", type=int, default=6, help="multiplets (default: 6)")
    p.add_argument("--seed", type=int, default=0, help="random-potential seed (default: 0)")
    p.add_argument("--harmonic", type=_number, default=None, metavar="HBAR_OMEGA",
                   help="use a harmonic trap of this hbar omega (eV) at the box centre instead")  # fmt: skip
    p.add_argument("--out", default=None, help="PNG file to write (default: no figure)")
    p.add_argument("--json", default=None, help="also write the levels to this JSON file")
    add_config_arguments(p)
    p.set_defaults(func=_run_spectrum)


def _run_spectrum(args: argparse.Namespace) -> int:
    import json

    import numpy as np

    from qdjax import ed, plot, potentials

    config = config_from_args(args)
    if args.harmonic is not None:
        if not args.harmonic > 0:
            raise ValueError(f"--harmonic must be a positive energy in eV, got {args.harmonic}")
        V, label = potentials.harmonic(config, args.harmonic), f"harmonic trap, hbar omega {args.harmonic} eV"
    else:
        V, label = potentials.random_potential(args.seed, config), f"random potential, seed {args.seed}"
    sp = ed.spectrum(V, args.n_electrons, args.states, config)
    energies, spins = np.asarray(sp.energies), np.asarray(sp.total_spin)
    print(f"{label}, N = {args.n_electrons}")
    print("  i   E (eV)        E - E0 (meV)   S")
    for i, (e, s) in enumerate(zip(energies, spins)):
        print(f"{i:3d}   {e:.8f}   {1e3 * (e - energies[0]):12.4f}   {s:.2f}")
    if not bool(sp.converged):
        print("warning: a degenerate level reaches beyond the computed states; the last ones may be incomplete")
    if args.json:
        levels = [{"energy_eV": float(e), "total_spin": float(s)} for e, s in zip(energies, spins)]
        with open(args.json, "w") as f:
            json.dump({"potential": label, "n_electrons": args.n_electrons, "config": dataclasses.asdict(config),
                       "levels": levels}, f, indent=2, default=str)  # fmt: skip
    if args.out:
        path = plot.spectrum_levels(energies, spins, np.asarray(sp.spin_densities), config.length_nm, args.out,
                                    title=f"{label}, N = {args.n_electrons}")  # fmt: skip
        print(f"qdjax spectrum: wrote {path.resolve()}")
    return 0


# ----------------------------------------------------------------------------- bench


def _add_bench(subparsers) -> None:
    p = subparsers.add_parser(
        "bench",
        help="ED throughput (instances/s) and pix2pix training steps/s on this machine",
        description="Time qdjax.ed.ground_state end to end on the paper's random potentials for each N and "
        "batch size, on the device JAX uses (first call with compilation, then the median of --repeats "
        "calls); with --train also one pix2pix training step per --train-batch. For the per-stage "
        "comparison with the NumPy/SciPy/PySCF pipeline run benchmarks/bench_ed.py.",
    )
    p.add_argument("--electrons", type=int, nargs="+", default=[1, 2, 3, 4], help="N values (default 1 2 3 4)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 16], help="potentials per call (default 1 16)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls after the first (default 5)")
    p.add_argument("--train", action="store_true", help="also time a pix2pix training step")
    p.add_argument("--train-batch", type=int, nargs="+", default=[1, 16], help="training batch sizes (default 1 16)")
    p.add_argument("--train-widths", choices=["authors", "pix2pix"], default="authors",
                   help="network widths of the timed step: the authors' public code (16..128, default) or the "
                   "original pix2pix (64..512)")  # fmt: skip
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    add_config_arguments(p)
    p.set_defaults(func=_run_bench)


def _run_bench(args: argparse.Namespace) -> int:
    import json

    import jax

    from qdjax import benchmark

    config = config_from_args(args)
    for name, values in (("--electrons", args.electrons), ("--batch", args.batch), ("--train-batch", args.train_batch),
                         ("--repeats", [args.repeats])):  # fmt: skip
        if any(v < 1 for v in values):
            raise ValueError(f"{name} values must be >= 1, got {values}")
    print(f"qdjax {qdjax.__version__}, jax {jax.__version__}, {len(jax.devices())} x {jax.devices()[0].device_kind}, "
          f"dtype {config.dtype}, eigensolver {config.eigensolver}", flush=True)  # fmt: skip
    results = {"config": dataclasses.asdict(config), "device": jax.devices()[0].device_kind, "ed": [], "train": []}
    for n in args.electrons:
        for b in args.batch:
            r = benchmark.ed_throughput(n, config, b, args.repeats)
            results["ed"].append(r)
            print(f"ED N={n} batch {b:4d}: {r['per_s']:9.1f} instances/s ({1e3 * r['median_s'] / b:.2f} ms each; "
                  f"first call {r['first_call_s']:.1f} s)", flush=True)  # fmt: skip
    if args.train:
        from qdjax.ml import experiment

        for b in args.train_batch:
            r = benchmark.train_step_time(experiment.pix2pix_config(args.train_widths, batch_size=b), args.repeats)
            results["train"].append({"widths": args.train_widths, **r})
            print(f"pix2pix batch {b:3d}: {1e3 / r['median_ms']:.1f} steps/s ({r['median_ms']:.1f} ms; "
                  f"first call {r['first_s']:.1f} s)", flush=True)  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2, default=str)
        print(f"results written to {args.json}")
    return 0


# ----------------------------------------------------------------------------- main

#: Functions registering the subcommands, in the order `qdjax --help` lists them.
COMMANDS: list[Callable] = [_add_generate, _add_train, _add_evaluate, _add_invert, _add_bench, _add_plot, _add_info,
                           _add_spectrum]


def build_parser() -> argparse.ArgumentParser:
    """The ``qdjax`` argument parser with every command of `COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="qdjax",
        description="Exact diagonalisation of few-electron quantum dots in JAX, and pix2pix maps between "
        "potentials and densities.",
    )
    parser.add_argument("--version", action="version", version=f"qdjax {qdjax.__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for add in COMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``qdjax`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError) as error:
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"qdjax {args.command}: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"qdjax {args.command}: interrupted; running the same command again resumes", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
