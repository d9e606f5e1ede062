"""bert_jax.explain: integrated gradients, attention maps and rollout, the HTML page and PNG, the
CLI (in a real headless Chromium when one is installed) and the sanity checks an expert runs:
completeness, Adebayo et al.'s model-randomisation test and, on a quickly fine-tuned polarity
model, positive words among the top attributions of positive reviews."""
from __future__ import annotations

import csv
import json
import logging
import random
import shutil
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TESTDATA, corpus_sentences, shared_or_skip
from train_helpers import REPO, env_for

from bert_jax import configuration, explain, heads, loading, metrics, modeling
from bert_jax.notebook import VOCAB
from bert_jax.tokenization import Tokenizer


@pytest.fixture(scope="module")
def minilm(minilm_dir):
  """The real all-MiniLM-L6-v2 encoder under a (seeded, untrained) 2-label classifier head."""
  model = loading.load_model(minilm_dir, heads.BertForSequenceClassification, num_labels=2,
                             seed=3)
  return model, Tokenizer.from_dir(minilm_dir)


@pytest.fixture(scope="module")
def sentences():
  return corpus_sentences(TESTDATA / "mobydick.en.txt", 4, min_words=6)


def _with_pad(ids, tokenizer):
  """The pad baseline as token ids: every token but [CLS] / [SEP] replaced by [PAD]."""
  return [i if i in (tokenizer.cls_id, tokenizer.sep_id) else tokenizer.pad_id for i in ids]


def test_completeness_and_end_logits_by_the_plain_forward(minilm, sentences):
  """Attributions sum to logit(input) - logit(baseline) within 1%, and both logits are what the
  model's own forward gives for the input ids and for the [PAD]-filled ids."""
  model, tok = minilm
  exps = explain.explain_texts(model, tok, sentences[:3], label_names=["a", "b"], steps=32,
                               max_steps=32)
  for e in exps:
    ids = tok.convert_tokens_to_ids(e.tokens)
    logits = np.asarray(model(jnp.asarray([ids, _with_pad(ids, tok)])))
    assert e.label_index == int(logits[0].argmax())
    assert e.logit == pytest.approx(float(logits[0, e.label_index]), abs=1e-4)
    assert e.baseline_logit == pytest.approx(float(logits[1, e.label_index]), abs=1e-4)
    delta = float(logits[0, e.label_index] - logits[1, e.label_index])
    assert abs(e.attributions_L.sum() - delta) <= 0.01 * abs(delta), (e.tokens, delta)
    assert e.completeness_ok and e.completeness_error <= 0.01
    assert e.attributions_L[0] == 0.0 and e.attributions_L[-1] == 0.0  # [CLS]/[SEP] kept


def test_too_few_steps_double_or_are_reported(minilm, sentences, caplog):
  model, tok = minilm
  one = explain.explain_texts(model, tok, sentences[3:4], steps=1, max_steps=1)[0]
  assert one.completeness_error > 0.01 and not one.completeness_ok and one.steps == 1
  assert any("treat them with care" in r.message for r in caplog.records
             if r.levelno == logging.WARNING)
  more = explain.explain_texts(model, tok, sentences[3:4], steps=1, max_steps=256)[0]
  assert more.steps > 1 and more.completeness_ok
  zero = explain.explain_texts(model, tok, sentences[3:4], baseline="zero")[0]
  assert zero.completeness_ok and zero.baseline == "zero"


def test_attention_probs_match_transformers(minilm_dir, minilm, sentences):
  """Our attention probabilities vs transformers' eager output_attentions on the same weights."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  model, tok = minilm
  enc = tok(sentences[:2], max_length=64)
  from flax import nnx
  graphdef, state = nnx.split(model)
  ours_BxYxNxLxL = np.asarray(explain.attention_probs(
      graphdef, state, jnp.asarray(enc["input_ids"]), jnp.asarray(enc["attention_mask"]),
      jnp.asarray(enc["token_type_ids"])))
  hf = transformers.BertModel.from_pretrained(str(minilm_dir), attn_implementation="eager").eval()
  with torch.no_grad():
    out = hf(**{k: torch.as_tensor(v).long() for k, v in enc.items()}, output_attentions=True)
  theirs_BxYxNxLxL = np.stack([a.numpy() for a in out.attentions], axis=1)
  length = enc["input_ids"].shape[1]
  assert ours_BxYxNxLxL.shape == theirs_BxYxNxLxL.shape == (2, 6, 12, length, length)
  for b, n in enumerate(enc["attention_mask"].sum(1)):  # Real query rows; padding is undefined.
    np.testing.assert_allclose(ours_BxYxNxLxL[b, :, :, :n], theirs_BxYxNxLxL[b, :, :, :n],
                               atol=2e-5)


def test_rollout_is_row_stochastic_and_follows_the_paper():
  rng = np.random.default_rng(0)
  raw = rng.random((3, 4, 5, 5))
  attn_YxNxLxL = raw / raw.sum(-1, keepdims=True)
  roll_YxLxL = explain.attention_rollout(attn_YxNxLxL)
  np.testing.assert_allclose(roll_YxLxL.sum(-1), 1.0, atol=1e-12)
  a_YxLxL = 0.5 * np.eye(5) + 0.5 * attn_YxNxLxL.mean(1)  # rows already sum to 1
  np.testing.assert_allclose(roll_YxLxL[0], a_YxLxL[0], atol=1e-12)
  np.testing.assert_allclose(roll_YxLxL[2], a_YxLxL[2] @ a_YxLxL[1] @ a_YxLxL[0], atol=1e-12)
  np.testing.assert_allclose(explain.attention_rollout(attn_YxNxLxL, residual=0.0)[0],
                             attn_YxNxLxL[0].mean(0), atol=1e-12)


def test_explanation_attention_and_rollout_on_the_real_model(minilm, sentences):
  model, tok = minilm
  e = explain.explain_texts(model, tok, sentences[:1])[0]
  n = len(e.tokens)
  assert e.attentions_YxNxLxL.shape == (6, 12, n, n)
  np.testing.assert_allclose(e.attentions_YxNxLxL.sum(-1), 1.0, atol=1e-5)
  np.testing.assert_allclose(e.rollout_YxLxL.sum(-1), 1.0, atol=1e-6)


def _rank_agreement(a: list[np.ndarray], b: list[np.ndarray]) -> float:
  """Mean Spearman correlation of |attribution| between two models, over the inputs."""
  return float(np.mean([metrics.spearman(np.abs(x[1:-1]), np.abs(y[1:-1]))
                        for x, y in zip(a, b, strict=True)]))


def test_model_randomisation_changes_attributions(minilm, sentences):
  """Adebayo et al. (2018): attributions of the model vs the same architecture with every weight
  re-drawn must differ (mean rank correlation of |attribution| < 0.5); a method that only
  reflected the input (e.g. embedding norms) would fail this."""
  model, tok = minilm
  random_model = modeling.create_model(heads.BertForSequenceClassification, model.config,
                                       seed=11, num_labels=2)
  kw = dict(steps=16, max_steps=16)
  ours = [e.attributions_L for e in explain.explain_texts(model, tok, sentences[:3], **kw)]
  rand = [e.attributions_L for e in explain.explain_texts(random_model, tok, sentences[:3], **kw)]
  assert _rank_agreement(ours, rand) < 0.5


# ----------------------------------------------------------------------------- other heads
def _tiny(cls, **kw):
  tok = Tokenizer.from_vocab(VOCAB)
  config = configuration.preset("tiny", num_hidden_layers=2, hidden_size=32,
                                num_attention_heads=2, intermediate_size=64,
                                max_position_embeddings=64, vocab_size=tok.vocab_size,
                                attention_impl="xla")
  return modeling.create_model(cls, config, seed=5, **kw), tok


def test_token_classifier_explains_one_tag(sentences):
  model, tok = _tiny(heads.BertForTokenClassification, num_labels=3)
  e = explain.explain_texts(model, tok, sentences[:1], label_names=["O", "B-X", "I-X"])[0]
  assert e.position is not None and 0 < e.position < len(e.tokens) - 1
  logits = np.asarray(model(jnp.asarray([tok.convert_tokens_to_ids(e.tokens)])))[0]
  assert e.label_index == int(logits[e.position].argmax())
  assert e.completeness_ok
  fixed = explain.explain_one(model, tok, tok.convert_tokens_to_ids(e.tokens),
                              [0] * len(e.tokens), label_names=["O", "B-X", "I-X"], position=2)
  assert fixed.position == 2 and fixed.completeness_ok


def test_regression_head_explains_its_score(sentences):
  model, tok = _tiny(heads.BertForSequenceClassification, num_labels=1)
  e = explain.explain_texts(model, tok, sentences[:1], label_names=["score"])[0]
  score = float(np.asarray(model(jnp.asarray([tok.convert_tokens_to_ids(e.tokens)])))[0, 0])
  assert e.label == "score" and e.probabilities["score"] == pytest.approx(score, abs=1e-5)
  assert e.completeness_ok


def test_modernbert_classifier(sentences):
  from bert_jax import modern_configuration, modern_modeling
  tok = Tokenizer.from_vocab(VOCAB)
  config = modern_configuration.preset("modern_tiny", vocab_size=tok.vocab_size,
                                       pad_token_id=tok.pad_id, attention_impl="xla")
  model = modern_modeling.create_model(modern_modeling.ModernBertForSequenceClassification,
                                       config, seed=2, num_labels=2)
  e = explain.explain_texts(model, tok, sentences[:1])[0]
  assert e.completeness_ok, e.completeness_error
  assert e.attentions_YxNxLxL.shape[:2] == (3, 2)
  np.testing.assert_allclose(e.rollout_YxLxL.sum(-1), 1.0, atol=1e-6)


# ----------------------------------------------------------------------------- CLI and pages
def _cli(*args):
  return subprocess.run([sys.executable, "-m", "bert_jax.explain", *map(str, args)],
                        env=env_for(1), cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def pages(tmp_path_factory, sentences):
  """The CLI run on a tiny fine-tuned-shaped classifier: (output dir, records)."""
  root = tmp_path_factory.mktemp("explain")
  model, tok = _tiny(heads.BertForSequenceClassification, num_labels=2)
  loading.save_pretrained(model, tok, root / "ckpt",
                          extra_info={"task": "classification", "label_names": ["neg", "pos"]})
  (root / "in.txt").write_text("\n".join(sentences[:2]) + "\n", encoding="utf-8")
  r = _cli(f"--checkpoint={root / 'ckpt'}", f"--input={root / 'in.txt'}",
           f"--output={root / 'out'}")
  assert r.returncode == 0, r.stderr[-3000:]
  assert "wrote 2 explanations" in r.stdout
  records = [json.loads(l) for l in (root / "out" / "explanations.jsonl").read_text().splitlines()]
  return root / "out", records


def test_cli_writes_a_page_and_chart_per_input(pages):
  out, records = pages
  assert len(records) == 2
  for r in records:
    page = (out / r["html"]).read_text(encoding="utf-8")
    assert page.count('class="tok"') == len(r["tokens"]) == len(r["attributions"])
    assert "http://" not in page and "https://" not in page and "<script src" not in page
    assert page.count('class="heat"') == 2 * 2  # layers x heads
    png = (out / r["png"]).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000
    assert r["completeness_ok"] and r["label"] in ("neg", "pos")


def test_cli_refuses_a_checkpoint_without_a_head(tmp_path):
  model, tok = _tiny(modeling.BertModel)
  loading.save_pretrained(model, tok, tmp_path / "encoder")
  (tmp_path / "in.txt").write_text("a sentence\n", encoding="utf-8")
  r = _cli(f"--checkpoint={tmp_path / 'encoder'}", f"--input={tmp_path / 'in.txt'}",
           f"--output={tmp_path / 'out'}")
  assert r.returncode == 2 and "Traceback" not in r.stderr
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith("error:") and "BertModel" in last and "fine-tune" in last
  assert not (tmp_path / "out").exists()


def test_cli_refuses_an_existing_output(pages):
  out, records = pages
  before = {f.name: f.read_bytes() for f in out.iterdir()}
  r = _cli(f"--checkpoint={out}", f"--input={out / records[0]['html']}", f"--output={out}")
  assert r.returncode == 2 and "already exists" in r.stderr and "--overwrite" in r.stderr
  assert {f.name: f.read_bytes() for f in out.iterdir()} == before


def _chromium() -> str:
  for name in ("chromium", "chromium-browser", "google-chrome"):
    if shutil.which(name):
      return shutil.which(name)
  pytest.skip("no chromium binary found (Debian: apt-get install -y chromium); the page is "
              "still checked by test_cli_writes_a_page_and_chart_per_input")


def test_page_renders_in_headless_chromium(pages, tmp_path):
  """A real browser: the screenshot is not one flat colour and the DOM holds every token."""
  from matplotlib import image
  browser = _chromium()
  out, records = pages
  url = (out / records[1]["html"]).as_uri()
  flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1000,1400"]
  shot = tmp_path / "shot.png"
  subprocess.run([*flags, f"--screenshot={shot}", url], capture_output=True, timeout=120)
  pixels = image.imread(shot)
  assert pixels.shape[:2] == (1400, 1000)
  colours = np.unique((pixels[..., :3] * 255).astype(np.uint8).reshape(-1, 3), axis=0)
  assert len(colours) > 50 and pixels[..., :3].std() > 0.05
  dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True,
                       timeout=120).stdout
  assert dom.count('class="tok"') == len(records[1]["tokens"])
  assert f'data-token-count="{len(records[1]["tokens"])}"' in dom


# ----------------------------------------------------------------------------- polarity
POSITIVE = {"good", "great", "best", "beautiful", "funny", "fun", "love", "wonderful",
            "enjoyable", "entertaining", "excellent", "brilliant", "delightful", "charming",
            "moving", "powerful", "remarkable", "touching", "perfect", "engaging", "compelling",
            "intelligent", "gorgeous", "sweet", "warm", "witty", "clever", "fresh", "pleasure",
            "solid", "smart", "fascinating", "terrific", "heart", "rich", "well", "works",
            "fantastic", "pleasant", "impressive", "superb", "lovely", "masterpiece",
            "hilarious", "enjoy"}


@pytest.mark.slow
def test_polarity_positive_words_lead_positive_reviews(minilm_dir, tmp_path):
  """all-MiniLM-L6-v2 fine-tuned for 30 steps on 960 polarity-en.csv rows (held-out accuracy
  ~65-75%): among the 3 top-attributed tokens of correctly classified positive reviews, words of
  a small positive list are at least twice as frequent as among those of negative reviews (seen:
  17-23% vs 0-2%); and randomising the model's weights (Adebayo et al.) changes its attributions."""
  from bert_jax import finetune, notebook
  path = shared_or_skip("classification/polarity-en.csv")
  with open(path, encoding="utf-8-sig", newline="") as f:
    rows = [r for r in csv.reader(f) if len(r) == 2]
  random.Random(0).shuffle(rows)
  train, held = rows[:1000], rows[1000:1060]
  with open(tmp_path / "train.csv", "w", encoding="utf-8", newline="") as f:
    csv.writer(f).writerows(train)
  c = notebook.load_config("finetune", "task=classification")
  c.init_from = str(minilm_dir)
  c.data.update(train_file=str(tmp_path / "train.csv"), label_column="0", text_column="1",
                max_seq_length=32, dev_fraction=0.04)
  c.model.update(dtype="float32", attention_impl="xla")
  c.optimizer.update(learning_rate=3e-4, warmup_steps=3)  # 1e-4 barely moves in 30 steps
  c.train.update(batch_size=32, num_steps=30, eval_every=0, log_every=30)
  c.checkpoint.update(async_save=False, every_steps=1000)
  finetune.finetune_and_evaluate(c, str(tmp_path / "w"))
  model = loading.load_model(tmp_path / "w" / "best")
  tok = Tokenizer.from_dir(tmp_path / "w" / "best")
  exps = explain.explain_texts(model, tok, [t for _, t in held], label_names=["-1", "1"],
                               max_seq_length=32, steps=16)
  assert np.mean([e.completeness_ok for e in exps]) >= 0.95
  assert np.mean([e.label == g for e, (g, _) in zip(exps, held, strict=True)]) >= 0.6

  def positive_share(gold: str) -> float:
    top = [e.tokens[i] for e, (g, _) in zip(exps, held, strict=True) if g == gold == e.label
           for i in np.argsort(-e.attributions_L)[:3]]
    return sum(t in POSITIVE for t in top) / len(top)

  pos, neg = positive_share("1"), positive_share("-1")
  print(f"accuracy {np.mean([e.label == g for e, (g, _) in zip(exps, held, strict=True)])}, "
        f"positive words among top-3 tokens: positive reviews {pos:.3f}, negative {neg:.3f}")
  assert pos >= 0.1 and pos >= 2 * neg, (pos, neg)
  rand = modeling.create_model(heads.BertForSequenceClassification, model.config, seed=1,
                               num_labels=2)
  texts = [t for _, t in held[:8]]
  kw = dict(label_names=["-1", "1"], max_seq_length=32, steps=16)
  a = [e.attributions_L for e in exps[:8]]
  b = [e.attributions_L for e in explain.explain_texts(rand, tok, texts, **kw)]
  assert _rank_agreement(a, b) < 0.5

