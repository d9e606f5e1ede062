"""Length buckets for fine-tuning: rows cut to a handful of fixed lengths instead of padded to
`data.max_seq_length`.

Classification and NER rows are encoded padded to max_seq_length; most of a short-sentence
batch is then padding. With buckets, each batch is cut to the smallest bucket length that holds
its longest row, so the train and eval steps compile once per bucket (as the inference path does,
bert_jax/inference.py) and skip the padding. Attention masks every padded position, so a row's
outputs do not depend on its bucket (up to float summation order).

`data.length_buckets`: "auto" (powers of two from inference.MIN_BUCKET and the lengths half-way
between them, 16, 24, 32, 48, 64, 96, 128, ..., up to max_seq_length), "off" (every row at
max_seq_length), or comma-separated lengths such as "32,64,128" (max_seq_length is always the
last bucket).
"""
from __future__ import annotations

import numpy as np

from bert_jax import inference
from bert_jax.errors import ConfigError

OFF = ("off", "none", "false", "0", "")


def parse(spec: str, max_seq_length: int) -> tuple[int, ...] | None:
  """The bucket lengths `spec` names for rows of `max_seq_length` tokens, or None (off)."""
  text = str(spec).strip().lower()
  if text in OFF:
    return None
  if text == "auto":
    lengths = [b for b in inference.LENGTH_BUCKETS if b < max_seq_length]
  else:
    try:
      lengths = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
      raise ConfigError(f"data.length_buckets={spec!r} is not auto, off or comma-separated "
                        f"lengths such as 32,64,128.") from None
    bad = [n for n in lengths if not 0 < n <= max_seq_length]
    if bad:
      raise ConfigError(f"data.length_buckets={spec!r} holds {bad[0]}, outside 1.."
                        f"{max_seq_length} (data.max_seq_length); use lengths up to it.")
  return tuple(sorted({n for n in lengths if n < max_seq_length} | {max_seq_length}))


def row_lengths(arrays: dict[str, np.ndarray]) -> np.ndarray:
  """Tokens per row (up to its last real token), from the attention mask."""
  mask_NxL = np.asarray(arrays["attention_mask"])
  real_NxL = mask_NxL > 0
  # The last real position + 1, so a row's real tokens all stay even if the mask had holes.
  last_N = mask_NxL.shape[1] - np.argmax(real_NxL[:, ::-1], axis=1)
  return np.where(real_NxL.any(axis=1), last_N, 1)


def bucket_index(lengths_N: np.ndarray, buckets: tuple[int, ...]) -> np.ndarray:
  """Index of the smallest bucket that holds each row."""
  return np.searchsorted(np.asarray(buckets), lengths_N, side="left")


def cut(arrays: dict[str, np.ndarray], rows, width: int, full) -> dict[str, np.ndarray]:
  """Rows `rows` of every array, token-aligned ones ([N, full, ...]; `full` may be a tuple of
  such lengths, e.g. seq2seq's source and target) cut to `width` columns."""
  fulls = full if isinstance(full, tuple) else (full,)
  return {k: (v[rows, :width] if np.ndim(v) >= 2 and v.shape[1] in fulls else v[rows])
          for k, v in arrays.items()}
