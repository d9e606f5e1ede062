"""bert_jax: BERT pretraining and fine-tuning in JAX / Flax NNX.

The public names (`__all__`):

  BertModel, BertForPreTraining, BertForMaskedLM, BertForSequenceClassification,
  BertForTokenClassification, BertForQuestionAnswering
                    the models: NNX modules with `from_pretrained` / `save_pretrained`
                    (`pretrained.py`, subclasses of the modules in modeling.py / heads.py)
  ModernBertModel, ModernBertForMaskedLM, ModernBertForSequenceClassification,
  ModernBertForTokenClassification, ModernBertForQuestionAnswering
                    the ModernBERT family's models (modern_modeling.py), same API
  BertTokenizer     the tokenizer with transformers' names (`BertTokenizer.from_pretrained`)
  Tokenizer         the plain tokenizer the data pipeline uses (BertTokenizer's base)
  BertConfig        the model configuration, with the fields of `bert_config.json`
  preset, PRESETS   named model sizes ("base", "large", "tiny", ...)
  BertOutput        what BertModel returns (last_hidden_state, pooler_output, ...)
  create_model      a randomly initialised model of any class
  from_pretrained   (model, tokenizer) from a bert_jax directory, HF folder or TF1 checkpoint
  load_model        the model alone from any of those sources
  save_pretrained   writes a model (and tokenizer) as a bert_jax directory or a HF folder
  save_model_dir    the bert_jax directory writer save_pretrained uses (older name)
  embed             sentence embeddings for a list of texts (`sentence_embedding.py`)
  fill_mask         the likeliest tokens for [MASK] positions (`mask_filling.py`)

Loading and saving live in `loading.py` (any source -> model), `model_dir.py` (the bert_jax
directory format) and `convert.py` (HF / TF1 <-> bert_jax converters).
"""
from bert_jax.configuration import PRESETS, BertConfig, preset
from bert_jax.loading import from_pretrained, load_model, save_pretrained
from bert_jax.mask_filling import fill_mask
from bert_jax.model_dir import save_model_dir
from bert_jax.modeling import BertOutput, create_model
from bert_jax.pretrained import (
  BertForMaskedLM,
  BertForPreTraining,
  BertForQuestionAnswering,
  BertForSequenceClassification,
  BertForTokenClassification,
  BertModel,
  BertTokenizer,
  ModernBertForMaskedLM,
  ModernBertForQuestionAnswering,
  ModernBertForSequenceClassification,
  ModernBertForTokenClassification,
  ModernBertModel,
)
from bert_jax.sentence_embedding import embed
from bert_jax.tokenization import Tokenizer

__version__ = "0.1.0"
__all__ = ["BertConfig", "BertForMaskedLM", "BertForPreTraining", "BertForQuestionAnswering",
           "BertForSequenceClassification", "BertForTokenClassification", "BertModel",
           "BertOutput", "BertTokenizer", "ModernBertForMaskedLM",
           "ModernBertForQuestionAnswering", "ModernBertForSequenceClassification",
           "ModernBertForTokenClassification", "ModernBertModel", "PRESETS", "Tokenizer",
           "create_model", "embed",
           "fill_mask", "from_pretrained", "load_model", "preset", "save_model_dir",
           "save_pretrained"]
