"""Jitted inference on shape buckets, shared by `fill_mask` and `embed`.

Every call pads its batch to a (batch, length) bucket: lengths to the next power of two from 16
up to `max_position_embeddings`, batches to the next power of two up to the batch size. A jitted
function is therefore compiled once per bucket, and a second call whose texts fall in a bucket
already seen reuses the compiled code. `TRACES` counts traces per function (tests read it).
"""
from __future__ import annotations

import collections
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

MIN_BUCKET = 16
TRACES: collections.Counter = collections.Counter()


def bucket(n: int, cap: int, minimum: int = 1) -> int:
  """The smallest power of two >= max(n, minimum), but at most `cap` (n itself if n > cap)."""
  b = max(minimum, 1)
  while b < n:
    b *= 2
  return max(min(b, cap), n)


def encoder_of(model: nnx.Module) -> nnx.Module:
  """The encoder inside a head model (BERT's `bert`, ModernBERT's `model`), or the model itself."""
  for name in ("bert", "model"):
    inner = getattr(model, name, None)
    if isinstance(inner, nnx.Module):
      return inner
  return model


def pad_rows(rows: list[list[int]], types: list[list[int]] | None, length: int, batch: int,
             pad_id: int) -> dict[str, np.ndarray]:
  """int32 [batch, length] input_ids / token_type_ids / attention_mask; extra rows are padding."""
  input_ids = np.full((batch, length), pad_id, np.int32)
  token_type_ids = np.zeros((batch, length), np.int32)
  attention_mask = np.zeros((batch, length), np.int32)
  for k, row in enumerate(rows):
    input_ids[k, :len(row)] = row
    attention_mask[k, :len(row)] = 1
    if types is not None:
      token_type_ids[k, :len(row)] = types[k]
  attention_mask[len(rows):, 0] = 1  # Padding rows attend to one token: no all-masked softmax.
  return {"input_ids": input_ids, "token_type_ids": token_type_ids,
          "attention_mask": attention_mask}


@functools.partial(jax.jit, static_argnames=("graphdef", "top_k"))
def mlm_top_k(graphdef, state, input_ids, attention_mask, token_type_ids, positions_BxP,
              *, top_k: int):
  """Probabilities of the top_k tokens at `positions_BxP`: (probs [B, P, k], ids [B, P, k])."""
  TRACES["mlm_top_k"] += 1
  model = nnx.merge(graphdef, state)
  out = model(input_ids, attention_mask, token_type_ids, masked_positions=positions_BxP)
  logits_BxPxV = getattr(out, "mlm_logits", out)
  probs_BxPxV = jax.nn.softmax(logits_BxPxV.astype(jnp.float32), axis=-1)
  return jax.lax.top_k(probs_BxPxV, top_k)


@functools.partial(jax.jit, static_argnames=("graphdef", "pooling"))
def encode(graphdef, state, input_ids, attention_mask, token_type_ids, *, pooling: str):
  """Pooled [B, D] embeddings ("mean" over the attention mask, "cls", "pooler") or tokens."""
  TRACES["encode"] += 1
  out = nnx.merge(graphdef, state)(input_ids, attention_mask, token_type_ids)
  x_BxLxD = out.last_hidden_state.astype(jnp.float32)
  if pooling == "tokens":
    return x_BxLxD
  if pooling == "pooler":
    return out.pooler_output.astype(jnp.float32)
  return pool_tokens(x_BxLxD, attention_mask, pooling)


def pool_tokens(x_BxLxD: jax.Array, attention_mask_BxL: jax.Array, pooling: str) -> jax.Array:
  """sentence-transformers' Pooling module: [B, D] f32 from the last layer's [B, L, D].

  "mean": sum over real tokens / max(count, 1e-9); "cls": the first token; "lasttoken": the
  last real token (right padding, as its pooling_mode_lasttoken).
  """
  x_BxLxD = x_BxLxD.astype(jnp.float32)
  if pooling == "cls":
    return x_BxLxD[:, 0]
  mask_BxL = attention_mask_BxL.astype(jnp.float32)
  if pooling == "lasttoken":
    last_B = jnp.maximum(jnp.sum(mask_BxL, axis=1).astype(jnp.int32) - 1, 0)
    return jnp.take_along_axis(x_BxLxD, last_B[:, None, None], axis=1)[:, 0]
  if pooling != "mean":
    raise ValueError(f"pooling={pooling!r} is not one of mean, cls, lasttoken.")
  mask_BxLx1 = mask_BxL[:, :, None]
  return (x_BxLxD * mask_BxLx1).sum(1) / jnp.maximum(mask_BxLx1.sum(1), 1e-9)
