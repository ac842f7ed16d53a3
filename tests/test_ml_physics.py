"""The ED-consistency term of the inverse generator (qdjax.ml.physics) and the training step
that differentiates through the ED (qdjax.ml.train.make_train_step with an EDTerm)."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import qdjax
from qdjax import ed, inverse, potentials
from qdjax.ml import experiment, models, physics, scaling, train

CFG = qdjax.EDConfig(grid=16, basis=8, orbitals=4)
POT = scaling.fit_scaler(None, "potential")


def _pairs(cfg, n_electrons, seeds):
    V = np.stack([potentials.random_potential(s, cfg) for s in seeds])
    return V, np.asarray(ed.ground_density(V, n_electrons, cfg))


def _term(cfg, n_electrons, densities, weight=1.0, loss="l2"):
    return physics.EDTerm(weight, n_electrons, cfg, scaling.fit_scaler(densities, "density"), POT, loss)


def _double_well(cfg):
    # Two equal circular wells (0 eV) mirrored about x = L/2 in a 0.4 eV box: symmetric, so the
    # two lowest orbitals are a bonding/antibonding pair split only by tunnelling.
    h = cfg.length_nm / cfg.grid
    c = (np.arange(cfg.grid) + 0.5) * h
    x, y = np.meshgrid(c, c, indexing="ij")
    L, r = cfg.length_nm, cfg.length_nm / 5
    inside = ((x - 0.27 * L) ** 2 + (y - L / 2) ** 2 < r**2) | ((x - 0.73 * L) ** 2 + (y - L / 2) ** 2 < r**2)
    return np.where(inside, 0.0, 0.4)


def test_generator_output_is_bounded_like_refine():
    # The potential the ED sees is from_unit(tanh(z)) = V0 + (Vs - V0) sigmoid(2 z): the bounded
    # parameterisation of inverse.refine (from_theta with theta = 2 z).
    z = jnp.linspace(-20.0, 20.0, 101)
    np.testing.assert_allclose(POT.from_unit(jnp.tanh(z)), inverse.from_theta(2 * z), atol=1e-15)
    assert float(POT.from_unit(jnp.tanh(z)).min()) >= 0.0 and float(POT.from_unit(jnp.tanh(z)).max()) <= 0.5


@pytest.mark.parametrize("loss", ["l2", "charge"])
def test_term_vanishes_on_true_pairs_and_matches_the_ed_check(loss):
    # On (V, n(V)) the misfit is float32 rounding of the unit images; on swapped pairs it equals
    # the misfit written out from ed.ground_density and inverse.displaced_charge.
    V, n = _pairs(CFG, 2, [0, 1, 2])
    term = _term(CFG, 2, n, loss=loss)
    x = jnp.asarray(term.density_scaler.to_unit(n).astype(np.float32))
    y = jnp.asarray(POT.to_unit(V).astype(np.float32))
    value, metrics = physics.ed_term_loss(y, x, term)
    assert float(value) < (1e-10 if loss == "l2" else 1e-6)
    shifted = jnp.roll(y, 1, axis=0)
    value, metrics = physics.ed_term_loss(shifted[..., None], x[..., None], term)
    V_used = POT.from_unit(np.asarray(shifted, np.float64))
    target = term.density_scaler.from_unit(np.asarray(x, np.float64))
    dens = np.asarray(ed.ground_density(V_used, 2, CFG))
    l2 = np.mean(np.sum((dens - target) ** 2, axis=(1, 2)) / np.sum(target**2, axis=(1, 2)))
    charge = np.mean(inverse.displaced_charge(dens, target, 2, CFG))
    np.testing.assert_allclose(float(value), l2 if loss == "l2" else charge, rtol=1e-10)
    np.testing.assert_allclose([metrics["ed_l2"], metrics["ed_charge"]], [l2, charge], rtol=1e-6)
    assert float(value) > 0.01


@pytest.mark.parametrize("n_electrons", [1, 2, 3])
def test_term_gradient_matches_finite_differences(n_electrons):
    # d L_ED / d (generator output) through the whole ED, against central differences (float64).
    V, n = _pairs(CFG, n_electrons, [3, 4])
    term = _term(CFG, n_electrons, n)
    x = jnp.asarray(term.density_scaler.to_unit(n))
    y0 = jnp.asarray(POT.to_unit(np.clip(V[::-1] * 0.8 + 0.05, 0, 0.5)))
    f = lambda y: physics.ed_term_loss(y, x, term)[0]
    check_grads(f, (y0,), order=1, modes=("rev",), eps=1e-5, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize(
    "case, n_electrons", [("double_well", 2), ("double_well", 3), ("empty_box", 1), ("empty_box", 2),
                          ("empty_box", 3), ("empty_box", 4)],
)  # fmt: skip
def test_term_gradient_is_finite_at_degeneracies(case, n_electrons):
    # Engineered degeneracies: a symmetric double well (bonding/antibonding orbitals split only by
    # tunnelling, singlet and triplet nearly degenerate) and the empty box (a flat potential: the
    # exactly degenerate orbitals (1,2)/(2,1); for N = 3 the ground manifold is the degenerate
    # pair, for N = 4 it holds the Hund triplet). The gradient must be finite and of the size of
    # a generic one; where the ground state is not degenerate it must match finite differences.
    # At a degenerate ground manifold the derivative is that of the manifold-averaged density.
    cfg = CFG.replace(orbitals=6) if case == "double_well" else CFG
    V = _double_well(cfg) if case == "double_well" else np.full((cfg.grid, cfg.grid), 0.1)
    levels = np.asarray(qdjax.single_particle.solve(jnp.asarray(V), cfg.replace(orbitals=cfg.orbitals + 1)).energies)
    if case == "empty_box":
        assert levels[2] - levels[1] < 1e-12  # exact degeneracy inside the kept orbitals
    else:
        assert levels[1] - levels[0] < 1e-2  # tunnel splitting, eV
    assert levels[-1] - levels[-2] > 1e-4  # the cut lies in a gap
    _, n_random = _pairs(cfg, n_electrons, [7])
    term = _term(cfg, n_electrons, n_random)
    x = jnp.asarray(term.density_scaler.to_unit(n_random))
    f = lambda y: physics.ed_term_loss(y, x, term)[0]
    g = np.asarray(jax.grad(f)(jnp.asarray(POT.to_unit(V))[None]))
    g_generic = np.asarray(jax.grad(f)(jnp.asarray(POT.to_unit(potentials.random_potential(8, cfg)))[None]))
    assert np.all(np.isfinite(g))
    assert np.max(np.abs(g)) < 100 * np.max(np.abs(g_generic))
    if case == "double_well" or n_electrons <= 2:  # non-degenerate ground states: smooth
        check_grads(f, (jnp.asarray(POT.to_unit(V))[None],), order=1, modes=("rev",), eps=1e-5, atol=1e-7, rtol=1e-4)


def _tiny_pix2pix(batch=2, d4=False):
    gen = models.GeneratorConfig(image_size=16, filters=(4, 4, 4, 4))
    disc = models.DiscriminatorConfig.preset("pixel1", (4, 4, 4, 4))
    return models.Pix2PixConfig(generator=gen, discriminator=disc, batch_size=batch, random_d4=d4, jitter_resize=16)


def _tiny_batch():
    V, n = _pairs(CFG, 2, [10, 11])
    term = _term(CFG, 2, n, weight=3.0)
    x = term.density_scaler.to_unit(n).astype(np.float32)[..., None]
    y = POT.to_unit(V).astype(np.float32)[..., None]
    return term, x, y


def test_step_gradient_is_the_gradient_of_the_total_loss():
    # The step pulls w dL_ED/d fake back through the generator together with the pix2pix
    # terms. Oracle: jax.grad of L_G + w L_ED written in one piece, and a central finite
    # difference of that loss along the gradient direction (float32 networks, eps 1e-3).
    cfg = _tiny_pix2pix()
    term, x, y = _tiny_batch()
    state = train.init_state(cfg, jax.random.key(0))
    key = jax.random.key(5)
    metrics_ed = train.make_train_step(cfg, ed_term=term)(state, (x, y), key)[1]
    _, k_drop = jax.random.split(key)
    grads = jax.jit(train._step_gradients(cfg, term))(state, jnp.asarray(x), jnp.asarray(y), k_drop)[0]
    g_def, d_def = train._generator_graphdef(cfg.generator), train._discriminator_graphdef(cfg.discriminator)

    def total(g_params):
        from flax import nnx

        gen = nnx.merge(g_def, g_params, state.g_stats)
        disc = nnx.merge(d_def, state.d_params, state.d_stats)
        fake = gen(jnp.asarray(x), train=True, dropout_key=k_drop)
        logits = disc(jnp.concatenate([jnp.asarray(x), fake], axis=-1), train=True)
        g_total = train.generator_loss(logits, fake, jnp.asarray(y), cfg.lambda_l1)[0]
        return g_total + term.weight * physics.ed_term_loss(fake, jnp.asarray(x), term)[0].astype(jnp.float32)

    reference = jax.grad(total)(state.g_params)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(reference)):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=1e-5)
    np.testing.assert_allclose(float(metrics_ed["g_loss"]), float(total(state.g_params)), rtol=1e-5)
    norm = jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(grads)))
    direction = jax.tree.map(lambda g: g / norm, grads)
    eps = 1e-3
    plus = total(jax.tree.map(lambda p, d: p + eps * d, state.g_params, direction))
    minus = total(jax.tree.map(lambda p, d: p - eps * d, state.g_params, direction))
    np.testing.assert_allclose(float(plus - minus) / (2 * eps), float(norm), rtol=2e-2)


def test_step_reports_the_term_and_is_cached():
    cfg = _tiny_pix2pix(d4=True)
    term, x, y = _tiny_batch()
    step = train.make_train_step(cfg, ed_term=term)
    assert step is train.make_train_step(cfg, ed_term=term)
    assert step is not train.make_train_step(cfg)
    state = train.init_state(cfg, jax.random.key(1))
    new, metrics = step(state, (x, y), jax.random.key(2))
    assert set(metrics) == set(train.METRIC_NAMES) | set(physics.ED_METRIC_NAMES)
    assert all(np.isfinite(float(v)) for v in metrics.values())
    assert float(metrics["g_ed"]) == pytest.approx(float(metrics["ed_l2"]), rel=1e-6)
    # The total includes w L_ED: the plain step's g_loss is lower by that amount.
    plain = train.make_train_step(cfg)(state, (x, y), jax.random.key(2))[1]
    np.testing.assert_allclose(float(metrics["g_loss"]) - float(plain["g_loss"]), 3.0 * float(metrics["g_ed"]), rtol=1e-4)
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(new.g_params))


def test_step_refuses_what_the_ed_cannot_check():
    term, _, _ = _tiny_batch()
    cfg = _tiny_pix2pix()
    with pytest.raises(ValueError, match="jitter"):
        train.make_train_step(dataclasses.replace(cfg, jitter_resize=20), ed_term=term)
    with pytest.raises(ValueError, match="grid"):
        train.make_train_step(cfg, ed_term=dataclasses.replace(term, ed_config=CFG.replace(grid=24)))
    head = dataclasses.replace(cfg, generator=dataclasses.replace(cfg.generator, density_norm=1.0))
    with pytest.raises(ValueError, match="density -> potential"):
        train.make_train_step(head, ed_term=term)
    with pytest.raises(ValueError, match="weight"):
        dataclasses.replace(term, weight=-1.0)
    with pytest.raises(ValueError, match="loss"):
        dataclasses.replace(term, loss="l3")
    with pytest.raises(ValueError, match="potential_scaler"):
        dataclasses.replace(term, potential_scaler=term.density_scaler)


def _splits(cfg, n_electrons, counts=(12, 4, 4)):
    out, start = {}, 0
    for name, count in zip(experiment.SPLITS, counts):
        V, n = _pairs(cfg, n_electrons, range(start, start + count))
        out[name] = {"V": V, "n0": n, "n_int": n}
        start += count
    return out


def test_run_mapping_fine_tunes_through_the_ed(tmp_path):
    # From scratch, then fine-tuning that checkpoint with the ED term (init_from): the ED term is
    # recorded in the checkpoints and the summary, a resume with another weight is refused, the
    # best checkpoint is chosen by the ED-recomputed validation R^2, and 12 fine-tuning steps
    # lower the ED misfit of the training batches.
    splits = _splits(CFG, 2)
    cfg = _tiny_pix2pix(batch=4)
    base = experiment.run_mapping(splits, "n_int->V", cfg, steps=8, out_dir=tmp_path / "base", eval_every=8,
                                  progress=False, figures=False)  # fmt: skip
    tuned = experiment.run_mapping(
        splits, "n_int->V", cfg, steps=12, out_dir=tmp_path / "tuned", eval_every=6, progress=False, figures=False,
        ed_weight=10.0, ed_config=CFG, n_electrons=2, init_from=tmp_path / "base" / "checkpoints",
    )  # fmt: skip
    assert tuned.summary["ed_term"]["weight"] == 10.0 and tuned.summary["init_from"]["step"] == base.best_step
    assert tuned.scalers == base.scalers
    e = tuned.summary["ed_check_test"]
    assert 0 < e["accepted"] + 1 and math.isfinite(e["density_r2"]) and e["density_r2_worst"] <= e["density_r2"] + 1e-12
    assert len(tuned.history["ed_r2_test"]) == 2 and len(tuned.history["g_ed"]) == 12
    assert np.mean(tuned.history["g_ed"][-3:]) < np.mean(tuned.history["g_ed"][:3])
    with pytest.raises(ValueError, match="ED-term"):
        experiment.run_mapping(
            splits, "n_int->V", cfg, steps=14, out_dir=tmp_path / "tuned", eval_every=6, progress=False,
            figures=False, ed_weight=1.0, ed_config=CFG, n_electrons=2, init_from=tmp_path / "base" / "checkpoints",
        )  # fmt: skip
    with pytest.raises(ValueError, match="n_int->V"):
        experiment.run_mapping(splits, "V->n_int", cfg, steps=2, out_dir=tmp_path / "x", ed_weight=1.0,
                               ed_config=CFG, n_electrons=2, progress=False, figures=False)  # fmt: skip
