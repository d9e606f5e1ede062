"""Decoding for `seq2seq_modeling.BertEncoderDecoder`: greedy search and beam search with a
length penalty, each compiled once per (batch, source length, settings).

Dimension letters: B batch, K beams, V vocab, M source length, S = max_length (decoder slots).

Everything has a fixed shape: the decoder's self-attention keys and values live in a KV cache of
S slots per layer (filled one slot per step), the cross-attention keys and values are computed
once, and the loop is a `jax.lax.while_loop` that stops when every row has ended (EOS) or S
tokens are reached. Outputs are [B, S] token ids starting with `decoder_start_token_id`, padded
with `pad_token_id` after each row's EOS.

A copy model (seq2seq_modeling, `copy=True`) takes the source ids into its cache and returns
the log-probabilities of its pointer-generator mixture where a plain one returns logits; argmax
and log_softmax treat both alike, so both searches serve it unchanged.

Beam search follows transformers' `generate(num_beams=K)` (the vectorised beam search of
transformers 5) step for step, so the same model and settings give the same tokens:
2K candidates per row from all beams, candidates that end (EOS, or the S-th token) become
finished hypotheses scored `sum log p / generated_length ** length_penalty` (among the top K
only), the best K unfinished ones continue; `early_stopping` True stops a row once it has K
finished hypotheses, False (and "never") use transformers' heuristics of whether a running beam
can still beat the worst finished one.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

_NEG = -1.0e9


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
  max_length: int = 64  # decoder tokens including the start token
  num_beams: int = 1  # 1: greedy
  length_penalty: float = 1.0
  early_stopping: bool | str = True  # True | False | "never" (as transformers)
  decoder_start_token_id: int = 101
  eos_token_id: int = 102
  pad_token_id: int = 0


def generate(model, input_ids, attention_mask, config: GenerationConfig) -> np.ndarray:
  """Token ids [B, max_length] (numpy) for source ids / mask [B, M]."""
  if config.num_beams < 1 or config.max_length < 2:
    raise ValueError(f"num_beams={config.num_beams} and max_length={config.max_length} must be "
                     ">= 1 and >= 2.")
  return _run(model, input_ids, attention_mask, config, config.num_beams > 1)


def beam_search_ids(model, input_ids, attention_mask, config: GenerationConfig) -> np.ndarray:
  """`generate` through the beam search even for num_beams=1 (which `generate` runs greedily;
  the two agree when early_stopping is True)."""
  return _run(model, input_ids, attention_mask, config, True)


def _run(model, input_ids, attention_mask, config, beams: bool) -> np.ndarray:
  graphdef, state = nnx.split(model)
  out = _generate(graphdef, state, jnp.asarray(input_ids, jnp.int32),
                  jnp.asarray(attention_mask, jnp.int32), config, beams)
  return np.asarray(out)


@functools.partial(jax.jit, static_argnums=(0, 4, 5))
def _generate(graphdef, state, input_ids_BxM, mask_BxM, config: GenerationConfig, beams: bool):
  model = nnx.merge(graphdef, state)
  if beams:
    return beam_search(model, input_ids_BxM, mask_BxM, config)
  return greedy(model, input_ids_BxM, mask_BxM, config)


def greedy(model, input_ids_BxM, mask_BxM, config: GenerationConfig) -> jax.Array:
  c = config
  b, s = input_ids_BxM.shape[0], c.max_length
  cache = model.init_cache(model.encode(input_ids_BxM, mask_BxM), mask_BxM, s, input_ids_BxM)
  seq_BxS = jnp.full((b, s), c.pad_token_id, jnp.int32).at[:, 0].set(c.decoder_start_token_id)

  def cond(carry):
    t, _, done_B, _ = carry
    return (t < s) & ~jnp.all(done_B)

  def body(carry):
    t, seq_BxS, done_B, cache = carry
    logits_BxV, cache = model.decode_step(seq_BxS[:, t - 1], t - 1, cache)
    next_B = jnp.where(done_B, c.pad_token_id, jnp.argmax(logits_BxV, -1).astype(jnp.int32))
    seq_BxS = jax.lax.dynamic_update_slice_in_dim(seq_BxS, next_B[:, None], t, axis=1)
    return t + 1, seq_BxS, done_B | (next_B == c.eos_token_id), cache

  _, seq_BxS, _, _ = jax.lax.while_loop(cond, body, (1, seq_BxS, jnp.zeros((b,), bool), cache))
  return seq_BxS


def _gather(x_BxKx, idx_BxJ):
  """x[b, idx[b, j]] along the beam axis."""
  return jnp.take_along_axis(x_BxKx, idx_BxJ.reshape(idx_BxJ.shape + (1,) * (x_BxKx.ndim - 2)),
                             axis=1)


def beam_search(model, input_ids_BxM, mask_BxM, config: GenerationConfig) -> jax.Array:
  """The best finished hypothesis of each row, [B, S]."""
  c = config
  b, k, s = input_ids_BxM.shape[0], c.num_beams, c.max_length
  enc_BxMxD = model.encode(input_ids_BxM, mask_BxM)
  cache = model.init_cache(jnp.repeat(enc_BxMxD, k, axis=0), jnp.repeat(mask_BxM, k, axis=0), s,
                           jnp.repeat(input_ids_BxM, k, axis=0))
  running_BxKxS = jnp.full((b, k, s), c.pad_token_id, jnp.int32).at[:, :, 0].set(
      c.decoder_start_token_id)
  running_scores_BxK = jnp.zeros((b, k)).at[:, 1:].set(_NEG)  # expand beam 0 only at first
  top_k_mask_2K = jnp.arange(2 * k) < k
  lp = c.length_penalty

  def cond(carry):
    return ~carry["stop"]

  def body(carry):
    t = carry["t"]  # tokens so far; the next one goes to slot t
    running_BxKxS = carry["running"]
    logits_BKxV, cache = model.decode_step(running_BxKxS[:, :, t - 1].reshape(-1), t - 1,
                                           carry["cache"])
    v = logits_BKxV.shape[-1]
    logp_BxKxV = jax.nn.log_softmax(logits_BKxV.astype(jnp.float32), -1).reshape(b, k, v)
    logp_BxKV = (logp_BxKxV + carry["running_scores"][:, :, None]).reshape(b, k * v)
    # 2K candidates from all beams (so K can continue even if K of them end here).
    top_logp_Bx2K, top_idx_Bx2K = jax.lax.top_k(logp_BxKV, 2 * k)
    src_beam_Bx2K, token_Bx2K = top_idx_Bx2K // v, (top_idx_Bx2K % v).astype(jnp.int32)
    cand_Bx2KxS = _gather(running_BxKxS, src_beam_Bx2K)
    cand_Bx2KxS = jax.lax.dynamic_update_slice_in_dim(cand_Bx2KxS, token_Bx2K[:, :, None], t,
                                                      axis=2)
    ends_Bx2K = (token_Bx2K == c.eos_token_id) | (t + 1 >= s)
    # The K best candidates that go on.
    go_on_Bx2K = top_logp_Bx2K + ends_Bx2K * _NEG
    _, keep_BxK = jax.lax.top_k(go_on_Bx2K, k)
    running_BxKxS = _gather(cand_Bx2KxS, keep_BxK)
    running_scores_BxK = _gather(go_on_Bx2K, keep_BxK)
    parent_BxK = _gather(src_beam_Bx2K, keep_BxK)
    # Finished hypotheses: merge the new ones (top K candidates that end) and keep the K best.
    finished_Bx2K = ends_Bx2K & top_k_mask_2K[None]
    score_Bx2K = top_logp_Bx2K / (t.astype(jnp.float32) ** lp)
    full_Bx1 = jnp.all(carry["finished"], -1, keepdims=True) & (c.early_stopping is True)
    score_Bx2K = (score_Bx2K + full_Bx1 * _NEG + (~carry["improvable"]) * _NEG
                  + (~finished_Bx2K) * _NEG)
    merged_seq = jnp.concatenate([carry["sequences"], cand_Bx2KxS], 1)
    merged_score = jnp.concatenate([carry["scores"], score_Bx2K], 1)
    merged_done = jnp.concatenate([carry["finished"], finished_Bx2K], 1)
    _, best_BxK = jax.lax.top_k(merged_score, k)
    sequences_BxKxS = _gather(merged_seq, best_BxK)
    scores_BxK = _gather(merged_score, best_BxK)
    done_BxK = _gather(merged_done, best_BxK)
    # The cache follows the beams that go on.
    rows_BK = (jnp.arange(b)[:, None] * k + parent_BxK).reshape(-1)
    cache = cache._replace(layers=tuple(
        lc._replace(self_k=lc.self_k[rows_BK], self_v=lc.self_v[rows_BK]) for lc in cache.layers))
    t = t + 1
    # Can a running beam still beat the worst finished one? (transformers' heuristic)
    best_len = (s - 1) if (c.early_stopping == "never" and lp > 0.0) else (t - 1)
    best_running_Bx1 = running_scores_BxK[:, :1] / (jnp.float32(best_len) ** lp)
    worst_BxK = jnp.where(done_BxK, jnp.min(scores_BxK, 1, keepdims=True), _NEG)
    improvable_Bx1 = carry["improvable"] & jnp.any(best_running_Bx1 > worst_BxK, -1,
                                                   keepdims=True)
    open_beams = ~(jnp.all(done_BxK) & (c.early_stopping is True))
    stop = ~(jnp.any(improvable_Bx1) & open_beams & ~jnp.all(ends_Bx2K))
    return dict(t=t, running=running_BxKxS, running_scores=running_scores_BxK,
                sequences=sequences_BxKxS, scores=scores_BxK, finished=done_BxK,
                improvable=improvable_Bx1, cache=cache, stop=stop)

  carry = dict(t=jnp.int32(1), running=running_BxKxS, running_scores=running_scores_BxK,
               sequences=running_BxKxS, scores=jnp.full((b, k), _NEG),
               finished=jnp.zeros((b, k), bool), improvable=jnp.ones((b, 1), bool), cache=cache,
               stop=jnp.bool_(False))
  out = jax.lax.while_loop(cond, body, carry)
  return out["sequences"][:, 0]


def strip(ids_S, config: GenerationConfig) -> list[int]:
  """The generated tokens of one row: without the start token, up to (not including) EOS."""
  out = []
  for i in list(ids_S)[1:]:
    if i == config.eos_token_id or i == config.pad_token_id:
      break
    out.append(int(i))
  return out
