"""The backend policy (qdjax.backend): both layouts of the ED give the same numbers, the
accelerator layout is one program, and float32 physics survives accelerator matmul defaults."""

import contextlib

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

import qdjax
from qdjax import backend, ed, inverse, metrics, potentials
from emulation import reduced_precision_matmuls

#: Small enough to compile quickly, large enough for the iterative solvers: LOBPCG orbitals
#: (basis^2 = 256 >= 128), Davidson for the many-body sectors of N = 2..4 (36, 90, 225
#: determinants), the dense solver for N = 1.
SMALL = qdjax.EDConfig(grid=32, basis=16, orbitals=6, eigensolver="iterative")
NS = (1, 2, 3, 4)


@pytest.fixture(scope="module")
def small_V():
    """Three random potentials of the paper's class on the 32-pixel grid, (3, 32, 32) eV."""
    return np.asarray(potentials.random_potentials([21, 22, 23], SMALL))


def _jaxprs(jaxpr):
    """`jaxpr` (a Jaxpr) and every jaxpr nested in its equations' parameters."""
    yield jaxpr
    for eqn in jaxpr.eqns:
        for value in eqn.params.values():
            for item in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(item, jax.extend.core.ClosedJaxpr):
                    yield from _jaxprs(item.jaxpr)
                elif isinstance(item, jax.extend.core.Jaxpr):
                    yield from _jaxprs(item)


def _eqns(closed):
    for jaxpr in _jaxprs(closed.jaxpr):
        yield from jaxpr.eqns


@contextlib.contextmanager
def _traced_for(platform, monkeypatch):
    """Trace programs as `qdjax.backend` lays them out on `platform`; caches cleared on both
    sides so that no program traced here is ever compiled for this CPU."""
    monkeypatch.setattr(backend, "platform", lambda: platform)
    jax.clear_caches()
    try:
        yield
    finally:
        monkeypatch.undo()
        jax.clear_caches()


def test_auto_layout_follows_the_platform(monkeypatch):
    assert backend.sequential("auto") == (jax.default_backend() == "cpu")
    assert backend.sequential("sequential") and not backend.sequential("vectorized")
    monkeypatch.setattr(backend, "platform", lambda: "gpu")
    assert not backend.sequential("auto") and not backend.per_instance_kernels("vectorized")
    monkeypatch.setattr(backend, "platform", lambda: "cpu")
    assert backend.sequential("auto") and backend.per_instance_kernels("vectorized")
    with pytest.raises(ValueError, match="batching"):
        qdjax.EDConfig(batching="parallel")


@pytest.mark.parametrize("batching, loops_over_batch", [("vectorized", False), ("sequential", True)])
def test_accelerator_program_has_no_loop_over_the_batch(monkeypatch, batching, loops_over_batch):
    # The program traced for a GPU: a batch of 37 potentials is one vmapped program, so no scan
    # (lax.map, sequential_vmap) runs over 37 elements; the sequential layout is the control.
    V = jnp.zeros((37, SMALL.grid, SMALL.grid)) + 0.25
    cfg = SMALL.replace(batching=batching)
    with _traced_for("gpu", monkeypatch):
        closed = jax.make_jaxpr(lambda v: ed.ground_states(v, NS, cfg, with_non_interacting=True))(V)
    lengths = [eqn.params["length"] for eqn in _eqns(closed) if eqn.primitive.name == "scan"]
    assert (37 in lengths) == loops_over_batch, lengths


def _loss_and_states(V, cfg, weights):
    out = ed.ground_states(V, NS, cfg)
    loss = sum(jnp.sum(s.energy) + jnp.sum(weights * s.density) for s in out.interacting)
    return loss, out


@pytest.mark.parametrize("matrix_free", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_vectorized_equals_sequential(small_V, monkeypatch, matrix_free):
    # Reference: the sequential layout (one potential after another, the path the rest of the
    # suite checks against closed forms and PySCF). Energies, densities, one-body density
    # matrices and gradients with respect to V agree for N = 1..4, also where the many-body
    # sectors are solved matrix-free (FOCK_ASSEMBLED_MAX lowered, as in test_solvers).
    if matrix_free:
        monkeypatch.setattr(ed, "FOCK_ASSEMBLED_MAX", 10)
        assert ed._matrix_free(SMALL, 2)
    jax.clear_caches()
    weights = jnp.asarray(np.random.default_rng(3).normal(size=small_V.shape[1:]))
    step = jax.jit(jax.value_and_grad(_loss_and_states, has_aux=True), static_argnums=1)
    try:
        results = {b: step(small_V, SMALL.replace(batching=b), weights) for b in ("sequential", "vectorized")}
    finally:
        monkeypatch.undo()
        jax.clear_caches()
    (_, seq), g_seq = results["sequential"]
    (_, vec), g_vec = results["vectorized"]
    for a, b in zip(seq.interacting, vec.interacting):
        assert np.all(np.asarray(a.converged)) and np.all(np.asarray(b.converged))
        np.testing.assert_allclose(b.energy, a.energy, rtol=0, atol=1e-10)
        np.testing.assert_allclose(b.density, a.density, rtol=0, atol=1e-10 * float(np.max(a.density)))
        np.testing.assert_allclose(b.rdm1, a.rdm1, rtol=0, atol=1e-10)
    assert np.all(np.isfinite(g_vec))
    assert np.linalg.norm(g_vec - g_seq) <= 1e-8 * np.linalg.norm(g_seq)


def test_converged_flag_per_instance(small_V, monkeypatch):
    # Inside jit there is no dense fallback: a solver stopped at its iteration limit must show
    # up in the flag of that instance (and only the flag says so).
    from qdjax import single_particle

    cfg = SMALL.replace(batching="vectorized")
    good = jax.jit(lambda v: ed.ground_state(v, 2, cfg))(small_V)
    assert good.converged.shape == (3,) and good.converged.dtype == jnp.bool_
    assert np.all(np.asarray(good.converged))
    monkeypatch.setattr(single_particle, "MAX_ITERATIONS", 1)
    jax.clear_caches()
    try:
        bad = jax.jit(lambda v: ed.ground_state(v, 2, cfg))(small_V)
    finally:
        monkeypatch.undo()
        jax.clear_caches()
    assert not np.any(np.asarray(bad.converged))


def _float32_program(cfg):
    """The float32 ED (values and gradient w.r.t. V, N = 1..4) as traced for a GPU."""
    V = jnp.zeros((2, cfg.grid, cfg.grid), jnp.float32) + 0.25
    weights = jnp.ones((cfg.grid, cfg.grid), jnp.float32)
    return jax.make_jaxpr(jax.value_and_grad(lambda v: _loss_and_states(v, cfg, weights)[0]))(V)


def _full_precision(precision) -> bool:
    parts = precision if isinstance(precision, tuple) else (precision,)
    return all(p is not None and p.name == "HIGHEST" for p in parts)


def _default_precision_contractions(closed):
    """Contractions (dot_general, conv_general_dilated) with a float32 operand whose precision is
    not HIGHEST."""
    out = []
    for eqn in _eqns(closed):
        if eqn.primitive.name in ("dot_general", "conv_general_dilated"):
            if any(v.aval.dtype == jnp.float32 for v in eqn.invars) and not _full_precision(eqn.params["precision"]):
                out.append(str(eqn)[:200])
    return out


def test_float32_contractions_ask_for_full_precision(monkeypatch):
    # GPUs run default-precision float32 products as TF32, TPUs as bf16: every contraction of
    # the float32 ED (forward and gradient), of the SSIM filter and of the inverse scores asks
    # for HIGHEST. The network's own layers are not physics and keep the default.
    cfg = SMALL.replace(dtype="float32", batching="vectorized")
    with _traced_for("gpu", monkeypatch):
        program = _float32_program(cfg)
    assert sum(eqn.primitive.name == "dot_general" for eqn in _eqns(program)) > 50
    assert _default_precision_contractions(program) == []
    x = jnp.ones((3, 32, 32), jnp.float32)
    scores = jax.make_jaxpr(lambda a, b: inverse.scores(a, b, 2, cfg))(x, 2.0 * x)
    ssim = jax.make_jaxpr(lambda a, b: metrics.ssim(a, b, 1.0))(x, 2.0 * x)
    assert any(eqn.primitive.name == "conv_general_dilated" for eqn in _eqns(ssim))
    assert _default_precision_contractions(scores) == [] and _default_precision_contractions(ssim) == []
    # the check can fail: the same program traced without the policy's precision scope
    with _traced_for("gpu", monkeypatch):
        monkeypatch.setattr(backend, "full_precision", lambda dtype: contextlib.nullcontext())
        assert len(_default_precision_contractions(_float32_program(cfg))) > 50


def test_float32_program_holds_no_float64():
    # TPUs have no float64: the compiled float32 program (values and gradient, N = 1..4, the
    # vectorized layout) holds no float64 value. (The traced jaxpr still passes Python scalars
    # as weak-typed float64 into jnp helpers; XLA folds them into float32 constants.)
    cfg = SMALL.replace(dtype="float32", batching="vectorized")
    V = jnp.zeros((2, cfg.grid, cfg.grid), jnp.float32) + 0.25
    weights = jnp.ones((cfg.grid, cfg.grid), jnp.float32)
    step = jax.jit(jax.value_and_grad(lambda v: _loss_and_states(v, cfg, weights)[0]))
    text = step.lower(V).compile().as_text()
    assert "f32[" in text
    assert [line.strip()[:160] for line in text.splitlines() if "f64[" in line or "c128[" in line] == []


def _relative_density_error(density, reference):
    """Per instance ||n - n_ref||_2 / ||n_ref||_2 over the pixels."""
    diff = np.asarray(density, np.float64) - np.asarray(reference)
    axes = (-2, -1)
    return np.sqrt(np.sum(diff**2, axis=axes) / np.sum(np.asarray(reference) ** 2, axis=axes))


@pytest.fixture(scope="module")
def float64_reference(small_V):
    return ed.ground_states(small_V, NS, SMALL)


def _float32_errors(small_V, reference):
    out = ed.ground_states(small_V, NS, SMALL.replace(dtype="float32", batching="vectorized"))
    de = max(float(np.max(np.abs(np.asarray(a.energy, np.float64) - b.energy)))
             for a, b in zip(out.interacting, reference.interacting))  # fmt: skip
    dn = max(float(np.max(_relative_density_error(a.density, b.density)))
             for a, b in zip(out.interacting, reference.interacting))  # fmt: skip
    converged = all(bool(np.all(np.asarray(a.converged))) for a in out.interacting)
    return de, dn, converged


@pytest.fixture(scope="module")
def float32_errors(small_V, float64_reference):
    """(dE, relative density error, converged) of the float32 ED with exact float32 products."""
    return _float32_errors(small_V, float64_reference)


@pytest.mark.parametrize("kind", ["tf32", "bf16"])
def test_float32_ed_survives_accelerator_matmuls(small_V, float64_reference, float32_errors, kind):
    # Reference: the float64 ED, and the float32 ED with exact float32 products (this CPU).
    # Under emulated TF32 / bf16 products (tests/emulation.py: the operands of every
    # default-precision float32 product rounded as the hardware does) the float32 ED converges
    # and gives what it gives without them: within 2e-6 eV and 1e-5 relative (L2) density of
    # float64 for N = 1..4 (measured: 3e-7 eV, 3e-6; the paper's size in docs/benchmarks.md).
    with reduced_precision_matmuls(kind):
        de, dn, converged = _float32_errors(small_V, float64_reference)
    assert converged
    assert de <= 2e-6, de
    assert dn <= 1e-5, dn
    de_exact, dn_exact, _ = float32_errors
    assert abs(de - de_exact) <= 1e-7 and abs(dn - dn_exact) <= 1e-6


def test_emulated_bf16_breaks_float32_ed_without_full_precision(small_V, float64_reference, monkeypatch):
    # The control of the test above: with the policy's precision scope switched off, the
    # emulated bf16 products spoil the float32 ED by far more than the tolerances.
    monkeypatch.setattr(backend, "full_precision", lambda dtype: contextlib.nullcontext())
    with reduced_precision_matmuls("bf16"):
        de, dn, converged = _float32_errors(small_V, float64_reference)
    assert not converged or de > 2e-6 or dn > 1e-5
    assert de > 1e-5, de
