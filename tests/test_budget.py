"""Budget pretraining in the one train loop, on real data with the tiny config, in this process:
the batch-size warm-up feeds the sizes asked for and resumes bit for bit, a wall-clock run fixes
its step count from its measured step time, stores it with its checkpoints and resumes the same
schedule bit for bit, held-out masking does not depend on the training rate, and the `budget`
config trains."""
from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import pytest

from bert_jax import optim, pretraining
from bert_jax.configs import pretrain as pretrain_configs


def _config(data_dir, vocab, variant="tiny", **sections):
  c = pretrain_configs.get_config(variant)
  c.data.update(dir=str(data_dir), vocab=str(vocab))
  for section, values in sections.items():
    c[section].update(values)
  return c


def _rows(wd) -> list[dict]:
  return [json.loads(line) for line in open(wd / "metrics.jsonl", encoding="utf-8")]


def _train_losses(wd) -> dict[int, float]:
  """step -> train loss; a step logged twice (a resumed run replaying it) must agree."""
  out: dict[int, float] = {}
  for row in _rows(wd):
    if "train/loss" in row:
      assert out.get(row["step"], row["train/loss"]) == row["train/loss"], row["step"]
      out[row["step"]] = row["train/loss"]
  return out


def _resume_copy(src, dst, step: int):
  """src's workdir as it was at checkpoint `step`: later checkpoints and the export removed
  (metrics.jsonl keeps the later rows, which the resumed run must reproduce exactly)."""
  shutil.copytree(src, dst)
  for p in (dst / "checkpoints").iterdir():
    if p.name.isdigit() and int(p.name) > step:
      shutil.rmtree(p)
  shutil.rmtree(dst / "model")
  return dst


def _equal_params(a, b) -> bool:
  return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in
             zip(jax.tree.leaves(jax.device_get(a.params)),
                 jax.tree.leaves(jax.device_get(b.params)), strict=True))


def _meta(wd, step: int) -> dict:
  return json.loads((wd / "checkpoints" / str(step) / "meta" / "metadata").read_text())


@pytest.mark.slow
def test_batch_size_warmup_sizes_and_bitwise_resume(tmp_path, pretrain_dataset, vocab_path):
  # Global batches 2 (steps 1-4), 4 (5-8), then 8; a checkpoint every 3 steps, all kept.
  c = _config(pretrain_dataset, vocab_path,
              train=dict(num_steps=14, batch_size_warmup_steps=8, batch_size_warmup_min=2),
              checkpoint=dict(every_steps=3, max_to_keep=100))
  ref = pretraining.train_and_evaluate(c, str(tmp_path / "ref"))
  sizes = {r["step"]: r["train/batch_size"] for r in _rows(tmp_path / "ref")
           if "train/batch_size" in r}
  assert sizes == {s: 2 if s <= 4 else 4 if s <= 8 else 8 for s in range(1, 15)}
  assert ref["train_examples"] == 4 * 2 + 4 * 4 + 6 * 8
  # Resume at step 6, in the middle of the size-4 stage.
  wd = _resume_copy(tmp_path / "ref", tmp_path / "resumed", 6)
  out = pretraining.train_and_evaluate(c, str(wd))
  assert out["start_step"] == 6 and out["step"] == 14
  assert _train_losses(wd) == _train_losses(tmp_path / "ref")
  assert _equal_params(out["state"], ref["state"])


@pytest.mark.slow
def test_wall_clock_schedule_fits_the_budget_and_resumes_bitwise(tmp_path, pretrain_dataset,
                                                                 vocab_path):
  c = _config(pretrain_dataset, vocab_path,
              train=dict(num_steps=0, measure_steps=3, log_every=10),
              optimizer=dict(schedule="wsd", warmup_steps=8, decay_fraction=0.5,
                             decay_shape="1-sqrt"),
              checkpoint=dict(every_steps=10, max_to_keep=3))
  # The budget includes the compile, which a loaded 2-core machine can stretch to most of it:
  # a budget that leaves fewer than 10 steps is tried again, longer.
  for budget in (30.0, 90.0, 270.0):
    ref_dir = tmp_path / f"ref{budget:g}"
    c.train.max_train_seconds = budget
    first = pretraining.train_and_evaluate(c, str(ref_dir))
    n = first["num_steps"] or 0  # None: the budget ran out before it was fixed
    assert n == 0 or n >= 5, first  # fixed after step 1 + measure_steps = 4
    assert first["train_seconds"] < budget + 60.0  # the budget, plus the step that crossed it
    if n >= 10:
      break
  assert n >= 10, first
  if first["status"] == "time_budget":  # a loaded machine ran slower than measured: finish it
    c.train.max_train_seconds = 600.0
    first = pretraining.train_and_evaluate(c, str(ref_dir))
  assert (first["status"], first["step"], first["num_steps"]) == ("completed", n, n)
  assert _meta(ref_dir, n)["schedule_steps"] == n
  # The logged learning rates are the WSD schedule for the n steps that were fixed.
  lr = optim.learning_rate_schedule(c.optimizer, n)
  lr_n = np.asarray(lr(np.arange(n)), np.float64)
  logged = [r for r in _rows(ref_dir) if "train/learning_rate" in r]
  for prev, row in zip([{"step": 0}, *logged[:-1]], logged, strict=True):
    want = np.mean(lr_n[prev["step"]:row["step"]])  # a row averages the steps since prev
    assert row["train/learning_rate"] == pytest.approx(want, rel=1e-5, abs=1e-9), row["step"]
  assert logged[-1]["train/learning_rate"] < 0.5 * c.optimizer.learning_rate  # decayed
  # A run resumed from an earlier checkpoint reads n from it (not a new measurement, even with
  # another budget) and replays the same steps bit for bit.
  k = max(int(p.name) for p in (ref_dir / "checkpoints").iterdir()
          if p.name.isdigit() and int(p.name) < n)
  wd = _resume_copy(ref_dir, tmp_path / "resumed", k)
  c.train.max_train_seconds = 600.0
  out = pretraining.train_and_evaluate(c, str(wd))
  assert (out["start_step"], out["step"], out["num_steps"]) == (k, n, n)
  assert _train_losses(wd) == _train_losses(ref_dir)
  assert _equal_params(out["state"], first["state"])


def test_wall_clock_run_must_measure_inside_the_warmup(tmp_path, pretrain_dataset, vocab_path):
  c = _config(pretrain_dataset, vocab_path, train=dict(num_steps=0, max_train_seconds=10.0),
              optimizer=dict(warmup_steps=2))
  with pytest.raises(ValueError, match="raise optimizer.warmup_steps to at least 6"):
    pretraining.train_and_evaluate(c, str(tmp_path / "run"))
  c.train.max_train_seconds = 0.0
  with pytest.raises(ValueError, match="train.max_train_seconds"):
    pretraining.train_and_evaluate(c, str(tmp_path / "run2"))


def _eval_arrays(c) -> list[dict]:
  return list(pretraining.make_task(c).eval_batches())


def test_eval_masking_does_not_depend_on_the_training_rate(pretrain_dataset, vocab_path):
  """Runs trained at 15% or 30% are evaluated on the very same held-out rows and masks."""
  at = {p: _eval_arrays(_config(pretrain_dataset, vocab_path, variant="modern_tiny",
                                data=dict(masked_lm_prob=p, eval_masked_lm_prob=0.15,
                                          max_predictions=12)))
        for p in (0.15, 0.3)}
  for a, b in zip(at[0.15], at[0.3], strict=True):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  # ... and 15% of the real tokens are masked there (the training rows at 30% mask twice as many).
  masked = sum(float(np.sum(b["masked_lm_weights"])) for b in at[0.3])
  real = sum(float(np.sum(b["input_mask"])) - 2 * len(b["input_mask"]) for b in at[0.3])
  assert masked / real == pytest.approx(0.15, abs=0.02)
  # A BERT trained on NSP pairs can be evaluated on exactly those rows (data.eval_nsp_mode).
  bert = _eval_arrays(_config(pretrain_dataset, vocab_path, variant="tiny",
                              data=dict(eval_nsp_mode="none", max_predictions=12)))
  for a, b in zip(at[0.15], bert, strict=True):
    for key in ("input_ids", "masked_lm_positions", "masked_lm_ids", "masked_lm_weights"):
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.slow
def test_budget_config_trains(tmp_path, pretrain_dataset, vocab_path):
  """The `budget` recipe as configured, shrunk to 2 steps of batch 4."""
  c = _config(pretrain_dataset, vocab_path, variant="budget",
              train=dict(num_steps=2, batch_size=4, batch_size_warmup_steps=0),
              data=dict(eval_batches=1))
  assert c.model.family == "modern" and c.data.nsp_mode == "none"
  assert c.data.eval_masked_lm_prob == 0.15 and c.model.dtype == "auto"
  out = pretraining.train_and_evaluate(c, str(tmp_path / "run"))
  assert out["step"] == 2 and np.isfinite(out["eval"]["mlm_loss"])
  assert (tmp_path / "run" / "model" / "bert_config.json").exists()


@pytest.mark.slow
def test_demo_writes_results_and_fill_mask(tmp_path, pretrain_dataset):
  """run_demo (what `make demo` calls) on the tiny MLM-only model: eval_results.json records the
  held-out masking rate (15%, not the training 30%), and fill-mask top-3 comes last."""
  from bert_jax import demo
  wd = tmp_path / "demo"
  wd.mkdir()
  (wd / "data").symlink_to(pretrain_dataset)  # run_demo reuses a prepared WORKDIR/data
  c = pretrain_configs.get_config("modern_tiny")
  c.train.update(num_steps=3, log_every=1)
  demo.run_demo(c, str(wd))
  r = json.loads((wd / "eval_results.json").read_text())
  assert r["eval_masked_lm_prob"] == 0.15 and c.data.masked_lm_prob == 0.3
  for key in ("mlm_accuracy", "unigram_baseline_mlm_accuracy", "mlm_loss", "train_seconds"):
    assert np.isfinite(r[key]), key
  assert r["train_steps"] == 3 and r["train_tokens"] == 3 * 8 * 32
  assert r["fill_mask"][0]["text"] == demo.FAMOUS and len(r["fill_mask"]) >= 2
  assert all(len(ex["top3"]) == 3 and "[MASK]" in ex["text"] for ex in r["fill_mask"])
  assert (wd / "run" / "curves.png").exists() and any((wd / "run" / "tensorboard").iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("variant, pack", [("tiny", False), ("tiny", True),
                                           ("modern_tiny", True)])
def test_mlm_only_and_packing_train_with_either_family(tmp_path, pretrain_dataset, vocab_path,
                                                      variant, pack):
  """nsp_mode=none (contiguous MLM-only rows) and data.pack are recipe choices for BERT too."""
  c = _config(pretrain_dataset, vocab_path, variant=variant,
              data=dict(nsp_mode="none", pack=pack, eval_masked_lm_prob=0.15),
              train=dict(num_steps=2))
  out = pretraining.train_and_evaluate(c, str(tmp_path / "run"))
  assert out["step"] == 2 and np.isfinite(out["train"]["mlm_loss"])
  assert 0.0 <= out["eval"]["mlm_accuracy"] <= 1.0
  if pack:
    assert 0.0 < out["train"]["packing_efficiency"] <= 1.0
  if variant == "tiny":  # No NSP target in MLM-only rows: the NSP terms carry no weight.
    assert np.isnan(out["train"]["nsp_loss"])
