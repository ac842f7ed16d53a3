"""The scripts in examples/ run end to end on tiny sizes and print and write what their docstrings promise."""

import json
import math
import runpy
from pathlib import Path

import numpy as np
import pytest

import qdjax
from qdjax import ed, potentials

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def example_main(name):
    """The `main(argv)` of examples/<name>.py."""
    return runpy.run_path(str(EXAMPLES / f"{name}.py"))["main"]


def untimed(scores):
    """`scores` without its wall-time entries (those named seconds...)."""
    return {k: v for k, v in scores.items() if not k.startswith("seconds")}


def test_inverse_design_example_end_to_end(tiny_dataset, tmp_path, capsys):
    # examples/inverse_design.py trains an n_int->V generator, checks it by ED, refines one sample,
    # then fine-tunes the generator through the ED (--ed-weight, with the D4-consistency term)
    # and checks it again.
    example_main("inverse_design")(["--data", str(tiny_dataset), "--steps", "4", "--batch", "2", "--refine", "1",
                                    "--refine-steps", "2", "--out", str(tmp_path / "inv"), "--no-progress",
                                    "--log-input", "--discriminator", "patch16", "--ed-weight", "100",
                                    "--ed-steps", "2", "--d4-weight", "10"])  # fmt: skip
    printed = capsys.readouterr().out
    assert "recomputed-density R^2" in printed and "refined 1" in printed
    assert "after ED-in-the-loop training" in printed
    summary = json.loads((tmp_path / "inv" / "inverse.json").read_text())
    assert summary["samples"] == 2 and summary["refinement"]["samples"] == 1
    assert (tmp_path / "inv" / "inverse.png").exists() and (tmp_path / "inv" / "refine.png").exists()
    tuned = json.loads((tmp_path / "inv" / "n_int_to_V_ed" / "metrics.json").read_text())
    assert tuned["ed_term"]["weight"] == 100.0 and tuned["init_from"]["step"] >= 1
    assert tuned["config"]["lambda_d4"] == 10.0
    after = json.loads((tmp_path / "inv" / "ed" / "inverse.json").read_text())
    assert after["samples"] == 2 and math.isfinite(after["generator"]["density_r2_worst"])
    assert (tmp_path / "inv" / "ed_in_the_loop.png").exists()


def test_train_pix2pix_example_on_an_existing_dataset(tiny_dataset, tmp_path, capsys):
    # Two mappings for N = 2 on the tiny dataset: one row each in the printed table and summary.json;
    # the dataset is used as it is (not generated again).
    manifest = (tiny_dataset / "manifest.json").read_text()
    out = tmp_path / "train"
    example_main("train_pix2pix")(["--data", str(tiny_dataset), "--out", str(out), "--mappings", "V->n_int",
                                   "n0->n_int", "--steps", "4", "--batch", "2", "--eval-every", "2",
                                   "--discriminator", "pixel1", "--no-progress"])  # fmt: skip
    printed = capsys.readouterr().out
    assert (tiny_dataset / "manifest.json").read_text() == manifest
    rows = json.loads((out / "summary.json").read_text())["runs"]
    assert [(r["mapping"], r["N"]) for r in rows] == [("V->n_int", 2), ("n0->n_int", 2)]
    for r in rows:
        assert all(math.isfinite(r[k]) for k in ("r2", "ssim", "mssim", "l1", "paper_r2")), r
        assert r["best_step"] in (2, 4) and (Path(r["folder"]) / "metrics.json").exists()
        assert f"{r['mapping']:>10} {r['N']:>2} {r['r2']:8.4f}" in printed


def test_ed_one_potential_example(tmp_path, capsys):
    # The printed energies are those of qdjax.ed on the same potential; one electron does not
    # interact with itself, and for N >= 2 the Coulomb repulsion raises the ground-state energy.
    example_main("ed_one_potential")(["--seed", "5", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    rows = [line.split() for line in printed.splitlines() if line[:3] in (" 1 ", " 2 ", " 3 ", " 4 ")]
    energies = {int(r[0]): (float(r[1]), float(r[2])) for r in rows}
    assert sorted(energies) == [1, 2, 3, 4]
    assert energies[1][0] == energies[1][1]
    assert all(energies[n][0] > energies[n][1] for n in (2, 3, 4))
    config = qdjax.EDConfig()
    state = ed.ground_state(potentials.random_potential(5, config), 2, config)
    assert energies[2][0] == pytest.approx(float(state.energy), abs=1e-6)
    assert (tmp_path / "densities_seed5.png").stat().st_size > 1000


def test_paper_experiments_list_run_and_table(tiny_dataset, tmp_path, capsys):
    # --list names every experiment; one experiment of 4 steps, added to the table for the test,
    # runs on the tiny dataset (its grid and box, not the paper's; patch16, since image70's patch
    # is larger than 16 pixels) into results.json, and --table prints its row.
    module = runpy.run_path(str(EXAMPLES / "paper_experiments.py"))
    module["main"](["--list"])
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert names == list(module["EXPERIMENTS"]) and len(names) == len(set(names))

    module["EXPERIMENTS"]["tiny_V_n_int_N2"] = dict(mapping="V->n_int", n=2, batch=2, lr=2e-4, d4=True,
                                                    density_head=True, steps=4, discriminator="patch16")  # fmt: skip
    out = tmp_path / "experiments"
    module["main"](["--data", str(tiny_dataset), "--out", str(out), "--only", "tiny_V_n_int_N2", "--no-progress"])
    result = json.loads((out / "results.json").read_text())["tiny_V_n_int_N2"]
    assert result["steps"] == 4 and result["best_step"] == 4
    assert all(math.isfinite(result[k]) for k in ("r2", "r2_symmetrized", "ssim", "paper_r2", "worst_r2_sample"))
    capsys.readouterr()
    module["main"](["--out", str(out), "--table"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| tiny_V_n_int_N2 |")]
    assert len(rows) == 1 and f"| {result['r2']:.4f} |" in rows[0]


@pytest.mark.slow
def test_pipeline_example_end_to_end_and_resumed(tmp_path, capsys):
    # The README's main job on tiny sizes: 12 potentials (8 / 2 / 2), 4 training steps per mapping,
    # one refined sample. A second run of the same command finds every stage done and gives the
    # same summary.
    argv = ["--out", str(tmp_path), "--samples", "12", "--steps", "4", "--batch", "2", "--eval-every", "2",
            "--refine", "1", "--refine-steps", "2", "--no-progress"]  # fmt: skip
    main = example_main("pipeline")
    main(argv)
    printed = capsys.readouterr().out
    config = qdjax.EDConfig()
    state = ed.ground_state(potentials.random_potential(0, config), 2, config)
    assert f"N=2: E = {float(state.energy):.6f} eV" in printed
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["args"]["splits"] == [8, 2, 2]
    for key in ("forward", "inverse_mapping"):
        assert np.isfinite(summary[key]["r2"]) and -1.0 <= summary[key]["ssim_mean"] <= 1.0, summary[key]
    check = summary["inverse_check"]
    assert check["samples"] == 2 and check["refinement"]["samples"] == 1
    assert 0 <= check["generator"]["accepted"] <= 2
    for path in ("densities_N1-4.png", "V_to_n_int/metrics.json", "n_int_to_V/metrics.json"):
        assert (tmp_path / path).exists(), path

    main(argv)
    again = json.loads((tmp_path / "summary.json").read_text())
    for key in ("forward", "inverse_mapping"):
        assert again[key]["r2"] == summary[key]["r2"]
    assert untimed(again["inverse_check"]["generator"]) == untimed(check["generator"])


def test_exchange_design_example(tmp_path, capsys):
    # examples/exchange_design.py --fast from a start near the design: the Newton steps through
    # the ED reach J = 0.1 meV within 1 %, checked here by a fresh spectrum of the designed
    # potential, and the figure and summary are written.
    script = runpy.run_path(str(EXAMPLES / "exchange_design.py"))
    summary = script["main"](["--fast", "--barrier-mev", "170", "--detuning-mev", "1", "--scan", "3",
                              "--out", str(tmp_path)])  # fmt: skip
    assert summary["converged"] and abs(summary["J_mev"] / 0.1 - 1) <= 0.01
    config = qdjax.EDConfig(grid=32, basis=12, orbitals=4)
    params = np.array([math.log(1e-3 * summary["barrier_mev"]), summary["detuning_mev"] / 10.0])
    sp = ed.spectrum(script["double_dot"](params, config), 2, 4, config)
    assert float(sp.total_spin[0]) == pytest.approx(0.0, abs=1e-9) and float(sp.total_spin[1]) == pytest.approx(1.0)
    assert 1e3 * float(sp.energies[1] - sp.energies[0]) == pytest.approx(summary["J_mev"], rel=1e-6)
    assert (tmp_path / "exchange_design.png").exists() and "reached the target" in capsys.readouterr().out
