"""fill_mask on a tiny BertForMaskedLM pretrained here on the Bible for a few dozen steps."""
from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import REPO, corpus_sentences
from flax import nnx

import bert_jax
from bert_jax import BertConfig, BertForMaskedLM, BertModel, BertTokenizer, inference

fill_mask_lib = importlib.import_module("bert_jax.mask_filling")
SEQ, STEPS, BATCH = 32, 60, 32


def _mlm_batch(rows: np.ndarray, tok, rng: np.random.Generator):
  """15% of the real (non-special) tokens replaced by [MASK]; labels -1 elsewhere."""
  ids = rows.copy()
  real = ~np.isin(rows, [tok.cls_token_id, tok.sep_token_id, tok.pad_token_id])
  chosen = real & (rng.random(rows.shape) < 0.15)
  ids[chosen] = tok.mask_token_id
  return ids, np.where(chosen, rows, -1), (rows != tok.pad_token_id).astype(np.int32)


def _mean_true_prob(model, rows, tok, seed=123):
  """Mean probability of the true token at masked positions (logits only there: small)."""
  ids, labels, mask = _mlm_batch(rows, tok, np.random.default_rng(seed))
  n = (labels >= 0).sum(1)
  pos = np.zeros((len(rows), max(n.max(), 1)), np.int32)
  for r in range(len(rows)):
    pos[r, :n[r]] = np.flatnonzero(labels[r] >= 0)
  probs = np.asarray(jax.nn.softmax(model(ids, mask, masked_positions=pos), -1))
  true = np.take_along_axis(labels, pos, 1)
  p = np.take_along_axis(probs, np.maximum(true, 0)[..., None], -1)[..., 0]
  valid = np.arange(pos.shape[1])[None] < n[:, None]
  return float(p[valid].mean())


@pytest.fixture(scope="module")
def trained(bible_path, vocab_path):
  """(trained model, untrained copy, tokenizer, held-out rows); ~60 Adam steps, seconds on CPU."""
  tok = BertTokenizer.from_pretrained(vocab_path)
  config = BertConfig(vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=2,
                      num_attention_heads=2, intermediate_size=128, max_position_embeddings=64,
                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
  rows = tok(corpus_sentences(bible_path, 2064), max_length=SEQ, padding="max_length")
  rows = rows["input_ids"]
  train_rows, held_out = rows[:2000], rows[2000:]  # 64 held-out rows
  model = BertForMaskedLM(config, rngs=nnx.Rngs(params=0))
  untrained = BertForMaskedLM(config, rngs=nnx.Rngs(params=0))
  opt = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)

  @nnx.jit
  def step(model, opt, ids, labels, mask):
    def loss_fn(m):
      logits = m(ids, mask)
      ll = -optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(labels, 0))
      return -(ll * (labels >= 0)).sum() / jnp.maximum((labels >= 0).sum(), 1)
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    opt.update(model, grads)
    return loss

  rng = np.random.default_rng(0)
  for _ in range(STEPS):
    batch = train_rows[rng.integers(0, len(train_rows), BATCH)]
    step(model, opt, *_mlm_batch(batch, tok, rng))
  return model, untrained, tok, held_out


def test_training_learned_something(trained):
  model, untrained, tok, held_out = trained
  p_trained, p_init = _mean_true_prob(model, held_out, tok), _mean_true_prob(untrained,
                                                                             held_out, tok)
  print(f"mean p(true token) at masks: trained {p_trained:.4f}, untrained {p_init:.6f}")
  assert p_trained > 20 * p_init


def test_valid_distribution_equal_to_unbatched_model(trained):
  model, _, tok, _ = trained
  text = "And God said, Let there be [MASK]: and there was light."
  cands = bert_jax.fill_mask(model, tok, text, top_k=8)
  scores = [c["score"] for c in cands]
  assert len(cands) == 8 and scores == sorted(scores, reverse=True)
  assert 0 < sum(scores) <= 1 + 1e-6 and all(0 <= s <= 1 for s in scores)
  assert len({c["token"] for c in cands}) == 8
  # The reference: the model on the unpadded row, without jit.
  row = tok(text)["input_ids"]
  pos = int(np.flatnonzero(row[0] == tok.mask_token_id)[0])
  probs = np.asarray(jax.nn.softmax(model(row)[0, pos]))
  want = np.argsort(-probs)[:8]
  assert [c["token"] for c in cands] == list(want)
  np.testing.assert_allclose(scores, probs[want], atol=1e-5)
  for c in cands:
    assert c["token_str"] == tok.convert_ids_to_tokens(c["token"])
    assert "[MASK]" not in c["sequence"] and c["sequence"].startswith("and god said")
    word = c["token_str"].removeprefix("##")
    assert word in c["sequence"] or c["token"] in tok.all_special_ids


def test_several_masks_and_batches(trained):
  model, _, tok, _ = trained
  texts = ["In the beginning [MASK] created the heaven and the [MASK].",
           "The LORD is my [MASK].",
           "And the [MASK] was without form, and void; and darkness was upon the face of the "
           "deep. And the Spirit of God moved upon the face of the [MASK]."]
  batched = bert_jax.fill_mask(model, tok, texts, top_k=3, batch_size=2)
  one_by_one = [bert_jax.fill_mask(model, tok, t, top_k=3) for t in texts]
  assert len(batched[0]) == 2 and len(batched[1]) == 3 and len(batched[2]) == 2
  assert all(isinstance(c, dict) for c in batched[1])
  for got, want in zip(batched, one_by_one, strict=True):
    flat_got = got if isinstance(got[0], dict) else [c for m in got for c in m]
    flat_want = want if isinstance(want[0], dict) else [c for m in want for c in m]
    assert [c["token"] for c in flat_got] == [c["token"] for c in flat_want]
    np.testing.assert_allclose([c["score"] for c in flat_got],
                               [c["score"] for c in flat_want], atol=1e-5)
  assert batched[0][0][0]["sequence"].count("[MASK]") == 1  # The other mask stays.


def test_compiled_once_per_bucket(trained):
  model, _, tok, _ = trained
  bert_jax.fill_mask(model, tok, "The LORD is my [MASK].")  # 8 tokens: bucket 16
  before = inference.TRACES["mlm_top_k"]
  bert_jax.fill_mask(model, tok, "The LORD is my [MASK], I shall not want.")  # 13: bucket 16
  assert inference.TRACES["mlm_top_k"] == before
  bert_jax.fill_mask(model, tok, "The LORD is my [MASK], I shall not want. He maketh me to lie "
                     "down in green pastures.")  # > 16 tokens: bucket 32, one new trace
  assert inference.TRACES["mlm_top_k"] == before + 1


def test_refusals(trained, minilm_dir):
  model, _, tok, _ = trained
  with pytest.raises(ValueError, match="has no \\[MASK\\] token"):
    bert_jax.fill_mask(model, tok, "No mask here.")
  with pytest.raises(ValueError, match="at most 64 .*shorten it"):
    bert_jax.fill_mask(model, tok, "word " * 80 + "[MASK].")
  encoder = BertModel.from_pretrained(minilm_dir)
  with pytest.raises(ValueError, match="masked-LM head"):
    bert_jax.fill_mask(encoder, BertTokenizer.from_pretrained(minilm_dir), "A [MASK].")


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "bert_jax.cli.fill_mask", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300)


def test_cli_and_quickstart(trained, tmp_path, minilm_dir, capsys):
  model, _, tok, _ = trained
  ckpt = model.save_pretrained(tmp_path / "mlm", tokenizer=tok)
  texts = ["The LORD is my [MASK].", "In the beginning [MASK] created the [MASK]."]
  res = _cli(f"--checkpoint={ckpt}", "--top_k=4", "--json", *texts)
  assert res.returncode == 0, res.stderr
  assert "RuntimeWarning" not in res.stderr
  lines = [json.loads(l) for l in res.stdout.splitlines()]
  want = fill_mask_lib.fill_mask(model, tok, texts, top_k=4)
  assert [l["text"] for l in lines] == texts
  assert [c["token"] for c in lines[0]["masks"][0]] == [c["token"] for c in want[0]]
  assert [[c["token"] for c in m] for m in lines[1]["masks"]] == [
      [c["token"] for c in m] for m in want[1]]
  # The quickstart's fill-mask example, pointed at this checkpoint.
  blocks = re.findall(r"```python\n(.*?)```", (REPO / "docs" / "quickstart.md").read_text(), re.S)
  code = next(b for b in blocks if "fill_mask(" in b)
  assert code.count('"path/to/bert-base-uncased"') == 2
  exec(code.replace('"path/to/bert-base-uncased"', repr(str(ckpt))), {})  # noqa: S102
  shown = capsys.readouterr().out.splitlines()
  want = fill_mask_lib.fill_mask(model, tok, "The capital of France is [MASK].", top_k=5)
  assert [l.split()[0] for l in shown] == [c["token_str"] for c in want]
  bad = _cli(f"--checkpoint={minilm_dir}", "A [MASK].")
  assert bad.returncode == 2 and "no masked-LM head" in bad.stderr
  assert "Traceback" not in bad.stderr
