"""URL inputs and outputs (gs://-like) for the Beam engine, without a network: a test-only Beam
FileSystem for `fakegs://`, backed by a temp folder and behaving like GCS (no folders, listing by
name prefix, objects appear whole on close, `.gz` decompressed unless asked not to). A prepared
dataset with input, vocabulary and output all on it must equal the local engine's, file by file."""
from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import sys
import tempfile

import pytest

from bert_jax.data import DataError, preparation, prepare, storage, worker

beam_fs = pytest.importorskip("apache_beam.io.filesystem",
                              reason="apache-beam is not installed (pip install 'bert_jax[beam]').")
IN_PROCESS = "--runner=DirectRunner --direct_num_workers=1"  # the fake file system is in-process
ARGS = {"layout": "sentences", "validation_fraction": 0.1, "chunk_mb": 0.05, "progress": False}
SCHEME = "fakegs"


class _Upload(io.FileIO):
  """A write channel: the object appears at `dest` only when closed, as on GCS."""

  def __init__(self, dest: str, spool: str):
    self._dest = dest
    fd, self._tmp = tempfile.mkstemp(dir=spool)
    os.close(fd)
    super().__init__(self._tmp, "wb")

  def close(self):
    if not self.closed:
      super().close()
      os.makedirs(os.path.dirname(self._dest), exist_ok=True)
      os.replace(self._tmp, self._dest)


class _Download(io.BufferedIOBase):
  """A read channel like GCS's BlobReader: read / seek / tell only (no peek, no readline)."""

  def __init__(self, path: str):
    super().__init__()
    self._f = open(path, "rb")  # raises FileNotFoundError for a missing object

  def readable(self):
    return True

  def seekable(self):
    return True

  def read(self, size=-1):
    return self._f.read(size)

  read1 = read

  def seek(self, pos, whence=io.SEEK_SET):
    return self._f.seek(pos, whence)

  def tell(self):
    return self._f.tell()

  def close(self):
    self._f.close()
    super().close()


class FakeGcs(beam_fs.FileSystem):
  """`fakegs://bucket/name` -> ROOT/bucket/name, with object-store semantics."""
  ROOT = ""  # set by the fixture
  SPOOL = ""

  @classmethod
  def scheme(cls):
    return SCHEME

  def _local(self, url):
    assert url.startswith(f"{SCHEME}://"), url
    return os.path.join(self.ROOT, url[len(SCHEME) + 3:])

  def join(self, basepath, *paths):
    return "/".join([basepath.rstrip("/")] + [p.strip("/") for p in paths])

  def split(self, path):
    head, _, tail = path.rstrip("/").rpartition("/")
    return head, tail

  def mkdirs(self, path):
    pass  # no folders

  def has_dirs(self):
    return False

  def _list(self, dir_or_prefix):
    for folder, _, names in os.walk(self.ROOT):
      for name in names:
        url = f"{SCHEME}://" + os.path.relpath(os.path.join(folder, name), self.ROOT)
        if url.startswith(dir_or_prefix):
          yield self.metadata(url)

  def _wrap(self, f, path, compression_type):
    kind = self._get_compression_type(path, compression_type)
    if kind == beam_fs.CompressionTypes.UNCOMPRESSED:
      return f
    return beam_fs.CompressedFile(f, compression_type=kind)

  def create(self, path, mime_type="application/octet-stream",
             compression_type=beam_fs.CompressionTypes.AUTO):
    return self._wrap(_Upload(self._local(path), self.SPOOL), path, compression_type)

  def open(self, path, mime_type="application/octet-stream",
           compression_type=beam_fs.CompressionTypes.AUTO):
    return self._wrap(_Download(self._local(path)), path, compression_type)

  def copy(self, source_file_names, destination_file_names):
    for src, dst in zip(source_file_names, destination_file_names, strict=True):
      os.makedirs(os.path.dirname(self._local(dst)), exist_ok=True)
      shutil.copyfile(self._local(src), self._local(dst))

  def rename(self, source_file_names, destination_file_names):
    self.copy(source_file_names, destination_file_names)
    self.delete(source_file_names)

  def exists(self, path):
    return os.path.isfile(self._local(path))  # objects only: a prefix is not a file

  def size(self, path):
    return os.path.getsize(self._local(path))

  def last_updated(self, path):
    return os.path.getmtime(self._local(path))

  def checksum(self, path):
    return str(self.size(path))

  def metadata(self, path):
    return beam_fs.FileMetadata(path, self.size(path), self.last_updated(path))

  def delete(self, paths):
    for p in paths:
      os.remove(self._local(p))


@pytest.fixture
def bucket(tmp_path):
  FakeGcs.ROOT = str(tmp_path / "objects")
  FakeGcs.SPOOL = str(tmp_path / "spool")
  os.makedirs(FakeGcs.SPOOL)
  os.makedirs(os.path.join(FakeGcs.ROOT, "b"))
  return tmp_path / "objects" / "b"


def _put(bucket, name, data: bytes):
  path = bucket / name
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(data)


def _files(folder) -> dict:
  return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
          if p.is_file()}


def _normalised(meta: bytes, prefix: str) -> dict:
  """metadata.json without what differs by nature: input locations and CPU time."""
  m = json.loads(meta)
  m["inputs"] = [p.removeprefix(prefix) for p in m["inputs"]]
  m["stats"].pop("cpu_seconds")
  for s in m["stats"]["skipped_file_list"]:
    s["path"] = s["path"].removeprefix(prefix)
  return m


def test_storage_on_an_object_store(bucket):
  for name in ("d/x.txt", "d/sub/y.txt", "d/.hidden", "dx.txt"):
    _put(bucket, name, name.encode())
  base = f"{SCHEME}://b"
  assert storage.is_url(base) and not storage.is_url("/tmp/x") and not storage.is_url("x:y")
  assert storage.glob(f"{base}/d/*.txt") == [f"{base}/d/x.txt"]  # * stops at /
  assert storage.glob(f"{base}/d") == storage.glob(f"{base}/d/") == \
      [f"{base}/d/sub/y.txt", f"{base}/d/x.txt"]  # a folder: recursive, hidden names left out
  assert storage.listdir(f"{base}/d") == [".hidden", "sub", "x.txt"]
  assert storage.listdir(f"{base}/none") == [] and not storage.exists(f"{base}/d")
  assert storage.size(f"{base}/d/x.txt") == len(b"d/x.txt")
  _put(bucket, "z.gz", gzip.compress(b"text"))
  with storage.open_read(f"{base}/z.gz") as f:  # stored bytes, not decompressed by Beam
    assert gzip.decompress(f.read()) == b"text"
  storage.write_json(f"{base}/new/m.json", {"a": [1]})
  assert storage.read_json(f"{base}/new/m.json") == {"a": [1]}
  storage.rmtree(f"{base}/d")
  assert storage.listdir(base) == ["dx.txt", "new", "z.gz"]
  assert storage.url_problem(f"{base}/x") is None
  assert "pip install 'apache-beam[gcp]'" in storage.url_problem("nosuchfs://b/x")


def test_beam_on_urls_gives_the_local_dataset(tmp_path, bucket, mobydick_path, vocab_path,
                                             monkeypatch):
  monkeypatch.chdir(tmp_path)  # a URL mistaken for a path would create ./fakegs:/ here
  for var in ("TOKENIZERS_PARALLELISM", "RAYON_NUM_THREADS", "PYTHONPATH"):
    monkeypatch.delenv(var, raising=False)  # in-process Beam workers set them; restored after
  text = mobydick_path.read_bytes()[:150_000]
  inputs = {"a-moby.txt": text[:100_000], "b-moby.txt.gz": gzip.compress(text[100_000:]),
            "c-empty.txt": b""}
  local_in = tmp_path / "corpus"
  local_in.mkdir()
  for name, data in inputs.items():
    (local_in / name).write_bytes(data)
    _put(bucket, f"corpus/{name}", data)
  _put(bucket, f"vocab/{vocab_path.name}", vocab_path.read_bytes())
  ref = tmp_path / "local"
  ref_stats = prepare(str(local_in / "*"), ref, str(vocab_path), **ARGS)
  assert ref_stats["skipped_files"] == 1 and ref_stats["splits"]["validation"]["documents"] > 0

  # A first Beam run fails in its second unit (an exception in a worker) ...
  url_args = (f"{SCHEME}://b/corpus/*", f"{SCHEME}://b/data", f"{SCHEME}://b/vocab/{vocab_path.name}")
  real, calls, failed = worker.process_unit, [], []

  def failing(unit, *a):
    if len(calls) == 1:
      failed.append(unit.index)
      raise RuntimeError("worker lost")
    calls.append(unit.index)
    return real(unit, *a)

  monkeypatch.setattr(worker, "process_unit", failing)
  with pytest.raises(Exception, match="worker lost"):
    prepare(*url_args, engine="beam", beam_options=IN_PROCESS, **ARGS)
  work = bucket / "data" / preparation.WORK_DIR
  done = sorted(int(p.name[5:10]) for p in work.glob("unit-*.json"))
  assert (work / "plan.json").exists() and len(calls) == 1 and done == calls

  # ... and a rerun does only the units without a marker, then writes the dataset.
  calls.clear()
  monkeypatch.setattr(worker, "process_unit", lambda u, *a: calls.append(u.index) or
                      real(u, *a))
  stats = prepare(*url_args, engine="beam", beam_options=IN_PROCESS, **ARGS)
  assert failed[0] in calls and not set(calls) & set(done) and len(calls) + len(done) == 3

  drop = ("seconds", "cpu_seconds", "skipped_file_list")
  assert {k: v for k, v in stats.items() if k not in drop} == \
      {k: v for k, v in ref_stats.items() if k not in drop}
  assert [s["path"] for s in stats["skipped_file_list"]] == [f"{SCHEME}://b/corpus/c-empty.txt"]
  got, want = _files(bucket / "data"), _files(ref)
  assert sorted(got) == sorted(want)  # no .incomplete left, tokenizer/ uploaded
  assert any(n.startswith("bert_pretraining-validation") for n in want)
  for name in want:
    if name == "metadata.json":
      assert _normalised(got[name], f"{SCHEME}://b/corpus/") == \
          _normalised(want[name], f"{local_in}/")
    else:
      assert got[name] == want[name], name
  assert not (tmp_path / f"{SCHEME}:").exists()

  # The dataset reads back through TFDS (from a local copy), example by example.
  import tensorflow_datasets as tfds
  copy = tmp_path / "copy"
  shutil.copytree(bucket / "data", copy)
  for split in ("train", "validation"):
    a = tfds.builder_from_directory(str(copy)).as_data_source(split)
    b = tfds.builder_from_directory(str(ref)).as_data_source(split)
    assert len(a) == len(b) > 0
    for i in range(len(a)):
      assert a[i]["ids"].tolist() == b[i]["ids"].tolist()
      assert a[i]["sentence_lengths"].tolist() == b[i]["sentence_lengths"].tolist()
  # The output now holds a dataset: refused without --overwrite, nothing changed.
  with pytest.raises(DataError, match="already holds a prepared dataset"):
    prepare(*url_args, engine="beam", beam_options=IN_PROCESS, **ARGS)
  assert _files(bucket / "data") == got


def test_urls_refused_where_they_cannot_work(tmp_path, bucket, vocab_path, mobydick_path,
                                             monkeypatch):
  monkeypatch.chdir(tmp_path)
  _put(bucket, "corpus/a.txt", b"One sentence.\n")
  (tmp_path / "a.txt").write_bytes(mobydick_path.read_bytes()[:20_000])
  with monkeypatch.context() as m:  # The local engine works, and refuses URLs, without Beam.
    m.setitem(sys.modules, "apache_beam", None)
    assert prepare(str(tmp_path / "a.txt"), tmp_path / "ok", vocab_path, progress=False)["tokens"]
    with pytest.raises(DataError, match="is a URL; only `bert_jax.prepare --engine=beam` reads"):
      prepare(f"{SCHEME}://b/corpus/*", tmp_path / "out", vocab_path, progress=False)
    with pytest.raises(DataError, match="is a URL; only --engine=beam writes URLs"):
      prepare(str(tmp_path), f"{SCHEME}://b/out", vocab_path, progress=False)
    with pytest.raises(DataError, match="only --engine=beam reads URLs, or pass a local file"):
      prepare(str(tmp_path / "a.txt"), tmp_path / "out", f"{SCHEME}://b/v.txt", progress=False)
  with pytest.raises(DataError, match=r"nosuchfs:// .*pip install 'apache-beam\[gcp\]'"):
    prepare("nosuchfs://b/corpus/*", tmp_path / "out", vocab_path, engine="beam",
            beam_options=IN_PROCESS)
  with pytest.raises(DataError, match="matches no file"):
    prepare(f"{SCHEME}://b/nothing/*", tmp_path / "out", vocab_path, engine="beam",
            beam_options=IN_PROCESS)
  assert not (tmp_path / "out").exists() and os.listdir(bucket) == ["corpus"]
