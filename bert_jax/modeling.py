"""The BERT encoder in Flax NNX (post-LayerNorm, as released by Google).

Dimension legend (used in tensor names such as `x_BxLxD`):
  B batch            L query length        M key length       D hidden_size (model width)
  N attention heads  H head size (D / N)   F intermediate_size
  V vocab_size       T type_vocab_size     P masked positions K packed sequences per row

Parameter names follow Hugging Face's module tree (`embeddings.word_embeddings`,
`encoder.layer.{i}.attention.self.query`, ...) so conversion is a rename plus reshapes.
The model is pure: no I/O, no mesh, no config dicts. Dropout takes an explicit key
(`dropout_rng=None` is evaluation), so a train step's randomness is a function of its step key.
Under a mesh (`jax.set_mesh`) the [B, L, D] activations between layers are constrained to the
logical axes ("batch", "length", "embed") through the current rules (`sharding.constrain`); with
no mesh that is a no-op.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from bert_jax import attention as attention_lib
from bert_jax import sharding
from bert_jax.configuration import PRESETS, BertConfig, preset  # noqa: F401 (re-exported)
from bert_jax.layers import Dense, Embed, LayerNorm, activation, dropout, param, truncated_normal


def _fold(key: jax.Array | None, i: int) -> jax.Array | None:
  return None if key is None else jax.random.fold_in(key, i)


class BertOutput(NamedTuple):
  last_hidden_state: jax.Array  # [B, L, D] f32
  pooler_output: jax.Array | None  # [B, D], or [B, K, D] with cls_positions
  hidden_states: tuple[jax.Array, ...] | None = None  # embeddings + each layer, [B, L, D]
  attentions: tuple[jax.Array, ...] | None = None  # each layer, [B, N, L, M]


class BertEmbeddings(nnx.Module):

  def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
    kw = dict(init_std=config.initializer_range, dtype=config.compute_dtype,
              param_dtype=config.param_dtype, rngs=rngs)
    self.word_embeddings = Embed(config.vocab_size, config.hidden_size, ("vocab", "embed"), **kw)
    self.position_embeddings = Embed(config.max_position_embeddings, config.hidden_size,
                                     ("max_len", "embed"), **kw)
    self.token_type_embeddings = Embed(config.type_vocab_size, config.hidden_size,
                                       ("type_vocab", "embed"), **kw)
    self.LayerNorm = LayerNorm(config.hidden_size, config.layer_norm_eps,
                               param_dtype=config.param_dtype, rngs=rngs)
    self.rate = config.hidden_dropout_prob

  def __call__(self, input_ids_BxL, token_type_ids_BxL, position_ids_BxL, dropout_rng):
    x_BxLxD = (self.word_embeddings(input_ids_BxL) + self.position_embeddings(position_ids_BxL)
               + self.token_type_embeddings(token_type_ids_BxL))
    return dropout(self.LayerNorm(x_BxLxD), self.rate, dropout_rng)


class BertSelfAttention(nnx.Module):

  def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
    d, n, h = config.hidden_size, config.num_attention_heads, config.head_size
    kw = dict(init_std=config.initializer_range, dtype=config.compute_dtype,
              param_dtype=config.param_dtype, rngs=rngs)
    self.query = Dense((d,), (n, h), ("embed",), ("heads", "kv"), **kw)
    self.key = Dense((d,), (n, h), ("embed",), ("heads", "kv"), **kw)
    self.value = Dense((d,), (n, h), ("embed",), ("heads", "kv"), **kw)
    self.impl = config.attention_impl
    self.dtype = config.compute_dtype
    self.rate = config.attention_probs_dropout_prob

  def __call__(self, x_BxLxD, mask: attention_lib.MaskSpec, dropout_rng, want_probs):
    return attention_lib.dot_product_attention(
        self.query(x_BxLxD), self.key(x_BxLxD), self.value(x_BxLxD), mask,
        impl=self.impl, dtype=self.dtype, dropout_rate=self.rate, dropout_rng=dropout_rng,
        want_probs=want_probs)


class BertSelfOutput(nnx.Module):
  """Projection back to D, dropout, residual, LayerNorm (used after attention and after the FFN)."""

  def __init__(self, config: BertConfig, in_shape, in_axes, *, rngs: nnx.Rngs):
    self.dense = Dense(in_shape, (config.hidden_size,), in_axes, ("embed",),
                       init_std=config.initializer_range, dtype=config.compute_dtype,
                       param_dtype=config.param_dtype, rngs=rngs)
    self.LayerNorm = LayerNorm(config.hidden_size, config.layer_norm_eps,
                               param_dtype=config.param_dtype, rngs=rngs)
    self.rate = config.hidden_dropout_prob

  def __call__(self, y, residual_BxLxD, dropout_rng):
    return self.LayerNorm(dropout(self.dense(y), self.rate, dropout_rng) + residual_BxLxD)


class BertAttention(nnx.Module):

  def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
    self.self = BertSelfAttention(config, rngs=rngs)
    n, h = config.num_attention_heads, config.head_size
    self.output = BertSelfOutput(config, (n, h), ("heads", "kv"), rngs=rngs)

  def __call__(self, x_BxLxD, mask, dropout_rng, want_probs):
    ctx_BxLxNxH, probs = self.self(x_BxLxD, mask, _fold(dropout_rng, 0), want_probs)
    return self.output(ctx_BxLxNxH, x_BxLxD, _fold(dropout_rng, 1)), probs


class BertIntermediate(nnx.Module):

  def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
    self.dense = Dense((config.hidden_size,), (config.intermediate_size,), ("embed",), ("mlp",),
                       init_std=config.initializer_range, dtype=config.compute_dtype,
                       param_dtype=config.param_dtype, rngs=rngs)
    self.act = activation(config.hidden_act)

  def __call__(self, x_BxLxD):
    return self.act(self.dense(x_BxLxD))


class BertLayer(nnx.Module):

  def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
    self.attention = BertAttention(config, rngs=rngs)
    self.intermediate = BertIntermediate(config, rngs=rngs)
    self.output = BertSelfOutput(config, (config.intermediate_size,), ("mlp",), rngs=rngs)

  def __call__(self, x_BxLxD, mask, dropout_rng, want_probs=False):
    a_BxLxD, probs = self.attention(x_BxLxD, mask, _fold(dropout_rng, 0), want_probs)
    y_BxLxD = self.output(self.intermediate(a_BxLxD), a_BxLxD, _fold(dropout_rng, 1))
    return y_BxLxD, probs


class BertEncoder(nnx.Module):

  def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
    self.layer = nnx.List([BertLayer(config, rngs=rngs) for _ in range(config.num_hidden_layers)])
    self.remat = config.remat

  def __call__(self, x_BxLxD, mask, dropout_rng, output_hidden_states, want_probs):
    hidden, attentions = [x_BxLxD], []
    for i, layer in enumerate(self.layer):
      call = nnx.remat(lambda lyr, *a: lyr(*a), static_argnums=(4,)) if self.remat else (
          lambda lyr, *a: lyr(*a))
      x_BxLxD, probs = call(layer, x_BxLxD, mask, _fold(dropout_rng, i), want_probs)
      x_BxLxD = sharding.constrain(x_BxLxD, sharding.ACTIVATION_AXES)
      hidden.append(x_BxLxD)
      attentions.append(probs)
    return (x_BxLxD, tuple(hidden) if output_hidden_states else None,
            tuple(attentions) if want_probs else None)


class BertPooler(nnx.Module):

  def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
    self.dense = Dense((config.hidden_size,), (config.hidden_size,), ("embed",), ("hidden",),
                       init_std=config.initializer_range, dtype=config.compute_dtype,
                       param_dtype=config.param_dtype, rngs=rngs)

  def __call__(self, x_BxLxD, cls_positions_BxK=None):
    if cls_positions_BxK is None:
      return jnp.tanh(self.dense(x_BxLxD[:, 0]))
    cls_BxKxD = jnp.take_along_axis(x_BxLxD, cls_positions_BxK[:, :, None], axis=1)
    return jnp.tanh(self.dense(cls_BxKxD))


class BertModel(nnx.Module):
  """The encoder: embeddings, `num_hidden_layers` post-LN layers and (optionally) the pooler."""

  def __init__(self, config: BertConfig, *, rngs: nnx.Rngs,
               add_pooling_layer: bool = True):
    self.config = config
    self.embeddings = BertEmbeddings(config, rngs=rngs)
    self.encoder = BertEncoder(config, rngs=rngs)
    self.pooler = BertPooler(config, rngs=rngs) if add_pooling_layer else None

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, *,
               packed_segment_ids=None, cls_positions=None, dropout_rng=None,
               output_hidden_states: bool = False, output_attentions: bool = False) -> BertOutput:
    """Runs the encoder.

    Args:
      input_ids: int [B, L] (a flat [L] sequence gets a batch axis of 1).
      attention_mask: [B, L], 1 for real tokens, 0 for padding. Default: all ones.
      token_type_ids: [B, L] sentence A/B ids. Default: zeros.
      position_ids: [B, L]. Default: 0..L-1 (packed rows pass restarted positions).
      packed_segment_ids: [B, L], 1..K per packed sequence, 0 for padding; blocks attention
        between sequences packed into one row.
      cls_positions: [B, K], where each packed sequence's [CLS] is; the pooler then returns
        [B, K, D].
      dropout_rng: a PRNG key to train with dropout; None evaluates deterministically.
    """
    input_ids_BxL = jnp.asarray(input_ids)
    if input_ids_BxL.ndim == 1:
      input_ids_BxL = input_ids_BxL[None]
    b, seq_len = input_ids_BxL.shape
    if seq_len > self.config.max_position_embeddings:
      raise ValueError(
          f"Input has {seq_len} tokens but the model accepts at most "
          f"{self.config.max_position_embeddings} (max_position_embeddings); truncate the input "
          f"(the tokenizer's max_length) or split it into windows.")

    def batched(x, default):
      x = default if x is None else jnp.asarray(x)
      return x[None] if x.ndim == 1 else x

    attention_mask_BxL = batched(attention_mask, jnp.ones((b, seq_len), jnp.int32))
    token_type_ids_BxL = batched(token_type_ids, jnp.zeros((b, seq_len), jnp.int32))
    position_ids_BxL = batched(position_ids, jnp.broadcast_to(jnp.arange(seq_len), (b, seq_len)))
    packed_BxL = None if packed_segment_ids is None else batched(packed_segment_ids, None)
    if packed_BxL is not None and not isinstance(packed_BxL, jax.core.Tracer):
      attention_lib.check_packed_batch(packed_BxL, attention_mask_BxL, position_ids_BxL)
    mask = attention_lib.MaskSpec(attention_mask_BxL, packed_BxL)

    x_BxLxD = self.embeddings(input_ids_BxL, token_type_ids_BxL, position_ids_BxL,
                              _fold(dropout_rng, 0))
    x_BxLxD = sharding.constrain(x_BxLxD, sharding.ACTIVATION_AXES)
    x_BxLxD, hidden, attentions = self.encoder(x_BxLxD, mask, _fold(dropout_rng, 1),
                                               output_hidden_states, output_attentions)
    pooled = self.pooler(x_BxLxD, cls_positions) if self.pooler is not None else None
    return BertOutput(x_BxLxD, pooled, hidden, attentions)


def create_model(cls, config: BertConfig, seed: int = 0, **kwargs):
  """Instantiates `cls(config, rngs=...)` with initialised parameters."""
  return cls(config, rngs=nnx.Rngs(params=seed), **kwargs)


__all__ = ["BertConfig", "BertModel", "BertOutput", "create_model", "preset", "PRESETS",
           "param", "truncated_normal"]
