"""BERT2BERT (seq2seq_modeling.py): the KV cache, sharing, warm starts, and conversion both
ways with transformers' EncoderDecoderModel on real text (random and all-MiniLM-L6-v2)."""
import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bert_jax import bible_pairs, convert, loading, model_dir, modeling, seq2seq_modeling
from bert_jax.configuration import BertConfig
from bert_jax.errors import ConfigError, ModelFileError
from bert_jax.tokenization import Tokenizer

TINY = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, max_position_embeddings=64, dtype="float32")
SMALL = TINY.replace(vocab_size=128)  # for tests that need no real vocabulary (faster)


@pytest.fixture(scope="module")
def verses():
  """Real text: Genesis 1:1-4 in KJV (sources) and WEB (targets)."""
  book = bible_pairs.books(["GENESIS"])
  src, tgt, _ = bible_pairs.translation_pairs(book, "kjv", "web")
  return src[:4], tgt[:4]


def _batch(tok, texts, max_length=40):
  enc = tok(texts, max_length=max_length, padding="longest")
  return enc["input_ids"], enc["attention_mask"]


def test_cached_decoding_gives_the_teacher_forced_logits():
  model = seq2seq_modeling.BertEncoderDecoder(SMALL, rngs=nnx.Rngs(params=0))
  ids = jnp.array([[101, 5, 6, 7, 102, 0], [101, 8, 9, 102, 0, 0]])
  mask = (ids > 0).astype(jnp.int32)
  dec = jnp.array([[101, 40, 50, 60, 70], [101, 71, 80, 90, 3]])
  want = model(ids, mask, dec)
  cache = model.init_cache(model.encode(ids, mask), mask, 8)
  got = []
  for t in range(dec.shape[1]):
    logits, cache = model.decode_step(dec[:, t], t, cache)
    got.append(logits)
  np.testing.assert_allclose(np.stack(got, 1), want, atol=1e-5)
  # Causal: changing a later target token leaves the earlier logits alone.
  other = model(ids, mask, dec.at[:, 3].set(7))
  np.testing.assert_array_equal(other[:, :3], want[:, :3])
  assert not np.allclose(other[:, 3:], want[:, 3:])


def test_share_uses_the_encoder_weights_and_cross_attention_is_bert_initialised():
  plain = seq2seq_modeling.BertEncoderDecoder(SMALL.replace(hidden_size=128, intermediate_size=128),
                                              rngs=nnx.Rngs(params=0))
  shared = seq2seq_modeling.BertEncoderDecoder(SMALL, rngs=nnx.Rngs(params=0), share=True)
  p_plain, p_shared = model_dir.model_params(plain), model_dir.model_params(
      seq2seq_modeling.BertEncoderDecoder(SMALL, rngs=nnx.Rngs(params=0)))
  assert len(model_dir.model_params(shared)) < len(p_shared)
  dec = shared.decoder.bert.encoder.layer[1]
  assert dec.attention is shared.encoder.encoder.layer[1].attention
  assert dec.crossattention is not shared.encoder.encoder.layer[1].attention
  assert shared.decoder.bert.embeddings is shared.encoder.embeddings
  # New cross-attention weights as BERT initialises: truncated normal, std 0.02.
  k = p_plain["decoder.bert.encoder.layer.0.crossattention.self.query.kernel"]
  assert 0.015 < k.std() < 0.025 and np.abs(k).max() <= 0.04 + 1e-6
  assert np.all(p_plain["decoder.bert.encoder.layer.0.crossattention.self.query.bias"] == 0)
  out = shared(jnp.array([[101, 5, 102]]), jnp.ones((1, 3), jnp.int32), jnp.array([[101, 7]]))
  assert out.shape == (1, 2, SMALL.vocab_size) and np.isfinite(out).all()


def _hf_pair(share=False):
  import torch
  import transformers
  kw = dict(vocab_size=TINY.vocab_size, hidden_size=TINY.hidden_size,
            num_hidden_layers=TINY.num_hidden_layers, num_attention_heads=4,
            intermediate_size=TINY.intermediate_size, max_position_embeddings=64)
  cfg = transformers.EncoderDecoderConfig.from_encoder_decoder_configs(
      transformers.BertConfig(**kw),
      transformers.BertConfig(**kw, is_decoder=True, add_cross_attention=True))
  cfg.decoder_start_token_id, cfg.eos_token_id, cfg.pad_token_id = 101, 102, 0
  torch.manual_seed(0)
  return transformers.EncoderDecoderModel(config=cfg).eval()


def _hf_logits(m, src, dec):
  import torch
  with torch.no_grad():
    return m(input_ids=torch.tensor(src[0], dtype=torch.long),
             attention_mask=torch.tensor(src[1], dtype=torch.long),
             decoder_input_ids=torch.tensor(dec, dtype=torch.long)).logits.numpy()


def test_random_pair_converts_both_ways_within_2e5(tmp_path, verses, vocab_path):
  import transformers
  hf = _hf_pair()
  hf.save_pretrained(tmp_path / "hf")
  tok = Tokenizer.from_vocab(vocab_path)
  tok.save(tmp_path / "hf")
  src, (dec, _) = _batch(tok, verses[0]), _batch(tok, verses[1])
  want = _hf_logits(hf, src, dec)
  model, _ = loading.from_pretrained(tmp_path / "hf", dtype="float32")
  assert type(model).__name__ == "BertEncoderDecoder"
  got = np.asarray(model(src[0], src[1], dec))
  np.testing.assert_allclose(got, want, atol=2e-5)
  # bert_jax directory -> HF folder -> transformers: the same logits again.
  convert.convert(tmp_path / "hf", tmp_path / "bj")
  convert.convert(tmp_path / "bj", tmp_path / "back", to="hf")
  cfg = json.loads((tmp_path / "back" / "config.json").read_text())
  assert cfg["decoder"]["is_decoder"] and cfg["decoder_start_token_id"] == 101
  back = transformers.EncoderDecoderModel.from_pretrained(str(tmp_path / "back")).eval()
  np.testing.assert_allclose(_hf_logits(back, src, dec), want, atol=2e-5)


def test_minilm_warm_started_pair_matches_transformers(tmp_path, minilm_dir, verses):
  """transformers' own warm start of all-MiniLM-L6-v2 (encoder and decoder from it, random
  cross-attention) converts within 2e-5; bert_jax's warm start takes the same weights."""
  import transformers
  hf = transformers.EncoderDecoderModel.from_encoder_decoder_pretrained(
      str(minilm_dir), str(minilm_dir)).eval()
  hf.config.decoder_start_token_id, hf.config.eos_token_id, hf.config.pad_token_id = 101, 102, 0
  hf.save_pretrained(tmp_path / "hf")
  tok = Tokenizer.from_dir(minilm_dir)
  src, (dec, _) = _batch(tok, verses[0]), _batch(tok, verses[1])
  model, _ = loading.from_pretrained(tmp_path / "hf", dtype="float32")
  np.testing.assert_allclose(np.asarray(model(src[0], src[1], dec)), _hf_logits(hf, src, dec),
                             atol=2e-5)
  ours, _ = loading.from_pretrained(minilm_dir, cls="BertEncoderDecoder", dtype="float32")
  p_ours, p_hf = model_dir.model_params(ours), model_dir.model_params(model)
  for name in ("encoder.encoder.layer.3.attention.self.query.kernel",
               "decoder.bert.encoder.layer.3.attention.self.query.kernel",
               "decoder.bert.encoder.layer.5.output.dense.kernel",
               "decoder.bert.embeddings.word_embeddings.embedding"):
    np.testing.assert_array_equal(p_ours[name], p_hf[name])
  np.testing.assert_array_equal(p_ours["decoder.bert.encoder.layer.0.attention.self.key.kernel"],
                                p_ours["encoder.encoder.layer.0.attention.self.key.kernel"])


def test_cross_attention_starts_random_or_as_a_copy_of_self_attention():
  bert = model_dir.model_params(modeling.BertModel(SMALL, rngs=nnx.Rngs(params=1)))
  paper = seq2seq_modeling.warm_start_params(bert)
  assert not any(".crossattention." in k for k in paper)  # stays BERT-initialised
  copied = seq2seq_modeling.warm_start_params(bert, cross_init="self")
  cross = sorted(k for k in copied if ".crossattention." in k)
  assert len(cross) == 2 * 10  # 2 layers x (q, k, v, output dense: kernel and bias; LayerNorm)
  for k in cross:
    src = k.replace("decoder.bert.", "").replace(".crossattention.", ".attention.")
    np.testing.assert_array_equal(copied[k], bert[src])
  model = seq2seq_modeling.BertEncoderDecoder(SMALL, rngs=nnx.Rngs(params=0))
  loading.merge_params(model, model_dir.unflatten(copied))
  got = model_dir.model_params(model)
  np.testing.assert_array_equal(got["decoder.bert.encoder.layer.1.crossattention.self.key.kernel"],
                                bert["encoder.layer.1.attention.self.key.kernel"])
  with pytest.raises(ConfigError, match="cross_init='encoder' is not one of random, self"):
    seq2seq_modeling.warm_start_params(bert, cross_init="encoder")


def test_a_decoder_that_is_not_causal_compatible_is_refused(tmp_path, capsys):
  from bert_jax.cli import common
  hf = _hf_pair()
  hf.save_pretrained(tmp_path / "hf")
  cfg_path = tmp_path / "hf" / "config.json"
  cfg = json.loads(cfg_path.read_text())
  cfg["decoder"]["is_decoder"] = False
  cfg_path.write_text(json.dumps(cfg))
  with pytest.raises(convert.ConversionError, match="not causal-compatible") as e:
    convert.read_any(tmp_path / "hf")
  assert len(str(e.value).splitlines()) == 1
  with pytest.raises(SystemExit) as exit_:  # what bert-jax-convert does with it
    common.guarded(convert.convert, tmp_path / "hf", tmp_path / "out")
  assert exit_.value.code == 2 and not (tmp_path / "out").exists()
  assert "not causal-compatible" in capsys.readouterr().err
  from bert_jax.modern_configuration import PRESETS
  with pytest.raises(ModelFileError, match="not causal-compatible"):
    seq2seq_modeling.check_warm_start(PRESETS["modern_tiny"], "x")


def test_share_round_trips_through_transformers(tmp_path, verses, vocab_path):
  """BERT2BERT-share is transformers' tie_encoder_decoder=True, both ways."""
  import transformers

  from bert_jax import pretrained
  model = pretrained.BertEncoderDecoder(TINY, rngs=nnx.Rngs(params=0), share=True)
  tok = Tokenizer.from_vocab(vocab_path)
  loading.save_pretrained(model, tok, tmp_path / "hf", format="hf")
  hf = transformers.EncoderDecoderModel.from_pretrained(str(tmp_path / "hf")).eval()
  assert hf.config.tie_encoder_decoder
  src, (dec, _) = _batch(tok, verses[0][:2]), _batch(tok, verses[1][:2])
  ours = np.asarray(model(src[0], src[1], dec))
  np.testing.assert_allclose(_hf_logits(hf, src, dec), ours, atol=2e-5)
  back, _ = loading.from_pretrained(tmp_path / "hf", dtype="float32")
  assert back.share and back.decoder.bert.embeddings is back.encoder.embeddings
  np.testing.assert_allclose(np.asarray(back(src[0], src[1], dec)), ours, atol=1e-6)
