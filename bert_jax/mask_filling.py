"""Fill-mask: the most likely tokens for each [MASK] in a text, with their probabilities.

    import bert_jax
    model = bert_jax.BertForMaskedLM.from_pretrained(DIR)
    tokenizer = bert_jax.BertTokenizer.from_pretrained(DIR)
    bert_jax.fill_mask(model, tokenizer, "The capital of France is [MASK].", top_k=5)

    bert-jax-fill-mask --checkpoint=DIR "The capital of France is [MASK]." [--top_k=5]

Results follow transformers' fill-mask pipeline: for one text with one [MASK], a list of top_k
dicts {"score", "token", "token_str", "sequence"} (highest score first); with several [MASK]s, one
such list per mask, in text order; for a list of texts, one result per text. Scores are softmax
probabilities over the whole vocabulary. Texts are batched and padded to shape buckets, so the
model is compiled once per bucket, not per call. A text longer than the model accepts is refused
with a message (its [MASK] could otherwise be cut off).
"""
from __future__ import annotations

import numpy as np
from flax import nnx

from bert_jax import inference
from bert_jax.errors import ConfigError, DataError, ModelFileError


def _check_model(model) -> None:
  # BERT's MLM head is `predictions`, ModernBERT's `decoder` (after its `head`).
  if not any(isinstance(getattr(model, name, None), nnx.Module)
             for name in ("predictions", "decoder")):
    raise ConfigError(f"fill_mask needs a model with the masked-LM head (BertForMaskedLM, "
                      f"BertForPreTraining or ModernBertForMaskedLM), not "
                      f"{type(model).__name__}; load it with BertForMaskedLM.from_pretrained(path) "
                      "from a checkpoint that has the head.")


def fill_mask(model, tokenizer, texts, top_k: int = 5, *, batch_size: int = 32):
  """Top-k predictions for every [MASK] of `texts` (a string or a list of strings).

  Args:
    model: a BertForMaskedLM, BertForPreTraining or ModernBertForMaskedLM.
    tokenizer: the model's tokenizer (`BertTokenizer` or `tokenization.Tokenizer`).
    texts: text(s) holding the tokenizer's mask token (`[MASK]`) one or more times.
    top_k: how many candidates per mask.
    batch_size: texts per forward pass.
  Returns:
    See the module docstring.
  """
  _check_model(model)
  single = isinstance(texts, str)
  texts = [texts] if single else list(texts)
  if not texts:
    return []
  max_len = model.config.max_position_embeddings
  top_k = min(int(top_k), tokenizer.vocab_size)
  if top_k < 1:
    raise ConfigError(f"top_k must be at least 1, got {top_k}.")
  mask_token = tokenizer.convert_ids_to_tokens(tokenizer.mask_id)
  rows = [[tokenizer.cls_id, *ids, tokenizer.sep_id] for ids in tokenizer.encode_batch(texts)]
  positions = []
  for i, (text, row) in enumerate(zip(texts, rows, strict=True)):
    if len(row) > max_len:
      raise DataError(f"Text {i} has {len(row)} tokens with [CLS]/[SEP] but the model accepts at "
                      f"most {max_len} (max_position_embeddings); shorten it around the "
                      f"{mask_token}.")
    pos = [p for p, t in enumerate(row) if t == tokenizer.mask_id]
    if not pos:
      raise DataError(f"Text {i} ({text[:60]!r}) has no {mask_token} token; put {mask_token} "
                      "where a word should be predicted.")
    positions.append(pos)

  graphdef, state = inference.inference_split(model)
  results: list = [None] * len(texts)
  order = sorted(range(len(texts)), key=lambda i: len(rows[i]))  # Similar lengths together.
  for start in range(0, len(order), batch_size):
    idx = order[start:start + batch_size]
    length = inference.bucket(max(len(rows[i]) for i in idx), max_len, inference.MIN_BUCKET)
    n_masks = inference.bucket(max(len(positions[i]) for i in idx), length)
    batch = inference.bucket(len(idx), batch_size)
    inputs = inference.pad_rows([rows[i] for i in idx], None, length, batch, tokenizer.pad_id)
    pos_BxP = np.zeros((batch, n_masks), np.int32)
    for k, i in enumerate(idx):
      pos_BxP[k, :len(positions[i])] = positions[i]
    probs, ids = inference.mlm_top_k(graphdef, state, inputs["input_ids"],
                                     inputs["attention_mask"], inputs["token_type_ids"], pos_BxP,
                                     top_k=top_k)
    probs, ids = np.asarray(probs), np.asarray(ids)
    for k, i in enumerate(idx):
      results[i] = _format(tokenizer, rows[i], positions[i], probs[k], ids[k])
  return results[0] if single else results


def _format(tokenizer, row, positions, probs_PxK, ids_PxK):
  per_mask = []
  for p, pos in enumerate(positions):
    cands = []
    for score, tid in zip(probs_PxK[p], ids_PxK[p], strict=True):
      filled = list(row[1:-1])
      filled[pos - 1] = int(tid)
      cands.append({"score": float(score), "token": int(tid),
                    "token_str": tokenizer.convert_ids_to_tokens(int(tid)),
                    "sequence": tokenizer.decode(filled, skip_special_tokens=len(positions) == 1)})
    per_mask.append(cands)
  return per_mask[0] if len(per_mask) == 1 else per_mask


def fill_mask_checkpoint(checkpoint, texts, top_k: int = 5, *, dtype: str | None = None,
                         quantize: str = "none"):
  """`fill_mask` with the model and tokenizer of `checkpoint` (what `bert-jax-fill-mask` runs);
  refuses a checkpoint without the masked-LM head instead of predicting with random weights.
  quantize="int8" predicts with int8 weights, "int8_dynamic" with int8 activations too
  (bert_jax.quantization)."""
  import bert_jax
  from bert_jax import loading, quantization
  # The checkpoint's family decides the class (ModernBertForMaskedLM for a ModernBERT).
  model, _, info = loading.load_pretrained(checkpoint, "BertForMaskedLM", dtype=dtype,
                                           any_family=True)
  if any(k.startswith(("predictions.", "head.", "decoder.")) for k in info["missing_keys"]):
    raise ModelFileError(f"{checkpoint} has no masked-LM head (an encoder-only checkpoint); "
                         "fill-mask needs a BertForPreTraining or BertForMaskedLM checkpoint.")
  model = quantization.quantize(model, quantize)
  tokenizer = bert_jax.BertTokenizer.from_pretrained(checkpoint)
  return fill_mask(model, tokenizer, texts, top_k)
