"""The transformers-style API: the primer's example, BertTokenizer parity, from/save_pretrained."""
from __future__ import annotations

import pathlib
import re

import numpy as np
import pytest
import torch
import transformers
from conftest import REPO, corpus_sentences
from flax import nnx

from bert_jax import (
  BertConfig,
  BertForMaskedLM,
  BertForPreTraining,
  BertModel,
  BertTokenizer,
  heads,
  modeling,
)

QUICKSTART = REPO / "docs" / "quickstart.md"
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=64)


def _primer_code(path: pathlib.Path) -> str:
  """The quickstart's first code block (the primer's example) pointed at `path`."""
  code = re.search(r"```python\n(.*?)```", QUICKSTART.read_text(encoding="utf-8"), re.S)[1]
  assert code.count('"path/to/model"') == 2
  return code.replace('"path/to/model"', repr(str(path)))


def test_primer_example_on_minilm_matches_transformers(minilm_dir):
  scope: dict = {}
  exec(_primer_code(minilm_dir), scope)  # noqa: S102 (the documented example, verbatim)
  outputs, input_ids = scope["outputs"], scope["input_ids"]
  assert scope["input_tokens"] == ["hello", ",", "my", "dog", "is", "cute"]
  assert isinstance(scope["model"], modeling.BertModel)
  assert outputs[0] is outputs.last_hidden_state and outputs[0].shape == (1, 6, 384)
  reference = transformers.BertModel.from_pretrained(str(minilm_dir)).eval()
  with torch.no_grad():
    want = reference(torch.tensor([input_ids]))
  np.testing.assert_allclose(np.asarray(outputs[0]), want.last_hidden_state.numpy(), atol=2e-5)
  np.testing.assert_allclose(np.asarray(outputs[1]), want.pooler_output.numpy(), atol=2e-5)


def test_primer_example_on_random_pretraining_checkpoint(tmp_path, vocab_path):
  model = BertForPreTraining(BertConfig(**TINY), rngs=nnx.Rngs(params=7))
  assert isinstance(model, heads.BertForPreTraining)
  model.save_pretrained(tmp_path / "ckpt", tokenizer=BertTokenizer.from_pretrained(vocab_path))
  scope: dict = {}
  exec(_primer_code(tmp_path / "ckpt"), scope)  # noqa: S102
  ids = scope["input_ids"]
  want = model.bert(np.asarray([ids])).last_hidden_state
  assert scope["outputs"][0].shape == (1, len(ids), 32)
  np.testing.assert_allclose(np.asarray(scope["outputs"][0]), np.asarray(want), atol=1e-6)


def test_tokenizer_matches_bert_tokenizer_fast(minilm_dir, mobydick_path, bible_path):
  ours = BertTokenizer.from_pretrained(minilm_dir)
  hf = transformers.BertTokenizerFast.from_pretrained(str(minilm_dir))
  texts = corpus_sentences(mobydick_path, 40) + corpus_sentences(bible_path, 40)
  assert ours.vocab_size == hf.vocab_size == len(ours)
  for name in ("cls", "sep", "pad", "unk", "mask"):
    assert getattr(ours, f"{name}_token") == getattr(hf, f"{name}_token")
    assert getattr(ours, f"{name}_token_id") == getattr(hf, f"{name}_token_id")
  assert sorted(ours.all_special_ids) == sorted(hf.all_special_ids)
  unk = 0
  for text in texts:
    tokens = ours.tokenize(text)
    assert tokens == hf.tokenize(text)
    ids = ours.convert_tokens_to_ids(tokens)
    assert ids == hf.convert_tokens_to_ids(tokens)
    assert ours.convert_ids_to_tokens(ids) == hf.convert_ids_to_tokens(ids)
    assert ours.decode(ids) == hf.decode(ids)
    unk += ids.count(ours.unk_token_id)
  assert unk < 5  # A silently broken vocabulary would map everything to [UNK].
  a, b = texts[:20], texts[20:40]
  for kwargs in (dict(), dict(max_length=24), dict(padding="max_length", max_length=48)):
    got = ours(a, b, **kwargs)
    want = hf(a, b, truncation=True, return_tensors="np",
              **({"padding": True} | kwargs))
    for key in ("input_ids", "token_type_ids", "attention_mask"):
      np.testing.assert_array_equal(got[key], want[key], err_msg=f"{key} {kwargs}")
  jax_batch = ours(a, return_tensors="jax")
  assert jax_batch["input_ids"].shape[0] == 20 and not isinstance(jax_batch["input_ids"],
                                                                   np.ndarray)
  assert ours.batch_decode(ours(a)["input_ids"]) == hf.batch_decode(
      hf(a, padding=True)["input_ids"], skip_special_tokens=True)


def test_save_pretrained_round_trips_in_both_formats(tmp_path, minilm_dir, bible_path):
  tok = BertTokenizer.from_pretrained(minilm_dir)
  model = BertModel.from_pretrained(minilm_dir)
  batch = tok(corpus_sentences(bible_path, 8), max_length=48)
  want = model(**batch)
  for fmt in ("bert_jax", "hf"):
    out = model.save_pretrained(tmp_path / fmt, format=fmt, tokenizer=tok)
    back = BertModel.from_pretrained(out)
    got = back(**BertTokenizer.from_pretrained(out)(corpus_sentences(bible_path, 8),
                                                    max_length=48))
    np.testing.assert_allclose(np.asarray(got.last_hidden_state),
                               np.asarray(want.last_hidden_state), atol=1e-6)
  with pytest.raises(FileExistsError, match="already exists"):
    model.save_pretrained(tmp_path / "hf", format="hf")
  hf_model = transformers.BertModel.from_pretrained(str(tmp_path / "hf")).eval()
  with torch.no_grad():
    ref = hf_model(**{k: torch.tensor(v) for k, v in batch.items()}).last_hidden_state.numpy()
  mask = batch["attention_mask"].astype(bool)
  assert np.abs(np.asarray(want.last_hidden_state) - ref)[mask].max() < 2e-5


def test_dtype_and_head_loading(minilm_dir, capsys):
  bf16 = BertModel.from_pretrained(minilm_dir, dtype="bfloat16")
  f32 = BertModel.from_pretrained(minilm_dir)
  assert bf16.config.dtype == "bfloat16"
  ids = BertTokenizer.from_pretrained(minilm_dir)("Hello, my dog is cute")["input_ids"]
  a, b = np.asarray(bf16(ids)[0]), np.asarray(f32(ids)[0])
  assert 0 < np.abs(a - b).max() < 0.2  # bf16 compute differs a little, not wildly.
  mlm, info = BertForMaskedLM.from_pretrained(minilm_dir, output_loading_info=True)
  assert isinstance(mlm, heads.BertForMaskedLM)
  assert info["missing_keys"] and all(k.startswith("predictions.") for k in info["missing_keys"])
  assert "pooler.dense.kernel" in info["unexpected_keys"]
  assert "initialised randomly" in capsys.readouterr().err


def test_overlong_input_gets_a_clear_message_or_truncation(minilm_dir):
  tok = BertTokenizer.from_pretrained(minilm_dir)
  model = BertModel.from_pretrained(minilm_dir)
  text = "the whale " * 400  # 800 tokens
  ids = tok.convert_tokens_to_ids(tok.tokenize(text))
  with pytest.raises(ValueError, match="at most 512 .*max_position_embeddings"):
    model(ids)
  batch = tok(text)
  assert batch["input_ids"].shape == (1, 512) and batch["input_ids"][0, -1] == tok.sep_token_id
  assert model(**batch)[0].shape == (1, 512, 384)


def test_from_pretrained_refuses_a_missing_path(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    BertTokenizer.from_pretrained(tmp_path / "nope")
  with pytest.raises(ValueError, match="does not exist"):
    BertModel.from_pretrained(tmp_path / "nope")
