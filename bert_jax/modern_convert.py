"""Moves ModernBERT weights between Hugging Face folders and bert_jax's parameter tree.

HF tensors (PyTorch layout, `Linear.weight` is [out, in]) map one to one onto bert_jax names
(modern_modeling keeps HF's module tree); only the suffix and the layout change:
  `*.weight` of a Linear -> `*.kernel` [in, out]; Wqkv [D, 3, N, H]; attn.Wo [N, H, D];
  mlp.Wi [D, 2, F] (input half, then gate half); `tok_embeddings.weight` -> `.embedding`;
  a norm's `weight` -> `.scale`; biases keep their names (Wqkv's [3, N, H], Wi's [2, F]).
The MLM decoder is tied to the token embeddings, so HF's `decoder.weight` is never stored (HF does
not save it either). Both directions are exact: HF -> bert_jax -> HF gives the same bytes.

HF options the code does not implement (another activation, rope scaling, an untied decoder, ...)
are refused with one sentence naming the option (`ModelFileError`), before anything is written.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import tempfile

import numpy as np
from flax import nnx

from bert_jax import model_dir
from bert_jax.errors import ConfigError, ModelFileError
from bert_jax.modern_configuration import ACTIVATIONS, LAYER_TYPES, POOLINGS, ModernBertConfig
from bert_jax.modern_modeling import ARCHITECTURES

WEIGHTS_FILE = "model.safetensors"
_NORMS = ("norm", "attn_norm", "mlp_norm", "final_norm")
_LABELLED = ("ModernBertForSequenceClassification", "ModernBertForTokenClassification")


@dataclasses.dataclass
class HFModernBert:
  """A ModernBERT read from (or to be written to) an HF folder."""
  config: ModernBertConfig
  params: dict[str, np.ndarray]  # Flat bert_jax names ("model.layers.0.attn.Wqkv.kernel").
  architecture: str  # A modern_modeling class name, e.g. "ModernBertForMaskedLM".
  num_labels: int | None = None
  label_names: list[str] | None = None
  mapped: list[str] = dataclasses.field(default_factory=list)
  ignored: list[str] = dataclasses.field(default_factory=list)

  def summary(self) -> str:
    ign = ", ".join(self.ignored) if self.ignored else "none"
    return (f"{self.architecture}: mapped {len(self.mapped)} tensors to {len(self.params)} "
            f"bert_jax parameters; ignored {len(self.ignored)}: {ign}")


# ------------------------------------------------------------------ refusing what is not built
def check_supported(hf: dict, source: str = "config.json") -> None:
  """Raises ModelFileError naming the first HF option bert_jax's ModernBERT does not compute."""

  def refuse(option: str, value, why: str):
    raise ModelFileError(f"{source} sets {option}={value!r}, which bert_jax's ModernBERT does not "
                         f"implement ({why}).")

  if hf.get("model_type", "modernbert") != "modernbert":
    raise ModelFileError(f"{source} has model_type {hf.get('model_type')!r}, not 'modernbert'; "
                         "use bert_jax.convert for BERT folders.")
  for option in ("hidden_activation", "classifier_activation"):
    if option in hf and hf[option] not in ACTIVATIONS:
      refuse(option, hf[option], f"supported: {', '.join(ACTIVATIONS)}")
  if hf.get("rope_scaling") is not None:
    refuse("rope_scaling", hf["rope_scaling"], "only plain RoPE with a global and a local theta")
  for layer_type, rope in (hf.get("rope_parameters") or {}).items():
    if layer_type not in LAYER_TYPES:
      refuse("rope_parameters", {layer_type: rope}, f"layer types are {LAYER_TYPES}")
    rope = rope or {}
    if rope.get("rope_type", "default") != "default":
      refuse(f"rope_parameters.{layer_type}.rope_type", rope["rope_type"],
             "only the default RoPE, no scaling")
    extra = sorted(set(rope) - {"rope_type", "rope_theta"})
    if extra:
      refuse(f"rope_parameters.{layer_type}.{extra[0]}", rope[extra[0]],
             "only rope_type 'default' and rope_theta")
  if hf.get("tie_word_embeddings", True) is not True:
    refuse("tie_word_embeddings", hf["tie_word_embeddings"],
           "the MLM decoder is tied to the token embeddings")
  heads, hidden = hf.get("num_attention_heads"), hf.get("hidden_size")
  if hf.get("head_dim") is not None and heads and hidden and hf["head_dim"] != hidden // heads:
    refuse("head_dim", hf["head_dim"], "the head size is hidden_size / num_attention_heads")
  bad_types = sorted(set(hf.get("layer_types") or ()) - set(LAYER_TYPES))
  if bad_types:
    refuse("layer_types", bad_types[0], f"each layer is one of {LAYER_TYPES}")
  if "classifier_pooling" in hf and hf["classifier_pooling"] not in POOLINGS:
    refuse("classifier_pooling", hf["classifier_pooling"], f"supported: {', '.join(POOLINGS)}")
  for option in ("norm_type", "normalization"):
    if hf.get(option) not in (None, "layernorm"):
      refuse(option, hf[option], "ModernBERT uses LayerNorm")


def config_from_hf(hf: dict, source: str = "config.json") -> ModernBertConfig:
  check_supported(hf, source)
  try:
    return ModernBertConfig.from_dict(hf)
  except (ConfigError, TypeError, ValueError) as e:
    raise ModelFileError(f"{source} is not a ModernBERT config bert_jax can run: {e}") from None


# ------------------------------------------------------------------ names and layouts
def hf_to_jax_name(hf_name: str) -> str | None:
  """`model.layers.1.attn_norm.weight` -> `model.layers.1.attn_norm.scale`; None if unknown."""
  module, _, leaf = hf_name.rpartition(".")
  last = module.rpartition(".")[2]
  if leaf == "bias":
    return hf_name
  if leaf != "weight":
    return None
  if last == "tok_embeddings":
    return module + ".embedding"
  if last in _NORMS:
    return module + ".scale"
  return module + ".kernel"


def jax_to_hf_name(jax_name: str) -> str:
  module, _, leaf = jax_name.rpartition(".")
  return module + (".bias" if leaf == "bias" else ".weight")


def to_jax_array(jax_name: str, x: np.ndarray, config: ModernBertConfig) -> np.ndarray:
  """One HF tensor in bert_jax's layout for `jax_name`."""
  d, n, h = config.hidden_size, config.num_attention_heads, config.head_size
  f = config.intermediate_size
  if jax_name.endswith("attn.Wqkv.kernel"):
    return x.T.reshape(d, 3, n, h)  # [3NH, D] -> [D, 3, N, H]
  if jax_name.endswith("attn.Wqkv.bias"):
    return x.reshape(3, n, h)
  if jax_name.endswith("attn.Wo.kernel"):
    return x.T.reshape(n, h, d)  # [D, NH] -> [N, H, D]
  if jax_name.endswith("mlp.Wi.kernel"):
    return x.T.reshape(d, 2, f)  # [2F, D] -> [D, 2, F]
  if jax_name.endswith("mlp.Wi.bias"):
    return x.reshape(2, f)
  if jax_name.endswith(".kernel"):
    return x.T
  return x


def from_jax_array(jax_name: str, x: np.ndarray) -> np.ndarray:
  """Inverse of to_jax_array (PyTorch layout, C-contiguous)."""
  if jax_name.endswith(".kernel"):
    k = x.shape[0] if not jax_name.endswith("attn.Wo.kernel") else x.shape[0] * x.shape[1]
    x = x.reshape(k, -1).T  # [in..., out...] -> [out, in]
  elif jax_name.endswith(("attn.Wqkv.bias", "mlp.Wi.bias")):
    x = x.reshape(-1)
  return np.ascontiguousarray(x)


# ------------------------------------------------------------------ architecture
def guess_architecture(names: set[str], hf: dict) -> str:
  declared = (hf.get("architectures") or [None])[0]
  if declared is not None and declared not in ARCHITECTURES:
    raise ModelFileError(f"The folder declares architecture {declared!r}; bert_jax converts "
                         f"{', '.join(ARCHITECTURES)}.")
  if not any(k.startswith("model.") for k in names):
    return "ModernBertModel"
  if "classifier.weight" in names:
    if declared in (*_LABELLED, "ModernBertForQuestionAnswering"):
      return declared
    return "ModernBertForSequenceClassification"
  if any(k.startswith("head.") for k in names):
    return "ModernBertForMaskedLM"
  return "ModernBertModel"


def _expected_shapes(config: ModernBertConfig, architecture: str, num_labels: int | None):
  cls = ARCHITECTURES[architecture]
  kwargs = {"num_labels": num_labels} if architecture in _LABELLED else {}
  abstract = nnx.eval_shape(lambda: cls(config, rngs=nnx.Rngs(0), **kwargs))
  pure = nnx.state(abstract, nnx.Param).to_pure_dict()
  return {k: tuple(v.shape) for k, v in model_dir.flatten(pure).items()}


def hf_to_params(tensors: dict[str, np.ndarray], config: ModernBertConfig, architecture: str,
                 num_labels: int | None = None, source: str = "the folder") -> HFModernBert:
  """Maps HF-named tensors onto `architecture`'s parameters, checking names and shapes."""
  if architecture == "ModernBertModel" and any(k.startswith("model.") for k in tensors):
    tensors = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
  expected = _expected_shapes(config, architecture, num_labels)
  emb_name = ("" if architecture == "ModernBertModel" else "model.") + \
      "embeddings.tok_embeddings.weight"
  params, mapped, ignored = {}, [], []
  for hf_name, x in sorted(tensors.items()):
    if hf_name == "decoder.weight":  # Tied: HF only stores it when asked to.
      if emb_name in tensors and not np.array_equal(x, tensors[emb_name]):
        raise ModelFileError(f"{source} has a decoder.weight that differs from the token "
                             "embeddings; bert_jax's ModernBERT ties them (an untied decoder is "
                             "not implemented).")
      ignored.append(hf_name + " (tied to the token embeddings)")
      continue
    jax_name = hf_to_jax_name(hf_name)
    if jax_name is None or jax_name not in expected:
      ignored.append(hf_name)
      continue
    try:
      y = to_jax_array(jax_name, x, config)
    except ValueError:
      y = x
    if tuple(y.shape) != expected[jax_name]:
      raise ModelFileError(f"{source}: tensor {hf_name} has shape {tuple(x.shape)}, which does "
                           f"not fit {jax_name} {expected[jax_name]}; the weights and config.json "
                           "disagree.")
    params[jax_name] = y
    mapped.append(hf_name)
  missing = sorted(set(expected) - set(params))
  if missing:
    raise ModelFileError(f"{source} lacks {len(missing)} tensors that {architecture} needs "
                         f"(first: {jax_to_hf_name(missing[0])}); the checkpoint is incomplete.")
  return HFModernBert(config, params, architecture, num_labels, None, mapped, sorted(ignored))


def params_to_hf(params: dict[str, np.ndarray], architecture: str) -> dict[str, np.ndarray]:
  """bert_jax flat params -> HF state dict in PyTorch layout (dtypes kept)."""
  del architecture  # Names already carry HF's prefixes (`model.`, `head.`, `decoder.`).
  return {jax_to_hf_name(k): from_jax_array(k, np.asarray(v)) for k, v in params.items()}


def hf_config_dict(m: HFModernBert) -> dict:
  cfg = m.config.to_hf_dict()
  cfg["architectures"] = [m.architecture]
  cfg["dtype"] = "float32"
  if m.num_labels:
    names = m.label_names or [f"LABEL_{i}" for i in range(m.num_labels)]
    cfg["id2label"] = {str(i): name for i, name in enumerate(names)}
    cfg["label2id"] = {name: i for i, name in enumerate(names)}
  return cfg


# ------------------------------------------------------------------ folders
def read_safetensors(folder: pathlib.Path) -> dict[str, np.ndarray]:
  """The folder's weights (model.safetensors or a sharded index); bf16/f16 become exact f32."""
  from safetensors import safe_open
  single, index = folder / WEIGHTS_FILE, folder / "model.safetensors.index.json"
  if single.is_file():
    files = [single]
  elif index.is_file():
    files = [folder / s for s in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
  else:
    raise ModelFileError(f"{folder} has no {WEIGHTS_FILE}; ModernBERT folders are converted from "
                         "safetensors (save with save_pretrained).")
  out = {}
  for path in files:
    if not path.is_file():
      raise ModelFileError(f"{path} listed in the safetensors index is missing; copy the whole "
                           "model folder.")
    try:
      with safe_open(str(path), framework="np") as f:
        out.update({k: np.asarray(f.get_tensor(k)) for k in f.keys()})
    except (TypeError, ValueError):  # bf16 has no numpy dtype in safetensors' numpy API.
      with safe_open(str(path), framework="pt") as f:
        out.update({k: f.get_tensor(k).float().numpy() for k in f.keys()})
  return {k: v.astype(np.float32) if v.dtype.kind == "f" and v.dtype != np.float32 else v
          for k, v in out.items()}


def read_hf_config(folder) -> dict:
  path = pathlib.Path(folder) / "config.json"
  if not path.is_file():
    raise ModelFileError(f"{path} does not exist; pass a Hugging Face ModernBERT folder "
                         "(config.json + model.safetensors).")
  try:
    return json.loads(path.read_text(encoding="utf-8"))
  except json.JSONDecodeError as e:
    raise ModelFileError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}).") from None


def read_hf_folder(folder) -> HFModernBert:
  """An HF ModernBERT folder -> config, flat bert_jax params and architecture (refusing first)."""
  folder = pathlib.Path(folder)
  hf = read_hf_config(folder)
  config = config_from_hf(hf, str(folder / "config.json"))
  tensors = read_safetensors(folder)
  architecture = guess_architecture(set(tensors), hf)
  num_labels, label_names = None, None
  if architecture in _LABELLED:
    num_labels = int(tensors["classifier.weight"].shape[0])
    id2label = hf.get("id2label") or {}
    if len(id2label) == num_labels:
      label_names = [str(id2label.get(str(i), id2label.get(i))) for i in range(num_labels)]
  m = hf_to_params(tensors, config, architecture, num_labels, str(folder))
  m.label_names = label_names
  return m


def write_hf_folder(folder, m: HFModernBert, overwrite: bool = False) -> pathlib.Path:
  """Writes config.json and model.safetensors; the folder appears whole or not at all."""
  from safetensors.numpy import save_file
  folder = pathlib.Path(folder).absolute()
  if folder.exists() and any(folder.iterdir()) and not overwrite:
    raise ModelFileError(f"{folder} already holds files; choose a new folder or pass "
                         "overwrite=True.")
  if m.architecture not in ARCHITECTURES:
    raise ModelFileError(f"Unknown architecture {m.architecture!r}; expected one of "
                         f"{', '.join(ARCHITECTURES)}.")
  tensors = params_to_hf(m.params, m.architecture)
  folder.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
  try:
    (tmp / "config.json").write_text(json.dumps(hf_config_dict(m), indent=2, sort_keys=True)
                                     + "\n", encoding="utf-8")
    save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
    if folder.exists():
      shutil.rmtree(folder)
    os.replace(tmp, folder)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return folder


# ------------------------------------------------------------------ params <-> nnx modules
def build_model(m: HFModernBert) -> nnx.Module:
  """The modern_modeling module for `m.architecture` holding `m.params` (cast to param_dtype)."""
  from bert_jax import loading  # loading -> convert -> (lazily) this module.
  cls = ARCHITECTURES[m.architecture]
  kwargs = {"num_labels": m.num_labels} if m.architecture in _LABELLED else {}
  model = nnx.eval_shape(lambda: cls(m.config, rngs=nnx.Rngs(0), **kwargs))
  loading.merge_params(model, m.params)  # read_hf_folder checked every name and shape.
  return model


def from_model(model: nnx.Module, architecture: str | None = None,
               label_names: list[str] | None = None) -> HFModernBert:
  """Wraps a modern_modeling module for write_hf_folder."""
  architecture = architecture or type(model).__name__
  num_labels = getattr(model, "num_labels", None) if architecture in _LABELLED else None
  params = model_dir.model_params(model)  # f32, as HF folders store them.
  return HFModernBert(model.config, params, architecture, num_labels, label_names,
                      sorted(params), [])
