"""Text generation (translation, summarisation) with a warm-started BERT2BERT encoder-decoder.

Data: `data.train_file` (and `data.dev_file`, else a seeded `data.dev_fraction` split) of
source/target pairs, TSV / CSV with a header or JSONL (`data.source_column`,
`data.target_column`). Sources longer than `data.max_seq_length` tokens and targets longer than
`seq2seq.max_target_length` are truncated; how many is counted (`train_truncated_sources`, ...)
and said in a warning. A row without one of the columns is skipped and counted; an empty target
stops the run (one sentence naming the row), since training on it teaches the model to stop.

Model: seq2seq_modeling.BertEncoderDecoder from `init_from` (a BERT checkpoint warm-starts
both halves, Rothe et al. 2020; a BertEncoderDecoder continues), `seq2seq.share` for
BERT2BERT-share, `seq2seq.copy` for a pointer-generator copy gate. Loss: label-smoothed
cross-entropy over the target tokens (decoder input `[CLS] y`, labels `y [SEP]`; a copy model's
over its mixture). Evaluation: generation (`seq2seq.num_beams`, length penalty) on
the dev rows (`seq2seq.eval_rows` evenly spaced ones when > 0), scored by sacreBLEU (BLEU,
chrF) and rouge-score (ROUGE-1/2/L F1).
"""
from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np

from bert_jax import generation, model_dir, pretraining, seq2seq_modeling
from bert_jax.errors import ConfigError, DataError
from bert_jax.tasks import buckets, common

METRICS = ("bleu", "chrf", "rouge1", "rouge2", "rougeL")


def seq2seq_loss(model, batch, dropout_rng, label_smoothing: float = 0.0):
  """Mean label-smoothed cross-entropy per target token; metrics: nll and token accuracy."""
  logits_BxTxV = model(batch["input_ids"], batch["attention_mask"], batch["decoder_input_ids"],
                       dropout_rng=dropout_rng).astype(jnp.float32)
  labels_BxT, weight_BxT = batch["labels"], batch["label_mask"].astype(jnp.float32)
  # A copy model's output is already the log of its (normalised) mixture.
  copies = getattr(model, "copy", False)
  logp_BxTxV = logits_BxTxV if copies else jax.nn.log_softmax(logits_BxTxV, -1)
  label_logp_BxT, hit_BxT = pretraining.label_scores(logp_BxTxV, labels_BxT)
  nll_BxT = -label_logp_BxT
  smooth_BxT = -jnp.mean(logp_BxTxV, -1)  # cross-entropy against the uniform distribution
  loss_BxT = (1.0 - label_smoothing) * nll_BxT + label_smoothing * smooth_BxT
  n = jnp.maximum(jnp.sum(weight_BxT), 1.0)
  correct = jnp.sum(hit_BxT * weight_BxT)
  return jnp.sum(loss_BxT * weight_BxT) / n, {"nll": (jnp.sum(nll_BxT * weight_BxT), n),
                                               "token_accuracy": (correct, n)}


def read_pairs(path, d, split: str) -> dict[str, list[str]]:
  """{"source": [...], "target": [...]} of a pair file; refuses empty targets."""
  names, rows = common.read_rows(path, d.format, header=True)
  cols, skipped = common.extract_columns(path, names, rows, {"source": d.source_column,
                                                             "target": d.target_column})
  if skipped:
    common.warn(f"{path}: skipped {skipped} rows without a {d.source_column!r} or "
                f"{d.target_column!r} value.")
  src = [str(s).strip() for s in cols["source"]]
  tgt = [str(t).strip() for t in cols["target"]]
  for i, (s, t) in enumerate(zip(src, tgt, strict=True)):
    if not t:
      raise DataError(f"{path}: {split} pair {i + 1} ({s[:40]!r}) has an empty target; remove "
                      "the row or fill in its target text.")
  if not src:
    raise DataError(f"{path} has no source/target pairs; check data.source_column and "
                    "data.target_column.")
  return {"source": src, "target": tgt}


def encode_sources(tokenizer, sources, max_length: int) -> tuple[dict[str, np.ndarray], int]:
  """Padded `[CLS] x [SEP]` inputs (truncated to max_length) and how many were truncated."""
  n_long = sum(len(ids) + 2 > max_length for ids in tokenizer.encode_batch(sources))
  enc = tokenizer(list(sources), max_length=max_length, padding="max_length", truncation=True)
  return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}, n_long


def encode_targets(tokenizer, targets, max_length: int) -> tuple[dict[str, np.ndarray], int]:
  """decoder_input_ids `[CLS] y`, labels `y [SEP]` and their mask, [N, max_length]; and how
  many targets were truncated to fit."""
  ids = tokenizer.encode_batch(targets)
  n = len(ids)
  dec = np.full((n, max_length), tokenizer.pad_id, np.int32)
  labels = np.full((n, max_length), tokenizer.pad_id, np.int32)
  mask = np.zeros((n, max_length), np.int32)
  truncated = 0
  for i, y in enumerate(ids):
    if len(y) + 1 > max_length:
      truncated += 1
      y = y[:max_length - 1]
    dec[i, :len(y) + 1] = [tokenizer.cls_id, *y]
    labels[i, :len(y) + 1] = [*y, tokenizer.sep_id]
    mask[i, :len(y) + 1] = 1
  return {"decoder_input_ids": dec, "labels": labels, "label_mask": mask}, truncated


def scores(predictions: list[str], references: list[str], lowercase: bool = False
           ) -> dict[str, float]:
  """BLEU and chrF (sacreBLEU, its defaults) and ROUGE-1/2/L F1 x 100 (rouge-score).

  `lowercase`: score both sides lowercased (an uncased vocabulary cannot produce case, so cased
  scores would measure the vocabulary, not the model; the copy baseline is scored the same way).
  """
  import sacrebleu
  from rouge_score import rouge_scorer
  if lowercase:
    predictions, references = [p.lower() for p in predictions], [r.lower() for r in references]
  out = {"bleu": sacrebleu.corpus_bleu(predictions, [references]).score,
         "chrf": sacrebleu.corpus_chrf(predictions, [references]).score}
  scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
  per = [scorer.score(r, p) for p, r in zip(predictions, references, strict=True)]
  for k in ("rouge1", "rouge2", "rougeL"):
    out[k] = 100.0 * float(np.mean([s[k].fmeasure for s in per])) if per else 0.0
  return out


def generation_config(tokenizer, s) -> generation.GenerationConfig:
  early = s.early_stopping
  early = {"true": True, "false": False}.get(str(early).lower(), early)
  return generation.GenerationConfig(
      max_length=int(s.max_target_length), num_beams=int(s.num_beams),
      length_penalty=float(s.length_penalty), early_stopping=early,
      decoder_start_token_id=tokenizer.cls_id, eos_token_id=tokenizer.sep_id,
      pad_token_id=tokenizer.pad_id)


def generate_texts(model, tokenizer, arrays: dict, gen: generation.GenerationConfig,
                   batch_size: int) -> list[str]:
  """Generated text per row of `arrays` (input_ids / attention_mask), `batch_size` at a time
  (the last batch padded, so generation compiles once)."""
  n = len(arrays["input_ids"])
  out = []
  for start in range(0, n, batch_size):
    batch = {k: v[start:start + batch_size] for k, v in arrays.items()}
    rows = len(batch["input_ids"])
    if rows < batch_size and n > batch_size:
      batch = {k: np.concatenate([v, np.repeat(v[-1:], batch_size - rows, 0)])
               for k, v in batch.items()}
    ids = generation.generate(model, batch["input_ids"], batch["attention_mask"], gen)[:rows]
    out.extend(detokenize(tokenizer.decode(generation.strip(r, gen))) for r in ids)
  return out


_SPLIT_HYPHEN = re.compile(r"(\w) - (?=\w)")
# Possessives and contractions ("naomi ' s", "don ' t"): sacreBLEU's 13a tokeniser keeps "naomi's"
# one token, so the spaced form cost a BLEU match per possessive.
_SPLIT_APOSTROPHE = re.compile(r"(\w) ' (s|t|re|ve|m|ll|d)\b")


def detokenize(text: str) -> str:
  """WordPiece decoding spaces hyphens and apostrophes out ("beth - lehem", "naomi ' s"); join
  them back."""
  return _SPLIT_APOSTROPHE.sub(r"\1'\2", _SPLIT_HYPHEN.sub(r"\1-", text))


class Seq2SeqTask:
  """Reads, encodes and scores source/target pairs (the task of configs/finetune.py)."""

  label_names: list[str] = []
  num_labels = 0

  def __init__(self, config, tokenizer):
    d, s = config.data, config.seq2seq
    self.data_config, self.s = d, s
    self.tokenizer, self.max_seq_length = tokenizer, int(d.max_seq_length)
    self.max_target_length = int(s.max_target_length)
    if not 0.0 <= s.label_smoothing < 1.0:
      raise ConfigError(f"seq2seq.label_smoothing={s.label_smoothing} must be in [0, 1).")
    if s.num_beams < 1 or self.max_target_length < 2:
      raise ConfigError(f"seq2seq.num_beams={s.num_beams} must be >= 1 and "
                        f"seq2seq.max_target_length={s.max_target_length} >= 2.")
    seq2seq_modeling.check_cross_init(s.cross_init)
    # Training batches of similar-length pairs (tasks/buckets.py), cut on both sides.
    self.length_buckets = buckets.parse(d.get("length_buckets", "auto"),
                                        max(self.max_seq_length, self.max_target_length))
    self.metric = config.train.metric or "bleu"
    self.gen = generation_config(tokenizer, s)
    self.loss_fn = functools.partial(seq2seq_loss, label_smoothing=float(s.label_smoothing))
    if not d.train_file:
      raise DataError("Set data.train_file to a TSV / JSONL file of source/target pairs (e.g. "
                      "`python -m bert_jax.bible_pairs --translation --out=DIR`).")
    train = read_pairs(d.train_file, d, "train")
    if d.dev_file:
      dev = read_pairs(d.dev_file, d, "dev")
    else:
      tr, dv = common.split_indices(len(train["source"]), d.dev_fraction, d.split_seed)
      dev = {k: [v[i] for i in dv] for k, v in train.items()}
      train = {k: [v[i] for i in tr] for k, v in train.items()}
    if s.eval_rows and len(dev["source"]) > s.eval_rows:
      keep = np.linspace(0, len(dev["source"]) - 1, int(s.eval_rows)).round().astype(int)
      dev = {k: [v[i] for i in keep] for k, v in dev.items()}
    self.stats: dict[str, int] = {}
    self.train_arrays = self._arrays(train, "train")
    a = self.train_arrays
    self.train_lengths = np.maximum(a["attention_mask"].sum(1), a["label_mask"].sum(1))
    self.dev = dev
    self.dev_arrays, n_long = encode_sources(tokenizer, dev["source"], self.max_seq_length)
    self._count("dev_truncated_sources", n_long, "dev sources", self.max_seq_length,
                "data.max_seq_length")

  def _count(self, key, n, what, limit, option):
    self.stats[key] = n
    if n:
      common.warn(f"{n} {what} are longer than {limit} tokens and were truncated (raise "
                  f"{option} to keep them whole).")

  def _arrays(self, pairs, split):
    src, n_src = encode_sources(self.tokenizer, pairs["source"], self.max_seq_length)
    tgt, n_tgt = encode_targets(self.tokenizer, pairs["target"], self.max_target_length)
    self._count(f"{split}_truncated_sources", n_src, f"{split} sources", self.max_seq_length,
                "data.max_seq_length")
    self._count(f"{split}_truncated_targets", n_tgt, f"{split} targets",
                self.max_target_length - 1, "seq2seq.max_target_length")
    return {**src, **tgt}

  # ----------------------------------------------------------------- model
  def make_model(self, bert_config, rngs):
    seq2seq_modeling.check_warm_start(bert_config, "model.family=modern")
    return seq2seq_modeling.BertEncoderDecoder(bert_config, rngs=rngs, share=bool(self.s.share),
                                               copy=bool(self.s.get("copy", False)))

  def init_params(self, conv) -> dict:
    """What `init_from` gives the model: all of a BertEncoderDecoder, or a warm start from a
    BERT checkpoint (its encoder twice, new cross-attention)."""
    seq2seq_modeling.check_warm_start(conv.config, "init_from")
    if conv.info.get("architecture") == seq2seq_modeling.ARCHITECTURE:
      if bool(conv.info.get("share")) != bool(self.s.share):
        raise ConfigError(f"init_from has share={bool(conv.info.get('share'))}; set "
                          f"--config.seq2seq.share={bool(conv.info.get('share'))} to continue it.")
      if bool(conv.info.get("copy")) != bool(self.s.get("copy", False)):
        raise ConfigError(f"init_from has copy={bool(conv.info.get('copy'))}; set "
                          f"--config.seq2seq.copy={bool(conv.info.get('copy'))} to continue it.")
      return model_dir.unflatten(conv.params)
    return model_dir.unflatten(seq2seq_modeling.warm_start_params(
        conv.params, str(self.s.cross_init)))

  # ----------------------------------------------------------------- evaluation
  def evaluate(self, model, mesh, batch_size: int) -> tuple[dict[str, float], list[dict]]:
    preds = generate_texts(model, self.tokenizer, self.dev_arrays, self.gen, batch_size)
    results = scores(preds, self.dev["target"], self.tokenizer.do_lower_case)
    results.update({k: float(v) for k, v in self.stats.items()})
    records = [{"source": s, "prediction": p, "target": t} for s, p, t in
               zip(self.dev["source"], preds, self.dev["target"], strict=True)]
    return results, records

  def info(self) -> dict:
    d, g = self.data_config, self.gen
    return {"task": "seq2seq", "max_seq_length": self.max_seq_length,
            "max_target_length": self.max_target_length, "source_column": d.source_column,
            "target_column": d.target_column, "data_format": d.format,
            "num_beams": g.num_beams, "length_penalty": g.length_penalty,
            "early_stopping": g.early_stopping, "share": bool(self.s.share),
            "copy": bool(self.s.get("copy", False)),
            "lowercase_scores": self.tokenizer.do_lower_case,
            "decoder_start_token_id": g.decoder_start_token_id, "eos_token_id": g.eos_token_id,
            "pad_token_id": g.pad_token_id}


def predict(model, tokenizer, info: dict, path, batch_size: int, overrides: dict) -> list[dict]:
  """{"source", "prediction"} per row of a pair / source file (the source column the model was
  trained with, or `overrides["text_column"]`)."""
  import ml_collections
  column = overrides.get("text_column") or info.get("source_column", "source")
  fmt = overrides.get("format") or "auto"
  names, rows = common.read_rows(path, fmt, header=True)
  cols, skipped = common.extract_columns(path, names, rows, {"source": column})
  if skipped:
    common.warn(f"{path}: skipped {skipped} rows without a {column!r} value.")
  sources = [str(s).strip() for s in cols["source"]]
  arrays, n_long = encode_sources(tokenizer, sources, int(info.get("max_seq_length", 128)))
  if n_long:
    common.warn(f"{n_long} sources are longer than {info.get('max_seq_length', 128)} tokens and "
                "were truncated.")
  s = ml_collections.ConfigDict({k: info.get(k, v) for k, v in dict(
      max_target_length=64, num_beams=4, length_penalty=1.0, early_stopping=True).items()})
  preds = generate_texts(model, tokenizer, arrays, generation_config(tokenizer, s), batch_size)
  return [{"source": src, "prediction": p} for src, p in zip(sources, preds, strict=True)]
