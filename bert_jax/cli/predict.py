r"""Predict with a fine-tuned model (`predict.predict_file`): one JSON object per input row.

  bert-jax-predict --checkpoint=WORKDIR/best --input=FILE --output=FILE.jsonl

The checkpoint's model_info.json says which task it was trained for; the inputs and outputs per
task are listed in bert_jax/predict.py.
"""
from __future__ import annotations

import pathlib

from absl import app, flags

from bert_jax import predict
from bert_jax.cli import common
from bert_jax.errors import ExistsError
from bert_jax.tasks.common import write_jsonl

_CHECKPOINT = flags.DEFINE_string("checkpoint", None,
                                  "A fine-tuned bert_jax model directory (WORKDIR/best).")
_INPUT = flags.DEFINE_string("input", None,
                             "Rows to predict (CSV/TSV/JSONL, CoNLL/text, SQuAD JSON).")
_OUTPUT = flags.DEFINE_string("output", None, "Where to write one JSON object per row (.jsonl).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing --output.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Rows per forward pass.")
_TASK = flags.DEFINE_string("task", "", "Optional: refuse a checkpoint not made for this task.")
_OVERRIDES = common.define_table_overrides()
for _flag in _OVERRIDES:  # defined in common, listed by this tool's --help
  flags.declare_key_flag(_flag.name)
flags.mark_flags_as_required(["checkpoint", "input", "output"])
_QUANTIZE = common.define_quantize()
flags.declare_key_flag(common.VERBOSE)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  common.quiet_logs()
  out = pathlib.Path(_OUTPUT.value)
  if out.exists() and not _OVERWRITE.value:
    raise ExistsError(f"--output={out} already exists; choose another path or pass --overwrite.")
  records = predict.predict_file(_CHECKPOINT.value, _INPUT.value, batch_size=_BATCH_SIZE.value,
                                 task=_TASK.value,
                                 overrides={f.name: f.value for f in _OVERRIDES},
                                 quantize=_QUANTIZE.value)
  write_jsonl(out, records)
  print(f"wrote {len(records)} predictions to {out}")


def run():
  common.run(main)


if __name__ == "__main__":
  run()
