"""BertModel on the real all-MiniLM-L6-v2 weights against transformers.BertModel (PyTorch, f32)."""
from __future__ import annotations

import numpy as np
import pytest
from flax import nnx

import bert_jax
from bert_jax import convert, loading
from tests.conftest import corpus_sentences

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOL = 2e-5
BATCH = 16


@pytest.fixture(scope="module")
def sentences(bible_path, mobydick_path):
  # Interleave the corpora so each padded batch mixes short and long rows.
  a, b = corpus_sentences(bible_path, 32), corpus_sentences(mobydick_path, 32)
  return [s for pair in zip(a, b, strict=True) for s in pair]


@pytest.fixture(scope="module")
def ours(minilm_dir):
  return bert_jax.from_pretrained(minilm_dir)


@pytest.fixture(scope="module")
def reference(minilm_dir):
  model = transformers.BertModel.from_pretrained(str(minilm_dir), attn_implementation="eager")
  return model.eval()


def _run_reference(reference, enc, **kw):
  with torch.no_grad():
    return reference(**{k: torch.from_numpy(v.astype(np.int64)) for k, v in enc.items()}, **kw)


def test_matches_transformers_on_real_sentences(ours, reference, sentences):
  model, tok = ours
  assert len(sentences) >= 50
  worst_hidden = worst_pooled = 0.0
  lengths = []
  for i in range(0, len(sentences), BATCH):
    enc = tok(sentences[i:i + BATCH], max_length=128)
    mask = enc["attention_mask"].astype(bool)
    lengths += mask.sum(1).tolist()
    got = model(**enc)
    want = _run_reference(reference, enc)
    diff = np.abs(np.asarray(got.last_hidden_state) - want.last_hidden_state.numpy())
    worst_hidden = max(worst_hidden, float(diff[mask].max()))
    worst_pooled = max(worst_pooled, float(np.abs(np.asarray(got.pooler_output)
                                                  - want.pooler_output.numpy()).max()))
  print(f"\nMiniLM vs transformers on {len(sentences)} sentences (lengths {min(lengths)}-"
        f"{max(lengths)}): max|diff| last_hidden_state {worst_hidden:.3g}, "
        f"pooler {worst_pooled:.3g}")
  assert max(lengths) > 3 * min(lengths), "sentences should be of mixed length"
  assert worst_hidden <= TOL and worst_pooled <= TOL


def test_jit_agrees_with_eager(ours, sentences):
  model, tok = ours
  enc = tok(sentences[:8], max_length=64)
  eager = model(**enc)

  @nnx.jit
  def forward(m, input_ids, attention_mask, token_type_ids):
    return m(input_ids, attention_mask, token_type_ids)

  jitted = forward(model, enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
  diff = float(np.abs(np.asarray(jitted.last_hidden_state) - np.asarray(eager.last_hidden_state)
                      ).max())
  print(f"\njit vs eager max|diff| {diff:.3g}")
  assert diff <= 1e-5
  np.testing.assert_allclose(jitted.pooler_output, eager.pooler_output, atol=1e-5)


def test_hidden_states_and_attentions(ours, reference, sentences):
  model, tok = ours
  cfg = model.config
  enc = tok(sentences[:4], max_length=64)
  b, seq = enc["input_ids"].shape
  got = model(**enc, output_hidden_states=True, output_attentions=True)
  want = _run_reference(reference, enc, output_hidden_states=True, output_attentions=True)
  assert len(got.hidden_states) == cfg.num_hidden_layers + 1
  assert len(got.attentions) == cfg.num_hidden_layers
  assert all(h.shape == (b, seq, cfg.hidden_size) for h in got.hidden_states)
  assert all(a.shape == (b, cfg.num_attention_heads, seq, seq) for a in got.attentions)
  mask = enc["attention_mask"].astype(bool)
  for h, w in zip(got.hidden_states, want.hidden_states, strict=True):
    assert np.abs(np.asarray(h) - w.numpy())[mask].max() <= TOL
  for a, w in zip(got.attentions, want.attentions, strict=True):
    diff_BxNxLxM = np.abs(np.asarray(a) - w.numpy())
    assert diff_BxNxLxM.transpose(0, 2, 1, 3)[mask].max() <= TOL  # Real queries, all keys.
  # Padding keys get no attention.
  assert float(np.asarray(got.attentions[0])[~np.broadcast_to(
      mask[:, None, None, :], got.attentions[0].shape)].max()) < 1e-6


@pytest.mark.parametrize("impl", ["cudnn", "auto"])
def test_attention_impl_falls_back_to_xla_on_cpu(minilm_dir, ours, sentences, impl):
  model, tok = ours
  conv = convert.read_any(minilm_dir)
  other = loading.build_model(conv.config.replace(attention_impl=impl), conv.info,
                               conv.params)
  enc = tok(sentences[:6], max_length=64)
  np.testing.assert_array_equal(np.asarray(other(**enc).last_hidden_state),
                                np.asarray(model(**enc).last_hidden_state))


def test_flat_input_ids_and_too_long_input(ours):
  model, tok = ours
  enc = tok("Call me Ishmael.")
  flat = model(enc["input_ids"][0], enc["attention_mask"][0], enc["token_type_ids"][0])
  batched = model(**enc)
  assert flat.last_hidden_state.shape == batched.last_hidden_state.shape
  np.testing.assert_array_equal(np.asarray(flat.last_hidden_state),
                                np.asarray(batched.last_hidden_state))
  too_long = np.full((1, model.config.max_position_embeddings + 1), tok.unk_id, np.int32)
  with pytest.raises(ValueError, match="max_position_embeddings"):
    model(too_long)


def test_rngs_are_required_and_give_every_layer_its_own_weights():
  from bert_jax.modeling import BertModel
  config = bert_jax.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2,
                               num_attention_heads=2, intermediate_size=32)
  with pytest.raises(TypeError):
    BertModel(config)  # No silent fixed key: every parameter would be the same draw.
  with pytest.raises(TypeError, match="rngs=nnx.Rngs"):
    BertModel(config, rngs=None)
  model = BertModel(config, rngs=nnx.Rngs(params=0))
  q0, q1 = (np.asarray(layer.attention.self.query.kernel[...]) for layer in model.encoder.layer)
  assert q0.shape == q1.shape and not np.allclose(q0, q1)
  assert not np.allclose(np.asarray(model.encoder.layer[0].attention.self.key.kernel[...]), q0)
