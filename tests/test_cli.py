"""The qdjax command line: help texts, EDConfig flags, generate + info end to end, one-line errors."""

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import qdjax
from qdjax import cli, data
from conftest import TINY_FLAGS

REPO = Path(__file__).resolve().parents[1]


def one_line_error(capsys, command):
    """The captured stderr, checked to be one line 'qdjax <command>: error: ...' without a traceback."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"qdjax {command}: error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("argv, expected", [
    ([], ["generate", "train", "evaluate", "invert", "bench", "plot", "info"]),
    (["bench"], ["--electrons", "--batch", "--repeats", "--train", "--train-batch", "--json", "--dtype"]),
    (["train"], ["--data", "--mapping", "--steps", "--batch", "--discriminator", "--d4", "--symmetrize", "--lr-decay"]),
    (["evaluate"], ["--checkpoint", "--split", "--step"]),
    (["invert"], ["--checkpoint", "--refine", "--refine-steps"]),
    (["plot"], ["--data", "--index", "--seed", "--grid"]),
    (["generate"], ["--samples", "--n-electrons", "--seed", "--chunk-size", "--batch-size", "--out", "--splits",
                    "--grid", "--basis", "--orbitals", "--length", "--m-eff", "--eps-r", "--density-mode",
                    "--dtype", "--process-index", "--merge"]),
    (["info"], ["dataset", "--verify"]),
])  # fmt: skip
def test_help_of_every_command(capsys, argv, expected):
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv + ["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for word in expected:
        assert word in out, word


def test_every_edconfig_field_has_a_flag():
    parser = cli.build_parser()
    generate = parser._subparsers._group_actions[0].choices["generate"]
    flags = {s for a in generate._actions for s in a.option_strings}
    for field in dataclasses.fields(qdjax.EDConfig):
        assert "--" + field.name.replace("_", "-") in flags, field.name
    args = parser.parse_args(["generate", "--out", "x", "--eps-r", "inf", "--grid", "20", "--length", "40",
                              "--density-mode", "diagonal", "--dtype", "float32"])  # fmt: skip
    expected = qdjax.EDConfig(eps_r=math.inf, grid=20, length_nm=40.0, density_mode="diagonal", dtype="float32")
    assert cli.config_from_args(args) == expected
    assert cli.config_from_args(parser.parse_args(["generate", "--out", "x"])) == qdjax.EDConfig()


def test_generate_then_info(tmp_path, capsys):
    out = tmp_path / "ds"
    argv = ["generate", "--out", str(out), "--samples", "4", "--chunk-size", "2", "--seed", "7", "--batch-size", "1",
            *TINY_FLAGS]  # fmt: skip
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    assert str(out.resolve()) in captured.out and "complete" in captured.out  # where the data went
    assert "sample/s" in captured.err or "s/sample" in captured.err  # the progress bar's rate
    ds = data.load(out)
    assert ds.n_int.shape == (4, 4, 16, 16) and ds.n_electrons.tolist() == [1, 2, 3, 4]
    # Running the same command again finds nothing to do.
    assert cli.main(argv + ["--no-progress"]) == 0
    assert cli.main(["info", str(out), "--verify"]) == 0
    info = capsys.readouterr().out
    assert f"qdjax {qdjax.__version__}" in info and "devices:" in info and "default EDConfig" in info
    assert "4 samples" in info and "2 of 2 (complete)" in info and "all 2 chunks verified" in info

    # A different seed into the same folder: refused, one line, exit status 1.
    assert cli.main(["generate", "--out", str(out), "--samples", "4", "--chunk-size", "2", "--seed", "8", *TINY_FLAGS]) == 1
    assert "seed: 7 there, 8 here" in one_line_error(capsys, "generate")

    # A damaged chunk: info --verify and loading name it.
    chunk = out / "chunk-00001.npz"
    chunk.write_bytes(chunk.read_bytes()[:-10] + b"0123456789")
    assert cli.main(["info", str(out), "--verify"]) == 1
    assert "damaged chunks [1]" in one_line_error(capsys, "info")


@pytest.mark.parametrize("extra, word", [
    (["--grid", "0"], "grid"),
    (["--n-electrons", "0"], "n_electrons"),
    (["--samples", "0"], "n_samples"),
    (["--density-mode", "full"], "density_mode"),
    (["--splits", "1", "1", "1"], "splits"),
])  # fmt: skip
def test_bad_arguments_give_one_line_errors(tmp_path, capsys, extra, word):
    assert cli.main(["generate", "--out", str(tmp_path / "x"), "--samples", "5", *extra]) == 1
    assert word in one_line_error(capsys, "generate")


def test_argparse_errors_exit_with_status_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["generate"])  # --out missing
    assert exit_.value.code == 2
    with pytest.raises(SystemExit) as exit_:
        cli.main(["generate", "--out", "x", "--grid", "many"])
    assert exit_.value.code == 2


def test_console_command_reports_user_errors_without_traceback(tmp_path):
    (tmp_path / "notes.txt").write_text("not a dataset")
    proc = subprocess.run([sys.executable, "-m", "qdjax.cli", "generate", "--out", str(tmp_path), *TINY_FLAGS],
                          cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("qdjax generate: error: ") and "not empty" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]  # nothing written into the folder


def test_train_evaluate_invert_plot_end_to_end(tiny_dataset, tmp_path, capsys):
    # Each subcommand runs on the tiny dataset and writes what its help promises; the inverse
    # generator takes its density input on a log scale, which invert then uses inside its graph.
    for mapping, folder, extra in (("V->n_int", "fwd", []), ("n_int->V", "inv", ["--log-input"])):
        argv = ["train", "--data", str(tiny_dataset), "--out", str(tmp_path / folder), "--mapping", mapping,
                "--steps", "4", "--eval-every", "2", "--batch", "2", "--discriminator", "pixel1", "--lr-decay", "2",
                "--no-progress", *extra]
        assert cli.main(argv) == 0
        summary = json.loads((tmp_path / folder / "metrics.json").read_text())
        assert summary["scalers"]["inputs"]["transform"] == ("log" if extra else "linear")
    assert "test R^2" in capsys.readouterr().out
    argv = ["evaluate", "--checkpoint", str(tmp_path / "fwd" / "checkpoints"), "--data", str(tiny_dataset),
            "--split", "validation", "--out", str(tmp_path / "eval")]
    assert cli.main(argv) == 0
    assert (tmp_path / "eval" / "metrics.json").exists() and (tmp_path / "eval" / "worst.png").exists()
    argv = ["invert", "--checkpoint", str(tmp_path / "inv" / "checkpoints"), "--data", str(tiny_dataset),
            "--refine", "1", "--refine-steps", "2", "--out", str(tmp_path / "invert"), "--no-progress"]
    assert cli.main(argv) == 0
    assert (tmp_path / "invert" / "inverse.json").exists() and (tmp_path / "invert" / "refine.png").exists()
    assert cli.main(["plot", "--data", str(tiny_dataset), "--index", "3", "--out", str(tmp_path / "s.png")]) == 0
    assert cli.main(["plot", "--seed", "1", "--n-electrons", "1", *TINY_FLAGS, "--out", str(tmp_path / "p.png")]) == 0
    assert (tmp_path / "s.png").stat().st_size > 1000 and (tmp_path / "p.png").stat().st_size > 1000


def test_invert_refuses_a_forward_checkpoint(tiny_dataset, tmp_path, capsys):
    argv = ["train", "--data", str(tiny_dataset), "--out", str(tmp_path / "fwd"), "--steps", "2", "--eval-every",
            "2", "--discriminator", "pixel1", "--no-progress"]
    assert cli.main(argv) == 0
    capsys.readouterr()
    argv = ["invert", "--checkpoint", str(tmp_path / "fwd" / "checkpoints"), "--data", str(tiny_dataset), "--out",
            str(tmp_path / "x")]
    assert cli.main(argv) == 1
    assert "n_int->V" in one_line_error(capsys, "invert")


def test_log_input_of_a_potential_is_refused(tiny_dataset, tmp_path, capsys):
    argv = ["train", "--data", str(tiny_dataset), "--out", str(tmp_path / "t"), "--steps", "2", "--log-input"]
    assert cli.main(argv) == 1
    assert "density input" in one_line_error(capsys, "train")


def test_lr_decay_longer_than_training_is_refused(tiny_dataset, tmp_path, capsys):
    argv = ["train", "--data", str(tiny_dataset), "--out", str(tmp_path / "t"), "--steps", "4", "--lr-decay", "5"]
    assert cli.main(argv) == 1
    assert "--lr-decay" in one_line_error(capsys, "train")


def test_evaluate_without_checkpoint_is_a_user_error(tiny_dataset, tmp_path, capsys):
    argv = ["evaluate", "--checkpoint", str(tmp_path / "nothing"), "--data", str(tiny_dataset), "--out", str(tmp_path)]
    assert cli.main(argv) == 1
    assert "no checkpoint" in one_line_error(capsys, "evaluate")


def test_bench_times_the_ed_and_agrees_with_a_direct_call(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert cli.main(["bench", "--electrons", "2", "--batch", "1", "3", "--repeats", "1", "--json", str(out), *TINY_FLAGS]) == 0
    printed = capsys.readouterr().out
    assert "ED N=2 batch    3" in printed and "instances/s" in printed
    rows = json.loads(out.read_text())["ed"]
    assert [(r["N"], r["batch"]) for r in rows] == [(2, 1), (2, 3)]
    for r in rows:
        assert r["median_s"] > 0 and r["per_s"] == pytest.approx(r["batch"] / r["median_s"])


def test_bench_rejects_empty_work(capsys):
    assert cli.main(["bench", "--batch", "0", *TINY_FLAGS]) == 1
    assert "--batch" in one_line_error(capsys, "bench")


def test_spectrum_command(tmp_path, capsys):
    # `qdjax spectrum` prints the levels of qdjax.ed.spectrum on the same potential and writes the
    # figure and the JSON it names.
    argv = ["spectrum", "--n-electrons", "3", "--states", "4", "--seed", "2", "--out", str(tmp_path / "sp.png"),
            "--json", str(tmp_path / "sp.json"), *TINY_FLAGS]  # fmt: skip
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    levels = json.loads((tmp_path / "sp.json").read_text())["levels"]
    config = qdjax.EDConfig(grid=16, basis=8, orbitals=4)
    sp = qdjax.ed.spectrum(qdjax.potentials.random_potential(2, config), 3, 4, config)
    np.testing.assert_allclose([lv["energy_eV"] for lv in levels], sp.energies, atol=1e-12)
    np.testing.assert_allclose([lv["total_spin"] for lv in levels], sp.total_spin, atol=1e-12)
    assert f"{float(sp.energies[0]):.8f}" in printed and (tmp_path / "sp.png").exists()
    assert cli.main(["spectrum", "--harmonic", "-1", *TINY_FLAGS]) == 1
