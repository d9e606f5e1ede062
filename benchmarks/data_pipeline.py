"""Data pipeline throughput and memory on the shared corpora.

  .venv/bin/python benchmarks/data_pipeline.py [--train_step_examples_per_s=X] [--skip_10x]

Prints preparation MB/s and tokens/s (wall and per busy core), input-pipeline examples/s per
core (one process, one pair-building thread), peak RSS of preparation at 1x and 10x the Bible,
and, given the train step's rate in examples/s (e.g. BERT-base seq 128 batch 8 from the trainer's
benchmark), how many times faster the pipeline is.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
SHARED = os.path.join(os.path.dirname(REPO), "shared", "data", "corpus")
VOCAB = os.path.join(REPO, "bert_jax", "resources", "bert-base-uncased-vocab.txt")

_STEP = flags.DEFINE_float("train_step_examples_per_s", 0.0,
                           "Examples/s the train step consumes (printed beside, with the ratio).")
_SKIP_10X = flags.DEFINE_bool("skip_10x", False, "Skip the 10x corpus RSS run (~1 min).")
_BATCHES = flags.DEFINE_integer("batches", 200, "Batches of 8 x 128 to time in the pipeline.")

_RSS = """
import resource, sys, json
from bert_jax.data import prepare
s = prepare(sys.argv[1], sys.argv[2], sys.argv[3], layout="lines", progress=False)
print(json.dumps({"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "tokens": s["tokens"], "seconds": s["seconds"]}))
"""


def _corpus(name):
  path = os.path.join(SHARED, name)
  if not os.path.exists(path):
    sys.exit(f"{path} is missing; the benchmark needs ../shared/data/corpus.")
  return path


def bench_prepare(tmp):
  from bert_jax.data import prepare
  rows = []
  for name, layout in (("web-bible.en.txt", "lines"), ("mobydick.en.txt", "sentences")):
    path = _corpus(name)
    mb = os.path.getsize(path) / 2**20
    for workers in (1, 2):
      out = os.path.join(tmp, f"{name}-{workers}")
      t = time.time()
      s = prepare(path, out, VOCAB, layout=layout, num_workers=workers, chunk_mb=0.5,
                  progress=False)
      wall = time.time() - t
      rows.append({"corpus": name, "workers": workers, "MB": round(mb, 2),
                   "MB/s": round(mb / wall, 2), "tokens/s": round(s["tokens"] / wall),
                   "MB/s/core": round(mb / s["cpu_seconds"], 2),
                   "tokens/s/core": round(s["tokens"] / s["cpu_seconds"]),
                   "wall_s": round(wall, 2)})
      print(json.dumps(rows[-1]))
  return os.path.join(tmp, "web-bible.en.txt-1")


def bench_pipeline(data_dir):
  from bert_jax import input_pipeline as ip
  results = {}
  for name, kw in (("nsp", {}), ("nsp+wwm+pack", {"whole_word_mask": True, "pack": True,
                                                  "short_seq_prob": 0.5})):
    ds = ip.create_pretraining_dataset(data_dir, "train", batch_size=8, seq_len=128,
                                       max_predictions=20, seed=0, process_index=0,
                                       process_count=1, num_threads=1, prefetch_batches=0, **kw)
    it = iter(ds)
    next(it)
    cpu, t = time.process_time(), time.time()
    for _ in range(_BATCHES.value):
      next(it)
    wall, cpu = time.time() - t, time.process_time() - cpu
    n = 8 * _BATCHES.value
    results[name] = {"examples/s": round(n / wall), "examples/s/core": round(n / cpu)}
    print(json.dumps({"pipeline": name, **results[name]}))
  return results


def bench_rss(tmp):
  text = open(_corpus("web-bible.en.txt"), "rb").read()
  out = {}
  for k in ((1,) if _SKIP_10X.value else (1, 10)):
    path = os.path.join(tmp, f"bible-{k}x.txt")
    with open(path, "wb") as f:
      for _ in range(k):
        f.write(text)
    proc = subprocess.run([sys.executable, "-c", _RSS, path, os.path.join(tmp, f"rss-{k}"), VOCAB],
                          capture_output=True, text=True, cwd=REPO, check=True)
    out[k] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps({"corpus": f"{k}x Bible", **out[k]}))
  if 10 in out:
    print(json.dumps({"peak_rss_10x_over_1x": round(out[10]["rss_mb"] / out[1]["rss_mb"], 3)}))


def main(argv):
  del argv
  print(f"cores: {os.cpu_count()}")
  with tempfile.TemporaryDirectory() as tmp:
    data_dir = bench_prepare(tmp)
    results = bench_pipeline(data_dir)
    if _STEP.value:
      rate = results["nsp"]["examples/s/core"]
      print(json.dumps({"train_step_examples/s": _STEP.value, "pipeline_examples/s/core": rate,
                        "pipeline_over_step": round(rate / _STEP.value, 1)}))
    bench_rss(tmp)


if __name__ == "__main__":
  app.run(main)
