"""Where a batch-1 `bert_jax.embed` call's time goes, against ONNX Runtime in the same process.

  PYTHONPATH=. .venv/bin/python -m benchmarks.embed_latency --workdir=/tmp/bji
  (benchmarks.inference's flags: --workdir holds its ONNX export, made by its --prepare_only;
  without one ORT is skipped; --corpus_dir the sentences; --rounds, here 3 unless given)

all-MiniLM-L6-v2 on `--texts` of benchmarks.inference's real sentences, one text per call,
interleaved rounds (ratios hold on a noisy host; absolute times do not): the public call
(`embed(model, tok, text)`), then its parts: tokenization, `inference.inference_split` (cached:
an identity check), the jitted encode at the text's length bucket and at its exact length (what
the padding costs), and ONNX Runtime's f32 session (ORT_ENABLE_ALL, the same threads) on the
same text, tokenization included, as benchmarks.inference times it. p50 ms per call.
"""
from __future__ import annotations

import os
import pathlib
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from benchmarks import inference as bench  # noqa: E402  (its --workdir, --corpus_dir, --rounds)

_TEXTS = flags.DEFINE_integer("texts", 100, "Texts, each embedded alone.")


def main(_):
  import bert_jax
  from benchmarks.inference_stacks import minilm_dir, ort_stack
  from bert_jax import inference, sentence_embedding

  model = bert_jax.BertModel.from_pretrained(minilm_dir(), dtype="auto")
  tok = bert_jax.BertTokenizer.from_pretrained(minilm_dir())
  texts = bench.embed_texts(2000)[:_TEXTS.value]
  kw = dict(normalize=True, max_length=256, batch_size=32)
  encoder = inference.encoder_of(model)
  graphdef, state = inference.inference_split(encoder)
  bucketed, exact = {}, {}
  for t in texts:
    rows, _ = sentence_embedding._tokenize(tok, [t], kw["max_length"])
    (_, length), = sentence_embedding._plan(rows, kw["batch_size"],
                                            encoder.config.max_position_embeddings)
    bucketed[t] = inference.pad_rows(rows, None, length, 1, tok.pad_id)
    exact[t] = inference.pad_rows(rows, None, len(rows[0]), 1, tok.pad_id)

  def encode(x):
    return np.asarray(inference.encode(graphdef, state, x["input_ids"], x["attention_mask"],
                                       x["token_type_ids"], pooling="mean"))

  parts = {
      "embed() (the public call)": lambda t: bert_jax.embed(model, tok, t, **kw),
      "  tokenize": lambda t: sentence_embedding._tokenize(tok, [t], kw["max_length"]),
      "  inference_split (cached)": lambda t: inference.inference_split(encoder),
      "  encode, length bucket": lambda t: encode(bucketed[t]),
      "  encode, exact length": lambda t: encode(exact[t]),
  }
  work = pathlib.Path(bench._WORKDIR.value)
  if (work / "minilm.f32.onnx").exists():
    ort = ort_stack("embed", "float32", work, os.cpu_count() or 1)
    parts["ONNX Runtime f32 (tokenize + run)"] = lambda t: ort([t])
  for f in parts.values():  # every shape compiled, every cache warm
    for t in texts:
      f(t)
  p50 = {name: [] for name in parts}
  for _ in range(bench._ROUNDS.value):
    for name, f in parts.items():
      ts = []
      for t in texts:
        t0 = time.perf_counter()
        f(t)
        ts.append(time.perf_counter() - t0)
      p50[name].append(np.percentile(ts, 50) * 1e3)
  lengths = [len(exact[t]["input_ids"][0]) for t in texts]
  padded = [len(bucketed[t]["input_ids"][0]) for t in texts]
  print(f"{len(texts)} texts, mean {np.mean(lengths):.1f} tokens, padded to {np.mean(padded):.1f}; "
        f"p50 ms per call, median of {bench._ROUNDS.value} interleaved rounds")
  for name, values in p50.items():
    print(f"{name:36s} {np.median(values):7.3f}")


if __name__ == "__main__":
  flags.FLAGS.set_default("rounds", 3)
  app.run(main)
