"""The measurements of benchmarks/device_check.sh, one part per process, under a deadline.

    python benchmarks/device_check.py --part accelerator --json OUT/device_check.json --deadline EPOCH_S
    JAX_PLATFORMS=cpu python benchmarks/device_check.py --part cpu --json OUT/device_check.json --deadline EPOCH_S
    python benchmarks/device_check.py --part accelerator --quick --json /tmp/dc.json   # tiny, for tests

Part "accelerator" (the default device: the GPU where there is one), in order of importance:
ED throughput (`qdjax.benchmark.ed_throughput`, `EDConfig` defaults, batching "auto", i.e.
vectorized on a GPU) at N = 2 and batch 1024 in float64 and float32; one pix2pix training step
at batch 32 (authors' widths, `qdjax.benchmark.train_step_time`); the generator + ED inverse
check (`qdjax.inverse.check`, freshly initialised generator, batch 64); N = 4 at batch 1024;
then batches 1, 64 and 256 for every (N, dtype). Part "cpu" (run with JAX_PLATFORMS=cpu, so
"auto" takes the CPU layout): the baseline, float64 at N = 2 and 4, batches 1 and 64, float32 at
N = 2, batch 64, and the training step.

Each measurement: a first call (tracing, compilation, one run) and the median of a few timed
calls (fewer when a call is slow and the deadline near). The JSON file is rewritten after every
measurement (write and rename), and a measurement is marked "running" before it starts, so a
killed run still leaves every finished number and names the one it was in. A measurement that
would not fit before `--deadline` (seconds since the epoch) is recorded under "skipped" with the
reason. Flax/Optax missing: the training step and the inverse check are skipped and say so.
Peak device memory (`device.memory_stats()["peak_bytes_in_use"]`, over the process so far) is
recorded after every measurement; the batch-1024 programs run first, so the first entries
hold their peaks.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time
import traceback

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

from qdjax import backend, benchmark  # noqa: E402
from qdjax.config import EDConfig  # noqa: E402

#: Seconds a measurement needs at least to be started (compilation included); a measurement
#: whose estimate exceeds the time left is skipped.
MIN_START_S = {"full": 40.0, "quick": 0.0}


def ml_available() -> str | None:
    """None when Flax and Optax import, else why not."""
    try:
        import flax  # noqa: F401
        import optax  # noqa: F401
    except Exception as error:  # noqa: BLE001
        return f"{type(error).__name__}: {error}"
    return None


def plan(part: str, quick: bool) -> list[dict]:
    """The measurements of a part, most important first."""
    if quick:
        ed_cfg = {"grid": 16, "basis": 8, "orbitals": 4}
        big, small = [4], [1]
        cpu_batches = [1, 4]
        train = {"batch": 2, "image_size": 16}
        inverse_batch = 2
    else:
        ed_cfg = {}
        big, small = [1024], [1, 64, 256]
        cpu_batches = [1, 64]
        train = {"batch": 32, "image_size": 64}
        inverse_batch = 64

    def ed(n, dtype, b):
        return {"name": f"ed/{dtype}/N{n}/batch{b}", "kind": "ed", "N": n, "dtype": dtype, "batch": b,
                "config": ed_cfg}

    if part == "cpu":
        steps = [ed(2, "float64", b) for b in cpu_batches] + [ed(4, "float64", b) for b in cpu_batches]
        steps.append(ed(2, "float32", cpu_batches[-1]))
        steps.append({"name": f"train/batch{train['batch']}", "kind": "train", **train})
        return steps
    steps = [ed(2, "float64", big[0]), ed(2, "float32", big[0])]
    steps.append({"name": f"train/batch{train['batch']}", "kind": "train", **train})
    steps.append({"name": f"inverse/N2/batch{inverse_batch}", "kind": "inverse", "N": 2, "batch": inverse_batch,
                  "config": ed_cfg, "image_size": train["image_size"]})
    steps += [ed(4, "float64", big[0]), ed(4, "float32", big[0])]
    for n in (2, 4):
        for dtype in ("float64", "float32"):
            steps += [ed(n, dtype, b) for b in small]
    return steps


class Recorder:
    """The JSON file: {"parts": {part: {...}}}, rewritten after every change."""

    def __init__(self, path: pathlib.Path, part: str):
        self.path = path
        self.data = json.loads(path.read_text()) if path.exists() else {}
        self.data.setdefault("parts", {})
        self.part = self.data["parts"].setdefault(part, {})
        self.part.update({"measurements": {}, "skipped": {}, "failed": {}})

    def write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=_jsonable))
        os.replace(tmp, self.path)


def _jsonable(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


def _ed_config(step: dict) -> EDConfig:
    return EDConfig(dtype=step["dtype"], **step["config"])


def measure_ed(step: dict, repeats: int) -> dict:
    out = benchmark.ed_throughput(step["N"], _ed_config(step), step["batch"], repeats)
    out["layout"] = "sequential" if backend.sequential(out["batching"]) else "vectorized"
    return out


def _train_config(step: dict):
    from qdjax.ml import experiment

    return experiment.pix2pix_config("authors", "image70", batch_size=step["batch"], image_size=step["image_size"])


def measure_train(step: dict, repeats: int) -> dict:
    return {"widths": "authors", "image_size": step["image_size"],
            **benchmark.train_step_time(_train_config(step), repeats)}


def measure_inverse(step: dict, repeats: int) -> dict:
    """`qdjax.inverse.check` (generator n -> V, then ED of the proposals, one jitted graph) with
    a freshly initialised generator on ED densities of random potentials."""
    import jax.numpy as jnp

    from qdjax import ed, inverse, potentials
    from qdjax.ml import evaluate, scaling, train

    config = EDConfig(**step["config"])
    n, b = step["N"], step["batch"]
    V = potentials.random_potentials(list(range(b)), config)
    target = np.asarray(ed.ground_density(jnp.asarray(V), n, config))
    state = train.init_state(_train_config({"batch": 1, "image_size": step["image_size"]}), jax.random.key(0))
    scalers = evaluate.Scalers(scaling.fit_scaler(target, "density"), scaling.fit_scaler(None, "potential"))
    proposer = evaluate.generator_function(state, scalers)

    def call():
        return inverse.check(proposer, target, n, config).density

    times = benchmark.wall_times(call, 1)
    rest = benchmark.wall_times(call, repeats)
    median = float(np.median(rest))
    return {"N": n, "batch": b, "first_call_s": times[0], "compile_s": max(times[0] - median, 0.0),
            "median_s": median, "times_s": rest, "per_s": b / median, "device": jax.devices()[0].device_kind}


MEASURE = {"ed": measure_ed, "train": measure_train, "inverse": measure_inverse}


def run(part: str, path: pathlib.Path, deadline: float, quick: bool, repeats: int) -> dict:
    rec = Recorder(path, part)
    rec.part["machine"] = benchmark.machine()
    rec.part["started"] = time.time()
    rec.part["deadline"] = deadline
    rec.part["quick"] = quick
    steps = plan(part, quick)
    rec.part["plan"] = [s["name"] for s in steps]
    missing_ml = ml_available()
    if missing_ml:
        rec.part["ml"] = f"Flax/Optax not importable ({missing_ml}): training step and inverse check skipped"
        print(rec.part["ml"], flush=True)
    rec.write()
    min_start = MIN_START_S["quick" if quick else "full"]
    longest = 0.0  # longest measurement so far, s: the estimate for the next one
    for step in steps:
        name = step["name"]
        left = deadline - time.time()
        if missing_ml and step["kind"] in ("train", "inverse"):
            rec.part["skipped"][name] = f"Flax/Optax not importable: {missing_ml}"
            rec.write()
            continue
        need = max(min_start, 0.5 * longest)
        if left < need:
            rec.part["skipped"][name] = f"deadline: {left:.0f} s left, about {need:.0f} s needed"
            print(f"{name}: skipped ({rec.part['skipped'][name]})", flush=True)
            rec.write()
            continue
        rec.part["measurements"][name] = {"status": "running", "started": time.time()}
        rec.write()
        t0 = time.time()
        try:
            # fewer timed calls when the deadline is near
            r = repeats if left > 4 * need else 1
            result = MEASURE[step["kind"]](step, r)
            result["status"] = "done"
        except Exception as error:  # noqa: BLE001  (record and go on: the other numbers still count)
            result = {"status": "failed", "error": f"{type(error).__name__}: {error}"[:2000],
                      "traceback": traceback.format_exc()[-4000:]}
            rec.part["failed"][name] = result["error"]
        result["wall_s"] = time.time() - t0
        result["peak_bytes_in_use"] = benchmark.peak_memory_bytes()
        longest = max(longest, result["wall_s"])
        rec.part["measurements"][name] = result
        rec.write()
        if result["status"] == "done":
            per = result.get("per_s") or result.get("steps_per_s")
            unit = "steps/s" if step["kind"] == "train" else "instances/s"
            print(f"{name}: {per:.1f} {unit} (first call {result.get('first_call_s', result.get('first_s', 0)):.1f} s, "
                  f"peak {result['peak_bytes_in_use']} bytes)", flush=True)
        else:
            print(f"{name}: FAILED {result['error'][:300]}", flush=True)
    rec.part["finished"] = time.time()
    rec.write()
    return rec.data


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--part", choices=["accelerator", "cpu"], default="accelerator")
    p.add_argument("--json", required=True, help="results file (created or updated)")
    p.add_argument("--deadline", type=float, default=None,
                   help="seconds since the epoch after which nothing new starts (default: now + 300)")
    p.add_argument("--quick", action="store_true", help="tiny ED and network sizes, tiny batches (a test)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per measurement (default 3)")
    args = p.parse_args(argv)
    deadline = args.deadline if args.deadline is not None else time.time() + 300
    path = pathlib.Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    run(args.part, path, deadline, args.quick, args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
