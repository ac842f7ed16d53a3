"""The qdjax command line: help texts, EDConfig flags, generate + info end to end, one-line errors."""

import dataclasses
import json
import math
import re
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
                    "--dtype", "--process-index", "--merge", "--spectrum"]),
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
    (["--spectrum", "-1"], "--spectrum must be at least 0"),
    (["--spectrum", "9"], "spectrum=9 is too large for N=1"),  # 8 states of one electron in 8 orbitals
])  # fmt: skip
def test_bad_arguments_give_one_line_errors(tmp_path, capsys, extra, word):
    assert cli.main(["generate", "--out", str(tmp_path / "x"), "--samples", "5", *extra]) == 1
    assert word in one_line_error(capsys, "generate")


def test_generate_with_a_spectrum_then_info(tmp_path, capsys):
    out = tmp_path / "ds"
    argv = ["generate", "--out", str(out), "--samples", "2", "--chunk-size", "2", "--seed", "7", "--batch-size", "1",
            "--no-progress", *TINY_FLAGS]  # fmt: skip
    assert cli.main(argv + ["--spectrum", "3"]) == 0
    ds = data.load(out)
    assert ds.spectrum_energies.shape == ds.spectrum_spin.shape == (2, 4, 3) and ds.chemical_potential.shape == (2, 4)
    # One electron has S = 1/2; mu(1) is the one-electron ground-state energy.
    np.testing.assert_allclose(ds.spectrum_spin[:, 0], 0.5, atol=1e-8)
    np.testing.assert_array_equal(ds.chemical_potential[:, 0], ds.energy_int[:, 0])
    capsys.readouterr()
    assert cli.main(["info", str(out), "--verify"]) == 0
    info = capsys.readouterr().out
    assert "spectrum: the lowest 3 spin multiplets of each N (energies, S) and mu(N) for N = 1..4" in info
    assert "all 1 chunks verified" in info
    # Another K (or none) does not continue this dataset.
    assert cli.main(argv + ["--spectrum", "2"]) == 1
    assert "spectrum: 3 there, 2 here" in one_line_error(capsys, "generate")
    assert cli.main(argv) == 1
    assert "spectrum: 3 there, 0 here" in one_line_error(capsys, "generate")


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


@pytest.mark.parametrize("flag", ["--ed-weight", "--d4-weight"])
@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_loss_weights_must_be_finite_and_non_negative(tiny_dataset, tmp_path, capsys, flag, value):
    argv = ["train", "--data", str(tiny_dataset), "--out", str(tmp_path / "t"), "--steps", "2", "--mapping",
            "n_int->V", flag, value]  # fmt: skip
    assert cli.main(argv) == 1
    assert flag in one_line_error(capsys, "train")


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


# ----------------------------------------------------------------------------- issue 28, finding 7:
# argument errors are one line, before any work


def _argv(command, out, data="missing-dataset"):
    """Arguments of `command` with --out `out`; the other paths do not exist, so that a command
    that read them before checking --out would fail with another message."""
    return {
        "generate": ["generate", "--out", out, "--samples", "4", *TINY_FLAGS],
        "train": ["train", "--data", data, "--out", out, "--steps", "1"],
        "evaluate": ["evaluate", "--checkpoint", "missing-checkpoint", "--data", data, "--out", out],
        "invert": ["invert", "--checkpoint", "missing-checkpoint", "--data", data, "--out", out],
        "plot": ["plot", "--seed", "1", "--n-electrons", "1", *TINY_FLAGS, "--out", out],
    }[command]


COMMANDS_WITH_OUT = ["generate", "train", "evaluate", "invert", "plot"]


@pytest.mark.parametrize("command", COMMANDS_WITH_OUT)
@pytest.mark.parametrize("kind", ["empty", "file", "dangling link"])
def test_a_bad_out_is_refused_before_any_work(tmp_path, capsys, monkeypatch, command, kind):
    monkeypatch.chdir(tmp_path)  # `--out ""` wrote into the current folder
    if kind == "empty":
        out = ""
    elif kind == "file":
        out = str(tmp_path / "taken")
        (tmp_path / "taken").write_text("a file")
        if command == "plot":  # plot's --out is a file: one inside a file cannot be made
            out = str(tmp_path / "taken" / "p.png")
    else:
        out = str(tmp_path / "link")
        (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    before = sorted(p.name for p in tmp_path.iterdir())
    assert cli.main(_argv(command, out)) == 1
    assert "--out" in one_line_error(capsys, command)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_plot_reports_the_file_it_wrote(tmp_path, capsys):
    # matplotlib adds .png to a name without a suffix; the message named the name given.
    assert cli.main(_argv("plot", str(tmp_path / "plots"))) == 0
    written = tmp_path / "plots.png"
    assert written.stat().st_size > 1000
    assert f"wrote {written.resolve()}\n" in capsys.readouterr().out


@pytest.mark.parametrize("extra, word", [
    (["--samples", "-1"], "--samples"),
    (["--samples", "0"], "--samples"),
    (["--refine", "-1"], "--refine"),
    (["--refine-steps", "0"], "--refine-steps"),
])  # fmt: skip
def test_invert_counts_are_checked_first(tmp_path, capsys, extra, word):
    assert cli.main(_argv("invert", str(tmp_path / "o")) + extra) == 1
    assert word in one_line_error(capsys, "invert")


@pytest.mark.parametrize("extra, word", [
    (["--steps", "-5"], "--steps"),  # blamed --lr-decay
    (["--steps", "0"], "--steps"),
    (["--batch", "0"], "--batch"),
    (["--eval-every", "0"], "--eval-every"),
    (["--lr-decay", "-1"], "--lr-decay"),
])  # fmt: skip
def test_train_counts_are_checked_first(tmp_path, capsys, extra, word):
    assert cli.main(_argv("train", str(tmp_path / "o")) + extra) == 1
    line = one_line_error(capsys, "train")
    assert line.split("error: ")[1].startswith(word), line


def test_a_batch_larger_than_the_training_split_is_refused(tiny_dataset, tmp_path, capsys):
    # tiny_dataset: 12 training samples.
    argv = _argv("train", str(tmp_path / "o"), data=str(tiny_dataset)) + ["--batch", "13", "--devices", "1"]
    assert cli.main(argv) == 1
    line = one_line_error(capsys, "train")
    assert "--batch 13" in line and "12" in line
    assert not (tmp_path / "o").exists()
# ----------------------------------------------------------------------------- trust boundaries (issue 28)


@pytest.fixture(scope="module")
def trained_runs(tiny_dataset, tmp_path_factory):
    """{"fwd": V->n_int, "inv": n_int->V} checkpoint folders, 2 steps each on the tiny dataset."""
    root = tmp_path_factory.mktemp("runs")
    for mapping, folder in (("V->n_int", "fwd"), ("n_int->V", "inv")):
        argv = ["train", "--data", str(tiny_dataset), "--out", str(root / folder), "--mapping", mapping, "--steps",
                "2", "--eval-every", "2", "--batch", "2", "--discriminator", "pixel1", "--no-progress", "--no-figures"]
        assert cli.main(argv) == 0
    return {k: root / k / "checkpoints" for k in ("fwd", "inv")}


@pytest.fixture(scope="module")
def other_dataset(tmp_path_factory):
    """4 samples of N = 2 and 3 in a 60 nm box (the runs above saw N = 2 in a 30 nm box)."""
    out = tmp_path_factory.mktemp("other") / "ds"
    argv = ["generate", "--out", str(out), "--samples", "4", "--splits", "2", "0", "2", "--n-electrons", "2", "3",
            "--chunk-size", "4", "--length", "60", "--no-progress", *TINY_FLAGS]  # fmt: skip
    assert cli.main(argv) == 0
    return out


def test_train_that_diverges_exits_non_zero(tiny_dataset, tmp_path, capsys):
    # lr 1e30 used to end with status 0 and "test R^2 nan".
    argv = ["train", "--data", str(tiny_dataset), "--out", str(tmp_path / "t"), "--steps", "2", "--eval-every", "1",
            "--batch", "2", "--lr", "1e30", "--discriminator", "pixel1", "--no-progress", "--no-figures"]
    assert cli.main(argv) == 1
    line = one_line_error(capsys, "train")
    assert re.search(r"training stopped at step \d+: .*(nan|not finite)", line), line
    assert not (tmp_path / "t" / "metrics.json").exists()


def test_checkpoints_record_the_data_they_were_trained_on(trained_runs, tiny_dataset):
    from qdjax.ml import experiment

    run = experiment.load_run(trained_runs["fwd"])
    meta = run.metadata
    assert meta["n_electrons"] == 2 and meta["mapping"] == "V->n_int" and "scalers" in meta
    assert data.config_from_manifest({"config": meta["ed_config"]}) == data.config_from_manifest(
        data.read_manifest(tiny_dataset))
    assert meta["dataset"]["fingerprint"] == experiment.dataset_metadata(tiny_dataset, 2)["dataset"]["fingerprint"]


@pytest.mark.parametrize("command", ["evaluate", "invert"])
def test_evaluate_and_invert_refuse_other_n_or_box_unless_allowed(trained_runs, other_dataset, tmp_path, capsys,
                                                                   command):  # fmt: skip
    ckpt = trained_runs["fwd" if command == "evaluate" else "inv"]
    base = [command, "--checkpoint", str(ckpt), "--data", str(other_dataset), "--out", str(tmp_path / "o")]
    base += ["--split", "train"] if command == "evaluate" else ["--no-progress"]
    assert cli.main(base + ["--n-electrons", "3"]) == 1
    line = one_line_error(capsys, command)
    assert "n_electrons" in line and "length_nm" in line and "--allow-mismatch" in line
    assert cli.main(base + ["--n-electrons", "2"]) == 1
    line = one_line_error(capsys, command)
    assert "length_nm" in line and "n_electrons" not in line
    assert not (tmp_path / "o").exists()  # refused before any work
    assert cli.main(base + ["--n-electrons", "3", "--allow-mismatch"]) == 0
    err = capsys.readouterr().err
    assert f"qdjax {command}: warning:" in err and "n_electrons" in err


def _with_inf_in_train_V(src, dst):
    """A copy of dataset `src` whose first training potential holds one inf, checksums updated."""
    import hashlib
    import io
    import shutil

    import numpy as np

    shutil.copytree(src, dst)
    manifest_path = dst / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    entry = manifest["chunks"]["0"]
    with np.load(dst / entry["file"]) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["V"][0, 3, 3] = np.inf
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    (dst / entry["file"]).write_bytes(buffer.getvalue())
    entry["sha256"] = hashlib.sha256(buffer.getvalue()).hexdigest()
    manifest_path.write_text(json.dumps(manifest))
    return dst


def test_evaluate_refuses_non_finite_data(trained_runs, tiny_dataset, tmp_path, capsys):
    # One inf in a training potential made the mean map infinite and R^2 1.0000 (status 0).
    bad = _with_inf_in_train_V(tiny_dataset, tmp_path / "bad")
    argv = ["evaluate", "--checkpoint", str(trained_runs["inv"]), "--data", str(bad), "--out", str(tmp_path / "e")]
    assert cli.main(argv) == 1
    assert re.search(r"finite|inf", one_line_error(capsys, "evaluate"))


def test_evaluate_and_invert_exit_non_zero_on_non_finite_scores(trained_runs, tiny_dataset, tmp_path, capsys,
                                                                monkeypatch):  # fmt: skip
    import numpy as np

    from qdjax.ml import evaluate, experiment

    monkeypatch.setattr(evaluate, "predict_physical", lambda state, x, *a, **k: np.full(np.shape(x), np.nan))
    argv = ["evaluate", "--checkpoint", str(trained_runs["fwd"]), "--data", str(tiny_dataset), "--out",
            str(tmp_path / "e")]
    assert cli.main(argv) == 1
    assert "not finite" in one_line_error(capsys, "evaluate")
    assert (tmp_path / "e" / "metrics.json").exists()  # written for inspection

    real = experiment.run_inverse

    def nan_scores(*args, **kwargs):
        result = real(*args, **kwargs)
        result.summary["generator"]["density_r2"] = float("nan")
        return result

    monkeypatch.setattr(experiment, "run_inverse", nan_scores)
    argv = ["invert", "--checkpoint", str(trained_runs["inv"]), "--data", str(tiny_dataset), "--samples", "2",
            "--out", str(tmp_path / "i"), "--no-progress"]
    assert cli.main(argv) == 1
    assert "density_r2" in one_line_error(capsys, "invert")


def test_evaluate_refuses_a_damaged_checkpoint(trained_runs, tiny_dataset, tmp_path, capsys):
    import shutil

    ckpt = shutil.copytree(trained_runs["fwd"], tmp_path / "ck")
    victim = max((p for p in (ckpt / "2" / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 1
    victim.write_bytes(bytes(raw))
    argv = ["evaluate", "--checkpoint", str(ckpt), "--data", str(tiny_dataset), "--out", str(tmp_path / "e")]
    assert cli.main(argv) == 1
    line = one_line_error(capsys, "evaluate")
    assert "damaged" in line and victim.name in line
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
