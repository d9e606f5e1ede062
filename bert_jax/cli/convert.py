r"""Convert BERT weights between Hugging Face folders, Google TF1 checkpoints and bert_jax
directories (`convert.convert`).

  bert-jax-convert --src=HF_OR_TF1_DIR --dst=OUT_DIR            # -> bert_jax directory
  bert-jax-convert --src=BERT_JAX_DIR --dst=OUT_DIR --to=hf     # -> Hugging Face folder

A missing file, an unknown layout, a shape that does not fit the config or a destination that
already holds files (without --overwrite) is refused with one line and exit status 2; nothing
is written.
"""
from __future__ import annotations

import pathlib

from absl import app, flags

from bert_jax import convert
from bert_jax.cli import common

_SRC = flags.DEFINE_string("src", None,
                           "bert_jax directory, Hugging Face folder or TF1 checkpoint.")
_DST = flags.DEFINE_string("dst", None, "Output directory (must not exist unless --overwrite).")
_TO = flags.DEFINE_enum("to", "bert_jax", ["bert_jax", "hf"], "Output format.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing destination.")
flags.declare_key_flag(common.VERBOSE)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments {argv[1:]}; use --src=... --dst=....")
  if not _SRC.value or not _DST.value:
    raise app.UsageError("Both --src and --dst are required.")
  common.quiet_logs()  # orbax logs every file at INFO.
  conv = convert.convert(_SRC.value, _DST.value, _TO.value, _OVERWRITE.value)
  print(conv.summary())
  print(f"wrote {_TO.value} model to {pathlib.Path(_DST.value).absolute()}")


def run():
  common.run(main)


if __name__ == "__main__":
  run()
