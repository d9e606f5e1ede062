"""ELECTRA replaced-token detection (model.objective=rtd) on the tiny config and real Bible text:
it trains (the discriminator beats the best constant guess), resumes bitwise across a masking
schedule's change point, its discriminator exports as a bert_jax ElectraForPreTraining whose HF
conversion transformers loads with the same logits, and fine-tuning starts from it."""
from __future__ import annotations

import json
import math
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import corpus_sentences
from flax import nnx
from test_tasks_classification import finetune_config

from bert_jax import convert, demo, electra, finetune, model_dir, pretrained, pretraining
from bert_jax.configs import pretrain as pretrain_configs
from bert_jax.configuration import BertConfig
from bert_jax.errors import ConfigError
from bert_jax.tokenization import Tokenizer

STEPS = 60


def _rtd_config(data_dir, vocab_path):
  c = pretrain_configs.get_config("tiny")
  c.data.update(dir=str(data_dir), vocab=str(vocab_path), max_predictions=10,
                masking_schedule="linear", masked_lm_prob_start=0.3, masking_schedule_steps=40)
  c.model.objective = "rtd"
  c.optimizer.update(learning_rate=3e-3, warmup_steps=5)
  c.checkpoint.update(every_steps=30, max_to_keep=5)
  c.train.update(num_steps=STEPS, log_every=10)
  return c


@pytest.fixture(scope="module")
def rtd_run(tmp_path_factory, pretrain_dataset, vocab_path):
  workdir = tmp_path_factory.mktemp("rtd")
  config = _rtd_config(pretrain_dataset, vocab_path)
  summary = pretraining.train_and_evaluate(config, str(workdir))
  return workdir, config, summary


def _rows(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_generator_config_is_a_quarter():
  disc = BertConfig(hidden_size=256, num_attention_heads=4, intermediate_size=1024,
                    num_hidden_layers=4)
  gen = electra.generator_config(disc, 0.25)
  assert (gen.hidden_size, gen.num_attention_heads, gen.intermediate_size,
          gen.num_hidden_layers) == (64, 1, 256, 4)
  with pytest.raises(ConfigError, match="generator_fraction=0"):
    electra.generator_config(disc, 0.0)


def test_sample_follows_the_softmax():
  probs = np.array([0.5, 0.2, 0.15, 0.1, 0.05, 0.0])
  logits = jnp.broadcast_to(jnp.log(jnp.asarray(probs, jnp.float32)), (40_000, 6))
  ids = np.asarray(electra.sample(jax.random.key(0), logits))
  freq = np.bincount(ids, minlength=6) / len(ids)
  np.testing.assert_allclose(freq, probs, atol=0.008)  # ~3.5 standard errors
  assert freq[5] == 0
  keys = jax.random.split(jax.random.key(1), 2)
  assert not np.array_equal(electra.sample(keys[0], logits), electra.sample(keys[1], logits))


def test_rtd_refuses_modern_and_unknown_objectives(pretrain_dataset, vocab_path):
  c = pretrain_configs.get_config("modern_tiny")
  c.model.objective = "rtd"
  with pytest.raises(ConfigError, match="objective=rtd trains a BERT"):
    pretraining.model_task(c, 100)
  c.model.objective = "electra"
  with pytest.raises(ConfigError, match="model.objective='electra'"):
    pretraining.model_task(c, 100)


@pytest.mark.slow
def test_rtd_trains(rtd_run):
  workdir, _, summary = rtd_run
  assert summary["status"] == "completed" and summary["step"] == STEPS
  train_rows = [r for r in _rows(workdir) if "train/loss" in r]
  first, last = train_rows[0], train_rows[-1]
  assert last["train/loss"] < 0.7 * first["train/loss"], (first["train/loss"], last["train/loss"])
  assert last["train/gen_mlm_loss"] < first["train/gen_mlm_loss"]
  # Better than the best constant guess: the binary entropy of the replaced fraction.
  p = last["train/replaced_fraction"]
  entropy = -(p * math.log(p) + (1 - p) * math.log(1 - p))
  assert last["train/disc_loss"] < 0.85 * entropy, (last["train/disc_loss"], entropy)
  ev = summary["eval"]
  assert {"gen_mlm_accuracy", "disc_accuracy", "disc_replaced_recall",
          "disc_original_baseline_accuracy", "unigram_baseline_mlm_accuracy"} <= set(ev)
  assert 0 < ev["replaced_fraction"] < 0.3
  info = json.loads((workdir / "model" / "model_info.json").read_text())
  assert info["architecture"] == "ElectraForPreTraining"
  assert demo.plot_curves(str(workdir)).endswith("curves.png")  # The demo's plot knows RTD.


@pytest.mark.slow
def test_rtd_resumes_bitwise_across_the_masking_change_point(rtd_run, tmp_path):
  workdir, config, _ = rtd_run
  resumed = tmp_path / "resumed"
  shutil.copytree(workdir / "checkpoints", resumed / "checkpoints")
  shutil.rmtree(resumed / "checkpoints" / str(STEPS))  # Back to step 30; the rate falls to 40.
  summary = pretraining.train_and_evaluate(config, str(resumed))
  assert summary["start_step"] == 30 and summary["step"] == STEPS
  want = jax.tree.leaves(rtd_run[2]["state"].params)
  got = jax.tree.leaves(summary["state"].params)
  assert len(want) == len(got)
  for a, b in zip(want, got, strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _logits_close(jax_model, hf_folder, ids, mask, types):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  hf = transformers.ElectraForPreTraining.from_pretrained(str(hf_folder)).eval()
  with torch.no_grad():
    want = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
              token_type_ids=torch.tensor(types)).logits.numpy()
  got = np.asarray(jax_model(jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types)))
  real = mask > 0
  np.testing.assert_allclose(got[real], want[real], atol=1e-5, rtol=1e-5)
  return got


def test_random_discriminator_converts_to_hf_electra(tmp_path):
  config = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=37, max_position_embeddings=64, hidden_act="gelu")
  model = pretrained.ElectraForPreTraining(config, rngs=nnx.Rngs(params=3))
  folder = model.save_pretrained(tmp_path / "hf", format="hf")
  cfg = json.loads((folder / "config.json").read_text())
  assert cfg["model_type"] == "electra" and cfg["embedding_size"] == 32
  rng = np.random.default_rng(0)
  ids = rng.integers(1, 99, (3, 20)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[1, 13:] = 0
  types = (np.arange(20) >= 9).astype(np.int32)[None].repeat(3, 0)
  _logits_close(model, folder, ids, mask, types)
  # ...and back: the HF folder converts to the same bert_jax parameters.
  back = convert.convert(folder, tmp_path / "back")
  assert back.info["architecture"] == "ElectraForPreTraining" and not back.ignored
  for name, x in model_dir.model_params(model).items():
    np.testing.assert_array_equal(back.params[name], x, err_msg=name)


def test_transformers_discriminator_reads_and_narrow_embeddings_are_refused(tmp_path):
  transformers = pytest.importorskip("transformers")
  torch = pytest.importorskip("torch")
  torch.manual_seed(0)
  kw = dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=48, max_position_embeddings=40)
  hf = transformers.ElectraForPreTraining(transformers.ElectraConfig(embedding_size=32, **kw))
  hf.save_pretrained(tmp_path / "hf")
  model = pretrained.ElectraForPreTraining.from_pretrained(tmp_path / "hf")
  ids = np.random.default_rng(1).integers(1, 120, (2, 16)).astype(np.int32)
  _logits_close(model, tmp_path / "hf", ids, np.ones_like(ids), np.zeros_like(ids))
  narrow = transformers.ElectraForPreTraining(transformers.ElectraConfig(embedding_size=16, **kw))
  narrow.save_pretrained(tmp_path / "narrow")
  with pytest.raises(convert.ConversionError, match="embedding_size 16 and hidden_size 32"):
    convert.convert(tmp_path / "narrow", tmp_path / "out")
  assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_trained_discriminator_exports_to_hf_and_fine_tunes(rtd_run, tmp_path, bible_path,
                                                            mobydick_path, vocab_path):
  workdir, _, _ = rtd_run
  model = pretrained.ElectraForPreTraining.from_pretrained(workdir / "model")
  hf = tmp_path / "hf"
  convert.convert(workdir / "model", hf, to="hf")
  tok = Tokenizer.from_vocab(vocab_path)
  enc = [tok.encode(s)[:30] for s in corpus_sentences(bible_path, 4, min_words=6)]
  ids = np.zeros((4, 32), np.int32)
  mask = np.zeros_like(ids)
  for i, e in enumerate(enc):
    row = [tok.cls_id, *e, tok.sep_id]
    ids[i, :len(row)], mask[i, :len(row)] = row, 1
  got = _logits_close(model, hf, ids, mask, np.zeros_like(ids))
  assert np.std(got[mask > 0]) > 0  # Trained: not one constant logit.

  # Its BERT encoder starts a fine-tuning run (fresh pooler and classifier).
  rows = [(t, "bible") for t in corpus_sentences(bible_path, 16, min_words=5)]
  rows += [(t, "moby") for t in corpus_sentences(mobydick_path, 16, min_words=5)]
  data = tmp_path / "topics.tsv"
  data.write_text("sentence\ttopic\n" + "\n".join(f"{t}\t{lab}" for t, lab in rows))
  c = finetune_config("task=classification,tiny")
  c.data.update(train_file=str(data), text_column="sentence", label_column="topic")
  c.init_from = str(workdir / "model")
  summary = finetune.finetune_and_evaluate(c, str(tmp_path / "ft"))
  assert summary["status"] == "completed" and summary["step"] == 2
  ft = pretrained.BertForSequenceClassification.from_pretrained(tmp_path / "ft" / "best")
  # The encoder came from the discriminator (two steps away; a fresh init would be ~1.4 away).
  a = np.asarray(ft.bert.embeddings.word_embeddings.embedding[...])
  b = np.asarray(model.bert.embeddings.word_embeddings.embedding[...])
  assert np.linalg.norm(a - b) / np.linalg.norm(b) < 0.3
