"""ELECTRA replaced-token detection (Clark et al. 2020) as a pretraining objective
(`model.objective="rtd"`, BERT family).

A small generator (an MLM: the discriminator's depth, `model.generator_fraction` of its width,
FFN and heads; the paper's 1/4 for ELECTRA-small) and the discriminator share the token, position
and type embeddings and their LayerNorm. The generator reads the masked rows; a token sampled from
its MLM distribution at every masked position (`sample`, no gradient through it)
replaces the original; the discriminator classifies every real token as original or replaced:

    loss = generator MLM cross-entropy + rtd_weight (50) * mean per-token binary cross-entropy

A sample equal to the original counts as original, as in the paper. The discriminator is a
`BertModel` (no pooler) plus HF's `discriminator_predictions` head, so WORKDIR/model is an
`ElectraForPreTraining` bert_jax directory: fine-tuning's init_from takes its BERT encoder, and
`bert-jax-convert --to=hf` writes a transformers `ElectraForPreTraining` folder (`hf_files`);
such a folder also reads back (`read_hf`), so HF ELECTRA discriminators fine-tune too.
Its embeddings are hidden_size wide (HF `embedding_size == hidden_size`, no projection); the
generator projects them to its own width (HF ElectraForMaskedLM's `embeddings_project`). A
discriminator with narrower embeddings (ELECTRA-small's 128) is not offered, and such HF folders
are refused in one sentence.

Dimension letters as in modeling.py; G the generator's width.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from bert_jax import attention as attention_lib
from bert_jax.configuration import BertConfig
from bert_jax.errors import ConfigError
from bert_jax.heads import _dense, gather_positions
from bert_jax.layers import Dense, LayerNorm, activation, param
from bert_jax.modeling import BertEncoder, BertModel, _fold

OBJECTIVES = ("mlm", "rtd")


def generator_config(disc: BertConfig, fraction: float, layers: int = 0) -> BertConfig:
  """The generator's config: `fraction` of the discriminator's width, FFN and heads."""
  if not 0 < fraction <= 1:
    raise ConfigError(f"model.generator_fraction={fraction} must be in (0, 1]; ELECTRA uses "
                      "0.25 (a generator a quarter of the discriminator's width).")
  heads = max(1, round(disc.num_attention_heads * fraction))
  hidden = max(heads, round(disc.hidden_size * fraction) // heads * heads)
  return dataclasses.replace(disc, hidden_size=hidden, num_attention_heads=heads,
                             intermediate_size=max(1, round(disc.intermediate_size * fraction)),
                             num_hidden_layers=layers or disc.num_hidden_layers)


class ElectraDiscriminatorPredictions(nnx.Module):
  """dense D -> D, activation, dense D -> 1: a replaced-token logit per position."""

  def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
    self.dense = _dense(config, config.hidden_size, config.hidden_size, ("embed", "hidden"), rngs)
    self.act = activation(config.hidden_act)
    self.dense_prediction = _dense(config, config.hidden_size, 1, ("hidden", "classes"), rngs)

  def __call__(self, x_BxLxD):
    return self.dense_prediction(self.act(self.dense(x_BxLxD)))[..., 0].astype(jnp.float32)


class ElectraForPreTraining(nnx.Module):
  """The discriminator (HF ElectraForPreTraining's layout, `bert` for `electra`)."""

  def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.bert = BertModel(config, rngs=rngs, add_pooling_layer=False)
    self.discriminator_predictions = ElectraDiscriminatorPredictions(config, rngs=rngs)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, *,
               packed_segment_ids=None, dropout_rng=None):
    """Replaced-token logits [B, L] (> 0: replaced)."""
    x_BxLxD = self.bert(input_ids, attention_mask, token_type_ids, position_ids,
                        packed_segment_ids=packed_segment_ids,
                        dropout_rng=dropout_rng).last_hidden_state
    return self.discriminator_predictions(x_BxLxD)


class ElectraGenerator(nnx.Module):
  """An MLM over the shared embeddings: project D -> G, encoder, G -> D head, tied decoder."""

  def __init__(self, config: BertConfig, embedding_size: int, *, rngs: nnx.Rngs):
    self.config = config
    g, e = config.hidden_size, embedding_size
    kw = dict(init_std=config.initializer_range, dtype=config.compute_dtype,
              param_dtype=config.param_dtype, rngs=rngs)
    self.embeddings_project = (Dense((e,), (g,), ("embed",), ("hidden",), **kw) if e != g
                               else None)
    self.encoder = BertEncoder(config, rngs=rngs)
    self.dense = Dense((g,), (e,), ("hidden",), ("embed",), **kw)
    self.LayerNorm = LayerNorm(e, config.layer_norm_eps, param_dtype=config.param_dtype,
                               rngs=rngs)
    self.bias = param(rngs, nnx.initializers.zeros, (config.vocab_size,), ("vocab",),
                      config.param_dtype)

  def __call__(self, emb_BxLxD, mask, masked_positions_BxP, word_embeddings, dropout_rng):
    """MLM logits [B, P, V] at the masked positions."""
    x = emb_BxLxD if self.embeddings_project is None else self.embeddings_project(emb_BxLxD)
    x_BxLxG, _, _ = self.encoder(x, mask, dropout_rng, False, False)
    h_BxPxD = self.LayerNorm(activation("gelu")(self.dense(
        gather_positions(x_BxLxG, masked_positions_BxP))))
    return word_embeddings.attend(h_BxPxD) + self.bias[...].astype(jnp.float32)


class ElectraForRTD(ElectraForPreTraining):
  """What RTD trains: the discriminator plus the generator on its embeddings."""

  def __init__(self, config: BertConfig, gen_config: BertConfig, *, rngs: nnx.Rngs):
    super().__init__(config, rngs=rngs)
    self.generator = ElectraGenerator(gen_config, config.hidden_size, rngs=rngs)


def sample(key, logits_xV):
  """One id per row of logits [..., V] from softmax(logits), by inverse CDF.

  jax.random.categorical draws V Gumbel numbers per row: on CPU, where threefry is slow, that
  cost about 3.5x the softmax itself over 30,522 ids (measured); this draws one uniform per row.
  """
  cdf_xV = jnp.cumsum(jax.nn.softmax(logits_xV.astype(jnp.float32), axis=-1), axis=-1)
  u_x1 = jax.random.uniform(key, cdf_xV.shape[:-1] + (1,)) * cdf_xV[..., -1:]
  # The id k with cdf[k - 1] <= u < cdf[k]; ids of probability 0 are never drawn.
  return jnp.minimum(jnp.sum(cdf_xV <= u_x1, axis=-1), logits_xV.shape[-1] - 1)


def rtd_loss(model: ElectraForRTD, batch: dict, dropout_rng, *, rtd_weight: float = 50.0):
  """(generator MLM loss + rtd_weight * discriminator BCE, metrics); module doc."""
  from bert_jax.pretraining import mlm_terms
  ids_BxL = jnp.asarray(batch["input_ids"])
  b, seq_len = ids_BxL.shape
  valid_BxL = batch["input_mask"] > 0
  types_BxL = batch["segment_ids"]
  position_ids = batch.get("position_ids")
  packed = batch.get("packed_segment_ids")
  positions_BxL = (jnp.broadcast_to(jnp.arange(seq_len), (b, seq_len)) if position_ids is None
                   else position_ids)

  emb_BxLxD = model.bert.embeddings(ids_BxL, types_BxL, positions_BxL, _fold(dropout_rng, 0))
  gen_logits_BxPxV = model.generator(emb_BxLxD, attention_lib.MaskSpec(batch["input_mask"], packed),
                                     batch["masked_lm_positions"],
                                     model.bert.embeddings.word_embeddings, _fold(dropout_rng, 1))
  mlm_sum, mlm_w, mlm_correct = mlm_terms(gen_logits_BxPxV, batch)

  # Training samples with the step's key; evaluation with a fixed one (the same rows each time).
  key = jax.random.key(0) if dropout_rng is None else jax.random.fold_in(dropout_rng, 2)
  sampled_BxP = sample(key, jax.lax.stop_gradient(gen_logits_BxPxV))
  # Masked slot p of row b sits at position masked_lm_positions[b, p] (padding slots: weight 0).
  hit_BxPxL = ((batch["masked_lm_positions"][..., None] == jnp.arange(seq_len))
               & (batch["masked_lm_weights"] > 0)[..., None])
  at_BxL = jnp.any(hit_BxPxL, axis=1)
  original_BxL = jnp.where(at_BxL, jnp.sum(hit_BxPxL * batch["masked_lm_ids"][..., None], 1),
                           ids_BxL)
  fake_BxL = jnp.where(at_BxL, jnp.sum(hit_BxPxL * sampled_BxP[..., None], 1), ids_BxL)
  replaced_BxL = (fake_BxL != original_BxL) & valid_BxL

  logits_BxL = model(fake_BxL, batch["input_mask"], types_BxL, position_ids,
                     packed_segment_ids=packed, dropout_rng=_fold(dropout_rng, 3))
  w_BxL = valid_BxL.astype(jnp.float32)
  bce_sum = jnp.sum(optax.sigmoid_binary_cross_entropy(logits_BxL, replaced_BxL) * w_BxL)
  n = jnp.sum(w_BxL)
  predicted_BxL = logits_BxL > 0
  replaced_f = replaced_BxL.astype(jnp.float32)
  loss = mlm_sum / jnp.maximum(mlm_w, 1.0) + rtd_weight * bce_sum / jnp.maximum(n, 1.0)
  return loss, {
      "gen_mlm_loss": (mlm_sum, mlm_w), "gen_mlm_accuracy": (mlm_correct, mlm_w),
      "disc_loss": (bce_sum, n),
      "disc_accuracy": (jnp.sum((predicted_BxL == replaced_BxL) * w_BxL), n),
      "disc_replaced_recall": (jnp.sum(predicted_BxL * replaced_f), jnp.sum(replaced_f)),
      "disc_replaced_precision": (jnp.sum(predicted_BxL * replaced_f),
                                  jnp.sum(predicted_BxL * w_BxL)),
      "replaced_fraction": (jnp.sum(replaced_f), n),
  }


# ------------------------------------------------------------------ HF export
def hf_files(conv) -> tuple[dict[str, np.ndarray], dict]:
  """(tensors, config.json dict) of a transformers ElectraForPreTraining for a `Converted`
  ElectraForPreTraining bert_jax directory."""
  from bert_jax import convert
  tensors = convert.bert_jax_to_hf_tensors(conv.params, conv.info)
  tensors = {("electra." + k[len("bert."):] if k.startswith("bert.") else k): v
             for k, v in tensors.items()}
  cfg = convert.hf_config_dict(conv.config, conv.info)
  cfg.update(model_type="electra", embedding_size=conv.config.hidden_size,
             architectures=["ElectraForPreTraining"], summary_type="first",
             summary_use_proj=True, summary_activation="gelu", summary_last_dropout=0.1)
  return tensors, cfg


def read_hf(folder, hf_config: dict):
  """A transformers ElectraForPreTraining folder (embedding_size == hidden_size) as a
  `convert.Converted` ElectraForPreTraining; convert.read_hf calls it for model_type electra."""
  import pathlib

  from bert_jax import convert
  folder = pathlib.Path(folder)
  width, emb = hf_config.get("hidden_size"), hf_config.get("embedding_size")
  if emb not in (None, width):
    raise convert.ConversionError(
        f"{folder} is an ELECTRA with embedding_size {emb} and hidden_size {width}; bert_jax's "
        "discriminator has no embedding projection, so it reads only ELECTRAs whose embeddings "
        "are as wide as the model.")
  if hf_config.get("position_embedding_type", "absolute") != "absolute":
    raise convert.ConversionError(f"{folder} uses position_embedding_type "
                                  f"{hf_config['position_embedding_type']!r}; bert_jax supports "
                                  "only absolute position embeddings.")
  tensors = {("bert." + k[len("electra."):] if k.startswith("electra.") else k): v
             for k, v in convert.read_hf_tensors(folder).items()}
  conv = convert.hf_tensors_to_bert_jax(tensors, BertConfig.from_dict(hf_config), hf_config,
                                        str(folder))
  if conv.info["architecture"] != "ElectraForPreTraining":
    raise convert.ConversionError(f"{folder} holds no ELECTRA discriminator head "
                                  "(discriminator_predictions); bert_jax reads discriminators.")
  conv.tokenizer = convert._tokenizer_or_none(folder)
  return conv
