"""The bert_jax model directory: what the trainer writes and every loader reads.

    DIR/bert_config.json   BertConfig.to_json
    DIR/model_info.json    {"format": "bert_jax", "format_version": 1, "architecture": ...,
                            "num_labels": ..., "label_names": [...] (optional), ...}
    DIR/params/            orbax checkpoint of the f32 numpy parameter tree
                           (`nnx.state(model, nnx.Param).to_pure_dict()`, keys as strings)
    DIR/vocab.txt + tokenizer_config.json (+ tokenizer.json), or spiece.model: Tokenizer.save

This module is the format alone: reading and writing those files, atomically. Building a model
from them (or from a HF folder or a TF1 checkpoint) is `loading.py`.

Writing is atomic: everything goes to a temporary sibling directory that is renamed into place.
Parameter names are dotted paths such as `bert.encoder.layer.0.attention.self.query.kernel`
(`flatten` / `unflatten` convert between those and the nested tree).
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile
import uuid
from typing import Any

import jax
import numpy as np
from flax import nnx, traverse_util

from bert_jax import errors
from bert_jax.configuration import BertConfig

FORMAT = "bert_jax"
FORMAT_VERSION = 1
CONFIG_FILE = "bert_config.json"
INFO_FILE = "model_info.json"
PARAMS_DIR = "params"


# ------------------------------------------------------------------ dotted parameter names
def flatten(tree: dict) -> dict[str, Any]:
  """{"a": {0: {"b": x}}} -> {"a.0.b": x}; an already flat dotted dict comes back unchanged.

  Keys are joined as strings: a model's pure dict has int keys for nnx.List items, a
  restored checkpoint string keys, and both give the same names.
  """
  return {".".join(map(str, path)): v for path, v in traverse_util.flatten_dict(tree).items()}


def unflatten(flat: dict[str, Any]) -> dict:
  """Inverse of `flatten` (keys stay strings)."""
  return traverse_util.unflatten_dict(flat, sep=".")


def _to_numpy_f32(x) -> np.ndarray:
  x = np.asarray(jax.device_get(x))
  return x.astype(np.float32) if x.dtype != np.float32 else x


def model_params(model: nnx.Module) -> dict[str, np.ndarray]:
  """The model's parameters as a flat {dotted name: f32 numpy array} dict."""
  return {k: _to_numpy_f32(v) for k, v in
          flatten(nnx.state(model, nnx.Param).to_pure_dict()).items()}


def model_info(model: nnx.Module, extra_info: dict | None = None) -> dict:
  """The model_info.json entries that describe `model` (class name, labels, pooler), plus
  `extra_info` (e.g. label_names, the step or metric it was saved at)."""
  info = {"architecture": type(model).__name__,
          "num_labels": getattr(model, "num_labels", None)}
  if getattr(model, "pooler", "absent") is None:
    info["add_pooling_layer"] = False
  if getattr(model, "share", False) is True:  # BERT2BERT-share (seq2seq_modeling)
    info["share"] = True
  if getattr(model, "copy", False) is True:  # a BERT2BERT copy gate (seq2seq_modeling)
    info["copy"] = True
  return {**info, **(extra_info or {})}


# ------------------------------------------------------------------ writing
def is_model_dir(path) -> bool:
  path = pathlib.Path(path)
  info = path / INFO_FILE
  if not (info.is_file() and (path / PARAMS_DIR).is_dir() and (path / CONFIG_FILE).is_file()):
    return False
  try:
    return json.loads(info.read_text(encoding="utf-8")).get("format") == FORMAT
  except (OSError, ValueError):
    return False


def holds_checkpoint(path) -> bool:
  """True if `path` is a non-empty directory or a file: something writing would replace."""
  path = pathlib.Path(path)
  if path.is_dir():
    return any(path.iterdir())
  return path.exists()


def check_writable(path, overwrite: bool) -> pathlib.Path:
  """Raises FileExistsError (before any work) if `path` holds something and overwrite is off."""
  path = pathlib.Path(path).absolute()
  if holds_checkpoint(path) and not overwrite:
    raise errors.ExistsError(f"{path} already exists and is not empty; choose another "
                             "destination or pass overwrite=True (--overwrite).")
  if path.exists() and not path.is_dir():
    raise errors.ExistsError(f"{path} is a file, not a directory; choose another destination.")
  blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
  if blocker is not None:
    raise errors.ExistsError(f"{path} cannot be created because {blocker} is a file; choose "
                             "another destination.")
  return path


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def atomic_write_dir(path, write_fn, overwrite: bool = False) -> pathlib.Path:
  """Calls write_fn(tmp_dir) then renames tmp_dir to `path`; nothing is left behind on error."""
  path = check_writable(path, overwrite)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
  try:
    tmp.chmod(0o777 & ~_umask())  # mkdtemp's 0700 would make every written folder private
    write_fn(tmp)
    if path.exists():
      old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
      os.replace(path, old)
      os.replace(tmp, path)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.replace(tmp, path)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return path


def _checkpointer():
  """An orbax checkpointer local to this process.

  The model directory holds host numpy arrays written by one process; with orbax's default
  options every process of a multi-host job would have to join its barriers, so a call made on
  process 0 alone (as the trainer does) would hang.
  """
  import orbax.checkpoint as ocp
  me = jax.process_index()
  mp = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me},
                                          barrier_sync_key_prefix=f"bert_jax_dir_p{me}")
  if jax.process_count() == 1:
    mp = ocp.options.MultiprocessingOptions()
  return ocp.Checkpointer(ocp.StandardCheckpointHandler(multiprocessing_options=mp),
                          multiprocessing_options=mp)


def _save_params(directory: pathlib.Path, flat_params: dict[str, np.ndarray]) -> None:
  import orbax.checkpoint as ocp
  tree = unflatten({k: _to_numpy_f32(v) for k, v in flat_params.items()})
  _checkpointer().save(directory / PARAMS_DIR, args=ocp.args.StandardSave(tree))


def write_model_dir(path, config: BertConfig, info: dict, params: dict[str, np.ndarray],
                    tokenizer=None, *, overwrite: bool = False) -> pathlib.Path:
  """Writes a model directory from a flat (or nested) parameter dict; returns its path."""
  flat = flatten(params)
  info = {"format": FORMAT, "format_version": FORMAT_VERSION, **info}
  if "architecture" not in info:
    raise ValueError("model_info needs an 'architecture' name.")

  def write(tmp: pathlib.Path):
    config.to_json(tmp / CONFIG_FILE)
    (tmp / INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n",
                                 encoding="utf-8")
    _save_params(tmp, flat)
    if tokenizer is not None:
      tokenizer.save(tmp)

  return atomic_write_dir(path, write, overwrite)


def save_model_dir(path, model: nnx.Module, tokenizer=None, *, extra_info: dict | None = None,
                   overwrite: bool = False) -> pathlib.Path:
  """Saves an nnx BERT model (any class of heads.py / modeling.py) as a bert_jax directory."""
  check_writable(path, overwrite)  # Fail before pulling parameters to the host.
  return write_model_dir(path, model.config, model_info(model, extra_info), model_params(model),
                         tokenizer, overwrite=overwrite)


# ------------------------------------------------------------------ reading
def read_model_dir(path) -> tuple[BertConfig, dict, dict]:
  """Returns (config, info, params) with params the nested dict of f32 numpy arrays.

  The config is a BertConfig, or a ModernBertConfig for a ModernBERT (`model_type: modernbert`
  in bert_config.json, which holds either family's config).
  """
  path = pathlib.Path(path).absolute()
  if not is_model_dir(path):
    raise errors.MissingFileError(
        f"{path} is not a bert_jax model directory (no {INFO_FILE} with format 'bert_jax', "
        f"{CONFIG_FILE} and {PARAMS_DIR}/); convert it first with `bert-jax-convert` "
        "(bert_jax.convert.convert in Python).")
  info = json.loads((path / INFO_FILE).read_text(encoding="utf-8"))
  if info.get("format_version", 1) > FORMAT_VERSION:
    raise errors.ModelFileError(f"{path} has format_version {info['format_version']}, newer "
                                f"than this bert_jax reads ({FORMAT_VERSION}); upgrade bert_jax.")
  from bert_jax import family  # A ModernBertConfig when the file says model_type modernbert.
  config = family.config_from_dict(json.loads((path / CONFIG_FILE).read_text(encoding="utf-8")))
  params = _checkpointer().restore(path / PARAMS_DIR)
  params = jax.tree.map(np.asarray, params)
  return config, info, params
