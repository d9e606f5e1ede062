"""Sentence pairs from one document, as google-research/bert's create_pretraining_data.py does.

Per document a target length is drawn (`short_seq_prob` of the time shorter than the maximum);
sentences accumulate into a chunk until it reaches the target; a random split point makes segment
A; B is the rest of the chunk (label 0, "is next") or, half of the time, text from a random other
document (label 1) and the unused sentences go back to the document. The longer segment is then
truncated from a random end until the pair fits. SOP (ALBERT) swaps A and B instead (label 1).

One deliberate difference: where the chunk is a single sentence, the original always takes a
random next segment, which skews NSP labels towards "random" (about 53% on the Bible). Here such a
sentence is split at a random token instead when the coin says "next", so labels stay 50/50.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

NSP_MODES = ("nsp", "sop")


def split_document(ids: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
  return np.split(ids, np.cumsum(lengths)[:-1]) if len(lengths) else []


def _truncate(a: np.ndarray, b: np.ndarray, max_num_tokens: int, rng) -> tuple:
  """Removes tokens one at a time from the longer segment, at a random end (as the original)."""
  a0, a1, b0, b1 = 0, len(a), 0, len(b)
  excess = a1 + b1 - max_num_tokens
  if excess > 0:
    for coin in rng.random(excess) < 0.5:
      if a1 - a0 > b1 - b0:
        if coin:
          a0 += 1
        else:
          a1 -= 1
      elif coin:
        b0 += 1
      else:
        b1 -= 1
  return a[a0:a1], b[b0:b1]


def document_pairs(sentences: list[np.ndarray], doc_index: int, num_docs: int,
                   get_doc: Callable[[int], list[np.ndarray]], rng, *, max_num_tokens: int,
                   short_seq_prob: float, nsp_mode: str) -> list[tuple]:
  """[(tokens_a, tokens_b, label)] for one document; len(a) + len(b) <= max_num_tokens."""
  target = max_num_tokens
  if rng.random() < short_seq_prob:
    target = int(rng.integers(2, max_num_tokens + 1))
  out = []
  chunk: list[np.ndarray] = []
  length = 0
  i = 0
  while i < len(sentences):
    chunk.append(sentences[i])
    length += len(sentences[i])
    if i == len(sentences) - 1 or length >= target:
      pair = _chunk_pair(chunk, doc_index, num_docs, get_doc, rng, target, nsp_mode)
      if pair is not None:
        a, b, label, unused = pair
        i -= unused
        a, b = _truncate(a, b, max_num_tokens, rng)
        if len(a) and len(b):
          out.append((a, b, label))
      chunk, length = [], 0
    i += 1
  return out


def _chunk_pair(chunk, doc_index, num_docs, get_doc, rng, target, nsp_mode):
  """(a, b, label, sentences to give back) from one chunk, or None when no pair can be made."""
  if len(chunk) == 1:
    seg = chunk[0]
    if nsp_mode == "sop" or rng.random() >= 0.5:  # "next" within the sentence
      if len(seg) < 2:
        if nsp_mode == "sop":
          return None
      else:
        cut = int(rng.integers(1, len(seg)))
        a, b = seg[:cut], seg[cut:]
        if nsp_mode == "sop" and rng.random() < 0.5:
          return b, a, 1, 0
        return a, b, 0, 0
    return chunk[0], _random_segment(doc_index, num_docs, get_doc, rng, target - len(seg)), 1, 0
  a_end = int(rng.integers(1, len(chunk)))
  a = np.concatenate(chunk[:a_end])
  if nsp_mode == "nsp" and rng.random() < 0.5:
    return a, _random_segment(doc_index, num_docs, get_doc, rng, target - len(a)), 1, \
        len(chunk) - a_end
  b = np.concatenate(chunk[a_end:])
  if nsp_mode == "sop" and rng.random() < 0.5:
    return b, a, 1, 0
  return a, b, 0, 0


def _random_segment(doc_index, num_docs, get_doc, rng, target_b_length):
  """Text from a random other document, from a random sentence on, about target_b_length long."""
  other = doc_index
  for _ in range(10):
    other = int(rng.integers(0, num_docs))
    if other != doc_index:
      break
  sentences = get_doc(other)
  start = int(rng.integers(0, len(sentences)))
  b, n = [], 0
  for s in sentences[start:]:
    b.append(s)
    n += len(s)
    if n >= target_b_length:
      break
  return np.concatenate(b)
