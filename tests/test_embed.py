"""embed / python -m bert_jax.cli.embed against transformers + sentence-transformers' pooling."""
from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers
from conftest import REPO, corpus_sentences

import bert_jax
from bert_jax import BertModel, BertTokenizer, inference

QUICKSTART = REPO / "docs" / "quickstart.md"
embed_lib = importlib.import_module("bert_jax.sentence_embedding")


@pytest.fixture(scope="module")
def minilm(minilm_dir):
  return BertModel.from_pretrained(minilm_dir), BertTokenizer.from_pretrained(minilm_dir)


@pytest.fixture(scope="module")
def reference(minilm_dir):
  return (transformers.BertModel.from_pretrained(str(minilm_dir)).eval(),
          transformers.BertTokenizerFast.from_pretrained(str(minilm_dir)))


def _sentence_transformers(reference, texts, max_length=256):
  """sentence-transformers' all-MiniLM-L6-v2 pipeline written out: mean pool, L2 normalise."""
  model, tok = reference
  enc = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
  with torch.no_grad():
    out = model(**enc)
  mask = enc["attention_mask"].unsqueeze(-1).float()
  mean = (out.last_hidden_state * mask).sum(1) / torch.clamp(mask.sum(1), min=1e-9)
  return torch.nn.functional.normalize(mean, p=2, dim=1).numpy(), out


def test_settings_read_from_the_sentence_transformers_folder(minilm_dir):
  assert embed_lib.sentence_transformers_settings(minilm_dir) == {
      "normalize": True, "pooling": "mean", "max_length": 256}


def test_mean_pooling_cosines_match_sentence_transformers(minilm, reference, bible_path,
                                                          mobydick_path):
  model, tok = minilm
  texts = corpus_sentences(bible_path, 24) + corpus_sentences(mobydick_path, 24)
  got = bert_jax.embed(model, tok, texts, normalize=True, max_length=256, batch_size=16)
  want, _ = _sentence_transformers(reference, texts)
  cos_got, cos_want = got @ got.T, want @ want.T
  err = np.abs(cos_got - cos_want).max()
  print(f"max |cosine difference| over {len(texts)}^2 pairs: {err:.2e}")
  assert err <= 1e-5
  np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
  assert np.abs(got - want).max() <= 1e-5
  assert cos_want[np.triu_indices(len(texts), 1)].std() > 0.05  # Not all alike: a real check.


def test_quickstart_similarity_example(reference, capsys):
  blocks = re.findall(r"```python\n(.*?)```", QUICKSTART.read_text(encoding="utf-8"), re.S)
  code = next(b for b in blocks if "similarity = emb @ emb.T" in b)
  scope: dict = {}
  exec(code, scope)  # noqa: S102 (the documented example, verbatim)
  want, _ = _sentence_transformers(reference, scope["sentences"])
  assert np.abs(scope["similarity"] - want @ want.T).max() <= 1e-5
  printed = capsys.readouterr().out
  documented = re.findall(r"-?\d\.\d+", code.split("print(similarity.round(3))")[1])
  assert [float(x) for x in documented] == [float(x) for x in re.findall(r"-?\d\.\d+", printed)]


def test_other_poolings(minilm, reference, bible_path):
  model, tok = minilm
  texts = [t for t in corpus_sentences(bible_path, 12) if len(t) < 300][:6]
  tokens = bert_jax.embed(model, tok, texts, pooling="tokens")
  _, out = _sentence_transformers(reference, texts)
  for i, t in enumerate(tokens):
    n = len(tok.tokenize(texts[i])) + 2
    assert t.shape == (n, 384)
    np.testing.assert_allclose(t, out.last_hidden_state[i, :n].numpy(), atol=2e-5)
  cls = bert_jax.embed(model, tok, texts, pooling="cls")
  np.testing.assert_allclose(cls, np.stack([t[0] for t in tokens]), atol=1e-6)
  mean = bert_jax.embed(model, tok, texts, pooling="mean")
  np.testing.assert_allclose(mean, np.stack([t.mean(0) for t in tokens]), atol=1e-5)
  pooled = bert_jax.embed(model, tok, texts, pooling="pooler")
  np.testing.assert_allclose(pooled, out.pooler_output.numpy(), atol=2e-5)
  one = bert_jax.embed(model, tok, texts[0])
  assert one.shape == (384,) and np.abs(one - mean[0]).max() < 1e-5
  with pytest.raises(ValueError, match="pooling='nope' is not one of"):
    bert_jax.embed(model, tok, texts, pooling="nope")


def test_overlong_text_truncated_as_sentence_transformers(minilm, reference, mobydick_path):
  model, tok = minilm
  long_text = " ".join(corpus_sentences(mobydick_path, 200))  # thousands of tokens
  texts = [long_text, "A short sentence about a whale."]
  with pytest.warns(UserWarning, match="1 of 2 texts were longer than 256 tokens"):
    got = bert_jax.embed(model, tok, texts, normalize=True, max_length=256)
  want, _ = _sentence_transformers(reference, texts, max_length=256)
  assert np.abs(got - want).max() <= 1e-5
  with pytest.warns(UserWarning, match="longer than 512 tokens"):
    full = bert_jax.embed(model, tok, long_text)  # Default: the model's limit, no index error.
  assert full.shape == (384,) and np.isfinite(full).all()
  with pytest.raises(ValueError, match="max_length=600 must be in"):
    bert_jax.embed(model, tok, texts, max_length=600)


def test_batches_by_length_bucket_compile_once(minilm):
  model, tok = minilm
  bert_jax.embed(model, tok, ["one two three", "four five"], batch_size=2)  # bucket (2, 16)
  before = inference.TRACES["encode"]
  bert_jax.embed(model, tok, ["a somewhat longer line of text here", "six"], batch_size=2)
  assert inference.TRACES["encode"] == before


def test_length_sorted_batches_keep_input_order_and_equal_one_by_one(minilm, bible_path,
                                                                      mobydick_path):
  model, tok = minilm
  texts = corpus_sentences(mobydick_path, 6) + corpus_sentences(bible_path, 6)[1:]
  rows = [len(r) for r in embed_lib._tokenize(tok, texts, 512)[0]]
  assert max(rows) > 3 * min(rows)  # Mixed lengths: several buckets, padded rows in each.
  got = bert_jax.embed(model, tok, texts, batch_size=4)
  for i, text in enumerate(texts):  # The unbucketed path: each text alone, no padding.
    ids = np.asarray([[tok.cls_id, *tok.encode_batch([text])[0], tok.sep_id]])
    want = np.asarray(model(ids).last_hidden_state)[0].mean(0)
    np.testing.assert_allclose(got[i], want, atol=2e-5, err_msg=f"text {i}")
  perm = np.random.default_rng(0).permutation(len(texts))
  shuffled = bert_jax.embed(model, tok, [texts[i] for i in perm], batch_size=4)
  np.testing.assert_allclose(shuffled, got[perm], atol=2e-5)
  plan = embed_lib._plan([[0] * n for n in rows], 4, 512)
  assert sorted(i for idx, _ in plan for i in idx) == list(range(len(texts)))
  assert all(0 < len(idx) <= 4 for idx, _ in plan) and len(plan) < len(texts) / 2
  assert all(length == inference.length_bucket(rows[i], 512) for idx, length in plan
             for i in idx)  # Each row at its own bucket, whatever its batch-mates.


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "bert_jax.cli.embed", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300)


def test_cli_writes_npy_and_index(minilm, minilm_dir, tmp_path, bible_path):
  model, tok = minilm
  texts = corpus_sentences(bible_path, 12)
  lines = texts[:5] + ["", "   "] + texts[5:]
  (tmp_path / "in.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
  prefix = tmp_path / "out" / "emb"
  res = _cli(f"--checkpoint={minilm_dir}", f"--input={tmp_path / 'in.txt'}",
             f"--output={prefix}", "--batch_size=4")
  assert res.returncode == 0, res.stderr
  assert "RuntimeWarning" not in res.stderr
  vectors = np.load(f"{prefix}.npy")
  index = [json.loads(l) for l in open(f"{prefix}.jsonl", encoding="utf-8")]
  assert vectors.shape == (12, 384) and vectors.dtype == np.float32
  assert [r["line"] for r in index] == [1, 2, 3, 4, 5] + list(range(8, 15))
  want = bert_jax.embed(model, tok, texts, normalize=True, max_length=256)
  assert np.abs(vectors - want).max() <= 1e-5
  before = (tmp_path / "out" / "emb.npy").read_bytes()
  again = _cli(f"--checkpoint={minilm_dir}", f"--input={tmp_path / 'in.txt'}",
               f"--output={prefix}")
  assert again.returncode == 2 and "already exists" in again.stderr
  assert "Traceback" not in again.stderr
  assert (tmp_path / "out" / "emb.npy").read_bytes() == before
  empty = tmp_path / "empty.txt"
  empty.write_text("\n\n", encoding="utf-8")
  res = _cli(f"--checkpoint={minilm_dir}", f"--input={empty}", f"--output={tmp_path / 'e'}")
  assert res.returncode == 2 and "no non-empty lines" in res.stderr
  assert not list(tmp_path.glob("e.*")) and not list(tmp_path.glob(".e.*"))


def test_embed_file_tokens_index(minilm, tmp_path, bible_path):
  model, tok = minilm
  texts = corpus_sentences(bible_path, 5)
  (tmp_path / "in.txt").write_text("\n".join(texts), encoding="utf-8")
  assert any(len(tok.tokenize(t)) > 510 for t in texts)  # Bible's first line is its header.
  summary = embed_lib.embed_file(model, tok, tmp_path / "in.txt", tmp_path / "tok",
                                 pooling="tokens", batch_size=2)
  vectors = np.load(tmp_path / "tok.npy")
  index = [json.loads(l) for l in open(tmp_path / "tok.jsonl", encoding="utf-8")]
  want = bert_jax.embed(model, tok, texts, pooling="tokens")
  assert summary["vectors"] == vectors.shape[0] == sum(len(w) for w in want)
  for rec, w, text in zip(index, want, texts, strict=True):
    words = tok.tokenize(text)
    assert rec["tokens"] == ["[CLS]", *words[:510], "[SEP]"]  # Truncated to the model's 512.
    assert rec["truncated"] == (len(words) > 510)
    np.testing.assert_allclose(vectors[rec["start"]:rec["end"]], w, atol=1e-6)
