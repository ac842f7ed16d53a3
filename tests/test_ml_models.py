"""Tests of qdjax.ml.models: shapes, dtypes, normalisation placement, receptive fields, the
convolution layers against lax and NumPy references, the parameter layout checkpoints store,
forward-mode differentiation."""

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


# ----------------------------------------------------------------------------- layers

_DN = ("NHWC", "HWIO", "NHWC")


def _np_conv(x, w, b, stride, pads):
    """Oracle: direct NumPy cross-correlation, y[o] = sum_t xpad[stride o + t] w[t] (+ b)."""
    (plo, phi), (qlo, qhi) = pads
    xp = np.pad(np.asarray(x, np.float64), ((0, 0), (plo, phi), (qlo, qhi), (0, 0)))
    kh, kw = w.shape[:2]
    ho, wo = (xp.shape[1] - kh) // stride + 1, (xp.shape[2] - kw) // stride + 1
    y = np.zeros((x.shape[0], ho, wo, w.shape[3]))
    for t in range(kh):
        for u in range(kw):
            patch = xp[:, t : t + stride * (ho - 1) + 1 : stride, u : u + stride * (wo - 1) + 1 : stride]
            y += patch @ np.asarray(w[t, u], np.float64)
    return y + (0 if b is None else np.asarray(b, np.float64))


def _np_conv_transpose2x(x, w, b):
    """Oracle: direct NumPy scatter of a stride-2 'SAME' transposed convolution without kernel
    flip: input pixel m and tap t add x[m] w[t] to output 2 m + p - t (kept if inside the 2 H
    outputs), p = k - 1 for k <= 2 and ceil(k / 2) otherwise. For k = 4 this is PyTorch's
    ConvTranspose2d(stride=2, padding=1) with the kernel flipped (benchmarks/torch_pix2pix.py),
    and the layout of every qdjax checkpoint's transposed-convolution kernels."""
    bsz, h, wd, _ = x.shape
    k = w.shape[0]
    p = k - 1 if k <= 2 else -(-k // 2)
    y = np.zeros((bsz, 2 * h, 2 * wd, w.shape[3]))
    x64 = np.asarray(x, np.float64)
    for m in range(h):
        for n in range(wd):
            for t in range(k):
                for u in range(k):
                    i, j = 2 * m + p - t, 2 * n + p - u
                    if 0 <= i < 2 * h and 0 <= j < 2 * wd:
                        y[:, i, j] += x64[:, m, n] @ np.asarray(w[t, u], np.float64)
    return y + (0 if b is None else np.asarray(b, np.float64))


def _random_layer_params(layer, seed):
    """Nonzero kernel and bias, so that a dropped or misplaced bias shows."""
    rng = np.random.default_rng(seed)
    layer.kernel[...] = jnp.asarray(rng.normal(0, 0.3, layer.kernel.shape).astype(np.float32))
    if layer.bias is not None:
        layer.bias[...] = jnp.asarray(rng.normal(0, 0.3, layer.bias.shape).astype(np.float32))


@pytest.mark.parametrize("kernel", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("hw", [(1, 1), (2, 3), (5, 4)])
def test_conv_layers_match_numpy(kernel, hw):
    """The two layer factories the networks use: stride-2 'SAME' convolution (SAME pads as
    XLA: total (out - 1) 2 + k - size, the smaller half in front), explicit-padding stride-1
    convolution, stride-2 'SAME' transposed convolution."""
    x = _images((2, *hw, 3), seed=kernel)
    kern = jnp.asarray(np.random.default_rng(0).normal(0, 0.3, (kernel, kernel, 3, 2)).astype(np.float32))
    for bias in (True, False):
        conv = models._conv_layer(3, 2, kern, stride=2, padding="SAME", use_bias=bias, rngs=nnx.Rngs(0))
        tconv = models._conv_transpose_layer(3, 2, kern, use_bias=bias, rngs=nnx.Rngs(0))
        pad = ((kernel - 1) // 2, (kernel - 1) // 2)
        same = [jax.lax.padtype_to_pads(hw[i:i + 1], (kernel,), (2,), "SAME")[0] for i in range(2)]
        if bias:
            _random_layer_params(conv, 1)
            tconv.bias[...] = conv.bias[...]
        else:
            assert conv.bias is None and tconv.bias is None
        b = None if conv.bias is None else conv.bias[...]
        np.testing.assert_allclose(np.asarray(conv(x)), _np_conv(x, conv.kernel[...], b, 2, same), atol=2e-6)
        np.testing.assert_allclose(np.asarray(tconv(x)), _np_conv_transpose2x(x, kern, b), atol=2e-6)
        if min(hw) + 2 * pad[0] >= kernel:
            valid = models._conv_layer(3, 2, kern, stride=1, padding=(pad, pad), use_bias=bias, rngs=nnx.Rngs(0))
            if bias:
                valid.bias[...] = conv.bias[...]
            np.testing.assert_allclose(np.asarray(valid(x)), _np_conv(x, kern, b, 1, (pad, pad)), atol=2e-6)
        assert tconv(x).shape == (2, 2 * hw[0], 2 * hw[1], 2) and tconv(x).dtype == jnp.float32


def _layer_inputs(module, x):
    """(layer, its input) for every convolution of a network, recorded in a forward pass."""
    seen = []
    for layer in [m for _, m in nnx.iter_graph(module) if isinstance(m, (nnx.Conv, nnx.ConvTranspose))]:
        call = type(layer).__call__

        def spy(self, inputs, _call=call):
            seen.append((self, inputs))
            return _call(self, inputs)

        layer.__class__ = type("Spy" + type(layer).__name__, (type(layer),), {"__call__": spy})
    try:
        module(x)
    finally:
        for layer, _ in seen:
            layer.__class__ = layer.__class__.__mro__[1]
    return seen


@pytest.mark.parametrize("net", ["generator", "discriminator"])
def test_network_layers_match_lax(net):
    """Every convolution of the networks equals the lax operation of the layer tables, with
    the network's own kernel (k, k, C_in, C_out) and bias: stride-2 'SAME' conv_general_dilated
    in the encoder and the discriminator's first layers, stride-1 with (1, 1) zero padding in
    its last two, and stride-2 'SAME' conv_transpose (no kernel flip) in the decoder."""
    if net == "generator":
        module = UNetGenerator(GeneratorConfig(filters=SMALL_G, norm="none"), rngs=nnx.Rngs(0))
        x = _images((2, 64, 64, 1))
        expected = ["conv 2 SAME"] * 6 + ["tconv"] * 6
    else:
        module = PatchDiscriminator(DiscriminatorConfig(filters=SMALL_D + (1,)), rngs=nnx.Rngs(0))
        x = _images((2, 64, 64, 2))
        expected = ["conv 2 SAME"] * 3 + ["conv 1 ((1, 1), (1, 1))"] * 2
    for i, (_, layer) in enumerate(nnx.iter_graph(module)):
        if isinstance(layer, (nnx.Conv, nnx.ConvTranspose)):
            _random_layer_params(layer, i)
    calls = _layer_inputs(module, x)
    kinds = []
    for layer, inputs in calls:
        w, b = layer.kernel[...], (0.0 if layer.bias is None else layer.bias[...])
        assert w.dtype == jnp.float32 and inputs.dtype == jnp.float32
        if isinstance(layer, nnx.ConvTranspose):
            kinds.append("tconv")
            ref = jax.lax.conv_transpose(inputs, w, (2, 2), "SAME", dimension_numbers=_DN) + b
        else:
            s = layer.strides
            pad = layer.padding if layer.padding == "SAME" else tuple(tuple(p) for p in layer.padding)
            kinds.append(f"conv {s} {pad}")
            ref = jax.lax.conv_general_dilated(inputs, w, (s, s), pad, dimension_numbers=_DN) + b
        np.testing.assert_allclose(np.asarray(layer(inputs)), np.asarray(ref), rtol=0, atol=1e-6)
    assert kinds == expected


def test_parameter_layout_of_checkpoints():
    """The parameter tree (paths, shapes, float32) that checkpoints (format qdjax.ml.pix2pix/1)
    store, written out for the default configuration from the layer tables: checkpoints
    written by earlier versions of these networks (the same tree) keep loading."""
    g = UNetGenerator(GeneratorConfig(), rngs=nnx.Rngs(0))
    d = PatchDiscriminator(DiscriminatorConfig(), rngs=nnx.Rngs(0))

    def layout(module):
        params = nnx.to_pure_dict(nnx.state(module, nnx.Param))
        leaves = jax.tree_util.tree_leaves_with_path(params)
        assert all(v.dtype == jnp.float32 for _, v in leaves)
        return {"/".join(str(getattr(k, "key", k)) for k in path): tuple(v.shape) for path, v in leaves}

    gen = {}
    for i, (a, b) in enumerate([(1, 16), (16, 32), (32, 64), (64, 128), (128, 128), (128, 128)]):
        gen[f"down_convs/{i}/kernel"] = (4, 4, a, b)
        if i in (0, 5):  # first layer and 1 x 1 bottleneck: no norm, so a bias
            gen[f"down_convs/{i}/bias"] = (b,)
        else:
            gen[f"down_norms/{i}/scale"] = gen[f"down_norms/{i}/bias"] = (b,)
    for i, (a, b) in enumerate([(128, 128), (256, 128), (256, 64), (128, 32), (64, 16)]):
        gen[f"up_convs/{i}/kernel"] = (4, 4, a, b)
        gen[f"up_norms/{i}/scale"] = gen[f"up_norms/{i}/bias"] = (b,)
    gen["out_conv/kernel"], gen["out_conv/bias"] = (4, 4, 32, 1), (1,)
    disc = {}
    for i, (a, b) in enumerate([(2, 16), (16, 32), (32, 64), (64, 128), (128, 1)]):
        disc[f"convs/{i}/kernel"] = (4, 4, a, b)
        if i in (0, 4):
            disc[f"convs/{i}/bias"] = (b,)
        else:
            disc[f"norms/{i}/scale"] = disc[f"norms/{i}/bias"] = (b,)
    assert layout(g) == gen
    assert layout(d) == disc


# ----------------------------------------------------------------------------- differentiation


def test_generator_forward_mode():
    """jax.jvp through the generator (input and parameter tangents) is the transpose of
    jax.vjp: <J v, J v> computed both ways, <J v, J v> = <J^T (J v), v>."""
    g = UNetGenerator(GeneratorConfig(filters=SMALL_G, norm="batch"), rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(g, nnx.Param, ...)
    x, v = _images((2, 64, 64, 1)), _images((2, 64, 64, 1), seed=1)
    p_tangent = jax.tree.map(lambda a: jax.random.normal(jax.random.key(2), a.shape, a.dtype) * 0.02, params)

    def f(x, params):
        return nnx.merge(graphdef, params, rest)(x)

    y, jv = jax.jvp(f, (x, params), (v, p_tangent))
    assert y.shape == jv.shape == (2, 64, 64, 1) and jv.dtype == jnp.float32
    _, vjp = jax.vjp(f, x, params)
    jt_x, jt_p = vjp(jv)
    lhs = float(jnp.vdot(jv, jv))
    rhs = float(jnp.vdot(jt_x, v)) + sum(
        float(jnp.vdot(a, b)) for a, b in zip(jax.tree.leaves(jt_p), jax.tree.leaves(p_tangent))
    )
    assert lhs > 1e-3
    assert rhs == pytest.approx(lhs, rel=1e-4)
    # and against a central difference in the input (float32; the ReLU kinks that the step
    # crosses make the error first order in it: about 5e-4 of |J v| here at step 1e-3)
    eps = 1e-3
    fd = (f(x + eps * v, params) - f(x - eps * v, params)) / (2 * eps)
    jv_x = jax.jvp(lambda x: f(x, params), (x,), (v,))[1]
    assert float(jnp.linalg.norm(fd - jv_x)) < 1e-2 * float(jnp.linalg.norm(jv_x))


def test_discriminator_forward_over_reverse():
    """A Hessian-vector product of a discriminator score by forward over reverse mode (as
    gradient penalties need) equals the one by reverse over reverse, and the Hessian is
    symmetric: <u, H v> = <v, H u>."""
    d = PatchDiscriminator(DiscriminatorConfig.preset("patch16", widths=SMALL_D), rngs=nnx.Rngs(0))
    x, u, v = (_images((1, 16, 16, 2), seed=s) for s in range(3))
    grad = jax.grad(lambda x: jnp.sum(jnp.sin(d(x))))
    hv = jax.jvp(grad, (x,), (v,))[1]
    hu = jax.jvp(grad, (x,), (u,))[1]
    hv_rev = jax.grad(lambda x: jnp.vdot(grad(x), v))(x)
    scale = float(jnp.max(jnp.abs(hv)))
    assert scale > 1e-3
    np.testing.assert_allclose(np.asarray(hv), np.asarray(hv_rev), rtol=0, atol=1e-5 * scale)
    assert float(jnp.vdot(u, hv)) == pytest.approx(float(jnp.vdot(v, hu)), rel=1e-4)


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
