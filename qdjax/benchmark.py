"""Wall-clock throughput of `qdjax.ed.ground_state` on whatever device JAX uses.

    qdjax bench --electrons 1 2 3 4 --batch 1 16 64          # the command-line front end
    python benchmarks/bench_ed.py                             # per stage, against the peer pipeline

`ed_throughput` times the public entry point end to end on the paper's random potentials: the
first call (tracing + compilation + one solve) and the median of `repeats` further calls, each
waited for with `jax.block_until_ready`. Numbers depend on the machine and its load: compare
numbers from one run, on one machine.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from qdjax import ed, potentials
from qdjax.config import EDConfig


def wall_times(fn: Callable[[], object], repeats: int) -> list[float]:
    """Wall times in s of `repeats` calls of `fn`, each result waited for with block_until_ready."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return times


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time in s of `repeats` calls of `fn` (each result waited for)."""
    return float(np.median(wall_times(fn, repeats)))


def ed_throughput(n_electrons: int, config: EDConfig = EDConfig(), batch: int = 16, repeats: int = 5,
                  seed: int = 0) -> dict:
    """Instances per second of `qdjax.ed.ground_state` on a batch of random potentials.

    Args:
      n_electrons: N.
      config: EDConfig (its dtype and eigensolver are what is timed).
      batch: potentials per call (seeds seed .. seed + batch - 1 of `random_potentials`).
      repeats: timed calls after the first.
      seed: first potential seed.

    Returns:
      {"N", "batch", "first_call_s" (includes compilation), "median_s" (per call),
       "per_s" (instances per second), "device" (kind of the first device), "dtype"}.
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    V = jnp.asarray(potentials.random_potentials(list(range(seed, seed + batch)), config), config.dtype)
    start = time.perf_counter()
    jax.block_until_ready(ed.ground_state(V, n_electrons, config).energy)
    first = time.perf_counter() - start
    median = median_seconds(lambda: ed.ground_state(V, n_electrons, config).energy, repeats)
    return {
        "N": int(n_electrons),
        "batch": int(batch),
        "first_call_s": first,
        "median_s": median,
        "per_s": batch / median,
        "device": jax.devices()[0].device_kind,
        "dtype": str(np.dtype(config.dtype)),
    }
