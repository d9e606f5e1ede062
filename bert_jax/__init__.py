"""bert_jax: BERT pretraining and fine-tuning in JAX / Flax NNX."""
from bert_jax.configuration import PRESETS, BertConfig, preset
from bert_jax.heads import (BertForMaskedLM, BertForPreTraining, BertForQuestionAnswering,
                            BertForSequenceClassification, BertForTokenClassification)
from bert_jax.modeling import BertModel, BertOutput, create_model

__version__ = "0.1.0"
