"""Packing with segment ids, both families: several real documents per row give each document
exactly the outputs it gets alone (attention stays inside a document, positions restart, local
windows combine with the segments); batches with inconsistent segment ids are refused before
anything compiles; the pipeline's packed rows are consistent and training reports packing
efficiency."""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bert_jax import attention, modern_modeling, pretraining, sharding, train
from bert_jax.configs import pretrain as pretrain_configs
from bert_jax.configuration import preset
from bert_jax.errors import UserError
from bert_jax.heads import BertForPreTraining
from bert_jax.modeling import BertModel
from bert_jax.modern_configuration import ModernBertConfig
from tests.conftest import RESOURCES, TESTDATA

TOL = 1e-5
ROW = 96


@pytest.fixture(scope="module")
def documents() -> list[np.ndarray]:
  """Four Moby-Dick passages of different lengths as [CLS] ... [SEP] id arrays."""
  from tokenizers import BertWordPieceTokenizer
  tok = BertWordPieceTokenizer(str(RESOURCES / "bert-base-uncased-vocab.txt"), lowercase=True)
  text = (TESTDATA / "mobydick.en.txt").read_text(encoding="utf-8-sig")
  body = " ".join(text[text.index("CHAPTER 1. Loomings."):][:8000].split())
  sentences = [s for s in re.split(r"(?<=[.!?])\s+", body) if len(s.split()) >= 3]
  docs = [np.asarray(e.ids, np.int32) for e in tok.encode_batch(sentences)]
  picks = [d for d in docs if 12 <= len(d) <= 40][:4]
  assert len(picks) == 4 and len({len(d) for d in picks}) > 2
  return picks


def _pack(rows: list[list[np.ndarray]]) -> dict:
  """Rows of documents -> the packed batch keys the input pipeline makes."""
  b, k = len(rows), max(map(len, rows))
  out = {name: np.zeros((b, ROW), np.int32) for name in
         ("input_ids", "input_mask", "segment_ids", "position_ids", "packed_segment_ids")}
  out["cls_positions"] = np.zeros((b, k), np.int32)
  for r, docs in enumerate(rows):
    t = 0
    for j, d in enumerate(docs):
      n = len(d)
      out["input_ids"][r, t:t + n] = d
      out["input_mask"][r, t:t + n] = 1
      out["segment_ids"][r, t + n // 2:t + n] = 1  # a sentence-B half, as pairs have
      out["position_ids"][r, t:t + n] = np.arange(n)
      out["packed_segment_ids"][r, t:t + n] = j + 1
      out["cls_positions"][r, j] = t
      t += n
    assert t < ROW  # padding at the end of each row
  return out


def _spans(rows):
  for r, docs in enumerate(rows):
    t = 0
    for j, d in enumerate(docs):
      yield r, j, t, d
      t += len(d)


def _rows(documents):
  return [documents[:3], [documents[3], documents[0]]]


def test_bert_packed_row_equals_documents_alone(documents):
  config = preset("tiny", vocab_size=30522, num_hidden_layers=2, hidden_size=64,
                  num_attention_heads=4, intermediate_size=96, dtype="float32")
  model = BertModel(config, rngs=nnx.Rngs(params=0))
  rows = _rows(documents)
  batch = _pack(rows)
  call = lambda m, b: m(b["input_ids"], b["input_mask"], b["segment_ids"],  # noqa: E731
                        b["position_ids"], packed_segment_ids=b["packed_segment_ids"],
                        cls_positions=b["cls_positions"])
  for run in (call, nnx.jit(call)):
    out = run(model, batch)
    for r, j, t, d in _spans(rows):
      n = len(d)
      types = batch["segment_ids"][r, t:t + n][None]
      alone = model(d[None], np.ones((1, n), np.int32), types)
      np.testing.assert_allclose(out.last_hidden_state[r, t:t + n], alone.last_hidden_state[0],
                                 atol=TOL)
      np.testing.assert_allclose(out.pooler_output[r, j], alone.pooler_output[0], atol=TOL)


@pytest.mark.parametrize("every", [2, 3])
def test_modern_packed_row_equals_documents_alone(documents, every):
  # A window of 8 (4 each side) is shorter than every document: local layers combine the window
  # with the segments, global layers the segments alone.
  config = ModernBertConfig(vocab_size=30522, hidden_size=48, intermediate_size=40,
                            num_hidden_layers=4, num_attention_heads=3, local_attention=8,
                            global_attn_every_n_layers=every, norm_bias=True)
  model = modern_modeling.ModernBertForMaskedLM(config, rngs=nnx.Rngs(params=0))
  rows = _rows(documents)
  batch = _pack(rows)
  call = lambda m, b: m.model(b["input_ids"], b["input_mask"], None,  # noqa: E731
                              b["position_ids"],
                              packed_segment_ids=b["packed_segment_ids"]).last_hidden_state
  for run in (call, nnx.jit(call)):
    x = run(model, batch)
    for r, _, t, d in _spans(rows):
      n = len(d)
      alone = model.model(d[None]).last_hidden_state[0]
      np.testing.assert_allclose(x[r, t:t + n], alone, atol=TOL)
  # The MLM head through the packed path too: logits at a few positions of each document.
  positions = np.asarray([[1, 20, 40], [2, 30, 50]], np.int32)
  logits = model(batch["input_ids"], batch["input_mask"], None, batch["position_ids"],
                 masked_positions=positions, packed_segment_ids=batch["packed_segment_ids"])
  for r in range(2):
    for p_i, p in enumerate(positions[r]):
      (_, _, t, d), = [s for s in _spans(rows) if s[0] == r and s[2] <= p < s[2] + len(s[3])]
      alone = model(d[None], masked_positions=np.asarray([[p - t]]))
      np.testing.assert_allclose(logits[r, p_i], alone[0, 0], atol=1e-4)


def _bad_batches(documents):
  good = _pack(_rows(documents))
  reappear = {k: v.copy() for k, v in good.items()}
  n0 = len(documents[0])
  reappear["packed_segment_ids"][0, n0 - 3:n0] = 2  # doc 1's tail now in doc 2: doc 1 later
  reappear["packed_segment_ids"][0, n0:n0 + 2] = 1  # reappears after doc 2
  hole = {k: v.copy() for k, v in good.items()}
  hole["input_mask"][1, 5] = 0  # padding inside a document
  zero_hole = {k: v.copy() for k, v in good.items()}
  zero_hole["input_mask"][1, 5] = 0
  zero_hole["packed_segment_ids"][1, 5] = 0  # ... marked as padding in both
  positions = {k: v.copy() for k, v in good.items()}
  positions["position_ids"][0, n0:] += 7  # doc 2 continues doc 1's positions... then jumps
  positions["position_ids"][0, n0 + 4] = 0
  return {"reappears": (reappear, "appears in two separate runs"),
          "mask_hole": (hole, "attention_mask says pad but packed_segment_ids is"),
          "padding_inside": (zero_hole, "appears in two separate runs"),
          "positions": (positions, "position_ids do not count up by one")}


@pytest.mark.parametrize("case", ["reappears", "mask_hole", "padding_inside", "positions"])
def test_inconsistent_segment_ids_are_refused_before_compiling(documents, case, monkeypatch):
  batch, words = _bad_batches(documents)[case]
  attention.check_packed_batch(**{"packed_segment_ids": _pack(_rows(documents))[
      "packed_segment_ids"]})  # the good batch passes
  compiled = []
  monkeypatch.setattr(jax, "jit", lambda *a, **k: compiled.append(1))
  # The training path: the host batch is checked when it becomes global arrays.
  mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  with pytest.raises(attention.PackingError, match=words) as e:
    train.to_global(batch, mesh)
  assert isinstance(e.value, UserError) and isinstance(e.value, ValueError)
  msg = str(e.value)
  assert msg.count(". ") == 0 and msg.endswith(".") and "\n" not in msg  # one sentence
  assert not compiled
  # The models themselves, called on concrete arrays.
  config = ModernBertConfig(vocab_size=30522, hidden_size=32, intermediate_size=32,
                            num_hidden_layers=1, num_attention_heads=2)
  model = modern_modeling.ModernBertModel(config, rngs=nnx.Rngs(params=0))
  with pytest.raises(attention.PackingError, match=words):
    model(batch["input_ids"], batch["input_mask"], None, batch["position_ids"],
          packed_segment_ids=batch["packed_segment_ids"])
  bert = BertModel(preset("tiny", vocab_size=30522, num_hidden_layers=1),
                   rngs=nnx.Rngs(params=0))
  with pytest.raises(attention.PackingError, match=words):
    bert(batch["input_ids"], batch["input_mask"], None, batch["position_ids"],
         packed_segment_ids=batch["packed_segment_ids"])


def test_pipeline_packed_rows_are_consistent_and_training_reports_efficiency(
    pretrain_dataset, vocab_path):
  from bert_jax import input_pipeline
  kw = dict(batch_size=8, seq_len=128, max_predictions=20, seed=0, num_epochs=1,
            shuffle=False, prefetch_batches=0, num_threads=1, short_seq_prob=0.5)
  eff = {}
  for pack in (False, True):
    batches = list(input_pipeline.create_pretraining_dataset(pretrain_dataset, "train",
                                                             pack=pack, **kw))[:6]
    if pack:
      for b in batches:
        attention.check_packed_batch(b["packed_segment_ids"], b["input_mask"],
                                     b["position_ids"])
      assert any((b["packed_segment_ids"].max(axis=1) > 1).any() for b in batches)
    eff[pack] = np.mean([b["input_mask"].mean() for b in batches])
  assert eff[True] > eff[False]

  # One jitted train step of the real pretraining loss on a packed batch.
  config = pretrain_configs.get_config("tiny")
  config.model.update(max_position_embeddings=128)
  bert_config = pretraining.bert_config_from(config.model, 30522)
  graphdef, params = nnx.split(BertForPreTraining(bert_config, rngs=nnx.Rngs(params=0)),
                               nnx.Param)
  import optax
  tx = optax.sgd(1e-3)
  params = params.to_pure_dict()
  state = train.TrainState(jnp.int32(0), params, tx.init(params))
  step = jax.jit(train.make_train_step(graphdef, pretraining.pretraining_loss, tx,
                                       lambda s: 1e-3))
  _, metrics = step(state, {k: jnp.asarray(v) for k, v in batches[0].items()},
                    jax.random.key(0))
  real, slots = metrics["packing_efficiency"]
  assert float(real) / float(slots) == pytest.approx(batches[0]["input_mask"].mean())
