"""Scoring of learned maps and generators as JAX functions inside the ED graph."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import qdjax
from qdjax import ed, inverse, potentials
from qdjax.ml import evaluate, models, train

SMALL_ED = qdjax.EDConfig(grid=16, basis=8, orbitals=4)


def small_pix2pix():
    gen = models.GeneratorConfig(image_size=16, filters=(8, 8, 8, 8))
    disc = models.DiscriminatorConfig.preset("pixel1", (8, 8, 8, 8))
    return models.Pix2PixConfig(generator=gen, discriminator=disc)


def test_unknown_mapping_is_refused():
    with pytest.raises(ValueError, match="unknown mapping"):
        evaluate.check_mapping("V->rho")


def test_fit_scalers_ranges():
    # Potentials: the fixed paper interval [V0, Vs] = [0, 0.5] eV; densities: [0, 1.1 max].
    V = np.zeros((3, 16, 16))
    n = np.full((3, 16, 16), 0.02)
    s = evaluate.fit_scalers("V->n_int", V, n)
    assert (s.inputs.lo, s.inputs.hi) == (0.0, 0.5)
    assert s.targets.hi == pytest.approx(0.022)
    assert evaluate.Scalers.from_dict(s.to_dict()) == s


def test_scores_of_perfect_and_imperfect_predictions():
    rng = np.random.default_rng(0)
    ref = rng.random((6, 16, 16)) * 0.03
    mean = ref.mean(axis=0) * 0.9
    scaler = evaluate.fit_scalers("V->n0", np.zeros((1, 16, 16)), ref).targets
    perfect = evaluate.score(ref, ref, scaler, mean)
    assert perfect["r2"] == pytest.approx(1.0)
    np.testing.assert_allclose(perfect["l1"], 0.0, atol=1e-15)
    np.testing.assert_allclose(perfect["ssim"], 1.0, atol=1e-12)
    pred = ref + 0.003 * rng.normal(size=ref.shape)
    s = evaluate.score(pred, ref, scaler, mean)
    # Reference: the formulas of eqs. (17)-(19) written out in NumPy.
    expected = 1 - np.sum((ref - pred) ** 2) / np.sum((ref - mean) ** 2)
    assert s["r2"] == pytest.approx(expected, rel=1e-12)
    per = 1 - np.sum((ref - pred) ** 2, axis=(1, 2)) / np.sum((ref - mean) ** 2, axis=(1, 2))
    np.testing.assert_allclose(s["r2_sample"], per, rtol=1e-12)
    assert evaluate.worst(s, fraction=0.2, by="r2_sample")[0] == int(np.argmin(per))
    assert evaluate.worst(s, fraction=0.2, by="l1")[0] == int(np.argmax(s["l1"]))
    agg = evaluate.aggregate(s)
    assert agg["l1_mean"] == pytest.approx(float(np.mean(s["l1"])))


def test_log_input_scalers():
    # log scale for density inputs only; targets stay linear, and scores refuse a log target
    rng = np.random.default_rng(4)
    V, n = rng.uniform(0, 0.5, (3, 8, 8)), rng.uniform(0, 0.02, (3, 8, 8))
    s = evaluate.fit_scalers("n_int->V", n, V, "log")
    assert (s.inputs.transform, s.targets.transform) == ("log", "linear")
    assert evaluate.fit_scalers("n0->n_int", n, n, "log").targets == evaluate.fit_scalers("n0->n_int", n, n).targets
    with pytest.raises(ValueError, match="density input"):
        evaluate.fit_scalers("V->n_int", V, n, "log")
    with pytest.raises(ValueError, match="linear target"):
        evaluate.score(n, n, s.inputs, n.mean(0))


@pytest.mark.parametrize("symmetrize, transform", [(False, "linear"), (True, "linear"), (False, "log")])
def test_generator_function_equals_predict(symmetrize, transform):
    # The pure-JAX generator gives the same physical images as qdjax.ml.train.predict.
    state = train.init_state(small_pix2pix(), jax.random.key(0))
    lo = 1e-12 if transform == "log" else 0.0
    scalers = evaluate.Scalers(evaluate.scaling.Scaler(lo, 0.03, "nm^-2", transform), evaluate.scaling.Scaler(0.0, 0.5, "eV"))
    n = np.random.default_rng(1).random((3, 16, 16)) * 0.03
    ref = evaluate.predict_physical(state, n, scalers, symmetrize=symmetrize)
    gf = evaluate.generator_function(state, scalers, symmetrize=symmetrize)
    out = jax.jit(gf.apply)(gf.variables, jnp.asarray(n))
    np.testing.assert_allclose(out, ref, atol=1e-6)


def test_generator_and_ed_in_one_graph():
    # inverse.check runs an (untrained) n_int -> V generator and the ED in one jitted graph;
    # the recomputed density must equal a separate ED call on the proposed potential.
    state = train.init_state(small_pix2pix(), jax.random.key(2))
    V = potentials.random_potentials([3, 4], SMALL_ED)
    target = ed.ground_density(V, 2, SMALL_ED)
    scalers = evaluate.fit_scalers("n_int->V", target, V)
    result = inverse.check(evaluate.generator_function(state, scalers), target, 2, SMALL_ED)
    np.testing.assert_allclose(result.density, ed.ground_density(result.potential, 2, SMALL_ED), atol=1e-12)
    assert result.accepted.shape == (2,)


def test_scores_refuse_non_finite_references():
    # An inf in the training mean map gave R^2 = 1 - finite / inf = 1 (issue 28).
    ref = np.random.default_rng(1).random((4, 16, 16))
    scaler = evaluate.fit_scalers("V->n0", np.zeros((1, 16, 16)), ref).targets
    mean = ref.mean(axis=0)
    bad_mean = mean.copy()
    bad_mean[2, 2] = np.inf
    with pytest.raises(ValueError, match="train_mean.*not finite"):
        evaluate.score(ref, ref, scaler, bad_mean)
    bad_ref = ref.copy()
    bad_ref[1, 0, 0] = np.nan
    with pytest.raises(ValueError, match="ref.*not finite"):
        evaluate.score(ref, bad_ref, scaler, mean)
    # A non-finite prediction is a result, not an input error: it gives non-finite scores.
    assert not np.isfinite(evaluate.score(bad_ref, ref, scaler, mean)["r2"])
    state = train.init_state(small_pix2pix(), jax.random.key(0))
    scalers = evaluate.fit_scalers("V->n0", np.zeros((1, 16, 16)), ref)
    with pytest.raises(ValueError, match="inputs.*not finite"):
        evaluate.predict_physical(state, np.full((2, 16, 16), np.inf), scalers)
