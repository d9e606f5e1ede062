"""The bert_jax model directory: what the trainer writes and fine-tuning / `from_pretrained` read.

    DIR/bert_config.json   BertConfig.to_json
    DIR/model_info.json    {"format": "bert_jax", "format_version": 1, "architecture": ...,
                            "num_labels": ..., "label_names": [...] (optional), ...}
    DIR/params/            orbax checkpoint of the f32 numpy parameter tree
                           (`nnx.state(model, nnx.Param).to_pure_dict()`, keys as strings)
    DIR/vocab.txt + tokenizer_config.json (+ tokenizer.json), or spiece.model: Tokenizer.save

Writing is atomic: everything goes to a temporary sibling directory that is renamed into place.
Parameter names below are dotted paths such as `bert.encoder.layer.0.attention.self.query.kernel`.
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
from flax import nnx

from bert_jax.configuration import BertConfig

FORMAT = "bert_jax"
FORMAT_VERSION = 1
CONFIG_FILE = "bert_config.json"
INFO_FILE = "model_info.json"
PARAMS_DIR = "params"


# ------------------------------------------------------------------ flat names
def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
  """{"a": {"0": {"b": x}}} -> {"a.0.b": x}."""
  out = {}
  for k, v in tree.items():
    name = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(flatten(v, name + "."))
    else:
      out[name] = v
  return out


def unflatten(flat: dict[str, Any]) -> dict:
  """Inverse of `flatten` (keys stay strings)."""
  tree: dict = {}
  for name, v in flat.items():
    node = tree
    *parents, leaf = name.split(".")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = v
  return tree


def _to_numpy_f32(x) -> np.ndarray:
  x = np.asarray(jax.device_get(x))
  return x.astype(np.float32) if x.dtype != np.float32 else x


def model_params(model: nnx.Module) -> dict[str, np.ndarray]:
  """The model's parameters as a flat {dotted name: f32 numpy array} dict."""
  return {k: _to_numpy_f32(v) for k, v in
          flatten(nnx.state(model, nnx.Param).to_pure_dict()).items()}


# ------------------------------------------------------------------ architectures
def architecture_class(name: str):
  """The nnx module class for a model_info `architecture` name."""
  from bert_jax import heads, modeling
  for mod in (heads, modeling):
    cls = getattr(mod, name, None)
    if isinstance(cls, type) and issubclass(cls, nnx.Module):
      return cls
  raise ValueError(f"Unknown architecture {name!r} in model_info.json; expected a class of "
                   "bert_jax.heads or bert_jax.modeling such as BertForPreTraining.")


def _architecture_kwargs(cls, info: dict) -> dict:
  import inspect
  kwargs = {}
  sig = inspect.signature(cls.__init__).parameters
  if "num_labels" in sig:
    if info.get("num_labels") is None:
      raise ValueError(f"{cls.__name__} needs num_labels; pass num_labels=... to load_model.")
    kwargs["num_labels"] = int(info["num_labels"])
  if "add_pooling_layer" in sig and info.get("add_pooling_layer") is False:
    kwargs["add_pooling_layer"] = False
  return kwargs


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
    raise FileExistsError(f"{path} already exists and is not empty; choose another destination "
                          "or pass overwrite=True (--overwrite).")
  if path.exists() and not path.is_dir():
    raise FileExistsError(f"{path} is a file, not a directory; choose another destination.")
  blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
  if blocker is not None:
    raise FileExistsError(f"{path} cannot be created because {blocker} is a file; choose another "
                          "destination.")
  return path


def atomic_write_dir(path, write_fn, overwrite: bool = False) -> pathlib.Path:
  """Calls write_fn(tmp_dir) then renames tmp_dir to `path`; nothing is left behind on error."""
  path = check_writable(path, overwrite)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
  try:
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
  flat = flatten(params) if any(isinstance(v, dict) for v in params.values()) else params
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
  info = {"architecture": type(model).__name__,
          "num_labels": getattr(model, "num_labels", None)}
  if getattr(model, "pooler", "absent") is None:
    info["add_pooling_layer"] = False
  info.update(extra_info or {})
  return write_model_dir(path, model.config, info, model_params(model), tokenizer,
                         overwrite=overwrite)


# ------------------------------------------------------------------ reading
def read_model_dir(path) -> tuple[BertConfig, dict, dict]:
  """Returns (config, info, params) with params the nested dict of f32 numpy arrays."""
  path = pathlib.Path(path).absolute()
  if not is_model_dir(path):
    raise FileNotFoundError(f"{path} is not a bert_jax model directory (no {INFO_FILE} with "
                            f"format 'bert_jax', {CONFIG_FILE} and {PARAMS_DIR}/); convert it "
                            "first with `python -m bert_jax.convert`.")
  info = json.loads((path / INFO_FILE).read_text(encoding="utf-8"))
  if info.get("format_version", 1) > FORMAT_VERSION:
    raise ValueError(f"{path} has format_version {info['format_version']}, newer than this "
                     f"bert_jax reads ({FORMAT_VERSION}); upgrade bert_jax.")
  config = BertConfig.from_json(path / CONFIG_FILE)
  params = _checkpointer().restore(path / PARAMS_DIR)
  params = jax.tree.map(np.asarray, params)
  return config, info, params


def merge_params(model: nnx.Module, params_subtree: dict, prefix: str = ""):
  """Copies the parameters of `params_subtree` whose names match into `model`.

  `prefix` names where the subtree sits in the model (`"bert"` loads a BertModel checkpoint into
  a classifier's `bert`); names are compared after it. Values are cast to each parameter's dtype.

  Returns:
    (loaded, missing, unexpected): model parameter names set, model parameter names absent from
    the subtree, subtree names the model does not have.
  Raises:
    ValueError on the first shape mismatch, naming the parameter and both shapes.
  """
  state = nnx.state(model, nnx.Param)
  model_flat = flatten(state.to_pure_dict())
  src = flatten(params_subtree) if any(isinstance(v, dict) for v in params_subtree.values()) \
      else dict(params_subtree)
  pre = f"{prefix}." if prefix else ""
  src = {pre + k: v for k, v in src.items()}
  loaded, missing = [], []
  new_flat = {}
  for name, cur in model_flat.items():
    if name not in src:
      missing.append(name)
      new_flat[name] = cur
      continue
    value = src[name]
    if tuple(value.shape) != tuple(cur.shape):
      raise ValueError(f"Parameter {name} has shape {tuple(value.shape)} in the checkpoint but "
                       f"{tuple(cur.shape)} in the model; the checkpoint was made for another "
                       "configuration (check bert_config.json).")
    new_flat[name] = jax.numpy.asarray(value, dtype=cur.dtype)
    loaded.append(name)
  unexpected = sorted(set(src) - set(model_flat))
  # Rebuild the pure dict with the model's own key types (nnx.List keys are ints).
  pure = state.to_pure_dict()
  for name, v in new_flat.items():
    _set_path(pure, name.split("."), v)
  state.replace_by_pure_dict(pure)
  nnx.update(model, state)
  return loaded, missing, unexpected


def _set_path(tree: dict, parts: list[str], value) -> None:
  for p in parts[:-1]:
    tree = tree[_key_in(tree, p)]
  tree[_key_in(tree, parts[-1])] = value


def _key_in(tree: dict, part: str):
  if part in tree:
    return part
  if part.isdigit() and int(part) in tree:
    return int(part)
  raise KeyError(part)


def build_model(config: BertConfig, info: dict, params: dict, cls=None, *, seed: int = 0,
                **model_kwargs) -> nnx.Module:
  """An nnx module of `cls` (default: info["architecture"]) holding `params`.

  Parameters the checkpoint lacks (a new classifier head) keep a fresh random initialisation;
  a BertModel checkpoint loads into a head model's `bert`, and a head checkpoint's `bert` into a
  BertModel.
  """
  cls = cls or architecture_class(info.get("architecture", "BertModel"))
  kwargs = {**_architecture_kwargs_safe(cls, info, model_kwargs), **model_kwargs}
  flat = flatten(params)
  has_bert = any(k.startswith("bert.") for k in flat)
  abstract = nnx.eval_shape(lambda: cls(config, rngs=nnx.Rngs(params=seed), **kwargs))
  wants_bert = any(k.startswith("bert.") for k in flatten(
      nnx.state(abstract, nnx.Param).to_pure_dict()))
  if wants_bert and not has_bert:
    flat = {f"bert.{k}": v for k, v in flat.items()}
  elif has_bert and not wants_bert:
    flat = {k[len("bert."):]: v for k, v in flat.items() if k.startswith("bert.")}
  model_names = set(flatten(nnx.state(abstract, nnx.Param).to_pure_dict()))
  if model_names <= set(flat):
    model = abstract  # Everything comes from the checkpoint: skip the random initialisation.
  else:
    model = cls(config, rngs=nnx.Rngs(params=seed), **kwargs)
  merge_params(model, flat)
  return model


def _architecture_kwargs_safe(cls, info, model_kwargs):
  if "num_labels" in model_kwargs:
    info = {**info, "num_labels": model_kwargs["num_labels"]}
  return _architecture_kwargs(cls, info)


def load_model(path, cls=None, *, dtype=None, param_dtype=None, **model_kwargs) -> nnx.Module:
  """Reads a bert_jax directory into an nnx module (see `build_model` for `cls`)."""
  config, info, params = read_model_dir(path)
  changes = {k: v for k, v in (("dtype", dtype), ("param_dtype", param_dtype)) if v is not None}
  changes = {k: str(np.dtype(v)) if not isinstance(v, str) else v for k, v in changes.items()}
  if changes:
    config = config.replace(**changes)
  return build_model(config, info, params, cls, **model_kwargs)
