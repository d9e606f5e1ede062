"""The Beam engine of `prepare()`: the same dataset as the local engine on real corpora (decoded
example by example), a broken file counted or stopping the job, resume across engines, refusals."""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from bert_jax.data import DataError, prepare, worker, writer
from bert_jax.tokenization import Tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
try:
  import apache_beam  # noqa: F401
  HAVE_BEAM = True
except ImportError:
  HAVE_BEAM = False
needs_beam = pytest.mark.skipif(
    not HAVE_BEAM, reason="apache-beam is not installed (pip install 'bert_jax[beam]').")
TWO_WORKERS = "--runner=DirectRunner --direct_num_workers=2 --direct_running_mode=multi_processing"
IN_PROCESS = "--runner=DirectRunner --direct_num_workers=1"


@pytest.fixture(scope="module")
def tok(vocab_path):
  return Tokenizer.from_vocab(vocab_path)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, mobydick_path, bible_path):
  """Real text in 6 units: Moby Dick in 4 byte ranges, 2,000 Bible verses gzipped, and a gzip of
  Bible verses cut off in the middle (its header reads fine, it breaks after ~100 KB)."""
  d = tmp_path_factory.mktemp("beam_corpus")
  (d / "a-moby.txt").write_bytes(mobydick_path.read_bytes()[:400_000])
  verses = bible_path.read_bytes().splitlines(keepends=True)
  (d / "b-bible.txt.gz").write_bytes(gzip.compress(b"".join(verses[:2000])))
  broken = gzip.compress(b"".join(verses[2000:6000]))
  (d / "c-broken.txt.gz").write_bytes(broken[: len(broken) // 2])
  return d


ARGS = {"layout": "sentences", "doc_lines": 16, "validation_fraction": 0.05, "chunk_mb": 0.1,
        "progress": False}


@pytest.fixture(scope="module")
def reference(corpus, tok, tmp_path_factory):
  """The local engine's dataset and statistics."""
  out = tmp_path_factory.mktemp("ref") / "local"
  return out, prepare(str(corpus), out, tok, **ARGS)


def _examples(data_dir):
  """{(split, shard file, index): (ids, sentence_lengths)} decoded with TFDS."""
  import tensorflow_datasets as tfds
  builder = tfds.builder_from_directory(str(data_dir))
  out = {}
  for split, info in builder.info.splits.items():
    src = builder.as_data_source(split)
    shard_start = np.cumsum([0] + list(info.shard_lengths))
    for i in range(len(src)):
      shard = int(np.searchsorted(shard_start, i, side="right") - 1)
      r = src[i]
      name = writer.shard_name(split, shard, len(info.shard_lengths))
      out[(split, name, int(i - shard_start[shard]))] = (r["ids"].tolist(),
                                                         r["sentence_lengths"].tolist())
  return out


def _comparable(stats):
  return {k: v for k, v in stats.items() if k not in ("seconds", "cpu_seconds")}


def _assert_same_dataset(ref_dir, ref_stats, out, stats):
  assert _comparable(stats) == _comparable(ref_stats)
  want, got = _examples(ref_dir), _examples(out)
  assert sorted(want) == sorted(got)
  for key, (ids, lengths) in want.items():
    assert got[key] == (ids, lengths), key
  assert {k[0] for k in want} == {"train", "validation"}
  meta, ref_meta = (json.loads((d / "metadata.json").read_text()) for d in (out, ref_dir))
  for m in (meta, ref_meta):
    m["stats"].pop("cpu_seconds")
  assert meta == ref_meta
  # With deterministic serialization the shard files are the same bytes.
  for name in os.listdir(ref_dir):
    if name.startswith(writer.DATASET_NAME):
      assert (out / name).read_bytes() == (ref_dir / name).read_bytes(), name


@needs_beam
def test_two_beam_workers_give_the_local_dataset(tmp_path, corpus, tok, reference):
  ref_dir, ref_stats = reference
  assert ref_stats["skipped_files"] == 1 and ref_stats["documents"] > 500
  assert ref_stats["skipped_file_list"][0]["path"].endswith("c-broken.txt.gz")
  assert "unreadable" in ref_stats["skipped_file_list"][0]["reason"]
  out = tmp_path / "beam"
  stats = prepare(str(corpus), out, tok, engine="beam", beam_options=TWO_WORKERS, **ARGS)
  _assert_same_dataset(ref_dir, ref_stats, out, stats)
  # The Bible verses are all there, in 16-verse documents, tokenized as the tokenizer does.
  verses = gzip.decompress((corpus / "b-bible.txt.gz").read_bytes()).decode().splitlines()
  expected = tok.encode_batch([v.strip() for v in verses[160:176]])
  docs = _examples(out).values()
  assert (sum(expected, []), [len(e) for e in expected]) in docs


@needs_beam
def test_bad_file_stops_the_job_and_a_rerun_finishes_it(tmp_path, corpus, tok, reference,
                                                        monkeypatch):
  ref_dir, ref_stats = reference
  out = tmp_path / "mixed"
  for var in ("TOKENIZERS_PARALLELISM", "RAYON_NUM_THREADS", "PYTHONPATH"):
    monkeypatch.delenv(var, raising=False)  # in-process Beam workers set them; restored after
  real, calls = worker.process_unit, []

  def interrupted(unit, *args):
    if len(calls) == 2:
      raise KeyboardInterrupt
    calls.append(unit.index)
    return real(unit, *args)

  # The local engine is interrupted after two units ...
  monkeypatch.setattr(worker, "process_unit", interrupted)
  with pytest.raises(KeyboardInterrupt):
    prepare(str(corpus), out, tok, **ARGS)
  # ... Beam (in process, so that the calls can be counted) does the rest and stops on the
  # broken file without writing a dataset ...
  monkeypatch.setattr(worker, "process_unit",
                      lambda unit, *a: calls.append(unit.index) or real(unit, *a))
  with pytest.raises(DataError, match="c-broken.txt.gz is unreadable"):
    prepare(str(corpus), out, tok, engine="beam", beam_options=IN_PROCESS, on_bad_file="fail",
            **ARGS)
  assert not (out / "dataset_info.json").exists()
  assert sorted(calls) == list(range(6))
  # ... and a rerun that skips bad files redoes only the broken unit: nothing is duplicated.
  stats = prepare(str(corpus), out, tok, engine="beam", beam_options=IN_PROCESS, **ARGS)
  assert sorted(calls) == [0, 1, 2, 3, 4, 5, 5]
  _assert_same_dataset(ref_dir, ref_stats, out, stats)


def test_refusals_before_any_work(tmp_path, tok, corpus, monkeypatch):
  out = tmp_path / "ds"
  with pytest.raises(DataError, match="Unknown engine"):
    prepare(str(corpus), out, tok, engine="spark")
  with pytest.raises(DataError, match="only for engine='beam'"):
    prepare(str(corpus), out, tok, beam_options=IN_PROCESS)
  with pytest.raises(DataError, match="on_bad_file"):
    prepare(str(corpus), out, tok, on_bad_file="ignore")
  # Without Apache Beam: one sentence saying what to install.
  monkeypatch.setitem(sys.modules, "apache_beam", None)
  monkeypatch.delitem(sys.modules, "bert_jax.data.beam_engine", raising=False)
  monkeypatch.delattr("bert_jax.data.beam_engine", raising=False)
  with pytest.raises(DataError, match=r"needs Apache Beam .*pip install 'bert_jax\[beam\]'"):
    prepare(str(corpus), out, tok, engine="beam", beam_options=IN_PROCESS)
  assert not out.exists()
  proc = subprocess.run([sys.executable, "-m", "bert_jax.cli.prepare", f"--input={corpus}",
                         f"--output_dir={out}", f"--vocab={tok.vocab_path}", "--engine=beam",
                         "--host_count=2"], capture_output=True, text=True, cwd=REPO)
  assert proc.returncode == 2 and "drop --host_index/--host_count" in proc.stderr
  assert "Traceback" not in proc.stderr and not out.exists()
