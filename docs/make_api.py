"""Write docs/api.md from the docstrings of qdjax's public modules, and docs/cli.md from the
command line's help texts.

Run: python docs/make_api.py            (writes docs/api.md and docs/cli.md)
     python docs/make_api.py --check    (exit 1 if either is out of date)
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import pathlib
import sys

MODULES = [
    "qdjax.config",
    "qdjax.backend",
    "qdjax.units",
    "qdjax.potentials",
    "qdjax.basis",
    "qdjax.single_particle",
    "qdjax.coulomb",
    "qdjax.fock",
    "qdjax.linalg",
    "qdjax.ed",
    "qdjax.spectrum",
    "qdjax.data",
    "qdjax.metrics",
    "qdjax.inverse",
    "qdjax.benchmark",
    "qdjax.parallel",
    "qdjax.ml.scaling",
    "qdjax.ml.symmetry",
    "qdjax.ml.models",
    "qdjax.ml.state",
    "qdjax.ml.physics",
    "qdjax.ml.checkpoint",
    "qdjax.ml.train",
    "qdjax.ml.evaluate",
    "qdjax.ml.experiment",
    "qdjax.plot",
]

HEADER = """# API reference

Generated from the docstrings by `python docs/make_api.py`; do not edit by hand.
Units: energies and potentials in eV, lengths in nm, densities in nm^-2.
"""


def public_members(module):
    """(name, object) of the functions and classes defined in `module`, in source order."""
    names = getattr(module, "__all__", None) or [n for n in vars(module) if not n.startswith("_")]
    members = []
    for name in names:
        obj = getattr(module, name)
        plain = inspect.unwrap(obj) if callable(obj) else obj  # functools.lru_cache, wraps
        if (inspect.isfunction(plain) or inspect.isclass(plain)) and getattr(plain, "__module__", None) == module.__name__:
            members.append((name, plain))
    members.sort(key=lambda m: inspect.getsourcelines(m[1])[1])
    return members


def signature(obj) -> str:
    try:
        return str(inspect.signature(obj))
    except (TypeError, ValueError):
        return "(...)"


def render() -> str:
    parts = [HEADER]
    for name in MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError:
            continue
        parts.append(f"\n## `{name}`\n\n{inspect.cleandoc(module.__doc__ or '')}\n")
        for member, obj in public_members(module):
            kind = "class" if inspect.isclass(obj) else "def"
            doc = inspect.cleandoc(obj.__doc__ or "(undocumented)")
            parts.append(f"\n### `{kind} {member}{signature(obj)}`\n\n```text\n{doc}\n```\n")
    return "".join(parts)


CLI_HEADER = """# Command line: `qdjax`

Generated from the help texts by `python docs/make_api.py`; do not edit by hand. Every command
exits with status 0 on success, 1 with a one-line `qdjax <command>: error: ...` message on a
user error (bad values, mismatched or damaged dataset folders, missing checkpoints), 2 on bad
arguments and 130 when interrupted; long work shows a progress bar and resumes when the same
command is run again.
"""


def render_cli() -> str:
    """Markdown of `qdjax --help` and of `qdjax <command> --help` for every command."""
    import argparse

    from qdjax import cli

    parser = cli.build_parser()
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parts = [CLI_HEADER, f"\n```text\n{_help(parser)}```\n"]
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subparsers.choices.items():
        parts.append(f"\n## `qdjax {name}`\n\n```text\n{_help(sub)}```\n")
    return "".join(parts)


def _help(parser) -> str:
    import os

    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"
    try:
        return parser.format_help()
    finally:
        if columns is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = columns


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    stale = []
    for name, text in (("api.md", render()), ("cli.md", render_cli())):
        target = pathlib.Path(__file__).with_name(name)
        if args.check:
            if not target.exists() or target.read_text() != text:
                stale.append(name)
            continue
        target.write_text(text)
        print(f"wrote {target}")
    if stale:
        print(f"docs/{' and docs/'.join(stale)} out of date: run python docs/make_api.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
