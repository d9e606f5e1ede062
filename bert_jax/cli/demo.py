r"""`make demo`: pretrain a small BERT on the embedded World English Bible on this machine
(`demo.run_demo`), then compare its held-out MLM accuracy with the unigram baseline.

  bert-jax-demo --workdir=demo_workdir [--config.train.max_train_seconds=60]
  python -m bert_jax.cli.demo --workdir=demo_workdir
"""
from __future__ import annotations

import os

from absl import app, flags
from ml_collections import config_flags

from bert_jax import demo
from bert_jax.cli import common

_CONFIG = config_flags.DEFINE_config_file(
    "config", f"{common.PACKAGE_CONFIGS / 'pretrain.py'}:demo", "Pretraining config.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "demo_workdir", "Where data, checkpoints and results go.")
_DOC_LINES = flags.DEFINE_integer("doc_lines", 32, "Bible verses per document.")
flags.declare_key_flag(common.VERBOSE)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  common.quiet_logs()
  r = demo.run_demo(_CONFIG.value, _WORKDIR.value, _DOC_LINES.value)
  wd = os.path.abspath(_WORKDIR.value)
  if r["status"] == "preempted":
    print(f"\nStopped by a signal at step {r['train_steps']}; the checkpoint is saved. Run the "
          f"same command again to resume.")
    return
  print(f"\nTrained {r['train_steps']} steps in {r['train_seconds']} s.")
  nsp = "" if r["nsp_accuracy"] is None else f"; NSP accuracy {r['nsp_accuracy']:.4f} vs 0.5"
  print(f"Held-out MLM accuracy {r['mlm_accuracy']:.4f} vs unigram baseline "
        f"{r['unigram_baseline_mlm_accuracy']:.4f} (always the most frequent masked token, "
        f"{r['eval_masked_lm_prob']:.0%} of tokens masked){nsp}.")
  print(f"Results: {wd}/eval_results.json  curves: {r['curves']}  "
        f"TensorBoard: tensorboard --logdir {wd}/run/tensorboard  model: {wd}/run/model")


def run():
  common.run(main)


if __name__ == "__main__":
  run()
