"""Shrink: a fine-tuned teacher vs distilled students vs their int8 versions, on the polarity data.

  PYTHONPATH=. python benchmarks/shrink.py --teacher=/tmp/shrink/teacher/best \
      --students=/tmp/shrink/s3/best,/tmp/shrink/s2/best \
      --data=../shared/data/classification/polarity-en.csv [--rounds=5]

For each model: dev accuracy on the seeded 80/20 split the classification task makes (split_seed
0, the split the teacher and students were trained on), parameters, bytes of its parameters on
disk (the checkpoint's params folder; for int8 the quantized state written with numpy), and CPU
inference sentences/s at batch 32 (max_seq_length 64): a jitted forward over the dev set, after
a warm-up, in `rounds` interleaved rounds (every model once per round, so load changes on a shared
machine hit all of them alike); the median round is reported. Prints a Markdown table and the
load average before and after.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import tempfile
import time

import jax
import numpy as np
from flax import nnx

from bert_jax import loading, quantization
from bert_jax.tasks import classification, common
from bert_jax.tokenization import Tokenizer


def dev_arrays(checkpoint, data, seq_len: int) -> dict[str, np.ndarray]:
  """The dev rows of the classification task's seeded split, encoded for `checkpoint`."""
  import ml_collections
  d = ml_collections.ConfigDict(dict(text_column="1", text_pair_column="", label_column="0",
                                     format="csv", header="no"))
  ex, _ = classification.read_examples(data, d)
  _, dev_idx = common.split_indices(len(ex["text"]), 0.2, 0)
  texts = [ex["text"][i] for i in dev_idx]
  labels = [ex["label"][i] for i in dev_idx]
  arrays = classification.encode(Tokenizer.from_dir(checkpoint), texts, None, seq_len)
  arrays["labels"] = np.asarray(labels)
  return arrays


def disk_bytes(path: pathlib.Path) -> int:
  return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def quantized_bytes(model) -> int:
  """Bytes of the int8 state saved as numpy arrays (the int8 values and their f32 scales; not
  the per-process oneDNN-packed copies of the kernels)."""
  leaves = jax.tree_util.tree_leaves_with_path(quantization.stored_state(model))
  with tempfile.TemporaryDirectory() as tmp:
    out = pathlib.Path(tmp) / "params.npz"
    np.savez(out, **{jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves})
    return out.stat().st_size


def params(model) -> int:
  """Parameters of the float model (an int8 model has the same count, in int8)."""
  return int(sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--teacher", required=True)
  p.add_argument("--students", default="")
  p.add_argument("--data", required=True)
  p.add_argument("--seq_len", type=int, default=64)
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--time_rows", type=int, default=0, help="Dev rows timed (0: all).")
  p.add_argument("--activations", type=int, default=1, help="Also time the teacher with int8 "
                 "activations (weights + activations).")
  a = p.parse_args()
  print("load before:", os.getloadavg())
  rows = {}
  names = [("teacher", a.teacher)] + [(f"student {pathlib.Path(s).parent.name}", s)
                                      for s in a.students.split(",") if s]
  arrays = dev_arrays(a.teacher, a.data, a.seq_len)
  labels = arrays.pop("labels")
  for name, path in names:
    model = loading.load_model(path)
    label_names = list(model_info(path)["label_names"])
    gold = np.asarray([label_names.index(x) for x in labels])
    n_params = params(model)
    variants = [(name, model, disk_bytes(pathlib.Path(path) / "params"))]
    q = quantization.quantize(model, "int8")
    variants.append((f"{name} int8", q, quantized_bytes(q)))
    if name == "teacher" and a.activations:
      qa = quantization.quantize(model, "int8", activations=True)
      variants.append((f"{name} int8 w+a", qa, quantized_bytes(qa)))
    for vname, m, nbytes in variants:
      logits = common.run_model(m, classification._logits, arrays, a.batch)
      print(f"{vname}: accuracy {np.mean(logits.argmax(-1) == gold):.4f}", flush=True)
      rows[vname] = dict(model=m, accuracy=float(np.mean(logits.argmax(-1) == gold)),
                         params=n_params, bytes=nbytes, times=[])
  n = min(len(labels), a.time_rows or len(labels)) // a.batch * a.batch  # Whole batches only.
  timed = {k: v[:n] for k, v in arrays.items()}
  for _ in range(a.rounds):
    for row in rows.values():
      t = time.perf_counter()
      common.run_model(row["model"], classification._logits, timed, a.batch)
      row["times"].append(n / (time.perf_counter() - t))
  print("load after:", os.getloadavg())
  t_acc, t_speed = rows["teacher"]["accuracy"], statistics.median(rows["teacher"]["times"])
  print(f"\n{n} dev sentences x {a.rounds} rounds, batch {a.batch}, {a.seq_len} tokens\n")
  print("| model | dev accuracy | vs teacher | parameters | bytes on disk | sentences/s "
        "(median; min-max) | speed vs teacher |")
  print("|---|---|---|---|---|---|---|")
  for vname, row in rows.items():
    s = statistics.median(row["times"])
    print(f"| {vname} | {row['accuracy']:.4f} | {row['accuracy'] / t_acc:.1%} | "
          f"{row['params'] / 1e6:.2f} M | {row['bytes'] / 1e6:.1f} MB | {s:.1f} "
          f"({min(row['times']):.1f}-{max(row['times']):.1f}) | {s / t_speed:.2f}x |")


def model_info(path) -> dict:
  import json
  return json.loads((pathlib.Path(path) / "model_info.json").read_text())


if __name__ == "__main__":
  main()
