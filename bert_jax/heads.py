"""Task heads on top of `BertModel` (dimension letters as in modeling.py).

- `BertForPreTraining`: MLM (transform + decoder tied to the word embeddings) and NSP/SOP.
  The MLM logits can be computed only at masked positions `[B, P]`, which removes most of the
  vocabulary projection's FLOPs in pretraining (the unmasked 85% of tokens carry no loss).
- `BertForSequenceClassification` (classification or regression with num_labels=1),
  `BertForTokenClassification`, `BertForQuestionAnswering` (start/end span logits).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from bert_jax.configuration import BertConfig
from bert_jax.layers import Dense, LayerNorm, activation, dropout, param
from bert_jax.modeling import BertModel, _fold


def _dense(config: BertConfig, n_in: int, n_out: int, axes, rngs):
  return Dense((n_in,), (n_out,), axes[:1], axes[1:], init_std=config.initializer_range,
               dtype=config.compute_dtype, param_dtype=config.param_dtype, rngs=rngs)


class BertPredictionHeadTransform(nnx.Module):

  def __init__(self, config: BertConfig, *, rngs):
    self.dense = _dense(config, config.hidden_size, config.hidden_size, ("embed", "hidden"), rngs)
    self.act = activation(config.hidden_act)
    self.LayerNorm = LayerNorm(config.hidden_size, config.layer_norm_eps,
                               param_dtype=config.param_dtype, rngs=rngs, axis_name="hidden")

  def __call__(self, x):
    return self.LayerNorm(self.act(self.dense(x)))


class BertLMPredictionHead(nnx.Module):
  """transform -> logits against the (tied) word embeddings + an output bias."""

  def __init__(self, config: BertConfig, *, rngs):
    self.transform = BertPredictionHeadTransform(config, rngs=rngs)
    self.bias = param(rngs, nnx.initializers.zeros, (config.vocab_size,), ("vocab",),
                      config.param_dtype)

  def __call__(self, x_xD, word_embeddings):
    return word_embeddings.attend(self.transform(x_xD)) + self.bias[...].astype(jnp.float32)


class PreTrainingOutput(NamedTuple):
  mlm_logits: jax.Array  # [B, P, V] at masked_positions, else [B, L, V]
  nsp_logits: jax.Array  # [B, 2], or [B, K, 2] with cls_positions
  last_hidden_state: jax.Array
  pooler_output: jax.Array


def gather_positions(x_BxLxD: jax.Array, positions_BxP: jax.Array) -> jax.Array:
  return jnp.take_along_axis(x_BxLxD, positions_BxP[:, :, None].astype(jnp.int32), axis=1)


class BertForPreTraining(nnx.Module):
  """BERT with its two pretraining heads (module names as HF's `bert` / `cls`)."""

  def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.bert = BertModel(config, rngs=rngs)
    self.predictions = BertLMPredictionHead(config, rngs=rngs)
    self.seq_relationship = _dense(config, config.hidden_size, 2, ("embed", "classes"), rngs)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, *,
               masked_positions=None, packed_segment_ids=None, cls_positions=None,
               dropout_rng=None) -> PreTrainingOutput:
    """`masked_positions` [B, P] limits MLM logits to those positions ([B, P, V])."""
    out = self.bert(input_ids, attention_mask, token_type_ids, position_ids,
                    packed_segment_ids=packed_segment_ids, cls_positions=cls_positions,
                    dropout_rng=dropout_rng)
    x = out.last_hidden_state
    if masked_positions is not None:
      x = gather_positions(x, jnp.asarray(masked_positions))
    mlm_logits = self.predictions(x, self.bert.embeddings.word_embeddings)
    nsp_logits = self.seq_relationship(out.pooler_output)
    return PreTrainingOutput(mlm_logits, nsp_logits, out.last_hidden_state, out.pooler_output)


class BertForMaskedLM(nnx.Module):
  """BERT with the MLM head only (no pooler), as HF's BertForMaskedLM."""

  def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.bert = BertModel(config, rngs=rngs, add_pooling_layer=False)
    self.predictions = BertLMPredictionHead(config, rngs=rngs)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, *,
               masked_positions=None, dropout_rng=None) -> jax.Array:
    x = self.bert(input_ids, attention_mask, token_type_ids, position_ids,
                  dropout_rng=dropout_rng).last_hidden_state
    if masked_positions is not None:
      x = gather_positions(x, jnp.asarray(masked_positions))
    return self.predictions(x, self.bert.embeddings.word_embeddings)


class BertForSequenceClassification(nnx.Module):
  """Pooled [CLS] -> dropout -> linear; `num_labels=1` is regression."""

  def __init__(self, config: BertConfig, num_labels: int, *, rngs: nnx.Rngs):
    self.config, self.num_labels = config, num_labels
    self.bert = BertModel(config, rngs=rngs)
    self.classifier = _dense(config, config.hidden_size, num_labels, ("embed", "classes"), rngs)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *, position_ids=None,
               packed_segment_ids=None, cls_positions=None, dropout_rng=None):
    """Logits [B, C]; packed rows (tasks/packing.py) with `cls_positions` [B, K]: [B, K, C]."""
    pooled = self.bert(input_ids, attention_mask, token_type_ids, position_ids,
                       packed_segment_ids=packed_segment_ids, cls_positions=cls_positions,
                       dropout_rng=_fold(dropout_rng, 0)).pooler_output
    return self.classifier(dropout(pooled, self.config.hidden_dropout_prob,
                                   _fold(dropout_rng, 1)))


class BertForTokenClassification(nnx.Module):
  """Per-token logits [B, L, num_labels] (NER)."""

  def __init__(self, config: BertConfig, num_labels: int, *, rngs: nnx.Rngs):
    self.config, self.num_labels = config, num_labels
    self.bert = BertModel(config, rngs=rngs, add_pooling_layer=False)
    self.classifier = _dense(config, config.hidden_size, num_labels, ("embed", "classes"), rngs)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *, position_ids=None,
               packed_segment_ids=None, dropout_rng=None):
    x = self.bert(input_ids, attention_mask, token_type_ids, position_ids,
                  packed_segment_ids=packed_segment_ids,
                  dropout_rng=_fold(dropout_rng, 0)).last_hidden_state
    return self.classifier(dropout(x, self.config.hidden_dropout_prob, _fold(dropout_rng, 1)))


class BertForQuestionAnswering(nnx.Module):
  """Span extraction: returns (start_logits [B, L], end_logits [B, L])."""

  def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.bert = BertModel(config, rngs=rngs, add_pooling_layer=False)
    self.qa_outputs = _dense(config, config.hidden_size, 2, ("embed", "classes"), rngs)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *, dropout_rng=None):
    x = self.bert(input_ids, attention_mask, token_type_ids,
                  dropout_rng=dropout_rng).last_hidden_state
    logits_BxLx2 = self.qa_outputs(x)
    return logits_BxLx2[..., 0], logits_BxLx2[..., 1]
