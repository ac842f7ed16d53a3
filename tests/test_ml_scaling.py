"""Tests of qdjax.ml.scaling: the affine maps between physical images and [-1, 1]."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qdjax.ml.scaling import LOG_FLOOR, POTENTIAL_RANGE_EV, Scaler, fit_scaler


def test_potential_scaler_fixed_range():
    # paper section II: wells at V0 = 0 eV, step Vs = 0.5 eV
    s = fit_scaler(np.random.default_rng(0).uniform(0, 0.5, (3, 8, 8)), "potential")
    assert (s.lo, s.hi, s.unit) == (0.0, 0.5, "eV") and POTENTIAL_RANGE_EV == (0.0, 0.5)
    np.testing.assert_allclose(s.to_unit(np.array([0.0, 0.25, 0.5])), [-1.0, 0.0, 1.0], atol=1e-15)
    assert fit_scaler(None, "potential") == s


def test_density_scaler_from_training_max():
    n = np.random.default_rng(1).uniform(0, 0.02, (4, 16, 16))
    s = fit_scaler(n, "density", margin=1.25)
    assert s.lo == 0.0 and s.hi == pytest.approx(1.25 * n.max()) and s.unit == "nm^-2"
    u = s.to_unit(n)
    assert u.min() >= -1 and u.max() == pytest.approx(2 / 1.25 - 1)


@pytest.mark.parametrize("lo, hi", [(0.0, 0.5), (-2.0, 3.0), (1e-3, 2e-3)])
def test_roundtrip_numpy_and_jax(lo, hi):
    s = Scaler(lo, hi)
    x = np.random.default_rng(2).uniform(lo, hi, (5, 7))
    np.testing.assert_allclose(s.from_unit(s.to_unit(x)), x, rtol=1e-12, atol=1e-15 * abs(hi))
    y = np.linspace(-1, 1, 9)
    np.testing.assert_allclose(s.to_unit(s.from_unit(y)), y, atol=1e-12)
    xf = jnp.asarray(x, jnp.float32)
    assert s.to_unit(xf).dtype == jnp.float32 and s.from_unit(s.to_unit(xf)).dtype == jnp.float32
    assert np.asarray(x, np.float32).dtype == s.to_unit(np.asarray(x, np.float32)).dtype


def test_dict_roundtrip_through_json():
    s = fit_scaler(np.full((2, 4, 4), 0.0123), "density")
    back = Scaler.from_dict(json.loads(json.dumps(s.to_dict())))
    assert back == s


def test_log_scaler_closed_form_and_inverse():
    # decades between the floor and the top are spread evenly over [-1, 1]
    s = Scaler(1e-12, 1e-2, "nm^-2", "log")
    x = np.array([1e-12, 1e-7, 1e-2, 1e-20, 0.0, -1e-16])
    np.testing.assert_allclose(s.to_unit(x), [-1.0, 0.0, 1.0, -1.0, -1.0, -1.0], atol=1e-14)
    xs = np.geomspace(1e-12, 1e-2, 11)
    np.testing.assert_allclose(s.from_unit(s.to_unit(xs)), xs, rtol=1e-12)
    y = np.linspace(-1, 1, 7)
    np.testing.assert_allclose(s.to_unit(s.from_unit(y)), y, atol=1e-12)


def test_log_scaler_traces_and_differentiates():
    # used inside jitted graphs (qdjax.inverse): jnp in, jnp out; d/dx = 2 / (x log(hi / lo))
    s = Scaler(1e-10, 1.0, "nm^-2", "log")
    x = jnp.asarray([1e-5, 0.3])
    np.testing.assert_allclose(jax.jit(s.to_unit)(x), s.to_unit(np.asarray(x)), atol=1e-6)
    g = jax.vmap(jax.grad(s.to_unit))(x)
    np.testing.assert_allclose(g, 2 / (np.asarray(x) * np.log(1e10)), rtol=1e-5)
    assert float(jax.grad(s.to_unit)(jnp.asarray(1e-12))) == 0.0  # below the floor: clamped


def test_fit_log_density_scaler():
    n = np.random.default_rng(3).uniform(0, 0.02, (4, 16, 16))
    s = fit_scaler(n, "density", transform="log", log_floor=1e-9)
    assert s.transform == "log" and s.lo == pytest.approx(1e-9 * n.max()) and s.hi == pytest.approx(1.1 * n.max())
    assert fit_scaler(n, "density", transform="log").lo == pytest.approx(LOG_FLOOR * n.max())
    assert Scaler.from_dict(json.loads(json.dumps(s.to_dict()))) == s


def test_dict_without_transform_is_linear():
    # checkpoints written before the transform field existed
    assert Scaler.from_dict({"lo": 0.0, "hi": 0.5, "unit": "eV"}) == Scaler(0.0, 0.5, "eV", "linear")


@pytest.mark.parametrize(
    "call",
    [
        lambda: Scaler(0.0, 1.0, "nm^-2", "log"),
        lambda: Scaler(0.0, 1.0, "", "sqrt"),
        lambda: fit_scaler(None, "potential", transform="log"),
        lambda: fit_scaler(np.ones((2, 4, 4)), "density", transform="log", log_floor=0.0),
        lambda: fit_scaler(np.ones((2, 4, 4)), "density", transform="exp"),
        lambda: Scaler(1.0, 1.0),
        lambda: Scaler(0.0, float("nan")),
        lambda: fit_scaler(np.ones((2, 4, 4)), "current"),
        lambda: fit_scaler(np.zeros((2, 4, 4)), "density"),
        lambda: fit_scaler(np.ones((2, 4, 4)), "density", margin=0.9),
        lambda: fit_scaler(np.array([[np.nan]]), "density"),
        lambda: fit_scaler(None, "density"),
    ],
)
def test_invalid_raise(call):
    with pytest.raises(ValueError):
        call()
