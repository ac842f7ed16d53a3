"""Every kind of invalid input named in the public contract raises ValueError."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import qdjax
from qdjax import ed

GOOD = np.zeros((64, 64))


@pytest.mark.parametrize(
    "V, n, match",
    [
        (np.zeros((64, 63)), 2, "shape"),
        (np.zeros(64), 2, "shape"),
        (np.zeros((32, 32)), 2, "shape"),
        (np.zeros((0, 64, 64)), 2, "empty"),
        (np.full((64, 64), np.nan), 2, "NaN"),
        (np.where(np.eye(64) > 0, np.inf, 0.0), 2, "NaN or infinite"),
        (np.zeros((64, 64), dtype=complex), 2, "real"),
        (GOOD, 0, "n_electrons"),
        (GOOD, 17, "n_electrons"),
        (GOOD, -1, "n_electrons"),
        (GOOD, 2.0, "n_electrons"),
        (GOOD, True, "n_electrons"),
        (GOOD, "2", "n_electrons"),
    ],
)
def test_ground_state_rejects(V, n, match):
    with pytest.raises(ValueError, match=match):
        ed.ground_state(V, n)
    with pytest.raises(ValueError, match=match):
        ed.ground_density(V, n)


def test_rejects_other_config_type():
    with pytest.raises(ValueError, match="EDConfig"):
        ed.ground_state(GOOD, 2, config={"grid": 64})


def test_grid_mismatch_names_grid():
    with pytest.raises(ValueError, match="grid=32"):
        ed.ground_state(GOOD, 1, qdjax.EDConfig(grid=32))


@pytest.mark.parametrize(
    "field, value",
    [
        ("grid", 0), ("grid", -4), ("grid", 64.0), ("basis", 0), ("orbitals", 0), ("orbitals", 1025),
        ("length_nm", 0.0), ("length_nm", -30.0), ("length_nm", math.inf), ("m_eff", 0.0),
        ("m_eff", math.nan), ("eps_r", 0.0), ("eps_r", -1.0), ("eps_r", math.nan),
        ("density_mode", "full"), ("degeneracy_tol", -1.0), ("dtype", "float16"),
    ],
)
def test_config_rejects(field, value):
    with pytest.raises(ValueError, match=field):
        qdjax.EDConfig(**{field: value})


def test_float64_without_x64_is_explained():
    jax.config.update("jax_enable_x64", False)
    try:
        with pytest.raises(ValueError, match="jax_enable_x64"):
            ed.ground_state(GOOD, 1)
    finally:
        jax.config.update("jax_enable_x64", True)


def test_traced_input_is_accepted_under_jit():
    # Finiteness cannot be checked on tracers; the shape checks still run before tracing.
    f = jax.jit(lambda v: ed.ground_state(v, 1).energy)
    assert jnp.isfinite(f(jnp.asarray(GOOD)))
    with pytest.raises(ValueError, match="shape"):
        jax.jit(lambda v: ed.ground_state(v, 1).energy)(jnp.zeros((8, 8)))


def test_sectors_too_large_are_refused_before_any_work():
    # K = 16, N = 7: C(16,4) C(16,3) = 1 019 200 determinants, above FOCK_MAX_DIMENSION even
    # matrix-free (H x would hold 136 x 1 019 200 float64 numbers, 1.0 GiB, per vector).
    config = qdjax.EDConfig(orbitals=16)
    assert qdjax.fock.sector_dimension(16, 7) > ed.FOCK_MAX_DIMENSION
    with pytest.raises(ValueError, match="1019200 determinants.*1.0 GiB per vector"):
        ed.ground_state(GOOD, 7, config)
    ed.validate(GOOD, 4, config)  # 14 400 determinants: accepted, matrix-free
    ed.validate(GOOD, 6, config)  # 313 600 determinants: accepted, matrix-free
    # ... but not for the dense solver, which would assemble a 33.6 GiB matrix
    with pytest.raises(ValueError, match="67200 determinants.*eigensolver='auto'"):
        ed.validate(GOOD, 5, config.replace(eigensolver="dense"))
