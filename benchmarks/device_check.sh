#!/usr/bin/env bash
# GPU check in one command, sized to a lent device's budget (one call, under 8 minutes):
# the card, ED throughput (float64 and float32, N = 2 and 4, batches 1, 64, 256 and 1024,
# EDConfig defaults, batching "auto" = vectorized on the GPU), the generator + ED inverse check
# (batch 64), pix2pix training steps/s at batch 32 (authors' widths), peak GPU memory, and the
# CPU baseline on the same machine's cores (JAX_PLATFORMS=cpu, batches 1 and 64) in the same run.
#
#     bash benchmarks/device_check.sh [OUT_DIR]        # default: $OUT, else runs/device_check
#     bash benchmarks/device_check.sh --quick [OUT_DIR] # tiny sizes, any machine (tests/test_bench_device_check.py)
#
# For a machine with Python and a CUDA build of JAX and no network: nothing is installed (JAX
# least of all); qdjax runs from the checkout through PYTHONPATH. Flax and Optax are used when
# they import; without them the training step and the inverse check are skipped, and the JSON
# and the log say so. NumPy is the only other need.
#
# Results in OUT_DIR: card.txt, device_check.json (rewritten after every measurement, so a
# timeout keeps what was measured; see benchmarks/device_check.py), device_check.log.
# Time: BUDGET_S (default 450 s) for both parts together, the GPU part first until ACCEL_S
# (default 300 s) after the start; a measurement that would not fit is recorded as skipped.
# Copy the numbers and the card into docs/benchmarks.md.
set -uo pipefail
cd "$(dirname "$0")/.."
quick=()
if [ "${1:-}" = "--quick" ]; then quick=(--quick); shift; fi
out=${1:-${OUT:-runs/device_check}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # peak_bytes_in_use then counts what the programs use
python=${PYTHON:-python3}
start=$(date +%s)
budget=${BUDGET_S:-450}
accel=${ACCEL_S:-300}
json="$out/device_check.json"
log="$out/device_check.log"
rm -f "$json"

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || echo "no nvidia-smi"
  "$python" -c "import jax, jaxlib; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, jax.devices())" 2>&1
  "$python" -c "import flax, optax; print('flax', flax.__version__, 'optax', optax.__version__)" 2>&1 \
      || echo "Flax/Optax not importable: the training step and the inverse check will be skipped"
} | tee "$out/card.txt"

# part 1: the default device (the GPU), until start + ACCEL_S
left=$(( start + accel - $(date +%s) ))
timeout "$(( left > 10 ? left + 15 : 25 ))" "$python" benchmarks/device_check.py --part accelerator \
    --json "$json" --deadline "$(( start + accel ))" "${quick[@]}" 2>&1 | tee "$log"
echo "accelerator part exit status: ${PIPESTATUS[0]}" | tee -a "$log"

# part 2: the CPU baseline on this machine's cores, until start + BUDGET_S
left=$(( start + budget - $(date +%s) ))
JAX_PLATFORMS=cpu timeout "$(( left > 10 ? left + 15 : 25 ))" "$python" benchmarks/device_check.py --part cpu \
    --json "$json" --deadline "$(( start + budget ))" "${quick[@]}" 2>&1 | tee -a "$log"
echo "cpu part exit status: ${PIPESTATUS[0]}" | tee -a "$log"
echo "total $(( $(date +%s) - start )) s; results in $json" | tee -a "$log"
