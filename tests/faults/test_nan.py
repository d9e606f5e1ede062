"""NaN injected into a batch (masked_lm_weights, the one float input) at a chosen step, through
a Task-level wrapper in this process: the run stops naming that step with the last good
checkpoint kept, or (train.skip_nonfinite=True) skips that update and finishes."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from bert_jax import pretraining, train
from faults.fault_helpers import committed_steps, restore, tiny_config

BAD_STEP = 8  # 1-based: the 8th update sees the poisoned batch.


class _Poisoned:
  """Wraps the train iterator; batch number BAD_STEP gets NaN masked-LM weights."""

  def __init__(self, it, start):
    self.it, self.n = it, start

  def __iter__(self):
    return self

  def __next__(self):
    batch = dict(next(self.it))
    self.n += 1
    if self.n == BAD_STEP:
      batch["masked_lm_weights"] = np.full_like(batch["masked_lm_weights"], np.nan)
    return batch

  def get_state(self):
    return self.it.get_state()

  def set_state(self, state):
    self.it.set_state(state)


def _task(config):
  task = pretraining.make_task(config)
  return dataclasses.replace(task, train_iter=lambda: _Poisoned(task.train_iter(), 0),
                             eval_batches=None)


@pytest.mark.faults
def test_nan_batch_stops_naming_the_step(tmp_path, pretrain_dataset, vocab_path):
  c = tiny_config(pretrain_dataset, vocab_path, num_steps=12)
  c.train.eval_every = 0
  with pytest.raises(train.TrainingError) as e:
    train.run(_task(c), c, str(tmp_path))
  msg = str(e.value)
  assert f"NaN/Inf at step {BAD_STEP};" in msg and "last good checkpoint is kept (step 5)" in msg
  assert committed_steps(tmp_path) == [5]
  state, _, _ = restore(tmp_path, 5, pretrain_dataset, vocab_path)
  assert all(np.isfinite(np.asarray(x)).all() for x in __import__("jax").tree.leaves(state))


@pytest.mark.faults
def test_nan_batch_is_skipped_when_configured(tmp_path, pretrain_dataset, vocab_path):
  c = tiny_config(pretrain_dataset, vocab_path, num_steps=12)
  c.train.update(eval_every=0, skip_nonfinite=True)
  summary = train.run(_task(c), c, str(tmp_path))
  assert summary["status"] == "completed" and summary["step"] == 12
  rows = {r["step"]: r for r in map(json.loads, open(tmp_path / "metrics.jsonl"))
          if "train/loss" in r}
  assert rows[BAD_STEP]["train/skipped_steps"] == 1.0
  assert all(rows[s]["train/skipped_steps"] == 0.0 for s in rows if s != BAD_STEP)
  assert all(np.isfinite(np.asarray(x)).all()
             for x in __import__("jax").tree.leaves(summary["state"].params))
