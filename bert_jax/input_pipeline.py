"""Pretraining batches from a prepared dataset: grain over TFDS ArrayRecord documents.

    docs (TFDS data source) -> this process's share [i::n] -> seeded shuffle (new order each epoch)
    -> repeat -> per document: NSP/SOP pairs + MLM masking -> flatten -> [pack] -> fixed-shape rows
    -> batch -> thread prefetch

MLM-only rows (`nsp_mode="none"`, ModernBERT's recipe): documents end to end as one token stream,
each followed by [SEP], cut into full rows of [CLS] + seq_len - 2 stream tokens + [SEP] across
sentence and document boundaries (data/packing.py's ContiguousIterDataset); masked with
`default_rng([seed, process, row])`. Their NSP labels carry weight 0.

The randomness of a document's pairs and masks comes from `default_rng([seed, k])`, k being its
position in this process's stream (epoch * documents_per_process + index in the epoch), so it is a
pure function of (seed, epoch, example index). `it.get_state()` is a small JSON-serialisable dict;
`it.set_state(state)` on a fresh iterator of the same dataset continues with bitwise-identical
batches.

Batch keys (int32 unless noted; B batch, L seq_len, P max_predictions, K max_packed):
  input_ids, input_mask, segment_ids [B, L]; masked_lm_positions, masked_lm_ids [B, P];
  masked_lm_weights [B, P] float32; next_sentence_labels [B] (0 = is next / in order,
  1 = random / swapped). With pack=True also position_ids, packed_segment_ids (1..K, 0 = padding)
  [B, L], cls_positions [B, K], and next_sentence_labels [B, K] with next_sentence_weights [B, K]
  float32.
With nsp_mode="none": next_sentence_weights [B] float32 zeros (no NSP target), and with
pack=True position_ids and packed_segment_ids [B, L] per document piece of the row (positions
restart where a document starts, attention stays inside it), no cls_positions.
"""
from __future__ import annotations

import functools
import json
import os
import threading

import grain
import numpy as np

from bert_jax.data import instances, mask_schedule, masking, writer
from bert_jax.data.packing import ContiguousIterDataset, PackIterDataset
from bert_jax.errors import ConfigError, DataError, MissingFileError


class VocabMismatchError(ConfigError):
  """The tokenizer is not the one the dataset was prepared with."""


def dataset_info(data_dir) -> dict:
  """{"vocab_fingerprint", "vocab_size", "splits": {split: documents}, "stats", "special", ...}."""
  data_dir = os.fspath(data_dir)
  if not os.path.isfile(os.path.join(data_dir, "metadata.json")):
    raise MissingFileError(f"{data_dir} is not a prepared dataset (no metadata.json); make one "
                           "with `bert-jax-prepare` (python -m bert_jax.cli.prepare).")
  meta = writer.read_metadata(data_dir)
  with open(os.path.join(data_dir, "dataset_info.json"), encoding="utf-8") as f:
    info = json.load(f)
  splits = {s: 0 for s in writer.SPLITS}  # a split without documents has no TFDS entry
  splits.update({s["name"]: sum(int(n) for n in s.get("shardLengths", []))
                 for s in info["splits"]})
  return {**meta, "splits": splits}


def check_vocab(data_dir, tokenizer) -> None:
  """Raises VocabMismatchError when `tokenizer` is not the dataset's vocabulary."""
  meta = dataset_info(data_dir)
  if tokenizer.fingerprint != meta["vocab_fingerprint"]:
    raise VocabMismatchError(
        f"The dataset {data_dir} was prepared with the vocabulary {meta.get('vocab_file')} "
        f"(fingerprint {meta['vocab_fingerprint']}, {meta['vocab_size']} tokens, lower case "
        f"{meta.get('do_lower_case')}), but the model's tokenizer is {tokenizer.vocab_path.name} "
        f"(fingerprint {tokenizer.fingerprint}, {tokenizer.vocab_size} tokens, lower case "
        f"{tokenizer.do_lower_case}); prepare the data again with this vocabulary or train with "
        "the one the data was prepared with.")


_OPEN_LOCK = threading.Lock()


class _Documents:
  """Random access to a split's documents as lists of sentence id arrays."""

  def __init__(self, data_dir: str, split: str, word_starts: bool = False):
    """`word_starts`: sentences carry the stored word-start flags in masking.WORD_START_BIT."""
    self._data_dir, self._split, self._word_starts = data_dir, split, word_starts
    self._source = None

  @property
  def source(self):
    if self._source is None:  # opened lazily: picklable for worker processes
      # One thread at a time: grain's prefetch threads open their copies at once, and
      # concurrent first imports of tensorflow_datasets' lazy modules deadlocked on Python 3.11
      # (an import lock against functools.cached_property's class-wide lock).
      with _OPEN_LOCK:
        if self._source is None:
          import tensorflow_datasets as tfds
          self._source = tfds.builder_from_directory(self._data_dir).as_data_source(self._split)
    return self._source

  def __getstate__(self):
    return {"_data_dir": self._data_dir, "_split": self._split,
            "_word_starts": self._word_starts, "_source": None}

  def __len__(self):
    return len(self.source)

  def __getitem__(self, i: int) -> list[np.ndarray]:
    rec = self.source[i]
    ids = rec["ids"]
    if self._word_starts:
      ids = ids | (rec["word_starts"].astype(np.int32) * masking.WORD_START_BIT)
    return instances.split_document(ids, rec["sentence_lengths"])


class _MakeInstances:
  """(stream position, document index) -> the document's masked pairs."""

  def __init__(self, docs: _Documents, num_docs: int, seed: int, seq_len: int,
               short_seq_prob: float, nsp_mode: str, spec: masking.MaskingSpec, cls_id: int,
               sep_id: int):
    self.docs, self.num_docs, self.seed = docs, num_docs, seed
    self.seq_len, self.short_seq_prob, self.nsp_mode = seq_len, short_seq_prob, nsp_mode
    self.spec, self.cls_id, self.sep_id = spec, cls_id, sep_id

  def __call__(self, position: int, doc_index) -> list[dict]:
    rng = np.random.default_rng([self.seed, int(position)])
    pairs = instances.document_pairs(
        self.docs[int(doc_index)], int(doc_index), self.num_docs, self.docs.__getitem__, rng,
        max_num_tokens=self.seq_len - 3, short_seq_prob=self.short_seq_prob,
        nsp_mode=self.nsp_mode)
    out = []
    for a, b, label in pairs:
      tokens = np.concatenate([[self.cls_id], a, [self.sep_id], b, [self.sep_id]]).astype(np.int32)
      types = np.zeros(len(tokens), np.int32)
      types[len(a) + 2:] = 1
      ids, positions, labels = _mask(tokens, self.spec, rng)
      out.append({"input_ids": ids, "segment_ids": types, "masked_lm_positions": positions,
                  "masked_lm_ids": labels, "next_sentence_labels": label,
                  "document_index": int(doc_index)})
    return out


def _mask(tokens: np.ndarray, spec: masking.MaskingSpec, rng):
  """masking.mask_tokens, with the segmenter's word starts when the ids carry them."""
  if spec.word_start is not None and np.any(tokens >= masking.WORD_START_BIT):
    tokens, starts = masking.unpack_word_starts(tokens)
    return masking.mask_tokens(tokens, spec, rng, word_start=starts)
  return masking.mask_tokens(tokens & (masking.WORD_START_BIT - 1), spec, rng)


class _Flatten(grain.experimental.FlatMapTransform):
  max_fan_out = 1 << 20

  def flat_map(self, element):
    return element


def _row(inst: dict, seq_len: int, max_predictions: int, with_document_index: bool) -> dict:
  n, p = len(inst["input_ids"]), len(inst["masked_lm_positions"])
  row = {k: np.zeros(seq_len, np.int32) for k in ("input_ids", "input_mask", "segment_ids")}
  row["input_ids"][:n] = inst["input_ids"]
  row["input_mask"][:n] = 1
  row["segment_ids"][:n] = inst["segment_ids"]
  for k in ("masked_lm_positions", "masked_lm_ids"):
    row[k] = np.zeros(max_predictions, np.int32)
    row[k][:p] = inst[k]
  row["masked_lm_weights"] = np.zeros(max_predictions, np.float32)
  row["masked_lm_weights"][:p] = 1.0
  row["next_sentence_labels"] = np.int32(inst["next_sentence_labels"])
  if with_document_index:
    row["document_index"] = np.int32(inst["document_index"])
  return row


def _packed_row(insts: list[dict], seq_len: int, max_predictions: int, max_packed: int,
                with_document_index: bool) -> dict:
  row = {k: np.zeros(seq_len, np.int32) for k in
         ("input_ids", "input_mask", "segment_ids", "position_ids", "packed_segment_ids")}
  for k in ("masked_lm_positions", "masked_lm_ids"):
    row[k] = np.zeros(max_predictions, np.int32)
  row["masked_lm_weights"] = np.zeros(max_predictions, np.float32)
  row["cls_positions"] = np.zeros(max_packed, np.int32)
  row["next_sentence_labels"] = np.zeros(max_packed, np.int32)
  row["next_sentence_weights"] = np.zeros(max_packed, np.float32)
  if with_document_index:
    row["document_index"] = np.full(max_packed, -1, np.int32)
  t = p = 0
  for k, inst in enumerate(insts):
    n, m = len(inst["input_ids"]), len(inst["masked_lm_positions"])
    row["input_ids"][t:t + n] = inst["input_ids"]
    row["input_mask"][t:t + n] = 1
    row["segment_ids"][t:t + n] = inst["segment_ids"]
    row["position_ids"][t:t + n] = np.arange(n)
    row["packed_segment_ids"][t:t + n] = k + 1
    row["masked_lm_positions"][p:p + m] = inst["masked_lm_positions"] + t
    row["masked_lm_ids"][p:p + m] = inst["masked_lm_ids"]
    row["masked_lm_weights"][p:p + m] = 1.0
    row["cls_positions"][k] = t
    row["next_sentence_labels"][k] = inst["next_sentence_labels"]
    row["next_sentence_weights"][k] = 1.0
    if with_document_index:
      row["document_index"][k] = inst["document_index"]
    t, p = t + n, p + m
  return row


class _DocumentStream:
  """Document index -> {"ids": its tokens followed by [SEP], "doc": index} (MLM-only rows)."""

  def __init__(self, docs: _Documents, sep_id: int):
    self.docs, self.sep_id = docs, sep_id

  def __call__(self, doc_index) -> dict:
    sentences = self.docs[int(doc_index)]
    ids = np.concatenate([*sentences, [self.sep_id]]).astype(np.int32)
    return {"ids": ids, "doc": int(doc_index)}


def _contiguous_row(elem: dict, *, seq_len: int, max_predictions: int, spec, cls_id: int,
                    sep_id: int, seed: int, process_index: int, pack: bool,
                    with_document_index: bool) -> dict:
  """[CLS] + a stretch of the stream + [SEP], masked; packed: one segment per document piece."""
  pieces = elem["pieces"]
  tokens = np.concatenate([[cls_id], *(ids for _, ids in pieces), [sep_id]]).astype(np.int32)
  rng = np.random.default_rng([seed, process_index, elem["row"]])
  ids, positions, labels = _mask(tokens, spec, rng)
  row = _row({"input_ids": ids, "segment_ids": np.zeros(len(tokens), np.int32),
              "masked_lm_positions": positions, "masked_lm_ids": labels,
              "next_sentence_labels": 0, "document_index": pieces[0][0]},
             seq_len, max_predictions, with_document_index)
  row["next_sentence_weights"] = np.float32(0.0)
  if pack:
    lengths = [len(p) for _, p in pieces]
    lengths[0] += 1  # [CLS] opens the first piece,
    lengths[-1] += 1  # [SEP] closes the last.
    for key, values in (("packed_segment_ids", np.repeat(np.arange(1, len(pieces) + 1), lengths)),
                        ("position_ids", np.concatenate([np.arange(m) for m in lengths]))):
      row[key] = np.zeros(seq_len, np.int32)
      row[key][:len(tokens)] = values
  return row


def _masking_spec(data_dir, tokenizer, masked_lm_prob, max_predictions, whole_word_mask):
  meta = dataset_info(data_dir)
  if tokenizer is not None:
    check_vocab(data_dir, tokenizer)
    special = {"cls_id": tokenizer.cls_id, "sep_id": tokenizer.sep_id,
               "mask_id": tokenizer.mask_id}
    special_ids, vocab_size = tokenizer.special_ids, tokenizer.vocab_size
    word_start = tokenizer.word_start_mask() if whole_word_mask else None
  else:
    special, special_ids, vocab_size = meta["special"], meta["special_ids"], meta["vocab_size"]
    word_start = (np.load(os.path.join(os.fspath(data_dir), writer.WORD_START_FILE))
                  if whole_word_mask else None)
  spec = masking.MaskingSpec.create(
      vocab_size=vocab_size, special_ids=special_ids, mask_id=special["mask_id"],
      word_start=word_start, masked_lm_prob=masked_lm_prob, max_predictions=max_predictions)
  return spec, special["cls_id"], special["sep_id"], meta


def create_pretraining_dataset(
    data_dir, split: str, *, batch_size: int, seq_len: int, max_predictions: int, seed: int,
    masked_lm_prob: float = 0.15, short_seq_prob: float = 0.1, whole_word_mask: bool = False,
    nsp_mode: str = "nsp", pack: bool = False, max_packed: int = 4, tokenizer=None,
    process_index: int | None = None, process_count: int | None = None,
    num_epochs: int | None = None, shuffle: bool = True, drop_remainder: bool = True,
    num_threads: int = 4, prefetch_batches: int = 2,
    with_document_index: bool = False,
    masking_schedule: mask_schedule.MaskingSchedule | None = None) -> grain.IterDataset:
  """A grain IterDataset of numpy batch dicts (this process's `batch_size` rows); see module doc.

  `tokenizer=None` takes the special ids, vocabulary size and word starts stored with the data;
  a tokenizer is checked against the dataset's fingerprint (VocabMismatchError). `process_index`
  / `process_count` default to jax.process_index() / jax.process_count(); each process reads a
  disjoint share of the documents. `num_epochs=None` repeats forever. `num_threads` threads
  build pairs, `prefetch_batches` batches are made ahead in a thread. `with_document_index` adds
  "document_index" [B] ([B, K] packed, -1 = empty slot): the split index of segment A's document.
  `masking_schedule` (data/mask_schedule.py) replaces `masked_lm_prob`: batch n of the iterator
  (the train step n) is masked at its rate_at(n).
  """
  data_dir = os.fspath(data_dir)
  if nsp_mode not in (*instances.NSP_MODES, "none"):
    raise ConfigError(f"nsp_mode={nsp_mode!r}; use 'nsp', 'sop' or 'none' (MLM only: full rows "
                      "of contiguous text).")
  if seq_len < 8 or not 1 <= max_predictions <= seq_len or batch_size < 1:
    raise ConfigError(f"Need seq_len >= 8, 1 <= max_predictions <= seq_len and batch_size >= 1; "
                      f"got {seq_len}, {max_predictions}, {batch_size}.")
  if not 0 < masked_lm_prob < 1 or not 0 <= short_seq_prob <= 1 or max_packed < 1:
    raise ConfigError("masked_lm_prob must be in (0, 1), short_seq_prob in [0, 1], "
                      "max_packed >= 1.")
  if not 0 <= seed < 2**32:
    raise ConfigError(f"seed={seed} must be in [0, 2**32).")
  if process_index is None or process_count is None:
    import jax
    process_index, process_count = jax.process_index(), jax.process_count()
  if masking_schedule is not None:  # Rows are masked at the highest rate, then thinned per step.
    masked_lm_prob = masking_schedule.max_rate
  spec, cls_id, sep_id, meta = _masking_spec(data_dir, tokenizer, masked_lm_prob,
                                             max_predictions, whole_word_mask)
  segmenter_words = whole_word_mask and bool(meta.get("options", {}).get("whole_word_segmenter"))
  thin = None if masking_schedule is None else functools.partial(
      mask_schedule.ScheduledMaskingIterDataset, schedule=masking_schedule, spec=spec, seed=seed,
      process_index=process_index, segmenter_words=segmenter_words)
  num_docs = meta["splits"].get(split, 0)
  if num_docs < process_count:
    raise DataError(f"Split {split!r} of {data_dir} has {num_docs} documents, fewer than the "
                    f"{process_count} processes (splits: {meta['splits']}); prepare more data "
                    "or a larger validation_fraction.")
  docs = _Documents(data_dir, split, word_starts=segmenter_words)
  ds = grain.MapDataset.range(num_docs)[process_index::process_count]
  if shuffle:
    ds = ds.shuffle(seed=seed)
  ds = ds.repeat(num_epochs)
  read = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=max(2 * num_threads, 8))
  if nsp_mode == "none":
    ds = ContiguousIterDataset(ds.map(_DocumentStream(docs, sep_id)).to_iter_dataset(read),
                               length=seq_len - 2)
    ds = ds.map(functools.partial(
        _contiguous_row, seq_len=seq_len, max_predictions=max_predictions, spec=spec,
        cls_id=cls_id, sep_id=sep_id, seed=seed, process_index=process_index, pack=pack,
        with_document_index=with_document_index))
    return _batched(ds, batch_size, drop_remainder, prefetch_batches, thin)
  ds = ds.map_with_index(_MakeInstances(docs, num_docs, seed, seq_len, short_seq_prob, nsp_mode,
                                        spec, cls_id, sep_id))
  ds = ds.to_iter_dataset(read)
  ds = grain.experimental.FlatMapIterDataset(ds, _Flatten())
  if pack:
    ds = PackIterDataset(ds, seq_len=seq_len, max_predictions=max_predictions,
                         max_packed=max_packed)
    ds = ds.map(functools.partial(_packed_row, seq_len=seq_len, max_predictions=max_predictions,
                                  max_packed=max_packed,
                                  with_document_index=with_document_index))
  else:
    ds = ds.map(functools.partial(_row, seq_len=seq_len, max_predictions=max_predictions,
                                  with_document_index=with_document_index))
  return _batched(ds, batch_size, drop_remainder, prefetch_batches, thin)


def _batched(ds: grain.IterDataset, batch_size: int, drop_remainder: bool,
             prefetch_batches: int, thin=None) -> grain.IterDataset:
  ds = ds.batch(batch_size, drop_remainder=drop_remainder)
  if thin is not None:  # Inside the prefetch thread, off the train loop's path.
    ds = thin(ds)
  if prefetch_batches:
    ds = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=prefetch_batches)
  return ds


def to_global_arrays(batch: dict, mesh, sharding=None) -> dict:
  """Per-process numpy batch -> global jax.Arrays split along the batch dimension.

  `sharding`: a jax.sharding.Sharding, a PartitionSpec (used with `mesh`), or None for the
  leading dimension over the mesh's `data` and `fsdp` axes (sharding.DEFAULT_RULES' "batch").
  """
  import jax
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P
  if sharding is None:
    axes = tuple(a for a in ("data", "fsdp") if a in mesh.axis_names)
    sharding = P(axes or None)
  if isinstance(sharding, P):
    sharding = NamedSharding(mesh, sharding)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}
