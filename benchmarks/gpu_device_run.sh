#!/bin/bash
# benchmarks/pretrain_step.py --gpu on a lent GPU machine that runs its own image's Python stack
# (the H200 of 2026-12-01: jax 0.11.2 / CUDA 13, flax 0.12.10; jaxlib 0.10.2 with its CUDA plugin
# is 220 MB, too large to carry). The image lacks ml_collections: carry its wheel in WHEELS
# (pip download --no-deps ml_collections==1.1.0 -d DIR, a folder the call carries).
#   bash benchmarks/gpu_device_run.sh            # every case, cuDNN and XLA attention
#   CASES=large:512 SECONDS_LEFT=240 bash benchmarks/gpu_device_run.sh
# Each row is written to $OUT/gpu.json as it finishes, so a run cut short keeps its rows.
set -u
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
if ! python3 -c "import ml_collections" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/bj_site \
    "${WHEELS:-.devrun/mlc}"/ml_collections-*.whl || exit 1
  export PYTHONPATH=/tmp/bj_site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
python3 -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"
timeout "${SECONDS_LEFT:-500}" python3 -m benchmarks.pretrain_step --gpu \
  --gpu_cases="${CASES:-large:512,base:128,base:512,large:128}" \
  --gpu_attention="${ATTENTION:-cudnn,xla}" --prng_impl="${PRNG:-threefry2x32}" \
  --json="$OUT/gpu.json" 2>&1 | tee "$OUT/log.txt" | grep -E "^\[|ms/step|failed|TFLOP"
