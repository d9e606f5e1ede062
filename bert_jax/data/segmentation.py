"""Word segmentation at preparation time, for whole-word masking of text without spaces (Chinese).

`bert-jax-prepare --whole_word_segmenter=jieba` cuts each sentence into words with jieba (the
`[zh]` extra) and stores with every document one flag per token: 1 where the token starts a word.
A token starts a word when its first character starts a segmented word and it is not a WordPiece
`##` continuation (so an English word inside Chinese text stays whole, as without a segmenter).
Training reads the stored flags (`data.whole_word_mask=True`) and never imports the segmenter.

jieba is deterministic for a given version and dictionary (its default one, HMM on); the version
is recorded in the dataset's metadata.
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence

import numpy as np

from bert_jax.errors import DataError

SEGMENTERS = ("jieba",)


@functools.cache
def get(name: str) -> Callable[[str], list[str]]:
  """sentence -> its words (concatenated, they give the sentence back)."""
  if name not in SEGMENTERS:
    raise DataError(f"Unknown whole_word_segmenter {name!r}; use one of {', '.join(SEGMENTERS)}.")
  try:
    import jieba
  except ImportError:
    raise DataError("--whole_word_segmenter=jieba needs jieba; install it with "
                    "pip install 'bert_jax[zh]'.") from None
  jieba.setLogLevel(logging.WARNING)  # its dictionary loading prints to stderr otherwise
  tok = jieba.Tokenizer()
  return lambda s: list(tok.cut(s, HMM=True))


def version(name: str) -> str:
  import importlib.metadata
  return f"{name} {importlib.metadata.version(name)}"


def word_starts(sentence: str, words: Sequence[str], offsets: Sequence[tuple[int, int]],
                ids: Sequence[int], vocab_word_start: np.ndarray) -> np.ndarray:
  """uint8 flags, one per token: the token starts a segmented word and is not `##` continuation.

  `offsets` are the tokens' (start, end) character offsets in `sentence`.
  """
  starts = np.zeros(len(sentence) + 1, bool)
  pos = 0
  for w in words:
    starts[pos] = True
    pos += len(w)
  if pos != len(sentence):  # a segmenter that drops characters: every token is its own word
    starts[:] = True
  first = np.fromiter((o[0] for o in offsets), np.int64, len(offsets))
  flags = starts[np.clip(first, 0, len(sentence))] & vocab_word_start[np.asarray(ids, np.int64)]
  return flags.astype(np.uint8)
