"""Contrastive losses for embedding models: in-batch-negatives InfoNCE over the global batch,
with hard negatives, a symmetric option, Matryoshka dimensions and GradCache-style chunking.

Dimension letters: B queries (the global batch), P passages (B positives then B*K hard
negatives), D embedding width, L tokens, C chunks.

Global negatives: the loss runs inside the jitted train step on *global* arrays sharded over the
mesh's batch axes. The passage embeddings are constrained to be replicated (all-gathered) and
the queries to stay sharded over "batch", so each device scores its queries against every
passage of every device and host: the negatives are the whole global batch, not one device's
share, and the loss equals the single-device loss on the same global batch.

GradCache (Gao et al. 2021) without a second backward pass in user code: the embeddings are
computed chunk by chunk in a `lax.map` whose body is `jax.checkpoint`ed with nothing saved. The
forward pass keeps only each chunk's [n, D] embeddings; JAX's backward pass takes the gradient
of the loss with respect to all embeddings, then recomputes one chunk at a time and pulls that
gradient back through it (a vjp), accumulating the parameter gradients over chunks. That is
exactly GradCache's embed-without-grad / grad-wrt-embeddings / recompute-with-vjp, so the
activation memory is one chunk's, whatever the global batch (dropout keys are folded from the
chunk index, so the recomputation sees the same masks).
"""
from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from bert_jax import sharding


def embed_chunked(encode_fn: Callable[[dict, jax.Array | None], jax.Array], inputs: dict,
                  num_chunks: int, rng: jax.Array | None) -> jax.Array:
  """[N, D] f32 embeddings of `inputs` ({name: [N, ...]}) by encode_fn(chunk, rng).

  num_chunks > 1 is the GradCache memory saving (see the module docstring); chunk c holds rows
  c, c + C, c + 2C, ... so that every chunk spans all data shards.
  """
  n = next(iter(inputs.values())).shape[0]
  if num_chunks <= 1:
    return encode_fn(inputs, rng)
  if n % num_chunks:
    raise ValueError(f"{n} rows do not split into {num_chunks} GradCache chunks.")
  # [N, ...] -> [N/C, C, ...] -> [C, N/C, ...]: chunk c takes rows c, c + C, ...
  chunks = {k: v.reshape(n // num_chunks, num_chunks, *v.shape[1:]).swapaxes(0, 1)
            for k, v in inputs.items()}
  body = jax.checkpoint(
      lambda xs: encode_fn(xs[1], None if rng is None else jax.random.fold_in(rng, xs[0])),
      policy=jax.checkpoint_policies.nothing_saveable)
  out_CxNcxD = jax.lax.map(body, (jnp.arange(num_chunks), chunks))
  return out_CxNcxD.swapaxes(0, 1).reshape(n, -1)  # back to the rows' order


def _normalize(x_NxD: jax.Array) -> jax.Array:
  # torch.nn.functional.normalize (sentence-transformers' cos_sim): x / max(||x||, 1e-12).
  return x_NxD / jnp.maximum(jnp.linalg.norm(x_NxD, axis=-1, keepdims=True), 1e-12)


def info_nce(q_BxD: jax.Array, p_PxD: jax.Array, scale: jax.Array, symmetric: bool = False
             ) -> tuple[jax.Array, jax.Array]:
  """MultipleNegativesRankingLoss: cross-entropy of scale * cos(q_i, p_j) over all passages,
  the target of query i being passage i (p rows B.. are hard negatives).

  symmetric: adds the passage -> query direction over the positives (as sentence-transformers'
  MultipleNegativesSymmetricRankingLoss) and averages the two.
  Returns (loss, number of queries whose positive scores highest).
  """
  b = q_BxD.shape[0]
  q_BxD = sharding.constrain(_normalize(q_BxD.astype(jnp.float32)), ("batch", None))
  # Replicated: every device sees every passage of the global batch as a negative.
  p_PxD = sharding.constrain(_normalize(p_PxD.astype(jnp.float32)), (None, None))
  scores_BxP = scale * (q_BxD @ p_PxD.T)
  labels_B = jnp.arange(b)
  logp_BxP = jax.nn.log_softmax(scores_BxP, axis=-1)
  loss = -jnp.mean(jnp.take_along_axis(logp_BxP, labels_B[:, None], axis=-1))
  correct = jnp.sum(jnp.argmax(scores_BxP, axis=-1) == labels_B)
  if symmetric:
    logp_BxB = jax.nn.log_softmax(scores_BxP[:, :b].T, axis=-1)  # passage i over the queries
    back = -jnp.mean(jnp.take_along_axis(logp_BxB, labels_B[:, None], axis=-1))
    loss = 0.5 * (loss + back)
  return loss, correct


def retrieval_loss(q_BxD: jax.Array, p_PxD: jax.Array, scale: jax.Array, *,
                   symmetric: bool = False, matryoshka_dims: tuple[int, ...] = ()
                   ) -> tuple[jax.Array, dict]:
  """info_nce, or with Matryoshka dims the sum of info_nce over the leading d dimensions of
  each embedding (each re-normalised), as sentence-transformers' MatryoshkaLoss with its default
  weights of 1. Returns (loss, metrics as {name: (sum, weight)})."""
  dims = matryoshka_dims or (q_BxD.shape[-1],)
  n = jnp.float32(q_BxD.shape[0])
  total, metrics = 0.0, {}
  for d in dims:
    loss_d, correct = info_nce(q_BxD[:, :d], p_PxD[:, :d], scale, symmetric)
    total = total + loss_d
    name = "in_batch_accuracy" if d == dims[0] else f"in_batch_accuracy_{d}"
    metrics[name] = (correct.astype(jnp.float32), n)
  metrics["logit_scale"] = (jnp.asarray(scale, jnp.float32), jnp.float32(1.0))
  return total, metrics
