"""One training experiment: a mapping trained, monitored, restored at its best and scored.

`run_mapping` is what `examples/train_pix2pix.py`, `examples/pipeline.py` and `qdjax train`
call. It trains pix2pix on one mapping (qdjax.ml.evaluate.MAPPINGS) for one electron number,
records at every evaluation the R^2 on training (a fixed subset), validation and test images
with the training-set mean map (paper Fig. 7a) and the SSIM of up to 30 test images (Fig. 5),
keeps the checkpoint with the best validation R^2 (the paper's stopping criterion), restores it,
scores the test split (standard and paper-convention metrics) and writes the figures:

- ``mapping.png``: input, target, prediction and |error| for test images (Figs. 3, A.1, A.2);
- ``losses.png``: generator and discriminator losses vs step (Fig. 4);
- ``r2.png``: R^2 vs step for the three splits (Fig. 7a);
- ``ssim.png``: SSIM of the monitored test images vs step (Fig. 5);
- ``worst.png``: the worst 5% of test images by R^2 (Fig. A.4);
- ``metrics.json``: everything above as numbers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
from typing import Mapping, NamedTuple, Sequence

import jax
import numpy as np

from qdjax import plot
from qdjax.ml import evaluate, train
from qdjax.ml.models import Pix2PixConfig

SPLITS = ("train", "validation", "test")
UNITS = {"V": "eV", "n0": "nm$^{-2}$", "n_int": "nm$^{-2}$"}


class MappingRun(NamedTuple):
    """Result of `run_mapping`.

    state: TrainState restored at the best validation R^2.
    scalers: evaluate.Scalers of the mapping.
    history: training history (losses per step, R^2 and SSIM per evaluation).
    best_step: step of the restored checkpoint.
    test_prediction: (n_test, grid, grid) prediction in physical units.
    scores: per-image and set-level test scores (evaluate.score).
    summary: JSON-ready dict written to metrics.json.
    out_dir: folder with checkpoints, figures and metrics.json.
    """

    state: train.TrainState
    scalers: evaluate.Scalers
    history: dict
    best_step: int
    test_prediction: np.ndarray
    scores: dict
    summary: dict
    out_dir: pathlib.Path


def _check_splits(splits: Mapping, src: str, dst: str) -> None:
    for split in SPLITS:
        if split not in splits:
            raise ValueError(f"splits needs a {split!r} entry, got {sorted(splits)}")
        for q in (src, dst):
            if q not in splits[split]:
                raise ValueError(f"split {split!r} has no {q!r} images")
        if len(splits[split][src]) < 2:
            raise ValueError(f"split {split!r} needs at least 2 samples, got {len(splits[split][src])}")
        for q in (src, dst):
            evaluate.check_finite(f"{split} {q}", splits[split][q])


def run_mapping(
    splits: Mapping[str, Mapping[str, np.ndarray]],
    mapping: str,
    config: Pix2PixConfig,
    *,
    steps: int,
    out_dir: str | pathlib.Path,
    key: int = 0,
    eval_every: int = 200,
    symmetrize: bool = False,
    density_head: bool = False,
    input_transform: str = "linear",
    length_nm: float = 30.0,
    monitor: int = 30,
    train_monitor: int = 100,
    progress: bool = True,
    figures: bool = True,
    devices: Sequence[jax.Device] | None = None,
    metadata: Mapping | None = None,
    ed_weight: float = 0.0,
    ed_config=None,
    n_electrons: int | None = None,
    ed_loss: str = "l2",
    init_from: str | pathlib.Path | None = None,
) -> MappingRun:
    """Train one mapping, monitor it, restore the best checkpoint and score the test split.

    Args:
      splits: {"train", "validation", "test"} -> {"V", "n0", "n_int"} -> (n, grid, grid)
        physical images (eV, nm^-2) for one electron number.
      mapping: one of qdjax.ml.evaluate.MAPPINGS ("V->n_int", ...).
      config: Pix2PixConfig.
      steps: training steps (a rerun with the same out_dir resumes).
      out_dir: folder for checkpoints/, figures and metrics.json.
      key: integer seed of initialisation, data order and augmentation.
      eval_every: steps between evaluations (and checkpoints).
      symmetrize: evaluate and predict with the D4-averaged generator.
      density_head: for density targets, end the generator in the normalised density head
        (GeneratorConfig.density_norm): predictions are non-negative and integrate to the
        training densities' electron number exactly.
      input_transform: "linear" (the paper) or "log" (density inputs on a log scale with a
        floor of 1e-12 of the largest training density; `qdjax.ml.scaling`).
      length_nm: box side, for figure axes.
      monitor: number of test images whose SSIM is followed during training.
      train_monitor: number of training images used for the training-set R^2 curve.
      progress: progress bar.
      figures: write the PNG figures (module docstring); False writes only checkpoints and
        metrics.json (sweeps, batch jobs).
      devices: devices to train on, data-parallel (default ``jax.devices()``; see
        `qdjax.ml.train.fit`): config.batch_size must be a multiple of their number. With
        several processes every process calls `run_mapping` alike, and process 0 writes
        metrics.json and the figures.
      metadata: JSON-serialisable facts about the data stored in every checkpoint beside the
        mapping and the scalers, e.g. `dataset_metadata` (what `qdjax train` stores), which
        `qdjax evaluate` and `qdjax invert` check against the data they are given.
      ed_weight: weight w of the ED-consistency term (`qdjax.ml.physics`; n_int -> V only):
        the generator is trained through the ED on L_G + w L_ED. With w > 0 the validation
        score that selects the best checkpoint is the R^2 of the ED-recomputed validation
        densities (`qdjax.inverse.check`), and the history also records it on the test
        split ("ed_r2_test"). 0 (default): plain pix2pix.
      ed_config: `qdjax.EDConfig` of the dataset (needed when ed_weight > 0).
      n_electrons: N of the densities (needed when ed_weight > 0).
      ed_loss: "l2" or "charge", the misfit of L_ED (`qdjax.ml.physics.ED_LOSSES`).
      init_from: checkpoint folder of an earlier `run_mapping` of the same mapping: its
        networks (best checkpoint) start this run, and its scalers are kept (fine-tuning).

    Returns:
      MappingRun.

    Raises:
      ValueError: an unknown mapping, a missing split or quantity, fewer than 2 samples in
        a split, or a NaN/inf in any image of the mapping's quantities (before training).
    """
    from qdjax.ml import physics

    src, dst = evaluate.check_mapping(mapping)
    _check_splits(splits, src, dst)
    if isinstance(ed_weight, bool) or not isinstance(ed_weight, (int, float)) or not ed_weight >= 0:
        raise ValueError(f"ed_weight must be a number >= 0, got {ed_weight!r}")
    if ed_weight > 0 and (mapping != "n_int->V" or ed_config is None or n_electrons is None):
        raise ValueError("the ED term (ed_weight > 0) needs mapping 'n_int->V', ed_config and n_electrons")
    start = None
    if init_from is not None:
        start = load_run(init_from)
        if start.mapping != mapping:
            raise ValueError(f"init_from holds a {start.mapping} run, not {mapping}")
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_in, train_out = (np.asarray(splits["train"][q], np.float64) for q in (src, dst))
    if start is not None:
        scalers = start.scalers
        input_transform = scalers.inputs.transform
    else:
        scalers = evaluate.fit_scalers(mapping, train_in, train_out, input_transform)
    if density_head:
        if evaluate.KINDS[dst] != "density" or scalers.targets.lo != 0.0:
            raise ValueError(f"density_head needs a density target scaled from 0, not {mapping!r}")
        total = float(np.mean(train_out.sum(axis=(-1, -2))))  # N / h^2, nm^-2 per pixel sum
        head = dataclasses.replace(config.generator, density_norm=2.0 * total / scalers.targets.hi)
        config = dataclasses.replace(config, generator=head)
    train_mean = train_out.mean(axis=0)
    unit = lambda s, q: scalers.inputs.to_unit(np.asarray(splits[s][q], np.float64)).astype(np.float32)
    xt, yt = unit("train", src), scalers.targets.to_unit(train_out).astype(np.float32)
    xv = unit("validation", src)
    yv = scalers.targets.to_unit(np.asarray(splits["validation"][dst], np.float64)).astype(np.float32)
    test_in = np.asarray(splits["test"][src], np.float64)
    test_out = np.asarray(splits["test"][dst], np.float64)
    sub = np.linspace(0, len(train_in) - 1, min(train_monitor, len(train_in))).astype(int)
    watched = np.arange(min(monitor, len(test_in)))
    data_range = scalers.targets.hi - scalers.targets.lo

    def on_eval(state):
        values = {}
        for name, x, ref in (
            ("r2_train", train_in[sub], train_out[sub]),
            ("r2_validation", splits["validation"][src], splits["validation"][dst]),
            ("r2_test", test_in, test_out),
        ):
            pred = evaluate.predict_physical(state, x, scalers, symmetrize)
            values[name] = float(evaluate.metrics.r2(pred, np.asarray(ref, np.float64), train_mean))
            if name == "r2_test":
                ssim = np.asarray(evaluate.metrics.ssim(pred[watched], test_out[watched], data_range))
                values.update({f"ssim_test_{i:02d}": float(v) for i, v in enumerate(ssim)})
        return values

    ed_term = val_score = None
    if ed_weight > 0:
        from qdjax import inverse

        ed_term = physics.EDTerm(float(ed_weight), int(n_electrons), ed_config, scalers.inputs, scalers.targets, ed_loss)
        density_mean = train_in.mean(axis=0)  # the input densities' training mean map (R^2 reference)
        val_target = np.asarray(splits["validation"][src], np.float64)

        def ed_r2(state, target):
            proposer = evaluate.generator_function(state, scalers, symmetrize)
            checked = inverse.check(proposer, target, n_electrons, ed_config, mean_map=density_mean)
            return float(checked.scores["r2"])

        def val_score(state):
            return ed_r2(state, val_target)

        plain_eval = on_eval

        def on_eval(state):
            return {**plain_eval(state), "ed_r2_test": ed_r2(state, test_in)}

    meta = {**dict(metadata or {}), "mapping": mapping, "scalers": scalers.to_dict()}
    if start is not None:
        meta["init_from"] = {"checkpoint": str(pathlib.Path(init_from).resolve()), "step": start.step}
    fit = train.fit(
        config, xt, yt, xv, yv, steps=steps, key=key, eval_every=eval_every,
        checkpoint_dir=str(out / "checkpoints"), symmetrize_eval=symmetrize, metadata=meta,
        progress=progress, on_eval=on_eval, devices=devices, ed_term=ed_term,
        init_from=None if start is None else start.state, val_score=val_score,
    )
    from qdjax.ml import checkpoint

    best = checkpoint.load_state(out / "checkpoints", "best")
    prediction = evaluate.predict_physical(best.state, test_in, scalers, symmetrize)
    scores = evaluate.score(prediction, test_out, scalers.targets, train_mean)
    worst = evaluate.worst(scores, 0.05, "r2_sample")
    ed_test = None
    if ed_term is not None:
        from qdjax import inverse

        proposer = evaluate.generator_function(best.state, scalers, symmetrize)
        checked = inverse.check(proposer, test_in, n_electrons, ed_config, mean_map=density_mean)
        ed_test = check_summary(checked, test_in, test_out, density_mean, train_mean)
    summary = {
        "mapping": mapping,
        "steps": steps,
        "best_step": best.step,
        "symmetrize": symmetrize,
        "density_head": density_head,
        "input_transform": input_transform,
        "ed_term": None if ed_term is None else ed_term.to_dict(),
        "init_from": meta.get("init_from"),
        "n_train": len(train_in),
        "n_validation": len(splits["validation"][src]),
        "n_test": len(test_in),
        "scalers": scalers.to_dict(),
        "test": evaluate.aggregate(scores),
        "ed_check_test": ed_test,
        "worst_5_percent": [
            {"index": int(i), **{k: float(scores[k][i]) for k in ("r2_sample", "ssim", "l1", "linf")}} for i in worst
        ],
        "config": config.to_dict(),
    }
    writer = jax.process_index() == 0
    if writer:
        (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    if figures and writer:
        write_figures(fit.history, test_in, test_out, prediction, scores, mapping, out, length_nm,
                      log_input=scalers.inputs.transform == "log")
    return MappingRun(best.state, scalers, fit.history, best.step, prediction, scores, summary, out)


def write_figures(history, inputs, targets, prediction, scores, mapping, out, length_nm=30.0, rows=3, log_input=False) -> None:
    """The figures listed in the module docstring, into folder `out`."""
    write_image_figures(inputs, targets, prediction, scores, mapping, out, length_nm, rows, log_input)
    write_history_figures(history, mapping, out)


def write_image_figures(inputs, targets, prediction, scores, mapping, out, length_nm=30.0, rows=3, log_input=False) -> None:
    """mapping.png (first `rows` images) and worst.png (worst 5% by R^2) into folder `out`.

    Args:
      inputs, targets, prediction: (n, grid, grid) physical images.
      scores: from evaluate.score. mapping: mapping name. length_nm: box side for the axes.
      log_input: draw the (density) input as log10 of its value in nm^-2, as the generator
        sees it (`evaluate.fit_scalers(..., input_transform="log")`).
    """
    src, dst = evaluate.check_mapping(mapping)
    u_in, u_out = UNITS[src], UNITS[dst]
    if log_input:
        inputs = np.log10(np.maximum(inputs, 1e-300))
        src, u_in = f"log10 {src}", f"log10({u_in})"

    def row(i, target_label, predicted_label):
        return [
            (f"input {src} #{i}", inputs[i], u_in),
            (target_label, targets[i], u_out),
            (predicted_label, prediction[i], u_out),
            ("|error|", np.abs(prediction[i] - targets[i]), u_out),
        ]

    first = [row(i, f"target {dst}", f"predicted {dst}") for i in range(min(rows, len(inputs)))]
    plot.image_grid(first, length_nm, out / "mapping.png", title=f"{mapping}: test images")
    worst = [
        row(i, f"target (R2={scores['r2_sample'][i]:.3f})", f"predicted (SSIM={scores['ssim'][i]:.3f})")
        for i in evaluate.worst(scores, 0.05, "r2_sample")
    ]
    plot.image_grid(worst, length_nm, out / "worst.png", title=f"{mapping}: worst 5% of images by R^2")


def write_history_figures(history, mapping, out) -> None:
    """losses.png, r2.png and ssim.png from a training history into folder `out`."""
    steps = np.asarray(history["step"])
    plot.curves(
        {name: (steps, np.asarray(history[name])) for name in ("g_gan", "g_l1", "d_loss")},
        "step", "loss", out / "losses.png", title=f"{mapping}: losses",
    )
    evals = np.asarray(history["val_step"])
    plot.curves(
        {s: (evals, np.asarray(history[f"r2_{s}"])) for s in SPLITS if f"r2_{s}" in history},
        "step", "R$^2$ (training-set mean map)", out / "r2.png", title=f"{mapping}: R$^2$ vs step",
    )
    ssim_names = sorted(k for k in history if k.startswith("ssim_test_"))
    if ssim_names:
        plot.curves(
            {k.removeprefix("ssim_test_"): (evals, np.asarray(history[k])) for k in ssim_names},
            "step", "SSIM", out / "ssim.png", title=f"{mapping}: SSIM of test images", legend=False,
        )


def splits_from_dataset(path: str | pathlib.Path, n_electrons: int) -> dict:
    """{"train", "validation", "test"} -> {"V", "n0", "n_int"} images of one N from a dataset.

    Args:
      path: dataset folder (qdjax.data format; checksums verified).
      n_electrons: N to select.

    Returns:
      dict of dicts of arrays (n, grid, grid): V in eV, n0 and n_int in nm^-2.
    """
    from qdjax import data

    out = {}
    for split in SPLITS:
        ds = data.load(path, split, n_electrons=n_electrons)
        out[split] = {"V": ds.V, "n0": ds.n0, "n_int": ds.n_int}
    return out


class InverseRun(NamedTuple):
    """Result of `run_inverse` (arrays over the checked test samples).

    check: qdjax.inverse.CheckResult of the generator proposals.
    refined: qdjax.inverse.RefineResult, or None when no refinement was asked for.
    potential_r2: R^2 of the proposed potentials against the true ones (training mean map).
    summary: JSON-ready dict (also written to inverse.json).
    """

    check: object
    refined: object
    potential_r2: float
    summary: dict


def run_inverse(
    state: train.TrainState,
    scalers: evaluate.Scalers,
    splits: Mapping,
    n_electrons: int,
    ed_config,
    *,
    out_dir: str | pathlib.Path,
    samples: int | None = None,
    refine_samples: int = 0,
    refine_steps: int = 100,
    symmetrize: bool = False,
    progress: bool = True,
) -> InverseRun:
    """Inverse design on the test split: generator proposals checked by ED, then refinement.

    Args:
      state, scalers: a trained "n_int->V" generator and its scalers (`MappingRun.state`,
        `MappingRun.scalers`, or a checkpoint restored with `load_run`).
      splits: as for `run_mapping` (the test split is used; the training mean maps enter R^2).
      n_electrons: N of the densities.
      ed_config: qdjax.EDConfig of the dataset.
      out_dir: folder for inverse.json and the figures inverse.png (paper Fig. 10) and
        refine.png (before/after refinement).
      samples: number of test samples checked (default all).
      refine_samples: number of them refined by gradients through the ED (0: none).
      refine_steps: maximum refinement steps.
      symmetrize: use the D4-averaged generator.
      progress: progress bar for the refinement.

    Returns:
      InverseRun.

    Raises:
      ValueError: not an n_int -> V generator, or a NaN/inf in the test or training images.
    """
    import time

    from qdjax import inverse

    if scalers.inputs.unit != "nm^-2" or scalers.targets.unit != "eV":
        raise ValueError("run_inverse needs an n_int -> V generator (density in, potential out)")
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    test = splits["test"]
    count = len(test["n_int"]) if samples is None else min(samples, len(test["n_int"]))
    target = evaluate.check_finite("test n_int", np.asarray(test["n_int"][:count], np.float64))
    true_V = evaluate.check_finite("test V", np.asarray(test["V"][:count], np.float64))
    density_mean = evaluate.check_finite("train n_int", np.asarray(splits["train"]["n_int"], np.float64)).mean(axis=0)
    potential_mean = evaluate.check_finite("train V", np.asarray(splits["train"]["V"], np.float64)).mean(axis=0)
    proposer = evaluate.generator_function(state, scalers, symmetrize)
    inverse.check(proposer, target[:1], n_electrons, ed_config)  # compile outside the timing
    start = time.perf_counter()
    checked = inverse.check(proposer, target, n_electrons, ed_config, mean_map=density_mean)
    checked.potential.block_until_ready()
    check_seconds = time.perf_counter() - start
    generator = check_summary(checked, target, true_V, density_mean, potential_mean)
    potential_r2 = generator["potential_r2"]
    summary = {
        "n_electrons": n_electrons,
        "samples": count,
        "generator": {**generator, "seconds_per_sample": check_seconds / count},
        "acceptance_threshold_displaced_charge": inverse.ACCEPT_CHARGE,
    }
    refined = None
    rows = [
        [
            ("V (true)", true_V[i], "eV"),
            ("n_int (target)", target[i], "nm$^{-2}$"),
            ("generated V", np.asarray(checked.potential[i]), "eV"),
            ("recomputed n", np.asarray(checked.density[i]), "nm$^{-2}$"),
        ]
        for i in range(min(3, count))
    ]
    plot.image_grid(rows, ed_config.length_nm, out / "inverse.png", title="inverse problem: n_int -> V, checked by ED")
    if refine_samples > 0:
        m = min(refine_samples, count)
        start = time.perf_counter()
        refined = inverse.refine(checked.potential[:m], target[:m], n_electrons, ed_config, steps=refine_steps, progress=progress)
        refine_seconds = time.perf_counter() - start
        before = inverse.scores(checked.density[:m], target[:m], n_electrons, ed_config, density_mean)
        after = inverse.scores(refined.density, target[:m], n_electrons, ed_config, density_mean)
        summary["refinement"] = {
            "samples": m,
            "steps": refined.steps,
            "density_r2_before": float(before["r2"]),
            "density_r2_after": float(after["r2"]),
            "potential_r2_after": float(evaluate.metrics.r2(refined.potential, true_V[:m], potential_mean)),
            "displaced_charge_median_before": float(np.median(before["displaced_charge"])),
            "displaced_charge_median_after": float(np.median(after["displaced_charge"])),
            "converged": int(np.sum(refined.converged)),
            "seconds_per_sample": refine_seconds / m,
        }
        rows = [
            [
                ("n_int (target)", target[i], "nm$^{-2}$"),
                ("generated V", np.asarray(checked.potential[i]), "eV"),
                ("its density", np.asarray(checked.density[i]), "nm$^{-2}$"),
                ("refined V", np.asarray(refined.potential[i]), "eV"),
                ("its density", np.asarray(refined.density[i]), "nm$^{-2}$"),
            ]
            for i in range(min(3, m))
        ]
        plot.image_grid(rows, ed_config.length_nm, out / "refine.png", title="gradient refinement through the ED")
    (out / "inverse.json").write_text(json.dumps(summary, indent=2))
    return InverseRun(checked, refined, potential_r2, summary)


def write_proposal_comparison(before, after, splits: Mapping, path, length_nm: float = 30.0, rows: int = 3) -> None:
    """Figure: two generators' proposals for the same test densities, with their ED densities.

    One row per sample, worst first by the `before` displaced charge: target density, the true
    potential, then for each generator the proposed potential and the density the ED
    recomputes for it (with its displaced charge).

    Args:
      before, after: `qdjax.inverse.CheckResult` of the first n test samples (same targets).
      splits: as for `run_mapping` (the test split's V and n_int).
      path: PNG file to write.
      length_nm: box side for the axes.
      rows: samples shown.
    """
    n = before.potential.shape[0]
    q_before = np.asarray(before.scores["displaced_charge"])
    q_after = np.asarray(after.scores["displaced_charge"])
    order = np.argsort(-q_before)[: min(rows, n)]
    test = splits["test"]
    grid = [
        [
            ("n_int (target)", np.asarray(test["n_int"][i]), "nm$^{-2}$"),
            ("V (true)", np.asarray(test["V"][i]), "eV"),
            ("V, plain generator", np.asarray(before.potential[i]), "eV"),
            (f"its ED density ({100 * q_before[i]:.1f} %)", np.asarray(before.density[i]), "nm$^{-2}$"),
            ("V, ED-in-the-loop", np.asarray(after.potential[i]), "eV"),
            (f"its ED density ({100 * q_after[i]:.1f} %)", np.asarray(after.density[i]), "nm$^{-2}$"),
        ]
        for i in order
    ]
    plot.image_grid(grid, length_nm, pathlib.Path(path),
                    title="generator proposals and their ED densities (displaced charge), before and after "
                          "ED-in-the-loop training")  # fmt: skip


def check_summary(checked, target, true_V, density_mean, potential_mean) -> dict:
    """Scores of generator proposals checked by ED (a `qdjax.inverse.CheckResult`), JSON-ready.

    Args:
      checked: CheckResult of n samples. target: (n, grid, grid) target densities, nm^-2.
      true_V: (n, grid, grid) potentials the targets came from, eV.
      density_mean, potential_mean: (grid, grid) training-set mean maps (R^2 references).
    Returns:
      dict: density_r2 (recomputed densities, over the set), density_r2_worst (lowest
      per-sample R^2 against the training mean map), potential_r2, accepted (count),
      displaced_charge_median / _max, ssim_mean, l1_mean (nm^-2).
    """
    sample_r2 = evaluate.per_sample_r2(checked.density, target, density_mean)
    charge = np.asarray(checked.scores["displaced_charge"])
    return {
        "density_r2": float(checked.scores["r2"]),
        "density_r2_worst": float(np.min(sample_r2)),
        "potential_r2": float(evaluate.metrics.r2(checked.potential, true_V, potential_mean)),
        "accepted": int(np.sum(checked.accepted)),
        "displaced_charge_median": float(np.median(charge)),
        "displaced_charge_max": float(np.max(charge)),
        "ssim_mean": float(np.mean(checked.scores["ssim"])),
        "l1_mean": float(np.mean(checked.scores["l1"])),
    }


def pix2pix_config(
    widths: str = "authors",
    discriminator: str = "image70",
    batch_size: int = 1,
    learning_rate: float = 1e-4,
    d4: bool = False,
    jitter_resize: int = 64,
    image_size: int = 64,
    decay_start: int = 0,
    decay_steps: int = 0,
    lambda_d4: float = 0.0,
    equivariant: bool = False,
) -> Pix2PixConfig:
    """A Pix2PixConfig from the few choices the examples and the command line expose.

    Args:
      widths: "authors" (generator 16..128, discriminator 16..128, the authors' public code)
        or "pix2pix" (64..512, the original pix2pix).
      discriminator: preset name of qdjax.ml.models.DISCRIMINATOR_PRESETS (patch size:
        image70, patch34, patch16, patch7, patch4, pixel1).
      batch_size, learning_rate: as in Pix2PixConfig (paper: 1, 1e-4).
      d4: random symmetry-of-the-square augmentation (exact for these maps).
      jitter_resize: random jitter size (image_size: none, the paper's best).
      image_size: image side in pixels (the ED grid).
      decay_start, decay_steps: learning-rate schedule as in Pix2PixConfig (0, 0: constant).
      lambda_d4: weight of the D4-consistency term (Pix2PixConfig.lambda_d4; 0: none).
      equivariant: the D4-averaged U-Net as generator (GeneratorConfig.equivariant).
    """
    from qdjax.ml import models

    if widths not in ("authors", "pix2pix"):
        raise ValueError(f"widths must be 'authors' or 'pix2pix', got {widths!r}")
    gen_filters = models.AUTHORS_GENERATOR_FILTERS if widths == "authors" else models.PIX2PIX_GENERATOR_FILTERS
    disc_widths = models.AUTHORS_DISCRIMINATOR_WIDTHS if widths == "authors" else models.PIX2PIX_DISCRIMINATOR_WIDTHS
    depth = int(np.log2(image_size))
    gen_filters = tuple(gen_filters[:depth]) + (gen_filters[-1],) * max(0, depth - len(gen_filters))
    return Pix2PixConfig(
        generator=models.GeneratorConfig(image_size=image_size, filters=gen_filters, equivariant=equivariant),
        discriminator=models.DiscriminatorConfig.preset(discriminator, disc_widths),
        batch_size=batch_size,
        learning_rate=learning_rate,
        random_d4=d4,
        jitter_resize=jitter_resize if jitter_resize != 64 else image_size,
        decay_start=decay_start,
        decay_steps=decay_steps,
        lambda_d4=lambda_d4,
    )


class LoadedRun(NamedTuple):
    """A trained generator restored from a checkpoint folder written by `run_mapping`.

    state: TrainState. scalers: evaluate.Scalers. mapping: mapping name. step: checkpoint step.
    metadata: dict of everything stored with it (mapping, scalers and, for runs of
    `qdjax train`, the `dataset_metadata` of the training data), or None.
    """

    state: train.TrainState
    scalers: evaluate.Scalers
    mapping: str
    step: int
    metadata: dict | None = None


def load_run(checkpoint_dir: str | pathlib.Path, step: int | str = "best", *, verify: bool = True) -> LoadedRun:
    """Restore a `run_mapping` checkpoint (default: the best validation R^2) with its scalers.

    Args:
      checkpoint_dir: the run's checkpoints/ folder.
      step: "best", "latest" or a step number.
      verify: check every file against the sha256 recorded at save
        (`qdjax.ml.checkpoint.verify_step`); False also loads a checkpoint without a record.

    Raises:
      ValueError: the folder holds no checkpoint, a damaged one, or one without mapping
        metadata.
    """
    from qdjax.ml import checkpoint

    folder = pathlib.Path(checkpoint_dir)
    if not folder.is_dir():
        raise ValueError(f"no checkpoint folder at {folder}")
    restored = checkpoint.load_state(folder, step, verify=verify)
    meta = restored.metadata
    if "mapping" not in meta or "scalers" not in meta:
        raise ValueError(f"the checkpoint in {folder} has no mapping/scaler metadata (not written by run_mapping)")
    scalers = evaluate.Scalers.from_dict(meta["scalers"])
    return LoadedRun(restored.state, scalers, meta["mapping"], restored.step, dict(meta))


#: EDConfig fields that define the physics of the data (a model trained on one value does not
#: apply to another); the numerical ones (basis, orbitals, dtype, ...) only set its accuracy.
PHYSICAL_FIELDS = ("grid", "length_nm", "m_eff", "eps_r", "density_mode")


def _dataset_fingerprint(manifest: Mapping) -> str:
    """sha256 of a dataset's identity: its settings and the sha256 of every chunk, in order."""
    identity = {k: manifest.get(k) for k in ("config", "n_electrons", "n_samples", "seed", "splits")}
    identity["chunks"] = [manifest["chunks"][c]["sha256"] for c in sorted(manifest["chunks"])]
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def dataset_metadata(path: str | pathlib.Path, n_electrons: int) -> dict:
    """What a checkpoint records about its training data (see `run_mapping`'s `metadata`).

    Args:
      path: dataset folder (qdjax.data format).
      n_electrons: the N trained on.
    Returns:
      JSON-ready dict: "n_electrons" (int), "ed_config" (the dataset's EDConfig as in its
      manifest: length_nm in nm, grid, basis, ...; eps_r inf as "inf") and "dataset"
      ({"path": absolute folder, "fingerprint": sha256 of the dataset's settings and of
      its chunks' sha256}).
    """
    from qdjax import data

    manifest = data.read_manifest(path)
    return {
        "n_electrons": int(n_electrons),
        "ed_config": dict(manifest["config"]),
        "dataset": {"path": str(pathlib.Path(path).resolve()), "fingerprint": _dataset_fingerprint(manifest)},
    }


def dataset_mismatch(metadata: Mapping, n_electrons: int, ed_config) -> list[str] | None:
    """How the data a checkpoint was trained on differs from the data it is given.

    Args:
      metadata: `LoadedRun.metadata` (holding `dataset_metadata` for runs of `qdjax train`).
      n_electrons: N of the data it is given.
      ed_config: qdjax.EDConfig of the data it is given.
    Returns:
      None if the checkpoint records no N and EDConfig (nothing can be checked); otherwise
      one line per difference in N or in a `PHYSICAL_FIELDS` field (e.g.
      "length_nm: trained on 30.0, data 60.0"), empty when they agree.
    """
    from qdjax import data

    if "n_electrons" not in metadata or "ed_config" not in metadata:
        return None
    trained = data.config_from_manifest({"config": metadata["ed_config"]})
    diffs = []
    if int(metadata["n_electrons"]) != int(n_electrons):
        diffs.append(f"n_electrons: trained on {metadata['n_electrons']}, data {n_electrons}")
    for name in PHYSICAL_FIELDS:
        a, b = getattr(trained, name), getattr(ed_config, name)
        if a != b:
            diffs.append(f"{name}: trained on {a}, data {b}")
    return diffs
