"""Rows made of several inputs, as grain IterDatasets with exact resume.

`PackIterDataset`: greedy packing of consecutive pairs. A row takes the next pairs while their
tokens fit in `seq_len`, their MLM targets in `max_predictions` and there are fewer than
`max_packed`; the first pair that does not fit opens the next row. The checkpoint state is the
parent's state before that pending pair, so restoring re-reads it: no pair is buffered in the
state.

`ContiguousIterDataset`: MLM-only rows cut from one continuous token stream, documents end to end,
so every row is full (but the stream's last). A document continues in the next row where a row
ends. The state is the parent's state before the document the next row starts in, the offset
into it and the row count, so restoring re-reads that one document.
"""
from __future__ import annotations

from typing import Any

import grain
import numpy as np


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


class ContiguousIterDataset(grain.IterDataset):
  """Parent elements {"ids": int array, "doc": int} -> {"pieces": [(doc, ids)], "row": n}.

  Each row holds `length` tokens of the stream (the last row may hold fewer); "pieces" are the
  consecutive parts of documents in it, "row" counts rows from the start of the stream.
  """

  def __init__(self, parent: grain.IterDataset, *, length: int):
    super().__init__(parent)
    self._length = length

  def __iter__(self):
    return _ContiguousIterator(self._parent.__iter__(), self._length)

  def __str__(self) -> str:
    return f"ContiguousIterDataset(length={self._length})"


class _ContiguousIterator(grain.DatasetIterator):

  def __init__(self, parent: grain.DatasetIterator, length: int):
    super().__init__(parent)
    self._length = length
    self._doc = None  # the document the next row starts in
    self._state_before_doc = parent.get_state()
    self._offset = 0  # tokens of self._doc already in earlier rows
    self._rows = 0

  def _next_doc(self) -> bool:
    self._state_before_doc = self._parent.get_state()
    self._offset = 0
    try:
      self._doc = next(self._parent)
    except StopIteration:
      self._doc = None
    return self._doc is not None

  def __next__(self) -> dict:
    pieces, need = [], self._length
    while need:
      if self._doc is None or self._offset >= len(self._doc["ids"]):
        if not self._next_doc():
          break
        continue
      take = self._doc["ids"][self._offset:self._offset + need]
      pieces.append((int(self._doc["doc"]), np.asarray(take)))
      self._offset += len(take)
      need -= len(take)
    if not pieces:
      raise StopIteration
    self._rows += 1
    return {"pieces": pieces, "row": self._rows - 1}

  def get_state(self) -> dict[str, Any]:
    return {"parent": self._state_before_doc, "offset": self._offset if self._doc else 0,
            "rows": self._rows}

  def set_state(self, state: dict[str, Any]):
    self._parent.set_state(state["parent"])
    self._doc, self._rows = None, state["rows"]
    if state["offset"]:
      self._next_doc()
      self._offset = state["offset"]
