"""Where preparation reads and writes: local paths, or URLs (gs://, s3://, hdfs://) for Beam.

Local paths use plain file I/O and never import Apache Beam. URLs go through Beam's `FileSystems`
(the same code Dataflow workers use; `pip install 'apache-beam[gcp]'` registers gs://), and are
only accepted with `engine="beam"`. URL file systems are treated like object stores: no folders (a
folder is a name prefix, created by writing into it), objects appear whole when closed.
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil

_URL = re.compile(r"^[a-zA-Z][-a-zA-Z0-9+.]*://")
_META: dict[str, tuple[int, float]] = {}  # url -> (size, mtime) from the last listing


def is_url(path) -> bool:
  return bool(_URL.match(os.fspath(path)))


def _fs():
  from apache_beam.io.filesystems import FileSystems
  return FileSystems


def url_problem(url: str) -> str | None:
  """Why `url` cannot be used (no Beam file system for its scheme), or None."""
  try:
    _fs().get_filesystem(url)
  except ValueError:
    return (f"no Apache Beam file system handles {url.split('://', 1)[0]}:// (for {url}); install "
            "its extra, e.g. pip install 'apache-beam[gcp]' for gs://")
  return None


def _uncompressed():
  from apache_beam.io.filesystem import CompressionTypes
  return CompressionTypes.UNCOMPRESSED  # never let Beam gunzip a .gz input by its name


def join(base: str, *names: str) -> str:
  if is_url(base):
    return "/".join([base.rstrip("/")] + [n.strip("/") for n in names])
  return os.path.join(base, *names)


def glob(pattern: str) -> list[str]:
  """Files matching a URL pattern (`*` stops at `/`, `**` does not), or all under a URL folder."""
  fs = _fs()
  is_glob = any(c in pattern for c in "*?[")
  metas = fs.match([pattern if is_glob else pattern.rstrip("/")])[0].metadata_list
  if not metas and not is_glob:  # a folder: everything below it
    metas = fs.match([pattern.rstrip("/") + "/**"])[0].metadata_list
    metas = [m for m in metas if not m.path.rsplit("/", 1)[-1].startswith(".")]
  metas = [m for m in metas if not m.path.endswith("/")]  # folder placeholder objects
  for m in metas:
    _META[m.path] = (m.size_in_bytes, m.last_updated_in_seconds)
  return sorted(m.path for m in metas)


def size(path: str) -> int:
  if not is_url(path):
    return os.path.getsize(path)
  return _META[path][0] if path in _META else _fs().get_filesystem(path).size(path)


def mtime(path: str) -> float:
  if not is_url(path):
    return os.path.getmtime(path)
  return _META[path][1] if path in _META else _fs().last_updated(path)


def exists(path: str) -> bool:
  return _fs().exists(path) if is_url(path) else os.path.exists(path)


def open_read(path: str):
  """A binary reader (seekable), the bytes as stored."""
  if is_url(path):
    # GCS's reader has no peek(), so readline() would fetch byte by byte: buffer it.
    return io.BufferedReader(_fs().open(path, compression_type=_uncompressed()), 1 << 20)
  return open(path, "rb")


def listdir(path: str) -> list[str]:
  """Names directly inside a folder (a URL prefix); [] when there is none."""
  if not is_url(path):
    return os.listdir(path) if os.path.isdir(path) else []
  prefix = path.rstrip("/") + "/"
  metas = _fs().match([prefix + "**"])[0].metadata_list
  return sorted({m.path[len(prefix):].split("/", 1)[0] for m in metas} - {""})


def makedirs(path: str) -> None:
  if not is_url(path):  # object stores have no folders
    os.makedirs(path, exist_ok=True)


def remove(path: str) -> None:
  _fs().delete([path]) if is_url(path) else os.remove(path)


def rmtree(path: str) -> None:
  """Deletes a file, or a folder (every object under a URL prefix) and what it holds."""
  if not is_url(path):
    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    return
  paths = [m.path for m in _fs().match([path.rstrip("/") + "/**"])[0].metadata_list]
  if _fs().exists(path):
    paths.append(path)
  if paths:
    _fs().delete(paths)


def read_json(path: str):
  with open_read(path) as f:
    return json.loads(f.read().decode("utf-8"))


def write_json(path: str, obj) -> None:
  data = json.dumps(obj, indent=1).encode("utf-8")
  if is_url(path):  # an object appears whole when its upload closes
    with _fs().create(path, compression_type=_uncompressed()) as f:
      f.write(data)
    return
  with open(path + ".tmp", "wb") as f:
    f.write(data)
  os.replace(path + ".tmp", path)


def upload(local_path: str, url: str) -> None:
  with open(local_path, "rb") as src, _fs().create(url, compression_type=_uncompressed()) as dst:
    shutil.copyfileobj(src, dst, 1 << 22)


def download(url: str, local_path: str) -> None:
  with open_read(url) as src, open(local_path, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 22)


def copy(src: str, dst: str) -> None:
  """URL to URL on the same file system (server-side on GCS and S3)."""
  _fs().copy([src], [dst])
