"""Shared fixtures. Importing qdjax turns on JAX's float64 mode for the physics tests."""

import importlib.metadata
import os

# The suite runs in two worker processes (pytest-xdist, pyproject.toml): on a GPU each would
# otherwise reserve most of the card's memory before the other starts.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

#: XLA flags of the test run on a CPU-only installation: LLVM's cheapest optimisation level for
#: the compiled programs. Compilation is most of the suite's time; with these flags the suite
#: took 8 min 49 s instead of 12 min 19 s on 2 cores (same machine, back to back), and the
#: programs give the same results to rounding (not bit for bit: every comparison of bits in
#: the suite is between two runs under the same flags, see `xla_flags`). Not set when XLA_FLAGS
#: already names an optimisation level, so ``XLA_FLAGS=--xla_backend_optimization_level=3
#: pytest`` runs the suite on the programs users get (XLA's default, level 3), nor when an
#: accelerator plugin is installed.
FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def _accelerator_plugin_installed() -> bool:
    names = {(d.metadata["Name"] or "").lower().replace("_", "-") for d in importlib.metadata.distributions()}
    return any(n.startswith(("jax-cuda", "jax-rocm", "libtpu")) for n in names)


if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", "") and not _accelerator_plugin_installed():
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE_FLAGS}".strip()


def xla_flags(*extra: str) -> str:
    """XLA_FLAGS for a subprocess of a test: this run's flags (inherited by every subprocess,
    so that its programs are compiled like the worker's) followed by `extra`."""
    return " ".join((os.environ.get("XLA_FLAGS", ""),) + extra).strip()


import shutil  # noqa: E402
import tempfile  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import qdjax  # noqa: E402
from qdjax import potentials  # noqa: E402

_CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"
#: Programs that compile faster than this (s) are not cached.
_CACHE_MIN_COMPILE_S = 0.2


def pytest_configure(config):
    """One persistent compilation cache per test run, shared by the xdist workers and the
    `qdjax` subprocesses the tests start (they inherit the environment): a program that
    several tests or processes compile (the paper-size ED, the training step of the CLI
    runs) is compiled once per run. Most of the suite's time is compilation: with the cache
    the suite took 7 min 51 s instead of 9 min 47 s on 2 cores. A fresh, empty directory per run, deleted at the end,
    so nothing compiled by an earlier run (or another checkout) is ever loaded. A cache
    directory set by the caller is used as it is and kept."""
    if hasattr(config, "workerinput") or os.environ.get(_CACHE_ENV):
        return  # an xdist worker (inherits the controller's setting) or the caller's own cache
    path = tempfile.mkdtemp(prefix="qdjax-test-jit-cache-")
    config._qdjax_jit_cache = path
    os.environ[_CACHE_ENV] = path
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = str(_CACHE_MIN_COMPILE_S)
    jax.config.update("jax_compilation_cache_dir", path)  # jax was imported before this hook
    jax.config.update("jax_persistent_cache_min_compile_time_secs", _CACHE_MIN_COMPILE_S)


def pytest_unconfigure(config):
    path = getattr(config, "_qdjax_jit_cache", None)
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)


#: EDConfig flags of the command line for the small test grid: 16 pixels, 8 sine modes, 4 orbitals.
TINY_FLAGS = ["--grid", "16", "--basis", "8", "--orbitals", "4"]


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    """A 16-sample dataset on the 16-pixel test grid (12 / 2 / 2 split), N = 2, made by `qdjax generate`."""
    from qdjax import cli

    out = tmp_path_factory.mktemp("tiny") / "ds"
    argv = ["generate", "--out", str(out), "--samples", "16", "--splits", "12", "2", "2", "--n-electrons", "2",
            "--chunk-size", "8", "--no-progress", *TINY_FLAGS]  # fmt: skip
    assert cli.main(argv) == 0
    return out


@pytest.fixture(scope="session")
def config():
    """Paper defaults: L = 30 nm, grid 64, basis 32, 8 orbitals, GaAs."""
    return qdjax.EDConfig()


@pytest.fixture(scope="session")
def random_V(config):
    """Three random confinement potentials of the paper's class (eV), shape (3, 64, 64)."""
    return potentials.random_potentials([11, 12, 13], config)


def random_symmetric(n, seed):
    """A random real symmetric matrix (n, n) with entries of order one."""
    a = np.random.default_rng(seed).normal(size=(n, n))
    return 0.5 * (a + a.T)
