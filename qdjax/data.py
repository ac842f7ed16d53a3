"""Training data at scale: exact diagonalisation over random potentials, stored in chunks.

A dataset is `n_samples` random confinement potentials of the paper's class (Pantis-Simut et
al., Mach. Learn.: Sci. Technol. 4, 025023 (2023), section II) with, for every requested
electron number N, the non-interacting and the interacting ground-state density and energy.
The paper's training data is ``generate(out, 5000, (1, 2, 3, 4))`` at the default
`EDConfig` (4800 / 100 / 100 train / validation / test). With ``spectrum=n_states`` > 0 every
sample also holds, for the interacting problem, the lowest n_states spin multiplets of each N
(energies and total spin, `qdjax.spectrum.spectrum`) and the chemical potentials
mu(N) = E0(N) - E0(N - 1), N = 1..max(n_electrons) (`SPECTRUM_KEYS`).

Reproducibility: sample k has its own seed

    sample_seed(seed, k) = SeedSequence([seed, k]).generate_state(1, uint64)[0]

(NumPy's `numpy.random.SeedSequence`), and its potential is
``qdjax.potentials.random_potential(sample_seed(seed, k), config)`` with the paper's
parameters, so a sample depends on (seed, k, config) alone and can be recomputed by itself
(`compute_samples`).

Computation: the samples of a chunk are solved in calls of ``batch_size x devices`` samples
by `qdjax.ed.ground_states` (one jitted, vmapped program per call, sharing the
single-particle solve between all N and the non-interacting case), and with a spectrum by
`qdjax.spectrum.spectrum` for each N on the same call. With several local devices
the call's potentials are sharded over ``Mesh(devices, ("batch",))`` with a NamedSharding, so
every device solves ``batch_size`` of them. The chunk layout, the call size per device and the
padding of a chunk's last call (copies of its last potential) are fixed by the manifest, so the
stored bits depend neither on where a run was interrupted nor on the number of devices. The
OpenBLAS behind JAX's CPU eigh runs single-threaded meanwhile (`single_threaded_blas`): its
threads change the last bits with the core count and, on a small shared CPU, slow the ED down
several times.

Storage (docs/data.md): a folder with ``manifest.json`` and ``chunk-NNNNN.npz`` files, readable
with NumPy alone (``np.load(file, allow_pickle=False)``). Each chunk is written to a temporary
name, flushed to disk and renamed (atomic), then the manifest, which holds the configuration,
the code version and the sha256 of every finished chunk, is rewritten the same way. A run
killed at any moment leaves only finished chunks listed; running the same `generate` again
verifies them and computes the rest. On several hosts each process makes its own share of the
chunks and records it in its own manifest; `load` merges them (`merge` writes one).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import math
import os
import re
import secrets
import sys
import time
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from qdjax import backend, ed, potentials
from qdjax import spectrum as multiplets
from qdjax.backend import single_threaded_blas  # noqa: F401 (public here too)
from qdjax.config import EDConfig

__all__ = [
    "ARRAY_KEYS",
    "Dataset",
    "DatasetError",
    "FORMAT",
    "FORMAT_VERSION",
    "GenerateResult",
    "SPECTRUM_KEYS",
    "SPLITS",
    "check_chunk",
    "code_fingerprint",
    "compute_samples",
    "config_from_manifest",
    "default_splits",
    "describe",
    "generate",
    "load",
    "merge",
    "read_manifest",
    "sample_seed",
    "sample_seeds",
    "single_threaded_blas",
]

#: Name of the on-disk format, stored in every manifest.
FORMAT = "qdjax-dataset"
#: Version of the on-disk format; readers refuse other versions.
FORMAT_VERSION = 1
#: Split names in index order: contiguous ranges of sample indices.
SPLITS = ("train", "validation", "test")

#: Arrays of every chunk and of `load`; n samples, m electron numbers, K orbitals.
ARRAY_KEYS = {
    "index": "int64 (n,): sample index k in 0..n_samples-1",
    "seed": "uint64 (n,): sample seed, SeedSequence([seed, k]).generate_state(1, uint64)[0]",
    "n_electrons": "int64 (m,): the electron numbers N of the n0/n_int/energy axes",
    "V": "float64 (n, grid, grid), eV: confinement potential, V[k, i, j] = V(x_i, y_j)",
    "n0": "dtype (n, m, grid, grid), nm^-2: non-interacting ground-state density",
    "n_int": "dtype (n, m, grid, grid), nm^-2: interacting ground-state density",
    "energy0": "dtype (n, m), eV: non-interacting ground-state energy",
    "energy_int": "dtype (n, m), eV: interacting ground-state energy",
    "orbital_energies": "dtype (n, K), eV: lowest K single-particle energies",
}

#: Further arrays of the chunks (and of `load`) of a dataset made with ``spectrum=n_states`` > 0
#: (the manifest's "spectrum"), for the interacting problem; n_max = max(n_electrons).
SPECTRUM_KEYS = {
    "spectrum_energies": "dtype (n, m, n_states), eV: lowest n_states spin multiplets of each N, each once, "
                         "ascending (qdjax.spectrum.spectrum)",
    "spectrum_spin": "dtype (n, m, n_states): their total spin S, from <S^2> = S(S + 1) (half-integers up to "
                     "rounding)",
    "chemical_potential": "dtype (n, n_max), eV: mu(N) = E0(N) - E0(N - 1) for N = 1..n_max, E0(0) = 0",
}  # fmt: skip

#: Manifest fields that must agree before an existing folder is continued or merged.
_IDENTITY = (
    "format",
    "format_version",
    "qdjax_version",
    "config",
    "n_electrons",
    "n_samples",
    "seed",
    "chunk_size",
    "batch_size",
    "splits",
    "sample_seed",
    "potential",
    "spectrum",
)
#: Largest distance of a stored total spin S from a half-integer (`check_chunk`); S from <S^2>
#: carries rounding (about 2e-7 in float32).
_SPIN_TOL = 1e-6
#: Values of identity fields that a manifest may leave out (older datasets have no "spectrum").
_IDENTITY_DEFAULTS = {"spectrum": 0}
_SAMPLE_SEED_RULE = "numpy.random.SeedSequence([seed, index]).generate_state(1, numpy.uint64)[0]"
_POTENTIAL_RULE = "qdjax.potentials.random_potential(sample_seed, config) with its default (paper) parameters"
_MANIFEST = "manifest.json"
_MANIFEST_RE = re.compile(r"^manifest(\.process-(\d+)-of-(\d+))?\.json$")


class DatasetError(ValueError):
    """A dataset folder cannot be used: mismatched settings, damaged or missing chunks."""


class Dataset(NamedTuple):
    """Arrays of a dataset or of one split (NumPy, host memory).

    With n samples, m = len(n_electrons) electron numbers and K = config.orbitals:

    index: int64 (n,), sample indices. seed: uint64 (n,), sample seeds (`sample_seed`).
    n_electrons: int64 (m,), the N of each slot of the n0/n_int/energy axes.
    V: float64 (n, grid, grid), eV. n0, n_int: (n, m, grid, grid), nm^-2, non-interacting
    and interacting ground-state densities (sum over a map times h^2 = N). energy0,
    energy_int: (n, m), eV. orbital_energies: (n, K), eV. Densities and energies have the
    configuration's dtype (float64 by default).

    Of a dataset made with ``spectrum=n_states`` > 0 (else None; `SPECTRUM_KEYS`), for the
    interacting problem: spectrum_energies (n, m, n_states), eV, the lowest n_states spin
    multiplets of each N, each once; spectrum_spin (n, m, n_states), their total spin S;
    chemical_potential (n, n_max), eV, mu(N) = E0(N) - E0(N - 1) for N = 1..n_max =
    max(n_electrons), E0(0) = 0. Same dtype as the energies.

    `load(..., n_electrons=N)` drops the m axis: n0, n_int (n, grid, grid), energy0,
    energy_int (n,), spectrum_energies, spectrum_spin (n, n_states), n_electrons a 0-d array;
    chemical_potential keeps (n, n_max).
    """

    index: np.ndarray
    seed: np.ndarray
    n_electrons: np.ndarray
    V: np.ndarray
    n0: np.ndarray
    n_int: np.ndarray
    energy0: np.ndarray
    energy_int: np.ndarray
    orbital_energies: np.ndarray
    spectrum_energies: np.ndarray | None = None
    spectrum_spin: np.ndarray | None = None
    chemical_potential: np.ndarray | None = None


#: Dataset arrays with an axis over n_electrons (axis 1), dropped by `load(..., n_electrons=N)`.
_PER_N = ("n0", "n_int", "energy0", "energy_int", "spectrum_energies", "spectrum_spin")


class GenerateResult(NamedTuple):
    """What one `generate` call did.

    path: the dataset folder. computed: samples solved by this call. chunks_done: chunks of
    the whole dataset present when it returned (all processes), of n_chunks. complete: all
    chunks present. seconds: wall time of the call. samples_per_s: computed samples per
    second after the first call of the ED program (which includes its compilation); nan when
    fewer than two calls ran.
    """

    path: Path
    computed: int
    chunks_done: int
    n_chunks: int
    complete: bool
    seconds: float
    samples_per_s: float


# ----------------------------------------------------------------------------- seeds and splits


def sample_seed(seed: int, index: int) -> int:
    """Seed of sample `index` of the dataset with seed `seed` (both non-negative integers).

    ``SeedSequence([seed, index]).generate_state(1, uint64)[0]`` as a Python int in
    [0, 2^64): independent of the dataset size and chunking, so datasets can be grown and
    samples recomputed alone.
    """
    _check_seed(seed)
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
        raise ValueError(f"sample index must be a non-negative integer, got {index!r}")
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, np.uint64)[0])


def sample_seeds(seed: int, indices: Iterable[int]) -> np.ndarray:
    """uint64 array of `sample_seed(seed, k)` for k in indices."""
    return np.array([sample_seed(seed, k) for k in indices], dtype=np.uint64)


def default_splits(n_samples: int) -> tuple[int, int, int]:
    """(train, validation, test) sizes: validation = test = n_samples // 50, train the rest.

    For the paper's 5000 samples this is (4800, 100, 100).
    """
    held_out = n_samples // 50
    return n_samples - 2 * held_out, held_out, held_out


# ----------------------------------------------------------------------------- computation


def compute_samples(
    seeds: Sequence[int] | np.ndarray,
    n_electrons: Sequence[int],
    config: EDConfig = EDConfig(),
    *,
    batch_size: int = 1,
    devices: Sequence[jax.Device] | None = None,
    spectrum: int = 0,
) -> dict[str, np.ndarray]:
    """Potentials and ground states of samples given by their seeds, as stored by `generate`.

    The potentials are ``qdjax.potentials.random_potential(s, config)``; they are solved in
    calls of ``batch_size * len(devices)`` samples by ``qdjax.ed.ground_states(V,
    n_electrons, config, with_non_interacting=True)`` (and, with a spectrum, by
    ``qdjax.spectrum.spectrum(V, N, spectrum, config)`` for each N), the last call padded with
    copies of the last potential. With the `batch_size` of a dataset's manifest a sample
    recomputed alone equals its stored bits (it does for batch_size 1, where every sample is
    its own vmap instance).

    Args:
      seeds: n sample seeds, non-negative integers (e.g. a dataset's ``seed`` array).
      n_electrons: the m electron numbers N.
      config: EDConfig.
      batch_size: samples per device and call (the vmap width of the ED program).
      devices: devices to shard each call over (default: ``jax.local_devices()``).
      spectrum: n_states, the spin multiplets kept per N (0: none; as in `generate`).

    Returns:
      dict with the `ARRAY_KEYS` except "index": seed (n,) uint64, n_electrons (m,), V
      (n, grid, grid) float64 eV, n0 and n_int (n, m, grid, grid) nm^-2, energy0 and
      energy_int (n, m) eV, orbital_energies (n, K) eV; with a spectrum also the
      `SPECTRUM_KEYS`: spectrum_energies and spectrum_spin (n, m, n_states), eV and S,
      chemical_potential (n, max(n_electrons)) eV.
    """
    ns = _check_n_electrons(n_electrons, config)
    n_states = _check_spectrum(spectrum, ns, config)
    batch_size = _check_positive("batch_size", batch_size)
    seeds = np.asarray([int(s) for s in seeds], dtype=np.uint64)
    if seeds.size == 0:
        raise ValueError("seeds is empty")
    V = potentials.random_potentials([int(s) for s in seeds], config)
    with single_threaded_blas():
        out = _solve_padded(V, ns, config, _mesh(devices), batch_size, n_states)
    out.update(seed=seeds, n_electrons=np.asarray(ns, dtype=np.int64), V=V)
    return out


def _pad(V: np.ndarray, size: int) -> np.ndarray:
    """Fill a call up to `size` potentials with copies of the last one."""
    if len(V) == size:
        return V
    return np.concatenate([V, np.repeat(V[-1:], size - len(V), axis=0)])


def _solve_padded(V, ns, config, mesh, batch_size, n_states, on_call=None) -> dict[str, np.ndarray]:
    """Ground states (and spectra) of potentials V (n, grid, grid) in calls of batch_size * mesh.size.

    The last call is padded (`_pad`); on_call(k) is called after each call with its k real
    samples. Returns the `_solve` arrays for the n potentials.
    """
    per_call = batch_size * mesh.size
    parts = []
    for lo in range(0, len(V), per_call):
        part = V[lo : lo + per_call]
        solved = _solve(_pad(part, per_call), ns, config, mesh, n_states)
        parts.append({key: value[: len(part)] for key, value in solved.items()})
        if on_call is not None:
            on_call(len(part))
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def _solve(V: np.ndarray, ns: tuple[int, ...], config: EDConfig, mesh: jax.sharding.Mesh, n_states: int) -> dict:
    """Ground states of one call's potentials (c, grid, grid), sharded over the mesh.

    Returns host arrays n0, n_int (c, m, grid, grid), energy0, energy_int (c, m) and
    orbital_energies (c, K); with n_states > 0 also spectrum_energies, spectrum_spin
    (c, m, n_states) and chemical_potential (c, max(ns)) (`SPECTRUM_KEYS`).
    """
    if mesh.size > 1:
        spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch"))
        V = jax.device_put(V, spec)
    else:
        V = jax.device_put(V, mesh.devices.flat[0])
    states = ed.ground_states(V, ns, config, with_non_interacting=True)
    out = dict(
        n0=_stack(states.non_interacting, "density"),
        n_int=_stack(states.interacting, "density"),
        energy0=_stack(states.non_interacting, "energy"),
        energy_int=_stack(states.interacting, "energy"),
        orbital_energies=np.asarray(states.interacting[0].orbital_energies),
    )
    if n_states:
        spectra = [multiplets.spectrum(V, n, n_states, config) for n in ns]
        out.update(
            spectrum_energies=_stack(spectra, "energies"),
            spectrum_spin=_stack(spectra, "total_spin"),
            chemical_potential=_chemical_potential(V, ns, out["energy_int"], config),
        )
    return out


def _chemical_potential(V: jax.Array, ns: tuple[int, ...], energy_int: np.ndarray, config: EDConfig) -> np.ndarray:
    """mu(N) = E0(N) - E0(N - 1), N = 1..max(ns), E0(0) = 0: (c, max(ns)) eV on the host.

    From the interacting energies (c, m) of `ns` when they include every N in 1..max(ns) (so
    that mu sums to energy_int exactly), else by `qdjax.spectrum.chemical_potentials` on V.
    """
    n_max = max(ns)
    if set(range(1, n_max + 1)) <= set(ns):
        return np.asarray(multiplets._differences_from_zero(energy_int[:, [ns.index(n) for n in range(1, n_max + 1)]]))
    return np.asarray(multiplets.chemical_potentials(V, n_max, config))


def _stack(states, field: str) -> np.ndarray:
    """One field of m GroundStates (or Spectra) stacked on the host along a new axis 1 (the N axis)."""
    return np.stack([np.asarray(getattr(s, field)) for s in states], axis=1)


def _mesh(devices: Sequence[jax.Device] | None) -> jax.sharding.Mesh:
    devices = list(jax.local_devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices is empty")
    return jax.sharding.Mesh(np.array(devices), ("batch",))


#: Modules whose source determines the numbers of a sample.
_CODE_MODULES = ("config", "backend", "units", "potentials", "basis", "single_particle", "coulomb", "fock",
                 "linalg", "ed", "spectrum", "data")  # fmt: skip


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """Short sha256 of the code that computes a sample: qdjax's ED sources, JAX/NumPy versions.

    Stored with every chunk ("code" in the manifest) so that a dataset whose chunks were made
    by different code (an edited working tree, another JAX) can be told apart: `describe`
    lists the distinct fingerprints. Equal fingerprints on the same kind of processor give
    equal bits.
    """
    import importlib

    import jaxlib

    digest = hashlib.sha256(f"jax {jax.__version__} jaxlib {jaxlib.__version__} numpy {np.__version__}".encode())
    for name in _CODE_MODULES:
        module = importlib.import_module(f"qdjax.{name}")
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()[:16]


# ----------------------------------------------------------------------------- generate


def generate(
    out: str | os.PathLike,
    n_samples: int = 5000,
    n_electrons: Sequence[int] = (1, 2, 3, 4),
    config: EDConfig = EDConfig(),
    seed: int = 0,
    *,
    chunk_size: int = 50,
    batch_size: int | None = None,
    splits: Sequence[int] | None = None,
    progress: bool = True,
    devices: Sequence[jax.Device] | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    spectrum: int = 0,
) -> GenerateResult:
    """Make (or finish) a dataset in the folder `out`; resumable, bit-reproducible.

    Runs ED on random potentials and writes chunk after chunk (layout in docs/data.md).
    If `out` already holds a dataset made with the same settings, finished chunks are
    checked against their sha256 and kept (damaged ones are recomputed) and only the rest is
    computed: the result is bit-identical to an uninterrupted run. A folder made with
    different settings, or a non-empty folder that is not a dataset, is refused
    (DatasetError) before anything is written. OpenBLAS runs single-threaded during the call
    (`single_threaded_blas`).

    Args:
      out: dataset folder (created if missing).
      n_samples: number of samples (paper: 5000).
      n_electrons: electron numbers N solved for every potential (paper: 1, 2, 3, 4).
      config: EDConfig of the ED (and of the potentials' grid and box).
      seed: non-negative integer dataset seed; sample k uses `sample_seed(seed, k)`.
      chunk_size: samples per chunk file (the unit of atomic writes and of resumption).
      batch_size: samples per device in one call of the ED program (its vmap width); part
        of the dataset's settings because the batched kernels' rounding depends on it.
        Default: `qdjax.backend.default_call_batch` of the devices' platform (1 on CPU, 16
        on accelerators).
      splits: (train, validation, test) sizes, contiguous in sample index; default
        `default_splits(n_samples)` (4800, 100, 100 for 5000).
      progress: show a progress bar (samples/s, ETA) on stderr and print a summary line.
      devices: local devices to shard each call over (default ``jax.local_devices()``).
      process_index, process_count: this process makes chunks process_index,
        process_index + process_count, ... and records them in its own manifest
        (``manifest.process-<i>-of-<P>.json``); default ``jax.process_index()`` and
        ``jax.process_count()`` (1 process: ``manifest.json``).
      spectrum: n_states > 0 also stores, for the interacting problem, the lowest n_states
        spin multiplets of each N (energies and total spin, `qdjax.spectrum.spectrum`) and
        mu(N) for N = 1..max(n_electrons) (`SPECTRUM_KEYS`); at most the smallest sector
        dimension of the N. 0 (default): none. Part of the dataset's settings (the manifest's
        "spectrum", written only when > 0).

    Returns:
      GenerateResult.

    Raises:
      ValueError: invalid arguments. DatasetError: `out` holds something else (other
      settings, a manifest inconsistent in itself or with its chunks), or another process is
      writing the same manifest or the folder in another layout (process count).
    """
    t_start = time.perf_counter()
    ns = _check_n_electrons(n_electrons, config)
    n_states = _check_spectrum(spectrum, ns, config)
    n_samples = _check_positive("n_samples", n_samples)
    chunk_size = _check_positive("chunk_size", chunk_size)
    _check_seed(seed)
    mesh = _mesh(devices)
    if batch_size is None:
        batch_size = backend.default_call_batch(mesh.devices.flat[0].platform)
    batch_size = _check_positive("batch_size", batch_size)
    split_sizes = _check_splits(splits, n_samples)
    p_index = jax.process_index() if process_index is None else process_index
    p_count = jax.process_count() if process_count is None else process_count
    p_count = _check_positive("process_count", p_count)
    if isinstance(p_index, bool) or not isinstance(p_index, (int, np.integer)) or not 0 <= p_index < p_count:
        raise ValueError(f"process_index must be an integer in 0..{p_count - 1}, got {p_index!r}")
    for n in ns:
        ed.validate(np.zeros((1, config.grid, config.grid)), n, config)

    header = _header(config, ns, n_samples, seed, chunk_size, batch_size, split_sizes, n_states)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    name = _MANIFEST if p_count == 1 else f"manifest.process-{p_index}-of-{p_count}.json"
    n_chunks = header["n_chunks"]
    mine = set(range(p_index, n_chunks, p_count))

    _check_folder(folder, header)  # before the lock file is created
    with _writer_lock(folder, name, p_count):
        _check_folder(folder, header)
        manifests = _read_manifests(folder)
        _remove_temporaries(folder, [_chunk_name(c) for c in mine] + [name])
        own = dict(manifests.get(name, {}).get("chunks", {}))
        recorded = _recorded(manifests)
        done = set()
        current = dict(header, chunks={})
        for c in sorted(set(recorded) & mine):
            raw = _read_bytes(folder / _chunk_name(c))
            if raw is not None and hashlib.sha256(raw).hexdigest() in recorded[c]:
                # a chunk recorded by a manifest with these settings holds samples of these settings
                check_chunk(_parse_chunk(c, folder / _chunk_name(c), raw), c, current, folder / _chunk_name(c))
                done.add(c)
            else:
                own.pop(str(c), None)
                _note(progress, f"chunk {c} ({_chunk_name(c)}) is missing or damaged; recomputing it")
        _write_manifest(folder / name, header, own, p_index, p_count)

        todo = sorted(mine - done)
        total = sum(_chunk_len(c, chunk_size, n_samples) for c in mine)
        remaining = sum(_chunk_len(c, chunk_size, n_samples) for c in todo)
        meter = _Meter(progress, total, total - remaining, f"ED -> {folder.name}")
        code = code_fingerprint()
        try:
            with single_threaded_blas():
                for c in todo:
                    start, stop = _chunk_range(c, chunk_size, n_samples)
                    payload = _chunk_payload(start, stop, seed, ns, config, mesh, batch_size, n_states, meter.update)
                    _atomic_write(folder / _chunk_name(c), payload)
                    own[str(c)] = {
                        "file": _chunk_name(c),
                        "start": start,
                        "stop": stop,
                        "sha256": hashlib.sha256(payload).hexdigest(),
                        "code": code,
                    }
                    _write_manifest(folder / name, header, own, p_index, p_count)
        finally:
            meter.close()

    chunks_done = len(_recorded(_read_manifests(folder)))
    elapsed = time.perf_counter() - t_start
    computed, rate = meter.computed, meter.rate()
    result = GenerateResult(folder, computed, chunks_done, n_chunks, chunks_done == n_chunks, elapsed, rate)
    if progress:
        state = "complete" if result.complete else f"{chunks_done} of {n_chunks} chunks present"
        speed = f" ({rate:.3g} samples/s after the first call)" if math.isfinite(rate) else ""
        print(f"qdjax generate: {computed} samples computed in {elapsed:.1f} s{speed}; "
              f"dataset {state} in {folder.resolve()}")  # fmt: skip
    return result


def _chunk_payload(start, stop, seed, ns, config, mesh, batch_size, n_states, on_call) -> bytes:
    """The .npz bytes of the chunk holding samples start..stop-1 (`ARRAY_KEYS`, and the
    `SPECTRUM_KEYS` when n_states > 0)."""
    seeds = sample_seeds(seed, range(start, stop))
    V = potentials.random_potentials([int(s) for s in seeds], config)
    arrays = _solve_padded(V, ns, config, mesh, batch_size, n_states, on_call)
    arrays.update(
        index=np.arange(start, stop, dtype=np.int64),
        seed=seeds,
        n_electrons=np.asarray(ns, dtype=np.int64),
        V=V,
    )
    return _npz_bytes(arrays, _array_keys(n_states))


class _Meter:
    """Progress bar on stderr (samples/s, ETA) when enabled, and the rate after the first call."""

    def __init__(self, enabled: bool, total: int, initial: int, label: str):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="sample", desc=label, smoothing=0.05,
                            dynamic_ncols=True, file=sys.stderr)  # fmt: skip
        self.computed, self.calls, self.first_end, self.first_samples = 0, 0, 0.0, 0

    def update(self, k: int) -> None:
        self.computed += k
        self.calls += 1
        if self.calls == 1:  # the first call includes tracing and compilation
            self.first_end, self.first_samples = time.perf_counter(), k
        if self.bar is not None:
            self.bar.update(k)

    def rate(self) -> float:
        """Samples per second after the first call; nan with fewer than two calls."""
        if self.calls < 2:
            return math.nan
        return (self.computed - self.first_samples) / (time.perf_counter() - self.first_end)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _note(enabled: bool, message: str) -> None:
    if enabled:
        print(f"qdjax generate: {message}", file=sys.stderr)


# ----------------------------------------------------------------------------- load, merge, describe


def read_manifest(path: str | os.PathLike) -> dict:
    """The dataset's manifest, merged over all per-process manifests in the folder.

    Returns:
      dict with the settings (format, format_version, qdjax_version, config (EDConfig
      fields; eps_r may be "inf"), n_electrons, n_samples, seed, chunk_size, n_chunks,
      batch_size, splits {name: [start, stop]}, sample_seed, potential, arrays; spectrum,
      the n_states of `generate`, only when > 0) and "chunks": {chunk index (int): {"file",
      "start", "stop", "sha256", "code"}} for every chunk recorded by any process ("code":
      `code_fingerprint` of the code that made it).

    Raises:
      DatasetError: no manifest, an unreadable one, or manifests that disagree.
    """
    folder = Path(path)
    manifests = _read_manifests(folder)
    if not manifests:
        raise DatasetError(f"{folder} is not a qdjax dataset: no {_MANIFEST} (or per-process manifest) in it")
    first = next(iter(manifests.values()))
    if first.get("format") != FORMAT or first.get("format_version") != FORMAT_VERSION:
        raise DatasetError(
            f"{folder}: format {first.get('format')!r} version {first.get('format_version')!r}; "
            f"this qdjax reads {FORMAT!r} version {FORMAT_VERSION}"
        )
    diffs = _identity_diffs(first, manifests)
    if diffs:
        raise DatasetError(f"{folder}: the per-process manifests disagree ({diffs})")
    merged = {k: v for k, v in first.items() if k not in ("chunks", "process")}
    chunks = {}
    for manifest in manifests.values():
        for key, entry in manifest.get("chunks", {}).items():
            chunks.setdefault(int(key), entry)
    merged["chunks"] = dict(sorted(chunks.items()))
    _check_manifest(folder, merged)
    return merged


def config_from_manifest(manifest: dict) -> EDConfig:
    """EDConfig stored in a manifest (see `read_manifest`)."""
    try:
        return EDConfig.from_dict(manifest["config"])
    except TypeError as e:  # a field this version of EDConfig does not have
        raise DatasetError(f"the manifest's config does not fit this qdjax's EDConfig: {e}") from None


def load(
    path: str | os.PathLike,
    split: str | None = None,
    *,
    n_electrons: int | None = None,
    verify: bool = True,
) -> Dataset:
    """Arrays of a finished dataset (or of the chunks one split needs), NumPy only.

    Args:
      path: dataset folder.
      split: None (all samples), "train", "validation" or "test" (contiguous index ranges
        stored in the manifest).
      n_electrons: if given, keep only this N and drop the N axis (see `Dataset`).
      verify: check every chunk read against the sha256 in the manifest. Without it the
        contents are still checked (`check_chunk`).

    Returns:
      Dataset (shapes and units in its docstring), samples in index order; its
      spectrum_energies, spectrum_spin and chemical_potential are None unless the dataset was
      made with a spectrum.

    Raises:
      DatasetError: an inconsistent manifest (overlapping splits, a chunk file outside the
      folder; names the field); chunks missing (dataset unfinished), damaged (names the chunk
      and file), unreadable, or whose arrays disagree with the manifest or hold NaN or inf
      (`check_chunk`); unknown split or N.
    """
    folder = Path(path)
    manifest = read_manifest(folder)
    n = manifest["n_samples"]
    if split is None:
        lo, hi = 0, n
    elif split in manifest["splits"]:
        lo, hi = manifest["splits"][split]
    else:
        raise DatasetError(f"unknown split {split!r}; expected one of {SPLITS} or None")
    slot = None
    if n_electrons is not None:
        if n_electrons not in manifest["n_electrons"]:
            raise DatasetError(f"n_electrons={n_electrons!r} is not in this dataset's {manifest['n_electrons']}")
        slot = manifest["n_electrons"].index(n_electrons)
    size = manifest["chunk_size"]
    needed = range(lo // size, -(-hi // size)) if hi > lo else range(0)
    missing = [c for c in needed if c not in manifest["chunks"]]
    if missing:
        raise DatasetError(
            f"{folder}: {len(missing)} of the {len(needed)} chunks needed are not finished (first: chunk "
            f"{missing[0]}); run `qdjax generate` again with the same arguments to complete the dataset"
        )
    parts = []
    for c in needed:
        entry = manifest["chunks"][c]
        arrays = _read_chunk(folder, c, entry, verify, manifest)
        start = entry["start"]
        parts.append({k: v[max(lo - start, 0) : hi - start] if k != "n_electrons" else v for k, v in arrays.items()})
    keys = [k for k in _array_keys(_n_states(manifest)) if k != "n_electrons"]
    out = {k: np.concatenate([p[k] for p in parts]) for k in keys} if parts else _empty(manifest)
    out["n_electrons"] = np.asarray(manifest["n_electrons"], dtype=np.int64)
    if slot is not None:
        for k in _PER_N:
            if k in out:
                out[k] = out[k][:, slot]
        out["n_electrons"] = out["n_electrons"][slot]
    return Dataset(**out)


def _empty(manifest: dict) -> dict[str, np.ndarray]:
    """Arrays of no samples: those of the manifest's chunks (`_shapes`) with n = 0."""
    dt = np.dtype(config_from_manifest(manifest).dtype)
    out = dict(index=np.zeros(0, np.int64), seed=np.zeros(0, np.uint64))
    out.update({k: np.zeros(shape, np.float64 if k == "V" else dt) for k, shape in _shapes(manifest, 0).items()})
    return out


def _shapes(manifest: dict, n: int) -> dict[str, tuple[int, ...]]:
    """Shapes of the floating arrays of n samples of the manifest's dataset (`ARRAY_KEYS`, and
    `SPECTRUM_KEYS` with a spectrum)."""
    config = config_from_manifest(manifest)
    m, g, k = len(manifest["n_electrons"]), config.grid, config.orbitals
    shapes = dict(V=(n, g, g), n0=(n, m, g, g), n_int=(n, m, g, g), energy0=(n, m), energy_int=(n, m),
                  orbital_energies=(n, k))  # fmt: skip
    n_states = _n_states(manifest)
    if n_states:
        shapes.update(spectrum_energies=(n, m, n_states), spectrum_spin=(n, m, n_states),
                      chemical_potential=(n, max(manifest["n_electrons"])))  # fmt: skip
    return shapes


def _read_chunk(folder: Path, c: int, entry: dict, verify: bool, manifest: dict) -> dict[str, np.ndarray]:
    """Arrays of chunk c, checked against the sha256 of its entry (if verify) and against the
    manifest (`check_chunk`, always)."""
    file = folder / entry["file"]
    try:
        data = file.read_bytes()
    except OSError as e:
        raise DatasetError(
            f"chunk {c} ({file}) is missing or unreadable ({e.strerror}); run `qdjax generate` again "
            "with the same arguments to recompute it"
        ) from None
    if verify:
        digest = hashlib.sha256(data).hexdigest()
        if digest != entry["sha256"]:
            raise DatasetError(
                f"chunk {c} ({file}) is damaged: sha256 {digest[:12]}... differs from the manifest's "
                f"{entry['sha256'][:12]}...; run `qdjax generate` again with the same arguments to recompute it"
            )
    arrays = _parse_chunk(c, file, data)
    check_chunk(arrays, c, manifest, file)
    return arrays


def _parse_chunk(c: int, file: Path, data: bytes) -> dict[str, np.ndarray]:
    if not data:
        raise DatasetError(
            f"chunk {c} ({file}) is an empty file; run `qdjax generate` again with the same arguments to recompute it"
        )
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise DatasetError(f"chunk {c} ({file}) cannot be read as .npz: {e}") from None


def check_chunk(arrays: dict[str, np.ndarray], c: int, manifest: dict, file: str | os.PathLike = "") -> None:
    """Raise DatasetError, naming the field, unless chunk c's arrays agree with the manifest.

    Checks: the arrays are exactly `ARRAY_KEYS`, and the `SPECTRUM_KEYS` when the manifest's
    "spectrum" (n_states) is > 0; index is start..stop-1 of chunk c (contiguous); seed is
    `sample_seeds` (manifest seed, index); n_electrons is the manifest's; V, n0, n_int,
    energy0, energy_int and orbital_energies have the shapes of the manifest's config (grid,
    orbitals) and N list, spectrum_energies and spectrum_spin (n, m, n_states) and
    chemical_potential (n, max(n_electrons)); every floating array is finite and of a floating
    dtype; spectrum_spin holds non-negative half-integers to within 1e-6 (S comes from
    <S^2> and carries its rounding).

    Args:
      arrays: the chunk's arrays (name -> NumPy array).
      c: chunk index. manifest: as returned by `read_manifest`. file: shown in the message.
    """
    where = f"chunk {c}" + (f" ({file})" if file else "")
    n_states = _n_states(manifest)
    expected = _array_keys(n_states)
    if set(arrays) != set(expected):
        spectrum = f" (spectrum {n_states})" if n_states else " (no spectrum)"
        raise DatasetError(f"{where} holds the arrays {sorted(arrays)}, not {sorted(expected)} of the manifest"
                           f"{spectrum}")  # fmt: skip
    start, stop = _chunk_range(c, manifest["chunk_size"], manifest["n_samples"])
    index = arrays["index"]
    if index.shape != (stop - start,) or not np.array_equal(index, np.arange(start, stop)):
        raise DatasetError(
            f"{where}: its index array is not the contiguous samples {start}..{stop - 1} of the manifest "
            f"(chunk_size {manifest['chunk_size']}, n_samples {manifest['n_samples']})"
        )
    if not np.array_equal(arrays["seed"], sample_seeds(manifest["seed"], range(start, stop))):
        raise DatasetError(
            f"{where}: its seed array does not follow from the manifest's seed {manifest['seed']} "
            "(the manifest was edited, or the chunk belongs to another dataset)"
        )
    if arrays["n_electrons"].tolist() != list(manifest["n_electrons"]):
        raise DatasetError(
            f"{where}: its n_electrons {arrays['n_electrons'].tolist()} differ from the manifest's "
            f"n_electrons {manifest['n_electrons']}"
        )
    config = config_from_manifest(manifest)
    for key, shape in _shapes(manifest, stop - start).items():
        if arrays[key].shape != shape:
            raise DatasetError(
                f"{where}: {key} has shape {arrays[key].shape}, not {shape} of the manifest's config "
                f"(grid {config.grid}, orbitals {config.orbitals}), n_electrons {manifest['n_electrons']}"
                + (f" and spectrum {n_states}" if n_states else "")
            )
        if not np.issubdtype(arrays[key].dtype, np.floating):
            raise DatasetError(f"{where}: {key} has dtype {arrays[key].dtype}, not a floating type")
        bad = ~np.isfinite(arrays[key])
        if bad.any():
            sample = int(index[np.argwhere(bad)[0][0]])
            raise DatasetError(
                f"{where} holds NaN or infinite values in {key} (first at sample {sample}); run `qdjax generate` "
                "again with the same arguments in a new folder, or report it"
            )
    if n_states:
        spin = arrays["spectrum_spin"]
        twice = np.round(2.0 * spin)
        bad = (twice < 0) | (np.abs(spin - twice / 2.0) > _SPIN_TOL)
        if bad.any():
            first = tuple(np.argwhere(bad)[0])
            raise DatasetError(
                f"{where}: spectrum_spin {float(spin[first])} at sample {int(index[first[0]])} is not a non-negative "
                f"half-integer (to {_SPIN_TOL})"
            )


def _check_manifest(folder: Path, manifest: dict) -> None:
    """Raise DatasetError, naming the field, unless the manifest is consistent in itself.

    n_samples, chunk_size and seed are integers (positive, positive, non-negative) and
    n_chunks follows from them; spectrum, where present, is a non-negative integer; splits are
    the three `SPLITS`, each [start, stop] with 0 <= start <= stop <= n_samples, pairwise
    disjoint; every chunk entry c < n_chunks covers samples start..stop-1 of chunk c and names
    a file inside the folder (a plain file name).
    """

    def integer(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    n, size = manifest.get("n_samples"), manifest.get("chunk_size")
    checks = (("n_samples", n, 1), ("chunk_size", size, 1), ("seed", manifest.get("seed"), 0),
              ("spectrum", _n_states(manifest), 0))  # fmt: skip
    for key, value, low in checks:
        if not integer(value) or value < low:
            raise DatasetError(f"{folder}: the manifest's {key} is {value!r}, not an integer >= {low}")
    if manifest.get("n_chunks") != -(-n // size):
        raise DatasetError(f"{folder}: the manifest's n_chunks {manifest.get('n_chunks')!r} does not follow from "
                           f"n_samples {n} and chunk_size {size}")  # fmt: skip
    splits = manifest.get("splits")
    if not isinstance(splits, dict) or set(splits) != set(SPLITS):
        shown = sorted(splits) if isinstance(splits, dict) else splits
        raise DatasetError(f"{folder}: the manifest's splits {shown!r} are not the three {SPLITS}")
    for name in SPLITS:
        bounds = splits[name]
        if not (isinstance(bounds, list) and len(bounds) == 2 and all(integer(b) for b in bounds)
                and 0 <= bounds[0] <= bounds[1] <= n):  # fmt: skip
            raise DatasetError(
                f"{folder}: the manifest's splits.{name} is {bounds!r}, not [start, stop] with "
                f"0 <= start <= stop <= n_samples={n}"
            )
    ordered = sorted((name for name in SPLITS if splits[name][0] < splits[name][1]), key=lambda name: splits[name])
    for a, b in zip(ordered, ordered[1:]):
        if splits[a][1] > splits[b][0]:
            raise DatasetError(
                f"{folder}: the manifest's splits {a} {splits[a]} and {b} {splits[b]} overlap; "
                "samples would be shared between them"
            )
    for c, entry in manifest["chunks"].items():
        if not 0 <= c < manifest["n_chunks"]:
            raise DatasetError(f"{folder}: the manifest records chunk {c} of {manifest['n_chunks']}")
        file = entry.get("file")
        if (not isinstance(file, str) or not file or Path(file).name != file or file in (".", "..")
                or "\\" in file or file.startswith(".")):  # fmt: skip
            raise DatasetError(
                f"{folder}: the manifest's file of chunk {c} is {file!r}, not a file name inside the dataset folder"
            )
        start, stop = _chunk_range(c, size, n)
        if (entry.get("start"), entry.get("stop")) != (start, stop):
            raise DatasetError(
                f"{folder}: the manifest's chunk {c} covers samples {entry.get('start')!r}..{entry.get('stop')!r}, "
                f"not {start}..{stop} (chunk_size {size})"
            )


def merge(path: str | os.PathLike) -> Path:
    """Merge the per-process manifests of a folder into one ``manifest.json``.

    Checks that they agree and that every recorded chunk matches its sha256, writes
    ``manifest.json`` atomically and removes the per-process files. A finished dataset made
    by P processes is then byte-identical to one made by a single process. Run it after all
    processes have stopped; `load` reads unmerged folders too.

    Returns:
      Path of manifest.json.

    Raises:
      DatasetError: disagreeing manifests or a damaged chunk.
    """
    folder = Path(path)
    manifest = read_manifest(folder)
    for c, entry in manifest["chunks"].items():
        if _file_sha256(folder / entry["file"]) != entry["sha256"]:
            raise DatasetError(
                f"chunk {c} ({folder / entry['file']}) is missing or damaged; run `qdjax generate` again "
                "with the same arguments before merging"
            )
    header = {k: v for k, v in manifest.items() if k != "chunks"}
    chunks = {str(c): entry for c, entry in manifest["chunks"].items()}
    with _writer_lock(folder, _MANIFEST, 1):
        _write_manifest(folder / _MANIFEST, header, chunks, 0, 1)
        for name in _read_manifests(folder):
            if name != _MANIFEST:
                _remove(folder / name)
                _remove(folder / f".{name}.lock")
    return folder / _MANIFEST


def describe(path: str | os.PathLike, verify: bool = False) -> dict:
    """Summary of a dataset folder (for ``qdjax info``).

    Returns:
      dict: path, format_version, qdjax_version, config (dict), n_electrons, n_samples, seed,
      chunk_size, batch_size, splits, spectrum (n_states of the stored spectra; 0: none),
      n_chunks, chunks_done, complete, manifests (file names),
      bytes (size of the chunk files), stray_files (temporary files of interrupted writes),
      code (the distinct `code_fingerprint` values of the chunks) and, with verify=True,
      damaged (indices of recorded chunks that are missing or whose sha256 differs) and
      problems (one message per other chunk whose arrays disagree with the manifest or hold
      NaN or inf, `check_chunk`).

    Raises:
      DatasetError: no manifest, or one that is inconsistent in itself (`read_manifest`).
    """
    folder = Path(path)
    manifest = read_manifest(folder)
    chunks = manifest["chunks"]
    info = {k: manifest[k] for k in ("format_version", "qdjax_version", "config", "n_electrons", "n_samples",
                                      "seed", "chunk_size", "batch_size", "splits", "n_chunks")}  # fmt: skip
    info.update(
        spectrum=_n_states(manifest),
        path=str(folder.resolve()),
        chunks_done=len(chunks),
        complete=len(chunks) == manifest["n_chunks"],
        manifests=sorted(_read_manifests(folder)),
        bytes=sum((folder / e["file"]).stat().st_size for e in chunks.values() if (folder / e["file"]).exists()),
        stray_files=sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp")),
        code=sorted({e.get("code", "?") for e in chunks.values()}),
    )
    if verify:
        info["damaged"], info["problems"] = [], []
        for c, entry in chunks.items():
            file = folder / entry["file"]
            raw = _read_bytes(file)
            if raw is None or hashlib.sha256(raw).hexdigest() != entry["sha256"]:
                info["damaged"].append(c)
                continue
            try:
                check_chunk(_parse_chunk(c, file, raw), c, manifest, file)
            except DatasetError as e:
                info["problems"].append(str(e))
    return info


# ----------------------------------------------------------------------------- manifest helpers


def _header(config, ns, n_samples, seed, chunk_size, batch_size, split_sizes, n_states) -> dict:
    from qdjax import __version__

    bounds = np.cumsum((0,) + tuple(split_sizes))
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "qdjax_version": __version__,
        # EDConfig.batching (the program's layout, qdjax.backend) is not part of a dataset's identity
        "config": {k: v for k, v in config.to_dict().items() if k != "batching"},
        "n_electrons": list(ns),
        "n_samples": n_samples,
        "seed": int(seed),
        "chunk_size": chunk_size,
        "n_chunks": -(-n_samples // chunk_size),
        "batch_size": batch_size,
        "splits": {name: [int(bounds[i]), int(bounds[i + 1])] for i, name in enumerate(SPLITS)},
        "sample_seed": _SAMPLE_SEED_RULE,
        "potential": _POTENTIAL_RULE,
        "arrays": _array_keys(n_states),
    }
    if n_states:  # absent without a spectrum, as in datasets made before it existed
        header["spectrum"] = n_states
    return header


def _n_states(manifest: dict) -> int:
    """The manifest's "spectrum": spin multiplets stored per N (0 when absent)."""
    return manifest.get("spectrum", _IDENTITY_DEFAULTS["spectrum"])


def _array_keys(n_states: int) -> dict[str, str]:
    """Arrays of a chunk, in file order: `ARRAY_KEYS`, then `SPECTRUM_KEYS` when n_states > 0."""
    return {**ARRAY_KEYS, **SPECTRUM_KEYS} if n_states else dict(ARRAY_KEYS)


def _identity_diffs(header: dict, manifests: dict[str, dict]) -> str:
    """'' if every manifest has the settings of `header`, else the first differences."""
    for name, manifest in manifests.items():
        diffs = []
        for key in _IDENTITY:
            default = _IDENTITY_DEFAULTS.get(key)
            new, old = header.get(key, default), manifest.get(key, default)
            if isinstance(new, dict) and isinstance(old, dict):
                diffs += [f"{key}.{k}: {old.get(k)!r} there, {new.get(k)!r} here"
                          for k in sorted(set(new) | set(old)) if new.get(k) != old.get(k)]  # fmt: skip
            elif new != old:
                diffs.append(f"{key}: {old!r} there, {new!r} here")
        if diffs:
            return f"{name}: {'; '.join(diffs)}"
    return ""


def _check_folder(folder: Path, header: dict) -> None:
    """Raise DatasetError unless `folder` is empty or holds a dataset with the settings of `header`."""
    manifests = _read_manifests(folder)
    if not manifests:
        _check_empty(folder)
        return
    diffs = _identity_diffs(header, manifests)
    if diffs:
        raise DatasetError(
            f"{folder} holds a dataset made with other settings ({diffs}); use another folder, "
            "or repeat the original arguments to continue it"
        )
    for manifest in manifests.values():
        _check_manifest(folder, dict(manifest, chunks={int(k): v for k, v in manifest.get("chunks", {}).items()}))


def _check_empty(folder: Path) -> None:
    others = sorted(p.name for p in folder.iterdir() if not p.name.endswith((".lock", ".tmp")))
    if others:
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise DatasetError(
            f"{folder} is not empty and holds no qdjax dataset manifest ({shown}); choose an empty or new folder"
        )


def _read_manifests(folder: Path) -> dict[str, dict]:
    """Manifest file name -> parsed manifest, for every manifest*.json in the folder."""
    out = {}
    if not folder.is_dir():
        return out
    for p in sorted(folder.iterdir()):
        if _MANIFEST_RE.match(p.name):
            try:
                out[p.name] = json.loads(p.read_text())
            except (OSError, ValueError) as e:
                raise DatasetError(f"{p} is not a readable manifest: {e}") from None
    return out


def _recorded(manifests: dict[str, dict]) -> dict[int, set[str]]:
    """Chunk index -> set of sha256 recorded for it by any manifest."""
    out: dict[int, set[str]] = {}
    for manifest in manifests.values():
        for key, entry in manifest.get("chunks", {}).items():
            out.setdefault(int(key), set()).add(entry["sha256"])
    return out


def _write_manifest(path: Path, header: dict, chunks: dict[str, dict], p_index: int, p_count: int) -> None:
    manifest = dict(header)
    if p_count > 1:
        manifest["process"] = {"index": p_index, "count": p_count}
    manifest["chunks"] = {k: chunks[k] for k in sorted(chunks, key=int)}
    data = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
    if path.exists() and path.read_bytes() == data:
        return
    _atomic_write(path, data)


# ----------------------------------------------------------------------------- files


def _chunk_name(c: int) -> str:
    return f"chunk-{c:05d}.npz"


def _chunk_range(c: int, chunk_size: int, n_samples: int) -> tuple[int, int]:
    return c * chunk_size, min((c + 1) * chunk_size, n_samples)


def _chunk_len(c: int, chunk_size: int, n_samples: int) -> int:
    start, stop = _chunk_range(c, chunk_size, n_samples)
    return stop - start


def _npz_bytes(arrays: dict[str, np.ndarray], keys: Iterable[str]) -> bytes:
    """A .npz archive (uncompressed ZIP of .npy files) of arrays[key] for the keys, in their order,
    whose bytes depend on the arrays alone.

    np.savez stamps the current time into the ZIP headers; here every entry has the fixed
    date 1980-01-01 and the keys are written in the given order (`_array_keys`), so equal
    arrays give equal files (and equal sha256).
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for key in keys:
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.create_system = 3
            info.external_attr = 0o644 << 16
            with archive.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.ascontiguousarray(arrays[key]), allow_pickle=False)
    return buffer.getvalue()


def _atomic_write(path: Path, data: bytes) -> None:
    """Write to ``.<name>.<random>.tmp``, flush to disk, rename over `path`, sync the folder.

    The random part (48 bits) keeps the temporary files of two writers of the same name apart.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    with contextlib.suppress(OSError):
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _file_sha256(path: Path) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError:
        return None


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _remove_temporaries(folder: Path, names: Iterable[str]) -> None:
    """Delete the temporary files (``.<name>.tmp``, ``.<name>.<random>.tmp``) of interrupted writes of `names`."""
    prefixes = tuple(f".{name}." for name in names)
    for p in folder.iterdir():
        if p.name.endswith(".tmp") and p.name.startswith(prefixes):
            _remove(p)


def _process_count(manifest_name: str) -> int:
    """P of a manifest file name: 1 for manifest.json, P for manifest.process-<i>-of-<P>.json."""
    match = _MANIFEST_RE.match(manifest_name)
    return int(match[3]) if match and match[1] else 1


@contextlib.contextmanager
def _writer_lock(folder: Path, name: str, p_count: int):
    """Hold the lock of the writer of manifest `name` (one of `p_count` processes) in `folder`.

    Locks are `filelock.FileLock` files ``.<manifest name>.lock`` (an OS lock, released when
    the holder dies). Refused with DatasetError, before anything is written: a second writer of
    the same manifest, and any writer while one of another layout (another process count:
    a plain run and a run with --process-count 2) holds its lock. A short-lived folder lock
    ``.dataset.lock`` makes that check and the taking of the writer's own lock one step.
    """
    import filelock

    def refuse(holder: str) -> DatasetError:
        count = _process_count(holder)
        layout = "a single process" if count == 1 else f"--process-count {count}"
        return DatasetError(
            f"another process is writing {folder} ({holder}, {layout}; this run: process count {p_count}); "
            "every writer of a folder must use the same --process-count and its own --process-index: "
            "wait for it to finish or stop it"
        )

    guard = filelock.FileLock(folder / ".dataset.lock", timeout=30)
    try:
        guard.acquire()
    except filelock.Timeout:
        raise DatasetError(f"{folder}: .dataset.lock stayed locked for 30 s; is another writer stuck?") from None
    try:
        for other in sorted(folder.glob(".manifest*.json.lock")):
            holder = other.name[1 : -len(".lock")]
            if holder != name and _MANIFEST_RE.match(holder) and _process_count(holder) != p_count:
                probe = filelock.FileLock(other, timeout=0)
                try:
                    probe.acquire()
                except filelock.Timeout:
                    raise refuse(holder) from None
                probe.release()
        own = filelock.FileLock(folder / f".{name}.lock", timeout=0)
        try:
            own.acquire()
        except filelock.Timeout:
            raise refuse(name) from None
    finally:
        guard.release()
    try:
        yield
    finally:
        own.release()


# ----------------------------------------------------------------------------- validation


def _check_positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _check_seed(seed: Any) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


def _check_n_electrons(n_electrons: Any, config: EDConfig) -> tuple[int, ...]:
    if not isinstance(config, EDConfig):
        raise ValueError(f"config must be a qdjax.EDConfig, got {type(config).__name__}")
    ns = tuple(n_electrons) if np.ndim(n_electrons) else (n_electrons,)
    if not ns:
        raise ValueError("n_electrons is empty")
    for n in ns:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= 2 * config.orbitals:
            raise ValueError(f"n_electrons must be integers in 1..{2 * config.orbitals}, got {n!r}")
    if len(set(ns)) != len(ns):
        raise ValueError(f"n_electrons has repeated values: {ns}")
    return tuple(int(n) for n in ns)


def _check_spectrum(n_states: Any, ns: tuple[int, ...], config: EDConfig) -> int:
    """The `spectrum` argument as an int: 0 (none) or a number of spin multiplets that every
    N in ns has (`qdjax.spectrum`'s n_states check); ValueError otherwise."""
    if isinstance(n_states, bool) or not isinstance(n_states, (int, np.integer)) or n_states < 0:
        raise ValueError(f"spectrum must be a non-negative integer (spin multiplets per N; 0: none), got {n_states!r}")
    if n_states:
        for n in ns:
            try:
                multiplets._check_states(n_states, config, n)
            except ValueError as e:
                raise ValueError(f"spectrum={n_states} is too large for N={n}: {e}") from None
    return int(n_states)


def _check_splits(splits: Sequence[int] | None, n_samples: int) -> tuple[int, int, int]:
    if splits is None:
        return default_splits(n_samples)
    sizes = tuple(splits)
    if len(sizes) != 3 or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0 for s in sizes):
        raise ValueError(f"splits must be three non-negative integers (train, validation, test), got {splits!r}")
    if sum(sizes) != n_samples:
        raise ValueError(f"splits {sizes} must add up to n_samples={n_samples}")
    return tuple(int(s) for s in sizes)
