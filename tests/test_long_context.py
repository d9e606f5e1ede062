"""Long context: a tiny ModernBERT at 8,192 tokens on CPU, memory O(L x window) on local layers,
and the MLM-only pipeline's full rows of contiguous text (documents end to end, [SEP] between
them) on the real Bible corpus at any seq_len, with exact resume."""
from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from bert_jax import attention, input_pipeline, modern_modeling
from bert_jax.modern_configuration import PRESETS, ModernBertConfig

LONG = 8192


def _stream(data_dir, split="train") -> np.ndarray:
  """The split's documents in order, each followed by [SEP] (102), as one array."""
  docs = input_pipeline._Documents(str(data_dir), split)
  return np.concatenate([np.concatenate([*docs[i], [102]]) for i in range(len(docs))])


def _unmasked(batch) -> np.ndarray:
  ids = batch["input_ids"].copy()
  for r in range(len(ids)):
    w = batch["masked_lm_weights"][r] > 0
    ids[r, batch["masked_lm_positions"][r][w]] = batch["masked_lm_ids"][r][w]
  return ids


def test_modern_presets_take_8192_tokens():
  for name in ("modern_base", "modern_large"):
    assert PRESETS[name].max_position_embeddings == LONG


def test_tiny_modern_forward_at_8192_tokens(pretrain_dataset):
  """One 8,192-token row of real text: a short first document, then contiguous text. The first
  document's outputs equal those it gets alone (dense path), so the long path is exact; the
  compiled forward keeps no [L, L] tensor and its temporaries stay far below one."""
  config = ModernBertConfig(vocab_size=30522, hidden_size=32, intermediate_size=48,
                            num_hidden_layers=3, num_attention_heads=2, local_attention=128,
                            global_attn_every_n_layers=3, max_position_embeddings=LONG)
  model = modern_modeling.ModernBertModel(config, rngs=nnx.Rngs(params=0))
  stream = _stream(pretrain_dataset)
  assert len(stream) > LONG
  first = 300
  ids = np.concatenate([[101], stream[:LONG - 1]]).astype(np.int32)[None]
  seg = np.where(np.arange(LONG) < first, 1, 2).astype(np.int32)[None]
  pos = np.where(np.arange(LONG) < first, np.arange(LONG), np.arange(LONG) - first)[None]
  mask = np.ones_like(ids)

  fwd = jax.jit(lambda g, s, i, m, p, q: nnx.merge(g, s)(i, m, None, p, packed_segment_ids=q)
                .last_hidden_state)
  graphdef, state = nnx.split(model)
  lowered = fwd.lower(graphdef, state, ids, mask, pos, seg)
  assert f"{LONG}x{LONG}" not in lowered.as_text()
  compiled = lowered.compile()
  temp = compiled.memory_analysis().temp_size_in_bytes
  full_scores = config.num_attention_heads * LONG * LONG * 4
  assert temp < full_scores / 4, (temp, full_scores)
  x = np.asarray(compiled(graphdef, state, ids, mask, pos, seg))
  assert x.shape == (1, LONG, 32) and np.isfinite(x).all()
  alone = model(ids[:, :first]).last_hidden_state[0]
  np.testing.assert_allclose(x[0, :first], alone, atol=1e-5)


@pytest.mark.parametrize("seq_len", [64, 512, LONG])
def test_mlm_only_rows_are_full_contiguous_text(pretrain_dataset, seq_len):
  kw = dict(batch_size=2, seq_len=seq_len, max_predictions=max(8, seq_len // 8), seed=3,
            nsp_mode="none", num_epochs=1, shuffle=False, prefetch_batches=0, num_threads=1,
            masked_lm_prob=0.3)
  it = iter(input_pipeline.create_pretraining_dataset(pretrain_dataset, "train", **kw))
  stream = _stream(pretrain_dataset)
  want_rows = min(6, len(stream) // (seq_len - 2) // 2 * 2)
  rows = []
  while len(rows) < want_rows:
    b = next(it)
    assert b["input_mask"].all()  # full rows
    assert not b["next_sentence_weights"].any()  # no NSP target
    assert (b["masked_lm_weights"].sum(1) > 0).all()
    rows.extend(_unmasked(b))
  rows = np.asarray(rows)
  assert (rows[:, 0] == 101).all() and (rows[:, -1] == 102).all()
  body = rows[:, 1:-1].reshape(-1)
  np.testing.assert_array_equal(body, stream[:len(body)])  # contiguous, across documents
  assert (body == 102).sum() >= 1 or seq_len < 512  # document boundaries are [SEP]


def test_mlm_only_packed_rows_restart_per_document_and_resume_exactly(pretrain_dataset):
  kw = dict(batch_size=4, seq_len=256, max_predictions=40, seed=5, nsp_mode="none", pack=True,
            shuffle=True, prefetch_batches=0, num_threads=1)
  ds = input_pipeline.create_pretraining_dataset(pretrain_dataset, "train", **kw)
  it = iter(ds)
  first = [next(it) for _ in range(3)]
  state = it.get_state()
  after = [next(it) for _ in range(2)]
  resumed = iter(ds)
  resumed.set_state(state)
  for a, b in zip(after, [next(resumed) for _ in range(2)], strict=True):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  for b in first + after:
    attention.check_packed_batch(b["packed_segment_ids"], b["input_mask"], b["position_ids"])
    ids = _unmasked(b)
    for r in range(len(ids)):
      seg = b["packed_segment_ids"][r]
      # Every document piece but the last ends with [SEP]; a new piece starts at position 0.
      ends = np.flatnonzero(np.diff(seg) != 0)
      assert (ids[r, ends] == 102).all()
      assert (b["position_ids"][r, ends + 1] == 0).all()
  assert max(b["packed_segment_ids"].max() for b in first + after) > 1
