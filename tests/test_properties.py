"""Property-based checks (hypothesis): bad input is refused clearly, good input never gives NaN."""

import math

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import qdjax
from qdjax import ed, potentials

SMALL = qdjax.EDConfig(grid=16, basis=8, orbitals=4)
FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(shape=st.lists(st.integers(0, 20), min_size=0, max_size=4))
def test_any_wrong_shape_is_refused(shape):
    # Every shape other than (..., 16, 16) with a non-empty batch raises ValueError naming it.
    shape = tuple(shape)
    ok = len(shape) >= 2 and shape[-2:] == (16, 16) and 0 not in shape
    if ok:
        return
    with pytest.raises(ValueError, match="shape|empty"):
        ed.ground_state(np.zeros(shape), 1, SMALL)


@FAST
@given(n=st.one_of(st.integers(-5, 30), st.floats(allow_nan=True), st.text(max_size=3), st.none()))
def test_any_bad_electron_number_is_refused(n):
    if isinstance(n, int) and 1 <= n <= 8:
        return
    with pytest.raises(ValueError, match="n_electrons"):
        ed.ground_state(np.zeros((16, 16)), n, SMALL)


@FAST
@given(
    position=st.tuples(st.integers(0, 15), st.integers(0, 15)),
    bad=st.sampled_from([math.nan, math.inf, -math.inf]),
)
def test_a_single_non_finite_pixel_is_refused(position, bad):
    V = np.zeros((16, 16))
    V[position] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        ed.ground_density(V, 2, SMALL)


@FAST
@given(
    kind=st.sampled_from(["random", "harmonic", "spike", "constant"]),
    scale=st.floats(1e-6, 100.0),
    offset=st.floats(-100.0, 100.0),
    seed=st.integers(0, 10_000),
    n=st.integers(1, 4),
)
def test_no_nan_for_finite_potentials_in_bounds(kind, scale, offset, seed, n):
    # Documented bounds (docs/theory.md, "Numerical safety"): finite V with |V| <= 200 eV. Deep,
    # shallow, degenerate (harmonic, constant) and spiky potentials give finite energies and
    # densities that integrate to N; |offset| + scale <= 200 eV here.
    if kind == "random":
        V = potentials.random_potential(seed, SMALL) / 0.5 * scale
    elif kind == "harmonic":
        V = potentials.harmonic(SMALL, 0.01 + scale)
        V = V / max(V.max(), 1e-300) * scale
    elif kind == "spike":
        V = np.zeros((16, 16))
        V[seed % 16, (seed // 16) % 16] = -scale
    else:
        V = np.zeros((16, 16))
    gs = ed.ground_state(V + offset, n, SMALL)
    assert bool(jnp.isfinite(gs.energy))
    assert bool(jnp.all(jnp.isfinite(gs.density)))
    assert float(jnp.sum(gs.density)) * SMALL.pixel_nm**2 == pytest.approx(n, rel=1e-9)


@FAST
@given(
    grid=st.integers(-3, 3), basis=st.integers(-3, 3), orbitals=st.integers(-3, 20),
    length=st.floats(allow_nan=True, allow_infinity=True),
)
def test_config_accepts_exactly_the_valid_sizes(grid, basis, orbitals, length):
    # Box lengths: float64 holds L^2 only within 1e-154..1e154 nm^2 (EDConfig refuses L outside
    # 1e-77..1e77 nm, and more where 1 / h^2 or the kinetic energy leave that range); nm-scale
    # boxes (1e-30..1e30 nm here) are always accepted, lengths beyond 1e-78..1e78 nm never.
    sizes = grid >= 1 and basis >= 1 and 1 <= orbitals <= basis**2
    if sizes and math.isfinite(length) and 1e-30 <= length <= 1e30:
        qdjax.EDConfig(grid=grid, basis=basis, orbitals=orbitals, length_nm=length)
    elif not sizes or not (math.isfinite(length) and 1e-78 <= length <= 1e78):
        with pytest.raises(ValueError):
            qdjax.EDConfig(grid=grid, basis=basis, orbitals=orbitals, length_nm=length)
