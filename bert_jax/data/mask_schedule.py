"""A training masking rate that changes over the run (e.g. 30% -> 15%), exactly resumable.

Rows are masked per document deep inside the pipeline, where the step a row will land in is not
known. So the pipeline masks every row at the schedule's highest rate, and a last stage after
batching, which counts the batches it has given out (its checkpointed state), unmasks each row
down to the rate of that batch's step: a random subset of the masked words is put back. A random
subset of a uniformly random subset is uniformly random, so a row looks as if masked at the lower
rate directly (same count rule: `masking.num_to_predict` of the row's, or packed pair's,
candidate tokens), and each kept position keeps its own 80/10/10 decision. The thinning draws from
`default_rng([seed, process_index, step])`, so a batch is a pure function of its step and the
pipeline's position: resume is bitwise exact across any point of the schedule.

The batch count is the global step because the train loop takes one batch per shard per step.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import grain
import numpy as np

from bert_jax.data import masking
from bert_jax.errors import ConfigError

KINDS = ("constant", "linear")


@dataclasses.dataclass(frozen=True)
class MaskingSchedule:
  """Masking rate per step: `start` at step 0, straight to `end` at `steps`, `end` after."""
  kind: str = "constant"
  start: float = 0.15
  end: float = 0.15
  steps: int = 0

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ConfigError(f"data.masking_schedule={self.kind!r}; use one of {', '.join(KINDS)}.")
    for name, rate in (("start", self.start), ("end", self.end)):
      if not 0 < rate < 1:
        raise ConfigError(f"The masking schedule's {name} rate {rate} must be in (0, 1).")
    if self.kind != "constant" and self.steps < 1:
      raise ConfigError(f"A {self.kind} masking schedule needs its length in steps (got "
                        f"{self.steps}); set data.masking_schedule_steps (a wall-clock run, "
                        "train.num_steps=0, learns its step count only while it runs).")

  @property
  def max_rate(self) -> float:
    return self.end if self.kind == "constant" else max(self.start, self.end)

  def rate_at(self, step: int) -> float:
    if self.kind == "constant":
      return self.end
    frac = min(max(step, 0), self.steps) / self.steps
    return self.start + (self.end - self.start) * frac


def from_config(data_cfg, num_steps: int) -> MaskingSchedule:
  """The schedule of a pretraining config's `data` section (masked_lm_prob is the final rate)."""
  kind = data_cfg.get("masking_schedule", "constant") or "constant"
  end = data_cfg.masked_lm_prob
  start = data_cfg.get("masked_lm_prob_start", 0.0) or end
  steps = data_cfg.get("masking_schedule_steps", 0) or num_steps
  return MaskingSchedule(kind=kind, start=start, end=end, steps=steps)


def check_capacity(schedule: MaskingSchedule, seq_len: int, max_predictions: int,
                   nsp_mode: str) -> None:
  """Refuses a max_predictions that would cap the schedule's highest rate."""
  candidates = seq_len - (2 if nsp_mode == "none" else 3)  # [CLS] ... [SEP] (B [SEP])
  need = int(round(candidates * schedule.max_rate))
  if need > max_predictions:
    raise ConfigError(
        f"data.max_predictions={max_predictions} cannot hold the {need} masked tokens of a full "
        f"{seq_len}-token row at the highest masking rate {schedule.max_rate:g}; raise "
        f"data.max_predictions to at least {need} or lower the rate.")


def _word_ids(original_L, valid_L, pos, spec: masking.MaskingSpec, runs: bool):
  """Word index of every token (as mask_tokens groups them), -1 outside candidates.

  `runs`: the word starts came from a segmenter and are not in the rows, so each run of adjacent
  masked positions counts as one word (whole words stay whole; neighbours go together).
  """
  cand = np.flatnonzero(~spec.is_special[original_L] & valid_L)
  out = np.full(len(original_L), -1, np.int64)
  if spec.word_start is None:
    out[cand] = np.arange(len(cand))
  elif runs:
    out[cand] = np.arange(len(cand))
    out[pos] = len(original_L) + np.cumsum(np.diff(pos, prepend=-2) != 1)
  else:
    starts = spec.word_start[original_L[cand]] | (np.diff(cand, prepend=-2) != 1)
    out[cand] = np.cumsum(starts) - 1
  return out


def thin_row(row: dict, rate: float, spec: masking.MaskingSpec, rng, runs: bool = False) -> None:
  """Unmasks whole words of one row (in place) until each unit is masked at `rate`.

  A unit is a packed pair (rows with "cls_positions": masked pair by pair) or else the row.
  `runs`: see `_word_ids`.
  """
  w_P = row["masked_lm_weights"]
  n = int(np.count_nonzero(w_P))
  pos, labels = row["masked_lm_positions"][:n].copy(), row["masked_lm_ids"][:n].copy()
  original_L = row["input_ids"].copy()
  original_L[pos] = labels
  valid_L = row["input_mask"] > 0
  words_L = _word_ids(original_L, valid_L, pos, spec, runs)
  unit_L = row["packed_segment_ids"] if "cls_positions" in row else valid_L.astype(np.int32)
  limit = dataclasses.replace(spec, masked_lm_prob=rate)
  keep = np.zeros(n, bool)
  for u in np.unique(unit_L[pos]):
    in_unit = np.flatnonzero(unit_L[pos] == u)
    target = masking.num_to_predict(int(np.count_nonzero((words_L >= 0) & (unit_L == u))), limit)
    words, first, sizes = np.unique(words_L[pos[in_unit]], return_index=True, return_counts=True)
    total = 0
    for w in rng.permutation(len(words)):  # mask_tokens' greedy rule, over the masked words
      if total >= target:
        break
      if total + sizes[w] > target:
        continue
      keep[in_unit[words_L[pos[in_unit]] == words[w]]] = True
      total += sizes[w]
  row["input_ids"][pos[~keep]] = labels[~keep]
  m = int(keep.sum())
  for key, values in (("masked_lm_positions", pos[keep]), ("masked_lm_ids", labels[keep])):
    row[key][:] = 0
    row[key][:m] = values
  w_P[:] = 0
  w_P[:m] = 1


class ScheduledMaskingIterDataset(grain.IterDataset):
  """Batches masked at `schedule.max_rate` -> batches masked at the rate of their step."""

  def __init__(self, parent: grain.IterDataset, *, schedule: MaskingSchedule,
               spec: masking.MaskingSpec, seed: int, process_index: int,
               segmenter_words: bool = False):
    super().__init__(parent)
    self._args = (schedule, spec, seed, process_index, segmenter_words)

  def __iter__(self):
    return _ScheduledMaskingIterator(self._parent.__iter__(), *self._args)

  def __str__(self) -> str:
    return f"ScheduledMaskingIterDataset({self._args[0]})"


class _ScheduledMaskingIterator(grain.DatasetIterator):

  def __init__(self, parent, schedule, spec, seed, process_index, segmenter_words):
    super().__init__(parent)
    self._schedule, self._spec, self._runs = schedule, spec, segmenter_words
    self._seed, self._process_index = seed, process_index
    self._step = 0

  def __next__(self) -> dict:
    batch = next(self._parent)
    step, self._step = self._step, self._step + 1
    rate = self._schedule.rate_at(step)
    if rate >= self._schedule.max_rate:
      return batch  # Masked at this rate already.
    rng = np.random.default_rng([self._seed, self._process_index, step])
    batch = {k: np.array(v) for k, v in batch.items()}
    for r in range(len(batch["input_ids"])):
      thin_row({k: v[r] for k, v in batch.items()}, rate, self._spec, rng, self._runs)
    return batch

  def get_state(self) -> dict[str, Any]:
    return {"parent": self._parent.get_state(), "step": self._step}

  def set_state(self, state: dict[str, Any]):
    self._parent.set_state(state["parent"])
    self._step = int(state["step"])
