"""bert_jax: BERT pretraining and fine-tuning in JAX / Flax NNX."""
from bert_jax.api import from_pretrained, save_pretrained
from bert_jax.configuration import PRESETS, BertConfig, preset
from bert_jax.heads import (BertForMaskedLM, BertForPreTraining, BertForQuestionAnswering,
                            BertForSequenceClassification, BertForTokenClassification)
from bert_jax.model_io import load_model, save_model_dir
from bert_jax.modeling import BertModel, BertOutput, create_model
from bert_jax.tokenization import Tokenizer

__version__ = "0.1.0"
