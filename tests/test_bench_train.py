"""What benchmarks/bench_train.py compares is the same computation in both frameworks.

* The PyTorch peer (benchmarks/torch_pix2pix.py) is the same network and the same training
  step: qdjax's initial weights are copied into the PyTorch modules; then one forward pass
  of the generator and of the discriminator must agree to float32 rounding (~1e-6), and so
  must the losses of two training steps and the parameters after one step. Skipped when
  torch (a benchmark-only dependency, not installed in CI) is absent.
* qdjax's fast convolution paths (image patches times the kernel, chosen for small maps,
  and the transposed convolution as a product with every kernel tap plus an overlap-add)
  equal Flax's convolution layers (always run).
"""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import qdjax  # noqa: F401  (float64 mode on, as for users: the networks stay float32)
from qdjax.ml import models, train
from qdjax.ml.models import (
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


@pytest.fixture(scope="module")
def tp():
    """benchmarks/torch_pix2pix.py (skips the test when PyTorch is not installed)."""
    pytest.importorskip("torch")
    return _load("torch_pix2pix")


# ----------------------------------------------------------------------------- fast conv paths


@pytest.mark.parametrize(
    "hw, c_in, c_out, kernel, stride, padding",
    [
        (4, 8, 6, 4, 2, "SAME"),  # 2 x 2 output: image patches times the kernel
        (8, 300, 5, 4, 2, "SAME"),  # 4 x 4 output: patches
        (16, 3, 4, 4, 2, "SAME"),  # 8 x 8 output, small contraction: conv_general_dilated
        (8, 256, 3, 4, 1, ((1, 1), (1, 1))),  # 7 x 7, contraction 4096: patches
        (7, 4, 2, 4, 1, ((1, 1), (1, 1))),  # 6 x 6: patches
        (9, 5, 3, 3, 3, "SAME"),  # odd kernel, stride 3, 3 x 3 output: patches
        (20, 2, 3, 5, 1, ((2, 2), (2, 2))),  # 20 x 20: conv_general_dilated
    ],
)
def test_conv_equals_flax_conv(hw, c_in, c_out, kernel, stride, padding):
    """Oracle: nnx.Conv (lax.conv_general_dilated) with the same kernel and bias."""
    ours = models.Conv(c_in, c_out, kernel, stride=stride, padding=padding, use_bias=True, rngs=nnx.Rngs(0))
    ours.bias[...] = jnp.linspace(-0.3, 0.3, c_out, dtype=jnp.float32)
    ref = nnx.Conv(c_in, c_out, (kernel, kernel), strides=stride, padding=padding, rngs=nnx.Rngs(1))
    ref.kernel[...] = ours.kernel[...]
    ref.bias[...] = ours.bias[...]
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, hw, hw, c_in)).astype(np.float32))
    a, b = ours(x), ref(x)
    assert a.shape == b.shape and a.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=2e-6)
    # gradients with respect to input and kernel agree too
    ga = jax.grad(lambda x, k: jnp.sum(jnp.sin(models._conv(x, k, stride, padding))), argnums=(0, 1))(x, ours.kernel[...])
    gb = jax.grad(
        lambda x, k: jnp.sum(jnp.sin(jax.lax.conv_general_dilated(
            x, k, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")))),
        argnums=(0, 1),
    )(x, ours.kernel[...])
    for u, v in zip(ga, gb):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-5, atol=1e-5)


def test_both_conv_paths_are_used():
    """The cases above cover both evaluations (see models._as_product)."""
    assert models._as_product(4, 128) and models._as_product(49, 4096)
    assert not models._as_product(64, 48) and not models._as_product(400, 50)


@pytest.mark.parametrize("hw", [(1, 1), (2, 2), (4, 4), (8, 8), (16, 16)])
def test_conv_transpose_paths_agree(hw):
    """ConvTranspose2x equals nnx.ConvTranspose on the U-Net's map sizes and channel counts."""
    c_in = 512 if hw[0] <= 8 else 4
    ours = models.ConvTranspose2x(c_in, 3, 4, use_bias=False, rngs=nnx.Rngs(0))
    ref = nnx.ConvTranspose(c_in, 3, (4, 4), strides=2, padding="SAME", use_bias=False, rngs=nnx.Rngs(1))
    ref.kernel[...] = ours.kernel[...]
    x = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (2, *hw, c_in)).astype(np.float32))
    np.testing.assert_allclose(np.asarray(ours(x)), np.asarray(ref(x)), rtol=0, atol=5e-6)


# ----------------------------------------------------------------------------- PyTorch peer

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
    import torch

    return torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))


def _nhwc(t):
    return t.detach().numpy().transpose(0, 2, 3, 1)


# The pix2pix widths (32 million parameters) take the longest: marked slow.
@pytest.fixture(scope="module", params=[pytest.param(n, marks=pytest.mark.slow) if n == "pix2pix" else n for n in sorted(CONFIGS)])
def setup(request, tp):
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
    import torch

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


def test_training_steps_agree(setup, tp):
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


@pytest.mark.slow
def test_benchmark_workers_time_both_frameworks(tp):
    # The benchmark's protocol end to end at the smallest setting: one worker process per
    # framework (and the allocator-tuned PyTorch worker), the same steps per round, rates
    # from the workers' own clocks.
    bench = _load("bench_train")
    r = bench.bench_case(
        "authors", 1, repeats=2, steps=2, warmup=1, min_round_s=0.0, torch_compile=False, threads=1,
        torch_single_thread=True, torch_malloc=True, pause_s=0.0,
    )
    assert r["processes"] == "one per framework"
    assert set(r["steps_per_s"]) == {"qdjax", "torch", "torch_1thread", "torch_malloc"}
    assert all(len(v) == 2 and min(v) > 0 for v in r["steps_per_s_all"].values())
    assert r["ratio_qdjax_over_best_torch"] == pytest.approx(
        r["steps_per_s"]["qdjax"] / max(v for k, v in r["steps_per_s"].items() if k != "qdjax")
    )
    with pytest.raises(ValueError, match="worker process"):
        bench.bench_case("authors", 1, repeats=1, steps=1, warmup=1, min_round_s=0.0, torch_compile=False,
                         threads=1, torch_single_thread=False, torch_malloc=True, in_process=True)
