"""benchmarks/bench_spectrum.py times the ground state, the spectrum and PySCF's nroots on the
same potentials and reports qdjax's agreement with PySCF's energies."""

import importlib.util
import pathlib

import pytest

_PATH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "bench_spectrum.py"


def test_bench_spectrum_runs_on_a_tiny_config(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_spectrum", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = module.main(["--electrons", "2", "--batch", "2", "--states", "3", "--repeats", "1", "--grid", "16",
                        "--basis", "8", "--orbitals", "4", "--json", str(tmp_path / "b.json")])  # fmt: skip
    (row,) = rows
    assert row["N"] == 2 and row["batch"] == 2 and row["determinants"] == 16
    assert row["max_energy_difference_eV"] < 1e-8  # PySCF nroots on the same integrals
    assert row["spectrum_ms"] > 0 and row["ratio_spectrum_ground"] == pytest.approx(
        row["spectrum_ms"] / row["ground_state_ms"])
    assert "spectrum (3 states)" in capsys.readouterr().out and (tmp_path / "b.json").exists()
