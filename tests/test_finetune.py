"""End to end: every task runs 2 steps of the real trainer on tiny models and real files, keeps
WORKDIR/best and its dev predictions, predicts; bad checkpoints and flags stop with one line."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, TESTDATA, corpus_sentences
from test_tasks_classification import finetune_config

from bert_jax import finetune, metrics, predict, train

ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


@pytest.fixture(scope="module")
def topics(tmp_path_factory, bible_path, mobydick_path):
  """A real two-topic TSV (Bible verse vs Moby Dick line), with a header."""
  rows = [(t, "bible") for t in corpus_sentences(bible_path, 24, min_words=5)]
  rows += [(t, "moby") for t in corpus_sentences(mobydick_path, 24, min_words=5)]
  path = tmp_path_factory.mktemp("data") / "topics.tsv"
  path.write_text("sentence\ttopic\n" + "\n".join(f"{t}\t{lab}" for t, lab in rows))
  return path


def _classification_config(path):
  c = finetune_config("task=classification,tiny")
  c.data.update(train_file=str(path), text_column="sentence", label_column="topic")
  return c


@pytest.fixture(scope="module")
def classifier_workdir(tmp_path_factory, topics):
  workdir = tmp_path_factory.mktemp("cls")
  summary = finetune.finetune_and_evaluate(_classification_config(topics), str(workdir))
  return workdir, summary


def test_classification_two_steps(classifier_workdir):
  workdir, summary = classifier_workdir
  assert summary["status"] == "completed" and summary["step"] == 2
  assert set(summary["eval"]) >= {"accuracy", "f1", "matthews"}
  info = json.loads((workdir / "best" / "model_info.json").read_text())
  assert info["task"] == "classification" and info["label_names"] == ["bible", "moby"]
  assert info["metric"] == "accuracy" and info["metric_value"] == summary["eval"]["accuracy"]
  preds = [json.loads(l) for l in (workdir / "dev_predictions.jsonl").read_text().splitlines()]
  assert len(preds) == round(48 * 0.2)
  acc = np.mean([p["label"] == p["gold"] for p in preds])
  assert acc == pytest.approx(summary["eval"]["accuracy"])
  assert json.loads((workdir / "summary.json").read_text())["step"] == 2


def test_predict_cli(classifier_workdir, topics, tmp_path):
  workdir, _ = classifier_workdir
  out = tmp_path / "p.jsonl"
  cmd = [sys.executable, "-m", "bert_jax.cli.predict", f"--checkpoint={workdir / 'best'}",
         f"--input={topics}", f"--output={out}"]
  r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=ENV, timeout=300)
  assert r.returncode == 0, r.stderr
  rows = [json.loads(l) for l in out.read_text().splitlines()]
  assert len(rows) == 48
  assert all(r["label"] in ("bible", "moby") for r in rows)
  assert sum(rows[0]["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
  again = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=ENV, timeout=300)
  assert again.returncode == 2 and "already exists" in again.stderr
  assert "Traceback" not in again.stderr


def test_head_that_does_not_fit(classifier_workdir, topics, tmp_path):
  workdir, _ = classifier_workdir
  three = tmp_path / "three.tsv"
  lines = topics.read_text().splitlines()
  three.write_text("\n".join(lines + [f"{lines[1].split(chr(9))[0]}\tother"] * 5))
  c = _classification_config(three)
  c.init_from = str(workdir / "best")
  with pytest.raises(train.TrainingError, match="2 labels|new_head"):
    finetune.make_task(c, str(tmp_path / "w"))
  c.new_head = True
  task, _, _ = finetune.make_task(c, str(tmp_path / "w"))
  assert set(task.init_params()) == {"bert"}  # The new 3-way head stays freshly initialised.
  # Same labels: the whole model (head included) continues.
  same = _classification_config(topics)
  same.init_from = str(workdir / "best")
  task, _, _ = finetune.make_task(same, str(tmp_path / "w2"))
  assert "classifier" in task.init_params()
  # Prediction refuses a model without a head, and a head of another task.
  with pytest.raises(predict.PredictError, match="NER|ner"):
    predict.predict_file(workdir / "best", topics, task="ner")


def test_regression_pairs_two_steps(tmp_path, bible_path):
  lines = corpus_sentences(bible_path, 40, min_words=5)
  path = tmp_path / "sts.jsonl"
  path.write_text("\n".join(json.dumps({"s1": a, "s2": b, "score": round(i % 6 * 1.0, 1)})
                            for i, (a, b) in enumerate(zip(lines, lines[1:], strict=False))))
  c = finetune_config("task=classification,tiny")
  c.data.update(train_file=str(path), text_column="s1", text_pair_column="s2",
                label_column="score", regression=True)
  summary = finetune.finetune_and_evaluate(c, str(tmp_path / "w"))
  assert summary["step"] == 2 and summary["best"]["metric"] == "pearson"
  assert set(summary["eval"]) >= {"pearson", "spearman", "mse"}


def test_ner_two_steps_and_predict(tmp_path):
  blocks = (TESTDATA / "wikigold.conll.txt").read_text(encoding="utf-8").split("\n\n")[:60]
  path = tmp_path / "wg.conll"
  path.write_text("\n\n".join(blocks))
  c = finetune_config("task=ner,tiny")
  c.data.train_file = str(path)
  summary = finetune.finetune_and_evaluate(c, str(tmp_path / "w"))
  assert summary["step"] == 2 and {"f1", "precision", "recall"} <= set(summary["eval"])
  text = tmp_path / "sents.txt"
  text.write_text("John Smith flew to Paris .\nThe Mad Capsule Markets played in Japan .\n")
  rows = predict.predict_file(tmp_path / "w" / "best", text)
  assert [len(r["tags"]) for r in rows] == [6, 8]
  assert all(set(e) == {"type", "start", "end", "text"} for r in rows for e in r["entities"])


def test_squad_two_steps_scores_match_predictions(tmp_path):
  c = finetune_config("task=squad,tiny")
  c.data.update(train_file=str(TESTDATA / "squad_sample.json"),
                dev_file=str(TESTDATA / "squad_sample.json"))
  workdir = tmp_path / "w"
  summary = finetune.finetune_and_evaluate(c, str(workdir))
  assert summary["step"] == 2
  ev = summary["eval"]
  assert ev["total"] == 14 and ev["HasAns_total"] == 8 and ev["NoAns_total"] == 6
  rows = [json.loads(l) for l in (workdir / "dev_predictions.jsonl").read_text().splitlines()]
  again = metrics.squad_scores({r["id"]: r["gold"] for r in rows},
                               {r["id"]: r["answer"] for r in rows})
  assert again["exact_match"] == pytest.approx(ev["exact_match"])
  assert again["f1"] == pytest.approx(ev["f1"])
  answers = predict.predict_file(workdir / "best", TESTDATA / "squad_sample.json")
  assert [a["answer"] for a in answers] == [r["answer"] for r in rows]


def test_real_minilm_encoder_is_loaded(minilm_dir, tmp_path):
  """The one test with the real checkpoint: its HF folder as init_from, 2 NER steps."""
  from bert_jax import convert
  blocks = (TESTDATA / "wikigold.conll.txt").read_text(encoding="utf-8").split("\n\n")[:40]
  path = tmp_path / "wg.conll"
  path.write_text("\n\n".join(blocks))
  c = finetune_config("task=ner,tiny")
  c.data.update(train_file=str(path), max_seq_length=32)
  c.init_from = str(minilm_dir)
  task, _, _ = finetune.make_task(c, str(tmp_path / "w"))
  want = convert.read_any(minilm_dir).params["embeddings.word_embeddings.embedding"]
  got = task.init_params()["bert"]["embeddings"]["word_embeddings"]["embedding"]
  np.testing.assert_array_equal(got, want)
  summary = finetune.finetune_and_evaluate(c, str(tmp_path / "w"))
  assert summary["step"] == 2
  info = json.loads((tmp_path / "w" / "best" / "bert_config.json").read_text())
  assert info["hidden_size"] == 384 and info["num_hidden_layers"] == 6


def _cli(*args, tmp_path):
  cmd = [sys.executable, "-m", "bert_jax.cli.finetune", f"--workdir={tmp_path / 'w'}", *args]
  return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=ENV, timeout=300)


def test_cli_errors_are_one_line(tmp_path):
  r = _cli("--config=configs/finetune.py:task=ner,tiny",
           f"--config.data.train_file={tmp_path / 'missing.conll'}", tmp_path=tmp_path)
  assert r.returncode == 2 and "missing.conll does not exist" in r.stderr
  assert "Traceback" not in r.stderr
  r = _cli("--config=configs/finetune.py:task=ner,tiny", "--config.data.trian_file=x",
           tmp_path=tmp_path)
  assert r.returncode == 2 and "trian_file" in r.stderr and "Traceback" not in r.stderr
  r = _cli("--config=configs/finetune.py:task=sentiment", tmp_path=tmp_path)
  assert r.returncode == 2 and "sentiment" in r.stderr
  assert not (tmp_path / "w").exists()  # Nothing was written.


def test_from_scratch_needs_init_from(tmp_path, topics):
  c = _classification_config(topics)
  c.from_scratch = True
  with pytest.raises(train.TrainingError, match="init_from"):
    finetune.make_task(c, str(tmp_path))


def test_polarity_csv_reads(tmp_path, vocab_path):
  """The real (non-shippable) sentiment file: 4,000 rows, labels -1 / 1, multi-line quoted."""
  from conftest import shared_or_skip

  from bert_jax.tasks import classification
  from bert_jax.tokenization import Tokenizer
  path = shared_or_skip("classification/polarity-en.csv")
  c = finetune_config("task=classification,tiny")
  c.data.update(train_file=str(path), text_column="1", label_column="0")
  task = classification.ClassificationTask(c, Tokenizer.from_vocab(vocab_path))
  assert task.label_names == ["-1", "1"]
  assert len(task.train_arrays["labels"]) == 3200
  assert len(task.dev_sets[""]["examples"]["text"]) == 800
  with open(path, encoding="utf-8-sig", newline="") as f:
    assert sum(1 for _ in csv.reader(f)) == 4000


def test_unknown_metric_is_refused_before_training(tmp_path):
  c = finetune_config("task=squad,tiny")
  c.data.train_file = str(TESTDATA / "squad_sample.json")
  c.train.metric = "accuracy"
  with pytest.raises(train.TrainingError, match="not a squad metric"):
    finetune.make_task(c, str(tmp_path))
