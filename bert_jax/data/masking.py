"""Masked-LM targets for one `[CLS] A [SEP] B [SEP]` row (google-research/bert's recipe).

`masked_lm_prob` of the non-special tokens (at least 1, at most `max_predictions`) are chosen;
80% become [MASK], 10% a random non-special token, 10% stay. With whole-word masking a word (a
word-start token and its continuations: WordPiece `##`, SentencePiece pieces without `▁`) is
chosen or skipped as a whole, never pushing the count over the limit. Word starts stored with the
data by a segmenter (`data.segmentation`, e.g. jieba for Chinese) ride through pair building in bit
`WORD_START_BIT` of the ids (`unpack_word_starts`) and replace the vocabulary's per-id rule.
"""
from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class MaskingSpec:
  mask_id: int
  is_special: np.ndarray        # bool [vocab_size]
  random_ids: np.ndarray        # int32: ids a "random token" replacement is drawn from
  word_start: np.ndarray | None  # bool [vocab_size]; None: mask single tokens
  masked_lm_prob: float = 0.15
  max_predictions: int = 20

  @classmethod
  def create(cls, *, vocab_size: int, special_ids, mask_id: int, word_start=None,
             masked_lm_prob: float = 0.15, max_predictions: int = 20) -> "MaskingSpec":
    is_special = np.zeros(vocab_size, bool)
    is_special[list(special_ids)] = True
    return cls(mask_id=mask_id, is_special=is_special,
               random_ids=np.flatnonzero(~is_special).astype(np.int32),
               word_start=None if word_start is None else np.asarray(word_start, bool),
               masked_lm_prob=masked_lm_prob, max_predictions=max_predictions)


WORD_START_BIT = 1 << 30  # above any vocabulary id


def unpack_word_starts(tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(ids, per-position word-start flags) of tokens carrying stored flags in WORD_START_BIT."""
  return tokens & (WORD_START_BIT - 1), (tokens & WORD_START_BIT) != 0


def num_to_predict(num_candidates: int, spec: MaskingSpec) -> int:
  return min(spec.max_predictions, max(1, int(round(num_candidates * spec.masked_lm_prob))))


def mask_tokens(tokens: np.ndarray, spec: MaskingSpec, rng, word_start=None):
  """Returns (masked input ids, sorted positions, original ids at those positions).

  `word_start`: bool per position (stored by a segmenter); it overrides `spec.word_start`.
  """
  cand = np.flatnonzero(~spec.is_special[tokens])
  limit = num_to_predict(len(cand), spec)
  if spec.word_start is None and word_start is None:
    chosen = np.sort(rng.permutation(cand)[:limit])
  else:
    # A new word starts at a word-start token or after a gap (a special token in between).
    first = word_start[cand] if word_start is not None else spec.word_start[tokens[cand]]
    starts = first | (np.diff(cand, prepend=-2) != 1)
    bounds = np.append(np.flatnonzero(starts), len(cand))
    picked, total = [], 0
    for w in rng.permutation(len(bounds) - 1):
      if total >= limit:
        break
      size = bounds[w + 1] - bounds[w]
      if total + size > limit:
        continue
      picked.append(cand[bounds[w]:bounds[w + 1]])
      total += size
    chosen = np.sort(np.concatenate(picked)) if picked else np.zeros(0, np.int64)
  labels = tokens[chosen]
  out = tokens.copy()
  u = rng.random(len(chosen))
  out[chosen[u < 0.8]] = spec.mask_id
  replace = chosen[u >= 0.9]
  out[replace] = spec.random_ids[rng.integers(0, len(spec.random_ids), len(replace))]
  return out, chosen.astype(np.int32), labels.astype(np.int32)
