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
"""
from __future__ import annotations

import pathlib
import sys

from flax import nnx

from bert_jax import api, heads, model_io, modeling, tokenization

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
      raise FileNotFoundError(f"{path} does not exist; pass a model folder or a vocab.txt file.")
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
      raise FileExistsError(f"{existing} holds another vocabulary; save to another folder.")
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
def _param_names(cls, config, kwargs) -> set[str]:
  abstract = nnx.eval_shape(lambda: cls(config, rngs=nnx.Rngs(params=0), **kwargs))
  return set(model_io.flatten(nnx.state(abstract, nnx.Param).to_pure_dict()))


def _strip_bert(name: str) -> str:
  return name[len("bert."):] if name.startswith("bert.") else name


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
    conv, config = api.load_checkpoint(path, dtype=dtype, param_dtype=param_dtype)
    kwargs = {**model_io._architecture_kwargs_safe(cls, conv.info, model_kwargs), **model_kwargs}
    wanted = _param_names(cls, config, kwargs)
    have = {_strip_bert(k) for k in conv.params}
    missing = sorted(n for n in wanted if _strip_bert(n) not in have)
    unexpected = sorted(have - {_strip_bert(n) for n in wanted})
    if missing:
      print(f"warning: {len(missing)} weights of {cls.__name__} are not in {path} and were "
            f"initialised randomly (first: {missing[0]}); train them before use.",
            file=sys.stderr)
    model = model_io.build_model(config, conv.info, model_io.unflatten(conv.params), cls,
                                 **model_kwargs)
    if output_loading_info:
      return model, {"missing_keys": missing, "unexpected_keys": unexpected}
    return model

  def save_pretrained(self, path, format: str = "bert_jax", *, tokenizer=None,
                      overwrite: bool = False) -> pathlib.Path:
    """Writes a bert_jax directory or (format="hf") a folder transformers loads.

    Pass `tokenizer=` to store the vocabulary beside the weights (or call
    `tokenizer.save_pretrained(path)` afterwards).
    """
    return api.save_pretrained(self, tokenizer, path, format, overwrite)


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
