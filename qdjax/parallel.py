"""Data parallelism over devices: a one-axis mesh, its two shardings, global batches.

A batch of independent instances (ED potentials, training image pairs) is split over the
devices of a `jax.sharding.Mesh` with one axis, ``"batch"``: arrays whose leading axis is the
batch get ``NamedSharding(mesh, P("batch"))`` (device k holds rows k * B / D ... (k + 1) *
B / D - 1 of a batch of B on D devices), everything else (network parameters, optimiser
state, keys) is replicated, ``NamedSharding(mesh, P())``. A program jitted with these
shardings is partitioned by XLA (GSPMD): a mean over the batch axis, such as a loss or a
batch-norm statistic, is the mean over the whole global batch, so the result is that of one
device up to the order of floating-point sums.

Several processes (hosts), after ``jax.distributed.initialize()``: a mesh over
``jax.devices()`` spans the devices of all processes. Every process runs the same program
and passes the same full host copy of each global batch to `global_batch`, which moves only
the rows of that process's own devices.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["BATCH_AXIS", "batch_mesh", "replicated", "batch_sharding", "check_divisible", "global_batch", "replicate"]

#: Name of the mesh axis that batches are split over.
BATCH_AXIS = "batch"


def batch_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A one-axis mesh ``Mesh(devices, ("batch",))``.

    Args:
      devices: distinct devices, in mesh order (default ``jax.devices()``: every local device
        in a single process; every device of every process after
        ``jax.distributed.initialize``).
    Raises:
      ValueError: `devices` is empty or names a device twice.
    """
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices is empty")
    if len(set(devices)) != len(devices):
        raise ValueError(f"devices must be distinct, got {devices}")
    return Mesh(np.array(devices), (BATCH_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device of `mesh` holds the whole array."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """The leading (batch) axis split evenly over the devices of `mesh`."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXIS))


def check_divisible(batch_size: int, mesh: Mesh, name: str = "batch size") -> None:
    """Raises ValueError unless `batch_size` splits evenly over the devices of `mesh`."""
    if batch_size % mesh.size:
        raise ValueError(
            f"the {name} ({batch_size}) must be a multiple of the number of devices ({mesh.size}): "
            f"choose a {name} divisible by {mesh.size} or train on fewer devices"
        )


def global_batch(host_array: np.ndarray, mesh: Mesh) -> jax.Array:
    """A global array of `host_array` split over `mesh` along its leading axis.

    Args:
      host_array: NumPy array (B, ...) with B divisible by ``mesh.size``; with several
        processes, every process passes the same full array (only the rows of its own
        devices are copied to them).
    Returns:
      jax.Array (B, ...) with sharding `batch_sharding(mesh)`.
    """
    host_array = np.asarray(host_array)
    check_divisible(host_array.shape[0], mesh)
    return jax.make_array_from_callback(host_array.shape, batch_sharding(mesh), lambda index: host_array[index])


def replicate(tree: Any, mesh: Mesh) -> Any:
    """`tree` with every array leaf replicated on all devices of `mesh` (`replicated`).

    With several processes, every process must pass the same values.
    """
    return jax.device_put(tree, replicated(mesh))
