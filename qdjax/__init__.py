"""qdjax: differentiable exact diagonalisation of few-electron quantum dots in JAX.

Importing qdjax turns on JAX's 64-bit mode (``jax_enable_x64``) because the exact
diagonalisation runs in float64 by default. This does not change the precision of Flax
models: their parameters default to float32, and ``qdjax.ml`` casts every image it feeds a
network to float32. See docs/theory.md, section "Precision".
"""

import jax

jax.config.update("jax_enable_x64", True)

from qdjax import units  # noqa: E402
from qdjax.config import EDConfig  # noqa: E402
from qdjax import ed, metrics, potentials  # noqa: E402

__version__ = "0.1.0"

__all__ = ["EDConfig", "ed", "metrics", "potentials", "units", "__version__"]
