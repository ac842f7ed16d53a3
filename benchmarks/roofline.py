"""The arithmetic a pix2pix training step needs, against the arithmetic the CPU can do.

    python benchmarks/roofline.py                       # 2 threads (the visible CPUs)
    python benchmarks/roofline.py --threads 1 2 --json roofline.json

Three measurements, which `benchmarks/bench_train.py --roofline` also takes in its own run:

- `step_flops(config)`: floating-point operations of one training step
  (`qdjax.ml.train.make_train_step`) that any implementation must do: 2 x the multiply-adds of
  every convolution and transposed convolution in the forward and backward passes, counting
  only kernel taps that fall on real pixels (not on padding zeros, nor on output pixels that
  a 'SAME' transposed convolution crops). Normalisation, activations, losses and Adam are
  not counted (they are a few operations per element against hundreds per output pixel).
- `fma_peak_gflops(threads)`: the CPU's float32 peak on `threads` cores, a loop of 12
  independent fused multiply-add chains on 64-byte vectors (the widest the compiler targets
  with -march=native), compiled at run time with the system's C compiler and run by one
  Python thread per core (ctypes releases the GIL). No float32 program on this CPU can
  sustain more.
- `gemm_gflops()`: the best rate of a large float32 matrix product in XLA (jnp.dot)
  and, if installed, PyTorch: what tuned libraries reach on the best-shaped problem.

A step rate r (steps/s) is r * step_flops(config) / 1e9 GFLOP/s of useful arithmetic, the
same for every implementation of the step, which can be set against the peak.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time

import numpy as np

_FMA_SOURCE = r"""
typedef float v16 __attribute__((vector_size(64)));
/* iters x 12 chains x 16 lanes fused multiply-adds; the chains are independent, so the
   loop is bound by FMA throughput, not latency. Returns a lane of the sum (kept live). */
float fma_loop(long iters) {
    v16 a[12], b, c;
    for (int l = 0; l < 16; l++) { b[l] = 0.999999f; c[l] = 1e-7f; }
    for (int k = 0; k < 12; k++) for (int l = 0; l < 16; l++) a[k][l] = (float)k;
    for (long i = 0; i < iters; i++) {
#pragma GCC unroll 12
        for (int k = 0; k < 12; k++) a[k] = a[k] * b + c;
    }
    v16 s = a[0];
    for (int k = 1; k < 12; k++) s += a[k];
    return s[0];
}
"""
_FMA_PER_ITER = 12 * 16  # fused multiply-adds per loop iteration


# ----------------------------------------------------------------------------- useful FLOP


def conv_taps(size: int, kernel: int, stride: int, padding: str | tuple[int, int], all_taps: bool = False) -> int:
    """Along one axis: the (output pixel, kernel tap) pairs of a convolution whose tap lands
    on a real input pixel, for an input of `size` pixels, 'SAME' padding (as XLA: total
    max((out - 1) stride + kernel - size, 0), the smaller half in front) or explicit (lo, hi).
    ``all_taps=True`` counts the taps on padding zeros too (what a dense evaluation runs)."""
    if padding == "SAME":
        out = -(-size // stride)
        total = max((out - 1) * stride + kernel - size, 0)
        lo = total // 2
    else:
        lo, hi = padding
        out = (size + lo + hi - kernel) // stride + 1
    if all_taps:
        return out * kernel
    return sum(1 for o in range(out) for t in range(kernel) if 0 <= o * stride - lo + t < size)


def conv_transpose_taps(size: int, kernel: int, all_taps: bool = False) -> int:
    """Along one axis: the (input pixel, kernel tap) pairs of a stride-2 'SAME' transposed
    convolution (``lax.conv_transpose``, no kernel flip) that land inside the 2 `size`
    output pixels: input m and tap t add to output 2 m + p - t, p = ceil(kernel / 2) for
    kernel >= 3 and kernel - 1 below (leading zeros of the dilated input). ``all_taps=True``
    also counts the taps whose output is cropped."""
    if all_taps:
        return size * kernel
    p = kernel - 1 if kernel <= 2 else -(-kernel // 2)
    return sum(1 for m in range(size) for t in range(kernel) if 0 <= 2 * m + p - t < 2 * size)


def generator_macs(gcfg, all_taps: bool = False) -> list[int]:
    """Useful multiply-adds per image of each generator layer (encoder, decoder, output),
    for a `qdjax.ml.models.GeneratorConfig` (square images); `all_taps` as in `conv_taps`."""
    k, size, c_in = gcfg.kernel, gcfg.image_size, gcfg.in_channels
    macs = []
    for f in gcfg.filters:
        macs.append(conv_taps(size, k, 2, "SAME", all_taps) ** 2 * c_in * f)
        size, c_in = -(-size // 2), f
    skips = list(reversed(gcfg.filters[:-1])) + [0]
    for f, skip in zip(gcfg.up_filters, skips):
        macs.append(conv_transpose_taps(size, k, all_taps) ** 2 * c_in * f)
        size, c_in = 2 * size, f + skip
    return macs


def discriminator_macs(dcfg, image_size: int, all_taps: bool = False) -> list[int]:
    """Useful multiply-adds per image of each discriminator layer, for a
    `qdjax.ml.models.DiscriminatorConfig` on `image_size` x `image_size` pairs; `all_taps`
    as in `conv_taps`."""
    size, c_in, macs = image_size, dcfg.in_channels, []
    for f, k, s, pad in zip(dcfg.filters, dcfg.kernels, dcfg.strides, dcfg.paddings()):
        macs.append(conv_taps(size, k, s, pad, all_taps) ** 2 * c_in * f)
        size = -(-size // s) if pad == "SAME" else (size + sum(pad) - k) // s + 1
        c_in = f
    return macs


def step_flops(config, all_taps: bool = False) -> float:
    """Useful FLOP of one pix2pix training step for a `Pix2PixConfig` (its batch size).

    The step (`qdjax.ml.train.make_train_step`, and the PyTorch peer) runs the generator G
    once and the discriminator D on the real and the generated pair; then
    - the generator loss: input gradients back through D on the generated pair (its first
      layer only towards the generated channels), kernel and input gradients through G
      (no input gradient of G's first layer);
    - the discriminator loss: kernel gradients of D on both pairs and input gradients of
      every D layer but the first.
    Each gradient of a convolution costs as many multiply-adds as its forward pass.
    Returns 2 x multiply-adds x batch size; `all_taps` as in `conv_taps`.
    """
    gcfg, dcfg = config.generator, config.discriminator
    g = generator_macs(gcfg, all_taps)
    d = discriminator_macs(dcfg, gcfg.image_size, all_taps)
    g_total = sum(g) + sum(g) + sum(g[1:])  # forward, kernel gradients, input gradients
    d_inner = sum(d[1:])
    d_first_fake = d[0] * gcfg.out_channels / dcfg.in_channels
    d_total = 2 * sum(d) + 2 * sum(d) + 2 * d_inner + d_inner + d_first_fake
    return 2.0 * (g_total + d_total) * config.batch_size


# ----------------------------------------------------------------------------- peak rates


def _compile_fma(workdir: str) -> ctypes.CDLL:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("no C compiler (cc or gcc) to build the FMA peak kernel")
    src, lib = os.path.join(workdir, "fma.c"), os.path.join(workdir, "fma.so")
    with open(src, "w") as f:
        f.write(_FMA_SOURCE)
    done = subprocess.run(
        [cc, "-O2", "-march=native", "-ffp-contract=fast", "-shared", "-fPIC", src, "-o", lib],
        capture_output=True, text=True,
    )
    if done.returncode:
        raise RuntimeError(f"{cc} could not build the FMA peak kernel:\n{done.stderr}")
    fn = ctypes.CDLL(lib).fma_loop
    fn.argtypes, fn.restype = [ctypes.c_long], ctypes.c_float
    return fn


def fma_peak_gflops(threads: int, seconds: float = 1.0, repeats: int = 3) -> float:
    """Float32 FMA peak of `threads` cores, GFLOP/s (best of `repeats` runs of about
    `seconds` each; one Python thread per core runs the compiled loop)."""
    with tempfile.TemporaryDirectory() as tmp:
        fn = _compile_fma(tmp)
        t = time.perf_counter()
        fn(1_000_000)
        iters = max(1, int(seconds * 1_000_000 / (time.perf_counter() - t)))
        best = 0.0
        for _ in range(repeats):
            workers = [threading.Thread(target=fn, args=(iters,)) for _ in range(threads)]
            t = time.perf_counter()
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            elapsed = time.perf_counter() - t
            best = max(best, threads * iters * _FMA_PER_ITER * 2 / elapsed / 1e9)
    return best


def gemm_gflops(n: int = 2048, repeats: int = 5) -> dict[str, float]:
    """Best rate of an (n x n) @ (n x n) float32 product, GFLOP/s, in XLA (jnp.dot, jitted)
    and in PyTorch (torch.mm) if it is installed. Threads: each library's own setting."""
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)

    def rate(product) -> float:  # best of `repeats` after one untimed call
        product()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            product()
            times.append(time.perf_counter() - t)
        return 2.0 * n**3 / min(times) / 1e9

    dot = jax.jit(jnp.dot)
    ja, jb = jnp.asarray(a), jnp.asarray(b)
    out = {"xla": rate(lambda: dot(ja, jb).block_until_ready())}
    try:
        import torch
    except ImportError:
        return out
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    out["torch"] = rate(lambda: torch.mm(ta, tb))
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[len(os.sched_getaffinity(0))])
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args(argv)
    from qdjax.ml import experiment

    out = {"step_gflop": {}, "fma_peak_gflops": {}, "gemm_gflops": gemm_gflops()}
    for widths in ("authors", "pix2pix"):
        for batch in (1, 32):
            cfg = experiment.pix2pix_config(widths, "image70", batch)
            out["step_gflop"][f"{widths}_batch{batch}"] = step_flops(cfg) / 1e9
    for n in args.threads:
        out["fma_peak_gflops"][str(n)] = fma_peak_gflops(n)
    for name, v in out["step_gflop"].items():
        print(f"useful arithmetic per step, {name}: {v:.3f} GFLOP")
    for n, v in out["fma_peak_gflops"].items():
        print(f"float32 FMA peak, {n} thread(s): {v:.1f} GFLOP/s")
    for name, v in out["gemm_gflops"].items():
        print(f"2048^3 float32 matrix product, {name}: {v:.1f} GFLOP/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
