"""benchmarks/bench_ed.py times every batch size on the potentials the peer solves, and takes
the end-to-end ratio from interleaved rounds (qdjax / peer per round, median over rounds)."""

import importlib.util
import pathlib
import sys
from types import SimpleNamespace

import numpy as np
import pytest

_BENCH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench_ed():
    sys.path.insert(0, str(_BENCH))  # bench_ed imports peer_ed from its folder
    try:
        spec = importlib.util.spec_from_file_location("bench_ed", _BENCH / "bench_ed.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(_BENCH))
    return module


@pytest.mark.parametrize("b, count, covered, calls", [(1, 8, 8, 8), (4, 8, 8, 2), (3, 8, 9, 3), (16, 8, 16, 1)])
def test_chunks_cover_the_peer_potentials(bench_ed, b, count, covered, calls):
    V = np.arange(20 * 2 * 2, dtype=float).reshape(20, 2, 2)
    got = bench_ed.chunks(V, b, count)
    assert len(got) == calls and all(c.shape == (b, 2, 2) for c in got)
    np.testing.assert_array_equal(np.concatenate(got), V[:covered])


def test_chunks_refuse_too_few_potentials(bench_ed):
    with pytest.raises(ValueError, match="need 16 potentials"):
        bench_ed.chunks(np.zeros((8, 2, 2)), 16, 8)


def test_end_to_end_rounds_pair_each_round(bench_ed, monkeypatch):
    # Stand-ins on a fake clock: the peer costs 4 ms per potential, qdjax 1 ms per call
    # whatever the batch, so on 8 potentials batch 1 is 8 calls (1000 /s) and batch 4 is 2
    # calls (4000 /s), against 250 /s for the peer.
    clock = [0.0]
    solved = []

    def peer(v, n):
        clock[0] += 4e-3
        solved.append(float(v[0, 0]))
        return {"energy": 0.0}

    def ours(x, n, config):
        clock[0] += 1e-3
        return SimpleNamespace(energy=np.zeros(len(x)))

    monkeypatch.setattr(bench_ed, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    monkeypatch.setattr(bench_ed.peer_ed, "ground_state", peer)
    monkeypatch.setattr(bench_ed.ed, "ground_state", ours)
    V = np.arange(10, dtype=float)[:, None, None] * np.ones((10, 2, 2))
    out = bench_ed.end_to_end_rounds(V, 2, bench_ed.qdjax.EDConfig(), [1, 4], 8, 3)
    assert solved == [0.0] + 3 * list(range(8))  # one warm-up, then the same 8 potentials per round
    assert len(out["rounds"]) == 3
    assert out["peer_per_s"] == pytest.approx(250)
    assert out["qdjax_per_s"] == pytest.approx({1: 1000, 4: 4000})
    assert out["ratio"] == pytest.approx({1: 4, 4: 16})
    for row in out["rounds"]:
        assert row[4]["ratio"] == pytest.approx(row[4]["per_s"] / row["peer"])
