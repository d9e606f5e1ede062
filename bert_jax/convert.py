"""Moves BERT weights between Hugging Face folders, Google TF1 checkpoints and bert_jax directories.

    bert-jax-convert --src=HF_OR_TF1_DIR --dst=OUT_DIR            # -> bert_jax
    bert-jax-convert --src=BERT_JAX_DIR --dst=OUT_DIR --to=hf     # -> HF folder
    convert.convert(src, dst, to="bert_jax")                      # the same from Python

Every source is read (`read_any`) into one in-memory form, `Converted`: HF and TF1 weights as
HF-named numpy tensors in PyTorch layout (`Linear.weight` is [out, in]) mapped onto the bert_jax
parameter tree:
attention q/k/v kernels [D, N, H], attention output kernel [N, H, D], other Dense kernels
[in, out], LayerNorm `scale`/`bias`, embeddings `embedding`. The MLM decoder is tied to the word
embeddings, so HF's `cls.predictions.decoder.weight` is not stored (it is written back on export).
Turning a `Converted` into a model is `loading.py`; the bert_jax directory format is `model_dir.py`.

ModernBERT folders (`model_type: modernbert`) go through `modern_convert` (its names and layouts)
into the same `Converted` form with a ModernBertConfig, so every loader and writer takes both
families; a bert_jax directory of either family writes back to the HF folder of its family.

Refusals (one line, exit status 2, nothing written): a missing file, an unknown layout, a shape
that does not fit the config, a destination that already holds files (unless --overwrite).
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import re
import sys

import numpy as np

from bert_jax import errors, family, model_dir, pretrained
from bert_jax.configuration import BertConfig

SEQ2SEQ_ARCHITECTURE = "BertEncoderDecoder"  # seq2seq_modeling.BertEncoderDecoder
HEAD_ARCHITECTURES = ("BertForPreTraining", "BertForMaskedLM", "BertForSequenceClassification",
                      "BertForTokenClassification", "BertForQuestionAnswering")
TF_INSTALL_HINT = "pip install 'bert_jax[tf]'"


class ConversionError(errors.ModelFileError):
  """An expected problem with the input or destination; the message is one sentence."""


class SourceNotFoundError(ConversionError, errors.MissingFileError):
  """No model at the source path (also a FileNotFoundError, as reading a directory was)."""


@dataclasses.dataclass
class Converted:
  """A model in memory: config, model_info, flat bert_jax params, tokenizer (or None), report."""
  config: BertConfig
  info: dict
  params: dict[str, np.ndarray]
  tokenizer: object | None
  mapped: list[str]
  ignored: list[str]

  def summary(self) -> str:
    ign = ", ".join(self.ignored) if self.ignored else "none"
    return (f"{self.info['architecture']}: mapped {len(self.mapped)} tensors to "
            f"{len(self.params)} bert_jax parameters; ignored {len(self.ignored)}: {ign}")


# ------------------------------------------------------------------ source detection
def detect_format(path) -> str:
  """'bert_jax', 'hf' or 'tf1' for a directory (or a TF1 checkpoint prefix)."""
  path = pathlib.Path(path)
  if not path.exists() and not pathlib.Path(str(path) + ".index").exists():
    raise SourceNotFoundError(f"Source {path} does not exist; pass a bert_jax directory, a Hugging "
                          "Face folder or a Google TF1 checkpoint directory.")
  if model_dir.is_model_dir(path):
    return "bert_jax"
  if path.is_dir() and (path / "config.json").is_file():
    return "hf"
  if _tf1_prefix(path) is not None:
    return "tf1"
  raise SourceNotFoundError(f"{path} is not a bert_jax directory (model_info.json), a Hugging "
                            "Face folder (config.json + model.safetensors) or a TF1 checkpoint "
                            "(bert_config.json + *.ckpt.index); check the path.")


def _tf1_prefix(path: pathlib.Path) -> pathlib.Path | None:
  if path.is_dir():
    indexes = sorted(path.glob("*.ckpt*.index")) or sorted(path.glob("*.index"))
    if not indexes:
      return None
    named = [p for p in indexes if p.name == "bert_model.ckpt.index"]
    return (named or indexes)[-1].with_suffix("")
  if pathlib.Path(str(path) + ".index").is_file():
    return path
  return None


# ------------------------------------------------------------------ readers -> HF tensors
def read_hf_tensors(folder: pathlib.Path) -> dict[str, np.ndarray]:
  """HF weights (safetensors, sharded safetensors or pytorch_model.bin) as f32 numpy arrays."""
  single = folder / "model.safetensors"
  index = folder / "model.safetensors.index.json"
  binary = folder / "pytorch_model.bin"
  if single.is_file():
    return _read_safetensors(single)
  if index.is_file():
    shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    out = {}
    for shard in shards:
      if not (folder / shard).is_file():
        raise ConversionError(f"{folder / shard} listed in {index.name} is missing; copy the "
                              "whole model folder.")
      out.update(_read_safetensors(folder / shard))
    return out
  if binary.is_file():
    try:
      import torch
    except ImportError as e:
      raise ConversionError(f"{binary} needs PyTorch to read; pip install torch (or convert it "
                            "to model.safetensors).") from e
    try:  # weights_only=True: tensors only, never arbitrary objects or code from the pickle.
      state = torch.load(binary, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - UnpicklingError, RuntimeError, EOFError, ...
      raise ConversionError(f"{binary} is not a plain PyTorch state dict that can be read "
                            f"safely ({type(e).__name__}; it may hold code or be damaged); use "
                            "its model.safetensors instead.") from None
    if not isinstance(state, dict):
      raise ConversionError(f"{binary} holds a {type(state).__name__}, not a state dict of "
                            "tensors; use its model.safetensors instead.")
    return {k: v.float().numpy() for k, v in state.items() if hasattr(v, "float")}
  raise ConversionError(f"{folder} has config.json but no model.safetensors or pytorch_model.bin; "
                        "copy the weights file there.")


def _read_safetensors(path: pathlib.Path) -> dict[str, np.ndarray]:
  from safetensors import safe_open
  out = {}
  try:
    with safe_open(str(path), framework="np") as f:
      for k in f.keys():
        out[k] = np.asarray(f.get_tensor(k))
  except (TypeError, ValueError):  # bf16 tensors have no numpy dtype in safetensors' numpy API.
    with safe_open(str(path), framework="pt") as f:
      for k in f.keys():
        out[k] = f.get_tensor(k).float().numpy()
  # bf16 arrives as an ml_dtypes type (kind "V"); every float becomes exact f32.
  floats = ("bfloat16", "float16", "float64")
  return {k: v.astype(np.float32) if v.dtype.kind == "f" or v.dtype.name in floats else v
          for k, v in out.items()}


_TF_OPTIMIZER_SUFFIXES = ("adam_m", "adam_v", "Adam", "Adam_1", "Momentum", "LAMB", "LAMB_1")
_TF_SKIP = ("global_step", "bad_steps", "good_steps", "loss_scale", "current_loss_scale")


def read_tf1_tensors(prefix: pathlib.Path) -> tuple[dict[str, np.ndarray], list[str]]:
  """Google TF1 variables renamed to HF names in HF layout; returns (tensors, ignored names)."""
  try:
    import tensorflow as tf
  except ImportError as e:
    raise ConversionError(f"Reading a TF1 checkpoint needs TensorFlow; {TF_INSTALL_HINT}.") from e
  try:
    reader = tf.train.load_checkpoint(str(prefix))
  except Exception as e:  # noqa: BLE001 (TF raises several error types for unreadable files)
    raise ConversionError(f"TensorFlow could not read the checkpoint {prefix} "
                          f"({type(e).__name__}); check that all bert_model.ckpt.* files are "
                          "there.") from e
  out, ignored = {}, []
  for name in sorted(reader.get_variable_to_shape_map()):
    leaf = name.rsplit("/", 1)[-1]
    if leaf in _TF_OPTIMIZER_SUFFIXES or name in _TF_SKIP:
      ignored.append(name)
      continue
    hf = _tf_to_hf_name(name)
    if hf is None:
      ignored.append(name)
      continue
    value = np.asarray(reader.get_tensor(name), np.float32)
    if name.endswith("/kernel"):
      value = value.T  # TF Dense kernels are [in, out]; HF Linear weights are [out, in].
    out[hf] = value
  return out, ignored


def _tf_to_hf_name(name: str) -> str | None:
  if name == "cls/predictions/output_bias":
    return "cls.predictions.bias"
  if name == "cls/seq_relationship/output_weights":
    return "cls.seq_relationship.weight"  # Stored [2, D] like an HF weight.
  if name == "cls/seq_relationship/output_bias":
    return "cls.seq_relationship.bias"
  if not name.startswith(("bert/", "cls/predictions/")):
    return None
  parts = name.split("/")
  parts = [re.sub(r"^layer_(\d+)$", r"layer.\1", p) for p in parts]
  last = parts[-1]
  if last in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
    parts.append("weight")
  elif last in ("kernel", "gamma"):
    parts[-1] = "weight"
  elif last == "beta":
    parts[-1] = "bias"
  elif last != "bias":
    return None
  return ".".join(parts)


# ------------------------------------------------------------------ HF tensors <-> bert_jax
_DENSE_RE = re.compile(r"\.(dense|seq_relationship|classifier|qa_outputs)\.weight$")
_QKV_RE = re.compile(r"\.(?:cross)?attention\.self\.(query|key|value)\.(weight|bias)$")
_ATT_OUT_RE = re.compile(r"\.attention\.output\.dense\.weight$")


def _hf_local_to_jax(name: str) -> str | None:
  """HF name with `bert.`/`cls.` resolved -> bert_jax name (no array transform)."""
  name = re.sub(r"\.(gamma|beta)$", lambda m: ".weight" if m[1] == "gamma" else ".bias", name)
  if re.search(r"LayerNorm\.weight$", name):
    return name[:-len("weight")] + "scale"
  if re.search(r"_embeddings\.weight$", name):
    return name[:-len("weight")] + "embedding"
  if name.endswith(".weight"):
    return name[:-len("weight")] + "kernel"
  if name.endswith(".bias"):
    return name
  return None


def _converted_tensor(hf_name: str, x: np.ndarray, jax_name: str, shape: tuple,
                      config: BertConfig) -> np.ndarray:
  """HF tensor `hf_name` as bert_jax's `jax_name` (f32, its layout), refused unless it has the
  `shape` the model built from `config` expects. One reader for every HF architecture."""
  y = _to_jax_array(jax_name, x, config)
  if tuple(y.shape) != tuple(shape):
    raise ConversionError(f"Tensor {hf_name} has shape {tuple(x.shape)}, which does not fit "
                          f"{jax_name} {tuple(shape)} for this config; the weights and "
                          "config.json disagree.")
  return np.asarray(y, np.float32)


def _to_jax_array(jax_name: str, x: np.ndarray, config: BertConfig) -> np.ndarray:
  d, n, h = config.hidden_size, config.num_attention_heads, config.head_size
  if _QKV_RE.search(jax_name.replace(".kernel", ".weight")):
    if jax_name.endswith(".kernel"):
      return x.T.reshape(d, n, h) if x.shape == (n * h, d) else x
    return x.reshape(n, h) if x.shape == (n * h,) else x
  if jax_name.endswith("attention.output.dense.kernel"):
    return x.T.reshape(n, h, d) if x.shape == (d, n * h) else x
  if jax_name.endswith(".kernel"):
    return x.T
  return x


def _from_jax_array(jax_name: str, x: np.ndarray) -> np.ndarray:
  if re.search(r"attention\.self\.(query|key|value)\.kernel$", jax_name):
    d, n, h = x.shape
    return np.ascontiguousarray(x.reshape(d, n * h).T)
  if re.search(r"attention\.self\.(query|key|value)\.bias$", jax_name):
    return x.reshape(-1)
  if jax_name.endswith("attention.output.dense.kernel"):
    n, h, d = x.shape
    return np.ascontiguousarray(x.reshape(n * h, d).T)
  if jax_name.endswith(".kernel"):
    return np.ascontiguousarray(x.T)
  return x


def _guess_architecture(names: set[str], hf_config: dict) -> tuple[str, dict]:
  """The bert_jax class for the heads present, and extra model_info."""
  declared = (hf_config.get("architectures") or [None])[0]
  has_mlm = any(k.startswith("cls.predictions.") for k in names)
  has_nsp = any(k.startswith("cls.seq_relationship.") for k in names)
  if any(k.startswith("qa_outputs.") for k in names):
    return "BertForQuestionAnswering", {}
  if any(k.startswith("discriminator_predictions.") for k in names):
    return "ElectraForPreTraining", {}
  if any(k.startswith("classifier.") for k in names):
    arch = declared if declared in ("BertForSequenceClassification",
                                    "BertForTokenClassification") else (
        "BertForSequenceClassification")
    return arch, {}
  if has_mlm and has_nsp:
    return "BertForPreTraining", {}
  if has_mlm:
    return "BertForMaskedLM", {}
  return "BertModel", {}


def hf_tensors_to_bert_jax(tensors: dict[str, np.ndarray], config: BertConfig,
                           hf_config: dict | None = None, source: str = "") -> Converted:
  """Maps HF-named tensors (PyTorch layout) onto a bert_jax architecture and checks shapes."""
  from flax import nnx
  hf_config = hf_config or {}
  has_prefix = any(k.startswith("bert.") for k in tensors)
  if not any(k.endswith("embeddings.word_embeddings.weight") for k in tensors):
    raise ConversionError(f"{source or 'The source'} has no embeddings.word_embeddings tensor; "
                          "this is not a BERT checkpoint layout bert_jax knows.")
  # Names relative to the encoder (BertModel) or the head model root.
  local: dict[str, np.ndarray] = {}
  ignored: list[str] = []
  for k, v in tensors.items():
    if has_prefix and k.startswith("bert."):
      local[k] = v
    elif not has_prefix and k.startswith(("embeddings.", "encoder.", "pooler.")):
      local["bert." + k] = v
    elif k.startswith("cls.") or k.startswith(("classifier.", "qa_outputs.",
                                               "discriminator_predictions.")):
      local[k] = v
    else:
      ignored.append(k)
  arch, extra = _guess_architecture(set(local), hf_config)
  if arch == "BertModel" and not any(k.startswith("bert.pooler.") for k in local):
    extra["add_pooling_layer"] = False
  num_labels = None
  if arch in ("BertForSequenceClassification", "BertForTokenClassification"):
    num_labels = int(local["classifier.weight"].shape[0])
    id2label = hf_config.get("id2label")
    if id2label and len(id2label) == num_labels:
      extra["label_names"] = [id2label[str(i)] if str(i) in id2label else id2label[i]
                              for i in range(num_labels)]
  cls = pretrained.model_class(arch)
  kwargs = pretrained.init_kwargs(cls, {"num_labels": num_labels, **extra})
  abstract = nnx.eval_shape(lambda: cls(config, rngs=nnx.Rngs(0), **kwargs))
  expected = {k: tuple(v.shape) for k, v in
              model_dir.flatten(nnx.state(abstract, nnx.Param).to_pure_dict()).items()}
  strip_bert = arch == "BertModel"

  params, mapped = {}, []
  word = local.get("bert.embeddings.word_embeddings.weight")
  for k, v in sorted(local.items()):
    if k == "cls.predictions.decoder.weight":
      if word is not None and v.shape == word.shape and not np.array_equal(v, word):
        print(f"warning: {k} differs from the word embeddings; bert_jax ties the decoder to the "
              "embeddings, so it is ignored.", file=sys.stderr)
      ignored.append(k + " (tied to word embeddings)")
      continue
    if k == "cls.predictions.decoder.bias":
      if "cls.predictions.bias" in local:
        ignored.append(k + " (same as cls.predictions.bias)")
        continue
      k = "cls.predictions.bias"
    rel = k[len("bert."):] if (strip_bert and k.startswith("bert.")) else k
    rel = re.sub(r"^cls\.", "", rel)
    jax_name = _hf_local_to_jax(rel)
    if jax_name is None or jax_name not in expected:
      ignored.append(k)
      continue
    params[jax_name] = _converted_tensor(k, v, jax_name, expected[jax_name], config)
    mapped.append(k)
  missing = sorted(set(expected) - set(params))
  if missing:
    raise ConversionError(f"{source or 'The source'} lacks {len(missing)} tensors that "
                          f"{arch} needs (first: {missing[0]}); the checkpoint is incomplete.")
  info = {"architecture": arch, "num_labels": num_labels, **extra}
  return Converted(config, info, params, None, mapped, sorted(ignored))


def bert_jax_to_hf_tensors(params: dict[str, np.ndarray], info: dict) -> dict[str, np.ndarray]:
  """bert_jax flat params -> HF state dict (f32, PyTorch layout) for info['architecture']."""
  arch = info["architecture"]
  out = {}
  for name, x in params.items():
    x = _from_jax_array(name, np.asarray(x, np.float32))
    if arch == "BertModel":
      hf = name
    elif name.startswith(("predictions.", "seq_relationship.")):
      hf = "cls." + name
    else:
      hf = name
    if hf.endswith(".scale"):
      hf = hf[:-len("scale")] + "weight"
    elif hf.endswith(".embedding"):
      hf = hf[:-len("embedding")] + "weight"
    elif hf.endswith(".kernel"):
      hf = hf[:-len("kernel")] + "weight"
    out[hf] = np.ascontiguousarray(x, np.float32)
  if "cls.predictions.bias" in out:
    word_name = ("bert." if arch != "BertModel" else "") + "embeddings.word_embeddings.weight"
    out["cls.predictions.decoder.weight"] = out[word_name].copy()  # HF ties; stored for loaders.
    out["cls.predictions.decoder.bias"] = out["cls.predictions.bias"].copy()
  return out


def hf_config_dict(config: BertConfig, info: dict) -> dict:
  keys = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
          "intermediate_size", "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob",
          "max_position_embeddings", "type_vocab_size", "initializer_range", "layer_norm_eps",
          "pad_token_id")
  cfg = {k: getattr(config, k) for k in keys}
  cfg.update(architectures=[info["architecture"]], model_type="bert",
             position_embedding_type="absolute", tie_word_embeddings=True, torch_dtype="float32")
  if info.get("num_labels"):
    names = info.get("label_names") or [f"LABEL_{i}" for i in range(info["num_labels"])]
    cfg["id2label"] = {str(i): n for i, n in enumerate(names)}
    cfg["label2id"] = {n: i for i, n in enumerate(names)}
  return cfg


# ------------------------------------------------------------------ BERT2BERT encoder-decoders
# transformers' EncoderDecoderModel (BertModel encoder, BertLMHeadModel decoder) has the names of
# seq2seq_modeling.BertEncoderDecoder, so both directions are the renames and reshapes above.
_SAME_SHAPE = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
               "intermediate_size", "max_position_embeddings", "type_vocab_size", "hidden_act")
GENERATION_IDS = ("decoder_start_token_id", "eos_token_id", "pad_token_id")


def check_decoder_config(dec: dict, enc: dict, source) -> None:
  """Refuses an HF decoder config that a BERT2BERT decoder cannot load, in one sentence."""
  if dec.get("model_type") != "bert" or enc.get("model_type") != "bert":
    raise ConversionError(f"{source}: the encoder is {enc.get('model_type')!r} and the decoder "
                          f"{dec.get('model_type')!r}; bert_jax converts encoder-decoders whose "
                          "encoder and decoder are both BERT ('bert').")
  if not dec.get("is_decoder") or not dec.get("add_cross_attention"):
    raise ConversionError(
        f"{source}: the decoder is not causal-compatible (is_decoder={dec.get('is_decoder')}, "
        f"add_cross_attention={dec.get('add_cross_attention')}); a BERT2BERT decoder needs both "
        "true (build it with BertLMHeadModel(is_decoder=True, add_cross_attention=True)).")
  differ = [k for k in _SAME_SHAPE if enc.get(k, dec.get(k)) != dec.get(k, enc.get(k))]
  if differ:
    raise ConversionError(f"{source}: encoder and decoder differ in {', '.join(differ)}; "
                          "bert_jax's BERT2BERT keeps one BERT shape for both (warm-start both "
                          "from one checkpoint).")


def encoder_decoder_from_hf_tensors(tensors: dict[str, np.ndarray], config: BertConfig, info: dict,
                                    source: str = "") -> Converted:
  """HF EncoderDecoderModel tensors -> a BertEncoderDecoder `Converted` (shapes checked)."""
  from flax import nnx

  from bert_jax import seq2seq_modeling
  share = bool(info.get("share"))
  abstract = nnx.eval_shape(lambda: seq2seq_modeling.BertEncoderDecoder(
      config, rngs=nnx.Rngs(0), share=share))
  expected = {k: tuple(v.shape) for k, v in
              model_dir.flatten(nnx.state(abstract, nnx.Param).to_pure_dict()).items()}
  params, mapped, ignored = {}, [], []
  for k, v in sorted(tensors.items()):
    jax_name = _hf_local_to_jax(k)
    if k.startswith("decoder.cls.predictions.decoder.") or jax_name not in expected:
      ignored.append(k + (" (tied to decoder word embeddings)" if ".decoder.decoder." in k
                          or "predictions.decoder." in k else ""))
      continue
    params[jax_name] = _converted_tensor(k, v, jax_name, expected[jax_name], config)
    mapped.append(k)
  for name in set(expected) - set(params):  # tie_encoder_decoder folders store shared ones once
    twin = "encoder." + name.removeprefix("decoder.bert.")
    if name.startswith("decoder.bert.") and twin in params:
      params[name] = params[twin]
  missing = sorted(set(expected) - set(params))
  if missing:
    raise ConversionError(f"{source or 'The source'} lacks {len(missing)} tensors that "
                          f"{SEQ2SEQ_ARCHITECTURE} needs (first: {missing[0]}); the checkpoint "
                          "is incomplete.")
  info = {"architecture": SEQ2SEQ_ARCHITECTURE, "num_labels": None, **info}
  return Converted(config, info, params, None, mapped, ignored)


def read_hf_encoder_decoder(folder, hf_config: dict) -> Converted:
  """An HF EncoderDecoderModel folder (BERT encoder + BertLMHeadModel decoder) in memory."""
  folder = pathlib.Path(folder)
  enc, dec = hf_config.get("encoder") or {}, hf_config.get("decoder") or {}
  check_decoder_config(dec, enc, folder)
  try:
    config = BertConfig.from_dict(enc)
  except (TypeError, ValueError) as e:
    raise ConversionError(f"{folder}/config.json's encoder is not a valid BERT config "
                          f"({e}).") from e
  info = {"share": bool(hf_config.get("tie_encoder_decoder"))}
  info.update({k: int(hf_config[k]) for k in GENERATION_IDS if hf_config.get(k) is not None})
  conv = encoder_decoder_from_hf_tensors(read_hf_tensors(folder), config, info, str(folder))
  conv.tokenizer = _tokenizer_or_none(folder)
  return conv


def encoder_decoder_hf_files(conv: Converted) -> tuple[dict[str, np.ndarray], dict]:
  """(HF tensors, config.json dict) of a BertEncoderDecoder `Converted`."""
  if conv.info.get("copy") or any(k.startswith("copy_gate.") for k in conv.params):
    raise ConversionError("This BERT2BERT model has a copy gate (seq2seq.copy=True), which "
                          "transformers' EncoderDecoderModel cannot express; keep it as a bert_jax "
                          "model directory (exporting without the gate would change its outputs).")
  out = {}
  for name, x in conv.params.items():
    hf = re.sub(r"\.(scale|embedding|kernel)$", ".weight", name)
    out[hf] = np.ascontiguousarray(_from_jax_array(name, np.asarray(x, np.float32)), np.float32)
  if conv.info.get("share"):  # BERT2BERT-share names shared weights once: write both sides
    for hf in [k for k in out if k.startswith("decoder.bert.") and ".crossattention." not in k]:
      out.setdefault("encoder." + hf.removeprefix("decoder.bert."), out[hf].copy())
  word = out["decoder.bert.embeddings.word_embeddings.weight"]
  out["decoder.cls.predictions.decoder.weight"] = word.copy()  # tied; stored for loaders
  out["decoder.cls.predictions.decoder.bias"] = out["decoder.cls.predictions.bias"].copy()
  enc = hf_config_dict(conv.config, {"architecture": "BertModel"})
  dec = dict(enc, architectures=["BertLMHeadModel"], is_decoder=True, add_cross_attention=True)
  cfg = {"architectures": ["EncoderDecoderModel"], "model_type": "encoder-decoder",
         "is_encoder_decoder": True, "encoder": enc, "decoder": dec,
         "tie_encoder_decoder": bool(conv.info.get("share")), "torch_dtype": "float32"}
  cfg.update({k: conv.info[k] for k in GENERATION_IDS if conv.info.get(k) is not None})
  return out, cfg


# ------------------------------------------------------------------ reading any source
def _tokenizer_or_none(folder: pathlib.Path):
  try:
    return pretrained.BertTokenizer.from_pretrained(folder)
  except FileNotFoundError:
    return None


def read_hf(folder) -> Converted:
  """A Hugging Face BERT folder (config.json + weights) in memory, with its tokenizer."""
  folder = pathlib.Path(folder)
  hf_config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
  model_type = hf_config.get("model_type", "bert")
  if model_type == "modernbert":
    return read_modern_hf(folder)
  if model_type == "electra":
    from bert_jax import electra
    return electra.read_hf(folder, hf_config)
  if model_type == "encoder-decoder":
    return read_hf_encoder_decoder(folder, hf_config)
  if model_type != "bert":
    raise ConversionError(f"{folder}/config.json has model_type {model_type!r}; bert_jax converts "
                          "BERT ('bert'), ModernBERT, ELECTRA discriminator and BERT2BERT "
                          "('encoder-decoder') checkpoints.")
  if hf_config.get("position_embedding_type", "absolute") != "absolute":
    raise ConversionError(f"{folder} uses position_embedding_type "
                          f"{hf_config['position_embedding_type']!r}; bert_jax supports only "
                          "absolute position embeddings.")
  try:
    config = BertConfig.from_dict(hf_config)
  except (TypeError, ValueError) as e:
    raise ConversionError(f"{folder}/config.json is not a valid BERT config ({e}).") from e
  conv = hf_tensors_to_bert_jax(read_hf_tensors(folder), config, hf_config, str(folder))
  conv.tokenizer = _tokenizer_or_none(folder)
  return conv


def read_modern_hf(folder) -> Converted:
  """A Hugging Face ModernBERT folder in memory (modern_convert's checks), with its tokenizer."""
  from bert_jax import modern_convert
  try:
    m = modern_convert.read_hf_folder(folder)
  except errors.ModelFileError as e:
    raise ConversionError(str(e)) from None
  info = {"architecture": m.architecture, "num_labels": m.num_labels}
  if m.label_names:
    info["label_names"] = list(m.label_names)
  return Converted(m.config, info, m.params, _tokenizer_or_none(pathlib.Path(folder)), m.mapped,
                   m.ignored)


def _modern_hf_files(conv: Converted) -> tuple[dict[str, np.ndarray], dict]:
  """(HF tensors, config.json dict) of a ModernBERT `Converted`."""
  from bert_jax import modern_convert
  arch = conv.info["architecture"]
  m = modern_convert.HFModernBert(conv.config, conv.params, arch,
                                  conv.info.get("num_labels") if "Classification" in arch else None,
                                  conv.info.get("label_names"))
  tensors = {k: np.ascontiguousarray(v, np.float32)
             for k, v in modern_convert.params_to_hf(conv.params, arch).items()}
  return tensors, modern_convert.hf_config_dict(m)


def read_tf1(path) -> Converted:
  """A Google TF1 checkpoint (a directory or a checkpoint prefix) in memory."""
  path = pathlib.Path(path)
  prefix = _tf1_prefix(path)
  folder = prefix.parent
  cfg_path = folder / "bert_config.json"
  if not cfg_path.is_file():
    raise ConversionError(f"{cfg_path} is missing; a Google TF1 checkpoint needs its "
                          "bert_config.json beside bert_model.ckpt.*.")
  config = BertConfig.from_json(cfg_path)
  tensors, tf_ignored = read_tf1_tensors(prefix)
  conv = hf_tensors_to_bert_jax(tensors, config, {}, str(prefix))
  conv.ignored = sorted(conv.ignored + tf_ignored)
  conv.tokenizer = _tokenizer_or_none(folder)
  return conv


def read_bert_jax(path) -> Converted:
  """A bert_jax model directory in memory."""
  config, info, params = model_dir.read_model_dir(path)
  flat = model_dir.flatten(params)
  return Converted(config, info, flat, _tokenizer_or_none(pathlib.Path(path)), sorted(flat), [])


def read_any(path) -> Converted:
  """Reads a bert_jax directory, HF folder or TF1 checkpoint into memory (no model is built:
  `loading.build_model` does that)."""
  fmt = detect_format(path)
  return {"bert_jax": read_bert_jax, "hf": read_hf, "tf1": read_tf1}[fmt](path)


# ------------------------------------------------------------------ writers
def write_bert_jax(conv: Converted, dst, overwrite: bool = False) -> pathlib.Path:
  return model_dir.write_model_dir(dst, conv.config, conv.info, conv.params, conv.tokenizer,
                                   overwrite=overwrite)


def write_hf(conv: Converted, dst, overwrite: bool = False, extra_files=None) -> pathlib.Path:
  """Writes config.json, model.safetensors (f32), and the tokenizer files; extra_files(tmp_dir)
  adds more (the sentence-transformers modules) inside the same atomic write."""
  from safetensors.numpy import save_file
  if family.of_config(conv.config) == "modern":
    tensors, cfg = _modern_hf_files(conv)
  elif conv.info.get("architecture") == SEQ2SEQ_ARCHITECTURE:
    tensors, cfg = encoder_decoder_hf_files(conv)
  elif conv.info.get("architecture") == "ElectraForPreTraining":  # An RTD discriminator.
    from bert_jax import electra
    tensors, cfg = electra.hf_files(conv)
  else:
    tensors = bert_jax_to_hf_tensors(conv.params, conv.info)
    cfg = hf_config_dict(conv.config, conv.info)

  def write(tmp: pathlib.Path):
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n",
                                     encoding="utf-8")
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    if conv.tokenizer is not None:
      conv.tokenizer.save(tmp)
    if extra_files is not None:
      extra_files(tmp)

  return model_dir.atomic_write_dir(dst, write, overwrite)


def convert(src, dst, to: str = "bert_jax", overwrite: bool = False) -> Converted:
  """Converts `src` (any supported format) to `dst` in format `to`; returns what was done."""
  if to not in ("bert_jax", "hf"):
    raise ConversionError(f"--to={to!r} is not 'bert_jax' or 'hf'.")
  src, dst = pathlib.Path(src).absolute(), pathlib.Path(dst).absolute()
  if src == dst:
    raise ConversionError("--src and --dst are the same path; write to a new directory.")
  try:
    model_dir.check_writable(dst, overwrite)  # Refuse before reading gigabytes.
  except FileExistsError as e:
    raise ConversionError(str(e)) from e
  conv = read_any(src)
  (write_bert_jax if to == "bert_jax" else write_hf)(conv, dst, overwrite)
  return conv
