"""Loading and saving models: the one path from any checkpoint to a model and back.

    model, tokenizer = from_pretrained(path)     # bert_jax directory, HF folder or TF1 checkpoint
    model = load_model(path, BertForSequenceClassification, num_labels=3)
    save_pretrained(model, tokenizer, dst, format="hf")

Every source is read by `convert.read_any` into one in-memory form (`convert.Converted`: config,
model_info, flat f32 parameters, tokenizer); `build_model` turns that into an instance of the
classes of `pretrained.py`, so every loader returns the same classes, each with
`save_pretrained`. The on-disk bert_jax format itself is `model_dir.py`.

Both model families load the same way: a ModernBERT checkpoint (HF `model_type: modernbert` or
a bert_jax directory of one) builds the ModernBert* classes, whose encoder sits under `model`
where BERT's sits under `bert`; a class of the other family is refused in one sentence.
"""
from __future__ import annotations

import pathlib
import sys

import jax.numpy as jnp
import numpy as np
from flax import nnx, traverse_util

from bert_jax import convert, device_dtype, errors, family, model_dir, pretrained, seq2seq_modeling
from bert_jax.configuration import BertConfig


# ------------------------------------------------------------------ parameters into a model
def merge_params(model: nnx.Module, params: dict, prefix: str = ""):
  """Copies the parameters of `params` (nested or flat dotted) whose names match into `model`.

  `prefix` names where the subtree sits in the model (`"bert"` loads a BertModel checkpoint into
  a classifier's `bert`); names are compared after it. Values are cast to each parameter's dtype.

  Returns:
    (loaded, missing, unexpected): model parameter names set, model parameter names absent from
    `params`, names in `params` the model does not have.
  Raises:
    ModelFileError (a ValueError) on the first shape mismatch, naming the parameter and both
    shapes.
  """
  state = nnx.state(model, nnx.Param)
  # Keyed by the model's own paths: nnx.List indices are ints there, strings in a checkpoint.
  current = traverse_util.flatten_dict(state.to_pure_dict())
  names = {".".join(map(str, path)): path for path in current}
  pre = f"{prefix}." if prefix else ""
  src = {pre + k: v for k, v in model_dir.flatten(params).items()}
  loaded, missing = [], []
  for name, path in names.items():
    if name not in src:
      missing.append(name)
      continue
    value, cur = src[name], current[path]
    if tuple(value.shape) != tuple(cur.shape):
      raise errors.ModelFileError(
          f"Parameter {name} has shape {tuple(value.shape)} in the checkpoint but "
          f"{tuple(cur.shape)} in the model; the checkpoint was made for another configuration "
          "(check bert_config.json).")
    current[path] = jnp.asarray(value, dtype=cur.dtype)
    loaded.append(name)
  unexpected = sorted(set(src) - set(names))
  state.replace_by_pure_dict(traverse_util.unflatten_dict(current))
  nnx.update(model, state)
  return loaded, missing, unexpected


def _build(config: BertConfig, info: dict, params: dict, cls, seed: int, model_kwargs: dict,
           source="The checkpoint"):
  """(model, missing_keys, unexpected_keys); see `build_model`."""
  cls = pretrained.model_class(cls or info.get("architecture", "BertModel"))
  if issubclass(cls, seq2seq_modeling.BertEncoderDecoder):
    seq2seq_modeling.check_warm_start(config, source)
    if info.get("architecture") != cls.__name__:  # BERT2BERT warm-started from a BERT checkpoint
      params, info = seq2seq_modeling.warm_start_params(model_dir.flatten(params)), {}
  family.check_family(cls.__name__, config, source)
  # Where a head model keeps its encoder: `bert.` (BERT) or `model.` (ModernBERT).
  enc = family.ENCODER_PREFIX[family.of_config(config)] + "."

  def _strip_bert(name: str) -> str:
    return name.removeprefix(enc)

  kwargs = pretrained.init_kwargs(cls, info, model_kwargs)

  def make():
    return cls(config, rngs=nnx.Rngs(params=seed), **kwargs)

  abstract = nnx.eval_shape(make)
  wanted = set(model_dir.flatten(nnx.state(abstract, nnx.Param).to_pure_dict()))
  src = model_dir.flatten(params)
  flat = src
  # An encoder checkpoint fits a head model's `bert`, and a head model's `bert` an encoder.
  has_bert = any(k.startswith(enc) for k in flat)
  wants_bert = any(k.startswith(enc) for k in wanted)
  if wants_bert and not has_bert:
    flat = {f"{enc}{k}": v for k, v in flat.items()}
  elif has_bert and not wants_bert:
    flat = {_strip_bert(k): v for k, v in flat.items() if k.startswith(enc)}
  # Everything from the checkpoint: skip the random initialisation.
  model = abstract if wanted <= set(flat) else make()
  merge_params(model, flat)
  # Reported relative to the encoder, whichever side has the `bert.` prefix.
  have = {_strip_bert(k) for k in src}
  missing = sorted(n for n in wanted if _strip_bert(n) not in have)
  unexpected = sorted(have - {_strip_bert(n) for n in wanted})
  return model, missing, unexpected


def build_model(config: BertConfig, info: dict, params: dict, cls=None, *, seed: int = 0,
                **model_kwargs) -> nnx.Module:
  """A model of `cls` (default: info["architecture"]) holding `params` (nested or flat).

  `cls` is a class of `pretrained.py`, or a modeling / heads class (which gives its
  `pretrained.py` subclass). Parameters the checkpoint lacks (a new classifier head) keep a fresh
  random initialisation from `seed`; a BertModel checkpoint loads into a head model's `bert`,
  and a head checkpoint's `bert` into a BertModel. `model_kwargs` go to the constructor (e.g.
  num_labels=3).
  """
  return _build(config, info, params, cls, seed, model_kwargs)[0]


# ------------------------------------------------------------------ any source -> model
def _with_dtypes(config: BertConfig, dtype, param_dtype) -> BertConfig:
  dtype = device_dtype.resolve(dtype)  # "auto": the dtype fast on this device
  changes = {k: (v if isinstance(v, str) else np.dtype(v).name)
             for k, v in (("dtype", dtype), ("param_dtype", param_dtype)) if v is not None}
  return config.replace(**changes) if changes else config


def load_pretrained(path, cls=None, *, dtype=None, param_dtype=None, seed: int = 0,
                    any_family: bool = False, **model_kwargs):
  """(model, tokenizer or None, {"missing_keys": [...], "unexpected_keys": [...]}) from a
  bert_jax directory, a Hugging Face folder or a Google TF1 checkpoint.

  HF and TF1 weights are converted in memory. `cls`: see `build_model`; with `any_family=True`
  it names a role, built in the checkpoint's family (BertForMaskedLM gives ModernBertForMaskedLM
  for a ModernBERT checkpoint), as the command-line tools load. `dtype` is the compute dtype
  (e.g. "bfloat16"; "auto": the fast one on this device), `param_dtype` the parameters' (f32
  unless given). Weights the checkpoint lacks are initialised randomly and named in a warning on
  stderr.
  """
  conv = convert.read_any(path)
  if any_family and cls is not None:
    cls = family.counterpart(pretrained.model_class(cls).__name__, family.of_config(conv.config))
  model, missing, unexpected = _build(_with_dtypes(conv.config, dtype, param_dtype), conv.info,
                                      conv.params, cls, seed, model_kwargs, path)
  if missing:
    print(f"warning: {len(missing)} weights of {type(model).__name__} are not in {path} and "
          f"were initialised randomly (first: {missing[0]}); train them before use.",
          file=sys.stderr)
  return model, conv.tokenizer, {"missing_keys": missing, "unexpected_keys": unexpected}


def from_pretrained(path, *, dtype=None, cls=None, param_dtype=None, **model_kwargs):
  """(model, tokenizer) from a bert_jax directory, a HF folder or a Google TF1 checkpoint.

  `cls` picks another architecture than the saved one (e.g. `BertModel`, or
  `BertForSequenceClassification` with `num_labels=...`: heads the checkpoint lacks are freshly
  initialised). `dtype` is the compute dtype (e.g. "bfloat16"). The tokenizer (a
  `BertTokenizer`) is None when the source has no vocabulary.
  """
  model, tokenizer, _ = load_pretrained(path, cls, dtype=dtype, param_dtype=param_dtype,
                                        **model_kwargs)
  return model, tokenizer


def load_model(path, cls=None, *, dtype=None, param_dtype=None, **model_kwargs) -> nnx.Module:
  """The model alone from any source `from_pretrained` reads (see `build_model` for `cls`)."""
  return load_pretrained(path, cls, dtype=dtype, param_dtype=param_dtype, **model_kwargs)[0]


# ------------------------------------------------------------------ model -> disk
FORMATS = ("bert_jax", "hf", "sentence-transformers")


def save_pretrained(model: nnx.Module, tokenizer, path, format: str = "bert_jax",
                    overwrite: bool = False, *, extra_info: dict | None = None,
                    pooling: str = "mean", normalize: bool = True,
                    max_seq_length: int | None = None) -> pathlib.Path:
  """Saves as a bert_jax directory, (format="hf") a folder transformers loads (f32 weights) or
  (format="sentence-transformers") that folder plus modules.json, 1_Pooling/config.json and
  sentence_bert_config.json, which `sentence_transformers.SentenceTransformer(path)` loads.

  `pooling` (mean | cls | lasttoken), `normalize` (a Normalize module) and `max_seq_length`
  (default: max_position_embeddings) describe the sentence-transformers pipeline; a head
  model's encoder is what is saved in that format.
  """
  if format == "bert_jax":
    return model_dir.save_model_dir(path, model, tokenizer, extra_info=extra_info,
                                    overwrite=overwrite)
  if format not in FORMATS:
    raise errors.ConfigError(f"format={format!r} is not one of {', '.join(FORMATS)}.")
  model_dir.check_writable(path, overwrite)  # Fail before pulling parameters to the host.
  if format == "sentence-transformers":
    from bert_jax import inference, sentence_embedding
    if tokenizer is None:
      raise errors.ConfigError("format='sentence-transformers' needs tokenizer=...: "
                               "SentenceTransformer loads the vocabulary from the folder.")
    model = inference.encoder_of(model)
    st = dict(dim=model.config.hidden_size, pooling=pooling, normalize=normalize,
              max_seq_length=max_seq_length or model.config.max_position_embeddings)
  conv = convert.Converted(model.config, model_dir.model_info(model, extra_info),
                           model_dir.model_params(model), tokenizer, [], [])
  if format == "hf":
    return convert.write_hf(conv, path, overwrite)
  return convert.write_hf(conv, path, overwrite, extra_files=lambda tmp: (
      sentence_embedding.write_sentence_transformers_files(tmp, **st)))
