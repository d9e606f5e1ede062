"""Retrieval data on disk: training pairs and BEIR-layout evaluation sets, read and written.

Training pairs, one example per line or row:
  JSONL  {"query": "...", "positive": "...", "negatives": ["...", ...]}   (negatives optional)
  CSV / TSV with a header: query, positive, and any columns named negative* (hard negatives)
An evaluation set is a folder in BEIR's layout:
  corpus.jsonl   {"_id": "d1", "title": "...", "text": "..."}   (title optional)
  queries.jsonl  {"_id": "q1", "text": "..."}
  qrels/SPLIT.tsv  query-id <TAB> corpus-id <TAB> score, after a header line
Every problem stops with one DataError naming the file, the line and what is wrong: a missing
field, an empty text, a duplicate id, a judgement naming a query or document that does not exist.
Writers go through a temporary sibling renamed into place (nothing half-written on failure).
"""
from __future__ import annotations

import csv
import dataclasses
import json
import pathlib

from bert_jax.errors import DataError

FORMATS = ("auto", "jsonl", "csv", "tsv")


@dataclasses.dataclass
class Pairs:
  queries: list[str]
  positives: list[str]
  negatives: list[list[str]]  # per example, possibly empty
  lines: list[int] = dataclasses.field(default_factory=list)  # where each example was read


@dataclasses.dataclass
class EvalSet:
  query_ids: list[str]
  queries: list[str]
  doc_ids: list[str]
  docs: list[str]
  qrels: dict[str, dict[str, float]]  # query id -> {doc id: relevance > 0}


def _format(path: pathlib.Path, fmt: str) -> str:
  if fmt not in FORMATS:
    raise DataError(f"data.format={fmt!r} is not one of {', '.join(FORMATS)}.")
  if fmt != "auto":
    return fmt
  return {".csv": "csv", ".tsv": "tsv"}.get(path.suffix.lower(), "jsonl")


def _text(path, line: int, obj: dict, key: str, what: str = "") -> str:
  if key not in obj or obj[key] is None:
    raise DataError(f"{path}:{line} has no {key!r} field{what}; every line needs one.")
  value = obj[key]
  if not isinstance(value, str):
    raise DataError(f"{path}:{line} field {key!r} is a {type(value).__name__}, not a text.")
  if not value.strip():
    raise DataError(f"{path}:{line} field {key!r} is empty; remove the line or fill in the text.")
  return value.strip()


def _jsonl(path: pathlib.Path):
  """(line number, object) for each non-blank line of a JSONL file."""
  if not path.is_file():
    raise DataError(f"{path} does not exist; check the path in the config.")
  with open(path, encoding="utf-8-sig") as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        obj = json.loads(line)
      except json.JSONDecodeError as e:
        raise DataError(f"{path}:{n} is not valid JSON ({e.msg}); write one object per line."
                        ) from None
      if not isinstance(obj, dict):
        raise DataError(f"{path}:{n} is a JSON {type(obj).__name__}, not an object.")
      yield n, obj


def _table(path: pathlib.Path, delimiter: str):
  """(line number, row dict) for each data row of a CSV / TSV file with a header."""
  if not path.is_file():
    raise DataError(f"{path} does not exist; check the path in the config.")
  with open(path, encoding="utf-8-sig", newline="") as f:
    reader = csv.reader(f, delimiter=delimiter,
                        quoting=csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL)
    header = next(reader, None)
    if header is None:
      raise DataError(f"{path} is empty; write a header line and one pair a row.")
    header = [h.strip() for h in header]
    for row in reader:
      if not any(c.strip() for c in row):
        continue
      if len(row) > len(header):
        raise DataError(f"{path}:{reader.line_num} has {len(row)} columns but the header "
                        f"{header} has {len(header)}.")
      yield reader.line_num, {h: c for h, c in zip(header, row, strict=False)}


def read_pairs(path, fmt: str = "auto") -> Pairs:
  """Training pairs (see the module docstring) from a JSONL, CSV or TSV file."""
  path = pathlib.Path(path)
  kind = _format(path, fmt)
  rows = _jsonl(path) if kind == "jsonl" else _table(path, "," if kind == "csv" else "\t")
  out = Pairs([], [], [])
  for n, obj in rows:
    out.queries.append(_text(path, n, obj, "query"))
    out.positives.append(_text(path, n, obj, "positive"))
    if kind == "jsonl":
      negs = obj.get("negatives") or []
      if not isinstance(negs, list):
        raise DataError(f"{path}:{n} field 'negatives' is not a list of texts.")
      negs = [_text(path, n, {"negatives": t}, "negatives") for t in negs]
    else:
      negs = [_text(path, n, obj, k) for k in sorted(obj) if k.startswith("negative")
              and (obj[k] or "").strip()]
    out.negatives.append(negs)
    out.lines.append(n)
  if not out.queries:
    raise DataError(f"{path} holds no pairs; write one query/positive pair a line.")
  return out


def _read_ids(path: pathlib.Path, what: str, with_title: bool) -> tuple[list[str], list[str]]:
  ids, texts, seen = [], [], {}
  for n, obj in _jsonl(path):
    if "_id" not in obj:
      raise DataError(f"{path}:{n} has no '_id' field; every {what} needs one.")
    key = str(obj["_id"])
    if key in seen:
      raise DataError(f"{path}:{n} repeats {what} id {key!r} (first on line {seen[key]}); ids "
                      "must be unique.")
    seen[key] = n
    text = _text(path, n, obj, "text")
    title = (obj.get("title") or "").strip() if with_title else ""
    ids.append(key)
    texts.append(f"{title} {text}" if title else text)  # As BEIR / sentence-transformers join.
  if not ids:
    raise DataError(f"{path} holds no {what}s.")
  return ids, texts


def read_beir(folder, split: str = "test") -> EvalSet:
  """A BEIR-layout folder (corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv); queries without a
  positive judgement are dropped, as BEIR does."""
  folder = pathlib.Path(folder)
  if not folder.is_dir():
    raise DataError(f"Evaluation folder {folder} does not exist; point data.dev_dir at a folder "
                    "with corpus.jsonl, queries.jsonl and qrels/.")
  doc_ids, docs = _read_ids(folder / "corpus.jsonl", "document", with_title=True)
  query_ids, queries = _read_ids(folder / "queries.jsonl", "query", with_title=False)
  qrels_path = folder / "qrels" / f"{split}.tsv"
  if not qrels_path.is_file():
    raise DataError(f"{qrels_path} does not exist; write the judgements there (or set "
                    "data.dev_split to the qrels file's name).")
  known_docs, known_queries = set(doc_ids), set(query_ids)
  qrels: dict[str, dict[str, float]] = {}
  with open(qrels_path, encoding="utf-8-sig") as f:
    for n, line in enumerate(f, 1):
      parts = line.rstrip("\r\n").split("\t")
      if n == 1 and parts[0] == "query-id" or not line.strip():
        continue
      if len(parts) != 3:
        raise DataError(f"{qrels_path}:{n} has {len(parts)} tab-separated fields; write "
                        "query-id, corpus-id, score.")
      qid, did, score = parts
      if qid not in known_queries:
        raise DataError(f"{qrels_path}:{n} names query {qid!r}, which is not in queries.jsonl.")
      if did not in known_docs:
        raise DataError(f"{qrels_path}:{n} names document {did!r}, which is not in "
                        "corpus.jsonl.")
      try:
        value = float(score)
      except ValueError:
        raise DataError(f"{qrels_path}:{n} has score {score!r}, which is not a number.") from None
      if did in qrels.get(qid, {}):
        raise DataError(f"{qrels_path}:{n} judges the pair ({qid}, {did}) a second time.")
      if value > 0:
        qrels.setdefault(qid, {})[did] = value
  keep = [i for i, q in enumerate(query_ids) if q in qrels]
  if not keep:
    raise DataError(f"{qrels_path} has no positive judgement; nothing can be evaluated.")
  return EvalSet([query_ids[i] for i in keep], [queries[i] for i in keep], doc_ids, docs, qrels)


# ------------------------------------------------------------------ writing
def _write_lines(path: pathlib.Path, lines) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    for line in lines:
      f.write(line + "\n")
  tmp.replace(path)


def write_pairs(path, pairs: Pairs) -> None:
  """JSONL pairs (negatives written only where there are some)."""
  def lines():
    for q, p, negs in zip(pairs.queries, pairs.positives, pairs.negatives, strict=True):
      obj = {"query": q, "positive": p}
      if negs:
        obj["negatives"] = negs
      yield json.dumps(obj, ensure_ascii=False)
  _write_lines(pathlib.Path(path), lines())


def write_beir(folder, ev: EvalSet, split: str = "test") -> None:
  folder = pathlib.Path(folder)
  _write_lines(folder / "corpus.jsonl", (json.dumps({"_id": i, "title": "", "text": t},
                                                    ensure_ascii=False)
                                         for i, t in zip(ev.doc_ids, ev.docs, strict=True)))
  _write_lines(folder / "queries.jsonl", (json.dumps({"_id": i, "text": t}, ensure_ascii=False)
                                          for i, t in zip(ev.query_ids, ev.queries, strict=True)))
  _write_lines(folder / "qrels" / f"{split}.tsv",
               ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{int(s) if s == int(s) else s}"
                                                 for q, ds in ev.qrels.items()
                                                 for d, s in ds.items()])
