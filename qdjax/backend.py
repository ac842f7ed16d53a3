"""Backend policy: the one place where the layout of an ED program depends on the platform.

The exact diagonalisation has two layouts of the same mathematics:

- **vectorized** (GPU, TPU): a batch of potentials is one program, the per-instance solve
  under `jax.vmap`. Batched eigh, Cholesky and QR; every iterative solver's while loop runs
  until its slowest lane has converged, each lane frozen once it has. No loop over instances.
- **sequential** (CPU): a batch is solved one potential after another (`jax.lax.map`), and
  transposes feeding a matrix product are materialised (XLA:CPU would fold them into the
  product as a contraction over the leading axis, which it runs slower than a row-major
  product).

`qdjax.EDConfig.batching` picks the layout: ``"auto"`` (default) is sequential when
`jax.default_backend()` is ``"cpu"`` and vectorized elsewhere; ``"vectorized"`` and
``"sequential"`` force one. Both layouts run on every backend and agree to rounding.

On CPU, in both layouts, the LAPACK-backed kernels (eigh, Cholesky, triangular solve, QR)
run one matrix at a time under `jax.vmap` (`jax.custom_batching.sequential_vmap`; see
`per_instance_kernels`), and the independent many-body solves of one potential wait for one
another (`after`): jaxlib's batched CPU kernels split a batch over XLA's intra-op thread pool
and block inside it, and a 2-thread pool hung with them (two side by side, or one inside a
while loop; docs/data.md, "Known issues"). So the vectorized program on CPU differs from the
accelerator program only in those kernels: tests/test_backend.py runs it on CPU against the
sequential layout, and reads the program traced for a GPU (`platform` patched) for loops over
the batch. OpenBLAS's own threads run on one thread while `qdjax.data.generate` works
(`single_threaded_blas`). Nothing CPU-specific lives outside this module.

Precision: accelerators run float32 matrix products at reduced precision by default (TF32 on
NVIDIA GPUs, one bf16 pass on TPUs). `full_precision` (dtype) makes every contraction traced
inside it ask for ``Precision.HIGHEST`` when the dtype has less than 64 bits; the ED, the
inverse scores and the physical metrics trace under it, so float32 physics keeps float32
accuracy on every backend. float64 products are left at default: they are float64 wherever
float64 exists.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

#: Values of `qdjax.EDConfig.batching`.
BATCHING = ("auto", "vectorized", "sequential")


def platform() -> str:
    """The platform a program traced now runs on: ``jax.default_backend()`` ("cpu", "gpu", "tpu")."""
    return jax.default_backend()


def sequential(batching: str) -> bool:
    """Whether the sequential (CPU) layout is used for `batching` (an `EDConfig.batching` value)
    on the current platform."""
    if batching not in BATCHING:
        raise ValueError(f"batching must be one of {BATCHING}, got {batching!r}")
    if batching == "auto":
        return platform() == "cpu"
    return batching == "sequential"


def per_instance_kernels(batching: str) -> bool:
    """Whether the LAPACK-backed kernels of `qdjax.linalg` run one matrix at a time under vmap
    (and a vmapped Rayleigh-Ritz keeps its fallback a branch that is not evaluated): in the
    sequential layout, and on CPU in either layout (module docstring)."""
    return sequential(batching) or platform() == "cpu"


def map_instances(f: Callable, xs, is_sequential: bool):
    """f over the leading axis of the pytree xs: `jax.lax.map` (one instance after another)
    when `is_sequential`, else `jax.vmap` (one batched program)."""
    if is_sequential:
        return jax.lax.map(f, xs)
    return jax.vmap(f)(xs)


def per_instance(f: Callable, is_sequential: bool) -> Callable:
    """f itself, or, when `is_sequential`, f with a batching rule that runs the instances of a
    vmapped call one after another (`jax.custom_batching.sequential_vmap`)."""
    return jax.custom_batching.sequential_vmap(f) if is_sequential else f


def _eigh(a: jax.Array) -> tuple[jax.Array, jax.Array]:
    return jnp.linalg.eigh(a)


_sequential_eigh = jax.custom_batching.sequential_vmap(_eigh)


def eigh(a: jax.Array, is_sequential: bool) -> tuple[jax.Array, jax.Array]:
    """``jnp.linalg.eigh`` of a symmetric matrix (n, n) -> (w (n,), v (n, n)); under vmap one
    batched call, or one matrix after another when `is_sequential`. Not differentiable through
    JAX's rule where it is used: callers write the derivative out (custom JVPs)."""
    return (_sequential_eigh if is_sequential else _eigh)(a)


def _qr(a: jax.Array) -> jax.Array:
    return jnp.linalg.qr(a)[0]


_sequential_qr = jax.custom_batching.sequential_vmap(_qr)


def qr(a: jax.Array, is_sequential: bool) -> jax.Array:
    """Q of the reduced QR factorisation of a (m, n), m >= n: (m, n) orthonormal columns; under
    vmap one batched call, or one matrix after another when `is_sequential`."""
    return (_sequential_qr if is_sequential else _qr)(a)


def transposed(a: jax.Array, is_sequential: bool) -> jax.Array:
    """a.T, materialised (an optimization barrier) in the sequential layout, so that XLA:CPU runs
    the next product row-major; a plain transpose otherwise."""
    return jax.lax.optimization_barrier(a.T) if is_sequential else a.T


def after(x, previous):
    """x, made to wait for `previous` on CPU (an optimization barrier: two solves never run side
    by side there, module docstring); x unchanged elsewhere."""
    if platform() != "cpu":
        return x
    x, _ = jax.lax.optimization_barrier((x, previous))
    return x


def default_call_batch(device_platform: str) -> int:
    """Potentials per device in one call of the ED program made by `qdjax.data.generate` when the
    caller does not say: 1 on CPU (the sequential layout gains nothing from wider calls, and
    the datasets made so far used 1), 16 on accelerators."""
    return 1 if device_platform == "cpu" else 16


def full_precision(dtype):
    """Context in which every matrix product traced asks for ``Precision.HIGHEST`` if `dtype` (of
    the arithmetic) has less than 64 bits; a context that changes nothing for float64."""
    if jnp.finfo(dtype).bits >= 64:
        return contextlib.nullcontext()
    return jax.default_matmul_precision("highest")


def host_blas_single_threaded():
    """Context: the BLAS libraries loaded in the process (NumPy's, SciPy's, jaxlib's) on one
    thread, restored after (threadpoolctl). Host-side tables built once per configuration
    (e.g. `qdjax.coulomb.factored_tables`) are made under it, so that their bits do not depend
    on the thread count at the moment they are first built."""
    import threadpoolctl

    return threadpoolctl.threadpool_limits(limits=1, user_api="blas")


@contextlib.contextmanager
def single_threaded_blas():
    """Run a block with every loaded BLAS (OpenBLAS, MKL, BLIS) on one thread; the thread
    counts are restored after.

    JAX's CPU LAPACK kernels (eigh) call SciPy's OpenBLAS, whose own threads change the last
    bits of the results with the core count and, on a shared few-core CPU, slow the small
    eigendecompositions of the ED down many times (docs/data.md, "Known issues"). XLA still
    runs independent solves in parallel. The limits are set by threadpoolctl
    (``threadpool_limits(limits=1, user_api="blas")``) on the libraries loaded when the block
    starts; JAX's CPU LAPACK is loaded first. Libraries threadpoolctl does not know run
    unchanged.
    """
    cpu = jax.devices("cpu")[0]
    jax.block_until_ready(jax.numpy.linalg.eigh(jax.device_put(np.eye(2), cpu)))  # loads CPU LAPACK
    with host_blas_single_threaded():
        yield
