"""`from_pretrained` / `save_pretrained`: one call to load or save a model with its tokenizer."""
from __future__ import annotations

import pathlib

import numpy as np
from flax import nnx

from bert_jax import model_io


def load_checkpoint(path, *, dtype=None, param_dtype=None):
  """(converted checkpoint, its BertConfig with the requested compute / parameter dtypes)."""
  from bert_jax import convert as convert_lib  # Lazy: `python -m bert_jax.convert` runs it.
  conv = convert_lib.load_any(path)
  changes = {k: (v if isinstance(v, str) else np.dtype(v).name)
             for k, v in (("dtype", dtype), ("param_dtype", param_dtype)) if v is not None}
  return conv, (conv.config.replace(**changes) if changes else conv.config)


def from_pretrained(path, *, dtype=None, cls=None, param_dtype=None, **model_kwargs):
  """Loads (model, tokenizer) from a bert_jax directory, a HF folder or a Google TF1 checkpoint.

  HF and TF1 weights are converted in memory. `cls` picks another architecture than the saved
  one (e.g. `BertModel`, or `BertForSequenceClassification` with `num_labels=...`: heads the
  checkpoint lacks are freshly initialised). `dtype` is the compute dtype (e.g. "bfloat16").
  The tokenizer is None when the source has no vocabulary.
  """
  conv, config = load_checkpoint(path, dtype=dtype, param_dtype=param_dtype)
  model = model_io.build_model(config, conv.info, model_io.unflatten(conv.params), cls,
                               **model_kwargs)
  return model, conv.tokenizer


def save_pretrained(model: nnx.Module, tokenizer, path, format: str = "bert_jax",
                    overwrite: bool = False, *, extra_info: dict | None = None) -> pathlib.Path:
  """Saves as a bert_jax directory or (format="hf") a folder transformers loads (f32 weights)."""
  if format == "bert_jax":
    return model_io.save_model_dir(path, model, tokenizer, extra_info=extra_info,
                                   overwrite=overwrite)
  if format != "hf":
    raise ValueError(f"format={format!r} is not 'bert_jax' or 'hf'.")
  from bert_jax import convert as convert_lib
  model_io.check_writable(path, overwrite)
  info = {"architecture": type(model).__name__, "num_labels": getattr(model, "num_labels", None),
          **(extra_info or {})}
  conv = convert_lib.Converted(model.config, info, model_io.model_params(model), tokenizer,
                               [], [])
  return convert_lib.write_hf(conv, path, overwrite)
