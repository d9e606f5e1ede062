"""Packed fine-tuning (bert_jax/tasks/packing.py, data.packing=True): every example once per
epoch in rows of one shape, each packed example scored exactly as alone (real MiniLM for BERT's
classification and NER heads, both ModernBERT poolings), the same loss as the examples unpacked,
bitwise resume, and one sentence for a task that cannot pack."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import REPO, TESTDATA
from flax import nnx
from test_buckets import _config, _minilm_model, minilm, resumed_run, topics  # noqa: F401

from bert_jax import attention, finetune, modern_modeling
from bert_jax.errors import ConfigError
from bert_jax.modern_configuration import ModernBertConfig
from bert_jax.tasks import classification, ner, packing
from bert_jax.tokenization import Tokenizer
from bert_jax.train import TrainingError


def _pieces(batch, key="input_ids"):
  """{segment's tokens} of a packed batch, one tuple per packed example."""
  out = []
  for row, seg in zip(batch[key], batch["packed_segment_ids"], strict=True):
    out += [tuple(row[seg == s]) for s in range(1, seg.max() + 1)]
  return out


def test_packed_epochs_hold_each_example_once_and_resume_exactly(topics, vocab_path):  # noqa: F811
  data = classification.ClassificationTask(_config(topics, max_seq_length=128),
                                           Tokenizer.from_vocab(vocab_path))
  arrays = data.train_arrays
  lengths = arrays["attention_mask"].sum(1)
  examples = {tuple(r[:k]): int(y) for r, k, y in zip(arrays["input_ids"], lengths,
                                                      arrays["labels"], strict=True)}
  it = packing.PackedEpochIterator(arrays, 16, seed=3)
  # A batch holds about 16 examples: 16 / (examples per row), rounded.
  per_row = len(arrays["labels"]) / len(packing.plan_rows(
      lengths, np.random.default_rng([3, 0]).permutation(len(lengths)), 128))
  assert it.rows_per_batch == round(16 / per_row) >= 2
  seen, shapes, filled = [], set(), 0
  for _ in range(it.steps_per_epoch):
    b = next(it)
    shapes.add(tuple(b["input_ids"].shape))
    attention.check_packed_batch(b["packed_segment_ids"], b["attention_mask"], b["position_ids"])
    got = _pieces(b)
    assert len(got) == b["example_weights"].sum()
    # Each example starts with its [CLS] at cls_positions and keeps its label.
    real = b["example_weights"] > 0
    assert (b["input_ids"][np.nonzero(real)[0], b["cls_positions"][real]] == data.tokenizer.cls_id
            ).all()
    assert [examples[p] for p in got] == list(b["labels"][real])
    seen += got
    filled += b["attention_mask"].sum()
  assert shapes == {(it.rows_per_batch, 128)}  # One shape: one compile.
  assert len(set(seen)) == len(seen) <= len(examples)  # No example twice in an epoch,
  assert len(seen) > 0.85 * len(examples)  # all but the last partial batch's,
  assert filled > 0.9 * it.steps_per_epoch * it.rows_per_batch * 128  # nearly no padding.
  # Resume mid-epoch two: the same batches again; two processes split each global batch.
  for _ in range(2):
    next(it)
  state = json.loads(json.dumps(it.get_state()))
  rest = [next(it) for _ in range(it.steps_per_epoch)]
  again = packing.PackedEpochIterator(arrays, 16, seed=3)
  again.set_state(state)
  for want in rest:
    got = next(again)
    assert all(np.array_equal(got[k], want[k]) for k in want)
  whole = packing.PackedEpochIterator(arrays, 16, 3, multiple=2)
  p0, p1 = (packing.PackedEpochIterator(arrays, 16, 3, i, 2) for i in (0, 1))
  for _ in range(3):
    a, b, w = next(p0), next(p1), next(whole)
    assert np.array_equal(np.concatenate([a["input_ids"], b["input_ids"]]), w["input_ids"])


def _packed_and_alone(model, arrays, token_outputs=False):
  """(packed outputs at each example, the same examples' outputs unpacked: one padded row each,
  the padding masked, as buckets and padded rows run them)."""
  it = packing.PackedEpochIterator(arrays, 8, seed=0)
  b = next(it)
  inputs = {k: b[k] for k in ("position_ids", "packed_segment_ids", "cls_positions") if k in b}
  out = np.asarray(model(b["input_ids"], b["attention_mask"], b["token_type_ids"], **inputs))
  lengths = arrays["attention_mask"].sum(1)
  index = {tuple(r[:k]): i for i, (r, k) in enumerate(zip(arrays["input_ids"], lengths,
                                                          strict=True))}
  packed, rows = [], []
  for r, seg in enumerate(b["packed_segment_ids"]):
    for s in range(1, seg.max() + 1):
      rows.append(index[tuple(b["input_ids"][r][seg == s])])
      packed.append(out[r][seg == s] if token_outputs else out[r, s - 1])
  width = int(lengths[rows].max())
  unpacked = np.asarray(model(*(arrays[k][rows, :width]
                                for k in ("input_ids", "attention_mask", "token_type_ids"))))
  alone = [u[:lengths[i]] if token_outputs else u for u, i in zip(unpacked, rows, strict=True)]
  return b, packed, alone


def test_each_packed_example_scores_as_alone_minilm(minilm, topics):  # noqa: F811
  """The real all-MiniLM-L6-v2 encoder, BERT's classification and token heads."""
  data = classification.ClassificationTask(_config(topics, max_seq_length=128), minilm.tokenizer)
  model = _minilm_model(minilm, data, "BertForSequenceClassification")
  b, packed, alone = _packed_and_alone(model, data.train_arrays)
  assert len(packed) >= 2 * b["input_ids"].shape[0]  # Several examples a row.
  np.testing.assert_allclose(np.stack(packed), np.stack(alone), atol=2e-5)
  # The loss: the mean over the packed examples, as over the same examples unpacked.
  loss, metrics = classification.classification_loss(model, b, None)
  real = b["example_weights"] > 0
  logp = jax.nn.log_softmax(np.stack(alone), -1)
  want = -np.mean(logp[np.arange(len(alone)), b["labels"][real]])
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  assert float(metrics["accuracy"][1]) == len(alone)

  blocks = (TESTDATA / "wikigold.conll.txt").read_text(encoding="utf-8").split("\n\n")[:60]
  path = topics.parent / "wg.conll"
  path.write_text("\n\n".join(blocks))
  data = ner.NerTask(_config(path, "ner", max_seq_length=128), minilm.tokenizer)
  model = _minilm_model(minilm, data, "BertForTokenClassification")
  b, packed, alone = _packed_and_alone(model, data.train_arrays, token_outputs=True)
  np.testing.assert_allclose(np.concatenate(packed), np.concatenate(alone), atol=2e-5)
  # NER labels travel with their tokens: the packed loss counts every labelled token once.
  loss, metrics = ner.token_classification_loss(model, b, None)
  assert float(metrics["token_accuracy"][1]) == (b["labels"] >= 0).sum() > 0


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_each_packed_example_scores_as_alone_modernbert(topics, vocab_path, pooling):  # noqa: F811
  """ModernBERT (local + global layers, RoPE positions restarted) and both poolings."""
  tok = Tokenizer.from_vocab(vocab_path)
  data = classification.ClassificationTask(_config(topics, max_seq_length=128), tok)
  config = ModernBertConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=48,
                            num_hidden_layers=3, num_attention_heads=2, local_attention=16,
                            global_attn_every_n_layers=2, max_position_embeddings=128,
                            classifier_pooling=pooling)
  model = modern_modeling.ModernBertForSequenceClassification(config, data.num_labels,
                                                              rngs=nnx.Rngs(params=0))
  _, packed, alone = _packed_and_alone(model, data.train_arrays)
  np.testing.assert_allclose(np.stack(packed), np.stack(alone), atol=2e-5)


def test_packed_run_trains_and_resumes_bitwise(topics, tmp_path):  # noqa: F811
  c = _config(topics, packing=True, max_seq_length=64)
  c.train.update(num_steps=6, batch_size=8)
  c.checkpoint.update(every_steps=3, max_to_keep=2)
  task, resolved, _ = finetune.make_task(c, str(tmp_path / "whole"))
  it = task.train_iter()
  assert "packed_segment_ids" in next(it) and resolved.train.num_steps == 6
  whole, again = resumed_run(c, tmp_path)
  assert np.isfinite(whole["train"]["loss"]) and again["eval"] == whole["eval"]
  # An epoch counts packed batches: num_epochs=1 is one pass over the packed rows.
  c.train.update(num_steps=0, num_epochs=1.0)
  _, resolved, _ = finetune.make_task(c, str(tmp_path / "epoch"))
  assert resolved.train.num_steps == task.train_iter().steps_per_epoch


def test_packing_is_refused_where_it_cannot_apply(topics, tmp_path):  # noqa: F811
  c = _config(topics, packing=True)
  c.train.update(batch_size_warmup_steps=4, batch_size_warmup_min=2)
  with pytest.raises(ConfigError, match="batch-size warm-up cannot"):
    packing.enabled(c)
  c = _config(topics, "squad", packing=True)
  with pytest.raises(ConfigError, match="is for classification and ner fine-tuning, not squad"):
    packing.enabled(c)
  # Too few examples for one packed batch: one sentence naming the fixes, before any training.
  c = _config(topics, packing=True)
  c.train.update(batch_size=4096)
  with pytest.raises(TrainingError, match="fewer than one batch of .*lower train.batch_size"):
    finetune.make_task(c, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


_EIGHT = """
import json, sys
sys.path.insert(0, sys.argv[2])
import jax
from test_tasks_classification import finetune_config
from bert_jax import finetune
c = finetune_config("task=classification,tiny")
c.data.update(train_file=sys.argv[1], text_column="sentence", label_column="topic", packing=True)
c.train.update(num_steps=2, batch_size=16, log_every=1)
task, _, _ = finetune.make_task(c, sys.argv[3])
rows = next(task.train_iter())["input_ids"].shape[0]
s = finetune.finetune_and_evaluate(c, sys.argv[3])
print(json.dumps({"devices": jax.device_count(), "rows": rows, "loss": s["train"]["loss"],
                  "accuracy": s["eval"]["accuracy"]}))
"""


@pytest.mark.slow
def test_packed_rows_shard_over_eight_devices(topics, tmp_path):  # noqa: F811
  """On 8 simulated devices a packed batch has a multiple of 8 rows and trains sharded."""
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
         "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
  p = subprocess.run([sys.executable, "-c", _EIGHT, str(topics), str(REPO / "tests"),
                      str(tmp_path / "w")], capture_output=True, text=True, env=env, timeout=600)
  assert p.returncode == 0, p.stderr[-3000:]
  out = json.loads(p.stdout.strip().splitlines()[-1])
  assert out["devices"] == 8 and out["rows"] % 8 == 0 and out["rows"] > 0
  assert np.isfinite(out["loss"]) and 0 <= out["accuracy"] <= 1
