"""pretraining: two steps of `train_and_evaluate(config, workdir)` in this process (as flax's
lm1b test does), on the tiny config and a small real dataset; the evaluation's unigram baseline,
counted on device in the eval step, equals a count of the same batches on the host."""
from __future__ import annotations

import json

import numpy as np
import pytest

from bert_jax import pretraining
from bert_jax.configs import pretrain as pretrain_configs
from bert_jax.data import shards
from bert_jax.errors import ConfigError, TrainingError


def _tiny(pretrain_dataset, vocab_path):
  config = pretrain_configs.get_config("tiny")
  config.data.update(dir=str(pretrain_dataset), vocab=str(vocab_path))
  return config


def test_train_and_evaluate_two_steps(tmp_path, pretrain_dataset, vocab_path):
  config = _tiny(pretrain_dataset, vocab_path)
  summary = pretraining.train_and_evaluate(config, str(tmp_path))
  assert summary["status"] == "completed" and summary["step"] == 2
  assert np.isfinite(summary["train"]["loss"])
  for name in ("metrics.jsonl", "summary.json", "model/bert_config.json", "model/vocab.txt",
               "checkpoints/2"):
    assert (tmp_path / name).exists(), name
  assert json.loads((tmp_path / "summary.json").read_text())["step"] == 2

  ev = summary["eval"]
  assert {"mlm_loss", "mlm_accuracy", "nsp_loss", "nsp_accuracy"} <= set(ev)
  assert all(isinstance(v, float | int) for v in ev.values())  # no histogram among the figures
  task = pretraining.make_task(config)
  ids = np.concatenate([b["masked_lm_ids"][b["masked_lm_weights"] > 0]
                        for b in task.eval_batches()])
  hist = np.bincount(ids)
  assert ev["unigram_baseline_mlm_accuracy"] == hist.max() / hist.sum()
  assert ev["unigram_baseline_token_id"] == int(np.argmax(hist))


def test_sharded_iterator_concatenates_and_resumes_per_shard(pretrain_dataset, vocab_path):
  config = _tiny(pretrain_dataset, vocab_path)
  config.data.num_shards = 2
  assert shards.local_shards(2) == [0, 1] and shards.local_shards(0) == [0]
  it = pretraining.make_task(config).train_iter()
  first = next(it)
  assert first["input_ids"].shape == (config.train.batch_size, config.data.seq_len)
  state = it.get_state()
  assert sorted(state["shards"]) == ["0", "1"]
  expected = next(it)
  again = pretraining.make_task(config).train_iter()
  again.set_state(state)
  np.testing.assert_array_equal(next(again)["input_ids"], expected["input_ids"])
  with pytest.raises(TrainingError, match="no data position for shards"):
    again.set_state({"shards": {"0": state["shards"]["0"]}})


@pytest.mark.parametrize("prob", [1.5, -0.1])
def test_bad_eval_masking_rate_is_refused_before_training(tmp_path, pretrain_dataset, vocab_path,
                                                          prob):
  config = _tiny(pretrain_dataset, vocab_path)
  config.data.eval_masked_lm_prob = prob
  with pytest.raises(ConfigError, match=r"data\.eval_masked_lm_prob=.* must be in \[0, 1\)"):
    pretraining.train_and_evaluate(config, str(tmp_path))
  assert not any(tmp_path.iterdir())  # Refused before the workdir got anything.
