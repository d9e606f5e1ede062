"""Scaled dot-product attention kernels, chosen by `BertConfig.attention_impl`.

Dimension letters: B batch, L query length, M key length, N heads, H head size.

- `xla`: two einsums with f32 accumulation and an f32 softmax; returns probabilities on request.
- `cudnn`: `jax.nn.dot_product_attention(implementation="cudnn")` (fused flash attention on
  NVIDIA GPUs, bf16/fp16 inputs). It has no attention-probability dropout, so training with
  `attention_probs_dropout_prob > 0` uses `xla`.
- `auto`: `cudnn` on a GPU when it applies, else `xla`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from bert_jax.layers import dropout, matmul

_NEG_INF = -1e9  # Large but finite, so fully masked rows (padding queries) stay finite.


def resolve_impl(impl: str, dtype, dropout_active: bool, want_probs: bool) -> str:
  """The kernel that will actually run for this call."""
  cudnn_ok = (jax.default_backend() == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
              and not dropout_active and not want_probs)
  if impl == "cudnn" and not cudnn_ok:
    return "xla"
  if impl == "auto":
    return "cudnn" if cudnn_ok else "xla"
  return impl


def dot_product_attention(q_BxLxNxH: jax.Array, k_BxMxNxH: jax.Array, v_BxMxNxH: jax.Array,
                          mask_Bx1xLxM: jax.Array, *, impl: str, dtype, dropout_rate: float,
                          dropout_rng: jax.Array | None, want_probs: bool = False):
  """Returns (context [B,L,N,H] in f32, probabilities [B,N,L,M] or None)."""
  head_size = q_BxLxNxH.shape[-1]
  scale = 1.0 / jnp.sqrt(jnp.float32(head_size))
  dropout_active = dropout_rng is not None and dropout_rate > 0.0
  kernel = resolve_impl(impl, dtype, dropout_active, want_probs)
  if kernel == "cudnn":
    ctx = jax.nn.dot_product_attention(
        q_BxLxNxH.astype(dtype), k_BxMxNxH.astype(dtype), v_BxMxNxH.astype(dtype),
        mask=mask_Bx1xLxM, scale=float(scale), implementation="cudnn")
    return ctx.astype(jnp.float32), None

  q_BxNxLxH = jnp.swapaxes(q_BxLxNxH * scale, 1, 2)
  k_BxNxMxH = jnp.swapaxes(k_BxMxNxH, 1, 2)
  v_BxNxMxH = jnp.swapaxes(v_BxMxNxH, 1, 2)
  scores_BxNxLxM = matmul(q_BxNxLxH, k_BxNxMxH, dtype, transpose_b=True)
  scores_BxNxLxM = jnp.where(mask_Bx1xLxM, scores_BxNxLxM, _NEG_INF)
  probs_BxNxLxM = jax.nn.softmax(scores_BxNxLxM, axis=-1)
  dropped = dropout(probs_BxNxLxM, dropout_rate, dropout_rng)
  ctx_BxLxNxH = jnp.swapaxes(matmul(dropped, v_BxNxMxH, dtype), 1, 2)
  return ctx_BxLxNxH, (probs_BxNxLxM if want_probs else None)


def make_attention_mask(attention_mask_BxL: jax.Array,
                        packed_segment_ids_BxL: jax.Array | None = None) -> jax.Array:
  """Boolean [B,1,L,M]: key m is visible from query l.

  `attention_mask` is 1 for real tokens; `packed_segment_ids` (1..K for the K sequences packed
  into one row, 0 for padding) additionally blocks attention across packed sequences.
  """
  key_ok_Bx1x1xM = (attention_mask_BxL > 0)[:, None, None, :]
  if packed_segment_ids_BxL is None:
    return key_ok_Bx1x1xM
  same_BxLxM = packed_segment_ids_BxL[:, :, None] == packed_segment_ids_BxL[:, None, :]
  return key_ok_Bx1x1xM & same_BxLxM[:, None, :, :]
