"""Error and similarity measures between predicted and reference images.

Two groups of functions live here, kept apart on purpose.

Standard measures (report these, in physical units):

- `l1`, `l2`, `linf`: eqs. (14)-(16) of Pantis-Simut et al., Mach. Learn.: Sci. Technol. 4,
  025023 (2023) (arXiv:2301.02122), in the unit of the images (nm^-2 for densities, eV for
  potentials);
- `ssim`: Wang, Bovik, Sheikh & Simoncelli, IEEE Trans. Image Process. 13, 600 (2004), with
  their 11 x 11 Gaussian window (sigma = 1.5), K1 = 0.01, K2 = 0.03, identical to
  scikit-image's ``structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False)``;
- `mssim`: the paper's "mean SSIM with a uniformly weighted 8 x 8 window", Wang's K1, K2;
- `r2`: the coefficient of determination over a set of images, eqs. (17)-(19);
- `summary`: all of the above in one dict.

The paper authors' convention (named ``paper_*``; use it only to set numbers side by side
with the paper). The authors' public training script (pix2pix_mapping_V-n) computes its
numbers on images stored as 8-bit integers and rescaled to [-1, 1] (`to_paper_images`), with
a global, not windowed, SSIM (`paper_ssim`, `paper_mssim`) and R^2 with the mean map of the set
being scored (`paper_r2`). Its L1 and L2 are the plain sums sum|d| and sqrt(sum d^2) on the
[-1, 1] images, i.e. ``H * W * l1`` and ``sqrt(H * W) * l2`` of those images.

All functions are pure and work under `jax.jit` and `jax.vmap`; images have shape
(..., H, W) and every leading axis is a batch axis. Integer images are converted to floating
point first. Shapes are checked eagerly (they are static under `jax.jit`); value checks such
as ``data_range > 0`` run only when the value is concrete, not when it is traced.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from qdjax import backend

ArrayLike = jax.typing.ArrayLike

#: Stabilising constants of Wang et al. (2004), eq. (7) and (9): C_i = (K_i * data_range)^2.
K1 = 0.01
K2 = 0.03

#: Gaussian window of Wang et al. (2004), section III.C: sigma = 1.5 px, truncated as in
#: scipy.ndimage (radius = int(truncate * sigma + 0.5) = 5 px, i.e. 11 x 11 taps).
GAUSSIAN_SIGMA = 1.5
GAUSSIAN_TRUNCATE = 3.5

#: The authors' global-SSIM constants: C1 = (0.01 * 64)^2, C2 = (0.01 * 64)^2 (= 0.4096 each).
PAPER_K1 = 0.01
PAPER_K2 = 0.01
PAPER_L = 64.0
#: The authors' MSSIM: 8 x 8 windows, stride 4.
PAPER_WINDOW = 8
PAPER_STRIDE = 4


# ----------------------------------------------------------------------------------------
# Input checks and small helpers
# ----------------------------------------------------------------------------------------


def _float_dtype(*arrays) -> jnp.dtype:
    return jnp.result_type(*arrays, jnp.float32)


def _image_pair(pred: ArrayLike, ref: ArrayLike, name: str, min_ndim: int = 2):
    """Validates a (pred, ref) pair of image stacks and converts it to one float dtype."""
    pred = jnp.asarray(pred)
    ref = jnp.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"{name}: pred and ref must have the same shape, got {pred.shape} and {ref.shape}")
    if pred.ndim < min_ndim:
        what = "(..., H, W)" if min_ndim == 2 else "(..., n, H, W)"
        raise ValueError(f"{name}: images must have shape {what} (at least {min_ndim} dims), got shape {pred.shape}")
    dtype = _float_dtype(pred, ref)
    return pred.astype(dtype), ref.astype(dtype)


def _check_window(shape, window: int, name: str) -> None:
    height, width = shape[-2:]
    if height < window or width < window:
        raise ValueError(f"{name}: images of {height} x {width} pixels are smaller than the {window} x {window} window")


def _concrete(value):
    """Returns value as a NumPy array, or None when it is traced."""
    try:
        return np.asarray(value)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def _per_image(value: ArrayLike, batch_shape, dtype, name: str, what: str, positive: bool = True) -> jax.Array:
    """Checks a scalar or per-image value (broadcastable to batch_shape; if concrete, finite
    and optionally positive) and returns it as an array of `dtype`."""
    concrete = _concrete(value)
    if concrete is not None and not np.all(np.isfinite(concrete)):
        raise ValueError(f"{name}: {what} must be finite, got {value!r}")
    if positive and concrete is not None and not np.all(concrete > 0):
        raise ValueError(f"{name}: {what} must be positive, got {value!r}")
    value = jnp.asarray(value, dtype=dtype)
    try:
        ok = np.broadcast_shapes(value.shape, batch_shape) == tuple(batch_shape)
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(
            f"{name}: {what} must be a scalar or broadcast to the batch shape {tuple(batch_shape)}, "
            f"got shape {value.shape}"
        )
    return value


def _per_pixel(value: jax.Array, x: jax.Array) -> jax.Array:
    """A per-image value (broadcastable to x.shape[:-2]) as an array (..., 1, 1)."""
    return jnp.broadcast_to(value, x.shape[:-2])[..., None, None]


def _valid_filter(x: jax.Array, taps: tuple[float, ...]) -> jax.Array:
    """Separable correlation with 1-D taps over the last two axes, 'valid' positions only.

    x: (..., H, W) -> (..., H - k + 1, W - k + 1) with k = len(taps); out[i, j] =
    sum_{a, b} taps[a] taps[b] x[i + a, j + b].
    """
    k = len(taps)
    batch, (height, width) = x.shape[:-2], x.shape[-2:]
    kernel = jnp.asarray(taps, dtype=x.dtype)
    y = x.reshape((-1, 1, height, width))
    dims = ("NCHW", "OIHW", "NCHW")
    with backend.full_precision(x.dtype):  # float32 at float32 accuracy on GPUs and TPUs too
        y = jax.lax.conv_general_dilated(y, kernel.reshape(1, 1, k, 1), (1, 1), "VALID", dimension_numbers=dims)
        y = jax.lax.conv_general_dilated(y, kernel.reshape(1, 1, 1, k), (1, 1), "VALID", dimension_numbers=dims)
    return y.reshape(batch + (height - k + 1, width - k + 1))


def _gaussian_taps(sigma: float, truncate: float) -> tuple[float, ...]:
    """1-D Gaussian taps exactly as scipy.ndimage.gaussian_filter builds them."""
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    taps = np.exp(-0.5 * (x / sigma) ** 2)
    return tuple(float(t) for t in taps / taps.sum())


def _ssim_from_moments(ux, uy, vx, vy, vxy, c1, c2) -> jax.Array:
    """Wang et al. (2004) eq. (13): ((2 ux uy + C1)(2 vxy + C2)) / ((ux^2 + uy^2 + C1)(vx + vy + C2))."""
    num = (2.0 * ux * uy + c1) * (2.0 * vxy + c2)
    den = (ux * ux + uy * uy + c1) * (vx + vy + c2)
    return num / den


def _mean_windowed_ssim_impl(x, y, data_range, taps, cov_norm) -> jax.Array:
    """Mean over valid positions of the SSIM map, moments from windowed means (as scikit-image).

    x, y: (..., H, W); data_range: broadcastable to (...,); taps: tuple of 1-D window
    weights; cov_norm: factor turning the windowed E[x^2] - E[x]^2 into the wanted (co)variance.
    """
    dr = _per_pixel(data_range, x)
    c1, c2 = (K1 * dr) ** 2, (K2 * dr) ** 2
    ux, uy, uxx, uyy, uxy = _valid_filter(jnp.stack([x, y, x * x, y * y, x * y]), taps)
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    return jnp.mean(_ssim_from_moments(ux, uy, vx, vy, vxy, c1, c2), axis=(-2, -1))


# The arithmetic of every public function runs in a jax.jit-compiled kernel (compiled once
# per shape and dtype) so that eager calls do not dispatch many small operations; inside a
# caller's jax.jit the kernels are inlined. Input checks run before, outside the kernels.
_mean_windowed_ssim = jax.jit(_mean_windowed_ssim_impl, static_argnames=("taps", "cov_norm"))


@jax.jit
def _l1(pred, ref):
    return jnp.mean(jnp.abs(pred - ref), axis=(-2, -1))


@jax.jit
def _l2(pred, ref):
    return jnp.sqrt(jnp.mean(jnp.square(pred - ref), axis=(-2, -1)))


@jax.jit
def _linf(pred, ref):
    return jnp.max(jnp.abs(pred - ref), axis=(-2, -1))


@jax.jit
def _r2(pred, ref, mean):
    """R^2 over axis -3; mean: (..., H, W) mean map, or None for the mean of ref."""
    if mean is None:
        mean = jnp.mean(ref, axis=-3, keepdims=True)
    else:
        mean = jnp.expand_dims(mean.astype(ref.dtype), -3)
    axes = (-3, -2, -1)
    ss_res = jnp.sum(jnp.square(ref - pred), axis=axes)
    ss_tot = jnp.sum(jnp.square(ref - mean), axis=axes)
    return 1.0 - ss_res / ss_tot


@jax.jit
def _to_paper_images(x, lo, hi):
    lo, hi = _per_pixel(lo, x), _per_pixel(hi, x)
    q = jnp.clip(jnp.round(255.0 * (x - lo) / (hi - lo)), 0.0, 255.0)
    return q / 127.5 - 1.0


# ----------------------------------------------------------------------------------------
# Standard measures
# ----------------------------------------------------------------------------------------


def l1(pred: ArrayLike, ref: ArrayLike) -> jax.Array:
    """Mean absolute error per image, eq. (14) of Pantis-Simut et al. (2023).

    L1 = ||pred - ref||_1 / (H W).

    Args:
      pred, ref: float arrays (..., H, W), any unit (nm^-2 for densities, eV for potentials).

    Returns:
      (...,) array in the unit of the inputs.
    """
    return _l1(*_image_pair(pred, ref, "l1"))


def l2(pred: ArrayLike, ref: ArrayLike) -> jax.Array:
    """Root-mean-square error per image, eq. (15) of Pantis-Simut et al. (2023).

    L2 = ||pred - ref||_2 / sqrt(H W).

    Args:
      pred, ref: float arrays (..., H, W), any unit.

    Returns:
      (...,) array in the unit of the inputs.
    """
    return _l2(*_image_pair(pred, ref, "l2"))


def linf(pred: ArrayLike, ref: ArrayLike) -> jax.Array:
    """Maximum absolute error per image, eq. (16) of Pantis-Simut et al. (2023).

    Linf = ||pred - ref||_inf = max_ij |pred_ij - ref_ij|.

    Args:
      pred, ref: float arrays (..., H, W), any unit.

    Returns:
      (...,) array in the unit of the inputs.
    """
    return _linf(*_image_pair(pred, ref, "linf"))


def ssim(pred: ArrayLike, ref: ArrayLike, data_range: ArrayLike) -> jax.Array:
    """Structural similarity of Wang et al. (2004), IEEE TIP 13, 600, per image.

    SSIM map, Wang et al. eq. (13), with Gaussian-weighted local moments (eqs. (14)-(16)):
    11 x 11 Gaussian window, sigma = 1.5 px (scipy's truncation, radius 5), weighted
    (population) variances and covariance, C1 = (0.01 data_range)^2, C2 = (0.03 data_range)^2.
    The score is the mean of the map over the window positions that lie fully inside the
    image, (H - 10) x (W - 10) of them. This is, to rounding, scikit-image's
    ``structural_similarity(pred, ref, data_range=data_range, gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False)``, which crops (win_size - 1) // 2 = 5 pixels from
    each border before averaging. Local variances are computed as E[x^2] - E[x]^2 like
    scikit-image, so float32 inputs with a large offset lose digits.

    Args:
      pred, ref: float arrays (..., H, W) in the same unit, H, W >= 11.
      data_range: dynamic range L of the images (same unit), a positive scalar or an array
        broadcastable to the batch shape (...,) (one value per image).

    Returns:
      (...,) dimensionless array, 1 for identical images.
    """
    pred, ref = _image_pair(pred, ref, "ssim")
    taps = _gaussian_taps(GAUSSIAN_SIGMA, GAUSSIAN_TRUNCATE)
    _check_window(pred.shape, len(taps), "ssim")
    dr = _per_image(data_range, pred.shape[:-2], pred.dtype, "ssim", "data_range")
    return _mean_windowed_ssim(pred, ref, dr, taps=taps, cov_norm=1.0)


def mssim(pred: ArrayLike, ref: ArrayLike, data_range: ArrayLike, window: int = 8) -> jax.Array:
    """Mean SSIM with a uniformly weighted window x window square window, per image.

    The "MSSIM" of Pantis-Simut et al. (2023), section III.3, with the parameters of Wang et
    al. (2004): at every position where the window lies fully inside the image (stride 1,
    (H - window + 1) x (W - window + 1) positions) the window's means, *sample* variances and
    sample covariance (divided by window^2 - 1, Wang et al. eqs. (4), (5), (11)) enter
    eq. (13) with C1 = (0.01 data_range)^2 and C2 = (0.03 data_range)^2; the result is the mean
    over positions. For odd windows this equals scikit-image's ``structural_similarity(
    win_size=window, gaussian_weights=False, use_sample_covariance=True)``, whose defaults
    for uniform windows are the same; scikit-image cannot use even windows.

    Args:
      pred, ref: float arrays (..., H, W) in the same unit, H, W >= window.
      data_range: dynamic range L (same unit), positive scalar or per-image array (...,).
      window: side of the square window in pixels, >= 2 (paper: 8); static under jax.jit.

    Returns:
      (...,) dimensionless array, 1 for identical images.
    """
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 2:
        raise ValueError(f"mssim: window must be an integer >= 2, got {window!r}")
    window = int(window)
    pred, ref = _image_pair(pred, ref, "mssim")
    _check_window(pred.shape, window, "mssim")
    dr = _per_image(data_range, pred.shape[:-2], pred.dtype, "mssim", "data_range")
    n = window * window
    taps = (1.0 / window,) * window
    return _mean_windowed_ssim(pred, ref, dr, taps=taps, cov_norm=n / (n - 1.0))


def r2(pred: ArrayLike, ref: ArrayLike, mean_map: ArrayLike | None = None) -> jax.Array:
    """Coefficient of determination over a set of images, eqs. (17)-(19) of Pantis-Simut et al.

    R^2 = 1 - SS_res / SS_tot with SS_res = sum_i ||ref_i - pred_i||_2^2 and
    SS_tot = sum_i ||ref_i - mean_map||_2^2, sums over the n images of the set and their
    pixels. The paper takes mean_map as the pixel-wise mean of the TRAINING set's reference
    images (its Fig. A.3); pass that here to reproduce its definition. Without mean_map, the
    pixel-wise mean of `ref` over the set is used (the textbook R^2 of the set). R^2 is
    unchanged when pred, ref and mean_map undergo the same map x -> a x + b (a != 0).
    SS_tot = 0 (all reference images equal to the mean map) gives -inf or nan.

    Args:
      pred, ref: float arrays (..., n, H, W) in the same unit; axis -3 indexes the set,
        further leading axes are batch axes.
      mean_map: optional array (H, W), or broadcastable to (..., H, W), same unit.

    Returns:
      (...,) dimensionless array (a scalar for (n, H, W) inputs).
    """
    pred, ref = _image_pair(pred, ref, "r2", min_ndim=3)
    if mean_map is None:
        if ref.shape[-3] < 2:
            raise ValueError(f"r2: the set needs at least 2 images when mean_map is not given, got {ref.shape[-3]}")
        mean = None
    else:
        mean = jnp.asarray(mean_map)
        image_batch = ref.shape[:-3] + ref.shape[-2:]
        try:
            ok = mean.ndim >= 2 and np.broadcast_shapes(mean.shape, image_batch) == image_batch
        except ValueError:
            ok = False
        if not ok or mean.shape[-2:] != ref.shape[-2:]:
            raise ValueError(f"r2: mean_map must have shape (H, W) = {ref.shape[-2:]} (or (..., H, W)), got {mean.shape}")
    return _r2(pred, ref, mean)


def summary(
    pred: ArrayLike, ref: ArrayLike, data_range: ArrayLike, mean_map: ArrayLike | None = None
) -> dict[str, jax.Array]:
    """All standard measures for a set of predictions.

    Args:
      pred, ref: float arrays (..., H, W) with at least one leading axis; all leading axes
        together form the set for R^2.
      data_range: dynamic range for ssim and mssim (unit of the images), scalar or (...,).
      mean_map: optional (H, W) mean map for R^2 (the paper: training-set mean), see `r2`.

    Returns:
      dict with per-image arrays of shape (...,): "l1", "l2", "linf" (unit of the images),
      "ssim", "mssim" (8 x 8 window; dimensionless), and the scalar "r2" over all images.
    """
    pred, ref = _image_pair(pred, ref, "summary")
    if pred.ndim < 3:
        raise ValueError(f"summary: expects a set of images (..., H, W) with a leading axis, got shape {pred.shape}")
    flat = (-1,) + pred.shape[-2:]
    return {
        "l1": l1(pred, ref),
        "l2": l2(pred, ref),
        "linf": linf(pred, ref),
        "ssim": ssim(pred, ref, data_range),
        "mssim": mssim(pred, ref, data_range),
        "r2": r2(pred.reshape(flat), ref.reshape(flat), mean_map),
    }


# ----------------------------------------------------------------------------------------
# The paper authors' convention (for comparison with the published numbers only)
# ----------------------------------------------------------------------------------------


def to_paper_images(x: ArrayLike, lo: ArrayLike, hi: ArrayLike) -> jax.Array:
    """Images as the authors' training code sees them: 8-bit levels rescaled to [-1, 1].

    q = clip(round(255 (x - lo) / (hi - lo)), 0, 255) (round half to even), then
    q / 127.5 - 1. The authors store images as integers 0..255 and rescale them with
    q / 127.5 - 1; how they quantised is not public, so rounding to the nearest level is an
    assumption (another rule moves a pixel by at most one level, 2/255). Apply this to
    reference images; the authors' network output is an unquantised float in [-1, 1], which
    the same linear map without rounding reproduces, (x - lo) / (hi - lo) * 2 - 1.

    Args:
      x: array (..., H, W) in any unit.
      lo, hi: the values that map to levels 0 and 255, same unit; scalars or arrays
        broadcastable to the batch shape (...,); hi > lo.

    Returns:
      (..., H, W) dimensionless float array with values in {k / 127.5 - 1, k = 0..255}.
    """
    x = jnp.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"to_paper_images: images must have shape (..., H, W), got shape {x.shape}")
    x = x.astype(_float_dtype(x))
    batch = x.shape[:-2]
    lo = _per_image(lo, batch, x.dtype, "to_paper_images", "lo", positive=False)
    hi = _per_image(hi, batch, x.dtype, "to_paper_images", "hi", positive=False)
    lo_c, hi_c = _concrete(lo), _concrete(hi)
    if lo_c is not None and hi_c is not None and not np.all(hi_c - lo_c > 0):
        raise ValueError("to_paper_images: need hi > lo for every image")
    return _to_paper_images(x, lo, hi)


def _paper_global_ssim_impl(x: jax.Array, y: jax.Array, divisor: float) -> jax.Array:
    """The authors' global SSIM over the last two axes; second moments divided by `divisor`."""
    c1 = (PAPER_K1 * PAPER_L) ** 2
    c2 = (PAPER_K2 * PAPER_L) ** 2
    ux = jnp.mean(x, axis=(-2, -1), keepdims=True)
    uy = jnp.mean(y, axis=(-2, -1), keepdims=True)
    dx, dy = x - ux, y - uy
    vx = jnp.sum(dx * dx, axis=(-2, -1)) / divisor
    vy = jnp.sum(dy * dy, axis=(-2, -1)) / divisor
    vxy = jnp.sum(dx * dy, axis=(-2, -1)) / divisor
    return _ssim_from_moments(ux[..., 0, 0], uy[..., 0, 0], vx, vy, vxy, c1, c2)


_paper_global_ssim = jax.jit(_paper_global_ssim_impl, static_argnames="divisor")


@jax.jit
def _paper_mssim(pred, ref):
    """The authors' MSSIM loop, vectorised: gathers the windows as (..., n_rows, n_cols, 8, 8)."""
    height, width = pred.shape[-2:]
    offsets = np.arange(PAPER_WINDOW)
    rows = np.arange(0, height - PAPER_WINDOW, PAPER_STRIDE)[:, None] + offsets
    cols = np.arange(0, width - PAPER_WINDOW, PAPER_STRIDE)[:, None] + offsets
    index = (rows[:, None, :, None], cols[None, :, None, :])
    patches_pred = pred[(...,) + index]  # (..., n_rows, n_cols, 8, 8)
    patches_ref = ref[(...,) + index]
    s = _paper_global_ssim(patches_pred, patches_ref, height * width - 1.0)
    return jnp.mean(s, axis=(-2, -1))


def paper_ssim(pred: ArrayLike, ref: ArrayLike) -> jax.Array:
    """The authors' "SSIM": one global SSIM over the whole image (not Wang's windowed SSIM).

    Wang et al. (2004) eq. (13) evaluated once per image with the image's mean, sample
    variances and sample covariance (divided by H W - 1) and the authors' constants
    C1 = (K1 L)^2, C2 = (K2 L)^2 with K1 = K2 = 0.01, L = 64, i.e. C1 = C2 = 0.4096 (L is the
    image side, not the data range 2 of their [-1, 1] images).

    Args:
      pred, ref: arrays (..., H, W) on the authors' [-1, 1] scale (see `to_paper_images`).

    Returns:
      (...,) dimensionless array.
    """
    pred, ref = _image_pair(pred, ref, "paper_ssim")
    n = pred.shape[-2] * pred.shape[-1]
    if n < 2:
        raise ValueError(f"paper_ssim: images need at least 2 pixels, got shape {pred.shape}")
    return _paper_global_ssim(pred, ref, n - 1.0)


def paper_mssim(pred: ArrayLike, ref: ArrayLike) -> jax.Array:
    """The authors' "MSSIM": their global SSIM averaged over 8 x 8 windows with stride 4.

    Reproduces the authors' loop exactly, including two details that differ from "the
    global SSIM of each window": window origins run over range(0, H - 8, 4) x
    range(0, W - 8, 4) (for 64 x 64 images 14 x 14 windows, the last rows and columns of
    pixels are never visited), and each window's second moments are divided by H W - 1 of
    the whole image (4095), not by 8 * 8 - 1. Constants as in `paper_ssim`. With window
    variances about 64 times too small next to C2 = 0.4096, the score is mostly a comparison
    of window means and stays close to 1 even for visibly different [-1, 1] images.

    Args:
      pred, ref: arrays (..., H, W) on the authors' [-1, 1] scale, H, W >= 9.

    Returns:
      (...,) dimensionless array.
    """
    pred, ref = _image_pair(pred, ref, "paper_mssim")
    height, width = pred.shape[-2:]
    if height <= PAPER_WINDOW or width <= PAPER_WINDOW:
        raise ValueError(
            f"paper_mssim: images of {height} x {width} pixels must be larger than the "
            f"{PAPER_WINDOW} x {PAPER_WINDOW} window"
        )
    return _paper_mssim(pred, ref)


def paper_r2(pred: ArrayLike, ref: ArrayLike, mean_map: ArrayLike | None = None) -> jax.Array:
    """The authors' R^2: eqs. (17)-(19) on [-1, 1] images with the scored set's own mean map.

    Identical to ``r2(pred, ref, mean_map)``; the authors' script uses the pixel-wise mean of
    the reference images of the set being scored (the default here), not the training-set
    mean the paper's text describes. Because R^2 is invariant under a common affine map, the
    authors' numbers differ from `r2` in physical units only through the 8-bit quantisation
    of the references (`to_paper_images`) and the choice of mean map.

    Args:
      pred, ref: arrays (..., n, H, W) on the authors' [-1, 1] scale.
      mean_map: optional (H, W) map on the same scale; default: mean of `ref` over the set.

    Returns:
      (...,) dimensionless array (scalar for (n, H, W) inputs).
    """
    return r2(pred, ref, mean_map)
