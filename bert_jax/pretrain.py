"""Pretrain BERT: `python -m bert_jax.pretrain --config=configs/pretrain.py:VARIANT --workdir=DIR`.

Resumes from WORKDIR's latest checkpoint, else starts from --config.init_from, else fresh.
SIGTERM saves and exits 0. Console script: `bert-jax-pretrain`.
"""
from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from bert_jax import cli

FLAGS = flags.FLAGS


def _define_flags():
  """Defined when the CLI runs, so modules importing several entry points do not clash."""
  if "workdir" in FLAGS:
    return
  config_flags.DEFINE_config_file("config", None, "configs/pretrain.py:VARIANT",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None,
                      "Directory for checkpoints, metrics and the exported model.")
  flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  cli.quiet_logs()
  cli.maybe_initialize_distributed()
  from bert_jax import pretraining
  summary = cli.guarded(pretraining.train_and_evaluate, FLAGS.config, FLAGS.workdir)
  print(f"{summary['status']} at step {summary['step']}; eval: {summary['eval']}")


def run():
  _define_flags()
  app.run(main, flags_parser=cli.parse_flags)


if __name__ == "__main__":
  run()
