"""What the fine-tuning tasks share: reading tables, a resumable in-memory batch iterator, a
seeded train/dev split and batched, jitted inference over numpy arrays."""
from __future__ import annotations

import contextlib
import csv
import functools
import json
import pathlib
import sys
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bert_jax.errors import DataError
from bert_jax.tasks import buckets as buckets_lib

# The model inputs of a packed batch (tasks/packing.py), as the heads name them; NER rows carry
# the first two.
PACKED_INPUTS = ("position_ids", "packed_segment_ids", "cls_positions")


# ----------------------------------------------------------------------------- reading tables
def table_format(path, fmt: str = "auto") -> str:
  if fmt != "auto":
    if fmt not in ("csv", "tsv", "jsonl"):
      raise DataError(f"data.format={fmt!r} is not one of auto, csv, tsv, jsonl.")
    return fmt
  suffix = pathlib.Path(path).suffix.lower()
  return {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl",
          ".txt": "tsv"}.get(suffix, "tsv")


def read_rows(path, fmt: str = "auto", header: bool = True) -> tuple[list[str] | None, list]:
  """(column names or None, rows) of a CSV / TSV / JSONL file; rows are lists or dicts.

  TSV is read without quote handling, as GLUE's files need (their texts hold bare quotes).
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise DataError(f"Data file {path} does not exist; check the path in the config.")
  fmt = table_format(path, fmt)
  text = path.read_text(encoding="utf-8-sig")
  if not text.strip():
    raise DataError(f"Data file {path} is empty; point the config at a file with examples.")
  if fmt == "jsonl":
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
      if line.strip():
        try:
          rows.append(json.loads(line))
        except json.JSONDecodeError as e:
          raise DataError(f"{path}:{n} is not valid JSON ({e.msg}); write one object per line."
                          ) from None
    return None, rows
  if fmt == "csv":
    rows = list(csv.reader(text.splitlines()))
  else:
    rows = list(csv.reader(text.splitlines(), delimiter="\t", quoting=csv.QUOTE_NONE))
  rows = [r for r in rows if any(c.strip() for c in r)]
  if header:
    if not rows:
      raise DataError(f"Data file {path} has no rows.")
    return [c.strip() for c in rows[0]], rows[1:]
  return None, rows


def column_getter(path, names: list[str] | None, column: str) -> Callable:
  """A function row -> value for `column` (a header name, a JSON key or a 0-based index)."""
  if names is None and column.lstrip("-").isdigit():
    i = int(column)
    return lambda row: row[i]
  if names is not None:
    if column in names:
      i = names.index(column)
      return lambda row: row[i]
    if column.lstrip("-").isdigit():
      i = int(column)
      return lambda row: row[i]
    raise DataError(f"{path} has no column {column!r} (columns: {names}); set the data.*_column "
                    f"options to one of them.")
  return lambda row: row[column]


def extract_columns(path, names, rows, columns: dict[str, str]) -> tuple[dict[str, list], int]:
  """{key: values} for the requested columns; rows too short or lacking a key are skipped.

  Returns the columns and the number of skipped rows. A column missing from every row is an error.
  """
  getters = {k: column_getter(path, names, c) for k, c in columns.items() if c != ""}
  out = {k: [] for k in getters}
  skipped = 0
  missing = {k: 0 for k in getters}
  for row in rows:
    try:
      values = {k: g(row) for k, g in getters.items()}
    except (IndexError, KeyError, TypeError):
      skipped += 1
      for k, g in getters.items():
        try:
          g(row)
        except (IndexError, KeyError, TypeError):
          missing[k] += 1
      continue
    for k, v in values.items():
      out[k].append(v)
  for k, n in missing.items():
    if rows and n == len(rows):
      raise DataError(f"{path} has no column {columns[k]!r} in any row; set data.{k}_column to a "
                      f"column the file has.")
  return out, skipped


def warn(msg: str) -> None:
  print(f"warning: {msg}", file=sys.stderr, flush=True)


def split_indices(n: int, dev_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """A seeded random (train, dev) split of range(n)."""
  if not 0.0 < dev_fraction < 1.0:
    raise DataError(f"data.dev_fraction={dev_fraction} must be in (0, 1) when there is no "
                    f"data.dev_file.")
  perm = np.random.default_rng(seed).permutation(n)
  n_dev = max(1, int(round(n * dev_fraction)))
  return np.sort(perm[n_dev:]), np.sort(perm[:n_dev])


# ----------------------------------------------------------------------------- batches
class EpochIterator:
  """Batches of equally long numpy arrays, reshuffled each epoch; state {"epoch", "pos"}.

  Each process gets its rows of the global batch (the trainer assembles the global array).
  The last partial batch of an epoch is dropped so every batch has the same number of rows.

  With `buckets` (length buckets, tasks/buckets.py) an epoch trains on the same number of
  batches, but each batch holds rows of similar length (`lengths`, default: the attention mask's;
  given, every [N, W] array is token-aligned and cut, as seq2seq's source and target arrays), cut
  to the smallest bucket that holds its longest row: the epoch's rows (a seeded permutation,
  less a random remainder) are sorted by bucket, cut into global batches, and the batches
  shuffled. The order is a function of (seed, epoch) alone and every process computes the same
  one, so a resumed run feeds the same batches and all processes agree on each batch's length.
  """

  def __init__(self, arrays: dict[str, np.ndarray], global_batch: int, seed: int,
               process_index: int = 0, process_count: int = 1,
               buckets: tuple[int, ...] | None = None, lengths: np.ndarray | None = None):
    self.arrays = arrays
    self.n = len(next(iter(arrays.values())))
    if self.n < global_batch:
      raise DataError(f"Only {self.n} training examples for a batch of {global_batch}; lower "
                      f"train.batch_size or add data.")
    self.global_batch, self.seed = global_batch, seed
    self.per = global_batch // process_count
    self.offset = process_index * self.per
    self.buckets = tuple(buckets) if buckets else None
    if self.buckets:
      self.width = arrays["attention_mask"].shape[1]
      if lengths is None:
        lengths = buckets_lib.row_lengths(arrays)
      else:  # seq2seq: the longer of source and target; its target arrays are cut too
        self.width = (self.width, *{v.shape[1] for v in arrays.values() if np.ndim(v) == 2})
      self._bucket_of = buckets_lib.bucket_index(np.asarray(lengths), self.buckets)
    self.epoch, self.pos = 0, 0
    self._perm, self._widths = self._order(0)

  def _permutation(self, epoch):
    return np.random.default_rng([self.seed, epoch]).permutation(self.n)

  def _order(self, epoch):
    """(row order of the epoch, each batch's width or None)."""
    perm = self._permutation(epoch)
    if not self.buckets:
      return perm, None
    used = perm[:self.n - self.n % self.global_batch]
    rows = used[np.argsort(self._bucket_of[used], kind="stable")]
    batches_NbxB = rows.reshape(-1, self.global_batch)
    shuffle = np.random.default_rng([self.seed, epoch, 1]).permutation(len(batches_NbxB))
    batches_NbxB = batches_NbxB[shuffle]
    widths = np.asarray(self.buckets)[self._bucket_of[batches_NbxB].max(axis=1)]
    return batches_NbxB.reshape(-1), widths

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self.pos + self.global_batch > self.n:
      self.epoch, self.pos = self.epoch + 1, 0
      self._perm, self._widths = self._order(self.epoch)
    rows = self._perm[self.pos + self.offset:self.pos + self.offset + self.per]
    width = None if self._widths is None else int(self._widths[self.pos // self.global_batch])
    self.pos += self.global_batch
    if width is None:
      return {k: v[rows] for k, v in self.arrays.items()}
    return buckets_lib.cut(self.arrays, rows, width, self.width)

  def get_state(self) -> dict:
    return {"epoch": self.epoch, "pos": self.pos}

  def set_state(self, state: dict) -> None:
    self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
    self._perm, self._widths = self._order(self.epoch)


# ----------------------------------------------------------------------------- inference
@functools.partial(jax.jit, static_argnums=(0, 1, 4))
def _apply(graphdef, fn, state, batch, right_padded=False):  # graphdef: inference.StaticGraph
  from bert_jax import inference
  with (inference.skipping_padding(batch["attention_mask"]) if right_padded
        else contextlib.nullcontext()):
    return fn(graphdef.merge(state), batch)


def run_model(model: nnx.Module, fn: Callable, arrays: dict[str, np.ndarray], batch_size: int,
              mesh=None, buckets: tuple[int, ...] | None = None, token_outputs: bool = False,
              right_padded: bool = False):
  """fn(model, batch) over all rows in fixed-size batches; returns the outputs' numpy arrays.

  `fn` must be a module-level function (it is a static jit argument). With a mesh, each batch is
  sharded like training batches and every process gets all rows' outputs back.
  With `buckets` (tasks/buckets.py), rows are batched in order of length and each batch is cut
  to the smallest bucket holding its longest row (one compile per bucket); outputs come back in
  the rows' order. `token_outputs`: the outputs are per token ([N, L, ...]); a bucket's are padded
  back to the arrays' full length with zeros.
  """
  from bert_jax import inference, train
  # Without a mesh the weights go in already in the compute dtype (inference.inference_split).
  if mesh is None:
    graphdef, state = inference.inference_split(model)
  else:
    graphdef, state = inference.split(model)
  n = len(next(iter(arrays.values())))
  if mesh is not None:
    from bert_jax import sharding
    unit = sharding.batch_axis_size(mesh) * jax.process_count()
    batch_size = -(-batch_size // unit) * unit
  if buckets:
    full = arrays["attention_mask"].shape[1]
    bucket_of = buckets_lib.bucket_index(buckets_lib.row_lengths(arrays), tuple(buckets))
    order = np.argsort(bucket_of, kind="stable")
  else:
    full, bucket_of, order = None, None, np.arange(n)
  outs = []
  for start in range(0, n, batch_size):
    idx = order[start:start + batch_size]
    if buckets:
      width = int(buckets[int(bucket_of[idx].max())])
      batch = buckets_lib.cut(arrays, idx, width, full)
    else:
      batch = {k: v[start:start + batch_size] for k, v in arrays.items()}
    rows = len(idx)
    if rows < batch_size:  # Pad to one shape so the function compiles once.
      batch = {k: np.concatenate([v, np.repeat(v[-1:], batch_size - rows, 0)])
               for k, v in batch.items()}
    if mesh is not None:
      per = batch_size // jax.process_count()
      lo = jax.process_index() * per
      batch = train.to_global({k: v[lo:lo + per] for k, v in batch.items()}, mesh)
      out = _apply(graphdef, fn, state, batch)
      out = _gather(out)
    else:
      out = jax.device_get(_apply(graphdef, fn, state, jax.tree.map(jnp.asarray, batch),
                                  right_padded))
    out = jax.tree.map(lambda x, rows=rows: np.asarray(x)[:rows], out)
    if buckets and token_outputs:
      out = jax.tree.map(lambda x: np.pad(x, [(0, 0), (0, full - x.shape[1])]
                                          + [(0, 0)] * (x.ndim - 2)), out)
    outs.append(out)
  joined = jax.tree.map(lambda *xs: np.concatenate(xs), *outs)
  if not buckets:
    return joined
  inverse = np.empty_like(order)
  inverse[order] = np.arange(n)
  return jax.tree.map(lambda x: x[inverse], joined)


def _gather(tree):
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils
  return multihost_utils.process_allgather(tree, tiled=True)


def write_jsonl(path, records) -> None:
  """Writes records to `path` through a temporary sibling (no half-written file on failure)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    for r in records:
      f.write(json.dumps(r, ensure_ascii=False) + "\n")
  tmp.replace(path)
