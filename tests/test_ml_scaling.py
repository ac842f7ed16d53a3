"""Tests of qdjax.ml.scaling: the affine maps between physical images and [-1, 1]."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from qdjax.ml.scaling import POTENTIAL_RANGE_EV, Scaler, fit_scaler


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


@pytest.mark.parametrize(
    "call",
    [
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
