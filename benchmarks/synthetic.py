"""Synthetic pretraining batches shared by bert_jax and the peer scripts (numpy only).

One batch in bert_jax's layout (`masked_lm_positions` [B, P], ...) and, from the same numbers,
the Hugging Face layout (`labels` [B, L] with -100 where no loss is taken), so every stack
trains on identical inputs. Imported by path from the peer venv too, so it needs only numpy.
"""
from __future__ import annotations

import numpy as np

FIRST_WORDPIECE = 1000  # Ids below are [PAD], [unused*], [CLS], [SEP], [MASK] in BERT vocabs.


def pretraining_batch(batch_size: int, seq_len: int, max_predictions: int, vocab_size: int,
                      seed: int = 0) -> dict[str, np.ndarray]:
  """A full (unpadded) batch: two segments, `max_predictions` masked positions per row."""
  rng = np.random.default_rng(seed)
  input_ids_BxL = rng.integers(FIRST_WORDPIECE, vocab_size, (batch_size, seq_len), np.int32)
  segment_ids_BxL = np.zeros((batch_size, seq_len), np.int32)
  segment_ids_BxL[:, seq_len // 2:] = 1
  # Distinct positions per row, never position 0 ([CLS]), sorted as BERT's data writer emits them.
  positions_BxP = np.sort(np.stack([
      rng.choice(np.arange(1, seq_len), max_predictions, replace=False)
      for _ in range(batch_size)]), axis=1).astype(np.int32)
  ids_BxP = np.take_along_axis(input_ids_BxL, positions_BxP, axis=1)
  return {
      "input_ids": input_ids_BxL,
      "input_mask": np.ones((batch_size, seq_len), np.int32),
      "segment_ids": segment_ids_BxL,
      "masked_lm_positions": positions_BxP,
      "masked_lm_ids": ids_BxP,
      "masked_lm_weights": np.ones((batch_size, max_predictions), np.float32),
      "next_sentence_labels": rng.integers(0, 2, (batch_size,), np.int32),
  }


def hf_labels(batch: dict[str, np.ndarray]) -> np.ndarray:
  """MLM labels [B, L] as Hugging Face expects them: the original id where masked, else -100."""
  labels_BxL = np.full(batch["input_ids"].shape, -100, np.int64)
  np.put_along_axis(labels_BxL, batch["masked_lm_positions"].astype(np.int64),
                    batch["masked_lm_ids"].astype(np.int64), axis=1)
  return labels_BxL


def stats(seconds: list[float]) -> dict[str, float]:
  """Median, min and max of step times (the median is the reported figure)."""
  s = sorted(seconds)
  return {"median_s": float(np.median(s)), "min_s": s[0], "max_s": s[-1], "steps": len(s)}
