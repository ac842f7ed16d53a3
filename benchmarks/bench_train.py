"""pix2pix training speed: qdjax (Flax NNX + jax.jit) against the same networks in PyTorch.

    python benchmarks/bench_train.py --out bench_train.json
    python benchmarks/bench_train.py --widths authors --batch 1 32 --repeats 7 --steps 10

For each width set ("authors": generator 16..128 and discriminator 16..128 of the authors'
public code, the `Pix2PixConfig` default; "pix2pix": the original 64..512) and each batch
size, both frameworks train from the same initial weights (the qdjax ones, copied into the
PyTorch modules) on the same random [-1, 1] image pair, in one process. After warm-up
(compilation and `--warmup` steps, not timed), `--repeats` rounds each time the same number
of consecutive steps (at least `--steps`, more if a round of the faster framework would be
shorter than `--min-round-s`) of one framework and then of the other (the order alternates
between rounds, so a change of machine load hits both); the reported rate is the median
over rounds of steps / wall time. A qdjax round ends with ``jax.block_until_ready`` on the state, so
asynchronous dispatch cannot hide work. The step is `qdjax.ml.train.make_train_step` as
`qdjax.ml.train.fit` calls it; the PyTorch step is `torch_pix2pix.Pix2PixTrainer` (eager,
and with ``--torch-compile`` also under ``torch.compile``).

Threads: both frameworks get the same number of threads (``--threads``, default: the CPUs
this process may run on). PyTorch: ``torch.set_num_threads``; with ``--torch-single-thread``
the eager PyTorch step is also timed with 1 thread: on a machine shared with other jobs,
PyTorch's OpenMP parallel regions wait for descheduled threads and one thread can be the
faster setting, so "best torch" is the faster of all PyTorch variants timed. XLA's CPU backend sizes its
intra-op pool from the visible CPUs; the count is recorded. The JSON (``--out``) records
the machine, the load average before and after, versions, thread settings and XLA_FLAGS.
Needs PyTorch (CPU build), which is not a dependency of qdjax.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def bench_case(
    widths: str,
    batch: int,
    *,
    repeats: int,
    steps: int,
    warmup: int,
    min_round_s: float,
    torch_compile: bool,
    threads: int,
    torch_single_thread: bool,
    seed: int = 0,
):
    """Times one (widths, batch) case in both frameworks; returns a JSON-ready dict."""
    import jax
    import torch

    import torch_pix2pix as tp
    from qdjax.ml import train

    from qdjax.ml import experiment

    config = experiment.pix2pix_config(widths, "image70", batch)
    warmup = max(warmup, 1)
    s = config.generator.image_size
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (batch, s, s, 1)).astype(np.float32)
    y = rng.uniform(-1, 1, (batch, s, s, 1)).astype(np.float32)

    # qdjax
    state = train.init_state(config, jax.random.key(seed))
    init = jax.device_get((state.g_params, state.d_params))
    step = train.make_train_step(config)
    batch_j = (jax.device_put(x), jax.device_put(y))
    key = jax.random.key(seed + 1)
    t = time.perf_counter()
    state, _ = step(state, batch_j, key)
    jax.block_until_ready(state)
    jax_first = time.perf_counter() - t

    # PyTorch, from the same initial weights and on the same data
    runners = {}
    gen, disc = tp.build(config)
    tp.load_jax_params(gen, disc, *init)
    x_t = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    y_t = torch.from_numpy(np.ascontiguousarray(y.transpose(0, 3, 1, 2)))
    trainers = {"torch": tp.Pix2PixTrainer(config, gen, disc)}
    first = {}
    if torch_compile:
        gen_c, disc_c = tp.build(config)
        tp.load_jax_params(gen_c, disc_c, *init)
        trainers["torch_compile"] = tp.Pix2PixTrainer(config, gen_c, disc_c, compile=True)
    for name, tr in trainers.items():
        t = time.perf_counter()
        tr.step(x_t, y_t)
        first[name] = time.perf_counter() - t

    def run_jax(n):
        nonlocal state
        for _ in range(n):
            state, metrics = step(state, batch_j, key)
        jax.block_until_ready((state, metrics))

    def run_torch(n, tr, n_threads):
        torch.set_num_threads(n_threads)
        for _ in range(n):
            tr.step(x_t, y_t)

    runners["qdjax"] = run_jax
    for name, tr in trainers.items():
        runners[name] = lambda n, tr=tr: run_torch(n, tr, threads)
    if torch_single_thread:
        runners["torch_1thread"] = lambda n: run_torch(n, trainers["torch"], 1)

    warm = {}
    for name, run in runners.items():
        t = time.perf_counter()
        run(warmup)
        warm[name] = (time.perf_counter() - t) / max(warmup, 1)
    # same number of steps per round for every framework, and rounds of >= min_round_s
    steps = max(steps, math.ceil(min_round_s / max(min(warm.values()), 1e-6)))
    names = list(runners)
    rates = {name: [] for name in names}
    for r in range(repeats):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            t = time.perf_counter()
            runners[name](steps)
            rates[name].append(steps / (time.perf_counter() - t))
    out = {
        "widths": widths,
        "batch": batch,
        "generator_filters": list(config.generator.filters),
        "discriminator_filters": list(config.discriminator.filters),
        "first_call_s": {"qdjax": jax_first, **first},
        "steps_per_round": steps,
        "loadavg_1min_after": os.getloadavg()[0],
        "steps_per_s": {name: float(np.median(v)) for name, v in rates.items()},
        "steps_per_s_all": rates,
    }
    torch.set_num_threads(threads)
    rate = out["steps_per_s"]
    out["ratio_qdjax_over_torch"] = rate["qdjax"] / rate["torch"]
    out["ratio_qdjax_over_best_torch"] = rate["qdjax"] / max(v for k, v in rate.items() if k != "qdjax")
    if torch_compile:
        out["ratio_qdjax_over_torch_compile"] = out["steps_per_s"]["qdjax"] / out["steps_per_s"]["torch_compile"]
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--widths", nargs="+", choices=["authors", "pix2pix"], default=["authors", "pix2pix"])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per framework (median)")
    parser.add_argument("--steps", type=int, default=10, help="minimum training steps per round")
    parser.add_argument(
        "--min-round-s", type=float, default=1.0,
        help="more steps per round where needed, so that a round of the faster framework lasts this long",
    )
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps after the first call")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--torch-compile", action="store_true", help="also time the torch.compile'd step")
    parser.add_argument(
        "--torch-single-thread", action="store_true",
        help="also time the eager PyTorch step with 1 thread (on a busy machine often faster than 2)",
    )
    parser.add_argument("--out", help="write the results as JSON to this file")
    args = parser.parse_args(argv)

    sys.path.insert(0, _HERE)
    import flax
    import jax
    import jaxlib
    import optax
    import torch

    import qdjax  # noqa: F401  (turns on float64 mode, as for every qdjax user; the networks stay float32)

    torch.set_num_threads(args.threads)
    meta = {
        "command": " ".join([os.path.basename(sys.argv[0])] + (argv if argv is not None else sys.argv[1:])),
        "machine": {
            "cpu": _cpu_model(),
            "cpus_visible": len(os.sched_getaffinity(0)),
            "platform": platform.platform(),
            "loadavg_before": os.getloadavg(),
        },
        "versions": {
            "python": platform.python_version(),
            "jax": jax.__version__,
            "jaxlib": jaxlib.__version__,
            "flax": flax.__version__,
            "optax": optax.__version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
        },
        "threads": {
            "torch_num_threads": torch.get_num_threads(),
            "torch_num_interop_threads": torch.get_num_interop_threads(),
            "jax_devices": [str(d) for d in jax.devices()],
            "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", ""),
        },
        "settings": {
            "repeats": args.repeats, "min_steps": args.steps, "min_round_s": args.min_round_s, "warmup": args.warmup,
        },
    }
    print(
        f"{meta['machine']['cpu']}, {meta['machine']['cpus_visible']} CPUs, load {meta['machine']['loadavg_before']}; "
        f"jax {jax.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads)",
        flush=True,
    )
    cols = ["qdjax", "torch"] + (["torch_compile"] if args.torch_compile else [])
    cols += ["torch_1thread"] if args.torch_single_thread else []
    print(
        f"{'widths':8s} {'batch':>5s} " + " ".join(f"{c + ' step/s':>20s}" for c in cols)
        + f" {'qdjax/torch':>11s} {'qdjax/best torch':>16s} {'load':>5s}"
    )
    results = []
    for widths in args.widths:
        for b in args.batch:
            r = bench_case(
                widths, b, repeats=args.repeats, steps=args.steps, warmup=args.warmup,
                min_round_s=args.min_round_s, torch_compile=args.torch_compile, threads=args.threads,
                torch_single_thread=args.torch_single_thread,
            )
            results.append(r)
            rate = r["steps_per_s"]
            line = f"{widths:8s} {b:5d} " + " ".join(f"{rate[c]:20.2f}" for c in cols)
            line += f" {r['ratio_qdjax_over_torch']:10.2f}x {r['ratio_qdjax_over_best_torch']:15.2f}x"
            line += f" {r['loadavg_1min_after']:5.1f}"
            print(line, flush=True)
    meta["machine"]["loadavg_after"] = os.getloadavg()
    meta["results"] = results
    print(f"load average before {meta['machine']['loadavg_before']}, after {meta['machine']['loadavg_after']}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(meta, f, indent=1)
    return meta


if __name__ == "__main__":
    main()
