"""The worker half of `prepare()`: one work unit of text -> ArrayRecord parts and a marker.

Both engines run exactly this per unit: the local engine in this process or in a process pool
(`preparation`), the Beam engine inside a DoFn (`beam_engine`). So both give byte-identical
datasets. A worker holds one tokenizer (`init_worker` in a fresh process, `use_tokenizer` in the
launching one); `process_unit` writes the unit's parts and, last, its marker
`<work>/unit-NNNNN.json`, whose presence says the unit is finished.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import time
import zlib
from collections.abc import Sequence

import numpy as np

from bert_jax.data import reading, segmentation, storage, writer

BATCH_SENTENCES = 2048  # sentences tokenized per encode_batch call
STAT_KEYS = ("bytes",  # uncompressed text bytes read
             "lines", "skipped_lines", "documents", "sentences", "tokens", "unk_tokens",
             "cpu_seconds")

_TOKENIZER = None  # this worker's tokenizer (one per process)


def init_worker(vocab_path, do_lower_case, strip_accents, single_thread: bool) -> None:
  """Loads this process's tokenizer; `single_thread`: workers, not threads, are the parallelism."""
  if single_thread:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ["RAYON_NUM_THREADS"] = "1"
  from bert_jax.tokenization import Tokenizer
  use_tokenizer(Tokenizer.from_vocab(vocab_path, do_lower_case, strip_accents=strip_accents))


def use_tokenizer(tokenizer) -> None:
  """Makes `tokenizer` (already loaded, e.g. by the launching process) this worker's."""
  global _TOKENIZER
  _TOKENIZER = tokenizer


def is_validation(sentences: Sequence[str], fraction: float) -> bool:
  """Deterministic held-out choice from the document's text (duplicates share a split)."""
  if fraction <= 0:
    return False
  digest = hashlib.blake2b("\n".join(sentences).encode("utf-8"), digest_size=8).digest()
  return int.from_bytes(digest, "little") / 2.0**64 < fraction


def marker_name(unit: reading.Unit) -> str:
  """The file that marks `unit` as finished inside the work folder."""
  return f"unit-{unit.index:05d}.json"


def process_unit(unit: reading.Unit, work: str, layout: str, doc_lines: int,
                 validation_fraction: float, segmenter: str = "") -> dict:
  """Tokenizes and writes one unit's documents; returns its marker (stats and parts).

  `segmenter` (e.g. "jieba"): also store per-token word starts (`segmentation`)."""
  if not storage.is_url(work):
    return _write_unit(unit, work, work, layout, doc_lines, validation_fraction, segmenter)
  # ArrayRecord writes local files: the parts are made in a temp folder and uploaded whole; the
  # marker, written last, says they are all there.
  with tempfile.TemporaryDirectory(prefix="bert_jax_unit") as local:
    return _write_unit(unit, local, work, layout, doc_lines, validation_fraction, segmenter)


def _encode(tok, sentences, segmenter):
  """[(ids, word-start flags or None)] per sentence."""
  if not segmenter:
    return [(ids, None) for ids in tok.encode_batch(sentences)]
  cut, vocab_start = segmentation.get(segmenter), tok.word_start_mask()
  return [(ids, segmentation.word_starts(s, cut(s), offsets, ids, vocab_start))
          for s, (ids, offsets) in zip(sentences, tok.encode_batch_offsets(sentences),
                                       strict=True)]


def _write_unit(unit, parts_dir, work, layout, doc_lines, validation_fraction,
                segmenter="") -> dict:
  cpu0 = time.process_time()
  tok = _TOKENIZER
  counts = {k: 0 for k in STAT_KEYS}
  split_docs = {s: 0 for s in writer.SPLITS}
  split_tokens = {s: 0 for s in writer.SPLITS}
  prefix = os.path.join(parts_dir, f"unit-{unit.index:05d}")
  out = writer.PartWriter(prefix, word_starts=bool(segmenter))

  def flush(docs):
    flat = [s for d in docs for s in d]
    encoded = _encode(tok, flat, segmenter)
    k = 0
    for doc in docs:
      pieces = [p for p in encoded[k:k + len(doc)] if p[0]]
      counts["skipped_lines"] += len(doc) - len(pieces)  # lines with no tokens at all
      k += len(doc)
      if not pieces:
        continue
      lengths = np.fromiter((len(p) for p, _ in pieces), np.int32, len(pieces))
      ids = np.concatenate([np.asarray(p, np.int32) for p, _ in pieces])
      starts = np.concatenate([f for _, f in pieces]) if segmenter else None
      split = "validation" if is_validation(doc, validation_fraction) else "train"
      out.write(split, ids, lengths, starts)
      counts["documents"] += 1
      counts["sentences"] += len(pieces)
      counts["tokens"] += len(ids)
      counts["unk_tokens"] += int(np.count_nonzero(ids == tok.unk_id))
      split_docs[split] += 1
      split_tokens[split] += len(ids)

  batch, n = [], 0
  try:
    for doc in reading.iter_documents(unit, layout, doc_lines, counts):
      batch.append(doc)
      n += len(doc)
      if n >= BATCH_SENTENCES:
        flush(batch)
        batch, n = [], 0
    if batch:
      flush(batch)
  except (OSError, EOFError, zlib.error) as e:  # e.g. a gzip file broken in the middle
    # The whole unit is left out (its parts deleted) so that every engine gives the same dataset;
    # prepare() then skips and lists it, or stops (on_bad_file="fail").
    out.abort()
    marker = {"unit": unit.index, "stats": {k: 0 for k in STAT_KEYS},
              "splits": {s: {"documents": 0, "tokens": 0} for s in writer.SPLITS}, "parts": {},
              "error": {"path": unit.path,
                        "reason": f"unreadable after byte {unit.start} ({e.__class__.__name__}: "
                                  f"{e})"}}
    storage.write_json(storage.join(work, marker_name(unit)), marker)
    return marker
  parts = out.close()
  if parts_dir != work:
    for path in parts.values():
      storage.upload(path, storage.join(work, os.path.basename(path)))
  counts["cpu_seconds"] = time.process_time() - cpu0
  marker = {"unit": unit.index, "stats": counts,
            "splits": {s: {"documents": split_docs[s], "tokens": split_tokens[s]}
                       for s in writer.SPLITS},
            "parts": {s: [os.path.basename(p), split_docs[s]] for s, p in parts.items()}}
  storage.write_json(storage.join(work, marker_name(unit)), marker)
  return marker
