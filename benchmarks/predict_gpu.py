"""A prediction on paper of batched ED throughput on one GPU, from programs compiled on a CPU.

For N electrons at the paper's defaults, in float64 and float32, this script

1. compiles the vectorized program (`EDConfig(batching="vectorized")`, traced as for a GPU:
   `qdjax.backend.platform` reports "gpu" while tracing, so the linear-algebra kernels are the
   batched ones an accelerator gets) at batch 1 and batch 8, and reads XLA's cost analysis
   (flops, bytes accessed) and memory analysis; per-instance numbers are the batch-8 minus
   batch-1 differences over 7;
2. counts the cost of one iteration of each while loop: XLA's cost analysis counts a while
   body once, so the program is compiled again with `jax.lax.while_loop` unrolled into one and
   into two applications of its body, and the difference is one iteration;
3. measures the iterations the solvers take on the paper's random potentials (LOBPCG for the
   orbitals, Davidson for the many-body states where the sector is solved iteratively), by
   recording `qdjax.linalg.Eigenpairs.iterations` from inside the program; a vectorized batch
   runs each while loop until its slowest lane is done, so the batch's sequential steps are
   the maximum over the potentials;
4. counts the operations a GPU would launch per while iteration and outside the loops (the
   top-level instructions in the compiled HLO: fusions, products, library calls; XLA:GPU fuses
   differently from XLA:CPU, so this is an estimate) and the eigendecompositions above 32 x 32
   (jaxlib's only library call here that is not a small batched kernel; `LARGE_SYEVD`);
5. combines them into a time per batch of `--batch` potentials on a card given by its peak
   rates, and writes everything to JSON.

The model and its constants are written out in the JSON and in docs/benchmarks.md ("H100
prediction"). Compile only: nothing runs at the predicted batch size.

    python benchmarks/predict_gpu.py                       # N = 2, float64 and float32
    python benchmarks/predict_gpu.py --electrons 2 4 --potentials 64 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import pathlib
import re
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from qdjax import backend, ed, fock, linalg, potentials  # noqa: E402
from qdjax.config import EDConfig  # noqa: E402

#: H100 SXM5 (NVIDIA H100 datasheet): dense FP64 34 TFLOP/s on the vector units, 67 TFLOP/s
#: FP64 tensor cores; FP32 67 TFLOP/s (non-tensor; float32 at Precision.HIGHEST does not use
#: TF32 tensor cores); HBM3 3.35 TB/s.
H100 = {
    "name": "NVIDIA H100 SXM5 (datasheet)",
    "float64_flops_per_s": {"optimistic": 67e12, "pessimistic": 34e12},
    "float32_flops_per_s": {"optimistic": 67e12, "pessimistic": 67e12},
    "hbm_bytes_per_s": 3.35e12,
    # time per kernel launch, dependent kernels back to back on one stream
    "launch_s": {"optimistic": 5e-6, "pessimistic": 10e-6},
    # one while iteration: the condition is evaluated on the device and its predicate copied
    # to the host before the next iteration is launched
    "while_sync_s": {"optimistic": 10e-6, "pessimistic": 30e-6},
    # one batched cuSOLVER eigendecomposition (cusolverDnXsyevBatched) of 1024 matrices of
    # 64 x 64: no measurement at hand; bracketed by the batched Jacobi solver's 9 ms for 128
    # matrices of 64 x 64 (jax-ml/jax#31368) scaled to 1024 (72 ms) and a tenth of that
    "syev_batched_1024_s": {"optimistic": 7e-3, "pessimistic": 72e-3},
    # cuSOLVER before 11.7.1 (CUDA 12.6.2) has no syevBatched: jaxlib then loops over the batch,
    # about 0.55 ms per 33 x 33 matrix (jax-ml/jax#31368: 563 ms for 1024)
    "syevd_per_matrix_s": 0.55e-3,
}

#: How jaxlib 0.11's GPU wrappers run the LAPACK routines of the CPU program for a batch
#: (jaxlib/gpu/solver_kernels_ffi.cc): syevd up to 32 columns by batched Jacobi (syevjBatched),
#: above by cusolverDnXsyevBatched where cuSOLVER >= 11.7.1, else one matrix after another;
#: geqrf (cuBLAS geqrfBatched), orgqr (a small-matrix batched kernel up to 128 x 128), potrf
#: (potrfBatched) and trsm batched. So only a large syevd is priced apart from a kernel launch.
LARGE_SYEVD = 32


@contextlib.contextmanager
def traced_for_gpu():
    """qdjax.backend.platform() reports "gpu" inside: the program is traced as for a GPU."""
    original = backend.platform
    backend.platform = lambda: "gpu"
    try:
        yield
    finally:
        backend.platform = original


@contextlib.contextmanager
def unrolled_while(times: int):
    """jax.lax.while_loop replaced by `times` applications of its body (cost counting only)."""
    original = jax.lax.while_loop

    def unrolled(cond, body, state):
        for _ in range(times):
            state = body(state)
        return state

    jax.lax.while_loop = unrolled
    try:
        yield
    finally:
        jax.lax.while_loop = original


def _program(n: int, config: EDConfig):
    return jax.jit(lambda V: ed._ground_states_batched(V, (n,), config, False)[0].interacting[0].energy)


def compile_program(n: int, config: EDConfig, batch: int, unroll: int | None = None):
    """The compiled vectorized program for a batch, as for a GPU (and with unrolled while loops
    if `unroll`)."""
    V = jax.ShapeDtypeStruct((batch, config.grid, config.grid), jnp.dtype(config.dtype))
    jax.clear_caches()  # qdjax's jitted functions would reuse a trace made under other patches
    with traced_for_gpu(), (unrolled_while(unroll) if unroll else contextlib.nullcontext()):
        t = time.perf_counter()
        compiled = _program(n, config).lower(V).compile()
    jax.clear_caches()
    return compiled, time.perf_counter() - t


def _cost(compiled) -> dict:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older JAX: one dict per module
        cost = cost[0]
    return {"flops": float(cost.get("flops", 0.0)), "bytes": float(cost.get("bytes accessed", 0.0))}


def _memory(compiled) -> dict:
    m = compiled.memory_analysis()
    return {k: int(getattr(m, k)) for k in ("argument_size_in_bytes", "output_size_in_bytes",
                                             "temp_size_in_bytes", "generated_code_size_in_bytes")}


def _op_kind(line: str) -> str | None:
    """The operation of one HLO instruction line ("fusion", "dot", "custom-call", ...)."""
    if "=" not in line or not line.lstrip().startswith(("%", "ROOT")):
        return None
    rest = line.split("=", 1)[1].lstrip()
    if rest.startswith("("):  # a tuple type: skip to its closing parenthesis
        depth = 0
        for i, ch in enumerate(rest):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0:
                rest = rest[i + 1:]
                break
    else:
        rest = rest.split(" ", 1)[1] if " " in rest else ""
    m = re.match(r"\s*([a-z][\w\-]*)\(", rest)
    return m.group(1) if m else None


_SKIP = {"parameter", "tuple", "get-tuple-element", "constant", "bitcast", "copy-start", "copy-done",
         "after-all", "partition-id", "replica-id"}


def _computations(hlo: str) -> dict[str, list[str]]:
    comps, name, body = {}, None, []
    for line in hlo.splitlines():
        head = re.match(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
        if head and not line.startswith(" "):
            name, body = head.group(1), []
            if line.startswith("ENTRY"):
                comps["__entry__"] = body
            comps[name] = body
        elif line.startswith("}"):
            name = None
        elif name is not None:
            body.append(line)
    return comps


def _library_calls(lines: list[str]) -> list[dict]:
    """LAPACK custom calls among `lines`: {"routine", "shape"} (the first operand's shape)."""
    out = []
    for line in lines:
        m = re.search(r'custom_call_target="([^"]+)"', line)
        if not m:
            continue
        target = m.group(1)
        routine = next((r for r in ("syevd", "orgqr", "geqrf", "potrf", "trsm", "getrf", "gesdd") if r in target),
                       target)
        shape = re.search(r"=\s*\(?\w+\[([\d,]*)\]", line)  # the (first) output's shape
        dims = [int(d) for d in shape.group(1).split(",") if d] if shape else []
        out.append({"routine": routine, "target": target, "shape": dims})
    return out


def _all_lines(comps: dict[str, list[str]], name: str, depth: int = 0) -> list[str]:
    """The lines of computation `name` and of every computation it calls (branches included)."""
    lines = list(comps.get(name, []))
    if depth < 8:
        for line in comps.get(name, []):
            if " while(" in line:
                continue  # a nested loop has its own entry
            for callee in re.findall(r"(?:to_apply|branch_computations=\{|true_computation|false_computation|calls)=?%([\w.\-]+)", line):
                lines += _all_lines(comps, callee, depth + 1)
    return lines


def _operations(comps: dict[str, list[str]], name: str) -> list[str]:
    """Kinds of the top-level operations of computation `name`; a conditional counts as the
    operations of its largest branch, a call as those of its callee."""
    ops = []
    for line in comps.get(name, []):
        kind = _op_kind(line)
        if kind is None or kind in _SKIP:
            continue
        if kind == "conditional":
            names = re.findall(r"%([\w.\-]+)", line.split("branch_computations=")[-1].split("}")[0]) \
                if "branch_computations=" in line else re.findall(r"(?:true|false)_computation=%?([\w.\-]+)", line)
            branches = [_operations(comps, b) for b in names]
            ops += max(branches, key=len) if branches else [kind]
        elif kind == "call":
            callee = re.search(r"to_apply=%?([\w.\-]+)", line)
            ops += _operations(comps, callee.group(1)) if callee else [kind]
        else:
            ops.append(kind)
    return ops


def while_loops(hlo: str) -> list[dict]:
    """For each while loop of a compiled program's HLO text: the top-level operations of its
    body (a GPU's kernel launches, roughly; nested loops counted as one) and the library calls
    in it."""
    comps = _computations(hlo)
    loops = []
    for name, lines in comps.items():
        if name == "__entry__":
            continue
        for line in lines:
            m = re.search(r"\swhile\(.*body=%?([\w.\-]+)", line)
            if not m:
                continue
            ops = _operations(comps, m.group(1))
            loops.append({"body": m.group(1), "operations": len(ops),
                          "by_kind": {k: ops.count(k) for k in sorted(set(ops))},
                          "library_calls": _library_calls(_all_lines(comps, m.group(1)))})
    return loops


def entry_library_calls(hlo: str) -> list[dict]:
    """The library calls of a compiled program's HLO text outside its while loops."""
    comps = _computations(hlo)
    return _library_calls(comps.get("__entry__", []))


def solver_iterations(n: int, config: EDConfig, V: np.ndarray) -> dict:
    """Iterations of LOBPCG (orbitals) and Davidson (many-body, where used) per potential,
    recorded from `qdjax.linalg.Eigenpairs.iterations` inside the sequential program (sent to
    the host with `jax.debug.callback`)."""
    recorded = {"lobpcg": [], "davidson": []}
    originals = {name: getattr(linalg, name) for name in recorded}

    def recording(name):
        def wrapper(*args, **kwargs):
            result = originals[name](*args, **kwargs)
            jax.debug.callback(lambda it: recorded[name].append(int(it)), result.iterations)
            return result
        return wrapper

    for name in originals:
        setattr(linalg, name, recording(name))
    try:
        sequential = config.replace(batching="sequential")

        def one(v):
            return ed._ground_states_single(v, (n,), sequential, False).interacting[0].energy

        with backend.full_precision(jnp.dtype(config.dtype)):
            f = jax.jit(lambda Vs: jax.lax.map(one, Vs))
            jax.block_until_ready(f(jnp.asarray(V, config.dtype)))
        jax.effects_barrier()
    finally:
        for name, fn in originals.items():
            setattr(linalg, name, fn)
    return {k: {"median": float(np.median(v)), "max": int(np.max(v)), "min": int(np.min(v)),
                "potentials": len(v)} for k, v in recorded.items() if v}


def analyse(n: int, dtype: str, potentials_count: int) -> dict:
    config = EDConfig(dtype=dtype, batching="vectorized")
    row = {"N": n, "dtype": dtype, "sector_dimension": fock.sector_dimension(config.orbitals, n)}
    print(f"N = {n}, {dtype}: compiling (batch 1 and 8, while loops as they are and unrolled) ...", flush=True)
    c1, t1 = compile_program(n, config, 1)
    c8, t8 = compile_program(n, config, 8)
    u1, _ = compile_program(n, config, 8, unroll=1)
    u2, _ = compile_program(n, config, 8, unroll=2)
    cost1, cost8, cu1, cu2 = _cost(c1), _cost(c8), _cost(u1), _cost(u2)
    mem1, mem8 = _memory(c1), _memory(c8)
    row["compile_s_cpu"] = {"batch_1": t1, "batch_8": t8}
    row["cost_batch_1"], row["cost_batch_8"] = cost1, cost8
    row["cost_unrolled_1_batch_8"], row["cost_unrolled_2_batch_8"] = cu1, cu2
    per = {k: (cost8[k] - cost1[k]) / 7 for k in cost1}
    body = {k: (cu2[k] - cu1[k]) / 8 for k in cu1}
    row["per_instance_once"] = per  # every while body counted once
    row["per_instance_per_iteration"] = body  # one more iteration of every while loop
    row["memory_batch_1"], row["memory_batch_8"] = mem1, mem8
    row["memory_per_instance_bytes"] = (mem8["temp_size_in_bytes"] + mem8["argument_size_in_bytes"]
                                        + mem8["output_size_in_bytes"] - mem1["temp_size_in_bytes"]
                                        - mem1["argument_size_in_bytes"] - mem1["output_size_in_bytes"]) / 7
    row["while_loops"] = while_loops(c8.as_text())
    row["entry_library_calls"] = entry_library_calls(c8.as_text())
    row["entry_operations"] = len(_operations(_computations(c8.as_text()), "__entry__"))
    V = potentials.random_potentials(list(range(potentials_count)), config)
    t = time.perf_counter()
    row["iterations"] = solver_iterations(n, config, V)
    row["iterations_measured_s"] = time.perf_counter() - t
    print(json.dumps({k: row[k] for k in ("per_instance_once", "per_instance_per_iteration", "iterations",
                                          "memory_per_instance_bytes")}, default=float), flush=True)
    return row


def predict(row: dict, batch: int, card: dict = H100) -> dict:
    """Time per batch on `card`, optimistic and pessimistic, from one `analyse` row.

    steps = the largest iteration count measured (a vectorized loop waits for its slowest lane;
    the paper-potential maximum over a few hundred potentials stands in for a batch's);
    flops and bytes per instance = once-counted program + (steps - 1) x one iteration;
    t_compute = max(batch x flops / peak, batch x bytes / HBM bandwidth);
    t_launch = steps x (operations per iteration x launch + while sync) + operations outside
      the loops x launch;
    t_syev = eigendecompositions above 32 x 32 per batch (outside the loops, plus steps x those
      inside) x the time of one batched call;
    time per batch: optimistic, the bound max(t_flops, t_bytes, t_launch, t_syev) (everything
    overlaps); pessimistic, max(t_flops, t_bytes) + t_launch + t_syev (dependent kernels one
    after another); instances/s = batch / time. `legacy_cusolver_instances_per_s`: the
    pessimistic case with jaxlib's loop over the batch for the large eigendecompositions
    (cuSOLVER before 11.7.1).
    """
    dtype = row["dtype"]
    steps = max((v["max"] for v in row["iterations"].values()), default=1)
    once, it = row["per_instance_once"], row["per_instance_per_iteration"]
    flops = once["flops"] + (steps - 1) * it["flops"]
    bytes_ = once["bytes"] + (steps - 1) * it["bytes"]
    loops = row["while_loops"]
    ops_per_iteration = sum(lp["operations"] for lp in loops)

    def large_syevd(calls):
        return sum(1 for c in calls if c["routine"] == "syevd" and c["shape"] and c["shape"][-1] > LARGE_SYEVD)

    large_in_loops = sum(large_syevd(lp["library_calls"]) for lp in loops)
    large_once = large_syevd(row["entry_library_calls"])
    large_calls = large_once + steps * large_in_loops
    out = {"batch": batch, "steps": steps, "flops_per_instance": flops, "bytes_per_instance": bytes_,
           "operations_per_iteration": ops_per_iteration, "large_syevd_calls_per_batch": large_calls,
           "t_large_syevd_legacy_loop_s": large_calls * batch * card["syevd_per_matrix_s"]}
    for case in ("optimistic", "pessimistic"):
        peak = card[f"{dtype}_flops_per_s"][case]
        t_flops = batch * flops / peak
        t_bytes = batch * bytes_ / card["hbm_bytes_per_s"]
        t_launch = (steps * (ops_per_iteration * card["launch_s"][case] + card["while_sync_s"][case])
                    + row["entry_operations"] * card["launch_s"][case])
        t_syev = large_calls * card["syev_batched_1024_s"][case] * batch / 1024
        if case == "optimistic":  # everything overlaps: the largest term
            t = max(t_flops, t_bytes, t_launch, t_syev)
        else:  # nothing overlaps: dependent kernels one after another
            t = max(t_flops, t_bytes) + t_launch + t_syev
        out[case] = {"t_flops_s": t_flops, "t_bytes_s": t_bytes, "t_launch_s": t_launch, "t_large_syevd_s": t_syev,
                     "time_per_batch_s": t, "instances_per_s": batch / t}
    legacy = out["pessimistic"]["time_per_batch_s"] - out["pessimistic"]["t_large_syevd_s"] \
        + out["t_large_syevd_legacy_loop_s"]
    out["legacy_cusolver_instances_per_s"] = batch / legacy
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--electrons", type=int, nargs="+", default=[2])
    p.add_argument("--dtypes", nargs="+", default=["float64", "float32"], choices=["float64", "float32"])
    p.add_argument("--batch", type=int, default=1024, help="batch size predicted for")
    p.add_argument("--potentials", type=int, default=256, help="paper potentials whose iterations are measured")
    p.add_argument("--json", default=None,
                   help="output file (default benchmarks/results/predict_gpu_<date>.json)")
    args = p.parse_args(argv)
    path = pathlib.Path(args.json or ROOT / "benchmarks" / "results" / f"predict_gpu_{datetime.date.today()}.json")
    results = {"command": "python " + " ".join(sys.argv), "jax": jax.__version__,
               "cpu_devices": [str(d) for d in jax.devices()], "card": H100, "rows": []}
    for n in args.electrons:
        for dtype in args.dtypes:
            row = analyse(n, dtype, args.potentials)
            row["prediction"] = predict(row, args.batch)
            results["rows"].append(row)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(results, indent=1, default=float))
            pr = row["prediction"]
            print(f"N = {n}, {dtype}, batch {args.batch}: {pr['steps']} sequential steps, "
                  f"{pr['flops_per_instance'] / 1e9:.2f} GFLOP and {pr['bytes_per_instance'] / 1e6:.1f} MB per instance, "
                  f"{pr['operations_per_iteration']} operations per iteration, "
                  f"{pr['large_syevd_calls_per_batch']} eigendecompositions above 32 x 32 per batch; predicted {pr['pessimistic']['instances_per_s']:.0f} - {pr['optimistic']['instances_per_s']:.0f} "
                  f"instances/s", flush=True)
    print(f"written to {path}")
    return results


if __name__ == "__main__":
    main()
