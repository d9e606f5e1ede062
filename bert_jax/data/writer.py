"""Sharded ArrayRecord files in TFDS naming plus TFDS metadata, written without TFDS's builder.

TFDS's own writer keeps examples in memory before spilling (peak RSS grows with the corpus), so
each work unit streams its documents straight into its own ArrayRecord part files; finishing
renames the parts into `bert_pretraining-{split}.array_record-NNNNN-of-MMMMM` and writes
dataset_info.json / features.json / metadata.json, which `tfds.builder_from_directory` reads.
"""
from __future__ import annotations

import json
import os

import numpy as np

DATASET_NAME = "bert_pretraining"
SPLITS = ("train", "validation")
TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"
WORD_START_FILE = "word_start_mask.npy"
TOKENIZER_DIR = "tokenizer"  # The vocabulary the dataset was prepared with (Tokenizer.save).
DATASET_FILES = ("dataset_info.json", "features.json", "metadata.json", WORD_START_FILE,
                 TOKENIZER_DIR)


def features(word_starts: bool = False):
  """One example = one document: its token ids, flat, and the length of each sentence; with a
  segmenter (`word_starts`) also one uint8 per token, 1 where the token starts a word."""
  import tensorflow_datasets as tfds
  feats = {"ids": tfds.features.Tensor(shape=(None,), dtype=np.int32),
           "sentence_lengths": tfds.features.Tensor(shape=(None,), dtype=np.int32)}
  if word_starts:
    feats["word_starts"] = tfds.features.Tensor(shape=(None,), dtype=np.uint8)
  return tfds.features.FeaturesDict(feats)


def shard_name(split: str, shard: int, num_shards: int) -> str:
  return f"{DATASET_NAME}-{split}.array_record-{shard:05d}-of-{num_shards:05d}"


def is_dataset_file(name: str) -> bool:
  return name in DATASET_FILES or name.startswith(f"{DATASET_NAME}-")


class PartWriter:
  """Streams one unit's documents into `<prefix>.<split>.array_record.tmp` files."""

  def __init__(self, prefix: str, word_starts: bool = False):
    import tensorflow_datasets as tfds
    from array_record.python.array_record_module import ArrayRecordWriter
    self._feats = features(word_starts)
    self._serializer = tfds.core.example_serializer.ExampleSerializer(
        self._feats.get_serialized_info())
    self._paths = {s: f"{prefix}.{s}.array_record" for s in SPLITS}
    # group_size:1 is what TFDS uses: every record is randomly accessible on its own.
    self._writers = {s: ArrayRecordWriter(p + ".tmp", "group_size:1")
                     for s, p in self._paths.items()}
    self.counts = {s: 0 for s in SPLITS}

  def write(self, split: str, ids: np.ndarray, lengths: np.ndarray, word_starts=None):
    """One document: flat int32 `ids` and int32 `lengths` of its sentences (summing to len(ids)),
    and with a segmenter its uint8 `word_starts` (one per id)."""
    # Deterministic: protobuf's upb orders map entries (the features) differently in different
    # processes; sorted keys make a unit's bytes the same whichever worker or engine wrote it.
    doc = {"ids": ids, "sentence_lengths": lengths}
    if word_starts is not None:
      doc["word_starts"] = word_starts
    example = self._feats.encode_example(doc)
    self._writers[split].write(
        self._serializer.get_tf_example(example).SerializeToString(deterministic=True))
    self.counts[split] += 1

  def abort(self) -> None:
    """Closes and deletes the parts: the unit could not be read to its end."""
    for split, w in self._writers.items():
      w.close()
      os.remove(self._paths[split] + ".tmp")

  def close(self) -> dict[str, str]:
    """Closes and renames the parts into place; returns split -> path of non-empty parts."""
    done = {}
    for split, w in self._writers.items():
      w.close()
      tmp = self._paths[split] + ".tmp"
      if self.counts[split]:
        os.replace(tmp, self._paths[split])
        done[split] = self._paths[split]
      else:
        os.remove(tmp)
    return done


def write_dataset(staging: str, parts: dict[str, list[tuple[str, int]]], metadata: dict,
                  word_start: np.ndarray, description: str, place=None,
                  word_starts: bool = False):
  """Moves `parts` (split -> [(path, num_examples)]) into `staging` and writes the metadata.

  `place(path, shard_name) -> num_bytes`, when given, puts each part in the dataset folder itself
  (another file system: gs://...) instead; `staging` then gets only the metadata.
  """
  import tensorflow_datasets as tfds
  split_infos, stand_ins = [], []
  for split in SPLITS:
    files = parts.get(split, [])
    if not files:  # TFDS metadata cannot describe a split without shards; it is left out
      continue
    num_bytes = 0
    for shard, (path, _) in enumerate(files):
      staged = os.path.join(staging, shard_name(split, shard, len(files)))
      if place is None:
        os.replace(path, staged)
        num_bytes += os.path.getsize(staged)
      else:
        num_bytes += place(path, os.path.basename(staged))
        open(staged, "wb").close()  # TFDS reads the shard names from the folder
        stand_ins.append(staged)
    split_infos.append(tfds.core.SplitInfo(
        name=split, shard_lengths=[n for _, n in files], num_bytes=num_bytes,
        filename_template=tfds.core.ShardedFileTemplate(
            data_dir=staging, template=TEMPLATE, dataset_name=DATASET_NAME, split=split,
            filetype_suffix="array_record")))
  tfds.folder_dataset.write_metadata(
      data_dir=staging, features=features(word_starts), split_infos=split_infos,
      filename_template=TEMPLATE,
      check_data=False, description=description, metadata=tfds.core.MetadataDict(metadata))
  for path in stand_ins:
    os.remove(path)
  np.save(os.path.join(staging, WORD_START_FILE), np.asarray(word_start, bool))


def read_metadata(data_dir: str) -> dict:
  with open(os.path.join(data_dir, "metadata.json"), encoding="utf-8") as f:
    return json.load(f)
