"""Evaluation metrics as GLUE, seqeval and the official SQuAD script define them (numpy only).

- Classification / regression: accuracy, binary F1, Matthews correlation, Pearson, Spearman.
- NER: entity-level precision / recall / F1 with seqeval's default (conlleval-compatible) chunking,
  which reads IO, IOB1, IOB2 (BIO) and IOBES tag sequences.
- SQuAD: `normalize_answer`, exact match and token F1 exactly as `evaluate-v2.0.py` (which equals
  v1.1 on answerable questions), scores in percent as that script prints them.
- Retrieval: recall@k, MRR@k and nDCG@k as BEIR reports them (pytrec_eval / trec_eval: recall
  over all relevant documents, nDCG with the judgement as the linear gain).
"""
from __future__ import annotations

import collections
import re
import string
from collections.abc import Sequence

import numpy as np


# ----------------------------------------------------------------------------- classification
def accuracy(labels, preds) -> float:
  labels, preds = np.asarray(labels), np.asarray(preds)
  return float(np.mean(labels == preds)) if labels.size else float("nan")


def binary_f1(labels, preds, positive: int = 1) -> float:
  """F1 of the positive class (GLUE's MRPC / QQP F1); 0 when nothing is predicted or gold."""
  labels, preds = np.asarray(labels) == positive, np.asarray(preds) == positive
  tp = float(np.sum(labels & preds))
  p_den, r_den = float(np.sum(preds)), float(np.sum(labels))
  if tp == 0:
    return 0.0
  p, r = tp / p_den, tp / r_den
  return 2 * p * r / (p + r)


def matthews_corrcoef(labels, preds) -> float:
  """Multiclass MCC (Gorodkin's R_K, as sklearn); 0 when a marginal is constant."""
  labels, preds = np.asarray(labels), np.asarray(preds)
  classes = np.union1d(labels, preds)
  idx = {c: i for i, c in enumerate(classes)}
  c_KxK = np.zeros((len(classes), len(classes)), np.float64)
  for t, p in zip(labels, preds, strict=True):
    c_KxK[idx[t], idx[p]] += 1
  t_K, p_K = c_KxK.sum(1), c_KxK.sum(0)
  n, correct = c_KxK.sum(), np.trace(c_KxK)
  num = correct * n - t_K @ p_K
  den = np.sqrt((n * n - p_K @ p_K) * (n * n - t_K @ t_K))
  return float(num / den) if den else 0.0


def pearson(x, y) -> float:
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  xc, yc = x - x.mean(), y - y.mean()
  den = np.sqrt(np.sum(xc * xc) * np.sum(yc * yc))
  return float(np.sum(xc * yc) / den) if den else float("nan")


def _average_ranks(x) -> np.ndarray:
  """Ranks 1..n with ties sharing their mean rank (as scipy.stats.rankdata)."""
  x = np.asarray(x)
  order = np.argsort(x, kind="mergesort")
  ranks = np.empty(len(x), np.float64)
  sorted_x = x[order]
  i = 0
  while i < len(x):
    j = i
    while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
      j += 1
    ranks[order[i:j + 1]] = (i + j) / 2 + 1
    i = j + 1
  return ranks


def spearman(x, y) -> float:
  return pearson(_average_ranks(x), _average_ranks(y))


# ----------------------------------------------------------------------------- NER (seqeval)
def _split_tag(tag: str) -> tuple[str, str]:
  if tag in ("O", "") or tag is None:
    return "O", ""
  prefix = tag[0]
  kind = tag[1:].split("-", maxsplit=1)[-1] if len(tag) > 1 else ""
  return prefix, kind or "_"


def _end_of_chunk(prev_tag, tag, prev_type, type_) -> bool:
  if prev_tag in ("E", "S"):
    return True
  if prev_tag in ("B", "I") and tag in ("B", "S", "O"):
    return True
  return prev_tag not in ("O", ".") and prev_type != type_


def _start_of_chunk(prev_tag, tag, prev_type, type_) -> bool:
  if tag in ("B", "S"):
    return True
  if prev_tag in ("E", "S", "O") and tag in ("E", "I"):
    return True
  return tag not in ("O", ".") and prev_type != type_


def get_entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
  """(type, first, last) chunks of one tag sequence, inclusive, as seqeval's default mode."""
  chunks = []
  prev_tag, prev_type, begin = "O", "", 0
  for i, t in enumerate(list(tags) + ["O"]):
    tag, type_ = _split_tag(t)
    if _end_of_chunk(prev_tag, tag, prev_type, type_):
      chunks.append((prev_type, begin, i - 1))
    if _start_of_chunk(prev_tag, tag, prev_type, type_):
      begin = i
    prev_tag, prev_type = tag, type_
  return chunks


def _prf(correct: int, n_pred: int, n_true: int) -> dict[str, float]:
  p = correct / n_pred if n_pred else 0.0
  r = correct / n_true if n_true else 0.0
  f = 2 * p * r / (p + r) if p + r else 0.0
  return {"precision": p, "recall": r, "f1": f, "support": n_true}


def entity_scores(true_seqs: Sequence[Sequence[str]], pred_seqs: Sequence[Sequence[str]]
                  ) -> dict:
  """Micro entity precision / recall / F1 over sentences, plus the same per entity type."""
  if len(true_seqs) != len(pred_seqs):
    raise ValueError(f"{len(true_seqs)} gold sentences but {len(pred_seqs)} predicted ones.")
  true_set, pred_set = set(), set()
  for s, (t, p) in enumerate(zip(true_seqs, pred_seqs, strict=True)):
    if len(t) != len(p):
      raise ValueError(f"Sentence {s} has {len(t)} gold tags but {len(p)} predicted tags.")
    true_set.update((s, *e) for e in get_entities(t))
    pred_set.update((s, *e) for e in get_entities(p))
  out = _prf(len(true_set & pred_set), len(pred_set), len(true_set))
  per_type = {}
  for kind in sorted({e[1] for e in true_set | pred_set}):
    ts = {e for e in true_set if e[1] == kind}
    ps = {e for e in pred_set if e[1] == kind}
    per_type[kind] = _prf(len(ts & ps), len(ps), len(ts))
  out["per_type"] = per_type
  return out


# ----------------------------------------------------------------------------- SQuAD
def normalize_answer(s: str) -> str:
  """Lower case, drop punctuation and the articles a/an/the, collapse whitespace."""
  s = s.lower()
  exclude = set(string.punctuation)
  s = "".join(ch for ch in s if ch not in exclude)
  s = re.sub(r"\b(a|an|the)\b", " ", s)
  return " ".join(s.split())


def _tokens(s: str) -> list[str]:
  return normalize_answer(s).split() if s else []


def exact_match(gold: str, pred: str) -> int:
  return int(normalize_answer(gold) == normalize_answer(pred))


def token_f1(gold: str, pred: str) -> float:
  g, p = _tokens(gold), _tokens(pred)
  if not g or not p:  # A no-answer on either side scores 1 only when both are empty.
    return float(g == p)
  common = collections.Counter(g) & collections.Counter(p)
  same = sum(common.values())
  if same == 0:
    return 0.0
  precision, recall = same / len(p), same / len(g)
  return 2 * precision * recall / (precision + recall)


def squad_scores(gold_answers: dict[str, list[str]], predictions: dict[str, str]) -> dict:
  """EM / F1 in percent (max over gold answers), with HasAns / NoAns breakdowns when present.

  gold_answers maps question id -> its answer texts ([] for an unanswerable question);
  predictions maps id -> predicted text ("" for no answer). Missing predictions count as wrong,
  as in the official script.
  """
  em, f1, has = {}, {}, {}
  for qid, answers in gold_answers.items():
    golds = [a for a in answers if normalize_answer(a)] or [""]
    has[qid] = golds != [""]
    if qid not in predictions:
      em[qid], f1[qid] = 0, 0.0
      continue
    pred = predictions[qid]
    em[qid] = max(exact_match(a, pred) for a in golds)
    f1[qid] = max(token_f1(a, pred) for a in golds)

  def mean(d, ids):
    return 100.0 * sum(d[i] for i in ids) / len(ids) if ids else float("nan")

  ids = list(gold_answers)
  out = {"exact_match": mean(em, ids), "f1": mean(f1, ids), "total": len(ids)}
  has_ids = [i for i in ids if has[i]]
  no_ids = [i for i in ids if not has[i]]
  if has_ids and no_ids:
    out.update(HasAns_exact=mean(em, has_ids), HasAns_f1=mean(f1, has_ids),
               HasAns_total=len(has_ids), NoAns_exact=mean(em, no_ids),
               NoAns_f1=mean(f1, no_ids), NoAns_total=len(no_ids))
  return out


# ----------------------------------------------------------------------------- retrieval
def ranking_scores(ranked: Sequence[Sequence[str]], qrels: Sequence[dict[str, float]],
                   recall_at: Sequence[int] = (1, 10), cutoff: int = 10) -> dict[str, float]:
  """recall@k for k in recall_at, mrr@cutoff and ndcg@cutoff averaged over queries.

  ranked[i]: query i's document ids, best first (at least max(recall_at, cutoff) of them);
  qrels[i]: {document id: relevance > 0} of query i.
  """
  if not ranked:
    return {}
  rec = {k: [] for k in recall_at}
  rr, ndcg = [], []
  for docs, rel in zip(ranked, qrels, strict=True):
    for k in recall_at:
      rec[k].append(sum(1 for d in docs[:k] if d in rel) / len(rel))
    first = next((r for r, d in enumerate(docs[:cutoff]) if d in rel), None)
    rr.append(0.0 if first is None else 1.0 / (first + 1))
    dcg = sum(rel.get(d, 0.0) / np.log2(r + 2) for r, d in enumerate(docs[:cutoff]))
    ideal = sorted(rel.values(), reverse=True)[:cutoff]
    idcg = sum(g / np.log2(r + 2) for r, g in enumerate(ideal))
    ndcg.append(dcg / idcg)
  out = {f"recall@{k}": float(np.mean(v)) for k, v in rec.items()}
  out[f"mrr@{cutoff}"] = float(np.mean(rr))
  out[f"ndcg@{cutoff}"] = float(np.mean(ndcg))
  return out
