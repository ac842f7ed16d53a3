"""What benchmarks/bench_train.py compares is the same computation in both frameworks.

* The PyTorch peer (benchmarks/torch_pix2pix.py) is the same network and the same training
  step: qdjax's initial weights are copied into the PyTorch modules; then one forward pass
  of the generator and of the discriminator must agree to float32 rounding (~1e-6), and so
  must the losses of two training steps and the parameters after one step. Skipped when
  torch (a benchmark-only dependency, not installed in CI) is absent.
* The arithmetic the benchmark reports (benchmarks/roofline.py) counts what the step does.
"""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import qdjax  # noqa: F401  (float64 mode on, as for users: the networks stay float32)
from qdjax.ml import train
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
    # the rates also come as useful GFLOP/s, the same arithmetic per step for every framework
    assert r["useful_gflops"] == pytest.approx({k: v * r["useful_gflop_per_step"] for k, v in r["steps_per_s"].items()})


# ----------------------------------------------------------------------------- roofline


@pytest.fixture(scope="module")
def roofline():
    """benchmarks/roofline.py."""
    return _load("roofline")


def _ones_conv_taps(size, kernel, stride, padding):
    # Oracle: a convolution of an all-ones image with an all-ones kernel adds 1 for every
    # (output pixel, tap) pair on a real pixel and 0 for every tap on a padding zero.
    x = jnp.ones((1, size, size, 1), jnp.float32)
    k = jnp.ones((kernel, kernel, 1, 1), jnp.float32)
    pad = padding if padding == "SAME" else (padding, padding)
    y = jax.lax.conv_general_dilated(x, k, (stride, stride), pad, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return float(jnp.sum(y))


@pytest.mark.parametrize(
    "size, kernel, stride, padding",
    [(64, 4, 2, "SAME"), (2, 4, 2, "SAME"), (1, 4, 2, "SAME"), (7, 3, 2, "SAME"), (9, 5, 3, "SAME"),
     (8, 4, 1, (1, 1)), (7, 4, 1, (1, 1)), (5, 1, 1, (0, 0))],
)
def test_conv_taps_count_real_pixels(roofline, size, kernel, stride, padding):
    assert roofline.conv_taps(size, kernel, stride, padding) ** 2 == _ones_conv_taps(size, kernel, stride, padding)


@pytest.mark.parametrize("size, kernel", [(1, 4), (2, 4), (32, 4), (5, 3), (4, 2), (3, 5)])
def test_conv_transpose_taps_count_kept_outputs(roofline, size, kernel):
    # Oracle: the same all-ones sum through lax.conv_transpose ('SAME', stride 2): taps whose
    # output is cropped add nothing.
    x = jnp.ones((1, size, size, 1), jnp.float32)
    k = jnp.ones((kernel, kernel, 1, 1), jnp.float32)
    y = jax.lax.conv_transpose(x, k, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    assert y.shape[1] == 2 * size
    assert roofline.conv_transpose_taps(size, kernel) ** 2 == float(jnp.sum(y))


def test_network_macs_follow_the_layer_tables(roofline):
    # Oracle: the layer tables in the UNetGenerator and PatchDiscriminator docstrings
    # (default configuration), with each layer's taps counted by the all-ones convolution.
    g = [_ones_conv_taps(s, 4, 2, "SAME") * a * b
         for s, a, b in [(64, 1, 16), (32, 16, 32), (16, 32, 64), (8, 64, 128), (4, 128, 128), (2, 128, 128)]]
    for s, a, b in [(1, 128, 128), (2, 256, 128), (4, 256, 64), (8, 128, 32), (16, 64, 16), (32, 32, 1)]:
        y = jax.lax.conv_transpose(jnp.ones((1, s, s, 1)), jnp.ones((4, 4, 1, 1)), (2, 2), "SAME",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
        g.append(float(jnp.sum(y)) * a * b)
    d = [_ones_conv_taps(s, 4, st, p) * a * b for s, st, p, a, b in
         [(64, 2, "SAME", 2, 16), (32, 2, "SAME", 16, 32), (16, 2, "SAME", 32, 64), (8, 1, (1, 1), 64, 128),
          (7, 1, (1, 1), 128, 1)]]
    config = Pix2PixConfig()
    assert roofline.generator_macs(config.generator) == g
    assert roofline.discriminator_macs(config.discriminator, 64) == d


def test_step_flops_match_xla_cost_of_the_step(roofline):
    # XLA's cost analysis of the compiled training step counts, for each convolution, the
    # kernel taps that land on real input pixels (not on padding, nor on the holes of a
    # transposed convolution's dilated input), plus the elementwise work (norms,
    # activations, losses; Adam, which does not grow with the batch). So its growth from
    # batch 1 to batch 4 is the useful count's growth plus a few per cent of elementwise
    # work. The smallest gradient pass is 7.5 % of the step: one missing or doubled would
    # move the ratio out of the window.
    def xla_flops(config):
        state = train.init_state(config, jax.random.key(0))
        x = jnp.zeros((config.batch_size, 64, 64, 1), jnp.float32)
        compiled = train.make_train_step(config).lower(state, (x, x), jax.random.key(1)).compile()
        cost = compiled.cost_analysis()
        return (cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"]

    one, four = Pix2PixConfig(), Pix2PixConfig(batch_size=4)
    ratio = (xla_flops(four) - xla_flops(one)) / (roofline.step_flops(four) - roofline.step_flops(one))
    assert 1.0 < ratio < 1.05
    assert roofline.step_flops(one) < roofline.step_flops(one, all_taps=True)
    assert roofline.step_flops(one.replace(batch_size=32)) == pytest.approx(32 * roofline.step_flops(one))


def test_fma_kernel_computes_its_chains(roofline, tmp_path):
    # The peak loop must do the arithmetic it is timed for: 12 chains a <- a b + c from
    # a = 0..11; lane 0 of their sum after n steps has the closed form
    # sum_k (k b^n + c (1 - b^n) / (1 - b)).
    try:
        fn = roofline._compile_fma(str(tmp_path))
    except RuntimeError as e:
        if "no C compiler" not in str(e):
            raise
        pytest.skip(str(e))
    n, b, c = 1000, 0.999999, 1e-7
    expected = sum(k * b**n + c * (1 - b**n) / (1 - b) for k in range(12))
    assert fn(n) == pytest.approx(expected, rel=1e-4)
    assert fn(0) == pytest.approx(66.0)


@pytest.mark.parametrize("name", ["default", "patch16_no_norm"])
def test_step_flops_count_the_passes_pytorch_runs(roofline, tp, name):
    # Oracle: PyTorch's FlopCounterMode on the peer's training step (autograd runs exactly the
    # gradients each loss needs; every tap of a convolution counted, as `all_taps`). Autograd
    # computes the whole input gradient of the discriminator's first layer and drops the
    # conditioning channels, which the useful count leaves out: added here.
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    config = CONFIGS[name]
    state = train.init_state(config, jax.random.key(0))
    gen, disc = tp.build(config)
    tp.load_jax_params(gen, disc, state.g_params, state.d_params)
    trainer = tp.Pix2PixTrainer(config, gen, disc)
    x, y = _data(config.batch_size)
    with FlopCounterMode(display=False) as counter:
        trainer.step(_nchw(x), _nchw(y))
    d_first = roofline.discriminator_macs(config.discriminator, 64, all_taps=True)[0]
    extra = 2 * config.batch_size * d_first * config.generator.in_channels / config.discriminator.in_channels
    assert counter.get_total_flops() == pytest.approx(roofline.step_flops(config, all_taps=True) + extra, rel=1e-12)
    assert roofline.step_flops(config) < roofline.step_flops(config, all_taps=True)
