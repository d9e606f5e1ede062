"""Pretraining data: raw text -> tokenized TFDS (ArrayRecord) documents; see docs/data.md."""
from bert_jax.data.preparation import default_corpus_path, prepare
from bert_jax.errors import DataError

__all__ = ["DataError", "default_corpus_path", "prepare"]
