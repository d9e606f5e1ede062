"""Metrics against values worked out by hand (the arithmetic is in the comments)."""
import math

import numpy as np
import pytest

from bert_jax import metrics as m


def test_accuracy_f1_matthews():
  labels, preds = [1, 0, 1, 1], [1, 1, 1, 0]
  assert m.accuracy(labels, preds) == 0.5
  # tp=2 fp=1 fn=1: P = R = 2/3, F1 = 2/3.
  assert m.binary_f1(labels, preds) == pytest.approx(2 / 3)
  # tp=2 tn=0 fp=1 fn=1: (0*2 - 1*1) / sqrt(3*3*1*1) = -1/3.
  assert m.matthews_corrcoef(labels, preds) == pytest.approx(-1 / 3)
  # tp=2 tn=2 fp=0 fn=1: (4 - 0) / sqrt(2*3*2*3) = 2/3.
  assert m.matthews_corrcoef([1, 1, 0, 0, 1], [1, 0, 0, 0, 1]) == pytest.approx(2 / 3)
  assert m.matthews_corrcoef([1, 0, 1], [1, 1, 1]) == 0.0  # constant prediction
  assert m.binary_f1([0, 0], [0, 0]) == 0.0


def test_matthews_multiclass():
  # Confusion rows=true [[1,1,0],[0,1,0],[0,0,1]]: c=3, s=4, t=(2,1,1), p=(1,2,1):
  # (3*4 - (2+2+1)) / sqrt((16 - (1+4+1)) * (16 - (4+1+1))) = 7 / 10.
  assert m.matthews_corrcoef([0, 0, 1, 2], [0, 1, 1, 2]) == pytest.approx(0.7)


def test_pearson_spearman():
  # xc = (-1, 0, 1), yc = (-7/3, -1/3, 8/3): 5 / sqrt(2 * 114/9).
  assert m.pearson([1, 2, 3], [2, 4, 7]) == pytest.approx(5 / math.sqrt(2 * 114 / 9))
  # Tied ranks (1, 2.5, 2.5, 4) vs (1, 3, 2, 4): 4.5 / sqrt(4.5 * 5).
  assert m.spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / math.sqrt(22.5))
  assert m.spearman([1, 2, 3], [10, 20, 1000]) == pytest.approx(1.0)


@pytest.mark.parametrize("tags,want", [
    (["I-PER", "I-PER", "O", "I-LOC"], [("PER", 0, 1), ("LOC", 3, 3)]),  # IO
    (["B-PER", "I-PER", "B-PER", "O"], [("PER", 0, 1), ("PER", 2, 2)]),  # BIO: B splits
    (["O", "I-ORG", "I-ORG"], [("ORG", 1, 2)]),  # I- after O starts an entity (non-strict)
    (["B-PER", "I-LOC"], [("PER", 0, 0), ("LOC", 1, 1)]),  # a type change splits
    (["S-PER", "B-LOC", "E-LOC", "O"], [("PER", 0, 0), ("LOC", 1, 2)]),  # IOBES
    (["O", "O"], []),
])
def test_get_entities(tags, want):
  assert m.get_entities(tags) == want


def test_entity_scores_hand_worked():
  gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
  pred = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "O"]]
  # gold {PER(0-1), LOC(3), ORG(s1:0)}, pred {PER(0-1), ORG(3), ORG(s1:0)}: 2 of 3 correct.
  s = m.entity_scores(gold, pred)
  assert (s["precision"], s["recall"], s["f1"]) == pytest.approx((2 / 3, 2 / 3, 2 / 3))
  assert s["per_type"]["PER"]["f1"] == 1.0
  assert s["per_type"]["LOC"]["f1"] == 0.0
  # ORG: 2 predicted, 1 correct, 1 gold -> P 1/2, R 1, F1 2/3.
  assert s["per_type"]["ORG"]["precision"] == 0.5
  assert s["per_type"]["ORG"]["f1"] == pytest.approx(2 / 3)
  with pytest.raises(ValueError, match="gold tags"):
    m.entity_scores([["O"]], [["O", "O"]])


def test_squad_normalisation_em_f1():
  assert m.normalize_answer("The  Quick, brown fox!") == "quick brown fox"
  assert m.normalize_answer("an apple a day") == "apple day"
  assert m.exact_match("the Normans", "Normans.") == 1
  # gold [france], pred [in, france]: P 1/2, R 1 -> F1 2/3.
  assert m.token_f1("France", "in France") == pytest.approx(2 / 3)
  assert m.token_f1("", "") == 1.0 and m.token_f1("France", "") == 0.0


def test_squad_scores_hand_worked():
  gold = {"q1": ["France", "France"], "q2": [], "q3": ["10th and 11th centuries"],
          "q4": ["the"]}
  preds = {"q1": "France", "q2": "", "q3": "the 10th century", "q4": "Rollo"}
  s = m.squad_scores(gold, preds)
  # q1 EM 1 F1 1; q2 (no answer, predicted none) 1 / 1; q3: [10th, century] vs
  # [10th, and, 11th, centuries]: 1 shared, P 1/2, R 1/4, F1 1/3, EM 0; q4's gold normalises to
  # "" so it is a no-answer question, and "Rollo" scores 0 / 0.
  assert s["exact_match"] == pytest.approx(100 * 2 / 4)
  assert s["f1"] == pytest.approx(100 * (1 + 1 + 1 / 3 + 0) / 4)
  assert s["HasAns_total"] == 2 and s["NoAns_total"] == 2
  assert s["HasAns_f1"] == pytest.approx(100 * (1 + 1 / 3) / 2)
  assert s["NoAns_exact"] == 50.0
  missing = m.squad_scores({"a": ["x"], "b": ["y"]}, {"a": "x"})
  assert missing["exact_match"] == 50.0


def test_against_scipy_when_available():
  stats = pytest.importorskip("scipy.stats")
  rng = np.random.default_rng(0)
  x, y = rng.integers(0, 5, 50), rng.normal(size=50)
  assert m.spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic)
  assert m.pearson(x, y) == pytest.approx(stats.pearsonr(x, y).statistic)
