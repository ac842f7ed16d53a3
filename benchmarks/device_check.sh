#!/usr/bin/env bash
# GPU check in one command: the card, ED throughput (N = 2 and 4, float64, batches up to 1024),
# pix2pix training steps/s, and the test suite, each stage under its own time limit so that a
# slow stage cannot take the others' results with it.
#
#     bash benchmarks/device_check.sh [OUT_DIR]          # default: runs/device_check
#
# For a machine with a CUDA build of JAX, Flax, Optax, orbax, SciPy, scikit-image, pytest,
# pytest-xdist and hypothesis installed and no network: qdjax runs from the checkout
# (PYTHONPATH), nothing is installed. PySCF, which two test modules use as their reference, is
# installed from wheels in .whl/ when that folder exists (`pip download --no-deps pyscf` for the
# machine's Python); without it those two modules are left out and the log says so.
# Stage limits (s): BENCH_S (default 240) and TESTS_S (300); the whole run stays under 10 min.
# Results: card.txt, bench.json, bench.log, tests.log in OUT_DIR; copy the numbers and the card
# into docs/benchmarks.md.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-runs/device_check}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python=${PYTHON:-python3}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  "$python" -c "import jax, jaxlib; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, jax.devices())"
} | tee "$out/card.txt"

skip=()
if [ -d .whl ]; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/qdjax_site .whl/*.whl \
        && export PYTHONPATH="$PYTHONPATH:/tmp/qdjax_site"
fi
if ! "$python" -c "import pyscf" 2>/dev/null; then
    echo "PySCF is not installed: tests/test_ed.py and tests/test_fock.py are left out" | tee "$out/tests.log"
    skip=(--ignore=tests/test_ed.py --ignore=tests/test_fock.py)
fi

timeout "${BENCH_S:-240}" "$python" -m qdjax.cli bench --electrons 2 4 --batch 1 64 256 1024 --repeats 3 \
    --train --train-batch 1 32 --json "$out/bench.json" 2>&1 | tee "$out/bench.log"
echo "bench exit status: ${PIPESTATUS[0]}" | tee -a "$out/bench.log"

timeout "${TESTS_S:-300}" "$python" -m pytest -q -n 8 -p no:cacheprovider "${skip[@]}" 2>&1 | tee -a "$out/tests.log"
echo "tests exit status: ${PIPESTATUS[0]}" | tee -a "$out/tests.log"
