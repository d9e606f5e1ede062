"""The ModernBERT encoder and its heads in Flax NNX, as transformers 5's ModernBert* compute them.

Dimension legend (used in tensor names such as `x_BxLxD`):
  B batch   L query length   M key length   D hidden_size   N attention heads
  H head size (D / N)   F intermediate_size (GLU width)   V vocab_size   C classes   P positions

Per layer (pre-LayerNorm; layer 0 has no attention norm because the embeddings are normed):
  x = x + Wo(attention(rope(Wqkv(attn_norm(x)))))
  x = x + Wo(act(input) * gate)  where input, gate = split(Wi(mlp_norm(x)))
Global layers attend to every real token with RoPE base `global_rope_theta`; local layers only to
keys within `local_attention // 2` positions, with base `local_rope_theta`. No position table.

Parameter names follow HF's module tree (`embeddings.tok_embeddings`, `layers.{i}.attn.Wqkv`,
`head.dense`, `decoder.bias`, ...) so conversion is a rename plus reshapes. Every parameter carries
logical axis names from sharding.DEFAULT_RULES' vocabulary; the stacked q/k/v axis and the GLU's
input/gate axis are unnamed (replicated). Pure modules: no I/O, no mesh; dropout takes explicit
keys (`dropout_rng=None` is evaluation).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from bert_jax import attention as attention_lib
from bert_jax.errors import DataError
from bert_jax.layers import Dense, Embed, LayerNorm, activation, dropout, param
from bert_jax.modern_configuration import ModernBertConfig


def _fold(key: jax.Array | None, i: int) -> jax.Array | None:
  return None if key is None else jax.random.fold_in(key, i)


class ModernBertOutput(NamedTuple):
  last_hidden_state: jax.Array  # [B, L, D] f32 (after the final norm)
  pooler_output: jax.Array | None = None  # ModernBERT has no pooler; kept for BertOutput's shape.
  hidden_states: tuple[jax.Array, ...] | None = None  # embeddings, each layer; last one normed
  attentions: tuple[jax.Array, ...] | None = None  # each layer, [B, N, L, M]


def _norm(config: ModernBertConfig, rngs, axis_name: str = "embed") -> LayerNorm:
  """layers.LayerNorm, with a bias only when `norm_bias` (ModernBERT's default has none)."""
  return LayerNorm(config.hidden_size, config.norm_eps, use_bias=config.norm_bias,
                   param_dtype=config.param_dtype, rngs=rngs, axis_name=axis_name)


def _stds(config: ModernBertConfig) -> dict[str, float]:
  # ModernBertPreTrainedModel._init_weights: inputs, outputs (scaled by depth), classifier.
  return {"in": config.initializer_range,
          "out": config.initializer_range / math.sqrt(2.0 * config.num_hidden_layers),
          "final_out": config.hidden_size ** -0.5}


def _dense(config, in_shape, out_shape, in_axes, out_axes, std, use_bias, rngs) -> Dense:
  # Initialised as transformers does: trunc_normal_ cut at initializer_cutoff_factor stds.
  return Dense(in_shape, out_shape, in_axes, out_axes, init_std=std, dtype=config.compute_dtype,
               param_dtype=config.param_dtype, rngs=rngs, use_bias=use_bias,
               init_cutoff=config.initializer_cutoff_factor)


# ------------------------------------------------------------------ rotary position embeddings
def rope_cos_sin(position_ids_BxL: jax.Array, head_size: int, theta: float):
  """cos, sin [B, L, H] in f32, HF's layout: frequencies repeated over both halves of H."""
  inv_freq_Hh = 1.0 / (theta ** (jnp.arange(0, head_size, 2, dtype=jnp.float32) / head_size))
  freqs_BxLxHh = position_ids_BxL.astype(jnp.float32)[..., None] * inv_freq_Hh
  emb_BxLxH = jnp.concatenate([freqs_BxLxHh, freqs_BxLxHh], axis=-1)
  return jnp.cos(emb_BxLxH), jnp.sin(emb_BxLxH)


def apply_rope(x_BxLxNxH: jax.Array, cos_BxLxH: jax.Array, sin_BxLxH: jax.Array) -> jax.Array:
  """x * cos + rotate_half(x) * sin, rotate_half(x) = [-x2, x1] for the halves x1, x2 of H."""
  x = x_BxLxNxH.astype(jnp.float32)
  half = x.shape[-1] // 2
  rotated_BxLxNxH = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  return x * cos_BxLxH[:, :, None, :] + rotated_BxLxNxH * sin_BxLxH[:, :, None, :]


# Boolean [1, 1, L, M]: |l - m| <= half_window, by index as transformers defines it.
sliding_window_mask = attention_lib.window_mask


# ------------------------------------------------------------------ the encoder
class ModernBertEmbeddings(nnx.Module):
  """Token embeddings -> norm -> dropout (no position or token type tables)."""

  def __init__(self, config: ModernBertConfig, *, rngs: nnx.Rngs):
    self.tok_embeddings = Embed(config.vocab_size, config.hidden_size, ("vocab", "embed"),
                                init_std=config.initializer_range, dtype=config.compute_dtype,
                                param_dtype=config.param_dtype, rngs=rngs,
                                init_cutoff=config.initializer_cutoff_factor)
    self.norm = _norm(config, rngs)
    self.rate = config.embedding_dropout

  def __call__(self, input_ids_BxL, dropout_rng):
    return dropout(self.norm(self.tok_embeddings(input_ids_BxL)), self.rate, dropout_rng)


class ModernBertAttention(nnx.Module):
  """Fused QKV projection, RoPE on q and k, masked attention, output projection."""

  def __init__(self, config: ModernBertConfig, *, rngs: nnx.Rngs, half_window: int | None = None):
    d, n, h = config.hidden_size, config.num_attention_heads, config.head_size
    std = _stds(config)
    self.half_window = half_window  # None on global layers; config.sliding_window on local ones.
    # HF's Wqkv output [3 * N * H] is viewed as (3, N, H): q, k, v, each head-major.
    self.Wqkv = _dense(config, (d,), (3, n, h), ("embed",), (None, "heads", "kv"), std["in"],
                       config.attention_bias, rngs)
    self.Wo = _dense(config, (n, h), (d,), ("heads", "kv"), ("embed",), std["out"],
                     config.attention_bias, rngs)
    self.impl = config.attention_impl
    self.dtype = config.compute_dtype
    self.rate = config.attention_dropout

  def __call__(self, x_BxLxD, cos_sin, mask: attention_lib.MaskSpec, dropout_rng, want_probs):
    qkv_BxLx3xNxH = self.Wqkv(x_BxLxD)
    q_BxLxNxH, k_BxLxNxH, v_BxLxNxH = (qkv_BxLx3xNxH[:, :, i] for i in range(3))
    cos_BxLxH, sin_BxLxH = cos_sin
    q_BxLxNxH = apply_rope(q_BxLxNxH, cos_BxLxH, sin_BxLxH)
    k_BxLxNxH = apply_rope(k_BxLxNxH, cos_BxLxH, sin_BxLxH)
    ctx_BxLxNxH, probs = attention_lib.dot_product_attention(
        q_BxLxNxH, k_BxLxNxH, v_BxLxNxH, mask, impl=self.impl, dtype=self.dtype,
        dropout_rate=self.rate, dropout_rng=_fold(dropout_rng, 0), want_probs=want_probs,
        half_window=self.half_window)
    # HF applies attention_dropout a second time, to the output projection.
    return dropout(self.Wo(ctx_BxLxNxH), self.rate, _fold(dropout_rng, 1)), probs


class ModernBertMLP(nnx.Module):
  """GeGLU: Wi -> (input, gate) -> act(input) * gate -> dropout -> Wo."""

  def __init__(self, config: ModernBertConfig, *, rngs: nnx.Rngs):
    d, f = config.hidden_size, config.intermediate_size
    std = _stds(config)
    # HF's Wi output [2 * F] is chunked into (input, gate): viewed here as (2, F).
    self.Wi = _dense(config, (d,), (2, f), ("embed",), (None, "mlp"), std["in"], config.mlp_bias,
                     rngs)
    self.Wo = _dense(config, (f,), (d,), ("mlp",), ("embed",), std["out"], config.mlp_bias, rngs)
    self.act = activation(config.hidden_activation)
    self.rate = config.mlp_dropout

  def __call__(self, x_BxLxD, dropout_rng):
    wi_BxLx2xF = self.Wi(x_BxLxD)
    h_BxLxF = self.act(wi_BxLx2xF[:, :, 0]) * wi_BxLx2xF[:, :, 1]
    return self.Wo(dropout(h_BxLxF, self.rate, dropout_rng))


class ModernBertEncoderLayer(nnx.Module):

  def __init__(self, config: ModernBertConfig, layer_idx: int, *, rngs: nnx.Rngs):
    # Layer 0's attention norm is the identity (the embeddings end with a norm).
    self.attn_norm = _norm(config, rngs) if layer_idx else None
    half_window = None if config.is_global(layer_idx) else config.sliding_window
    self.attn = ModernBertAttention(config, rngs=rngs, half_window=half_window)
    self.mlp_norm = _norm(config, rngs)
    self.mlp = ModernBertMLP(config, rngs=rngs)

  def __call__(self, x_BxLxD, cos_sin, mask, dropout_rng, want_probs=False):
    normed_BxLxD = x_BxLxD if self.attn_norm is None else self.attn_norm(x_BxLxD)
    a_BxLxD, probs = self.attn(normed_BxLxD, cos_sin, mask, _fold(dropout_rng, 0),
                               want_probs)
    x_BxLxD = x_BxLxD + a_BxLxD
    x_BxLxD = x_BxLxD + self.mlp(self.mlp_norm(x_BxLxD), _fold(dropout_rng, 1))
    return x_BxLxD, probs


class ModernBertModel(nnx.Module):
  """Embeddings, `num_hidden_layers` pre-LN layers (global/local attention), final norm."""

  def __init__(self, config: ModernBertConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.embeddings = ModernBertEmbeddings(config, rngs=rngs)
    self.layers = nnx.List([ModernBertEncoderLayer(config, i, rngs=rngs)
                            for i in range(config.num_hidden_layers)])
    self.final_norm = _norm(config, rngs)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, *,
               packed_segment_ids=None, dropout_rng=None, output_hidden_states: bool = False,
               output_attentions: bool = False) -> ModernBertOutput:
    """Runs the encoder.

    Args:
      input_ids: int [B, L] (a flat [L] sequence gets a batch axis of 1).
      attention_mask: [B, L], 1 for real tokens, 0 for padding. Default: all ones.
      token_type_ids: ignored (ModernBERT has no token types); the argument keeps BertModel's
        positional order (input_ids, attention_mask, token_type_ids, position_ids), so every
        tool that calls a BERT model calls a ModernBERT one unchanged.
      position_ids: [B, L] for RoPE and the local window. Default: 0..L-1.
      packed_segment_ids: [B, L], 1..K per packed sequence, 0 for padding; blocks attention
        between sequences packed into one row (pass restarted position_ids with it).
      dropout_rng: a PRNG key to train with dropout; None evaluates deterministically.
    """
    config = self.config
    input_ids_BxL = jnp.asarray(input_ids)
    if input_ids_BxL.ndim == 1:
      input_ids_BxL = input_ids_BxL[None]
    b, seq_len = input_ids_BxL.shape
    if seq_len > config.max_position_embeddings:
      raise DataError(
          f"Input has {seq_len} tokens but the model accepts at most "
          f"{config.max_position_embeddings} (max_position_embeddings); truncate the input or "
          "split it into windows.")

    def batched(x, default):
      x = default if x is None else jnp.asarray(x)
      return x[None] if x.ndim == 1 else x

    attention_mask_BxL = batched(attention_mask, jnp.ones((b, seq_len), jnp.int32))
    position_ids_BxL = batched(position_ids, jnp.broadcast_to(jnp.arange(seq_len), (b, seq_len)))
    position_ids_BxL = jnp.broadcast_to(position_ids_BxL, (b, seq_len))
    packed_BxL = None if packed_segment_ids is None else batched(packed_segment_ids, None)
    if packed_BxL is not None and not isinstance(packed_BxL, jax.core.Tracer):
      attention_lib.check_packed_batch(packed_BxL, attention_mask_BxL, position_ids_BxL)
    # Each layer's attention adds its own window (local layers) to this.
    mask = attention_lib.MaskSpec(attention_mask_BxL, packed_BxL)
    h = config.head_size
    global_cos_sin = rope_cos_sin(position_ids_BxL, h, config.global_rope_theta)
    local_cos_sin = rope_cos_sin(position_ids_BxL, h, config.local_rope_theta)

    x_BxLxD = self.embeddings(input_ids_BxL, _fold(dropout_rng, 0))
    hidden, attentions = [x_BxLxD], []
    layer_rng = _fold(dropout_rng, 1)
    for i, layer in enumerate(self.layers):
      is_global = config.is_global(i)
      call = (nnx.remat(lambda lyr, *a: lyr(*a), static_argnums=(5,)) if config.remat
              else (lambda lyr, *a: lyr(*a)))
      x_BxLxD, probs = call(layer, x_BxLxD, global_cos_sin if is_global else local_cos_sin,
                            mask, _fold(layer_rng, i), output_attentions)
      hidden.append(x_BxLxD)
      attentions.append(probs)
    x_BxLxD = self.final_norm(x_BxLxD)
    hidden[-1] = x_BxLxD  # As transformers 5: the last entry is the final (normed) output.
    return ModernBertOutput(x_BxLxD, None, tuple(hidden) if output_hidden_states else None,
                            tuple(attentions) if output_attentions else None)


# ------------------------------------------------------------------ heads
class ModernBertPredictionHead(nnx.Module):
  """dense (bias: classifier_bias) -> classifier_activation -> norm; shared by every head."""

  def __init__(self, config: ModernBertConfig, *, rngs: nnx.Rngs):
    d = config.hidden_size
    self.dense = _dense(config, (d,), (d,), ("embed",), ("hidden",), _stds(config)["out"],
                        config.classifier_bias, rngs)
    self.act = activation(config.classifier_activation)
    self.norm = _norm(config, rngs, axis_name="hidden")

  def __call__(self, x):
    return self.norm(self.act(self.dense(x)))


class ModernBertDecoder(nnx.Module):
  """Logits against the tied token embeddings, plus a bias when `decoder_bias`."""

  def __init__(self, config: ModernBertConfig, *, rngs: nnx.Rngs):
    self.bias = (param(rngs, nnx.initializers.zeros, (config.vocab_size,), ("vocab",),
                       config.param_dtype) if config.decoder_bias else None)

  def __call__(self, x_xD, tok_embeddings: Embed):
    logits_xV = tok_embeddings.attend(x_xD)
    return logits_xV if self.bias is None else logits_xV + self.bias[...].astype(jnp.float32)


def gather_positions(x_BxLxD: jax.Array, positions_BxP: jax.Array) -> jax.Array:
  return jnp.take_along_axis(x_BxLxD, positions_BxP[:, :, None].astype(jnp.int32), axis=1)


class ModernBertForMaskedLM(nnx.Module):
  """Encoder -> head -> decoder tied to the token embeddings (HF's `model` / `head` / `decoder`)."""

  def __init__(self, config: ModernBertConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.model = ModernBertModel(config, rngs=rngs)
    self.head = ModernBertPredictionHead(config, rngs=rngs)
    self.decoder = ModernBertDecoder(config, rngs=rngs)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, *,
               masked_positions=None,
               packed_segment_ids=None, dropout_rng=None) -> jax.Array:
    """MLM logits [B, L, V], or [B, P, V] at `masked_positions` [B, P] (fewer FLOPs)."""
    x = self.model(input_ids, attention_mask, None, position_ids,
                   packed_segment_ids=packed_segment_ids, dropout_rng=dropout_rng).last_hidden_state
    if masked_positions is not None:
      x = gather_positions(x, jnp.asarray(masked_positions))
    return self.decoder(self.head(x), self.model.embeddings.tok_embeddings)


def pool(x_BxLxD: jax.Array, attention_mask_BxL: jax.Array | None, how: str,
         packed_segment_ids_BxL=None, cls_positions_BxK=None) -> jax.Array:
  """`cls`: the first token; `mean`: the mean over real tokens (as HF divides, sum / count).

  Packed rows (tasks/packing.py, `cls_positions` [B, K]) pool each example: [B, K, D].
  """
  if cls_positions_BxK is not None:
    if how == "cls":
      return jnp.take_along_axis(x_BxLxD, cls_positions_BxK[:, :, None], axis=1)
    k = cls_positions_BxK.shape[1]
    in_BxLxK = (packed_segment_ids_BxL[:, :, None] == jnp.arange(1, k + 1)).astype(jnp.float32)
    sums_BxKxD = jnp.einsum("blk,bld->bkd", in_BxLxK, x_BxLxD.astype(jnp.float32))
    return sums_BxKxD / jnp.maximum(in_BxLxK.sum(axis=1), 1.0)[:, :, None]
  if how == "cls":
    return x_BxLxD[:, 0]
  if attention_mask_BxL is None:
    return jnp.mean(x_BxLxD, axis=1)
  m_BxL = jnp.asarray(attention_mask_BxL).astype(jnp.float32)
  if m_BxL.ndim == 1:
    m_BxL = m_BxL[None]
  return (x_BxLxD * m_BxL[:, :, None]).sum(axis=1) / m_BxL.sum(axis=1, keepdims=True)


class _ClassifierBase(nnx.Module):

  def __init__(self, config: ModernBertConfig, num_labels: int, *, rngs: nnx.Rngs):
    self.config, self.num_labels = config, num_labels
    self.model = ModernBertModel(config, rngs=rngs)
    self.head = ModernBertPredictionHead(config, rngs=rngs)
    # HF's classifier is a plain nn.Linear: always with a bias.
    self.classifier = _dense(config, (config.hidden_size,), (num_labels,), ("embed",),
                             ("classes",), _stds(config)["final_out"], True, rngs)

  def _logits(self, x, dropout_rng):
    return self.classifier(dropout(self.head(x), self.config.classifier_dropout, dropout_rng))


class ModernBertForSequenceClassification(_ClassifierBase):
  """Pooled (`classifier_pooling`) -> head -> dropout -> classifier: logits [B, C]."""

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, *,
               packed_segment_ids=None, cls_positions=None, dropout_rng=None):
    """Logits [B, C]; packed rows (tasks/packing.py) with `cls_positions` [B, K]: [B, K, C]."""
    x_BxLxD = self.model(input_ids, attention_mask, None, position_ids,
                         packed_segment_ids=packed_segment_ids,
                         dropout_rng=_fold(dropout_rng, 0)).last_hidden_state
    pooled = pool(x_BxLxD, attention_mask, self.config.classifier_pooling, packed_segment_ids,
                  cls_positions)
    return self._logits(pooled, _fold(dropout_rng, 1))


class ModernBertForTokenClassification(_ClassifierBase):
  """Per-token head -> dropout -> classifier: logits [B, L, C] (NER)."""

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, *,
               packed_segment_ids=None, dropout_rng=None):
    x_BxLxD = self.model(input_ids, attention_mask, None, position_ids,
                         packed_segment_ids=packed_segment_ids,
                         dropout_rng=_fold(dropout_rng, 0)).last_hidden_state
    return self._logits(x_BxLxD, _fold(dropout_rng, 1))


class ModernBertForQuestionAnswering(nnx.Module):
  """Span extraction: (start_logits [B, L], end_logits [B, L])."""

  def __init__(self, config: ModernBertConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.model = ModernBertModel(config, rngs=rngs)
    self.head = ModernBertPredictionHead(config, rngs=rngs)
    self.classifier = _dense(config, (config.hidden_size,), (2,), ("embed",), ("classes",),
                             _stds(config)["final_out"], True, rngs)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, *,
               dropout_rng=None):
    x_BxLxD = self.model(input_ids, attention_mask, None, position_ids,
                         dropout_rng=_fold(dropout_rng, 0)).last_hidden_state
    h_BxLxD = dropout(self.head(x_BxLxD), self.config.classifier_dropout, _fold(dropout_rng, 1))
    logits_BxLx2 = self.classifier(h_BxLxD)
    return logits_BxLx2[..., 0], logits_BxLx2[..., 1]


ARCHITECTURES = {cls.__name__: cls for cls in (
    ModernBertModel, ModernBertForMaskedLM, ModernBertForSequenceClassification,
    ModernBertForTokenClassification, ModernBertForQuestionAnswering)}


def create_model(cls, config: ModernBertConfig, seed: int = 0, **kwargs):
  """Instantiates `cls(config, rngs=...)` with initialised parameters."""
  return cls(config, rngs=nnx.Rngs(params=seed), **kwargs)
