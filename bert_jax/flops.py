"""Analytical FLOP counts for BERT and peak throughput of known chips (for MFU).

Counts multiply-adds as 2 FLOPs and the backward pass as twice the forward (train = 3x fwd),
the convention of the PaLM / MaxText MFU definitions. Element-wise work (LayerNorm, softmax,
GELU) is not counted.
"""
from __future__ import annotations

import jax

from bert_jax.configuration import BertConfig

# Dense bf16 peak FLOP/s per chip and HBM bytes, from the vendors' published figures.
CHIPS: dict[str, dict[str, float]] = {
    "v4": {"peak_flops": 275e12, "hbm_bytes": 32 * 2**30},
    "v5e": {"peak_flops": 197e12, "hbm_bytes": 16 * 2**30},
    "v5p": {"peak_flops": 459e12, "hbm_bytes": 95 * 2**30},
    "v6e": {"peak_flops": 918e12, "hbm_bytes": 32 * 2**30},
    "a100": {"peak_flops": 312e12, "hbm_bytes": 80 * 2**30},
    "h100": {"peak_flops": 989e12, "hbm_bytes": 80 * 2**30},
    "h200": {"peak_flops": 989e12, "hbm_bytes": 141 * 2**30},
    # This project's 2-core AVX-512 CPU: jitted 4096^2 matmul with bf16 inputs and f32
    # accumulation (benchmarks/pretrain_step.py measures it on the machine at hand).
    "cpu": {"peak_flops": 3.35e11, "hbm_bytes": 24 * 2**30},
}


def chip_name(device=None) -> str:
  """Maps a jax device's kind ("TPU v5 lite", "NVIDIA H100 80GB HBM3", "cpu") to a CHIPS key."""
  kind = (device or jax.devices()[0]).device_kind.lower()
  for key, needle in (("v5e", "v5 lite"), ("v5e", "v5e"), ("v5p", "v5p"), ("v5p", "v5"),
                      ("v6e", "v6"), ("v4", "v4"), ("h200", "h200"), ("h100", "h100"),
                      ("a100", "a100")):
    if needle in kind:
      return key
  return "cpu"


def forward_flops_per_sequence(config: BertConfig, seq_len: int, mlm_positions: int | None,
                               with_pooler: bool = True) -> float:
  """Forward FLOPs for one sequence. `mlm_positions=None` means logits at every position.

  A ModernBertConfig is counted as modern_modeling computes it: fused q/k/v, GeGLU (the input
  projection is 2 x the GLU width), scores over the whole row on every layer (the local window
  is a mask, not fewer FLOPs), no pooler.
  """
  d, f, v, l = config.hidden_size, config.intermediate_size, config.vocab_size, seq_len
  if getattr(config, "model_type", "") == "modernbert":
    per_layer = (2 * l * d * 3 * d + 2 * l * l * d * 2 + 2 * l * d * d
                 + 2 * l * d * 2 * f + 2 * l * f * d)  # q/k/v, attention, output, GLU in, out
    p = l if mlm_positions is None else mlm_positions
    return config.num_hidden_layers * per_layer + 2 * p * d * d + 2 * p * d * v
  per_layer = (2 * l * d * 3 * d  # q, k, v projections
               + 2 * l * l * d * 2  # scores and context
               + 2 * l * d * d  # attention output projection
               + 2 * l * d * f * 2)  # feed-forward in and out
  p = l if mlm_positions is None else mlm_positions
  heads = 2 * p * d * d + 2 * p * d * v  # MLM transform + tied decoder
  pooler = (2 * d * d + 2 * d * 2) if with_pooler else 0
  return config.num_hidden_layers * per_layer + heads + pooler


def train_flops_per_step(config: BertConfig, batch_size: int, seq_len: int,
                         mlm_positions: int | None) -> float:
  """FLOPs of one optimizer step over `batch_size` sequences (forward + backward)."""
  return 3.0 * batch_size * forward_flops_per_sequence(config, seq_len, mlm_positions)
