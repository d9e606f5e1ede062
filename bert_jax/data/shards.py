"""Data shards: which shards of the input this process feeds, and one iterator over them.

The number of data shards is fixed by the config (`data.num_shards`), not by the process count:
each shard keeps its own iterator and its own saved position (checkpoint.py writes one file per
shard), so the global batch stream stays the same when a run moves between 1 and N processes.
"""
from __future__ import annotations

from collections.abc import Iterator

import jax
import numpy as np

from bert_jax.errors import TrainingError


def local_shards(num_shards: int) -> list[int]:
  """The shards this process feeds: a contiguous block of `num_shards` (0 = one per process)."""
  n, count, index = num_shards or jax.process_count(), jax.process_count(), jax.process_index()
  if n % count:
    raise TrainingError(f"data.num_shards={n} is not a multiple of the {count} processes; make "
                        f"it one (0 means one shard per process).")
  per = n // count
  return list(range(index * per, (index + 1) * per))


class ShardedIterator:
  """Concatenates per-shard host batches along the batch axis; state is per shard.

  `get_state()` is `{"shards": {"<shard id>": that shard's iterator state}}`.
  """

  def __init__(self, iterators: dict[int, Iterator[dict]]):
    self.iterators = iterators

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    parts = [next(it) for it in self.iterators.values()]
    if len(parts) == 1:
      return parts[0]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

  def get_state(self) -> dict:
    return {"shards": {str(s): it.get_state() for s, it in self.iterators.items()}}

  def set_state(self, state: dict) -> None:
    shards = state.get("shards", {})
    missing = [s for s in self.iterators if str(s) not in shards]
    if missing:
      raise TrainingError(f"The checkpoint has no data position for shards {missing}; resume "
                          f"with the data.num_shards the run started with.")
    for s, it in self.iterators.items():
      it.set_state(shards[str(s)])
