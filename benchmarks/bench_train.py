"""pix2pix training speed: qdjax (Flax NNX + jax.jit) against the same networks in PyTorch.

    python benchmarks/bench_train.py --torch-single-thread --torch-malloc --out bench_train.json
    python benchmarks/bench_train.py --widths authors --batch 1 32 --repeats 7 --steps 10

For each width set ("authors": generator 16..128 and discriminator 16..128 of the authors'
public code, the `Pix2PixConfig` default; "pix2pix": the original 64..512) and each batch
size, both frameworks train from the same initial weights (the qdjax ones, copied into the
PyTorch modules) on the same random [-1, 1] image pair. Each framework runs in its own
worker process (started by this one, which only sends "train n steps" and collects the
times), so neither's thread pools, allocator state or caches share a process with the
other's; ``--in-process`` runs both in this process instead. Only one framework trains at
a time. After warm-up (compilation and `--warmup` steps, not timed), `--repeats` rounds
each time the same number of consecutive steps (at least `--steps`, more if a round of the
faster framework would be shorter than `--min-round-s`) of one framework and then of the
other (the order alternates between rounds, so a change of machine load hits both; each
round starts after `--pause-s` idle seconds); the reported rate is the median over rounds
of steps / wall time, timed inside the worker. A qdjax round ends with
``jax.block_until_ready`` on the state, so asynchronous dispatch cannot hide work. The step
is `qdjax.ml.train.make_train_step` as `qdjax.ml.train.fit` calls it; the PyTorch step is
`torch_pix2pix.Pix2PixTrainer` (eager, and with ``--torch-compile`` also under
``torch.compile``).

Threads: both frameworks get the same number of threads (``--threads``, default: the CPUs
this process may run on). PyTorch: ``torch.set_num_threads``; with ``--torch-single-thread``
the eager PyTorch step is also timed with 1 thread: on a machine shared with other jobs,
PyTorch's OpenMP parallel regions wait for descheduled threads and one thread can be the
faster setting, so "best torch" is the faster of all PyTorch variants timed. XLA's CPU backend sizes its
intra-op pool from the visible CPUs; the count is recorded. The JSON (``--out``) records
the machine, the load average before and after, versions, thread settings and XLA_FLAGS,
and every rate also as useful GFLOP/s (`roofline.step_flops`: the same arithmetic for both
frameworks); ``--roofline`` measures the CPU's float32 FMA peak in the same run
(`roofline.fma_peak_gflops`) and prints each rate as a fraction of it.
Needs PyTorch (CPU build), which is not a dependency of qdjax.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
import roofline  # noqa: E402  (benchmarks/roofline.py)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


#: glibc malloc settings of the ``--torch-malloc`` worker: no mmap for large blocks and no
#: trimming, so that freed activation and gradient buffers are reused without new page
#: faults. Eager PyTorch allocates and frees them every step; on the KVM machines of
#: docs/benchmarks.md the first touch of fresh pages made it about 1.7x slower.
TORCH_MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 40)}


def _framework(name: str, widths: str, batch: int, threads: int, seed: int):
    """Sets up one framework's training step on the benchmark's data and initial weights.

    `name`: "qdjax", "torch" (eager) or "torch_compile". Returns (first_call_s, run), where
    ``run(n, n_threads)`` trains n consecutive steps and returns their wall time in seconds,
    measured once they are done (``jax.block_until_ready`` for qdjax). Both frameworks draw the same [-1, 1] images from
    `seed` and start from the same weights (the qdjax ones, copied into the PyTorch modules).
    """
    import jax

    from qdjax.ml import experiment, train

    config = experiment.pix2pix_config(widths, "image70", batch)
    s = config.generator.image_size
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (batch, s, s, 1)).astype(np.float32)
    y = rng.uniform(-1, 1, (batch, s, s, 1)).astype(np.float32)
    state = train.init_state(config, jax.random.key(seed))
    if name == "qdjax":
        step = train.make_train_step(config)
        batch_j = (jax.device_put(x), jax.device_put(y))
        key = jax.random.key(seed + 1)
        t = time.perf_counter()
        state, _ = step(state, batch_j, key)
        jax.block_until_ready(state)
        first = time.perf_counter() - t

        def run(n, n_threads):  # XLA's pool is sized at start-up; n_threads is fixed
            nonlocal state
            t = time.perf_counter()
            for _ in range(n):
                state, metrics = step(state, batch_j, key)
            jax.block_until_ready((state, metrics))
            return time.perf_counter() - t

        return first, run

    import torch

    import torch_pix2pix as tp

    torch.set_num_threads(threads)
    gen, disc = tp.build(config)
    tp.load_jax_params(gen, disc, *jax.device_get((state.g_params, state.d_params)))
    trainer = tp.Pix2PixTrainer(config, gen, disc, compile=name == "torch_compile")
    x_t = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    y_t = torch.from_numpy(np.ascontiguousarray(y.transpose(0, 3, 1, 2)))
    t = time.perf_counter()
    trainer.step(x_t, y_t)
    first = time.perf_counter() - t

    def run(n, n_threads):
        torch.set_num_threads(n_threads)
        t = time.perf_counter()
        for _ in range(n):
            trainer.step(x_t, y_t)
        return time.perf_counter() - t

    return first, run


def _worker(name: str, widths: str, batch: int, threads: int, seed: int) -> None:
    """Worker process of one framework (``--worker``): sets up, prints {"first_call_s": s},
    then answers each stdin line {"steps": n, "threads": t} with {"s": seconds for the n
    steps}, one JSON line each, until stdin closes."""
    import qdjax  # noqa: F401  (float64 mode on, as for every qdjax user; the networks stay float32)

    first, run = _framework(name, widths, batch, threads, seed)
    print(json.dumps({"first_call_s": first}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        print(json.dumps({"s": run(cmd["steps"], cmd["threads"])}), flush=True)


class _Remote:
    """One framework in its own worker process: ``first_call_s`` and ``run(n, n_threads)``
    like `_framework`, and ``close()``."""

    def __init__(self, name, widths, batch, threads, seed, env=None):
        argv = [sys.executable, os.path.abspath(__file__), "--worker", name, "--widths", widths,
                "--batch", str(batch), "--threads", str(threads), "--seed", str(seed)]
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}
        )
        self.first_call_s = self._read()["first_call_s"]

    def _read(self):
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"benchmark worker {self.proc.args[3]} exited with {self.proc.wait()}")
        return json.loads(line)

    def run(self, n, n_threads):
        self.proc.stdin.write(json.dumps({"steps": n, "threads": n_threads}) + "\n")
        self.proc.stdin.flush()
        return self._read()["s"]

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


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
    torch_malloc: bool = False,
    in_process: bool = False,
    pause_s: float = 0.25,
    seed: int = 0,
):
    """Times one (widths, batch) case in both frameworks; returns a JSON-ready dict.

    Each framework runs in its own worker process (`_Remote`), so that neither's thread
    pools, allocator or caches share a process with the other's; only one trains at a time,
    with `pause_s` of idle time between rounds. ``in_process=True`` runs both in this
    process instead (the protocol of runs 1-4 in docs/benchmarks.md). ``torch_malloc``
    adds a second eager PyTorch worker with glibc's allocator told not to return memory to
    the system (`TORCH_MALLOC_ENV`); it needs worker processes.
    """
    if torch_malloc and in_process:
        raise ValueError("torch_malloc needs one worker process per framework (not in_process)")
    names = ["qdjax", "torch"] + (["torch_compile"] if torch_compile else [])
    names += ["torch_malloc"] if torch_malloc else []
    runs, first, remotes = {}, {}, []
    try:
        for name in names:
            if in_process:
                first[name], runs[name] = _framework(name, widths, batch, threads, seed)
            else:
                kind, env = ("torch", TORCH_MALLOC_ENV) if name == "torch_malloc" else (name, None)
                remotes.append(_Remote(kind, widths, batch, threads, seed, env))
                first[name], runs[name] = remotes[-1].first_call_s, remotes[-1].run
        runners = {name: (lambda n, run=run: run(n, threads)) for name, run in runs.items()}
        if torch_single_thread:
            runners["torch_1thread"] = lambda n: runs["torch"](n, 1)
        warmup = max(warmup, 1)
        warm = {name: run(warmup) / warmup for name, run in runners.items()}
        # same number of steps per round for every framework, and rounds of >= min_round_s
        steps = max(steps, math.ceil(min_round_s / max(min(warm.values()), 1e-6)))
        order0 = list(runners)
        rates = {name: [] for name in order0}
        for r in range(repeats):
            for name in order0 if r % 2 == 0 else order0[::-1]:
                time.sleep(pause_s)
                rates[name].append(steps / runners[name](steps))
    finally:
        for remote in remotes:
            remote.close()
    from qdjax.ml import experiment

    config = experiment.pix2pix_config(widths, "image70", batch)
    out = {
        "widths": widths,
        "batch": batch,
        "generator_filters": list(config.generator.filters),
        "discriminator_filters": list(config.discriminator.filters),
        "processes": "one" if in_process else "one per framework",
        "first_call_s": first,
        "steps_per_round": steps,
        "loadavg_1min_after": os.getloadavg()[0],
        "steps_per_s": {name: float(np.median(v)) for name, v in rates.items()},
        "steps_per_s_all": rates,
    }
    rate = out["steps_per_s"]
    out["ratio_qdjax_over_torch"] = rate["qdjax"] / rate["torch"]
    out["ratio_qdjax_over_best_torch"] = rate["qdjax"] / max(v for k, v in rate.items() if k != "qdjax")
    # useful arithmetic (benchmarks/roofline.py): the same for every framework, so the rates
    # in GFLOP/s compare as the step rates do, and set against the CPU's peak
    out["useful_gflop_per_step"] = roofline.step_flops(config) / 1e9
    out["useful_gflops"] = {name: v * out["useful_gflop_per_step"] for name, v in rate.items()}
    if torch_compile:
        out["ratio_qdjax_over_torch_compile"] = rate["qdjax"] / rate["torch_compile"]
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
    parser.add_argument(
        "--torch-malloc", action="store_true",
        help="also time eager PyTorch in a worker whose glibc allocator keeps freed memory "
        "(TORCH_MALLOC_ENV)",
    )
    parser.add_argument(
        "--in-process", action="store_true",
        help="run both frameworks in this process (default: one worker process per framework)",
    )
    parser.add_argument("--pause-s", type=float, default=0.25, help="idle seconds before each timed round")
    parser.add_argument("--seed", type=int, default=0, help="seed of the images and initial weights")
    parser.add_argument(
        "--roofline", action="store_true",
        help="also measure the CPU's float32 FMA peak on --threads cores (benchmarks/roofline.py) "
        "and print each rate as a fraction of it",
    )
    parser.add_argument("--out", help="write the results as JSON to this file")
    parser.add_argument("--worker", choices=["qdjax", "torch", "torch_compile"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args.worker, args.widths[0], args.batch[0], args.threads, args.seed)
        return {}

    import flax
    import jax
    import jaxlib
    import optax
    import torch

    import qdjax  # noqa: F401  (turns on float64 mode, as for every qdjax user; the networks stay float32)

    torch.set_num_threads(args.threads)
    peak = roofline.fma_peak_gflops(args.threads) if args.roofline else None
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
            "MALLOC_MMAP_MAX_": os.environ.get("MALLOC_MMAP_MAX_", ""),
            "MALLOC_TRIM_THRESHOLD_": os.environ.get("MALLOC_TRIM_THRESHOLD_", ""),
        },
        "settings": {
            "repeats": args.repeats, "min_steps": args.steps, "min_round_s": args.min_round_s, "warmup": args.warmup,
            "processes": "one" if args.in_process else "one per framework", "pause_s": args.pause_s,
            "seed": args.seed, "torch_malloc_env": TORCH_MALLOC_ENV if args.torch_malloc else None,
        },
        "fma_peak_gflops": peak,
    }
    print(
        f"{meta['machine']['cpu']}, {meta['machine']['cpus_visible']} CPUs, load {meta['machine']['loadavg_before']}; "
        f"jax {jax.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads)",
        flush=True,
    )
    cols = ["qdjax", "torch"] + (["torch_compile"] if args.torch_compile else [])
    cols += ["torch_1thread"] if args.torch_single_thread else []
    cols += ["torch_malloc"] if args.torch_malloc else []
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
                torch_single_thread=args.torch_single_thread, torch_malloc=args.torch_malloc,
                in_process=args.in_process, pause_s=args.pause_s, seed=args.seed,
            )
            results.append(r)
            rate = r["steps_per_s"]
            line = f"{widths:8s} {b:5d} " + " ".join(f"{rate[c]:20.2f}" for c in cols)
            line += f" {r['ratio_qdjax_over_torch']:10.2f}x {r['ratio_qdjax_over_best_torch']:15.2f}x"
            line += f" {r['loadavg_1min_after']:5.1f}"
            print(line, flush=True)
            if peak:
                best = max(v for k, v in r["useful_gflops"].items() if k != "qdjax")
                r["fraction_of_peak"] = {k: v / peak for k, v in r["useful_gflops"].items()}
                print(
                    f"{'':14s} useful arithmetic {r['useful_gflop_per_step']:.3f} GFLOP/step: qdjax "
                    f"{r['useful_gflops']['qdjax']:.0f} GFLOP/s ({r['useful_gflops']['qdjax'] / peak:.0%} of the "
                    f"{peak:.0f} GFLOP/s FMA peak), best PyTorch {best:.0f} ({best / peak:.0%})",
                    flush=True,
                )
    meta["machine"]["loadavg_after"] = os.getloadavg()
    meta["results"] = results
    print(f"load average before {meta['machine']['loadavg_before']}, after {meta['machine']['loadavg_after']}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(meta, f, indent=1)
    return meta


if __name__ == "__main__":
    main()
