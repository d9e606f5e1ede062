"""Preparation on real corpora: contents, chunked/parallel/multi-host equivalence, resume, bad
input, Chinese, SentencePiece, and bounded memory (subprocesses)."""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from bert_jax.data import DataError, default_corpus_path, prepare, worker
from bert_jax.tokenization import Tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _snapshot(folder) -> dict:
  """Every file below `folder` (the dataset holds a tokenizer/ folder) with its bytes."""
  return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
          if p.is_file()}


def _docs(data_dir, split="train"):
  """The split's documents as a sorted list of tuples of sentence-id tuples."""
  import tensorflow_datasets as tfds
  src = tfds.builder_from_directory(str(data_dir)).as_data_source(split)
  out = []
  for i in range(len(src)):
    r = src[i]
    out.append(tuple(tuple(s.tolist()) for s in
                     np.split(r["ids"], np.cumsum(r["sentence_lengths"])[:-1])))
  return sorted(out)


@pytest.fixture(scope="module")
def tok(vocab_path):
  return Tokenizer.from_vocab(vocab_path)


@pytest.fixture(scope="module")
def moby(mobydick_path):
  """Moby Dick: hard-wrapped paragraphs between blank lines, CRLF, a BOM; 1.2 MB."""
  return mobydick_path


def test_bible_lines_layout_matches_corpus(tmp_path, tok):
  out = tmp_path / "ds"
  stats = prepare(default_corpus_path(), out, tok, layout="lines", doc_lines=32,
                  validation_fraction=0.05, progress=False)
  with gzip.open(default_corpus_path(), "rt", encoding="utf-8") as f:
    lines = [l.strip() for l in f if l.strip()]
  assert stats["lines"] == stats["sentences"] == len(lines)
  assert stats["documents"] == -(-len(lines) // 32)
  assert stats["splits"]["train"]["documents"] + stats["splits"]["validation"]["documents"] == \
      stats["documents"]
  assert 0.02 < stats["splits"]["validation"]["documents"] / stats["documents"] < 0.09
  assert stats["unk_rate"] < 1e-3 and stats["skipped_files"] == 0
  meta = json.loads((out / "metadata.json").read_text())
  assert meta["vocab_fingerprint"] == tok.fingerprint and meta["stats"]["tokens"] == stats["tokens"]
  docs = _docs(out) + _docs(out, "validation")
  assert sum(len(d) for d in docs) == len(lines)
  # Document k holds lines [32k, 32k + 32) tokenized exactly as the tokenizer does.
  expected = tuple(tuple(ids) for ids in tok.encode_batch(lines[64:96]))
  assert expected in set(docs)
  assert not [n for n in os.listdir(out) if n.startswith(".")]


@pytest.mark.parametrize("layout,workers", [("sentences", 2), ("documents", 1)])
def test_byte_ranges_and_workers_give_the_same_dataset(tmp_path, tok, moby, layout, workers):
  one = tmp_path / "one"
  prepare(str(moby), one, tok, layout=layout, progress=False)
  many = tmp_path / "many"
  stats = prepare(str(moby), many, tok, layout=layout, chunk_mb=0.1, num_workers=workers,
                  progress=False)
  n_units = len(os.listdir(many)) - 4  # shard files besides the 4 metadata files
  assert n_units > 12
  for split in ("train", "validation"):
    assert _docs(one, split) == _docs(many, split)
  assert stats["documents"] == len(_docs(many)) + len(_docs(many, "validation"))


def test_multi_host_and_resume(tmp_path, tok, moby, monkeypatch):
  ref = tmp_path / "ref"
  prepare(str(moby), ref, tok, chunk_mb=0.2, progress=False)
  hosts = tmp_path / "hosts"
  part = prepare(str(moby), hosts, tok, chunk_mb=0.2, host_index=1, host_count=2,
                 progress=False)
  assert part["documents"] > 0 and not (hosts / "dataset_info.json").exists()
  # Host 0 gets interrupted after two of its units, then a rerun finishes only the rest.
  real, calls = worker.process_unit, []

  def flaky(unit, *args):
    if len(calls) == 2:
      raise KeyboardInterrupt
    calls.append(unit.index)
    return real(unit, *args)

  monkeypatch.setattr(worker, "process_unit", flaky)
  with pytest.raises(KeyboardInterrupt):
    prepare(str(moby), hosts, tok, chunk_mb=0.2, progress=False)
  monkeypatch.setattr(worker, "process_unit",
                      lambda unit, *a: calls.append(unit.index) or real(unit, *a))
  stats = prepare(str(moby), hosts, tok, chunk_mb=0.2, progress=False)
  assert len(calls) == len(set(calls)) and all(i % 2 == 0 for i in calls)
  assert _docs(ref) == _docs(hosts) and _docs(ref, "validation") == _docs(hosts, "validation")
  assert stats["tokens"] == json.loads((ref / "metadata.json").read_text())["stats"]["tokens"]


def test_bad_inputs_are_skipped_and_counted(tmp_path, tok, bible_path):
  good = tmp_path / "in" / "good.txt"
  good.parent.mkdir()
  text = bible_path.read_text(encoding="utf-8").splitlines()[300:700]
  good.write_bytes(("\n".join(text[:200]) + "\n").encode() + b"bad \xff\xfe line\n" +
                   ("\n".join(text[200:]) + "\n").encode())
  (tmp_path / "in" / "empty.txt").write_bytes(b"")
  (tmp_path / "in" / "blank.txt").write_text("\n\n  \n")
  (tmp_path / "in" / "binary.txt").write_bytes(bytes(range(256)) * 40)
  (tmp_path / "in" / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1") * 50)
  (tmp_path / "in" / "broken.gz").write_bytes(b"\x1f\x8b not really gzip")
  stats = prepare(str(tmp_path / "in"), tmp_path / "ds", tok, layout="lines", progress=False)
  reasons = {os.path.basename(s["path"]): s["reason"] for s in stats["skipped_file_list"]}
  assert stats["skipped_files"] == 5
  assert reasons["empty.txt"] == reasons["blank.txt"] == "empty"
  assert reasons["binary.txt"].startswith("binary") and reasons["latin1.txt"].startswith("not UTF")
  assert reasons["broken.gz"].startswith("unreadable")
  assert stats["skipped_lines"] == 1 and stats["sentences"] == 400


def test_refusals_change_nothing(tmp_path, tok, bible_path):
  with pytest.raises(DataError, match="matches no file"):
    prepare(str(tmp_path / "missing*.txt"), tmp_path / "ds", tok)
  (tmp_path / "empty.txt").write_bytes(b"")
  with pytest.raises(DataError, match="No usable input"):
    prepare(str(tmp_path / "empty.txt"), tmp_path / "ds", tok)
  assert not (tmp_path / "ds").exists()
  small = tmp_path / "small.txt"
  small.write_text("\n".join(bible_path.read_text(encoding="utf-8").splitlines()[:300]))
  out = tmp_path / "ds"
  prepare(str(small), out, tok, layout="lines", progress=False)
  before = _snapshot(out)
  with pytest.raises(DataError, match="already holds a prepared dataset"):
    prepare(str(small), out, tok, layout="lines", doc_lines=8, progress=False)
  with pytest.raises(DataError, match="layout"):
    prepare(str(small), tmp_path / "x", tok, layout="paragraphs")
  assert _snapshot(out) == before
  stats = prepare(str(small), out, tok, layout="lines", doc_lines=8, overwrite=True,
                  progress=False)
  assert stats["documents"] == -(-300 // 8) and set(_snapshot(out)) == set(before)
  # The CLI: one sentence on stderr, exit status 2, no traceback.
  proc = subprocess.run([sys.executable, "-m", "bert_jax.cli.prepare", f"--input={small}",
                         f"--output_dir={out}", f"--vocab={tok.vocab_path}"],
                        capture_output=True, text=True, cwd=REPO)
  assert proc.returncode == 2 and "already holds" in proc.stderr
  assert "Traceback" not in proc.stderr


def test_chinese_documents_layout(tmp_path):
  from bert_jax.vocab import train_vocab
  text = ("學而時習之，不亦說乎？有朋自遠方來，不亦樂乎？人不知而不慍，不亦君子乎？\n"
          "溫故而知新，可以為師矣。知之為知之，不知為不知，是知也。\n")
  (tmp_path / "zh.txt").write_text(text * 3, encoding="utf-8")
  vocab = train_vocab(str(tmp_path / "zh.txt"), str(tmp_path / "vocab.txt"), vocab_size=100)
  tok = Tokenizer.from_vocab(vocab)
  stats = prepare(str(tmp_path / "zh.txt"), tmp_path / "ds", tok, layout="documents",
                  validation_fraction=0, progress=False)
  assert stats["documents"] == 6 and stats["sentences"] == 15 and stats["unk_tokens"] == 0
  doc = [d for d in _docs(tmp_path / "ds") if len(d) == 3][0]
  assert tok.decode(doc[0]).replace(" ", "") == "學而時習之，不亦說乎？"


def test_sentencepiece_vocabulary(tmp_path, mobydick_path):
  spm = os.path.join(REPO, "tests", "data", "botchan_en_unigram_1000.model")
  stats = prepare(str(mobydick_path), tmp_path / "ds", spm, progress=False)
  meta = json.loads((tmp_path / "ds" / "metadata.json").read_text())
  assert meta["tokenizer_kind"] == "sentencepiece" and stats["tokens"] > 100_000
  assert meta["vocab_fingerprint"] == Tokenizer.from_vocab(spm).fingerprint


_RSS_SCRIPT = """
import resource, sys
from bert_jax.data import prepare
stats = prepare(sys.argv[1], sys.argv[2], sys.argv[3], layout="lines", progress=False)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, stats["tokens"])
"""


def test_peak_memory_does_not_grow_with_corpus(tmp_path, bible_path, vocab_path):
  text = bible_path.read_bytes()
  small, large = tmp_path / "1x.txt", tmp_path / "4x.txt"
  small.write_bytes(text[: len(text) // 4])
  large.write_bytes(text)
  rss = {}
  for path in (small, large):
    out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(path), str(tmp_path / path.stem),
                          str(vocab_path)], capture_output=True, text=True, cwd=REPO, check=True)
    kb, tokens = map(int, out.stdout.split())
    rss[path.stem] = (kb, tokens)
  assert rss["4x"][1] > 3.5 * rss["1x"][1]
  assert rss["4x"][0] < 1.3 * rss["1x"][0], rss
