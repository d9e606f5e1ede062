"""Greedy packing of consecutive pairs into rows, as a grain IterDataset with exact resume.

A row takes the next pairs while their tokens fit in `seq_len`, their MLM targets in
`max_predictions` and there are fewer than `max_packed`; the first pair that does not fit opens
the next row. The checkpoint state is the parent's state before that pending pair, so restoring
re-reads it: no pair is buffered in the state.
"""
from __future__ import annotations

from typing import Any

import grain


class PackIterDataset(grain.IterDataset):

  def __init__(self, parent: grain.IterDataset, *, seq_len: int, max_predictions: int,
               max_packed: int):
    super().__init__(parent)
    self._limits = (seq_len, max_predictions, max_packed)

  def __iter__(self):
    return _PackIterator(self._parent.__iter__(), *self._limits)

  def __str__(self) -> str:
    return f"PackIterDataset(limits={self._limits})"


class _PackIterator(grain.DatasetIterator):

  def __init__(self, parent: grain.DatasetIterator, seq_len: int, max_predictions: int,
               max_packed: int):
    super().__init__(parent)
    self._seq_len, self._max_predictions, self._max_packed = seq_len, max_predictions, max_packed
    self._pending = None
    self._state_before_pending = None

  def _pull(self) -> bool:
    self._state_before_pending = self._parent.get_state()
    try:
      self._pending = next(self._parent)
    except StopIteration:
      self._pending = None
    return self._pending is not None

  def __next__(self) -> list[dict]:
    if self._pending is None and not self._pull():
      raise StopIteration
    row, tokens, preds = [], 0, 0
    while self._pending is not None and len(row) < self._max_packed:
      n, p = len(self._pending["input_ids"]), len(self._pending["masked_lm_positions"])
      if row and (tokens + n > self._seq_len or preds + p > self._max_predictions):
        break
      row.append(self._pending)
      tokens, preds = tokens + n, preds + p
      self._pull()
    return row

  def get_state(self) -> dict[str, Any]:
    return {"parent": self._state_before_pending if self._pending is not None
            else self._parent.get_state()}

  def set_state(self, state: dict[str, Any]):
    self._parent.set_state(state["parent"])
    self._pending = None
