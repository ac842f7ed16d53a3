"""Reduced-precision matrix products of accelerators, emulated on CPU (test helper).

NVIDIA GPUs run a float32 `dot_general` left at default precision as TF32 (operands rounded
to 10 mantissa bits, float32 accumulation); TPUs as one bf16 pass (7 mantissa bits). Inside
`reduced_precision_matmuls(kind)`, the CPU lowering of `dot_general` rounds the float32
operands of every product whose precision is left at default with HLO `reduce_precision`
(8 exponent bits, the mantissa bits of `kind`), the way the hardware behaves; products that
ask for HIGHEST (or another non-default precision) are lowered unchanged.
"""

from __future__ import annotations

import contextlib

import jax
import numpy as np
from jax._src.interpreters import mlir
from jax._src.lib.mlir.dialects import hlo

MANTISSA_BITS = {"tf32": 10, "bf16": 7}


def _is_default(precision) -> bool:
    if precision is None:
        return True
    parts = precision if isinstance(precision, tuple) else (precision,)
    return all(p is None or getattr(p, "name", str(p)) == "DEFAULT" for p in parts)


@contextlib.contextmanager
def reduced_precision_matmuls(kind: str):
    """Emulate `kind` ("tf32" or "bf16") matrix products on CPU for programs compiled inside."""
    bits = MANTISSA_BITS[kind]
    table = mlir._platform_specific_lowerings["cpu"]
    saved = table[jax.lax.dot_general_p]

    def rounded(x, aval):
        if aval.dtype != np.float32:
            return x
        return hlo.reduce_precision(x, mlir.i32_attr(8), mlir.i32_attr(bits))

    def rule(ctx, lhs, rhs, *, precision, **params):
        if _is_default(precision):
            lhs, rhs = (rounded(x, aval) for x, aval in zip((lhs, rhs), ctx.avals_in))
        return saved.rule(ctx, lhs, rhs, precision=precision, **params)

    mlir.register_lowering(jax.lax.dot_general_p, rule, platform="cpu")
    jax.clear_caches()
    try:
        yield
    finally:
        table[jax.lax.dot_general_p] = saved
        jax.clear_caches()
