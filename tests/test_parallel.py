"""Tests of qdjax.parallel and data-parallel training (`train.fit`, `make_train_step` with a
mesh, `run_mapping`, ``qdjax train --devices``).

Several devices are simulated on the CPU with ``--xla_force_host_platform_device_count``; the
flag must be set before JAX starts, so those tests run a script in a subprocess that writes
its findings as JSON. The reference for 8 devices is the same run on one device in the same
process: data parallelism must not change the trajectory beyond float32 rounding (XLA sums
the batch means in another order).
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import qdjax  # noqa: F401
from qdjax import parallel
from qdjax.ml import train

from conftest import xla_flags

REPO = Path(__file__).resolve().parents[1]
METRICS = list(train.METRIC_NAMES)
#: float32 rounding of a sum over a batch of 8 in another order: a few units of eps (1.2e-7).
RTOL = 1e-5


def spawn(args, devices, env_extra=None):
    """``python args...`` with `devices` simulated CPU devices; stdout and stderr captured."""
    env = dict(os.environ, XLA_FLAGS=xla_flags(f"--xla_force_host_platform_device_count={devices}"),
               JAX_PLATFORMS="cpu", **(env_extra or {}))  # fmt: skip
    return subprocess.Popen([sys.executable, *map(str, args)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def finish(proc, timeout=600):
    """Waits for `proc`, asserts success; returns its last line of output."""
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-4000:]
    return out.strip().splitlines()[-1] if out.strip() else ""


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


#: A tiny pix2pix on 16-pixel images (compiles in seconds), batch 8. Batch norm in both
#: networks: its statistics must be those of the global batch (one image per device would
#: give other numbers); random flips and dropout: their keys must not depend on the devices.
SETUP = """
import json, sys
import jax, numpy as np
import qdjax
from qdjax import parallel
from qdjax.ml import models, train
gen = models.GeneratorConfig(image_size=16, filters=(4, 4, 4, 4), norm="batch", dropout=0.5)
disc = models.DiscriminatorConfig.preset("patch4", (4, 4, 4, 4), norm="batch")
cfg = models.Pix2PixConfig(generator=gen, discriminator=disc, batch_size=8, random_flip=True, learning_rate=1e-3)
x = np.random.default_rng(0).uniform(-1, 1, (16, 16, 16)).astype(np.float32)
def spec(a):
    s = a.sharding
    return [int(s.mesh.size), list(s.spec)] if hasattr(s, "spec") else [len(s.device_set), "single"]
"""


# ----------------------------------------------------------------------------- qdjax.parallel, one process


def test_mesh_and_shardings_on_the_local_device():
    mesh = parallel.batch_mesh()
    assert mesh.axis_names == ("batch",) and list(mesh.devices.flat) == jax.devices()
    x = np.arange(4 * 3, dtype=np.float32).reshape(4, 3)
    g = parallel.global_batch(x, mesh)
    assert g.sharding == parallel.batch_sharding(mesh) and g.sharding.spec == jax.sharding.PartitionSpec("batch")
    np.testing.assert_array_equal(np.asarray(g), x)
    r = parallel.replicate({"a": x}, mesh)["a"]
    assert r.sharding.spec == jax.sharding.PartitionSpec() and r.sharding.is_fully_replicated
    with pytest.raises(ValueError, match="empty"):
        parallel.batch_mesh([])
    with pytest.raises(ValueError, match="distinct"):
        parallel.batch_mesh(jax.devices() * 2)


# ----------------------------------------------------------------------------- 8 simulated devices

EIGHT = SETUP + """
assert len(jax.devices()) == 8, jax.devices()
out = {}
# fit on 1 and on 8 devices, same key: the same trajectory to float32 rounding
for n in (1, 8):
    r = train.fit(cfg, x, -x, x[:3], -x[:3], steps=3, key=0, eval_every=3, progress=False, devices=jax.devices()[:n])
    out[f"history_{n}"] = r.history
    out[f"state_{n}"] = sorted({json.dumps(spec(a)) for a in jax.tree.leaves(r.state)})
    out[f"g_params_{n}"] = [np.asarray(a).tolist() for a in jax.tree.leaves(r.state.g_params)[:2]]
# the step with a mesh: the batch split over the devices (one image each), the state replicated
mesh = parallel.batch_mesh()
step = train.make_train_step(cfg, mesh)
state = train.init_state(cfg, jax.random.key(0))
batch = (parallel.global_batch(x[:8], mesh), parallel.global_batch(-x[:8], mesh))
out["batch_shards"] = [list(s.data.shape) for s in batch[0].addressable_shards]
out["batch_devices"] = sorted(s.device.id for s in batch[0].addressable_shards)
compiled = step.lower(parallel.replicate(state, mesh), batch, jax.random.key(1)).compile()
(state_in, batch_in, key_in), _ = compiled.input_shardings
out["compiled_in"] = [sorted({json.dumps(list(s.spec)) for s in jax.tree.leaves(state_in)}),
                      [list(s.spec) for s in batch_in], list(key_in.spec)]
out["compiled_out"] = sorted({json.dumps(list(s.spec)) for s in jax.tree.leaves(compiled.output_shardings)})
out["all_reduce"] = "all-reduce" in compiled.as_text()
# host arrays are accepted too and sharded by the step
new, m = step(state, (x[:8], -x[:8]), jax.random.key(1))
out["host_batch_step"] = [float(m["g_l1"]), spec(jax.tree.leaves(new.g_params)[0])]
# batch sizes that do not split over 8 devices
errors = {}
try:
    step(state, (x[:12], -x[:12]), jax.random.key(1))
except ValueError as e:
    errors["step"] = str(e)
try:
    train.fit(cfg.replace(batch_size=12), x, -x, x[:3], -x[:3], steps=1, key=0, progress=False)
except ValueError as e:
    errors["fit"] = str(e)
out["errors"] = errors
json.dump(out, open(sys.argv[1], "w"))
"""


@pytest.fixture(scope="module")
def eight(tmp_path_factory):
    path = tmp_path_factory.mktemp("eight") / "out.json"
    proc = spawn(["-c", EIGHT, path], 8)
    finish(proc)
    return json.loads(path.read_text())


def test_eight_devices_follow_the_one_device_trajectory(eight):
    one, many = eight["history_1"], eight["history_8"]
    assert one["step"] == many["step"] == [1, 2, 3]
    for name in METRICS:
        np.testing.assert_allclose(many[name], one[name], rtol=RTOL, err_msg=name)
    # the updated weights too (Adam's first steps move each weight by about the learning rate)
    for a, b in zip(eight["g_params_8"], eight["g_params_1"]):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=1e-6)
    # the run did train: the losses changed from step to step
    assert len(set(one["g_l1"])) == 3


def test_eight_devices_shard_the_batch_and_replicate_the_state(eight):
    assert eight["state_1"] == ['[1, "single"]']
    assert eight["state_8"] == ["[8, []]"]
    assert eight["batch_shards"] == [[1, 16, 16]] * 8 and eight["batch_devices"] == list(range(8))
    state_in, batch_in, key_in = eight["compiled_in"]
    assert state_in == ["[]"] and key_in == []  # replicated
    assert batch_in == [["batch"]] * 2  # split along the batch axis
    assert eight["compiled_out"] == ["[]"]
    assert eight["all_reduce"]  # the gradients (and batch means) are summed over the devices
    assert eight["host_batch_step"][1] == [8, []]


def test_a_batch_that_does_not_split_over_the_devices_is_refused(eight):
    errors = eight["errors"]
    assert "multiple of the number of devices (8)" in errors["fit"] and "(12)" in errors["fit"]
    assert "12" in errors["step"]


# ----------------------------------------------------------------------------- qdjax train, run_mapping

CLI = """
import sys
import jax
from qdjax import cli
assert len(jax.devices()) == 4
data, out = sys.argv[1], sys.argv[2]
common = ["train", "--data", data, "--steps", "2", "--eval-every", "2", "--discriminator", "pixel1", "--no-progress",
          "--no-figures"]
assert cli.main(common + ["--out", out + "/four", "--batch", "4"]) == 0
assert cli.main(common + ["--out", out + "/two", "--batch", "2", "--devices", "2"]) == 0
assert cli.main(common + ["--out", out + "/bad", "--batch", "2"]) == 1
assert cli.main(common + ["--out", out + "/bad", "--batch", "2", "--devices", "5"]) == 1
"""


def test_qdjax_train_on_several_devices(tiny_dataset, tmp_path):
    # `qdjax train` (run_mapping) on all 4 devices and on 2 of them; a batch that does not
    # split and more devices than there are give one-line errors.
    proc = spawn(["-c", CLI, tiny_dataset, tmp_path], 4)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-4000:]
    for folder in ("four", "two"):
        summary = json.loads((tmp_path / folder / "metrics.json").read_text())
        assert summary["best_step"] == 2 and np.isfinite(summary["test"]["r2"])
    errors = [line for line in err.splitlines() if line.startswith("qdjax train: error:")]
    assert len(errors) == 2
    assert "--batch 2 must be a multiple of the number of devices (4)" in errors[0]
    assert "--devices must be 'all' or a number from 1 to 4" in errors[1]


# ----------------------------------------------------------------------------- two processes

PROCESS = SETUP + """
jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
assert jax.process_count() == 2 and len(jax.devices()) == 4 and len(jax.local_devices()) == 2
steps = int(sys.argv[4])
r = train.fit(cfg, x, -x, x[:3], -x[:3], steps=steps, key=0, eval_every=2, progress=False, checkpoint_dir=sys.argv[3])
leaf = jax.tree.leaves(r.state.g_params)[0]
print(json.dumps({"history": r.history, "spec": spec(leaf)}))
"""


def test_two_processes_follow_the_one_device_trajectory(tmp_path):
    # Two processes with two CPU devices each, joined by jax.distributed.initialize (Gloo
    # collectives on the CPU) as two hosts would be: 2 steps, a checkpoint, then a resumed run
    # to 4 steps, against 4 steps on one device.
    gloo = {"JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo"}
    one = SETUP + ("r = train.fit(cfg, x, -x, x[:3], -x[:3], steps=4, key=0, eval_every=2, progress=False, "
                   "devices=jax.devices()[:1])\nprint(json.dumps(r.history))")  # fmt: skip
    ref = json.loads(finish(spawn(["-c", one], 1)))
    for steps in (2, 4):
        address = f"localhost:{free_port()}"
        procs = [spawn(["-c", PROCESS, address, i, tmp_path, steps], 2, gloo) for i in range(2)]
        outs = [json.loads(finish(p)) for p in procs]
        assert outs[0] == outs[1]  # both processes hold the same replicated values
        assert outs[0]["spec"] == [4, []]  # the state replicated over the 4 devices of both
        assert outs[0]["history"]["step"] == list(range(1, steps + 1))
    for metric in METRICS:
        np.testing.assert_allclose(outs[0]["history"][metric], ref[metric], rtol=RTOL, err_msg=metric)
