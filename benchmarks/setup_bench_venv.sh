#!/usr/bin/env bash
# Creates .venv-bench with the peer stacks the benchmark compares against: PyTorch 2.13 CPU and
# transformers 4.57.6 (the last release with FlaxBertForPreTraining). Kept apart from .venv because
# bert_jax needs transformers 5.x. torch is pinned exactly: on these machines 2.13.0 CPU resolves
# from a local wheel, any other torch request pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${BENCH_VENV:-.venv-bench}"
if [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c \
    'import torch, transformers, flax, jax, optax; assert transformers.__version__ == "4.57.6"' \
    2>/dev/null; then
  echo "$VENV already has the peer stacks."
  exit 0
fi
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install torch==2.13.0 "transformers==4.57.6" flax jax optax
"$VENV/bin/python" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'
