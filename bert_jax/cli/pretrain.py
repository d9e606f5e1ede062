r"""Pretrain BERT (MLM + NSP) with `pretraining.train_and_evaluate`.

  bert-jax-pretrain --config=configs/pretrain.py:VARIANT --workdir=DIR [--config.key=value ...]
  python -m bert_jax.cli.pretrain --config=configs/pretrain.py:tiny --workdir=/tmp/tiny \
      --config.data.dir=DATASET

The whole update is `train.make_train_step` (bert_jax/train.py), driven by `train.run`; the
loss is `pretraining.pretraining_loss` (`mlm_only_loss` for model.family=modern).
Resumes from WORKDIR's latest checkpoint, else starts from --config.init_from, else fresh.
SIGTERM saves and exits 0.
"""
from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from bert_jax import pretraining
from bert_jax.cli import common

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Pretraining config: configs/pretrain.py:VARIANT (tiny, demo, base, ...).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None,
                               "Directory for checkpoints, metrics and the exported model.")
flags.mark_flags_as_required(["config", "workdir"])
flags.declare_key_flag(common.VERBOSE)
for _flag in common.DISTRIBUTED_FLAGS:
  flags.declare_key_flag(_flag)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  common.quiet_logs()
  common.maybe_initialize_distributed()
  summary = pretraining.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  print(f"{summary['status']} at step {summary['step']}; eval: {summary['eval']}")


def run():
  common.run(main)


if __name__ == "__main__":
  run()
