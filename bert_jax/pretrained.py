"""The transformers-style classes: `BertTokenizer` and models with `from_pretrained`.

    from bert_jax import BertTokenizer, BertModel
    tokenizer = BertTokenizer.from_pretrained(path)   # bert_jax dir, HF folder or TF1 dir
    model = BertModel.from_pretrained(path)
    outputs = model(tokenizer.convert_tokens_to_ids(tokenizer.tokenize("Hello, my dog is cute")))
    outputs[0], outputs.last_hidden_state                  # [1, L, D]

The model classes are subclasses of the pure NNX modules of `modeling.py` / `heads.py` that only
add loading and saving: an instance is the same NNX module the trainer uses. Their outputs are
those modules' outputs: `BertModel` returns `BertOutput` (a NamedTuple, so `outputs[0]` is the
last hidden state), `BertForPreTraining` a `PreTrainingOutput` (`mlm_logits`, `nsp_logits`, ...)
and `BertForMaskedLM` the MLM logits [B, L, V] as one array.

The ModernBERT family has the same classes (`ModernBertModel`, `ModernBertForMaskedLM`,
`ModernBertForSequenceClassification`, `ModernBertForTokenClassification`,
`ModernBertForQuestionAnswering`, subclasses of modern_modeling.py's modules) with the same
call signature and outputs; loading a checkpoint of one family into the other's class is refused
in one sentence naming the class to use. `BertTokenizer.from_pretrained` also reads a folder
whose only vocabulary is a `tokenizer.json` (ModernBERT's BPE).

Every loader (these classes' `from_pretrained`, `bert_jax.from_pretrained`, `bert_jax.load_model`)
returns instances of these classes; `ARCHITECTURES` maps model_info.json's architecture names to
them. The reading and building itself is `loading.py`.
"""
from __future__ import annotations

import inspect
import pathlib

from bert_jax import (
  electra,
  errors,
  heads,
  modeling,
  modern_modeling,
  seq2seq_modeling,
  tokenization,
)

_SPECIAL_NAMES = ("unk", "sep", "pad", "cls", "mask")


class BertTokenizer(tokenization.Tokenizer):
  """`tokenization.Tokenizer` with the names of `transformers.BertTokenizerFast`.

  Differences from transformers: `__call__` always returns arrays with a batch axis (numpy, or
  JAX with `return_tensors="jax"`) and truncates to `max_length` by default; `encode` returns ids
  without [CLS] / [SEP] (the data pipeline's convention).
  """

  model_max_length: int = 512

  @classmethod
  def from_pretrained(cls, path, *, do_lower_case: bool | None = None) -> "BertTokenizer":
    """A vocab.txt / SentencePiece .model file, or a folder holding one (bert_jax, HF, TF1)."""
    path = pathlib.Path(path)
    if not path.exists():
      raise errors.MissingFileError(f"{path} does not exist; pass a model folder or a vocab.txt "
                                    "file.")
    if path.is_file():
      tok = cls.from_vocab(path, do_lower_case)
    elif do_lower_case is not None:
      tok = cls.from_vocab(path / tokenization.VOCAB_FILE, do_lower_case)
    else:
      tok = cls.from_dir(path)
    cfg_path = path / tokenization.CONFIG_FILE if path.is_dir() else None
    if cfg_path is not None and cfg_path.is_file():
      import json
      max_len = json.loads(cfg_path.read_text(encoding="utf-8")).get("model_max_length")
      if isinstance(max_len, int) and 0 < max_len < 1_000_000:  # HF writes 1e30 for "none".
        tok.model_max_length = max_len
    return tok

  def save_pretrained(self, path) -> pathlib.Path:
    """Writes the vocabulary files into `path` (refuses to replace a different vocabulary)."""
    path = pathlib.Path(path)
    existing = path / tokenization.VOCAB_FILE
    if existing.is_file() and existing.read_bytes() != self.vocab_path.read_bytes():
      raise errors.ExistsError(f"{existing} holds another vocabulary; save to another folder.")
    self.save(path)
    return path

  # ------------------------------------------------------------ transformers names
  def __len__(self) -> int:
    return self.vocab_size

  def get_vocab(self) -> dict[str, int]:
    return {self.convert_ids_to_tokens(i): i for i in range(self.vocab_size)}

  @property
  def all_special_ids(self) -> list[int]:
    return sorted(self.special_ids)

  @property
  def all_special_tokens(self) -> list[str]:
    return self.convert_ids_to_tokens(self.all_special_ids)

  def batch_decode(self, sequences, skip_special_tokens: bool = True) -> list[str]:
    return [self.decode(s, skip_special_tokens) for s in sequences]

  def __call__(self, text, text_pair=None, *, padding="longest", truncation: bool = True,
               max_length: int | None = None, return_tensors: str | None = "np") -> dict:
    """Model inputs for one text, a batch, or (with `text_pair`) sentence pairs.

    Returns `input_ids`, `token_type_ids`, `attention_mask` as int32 [B, L] arrays
    (`return_tensors`: "np" (also None) or "jax"). `padding`: True / "longest" or "max_length";
    rows longer than `max_length` (default `model_max_length`) are truncated longest-first.
    """
    padding = "longest" if padding is True else padding
    return super().__call__(text, text_pair, max_length=max_length or self.model_max_length,
                            padding=padding, truncation=truncation,
                            return_tensors=return_tensors or "np")


def _special_property(name: str):
  def token(self):
    return self.convert_ids_to_tokens(getattr(self, f"{name}_id"))

  def token_id(self):
    return getattr(self, f"{name}_id")

  return property(token, doc=f"The {name} token."), property(token_id, doc=f"The {name} id.")


for _name in _SPECIAL_NAMES:
  _tok_prop, _id_prop = _special_property(_name)
  setattr(BertTokenizer, f"{_name}_token", _tok_prop)
  setattr(BertTokenizer, f"{_name}_token_id", _id_prop)


# ------------------------------------------------------------------------- models
class PretrainedMixin:
  """`from_pretrained` / `save_pretrained` for the NNX model classes."""

  @classmethod
  def from_pretrained(cls, path, *, dtype=None, param_dtype=None,
                      output_loading_info: bool = False, **model_kwargs):
    """Loads a bert_jax directory, a Hugging Face folder or a Google TF1 checkpoint directory.

    Weights the checkpoint lacks (e.g. the MLM head when loading BertForMaskedLM from an
    encoder-only checkpoint) are freshly initialised and named in a warning. `dtype` is the
    compute dtype ("bfloat16" halves activation memory; parameters stay f32 unless
    `param_dtype` says otherwise). With `output_loading_info=True` returns
    (model, {"missing_keys": [...], "unexpected_keys": [...]}).
    """
    from bert_jax import loading  # loading.py builds these classes, so it comes in when called.
    model, _, loading_info = loading.load_pretrained(path, cls, dtype=dtype,
                                                     param_dtype=param_dtype, **model_kwargs)
    return (model, loading_info) if output_loading_info else model

  def save_pretrained(self, path, format: str = "bert_jax", *, tokenizer=None,
                      overwrite: bool = False, **sentence_transformers) -> pathlib.Path:
    """Writes a bert_jax directory, (format="hf") a folder transformers loads, or
    (format="sentence-transformers") a folder `SentenceTransformer(path)` loads; that format
    takes pooling="mean" | "cls" | "lasttoken", normalize=True and max_seq_length=...

    Pass `tokenizer=` to store the vocabulary beside the weights (or call
    `tokenizer.save_pretrained(path)` afterwards); sentence-transformers needs it.
    """
    from bert_jax import loading
    return loading.save_pretrained(self, tokenizer, path, format, overwrite,
                                   **sentence_transformers)


class BertModel(PretrainedMixin, modeling.BertModel):
  """`modeling.BertModel` with from_pretrained / save_pretrained."""


class BertForPreTraining(PretrainedMixin, heads.BertForPreTraining):
  """`heads.BertForPreTraining` with from_pretrained / save_pretrained."""


class BertForMaskedLM(PretrainedMixin, heads.BertForMaskedLM):
  """`heads.BertForMaskedLM` with from_pretrained / save_pretrained."""


class BertForSequenceClassification(PretrainedMixin, heads.BertForSequenceClassification):
  """`heads.BertForSequenceClassification` with from_pretrained / save_pretrained."""


class BertForTokenClassification(PretrainedMixin, heads.BertForTokenClassification):
  """`heads.BertForTokenClassification` with from_pretrained / save_pretrained."""


class BertForQuestionAnswering(PretrainedMixin, heads.BertForQuestionAnswering):
  """`heads.BertForQuestionAnswering` with from_pretrained / save_pretrained."""


class ElectraForPreTraining(PretrainedMixin, electra.ElectraForPreTraining):
  """`electra.ElectraForPreTraining` (an RTD discriminator) with from_pretrained /
  save_pretrained."""


class BertEncoderDecoder(PretrainedMixin, seq2seq_modeling.BertEncoderDecoder):
  """`seq2seq_modeling.BertEncoderDecoder` (BERT2BERT) with from_pretrained / save_pretrained:
  from a BERT checkpoint it is warm-started (encoder and decoder from it, new cross-attention)."""


class ModernBertModel(PretrainedMixin, modern_modeling.ModernBertModel):
  """`modern_modeling.ModernBertModel` with from_pretrained / save_pretrained."""


class ModernBertForMaskedLM(PretrainedMixin, modern_modeling.ModernBertForMaskedLM):
  """`modern_modeling.ModernBertForMaskedLM` with from_pretrained / save_pretrained."""


class ModernBertForSequenceClassification(PretrainedMixin,
                                          modern_modeling.ModernBertForSequenceClassification):
  """`modern_modeling.ModernBertForSequenceClassification` with from_pretrained /
  save_pretrained."""


class ModernBertForTokenClassification(PretrainedMixin,
                                       modern_modeling.ModernBertForTokenClassification):
  """`modern_modeling.ModernBertForTokenClassification` with from_pretrained / save_pretrained."""


class ModernBertForQuestionAnswering(PretrainedMixin,
                                     modern_modeling.ModernBertForQuestionAnswering):
  """`modern_modeling.ModernBertForQuestionAnswering` with from_pretrained / save_pretrained."""


# ------------------------------------------------------------------ architectures
# model_info.json's "architecture" names one of these; every loader builds these classes.
ARCHITECTURES: dict[str, type] = {c.__name__: c for c in (
    BertModel, BertForPreTraining, BertForMaskedLM, BertForSequenceClassification,
    BertForTokenClassification, BertForQuestionAnswering, ElectraForPreTraining,
    BertEncoderDecoder, ModernBertModel,
    ModernBertForMaskedLM,
    ModernBertForSequenceClassification, ModernBertForTokenClassification,
    ModernBertForQuestionAnswering)}
_BY_BASE = {base: c for c in ARCHITECTURES.values() for base in c.__bases__
            if base is not PretrainedMixin}


def model_class(architecture) -> type:
  """The class to build for an architecture name, a modeling / heads class (its subclass here,
  which adds from_pretrained / save_pretrained) or any other NNX class (itself)."""
  if not isinstance(architecture, str):
    return _BY_BASE.get(architecture, architecture)
  if architecture not in ARCHITECTURES:
    raise errors.ModelFileError(f"Unknown architecture {architecture!r} in model_info.json; "
                                f"expected one of {', '.join(ARCHITECTURES)}.")
  return ARCHITECTURES[architecture]


def init_kwargs(cls, info: dict, overrides: dict | None = None) -> dict:
  """The constructor arguments of `cls` beyond the config: what model_info implies
  (num_labels, add_pooling_layer), updated by `overrides` (e.g. num_labels=3)."""
  overrides = dict(overrides or {})
  accepted = inspect.signature(cls.__init__).parameters
  kwargs = {}
  if "num_labels" in accepted:
    num_labels = overrides.get("num_labels", info.get("num_labels"))
    if num_labels is None:
      raise errors.ConfigError(f"{cls.__name__} needs num_labels and the checkpoint has none; "
                               "pass num_labels=....")
    kwargs["num_labels"] = int(num_labels)
  if "share" in accepted and info.get("share"):  # BERT2BERT-share
    kwargs["share"] = True
  if "copy" in accepted and info.get("copy"):  # BERT2BERT with a copy gate
    kwargs["copy"] = True
  if "add_pooling_layer" in accepted and info.get("add_pooling_layer") is False:
    kwargs["add_pooling_layer"] = False
  return {**kwargs, **overrides}
