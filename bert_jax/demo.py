"""`make demo`: pretrain a small BERT on the embedded World English Bible on this machine.

Prepares the corpus (bert-base-uncased WordPiece vocabulary, 32-verse documents, held-out
documents for evaluation), pretrains configs/pretrain.py:demo for at most
`--config.train.max_train_seconds` (10 minutes), evaluates MLM and NSP accuracy on the held-out
documents beside the unigram baseline (always predicting the most frequent masked token), and
writes WORKDIR/eval_results.json, WORKDIR/curves.png, TensorBoard logs and WORKDIR/model.

  python -m bert_jax.demo --workdir=demo_workdir [--config.train.max_train_seconds=60]
"""
from __future__ import annotations

import json
import os

from absl import app, flags
from ml_collections import config_flags

from bert_jax import cli

FLAGS = flags.FLAGS
_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               "configs", "pretrain.py")


def _define_flags():
  """Defined when the CLI runs, so modules importing several entry points do not clash."""
  if "doc_lines" in FLAGS:
    return
  config_flags.DEFINE_config_file("config", f"{_DEFAULT_CONFIG}:demo", "Pretraining config.",
                                  lock_config=True)
  flags.DEFINE_string("workdir", "demo_workdir", "Where data, checkpoints and results go.")
  flags.DEFINE_integer("doc_lines", 32, "Bible verses per document.")


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
  ax1.plot(steps, [r["train/mlm_loss"] for r in train], label="MLM loss")
  ax1.plot(steps, [r["train/nsp_loss"] for r in train], label="NSP loss")
  ax1.set_xlabel("step")
  ax1.legend()
  ax2.plot(steps, [r["train/mlm_accuracy"] for r in train], label="MLM accuracy (train)")
  ax2.plot(steps, [r["train/nsp_accuracy"] for r in train], label="NSP accuracy (train)")
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
      "status": summary["status"],
  }
  with open(os.path.join(workdir, "eval_results.json"), "w") as f:
    json.dump(results, f, indent=2)
  results["curves"] = plot_curves(os.path.join(workdir, "run"))
  return results


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  cli.quiet_logs()
  r = cli.guarded(run_demo, FLAGS.config, FLAGS.workdir, FLAGS.doc_lines)
  wd = os.path.abspath(FLAGS.workdir)
  if r["status"] == "preempted":
    print(f"\nStopped by a signal at step {r['train_steps']}; the checkpoint is saved. Run the "
          f"same command again to resume.")
    return
  print(f"\nTrained {r['train_steps']} steps in {r['train_seconds']} s.")
  print(f"Held-out MLM accuracy {r['mlm_accuracy']:.4f} vs unigram baseline "
        f"{r['unigram_baseline_mlm_accuracy']:.4f} (always the most frequent masked token); "
        f"NSP accuracy {r['nsp_accuracy']:.4f} vs 0.5.")
  print(f"Results: {wd}/eval_results.json  curves: {r['curves']}  "
        f"TensorBoard: tensorboard --logdir {wd}/run/tensorboard  model: {wd}/run/model")


def run():
  _define_flags()
  app.run(main, flags_parser=cli.parse_flags)


if __name__ == "__main__":
  run()
