"""Orbax checkpoints of pix2pix training: latest and best-by-validation-R^2, exact resume.

Layout (one Orbax step directory per saved step, ``<directory>/<step>/``):

* ``state``   the `TrainState` arrays (parameters, batch-norm averages, Adam states, step)
              and the run's base PRNG key data (uint32), via ``ocp.args.StandardSave``;
* ``history`` per-step losses and per-evaluation validation R^2 (numeric arrays);
* ``meta``    JSON: format tag, the `Pix2PixConfig` as a dict, step, validation R^2 and
              user metadata (e.g. the scalers' dicts);
* ``metrics`` JSON {"val_r2": ...}, read by the preservation policy;
* ``sha256.json`` (`CHECKSUMS`) the sha256 of every other file of the step directory, written
              after Orbax has finished the step.

No pickle is involved: arrays go through Orbax's TensorStore serialisation, the rest is JSON.
Retention uses Orbax's preservation policies (``orbax.checkpoint.checkpoint_managers``):
the `keep_latest` newest steps and the `keep_best` steps of highest validation R^2 (the
stopping criterion of Pantis-Simut et al. 2023, section IV) survive; others are deleted.

Restoring first recomputes every file's sha256 and compares it with the record (the same
protection as the dataset's chunks, `qdjax.data`): a damaged, truncated or missing file raises
ValueError naming the file, before Orbax reads anything (Orbax's own format has no checksum,
so a flipped bit in the parameters would otherwise load without a word). It then checks the
stored configuration against the expected one and raises ValueError on any difference, so a
checkpoint never loads into a different model. A state with a NaN or inf is never saved.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import pathlib
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from qdjax.data import _atomic_write, _file_sha256
from qdjax.ml.models import Pix2PixConfig
from qdjax.ml.state import METRIC_NAMES, TrainState, init_state

__all__ = ["FORMAT", "CHECKSUMS", "Checkpointer", "Restored", "read_config", "load_state", "verify_step"]

#: Format tag written into every checkpoint's meta item.
FORMAT = "qdjax.ml.pix2pix/1"
#: Name of the file, inside each step directory, that records the sha256 of the step's files.
CHECKSUMS = "sha256.json"

_STATE_FIELDS = ("step", "g_params", "g_stats", "d_params", "d_stats", "g_opt", "d_opt")
_HISTORY_DTYPES = {
    "step": np.int64,
    "val_step": np.int64,
    "val_r2": np.float64,
    **{m: np.float32 for m in METRIC_NAMES},
}


class Restored(NamedTuple):
    """A restored checkpoint.

    Attributes:
      step: the training step it was written at (int).
      state: `TrainState`, bit-identical to the saved one.
      key: uint32 array (2,), the base PRNG key data of the run (``jax.random.key_data``).
      history: dict of lists, as returned by `qdjax.ml.train.fit`.
      val_r2: validation R^2 at this step (float; nan if it was not finite).
      metadata: the user metadata dict stored with it.
    """

    step: int
    state: TrainState
    key: np.ndarray
    history: dict
    val_r2: float
    metadata: dict


def _metric(metrics: Any) -> float:
    """Ranking value of a checkpoint: its validation R^2, -inf if missing or not finite."""
    v = metrics.get("val_r2") if isinstance(metrics, dict) else None
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else -math.inf


def _flatten(d: Any, prefix: str = "") -> dict:
    if isinstance(d, dict):
        out = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def _config_mismatch(saved: dict, expected: Pix2PixConfig) -> list[str]:
    try:  # fields added since the checkpoint was written take their defaults
        saved = Pix2PixConfig.from_dict(saved).to_dict()
    except (TypeError, ValueError):
        pass
    a, b = _flatten(saved), _flatten(expected.to_dict())
    return [f"{k}: checkpoint {a.get(k, '<missing>')!r} vs requested {b.get(k, '<missing>')!r}"
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def _manager(directory: str, keep_latest: int, keep_best: int, create: bool = True) -> ocp.CheckpointManager:
    directory = os.path.abspath(os.fspath(directory))
    if not create and not os.path.isdir(directory):
        raise ValueError(f"checkpoint directory {directory} does not exist")
    policies = ocp.checkpoint_managers
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policies.AnyPreservationPolicy([
            policies.LatestN(n=keep_latest),
            policies.BestN(get_metric_fn=_metric, reverse=False, n=keep_best, keep_checkpoints_without_metrics=False),
        ]),
        # best_fn also makes Orbax persist the metrics with each step (it writes them only
        # when it tracks a best checkpoint); the retention itself is the policy above.
        best_fn=_metric,
        best_mode="max",
        enable_async_checkpointing=False,
        create=create,
    )
    with _unreadable(directory):
        return ocp.CheckpointManager(directory, options=options)


@contextlib.contextmanager
def _unreadable(directory: Any, step: int | None = None):
    """Turns any failure inside Orbax while reading into a one-line ValueError naming the checkpoint."""
    try:
        yield
    except Exception as e:  # Orbax raises JSON, TensorStore, OS and value errors on damaged files
        where = f"checkpoint {directory}" + ("" if step is None else f" step {step}")
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ValueError(f"{where} is damaged or unreadable ({type(e).__name__}: {reason})") from e


def _step_files(step_dir: pathlib.Path) -> list[str]:
    """Paths (relative, "/"-separated, sorted) of the regular files of a step, the record excluded."""
    names = (p.relative_to(step_dir).as_posix() for p in step_dir.rglob("*") if p.is_file())
    return sorted(name for name in names if name != CHECKSUMS)


def _write_checksums(step_dir: pathlib.Path) -> None:
    """Records the sha256 of every file of a finished step in ``<step_dir>/sha256.json``."""
    files = {name: _file_sha256(step_dir / name) for name in _step_files(step_dir)}
    record = {"algorithm": "sha256", "files": files}
    _atomic_write(step_dir / CHECKSUMS, json.dumps(record, indent=1, sort_keys=True).encode())


def verify_step(directory: str | os.PathLike, step: int) -> None:
    """Checks every file of checkpoint `step` in `directory` against the sha256 recorded at save.

    Raises:
      ValueError: the record is missing or unreadable, or a recorded file is missing or its
        sha256 differs; the message names the step directory and the file and says what to do.
    """
    step_dir = pathlib.Path(directory) / str(int(step))
    remedy = (f"delete {step_dir} (training then resumes from the previous checkpoint) or load another "
              "step; the data of this step cannot be trusted")  # fmt: skip
    try:
        record = json.loads((step_dir / CHECKSUMS).read_text())
        files = record["files"]
        if record.get("algorithm") != "sha256" or not isinstance(files, dict):
            raise ValueError("unknown record")
    except FileNotFoundError:
        raise ValueError(
            f"checkpoint {step_dir} has no checksum record ({CHECKSUMS}): its save was interrupted or it was "
            f"written by a qdjax without checksums; {remedy}, or load it with verify=False if you trust it"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(
            f"the checksum record {step_dir / CHECKSUMS} is damaged or unreadable ({e}); {remedy}"
        ) from None
    for name, expected in sorted(files.items()):
        digest = _file_sha256(step_dir / name)
        if digest is None:
            raise ValueError(f"checkpoint {step_dir} is damaged: file {name} is missing or unreadable; {remedy}")
        if digest != expected:
            raise ValueError(
                f"checkpoint {step_dir} is damaged: file {name} has sha256 {digest[:12]}... but "
                f"{str(expected)[:12]}... was recorded at save; {remedy}"
            )


def _nonfinite_leaves(tree: Any) -> list[str]:
    """Paths of the floating-point leaves of a pytree that hold a NaN or an inf."""
    bad = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        arr = np.asarray(leaf)
        if np.issubdtype(arr.dtype, np.inexact) and not np.all(np.isfinite(arr)):
            bad.append(jax.tree_util.keystr(path))
    return bad


def _read_meta(mgr: ocp.CheckpointManager, step: int) -> dict:
    with _unreadable(mgr.directory, step):
        meta = mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"step {step} in {mgr.directory} is not a {FORMAT} checkpoint")
    return meta


def _best_step(mgr: ocp.CheckpointManager) -> int | None:
    steps = sorted(mgr.all_steps())
    if not steps:
        return None
    # ties go to the later step, as Orbax's BestN keeps it
    with _unreadable(mgr.directory):
        return max(steps, key=lambda s: (_metric(mgr.metrics(s)), s))


def _resolve_step(mgr: ocp.CheckpointManager, step: int | str | None) -> int:
    if step is None or step == "latest":
        found = mgr.latest_step()
    elif step == "best":
        found = _best_step(mgr)
    elif isinstance(step, (int, np.integer)) and not isinstance(step, bool):
        found = int(step) if int(step) in mgr.all_steps() else None
        if found is None:
            raise ValueError(f"no checkpoint for step {step} in {mgr.directory}; available: {sorted(mgr.all_steps())}")
    else:
        raise ValueError(f"step must be an int, 'latest', 'best' or None, got {step!r}")
    if found is None:
        raise ValueError(f"no checkpoint in {mgr.directory}")
    return found


def _restore(mgr: ocp.CheckpointManager, step: int, config: Pix2PixConfig, meta: dict) -> Restored:
    abstract = jax.eval_shape(functools.partial(init_state, config), jax.random.key(0))
    target = {
        "train": {f: jax.tree.map(ocp.utils.to_shape_dtype_struct, getattr(abstract, f)) for f in _STATE_FIELDS},
        "key": jax.ShapeDtypeStruct((2,), np.uint32),
    }
    items = {"state": ocp.args.StandardRestore(target)}
    if meta.get("has_history"):
        items["history"] = ocp.args.StandardRestore()
    with _unreadable(mgr.directory, step):
        out = mgr.restore(step, args=ocp.args.Composite(**items))
    # Orbax returns arrays committed to a device; jit keys its cache on that, so hand back
    # ordinary (uncommitted) arrays with the same bits to reuse already compiled steps.
    tree = jax.tree.map(lambda a: jax.numpy.asarray(np.asarray(a)), out["state"])
    state = TrainState(**{f: tree["train"][f] for f in _STATE_FIELDS}, config=config)
    history = {name: [] for name in _HISTORY_DTYPES}
    for name, arr in (out.get("history") or {}).items():
        history[name] = np.asarray(arr).tolist()
    val_r2 = meta.get("val_r2")
    return Restored(
        step=step,
        state=state,
        key=np.asarray(tree["key"], np.uint32),
        history=history,
        val_r2=float("nan") if val_r2 is None else float(val_r2),
        metadata=dict(meta.get("metadata") or {}),
    )


class Checkpointer:
    """Saves and restores pix2pix `TrainState`s of one configuration in one directory.

    Args:
      directory: checkpoint directory (created if missing).
      config: the `Pix2PixConfig` of the states; restoring a checkpoint written for any
        other configuration raises ValueError.
      keep_latest: number of most recent steps kept (>= 1).
      keep_best: number of steps with the highest validation R^2 kept (>= 1).

    Use as a context manager or call `close()`.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        config: Pix2PixConfig,
        *,
        keep_latest: int = 1,
        keep_best: int = 1,
    ):
        if not isinstance(config, Pix2PixConfig):
            raise ValueError(f"Checkpointer needs a Pix2PixConfig, got {type(config)}")
        for name, v in (("keep_latest", keep_latest), ("keep_best", keep_best)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        self.config = config
        self._mgr = _manager(directory, keep_latest, keep_best)
        self.directory = self._mgr.directory

    def all_steps(self) -> list[int]:
        """Steps with a checkpoint on disk, ascending."""
        return sorted(self._mgr.all_steps())

    def latest_step(self) -> int | None:
        """Newest saved step, or None."""
        return self._mgr.latest_step()

    def best_step(self) -> int | None:
        """Saved step with the highest validation R^2 (latest among ties), or None."""
        return _best_step(self._mgr)

    def save(
        self,
        state: TrainState,
        *,
        key: Any,
        val_r2: float,
        history: dict | None = None,
        metadata: dict | None = None,
    ) -> None:
        """Writes a checkpoint for ``int(state.step)`` (synchronously).

        Args:
          state: `TrainState` with ``state.config == self.config``.
          key: the run's base PRNG key (typed key or raw uint32 (2,) data).
          val_r2: validation R^2 at this step (ranks checkpoints; non-finite ranks last).
          history: dict of lists of numbers as built by `fit` (extra names are stored as
            float64).
          metadata: JSON-serialisable dict stored alongside.
        After Orbax has written the step, the sha256 of each of its files is recorded in
        ``<directory>/<step>/sha256.json`` (`CHECKSUMS`), which `restore` verifies.

        Raises:
          ValueError: config mismatch, a checkpoint for this step exists already, or a
            parameter, batch-norm average or optimiser state holds a NaN or an inf (the
            message names them; nothing is written).
        """
        if not isinstance(state, TrainState):
            raise ValueError(f"save needs a TrainState, got {type(state)}")
        if state.config != self.config:
            raise ValueError("state.config differs from the Checkpointer's config:\n  "
                             + "\n  ".join(_config_mismatch(state.config.to_dict(), self.config)))
        step = int(state.step)
        bad = _nonfinite_leaves({f: getattr(state, f) for f in _STATE_FIELDS})
        if bad:
            raise ValueError(f"refusing to save step {step}: the state is not finite in {', '.join(bad[:4])}"
                             + (f" and {len(bad) - 4} more" if len(bad) > 4 else ""))  # fmt: skip
        if step in self._mgr.all_steps():
            raise ValueError(f"a checkpoint for step {step} exists already in {self.directory}")
        key = jax.numpy.asarray(key) if not isinstance(key, jax.Array) else key
        if jax.numpy.issubdtype(key.dtype, jax.dtypes.prng_key):
            key = jax.random.key_data(key)
        key = np.asarray(key, np.uint32)
        if key.shape != (2,):
            raise ValueError(f"key must be a default (threefry) PRNG key, got data of shape {key.shape}")
        r2 = float(val_r2)
        r2_json = r2 if math.isfinite(r2) else None
        hist = {}
        for name, values in (history or {}).items():
            # Entries beyond the built-in ones (e.g. from fit's on_eval) are stored as float64.
            if len(values):  # Orbax refuses zero-size arrays; missing entries restore as []
                arr = np.asarray(values, _HISTORY_DTYPES.get(name, np.float64))
                if arr.ndim != 1:
                    raise ValueError(f"history entry {name!r} must be a list of numbers")
                hist[name] = arr
        meta = {
            "format": FORMAT,
            "config": self.config.to_dict(),
            "step": step,
            "val_r2": r2_json,
            "has_history": bool(hist),
            "metadata": dict(metadata or {}),
            "checksums": CHECKSUMS,  # a record follows; a step without one had its save interrupted
        }
        tree = {"train": {f: getattr(state, f) for f in _STATE_FIELDS}, "key": key}
        items = {"state": ocp.args.StandardSave(tree), "meta": ocp.args.JsonSave(meta)}
        if hist:
            items["history"] = ocp.args.StandardSave(hist)
        self._mgr.save(step, args=ocp.args.Composite(**items), metrics={"val_r2": r2_json}, force=True)
        self._mgr.wait_until_finished()
        if jax.process_index() == 0:
            _write_checksums(pathlib.Path(str(self.directory)) / str(step))

    def discard_interrupted(self) -> int | None:
        """Deletes the newest step if its save was interrupted after Orbax committed it but before
        its checksum record was written (a kill at that moment); returns that step, or None.

        Only a step whose meta announces a record is deleted: a checkpoint written before
        records existed is kept (and refused by `restore` unless ``verify=False``).
        """
        step = self._mgr.latest_step()
        if step is None or (pathlib.Path(str(self.directory)) / str(step) / CHECKSUMS).exists():
            return None
        try:
            announced = _read_meta(self._mgr, step).get("checksums") == CHECKSUMS
        except ValueError:
            return None  # unreadable: left for restore to report
        if not announced:
            return None
        self._mgr.delete(step)
        return step

    def restore(self, step: int | str | None = None, *, verify: bool = True) -> Restored:
        """Reads a checkpoint: `step` an int, "latest" / None (default) or "best".

        Args:
          step: which checkpoint.
          verify: first check every file against the sha256 recorded at save (`verify_step`);
            False reads a checkpoint without a record (written before qdjax kept one).
        Raises:
          ValueError: no such checkpoint, a file damaged or missing (named in the message), or
            it was written for another configuration (the message lists the differing fields).
        """
        s = _resolve_step(self._mgr, step)
        if verify:
            verify_step(str(self.directory), s)
        meta = _read_meta(self._mgr, s)
        diff = _config_mismatch(meta.get("config", {}), self.config)
        if diff:
            raise ValueError(
                f"checkpoint step {s} in {self.directory} was written for another configuration:\n  "
                + "\n  ".join(diff)
            )
        return _restore(self._mgr, s, self.config, meta)

    def close(self) -> None:
        self._mgr.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_config(directory: str | os.PathLike, step: int | str | None = None, *, verify: bool = True) -> Pix2PixConfig:
    """The `Pix2PixConfig` stored in a checkpoint (`step`: int, "latest"/None or "best";
    `verify`: as for `load_state`)."""
    mgr = _manager(directory, 1, 1, create=False)
    try:
        s = _resolve_step(mgr, step)
        if verify:
            verify_step(str(mgr.directory), s)
        return Pix2PixConfig.from_dict(_read_meta(mgr, s)["config"])
    finally:
        mgr.close()


def load_state(directory: str | os.PathLike, step: int | str | None = "best", *, verify: bool = True) -> Restored:
    """Restores a checkpoint with the configuration stored in it (for inference / analysis).

    Args:
      directory: checkpoint directory.
      step: int, "best" (default: highest validation R^2), "latest" or None (latest).
      verify: first check every file of the step against the sha256 recorded at save
        (`verify_step`); False reads a checkpoint without a record.
    Returns:
      `Restored`; ``restored.state`` works with `qdjax.ml.train.predict`.
    Raises:
      ValueError: no checkpoint, or a file of it damaged or missing (named in the message).
    """
    mgr = _manager(directory, 1, 1, create=False)
    try:
        s = _resolve_step(mgr, step)
        if verify:
            verify_step(str(mgr.directory), s)
        meta = _read_meta(mgr, s)
        return _restore(mgr, s, Pix2PixConfig.from_dict(meta["config"]), meta)
    finally:
        mgr.close()
