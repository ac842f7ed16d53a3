"""Tests of qdjax.ml.train and qdjax.ml.checkpoint: losses, the pure step, learning,
augmentation by the symmetries of the square, equivariant prediction, checkpoints and resume.

Small networks (4-8 filters) keep compilation and the whole file well under a minute on
2 CPU cores. All tests share one configuration, so the training step compiles once.
"""

import dataclasses
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import qdjax  # noqa: F401  (float64 mode on: everything here must stay float32)
from qdjax.ml import checkpoint, train
from qdjax.ml.models import DiscriminatorConfig, GeneratorConfig, Pix2PixConfig

CFG = Pix2PixConfig(
    generator=GeneratorConfig(filters=(4, 8, 8, 8, 8, 8)),
    discriminator=DiscriminatorConfig.preset("image70", widths=(4, 8, 8, 8)),
    learning_rate=1e-3,
    batch_size=2,
)


def smooth_images(n, seed):
    """(n, 64, 64, 1) float32 in [-1, 1]: sums of four random Gaussian bumps."""
    rng = np.random.default_rng(seed)
    g = (np.arange(64) + 0.5) / 64
    X, Y = np.meshgrid(g, g, indexing="ij")
    out = np.zeros((n, 64, 64), np.float32)
    for i in range(n):
        for _ in range(4):
            cx, cy, w, a = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.08, 0.2), rng.uniform(-1, 1)
            out[i] += a * np.exp(-((X - cx) ** 2 + (Y - cy) ** 2) / (2 * w**2))
    return np.clip(out, -1, 1)[..., None]


def assert_trees_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for u, v in zip(la, lb):
        u, v = np.asarray(u), np.asarray(v)
        assert u.dtype == v.dtype and u.shape == v.shape
        np.testing.assert_array_equal(u, v)


@pytest.fixture(scope="module")
def data():
    """Toy mapping y = -x: 6 training and 3 validation pairs."""
    x = smooth_images(9, 0)
    return x[:6], -x[:6], x[6:], -x[6:]


@pytest.fixture(scope="module")
def trained(data):
    """100 steps of the toy mapping with the pure step; returns (initial state, final state, L1 per step)."""
    xt, yt, _, _ = data
    state0 = train.init_state(CFG, jax.random.key(0))
    step = train.make_train_step(CFG)
    state, l1 = state0, []
    data_key = jax.random.key(1)
    for s in range(100):
        idx = train.batch_indices(data_key, s, CFG.batch_size, len(xt))
        state, m = step(state, (xt[idx], yt[idx]), jax.random.fold_in(jax.random.key(2), s))
        l1.append(float(m["g_l1"]))
    return state0, state, np.asarray(l1)


# ----------------------------------------------------------------------------- losses


def test_losses_match_formulas_and_are_stable():
    z = jnp.asarray([-100.0, -3.0, -0.5, 0.0, 0.7, 4.0, 100.0], jnp.float32)
    zf = np.asarray(z, np.float64)
    neg_log_sig = np.logaddexp(0, -zf)  # -log S(z)
    neg_log_1m_sig = np.logaddexp(0, zf)  # -log(1 - S(z))
    fake = jnp.full((1, 64, 64, 1), 0.25, jnp.float32)
    target = jnp.full((1, 64, 64, 1), -0.25, jnp.float32)
    total, gan, l1 = train.generator_loss(z, fake, target, 100.0)
    assert gan == pytest.approx(neg_log_sig.mean(), rel=1e-6) and l1 == pytest.approx(0.5)
    assert total == pytest.approx(neg_log_sig.mean() + 50.0, rel=1e-6)
    d = train.discriminator_loss(z, z[::-1])
    assert d == pytest.approx(neg_log_sig.mean() + neg_log_1m_sig[::-1].mean(), rel=1e-6)
    assert np.isfinite(float(d)) and all(v.dtype == jnp.float32 for v in (total, gan, l1, d))
    zero = jnp.zeros((3, 3))
    assert train.discriminator_loss(zero, zero) == pytest.approx(2 * math.log(2))  # undecided D


# ----------------------------------------------------------------------------- step


def test_train_step_is_pure_and_float32(data):
    xt, yt, _, _ = data
    state = train.init_state(CFG, jax.random.key(5))
    before = jax.tree.map(np.array, state)
    step = train.make_train_step(CFG)
    assert train.make_train_step(CFG) is step  # one compiled function per config
    batch = (xt[:2], yt[:2])
    s1, m1 = step(state, batch, jax.random.key(7))
    s2, m2 = step(state, batch, jax.random.key(7))
    assert_trees_equal(s1, s2)
    assert_trees_equal(m1, m2)
    assert_trees_equal(state, before)  # the input state is untouched
    assert int(s1.step) == 1 and sorted(m1) == sorted(train.METRIC_NAMES)
    leaves = jax.tree.leaves((s1.g_params, s1.d_params, s1.g_opt, s1.d_opt, m1))
    assert {x.dtype for x in leaves} <= {jnp.dtype(jnp.float32), jnp.dtype(jnp.int32)}
    assert {x.dtype for x in jax.tree.leaves((s1.g_params, s1.d_params, m1))} == {jnp.dtype(jnp.float32)}
    s3, _ = step(state, batch, jax.random.key(8))  # a different key only matters for dropout/augmentation
    assert_trees_equal(s3, s1)
    first_param = lambda s: np.asarray(jax.tree.leaves(s.g_params)[0])  # noqa: E731
    assert not np.array_equal(first_param(s1), first_param(state))


def test_train_step_learns_toy_mapping(trained, data):
    """y = -x on smooth images: the L1 loss falls by far more than its step-to-step noise."""
    state0, state, l1 = trained
    xt, yt, xv, yv = data
    first, last = l1[:5].mean(), l1[-10:].mean()
    assert last < 0.3 * first, (first, last)
    # held-out check with the model itself: generator before vs after training
    err0 = np.abs(train.predict(state0, xv) - yv).mean()
    err1 = np.abs(train.predict(state, xv) - yv).mean()
    assert err1 < 0.5 * err0, (err0, err1)


def test_batch_indices_epochs_are_permutations():
    key = jax.random.key(3)
    idx = np.concatenate([train.batch_indices(key, s, 2, 5) for s in range(5)])  # 10 draws = 2 epochs
    assert sorted(idx[:5]) == list(range(5)) and sorted(idx[5:]) == list(range(5))
    np.testing.assert_array_equal(train.batch_indices(key, 3, 2, 5), idx[6:8])  # pure in (key, step)


# ----------------------------------------------------------------------------- symmetries


def test_d4_group():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 5, 3)), jnp.float32)
    imgs = [np.asarray(train.d4_transform(x, g)) for g in range(8)]
    assert len({im.tobytes() for im in imgs}) == 8  # eight distinct elements
    np.testing.assert_array_equal(imgs[0], np.asarray(x))
    for g in range(8):
        np.testing.assert_array_equal(np.asarray(train.d4_inverse(train.d4_transform(x, g), g)), np.asarray(x))
        for h in range(8):  # closure: T_g T_h is one of the eight
            comp = np.asarray(train.d4_transform(train.d4_transform(x, h), g)).tobytes()
            assert comp in {im.tobytes() for im in imgs}
    with pytest.raises(ValueError):
        train.d4_transform(x, 8)


def test_augment_acts_identically_on_input_and_target():
    """A pixelwise map y = f(x) survives jitter (nearest resize + crop), flips and D4 exactly."""
    x = jnp.asarray(smooth_images(4, 1))
    f = lambda v: v * v + 0.5 * v  # noqa: E731
    cfg = CFG.replace(jitter_resize=72, jitter_method="nearest", random_flip=True, random_d4=True)
    xa, ya = train.augment(x, f(x), jax.random.key(0), cfg)
    assert xa.shape == x.shape and ya.shape == x.shape and xa.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(ya), np.asarray(f(xa)))
    assert not np.array_equal(np.asarray(xa), np.asarray(x))
    same, _ = train.augment(x, f(x), jax.random.key(0), CFG)  # all off: identity
    np.testing.assert_array_equal(np.asarray(same), np.asarray(x))


def test_random_d4_draws_every_element():
    x0 = jnp.asarray(np.random.default_rng(2).normal(size=(1, 64, 64, 1)), jnp.float32)
    x = jnp.repeat(x0, 200, axis=0)
    xa, _ = train.augment(x, x, jax.random.key(1), CFG.replace(random_d4=True))
    elements = [np.asarray(train.d4_transform(x0[0], g, axes=(0, 1))).tobytes() for g in range(8)]
    seen = [elements.index(np.asarray(im).tobytes()) for im in xa]  # ValueError if not in D4
    # 200 uniform draws miss one of 8 elements with probability 8 (7/8)^200 = 2e-11
    assert sorted(set(seen)) == list(range(8))


def test_symmetrized_prediction_is_equivariant(trained, data):
    _, state, _ = trained
    x = data[2]  # (3, 64, 64, 1)
    p = train.predict(state, x, symmetrize=True)
    p_plain = train.predict(state, x)
    worst_plain = 0.0
    for g in range(8):
        tx = np.asarray(train.d4_transform(x, g))
        lhs = train.predict(state, tx, symmetrize=True)
        rhs = np.asarray(train.d4_transform(p, g))
        np.testing.assert_allclose(lhs, rhs, rtol=0, atol=2e-6)  # float32 rounding of the average
        plain_err = np.abs(train.predict(state, tx) - np.asarray(train.d4_transform(p_plain, g))).max()
        worst_plain = max(worst_plain, plain_err)
    assert worst_plain > 1e-3  # the plain generator is not equivariant: the test can fail


def _d4_tiny():
    gen = GeneratorConfig(image_size=16, filters=(4, 4, 4, 4))
    return Pix2PixConfig(generator=gen, discriminator=DiscriminatorConfig.preset("pixel1", (4, 4, 4, 4)),
                         batch_size=2, jitter_resize=16, lambda_d4=30.0)  # fmt: skip


def test_d4_consistency_is_the_squared_distance_to_a_transformed_pass(trained, data):
    # Oracle: for one image and each non-identity g, (G(x) - g^-1 G(g x))^2 averaged over the
    # pixels, written out with predict and d4_transform. The term takes one of these seven
    # values per key, all seven over 200 keys (probability of missing one 7 (6/7)^200 = 3e-13),
    # never the identity's zero; it vanishes for a D4-equivariant map (pixelwise tanh).
    _, state, _ = trained
    x = jnp.asarray(data[2][:1])
    gen = train.generator_from_state(state)
    fake = gen(x, train=False)
    candidates = [float(jnp.mean((fake - train.d4_inverse(gen(train.d4_transform(x, g), train=False), g)) ** 2))
                  for g in range(1, 8)]  # fmt: skip
    assert min(candidates) > 1e-6  # the test can fail: the trained toy generator is not equivariant
    seen = set()
    for k in range(200):
        value = float(train.d4_consistency(lambda z: gen(z, train=False), x, fake, jax.random.key(k)))
        matches = [g for g, c in enumerate(candidates, start=1) if abs(value - c) <= 1e-6 * c]
        assert len(matches) >= 1, value
        seen.add(matches[0])
    assert seen == set(range(1, 8))
    assert float(train.d4_consistency(jnp.tanh, x, jnp.tanh(x), jax.random.key(0))) == 0.0


def test_step_with_d4_term_differentiates_the_total_loss():
    # Oracle: jax.grad of L_G + lambda_d4 L_D4 written in one piece, with the transformed
    # pass held fixed (stop-gradient) and the group elements drawn as the step draws them.
    from flax import nnx

    cfg = _d4_tiny()
    x = jnp.asarray(smooth_images(2, 3)[:, ::4, ::4])
    y = -x
    state = train.init_state(cfg, jax.random.key(0))
    key = jax.random.key(7)
    metrics = train.make_train_step(cfg)(state, (x, y), key)[1]
    assert set(metrics) == set(train.METRIC_NAMES) | set(train.D4_METRIC_NAMES)
    _, k_drop = jax.random.split(key)
    grads = jax.jit(train._step_gradients(cfg, None))(state, x, y, k_drop)[0]
    g_def, d_def = train._generator_graphdef(cfg.generator), train._discriminator_graphdef(cfg.discriminator)
    elements = jax.random.randint(jax.random.fold_in(k_drop, 0xD4), (2,), 1, 8)

    def total(g_params):
        gen = nnx.merge(g_def, g_params, state.g_stats)
        disc = nnx.merge(d_def, state.d_params, state.d_stats)
        fake = gen(x, train=True, dropout_key=k_drop)
        logits = disc(jnp.concatenate([x, fake], axis=-1), train=True)
        seen = jnp.stack([train.d4_inverse(gen(train.d4_transform(x[i : i + 1], int(g)), train=False), int(g))[0]
                          for i, g in enumerate(elements)])  # fmt: skip
        d4 = jnp.mean((fake - jax.lax.stop_gradient(seen)) ** 2)
        return train.generator_loss(logits, fake, y, cfg.lambda_l1)[0] + cfg.lambda_d4 * d4, d4

    (value, d4), reference = jax.value_and_grad(total, has_aux=True)(state.g_params)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(reference)):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=1e-6)
    np.testing.assert_allclose(float(metrics["g_d4"]), float(d4), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["g_loss"]), float(value), rtol=1e-5)


def test_fit_with_d4_term_lowers_it_and_records_it(tmp_path):
    # 40 steps on a toy map with a heavy D4 weight: the recorded term falls; the config with
    # lambda_d4 survives the checkpoint, and a config dict without the field (older
    # checkpoints) means no term.
    cfg = _d4_tiny().replace(lambda_d4=300.0, learning_rate=1e-3)
    x = smooth_images(4, 5)[:, ::4, ::4]
    r = train.fit(cfg, x, -x, x, -x, steps=40, key=0, eval_every=20, progress=False,
                  checkpoint_dir=str(tmp_path / "c"))  # fmt: skip
    g_d4 = np.asarray(r.history["g_d4"])
    assert g_d4.shape == (40,) and np.all(np.isfinite(g_d4))
    assert np.mean(g_d4[-5:]) < 0.5 * np.mean(g_d4[:5]), g_d4
    assert checkpoint.read_config(tmp_path / "c") == cfg
    old = {k: v for k, v in cfg.to_dict().items() if k != "lambda_d4"}
    assert Pix2PixConfig.from_dict(old).lambda_d4 == 0.0
    with pytest.raises(ValueError, match="lambda_d4"):
        cfg.replace(lambda_d4=-1.0)


def test_equivariant_generator_is_the_d4_average_of_its_unet(trained, data):
    # Oracle: predict(..., symmetrize=True) of the plain U-Net with the same weights (8 U-Net
    # passes averaged outside the network), and exact equivariance G(T x) = T G(x) (float32
    # rounding of the average). The weights load unchanged: same parameter shapes.
    _, state, _ = trained
    x = data[2]
    eq_config = CFG.replace(generator=dataclasses.replace(CFG.generator, equivariant=True))
    eq_state = state.replace(config=eq_config)
    out = train.predict(eq_state, x)
    np.testing.assert_allclose(out, train.predict(state, x, symmetrize=True), rtol=0, atol=2e-6)
    np.testing.assert_array_equal(out, train.predict(eq_state, x, symmetrize=True))  # its own average
    for g in range(1, 8):
        np.testing.assert_allclose(train.predict(eq_state, np.asarray(train.d4_transform(x, g))),
                                   np.asarray(train.d4_transform(out, g)), rtol=0, atol=2e-6)  # fmt: skip
    assert not np.allclose(out, train.predict(state, x), atol=1e-3)  # the test can fail: the U-Net is not equivariant
    assert GeneratorConfig.from_dict({k: v for k, v in CFG.generator.to_dict().items() if k != "equivariant"}) \
        == CFG.generator  # fmt: skip
    with pytest.raises(ValueError, match="equivariant"):
        GeneratorConfig(equivariant=1)


def test_train_step_of_an_equivariant_generator_keeps_it_equivariant():
    # One step on a tiny config: the generator stays exactly equivariant after the update.
    cfg = _d4_tiny().replace(lambda_d4=0.0, generator=dataclasses.replace(_d4_tiny().generator, equivariant=True))
    x = jnp.asarray(smooth_images(2, 3)[:, ::4, ::4])
    state = train.init_state(cfg, jax.random.key(0))
    state, metrics = train.make_train_step(cfg)(state, (x, -x), jax.random.key(1))
    assert all(np.isfinite(float(v)) for v in metrics.values())
    out = train.predict(state, x)
    for g in range(1, 8):
        np.testing.assert_allclose(train.predict(state, np.asarray(train.d4_transform(x, g))),
                                   np.asarray(train.d4_transform(out, g)), rtol=0, atol=2e-6)  # fmt: skip


def test_fit_starts_an_equivariant_generator_from_plain_weights(tmp_path):
    # init_from: a plain U-Net's networks start an equivariant generator (same weights; with a
    # zero learning rate they come back unchanged); other widths are refused.
    plain = _d4_tiny().replace(lambda_d4=0.0, learning_rate=0.0)
    eq = plain.replace(generator=dataclasses.replace(plain.generator, equivariant=True))
    start = train.init_state(plain, jax.random.key(3))
    x = smooth_images(4, 5)[:, ::4, ::4]
    r = train.fit(eq, x, -x, x, -x, steps=1, key=0, eval_every=1, progress=False, init_from=start)
    assert_trees_equal(r.state.g_params, start.g_params)
    assert r.state.config.generator.equivariant
    wider = plain.replace(generator=dataclasses.replace(plain.generator, filters=(8, 4, 4, 4), equivariant=True))
    with pytest.raises(ValueError, match="init_from"):
        train.fit(wider, x, -x, x, -x, steps=1, key=0, eval_every=1, progress=False, init_from=start)


def test_predict_layouts_and_chunks(trained, data):
    _, state, _ = trained
    x = data[2]
    full = train.predict(state, x)
    assert full.shape == (3, 64, 64, 1) and full.dtype == np.float32
    np.testing.assert_array_equal(train.predict(state, x[..., 0]), full[..., 0])
    # another batch size may pick another convolution algorithm: equal to float32 rounding
    np.testing.assert_allclose(train.predict(state, x[0, ..., 0]), full[0, ..., 0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(train.predict(state, x, batch_size=2), full, rtol=0, atol=1e-6)
    gen = train.generator_from_state(state)
    np.testing.assert_array_equal(train.predict(gen, x), full)
    with pytest.raises(ValueError):
        train.predict(state, x[:, :32])


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoint_roundtrip_is_bit_identical(trained, tmp_path):
    _, state, _ = trained
    key = jax.random.key(42)
    hist = {"step": [1, 2], "g_l1": [0.5, 0.25], "val_step": [2], "val_r2": [0.123456789012345]}
    with checkpoint.Checkpointer(tmp_path / "a", CFG) as ck:
        ck.save(state, key=key, val_r2=0.5, history=hist, metadata={"scaler": {"lo": 0.0, "hi": 0.5}})
        r = ck.restore()
    assert r.step == int(state.step) == 100 and r.val_r2 == 0.5
    assert_trees_equal(r.state, state)
    assert r.state.config == CFG
    np.testing.assert_array_equal(r.key, np.asarray(jax.random.key_data(key)))
    assert r.history["g_l1"] == hist["g_l1"] and r.history["val_r2"] == hist["val_r2"] and r.history["d_loss"] == []
    assert r.metadata == {"scaler": {"lo": 0.0, "hi": 0.5}}
    assert checkpoint.read_config(tmp_path / "a") == CFG
    # batch-norm running averages (non-empty stats trees) round-trip as well
    cfg_bn = CFG.replace(generator=CFG.generator.__class__(filters=CFG.generator.filters, norm="batch"))
    s_bn = train.init_state(cfg_bn, jax.random.key(1))
    s_bn = s_bn.replace(g_stats=jax.tree.map(lambda v: v + 0.1 * jnp.arange(v.size, dtype=v.dtype), s_bn.g_stats))
    assert jax.tree.leaves(s_bn.g_stats)
    with checkpoint.Checkpointer(tmp_path / "bn", cfg_bn) as ck:
        ck.save(s_bn, key=key, val_r2=float("nan"))
        assert_trees_equal(ck.restore().state, s_bn)


def test_checkpoint_refuses_other_config(trained, tmp_path):
    _, state, _ = trained
    with checkpoint.Checkpointer(tmp_path, CFG) as ck:
        ck.save(state, key=jax.random.key(0), val_r2=0.1)
    other = CFG.replace(generator=GeneratorConfig(filters=(4, 8, 8, 8, 8, 16)))
    with checkpoint.Checkpointer(tmp_path, other) as ck:
        with pytest.raises(ValueError, match="generator.filters"):
            ck.restore()
    with checkpoint.Checkpointer(tmp_path, CFG.replace(lambda_l1=50.0)) as ck:
        with pytest.raises(ValueError, match="lambda_l1"):
            ck.restore()
    with checkpoint.Checkpointer(tmp_path, other) as ck, pytest.raises(ValueError):
        ck.save(state, key=jax.random.key(0), val_r2=0.1)  # state of another config


def test_checkpoint_keeps_latest_and_best(trained, tmp_path):
    _, state, _ = trained
    with checkpoint.Checkpointer(tmp_path, CFG) as ck:
        for step, r2 in [(1, 0.5), (2, 0.9), (3, 0.1), (4, 0.2), (5, float("nan"))]:
            ck.save(state.replace(step=jnp.asarray(step, jnp.int32)), key=jax.random.key(0), val_r2=r2)
        assert ck.all_steps() == [2, 5] and ck.best_step() == 2 and ck.latest_step() == 5
        with pytest.raises(ValueError, match="exists"):
            ck.save(state.replace(step=jnp.asarray(5, jnp.int32)), key=jax.random.key(0), val_r2=0.3)
    with checkpoint.Checkpointer(tmp_path, CFG) as ck:  # reopened: the ranking is read from disk
        ck.save(state.replace(step=jnp.asarray(6, jnp.int32)), key=jax.random.key(0), val_r2=0.3)
        assert ck.all_steps() == [2, 6] and ck.best_step() == 2
    best = checkpoint.load_state(tmp_path)
    assert best.step == 2 and best.val_r2 == 0.9 and int(best.state.step) == 2
    assert checkpoint.load_state(tmp_path, "latest").val_r2 == 0.3


# ----------------------------------------------------------------------------- fit


def test_fit_interrupted_and_resumed_matches_uninterrupted(data, tmp_path, monkeypatch):
    xt, yt, xv, yv = data
    kw = dict(steps=6, eval_every=2, key=11, progress=False)
    ref = train.fit(CFG, xt, yt, xv, yv, checkpoint_dir=tmp_path / "ref", **kw)
    assert ref.history["step"] == [1, 2, 3, 4, 5, 6] and ref.history["val_step"] == [2, 4, 6]
    assert all(np.isfinite(ref.history["val_r2"])) and ref.best_step in (2, 4, 6)
    # validation R^2 against a direct NumPy evaluation: 1 - SS_res / SS_tot, set-mean map
    pred, y64 = train.predict(ref.state, xv).astype(np.float64), yv.astype(np.float64)
    ss_tot = ((y64 - y64.mean(axis=0)) ** 2).sum()
    assert ref.history["val_r2"][-1] == pytest.approx(1 - ((y64 - pred) ** 2).sum() / ss_tot, rel=1e-9)

    original = train.batch_indices

    def crash_at_step_5(key, step, batch_size, n):  # like a kill after the step-4 checkpoint
        if step == 4:
            raise KeyboardInterrupt
        return original(key, step, batch_size, n)

    monkeypatch.setattr(train, "batch_indices", crash_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        train.fit(CFG, xt, yt, xv, yv, checkpoint_dir=tmp_path / "run", **kw)
    monkeypatch.setattr(train, "batch_indices", original)
    assert checkpoint.Checkpointer(tmp_path / "run", CFG).latest_step() == 4
    res = train.fit(CFG, xt, yt, xv, yv, checkpoint_dir=tmp_path / "run", **kw)
    assert_trees_equal(res.state, ref.state)
    assert res.history == ref.history and res.best_step == ref.best_step
    # the same run without checkpoints is the same trajectory too
    plain = train.fit(CFG, xt, yt, xv, yv, **kw)
    assert_trees_equal(plain.state, ref.state)


def test_fit_refuses_mismatched_resume(data, tmp_path):
    xt, yt, xv, yv = data
    kw = dict(steps=2, eval_every=2, progress=False, checkpoint_dir=tmp_path)
    train.fit(CFG, xt, yt, xv, yv, key=1, **kw)
    with pytest.raises(ValueError, match="another key"):
        train.fit(CFG, xt, yt, xv, yv, key=2, **kw)
    with pytest.raises(ValueError, match="other training"):
        train.fit(CFG, xt, -yt, xv, yv, key=1, **kw)
    other = CFG.replace(discriminator=DiscriminatorConfig.preset("pixel1", widths=(4, 8, 8, 8)))
    with pytest.raises(ValueError, match="discriminator"):
        train.fit(other, xt, yt, xv, yv, key=1, **kw)
    with pytest.raises(ValueError):
        train.fit(CFG, xt[:, :32], yt, xv, yv, key=1, steps=2, progress=False)
    with pytest.raises(ValueError, match="at least 2"):
        train.fit(CFG, xt, yt, xv[:1], yv[:1], key=1, steps=2, progress=False)


def test_fit_on_eval_records_extra_values(tmp_path):
    # The callback runs at every evaluation and its values land in the history (and survive
    # a resume, since the history is checkpointed).
    from qdjax.ml import models, train
    gen = models.GeneratorConfig(image_size=16, filters=(4, 4, 4, 4))
    cfg = models.Pix2PixConfig(generator=gen, discriminator=models.DiscriminatorConfig.preset("pixel1", (4, 4, 4, 4)))
    x = np.random.default_rng(0).uniform(-1, 1, (4, 16, 16)).astype(np.float32)
    calls = []
    def on_eval(state):
        calls.append(int(state.step))
        return {"step_seen": int(state.step)}
    r = train.fit(cfg, x, -x, x, -x, steps=4, key=0, eval_every=2, progress=False, on_eval=on_eval,
                  checkpoint_dir=str(tmp_path / "c"))
    assert calls == [2, 4] and r.history["step_seen"] == [2, 4]
    r2 = train.fit(cfg, x, -x, x, -x, steps=6, key=0, eval_every=2, progress=False, on_eval=on_eval,
                   checkpoint_dir=str(tmp_path / "c"))
    assert r2.history["step_seen"] == [2, 4, 6]


def test_learning_rate_decay_schedule_and_updates(data):
    # Constant up to decay_start, then linear to zero over decay_steps (checked against the formula);
    # with a zero step size the Adam update leaves the parameters unchanged.
    cfg = CFG.replace(decay_start=3, decay_steps=4)
    schedule = train.learning_rate_schedule(cfg)
    want = [1e-3, 1e-3, 1e-3, 1e-3, 7.5e-4, 5e-4, 2.5e-4, 0.0, 0.0]
    np.testing.assert_allclose([float(schedule(t)) for t in range(9)], want, rtol=1e-6, atol=1e-12)
    assert train.learning_rate_schedule(CFG) == CFG.learning_rate
    xt, yt, _, _ = data
    step = train.make_train_step(cfg.replace(decay_start=0, decay_steps=1))
    state = train.init_state(cfg.replace(decay_start=0, decay_steps=1), jax.random.key(0))
    state, _ = step(state, (xt[:2], yt[:2]), jax.random.key(1))  # step 0: full step size
    after_first = state.g_params
    state, _ = step(state, (xt[:2], yt[:2]), jax.random.key(2))  # step 1: zero step size
    assert_trees_equal(state.g_params, after_first)
    with pytest.raises(ValueError, match="decay_steps"):
        CFG.replace(decay_steps=-1)


def test_checkpoint_written_before_a_field_existed_still_matches(trained, tmp_path):
    # A stored configuration without a field added later (e.g. decay_start) compares equal to
    # the same configuration with that field at its default.
    saved = CFG.to_dict()
    del saved["decay_start"], saved["decay_steps"]
    assert checkpoint._config_mismatch(saved, CFG) == []
    assert checkpoint._config_mismatch(saved, CFG.replace(decay_steps=5)) != []


# ----------------------------------------------------------------------------- trust boundaries (issue 28)


def _largest_file(folder):
    """The largest file under `folder` (for a checkpoint's state item: the parameter data)."""
    return max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _flip_bit(path, offset_fraction=0.5, bit=0):
    raw = bytearray(path.read_bytes())
    raw[int(offset_fraction * (len(raw) - 1))] ^= 1 << bit
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("bit", [0, 3, 7])
def test_checkpoint_with_a_flipped_bit_is_refused(trained, tmp_path, bit):
    # Every checkpoint file's sha256 is recorded at save; one flipped bit in the parameter data
    # (which Orbax itself loads without complaint) is refused by restore and load_state, with
    # the file named and what to do.
    _, state, _ = trained
    with checkpoint.Checkpointer(tmp_path, CFG) as ck:
        ck.save(state, key=jax.random.key(0), val_r2=0.5)
    assert_trees_equal(checkpoint.load_state(tmp_path).state, state)  # intact: loads
    victim = _largest_file(tmp_path / "100" / "state")
    _flip_bit(victim, bit=bit)
    rel = victim.relative_to(tmp_path / "100").as_posix()
    with checkpoint.Checkpointer(tmp_path, CFG) as ck, pytest.raises(ValueError, match="sha256") as err:
        ck.restore()
    assert rel in str(err.value) and "delete" in str(err.value)
    with pytest.raises(ValueError, match=rel.replace(".", r"\.")):
        checkpoint.load_state(tmp_path)
    # A file removed from the step is named as well.
    victim.unlink()
    with pytest.raises(ValueError, match="missing"):
        checkpoint.load_state(tmp_path)


def test_checkpoint_without_checksum_record_needs_verify_false(trained, tmp_path):
    _, state, _ = trained
    with checkpoint.Checkpointer(tmp_path, CFG) as ck:
        ck.save(state, key=jax.random.key(0), val_r2=0.5)
    (tmp_path / "100" / checkpoint.CHECKSUMS).unlink()
    with pytest.raises(ValueError, match="no checksum record"):
        checkpoint.load_state(tmp_path)
    assert_trees_equal(checkpoint.load_state(tmp_path, verify=False).state, state)


def test_fit_does_not_resume_from_a_damaged_checkpoint(data, tmp_path):
    xt, yt, xv, yv = data
    kw = dict(eval_every=2, key=3, progress=False, checkpoint_dir=tmp_path)
    train.fit(CFG, xt, yt, xv, yv, steps=2, **kw)
    _flip_bit(_largest_file(tmp_path / "2" / "state"))
    with pytest.raises(ValueError, match="damaged"):
        train.fit(CFG, xt, yt, xv, yv, steps=4, **kw)


def test_checkpointer_refuses_a_non_finite_state(trained, tmp_path):
    _, state, _ = trained
    bad = state.replace(g_params=jax.tree.map(lambda a: a.at[(0,) * a.ndim].set(jnp.nan), state.g_params))
    with checkpoint.Checkpointer(tmp_path, CFG) as ck:
        with pytest.raises(ValueError, match="not finite"):
            ck.save(bad, key=jax.random.key(0), val_r2=0.5)
        assert ck.all_steps() == []


def test_fit_stops_at_a_non_finite_loss_and_keeps_the_last_good_checkpoint(data, tmp_path):
    # lr = 1e10: the first Adam step moves every weight by ~1e10 (still finite, checkpointed),
    # and the second overflows. fit stops with a one-line error naming the step and the term, and
    # only finite checkpoints stay on disk (resume starts from the last good one).
    xt, yt, xv, yv = data
    cfg = CFG.replace(learning_rate=1e10)
    with pytest.raises(train.NonFiniteError) as err:
        train.fit(cfg, xt, yt, xv, yv, steps=6, eval_every=1, key=0, progress=False, checkpoint_dir=tmp_path)
    message = str(err.value)
    assert "\n" not in message
    assert re.search(r"step (\d+)", message), message
    assert any(term in message for term in (*train.METRIC_NAMES, "g_params", "d_params", "val_r2")), message
    failed = int(re.search(r"step (\d+)", message).group(1))
    with checkpoint.Checkpointer(tmp_path, cfg) as ck:
        steps = ck.all_steps()
        assert steps and max(steps) < failed and f"step {max(steps)}" in message
        for s in steps:
            restored = ck.restore(s)
            assert all(np.all(np.isfinite(np.asarray(a))) for a in jax.tree.leaves(restored.state.g_params))
    assert isinstance(err.value, ValueError)  # the command line reports it as a one-line user error
    # lr = 1e30: the weights after the first step are finite but the predictions are not.
    with pytest.raises(train.NonFiniteError, match=r"step 1: .*val_r2 = nan.*no checkpoint"):
        train.fit(CFG.replace(learning_rate=1e30), xt, yt, xv, yv, steps=2, eval_every=1, key=0, progress=False,
                  checkpoint_dir=tmp_path / "b")


def test_fit_refuses_a_discriminator_larger_than_the_image():
    # image70 on 16 x 16 images has an empty logit map: its losses were NaN (means of nothing)
    # from the first step, and the GAN term silently absent.
    from qdjax.ml import models

    gen = models.GeneratorConfig(image_size=16, filters=(4, 4, 4, 4))
    cfg = models.Pix2PixConfig(generator=gen, discriminator=models.DiscriminatorConfig.preset("image70", (4, 4, 4, 4)))
    assert models.discriminator_output_size(cfg.discriminator, 16) == 0
    x = np.zeros((4, 16, 16), np.float32)
    with pytest.raises(ValueError, match="no logits on 16 x 16"):
        train.fit(cfg, x, x, x, x, steps=1, key=0, progress=False)


def test_fit_recomputes_a_step_whose_checksum_record_was_cut_off(data, tmp_path):
    # A kill after Orbax committed step 4 but before its sha256 record was written: the resumed
    # run discards step 4, recomputes it from step 2 and ends where an uninterrupted run ends.
    xt, yt, xv, yv = data
    kw = dict(steps=4, eval_every=2, key=5, progress=False)
    ref = train.fit(CFG, xt, yt, xv, yv, checkpoint_dir=tmp_path / "ref", **kw)
    run = tmp_path / "run"
    train.fit(CFG, xt, yt, xv, yv, checkpoint_dir=run, **kw)
    (run / "4" / checkpoint.CHECKSUMS).unlink()
    with pytest.raises(ValueError, match="no checksum record"):
        checkpoint.load_state(run, "latest")
    res = train.fit(CFG, xt, yt, xv, yv, checkpoint_dir=run, **kw)
    assert_trees_equal(res.state, ref.state)
    assert res.history == ref.history
    assert_trees_equal(checkpoint.load_state(run, "latest").state, ref.state)  # rewritten, with its record
