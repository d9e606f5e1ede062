"""Classification data: CSV / TSV / JSONL readers, the GLUE layouts, bad input, the iterator."""
import csv
import importlib
import importlib.util
import json

import numpy as np
import pytest
from conftest import REPO, corpus_sentences, shared_or_skip

from bert_jax.errors import DataError
from bert_jax.tasks import classification, common
from bert_jax.tokenization import Tokenizer


def finetune_config(arg):
  spec = importlib.util.spec_from_file_location("finetune_cfg", REPO / "configs" / "finetune.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


@pytest.fixture(scope="module")
def tokenizer(vocab_path):
  return Tokenizer.from_vocab(vocab_path)


@pytest.fixture(scope="module")
def sentences(bible_path, mobydick_path):
  """Real lines labelled by their source: a two-topic classification set."""
  bible = corpus_sentences(bible_path, 30, min_words=5)
  moby = corpus_sentences(mobydick_path, 30, min_words=5)
  return [(t, "bible") for t in bible] + [(t, "moby") for t in moby]


def _config(**data):
  c = finetune_config("task=classification,tiny")
  c.data.update(data)
  return c


def test_csv_without_header_by_index(tmp_path, sentences, tokenizer):
  path = tmp_path / "topics.csv"
  with open(path, "w", newline="", encoding="utf-8") as f:
    csv.writer(f).writerows([(lab, t) for t, lab in sentences])
  task = classification.ClassificationTask(
      _config(train_file=str(path), text_column="1", label_column="0"), tokenizer)
  assert task.label_names == ["bible", "moby"]
  n_dev = round(len(sentences) * 0.2)
  assert len(task.train_arrays["labels"]) == len(sentences) - n_dev
  assert task.train_arrays["input_ids"].shape[1] == 64
  assert len(task.dev_sets[""]["examples"]["text"]) == n_dev
  # The seeded split is reproducible.
  again = classification.ClassificationTask(
      _config(train_file=str(path), text_column="1", label_column="0"), tokenizer)
  assert np.array_equal(again.train_arrays["input_ids"], task.train_arrays["input_ids"])


def test_jsonl_pairs_and_tsv_header(tmp_path, sentences, tokenizer):
  jl = tmp_path / "pairs.jsonl"
  jl.write_text("\n".join(json.dumps({"a": t, "b": sentences[-1 - i][0], "y": lab})
                          for i, (t, lab) in enumerate(sentences)))
  task = classification.ClassificationTask(
      _config(train_file=str(jl), text_column="a", text_pair_column="b", label_column="y"),
      tokenizer)
  tt = task.train_arrays["token_type_ids"]
  assert tt.max() == 1 and tt[:, 0].max() == 0  # Second segments are present.
  tsv = tmp_path / "t.tsv"
  tsv.write_text("\ufeffsentence\tlabel\n" + "\n".join(f"{t}\t{lab}" for t, lab in sentences))
  task = classification.ClassificationTask(
      _config(train_file=str(tsv), text_column="sentence"), tokenizer)
  assert task.num_labels == 2


GLUE_LAYOUTS = {
    # task: (header, row builder from (a, b, label index))
    "cola": (None, lambda a, b, y: ["gj04", str(y), "*" if not y else "", a]),
    "sst2": (["sentence", "label"], lambda a, b, y: [a, str(y)]),
    "mrpc": (["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
             lambda a, b, y: [str(y), "1", "2", a, b]),
    "stsb": (["index", "genre", "filename", "year", "old_index", "source1", "source2",
              "sentence1", "sentence2", "score"],
             lambda a, b, y: ["0", "main", "f", "2012", "1", "s", "s", a, b, f"{y * 2.5:.3f}"]),
    "qqp": (["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
            lambda a, b, y: ["1", "2", "3", a, b, str(y)]),
    "mnli": (["index", "promptID", "pairID", "genre", "sentence1_binary_parse",
              "sentence2_binary_parse", "sentence1_parse", "sentence2_parse", "sentence1",
              "sentence2", "label1", "gold_label"],
             lambda a, b, y: ["0", "1", "1e", "fiction", "(", "(", "(", "(", a, b,
                              ["contradiction", "entailment", "neutral"][y],
                              ["contradiction", "entailment", "neutral"][y]]),
    "qnli": (["index", "question", "sentence", "label"],
             lambda a, b, y: ["0", a, b, ["entailment", "not_entailment"][y % 2]]),
    "rte": (["index", "sentence1", "sentence2", "label"],
            lambda a, b, y: ["0", a, b, ["entailment", "not_entailment"][y % 2]]),
    "wnli": (["index", "sentence1", "sentence2", "label"],
             lambda a, b, y: ["0", a, b, str(y % 2)]),
}


@pytest.mark.parametrize("name", sorted(GLUE_LAYOUTS))
def test_glue_layouts(tmp_path, name, sentences, tokenizer):
  header, row = GLUE_LAYOUTS[name]
  n_labels = 3 if name == "mnli" else 2
  lines = [row(t, sentences[-1 - i][0], i % n_labels) for i, (t, _) in enumerate(sentences)]
  text = "\n".join("\t".join(r) for r in ([header] if header else []) + lines)
  (tmp_path / "train.tsv").write_text(text)
  dev = "dev_matched.tsv" if name == "mnli" else "dev.tsv"
  (tmp_path / dev).write_text(text)
  if name == "mnli":
    (tmp_path / "dev_mismatched.tsv").write_text(text)
  c = finetune_config(f"task={name},tiny")
  c.data.dir = str(tmp_path)
  task = classification.ClassificationTask(c, tokenizer)
  dev_ex = task.dev_sets[""]["examples"]
  assert dev_ex["text"][0] == sentences[0][0]
  if name not in ("cola", "sst2"):
    assert dev_ex["pair"][0] == sentences[-1][0]
  if name == "stsb":
    assert task.regression and task.num_labels == 1
    assert task.dev_sets[""]["arrays"]["labels"][1] == pytest.approx(2.5)
  else:
    assert task.num_labels == n_labels
    assert list(task.dev_sets[""]["arrays"]["labels"][:3]) == [0, 1, 2 % n_labels]
  if name == "mnli":
    assert "mismatched_" in task.dev_sets


def test_real_mrpc_sample(tokenizer):
  folder = shared_or_skip("glue_mrpc_sample/train.tsv").parent
  c = finetune_config("task=mrpc,tiny")
  c.data.dir = str(folder)
  task = classification.ClassificationTask(c, tokenizer)
  assert task.label_names == ["0", "1"] and task.metric == "f1"
  assert task.dev_sets[""]["examples"]["pair"][0]


def test_missing_column_is_an_error(tmp_path, sentences, tokenizer):
  path = tmp_path / "t.tsv"
  path.write_text("sentence\tlabel\n" + "\n".join(f"{t}\t{lab}" for t, lab in sentences))
  with pytest.raises(DataError, match="no column 'review'.*columns: \\['sentence', 'label'\\]"):
    classification.ClassificationTask(
        _config(train_file=str(path), text_column="review"), tokenizer)


def test_empty_file_is_an_error(tmp_path, tokenizer):
  path = tmp_path / "empty.csv"
  path.write_text("\n\n")
  with pytest.raises(DataError, match="is empty"):
    classification.ClassificationTask(
        _config(train_file=str(path), text_column="1", label_column="0"), tokenizer)


def test_unseen_dev_label_is_a_counted_skip(tmp_path, sentences, tokenizer, capsys):
  train, dev = tmp_path / "train.csv", tmp_path / "dev.csv"
  rows = [(lab, t) for t, lab in sentences]
  with open(train, "w", newline="") as f:
    csv.writer(f).writerows(rows)
  with open(dev, "w", newline="") as f:
    csv.writer(f).writerows(rows[:5] + [("psalms", rows[5][1]), ("psalms", rows[6][1])])
  task = classification.ClassificationTask(
      _config(train_file=str(train), dev_file=str(dev), text_column="1", label_column="0"),
      tokenizer)
  assert task.stats["dev_skipped_unseen_label"] == 2
  assert len(task.dev_sets[""]["examples"]["text"]) == 5
  assert "psalms" in capsys.readouterr().err


def test_short_rows_are_counted(tmp_path, sentences, tokenizer):
  path = tmp_path / "t.tsv"
  body = [f"{t}\t{lab}" for t, lab in sentences] + ["a row without its label"]
  path.write_text("sentence\tlabel\n" + "\n".join(body))
  task = classification.ClassificationTask(
      _config(train_file=str(path), text_column="sentence"), tokenizer)
  assert task.stats["train_skipped_rows"] == 1


def test_epoch_iterator_resumes_exactly():
  arrays = {"x": np.arange(10)}
  it = common.EpochIterator(arrays, 4, seed=3)
  seen = [next(it)["x"] for _ in range(3)]  # Crosses an epoch boundary (2 batches/epoch).
  state = json.loads(json.dumps(it.get_state()))
  rest = [next(it)["x"] for _ in range(3)]
  it2 = common.EpochIterator(arrays, 4, seed=3)
  it2.set_state(state)
  assert all(np.array_equal(a, next(it2)["x"]) for a in rest)
  assert len(set(np.concatenate(seen[:2]))) == 8  # No repeats within an epoch.
  # Two processes split each global batch.
  p0 = common.EpochIterator(arrays, 4, 3, 0, 2)
  p1 = common.EpochIterator(arrays, 4, 3, 1, 2)
  assert np.array_equal(np.concatenate([next(p0)["x"], next(p1)["x"]]), seen[0])


def test_one_task_registry():
  """finetune, predict and the finetune config all read bert_jax.tasks.TASKS."""
  from bert_jax import tasks
  assert set(classification.GLUE) == set(tasks.GLUE_TASKS)
  configs = importlib.import_module("bert_jax.configs.finetune")
  assert configs.TASKS == tuple(tasks.TASKS) + tasks.GLUE_TASKS
  for name, spec in tasks.TASKS.items():
    assert tasks.task_class(name).__name__ == spec.class_name
    owner = tasks.ARCHITECTURE_TASKS[spec.architecture]
    # A builder task (distill) saves checkpoints of the task that owns its head.
    assert owner == name if not spec.builder else not tasks.TASKS[owner].builder
    assert callable(tasks.task_module(name).predict)
  with pytest.raises(ValueError, match="not one of"):
    tasks.task_class("sentiment")


def test_prediction_records_without_a_task(sentences):
  """What predict writes for a classifier: labels and probabilities from the logits alone."""
  examples = {"text": [t for t, _ in sentences[:3]]}
  logits = np.asarray([[2.0, 0.0], [0.0, 2.0], [1.0, 1.0]], np.float32)
  rows = classification.records(examples, logits, ["bible", "moby"], regression=False)
  assert [r["label"] for r in rows] == ["bible", "moby", "bible"]
  assert rows[2]["probabilities"] == {"bible": 0.5, "moby": 0.5}
  assert all(sum(r["probabilities"].values()) == pytest.approx(1.0) for r in rows)
  scores = classification.records(examples, logits[:, :1], [], regression=True)
  assert [r["score"] for r in scores] == [2.0, 0.0, 1.0]


def test_predict_texts_buckets_keep_order_and_equal_full_rows(sentences, tokenizer):
  import dataclasses

  import bert_jax
  config = dataclasses.replace(bert_jax.preset("tiny"), dtype="bfloat16")
  model = bert_jax.create_model(bert_jax.BertForSequenceClassification, config, num_labels=2)
  texts = [t for t, _ in sentences[::3]]
  lengths = classification.encode(tokenizer, texts, None, 128)["attention_mask"].sum(1)
  assert lengths.max() > 3 * lengths.min()  # Mixed lengths: several buckets.
  full = classification.predict_texts(model, tokenizer, texts, batch_size=8,
                                      length_buckets="off")
  got = classification.predict_texts(model, tokenizer, texts, batch_size=8)
  np.testing.assert_allclose(got, full, atol=2e-5)
  assert full.shape == (len(texts), 2)
  assert np.abs(full[:, 0] - full[:, 1]).std() > 0  # Rows differ: the order is checked.
  perm = np.random.default_rng(0).permutation(len(texts))
  shuffled = classification.predict_texts(model, tokenizer, [texts[i] for i in perm],
                                          batch_size=8)
  np.testing.assert_allclose(shuffled, got[perm], atol=2e-5)
