"""Length-bucketed fine-tuning (bert_jax/tasks/buckets.py): which lengths, which rows each batch
holds, bitwise resume, the same evaluation as padded rows, and 8 devices."""
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import REPO, TESTDATA, corpus_sentences
from flax import nnx
from test_tasks_classification import finetune_config

from bert_jax import finetune
from bert_jax.errors import ConfigError
from bert_jax.tasks import buckets, classification, common, ner
from bert_jax.tokenization import Tokenizer


@pytest.fixture(scope="module")
def topics(tmp_path_factory, bible_path, mobydick_path):
  """Real sentences of mixed length (3 to ~60 words), labelled by their book."""
  rows = [(t, "bible") for t in corpus_sentences(bible_path, 60, min_words=3)]
  rows += [(t, "moby") for t in corpus_sentences(mobydick_path, 60, min_words=3)]
  path = tmp_path_factory.mktemp("data") / "topics.tsv"
  path.write_text("sentence\ttopic\n" + "\n".join(f"{t}\t{lab}" for t, lab in rows))
  return path


def _config(path, task="classification", **data):
  c = finetune_config(f"task={task},tiny")
  if task == "classification":
    c.data.update(text_column="sentence", label_column="topic")
  c.data.update(train_file=str(path), **data)
  return c


def test_bucket_lengths():
  assert buckets.parse("auto", 128) == (16, 24, 32, 48, 64, 96, 128)
  assert buckets.parse("auto", 100) == (16, 24, 32, 48, 64, 96, 100)
  assert buckets.parse("64, 32", 128) == (32, 64, 128)
  assert buckets.parse("off", 128) is None
  with pytest.raises(ConfigError, match="outside 1..128"):
    buckets.parse("64,256", 128)
  with pytest.raises(ConfigError, match="not auto, off or comma-separated"):
    buckets.parse("short", 128)
  mask = np.asarray([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
  assert list(buckets.row_lengths({"attention_mask": mask})) == [2, 4, 1]


def test_bucketed_epochs_cover_the_rows_and_resume_exactly(topics, vocab_path):
  tokenizer = Tokenizer.from_vocab(vocab_path)
  task = classification.ClassificationTask(_config(topics, length_buckets="auto"), tokenizer)
  lengths = task.train_arrays["attention_mask"].sum(1)
  bucket_list = task.length_buckets
  assert bucket_list == (16, 24, 32, 48, 64)
  batch, n = 8, len(lengths)
  it = common.EpochIterator(task.train_arrays, batch, seed=5, buckets=bucket_list)
  per_epoch = n // batch
  widths, rows_seen = [], []
  for _ in range(per_epoch):
    b = next(it)
    width = b["input_ids"].shape[1]
    real = b["attention_mask"].sum(1)
    # The smallest bucket that holds the longest row; no real token is cut.
    assert width == min(w for w in bucket_list if w >= real.max())
    widths.append(width)
    rows_seen += [tuple(r[:k]) for r, k in zip(b["input_ids"], real, strict=True)]
  assert len(set(widths)) >= 3  # Real sentences of mixed length fill several buckets.
  assert sum(widths) < 0.75 * per_epoch * 64  # Far less padding than rows of 64.
  every_row = {tuple(r[:k]) for r, k in zip(task.train_arrays["input_ids"], lengths, strict=True)}
  assert len(rows_seen) == per_epoch * batch and set(rows_seen) <= every_row
  if len(every_row) == n:  # No duplicate sentences: no row twice in an epoch.
    assert len(set(rows_seen)) == len(rows_seen)
  # Resume mid-epoch two: the same batches again; two processes split each global batch.
  for _ in range(3):
    next(it)
  state = json.loads(json.dumps(it.get_state()))
  rest = [next(it) for _ in range(per_epoch)]
  again = common.EpochIterator(task.train_arrays, batch, seed=5, buckets=bucket_list)
  again.set_state(state)
  for want in rest:
    got = next(again)
    assert all(np.array_equal(got[k], want[k]) for k in want)
  p0 = common.EpochIterator(task.train_arrays, batch, 5, 0, 2, buckets=bucket_list)
  p1 = common.EpochIterator(task.train_arrays, batch, 5, 1, 2, buckets=bucket_list)
  first = common.EpochIterator(task.train_arrays, batch, 5, buckets=bucket_list)
  for _ in range(per_epoch):
    a, b, whole = next(p0), next(p1), next(first)
    assert np.array_equal(np.concatenate([a["input_ids"], b["input_ids"]]), whole["input_ids"])


@pytest.fixture(scope="module")
def minilm(minilm_dir):
  from bert_jax import convert
  return convert.read_any(minilm_dir)


def _minilm_model(conv, data, architecture):
  from bert_jax import family, loading
  model = family.head_model(conv.config, architecture, nnx.Rngs(params=0), data.num_labels)
  loading.merge_params(model, finetune.init_params_from(conv, architecture, data, True))
  return model


def _evaluate_both_ways(data, model):
  bucket_list = data.length_buckets
  bucketed = data.evaluate(model, None, 16)
  data.length_buckets = None
  padded = data.evaluate(model, None, 16)
  data.length_buckets = bucket_list
  return bucketed, padded


def test_bucketed_evaluation_matches_padded_rows(minilm, topics, tmp_path):
  """The real MiniLM encoder: the same metrics and (to float rounding) the same logits."""
  data = classification.ClassificationTask(
      _config(topics, length_buckets="32,64", max_seq_length=128), minilm.tokenizer)
  assert data.length_buckets == (32, 64, 128)
  model = _minilm_model(minilm, data, "BertForSequenceClassification")
  (res_b, rec_b), (res_p, rec_p) = _evaluate_both_ways(data, model)
  assert res_b == res_p
  assert [r["label"] for r in rec_b] == [r["label"] for r in rec_p]
  probs = lambda recs: np.asarray([list(r["probabilities"].values()) for r in recs])
  np.testing.assert_allclose(probs(rec_b), probs(rec_p), atol=2e-5)

  blocks = (TESTDATA / "wikigold.conll.txt").read_text(encoding="utf-8").split("\n\n")[:80]
  path = tmp_path / "wg.conll"
  path.write_text("\n\n".join(blocks))
  data = ner.NerTask(_config(path, "ner", length_buckets="32,64", max_seq_length=128),
                     minilm.tokenizer)
  model = _minilm_model(minilm, data, "BertForTokenClassification")
  (res_b, rec_b), (res_p, rec_p) = _evaluate_both_ways(data, model)
  assert res_b == res_p
  assert [r["tags"] for r in rec_b] == [r["tags"] for r in rec_p]
  assert any(e for r in rec_b for e in r["entities"])  # Tags the metrics count.


def test_bucketed_run_resumes_bitwise(topics, tmp_path):
  c = _config(topics)  # The tiny config's buckets: rows of 32 or 64 tokens.
  c.train.update(num_steps=6, batch_size=4)
  c.checkpoint.update(every_steps=3, max_to_keep=2)
  task, _, data = finetune.make_task(c, str(tmp_path / "whole"))
  widths = {next(it)["input_ids"].shape[1] for it in [task.train_iter()] for _ in range(6)}
  assert data.length_buckets == (32, 64) and widths == {32, 64}  # Both before and after step 3.
  whole, again = resumed_run(c, tmp_path)
  assert again["eval"] == whole["eval"]


def resumed_run(c, tmp_path) -> tuple[dict, dict]:
  """(summary of a 6-step run, summary of the same run resumed from its step-3 checkpoint),
  after checking the resumed run ends with bit-identical parameters."""
  whole = finetune.finetune_and_evaluate(c, str(tmp_path / "whole"))
  resumed = tmp_path / "resumed"
  shutil.copytree(tmp_path / "whole" / "checkpoints", resumed / "checkpoints")
  shutil.rmtree(resumed / "checkpoints" / "6")  # Back to step 3.
  again = finetune.finetune_and_evaluate(c, str(resumed))
  assert again["start_step"] == 3 and again["step"] == 6
  for a, b in zip(jax.tree.leaves(whole["state"].params), jax.tree.leaves(again["state"].params),
                  strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  return whole, again


_SHARDED = """
import json, sys
sys.path.insert(0, sys.argv[2])
import jax
from test_tasks_classification import finetune_config
from bert_jax import finetune
c = finetune_config("task=classification,tiny")
c.data.update(train_file=sys.argv[1], text_column="sentence", label_column="topic")
c.train.update(num_steps=3, batch_size=8, log_every=1)
s = finetune.finetune_and_evaluate(c, sys.argv[3])
losses = [json.loads(l) for l in open(sys.argv[3] + "/metrics.jsonl")]
print(json.dumps({"devices": jax.device_count(), "eval": s["eval"],
                  "loss": [r["train/loss"] for r in losses if "train/loss" in r]}))
"""


@pytest.mark.slow
def test_eight_devices_train_the_same_bucketed_run(topics, tmp_path):
  """The same 3 bucketed steps on 8 simulated devices (rows sharded over data) and on one."""
  def run(devices):
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
           "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    p = subprocess.run([sys.executable, "-c", _SHARDED, str(topics), str(REPO / "tests"),
                        str(tmp_path / f"w{devices}")], capture_output=True, text=True, env=env,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])

  one, eight = run(1), run(8)
  assert one["devices"] == 1 and eight["devices"] == 8
  assert len(eight["loss"]) == 3
  np.testing.assert_allclose(eight["loss"], one["loss"], rtol=1e-4)
  assert eight["eval"]["accuracy"] == one["eval"]["accuracy"]
