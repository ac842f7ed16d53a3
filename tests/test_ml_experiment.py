"""A whole (tiny) training experiment: monitoring, best checkpoint, scores and figures."""

import json

import numpy as np
import pytest

import qdjax
from qdjax import ed, potentials
from qdjax.ml import checkpoint, experiment, models

SMALL_ED = qdjax.EDConfig(grid=16, basis=8, orbitals=4)


@pytest.fixture(scope="module")
def splits():
    V = potentials.random_potentials(range(24), SMALL_ED)
    states = ed.ground_states(V, (2,), SMALL_ED, with_non_interacting=True)
    data = {"V": V, "n0": np.asarray(states.non_interacting[0].density), "n_int": np.asarray(states.interacting[0].density)}
    cuts = {"train": slice(0, 16), "validation": slice(16, 20), "test": slice(20, 24)}
    return {name: {q: a[s] for q, a in data.items()} for name, s in cuts.items()}


def test_run_mapping_writes_scores_and_figures(splits, tmp_path):
    gen = models.GeneratorConfig(image_size=16, filters=(8, 8, 8, 8))
    cfg = models.Pix2PixConfig(generator=gen, discriminator=models.DiscriminatorConfig.preset("pixel1", (8, 8, 8, 8)), batch_size=4)
    run = experiment.run_mapping(splits, "V->n_int", cfg, steps=6, eval_every=3, out_dir=tmp_path, progress=False, monitor=3)
    # The restored state is the checkpoint with the best validation R^2 (the stopping rule).
    r2 = dict(zip(run.history["val_step"], run.history["val_r2"]))
    assert run.best_step == max(r2, key=r2.get)
    assert checkpoint.load_state(tmp_path / "checkpoints", "best").step == run.best_step
    # Monitoring: one value per evaluation for each split and each watched test image.
    for name in ("r2_train", "r2_validation", "r2_test", "ssim_test_00", "ssim_test_02"):
        assert len(run.history[name]) == 2
    summary = json.loads((tmp_path / "metrics.json").read_text())
    assert summary["best_step"] == run.best_step and summary["n_test"] == 4
    assert summary["test"]["r2"] == pytest.approx(run.scores["r2"])
    assert run.test_prediction.shape == (4, 16, 16)
    for fig in ("mapping.png", "losses.png", "r2.png", "ssim.png", "worst.png"):
        assert (tmp_path / fig).stat().st_size > 1000


def test_missing_split_is_refused(splits, tmp_path):
    cfg = models.Pix2PixConfig(generator=models.GeneratorConfig(image_size=16, filters=(8, 8, 8, 8)))
    bad = {k: v for k, v in splits.items() if k != "test"}
    with pytest.raises(ValueError, match="test"):
        experiment.run_mapping(bad, "V->n_int", cfg, steps=1, out_dir=tmp_path)


def test_density_head_predictions_integrate_to_n(splits, tmp_path):
    # With the normalised head every predicted density integrates to N = 2 (sum n h^2), trained
    # or not; the head is refused for potential targets. (figures=False: no PNG written.)
    gen = models.GeneratorConfig(image_size=16, filters=(8, 8, 8, 8))
    cfg = models.Pix2PixConfig(generator=gen, discriminator=models.DiscriminatorConfig.preset("pixel1", (8, 8, 8, 8)), batch_size=4)
    run = experiment.run_mapping(splits, "V->n_int", cfg, steps=2, eval_every=2, out_dir=tmp_path / "a", progress=False,
                                 density_head=True, figures=False)
    assert run.state.config.generator.density_norm is not None
    assert (tmp_path / "a" / "metrics.json").exists() and not list((tmp_path / "a").glob("*.png"))
    np.testing.assert_allclose(run.test_prediction.sum(axis=(1, 2)) * SMALL_ED.pixel_nm**2, 2.0, rtol=1e-4)
    assert run.test_prediction.min() >= 0
    with pytest.raises(ValueError, match="density_head"):
        experiment.run_mapping(splits, "n_int->V", cfg, steps=2, out_dir=tmp_path / "b", density_head=True)


@pytest.mark.parametrize("split, quantity", [("test", "V"), ("validation", "n_int"), ("train", "n_int")])
def test_non_finite_split_is_refused_before_training(splits, tmp_path, split, quantity):
    gen = models.GeneratorConfig(image_size=16, filters=(8, 8, 8, 8))
    cfg = models.Pix2PixConfig(generator=gen, discriminator=models.DiscriminatorConfig.preset("pixel1", (8, 8, 8, 8)))
    bad = {s: dict(q) for s, q in splits.items()}
    bad[split][quantity] = np.array(bad[split][quantity], copy=True)
    bad[split][quantity][1, 2, 3] = np.inf
    with pytest.raises(ValueError, match=rf"{split} {quantity}.*not finite"):
        experiment.run_mapping(bad, "V->n_int", cfg, steps=1, out_dir=tmp_path, progress=False)
    assert not (tmp_path / "checkpoints").exists()


def test_dataset_mismatch_names_the_differing_settings():
    meta = {"n_electrons": 2, "ed_config": {**{k: v for k, v in SMALL_ED.__dict__.items()}}}
    assert experiment.dataset_mismatch(meta, 2, SMALL_ED) == []
    other = qdjax.EDConfig(grid=16, basis=8, orbitals=4, length_nm=60.0)
    diffs = experiment.dataset_mismatch(meta, 3, other)
    assert len(diffs) == 2 and "n_electrons" in diffs[0] and "length_nm" in diffs[1] and "60" in diffs[1]
    # a finer basis computes the same physics more accurately: not a mismatch
    assert experiment.dataset_mismatch(meta, 2, qdjax.EDConfig(grid=16, basis=12, orbitals=6)) == []
    assert experiment.dataset_mismatch({"mapping": "V->n_int"}, 2, SMALL_ED) is None  # nothing recorded
