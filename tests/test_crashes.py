"""kill -9 at arbitrary points of `qdjax train`, then the same command again: the same result
as an uninterrupted run. Damaged checkpoints are reported in one line, never loaded silently.
(Dataset generation has the same test in test_data.py.)"""

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from qdjax import cli
from qdjax.ml import checkpoint
from conftest import TINY_FLAGS

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("crash") / "ds"
    argv = ["generate", "--out", str(out), "--samples", "12", "--splits", "8", "2", "2", "--n-electrons", "2",
            "--chunk-size", "6", "--no-progress", *TINY_FLAGS]
    assert cli.main(argv) == 0
    return out


def train_command(dataset, out):
    return [sys.executable, "-m", "qdjax.cli", "train", "--data", str(dataset), "--out", str(out), "--steps", "12",
            "--eval-every", "2", "--batch", "2", "--discriminator", "pixel1", "--no-progress", "--no-figures"]


def final_params(out):
    restored = checkpoint.load_state(out / "checkpoints", "latest")
    return restored.step, jax.tree.leaves((restored.state.g_params, restored.state.d_params, restored.state.g_opt))


def test_training_killed_at_random_points_resumes_to_the_same_result(dataset, tmp_path):
    reference = tmp_path / "reference"
    subprocess.run(train_command(dataset, reference), cwd=REPO, check=True, capture_output=True)
    assert (reference / "metrics.json").exists() and not list(reference.glob("*.png"))  # --no-figures
    step, want = final_params(reference)
    assert step == 12
    rng = random.Random(0)
    out = tmp_path / "killed"
    kills = 0
    for attempt in range(3):
        proc = subprocess.Popen(train_command(dataset, out), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # Kill once a checkpoint exists (first attempt) or after a random delay (later ones): during
        # start-up, compilation (or its read from the run's compilation cache, see conftest.py), a
        # training step or a checkpoint write.
        deadline = time.monotonic() + (120 if attempt == 0 else rng.uniform(2.0, 12.0))
        while time.monotonic() < deadline and proc.poll() is None:
            if attempt == 0 and (out / "checkpoints").exists() and any(p.name.isdigit() for p in (out / "checkpoints").iterdir()):
                break
            time.sleep(0.01)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait(timeout=60)
        if proc.returncode == 0:
            break
    assert kills >= 1
    subprocess.run(train_command(dataset, out), cwd=REPO, check=True, capture_output=True)
    step, got = final_params(out)
    assert step == 12
    for a, b in zip(got, want):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_damaged_checkpoint_is_a_one_line_error(dataset, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(train_command(dataset, out)[3:]) == 0  # the same command, in this process
    capsys.readouterr()
    damaged = tmp_path / "damaged"
    shutil.copytree(out / "checkpoints", damaged)
    # Truncate every data file of every checkpoint step.
    for path in damaged.rglob("*"):
        if path.is_file() and path.stat().st_size > 0 and path.name != "commit_success.txt":
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    argv = ["evaluate", "--checkpoint", str(damaged), "--data", str(dataset), "--out", str(tmp_path / "e")]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("qdjax evaluate: error: ") and "checkpoint" in err[0]
