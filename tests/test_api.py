"""from_pretrained / save_pretrained on the real MiniLM folder."""
from __future__ import annotations

import numpy as np
import pytest

import bert_jax
from bert_jax import heads, modeling


def test_from_pretrained_hf_and_bert_jax_agree(tmp_path, minilm_dir):
  model, tok = bert_jax.from_pretrained(minilm_dir)
  assert isinstance(model, modeling.BertModel) and tok.do_lower_case
  enc = tok(["A man is eating food.", "Call me Ishmael. Some years ago, never mind how long."])
  ref = model(**enc)
  bert_jax.save_pretrained(model, tok, tmp_path / "bj")
  again, tok2 = bert_jax.from_pretrained(tmp_path / "bj")
  assert tok2.fingerprint == tok.fingerprint
  np.testing.assert_array_equal(again(**enc).last_hidden_state, ref.last_hidden_state)
  bert_jax.save_pretrained(again, tok2, tmp_path / "hf", format="hf")
  third, _ = bert_jax.from_pretrained(tmp_path / "hf")
  np.testing.assert_array_equal(third(**enc).pooler_output, ref.pooler_output)
  with pytest.raises(FileExistsError):
    bert_jax.save_pretrained(model, tok, tmp_path / "hf", format="hf")
  with pytest.raises(ValueError, match="format"):
    bert_jax.save_pretrained(model, tok, tmp_path / "x", format="onnx")


def test_from_pretrained_options(minilm_dir):
  clf, _ = bert_jax.from_pretrained(minilm_dir, cls=heads.BertForSequenceClassification,
                                    num_labels=2)
  assert clf.num_labels == 2
  half, tok = bert_jax.from_pretrained(minilm_dir, dtype="bfloat16")
  full, _ = bert_jax.from_pretrained(minilm_dir)
  enc = tok("In the beginning God created the heavens and the earth.")
  a, b = half(**enc).last_hidden_state, full(**enc).last_hidden_state
  assert half.config.dtype == "bfloat16" and a.dtype == np.float32
  assert 0 < float(np.abs(np.asarray(a) - np.asarray(b)).max()) < 0.1
