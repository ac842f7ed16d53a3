"""Throughput of qdjax's exact diagonalisation against the NumPy/SciPy/PySCF peer pipeline.

For N = 1..4 at the paper's defaults (L = 30 nm, grid 64, basis 32, 8 orbitals, GaAs) and the
paper's random potentials (qdjax.potentials.random_potentials), measured in one run:

- qdjax per stage, each stage jitted on its own and batched as qdjax.ed batches: single-particle
  (orbitals and h1 = U^T H0 U), Coulomb (orbitals on the grid and (pq|rs)), Fock space (many-body
  Hamiltonian, ground manifold, 1-RDM), density; and end to end through the public
  qdjax.ed.ground_state; batch sizes 1, 4, 16, 64, 256, each covering at least the
  --peer-potentials potentials the peer solves (smaller batches in consecutive calls);
- the peer pipeline (benchmarks/peer_ed.py: scipy.linalg.eigh of the lowest K, NumPy FFT
  Coulomb, pyscf.fci.direct_spin1) one potential after another, per stage and end to end, on
  the same potentials;
- the end-to-end ratio from interleaved rounds: each round times the peer, then qdjax at every
  batch size, on the same potentials; the ratio is the median of the per-round ratios;
- agreement: PySCF FCI on qdjax's own integrals against qdjax's energy (must agree to 1e-8 eV),
  and the two independent pipelines end to end (energies, densities);
- float32: the same end-to-end throughput and the error against float64.

Thread settings are the same for both sides: `--threads 1` pins the process to one core
(os.sched_setaffinity) and sets OMP/OpenBLAS/MKL threads to 1; `--threads 2` allows both cores.
Both are set before NumPy, SciPy or JAX are imported.

Extra modes: `--sharding` (batched ED sharded over jax.sharding meshes of 2 and 8 simulated CPU
devices, checked against one device) and `--large` (N = 5, 6 and 12-16 orbitals with the
iterative many-body solver: sizes, times, memory).

Command (results as JSON on stdout's last line and in --json):
    python benchmarks/bench_ed.py --threads 1 --json /tmp/bench_ed.json
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time


def _configure_threads(threads: int, devices: int) -> None:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    if threads == 1 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    if devices > 1:
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}"
        )


def _parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1, choices=(1, 2))
    p.add_argument("--electrons", type=int, nargs="+", default=[1, 2, 3, 4])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16, 64, 256])
    p.add_argument("--repeats", type=int, default=5, help="timed repeats (fewer for large batches)")
    p.add_argument("--peer-potentials", type=int, default=8, help="potentials the peer solves per repeat")
    p.add_argument("--float32-batches", type=int, nargs="*", default=[16], help="batch sizes also timed in float32")
    p.add_argument("--sharding", action="store_true", help="multi-device mode (8 simulated CPU devices)")
    p.add_argument("--large", action="store_true", help="N = 5, 6 and 12-16 orbitals")
    p.add_argument("--json", default=None, help="write the results here")
    return p.parse_args(argv)


ARGS = _parse() if __name__ == "__main__" else None
if ARGS is not None:
    _configure_threads(ARGS.threads, 8 if ARGS.sharding else 1)

import numpy as np  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import qdjax  # noqa: E402
from qdjax import backend, basis, benchmark, coulomb, ed, fock, potentials  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peer_ed  # noqa: E402


def _median_time(fn, repeats: int) -> tuple[float, list[float]]:
    times = benchmark.wall_times(fn, repeats)
    return float(np.median(times)), times


def _repeats_for(batch: int, repeats: int) -> int:
    """All repeats up to batch 16, half of them at 64, 2 at 256."""
    return repeats if batch <= 16 else max(2, repeats // 2) if batch <= 64 else 2


def stage_functions(config: qdjax.EDConfig, n: int):
    """The four stages of qdjax.ed, each jitted on its own and batched as qdjax.ed batches."""
    layout = backend.sequential(config.batching)

    def m(f, xs):  # the batching of qdjax.ed.ground_state
        return ed.map_batch(f, xs, layout)

    single = jax.jit(lambda V: m(lambda v: ed._orbitals_and_h1(v, config)[:2], V))
    coul = jax.jit(lambda C: m(lambda c: coulomb.coulomb_tensor(basis.on_grid(c, config), config), C))
    many = jax.jit(lambda H, E: m(lambda a: ed._many_body_state(a[0], a[1], n, config)[:2], (H, E)))
    dens = jax.jit(lambda G, C: m(lambda a: ed.density_from_rdm1(a[0], a[1], config), (G, C)))
    return single, coul, many, dens


def covered(b: int, count: int) -> int:
    """Potentials a timing round at batch size b runs: `count` rounded up to whole batches,
    at least one batch."""
    return max(b, -(-count // b) * b)


def chunks(V: np.ndarray, b: int, count: int) -> list[np.ndarray]:
    """The batches of size b a timing round runs: the first `covered(b, count)` potentials of
    V in consecutive batches, so that every batch size covers the `count` potentials the peer
    solves (a batch of 1 is not timed on one potential alone)."""
    total = covered(b, count)
    if total > V.shape[0]:
        raise ValueError(f"need {total} potentials for batch {b}, got {V.shape[0]}")
    return [V[i : i + b] for i in range(0, total, b)]


def _round_time(fn, inputs) -> float:
    """Wall time in s of fn on every element of inputs, one after another, each waited for."""
    t = time.perf_counter()
    for x in inputs:
        jax.block_until_ready(fn(x))
    return time.perf_counter() - t


def bench_qdjax(batches: list[np.ndarray], n: int, config: qdjax.EDConfig, repeats: int) -> dict:
    """Per-stage instances per second over the batches (each (b, grid, grid)), each stage
    timed on all of them in a round; median over rounds."""
    count = sum(len(v) for v in batches)
    single, coul, many, dens = stage_functions(config, n)
    inputs = []
    for v in batches:
        Vj = jnp.asarray(v, dtype=config.dtype)
        orbitals, h1 = single(Vj)
        eri = coul(orbitals.coefficients)
        energy, gamma = many(h1, eri)
        jax.block_until_ready(dens(gamma, orbitals.coefficients))
        inputs.append((Vj, orbitals.coefficients, h1, eri, gamma))
    r = _repeats_for(len(batches[0]), repeats)
    out = {}
    for name, fn in (
        ("single_particle", lambda a: single(a[0])),
        ("coulomb", lambda a: coul(a[1])),
        ("fock", lambda a: many(a[2], a[3])),
        ("density", lambda a: dens(a[4], a[1])),
    ):
        out[name] = count / float(np.median([_round_time(fn, inputs) for _ in range(r)]))
    out["repeats"] = r
    return out


def end_to_end_rounds(V: np.ndarray, n: int, config: qdjax.EDConfig, batch_sizes, count: int,
                      rounds: int) -> dict:
    """End to end, the peer and qdjax side by side: each round times the peer on the first
    `count` potentials (one after another), then qdjax.ed.ground_state at every batch size on
    `chunks` of the same potentials. Instances per second and qdjax / peer ratios per round;
    the medians over rounds are what is reported, so a slower minute of a shared machine
    weighs on both sides alike."""
    peer_ed.ground_state(V[0], n)  # tables, imports
    work = {b: [jnp.asarray(v, dtype=config.dtype) for v in chunks(V, b, count)] for b in batch_sizes}
    for b, inputs in work.items():  # compile, and the dense redo of any unconverged potential
        for x in inputs:
            jax.block_until_ready(ed.ground_state(x, n, config).energy)
    rows = []
    for _ in range(rounds):
        row = {"peer": count / _round_time(lambda v: peer_ed.ground_state(v, n)["energy"], V[:count])}
        for b, inputs in work.items():
            per_s = sum(len(x) for x in inputs) / _round_time(lambda x: ed.ground_state(x, n, config).energy, inputs)
            row[b] = {"per_s": per_s, "ratio": per_s / row["peer"]}
        rows.append(row)
    med = lambda values: float(np.median(values))  # noqa: E731
    return {
        "peer_per_s": med([r["peer"] for r in rows]),
        "qdjax_per_s": {b: med([r[b]["per_s"] for r in rows]) for b in batch_sizes},
        "ratio": {b: med([r[b]["ratio"] for r in rows]) for b in batch_sizes},
        "rounds": rows,
    }


def bench_peer(V: np.ndarray, n: int, repeats: int) -> dict:
    """Peer pipeline, one potential after another: per-stage and total instances per second."""
    peer_ed.ground_state(V[0], n)  # tables, imports
    per = {k: [] for k in ("single_particle", "coulomb", "fci", "density", "total")}
    for _ in range(repeats):
        for v in V:
            t = time.perf_counter()
            gs = peer_ed.ground_state(v, n)
            total = time.perf_counter() - t
            for k in ("single_particle", "coulomb", "fci", "density"):
                per[k].append(gs["timings"][k])
            per["total"].append(total)
    out = {k: 1.0 / float(np.median(t)) for k, t in per.items()}
    out["median_ms"] = {k: 1e3 * float(np.median(t)) for k, t in per.items()}
    out["min_ms"] = {k: 1e3 * float(np.min(t)) for k, t in per.items()}
    return out


def agreement(V: np.ndarray, n: int, config: qdjax.EDConfig) -> dict:
    """PySCF FCI on qdjax's integrals vs qdjax; peer end to end vs qdjax end to end."""
    gs = ed.ground_state(jnp.asarray(V), n, config)
    ints = ed.integrals(jnp.asarray(V), config)
    same, e2e_e, e2e_n = [], [], []
    for i, v in enumerate(V):
        e_fci, _ = peer_ed.fci(np.asarray(ints.h1[i]), np.asarray(ints.eri[i]), n)
        same.append(abs(e_fci - float(gs.energy[i])))
        peer = peer_ed.ground_state(v, n)
        e2e_e.append(abs(peer["energy"] - float(gs.energy[i])))
        e2e_n.append(float(np.abs(peer["density"] - np.asarray(gs.density[i])).max() / peer["density"].max()))
    dense = ed.ground_state(jnp.asarray(V), n, config.replace(eigensolver="dense"))
    return {
        "pyscf_on_qdjax_integrals_max_abs_eV": max(same),
        "peer_end_to_end_energy_max_abs_eV": max(e2e_e),
        "peer_end_to_end_density_max_rel": max(e2e_n),
        "iterative_vs_dense_energy_max_abs_eV": float(jnp.abs(gs.energy - dense.energy).max()),
        "iterative_vs_dense_density_max_rel": float(
            jnp.abs(gs.density - dense.density).max() / jnp.abs(dense.density).max()
        ),
    }


def float32_error(V: np.ndarray, n: int, config: qdjax.EDConfig) -> dict:
    g64 = ed.ground_state(jnp.asarray(V), n, config)
    g32 = ed.ground_state(jnp.asarray(V, dtype=jnp.float32), n, config.replace(dtype="float32"))
    return {
        "energy_max_abs_eV": float(jnp.abs(g32.energy.astype(jnp.float64) - g64.energy).max()),
        "density_max_rel": float(
            jnp.abs(g32.density.astype(jnp.float64) - g64.density).max() / jnp.abs(g64.density).max()
        ),
    }


#: Facts of the machine (also used by bench_potentials.py).
machine = benchmark.machine


def run_paper(args) -> dict:
    config = qdjax.EDConfig()
    results = {"config": "EDConfig() (paper defaults)", "threads": args.threads, "N": {}}
    count = args.peer_potentials
    needed = max(covered(b, count) for b in list(args.batches) + list(args.float32_batches))
    V_all = potentials.random_potentials(list(range(needed)), config)
    for n in args.electrons:
        entry = {"dimension": fock.sector_dimension(config.orbitals, n), "qdjax": {}, "qdjax_float32": {}}
        print(f"N = {n}", flush=True)
        entry["peer"] = bench_peer(V_all[:count], n, max(1, args.repeats // 2))
        for b in args.batches:
            entry["qdjax"][b] = bench_qdjax(chunks(V_all, b, count), n, config, args.repeats)
            if b in args.float32_batches:
                entry["qdjax_float32"][b] = bench_qdjax(chunks(V_all, b, count), n, config.replace(dtype="float32"),
                                                        args.repeats)
        e2e = end_to_end_rounds(V_all, n, config, args.batches, count, args.repeats)
        entry["end_to_end"] = e2e
        for b in args.batches:
            entry["qdjax"][b]["end_to_end"] = e2e["qdjax_per_s"][b]
            print(f"  batch {b:4d}: {e2e['qdjax_per_s'][b]:9.1f} /s end to end "
                  f"(peer {e2e['peer_per_s']:.1f} /s, ratio {e2e['ratio'][b]:.1f})", flush=True)
        if args.float32_batches:
            f32 = end_to_end_rounds(V_all, n, config.replace(dtype="float32"), args.float32_batches, count,
                                    max(1, args.repeats // 2))
            entry["end_to_end_float32"] = f32
            for b in args.float32_batches:
                entry["qdjax_float32"].setdefault(b, {})["end_to_end"] = f32["qdjax_per_s"][b]
        entry["agreement"] = agreement(V_all[:4], n, config)
        if args.float32_batches:
            entry["float32_error"] = float32_error(V_all[:8], n, config)
        entry["ratio_end_to_end_best_batch"] = max(e2e["ratio"].values())
        entry["ratio_end_to_end_batch1"] = e2e["ratio"][min(args.batches)]
        print(f"  ratio qdjax / peer (median of per-round ratios): {entry['ratio_end_to_end_best_batch']:.1f} "
              f"(best batch), {entry['ratio_end_to_end_batch1']:.1f} (batch {min(args.batches)}); "
              f"agreement {entry['agreement']}", flush=True)
        results["N"][n] = entry
    return results


def run_sharding(args) -> dict:
    """Batched ED sharded over 1D meshes of 2 and of all (8) devices vs one device."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    config = qdjax.EDConfig()
    devices = jax.devices()
    sizes = sorted({2, len(devices)})
    out = {"devices": len(devices), "mesh_sizes": sizes, "N": {}}
    for n in args.electrons:
        rows = {}
        for b in (8, 32, 64):
            V = jnp.asarray(potentials.random_potentials(list(range(b)), config))
            single = jax.device_put(V, devices[0])
            ref = ed.ground_state(single, n, config)
            t1, _ = _median_time(lambda: ed.ground_state(single, n, config).energy, 3)
            row = {"one_device_per_s": b / t1}
            for size in sizes:
                mesh = Mesh(np.array(devices[:size]), ("batch",))
                sharded = jax.device_put(V, NamedSharding(mesh, PartitionSpec("batch")))
                got = ed.ground_state(sharded, n, config)
                t, _ = _median_time(lambda: ed.ground_state(sharded, n, config).energy, 3)
                row[f"{size}_devices"] = {
                    "per_s": b / t,
                    "ratio_to_one_device": t1 / t,
                    "energy_max_abs_diff_eV": float(np.abs(np.asarray(got.energy) - np.asarray(ref.energy)).max()),
                    "density_max_abs_diff": float(np.abs(np.asarray(got.density) - np.asarray(ref.density)).max()),
                    "output_sharding": str(got.energy.sharding),
                }
            rows[b] = row
            print(n, b, row, flush=True)
        out["N"][n] = rows
    return out


def _product_times(ints, orbitals: int, n: int, columns: int = 4, repeats: int = 5) -> dict:
    """ms per column of H x, matrix-free: qdjax's `fock.apply_operator` (jitted, on a block of
    `columns` random vectors, as Davidson applies it) against PySCF's `contract_2e` on the
    same integrals and vectors, medians of `repeats` calls, interleaved. The two string
    orders differ; the agreement of the products is tested in tests/test_fock.py."""
    lists = fock.excitation_lists(orbitals, n)
    operator = fock.sector_operator(lists, ints.h1, ints.eri)
    apply = functools.partial(fock.apply_operator, lists)  # jitted, lists static
    x = np.random.default_rng(0).normal(size=(lists.dimension, columns))
    xj = jnp.asarray(x)
    h1, eri = np.asarray(ints.h1), np.asarray(ints.eri)
    apply(operator, xj).block_until_ready()
    peer_ed.sigma(h1, eri, n, x)
    ours, peer = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        apply(operator, xj).block_until_ready()
        ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        peer_ed.sigma(h1, eri, n, x)
        peer.append(time.perf_counter() - t0)
    return {"product_ms_per_column": 1e3 * float(np.median(ours)) / columns,
            "peer_product_ms_per_column": 1e3 * float(np.median(peer)) / columns}


def run_large(args) -> dict:
    """Iterative many-body solver beyond the paper: sizes, times and peak memory."""
    import resource

    out = []
    V = potentials.random_potentials([0, 1], qdjax.EDConfig())
    for k, n in ((8, 5), (8, 6), (12, 4), (12, 5), (12, 6), (16, 4), (16, 5), (16, 6), (16, 7)):
        config = qdjax.EDConfig(orbitals=k)
        d = fock.sector_dimension(k, n)
        # sectors above 20 000 determinants take seconds to a minute per potential: one
        # potential, one timed call
        matrix_free = ed._matrix_free(config, n)
        big = d > 20_000
        Vj = jnp.asarray(V[:1] if big else V)
        try:
            t0 = time.perf_counter()
            gs = ed.ground_state(Vj, n, config)
            jax.block_until_ready(gs.energy)
            first = time.perf_counter() - t0
            med, _ = _median_time(lambda: ed.ground_state(Vj, n, config).energy, 1 if big else 2)
            row = {"orbitals": k, "N": n, "dimension": d, "matrix_free": matrix_free, "first_call_s": first,
                   "per_instance_s": med / len(Vj), "energy_eV": [float(e) for e in gs.energy],
                   "peak_rss_MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
            # the peer's FCI (PySCF direct_spin1, 2 roots or more) on qdjax's integrals of potential 0
            ints = ed.integrals(Vj[0], config)
            t0 = time.perf_counter()
            e_peer, _ = peer_ed.fci(np.asarray(ints.h1), np.asarray(ints.eri), n)
            row["peer_fci_s"] = time.perf_counter() - t0
            row["peer_energy_diff_eV"] = abs(e_peer - float(gs.energy[0]))
            if matrix_free:
                row.update(_product_times(ints, k, n))
        except Exception as err:  # report what does not fit
            row = {"orbitals": k, "N": n, "dimension": d, "error": f"{type(err).__name__}: {err}"[:300]}
        print(row, flush=True)
        out.append(row)
    return out


def main(args) -> None:
    results = {"command": "python " + " ".join(sys.argv), "machine": machine()}
    if args.sharding:
        results["sharding"] = run_sharding(args)
    elif args.large:
        results["large"] = run_large(args)
    else:
        results["paper"] = run_paper(args)
    results["machine"]["load_average_end"] = os.getloadavg()
    text = json.dumps(results, default=float)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)
    print(text)


if __name__ == "__main__":
    main(ARGS)
