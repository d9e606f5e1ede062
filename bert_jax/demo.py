"""`make demo`: pretrain a small BERT on the embedded World English Bible on this machine.

Prepares the corpus (bert-base-uncased WordPiece vocabulary, 32-verse documents, held-out
documents for evaluation), pretrains bert_jax/configs/pretrain.py:demo for at most
`--config.train.max_train_seconds` (10 minutes), evaluates MLM and NSP accuracy on the held-out
documents beside the unigram baseline (always predicting the most frequent masked token), and
writes WORKDIR/eval_results.json, WORKDIR/curves.png, TensorBoard logs and WORKDIR/model.

  python -m bert_jax.cli.demo --workdir=demo_workdir [--config.train.max_train_seconds=60]

`run_demo` is the library function behind it (bert_jax/cli/demo.py) and the notebooks.
"""
from __future__ import annotations

import json
import os

RESOURCES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "resources")
VOCAB = os.path.join(RESOURCES, "bert-base-uncased-vocab.txt")


def prepare_corpus(workdir: str, doc_lines: int = 32) -> str:
  """The embedded Bible as a prepared dataset under WORKDIR/data (reused when present)."""
  from bert_jax.data import default_corpus_path, prepare
  data_dir = os.path.join(workdir, "data")
  if os.path.isfile(os.path.join(data_dir, "metadata.json")):
    return data_dir
  prepare(default_corpus_path(), data_dir, VOCAB, layout="lines", doc_lines=doc_lines,
          validation_fraction=0.05, num_workers=min(2, os.cpu_count() or 1))
  return data_dir


def plot_curves(workdir: str) -> str | None:
  """WORKDIR/curves.png: train loss and MLM/NSP accuracy against steps."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8")]
  train = [r for r in rows if "train/loss" in r]
  if not train:
    return None
  steps = [r["step"] for r in train]
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
  # Whichever heads the run has: MLM-only runs (modern_demo) no NSP; RTD (objective=rtd) a
  # generator MLM and a discriminator.
  for key, label in (("mlm", "MLM"), ("nsp", "NSP"), ("gen_mlm", "generator MLM"),
                     ("disc", "discriminator")):
    if f"train/{key}_loss" in train[0]:
      ax1.plot(steps, [r[f"train/{key}_loss"] for r in train], label=f"{label} loss")
      ax2.plot(steps, [r[f"train/{key}_accuracy"] for r in train],
               label=f"{label} accuracy (train)")
  ax1.set_xlabel("step")
  ax1.legend()
  evals = [r for r in rows if "eval/mlm_accuracy" in r]
  if evals:
    ax2.scatter([r["step"] for r in evals], [r["eval/mlm_accuracy"] for r in evals],
                color="k", label="MLM accuracy (held out)", zorder=3)
    base = evals[-1].get("eval/unigram_baseline_mlm_accuracy")
    if base is not None:
      ax2.axhline(base, ls="--", color="gray", label="unigram baseline")
  ax2.set_xlabel("step")
  ax2.legend()
  fig.tight_layout()
  path = os.path.join(workdir, "curves.png")
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def run_demo(config, workdir: str, doc_lines: int = 32) -> dict:
  from bert_jax import pretraining
  os.makedirs(workdir, exist_ok=True)
  data_dir = prepare_corpus(workdir, doc_lines)
  with config.unlocked():
    config.data.dir = data_dir
    config.data.vocab = config.data.vocab or VOCAB
  summary = pretraining.train_and_evaluate(config, os.path.join(workdir, "run"))
  ev = summary["eval"]
  results = {
      "mlm_accuracy": ev.get("mlm_accuracy"),
      "nsp_accuracy": ev.get("nsp_accuracy"),
      "unigram_baseline_mlm_accuracy": ev.get("unigram_baseline_mlm_accuracy"),
      "mlm_loss": ev.get("mlm_loss"),
      "nsp_loss": ev.get("nsp_loss"),
      "train_steps": summary["step"],
      "train_seconds": round(summary["train_seconds"], 1),
      "train_tokens_per_sec": summary["train"].get("tokens_per_sec"),
      "eval_masked_lm_prob": config.data.get("eval_masked_lm_prob") or config.data.masked_lm_prob,
      "status": summary["status"],
  }
  with open(os.path.join(workdir, "eval_results.json"), "w") as f:
    json.dump(results, f, indent=2)
  results["curves"] = plot_curves(os.path.join(workdir, "run"))
  return results


if __name__ == "__main__":  # python -m bert_jax.demo [--lang=zh]: the CLI (bert_jax/cli/demo.py)
  from bert_jax.cli import demo as _cli
  _cli.run()
