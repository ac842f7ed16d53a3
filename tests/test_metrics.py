"""Tests of qdjax.metrics against independent references.

References: scikit-image's structural_similarity (a peer implementation of Wang et al. 2004),
plain NumPy loops written here from the definitions, and small cases computed by hand.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from skimage.metrics import structural_similarity

import qdjax  # noqa: F401  (enables float64)
from qdjax import metrics

# ----------------------------------------------------------------------------------------
# Test images
# ----------------------------------------------------------------------------------------


def _blobs(rng, n, shape):
    """Density-like images: sums of Gaussian blobs on a small background."""
    x, y = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    out = np.zeros((n,) + shape)
    for k in range(n):
        for _ in range(3):
            cx, cy = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
            width = rng.uniform(2.0, 8.0)
            out[k] += rng.uniform(0.5, 2.0) * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * width**2))
    return out + 0.01


def _pair(kind, n=3, shape=(64, 64), seed=0):
    """(pred, ref, data_range) for a named kind of test image."""
    rng = np.random.default_rng(seed)
    if kind == "random":
        ref = rng.uniform(0.0, 1.0, (n,) + shape)
        pred = np.clip(ref + 0.2 * rng.standard_normal(ref.shape), 0.0, 1.0)
        return pred, ref, 1.0
    if kind == "structured":
        ref = _blobs(rng, n, shape)
        pred = 1.1 * np.roll(ref, 1, axis=-1) + 0.02 * rng.standard_normal(ref.shape)
        return pred, ref, float(ref.max() - ref.min())
    if kind == "offset":  # a large offset in nm^-2-like units and a negative range
        ref = 5.0 + 0.3 * _blobs(rng, n, shape) - 0.1
        pred = ref + 0.05 * np.sin(np.arange(shape[1]) / 3.0) + 0.01 * rng.standard_normal(ref.shape)
        return pred, ref, 0.7
    raise ValueError(kind)


KINDS = ["random", "structured", "offset"]


def _skimage_ssim(pred, ref, data_range):
    # Peer implementation: scikit-image with Wang et al.'s Gaussian-window parameters.
    return structural_similarity(
        pred, ref, data_range=data_range, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )


def _loop_mssim(pred, ref, data_range, window):
    """Uniform-window mean SSIM, straight from Wang et al. (2004) eqs. (4), (5), (11), (13)."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    height, width = ref.shape
    values = []
    for i in range(height - window + 1):
        for j in range(width - window + 1):
            x = pred[i : i + window, j : j + window]
            y = ref[i : i + window, j : j + window]
            mx, my = x.mean(), y.mean()
            vx, vy = x.var(ddof=1), y.var(ddof=1)
            cxy = np.sum((x - mx) * (y - my)) / (window * window - 1)
            values.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return np.mean(values)


def _design_paper_ssim(pred, ref, divisor=None):
    """DESIGN.md: one global SSIM over the image, K1 = K2 = 0.01, L = 64, sample variances."""
    c1 = c2 = (0.01 * 64) ** 2
    n = pred.size if divisor is None else divisor + 1
    mx, my = pred.mean(), ref.mean()
    vx = np.sum((pred - mx) ** 2) / (n - 1)
    vy = np.sum((ref - my) ** 2) / (n - 1)
    cxy = np.sum((pred - mx) * (ref - my)) / (n - 1)
    return (2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))


def _authors_paper_mssim(pred, ref):
    """The loop of the authors' public script (pix2pix_mapping_V-n, mSsimLoss): window 8,
    origins range(0, H - 8, 4), each window scored by their ssimLoss, which divides the
    second moments by IMG_WIDTH * IMG_HEIGHT - 1 of the whole image."""
    height, width = ref.shape
    values = [
        _design_paper_ssim(pred[i : i + 8, j : j + 8], ref[i : i + 8, j : j + 8], divisor=height * width - 1)
        for i in range(0, height - 8, 4)
        for j in range(0, width - 8, 4)
    ]
    return np.mean(values)


# ----------------------------------------------------------------------------------------
# SSIM and MSSIM
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_ssim_matches_skimage(kind):
    pred, ref, data_range = _pair(kind)
    got = np.asarray(metrics.ssim(pred, ref, data_range))
    expected = [_skimage_ssim(p, r, data_range) for p, r in zip(pred, ref)]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10)
    assert np.all(got < 0.999)  # the pairs differ, so the comparison is not trivially 1 == 1


def test_ssim_non_square_and_per_image_range_match_skimage():
    pred, ref, _ = _pair("structured", n=2, shape=(20, 37), seed=3)
    ranges = np.array([0.5, 3.0])
    got = np.asarray(metrics.ssim(pred, ref, ranges))
    expected = [_skimage_ssim(p, r, d) for p, r, d in zip(pred, ref, ranges)]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10)
    assert abs(got[0] - got[1]) > 1e-3


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("window", [8, 5])
def test_mssim_matches_numpy_loop(kind, window):
    pred, ref, data_range = _pair(kind, n=2, shape=(24, 30))
    got = np.asarray(metrics.mssim(pred, ref, data_range, window=window))
    expected = [_loop_mssim(p, r, data_range, window) for p, r in zip(pred, ref)]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10)


def test_mssim_odd_window_matches_skimage_uniform():
    # Peer check: for odd windows scikit-image's uniform-window SSIM (its defaults: sample
    # covariance, K1 = 0.01, K2 = 0.03, mean over the cropped, i.e. valid, positions) is the same.
    pred, ref, data_range = _pair("structured", n=2, shape=(32, 32), seed=5)
    got = np.asarray(metrics.mssim(pred, ref, data_range, window=7))
    expected = [
        structural_similarity(p, r, data_range=data_range, win_size=7, use_sample_covariance=True)
        for p, r in zip(pred, ref)
    ]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10)


def test_float32_inputs_stay_float32_and_close():
    pred, ref, data_range = _pair("random", n=2, shape=(32, 32))
    got = metrics.ssim(pred.astype(np.float32), ref.astype(np.float32), data_range)
    assert got.dtype == jnp.float32
    # Reference: the float64 evaluation, itself checked against scikit-image above.
    np.testing.assert_allclose(got, metrics.ssim(pred, ref, data_range), atol=1e-5)


# ----------------------------------------------------------------------------------------
# Norms and R^2
# ----------------------------------------------------------------------------------------


def test_norms_by_hand():
    # Hand computation: d = ref - pred = [[1, -2], [0, 3]]; eq. (14): (1 + 2 + 0 + 3) / 4;
    # eq. (15): sqrt((1 + 4 + 0 + 9) / 4); eq. (16): max |d| = 3.
    ref = np.array([[1.0, -2.0], [0.0, 3.0]])
    pred = np.zeros((2, 2))
    assert float(metrics.l1(pred, ref)) == pytest.approx(1.5, abs=1e-15)
    assert float(metrics.l2(pred, ref)) == pytest.approx(np.sqrt(3.5), abs=1e-15)
    assert float(metrics.linf(pred, ref)) == pytest.approx(3.0, abs=1e-15)


@pytest.mark.parametrize("kind", KINDS)
def test_norms_match_numpy(kind):
    pred, ref, _ = _pair(kind, shape=(16, 12))
    d = pred - ref
    # NumPy formulas of eqs. (14)-(16), with N_x N_y = 16 * 12 pixels.
    np.testing.assert_allclose(metrics.l1(pred, ref), np.abs(d).sum(axis=(1, 2)) / 192, rtol=1e-13)
    np.testing.assert_allclose(metrics.l2(pred, ref), np.linalg.norm(d.reshape(3, -1), axis=1) / np.sqrt(192), rtol=1e-13)
    np.testing.assert_allclose(metrics.linf(pred, ref), np.abs(d).max(axis=(1, 2)), rtol=1e-13)


def test_r2_by_hand():
    # Two 1 x 2 images, computed by hand: SS_res = 0 + 1 + 0 + 1 = 2.
    ref = np.array([[[1.0, 2.0]], [[3.0, 6.0]]])
    pred = np.array([[[1.0, 3.0]], [[3.0, 5.0]]])
    # Set mean map [2, 4]: SS_tot = 1 + 4 + 1 + 4 = 10, R^2 = 1 - 2/10.
    assert float(metrics.r2(pred, ref)) == pytest.approx(0.8, abs=1e-15)
    # Given mean map [0, 0]: SS_tot = 1 + 4 + 9 + 36 = 50, R^2 = 1 - 2/50.
    assert float(metrics.r2(pred, ref, np.zeros((1, 2)))) == pytest.approx(0.96, abs=1e-15)


def test_r2_matches_numpy_and_mean_map():
    pred, ref, _ = _pair("structured", n=5, shape=(16, 16))
    train_mean = _blobs(np.random.default_rng(9), 20, (16, 16)).mean(axis=0)
    # NumPy transcription of eqs. (17)-(19).
    ss_res = np.sum((ref - pred) ** 2)
    expected_own = 1 - ss_res / np.sum((ref - ref.mean(axis=0)) ** 2)
    expected_train = 1 - ss_res / np.sum((ref - train_mean) ** 2)
    assert float(metrics.r2(pred, ref)) == pytest.approx(expected_own, abs=1e-12)
    assert float(metrics.r2(pred, ref, train_mean)) == pytest.approx(expected_train, abs=1e-12)
    assert abs(expected_own - expected_train) > 1e-3  # the two conventions really differ
    # Passing the set's own mean map is the default.
    assert float(metrics.r2(pred, ref, ref.mean(axis=0))) == pytest.approx(expected_own, abs=1e-13)


def test_r2_batched_over_leading_axes():
    pred, ref, _ = _pair("random", n=8, shape=(10, 10))
    pred, ref = pred.reshape(2, 4, 10, 10), ref.reshape(2, 4, 10, 10)
    got = metrics.r2(pred, ref)
    assert got.shape == (2,)
    np.testing.assert_allclose(got, [metrics.r2(pred[0], ref[0]), metrics.r2(pred[1], ref[1])], rtol=1e-14)


def test_r2_invariant_under_common_affine_map():
    # Property of eqs. (17)-(19): SS_res and SS_tot both scale by a^2 and the offset cancels.
    pred, ref, _ = _pair("structured", n=4, shape=(12, 12))
    mean_map = ref.mean(axis=0) + 0.1
    a, b = -2.5, 0.7
    np.testing.assert_allclose(
        metrics.r2(a * pred + b, a * ref + b, a * mean_map + b), metrics.r2(pred, ref, mean_map), rtol=1e-12
    )


# ----------------------------------------------------------------------------------------
# Identical images
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_identical_images(kind):
    _, ref, data_range = _pair(kind, n=3, shape=(24, 24))
    # Definitions: SSIM(x, x) = 1 (eq. (13) with equal moments); zero error norms; SS_res = 0.
    np.testing.assert_allclose(metrics.ssim(ref, ref, data_range), 1.0, atol=1e-12)
    np.testing.assert_allclose(metrics.mssim(ref, ref, data_range), 1.0, atol=1e-12)
    np.testing.assert_array_equal(metrics.l1(ref, ref), 0.0)
    np.testing.assert_array_equal(metrics.l2(ref, ref), 0.0)
    np.testing.assert_array_equal(metrics.linf(ref, ref), 0.0)
    assert float(metrics.r2(ref, ref)) == 1.0
    images = metrics.to_paper_images(ref, ref.min(), ref.max())
    np.testing.assert_allclose(metrics.paper_ssim(images, images), 1.0, atol=1e-12)
    np.testing.assert_allclose(metrics.paper_mssim(images, images), 1.0, atol=1e-12)
    assert float(metrics.paper_r2(images, images)) == 1.0


# ----------------------------------------------------------------------------------------
# Transformations
# ----------------------------------------------------------------------------------------

PER_IMAGE = {
    "l1": lambda p, r: metrics.l1(p, r),
    "l2": lambda p, r: metrics.l2(p, r),
    "linf": lambda p, r: metrics.linf(p, r),
    "ssim": lambda p, r: metrics.ssim(p, r, 1.0),
    "mssim": lambda p, r: metrics.mssim(p, r, 1.0),
    "paper_ssim": lambda p, r: metrics.paper_ssim(p, r),
    "paper_mssim": lambda p, r: metrics.paper_mssim(p, r),
}


@pytest.mark.parametrize("name", sorted(PER_IMAGE))
def test_batching_jit_and_vmap_equal_loop(name):
    fn = PER_IMAGE[name]
    pred, ref, _ = _pair("random", n=6, shape=(20, 20))
    pred, ref = pred.reshape(2, 3, 20, 20), ref.reshape(2, 3, 20, 20)
    loop = np.array([[float(fn(pred[i, j], ref[i, j])) for j in range(3)] for i in range(2)])
    np.testing.assert_allclose(fn(pred, ref), loop, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(jax.vmap(jax.vmap(fn))(pred, ref), loop, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(jax.jit(fn)(pred, ref), loop, rtol=1e-13, atol=1e-15)
    assert len(set(np.round(loop.ravel(), 12))) > 1  # different images give different scores


def test_jit_with_traced_data_range_and_static_window():
    pred, ref, _ = _pair("structured", n=2, shape=(24, 24))
    ranges = jnp.array([0.8, 1.7])
    np.testing.assert_allclose(jax.jit(metrics.ssim)(pred, ref, ranges), metrics.ssim(pred, ref, ranges), rtol=1e-13)
    jitted = jax.jit(metrics.mssim, static_argnames="window")
    np.testing.assert_allclose(jitted(pred, ref, ranges, window=6), metrics.mssim(pred, ref, ranges, window=6), rtol=1e-13)
    to_paper = jax.jit(metrics.to_paper_images)
    np.testing.assert_allclose(to_paper(ref, 0.0, 3.0), metrics.to_paper_images(ref, 0.0, 3.0), rtol=0, atol=1e-14)


def test_summary_matches_functions_and_jits():
    pred, ref, data_range = _pair("structured", n=4, shape=(16, 16))
    mean_map = ref.mean(axis=0) * 0.9
    eager = metrics.summary(pred, ref, data_range, mean_map)
    jitted = jax.jit(metrics.summary)(pred, ref, data_range, mean_map)
    expected = {
        "l1": metrics.l1(pred, ref),
        "l2": metrics.l2(pred, ref),
        "linf": metrics.linf(pred, ref),
        "ssim": metrics.ssim(pred, ref, data_range),
        "mssim": metrics.mssim(pred, ref, data_range, window=8),
        "r2": metrics.r2(pred, ref, mean_map),
    }
    assert set(eager) == set(expected)
    for key, value in expected.items():
        np.testing.assert_allclose(eager[key], value, rtol=1e-14)
        np.testing.assert_allclose(jitted[key], value, rtol=1e-13)
    assert eager["r2"].shape == () and eager["ssim"].shape == (4,)
    # Leading axes together form the R^2 set.
    flat = metrics.summary(pred.reshape(2, 2, 16, 16), ref.reshape(2, 2, 16, 16), data_range, mean_map)
    assert flat["l1"].shape == (2, 2)
    np.testing.assert_allclose(flat["r2"], eager["r2"], rtol=1e-14)


def test_ssim_and_mssim_gradients():
    # Finite differences vs reverse-mode gradients, e.g. for SSIM as a training loss.
    pred, ref, _ = _pair("random", n=1, shape=(12, 12))
    check_grads(lambda p: metrics.ssim(p, ref[0], 1.0), (pred[0],), order=1, modes=["rev"])
    check_grads(lambda p: metrics.mssim(p, ref[0], 1.0), (pred[0],), order=1, modes=["rev"])


# ----------------------------------------------------------------------------------------
# The authors' convention
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_paper_ssim_matches_design_description(kind):
    pred, ref, _ = _pair(kind, n=3, shape=(64, 64))
    pred = metrics.to_paper_images(pred, ref.min(), ref.max())
    ref = metrics.to_paper_images(ref, ref.min(), ref.max())
    got = np.asarray(metrics.paper_ssim(pred, ref))
    expected = [_design_paper_ssim(np.asarray(p), np.asarray(r)) for p, r in zip(pred, ref)]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-13)
    # C1 = C2 = 0.4096 is not Wang's (K2 = 0.03, L = 2 for [-1, 1] images): the two differ.
    assert np.all(np.abs(got - np.asarray(metrics.ssim(pred, ref, 2.0))) > 1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_paper_mssim_matches_authors_loop(kind):
    pred, ref, _ = _pair(kind, n=2, shape=(64, 64))
    pred = np.asarray(metrics.to_paper_images(pred, ref.min(), ref.max()))
    ref = np.asarray(metrics.to_paper_images(ref, ref.min(), ref.max()))
    got = np.asarray(metrics.paper_mssim(pred, ref))
    expected = [_authors_paper_mssim(p, r) for p, r in zip(pred, ref)]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-13)


def test_paper_mssim_windows_skip_last_rows():
    # The authors' loop starts windows at range(0, H - 8, 4): for 64 x 64 the last window
    # covers rows 52..59, so rows and columns 60..63 never count.
    rng = np.random.default_rng(2)
    ref = rng.uniform(-1, 1, (64, 64))
    pred = ref.copy()
    pred[60:, :] = -ref[60:, :]
    pred[:, 60:] = rng.uniform(-1, 1, (64, 4))
    assert float(metrics.paper_mssim(pred, ref)) == pytest.approx(1.0, abs=1e-14)
    pred[59, 59] += 0.5
    assert float(metrics.paper_mssim(pred, ref)) < 1.0 - 1e-7


def test_to_paper_images_levels():
    # Hand values: lo -> level 0 -> -1; hi -> 255 -> +1; 0.5 of the range -> 127.5 rounds
    # half to even -> 128 -> 128/127.5 - 1; 0.2 -> 51 -> 51/127.5 - 1 = -0.6; clipped outside.
    x = np.array([[2.0, 4.0, 3.0, 2.4, 1.0, 9.0]])
    got = np.asarray(metrics.to_paper_images(x, 2.0, 4.0))
    np.testing.assert_allclose(got, [[-1.0, 1.0, 128 / 127.5 - 1, -0.6, -1.0, 1.0]], rtol=0, atol=1e-15)
    # Random images: every value is one of the 256 levels k / 127.5 - 1; NumPy reference.
    _, ref, _ = _pair("structured", n=2, shape=(16, 16))
    lo, hi = np.array([0.0, 0.1]), np.array([2.0, 1.5])
    got = np.asarray(metrics.to_paper_images(ref, lo, hi))
    expected = np.clip(np.round(255 * (ref - lo[:, None, None]) / (hi - lo)[:, None, None]), 0, 255) / 127.5 - 1
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-15)
    levels = (got + 1) * 127.5
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-10)


def test_paper_r2_uses_scored_set_mean():
    pred, ref, _ = _pair("structured", n=5, shape=(16, 16))
    lo, hi = ref.min(), ref.max()
    ref_img = np.asarray(metrics.to_paper_images(ref, lo, hi))
    pred_img = 2 * (pred - lo) / (hi - lo) - 1  # the network output is not quantised
    # NumPy transcription of the authors' R2Computer: mean map of the scored set's targets.
    expected = 1 - np.sum((ref_img - pred_img) ** 2) / np.sum((ref_img - ref_img.mean(axis=0)) ** 2)
    assert float(metrics.paper_r2(pred_img, ref_img)) == pytest.approx(expected, abs=1e-12)
    # Only the quantisation separates it from r2 in physical units (same set mean map).
    assert float(metrics.paper_r2(pred_img, ref_img)) == pytest.approx(float(metrics.r2(pred, ref)), abs=2e-3)


# ----------------------------------------------------------------------------------------
# Invalid input
# ----------------------------------------------------------------------------------------

IMG = np.ones((2, 16, 16))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: metrics.l1(IMG, IMG[:, :15]), "same shape"),
        (lambda: metrics.linf(np.ones(16), np.ones(16)), "at least 2 dims"),
        (lambda: metrics.ssim(np.ones((10, 10)), np.ones((10, 10)), 1.0), "smaller than the 11 x 11"),
        (lambda: metrics.ssim(IMG, IMG, 0.0), "positive"),
        (lambda: metrics.ssim(IMG, IMG, -1.0), "positive"),
        (lambda: metrics.ssim(IMG, IMG, np.array([1.0, 0.0])), "positive"),
        (lambda: metrics.ssim(IMG, IMG, np.nan), "finite"),
        (lambda: metrics.ssim(IMG, IMG, np.ones(3)), "batch shape"),
        (lambda: metrics.mssim(np.ones((7, 9)), np.ones((7, 9)), 1.0), "smaller than the 8 x 8"),
        (lambda: metrics.mssim(IMG, IMG, 1.0, window=1), "window"),
        (lambda: metrics.mssim(IMG, IMG, 1.0, window=2.5), "window"),
        (lambda: metrics.r2(IMG[0], IMG[0]), "at least 3 dims"),
        (lambda: metrics.r2(IMG[:1], IMG[:1]), "at least 2 images"),
        (lambda: metrics.r2(IMG, IMG, np.ones((15, 16))), "mean_map"),
        (lambda: metrics.summary(IMG[0], IMG[0], 1.0), "leading axis"),
        (lambda: metrics.to_paper_images(IMG, 1.0, 1.0), "hi > lo"),
        (lambda: metrics.to_paper_images(np.ones(4), 0.0, 1.0), r"\(\.\.\., H, W\)"),
        (lambda: metrics.paper_mssim(np.ones((8, 8)), np.ones((8, 8))), "larger than the 8 x 8"),
        (lambda: metrics.paper_ssim(IMG, IMG[0]), "same shape"),
    ],
)
def test_invalid_inputs_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()
