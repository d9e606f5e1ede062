r"""Compile the real sharded train step for a TPU pod topology on any machine (`aot.analyze`).

  bert-jax-aot --config=configs/pretrain.py:base --topology=v5e:16x16 \
      --config.mesh.data=16 --config.mesh.fsdp=16 --batch_per_chip=64 [--json]

Needs libtpu, not a TPU: installed once into ~/.cache/bert_jax/libtpu-VERSION, outside the venv
(`tpu_compiler.install_command()` prints the command; see docs/scaling.md), so other JAX
processes do not print TPU start-up errors. Prints per-chip memory against HBM, FLOPs,
collectives and a step-time bound; exit status 1 when the configuration does not fit.
"""
from __future__ import annotations

import json
import sys

from absl import app, flags
from ml_collections import config_flags

from bert_jax import aot
from bert_jax.cli import common

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Pretraining config: configs/pretrain.py:VARIANT.", lock_config=True)
_TOPOLOGY = flags.DEFINE_string("topology", None,
                                "TPU topology, e.g. v5e:2x2, v4:2x2x4, v5p:4x4x4, v6e:8x8.")
_VOCAB_SIZE = flags.DEFINE_integer("vocab_size", 30522,
                                   "Vocabulary size (bert-base-uncased: 30522).")
_BATCH_PER_CHIP = flags.DEFINE_integer(
    "batch_per_chip", 0, "If set, train.batch_size = this x (mesh data x fsdp).")
_MFU = flags.DEFINE_float("mfu", 0.4, "Model FLOPs utilisation for the projected tokens/s.")
_JSON = flags.DEFINE_bool("json", False, "Print the report as one JSON object.")
_FORCE = flags.DEFINE_bool("force", False,
                           "Compile even when the analytical estimate says it won't fit.")
flags.mark_flags_as_required(["config", "topology"])
flags.declare_key_flag(common.VERBOSE)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  try:
    report = aot.analyze(_CONFIG.value, _TOPOLOGY.value, vocab_size=_VOCAB_SIZE.value,
                         batch_per_chip=_BATCH_PER_CHIP.value, mfu=_MFU.value,
                         force=_FORCE.value)
  except aot.DoesNotFit as e:  # Exit code 1: the tool worked, the configuration does not fit.
    common.fail(str(e), code=1)
  print(json.dumps(report, indent=1) if _JSON.value else aot.format_report(report), flush=True)
  if not report["fits"]:
    if not _JSON.value:
      print(report["advice"], file=sys.stderr)
    sys.exit(1)


def run():
  common.run(main)


if __name__ == "__main__":
  run()
