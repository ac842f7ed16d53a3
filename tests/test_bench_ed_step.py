"""benchmarks/bench_ed_step.py times the training step with and without the ED term on tiny sizes
and reports what its docstring promises."""

import importlib.util
import json
import pathlib

import qdjax  # noqa: F401

_BENCH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "bench_ed_step.py"


def test_bench_ed_step_reports_each_variant(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_ed_step", _BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "r.json"
    result = module.main(["--grid", "16", "--basis", "8", "--orbitals", "4", "--batch", "2", "--repeats", "2",
                          "--steps", "1", "--discriminator", "patch16", "--dtypes", "float64", "--d4-weight", "10", "--equivariant",
                          "--out", str(out)])  # fmt: skip
    (case,) = result["cases"]
    assert set(case["median_ms"]) == {"plain", "ed_float64", "ed_float64_d4", "ed_float64_equivariant"}
    assert all(v > 0 for v in case["median_ms"].values()) and case["ratio_to_plain"]["plain"] == 1.0
    assert json.loads(out.read_text())["cases"][0]["batch"] == 2
    assert "N = 2, batch 2: plain" in capsys.readouterr().out
