"""Wall-clock time of one pix2pix training step.

    python -m qdjax.ml.benchmark                      # authors' widths, batch 1 and 16
    python -m qdjax.ml.benchmark --widths pix2pix --batch 1 16 --repeat 5

Prints, per batch size, the time of the first call (tracing + XLA compilation + one step)
and the median and minimum of `repeat` further steps (after two warm-up steps), in ms.
Random [-1, 1] images; the default `Pix2PixConfig` otherwise (instance norm, image70
discriminator). Timings depend on the machine and its load: compare numbers from one run.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from qdjax.ml import experiment, train
from qdjax.ml.models import Pix2PixConfig


def time_train_step(config: Pix2PixConfig, repeat: int = 10, seed: int = 0) -> dict:
    """Times `make_train_step(config)` on random images.

    Returns:
      {"first_s": first call in s (includes compilation), "median_ms", "min_ms"}.
    """
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
    for i in range(repeat):
        t = time.perf_counter()
        state, _ = step(state, (x, y), jax.random.key(i + 3))
        jax.block_until_ready(state)
        times.append(time.perf_counter() - t)
    return {"first_s": first, "median_ms": 1e3 * float(np.median(times)), "min_ms": 1e3 * min(times)}


def main(argv: list[str] | None = None) -> None:
    """``python -m qdjax.ml.benchmark [--widths authors|pix2pix] [--batch B ...] [--repeat R]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--widths", choices=["authors", "pix2pix"], default="authors")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args(argv)
    base = experiment.pix2pix_config(args.widths, "image70")
    print(f"jax {jax.__version__}, {jax.devices()[0].platform}, widths={args.widths}")
    for b in args.batch:
        r = time_train_step(base.replace(batch_size=b), repeat=args.repeat)
        print(
            f"batch {b:3d}: first call {r['first_s']:.1f} s, step median {r['median_ms']:.1f} ms, "
            f"min {r['min_ms']:.1f} ms",
            flush=True,
        )


if __name__ == "__main__":
    main()
