"""SQuAD data on the real sample: both layouts, windows, offsets, decoding and EM/F1 by hand."""
import copy
import json

import numpy as np
import pytest
from conftest import TESTDATA

from bert_jax import metrics
from bert_jax.errors import DataError
from bert_jax.tasks import squad
from bert_jax.tokenization import Tokenizer

SAMPLE = TESTDATA / "squad_sample.json"
KW = dict(max_seq_length=96, doc_stride=32, max_query_length=24)


@pytest.fixture(scope="module")
def tokenizer(vocab_path):
  return Tokenizer.from_vocab(vocab_path)


def _nested(path):
  flat = json.loads(SAMPLE.read_text())
  paras = {}
  for q in flat["data"]:
    answers = [{"text": t, "answer_start": s}
               for t, s in zip(q["answers"]["text"], q["answers"]["answer_start"], strict=False)]
    paras.setdefault(q["context"], []).append(
        {"id": q["id"], "question": q["question"], "answers": answers,
         "is_impossible": not answers})
  doc = {"version": "v2.0", "data": [{"title": "Normans", "paragraphs": [
      {"context": c, "qas": qas} for c, qas in paras.items()]}]}
  path.write_text(json.dumps(doc))
  return path


def test_both_layouts_read_the_same(tmp_path):
  flat, v2 = squad.read_squad(SAMPLE)
  nested, v2n = squad.read_squad(_nested(tmp_path / "nested.json"))
  assert v2 and v2n and len(flat) == 14
  assert sum(e["is_impossible"] for e in flat) == 6
  key = lambda e: (e["id"], e["question"], e["context"], e["answers"], e["is_impossible"])
  assert sorted(map(key, flat)) == sorted(map(key, nested))


def test_words_keep_offsets():
  ctx = 'The Normans (Norman: Nourmands; French: Normands) gave  their name.'
  words, starts, ends = squad.split_words(ctx)
  assert words[:5] == ["The", "Normans", "(", "Norman", ":"]
  assert all(ctx[s:e] == w for w, s, e in zip(words, starts, ends, strict=False))


def _oracle_logits(arrays, shift_start=0):
  """One-hot start/end logits at the training targets ([CLS] for no answer)."""
  n, length = arrays["input_ids"].shape
  start, end = np.full((n, length), -10.0), np.full((n, length), -10.0)
  start[np.arange(n), arrays["start_positions"] + shift_start] = 10.0
  end[np.arange(n), arrays["end_positions"]] = 10.0
  return start, end


def test_oracle_spans_score_100_across_windows(tokenizer):
  examples, _ = squad.read_squad(SAMPLE)
  arrays, meta, stats = squad.make_features(examples, tokenizer, training=True, **KW)
  assert stats["windows"] > 2 * len(examples)  # Long contexts became several windows.
  assert stats["answer_not_in_context"] == 0
  start, end = _oracle_logits(arrays)
  preds = squad.decode(examples, meta, start, end, n_best_size=5, max_answer_length=30,
                       null_score_diff_threshold=0.0, is_v2=True)
  gold = {e["id"]: [t for t, _ in e["answers"]] for e in examples}
  scores = metrics.squad_scores(gold, {k: v["answer"] for k, v in preds.items()})
  assert scores["exact_match"] == 100.0 and scores["f1"] == 100.0
  assert preds["56ddde6b9a695914005b9628"]["answer"] == "France"


def test_hand_computed_partial_span(tokenizer):
  examples, _ = squad.read_squad(SAMPLE)
  ex = [e for e in examples if e["id"] == "56ddde6b9a695914005b9628"]  # gold "France"
  arrays, meta, _ = squad.make_features(copy.deepcopy(ex), tokenizer, training=True, **KW)
  hit = arrays["start_positions"] > 0
  assert hit.sum() >= 1
  # Starting 3 tokens earlier predicts "a region in France": normalised [region, in, france]
  # against [france]: P 1/3, R 1 -> F1 1/2, EM 0.
  start, end = _oracle_logits(arrays, shift_start=-3 * hit.astype(int))
  ex = copy.deepcopy(ex)
  squad.make_features(ex, tokenizer, training=True, **KW)
  preds = squad.decode(ex, meta, start, end, n_best_size=5, max_answer_length=30,
                       null_score_diff_threshold=0.0, is_v2=False)
  assert preds[ex[0]["id"]]["answer"] == "a region in France"
  s = metrics.squad_scores({ex[0]["id"]: ["France"]}, {ex[0]["id"]: "a region in France"})
  assert (s["exact_match"], s["f1"]) == (0.0, pytest.approx(50.0))


def test_no_answer_threshold(tokenizer):
  examples, _ = squad.read_squad(SAMPLE)
  ex = [e for e in examples if e["id"] == "56ddde6b9a695914005b9628"]
  arrays, meta, _ = squad.make_features(ex, tokenizer, training=True, **KW)
  start, end = _oracle_logits(arrays)
  start[:, 0] = end[:, 0] = 9.0  # null score 18 vs best span 20: diff -2.
  decode = lambda thr: squad.decode(ex, meta, start, end, n_best_size=5, max_answer_length=30,
                                    null_score_diff_threshold=thr, is_v2=True)
  assert decode(0.0)[ex[0]["id"]]["answer"] == "France"
  assert decode(-3.0)[ex[0]["id"]]["answer"] == ""
  assert decode(0.0)[ex[0]["id"]]["null_score_diff"] == pytest.approx(-2.0)


def test_answer_not_in_context_is_a_counted_skip(tmp_path, tokenizer):
  examples, _ = squad.read_squad(SAMPLE)
  bad = copy.deepcopy(examples[:3])
  text, start = bad[0]["answers"][0]
  bad[0]["answers"][0] = (text, start + 7)
  arrays, meta, stats = squad.make_features(bad, tokenizer, training=True, **KW)
  assert stats["answer_not_in_context"] == 1
  assert {m[0] for m in meta} == {1, 2}


def test_bad_files(tmp_path):
  empty = tmp_path / "e.json"
  empty.write_text("")
  with pytest.raises(DataError, match="empty"):
    squad.read_squad(empty)
  odd = tmp_path / "odd.json"
  odd.write_text(json.dumps({"data": [{"title": "x"}]}))
  with pytest.raises(DataError, match="neither 'paragraphs'"):
    squad.read_squad(odd)
