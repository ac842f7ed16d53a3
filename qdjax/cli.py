"""The ``qdjax`` command line: ``qdjax <command> [options]``; ``qdjax <command> --help``.

Commands: ``generate`` (ED training data, `qdjax.data.generate`) and ``info`` (versions,
devices, default EDConfig, summary of a dataset folder).

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


# ----------------------------------------------------------------------------- generate


def _add_generate(subparsers) -> None:
    p = subparsers.add_parser(
        "generate",
        help="make (or resume) an ED training dataset",
        description=(
            "Random confinement potentials with their non-interacting and interacting ground-state "
            "densities and energies for each N, solved by exact diagonalisation in jitted batches and "
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
        print(f"  checksums: all {info['chunks_done']} chunks verified")
    return 0


# ----------------------------------------------------------------------------- main

#: Functions registering the subcommands, in the order `qdjax --help` lists them.
COMMANDS: list[Callable] = [_add_generate, _add_info]


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
