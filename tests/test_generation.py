"""Decoding (generation.py): beam size 1 is greedy, and beam search gives transformers'
`generate` output token for token on a converted EncoderDecoderModel (rows ending at different
lengths, so per-row EOS stopping is exercised)."""
import numpy as np
import pytest

from bert_jax import bible_pairs, generation, loading
from bert_jax.tokenization import Tokenizer


@pytest.fixture(scope="module")
def pair(tmp_path_factory, vocab_path):
  """A random tiny HF EncoderDecoderModel (EOS made likely) and its bert_jax conversion."""
  import torch
  import transformers
  kw = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, max_position_embeddings=64)
  cfg = transformers.EncoderDecoderConfig.from_encoder_decoder_configs(
      transformers.BertConfig(**kw),
      transformers.BertConfig(**kw, is_decoder=True, add_cross_attention=True))
  cfg.decoder_start_token_id, cfg.eos_token_id, cfg.pad_token_id = 101, 102, 0
  torch.manual_seed(1)
  hf = transformers.EncoderDecoderModel(config=cfg).eval()
  path = tmp_path_factory.mktemp("gen") / "hf"
  hf.save_pretrained(path)
  model, _ = loading.from_pretrained(path, dtype="float32")
  tok = Tokenizer.from_vocab(vocab_path)
  src, _, _ = bible_pairs.translation_pairs(bible_pairs.books(["JOHN"]), "kjv", "web")
  enc = tok(src[:5], max_length=32, padding="longest")
  ids, mask = enc["input_ids"], enc["attention_mask"]
  # A random model rarely says [SEP]; as "EOS" take the token whose first greedy appearance
  # varies most between rows, so rows end at different steps.
  return hf, model, ids, mask


def _varied_eos(model, ids, mask, prefer_early=False, **kw) -> int:
  """A random model rarely says [SEP]; as "EOS" take the token whose first appearance (in
  decoding with no EOS) varies most between rows, so rows end at different steps
  (`prefer_early`: first the token most rows reach in the first half, for beam search, whose
  long hypotheses of likely tokens otherwise outscore the ones that end)."""
  free = generation.generate(model, ids, mask, _settings(-1, **kw))[:, 1:]
  first = {t: [int(np.argmax(r == t)) if (r == t).any() else 99 for r in free]
           for t in np.unique(free)}
  early = free.shape[1] // 2
  reach = {t: sum(f < early for f in first[t]) if prefer_early else 0 for t in first}
  return int(max(first, key=lambda t: (reach[t], len(set(first[t])), -t)))


def _settings(eos, **kw):
  return generation.GenerationConfig(decoder_start_token_id=101, eos_token_id=eos,
                                     pad_token_id=0, **kw)


def _rows(ids, gen):
  return [generation.strip(r, gen) for r in ids]


def test_beam_size_one_is_greedy(pair):
  _, model, ids, mask = pair
  eos = _varied_eos(model, ids, mask, max_length=20)
  greedy = _settings(eos, max_length=20)
  beam1 = _settings(eos, max_length=20, num_beams=1, early_stopping=True)
  out = generation.generate(model, ids, mask, greedy)
  np.testing.assert_array_equal(generation.beam_search_ids(model, ids, mask, beam1), out)
  lengths = [len(r) for r in _rows(out, greedy)]
  assert len(set(lengths)) > 1 and min(lengths) < 19  # rows stopped at EOS at different steps
  assert all((r[1 + n + 1:] == 0).all() for r, n in zip(out, lengths, strict=True))  # then pad
  assert out.shape == (5, 20) and (out[:, 0] == 101).all()


@pytest.mark.parametrize("num_beams,length_penalty,early_stopping,max_length", [
    (4, 1.0, True, 20), (3, 2.0, False, 16), (2, 0.5, "never", 12), (4, -1.0, True, 16)])
def test_beam_search_equals_transformers_generate(pair, num_beams, length_penalty,
                                                  early_stopping, max_length):
  import torch
  hf, model, ids, mask = pair
  kw = dict(max_length=max_length, num_beams=num_beams, length_penalty=length_penalty,
            early_stopping=early_stopping)
  eos = _varied_eos(model, ids, mask, prefer_early=True, **kw)
  gen = _settings(eos, **kw)
  ours = _rows(generation.generate(model, ids, mask, gen), gen)
  with torch.no_grad():
    ref = hf.generate(torch.tensor(ids, dtype=torch.long),
                      attention_mask=torch.tensor(mask, dtype=torch.long), num_beams=num_beams,
                      length_penalty=length_penalty, early_stopping=early_stopping,
                      max_length=max_length, do_sample=False, no_repeat_ngram_size=0,
                      decoder_start_token_id=101, eos_token_id=eos, pad_token_id=0).numpy()
  assert ours == _rows(ref, gen)
  if length_penalty < 0:  # favours short hypotheses: the rows' best ones end with EOS
    assert max(len(r) for r in ours) < max_length - 1
