"""Raw text to documents: input globs, file checks, byte-range work units and the three layouts.

Layouts (a document is a list of sentences):
  sentences  one sentence per line, a blank line between documents (google-research/bert).
  lines      one sentence per line, no document markers: every `doc_lines` consecutive lines form a
             document (a blank line also ends one). The embedded Bible uses this (one verse a line).
  documents  one document per line, split into sentences at . ! ? and 。！？ (Chinese works).

Large uncompressed files are cut into byte ranges so that several workers share one file. A
range owns the lines that start inside it; with `sentences` it owns the documents that begin after
a blank line inside it (or at the file start), reading past its end to finish the last one.
"""
from __future__ import annotations

import contextlib
import dataclasses
import glob
import gzip
import os
import re
from collections.abc import Iterator, Sequence

from bert_jax.data import storage
from bert_jax.errors import DataError

LAYOUTS = ("sentences", "lines", "documents")
DEFAULT_DOC_LINES = 32
_HEAD_BYTES = 1 << 16
# Split after sentence-final punctuation followed by space, or after CJK full stops.
_SENTENCE_END = re.compile(r"(?<=[.!?…])[\"'”’)\]]*\s+|(?<=[。！？])[”」』）]*")


@dataclasses.dataclass(frozen=True)
class Unit:
  """A byte range [start, end) of one input file (end=-1: to the end); the unit of work."""
  index: int
  path: str
  start: int
  end: int
  size: int

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


def expand_inputs(inputs: str | Sequence[str], urls: bool = False) -> list[str]:
  """Comma-separated globs, files or folders -> sorted unique files; refuses a pattern with none.

  URLs (gs://...) are listed through Apache Beam's file systems, and only when `urls` is true.
  """
  if isinstance(inputs, (str, os.PathLike)):
    inputs = [inputs]
  patterns = [p.strip() for item in inputs for p in str(item).split(",") if p.strip()]
  if not patterns:
    raise DataError("No input given; pass --input=FILE_OR_GLOB[,FILE_OR_GLOB...].")
  files: list[str] = []
  for pattern in patterns:
    if storage.is_url(pattern):
      if not urls:
        raise DataError(f"Input {pattern} is a URL; only `bert_jax.prepare --engine=beam` reads "
                        "URLs (through Apache Beam's file systems): copy the files to a local "
                        "folder otherwise.")
      if problem := storage.url_problem(pattern):
        raise DataError(f"Input {pattern} cannot be read: {problem}.")
      if not (matches := storage.glob(pattern)):
        raise DataError(f"Input {pattern!r} matches no file; check the URL.")
      files.extend(matches)
      continue
    matches = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
    if not matches:
      raise DataError(f"Input {pattern!r} matches no file; check the path (quote globs so the "
                      "shell does not expand them).")
    for m in matches:
      if os.path.isdir(m):
        files.extend(sorted(os.path.join(root, f) for root, _, names in os.walk(m)
                            for f in names if not f.startswith(".")))
      else:
        files.append(m)
  return sorted(dict.fromkeys(f if storage.is_url(f) else os.path.abspath(f) for f in files))


def _open(path: str):
  if storage.is_url(path):
    return _open_url(path)
  return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


@contextlib.contextmanager
def _open_url(path: str):
  with storage.open_read(path) as raw:
    if path.endswith(".gz"):
      with gzip.GzipFile(fileobj=raw, mode="rb") as f:  # closes f, not raw: both are closed here
        yield f
    else:
      yield raw


def check_file(path: str) -> str | None:
  """Why a file cannot be used ('empty', 'binary', 'not UTF-8', ...), or None when it is text."""
  try:
    if storage.size(path) == 0:
      return "empty"
    with _open(path) as f:
      head = f.read(_HEAD_BYTES)
  except (OSError, EOFError, gzip.BadGzipFile) as e:
    return f"unreadable ({e.__class__.__name__}: {e})"
  if not head.strip():
    return "empty"
  if b"\x00" in head:
    return "binary (contains NUL bytes)"
  # A file whose opening lines are mostly not UTF-8 is another encoding: skip it whole. A few bad
  # lines in a UTF-8 file are skipped one by one (and counted) while reading.
  lines = head.split(b"\n")[:-1] or [head]
  bad = 0
  for line in lines:
    try:
      line.decode("utf-8")
    except UnicodeDecodeError:
      bad += 1
  if bad > len(lines) // 2:
    return f"not UTF-8 ({bad} of the first {len(lines)} lines){encoding_hint(head, path)}"
  return None


def encoding_hint(raw: bytes, path: str) -> str:
  """'; it reads as GB18030: convert it with iconv ...' when the bytes are Chinese GB18030 text."""
  try:
    text = raw[:_HEAD_BYTES].decode("gb18030")
  except UnicodeDecodeError:
    return ""
  if sum(map(is_cjk, text)) < len(text) // 10:
    return ""
  return (f"; it reads as GB18030 (GBK) Chinese text: convert it first, e.g. "
          f"iconv -f GB18030 -t UTF-8 {path} > {os.path.basename(path)}.utf8.txt")


def is_cjk(ch: str) -> bool:
  """A CJK ideograph (the ranges BERT's tokenizer splits into single characters)."""
  cp = ord(ch)
  return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
          or 0x2A700 <= cp <= 0x2CEAF or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


def head_lines(path: str, num_bytes: int = _HEAD_BYTES) -> list[str]:
  """The UTF-8 lines within the first `num_bytes` of a file (a sample, e.g. for the UNK rate)."""
  with _open(path) as f:
    raw = f.read(num_bytes)
  lines = raw.split(b"\n")
  if len(lines) > 1:
    lines = lines[:-1]  # the last may be cut in the middle
  return [t for t in (l.decode("utf-8", "ignore").strip() for l in lines) if t]


def plan_units(files: Sequence[str], chunk_bytes: int) -> list[Unit]:
  """Work units: one per gzip file, byte ranges of `chunk_bytes` for plain files."""
  units: list[Unit] = []
  for path in files:
    size = storage.size(path)
    if path.endswith(".gz") or chunk_bytes <= 0 or size <= chunk_bytes:
      units.append(Unit(len(units), path, 0, -1, size))
      continue
    for start in range(0, size, chunk_bytes):
      end = min(start + chunk_bytes, size)
      units.append(Unit(len(units), path, start, -1 if end >= size else end, end - start))
  return units


def _raw_lines(unit: Unit) -> Iterator[tuple[int, bytes]]:
  """(offset, line bytes) from the first line starting at or after unit.start to EOF."""
  with _open(unit.path) as f:
    pos = 0
    if unit.start > 0:
      f.seek(unit.start - 1)
      pos = unit.start - 1 + len(f.readline())  # finish the line that straddles the start
    for line in f:
      yield pos, line
      pos += len(line)


def _decoded(unit: Unit, counts: dict) -> Iterator[tuple[int, str | None]]:
  """(offset, stripped text) per line; None for a line that is not UTF-8 (counted, skipped).

  `counts["bytes"]` grows by every line read (a range's few lines read past its end included).
  """
  first = unit.start == 0
  for pos, raw in _raw_lines(unit):
    try:
      text = raw.decode("utf-8")
    except UnicodeDecodeError:
      counts["skipped_lines"] += 1
      counts["bytes"] += len(raw)
      yield pos, None
      continue
    if first:
      text, first = text.lstrip("\ufeff"), False
    counts["bytes"] += len(raw)
    yield pos, text.strip()


def split_sentences(text: str) -> list[str]:
  return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


def iter_documents(unit: Unit, layout: str, doc_lines: int, counts: dict) -> Iterator[list[str]]:
  """Documents (lists of sentences) owned by `unit`; `counts` gains lines / skipped_lines."""
  end = unit.end if unit.end >= 0 else float("inf")
  if layout == "documents":
    for pos, text in _decoded(unit, counts):
      if pos >= end:
        return
      counts["lines"] += 1
      if text:
        yield split_sentences(text)
    return
  if layout not in ("sentences", "lines"):
    raise DataError(f"Unknown layout {layout!r}; use one of {', '.join(LAYOUTS)}.")
  by_blank = layout == "sentences"
  started = unit.start == 0 or not by_blank
  doc: list[str] = []
  for pos, text in _decoded(unit, counts):
    if by_blank:
      if not started:  # skip the tail of a document owned by the previous range
        if pos >= end:
          return
        started = text == ""
        continue
      if pos >= end and text == "":  # documents after this blank line belong to the next range
        break
    elif pos >= end:
      break
    counts["lines"] += 1
    if text is None:
      continue
    if text:
      doc.append(text)
    if doc and (text == "" or (doc_lines > 0 and len(doc) >= doc_lines)):
      yield doc
      doc = []
  if doc:
    yield doc
