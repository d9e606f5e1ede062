"""The ModernBERT family through every tool that works on BERT: loading and saving (HF folders
both ways, with and without the MLM head, the transformers-style classes), its BPE tokenizer.json,
pretraining MLM-only with modern_tiny through the one train loop, fine-tuning (classification,
regression, NER, SQuAD) and predict, fill_mask, embed, the AOT compile, and the refusals (other
family, too long input) that leave nothing on disk.

The HF models are randomly initialised transformers 5 ModernBERTs (no released weights can be
downloaded here) with a byte-level BPE tokenizer trained in the test on tests/data text and saved
as ModernBERT's is (tokenizer.json + tokenizer_config.json, specials after the learnt vocabulary).
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, TESTDATA, corpus_sentences
from safetensors.numpy import load_file

import bert_jax
from bert_jax import convert, family, finetune, loading, predict, pretraining, train
from bert_jax.configs import finetune as finetune_configs
from bert_jax.configs import pretrain as pretrain_configs
from bert_jax.errors import DataError, ModelFileError, UserError
from bert_jax.tokenization import Tokenizer

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}
SPECIALS = ("[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]")
TOL = 2e-5


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def texts(bible_path, mobydick_path) -> list[str]:
  """Real lines of mixed length (the Bible file holds whole chapters a line: cut to 300 chars)."""
  return corpus_sentences(mobydick_path, 6, min_words=4) + [
      t[:300] for t in corpus_sentences(bible_path, 6, min_words=4)]


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory, bible_path, mobydick_path):
  """A byte-level BPE trained on real text, saved the way ModernBERT's tokenizer is."""
  from tokenizers import (
    AddedToken,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
  )
  from tokenizers import Tokenizer as HFTokenizer
  tok = HFTokenizer(models.BPE())
  tok.normalizer = normalizers.NFC()
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  lines = (mobydick_path.read_text(encoding="utf-8-sig").splitlines()[:3000]
           + bible_path.read_text(encoding="utf-8").splitlines()[:3000])
  tok.train_from_iterator(lines, trainers.BpeTrainer(
      vocab_size=800, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
  # ModernBERT appends its specials after the learnt vocabulary; [MASK] strips the space before it.
  tok.add_special_tokens([AddedToken(t, lstrip=t == "[MASK]", normalized=False, special=True)
                          for t in SPECIALS])
  cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
  tok.post_processor = processors.TemplateProcessing(
      single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
      special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
  folder = tmp_path_factory.mktemp("bpe")
  tok.save(str(folder / "tokenizer.json"))
  (folder / "tokenizer_config.json").write_text(json.dumps({
      "clean_up_tokenization_spaces": True, "cls_token": "[CLS]", "mask_token": "[MASK]",
      "model_input_names": ["input_ids", "attention_mask"], "model_max_length": 8192,
      "pad_token": "[PAD]", "sep_token": "[SEP]", "tokenizer_class": "PreTrainedTokenizerFast",
      "unk_token": "[UNK]"}))
  return folder


def _hf_modern(arch: str, bpe_dir, folder, **kw):
  """A random transformers ModernBERT of `arch`, perturbed, saved with its tokenizer."""
  import shutil
  vocab = Tokenizer.from_dir(bpe_dir)
  torch.manual_seed(len(arch))
  cfg = transformers.ModernBertConfig(
      vocab_size=vocab.vocab_size, hidden_size=48, intermediate_size=64, num_hidden_layers=3,
      num_attention_heads=3, global_attn_every_n_layers=2, local_attention=8,
      max_position_embeddings=128, pad_token_id=vocab.pad_id, cls_token_id=vocab.cls_id,
      sep_token_id=vocab.sep_id, bos_token_id=vocab.cls_id, eos_token_id=vocab.sep_id,
      norm_bias=True, **kw)
  model = getattr(transformers, arch)._from_config(cfg, attn_implementation="eager").eval()
  with torch.no_grad():
    gen = torch.Generator().manual_seed(7)
    for p in model.parameters():
      p.add_(torch.randn(p.shape, generator=gen) * (0.1 if p.ndim == 1 else 0.02))
  model.save_pretrained(folder)
  for name in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copy(bpe_dir / name, folder / name)
  return model


@pytest.fixture(scope="module")
def hf_mlm(tmp_path_factory, bpe_dir):
  folder = tmp_path_factory.mktemp("hf_mlm")
  return _hf_modern("ModernBertForMaskedLM", bpe_dir, folder), folder


@pytest.fixture(scope="module")
def hf_encoder(tmp_path_factory, bpe_dir):
  folder = tmp_path_factory.mktemp("hf_enc")
  return _hf_modern("ModernBertModel", bpe_dir, folder), folder


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory, vocab_path):
  """A tiny BERT bert_jax directory (for the other-family refusals)."""
  model = bert_jax.create_model(bert_jax.BertForMaskedLM,
                                bert_jax.preset("tiny", num_hidden_layers=1))
  folder = tmp_path_factory.mktemp("bert") / "model"
  model.save_pretrained(folder, tokenizer=Tokenizer.from_vocab(vocab_path))
  return folder


@pytest.fixture(scope="module")
def pretrained_modern(tmp_path_factory, pretrain_dataset, vocab_path):
  """2 MLM-only steps of modern_tiny on the real test dataset; (workdir, summary)."""
  config = pretrain_configs.get_config("modern_tiny")
  config.data.update(dir=str(pretrain_dataset), vocab=str(vocab_path))
  workdir = tmp_path_factory.mktemp("modern_pretrain")
  return workdir, pretraining.train_and_evaluate(config, str(workdir))


def _inputs(tokenizer, texts):
  enc = tokenizer(texts)
  return enc["input_ids"], enc["attention_mask"]


def _snapshot(path) -> dict:
  return {p: p.stat().st_mtime_ns for p in sorted(path.rglob("*"))} if path.exists() else {}


# ------------------------------------------------------------------ configs
def test_pretrain_variants_and_family_field():
  base = pretrain_configs.get_config("modern_base")
  cfg = family.model_config_from(base.model, 50368)
  assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size,
          cfg.num_attention_heads) == (22, 768, 1152, 12)
  large = family.model_config_from(pretrain_configs.get_config("modern_large").model, 50368)
  assert (large.num_hidden_layers, large.hidden_size) == (28, 1024)
  demo, modern_demo = (pretrain_configs.get_config(v) for v in ("demo", "modern_demo"))
  bert_demo = family.model_config_from(demo.model, 30522)
  mcfg = family.model_config_from(modern_demo.model, 30522)
  assert (mcfg.num_hidden_layers, mcfg.hidden_size, mcfg.num_attention_heads) == (
      bert_demo.num_hidden_layers, bert_demo.hidden_size, bert_demo.num_attention_heads)
  assert (modern_demo.data.seq_len, modern_demo.train.batch_size) == (
      demo.data.seq_len, demo.train.batch_size)
  for v in ("modern_tiny", "modern_demo", "modern_base", "modern_large"):
    c = pretrain_configs.get_config(v)
    assert c.model.family == "modern" and c.data.masked_lm_prob == 0.3
    assert c.data.nsp_mode == "none"  # MLM-only rows of contiguous text.
    assert c.data.eval_masked_lm_prob == 0.15  # Held-out accuracy comparable with BERT's.
  assert pretrain_configs.get_config("demo").data.eval_masked_lm_prob == 0.0  # As trained.
  assert pretrain_configs.get_config("tiny").model.family == "bert"
  assert finetune_configs.get_config("task=ner,tiny").model.family == "bert"
  with pytest.raises(UserError, match="model.family='gpt'"):
    family.check_config_family({"family": "gpt"})


# ------------------------------------------------------------------ tokenizer
def test_bpe_tokenizer_json_ids_equal_autotokenizer(bpe_dir, texts, tmp_path):
  auto = transformers.AutoTokenizer.from_pretrained(str(bpe_dir))
  tok = bert_jax.BertTokenizer.from_pretrained(bpe_dir)
  assert tok.kind == "tokenizers" and tok.model_max_length == 8192
  ours = tok(texts)
  ref = auto(texts, padding=True)
  assert ours["input_ids"].tolist() == ref["input_ids"]
  assert ours["attention_mask"].tolist() == ref["attention_mask"]
  pair = tok(texts[:3], texts[3:6])["input_ids"].tolist()
  assert pair == auto(texts[:3], texts[3:6], padding=True)["input_ids"]
  assert tok.unk_id not in ours["input_ids"]  # Byte-level: no unknown tokens on real text.
  assert tok.decode(tok.encode(texts[0])) == texts[0]
  # Saved and read back (ours and transformers'): the same ids.
  tok.save_pretrained(tmp_path / "t")
  again = Tokenizer.from_dir(tmp_path / "t")
  assert again(texts, max_length=8192)["input_ids"].tolist() == ref["input_ids"]
  auto2 = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "t"))
  assert auto2(texts, padding=True)["input_ids"] == ref["input_ids"]


# ------------------------------------------------------------------ loading and saving
def test_masked_lm_folder_loads_matches_and_writes_back_bitwise(hf_mlm, texts, tmp_path):
  hf, folder = hf_mlm
  model, tokenizer = bert_jax.from_pretrained(folder)
  assert type(model) is bert_jax.ModernBertForMaskedLM and tokenizer.kind == "tokenizers"
  ids, mask = _inputs(tokenizer, texts)
  with torch.no_grad():
    ref = hf(input_ids=torch.from_numpy(ids.astype(np.int64)),
             attention_mask=torch.from_numpy(mask.astype(np.int64))).logits.numpy()
  got = np.asarray(model(ids, mask))
  real = mask.astype(bool)
  assert np.abs(got - ref)[real].max() < TOL
  # HF format back: the same tensors, bit for bit, and the tokenizer beside them.
  out = model.save_pretrained(tmp_path / "hf", format="hf", tokenizer=tokenizer)
  src, dst = load_file(folder / "model.safetensors"), load_file(out / "model.safetensors")
  assert set(src) == set(dst) and all(np.array_equal(src[k], dst[k]) for k in src)
  assert json.loads((out / "config.json").read_text())["model_type"] == "modernbert"
  reloaded = transformers.ModernBertForMaskedLM.from_pretrained(
      str(out), attn_implementation="eager").eval()
  with torch.no_grad():
    again = reloaded(input_ids=torch.from_numpy(ids.astype(np.int64)),
                     attention_mask=torch.from_numpy(mask.astype(np.int64))).logits.numpy()
  assert np.array_equal(again[real], ref[real])
  assert transformers.AutoTokenizer.from_pretrained(str(out))(texts[0])["input_ids"] == \
      tokenizer(texts[0])["input_ids"][0].tolist()
  # bert_jax format: the same logits bitwise.
  model.save_pretrained(tmp_path / "bj", tokenizer=tokenizer)
  same = bert_jax.ModernBertForMaskedLM.from_pretrained(tmp_path / "bj")
  assert np.array_equal(np.asarray(same(ids, mask)), got)


def test_convert_both_ways_with_and_without_head(hf_mlm, hf_encoder, tmp_path):
  for name, (_, folder) in (("mlm", hf_mlm), ("enc", hf_encoder)):
    conv = convert.convert(folder, tmp_path / name / "bj")
    arch = "ModernBertForMaskedLM" if name == "mlm" else "ModernBertModel"
    assert conv.info["architecture"] == arch and arch in conv.summary()
    convert.convert(tmp_path / name / "bj", tmp_path / name / "hf", to="hf")
    src = load_file(folder / "model.safetensors")
    dst = load_file(tmp_path / name / "hf" / "model.safetensors")
    assert set(src) == set(dst) and all(np.array_equal(src[k], dst[k]) for k in src)
    assert (tmp_path / name / "hf" / "tokenizer.json").is_file()
  # The command line, with its report.
  p = subprocess.run([sys.executable, "-m", "bert_jax.cli.convert", f"--src={hf_mlm[1]}",
                      f"--dst={tmp_path / 'cli'}"], capture_output=True, text=True, env=ENV,
                     cwd=REPO)
  assert p.returncode == 0, p.stderr
  assert "ModernBertForMaskedLM" in p.stdout + p.stderr
  assert bert_jax.load_model(tmp_path / "cli").__class__ is bert_jax.ModernBertForMaskedLM
  # An option bert_jax does not compute: one sentence naming it, nothing written.
  import shutil
  odd = tmp_path / "odd"
  shutil.copytree(hf_mlm[1], odd)
  cfg = json.loads((odd / "config.json").read_text())
  (odd / "config.json").write_text(json.dumps({**cfg, "hidden_activation": "mish"}))
  with pytest.raises(convert.ConversionError, match="hidden_activation='mish'"):
    convert.convert(odd, tmp_path / "never")
  with pytest.raises(convert.ConversionError, match="hidden_activation='mish'"):
    bert_jax.ModernBertModel.from_pretrained(odd)
  assert not (tmp_path / "never").exists()


def test_encoder_into_heads_and_head_into_encoder(hf_mlm, hf_encoder, texts, capsys):
  hf_enc, enc_folder = hf_encoder
  hf, mlm_folder = hf_mlm
  tokenizer = bert_jax.BertTokenizer.from_pretrained(enc_folder)
  ids, mask = _inputs(tokenizer, texts)
  real = mask.astype(bool)
  with torch.no_grad():
    ref_enc = hf_enc(input_ids=torch.from_numpy(ids.astype(np.int64)),
                     attention_mask=torch.from_numpy(mask.astype(np.int64))
                     ).last_hidden_state.numpy()
    ref_mlm_enc = hf.model(input_ids=torch.from_numpy(ids.astype(np.int64)),
                           attention_mask=torch.from_numpy(mask.astype(np.int64))
                           ).last_hidden_state.numpy()
  # Encoder-only folder into a head class: encoder loaded, heads fresh and warned about.
  capsys.readouterr()
  mlm, info = bert_jax.ModernBertForMaskedLM.from_pretrained(enc_folder, output_loading_info=True)
  assert "initialised randomly" in capsys.readouterr().err
  assert info["missing_keys"] and all(k.startswith(("head.", "decoder."))
                                      for k in info["missing_keys"])
  got = np.asarray(mlm.model(ids, mask).last_hidden_state)
  assert np.abs(got - ref_enc)[real].max() < TOL
  cls = bert_jax.ModernBertForSequenceClassification.from_pretrained(enc_folder, num_labels=3)
  assert np.asarray(cls(ids, mask)).shape == (len(texts), 3)
  qa = bert_jax.ModernBertForQuestionAnswering.from_pretrained(mlm_folder)
  assert np.asarray(qa(ids, mask)[0]).shape == ids.shape
  # Head folder into the encoder class: its `model` part, as transformers' ModernBertModel.
  enc, info = bert_jax.ModernBertModel.from_pretrained(mlm_folder, output_loading_info=True)
  assert not info["missing_keys"] and "decoder.bias" in info["unexpected_keys"]
  got = np.asarray(enc(ids, mask).last_hidden_state)
  assert np.abs(got - ref_mlm_enc)[real].max() < TOL


def test_other_family_with_the_wrong_class_is_one_sentence(hf_mlm, bert_dir, tmp_path):
  _, folder = hf_mlm
  with pytest.raises(ModelFileError, match="ModernBERT checkpoint.*load it with ModernBertModel"):
    bert_jax.BertModel.from_pretrained(folder)
  with pytest.raises(ModelFileError, match="BERT checkpoint.*load it with BertForMaskedLM"):
    bert_jax.ModernBertForMaskedLM.from_pretrained(bert_dir)
  # Tools load by role: the checkpoint's family decides (BertForMaskedLM -> ModernBert...).
  model = loading.load_pretrained(folder, bert_jax.BertForMaskedLM, any_family=True)[0]
  assert type(model) is bert_jax.ModernBertForMaskedLM


def test_sequence_longer_than_the_context_is_refused(hf_mlm):
  _, folder = hf_mlm
  model = bert_jax.ModernBertModel.from_pretrained(folder)
  with pytest.raises(DataError, match="at most 128"):
    model(np.ones((1, 129), np.int32))


# ------------------------------------------------------------------ pretraining
def test_pretrain_modern_tiny_mlm_only_two_steps(pretrained_modern):
  workdir, summary = pretrained_modern
  assert summary["status"] == "completed" and summary["step"] == 2
  assert np.isfinite(summary["train"]["loss"])
  ev = summary["eval"]
  assert {"mlm_loss", "mlm_accuracy", "unigram_baseline_mlm_accuracy"} <= set(ev)
  assert not any(k.startswith("nsp") for k in ev)  # MLM-only.
  model, tokenizer = bert_jax.from_pretrained(workdir / "model")
  assert type(model) is bert_jax.ModernBertForMaskedLM and tokenizer.kind == "wordpiece"
  assert json.loads((workdir / "model" / "bert_config.json").read_text())["model_type"] == \
      "modernbert"


def test_pretrain_on_a_dataset_prepared_with_tokenizer_json(bpe_dir, mobydick_path, tmp_path):
  """The data pipeline tokenises with ModernBERT's kind of tokenizer.json and stores it."""
  from bert_jax.data import prepare
  lines = mobydick_path.read_text(encoding="utf-8-sig").splitlines()[2000:3500]
  src = tmp_path / "moby.txt"
  src.write_text("\n".join(lines) + "\n", encoding="utf-8")
  prepare(str(src), tmp_path / "ds", bpe_dir / "tokenizer.json", layout="lines", doc_lines=20,
          validation_fraction=0.1, progress=False)
  assert Tokenizer.from_dir(tmp_path / "ds" / "tokenizer").kind == "tokenizers"
  config = pretrain_configs.get_config("modern_tiny")
  config.data.dir = str(tmp_path / "ds")
  summary = pretraining.train_and_evaluate(config, str(tmp_path / "w"))
  assert summary["step"] == 2 and np.isfinite(summary["train"]["loss"])
  model, tokenizer = bert_jax.from_pretrained(tmp_path / "w" / "model")
  assert tokenizer.kind == "tokenizers" and model.config.vocab_size == tokenizer.vocab_size
  # Training rows are masked at 30%, held-out rows at 15% (eval_masked_lm_prob).
  task = pretraining.make_task(config)
  rate = {name: np.mean(b["masked_lm_weights"].sum(1) / b["input_mask"].sum(1))
          for name, b in (("train", next(task.train_iter())),
                          ("eval", next(iter(task.eval_batches()))))}
  assert 0.25 < rate["train"] < 0.32 and 0.12 < rate["eval"] < 0.17, rate


def test_pretrain_cli_refuses_the_other_family_and_a_long_context(pretrain_dataset, vocab_path,
                                                                    bert_dir, tmp_path):
  workdir = tmp_path / "w"
  workdir.mkdir()
  (workdir / "keep.txt").write_text("untouched")
  before = _snapshot(workdir)
  p = subprocess.run(
      [sys.executable, "-m", "bert_jax.cli.pretrain", "--config=configs/pretrain.py:modern_tiny",
       f"--workdir={workdir}", f"--config.data.dir={pretrain_dataset}",
       f"--config.data.vocab={vocab_path}", f"--config.init_from={bert_dir}"],
      capture_output=True, text=True, env=ENV, cwd=REPO)
  assert p.returncode != 0
  err = p.stderr.strip().splitlines()
  assert "BERT checkpoint" in err[-1] and "model.family=bert" in err[-1], p.stderr[-2000:]
  assert _snapshot(workdir) == before
  config = pretrain_configs.get_config("modern_tiny")
  config.data.update(dir=str(pretrain_dataset), vocab=str(vocab_path), seq_len=256,
                     max_predictions=20)
  with pytest.raises(train.TrainingError, match="exceeds model.max_position_embeddings=128"):
    pretraining.train_and_evaluate(config, str(workdir))
  assert _snapshot(workdir) == before


# ------------------------------------------------------------------ fine-tuning and predict
def _finetune_config(task: str, init_from):
  c = finetune_configs.get_config(f"task={task},tiny")
  c.model.family = "modern"
  c.init_from = str(init_from)
  return c


@pytest.mark.parametrize("task", ["classification", "regression", "ner", "squad",
                                  "classification_from_hf_bpe"])
def test_finetune_and_predict_from_a_modern_checkpoint(task, pretrained_modern, hf_mlm, tmp_path,
                                                       bible_path, mobydick_path):
  init = pretrained_modern[0] / "model"
  if task == "classification_from_hf_bpe":  # The HF folder itself, with its tokenizer.json.
    init, task = hf_mlm[1], "classification"
  if task in ("classification", "regression"):
    lines = (corpus_sentences(bible_path, 16, min_words=5)
             + corpus_sentences(mobydick_path, 16, min_words=5))
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(
        {"text": t, "label": ("bible" if i < 16 else "moby") if task == "classification"
         else float(i % 5)}) for i, t in enumerate(lines)))
    c = _finetune_config("classification", init)
    c.data.update(train_file=str(path), regression=task == "regression")
  elif task == "ner":
    blocks = (TESTDATA / "wikigold.conll.txt").read_text(encoding="utf-8").split("\n\n")[:40]
    path = tmp_path / "wg.conll"
    path.write_text("\n\n".join(blocks))
    c = _finetune_config("ner", init)
    c.data.train_file = str(path)
  else:
    path = TESTDATA / "squad_sample.json"
    c = _finetune_config("squad", init)
    c.data.update(train_file=str(path), dev_file=str(path))
  summary = finetune.finetune_and_evaluate(c, str(tmp_path / "w"))
  assert summary["status"] == "completed" and summary["step"] == 2
  info = json.loads((tmp_path / "w" / "best" / "model_info.json").read_text())
  assert info["architecture"].startswith("ModernBertFor")
  if task == "ner":
    path = tmp_path / "sents.txt"
    path.write_text("John Smith flew to Paris .\n")
  rows = predict.predict_file(tmp_path / "w" / "best", path)
  assert rows and all(isinstance(r, dict) for r in rows)
  if task == "ner":
    assert len(rows[0]["tags"]) == 6


def test_finetune_classifier_pooling_mean_is_trained_saved_and_used(pretrained_modern, bible_path,
                                                                   mobydick_path, tmp_path):
  """model.classifier_pooling=mean: the head reads the mean over real tokens, in training and in
  the saved model."""
  from bert_jax import modern_modeling
  lines = (corpus_sentences(bible_path, 8, min_words=5)
           + corpus_sentences(mobydick_path, 8, min_words=5))
  path = tmp_path / "data.jsonl"
  path.write_text("\n".join(json.dumps({"text": t, "label": "bible" if i < 8 else "moby"})
                            for i, t in enumerate(lines)))
  c = _finetune_config("classification", pretrained_modern[0] / "model")
  c.data.train_file, c.model.classifier_pooling = str(path), "mean"
  finetune.finetune_and_evaluate(c, str(tmp_path / "w"))
  model, tokenizer = bert_jax.from_pretrained(tmp_path / "w" / "best")
  assert model.config.classifier_pooling == "mean"
  enc = tokenizer(lines[:2], max_length=64)  # rows of two lengths: padding must not count
  ids, mask = enc["input_ids"], enc["attention_mask"]
  assert 0 < mask.sum(axis=1).min() < mask.shape[1]
  hidden = model.model(ids, mask).last_hidden_state
  want = model._logits(modern_modeling.pool(hidden, mask, "mean"), None)
  np.testing.assert_allclose(np.asarray(model(ids, mask)), np.asarray(want), atol=1e-5)
  cls = model._logits(modern_modeling.pool(hidden, mask, "cls"), None)
  assert not np.allclose(np.asarray(want), np.asarray(cls), atol=1e-3)
  bert = finetune_configs.get_config("task=classification,tiny")
  bert.model.classifier_pooling = "mean"
  with pytest.raises(UserError, match="classifier_pooling='mean' is a ModernBERT setting"):
    family.compute_settings(bert.model)


def test_finetune_refuses_the_other_family(pretrained_modern, bert_dir, tmp_path):
  c = _finetune_config("ner", bert_dir)
  c.data.train_file = str(TESTDATA / "wikigold.conll.txt")
  with pytest.raises(train.TrainingError, match="holds a BERT checkpoint but model.family=modern"):
    finetune.finetune_and_evaluate(c, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


# ------------------------------------------------------------------ fill_mask and embed
def test_fill_mask_on_modern_checkpoints(pretrained_modern, hf_mlm, texts):
  from bert_jax import mask_filling
  ckpt = pretrained_modern[0] / "model"
  out = mask_filling.fill_mask_checkpoint(ckpt, "In the beginning God [MASK] the heaven.", 3)
  assert len(out) == 3 and all(0 <= c["score"] <= 1 for c in out)
  # A BPE folder: [MASK] written in the text is the tokenizer's mask token.
  model, tokenizer = bert_jax.from_pretrained(hf_mlm[1])
  out = bert_jax.fill_mask(model, tokenizer, ["Call me [MASK].", texts[1] + " [MASK]"], top_k=2)
  assert [len(o) for o in out] == [2, 2]
  with pytest.raises(DataError, match="accepts at most 128"):
    bert_jax.fill_mask(model, tokenizer, " ".join(texts * 3) + " [MASK]")


def test_embed_on_modern_checkpoints(pretrained_modern, hf_mlm, texts, tmp_path):
  from bert_jax import sentence_embedding
  ckpt = pretrained_modern[0] / "model"
  model, tokenizer = bert_jax.from_pretrained(hf_mlm[1])
  # embed: mean and cls pooling equal the encoder's outputs computed here.
  ids, mask = _inputs(tokenizer, texts)
  x = np.asarray(model.model(ids, mask).last_hidden_state)
  mean = (x * mask[:, :, None]).sum(1) / mask.sum(1, keepdims=True)
  np.testing.assert_allclose(bert_jax.embed(model, tokenizer, texts, pooling="mean"), mean,
                             atol=1e-5)
  np.testing.assert_allclose(bert_jax.embed(model, tokenizer, texts, pooling="cls"), x[:, 0],
                             atol=1e-5)
  lines = tmp_path / "in.txt"
  lines.write_text("\n".join(texts) + "\n")
  res = sentence_embedding.embed_checkpoint_file(ckpt, lines, tmp_path / "out")
  assert res["rows"] == len(texts) and np.load(tmp_path / "out.npy").shape == (len(texts), 64)


# ------------------------------------------------------------------ AOT for TPU
_AOT = r"""
import json, sys
from bert_jax import aot
from bert_jax.configs import pretrain
config = pretrain.get_config("modern_tiny")
config.mesh.update(data=2, fsdp=2, tensor=1)
setup = aot.prepare(config, "v5e:2x2")
compiled = aot.compile_step(setup)
print(json.dumps({"config": type(setup.bert_config).__name__,
                  "flops": compiled.cost_analysis()["flops"] if isinstance(
                      compiled.cost_analysis(), dict) else compiled.cost_analysis()[0]["flops"],
                  "temp": compiled.memory_analysis().temp_size_in_bytes}))
"""


def test_aot_compiles_the_modern_tiny_train_step_for_tpu(tmp_path):
  import glob
  caches = sorted(glob.glob(os.path.expanduser("~/.cache/bert_jax/libtpu*")))
  caches = [c for c in caches if os.path.isdir(os.path.join(c, "libtpu"))]
  if not caches:
    pytest.skip("libtpu is not in ~/.cache/bert_jax (tests/test_aot.py installs it).")
  env = dict(ENV, PYTHONPATH=os.pathsep.join([caches[-1], str(REPO)]))
  env.pop("XLA_FLAGS", None)
  p = subprocess.run([sys.executable, "-c", _AOT], capture_output=True, text=True, env=env,
                     cwd=REPO, timeout=600)
  assert p.returncode == 0, p.stderr[-3000:]
  report = json.loads(p.stdout.strip().splitlines()[-1])
  assert report["config"] == "ModernBertConfig" and report["flops"] > 0


# ------------------------------------------------------------------ initialisation
@pytest.mark.parametrize("cutoff", [1.0, 2.0])
def test_fresh_init_follows_initializer_cutoff_factor(cutoff):
  """As transformers' trunc_normal_(std, -cutoff * std, cutoff * std): std of the untruncated."""
  from bert_jax import modern_modeling
  from bert_jax.modern_configuration import preset
  cfg = preset("modern_tiny", hidden_size=256, num_attention_heads=4, num_hidden_layers=1,
               initializer_cutoff_factor=cutoff)
  model = modern_modeling.create_model(modern_modeling.ModernBertModel, cfg, seed=1)
  w = np.asarray(model.layers[0].attn.Wqkv.kernel[...]).ravel()
  emb = np.asarray(model.embeddings.tok_embeddings.embedding[...]).ravel()
  # The standard normal cut at +-c has variance 1 - 2 c phi(c) / (2 Phi(c) - 1).
  phi, mass = math.exp(-cutoff ** 2 / 2) / math.sqrt(2 * math.pi), math.erf(cutoff / math.sqrt(2))
  want = math.sqrt(1 - 2 * cutoff * phi / mass) * cfg.initializer_range
  for x in (w, emb):
    assert np.abs(x).max() <= cutoff * cfg.initializer_range + 1e-7
    assert abs(x.std() / want - 1) < 0.02
