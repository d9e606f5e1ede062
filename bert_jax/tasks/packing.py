"""Packed fine-tuning batches: several short examples in each row of data.max_seq_length tokens.

`data.packing=True` (classification and NER training; evaluation stays length-bucketed) trains
on batches of one shape, [R, max_seq_length], so the train step compiles once, and nearly every
token slot holds a real token. Each packed example keeps its own view of the model, as unpacked:

- `packed_segment_ids` 1..K per example in its row (0 for padding): attention never crosses two
  examples (attention.MaskSpec);
- `position_ids` restart at 0 at each example;
- classification: `cls_positions` [R, K] (where each example's [CLS] sits: BERT's pooler and
  ModernBERT's `cls` pooling read it; `mean` pools each segment), `labels` and
  `example_weights` [R, K] (0 for an empty slot); the loss is the mean over the batch's
  examples, as an unpacked batch's. Token-aligned arrays (NER's labels) are packed like the ids.

Each epoch is a seeded permutation of the training examples, put first-fit into rows (an
example goes into the first of the `WINDOW` newest rows with room, else opens a row), the rows
cut into global batches of R rows in order, the last partial batch dropped. R = batch_size /
(epoch 0's examples per row), rounded, so a batch holds about train.batch_size examples;
their number varies a little from batch to batch, and an epoch has about as many batches as
unpacked (`steps_per_epoch`: epoch 0's count, which sets the schedule). The order is a function
of (seed, epoch) alone, so every process builds the same batches and a resumed run feeds the
same ones.
"""
from __future__ import annotations

import math

import numpy as np

from bert_jax.errors import ConfigError, DataError
from bert_jax.tasks import buckets as buckets_lib

WINDOW = 64  # open rows an example may join: first-fit quality at O(WINDOW) per example
TASKS = ("classification", "ner")


def enabled(config) -> bool:
  """Whether config asks for packed training; refuses it for a task that cannot pack."""
  if not bool(config.data.get("packing", False)):
    return False
  if config.task not in TASKS:
    raise ConfigError(f"data.packing=True is for {' and '.join(TASKS)} fine-tuning, not "
                      f"{config.task}; drop it (length buckets, data.length_buckets, still apply).")
  if config.train.get("batch_size_warmup_steps", 0):
    raise ConfigError("data.packing=True feeds packed rows, which the batch-size warm-up cannot "
                      "cut into smaller batches; set train.batch_size_warmup_steps=0.")
  return True


def plan_rows(lengths_N: np.ndarray, order_N: np.ndarray, width: int) -> list[list[int]]:
  """Example indices of each row: `order_N` put first-fit into rows of `width` tokens (among
  the WINDOW newest rows)."""
  rows: list[list[int]] = []
  free = np.zeros(0, np.int64)  # room left in rows[-len(free):]
  for i in order_N:
    n = int(lengths_N[i])
    fits = np.flatnonzero(free >= n)
    if len(fits):
      j = int(fits[0])
      rows[len(rows) - len(free) + j].append(int(i))
      free[j] -= n
    else:
      rows.append([int(i)])
      free = np.append(free, width - n)[-WINDOW:]
  return rows


class PackedEpochIterator:
  """Packed global batches of `rows_per_batch` rows; state {"epoch", "pos"} as EpochIterator's.

  Each process gets its rows of the global batch (the trainer assembles the global array).
  """

  def __init__(self, arrays: dict[str, np.ndarray], batch_size: int, seed: int,
               process_index: int = 0, process_count: int = 1, multiple: int = 1):
    """`multiple`: the rows of a global batch are a multiple of it (the devices x gradient
    accumulation steps, so the batch shards evenly) and of process_count."""
    self.arrays, self.seed = arrays, seed
    mask_NxW = np.asarray(arrays["attention_mask"])
    self.n, self.width = mask_NxW.shape
    self.lengths_N = buckets_lib.row_lengths(arrays)
    self.epoch, self.pos = 0, 0
    self._rows = self._plan(0)
    # The rows whose examples number closest to batch_size, by epoch 0's examples per row.
    multiple = math.lcm(multiple, process_count)
    rows = batch_size * len(self._rows) / self.n
    self.rows_per_batch = multiple * max(1, round(rows / multiple))
    self.per = self.rows_per_batch // process_count
    self.offset = process_index * self.per
    # Examples a row can hold at most: its width over the shortest example.
    self.max_packed = int(min(self.width // max(1, int(self.lengths_N.min())), self.n))
    self.token_keys = [k for k, v in arrays.items() if np.ndim(v) >= 2 and v.shape[1] == self.width]
    self.example_keys = [k for k in arrays if k not in self.token_keys]
    if len(self._rows) < self.rows_per_batch:
      raise DataError(f"{self.n} training examples fill only {len(self._rows)} packed rows, fewer "
                      f"than one batch of {self.rows_per_batch}; lower train.batch_size, add data "
                      f"or set data.packing=False.")
    self.steps_per_epoch = len(self._rows) // self.rows_per_batch

  def _plan(self, epoch: int) -> list[list[int]]:
    order_N = np.random.default_rng([self.seed, epoch]).permutation(self.n)
    return plan_rows(self.lengths_N, order_N, self.width)

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if (self.pos + 1) * self.rows_per_batch > len(self._rows):
      self.epoch, self.pos = self.epoch + 1, 0
      self._rows = self._plan(self.epoch)
    start = self.pos * self.rows_per_batch + self.offset
    self.pos += 1
    return self.batch(self._rows[start:start + self.per])

  def batch(self, rows: list[list[int]]) -> dict[str, np.ndarray]:
    """The packed arrays of `rows` (lists of example indices)."""
    r, w, k = len(rows), self.width, self.max_packed
    out = {key: np.zeros((r, w, *self.arrays[key].shape[2:]), self.arrays[key].dtype)
           for key in self.token_keys}
    if "labels" in out:  # NER: -1 marks tokens without a label, padding included
      out["labels"][:] = -1
    out["position_ids"] = np.zeros((r, w), np.int32)
    out["packed_segment_ids"] = np.zeros((r, w), np.int32)
    if self.example_keys:
      out["cls_positions"] = np.zeros((r, k), np.int32)
      out["example_weights"] = np.zeros((r, k), np.float32)
      for key in self.example_keys:
        out[key] = np.zeros((r, k, *self.arrays[key].shape[1:]), self.arrays[key].dtype)
    for row, members in enumerate(rows):
      t = 0
      for slot, i in enumerate(members):
        n = int(self.lengths_N[i])
        for key in self.token_keys:
          out[key][row, t:t + n] = self.arrays[key][i, :n]
        out["position_ids"][row, t:t + n] = np.arange(n)
        out["packed_segment_ids"][row, t:t + n] = slot + 1
        if self.example_keys:
          out["cls_positions"][row, slot] = t
          out["example_weights"][row, slot] = 1.0
          for key in self.example_keys:
            out[key][row, slot] = self.arrays[key][i]
        t += n
    return out

  def get_state(self) -> dict:
    return {"epoch": self.epoch, "pos": self.pos}

  def set_state(self, state: dict) -> None:
    self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
    self._rows = self._plan(self.epoch)
