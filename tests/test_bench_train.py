"""The PyTorch peer of benchmarks/bench_train.py is the same network and the same training step.

qdjax's initial weights are copied into the PyTorch modules; then one forward pass of the
generator and of the discriminator must agree to float32 rounding (~1e-6), and so must the
losses of two training steps and the parameters after one step. Skipped when torch (a
benchmark-only dependency, not installed in CI) is absent.
"""

import importlib.util
import pathlib

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import qdjax  # noqa: E402,F401  (float64 mode on, as for users: the networks stay float32)
from qdjax.ml import train  # noqa: E402
from qdjax.ml.models import (  # noqa: E402
    PIX2PIX_DISCRIMINATOR_WIDTHS,
    PIX2PIX_GENERATOR_FILTERS,
    DiscriminatorConfig,
    GeneratorConfig,
    Pix2PixConfig,
)

_BENCH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, _BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tp = _load("torch_pix2pix")

# The benchmark's two configurations (the default, i.e. the authors' widths, and pix2pix's
# 64..512 widths) with a smaller generator/discriminator variant that keeps the test fast;
# batch 3 checks that nothing mixes images of a batch (instance norm is per image).
CONFIGS = {
    "default": Pix2PixConfig(batch_size=3),
    "pix2pix": Pix2PixConfig(
        generator=GeneratorConfig(filters=PIX2PIX_GENERATOR_FILTERS),
        discriminator=DiscriminatorConfig.preset("image70", widths=PIX2PIX_DISCRIMINATOR_WIDTHS),
        batch_size=2,
    ),
    "patch16_no_norm": Pix2PixConfig(
        generator=GeneratorConfig(filters=(8, 8, 16, 16, 16, 16), norm="none"),
        discriminator=DiscriminatorConfig.preset("patch16", norm="none"),
        learning_rate=2e-4,
        batch_size=2,
    ),
}


def _data(batch, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (batch, 64, 64, 1)).astype(np.float32)
    y = rng.uniform(-1, 1, (batch, 64, 64, 1)).astype(np.float32)
    return x, y


def _nchw(a):
    return torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))


def _nhwc(t):
    return t.detach().numpy().transpose(0, 2, 3, 1)


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def setup(request):
    config = CONFIGS[request.param]
    state = train.init_state(config, jax.random.key(0))
    gen, disc = tp.build(config)
    tp.load_jax_params(gen, disc, state.g_params, state.d_params)
    return config, state, gen, disc


def test_parameter_counts_match(setup):
    config, state, gen, disc = setup
    n_jax = [sum(a.size for a in jax.tree.leaves(p)) for p in (state.g_params, state.d_params)]
    n_torch = [sum(p.numel() for p in m.parameters()) for m in (gen, disc)]
    assert n_jax == n_torch


def test_forward_passes_agree(setup):
    config, state, gen, disc = setup
    x, y = _data(config.batch_size)
    fake_j = np.asarray(train.generator_from_state(state)(x))
    pair = np.concatenate([x, y], axis=-1)
    logits_j = np.asarray(train.discriminator_from_state(state)(pair))
    with torch.no_grad():
        fake_t = _nhwc(gen(_nchw(x)))
        logits_t = _nhwc(disc(_nchw(pair)))
    assert fake_t.shape == fake_j.shape and logits_t.shape == logits_j.shape
    # oracle: qdjax's own forward pass; the outputs are O(0.1..1), float32 rounding ~1e-6
    np.testing.assert_allclose(fake_t, fake_j, rtol=0, atol=1e-5)
    np.testing.assert_allclose(logits_t, logits_j, rtol=0, atol=2e-5)
    # and the check can fail: a wrong kernel orientation of a transposed convolution
    with torch.no_grad():
        gen.out_conv.weight.copy_(gen.out_conv.weight.flip(-1))
        wrong = _nhwc(gen(_nchw(x)))
        gen.out_conv.weight.copy_(gen.out_conv.weight.flip(-1))
    assert np.max(np.abs(wrong - fake_j)) > 1e-3


def test_training_steps_agree(setup):
    config, state, _, _ = setup
    gen, disc = tp.build(config)
    tp.load_jax_params(gen, disc, state.g_params, state.d_params)
    trainer = tp.Pix2PixTrainer(config, gen, disc)
    step = train.make_train_step(config)
    x, y = _data(config.batch_size, seed=1)
    s = state
    for k in range(2):
        s, m_j = step(s, (x, y), jax.random.key(k))
        m_t = trainer.step(_nchw(x), _nchw(y))
        for name in train.METRIC_NAMES:
            np.testing.assert_allclose(float(m_t[name]), float(m_j[name]), rtol=2e-5, atol=1e-6, err_msg=name)
        if k == 0:
            # parameters after one Adam step: update = -lr g / (|g| + 1e-8), about -lr sign(g),
            # so an element whose gradient is at the float32 rounding level (|g| < 1e-6) may
            # move either way; all others must agree to float32 rounding.
            ref_g, ref_d = tp.build(config)
            tp.load_jax_params(ref_g, ref_d, s.g_params, s.d_params)
            for mod, ref in ((gen, ref_g), (disc, ref_d)):
                for p, q in zip(mod.parameters(), ref.parameters()):
                    tiny = p.grad.abs() < 1e-6
                    diff = (p.detach() - q.detach()).abs()
                    if not bool(tiny.all()):
                        assert float(diff[~tiny].max()) < 1e-6
                    assert float(diff.max()) <= 2.01 * config.learning_rate
