"""bert_jax: BERT pretraining and fine-tuning in JAX / Flax NNX."""
from bert_jax.api import from_pretrained, save_pretrained
from bert_jax.configuration import PRESETS, BertConfig, preset
from bert_jax.model_io import load_model, save_model_dir
from bert_jax.modeling import BertOutput, create_model

# The model classes below are the NNX modules of modeling.py / heads.py plus from_pretrained /
# save_pretrained (subclasses: instances work wherever those modules do).
from bert_jax.pretrained import (
  BertForMaskedLM,
  BertForPreTraining,
  BertForQuestionAnswering,
  BertForSequenceClassification,
  BertForTokenClassification,
  BertModel,
  BertTokenizer,
)
from bert_jax.tokenization import Tokenizer

__version__ = "0.1.0"
__all__ = ["BertConfig", "BertForMaskedLM", "BertForPreTraining", "BertForQuestionAnswering",
           "BertForSequenceClassification", "BertForTokenClassification", "BertModel",
           "BertOutput", "BertTokenizer", "PRESETS", "Tokenizer", "create_model", "embed",
           "fill_mask", "from_pretrained", "load_model", "preset", "save_model_dir",
           "save_pretrained"]


def __getattr__(name):
  # `bert_jax.fill_mask(...)` / `bert_jax.embed(...)`: the modules are callable and imported on
  # first use, so `python -m bert_jax.fill_mask` does not find them already imported.
  if name in ("fill_mask", "embed"):
    import importlib
    return importlib.import_module(f"bert_jax.{name}")
  raise AttributeError(f"module 'bert_jax' has no attribute {name!r}")
