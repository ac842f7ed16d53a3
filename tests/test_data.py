"""qdjax.data: samples against direct ED calls, bit-identical resumption after SIGKILL,
refusal of mismatched folders, damaged chunks, splits, several devices and processes; the
optional spectrum (`spectrum=K`) against direct spectrum and ground-state calls.

All datasets use a small configuration (grid 16, basis 8, 4 orbitals) and batch size 1, so
every in-process run shares one compiled ED program.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import qdjax
import qdjax.cli
from qdjax import backend, data, ed, potentials, spectrum
from conftest import TINY_FLAGS, xla_flags

CFG = qdjax.EDConfig(grid=16, basis=8, orbitals=4)
NS = (1, 2, 3, 4)
SEED = 7
N_SAMPLES = 8  # chunks of 3: 3 + 3 + 2 samples, the last one partial
KW = dict(n_electrons=NS, config=CFG, seed=SEED, chunk_size=3, batch_size=1, splits=(6, 1, 1), progress=False)
REPO = Path(__file__).resolve().parents[1]


def files(folder):
    """File name -> bytes of every dataset file (lock files excluded)."""
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if not p.name.endswith(".lock")}


def run_python(code, env_extra=None, timeout=300):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted single-process, single-device run: the reference every test compares with."""
    folder = tmp_path_factory.mktemp("reference")
    result = data.generate(folder, N_SAMPLES, **KW)
    assert result.complete and result.computed == N_SAMPLES and result.n_chunks == 3
    return folder


def _copy_of(folder, tmp_path, name):
    """A copy of the dataset folder `folder` in tmp_path / name."""
    shutil.copytree(folder, tmp_path / name)
    return tmp_path / name


@pytest.fixture
def copy(reference, tmp_path):
    return _copy_of(reference, tmp_path, "copy")


K = 3  # spin multiplets per N; N = 1 has only 4 states in 4 orbitals
SPECTRAL_KW = dict(KW, spectrum=K)  # the same dataset with its spectrum


@pytest.fixture(scope="module")
def spectral(tmp_path_factory):
    """The reference run with the spectrum: uninterrupted, single process, single device."""
    folder = tmp_path_factory.mktemp("spectral")
    assert data.generate(folder, N_SAMPLES, **SPECTRAL_KW).complete
    return folder


@pytest.fixture
def spectral_copy(spectral, tmp_path):
    return _copy_of(spectral, tmp_path, "spectral_copy")


def test_sample_seeds_follow_the_documented_rule(reference):
    # Expected values: the derivation written in the module docstring and docs/data.md.
    expected = [int(np.random.SeedSequence([SEED, k]).generate_state(1, np.uint64)[0]) for k in range(N_SAMPLES)]
    assert [data.sample_seed(SEED, k) for k in range(N_SAMPLES)] == expected
    assert len(set(expected)) == N_SAMPLES
    assert data.sample_seed(SEED + 1, 0) != expected[0]
    ds = data.load(reference)
    np.testing.assert_array_equal(ds.seed, np.array(expected, dtype=np.uint64))
    np.testing.assert_array_equal(ds.index, np.arange(N_SAMPLES))


def test_samples_equal_direct_ground_state_calls(reference):
    ds = data.load(reference)
    # Potentials: exactly qdjax.potentials.random_potential of each sample's seed.
    V = np.stack([potentials.random_potential(int(s), CFG) for s in ds.seed])
    np.testing.assert_array_equal(ds.V, V)
    np.testing.assert_array_equal(ds.n_electrons, NS)
    # Densities and energies: direct qdjax.ed.ground_state calls with the interaction on and off
    # (config.non_interacting()). The reference solves all 8 maps in one vmapped call while the
    # dataset solves them one by one; batched kernels may round differently, hence 1e-10.
    for j, n in enumerate(NS):
        for cfg, density, energy in ((CFG, ds.n_int, ds.energy_int), (CFG.non_interacting(), ds.n0, ds.energy0)):
            gs = ed.ground_state(V, n, cfg)
            np.testing.assert_allclose(density[:, j], gs.density, rtol=0, atol=1e-10 * float(np.max(gs.density)))
            np.testing.assert_allclose(energy[:, j], gs.energy, rtol=1e-10)
            np.testing.assert_allclose(ds.orbital_energies, gs.orbital_energies, rtol=1e-10)
    # The two densities must differ (the interaction spreads the charge for N >= 2), so a swap of
    # n0 and n_int could not pass the comparison above.
    assert np.abs(ds.n_int[:, 1] - ds.n0[:, 1]).max() > 1e3 * 1e-10 * ds.n0.max()


def test_a_sample_recomputed_alone_has_the_stored_bits(reference):
    # With batch size 1 every sample is its own instance of the ED program, so a sample
    # recomputed from its seed alone reproduces the stored arrays exactly.
    ds = data.load(reference)
    alone = data.compute_samples([ds.seed[4]], NS, CFG)
    for key in ("V", "n0", "n_int", "energy0", "energy_int", "orbital_energies"):
        np.testing.assert_array_equal(alone[key][0], getattr(ds, key)[4], err_msg=key)


def test_resume_after_sigkill_is_bit_identical(tmp_path):
    # 100 chunks of 2 samples, made by the `qdjax generate` command in a subprocess that is
    # killed with SIGKILL as soon as the first chunk is recorded; then the same settings run again.
    args = dict(KW, chunk_size=2, splits=None)
    n = 200
    killed, fresh = tmp_path / "killed", tmp_path / "fresh"
    command = [sys.executable, "-m", "qdjax.cli", "generate", "--out", str(killed), "--samples", str(n),
               "--chunk-size", "2", "--seed", str(SEED), "--batch-size", "1", "--no-progress", *TINY_FLAGS]  # fmt: skip
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    manifest = killed / "manifest.json"
    deadline = time.monotonic() + 240
    recorded = 0
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            recorded = len(json.loads(manifest.read_text())["chunks"])
        except (OSError, ValueError, KeyError):
            recorded = 0
        if recorded:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.002)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    done = len(json.loads(manifest.read_text())["chunks"])
    assert 1 <= done < n // 2, f"{done} chunks recorded: the run was not interrupted"
    with pytest.raises(data.DatasetError, match="not finished"):
        data.load(killed)

    resumed = data.generate(killed, n, **args)
    assert resumed.complete and resumed.computed == n - 2 * done
    data.generate(fresh, n, **args)
    got, want = files(killed), files(fresh)
    assert sorted(got) == sorted(want)  # no temporary files left behind
    for name in want:
        assert got[name] == want[name], name
    a, b = data.load(killed), data.load(fresh)
    for key in data.Dataset._fields:
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key))


def test_leftovers_of_a_crash_are_ignored_or_redone(reference, copy):
    # The states a kill can leave: a half-written temporary chunk, a chunk renamed into place
    # but not yet in the manifest (here garbage), and a half-written temporary manifest.
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["chunks"]["2"]
    (copy / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    (copy / "chunk-00002.npz").write_bytes(b"PK\x03\x04 truncated")
    (copy / ".chunk-00001.npz.tmp").write_bytes(b"PK\x03\x04 half")
    (copy / ".manifest.json.tmp").write_text('{"chunks": ')
    with pytest.raises(data.DatasetError, match="chunk 2"):
        data.load(copy)
    assert data.load(copy, "train").index.tolist() == list(range(6))  # chunks 0 and 1 are intact
    result = data.generate(copy, N_SAMPLES, **KW)
    assert result.computed == 2  # chunk 2 only
    assert files(copy) == files(reference)


def test_a_folder_with_other_settings_is_refused(reference, copy):
    before = files(copy)
    with pytest.raises(data.DatasetError, match=r"seed: 7 there, 8 here"):
        data.generate(copy, N_SAMPLES, **dict(KW, seed=8))
    with pytest.raises(data.DatasetError, match=r"config\.grid: 16 there, 20 here"):
        data.generate(copy, N_SAMPLES, **dict(KW, config=CFG.replace(grid=20)))
    with pytest.raises(data.DatasetError, match=r"n_samples: 8 there, 9 here"):
        data.generate(copy, 9, **dict(KW, splits=(7, 1, 1)))
    with pytest.raises(data.DatasetError, match=r"batch_size: 1 there, 2 here"):
        data.generate(copy, N_SAMPLES, **dict(KW, batch_size=2))
    assert files(copy) == before  # nothing was written
    other = copy.parent / "other"
    other.mkdir()
    (other / "notes.txt").write_text("not a dataset")
    with pytest.raises(data.DatasetError, match="not empty"):
        data.generate(other, N_SAMPLES, **KW)


def test_a_damaged_chunk_is_named_and_recomputed(reference, copy):
    chunk = copy / "chunk-00001.npz"
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # one flipped bit inside the density data
    chunk.write_bytes(bytes(raw))
    with pytest.raises(data.DatasetError, match=r"chunk 1 \(.*chunk-00001\.npz\) is damaged"):
        data.load(copy)
    # Chunks not needed by a split are not read: validation and test live in chunk 2.
    assert data.load(copy, "test").index.tolist() == [7]
    assert data.describe(copy, verify=True)["damaged"] == [1]
    (copy / "chunk-00000.npz").unlink()
    with pytest.raises(data.DatasetError, match=r"chunk 0 \(.*chunk-00000\.npz\) is missing"):
        data.load(copy)
    assert data.generate(copy, N_SAMPLES, **KW).computed == 6  # both recomputed
    assert files(copy) == files(reference)


def test_splits_are_contiguous_index_ranges(reference):
    # Paper: 5000 samples, 4800 for training, 100 for validation and 100 for testing.
    assert data.default_splits(5000) == (4800, 100, 100)
    full = data.load(reference)
    parts = [data.load(reference, s) for s in data.SPLITS]
    assert [p.index.tolist() for p in parts] == [list(range(6)), [6], [7]]
    for key in ("V", "n0", "n_int", "energy0", "energy_int", "orbital_energies", "seed"):
        np.testing.assert_array_equal(np.concatenate([getattr(p, key) for p in parts]), getattr(full, key))
    three = data.load(reference, "train", n_electrons=3)
    np.testing.assert_array_equal(three.n_int, full.n_int[:6, 2])
    np.testing.assert_array_equal(three.energy0, full.energy0[:6, 2])
    assert int(three.n_electrons) == 3
    # Sum rule of every stored density: sum(n) h^2 = N.
    h2 = CFG.pixel_nm**2
    np.testing.assert_allclose(full.n_int.sum(axis=(-1, -2)) * h2, np.broadcast_to(NS, (N_SAMPLES, 4)), rtol=1e-10)
    with pytest.raises(data.DatasetError, match="unknown split"):
        data.load(reference, "training")


def test_the_files_are_plain_numpy(reference):
    # The format promise: np.load with allow_pickle=False reads every chunk, and the manifest's
    # sha256 is that of the file (hashlib on the bytes, as `sha256sum` would give).
    import hashlib

    manifest = json.loads((reference / "manifest.json").read_text())
    assert manifest["format"] == "qdjax-dataset" and manifest["format_version"] == 1
    assert manifest["config"]["grid"] == 16 and manifest["n_electrons"] == list(NS)
    for key, entry in manifest["chunks"].items():
        raw = (reference / entry["file"]).read_bytes()
        assert hashlib.sha256(raw).hexdigest() == entry["sha256"]
        with np.load(reference / entry["file"], allow_pickle=False) as npz:
            assert sorted(npz.files) == sorted(data.ARRAY_KEYS)
            assert npz["n0"].shape == (entry["stop"] - entry["start"], 4, 16, 16)
            assert npz["index"][0] == int(key) * 3
        assert entry["code"] == data.code_fingerprint()


#: Thread-count getters of the OpenBLAS builds that NumPy, SciPy and jaxlib use (the oracle below
#: asks OpenBLAS itself, independently of threadpoolctl, which `single_threaded_blas` uses).
OPENBLAS_GETTERS = ("scipy_openblas_get_num_threads", "scipy_openblas_get_num_threads64_",
                    "openblas_get_num_threads", "openblas_get_num_threads64_")  # fmt: skip


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds OpenBLAS through /proc/self/maps")
def test_single_threaded_blas_sets_and_restores_the_thread_count():
    import ctypes

    import jax.numpy as jnp

    jnp.linalg.eigh(jnp.eye(2))  # loads the LAPACK library of JAX's CPU kernels
    with open("/proc/self/maps") as maps:
        paths = sorted({line.split()[-1] for line in maps if "openblas" in line.rsplit("/", 1)[-1].lower()})
    getters = [getattr(ctypes.CDLL(p), g) for p in paths for g in OPENBLAS_GETTERS if hasattr(ctypes.CDLL(p), g)]
    if not getters:
        pytest.skip("no OpenBLAS loaded")
    before = [g() for g in getters]
    with data.single_threaded_blas():
        assert [g() for g in getters] == [1] * len(getters)
    assert [g() for g in getters] == before


def test_single_threaded_blas_goes_through_threadpoolctl(monkeypatch):
    # Issue 28, finding 8: the BLAS thread limit is threadpoolctl's (every BLAS it knows:
    # OpenBLAS, MKL, BLIS), not a scan of /proc/self/maps with ctypes calls.
    import threadpoolctl

    calls = []
    limits = threadpoolctl.threadpool_limits

    def recording(*args, **kwargs):
        calls.append((args, kwargs))
        return limits(*args, **kwargs)

    monkeypatch.setattr(threadpoolctl, "threadpool_limits", recording)
    with data.single_threaded_blas():
        pass
    assert calls == [((), dict(limits=1, user_api="blas"))]
    assert data.single_threaded_blas is backend.single_threaded_blas


def test_several_devices_give_the_same_bits(reference, spectral, tmp_path):
    # Four simulated CPU devices (the flag must be set before JAX starts, hence a subprocess):
    # each call is sharded over Mesh(4 devices, "batch"), one sample per device; with and
    # without the spectrum.
    out = tmp_path / "four"
    code = textwrap.dedent(f"""
        import jax, qdjax
        from qdjax import data
        assert len(jax.local_devices()) == 4, jax.local_devices()
        cfg = qdjax.EDConfig(grid=16, basis=8, orbitals=4)
        for folder, spectrum in (("plain", 0), ("spectral", {K})):
            r = data.generate({str(out)!r} + "/" + folder, {N_SAMPLES}, n_electrons={NS}, config=cfg, seed={SEED},
                              chunk_size=3, batch_size=1, splits=(6, 1, 1), progress=False, spectrum=spectrum)
            assert r.complete
    """)
    proc = run_python(code, {"XLA_FLAGS": xla_flags("--xla_force_host_platform_device_count=4"), "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert files(out / "plain") == files(reference)
    assert files(out / "spectral") == files(spectral)


def test_processes_make_their_share_and_merge(reference, tmp_path):
    # Simulated two-process run: process 1 makes chunk 1, process 0 chunks 0 and 2.
    folder = tmp_path / "two"
    r1 = data.generate(folder, N_SAMPLES, **KW, process_index=1, process_count=2)
    assert (r1.computed, r1.chunks_done, r1.complete) == (3, 1, False)
    with pytest.raises(data.DatasetError, match="not finished"):
        data.load(folder)
    r0 = data.generate(folder, N_SAMPLES, **KW, process_index=0, process_count=2)
    assert (r0.computed, r0.chunks_done, r0.complete) == (5, 3, True)
    assert sorted(p.name for p in folder.glob("manifest*.json")) == [
        "manifest.process-0-of-2.json", "manifest.process-1-of-2.json"]  # fmt: skip
    a, b = data.load(folder), data.load(reference)
    for key in data.Dataset._fields:
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
    data.merge(folder)
    assert files(folder) == files(reference)
    # A single process continues a merged folder without recomputing anything.
    assert data.generate(folder, N_SAMPLES, **KW).computed == 0


def test_processes_make_their_share_of_a_spectrum_and_merge(spectral, tmp_path):
    folder = tmp_path / "two"
    assert data.generate(folder, N_SAMPLES, **SPECTRAL_KW, process_index=1, process_count=2).computed == 3
    assert data.generate(folder, N_SAMPLES, **SPECTRAL_KW, process_index=0, process_count=2).complete
    data.merge(folder)
    assert files(folder) == files(spectral)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(splits=(5, 1, 1)), "add up"),
        (dict(n_electrons=(1, 9)), r"1\.\.8"),
        (dict(n_electrons=(2, 2)), "repeated"),
        (dict(batch_size=0), "batch_size"),
        (dict(chunk_size=-1), "chunk_size"),
        (dict(seed=-1), "seed"),
        (dict(process_index=2, process_count=2), "process_index"),
        (dict(spectrum=-1), "spectrum must be a non-negative integer"),
        (dict(spectrum=True), "spectrum must be a non-negative integer"),
        (dict(spectrum=2.0), "spectrum must be a non-negative integer"),
        (dict(spectrum=5), r"spectrum=5 is too large for N=1: .*4 states"),  # C(4, 1) determinants
    ],
)
def test_invalid_arguments_are_rejected_before_any_work(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        data.generate(tmp_path / "x", N_SAMPLES, **dict(KW, **kwargs))
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------- issue 28, finding 4:
# the manifest is checked against the chunks, and against itself


def edit_manifest(folder, change):
    """Rewrite manifest.json after change(manifest) (a hand edit)."""
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def rewrite_chunk(folder, c, change):
    """Replace chunk c by np.savez of its arrays after change(arrays), with the manifest's
    sha256 updated to the new file (a chunk that passes the checksum)."""
    import hashlib

    path = folder / f"chunk-{c:05d}.npz"
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    change(arrays)
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    edit_manifest(folder, lambda m: m["chunks"][str(c)].update(sha256=digest))


def refused_everywhere(folder, field, generate_kwargs=None):
    """load, describe(verify=True) and generate with the manifest's settings all name `field`."""
    with pytest.raises(data.DatasetError, match=field):
        data.load(folder)
    with pytest.raises(data.DatasetError, match=field):
        info = data.describe(folder, verify=True)
        if info["problems"]:
            raise data.DatasetError("; ".join(info["problems"]))
    if generate_kwargs is not None:
        with pytest.raises(data.DatasetError, match=field):
            data.generate(folder, N_SAMPLES, **dict(KW, **generate_kwargs))


def test_an_edited_seed_is_caught_by_the_stored_seeds(copy):
    edit_manifest(copy, lambda m: m.update(seed=8))
    # generate with the edited settings used to report "dataset complete"
    refused_everywhere(copy, "seed", dict(seed=8))


def test_an_edited_grid_is_caught_by_the_stored_shapes(copy):
    edit_manifest(copy, lambda m: m["config"].update(grid=20))
    refused_everywhere(copy, "grid", dict(config=CFG.replace(grid=20)))


def test_edited_electron_numbers_are_caught(copy):
    edit_manifest(copy, lambda m: m.update(n_electrons=[4, 3, 2, 1]))
    refused_everywhere(copy, "n_electrons", dict(n_electrons=(4, 3, 2, 1)))


@pytest.mark.parametrize("splits, word", [
    ({"train": [0, 7], "validation": [6, 7], "test": [7, 8]}, "overlap"),  # validation leaks training samples
    ({"train": [0, 6], "validation": [6, 7], "test": [7, 9]}, "n_samples"),
    ({"train": [0, 6], "validation": [7, 6], "test": [7, 8]}, "validation"),
    ({"train": [0, 6], "test": [6, 8]}, "validation"),
])  # fmt: skip
def test_splits_must_be_disjoint_ranges_of_the_samples(copy, splits, word):
    edit_manifest(copy, lambda m: m.update(splits=splits))
    for split in (None, "train"):
        with pytest.raises(data.DatasetError, match=f"splits.*{word}"):
            data.load(copy, split)
    with pytest.raises(data.DatasetError, match="splits"):
        data.describe(copy)


@pytest.mark.parametrize("file", ["../outside.npz", "/tmp/chunk-00000.npz", "sub/chunk-00000.npz"])
def test_chunk_files_must_stay_inside_the_folder(copy, file):
    # Even a file outside with the right checksum is refused: the manifest names files in its folder.
    outside = copy.parent / "outside.npz"
    shutil.copy(copy / "chunk-00000.npz", outside)
    edit_manifest(copy, lambda m: m["chunks"]["0"].update(file=file))
    with pytest.raises(data.DatasetError, match="file"):
        data.load(copy)
    with pytest.raises(data.DatasetError, match="file"):
        data.describe(copy, verify=True)


def test_unverified_load_still_checks_the_indices(copy):
    rewrite_chunk(copy, 1, lambda a: a.update(index=a["index"][::-1].copy()))
    with pytest.raises(data.DatasetError, match="index"):
        data.load(copy, verify=False)


def test_an_empty_chunk_is_a_clear_error(copy):
    (copy / "chunk-00001.npz").write_bytes(b"")
    for verify in (True, False):
        with pytest.raises(data.DatasetError, match=r"chunk 1 .*chunk-00001\.npz"):
            data.load(copy, verify=verify)


@pytest.mark.parametrize("key, bad", [("n_int", np.nan), ("V", np.inf), ("energy0", -np.inf)])
def test_non_finite_values_in_a_chunk_are_reported(copy, key, bad, capsys):
    def poison(arrays):
        arrays[key].flat[5] = bad

    rewrite_chunk(copy, 2, poison)  # the checksum matches: only the contents tell
    with pytest.raises(data.DatasetError, match=f"chunk 2.*NaN or infinite.*{key}"):
        data.load(copy)
    with pytest.raises(data.DatasetError, match=f"NaN or infinite.*{key}"):
        data.load(copy, "test", verify=False)
    assert data.load(copy, "train").index.tolist() == list(range(6))  # chunks 0 and 1 are clean
    assert qdjax.cli.main(["info", str(copy), "--verify"]) == 1
    assert f"NaN or infinite values in {key}" in capsys.readouterr().err


# ----------------------------------------------------------------------------- issue 28, finding 5:
# concurrent writers with different layouts


@pytest.mark.parametrize("running, starting", [
    (dict(), dict(process_index=1, process_count=2)),  # the crash: plain run, then a share of two
    (dict(process_index=0, process_count=2), dict()),
])  # fmt: skip
def test_a_writer_of_another_layout_is_refused_while_one_runs(tmp_path, running, starting):
    # A real `generate` in a subprocess (200 samples of 1, enough to keep it busy); once its manifest
    # exists it holds its lock, and a writer of the other layout must be refused before writing.
    folder = tmp_path / "shared"
    n = 200
    code = textwrap.dedent(f"""
        import qdjax
        from qdjax import data
        data.generate({str(folder)!r}, {n}, n_electrons={NS}, config=qdjax.EDConfig(grid=16, basis=8, orbitals=4),
                      seed={SEED}, chunk_size=1, batch_size=1, progress=False, **{running!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not list(folder.glob("manifest*.json")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        before = sorted(p.name for p in folder.iterdir() if p.name.startswith("manifest"))
        with pytest.raises(data.DatasetError, match=r"another process is writing .*process.count"):
            data.generate(folder, n, **dict(KW, chunk_size=1, splits=None, **starting))
        assert sorted(p.name for p in folder.iterdir() if p.name.startswith("manifest")) == before
    finally:
        proc.kill()
        proc.wait(timeout=60)


def test_temporary_names_of_two_writes_differ(tmp_path, monkeypatch):
    # Two writers of the same file (e.g. a chunk) must not share a temporary file.
    renamed = []
    replace = os.replace
    monkeypatch.setattr(data.os, "replace", lambda src, dst: (renamed.append(Path(src)), replace(src, dst)))
    target = tmp_path / "chunk-00000.npz"
    data._atomic_write(target, b"one")
    data._atomic_write(target, b"two")
    assert len(renamed) == 2 and renamed[0] != renamed[1]
    assert all(p.name.startswith(".chunk-00000.npz.") and p.name.endswith(".tmp") for p in renamed)
    assert target.read_bytes() == b"two" and sorted(p.name for p in tmp_path.iterdir()) == ["chunk-00000.npz"]


# ----------------------------------------------------------------------------- the spectrum (spectrum=K)


def test_stored_spectrum_equals_direct_spectrum_calls(spectral):
    ds = data.load(spectral)
    manifest = json.loads((spectral / "manifest.json").read_text())
    assert manifest["spectrum"] == K and manifest["arrays"] == {**data.ARRAY_KEYS, **data.SPECTRUM_KEYS}
    assert ds.spectrum_energies.shape == ds.spectrum_spin.shape == (N_SAMPLES, len(NS), K)
    for j, n in enumerate(NS):
        # Reference: qdjax.spectrum.spectrum on all 8 stored potentials in one call (the dataset
        # solves one per call; batched kernels may round differently, hence 1e-10).
        direct = spectrum.spectrum(ds.V, n, K, CFG)
        np.testing.assert_allclose(ds.spectrum_energies[:, j], direct.energies, rtol=1e-10)
        np.testing.assert_allclose(ds.spectrum_spin[:, j], direct.total_spin, rtol=0, atol=1e-8)
        # The lowest multiplet is the ground state that qdjax.ed.ground_states stored.
        np.testing.assert_allclose(ds.spectrum_energies[:, j, 0], ds.energy_int[:, j], rtol=0, atol=1e-10)
    assert np.all(np.diff(ds.spectrum_energies, axis=-1) >= 0)
    # Spin oracles: one electron has S = 1/2; two electrons in a spin-independent Hamiltonian
    # have a singlet ground state (Lieb and Mattis, Phys. Rev. 125, 164 (1962)).
    np.testing.assert_allclose(ds.spectrum_spin[:, 0], 0.5, atol=1e-8)
    np.testing.assert_allclose(ds.spectrum_spin[:, 1, 0], 0.0, atol=1e-8)
    # One N: the N axis is dropped, mu keeps all N.
    two = data.load(spectral, "test", n_electrons=2)
    np.testing.assert_array_equal(two.spectrum_energies, ds.spectrum_energies[7:, 1])
    np.testing.assert_array_equal(two.spectrum_spin, ds.spectrum_spin[7:, 1])
    np.testing.assert_array_equal(two.chemical_potential, ds.chemical_potential[7:])
    # A sample recomputed alone (batch size 1) has the stored bits, spectrum included.
    alone = data.compute_samples([ds.seed[4]], NS, CFG, spectrum=K)
    for key in data.SPECTRUM_KEYS:
        np.testing.assert_array_equal(alone[key][0], getattr(ds, key)[4], err_msg=key)


@pytest.mark.parametrize("ns", [NS, (2, 4)], ids=["contiguous", "without-1-and-3"])
def test_chemical_potentials_are_differences_of_ground_state_energies(spectral, tmp_path, ns):
    folder = spectral
    if ns != NS:  # mu(1), mu(3) need N = 1, 3, which the dataset does not hold
        folder = tmp_path / "sparse"
        data.generate(folder, N_SAMPLES, **dict(SPECTRAL_KW, n_electrons=ns))
    ds = data.load(folder)
    assert ds.spectrum_energies.shape == (N_SAMPLES, len(ns), K)
    # Oracle: qdjax.ed.ground_state for each N directly on the stored potentials, E0(0) = 0.
    e0 = np.stack([np.zeros(N_SAMPLES)] + [ed.ground_state(ds.V, n, CFG).energy for n in range(1, 5)], axis=1)
    np.testing.assert_allclose(ds.chemical_potential, np.diff(e0, axis=1), rtol=0, atol=1e-10)
    # mu sums to the stored ground-state energies (exactly so where they are its source).
    total = np.cumsum(ds.chemical_potential, axis=1)[:, np.asarray(ns) - 1]
    np.testing.assert_allclose(total, ds.energy_int, rtol=0, atol=1e-10 if ns != NS else 1e-14)


def test_an_interrupted_run_with_a_spectrum_resumes_bit_identically(spectral, tmp_path, monkeypatch):
    # Ctrl-C while chunk 1 is being written; the same call again finishes the folder.
    folder = tmp_path / "interrupted"
    write = data._atomic_write

    def interrupted(path, payload):
        if path.name == "chunk-00001.npz":
            raise KeyboardInterrupt
        write(path, payload)

    monkeypatch.setattr(data, "_atomic_write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        data.generate(folder, N_SAMPLES, **SPECTRAL_KW)
    monkeypatch.undo()
    assert list(json.loads((folder / "manifest.json").read_text())["chunks"]) == ["0"]
    resumed = data.generate(folder, N_SAMPLES, **SPECTRAL_KW)
    assert resumed.complete and resumed.computed == N_SAMPLES - 3
    assert files(folder) == files(spectral)


def test_the_spectrum_is_part_of_the_dataset_settings(copy, spectral_copy):
    before = files(spectral_copy)
    with pytest.raises(data.DatasetError, match=r"other settings .*spectrum: 3 there, 2 here"):
        data.generate(spectral_copy, N_SAMPLES, **dict(KW, spectrum=2))
    with pytest.raises(data.DatasetError, match=r"spectrum: 3 there, 0 here"):
        data.generate(spectral_copy, N_SAMPLES, **KW)
    assert files(spectral_copy) == before  # nothing was written
    # Without a spectrum the manifest has no "spectrum" key, like those of datasets made before
    # the option existed; absent and 0 are the same setting.
    manifest = json.loads((copy / "manifest.json").read_text())
    assert "spectrum" not in manifest and manifest["arrays"] == data.ARRAY_KEYS
    with pytest.raises(data.DatasetError, match=r"spectrum: 0 there, 3 here"):
        data.generate(copy, N_SAMPLES, **SPECTRAL_KW)
    assert data.generate(copy, N_SAMPLES, **dict(KW, spectrum=0)).computed == 0
    edit_manifest(copy, lambda m: m.update(spectrum=0))
    assert data.generate(copy, N_SAMPLES, **KW).computed == 0
    for ds in (data.load(copy), data.load(copy, "train", n_electrons=2)):
        assert ds.spectrum_energies is None and ds.spectrum_spin is None and ds.chemical_potential is None
    assert data.describe(copy)["spectrum"] == 0 and data.describe(spectral_copy)["spectrum"] == K


def _set_spin(value):
    """A change of a chunk: one stored S (sample 0, N = 1, third multiplet) set to `value`."""
    return lambda arrays: np.put(arrays["spectrum_spin"], 2, value)


@pytest.mark.parametrize("change, message", [
    (lambda a: a.pop("spectrum_spin"), r"holds the arrays .*\(spectrum 3\)"),
    (lambda a: a.update(extra=np.zeros(3)), r"holds the arrays"),
    (lambda a: a.update(spectrum_energies=a["spectrum_energies"][..., :-1]),
     r"spectrum_energies has shape \(3, 4, 2\), not \(3, 4, 3\)"),
    (lambda a: a.update(spectrum_spin=a["spectrum_spin"][:, :-1]), r"spectrum_spin has shape"),
    (lambda a: a.update(chemical_potential=a["chemical_potential"][:, :-1]),
     r"chemical_potential has shape \(3, 3\), not \(3, 4\)"),
    (lambda a: a.update(spectrum_spin=a["spectrum_spin"].astype(np.int64)), r"spectrum_spin has dtype int64"),
    (lambda a: np.put(a["spectrum_energies"], 20, np.nan), r"NaN or infinite values in spectrum_energies"),
    (lambda a: np.put(a["chemical_potential"], 3, np.inf), r"NaN or infinite values in chemical_potential"),
    (_set_spin(0.7), r"spectrum_spin 0\.7 .*not a non-negative half-integer"),
    (_set_spin(-0.5), r"spectrum_spin -0\.5 .*not a non-negative half-integer"),
    (_set_spin(1.0 + 3e-6), r"not a non-negative half-integer"),
], ids=["missing", "extra", "energies-shape", "spin-shape", "mu-shape", "spin-dtype", "nan", "inf", "spin-0.7",
        "spin-negative", "spin-off-by-3e-6"])  # fmt: skip
def test_check_chunk_refuses_a_bad_spectrum(spectral_copy, change, message):
    rewrite_chunk(spectral_copy, 0, change)  # the checksum matches: only the contents tell
    with pytest.raises(data.DatasetError, match=rf"chunk 0 .*{message}"):
        data.load(spectral_copy)


def test_check_chunk_accepts_spin_rounding_and_refuses_spectra_in_a_plain_dataset(copy, spectral_copy):
    rewrite_chunk(spectral_copy, 0, _set_spin(1.0 + 5e-7))  # S from <S^2> carries rounding
    assert data.load(spectral_copy).spectrum_spin.flat[2] == 1.0 + 5e-7
    rewrite_chunk(copy, 0, lambda a: a.update(spectrum_energies=np.zeros((3, 4, K))))
    with pytest.raises(data.DatasetError, match=r"chunk 0 .*holds the arrays .*no spectrum"):
        data.load(copy)
