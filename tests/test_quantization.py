"""int8 post-training quantization through qwix (bert_jax.quantization): the real all-MiniLM-L6-v2
on real sentences keeps its outputs, its weights really are int8, the CLIs take --quantize, and
models it cannot handle are refused."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO, corpus_sentences
from flax import nnx

import bert_jax
from bert_jax import layers, model_dir, predict, quantization
from bert_jax.errors import ConfigError, ModelFileError

pytest.importorskip("qwix")
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def texts(bible_path, mobydick_path):
  both = corpus_sentences(bible_path, 40, min_words=6) + corpus_sentences(mobydick_path, 40,
                                                                         min_words=6)
  return [t for t in both if len(t.split()) <= 40][:32]


@pytest.fixture(scope="module")
def classifier(minilm_dir):
  """all-MiniLM-L6-v2's encoder under a seeded 3-way head (a real encoder; the head only has to
  be the same for both precisions)."""
  return bert_jax.BertForSequenceClassification.from_pretrained(minilm_dir, num_labels=3), (
      bert_jax.BertTokenizer.from_pretrained(minilm_dir))


def _logits(model, tokenizer, texts):
  from bert_jax.tasks import classification, common
  arrays = classification.encode(tokenizer, texts, None, 64)
  return common.run_model(model, classification._logits, arrays, 16)


def test_weights_are_int8_with_one_scale_per_output_channel(classifier):
  model, _ = classifier
  q = quantization.quantize(model, "int8")
  kernel = q.bert.encoder.layer[0].attention.self.query.kernel  # [D, N, H]
  assert kernel.qvalue.dtype == jnp.int8 and kernel.qvalue.shape == (384, 12, 32)
  assert kernel.scale.shape == (1, 12, 32)
  table = q.bert.embeddings.word_embeddings.embedding
  assert table.qvalue.dtype == jnp.int8 and table.scale.shape == (30522, 1)
  leaves = jax.tree.leaves(nnx.state(q))
  int8 = sum(x.size for x in leaves if x.dtype == jnp.int8)
  assert int8 / sum(x.size for x in leaves) > 0.95  # LayerNorms, biases and scales stay f32.
  assert quantization.parameter_bytes(q) < 0.27 * quantization.parameter_bytes(model)
  # The original model is untouched, and qwix's values dequantize back to it.
  assert isinstance(model.bert.encoder.layer[0].attention.self.query.kernel, nnx.Param)
  w = model.bert.encoder.layer[0].attention.self.query.kernel[...]
  back = kernel.qvalue.astype(jnp.float32) * kernel.scale
  assert float(jnp.max(jnp.abs(back - w))) <= float(jnp.max(kernel.scale)) / 2 + 1e-7
  # int8_dynamic: the same int8 weights, and every Dense quantizes its input too.
  d = quantization.quantize(model, "int8_dynamic")
  dense = [m for _, m in nnx.iter_graph(d) if isinstance(m, layers.Dense)]
  assert dense and all(m.quantize_activations for m in dense)
  assert not any(m.quantize_activations for _, m in nnx.iter_graph(q)
                 if isinstance(m, layers.Dense))
  np.testing.assert_array_equal(d.bert.encoder.layer[0].attention.self.query.kernel.qvalue,
                                kernel.qvalue)


def test_int8_predictions_agree_with_f32_on_real_sentences(classifier, texts):
  model, tokenizer = classifier
  f32 = _logits(model, tokenizer, texts)
  spread = float(np.max(np.abs(f32 - f32.mean(0))))  # How far the logits move between texts.
  # Int8 activations add per-token rounding on top of the weights' (the head is untrained, so
  # its logits differ little between texts and near-ties can flip).
  for activations, tol, agree in ((False, 0.05, 0.9), (True, 0.25, 0.75)):
    q = _logits(quantization.quantize(model, "int8", activations=activations), tokenizer, texts)
    assert float(np.max(np.abs(q - f32))) < tol * spread, activations
    same = np.mean(q.argmax(-1) == f32.argmax(-1))
    assert same >= agree, (activations, same)


def test_int8_sentence_embeddings_on_real_sentences(minilm_dir, texts):
  model = bert_jax.BertModel.from_pretrained(minilm_dir)
  tokenizer = bert_jax.BertTokenizer.from_pretrained(minilm_dir)
  e = bert_jax.embed(model, tokenizer, texts, normalize=True)
  eq = bert_jax.embed(quantization.quantize(model, "int8"), tokenizer, texts, normalize=True)
  cos = np.sum(e * eq, -1)
  assert cos.min() > 0.99
  # Still a retrieval model: each text's nearest int8 vector is its own f32 one.
  assert np.array_equal(np.argmax(eq @ e.T, -1), np.arange(len(texts)))


def test_fill_mask_with_int8_decoder(vocab_path):
  """The tied MLM decoder (Embed.attend) runs against the int8 table: the vocabulary logits stay
  close to f32 ones and fill_mask returns a distribution."""
  from bert_jax import modeling
  tok = bert_jax.BertTokenizer.from_pretrained(vocab_path)
  cfg = modeling.preset("tiny", vocab_size=tok.vocab_size, num_hidden_layers=1, hidden_size=32,
                        num_attention_heads=2, intermediate_size=64, dtype="float32",
                        attention_impl="xla")
  model = bert_jax.BertForMaskedLM(cfg, rngs=nnx.Rngs(params=0))
  q = quantization.quantize(model, "int8")
  ids = jnp.asarray([tok.encode("The whale swam under the ship.")])
  f32 = getattr(model(ids), "mlm_logits", model(ids))
  i8 = getattr(q(ids), "mlm_logits", q(ids))
  assert float(jnp.max(jnp.abs(i8 - f32))) < 0.1 * float(jnp.std(f32))
  cands = bert_jax.fill_mask(q, tok, "The whale swam [MASK] the ship.", top_k=3)
  assert len(cands) == 3 and 0 < sum(c["score"] for c in cands) <= 1.0 + 1e-6


def test_refusals():
  model = bert_jax.BertModel(bert_jax.BertConfig(vocab_size=50, hidden_size=16,
                                                 num_hidden_layers=1, num_attention_heads=2,
                                                 intermediate_size=32),
                             rngs=nnx.Rngs(params=0))
  q = quantization.quantize(model, "int8")
  with pytest.raises(ModelFileError, match="already quantized"):
    quantization.quantize(q, "int8")
  with pytest.raises(ModelFileError, match="no bert_jax Dense layers"):
    quantization.quantize(nnx.Linear(4, 4, rngs=nnx.Rngs(0)), "int8")
  with pytest.raises(ConfigError, match="int4"):
    quantization.quantize(model, "int4")
  assert quantization.quantize(model, "none") is model
  assert isinstance(model.encoder.layer[0].output.dense, layers.Dense)


def _cli(module, *args, cwd):
  return subprocess.run([sys.executable, "-m", f"bert_jax.cli.{module}", *args],
                        capture_output=True, text=True, timeout=180, env=ENV, cwd=cwd)


@pytest.mark.slow
def test_cli_quantize(classifier, texts, tmp_path, minilm_dir):
  """predict (--quantize=int8_dynamic: int8 activations too) and embed (--quantize=int8) agree
  with f32; an unknown mode and an already int8 model directory are refused in one sentence
  with nothing written."""
  model, tokenizer = classifier
  ckpt = tmp_path / "cls"
  model_dir.save_model_dir(ckpt, model, tokenizer,
                           extra_info={"task": "classification", "label_names": ["a", "b", "c"]})
  inp = tmp_path / "in.jsonl"
  inp.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts[:16]))
  out = tmp_path / "p.jsonl"
  proc = _cli("predict", f"--checkpoint={ckpt}", f"--input={inp}", f"--output={out}",
              "--quantize=int8_dynamic", cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr
  q_labels = [json.loads(line)["label"] for line in out.read_text().splitlines()]
  f_labels = [r["label"] for r in predict.predict_file(ckpt, inp)]
  assert np.mean(np.asarray(q_labels) == np.asarray(f_labels)) >= 0.85

  lines = tmp_path / "lines.txt"
  lines.write_text("\n".join(texts[:8]) + "\n")
  proc = _cli("embed", f"--checkpoint={minilm_dir}", f"--input={lines}",
              f"--output={tmp_path / 'e'}", "--quantize=int8", cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr
  e = bert_jax.embed(bert_jax.BertModel.from_pretrained(minilm_dir), tokenizer, texts[:8],
                     normalize=True)
  assert np.sum(np.load(tmp_path / "e.npy") * e, -1).min() > 0.99

  proc = _cli("embed", f"--checkpoint={minilm_dir}", f"--input={lines}",
              f"--output={tmp_path / 'bad'}", "--quantize=int4", cwd=tmp_path)
  assert proc.returncode != 0 and "int4" in proc.stderr
  assert not list(tmp_path.glob("bad*"))
