r"""Fine-tune BERT (classification / regression incl. GLUE, NER, SQuAD) with
`finetune.finetune_and_evaluate`.

  bert-jax-finetune --config=configs/finetune.py:task=NAME --workdir=DIR \
      [--config.init_from=CKPT] [--config.key=value ...]

Keeps WORKDIR/best (what bert-jax-predict reads) and WORKDIR/dev_predictions.jsonl.
"""
from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from bert_jax import finetune
from bert_jax.cli import common

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Fine-tuning config: configs/finetune.py:task=NAME[,tiny] (classification, "
    "ner, squad or a GLUE task).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None,
                               "Directory for checkpoints, metrics and WORKDIR/best.")
flags.mark_flags_as_required(["config", "workdir"])
flags.declare_key_flag(common.VERBOSE)
for _flag in common.DISTRIBUTED_FLAGS:
  flags.declare_key_flag(_flag)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  common.quiet_logs()
  common.maybe_initialize_distributed()
  summary = finetune.finetune_and_evaluate(_CONFIG.value, _WORKDIR.value)
  best = summary["best"]
  print(f"{summary['status']} at step {summary['step']} ({summary['train_seconds']:.0f} s); "
        f"best {best['metric']}={best['value']} in {best['path']}; final eval: "
        f"{ {k: round(v, 4) for k, v in summary['eval'].items()} }")


def run():
  common.run(main)


if __name__ == "__main__":
  run()
