"""The BERT2BERT copy gate (seq2seq_modeling.BertEncoderDecoder(copy=True), a pointer-generator):
its output is a distribution whose copy part lies on real source tokens, cached decoding and both
searches use it, gradients reach the gate, save / load keep it and export to transformers
refuses it. Real text: Genesis 1 in KJV (sources) and WEB (targets)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bert_jax import bible_pairs, convert, generation, loading, seq2seq_modeling
from bert_jax.configuration import BertConfig
from bert_jax.tasks.seq2seq import seq2seq_loss
from bert_jax.tokenization import Tokenizer

TINY = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, max_position_embeddings=64, dtype="float32")


@pytest.fixture(scope="module")
def batch(vocab_path):
  """Five KJV -> WEB verse pairs of different lengths (padded sources), tokenised."""
  src, tgt, _ = bible_pairs.translation_pairs(bible_pairs.books(["GENESIS"]), "kjv", "web")
  tok = Tokenizer.from_vocab(vocab_path)
  enc = tok(src[:5], max_length=40, padding="longest", truncation=True)
  dec = tok(tgt[:5], max_length=24, padding="max_length", truncation=True)["input_ids"]
  labels = np.concatenate([dec[:, 1:], np.zeros_like(dec[:, :1])], 1)
  return dict(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
              decoder_input_ids=np.where(dec == tok.sep_id, tok.pad_id, dec), labels=labels,
              label_mask=(labels > 0).astype(np.int32))


def _model(seed=0):
  return seq2seq_modeling.BertEncoderDecoder(TINY, rngs=nnx.Rngs(params=seed), copy=True)


def test_the_mixture_is_a_distribution_and_copies_only_real_source_tokens(batch):
  model = _model()
  ids, mask = batch["input_ids"], batch["attention_mask"]
  assert (mask == 0).any()  # some sources are padded
  logp_BxTxV = np.asarray(model(ids, mask, batch["decoder_input_ids"]))
  np.testing.assert_allclose(np.exp(logp_BxTxV).sum(-1), 1.0, atol=1e-5)
  # Starts near p_gen = 0.5 (see the gate's init).
  x_BxTxD, _ = model.decoder.hidden(ids, model.encode(ids, mask), mask)
  p_gen = jax.nn.sigmoid(model.copy_gate(x_BxTxD))
  assert 0.4 < float(p_gen.min()) and float(p_gen.max()) < 0.6
  # All copying (p_gen ~ 0): the mass sits on each row's real source tokens, none on padding.
  model.copy_gate.bias[...] = jnp.full((1,), -40.0)
  p_BxTxV = np.exp(np.asarray(model(ids, mask, batch["decoder_input_ids"])))
  for b in range(len(ids)):
    real = np.unique(ids[b][mask[b] > 0])
    np.testing.assert_allclose(p_BxTxV[b][:, real].sum(-1), 1.0, atol=1e-5)
    if 0 not in real:
      assert p_BxTxV[b][:, 0].max() < 1e-12  # the padding id gets no copy mass


def test_cached_decoding_and_beam_one_use_the_same_mixture(batch):
  model = _model()
  ids, mask, dec = batch["input_ids"], batch["attention_mask"], batch["decoder_input_ids"]
  want = np.asarray(model(ids, mask, dec))
  cache = model.init_cache(model.encode(ids, mask), mask, 32, jnp.asarray(ids))
  got = []
  for t in range(8):
    logp, cache = model.decode_step(jnp.asarray(dec[:, t]), t, cache)
    got.append(logp)
  np.testing.assert_allclose(np.stack(got, 1), want[:, :8], atol=1e-5)
  gen = generation.GenerationConfig(max_length=12, decoder_start_token_id=101, eos_token_id=102,
                                    pad_token_id=0)
  greedy = generation.generate(model, ids, mask, gen)
  np.testing.assert_array_equal(generation.beam_search_ids(model, ids, mask, gen), greedy)
  # The untrained mixture already prefers source tokens: greedy output copies from the source.
  copied = [np.isin(r[1:], s).mean() for r, s in zip(greedy, ids, strict=True)]
  assert np.mean(copied) > 0.5
  assert generation.generate(model, ids, mask, gen.__class__(
      **{**gen.__dict__, "num_beams": 3})).shape == greedy.shape


def test_gradients_reach_the_gate_and_stay_finite(batch):
  model = _model()

  def loss(m):
    return seq2seq_loss(m, {k: jnp.asarray(v) for k, v in batch.items()}, jax.random.key(0),
                        label_smoothing=0.1)[0]

  value, grads = nnx.value_and_grad(loss)(model)
  assert np.isfinite(float(value))
  leaves = jax.tree.leaves(nnx.state(grads))
  assert all(np.isfinite(np.asarray(g)).all() for g in leaves)
  assert np.abs(np.asarray(grads.copy_gate.kernel[...])).max() > 0
  assert np.abs(np.asarray(grads.copy_gate.bias[...])).max() > 0
  # The copy term trains the last layer's cross-attention through its probabilities too.
  last = grads.decoder.bert.encoder.layer[1].crossattention.self.query.kernel[...]
  assert np.abs(np.asarray(last)).max() > 0


def test_save_and_load_keep_the_gate_and_export_to_transformers_refuses(tmp_path, batch,
                                                                      vocab_path):
  from bert_jax import pretrained
  model = pretrained.BertEncoderDecoder(TINY, rngs=nnx.Rngs(params=0), copy=True)
  model.save_pretrained(tmp_path / "bj", tokenizer=Tokenizer.from_vocab(vocab_path))
  back, _ = loading.from_pretrained(tmp_path / "bj", dtype="float32")
  assert back.copy
  ids, mask, dec = batch["input_ids"], batch["attention_mask"], batch["decoder_input_ids"]
  np.testing.assert_allclose(np.asarray(back(ids, mask, dec)), np.asarray(model(ids, mask, dec)),
                             atol=1e-6)
  with pytest.raises(convert.ConversionError, match="copy gate"):
    convert.convert(tmp_path / "bj", tmp_path / "hf", to="hf")
  assert not (tmp_path / "hf").exists() or not any((tmp_path / "hf").iterdir())
