"""Extractive QA on SQuAD v1.1 / v2.0 JSON (the nested `data[].paragraphs[].qas[]` layout and
the flat `data[]` one with `answers: {text: [...], answer_start: [...]}`).

Contexts are split into words at whitespace, punctuation and CJK characters (where BERT's basic
tokenizer splits too), and each word into sub-tokens, so a predicted token span maps back to an
exact character span of the original context. Long contexts become document-stride windows;
each token is scored only in the window where it has the most context (as google-research/bert).
Unanswerable questions (v2.0) train towards [CLS] and are predicted when the null score beats the
best span by more than `null_score_diff_threshold`.
"""
from __future__ import annotations

import collections
import json
import pathlib
import unicodedata

import jax
import jax.numpy as jnp
import numpy as np

from bert_jax import metrics as metrics_lib
from bert_jax.errors import DataError
from bert_jax.tasks import common

Example = dict  # id, question, context, answers [(text, start)], is_impossible


# ----------------------------------------------------------------------------- reading
def read_squad(path) -> tuple[list[Example], bool]:
  """(examples, is_v2) from a SQuAD JSON file in the nested or the flat layout."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise DataError(f"SQuAD file {path} does not exist; check the path in the config.")
  text = path.read_text(encoding="utf-8-sig")
  if not text.strip():
    raise DataError(f"SQuAD file {path} is empty.")
  try:
    doc = json.loads(text)
  except json.JSONDecodeError as e:
    raise DataError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}).") from None
  data = doc.get("data") if isinstance(doc, dict) else None
  if not isinstance(data, list) or not data:
    raise DataError(f"{path} has no 'data' list of questions; expected SQuAD JSON.")
  examples = []
  for article in data:
    if "paragraphs" in article:
      for para in article["paragraphs"]:
        for qa in para.get("qas", []):
          answers = [(a["text"], int(a["answer_start"])) for a in qa.get("answers", [])]
          examples.append(dict(id=str(qa["id"]), question=qa["question"],
                               context=para["context"], answers=answers,
                               is_impossible=bool(qa.get("is_impossible", not answers))))
    elif "context" in article and "question" in article:
      ans = article.get("answers") or {"text": [], "answer_start": []}
      answers = [(t, int(s)) for t, s in zip(ans["text"], ans["answer_start"], strict=False)]
      examples.append(dict(id=str(article["id"]), question=article["question"],
                           context=article["context"], answers=answers,
                           is_impossible=not answers))
    else:
      raise DataError(f"{path}: an entry of 'data' has neither 'paragraphs' (nested SQuAD) nor "
                      f"'context' and 'question' (flat layout).")
  if not examples:
    raise DataError(f"{path} holds no questions.")
  version = str(doc.get("version", ""))
  is_v2 = version.lstrip("v").startswith("2") or any(e["is_impossible"] for e in examples)
  return examples, is_v2


def _is_split_char(c: str) -> bool:
  cp = ord(c)
  if (33 <= cp <= 47) or (58 <= cp <= 64) or (91 <= cp <= 96) or (123 <= cp <= 126):
    return True
  if unicodedata.category(c).startswith("P"):
    return True
  return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0xF900 <= cp <= 0xFAFF
          or 0x20000 <= cp <= 0x2FA1F)


def split_words(context: str) -> tuple[list[str], list[int], list[int]]:
  """Words of a context with their [start, end) character offsets."""
  words, starts, ends = [], [], []
  i = 0
  while i < len(context):
    c = context[i]
    if c.isspace() or unicodedata.category(c) in ("Cc", "Cf", "Zs"):
      i += 1
      continue
    if _is_split_char(c):
      words.append(c), starts.append(i), ends.append(i + 1)
      i += 1
      continue
    j = i
    while j < len(context) and not (context[j].isspace() or _is_split_char(context[j])
                                    or unicodedata.category(context[j]) in ("Cc", "Cf", "Zs")):
      j += 1
    words.append(context[i:j]), starts.append(i), ends.append(j)
    i = j
  return words, starts, ends


# ----------------------------------------------------------------------------- features
def _max_context(spans: list[tuple[int, int]], span_index: int, position: int) -> bool:
  """True if doc token `position` has its most context (min of left/right) in this span."""
  best, best_index = None, None
  for i, (start, length) in enumerate(spans):
    end = start + length - 1
    if position < start or position > end:
      continue
    score = min(position - start, end - position) + 0.01 * length
    if best is None or score > best:
      best, best_index = score, i
  return best_index == span_index


def make_features(examples, tokenizer, *, max_seq_length: int, doc_stride: int,
                  max_query_length: int, training: bool):
  """Encoded windows: (arrays, meta, stats) with meta[i] = (example index, token->word map,
  max-context mask) for decoding."""
  all_words = {}
  for ex in examples:
    words, starts, ends = split_words(ex["context"])
    ex["_words"], ex["_starts"], ex["_ends"] = words, starts, ends
    all_words.update(dict.fromkeys(words))
  vocab = list(all_words)
  pieces_of = dict(zip(vocab, tokenizer.encode_batch(vocab), strict=False))
  q_ids = tokenizer.encode_batch([ex["question"] for ex in examples])
  rows, meta = collections.defaultdict(list), []
  stats = {"answer_not_in_context": 0, "unanswerable": 0, "windows": 0}
  for e, ex in enumerate(examples):
    query = q_ids[e][:max_query_length]
    doc_tokens, tok_to_word, word_first, word_last = [], [], [], []
    for w, word in enumerate(ex["_words"]):
      word_first.append(len(doc_tokens))
      for p in pieces_of[word]:
        doc_tokens.append(p)
        tok_to_word.append(w)
      word_last.append(len(doc_tokens) - 1)
    start_tok = end_tok = None
    if training and not ex["is_impossible"]:
      text, a_start = ex["answers"][0]
      if ex["context"][a_start:a_start + len(text)] != text or not text.strip():
        stats["answer_not_in_context"] += 1
        continue  # Skipped (counted): its offsets do not point at its text.
      a_end = a_start + len(text)
      ws = [w for w in range(len(ex["_words"])) if ex["_ends"][w] > a_start
            and ex["_starts"][w] < a_end]
      start_tok, end_tok = word_first[ws[0]], word_last[ws[-1]]
    elif training:
      stats["unanswerable"] += 1
    budget = max_seq_length - len(query) - 3
    if budget < 1:
      raise DataError(f"max_seq_length={max_seq_length} leaves no room for the context after a "
                      f"{len(query)}-token question; raise it or lower data.max_query_length.")
    spans, offset = [], 0
    while True:
      length = min(len(doc_tokens) - offset, budget)
      spans.append((offset, length))
      if offset + length >= len(doc_tokens):
        break
      offset += min(length, doc_stride)
    for s, (offset, length) in enumerate(spans):
      ids = [tokenizer.cls_id, *query, tokenizer.sep_id]
      types = [0] * len(ids)
      t2w = np.full(max_seq_length, -1, np.int32)
      maxctx = np.zeros(max_seq_length, bool)
      for k in range(length):
        t2w[len(ids)] = tok_to_word[offset + k]
        maxctx[len(ids)] = _max_context(spans, s, offset + k)
        ids.append(doc_tokens[offset + k])
        types.append(1)
      ids.append(tokenizer.sep_id)
      types.append(1)
      pad = max_seq_length - len(ids)
      rows["input_ids"].append(ids + [tokenizer.pad_id] * pad)
      rows["token_type_ids"].append(types + [0] * pad)
      rows["attention_mask"].append([1] * len(ids) + [0] * pad)
      if training:
        sp = ep = 0
        if start_tok is not None and offset <= start_tok and end_tok < offset + length:
          shift = len(query) + 2 - offset
          sp, ep = start_tok + shift, end_tok + shift
        rows["start_positions"].append(sp)
        rows["end_positions"].append(ep)
      meta.append((e, t2w, maxctx))
  stats["windows"] = len(meta)
  arrays = {k: np.asarray(v, np.int32) for k, v in rows.items()}
  return arrays, meta, stats


# ----------------------------------------------------------------------------- model
def _logits(model, batch):
  start, end = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
  return start.astype(jnp.float32), end.astype(jnp.float32)


def qa_loss(model, batch, dropout_rng):
  """Mean of the start and end cross-entropies."""
  start_BxL, end_BxL = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                             dropout_rng=dropout_rng)

  def nll(logits_BxL, pos_B):
    logp = jax.nn.log_softmax(logits_BxL.astype(jnp.float32), -1)
    return -jnp.take_along_axis(logp, pos_B[:, None], -1)[:, 0]

  s, e = batch["start_positions"], batch["end_positions"]
  loss_B = (nll(start_BxL, s) + nll(end_BxL, e)) / 2
  n = jnp.float32(s.shape[0])
  exact = jnp.sum((jnp.argmax(start_BxL, -1) == s) & (jnp.argmax(end_BxL, -1) == e))
  return jnp.mean(loss_B), {"span_accuracy": (exact.astype(jnp.float32), n)}


def decode(examples, meta, start_NxL, end_NxL, *, n_best_size: int, max_answer_length: int,
           null_score_diff_threshold: float, is_v2: bool) -> dict[str, dict]:
  """{id: {"answer", "score", "null_score_diff", "n_best"}} from window logits."""
  by_example = collections.defaultdict(list)
  for f, (e, t2w, maxctx) in enumerate(meta):
    by_example[e].append((f, t2w, maxctx))
  out = {}
  for e, feats in by_example.items():
    ex = examples[e]
    cands, null = {}, None
    for f, t2w, maxctx in feats:
      s_L, e_L = start_NxL[f], end_NxL[f]
      score_null = float(s_L[0] + e_L[0])
      null = score_null if null is None else min(null, score_null)
      for i in np.argsort(-s_L)[:n_best_size]:
        for j in np.argsort(-e_L)[:n_best_size]:
          if t2w[i] < 0 or t2w[j] < 0 or not maxctx[i] or j < i or j - i + 1 > max_answer_length:
            continue
          text = ex["context"][ex["_starts"][t2w[i]]:ex["_ends"][t2w[j]]]
          score = float(s_L[i] + e_L[j])
          if text not in cands or score > cands[text]:
            cands[text] = score
    best = sorted(cands.items(), key=lambda kv: -kv[1])[:n_best_size]
    scores = np.asarray([s for _, s in best] + ([null] if is_v2 else []), np.float64)
    probs = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum() if len(scores) \
        else scores
    n_best = [{"text": t, "score": round(s, 4), "probability": round(float(p), 4)}
              for (t, s), p in zip(best, probs, strict=False)]
    answer, best_score = (best[0] if best else ("", float("-inf")))
    diff = (null - best_score) if null is not None else float("inf")
    if is_v2 and diff > null_score_diff_threshold:
      answer = ""
    out[ex["id"]] = {"answer": answer, "score": round(best_score, 4) if best else None,
                     "null_score_diff": round(diff, 4) if best else None, "n_best": n_best}
  for ex in examples:  # Questions whose context yielded no window at all.
    out.setdefault(ex["id"], {"answer": "", "score": None, "null_score_diff": None, "n_best": []})
  return out


class SquadTask:
  def __init__(self, config, tokenizer, label_names=None):
    d = config.data
    self.data_config, self.tokenizer = d, tokenizer
    self.metric = config.train.metric or "f1"
    self.label_names = []
    self.num_labels = 2
    train, v2_train = read_squad(d.train_file)
    if d.dev_file:
      dev, v2_dev = read_squad(d.dev_file)
    else:
      tr_idx, dev_idx = common.split_indices(len(train), d.dev_fraction, d.split_seed)
      train, dev = [train[i] for i in tr_idx], [train[i] for i in dev_idx]
      v2_dev = v2_train
    self.is_v2 = {"auto": v2_train or v2_dev, "v1": False, "v2": True}.get(d.squad_version)
    if self.is_v2 is None:
      raise DataError(f"data.squad_version={d.squad_version!r} is not one of auto, v1, v2.")
    kw = self.feature_kwargs(d)
    self.train_arrays, _, train_stats = make_features(train, tokenizer, training=True, **kw)
    if not len(self.train_arrays.get("input_ids", ())):
      raise DataError(f"{d.train_file}: no training question has its answer in its context; "
                      f"check the answer_start offsets.")
    if train_stats["answer_not_in_context"]:
      common.warn(f"{d.train_file}: skipped {train_stats['answer_not_in_context']} questions "
                  f"whose answer text is not at answer_start in their context.")
    self.dev = dev
    self.dev_arrays, self.dev_meta, _ = make_features(dev, tokenizer, training=False, **kw)
    self.stats = {"train_skipped_answer_not_in_context": train_stats["answer_not_in_context"],
                  "train_windows": train_stats["windows"], "dev_windows": len(self.dev_meta)}

  @staticmethod
  def feature_kwargs(d) -> dict:
    return dict(max_seq_length=d.max_seq_length, doc_stride=d.doc_stride,
                max_query_length=d.max_query_length)

  def make_model(self, bert_config, rngs):
    from bert_jax import family  # BertFor... or ModernBertFor..., by the config's family.
    return family.head_model(bert_config, "BertForQuestionAnswering", rngs)

  loss_fn = staticmethod(qa_loss)

  def decode_kwargs(self) -> dict:
    d = self.data_config
    return dict(n_best_size=d.n_best_size, max_answer_length=d.max_answer_length,
                null_score_diff_threshold=d.null_score_diff_threshold, is_v2=self.is_v2)

  def evaluate(self, model, mesh, batch_size: int) -> tuple[dict[str, float], list[dict]]:
    start, end = common.run_model(model, _logits, self.dev_arrays, batch_size, mesh)
    preds = decode(self.dev, self.dev_meta, start, end, **self.decode_kwargs())
    gold = {ex["id"]: [t for t, _ in ex["answers"]] for ex in self.dev}
    results = metrics_lib.squad_scores(gold, {k: v["answer"] for k, v in preds.items()})
    results.update({k: float(v) for k, v in self.stats.items()})
    records = [{"id": ex["id"], "question": ex["question"], **preds[ex["id"]],
                "gold": gold[ex["id"]]} for ex in self.dev]
    return results, records

  def info(self) -> dict:
    d = self.data_config
    return {"task": "squad", "version_2_with_negative": self.is_v2,
            **self.feature_kwargs(d), **{k: v for k, v in self.decode_kwargs().items()
                                         if k != "is_v2"}}


def predict(model, tokenizer, info: dict, path, batch_size: int, overrides: dict) -> list[dict]:
  """Answers for every question of a SQuAD file (answers in the file, if any, are ignored)."""
  examples, is_v2 = read_squad(path)
  kw = {k: int(info[k]) for k in ("max_seq_length", "doc_stride", "max_query_length")}
  arrays, meta, _ = make_features(examples, tokenizer, training=False, **kw)
  start, end = common.run_model(model, _logits, arrays, batch_size)
  preds = decode(examples, meta, start, end, n_best_size=int(info.get("n_best_size", 20)),
                 max_answer_length=int(info.get("max_answer_length", 30)),
                 null_score_diff_threshold=float(info.get("null_score_diff_threshold", 0.0)),
                 is_v2=bool(info.get("version_2_with_negative", is_v2)))
  return [{"id": ex["id"], "question": ex["question"], **preds[ex["id"]]} for ex in examples]
