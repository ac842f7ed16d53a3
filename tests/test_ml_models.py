"""Tests of qdjax.ml.models: shapes, dtypes, normalisation placement, receptive fields."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import qdjax  # noqa: F401  (turns on float64 mode: the networks must stay float32 anyway)
from qdjax.ml import models
from qdjax.ml.models import (
    AUTHORS_GENERATOR_FILTERS,
    DISCRIMINATOR_PRESETS,
    ConvTranspose2x,
    DiscriminatorConfig,
    GeneratorConfig,
    PatchDiscriminator,
    Pix2PixConfig,
    UNetGenerator,
    discriminator_output_size,
    receptive_field,
)

SMALL_G = (4, 8, 8, 8, 8, 8)
SMALL_D = (4, 8, 8, 8)

# Patch sizes N_pt of Pantis-Simut et al. (2023), section III.2, and the logit-map sides for
# 64 x 64 inputs worked out by hand from the padding rules (SAME stride 2: n / 2; zero pad
# (k-1)//2 then valid stride 1: n + 2 ((k-1)//2) - k + 1).
PRESET_TABLE = {
    "image70": (70, 6),  # 64 -> 32 -> 16 -> 8 -> 7 -> 6 (paper: 6 x 6 output)
    "patch34": (34, 14),  # 64 -> 32 -> 16 -> 15 -> 14
    "patch16": (16, 30),  # 64 -> 32 -> 31 -> 30
    "patch7": (7, 62),  # 64 -> 63 -> 62
    "patch4": (4, 63),  # 64 -> 63 -> 63
    "pixel1": (1, 64),
}


def _images(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32))


def _all_float32(module):
    return {leaf.dtype for leaf in jax.tree.leaves(nnx.state(module))} == {jnp.dtype(jnp.float32)}


# ----------------------------------------------------------------------------- generator


@pytest.mark.parametrize("norm", ["instance", "batch", "none"])
def test_generator_shapes_and_dtypes(norm):
    g = UNetGenerator(GeneratorConfig(filters=SMALL_G, norm=norm), rngs=nnx.Rngs(0))
    x = _images((3, 64, 64, 1))
    y = g(x)
    assert y.shape == (3, 64, 64, 1) and y.dtype == jnp.float32
    assert float(jnp.max(jnp.abs(y))) < 1.0  # tanh output
    feats = g.encode(x)
    assert [f.shape[1:] for f in feats] == [(32, 32, 4), (16, 16, 8), (8, 8, 8), (4, 4, 8), (2, 2, 8), (1, 1, 8)]
    assert all(f.shape[0] == 3 for f in feats)
    assert all(f.dtype == jnp.float32 for f in feats)
    assert _all_float32(g)
    # float64 input (x64 mode is on) is cast, not propagated
    assert g(x.astype(jnp.float64)).dtype == jnp.float32


def test_generator_default_layer_shapes():
    """The layer table in UNetGenerator's docstring (authors' widths)."""
    g = UNetGenerator(GeneratorConfig(), rngs=nnx.Rngs(0))
    assert g.config.filters == AUTHORS_GENERATOR_FILTERS
    assert g.config.up_filters == (128, 128, 64, 32, 16, 1)
    x = jax.ShapeDtypeStruct((1, 64, 64, 1), jnp.float32)
    feats = jax.eval_shape(g.encode, x)
    assert [f.shape[1:] for f in feats] == [
        (32, 32, 16), (16, 16, 32), (8, 8, 64), (4, 4, 128), (2, 2, 128), (1, 1, 128)
    ]
    # decoder inputs: previous output ++ mirrored skip
    assert [c.kernel.shape[2:] for c in g.up_convs] == [(128, 128), (256, 128), (256, 64), (128, 32), (64, 16)]
    assert g.out_conv.kernel.shape == (4, 4, 32, 1)
    out = jax.eval_shape(g, x)
    assert out.shape == (1, 64, 64, 1) and out.dtype == jnp.float32


@pytest.mark.parametrize("norm", ["instance", "batch"])
def test_no_normalisation_of_first_layer_and_1x1_maps(norm):
    g = UNetGenerator(GeneratorConfig(filters=SMALL_G, norm=norm), rngs=nnx.Rngs(0))
    assert g.down_norms[0] is None  # pix2pix: no norm on the first encoder layer
    assert g.down_norms[-1] is None  # the 1 x 1 bottleneck
    assert all(n is not None for n in g.down_norms[1:-1]) and all(n is not None for n in g.up_norms)
    # Instance norm (or batch norm with batch statistics at batch size 1) of a 1 x 1 map
    # returns its bias: the bottleneck would be the same for every input.
    b1 = g.encode(_images((1, 64, 64, 1), seed=1), train=True)[-1]
    b2 = g.encode(_images((1, 64, 64, 1), seed=2), train=True)[-1]
    assert b1.shape == (1, 1, 1, 8)
    assert float(jnp.max(jnp.abs(b1))) > 1e-4
    assert float(jnp.max(jnp.abs(b1 - b2))) > 1e-4
    # and a normalisation layer really would have collapsed it (the test can fail)
    inorm = nnx.InstanceNorm(8, rngs=nnx.Rngs(0))
    assert float(jnp.max(jnp.abs(inorm(b1) - inorm(b2)))) == 0.0


def test_generator_deterministic_without_dropout():
    g = UNetGenerator(GeneratorConfig(filters=SMALL_G), rngs=nnx.Rngs(0))
    x = _images((2, 64, 64, 1))
    np.testing.assert_array_equal(np.asarray(g(x)), np.asarray(g(x)))
    np.testing.assert_array_equal(np.asarray(g(x, train=True)), np.asarray(g(x)))  # instance norm: no mode
    gd = UNetGenerator(GeneratorConfig(filters=SMALL_G, dropout=0.5), rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(np.asarray(gd(x)), np.asarray(g(x)))  # same init, no key: no dropout
    y1 = gd(x, train=True, dropout_key=jax.random.key(1))
    y2 = gd(x, train=True, dropout_key=jax.random.key(2))
    assert float(jnp.max(jnp.abs(y1 - y2))) > 1e-4
    np.testing.assert_array_equal(np.asarray(y1), np.asarray(gd(x, train=True, dropout_key=jax.random.key(1))))


def test_generator_same_seed_same_weights():
    a = UNetGenerator(GeneratorConfig(filters=SMALL_G), rngs=nnx.Rngs(3))
    b = UNetGenerator(GeneratorConfig(filters=SMALL_G), rngs=nnx.Rngs(3))
    for u, v in zip(jax.tree.leaves(nnx.state(a)), jax.tree.leaves(nnx.state(b))):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
    k = np.asarray(a.down_convs[1].kernel[...])
    assert abs(k.std() - 0.02) < 0.004 and abs(k.mean()) < 0.004  # N(0, 0.02), Table I


# Every kernel on an odd-sized map, kernel 4 (the U-Net's) on all three; the other
# combinations are marked slow; 32 x 64 maps (4096 pixels in the batch) are as large as
# the U-Net's outer layers.
_TCONV_CASES = [
    pytest.param(k, hw, marks=() if hw == (5, 4) or k == 4 else pytest.mark.slow)
    for hw in [(1, 1), (2, 3), (5, 4)]
    for k in [2, 3, 4, 5]
] + [(4, (32, 64))]


@pytest.mark.parametrize("kernel, hw", _TCONV_CASES)
def test_conv_transpose_matches_flax(kernel, hw):
    """The sub-pixel transposed convolution equals nnx.ConvTranspose (lax.conv_transpose)."""
    ours = ConvTranspose2x(3, 2, kernel, use_bias=True, rngs=nnx.Rngs(0))
    ours.bias[...] = jnp.asarray([0.3, -0.1], jnp.float32)
    ref = nnx.ConvTranspose(3, 2, (kernel, kernel), strides=2, padding="SAME", rngs=nnx.Rngs(1))
    ref.kernel[...] = ours.kernel[...]
    ref.bias[...] = ours.bias[...]
    x = _images((2, *hw, 3))
    a, b = ours(x), ref(x)
    assert a.shape == b.shape == (2, 2 * hw[0], 2 * hw[1], 2)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6)
    # the hand-written backward pass equals autodiff of lax.conv_transpose, in float64 (the
    # functions keep the dtype) so that rounding does not grow with the map
    x64, kern = x.astype(jnp.float64), ours.kernel[...].astype(jnp.float64)
    lax_tconv = lambda x, k: jax.lax.conv_transpose(x, k, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    loss = lambda f: lambda x, k: jnp.sum(jnp.sin(3.0 * f(x, k)))
    ga = jax.grad(loss(models._conv_transpose2x), argnums=(0, 1))(x64, kern)
    gb = jax.grad(loss(lax_tconv), argnums=(0, 1))(x64, kern)
    for u, v in zip(ga, gb):
        assert u.shape == v.shape and u.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=0, atol=1e-11)


def test_conv_transpose_second_derivative():
    """The custom VJP is itself differentiable: a gradient of a gradient norm (as in a
    gradient penalty) equals the one through lax.conv_transpose."""
    x = _images((2, 3, 2, 3))
    kern = jax.random.normal(jax.random.key(4), (4, 4, 3, 2), jnp.float32) * 0.3
    lax_tconv = lambda x, k: jax.lax.conv_transpose(x, k, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def penalty(f):
        def inner(x, k):
            gx = jax.grad(lambda x: jnp.sum(jnp.tanh(f(x, k))))(x)
            return jnp.sum(gx**2)
        return jax.grad(inner, argnums=1)

    np.testing.assert_allclose(
        np.asarray(penalty(models._conv_transpose2x)(x, kern)), np.asarray(penalty(lax_tconv)(x, kern)),
        rtol=1e-4, atol=1e-5,
    )


# ----------------------------------------------------------------------------- discriminator


@pytest.mark.parametrize("name", sorted(PRESET_TABLE))
def test_discriminator_presets(name):
    r, side = PRESET_TABLE[name]
    cfg = DiscriminatorConfig.preset(name, widths=SMALL_D)
    assert receptive_field(cfg) == receptive_field(name) == r
    assert discriminator_output_size(cfg, 64) == side
    d = PatchDiscriminator(cfg, rngs=nnx.Rngs(0))
    out = d(_images((2, 64, 64, 2)))
    assert out.shape == (2, side, side, 1) and out.dtype == jnp.float32
    assert _all_float32(d)


def test_reference_discriminator_matches_table_I():
    """Table I: 5 layers, strides (2, 2, 2, 1, 1), kernel 4, 6 x 6 output, 70 x 70 patches."""
    cfg = DiscriminatorConfig()
    assert cfg.kernels == (4,) * 5 and cfg.strides == (2, 2, 2, 1, 1) and cfg.filters == (16, 32, 64, 128, 1)
    assert receptive_field(cfg) == 70 and discriminator_output_size(cfg) == 6
    assert set(DISCRIMINATOR_PRESETS) == set(PRESET_TABLE)


def test_receptive_field_recursion():
    # r = 1 + sum_l (k_l - 1) prod_{m<l} s_m
    cfg = DiscriminatorConfig(filters=(4, 4, 1), kernels=(3, 5, 2), strides=(2, 3, 1))
    assert receptive_field(cfg) == 1 + 2 * 1 + 4 * 2 + 1 * 6
    with pytest.raises(ValueError):
        receptive_field("patch99")


def _support(grad):
    """Rows and columns of the input where the gradient is nonzero (summed over batch, channels)."""
    mask = np.asarray(jnp.sum(jnp.abs(grad), axis=(0, 3))) > 0
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    return mask, rows, cols


def _logit_grad(d, x, i, j):
    return jax.grad(lambda x: d(x)[0, i, j, 0])(x)


@pytest.mark.parametrize("name", sorted(PRESET_TABLE))
def test_receptive_field_by_gradient(name):
    """Input pixels that influence one logit, from jax.grad on the network itself.

    Without normalisation layers (instance norm couples all pixels of a feature map), on
    an input large enough that the patch is not clipped: a dense r x r square.
    """
    r, _ = PRESET_TABLE[name]
    d = PatchDiscriminator(DiscriminatorConfig.preset(name, widths=SMALL_D, norm="none"), rngs=nnx.Rngs(0))
    x = _images((1, 128, 128, 2), seed=3)
    side = d(x).shape[1]
    i = side // 2
    mask, rows, cols = _support(_logit_grad(d, x, i, i))
    assert 0 < rows[0] and rows[-1] < 127 and 0 < cols[0] and cols[-1] < 127  # not clipped
    assert len(rows) == len(cols) == r
    assert rows[-1] - rows[0] + 1 == r and cols[-1] - cols[0] + 1 == r
    assert mask.sum() == r * r  # dense square


@pytest.mark.parametrize("name", sorted(PRESET_TABLE))
def test_receptive_field_clipped_at_64(name):
    """On 64 x 64 inputs, logit (o, o) sees input rows [o J - p, o J - p + r - 1] clipped to
    [0, 63], with J the product of the strides and p = sum_l pad_lo_l * prod_{m<l} s_m
    (pad_lo = 1 for kernel 4 in both padding modes, 0 for kernel 1)."""
    r, side = PRESET_TABLE[name]
    cfg = DiscriminatorConfig.preset(name, widths=SMALL_D, norm="none")
    d = PatchDiscriminator(cfg, rngs=nnx.Rngs(1))
    jump, p = 1, 0
    for k, s in zip(cfg.kernels, cfg.strides):
        p += (1 if k == 4 else 0) * jump
        jump *= s
    x = _images((1, 64, 64, 2), seed=4)
    for o in sorted({0, side // 2, side - 1}):
        _, rows, cols = _support(_logit_grad(d, x, o, o))
        lo, hi = max(o * jump - p, 0), min(o * jump - p + r - 1, 63)
        assert (rows[0], rows[-1], len(rows)) == (lo, hi, hi - lo + 1), (o, rows)
        assert (cols[0], cols[-1], len(cols)) == (lo, hi, hi - lo + 1), (o, cols)


def test_receptive_field_with_batchnorm_inference():
    """Batch norm with running statistics is per-channel affine: same 70 x 70 patch."""
    d = PatchDiscriminator(DiscriminatorConfig.preset("image70", widths=SMALL_D, norm="batch"), rngs=nnx.Rngs(0))
    x = _images((1, 128, 128, 2), seed=5)
    _, rows, cols = _support(jax.grad(lambda x: d(x, train=False)[0, 7, 7, 0])(x))
    assert len(rows) == len(cols) == 70
    # with batch statistics the logit depends on every pixel
    graphdef, state = nnx.split(d)
    state = nnx.to_pure_dict(state)  # fresh variables inside the trace
    _, rows, cols = _support(jax.grad(lambda x: nnx.merge(graphdef, state)(x, train=True)[0, 7, 7, 0])(x))
    assert len(rows) == len(cols) == 128


# ----------------------------------------------------------------------------- configs


def test_config_roundtrip_and_hash():
    cfg = Pix2PixConfig(
        generator=GeneratorConfig(filters=SMALL_G, norm="batch", dropout=0.5),
        discriminator=DiscriminatorConfig.preset("patch16", widths=SMALL_D),
        random_d4=True,
        jitter_resize=72,
    )
    d = json.loads(json.dumps(cfg.to_dict()))
    back = Pix2PixConfig.from_dict(d)
    assert back == cfg and hash(back) == hash(cfg)
    assert Pix2PixConfig().lambda_l1 == 100 and Pix2PixConfig().learning_rate == 1e-4
    assert (Pix2PixConfig().beta1, Pix2PixConfig().beta2, Pix2PixConfig().batch_size) == (0.5, 0.999, 1)
    assert Pix2PixConfig().jitter_resize == 64 and not Pix2PixConfig().random_flip


@pytest.mark.parametrize(
    "make",
    [
        lambda: GeneratorConfig(image_size=48),  # not divisible by 2**6
        lambda: GeneratorConfig(norm="layer"),
        lambda: GeneratorConfig(dropout=1.0),
        lambda: GeneratorConfig(filters=(16, 0)),
        lambda: DiscriminatorConfig(filters=(4, 1), kernels=(4,), strides=(2, 1)),
        lambda: DiscriminatorConfig.preset("patch70"),
        lambda: Pix2PixConfig(discriminator=DiscriminatorConfig(in_channels=3)),
        lambda: Pix2PixConfig(jitter_resize=60),
        lambda: Pix2PixConfig(learning_rate=-1.0),
    ],
)
def test_invalid_configs_raise(make):
    with pytest.raises(ValueError):
        make()


def test_wrong_input_shape_raises():
    g = UNetGenerator(GeneratorConfig(filters=SMALL_G), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="64 x 64"):
        g(_images((1, 32, 32, 1)))
    d = PatchDiscriminator(DiscriminatorConfig.preset("patch7", widths=SMALL_D), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="channel"):
        d(_images((1, 64, 64, 1)))


def test_density_head_is_positive_and_normalised():
    # y = c softmax(z) - 1: (y + 1) is positive and sums to c over the pixels of each image.
    import jax
    import numpy as np
    from flax import nnx
    from qdjax.ml.models import GeneratorConfig, UNetGenerator
    cfg = GeneratorConfig(image_size=16, filters=(4, 4, 4, 4), density_norm=37.5)
    gen = UNetGenerator(cfg, rngs=nnx.Rngs(0))
    y = np.asarray(gen(jax.random.uniform(jax.random.key(1), (3, 16, 16, 1), minval=-1, maxval=1)))
    assert np.all(y + 1 > 0)
    np.testing.assert_allclose((y + 1).sum(axis=(1, 2, 3)), 37.5, rtol=1e-5)
    with pytest.raises(ValueError, match="density_norm"):
        GeneratorConfig(density_norm=-1.0)
