"""benchmarks/device_check.sh runs its whole plan in quick mode on this CPU, both parts in one
call, and benchmarks/device_check.py keeps its JSON current after every measurement and
records what the deadline or a missing Flax leaves out."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

_BENCH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def device_check():
    sys.path.insert(0, str(_BENCH))
    try:
        import device_check as module
    finally:
        sys.path.remove(str(_BENCH))
    return module


def test_plan_covers_the_issue(device_check):
    # issue 25, point 6: float64 and float32, N = 2 and 4, batches 1, 64, 256 and 1024, the
    # inverse check, training at batch 32; the CPU baseline at batches 1 and 64
    names = [s["name"] for s in device_check.plan("accelerator", quick=False)]
    for dtype in ("float64", "float32"):
        for n in (2, 4):
            for b in (1, 64, 256, 1024):
                assert f"ed/{dtype}/N{n}/batch{b}" in names
    assert names[:2] == ["ed/float64/N2/batch1024", "ed/float32/N2/batch1024"]  # the goal first
    assert "train/batch32" in names and "inverse/N2/batch64" in names
    cpu = [s["name"] for s in device_check.plan("cpu", quick=False)]
    assert {"ed/float64/N2/batch1", "ed/float64/N2/batch64", "ed/float64/N4/batch1"} <= set(cpu)
    assert all(s.get("config", {}) == {} for s in device_check.plan("accelerator", quick=False))  # paper size


def test_quick_run_writes_every_section(tmp_path):
    # The script as a lent machine runs it, at the tiny sizes: both parts, every measurement
    # done, the JSON complete (the GPU's memory statistics are None on a CPU).
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=sys.executable, BUDGET_S="240", ACCEL_S="150")
    result = subprocess.run(["bash", str(_BENCH / "device_check.sh"), "--quick", str(out)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (out / "card.txt").exists() and (out / "device_check.log").exists()
    data = json.loads((out / "device_check.json").read_text())
    assert set(data["parts"]) == {"accelerator", "cpu"}
    for name, part in data["parts"].items():
        assert part["machine"]["backend"] == "cpu" and part["quick"] is True
        assert part["skipped"] == {} and part["failed"] == {}, (name, part["skipped"], part["failed"])
        assert list(part["measurements"]) == part["plan"]
        for m in part["measurements"].values():
            assert m["status"] == "done" and "peak_bytes_in_use" in m
            assert m.get("per_s", m.get("steps_per_s")) > 0
    acc = data["parts"]["accelerator"]["measurements"]
    assert {k.split("/")[0] for k in acc} == {"ed", "train", "inverse"}
    ed = acc["ed/float32/N4/batch4"]
    assert ed["dtype"] == "float32" and ed["N"] == 4 and ed["batch"] == 4 and len(ed["times_s"]) == 3
    assert ed["layout"] == "sequential" and ed["converged"] == 1.0  # "auto" on a CPU


def test_json_is_written_after_every_measurement(device_check, tmp_path, monkeypatch):
    # Stand-in measurements: each one reads the file as it stands when it starts, so the file
    # must already hold every earlier result and mark the current one as running.
    path = tmp_path / "dc.json"
    seen = []

    def fake(step, repeats):
        data = json.loads(path.read_text())
        part = data["parts"]["accelerator"]["measurements"]
        seen.append((step["name"], dict((k, v["status"]) for k, v in part.items())))
        return {"per_s": 1.0, "steps_per_s": 1.0}

    monkeypatch.setattr(device_check, "MEASURE", {"ed": fake, "train": fake, "inverse": fake})
    monkeypatch.setattr(device_check, "ml_available", lambda: None)
    device_check.run("accelerator", path, deadline=1e18, quick=True, repeats=1)
    names = [s["name"] for s in device_check.plan("accelerator", quick=True)]
    assert [name for name, _ in seen] == names
    for i, (name, statuses) in enumerate(seen):
        assert statuses == {**{n: "done" for n in names[:i]}, name: "running"}
    final = json.loads(path.read_text())["parts"]["accelerator"]
    assert all(m["status"] == "done" for m in final["measurements"].values())


def test_deadline_and_missing_flax_are_recorded(device_check, tmp_path, monkeypatch):
    path = tmp_path / "dc.json"
    monkeypatch.setattr(device_check, "MEASURE", {k: (lambda s, r: {"per_s": 1.0}) for k in ("ed", "train", "inverse")})
    monkeypatch.setattr(device_check, "ml_available", lambda: "ModuleNotFoundError: No module named 'flax'")
    device_check.run("accelerator", path, deadline=1e18, quick=True, repeats=1)
    part = json.loads(path.read_text())["parts"]["accelerator"]
    assert set(part["skipped"]) == {"train/batch2", "inverse/N2/batch2"}
    assert all("flax" in why for why in part["skipped"].values()) and "skipped" in part["ml"]
    assert all(k.startswith("ed/") for k in part["measurements"])
    # a deadline already past: nothing runs, everything is recorded as skipped for it; the
    # other part's results in the same file stay
    monkeypatch.setattr(device_check, "MIN_START_S", {"full": 40.0, "quick": 1.0})
    device_check.run("cpu", path, deadline=0.0, quick=True, repeats=1)
    data = json.loads(path.read_text())["parts"]
    assert data["cpu"]["measurements"] == {}
    assert set(data["cpu"]["skipped"]) == set(data["cpu"]["plan"])
    assert all(why.startswith("deadline") for k, why in data["cpu"]["skipped"].items() if k.startswith("ed/"))
    assert data["accelerator"]["measurements"] == part["measurements"]


def test_a_failed_measurement_is_recorded_and_the_rest_go_on(device_check, tmp_path, monkeypatch):
    path = tmp_path / "dc.json"

    def ed(step, repeats):
        if step["N"] == 4:
            raise RuntimeError("out of memory")
        return {"per_s": 1.0}

    monkeypatch.setattr(device_check, "MEASURE", {"ed": ed, "train": lambda s, r: {"steps_per_s": 1.0},
                                                  "inverse": lambda s, r: {"per_s": 1.0}})
    device_check.run("accelerator", path, deadline=1e18, quick=True, repeats=1)
    part = json.loads(path.read_text())["parts"]["accelerator"]
    assert part["failed"] and all("out of memory" in e for e in part["failed"].values())
    assert all("/N4/" in k for k in part["failed"])
    assert part["measurements"]["train/batch2"]["status"] == "done"
