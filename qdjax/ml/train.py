"""Training of the pix2pix networks: losses, augmentation, the pure training step, `fit`.

Losses (Pantis-Simut et al. 2023, eqs. 11-13 and Table I), with D the discriminator's
logits on the (input a, target b) pair, S the sigmoid and G(a) the generated image:

    L_G = -E[log S(D(a, G(a)))] + lambda * E|b - G(a)|               (eq. 12 + L1 term)
    L_D = -E[log S(D(a, b))] - E[log(1 - S(D(a, G(a))))]              (eq. 13)

E averages over the batch and over the discriminator's patch logits (L1: over pixels).
The log-sigmoids are evaluated stably with `optax.sigmoid_binary_cross_entropy`. Both
networks are updated with Adam from gradients taken at the same parameters (simultaneous
update, as in the pix2pix reference implementations).

The training state is a pytree (`TrainState`, built by `init_state`; both in
`qdjax.ml.state` and re-exported here) of plain dicts of float32 arrays and Optax states;
`make_train_step` returns a pure, jitted ``train_step(state, batch, key)``, on one device or
data-parallel over a mesh of devices (`qdjax.parallel`). Images enter as (B, S, S, C) arrays
in [-1, 1] (`qdjax.ml.scaling`).

For an n_int -> V generator the step can add the ED-consistency term of `qdjax.ml.physics`
(an `EDTerm`): L_G becomes L_G + w L_ED, with L_ED the misfit between the ED ground-state
density of the generated potential and the input density, differentiated through the ED in
the same jitted step.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.typing import ArrayLike

from qdjax import metrics as qd_metrics
from qdjax import parallel
from qdjax.ml.checkpoint import Checkpointer
from qdjax.ml.models import Pix2PixConfig, UNetGenerator, discriminator_output_size
from qdjax.ml.physics import ED_METRIC_NAMES, EDTerm, ed_term_loss
from qdjax.ml.symmetry import d4_average, d4_inverse, d4_transform
from qdjax.ml.state import (
    D4_METRIC_NAMES,
    METRIC_NAMES,
    TrainState,
    discriminator_from_state,
    generator_from_state,
    init_state,
    learning_rate_schedule,
)
from qdjax.ml.state import discriminator_graphdef as _discriminator_graphdef
from qdjax.ml.state import generator_graphdef as _generator_graphdef
from qdjax.ml.state import optimizer as _optimizer

__all__ = [
    "TrainState",
    "FitResult",
    "METRIC_NAMES",
    "D4_METRIC_NAMES",
    "ED_METRIC_NAMES",
    "EDTerm",
    "init_state",
    "learning_rate_schedule",
    "generator_from_state",
    "discriminator_from_state",
    "generator_loss",
    "discriminator_loss",
    "d4_transform",
    "d4_inverse",
    "d4_consistency",
    "augment",
    "make_train_step",
    "predict",
    "batch_indices",
    "fit",
    "NonFiniteError",
]

_F32 = jnp.float32


# ----------------------------------------------------------------------------- losses


def generator_loss(
    fake_logits: jax.Array, fake: jax.Array, target: jax.Array, lambda_l1: float
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Total generator loss L_G^GAN + lambda L_L1 (paper eqs. 11-12).

    Args:
      fake_logits: discriminator logits on (input, generated) pairs, any shape, float32.
      fake: generated images (B, S, S, C), float32 in (-1, 1).
      target: reference images, same shape as `fake`, in [-1, 1].
      lambda_l1: weight of the L1 term (paper: 100).
    Returns:
      (total, gan, l1), float32 scalars: gan = mean(-log S(fake_logits)) >= 0,
      l1 = mean |target - fake| in [0, 2].
    """
    gan = jnp.mean(optax.sigmoid_binary_cross_entropy(fake_logits, jnp.ones_like(fake_logits)))
    l1 = jnp.mean(jnp.abs(target - fake))
    return gan + lambda_l1 * l1, gan, l1


def discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
    """Discriminator loss, paper eq. (13): mean(-log S(real)) + mean(-log(1 - S(fake))).

    Args:
      real_logits, fake_logits: logits on (input, reference) and (input, generated) pairs.
    Returns:
      float32 scalar >= 0 (2 log 2 = 1.386 for an undecided discriminator).
    """
    real = jnp.mean(optax.sigmoid_binary_cross_entropy(real_logits, jnp.ones_like(real_logits)))
    fake = jnp.mean(optax.sigmoid_binary_cross_entropy(fake_logits, jnp.zeros_like(fake_logits)))
    return real + fake


# ----------------------------------------------------------------------------- symmetries


def _d4_traced(image: jax.Array, g: jax.Array, inverse: bool = False) -> jax.Array:
    """`d4_transform` (or `d4_inverse`) of one image (S, S, C) by a traced element g (int
    scalar, 0..7)."""
    fn = d4_inverse if inverse else d4_transform
    return jax.lax.switch(g, [functools.partial(fn, g=e, axes=(0, 1)) for e in range(8)], image)


def _d4_each(images: jax.Array, elements: jax.Array, inverse: bool = False) -> jax.Array:
    """`_d4_traced` of element elements[i] (int array (B,)) applied to image i of images
    (B, S, S, C)."""
    return jax.vmap(lambda z, g: _d4_traced(z, g, inverse))(images, elements)


def d4_consistency(generate: Callable[[jax.Array], jax.Array], x: jax.Array, fake: jax.Array,
                   key: jax.Array) -> jax.Array:
    """The D4-consistency term (`Pix2PixConfig.lambda_d4`): mean over pixels of
    (fake - sg(g^-1 generate(g x)))^2, g uniformly random in D4 without the identity, one
    element per image, sg a stop-gradient.

    Args:
      generate: images (B, S, S, C_in) -> (B, S, S, C_out), the generator.
      x: inputs (B, S, S, C_in); fake: generate(x) (B, S, S, C_out), float32.
      key: PRNG key for the group elements.
    Returns:
      float32 scalar >= 0; zero for a D4-equivariant generator.
    """
    elements = jax.random.randint(key, (x.shape[0],), 1, 8)
    seen = jax.lax.stop_gradient(_d4_each(generate(_d4_each(x, elements)), elements, inverse=True))
    return jnp.mean((fake - seen) ** 2)


def _augment_one(z: jax.Array, key: jax.Array, config: Pix2PixConfig) -> jax.Array:
    """Jitter / flip / D4 of one stacked (input ++ target) image (S, S, C)."""
    size = config.generator.image_size
    k_crop, k_flip, k_d4 = jax.random.split(key, 3)
    if config.jitter_resize > size:
        n = config.jitter_resize
        z = jax.image.resize(z, (n, n, z.shape[-1]), method=config.jitter_method).astype(z.dtype)
        offset = jax.random.randint(k_crop, (2,), 0, n - size + 1)
        z = jax.lax.dynamic_slice(z, (offset[0], offset[1], 0), (size, size, z.shape[-1]))
    if config.random_flip:
        z = jnp.where(jax.random.bernoulli(k_flip), jnp.flip(z, axis=1), z)
    if config.random_d4:
        z = _d4_traced(z, jax.random.randint(k_d4, (), 0, 8))
    return z


def augment(
    inputs: jax.Array, targets: jax.Array, key: jax.Array, config: Pix2PixConfig
) -> tuple[jax.Array, jax.Array]:
    """Random augmentation applied identically to each (input, target) pair.

    Per pair, in this order (each only if switched on in `config`): resize to
    jitter_resize x jitter_resize and crop a random image_size window (random jitter);
    left-right flip with probability 1/2; a uniformly random element of D4
    (`d4_transform`). Identity when all are off (the default).

    Args:
      inputs: (B, S, S, C_in) float32; targets: (B, S, S, C_out) float32.
      key: PRNG key.
      config: `Pix2PixConfig` (static settings).
    Returns:
      (inputs, targets), same shapes and dtypes.
    """
    if config.jitter_resize == config.generator.image_size and not (config.random_flip or config.random_d4):
        return inputs, targets
    c_in = inputs.shape[-1]
    z = jnp.concatenate([inputs, targets], axis=-1)
    keys = jax.random.split(key, z.shape[0])
    z = jax.vmap(lambda zi, ki: _augment_one(zi, ki, config))(z, keys)
    return z[..., :c_in], z[..., c_in:]


# ----------------------------------------------------------------------------- step


def _as_images(x: ArrayLike, channels: int, name: str, size: int) -> jax.Array:
    """(B, S, S) or (B, S, S, C) -> float32 (B, S, S, C); checks static shapes."""
    x = jnp.asarray(x)
    if x.ndim == 3 and channels == 1:
        x = x[..., None]
    if x.ndim != 4 or x.shape[1:] != (size, size, channels):
        raise ValueError(f"{name} must have shape (batch, {size}, {size}, {channels}), got {x.shape}")
    return x.astype(_F32)


def make_train_step(
    config: Pix2PixConfig, mesh: jax.sharding.Mesh | None = None, ed_term: EDTerm | None = None
) -> Callable:
    """Builds the jitted, pure training step for `config`.

    Cached per (hashable) config, mesh and ED term, so repeated calls share one compiled
    function.

    With an `ed_term` (`qdjax.ml.physics.EDTerm`, for an n_int -> V generator with one input
    and one output channel), the generator loss gains ``ed_term.weight * L_ED``: the batch's
    generated potentials are solved by ED in the same jitted step and their ground-state
    densities compared with the input densities; the gradient of L_ED flows through the ED
    into the generator's parameters (the discriminator's update is unchanged). The ED's
    derivative is computed once per step, on the generated batch. Random jitter (a crop of
    a resized pair) is refused with the ED term: a cropped density is not the density of
    the cropped potential. Flips and D4 augmentation commute with the ED and are allowed.

    With a `mesh` (`qdjax.parallel.batch_mesh`) of D devices the step is data-parallel: it is
    jitted with the batch split over the mesh (`qdjax.parallel.batch_sharding`) and the state,
    key and metrics replicated (`qdjax.parallel.replicated`). XLA partitions the program, so
    the means over the batch (losses, batch-norm statistics) are over the whole global batch
    and the result equals that of one device up to float32 rounding. The batch size must be a
    multiple of D (ValueError otherwise). Without a mesh (default) the step runs where its
    arguments are, on one device.

    Returns:
      ``train_step(state, batch, key) -> (state, metrics)`` where
        state: `TrainState` with ``state.config == config``;
        batch: (inputs, targets), (B, S, S, C_in) and (B, S, S, C_out) (or (B, S, S) for
          one channel), values in [-1, 1], any float dtype (cast to float32);
        key: PRNG key for augmentation and dropout (use a new key per step);
        metrics: dict of float32 scalars `METRIC_NAMES`: g_loss (total generator loss),
          g_gan, g_l1, d_loss, d_real / d_fake (mean discriminator probability on real /
          generated pairs); with config.lambda_d4 > 0 also `D4_METRIC_NAMES`: g_d4 (the
          D4-consistency term `d4_consistency`, unweighted); with an ED term also
          `ED_METRIC_NAMES`: g_ed (L_ED, unweighted),
          ed_l2 and ed_charge (`qdjax.ml.physics.ed_term_loss`).
      The same (state, batch, key) always gives the same result; nothing outside the
      arguments is read or written. Batch norm, if configured, uses batch statistics and
      updates its running averages in the returned state.
    """
    if not isinstance(config, Pix2PixConfig):
        raise ValueError(f"make_train_step needs a Pix2PixConfig, got {type(config)}")
    if mesh is not None and not isinstance(mesh, jax.sharding.Mesh):
        raise ValueError(f"mesh must be a jax.sharding.Mesh or None, got {type(mesh)}")
    _check_ed_term(config, ed_term)
    return _make_train_step(config, mesh, ed_term)


def _check_ed_term(config: Pix2PixConfig, ed_term: EDTerm | None) -> None:
    if ed_term is None:
        return
    if not isinstance(ed_term, EDTerm):
        raise ValueError(f"ed_term must be a qdjax.ml.physics.EDTerm or None, got {type(ed_term)}")
    g = config.generator
    if g.in_channels != 1 or g.out_channels != 1 or g.density_norm is not None:
        raise ValueError("the ED term needs a density -> potential generator (one channel in and out, tanh output)")
    if g.image_size != ed_term.ed_config.grid:
        raise ValueError(f"the ED term's grid ({ed_term.ed_config.grid}) differs from the image size ({g.image_size})")
    if config.jitter_resize > g.image_size:
        raise ValueError("the ED term cannot be combined with random jitter (a cropped density is not the "
                         "density of the cropped potential); use jitter_resize = image_size")  # fmt: skip


def _step_gradients(config: Pix2PixConfig, ed_term: EDTerm | None) -> Callable:
    """``(state, x, y, dropout_key) -> (g_grads, d_grads, (g_stats, d_stats), metrics)``: the
    gradients of one step on an (already augmented) float32 batch (B, S, S, C), not jitted.

    g_grads = d (L_G + w L_ED) / d theta_G and d_grads = d L_D / d theta_D, both taken at the
    same parameters; the ED's derivative is pulled back through the generator as a
    cotangent on the generated images (one ED derivative per step).
    """
    g_def = _generator_graphdef(config.generator)
    d_def = _discriminator_graphdef(config.discriminator)

    def losses(g_params, d_params, g_stats, d_stats, x, y, dropout_key):
        gen = nnx.merge(g_def, g_params, g_stats)
        disc = nnx.merge(d_def, d_params, d_stats)
        fake = gen(x, train=True, dropout_key=dropout_key)
        real_logits = disc(jnp.concatenate([x, y], axis=-1), train=True)
        fake_logits = disc(jnp.concatenate([x, fake], axis=-1), train=True)
        g_total, g_gan, g_l1 = generator_loss(fake_logits, fake, y, config.lambda_l1)
        d_total = discriminator_loss(real_logits, fake_logits)
        metrics = {
            "g_gan": g_gan,
            "g_l1": g_l1,
            "d_loss": d_total,
            "d_real": jnp.mean(jax.nn.sigmoid(real_logits)),
            "d_fake": jnp.mean(jax.nn.sigmoid(fake_logits)),
        }
        if config.lambda_d4 > 0:
            # the transformed images pass the generator as `predict` runs it (no dropout,
            # batch norm's running averages), so sg(...) averages to predict(symmetrize=True)
            d4_key = jax.random.fold_in(dropout_key, 0xD4)
            g_d4 = d4_consistency(lambda z: gen(z, train=False), x, fake, d4_key)
            g_total = g_total + config.lambda_d4 * g_d4
            metrics["g_d4"] = g_d4
        metrics["g_loss"] = g_total
        new_stats = (
            nnx.to_pure_dict(nnx.state(gen, nnx.BatchStat)),
            nnx.to_pure_dict(nnx.state(disc, nnx.BatchStat)),
        )
        return (g_total, d_total, fake), (new_stats, metrics)

    def gradients(state: TrainState, x, y, dropout_key):
        fn = functools.partial(losses, g_stats=state.g_stats, d_stats=state.d_stats, x=x, y=y, dropout_key=dropout_key)
        (_, _, fake), vjp_fn, (stats, metrics) = jax.vjp(fn, state.g_params, state.d_params, has_aux=True)
        one, zero, no_fake = jnp.ones((), _F32), jnp.zeros((), _F32), jnp.zeros_like(fake)
        fake_cotangent = no_fake
        if ed_term is not None:  # w dL_ED/d fake, pulled back through the generator below
            ed_loss, ed_vjp, ed_metrics = jax.vjp(lambda f: ed_term_loss(f, x, ed_term), fake, has_aux=True)
            (fake_cotangent,) = ed_vjp(jnp.asarray(ed_term.weight, ed_loss.dtype))
            fake_cotangent = fake_cotangent.astype(fake.dtype)
            ed_loss = ed_loss.astype(_F32)
            metrics = {**metrics, "g_loss": metrics["g_loss"] + ed_term.weight * ed_loss, "g_ed": ed_loss, **ed_metrics}
        g_grads, _ = vjp_fn((one, zero, fake_cotangent))  # d (L_G + w L_ED) / d theta_G
        _, d_grads = vjp_fn((zero, one, no_fake))  # d L_D / d theta_D
        return g_grads, d_grads, stats, metrics

    return gradients


@functools.lru_cache(maxsize=16)
def _make_train_step(config: Pix2PixConfig, mesh: jax.sharding.Mesh | None, ed_term: EDTerm | None) -> Callable:
    tx = _optimizer(config)
    gcfg = config.generator
    gradients = _step_gradients(config, ed_term)

    def train_step(state: TrainState, batch, key):
        if state.config != config:
            raise ValueError("train_step was built for another Pix2PixConfig than state.config")
        inputs, targets = batch
        x = _as_images(inputs, gcfg.in_channels, "batch inputs", gcfg.image_size)
        y = _as_images(targets, gcfg.out_channels, "batch targets", gcfg.image_size)
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"inputs and targets batch sizes differ: {x.shape[0]} != {y.shape[0]}")
        k_aug, k_drop = jax.random.split(key)
        x, y = augment(x, y, k_aug, config)
        g_grads, d_grads, (g_stats, d_stats), metrics = gradients(state, x, y, k_drop)
        g_updates, g_opt = tx.update(g_grads, state.g_opt, state.g_params)
        d_updates, d_opt = tx.update(d_grads, state.d_opt, state.d_params)
        new_state = state.replace(
            step=state.step + 1,
            g_params=optax.apply_updates(state.g_params, g_updates),
            g_stats=g_stats,
            d_params=optax.apply_updates(state.d_params, d_updates),
            d_stats=d_stats,
            g_opt=g_opt,
            d_opt=d_opt,
        )
        return new_state, metrics

    if mesh is None:
        return jax.jit(train_step)
    state_sharding, batch_sharding = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    return jax.jit(
        train_step,
        in_shardings=(state_sharding, batch_sharding, state_sharding),
        out_shardings=(state_sharding, state_sharding),
    )


# ----------------------------------------------------------------------------- predict


@functools.lru_cache(maxsize=64)
def _predict_fn(g_def, symmetrize: bool):
    """Jitted inference function for one generator graph (a compiled-function cache)."""

    def apply(params, stats, x):
        gen = nnx.merge(g_def, params, stats)
        if not symmetrize or gen.config.equivariant:  # an equivariant generator is its own average
            return gen(x, train=False)
        return d4_average(lambda z: gen(z, train=False), x)

    return jax.jit(apply)


def predict(
    model_state: TrainState | UNetGenerator,
    inputs: ArrayLike,
    symmetrize: bool = False,
    *,
    batch_size: int = 128,
) -> np.ndarray:
    """Generator output for a set of input images (inference mode: no dropout, batch norm
    with its running averages).

    With ``symmetrize=True`` the output is averaged over the 8 symmetries T of the square:
    mean_T T^-1 G(T x). The result is exactly equivariant, predict(T x) = T predict(x)
    (up to float32 rounding of the average), as the map V -> n is.

    Args:
      model_state: a `TrainState` or a `UNetGenerator`.
      inputs: (S, S), (B, S, S) (one channel) or (B, S, S, C_in) images in [-1, 1].
      symmetrize: average over the group D4 (8 generator evaluations per image).
      batch_size: images per generator call (the last chunk is padded; one compilation).
    Returns:
      NumPy float32 array with the layout of `inputs` and C_out channels (channel axis
      dropped for (S, S) / (B, S, S) inputs when C_out == 1), values in (-1, 1).
    """
    if isinstance(model_state, TrainState):
        gcfg = model_state.config.generator
        g_def = _generator_graphdef(gcfg)
        params, stats = model_state.g_params, model_state.g_stats
    elif isinstance(model_state, UNetGenerator):
        gcfg = model_state.config
        g_def, params, stats = nnx.split(model_state, nnx.Param, nnx.BatchStat)
        params, stats = nnx.to_pure_dict(params), nnx.to_pure_dict(stats)
    else:
        raise ValueError(f"predict needs a TrainState or a UNetGenerator, got {type(model_state)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    x = np.asarray(inputs, dtype=np.float32)
    ndim = x.ndim
    if ndim == 2:
        x = x[None]
    if x.ndim == 3 and gcfg.in_channels == 1:
        x = x[..., None]
    s = gcfg.image_size
    if x.ndim != 4 or x.shape[1:] != (s, s, gcfg.in_channels):
        raise ValueError(
            f"inputs must have shape (B, {s}, {s}, {gcfg.in_channels}) or (B, {s}, {s}), got {np.shape(inputs)}"
        )
    if x.shape[0] == 0:
        raise ValueError("predict needs at least one image")
    fn = _predict_fn(g_def, bool(symmetrize))
    n = x.shape[0]
    chunk = min(batch_size, n)
    outs = []
    for start in range(0, n, chunk):
        xb = x[start : start + chunk]
        m = xb.shape[0]
        if m < chunk:
            xb = np.concatenate([xb, np.zeros((chunk - m,) + xb.shape[1:], xb.dtype)])
        outs.append(np.asarray(fn(params, stats, xb))[:m])
    y = np.concatenate(outs)
    if ndim < 4 and gcfg.out_channels == 1:
        y = y[..., 0]
    if ndim == 2:
        y = y[0]
    return y


# ----------------------------------------------------------------------------- fit


class FitResult(NamedTuple):
    """Result of `fit`.

    Attributes:
      state: `TrainState` after the last step.
      history: dict of lists: "step" (1-based step numbers) and one list per metric of
        `METRIC_NAMES` (one float per step), "val_step" and "val_r2" (one per evaluation;
        R^2 of the generator on the validation set).
      best_step: step with the highest validation R^2 (None without evaluations).
    """

    state: TrainState
    history: dict
    best_step: int | None


def _set_r2(pred: np.ndarray, ref: np.ndarray) -> float:
    """R^2 of a set of (N, S, S, C) images with the per-pixel mean map of `ref` (float64).

    `qdjax.metrics.r2` on (N, S, S * C): one R^2 over all pixels and channels.
    """
    n, s = ref.shape[0], ref.shape[1]
    pred = np.asarray(pred, np.float64).reshape(n, s, -1)
    ref = np.asarray(ref, np.float64).reshape(n, s, -1)
    return float(qd_metrics.r2(pred, ref))


def batch_indices(data_key: jax.Array, step: int, batch_size: int, n: int) -> np.ndarray:
    """Indices of the training images used at `step` (0-based): a pure function of its args.

    The training set is visited in epochs; epoch e uses the permutation
    ``jax.random.permutation(jax.random.fold_in(data_key, e), n)``; step s takes positions
    s * batch_size ... (s + 1) * batch_size - 1 of the concatenated epochs.

    Returns:
      int64 array (batch_size,) of indices in [0, n).
    """
    pos = step * batch_size + np.arange(batch_size)
    epochs = pos // n
    out = np.empty(batch_size, np.int64)
    for e in np.unique(epochs):
        perm = np.asarray(jax.random.permutation(jax.random.fold_in(data_key, int(e)), n))
        sel = epochs == e
        out[sel] = perm[pos[sel] % n]
    return out


def _as_key(key: ArrayLike | int) -> jax.Array:
    """A typed PRNG key from an int seed, a typed key or a raw uint32 key."""
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return jax.random.key(int(key))
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(f"key must be a single PRNG key, got shape {key.shape}")
        return key
    if key.dtype != jnp.uint32 or key.shape != (2,):
        raise ValueError(f"key must be a PRNG key, a raw uint32 (2,) key or an int seed, got {key.dtype} {key.shape}")
    return jax.random.wrap_key_data(key)


def _prepare_set(x: ArrayLike, channels: int, size: int, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 3 and channels == 1:
        x = x[..., None]
    if x.ndim != 4 or x.shape[1:] != (size, size, channels) or x.shape[0] < 1:
        raise ValueError(
            f"{name} must have shape (N >= 1, {size}, {size}, {channels}) or (N, {size}, {size}), "
            f"got {np.shape(x)}"
        )
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains non-finite values")
    return x


def _fingerprint(*arrays: np.ndarray) -> str:
    """sha256 of the shapes and float32 bytes of the data sets (detects a changed data set on resume)."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(repr(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


class NonFiniteError(ValueError):
    """Training met a NaN or an inf: in a loss, the updated parameters or an evaluation metric.

    The message is one line naming the step, the term and the last good checkpoint.
    """


@jax.jit
def _all_finite(trees: dict) -> dict:
    """{name: pytree} -> {name: bool scalar}: whether every leaf of each pytree is finite."""
    return {
        name: jnp.all(jnp.asarray([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)] or [True]))
        for name, tree in trees.items()
    }


def _first_nonfinite(values: dict, names: Sequence[str]) -> str | None:
    """The first of `names` whose value in `values` is a number that is not finite, or None."""
    for name in names:
        v = values.get(name)
        if isinstance(v, (int, float, np.number, np.ndarray)) and np.size(v) == 1 and not np.isfinite(float(v)):
            return f"{name} = {float(v)}"
    return None


def fit(
    config: Pix2PixConfig,
    train_inputs: ArrayLike,
    train_targets: ArrayLike,
    val_inputs: ArrayLike,
    val_targets: ArrayLike,
    *,
    steps: int,
    key: ArrayLike | int,
    eval_every: int = 1000,
    checkpoint_dir: str | None = None,
    symmetrize_eval: bool = False,
    metadata: dict | None = None,
    progress: bool = True,
    on_eval: Callable[[TrainState], dict] | None = None,
    devices: Sequence[jax.Device] | None = None,
    ed_term: EDTerm | None = None,
    init_from: TrainState | None = None,
    val_score: Callable[[TrainState], float] | None = None,
) -> FitResult:
    """Trains pix2pix on in-memory image pairs, evaluating R^2 on a validation set.

    The run is a deterministic function of (config, data, key, step): from `key` come the
    initial weights, the data order (`batch_indices`) and the per-step keys
    ``fold_in(step_key, step)``. With `checkpoint_dir`, a checkpoint is written at every
    evaluation (latest and best validation R^2 are kept, see `qdjax.ml.checkpoint`), and a
    later call with the same directory resumes from the latest checkpoint and follows the
    same trajectory as an uninterrupted run: interrupt at any time and call again (a step whose
    save was cut off before its checksum record was written is discarded and recomputed).

    Data parallelism: each step's batch is split over `devices` (default: all of
    ``jax.devices()``) and the state is replicated on them (`make_train_step` with
    ``qdjax.parallel.batch_mesh(devices)``); the losses and the trajectory are those of one
    device up to float32 rounding, and the data order and the per-step keys do not depend
    on the number of devices. ``config.batch_size`` must be a multiple of the number of
    devices. With several processes (after ``jax.distributed.initialize()``), every process
    calls `fit` with the same arguments and data; the default `devices` then spans all
    processes. With one device, the step runs as `make_train_step(config)` on it.

    Args:
      config: `Pix2PixConfig` (batch size, optimiser, augmentation, networks).
      train_inputs, train_targets: (N, S, S[, C]) arrays in [-1, 1] (see
        `qdjax.ml.scaling`); cast to float32.
      val_inputs, val_targets: (M, S, S[, C]) arrays in [-1, 1].
      steps: total number of training steps (including those of a resumed run).
      key: PRNG key or int seed.
      eval_every: evaluate (and checkpoint) every this many steps, and after the last step.
      checkpoint_dir: directory for Orbax checkpoints, or None.
      symmetrize_eval: validate with the D4-averaged generator (`predict(..., symmetrize=True)`).
      metadata: JSON-serialisable dict stored in each checkpoint (e.g. scalers' dicts).
      progress: show a tqdm progress bar.
      on_eval: optional function of the state called at every evaluation; it returns a dict
        of JSON-serialisable values (e.g. test-set R^2) appended to ``history[name]``.
      devices: devices to train on, data-parallel (default ``jax.devices()``).
      ed_term: optional `qdjax.ml.physics.EDTerm`: train an n_int -> V generator through
        the ED (`make_train_step`); its settings are stored in the checkpoints and a resumed
        run must use the same ones.
      init_from: optional `TrainState` whose networks (parameters and batch-norm averages,
        not the optimiser states or the step) start the run instead of a fresh
        initialisation: fine-tuning. Its networks must have the architecture of `config`,
        except that a plain U-Net's weights may start an equivariant generator
        (`GeneratorConfig.equivariant`) and the other way round.
        Ignored when resuming from `checkpoint_dir`.
      val_score: optional function of the state giving the validation score that is
        recorded as "val_r2" and selects the best checkpoint (default: R^2 of the
        generator's output on the validation set; with an ED term, e.g. the R^2 of the
        ED-recomputed validation densities).
    Returns:
      `FitResult` (state, history, best_step). R^2 is `qdjax.metrics.r2` with the per-pixel
      mean map of the validation targets (the set being scored); it is the same on [-1, 1]
      images as in physical units.
    Non-finite values: after every step the parameters and batch-norm averages are checked
    for NaN/inf on the device (one flag per network, read with the losses at each evaluation).
    At an evaluation, the first step whose losses or updated parameters are not finite, or a
    validation R^2 or `on_eval` number that is not finite, stops training with
    `NonFiniteError`; that state is not checkpointed, so the newest checkpoint on disk is the
    last good one.

    Raises:
      ValueError: bad shapes or values; a discriminator whose logit map is empty on these
        images; a batch size that is not a multiple of the number of devices; a checkpoint
        in `checkpoint_dir` that was written for another config, key, data set or ED term,
        or whose files do not match their recorded sha256; an `init_from` state of another
        architecture.
      NonFiniteError (a ValueError): a non-finite loss, parameter or metric (see above).
    """
    from tqdm.auto import tqdm

    if not isinstance(config, Pix2PixConfig):
        raise ValueError(f"fit needs a Pix2PixConfig, got {type(config)}")
    for name, v in (("steps", steps), ("eval_every", eval_every)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    gcfg = config.generator
    s = gcfg.image_size
    if discriminator_output_size(config.discriminator, s) < 1:  # its losses would be means of nothing (NaN)
        raise ValueError(
            f"the discriminator gives no logits on {s} x {s} images (its patch is larger than the image); "
            "choose a smaller patch preset (e.g. patch34, patch16 or pixel1)"
        )
    xt = _prepare_set(train_inputs, gcfg.in_channels, s, "train_inputs")
    yt = _prepare_set(train_targets, gcfg.out_channels, s, "train_targets")
    xv = _prepare_set(val_inputs, gcfg.in_channels, s, "val_inputs")
    yv = _prepare_set(val_targets, gcfg.out_channels, s, "val_targets")
    if xv.shape[0] < 2:
        raise ValueError(f"the validation set needs at least 2 images for R^2, got {xv.shape[0]}")
    if xt.shape[0] != yt.shape[0] or xv.shape[0] != yv.shape[0]:
        raise ValueError(
            f"inputs and targets must have the same number of images: train {xt.shape[0]} vs {yt.shape[0]}, "
            f"val {xv.shape[0]} vs {yv.shape[0]}"
        )
    _check_ed_term(config, ed_term)
    # the group average (GeneratorConfig.equivariant) leaves the U-Net's weights as they are
    unet = lambda g: dataclasses.replace(g, equivariant=False)  # noqa: E731
    if init_from is not None and (
        not isinstance(init_from, TrainState)
        or unet(init_from.config.generator) != unet(config.generator)
        or init_from.config.discriminator != config.discriminator
    ):
        raise ValueError("init_from must be a TrainState whose generator (up to `equivariant`) and discriminator "
                         "have the architecture of config")  # fmt: skip
    mesh = parallel.batch_mesh(devices)
    parallel.check_divisible(config.batch_size, mesh)
    base_key = _as_key(key)
    key_data = np.asarray(jax.random.key_data(base_key))
    init_key, data_key, step_key = jax.random.split(base_key, 3)
    fingerprint = _fingerprint(xt, yt, xv, yv)

    metric_names = (METRIC_NAMES + (D4_METRIC_NAMES if config.lambda_d4 > 0 else ())
                    + (ED_METRIC_NAMES if ed_term is not None else ()))  # fmt: skip
    ed_meta = None if ed_term is None else ed_term.to_dict()
    history: dict[str, list] = {"step": [], **{m: [] for m in metric_names}, "val_step": [], "val_r2": []}
    ckpt = None
    state = None
    if checkpoint_dir is not None:
        ckpt = Checkpointer(checkpoint_dir, config)
        ckpt.discard_interrupted()  # a kill between Orbax's commit and the checksum record
        if ckpt.latest_step() is not None:
            restored = ckpt.restore()
            if not np.array_equal(restored.key, key_data):
                raise ValueError(
                    f"the checkpoint in {checkpoint_dir} was written with another key "
                    f"({restored.key.tolist()} != {key_data.tolist()}); use the original key or a new directory"
                )
            if restored.metadata.get("data_fingerprint") != fingerprint:
                raise ValueError(
                    f"the checkpoint in {checkpoint_dir} was written for other training/validation data; "
                    "use the original data or a new directory"
                )
            if restored.metadata.get("ed_term") != ed_meta:
                raise ValueError(
                    f"the checkpoint in {checkpoint_dir} was written with other ED-term settings "
                    f"({restored.metadata.get('ed_term')} != {ed_meta}); use the original settings or a new directory"
                )
            state, history = restored.state, restored.history
    if state is None:
        state = init_state(config, init_key)
        if init_from is not None:
            state = state.replace(
                g_params=init_from.g_params, g_stats=init_from.g_stats,
                d_params=init_from.d_params, d_stats=init_from.d_stats,
            )  # fmt: skip
    start = int(state.step)
    if mesh.size > 1:
        train_step = make_train_step(config, mesh, ed_term)
        state = parallel.replicate(state, mesh)
        place = functools.partial(parallel.global_batch, mesh=mesh)
    else:  # uncommitted host arrays go to the device the state is on
        train_step = make_train_step(config, ed_term=ed_term)
        device = mesh.devices.flat[0]
        if device != jax.devices()[0]:
            state = jax.device_put(state, device)
        place = np.asarray
    n = xt.shape[0]
    b = config.batch_size
    ckpt_meta = dict(metadata or {})
    ckpt_meta["data_fingerprint"] = fingerprint
    if ed_meta is not None:
        ckpt_meta["ed_term"] = ed_meta

    last_good = start if ckpt is not None and start > 0 else None

    def stop(step: int, what: str):
        kept = (f"the last good checkpoint is step {last_good} in {checkpoint_dir}" if last_good is not None
                else "no checkpoint was written")  # fmt: skip
        raise NonFiniteError(f"training stopped at step {step}: {what}; {kept}; a lower learning rate may help")

    pending: list[tuple[int, dict, dict]] = []
    quiet = not progress or jax.process_index() != 0
    bar = tqdm(total=steps, initial=min(start, steps), disable=quiet, desc="pix2pix", unit="step")
    try:
        for step in range(start, steps):
            idx = batch_indices(data_key, step, b, n)
            state, metrics = train_step(state, (place(xt[idx]), place(yt[idx])), jax.random.fold_in(step_key, step))
            finite = _all_finite({f: getattr(state, f) for f in ("g_params", "d_params", "g_stats", "d_stats")})
            pending.append((step + 1, metrics, finite))
            bar.update(1)
            done = step + 1
            if done % eval_every == 0 or done == steps:
                for st, m, finite in jax.device_get(pending):
                    bad = _first_nonfinite(m, metric_names)
                    if bad is not None:
                        stop(st, f"the loss term {bad}")
                    for name, ok in finite.items():
                        if not ok:
                            stop(st, f"{name} not finite after the update (a non-finite or overflowing gradient)")
                    history["step"].append(int(st))
                    for name in metric_names:
                        history[name].append(float(m[name]))
                pending.clear()
                if val_score is None:
                    r2 = _set_r2(predict(state, xv, symmetrize=symmetrize_eval), yv)
                else:
                    r2 = float(val_score(state))
                if not np.isfinite(r2):
                    stop(done, f"the validation metric val_r2 = {r2}")
                history["val_step"].append(done)
                history["val_r2"].append(r2)
                if on_eval is not None:
                    extra = on_eval(state)
                    bad = _first_nonfinite(extra, list(extra))
                    if bad is not None:
                        stop(done, f"the on_eval metric {bad}")
                    for name, value in extra.items():
                        history.setdefault(name, []).append(value)
                bar.set_postfix(
                    g_l1=f"{history['g_l1'][-1]:.4f}", d_loss=f"{history['d_loss'][-1]:.3f}", val_r2=f"{r2:.4f}"
                )
                if ckpt is not None:
                    ckpt.save(state, key=key_data, val_r2=r2, history=history, metadata=ckpt_meta)
                    last_good = done
    finally:
        bar.close()
        if ckpt is not None:
            ckpt.close()
    best = None
    if history["val_r2"]:
        r2s = np.asarray(history["val_r2"], np.float64)
        r2s = np.where(np.isfinite(r2s), r2s, -np.inf)
        best = int(history["val_step"][int(np.argmax(r2s))])
    return FitResult(state, history, best)
