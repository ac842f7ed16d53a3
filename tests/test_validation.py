"""Every kind of invalid input named in the public contract raises ValueError."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import qdjax
from qdjax import ed, potentials

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


# ----------------------------------------------------------------------------- issue 28, finding 6

SMALL = qdjax.EDConfig(grid=16, basis=8, orbitals=4)


def test_nested_python_list_is_accepted_as_V():
    # A nested list is an array-like (jax.typing.ArrayLike); it gives the array's result.
    V = potentials.random_potential(3, SMALL)
    from_list = ed.ground_state(V.tolist(), 2, SMALL)
    from_array = ed.ground_state(V, 2, SMALL)
    np.testing.assert_array_equal(np.asarray(from_list.energy), np.asarray(from_array.energy))
    with pytest.raises(ValueError, match="shape"):
        ed.ground_state([[0.0, 1.0], [2.0, 3.0]], 2, SMALL)


@pytest.mark.parametrize("value", [1e39, -1e39, 3e38, 1e20])
def test_float32_refuses_potentials_beyond_its_range(value):
    # float32's largest number is 3.4e38 (IEEE 754); 1e39 becomes inf when cast, and 3e38 or
    # 1e20 eV overflow in the squares of the eigensolvers (energy nan without the check).
    V = np.full((16, 16), value)
    with pytest.raises(ValueError, match=r"float32.*eV"):
        ed.ground_state(V, 1, SMALL.replace(dtype="float32"))


def test_float64_range_is_checked_too_and_ordinary_values_pass():
    with pytest.raises(ValueError, match=r"float64.*eV"):
        ed.validate(np.full((16, 16), 1e200), 1, SMALL)
    ed.validate(np.full((16, 16), 1e6), 1, SMALL.replace(dtype="float32"))  # a MeV is fine


@pytest.mark.parametrize("value", [1e-300, 1e-150, 1e200])
def test_box_lengths_beyond_the_dtype_are_a_clear_value_error(value):
    # 1e-300 nm made hbar^2 pi^2 / (2 m* L^2) overflow (OverflowError); 1e-150 nm divided by zero.
    with pytest.raises(ValueError, match="length_nm"):
        qdjax.EDConfig(length_nm=value)


def test_float32_box_length_range_is_narrower():
    qdjax.EDConfig(length_nm=1e-8)  # float64 handles it: the largest kinetic energy is 1e20 eV
    with pytest.raises(ValueError, match=r"length_nm.*float32"):
        qdjax.EDConfig(length_nm=1e-8, dtype="float32")


@pytest.mark.parametrize("field", ["length_nm", "m_eff", "eps_r", "degeneracy_tol"])
def test_booleans_are_not_numbers(field):
    with pytest.raises(ValueError, match=field):
        qdjax.EDConfig(**{field: True})


@pytest.mark.parametrize("integer", [np.int64, np.int32, np.uint8, int])
def test_integer_types_are_accepted_alike_for_sizes_and_n(integer):
    config = qdjax.EDConfig(grid=integer(16), basis=integer(8), orbitals=integer(4))
    assert config == SMALL and hash(config) == hash(SMALL)
    assert all(type(getattr(config, f)) is int for f in ("grid", "basis", "orbitals"))  # JSON-serialisable
    ed.validate(GOOD[:16, :16], integer(2), config)


@pytest.mark.parametrize("field", ["grid", "basis", "orbitals"])
def test_boolean_sizes_are_refused(field):
    with pytest.raises(ValueError, match=field):
        qdjax.EDConfig(**{field: np.True_})


def test_config_dict_round_trip_through_json():
    # to_dict is JSON-ready (eps_r = inf as "inf") and from_dict inverts it exactly.
    import json
    import math

    for cfg in (qdjax.EDConfig(), qdjax.EDConfig(grid=16, basis=8, orbitals=4, eps_r=math.inf, dtype="float32")):
        d = json.loads(json.dumps(cfg.to_dict(), allow_nan=False))
        assert qdjax.EDConfig.from_dict(d) == cfg
