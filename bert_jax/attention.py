"""Scaled dot-product attention kernels, chosen by the config's `attention_impl`.

Dimension letters: B batch, L query length, M key length, N heads, H head size, C query chunk,
S keys one chunk sees, K packed sequences per row.

What a query may see is a `MaskSpec` (key padding, packed segment ids) plus the layer's
`half_window` (local layers: keys at most that many tokens away by index), so every kernel takes
the mask in the form it supports:

- `xla`: the reference, any mask. Two einsums with f32 accumulation and an f32 softmax; returns
  probabilities on request. In f32 on one CPU device the two products run on oneDNN
  (bert_jax/onednn.py, where its kernel is usable; BERT_JAX_ONEDNN=off keeps them on XLA).
  From `CHUNK_FROM` tokens on it runs query chunks one at a time (recomputed in the backward
  pass), each against the keys it can see: all of them on global layers, a band of
  C + 2 * half_window on local ones, so memory is O(L x window), not O(L^2).
- `cudnn`: `jax.nn.dot_product_attention(implementation="cudnn")` (fused flash attention on
  NVIDIA GPUs, bf16/fp16 inputs); padding, segments and the window go in as its boolean `mask`
  (its `local_window_size` only takes a one-sided, causal window). No attention-probability
  dropout.
- `splash`: Pallas Splash attention on TPU: `SegmentIds` (packed ids, or the padding mask as ids)
  and a `LocalMask` on local layers, so masked blocks are skipped. Under a mesh it runs per shard
  (`shard_map` over the batch and head axes). No attention-probability dropout.
- `auto`: `cudnn` on a GPU, `splash` on a TPU, when they apply; else `xla`.

An explicit `cudnn` / `splash` that cannot run falls back to `xla` and logs the reason once.
Outputs at padding positions are not defined (kernels differ there); real tokens agree.
"""
from __future__ import annotations

import functools
import logging
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bert_jax import onednn
from bert_jax.device_dtype import target_backend
from bert_jax.errors import DataError
from bert_jax.layers import dropout, key_words, matmul, on_onednn, product

IMPLEMENTATIONS = ("xla", "cudnn", "splash", "auto")
CHUNK_FROM = 2048  # Query length from which the XLA reference runs chunked.
CHUNK = 512  # Queries per chunk on that path.
# The attention_impl `inference.inference_split` gives layers that would run XLA's attention in
# f32 on oneDNN: the core of a call in one forward-only custom call (onednn.attention) where it
# runs; a call it cannot take (probabilities wanted, dropout, a chunked long sequence, a head
# size or CPU the kernel does not handle) runs "xla".
INFERENCE_IMPL = "fused_inference"
# Query rows (batch x length) from which it does: MiniLM embeddings at batch 32 ran 1.07-1.11x
# faster at 40 tokens, 1.26x at 64, 1.07-1.08x at 128; at batch 1-8 and batch 32 x 24 the
# model moved 0.8-1.1x either way (benchmarks/RESULTS.md run AA), so those keep XLA's path...
FUSED_MIN_ROWS = 1280
# ...except calls of at most this many rows, which the kernels' spinning helper serves
# (kernels/pool.h kSpinRows): with every op of a batch-1 encode on the kernels, XLA runs it on
# one thread without parking (MiniLM at 1 x 40, kernel and spinner against XLA's attention
# without: 1.10-1.16x; run AB).
FUSED_MAX_SMALL_ROWS = 64
_NEG_INF = -1e9  # Large but finite, so fully masked rows (padding queries) stay finite.
_log = logging.getLogger(__name__)
_warned: set[str] = set()


def _mask_bias(mask: jax.Array) -> jax.Array:
  """A boolean mask as the f32 additive bias the kernels and the XLA softmax take (0 / -1e9)."""
  return jnp.where(mask, 0.0, _NEG_INF).astype(jnp.float32)


class PackingError(DataError):
  """A packed batch whose segment ids, padding or positions do not describe whole documents."""


class MaskSpec(NamedTuple):
  """Which keys each query may see, before any window.

  key_mask_BxL: 1 for real tokens, 0 for padding.
  segment_ids_BxL: 1..K for the K sequences packed into a row, 0 for padding; None when rows are
    not packed. Attention never crosses a segment.
  """
  key_mask_BxL: jax.Array
  segment_ids_BxL: jax.Array | None = None


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


def window_mask(seq_len: int, half_window: int) -> jax.Array:
  """Boolean [1, 1, L, M]: |l - m| <= half_window, by token index (as transformers defines it).

  Within a packed document index and position distances are equal, and attention across
  documents is blocked by the segment ids anyway.
  """
  index_L = jnp.arange(seq_len)
  distance_LxM = jnp.abs(index_L[:, None] - index_L[None, :])
  return (distance_LxM <= half_window)[None, None, :, :]


def dense_mask(spec: MaskSpec, half_window: int | None = None) -> jax.Array:
  """The whole boolean [B, 1, L, M] mask of `spec` (and the window of a local layer)."""
  mask_Bx1xLxM = make_attention_mask(spec.key_mask_BxL, spec.segment_ids_BxL)
  if half_window is not None:
    mask_Bx1xLxM = mask_Bx1xLxM & window_mask(spec.key_mask_BxL.shape[-1], half_window)
  return mask_Bx1xLxM


# ----------------------------------------------------------------------------- kernel choice
def fallback_reason(impl: str, dtype, dropout_active: bool, want_probs: bool,
                    seq_len: int | None = None, backend: str | None = None) -> str:
  """Why `impl` ("cudnn" or "splash") cannot run this call, or "" when it can."""
  backend = backend or target_backend()
  if want_probs:
    return "attention probabilities were requested (output_attentions); only xla returns them"
  if dropout_active:
    return "attention-probability dropout is on; set attention_probs_dropout_prob=0 to use it"
  if impl == "cudnn":
    if backend != "gpu":
      return f"cuDNN attention needs an NVIDIA GPU and JAX runs on {backend}"
    if jnp.dtype(dtype) not in (jnp.bfloat16, jnp.float16):
      return f"cuDNN attention takes bfloat16 or float16 inputs, not {jnp.dtype(dtype).name}"
    return ""
  if impl == "splash":
    if backend != "tpu":
      return f"Splash attention is a TPU kernel and JAX runs on {backend}"
    if seq_len is not None and seq_len % 128:
      return f"Splash attention needs a sequence length divisible by 128, not {seq_len}"
    return ""
  return ""


def resolve_impl(impl: str, dtype, dropout_active: bool, want_probs: bool,
                 seq_len: int | None = None) -> str:
  """The kernel that will actually run for this call; logs once why an explicit one cannot."""
  backend = target_backend()
  if impl == "auto":
    native = {"gpu": "cudnn", "tpu": "splash"}.get(backend, "xla")
    if native == "xla" or fallback_reason(native, dtype, dropout_active, want_probs, seq_len):
      return "xla"
    return native
  if impl in ("cudnn", "splash"):
    reason = fallback_reason(impl, dtype, dropout_active, want_probs, seq_len, backend)
    if reason:
      if reason not in _warned:
        _warned.add(reason)
        _log.warning("attention_impl=%r falls back to 'xla': %s.", impl, reason)
      return "xla"
  return impl


# ----------------------------------------------------------------------------- entry point
def dot_product_attention(q_BxLxNxH: jax.Array, k_BxMxNxH: jax.Array, v_BxMxNxH: jax.Array,
                          mask: MaskSpec, *, impl: str, dtype, dropout_rate: float,
                          dropout_rng: jax.Array | None, want_probs: bool = False,
                          half_window: int | None = None):
  """Returns (context [B,L,N,H] in f32, probabilities [B,N,L,M] or None).

  `half_window`: a local layer's window (keys at most this many tokens away); None: global.
  """
  head_size, seq_len = q_BxLxNxH.shape[-1], q_BxLxNxH.shape[1]
  scale = 1.0 / jnp.sqrt(jnp.float32(head_size))
  dropout_active = dropout_rng is not None and dropout_rate > 0.0
  kernel = resolve_impl(impl, dtype, dropout_active, want_probs, seq_len)
  if kernel == "cudnn":
    # cuDNN takes the mask as a bias of the whole [B, 1, L, M] (a padding-only mask is
    # [B, 1, 1, M]: "Bias must have same seq length as QKV" on an H200) and a static scale.
    mask_Bx1xLxM = jnp.broadcast_to(dense_mask(mask, half_window),
                                    (q_BxLxNxH.shape[0], 1, seq_len, k_BxMxNxH.shape[1]))
    ctx = jax.nn.dot_product_attention(
        q_BxLxNxH.astype(dtype), k_BxMxNxH.astype(dtype), v_BxMxNxH.astype(dtype),
        mask=mask_Bx1xLxM, scale=1.0 / math.sqrt(head_size), implementation="cudnn")
    return ctx.astype(jnp.float32), None
  if kernel == "splash":
    return splash_attention(q_BxLxNxH * scale, k_BxMxNxH, v_BxMxNxH, mask, dtype=dtype,
                            half_window=half_window), None
  chunk = _chunk_size(seq_len)
  if (kernel == INFERENCE_IMPL and not chunk and not want_probs and not dropout_active
      and not FUSED_MAX_SMALL_ROWS < q_BxLxNxH.shape[0] * seq_len < FUSED_MIN_ROWS
      and on_onednn(dtype)
      and onednn.attention_usable(head_size)):
    bias = _mask_bias(dense_mask(mask, half_window))
    bias_Bx1xRxM = jnp.broadcast_to(bias, (q_BxLxNxH.shape[0], 1, *bias.shape[2:]))
    return onednn.attention(q_BxLxNxH, k_BxMxNxH, v_BxMxNxH, bias_Bx1xRxM,
                            1.0 / math.sqrt(head_size)), None
  if chunk and not want_probs and not dropout_active:
    return chunked_attention(q_BxLxNxH * scale, k_BxMxNxH, v_BxMxNxH, mask, dtype=dtype,
                             half_window=half_window, chunk=chunk), None

  return masked_attention(q_BxLxNxH, k_BxMxNxH, v_BxMxNxH, dense_mask(mask, half_window),
                          dtype=dtype, dropout_rate=dropout_rate, dropout_rng=dropout_rng,
                          want_probs=want_probs)


def masked_attention(q_BxLxNxH, k_BxMxNxH, v_BxMxNxH, mask_Bx1xLxM, *, dtype,
                     dropout_rate: float = 0.0, dropout_rng=None, want_probs: bool = False):
  """The XLA reference under any boolean mask [B or 1, 1, L, M] (a causal mask, a KV cache's
  filled slots, ...): (context [B, L, N, H] f32, probabilities [B, N, L, M] or None)."""
  scale = 1.0 / jnp.sqrt(jnp.float32(q_BxLxNxH.shape[-1]))
  mm = functools.partial(product, dtype=dtype)
  q_BxNxLxH = jnp.swapaxes(q_BxLxNxH * scale, 1, 2)
  k_BxNxMxH = jnp.swapaxes(k_BxMxNxH, 1, 2)
  v_BxNxMxH = jnp.swapaxes(v_BxMxNxH, 1, 2)
  # The mask as an additive bias, not a select: XLA:CPU fuses the add into the softmax (the
  # select cost as much as the softmax itself at [32, 12, 128, 128]). Fully masked rows
  # (padding queries) come out finite either way; their outputs are not defined.
  bias_Bx1xLxM = _mask_bias(mask_Bx1xLxM)
  dropping = dropout_rng is not None and dropout_rate > 0.0
  if dropping and not want_probs and on_onednn(dtype) and onednn.core_usable():
    # Training: products, softmax and dropout in one custom VJP (onednn.attention_core; the
    # BERT-base bf16 step 1.02x at 2 x 512, level at 8 x 128: RESULTS.md run AE).
    ctx_BxNxLxH = onednn.attention_core(q_BxNxLxH, k_BxNxMxH, v_BxNxMxH, bias_Bx1xLxM,
                                        key_words(dropout_rng), dtype, dropout_rate)
    return jnp.swapaxes(ctx_BxNxLxH, 1, 2), None
  scores_BxNxLxM = mm(q_BxNxLxH, k_BxNxMxH, transpose_b=True)
  scores_BxNxLxM = scores_BxNxLxM + bias_Bx1xLxM
  probs_BxNxLxM = jax.nn.softmax(scores_BxNxLxM, axis=-1)
  dropped = dropout(probs_BxNxLxM, dropout_rate, dropout_rng)
  ctx_BxLxNxH = jnp.swapaxes(mm(dropped, v_BxNxMxH), 1, 2)
  return ctx_BxLxNxH, (probs_BxNxLxM if want_probs else None)


# ----------------------------------------------------------------------------- XLA, chunked
def _chunk_size(seq_len: int) -> int:
  """The query chunk for a long sequence (a divisor of it), or 0 to run unchunked."""
  if seq_len < CHUNK_FROM:
    return 0
  for c in (CHUNK, CHUNK // 2, CHUNK // 4):
    if seq_len % c == 0:
      return c
  return 0


def chunked_attention(q_BxLxNxH, k_BxMxNxH, v_BxMxNxH, mask: MaskSpec, *, dtype,
                      half_window: int | None, chunk: int) -> jax.Array:
  """The reference's numbers one query chunk at a time; q is already scaled. [B, L, N, H] f32.

  Each chunk of C queries sees S keys: all M on a global layer, or the band of
  C + 2 * half_window around it on a local one (keys padded by the window on both sides).
  """
  b, seq_len = q_BxLxNxH.shape[:2]
  key_mask_BxM = mask.key_mask_BxL > 0
  seg_BxM = (mask.segment_ids_BxL if mask.segment_ids_BxL is not None
             else jnp.zeros((b, seq_len), jnp.int32))
  pad = 0 if half_window is None else half_window
  span = seq_len if half_window is None else chunk + 2 * pad

  def padded(x):  # [B, M, ...] -> [B, pad + M + pad, ...]
    return jnp.pad(x, [(0, 0), (pad, pad)] + [(0, 0)] * (x.ndim - 2)) if pad else x

  k_p, v_p = padded(k_BxMxNxH), padded(v_BxMxNxH)
  key_ok_p, seg_p = padded(key_mask_BxM), padded(seg_BxM)

  @jax.checkpoint
  def one_chunk(start):
    q_BxCxNxH = jax.lax.dynamic_slice_in_dim(q_BxLxNxH, start, chunk, axis=1)
    seg_q_BxC = jax.lax.dynamic_slice_in_dim(seg_BxM, start, chunk, axis=1)
    # Keys [start - pad, start + chunk + pad) in unpadded indices; the whole row when global.
    k_start = start if pad else 0
    k_BxSxNxH = jax.lax.dynamic_slice_in_dim(k_p, k_start, span, axis=1)
    v_BxSxNxH = jax.lax.dynamic_slice_in_dim(v_p, k_start, span, axis=1)
    ok_BxS = jax.lax.dynamic_slice_in_dim(key_ok_p, k_start, span, axis=1)
    seg_k_BxS = jax.lax.dynamic_slice_in_dim(seg_p, k_start, span, axis=1)
    ok_BxCxS = ok_BxS[:, None, :] & (seg_q_BxC[:, :, None] == seg_k_BxS[:, None, :])
    if pad:
      q_index_C = start + jnp.arange(chunk)
      k_index_S = start - pad + jnp.arange(span)
      near_CxS = jnp.abs(q_index_C[:, None] - k_index_S[None, :]) <= half_window
      ok_BxCxS = ok_BxCxS & near_CxS[None]
    scores_BxNxCxS = matmul(jnp.swapaxes(q_BxCxNxH, 1, 2), jnp.swapaxes(k_BxSxNxH, 1, 2), dtype,
                            transpose_b=True)
    scores_BxNxCxS = jnp.where(ok_BxCxS[:, None], scores_BxNxCxS, _NEG_INF)
    probs_BxNxCxS = jax.nn.softmax(scores_BxNxCxS, axis=-1)
    return jnp.swapaxes(matmul(probs_BxNxCxS, jnp.swapaxes(v_BxSxNxH, 1, 2), dtype), 1, 2)

  starts = jnp.arange(0, seq_len, chunk)
  ctx_ZxBxCxNxH = jax.lax.map(one_chunk, starts)  # Z = L / C chunks
  ctx_BxZxCxNxH = jnp.moveaxis(ctx_ZxBxCxNxH, 0, 1)
  return ctx_BxZxCxNxH.reshape(q_BxLxNxH.shape).astype(jnp.float32)


# ----------------------------------------------------------------------------- Splash (TPU)
@functools.lru_cache(maxsize=64)
def _splash_kernel(heads: int, seq_len: int, half_window: int | None, interpret: bool):
  from jax.experimental.pallas.ops.tpu import splash_attention as sa
  shape = (seq_len, seq_len)
  head_mask = (sa.FullMask(shape) if half_window is None
               else sa.LocalMask(shape, (half_window, half_window), 0))
  return sa.make_splash_mha(sa.MultiHeadMask([head_mask] * heads), head_shards=1,
                            q_seq_shards=1, interpret=interpret)


def splash_attention(q_BxLxNxH, k_BxLxNxH, v_BxLxNxH, mask: MaskSpec, *, dtype,
                     half_window: int | None, interpret: bool = False) -> jax.Array:
  """Splash attention (q already scaled) -> [B, L, N, H] f32. `interpret` runs it on CPU.

  Segment ids are the packed ids, or the padding mask itself when rows are not packed (real
  tokens 1, padding 0), so no real query sees a padding key.
  """
  from jax.experimental.pallas.ops.tpu import splash_attention as sa

  ids_BxL = (mask.segment_ids_BxL if mask.segment_ids_BxL is not None
             else (mask.key_mask_BxL > 0)).astype(jnp.int32)

  def local(q, k, v, ids):  # one shard: [b, L, n, H] and [b, L]
    kernel = _splash_kernel(q.shape[2], q.shape[1], half_window, interpret)
    to_heads = lambda x: jnp.swapaxes(x, 1, 2).astype(dtype)  # noqa: E731 [b, n, L, H]
    out_bxnxLxH = jax.vmap(lambda q1, k1, v1, i1: kernel(
        q1, k1, v1, segment_ids=sa.SegmentIds(q=i1, kv=i1)))(to_heads(q), to_heads(k),
                                                             to_heads(v), ids)
    return jnp.swapaxes(out_bxnxLxH, 1, 2).astype(jnp.float32)

  mesh = jax.sharding.get_abstract_mesh()
  if mesh is None or mesh.empty:
    return local(q_BxLxNxH, k_BxLxNxH, v_BxLxNxH, ids_BxL)
  from bert_jax import sharding
  shape = dict(mesh.shape)
  qkv_spec, _ = sharding.fit_spec(sharding.logical_to_spec(("batch", None, "heads", None)),
                                  tuple(q_BxLxNxH.shape), shape)
  ids_spec, _ = sharding.fit_spec(sharding.logical_to_spec(("batch", None)), tuple(ids_BxL.shape),
                                  shape)
  return jax.shard_map(local, mesh=mesh, in_specs=(qkv_spec, qkv_spec, qkv_spec, ids_spec),
                       out_specs=qkv_spec, check_vma=False)(q_BxLxNxH, k_BxLxNxH, v_BxLxNxH,
                                                             ids_BxL)


# ----------------------------------------------------------------------------- host-side checks
def check_packed_batch(packed_segment_ids, attention_mask=None, position_ids=None) -> None:
  """Refuses a packed batch whose segment ids do not describe whole documents (PackingError).

  Per row: padding (id 0) only where the attention mask is 0 and vice versa; each document id
  one contiguous run (an id that reappears after another, or padding inside a document, is
  refused); positions consecutive inside a document. Runs on host numpy, before any compile.
  """
  seg_BxL = np.asarray(packed_segment_ids)
  if seg_BxL.ndim == 1:
    seg_BxL = seg_BxL[None]
  if not np.issubdtype(seg_BxL.dtype, np.integer) or (seg_BxL < 0).any():
    raise PackingError("packed_segment_ids must be non-negative integers (1..K per packed "
                       "document, 0 for padding).")
  if attention_mask is not None:
    real_BxL = np.broadcast_to(np.asarray(attention_mask) > 0, seg_BxL.shape)
    bad = np.argwhere(real_BxL != (seg_BxL > 0))
    if len(bad):
      r, t = bad[0]
      raise PackingError(
          f"Packed row {r}, token {t}: attention_mask says {'real' if real_BxL[r, t] else 'pad'}"
          f" but packed_segment_ids is {seg_BxL[r, t]}; padding must have segment id 0 and every "
          "real token the id of its document.")
  # Each document one run: per row, the runs of non-zero ids number the distinct non-zero ids.
  starts_BxL = (np.diff(seg_BxL, axis=1, prepend=-1) != 0) & (seg_BxL > 0)
  distinct_B = (np.diff(np.sort(seg_BxL, axis=1), axis=1, prepend=0) != 0).sum(axis=1)
  for r in np.flatnonzero(starts_BxL.sum(axis=1) != distinct_B):
    run_ids = seg_BxL[r][starts_BxL[r]]
    dup = next(int(i) for i in run_ids if (run_ids == i).sum() > 1)
    raise PackingError(
        f"Packed row {r}: document {dup} appears in two separate runs (padding or another "
        "document inside it); give each document one contiguous run of its own id.")
  if position_ids is not None:
    pos_BxL = np.broadcast_to(np.asarray(position_ids), seg_BxL.shape)
    inside_BxL = (seg_BxL[:, 1:] == seg_BxL[:, :-1]) & (seg_BxL[:, 1:] > 0)
    bad = np.argwhere(inside_BxL & (np.diff(pos_BxL, axis=1) != 1))
    if len(bad):
      r, t = bad[0][0], bad[0][1] + 1
      raise PackingError(
          f"Packed row {r}, token {t}: position_ids do not count up by one inside document "
          f"{seg_BxL[r, t]}; positions restart at 0 per document and increase by 1.")
