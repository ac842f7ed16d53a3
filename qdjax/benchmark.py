"""Wall-clock timers of the ED and of a pix2pix training step, on whatever device JAX uses.

    qdjax bench --electrons 1 2 3 4 --batch 1 16 64 --train   # the command-line front end
    python benchmarks/bench_ed.py                             # per stage, against the peer pipeline
    bash benchmarks/device_check.sh                           # GPU check (benchmarks/device_check.py)

The one module of timers that the command line and the scripts in benchmarks/ share.
`ed_throughput` times `qdjax.ed.ground_state` end to end on the paper's random potentials and
`train_step_time` one step of `qdjax.ml.train.make_train_step`: the first call (tracing +
compilation + one run) and the median of further calls, each waited for with
`jax.block_until_ready`. The training timer imports the ML side (Flax, Optax) when called;
importing this module does not. Numbers depend on the machine and its load: compare numbers
from one run, on one machine.
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
      {"N", "batch", "first_call_s" (tracing, compilation and one call), "compile_s"
       (first_call_s - median_s: tracing and compilation, roughly), "median_s" (per call),
       "times_s" (every timed call), "per_s" (instances per second), "device" (kind of the
       first device), "dtype", "batching", "converged" (fraction of converged instances)}.
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    V = jnp.asarray(potentials.random_potentials(list(range(seed, seed + batch)), config), config.dtype)
    start = time.perf_counter()
    gs = jax.block_until_ready(ed.ground_state(V, n_electrons, config))
    first = time.perf_counter() - start
    times = wall_times(lambda: ed.ground_state(V, n_electrons, config).energy, repeats)
    median = float(np.median(times))
    return {
        "N": int(n_electrons),
        "batch": int(batch),
        "first_call_s": first,
        "compile_s": max(first - median, 0.0),
        "median_s": median,
        "times_s": times,
        "per_s": batch / median,
        "device": jax.devices()[0].device_kind,
        "dtype": str(np.dtype(config.dtype)),
        "batching": config.batching,
        "converged": float(np.mean(np.asarray(gs.converged))),
    }


def train_step_time(config, repeats: int = 10, seed: int = 0) -> dict:
    """Wall time of one pix2pix training step (`qdjax.ml.train.make_train_step(config)`) on
    random [-1, 1] images of the configuration's size and batch.

    Args:
      config: qdjax.ml.models.Pix2PixConfig (its batch_size is the batch timed).
      repeats: timed steps, after the first call and two warm-up steps.
      seed: seed of the images and of the initial weights.

    Returns:
      {"batch", "first_s" (tracing, compilation and one step), "median_ms", "min_ms",
       "steps_per_s" (1 / median), "device"}.
    """
    from qdjax.ml import train  # the ML side (Flax, Optax), imported when a step is timed

    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    rng = np.random.default_rng(seed)
    shape = (config.batch_size, config.generator.image_size, config.generator.image_size)
    x = rng.uniform(-1, 1, shape + (config.generator.in_channels,)).astype(np.float32)
    y = rng.uniform(-1, 1, shape + (config.generator.out_channels,)).astype(np.float32)
    state = train.init_state(config, jax.random.key(seed))
    step = train.make_train_step(config)
    t = time.perf_counter()
    state, _ = step(state, (x, y), jax.random.key(0))
    jax.block_until_ready(state)
    first = time.perf_counter() - t
    for i in range(2):
        state, _ = step(state, (x, y), jax.random.key(i + 1))
    jax.block_until_ready(state)
    times = []
    for i in range(repeats):
        t = time.perf_counter()
        state, _ = step(state, (x, y), jax.random.key(i + 3))
        jax.block_until_ready(state)
        times.append(time.perf_counter() - t)
    median = float(np.median(times))
    return {"batch": int(config.batch_size), "first_s": first, "median_ms": 1e3 * median, "min_ms": 1e3 * min(times),
            "steps_per_s": 1.0 / median, "device": jax.devices()[0].device_kind}


def peak_memory_bytes(device=None) -> int | None:
    """Peak bytes in use on `device` (default: the first device) since the process started,
    from ``device.memory_stats()["peak_bytes_in_use"]``; None where the backend does not
    report it (XLA:CPU)."""
    device = device or jax.devices()[0]
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001  (backends without memory statistics raise)
        return None
    return None if not stats or "peak_bytes_in_use" not in stats else int(stats["peak_bytes_in_use"])


def machine() -> dict:
    """Facts of the machine a measurement ran on: CPU model, visible cores and affinity, load
    average, Python, JAX and NumPy versions, JAX's backend and devices."""
    import os
    import platform

    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cores_visible": os.cpu_count(),
        "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "numpy": np.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "device_kind": jax.devices()[0].device_kind,
    }
