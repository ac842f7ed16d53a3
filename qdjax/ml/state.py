"""The pix2pix training state: what a training step reads and writes, and how it starts.

`TrainState` is a pytree of plain dicts of float32 arrays (the two networks' parameters and
batch-norm averages) and Optax Adam states, with the `Pix2PixConfig` as static metadata.
`init_state` builds a fresh one; `generator_from_state` and `discriminator_from_state` turn it
back into NNX modules. The optimiser (`optimizer`, `learning_rate_schedule`) lives here because
its state is part of the training state.

This module is what both the training loop (`qdjax.ml.train`) and the checkpoints
(`qdjax.ml.checkpoint`) build on; it imports neither. The names are re-exported by
`qdjax.ml.train`.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct
from jax.typing import ArrayLike

from qdjax.ml.models import (
    DiscriminatorConfig,
    GeneratorConfig,
    PatchDiscriminator,
    Pix2PixConfig,
    UNetGenerator,
)

__all__ = [
    "METRIC_NAMES",
    "D4_METRIC_NAMES",
    "TrainState",
    "init_state",
    "generator_from_state",
    "discriminator_from_state",
    "learning_rate_schedule",
    "optimizer",
    "generator_graphdef",
    "discriminator_graphdef",
]

#: Per-step metrics of the training step and of a training history (all float32 scalars).
METRIC_NAMES = ("g_loss", "g_gan", "g_l1", "d_loss", "d_real", "d_fake")
#: Metric of the D4-consistency term (Pix2PixConfig.lambda_d4 > 0): its unweighted value.
D4_METRIC_NAMES = ("g_d4",)


@struct.dataclass
class TrainState:
    """Everything a training step reads and writes, as a pytree.

    Attributes:
      step: int32 scalar, number of training steps taken.
      g_params, d_params: nested dicts of float32 arrays, the generator's and the
        discriminator's trainable parameters (``nnx.to_pure_dict`` of their ``nnx.Param``s).
      g_stats, d_stats: nested dicts of float32 arrays, batch-norm running averages (empty
        dicts for instance norm or no norm).
      g_opt, d_opt: Optax Adam states of the two parameter trees.
      config: the `Pix2PixConfig` (static: not a pytree leaf, part of the tree structure).
    """

    step: jax.Array
    g_params: dict
    g_stats: dict
    d_params: dict
    d_stats: dict
    g_opt: Any
    d_opt: Any
    config: Pix2PixConfig = struct.field(pytree_node=False)


@functools.lru_cache(maxsize=64)
def generator_graphdef(config: GeneratorConfig) -> nnx.GraphDef:
    """The generator's static graph (no arrays allocated); cached per hashable config.

    ``nnx.merge(generator_graphdef(c), params, stats)`` rebuilds the module from the pure
    dicts of a `TrainState`.
    """
    abstract = nnx.eval_shape(lambda: UNetGenerator(config, rngs=nnx.Rngs(0)))
    return nnx.split(abstract, nnx.Param, nnx.BatchStat)[0]


@functools.lru_cache(maxsize=64)
def discriminator_graphdef(config: DiscriminatorConfig) -> nnx.GraphDef:
    """The discriminator's static graph; as `generator_graphdef`."""
    abstract = nnx.eval_shape(lambda: PatchDiscriminator(config, rngs=nnx.Rngs(0)))
    return nnx.split(abstract, nnx.Param, nnx.BatchStat)[0]


def learning_rate_schedule(config: Pix2PixConfig):
    """The Adam step size: a float (constant) or an optax schedule step -> step size."""
    if config.decay_steps == 0:
        return config.learning_rate
    return optax.join_schedules(
        [optax.constant_schedule(config.learning_rate),
         optax.linear_schedule(config.learning_rate, 0.0, config.decay_steps)],
        [config.decay_start],
    )  # fmt: skip


def optimizer(config: Pix2PixConfig) -> optax.GradientTransformation:
    """Adam with `learning_rate_schedule`, beta1 and beta2 of `config` (one per network)."""
    return optax.adam(learning_rate_schedule(config), b1=config.beta1, b2=config.beta2)


def _split_pure(module: nnx.Module) -> tuple[dict, dict]:
    _, params, stats = nnx.split(module, nnx.Param, nnx.BatchStat)
    return nnx.to_pure_dict(params), nnx.to_pure_dict(stats)


def init_state(config: Pix2PixConfig, key: ArrayLike) -> TrainState:
    """Freshly initialised networks (weights N(0, 0.02)) and Adam states, step 0.

    Args:
      config: `Pix2PixConfig`.
      key: PRNG key (``jax.random.key`` or ``jax.random.PRNGKey``).
    Returns:
      `TrainState`; all parameters float32.
    """
    if not isinstance(config, Pix2PixConfig):
        raise ValueError(f"init_state needs a Pix2PixConfig, got {type(config)}")
    kg, kd = jax.random.split(key)
    g_params, g_stats = _split_pure(UNetGenerator(config.generator, rngs=nnx.Rngs(params=kg)))
    d_params, d_stats = _split_pure(PatchDiscriminator(config.discriminator, rngs=nnx.Rngs(params=kd)))
    tx = optimizer(config)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        g_params=g_params,
        g_stats=g_stats,
        d_params=d_params,
        d_stats=d_stats,
        g_opt=tx.init(g_params),
        d_opt=tx.init(d_params),
        config=config,
    )


def generator_from_state(state: TrainState) -> UNetGenerator:
    """The generator of a `TrainState` as an NNX module (shares no mutable state with it)."""
    return nnx.merge(generator_graphdef(state.config.generator), state.g_params, state.g_stats)


def discriminator_from_state(state: TrainState) -> PatchDiscriminator:
    """The discriminator of a `TrainState` as an NNX module."""
    return nnx.merge(discriminator_graphdef(state.config.discriminator), state.d_params, state.d_stats)
