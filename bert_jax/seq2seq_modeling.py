"""A BERT encoder-decoder for text generation (BERT2BERT, Rothe, Narayan and Severyn, TACL 2020).

Dimension letters as in modeling.py, plus T decoder length (S: the decoder's cache slots).

The encoder is `modeling.BertModel`. The decoder is a BERT stack whose self-attention is causal
and whose layers gain a cross-attention block over the encoder's output, followed by BERT's MLM
head tied to the decoder's word embeddings: transformers' `EncoderDecoderModel` with a
`BertModel` encoder and a `BertLMHeadModel(is_decoder=True, add_cross_attention=True)` decoder.
Parameter names are that model's (`encoder.*`, `decoder.bert.*`, `decoder.cls.predictions.*`), so
conversion is a rename plus the reshapes of convert.py.

Warm-starting (`warm_start_params`): encoder and decoder both take the checkpoint's embeddings
and layers (and its MLM head when it has one); the cross-attention weights are new, initialised
as BERT's weights are (truncated normal, std `initializer_range` = 0.02), as the paper does.
With `share=True` (the paper's BERT2BERT-share) the decoder uses the encoder's embedding,
self-attention and feed-forward modules themselves (one set of weights); only cross-attention and
the LM head are the decoder's own.

Copying (`copy=True`, a pointer-generator as See, Liu and Manning 2017): the output is the
mixture p_gen * softmax(vocabulary logits) + (1 - p_gen) * copy, where copy scatters the last
decoder layer's cross-attention probabilities (mean over heads; padding has none) onto the source
token ids and p_gen = sigmoid(copy_gate(final decoder hidden state)). Such a model returns the
log of the mixture where a plain one returns logits: both are "logits" to log_softmax / argmax
(the mixture is already normalised), so the loss and both searches serve either. transformers'
EncoderDecoderModel has no gate, so convert.py refuses to export a copy model.

Generation (bert_jax/generation.py) runs `init_cache` once per batch (the cross-attention keys
and values, computed once; empty self-attention slots) and then `decode_step` per token.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from bert_jax import attention as attention_lib
from bert_jax import modeling, sharding
from bert_jax.configuration import BertConfig
from bert_jax.heads import BertLMPredictionHead, _dense
from bert_jax.modeling import BertAttention, BertEmbeddings, BertIntermediate, BertModel

_fold = modeling._fold
BertSelfOutput = modeling.BertSelfOutput

ARCHITECTURE = "BertEncoderDecoder"


class LayerCache(NamedTuple):
  """One decoder layer's generation state."""
  self_k: jax.Array  # [B, S, N, H] keys of the tokens decoded so far (slots >= t unused)
  self_v: jax.Array  # [B, S, N, H]
  cross_k: jax.Array  # [B, M, N, H] the encoder output's keys, computed once
  cross_v: jax.Array  # [B, M, N, H]


class DecoderCache(NamedTuple):
  layers: tuple[LayerCache, ...]
  enc_mask_BxM: jax.Array  # 1 for real source tokens
  src_ids_BxM: jax.Array | None = None  # copy models: the ids cross-attention copies from


class BertDecoderLayer(nnx.Module):
  """Causal self-attention, cross-attention over the encoder output, feed-forward (HF BertLayer
  with add_cross_attention). `shared` is an encoder layer whose self-attention and feed-forward
  this layer uses (BERT2BERT-share)."""

  def __init__(self, config: BertConfig, *, rngs: nnx.Rngs, shared=None):
    self.attention = shared.attention if shared is not None else BertAttention(config, rngs=rngs)
    self.crossattention = BertAttention(config, rngs=rngs)
    if shared is not None:
      self.intermediate, self.output = shared.intermediate, shared.output
    else:
      self.intermediate = BertIntermediate(config, rngs=rngs)
      self.output = BertSelfOutput(config, (config.intermediate_size,), ("mlp",), rngs=rngs)
    self.dtype, self.rate = config.compute_dtype, config.attention_probs_dropout_prob

  def _attend(self, block, x_BxTxD, k_BxMxNxH, v_BxMxNxH, mask, rng, want_probs=False):
    """(block output [B, T, D], its attention probabilities [B, N, T, M] before dropout, or
    None unless want_probs)."""
    ctx_BxTxNxH, probs = attention_lib.masked_attention(
        block.self.query(x_BxTxD), k_BxMxNxH, v_BxMxNxH, mask, dtype=self.dtype,
        dropout_rate=self.rate, dropout_rng=_fold(rng, 0), want_probs=want_probs)
    return block.output(ctx_BxTxNxH, x_BxTxD, _fold(rng, 1)), probs

  def _feed_forward(self, a_BxTxD, rng):
    return self.output(self.intermediate(a_BxTxD), a_BxTxD, rng)

  def cross_kv(self, enc_BxMxD):
    sa = self.crossattention.self
    return sa.key(enc_BxMxD), sa.value(enc_BxMxD)

  def __call__(self, x_BxTxD, enc_BxMxD, self_mask, cross_mask, dropout_rng=None,
               want_probs=False):
    """Teacher forcing over a whole target. Masks are boolean [B or 1, 1, T, T] / [B, 1, 1, M].
    Returns ([B, T, D], cross-attention probabilities [B, N, T, M] or None unless want_probs)."""
    sa = self.attention.self
    x_BxTxD, _ = self._attend(self.attention, x_BxTxD, sa.key(x_BxTxD), sa.value(x_BxTxD),
                              self_mask, _fold(dropout_rng, 0))
    k_BxMxNxH, v_BxMxNxH = self.cross_kv(enc_BxMxD)
    x_BxTxD, probs = self._attend(self.crossattention, x_BxTxD, k_BxMxNxH, v_BxMxNxH,
                                  cross_mask, _fold(dropout_rng, 1), want_probs)
    return self._feed_forward(x_BxTxD, _fold(dropout_rng, 2)), probs

  def step(self, x_Bx1xD, t, cache: LayerCache, enc_mask_BxM, want_probs=False):
    """One new token at position `t` (a traced scalar): writes its key and value into slot t
    and attends to slots 0..t. Returns ([B, 1, D], the updated cache, cross-attention
    probabilities [B, N, 1, M] or None unless want_probs)."""
    sa = self.attention.self
    k_BxSxNxH = jax.lax.dynamic_update_slice_in_dim(cache.self_k, sa.key(x_Bx1xD).astype(
        cache.self_k.dtype), t, axis=1)
    v_BxSxNxH = jax.lax.dynamic_update_slice_in_dim(cache.self_v, sa.value(x_Bx1xD).astype(
        cache.self_v.dtype), t, axis=1)
    seen_1x1x1xS = (jnp.arange(k_BxSxNxH.shape[1]) <= t)[None, None, None, :]
    x_Bx1xD, _ = self._attend(self.attention, x_Bx1xD, k_BxSxNxH, v_BxSxNxH, seen_1x1x1xS,
                              None)
    cross_mask = (enc_mask_BxM > 0)[:, None, None, :]
    x_Bx1xD, probs = self._attend(self.crossattention, x_Bx1xD, cache.cross_k, cache.cross_v,
                                  cross_mask, None, want_probs)
    return (self._feed_forward(x_Bx1xD, None),
            cache._replace(self_k=k_BxSxNxH, self_v=v_BxSxNxH), probs)


class DecoderLayers(nnx.Module):
  def __init__(self, config: BertConfig, *, rngs: nnx.Rngs, shared=None):
    self.layer = nnx.List([
        BertDecoderLayer(config, rngs=rngs, shared=None if shared is None else shared.layer[i])
        for i in range(config.num_hidden_layers)])


class DecoderStack(nnx.Module):
  """HF `BertLMHeadModel.bert`: embeddings and the decoder layers (no pooler)."""

  def __init__(self, config: BertConfig, *, rngs: nnx.Rngs, shared: BertModel | None = None):
    self.embeddings = (shared.embeddings if shared is not None
                       else BertEmbeddings(config, rngs=rngs))
    self.encoder = DecoderLayers(config, rngs=rngs,
                                 shared=None if shared is None else shared.encoder)


class DecoderHeads(nnx.Module):
  """HF `BertLMHeadModel.cls`."""

  def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
    self.predictions = BertLMPredictionHead(config, rngs=rngs)


class BertDecoder(nnx.Module):
  """HF `BertLMHeadModel` with is_decoder=True, add_cross_attention=True."""

  def __init__(self, config: BertConfig, *, rngs: nnx.Rngs, shared: BertModel | None = None):
    self.bert = DecoderStack(config, rngs=rngs, shared=shared)
    self.cls = DecoderHeads(config, rngs=rngs)

  def _embed(self, ids_BxT, positions_BxT, dropout_rng):
    return self.bert.embeddings(ids_BxT, jnp.zeros_like(ids_BxT), positions_BxT, dropout_rng)

  def logits(self, x_BxTxD):
    return self.cls.predictions(x_BxTxD, self.bert.embeddings.word_embeddings)

  def __call__(self, ids_BxT, enc_BxMxD, enc_mask_BxM, dropout_rng=None):
    """Teacher-forced logits [B, T, V] f32 (causal: position t sees targets 0..t)."""
    return self.logits(self.hidden(ids_BxT, enc_BxMxD, enc_mask_BxM, dropout_rng)[0])

  def hidden(self, ids_BxT, enc_BxMxD, enc_mask_BxM, dropout_rng=None, want_probs=False):
    """(The last layer's output [B, T, D], its cross-attention probabilities [B, N, T, M] or
    None unless want_probs)."""
    t = ids_BxT.shape[1]
    positions_BxT = jnp.broadcast_to(jnp.arange(t), ids_BxT.shape)
    x_BxTxD = self._embed(ids_BxT, positions_BxT, _fold(dropout_rng, 0))
    causal_1x1xTxT = jnp.tril(jnp.ones((t, t), bool))[None, None]
    cross_Bx1x1xM = (enc_mask_BxM > 0)[:, None, None, :]
    layers = self.bert.encoder.layer
    probs = None
    for i, layer in enumerate(layers):
      x_BxTxD, probs = layer(x_BxTxD, enc_BxMxD, causal_1x1xTxT, cross_Bx1x1xM,
                             _fold(dropout_rng, i + 1), want_probs and i == len(layers) - 1)
      x_BxTxD = sharding.constrain(x_BxTxD, sharding.ACTIVATION_AXES)
    return x_BxTxD, probs


class BertEncoderDecoder(nnx.Module):
  """BERT2BERT: `encoder` (BertModel) and `decoder` (BertDecoder); see the module docstring."""

  def __init__(self, config: BertConfig, *, rngs: nnx.Rngs, share: bool = False,
               copy: bool = False):
    self.config, self.share, self.copy = config, share, copy
    self.encoder = BertModel(config, rngs=rngs)
    self.decoder = BertDecoder(config, rngs=rngs, shared=self.encoder if share else None)
    if copy:
      # p_gen's logit from the final decoder state; BERT's small normal init puts p_gen near 0.5
      # at the start: neither the fresh LM head nor the fresh (or self-attention-copied)
      # cross-attention deserves the prior, so the first gradients decide.
      self.copy_gate = _dense(config, config.hidden_size, 1, ("embed", "classes"), rngs)

  def encode(self, input_ids_BxM, attention_mask_BxM, dropout_rng=None):
    """The encoder's last hidden state [B, M, D]."""
    return self.encoder(input_ids_BxM, attention_mask_BxM,
                        dropout_rng=dropout_rng).last_hidden_state

  def __call__(self, input_ids, attention_mask, decoder_input_ids, *, dropout_rng=None):
    """Teacher-forced logits [B, T, V] f32 of `decoder_input_ids` ([CLS] y_1 .. y_{T-1})
    given the source `input_ids` [B, M]."""
    enc_BxMxD = self.encode(input_ids, attention_mask, _fold(dropout_rng, 0))
    if not self.copy:
      return self.decoder(decoder_input_ids, enc_BxMxD, attention_mask, _fold(dropout_rng, 1))
    x_BxTxD, probs_BxNxTxM = self.decoder.hidden(decoder_input_ids, enc_BxMxD, attention_mask,
                                                 _fold(dropout_rng, 1), want_probs=True)
    return self.copy_mixture(x_BxTxD, probs_BxNxTxM, input_ids)

  def copy_mixture(self, x_BxTxD, probs_BxNxTxM, src_ids_BxM):
    """log(p_gen * softmax(logits) + (1 - p_gen) * copy) [B, T, V] f32; copy puts each source
    position's head-mean attention on that position's token id (padding has probability 0).

    Outside the source's ids the mixture is log p_gen + log softmax, so only the (at most M)
    source ids are mixed and written over that: no dense [B, T, V] copy distribution."""
    logp_vocab_BxTxV = jax.nn.log_softmax(self.decoder.logits(x_BxTxD).astype(jnp.float32), -1)
    gate_BxTx1 = self.copy_gate(x_BxTxD).astype(jnp.float32)
    log_gen_BxTx1, log_copy_BxTx1 = jax.nn.log_sigmoid(gate_BxTx1), jax.nn.log_sigmoid(-gate_BxTx1)
    attn_BxTxM = jnp.mean(probs_BxNxTxM.astype(jnp.float32), axis=1)
    b, t, m = attn_BxTxM.shape
    # A token's copy probability is the attention on every source position that holds it.
    same_BxMxM = src_ids_BxM[:, :, None] == src_ids_BxM[:, None, :]
    copy_BxTxM = jnp.einsum("btn,bnm->btm", attn_BxTxM, same_BxMxM.astype(jnp.float32))
    ids_BxTxM = jnp.broadcast_to(src_ids_BxM[:, None, :], (b, t, m))
    logp_src_BxTxM = jnp.take_along_axis(logp_vocab_BxTxV, ids_BxTxM, -1)
    has_BxTxM = copy_BxTxM > 0  # log 0 = -inf without a NaN gradient through log at 0
    logp_copy_BxTxM = jnp.where(has_BxTxM, jnp.log(jnp.where(has_BxTxM, copy_BxTxM, 1.0)),
                                -jnp.inf)
    mixed_BxTxM = jnp.logaddexp(log_gen_BxTx1 + logp_src_BxTxM, log_copy_BxTx1 + logp_copy_BxTxM)
    # Each id written once (its first source position; repeats go out of range and are dropped).
    first_BxM = ~jnp.any(same_BxMxM & jnp.tril(jnp.ones((m, m), bool), -1)[None], -1)
    v = logp_vocab_BxTxV.shape[-1]
    write_BxTxM = jnp.where(first_BxM[:, None, :], ids_BxTxM, v)
    return (log_gen_BxTx1 + logp_vocab_BxTxV).at[
        jnp.arange(b)[:, None, None], jnp.arange(t)[None, :, None], write_BxTxM].set(
            mixed_BxTxM, mode="drop")

  # ------------------------------------------------------------------ generation
  def init_cache(self, enc_BxMxD, enc_mask_BxM, slots: int, src_ids_BxM=None) -> DecoderCache:
    """Cross-attention keys / values of each layer and `slots` empty self-attention slots (and
    the source ids, which a copy model needs)."""
    if self.copy and src_ids_BxM is None:
      raise ValueError("A copy model's init_cache needs the source ids (src_ids_BxM).")
    c = self.config
    b = enc_BxMxD.shape[0]
    empty_BxSxNxH = jnp.zeros((b, slots, c.num_attention_heads, c.head_size), jnp.float32)
    layers = []
    for layer in self.decoder.bert.encoder.layer:
      k, v = layer.cross_kv(enc_BxMxD)
      layers.append(LayerCache(empty_BxSxNxH, empty_BxSxNxH, k, v))
    return DecoderCache(tuple(layers), enc_mask_BxM, src_ids_BxM if self.copy else None)

  def decode_step(self, token_B, t, cache: DecoderCache):
    """Logits [B, V] of the token after `token_B` (at position `t`; a copy model's mixture
    log-probabilities), and the updated cache."""
    ids_Bx1 = token_B[:, None]
    x_Bx1xD = self.decoder._embed(ids_Bx1, jnp.full_like(ids_Bx1, t), None)
    layers, n = [], len(cache.layers)
    for i, (layer, lc) in enumerate(zip(self.decoder.bert.encoder.layer, cache.layers,
                                        strict=True)):
      x_Bx1xD, lc, probs_BxNx1xM = layer.step(x_Bx1xD, t, lc, cache.enc_mask_BxM,
                                              self.copy and i == n - 1)
      layers.append(lc)
    cache = cache._replace(layers=tuple(layers))
    if self.copy:
      return self.copy_mixture(x_Bx1xD, probs_BxNx1xM, cache.src_ids_BxM)[:, 0], cache
    return self.decoder.logits(x_Bx1xD)[:, 0], cache


CROSS_INITS = ("random", "self")


def check_cross_init(cross_init: str) -> None:
  """ConfigError unless `cross_init` is one of CROSS_INITS (seq2seq.cross_init)."""
  if cross_init not in CROSS_INITS:
    from bert_jax.errors import ConfigError
    raise ConfigError(f"seq2seq.cross_init={cross_init!r} is not one of {', '.join(CROSS_INITS)}.")


def warm_start_params(flat: dict, cross_init: str = "random") -> dict:
  """BERT2BERT parameters (flat dotted names) from a BERT checkpoint's flat parameters (a
  BertModel's, or a head model's with `bert.`): the encoder and the decoder's embeddings and
  layers both from the checkpoint, the MLM head (`predictions.*`) into the decoder's LM head when
  present. (A shared model names its shared weights once, on the decoder side; the names it
  lacks are ignored.)

  cross_init: "random" leaves cross-attention out, so it keeps its fresh BERT initialisation (the
  paper's choice); "self" starts each decoder layer's cross-attention as a copy of the
  checkpoint's self-attention of that layer (as DeltaLM, Ma et al. 2021, initialises its
  decoder's cross-attention), so the decoder attends from its first step to source tokens the
  pretrained model finds related, which is what copying-heavy tasks need first.
  """
  check_cross_init(cross_init)
  enc = {k.removeprefix("bert."): v for k, v in flat.items()
         if k.startswith("bert.") or k.startswith(("embeddings.", "encoder.", "pooler."))}
  out = {f"encoder.{k}": v for k, v in enc.items()}
  out.update({f"decoder.bert.{k}": v for k, v in enc.items() if not k.startswith("pooler.")})
  if cross_init == "self":
    out.update({f"decoder.bert.{k}".replace(".attention.", ".crossattention.", 1): v
                for k, v in enc.items() if k.startswith("encoder.layer.") and ".attention." in k})
  for k, v in flat.items():
    if k.startswith(("predictions.", "cls.predictions.")):
      out["decoder.cls.predictions." + k.removeprefix("cls.").removeprefix("predictions.")] = v
  return out


def check_warm_start(config, source) -> None:
  """Refuses a checkpoint the BERT decoder cannot start from (ModernBERT), in one sentence."""
  from bert_jax import family
  from bert_jax.errors import ModelFileError
  if family.of_config(config) != "bert":
    raise ModelFileError(
        f"{source} is a ModernBERT checkpoint, which is not causal-compatible with the BERT2BERT "
        "decoder (its alternating local/global attention and rotary positions have no BERT "
        "decoder counterpart here); warm-start from a BERT checkpoint (model.family=bert).")
