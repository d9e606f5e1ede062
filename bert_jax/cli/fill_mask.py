r"""The most likely tokens for each [MASK] of the texts given (`mask_filling.fill_mask`).

  bert-jax-fill-mask --checkpoint=DIR "The capital of France is [MASK]." [--top_k=5] [--json]

The checkpoint needs the masked-LM head (BertForPreTraining or BertForMaskedLM).
"""
from __future__ import annotations

import json

from absl import app, flags

from bert_jax import mask_filling
from bert_jax.cli import common

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "bert_jax directory, HF folder or TF1 "
                                  "checkpoint with the masked-LM head.")
_TOP_K = flags.DEFINE_integer("top_k", 5, "Candidates per [MASK].")
_DTYPE = flags.DEFINE_string("dtype", None,
                             "Compute dtype: bfloat16, float32 or auto (bf16 where this device "
                             "computes it natively, else f32); default: the checkpoint's.")
_JSON = flags.DEFINE_bool("json", False, "Print one JSON object per text instead of a table.")
_QUANTIZE = common.define_quantize()
flags.declare_key_flag(common.VERBOSE)


def main(argv):
  texts = argv[1:]
  if not _CHECKPOINT.value:
    raise app.UsageError("--checkpoint is required.")
  if not texts:
    raise app.UsageError('Pass one or more texts, e.g. "The capital of France is [MASK]."')
  common.quiet_logs()
  results = mask_filling.fill_mask_checkpoint(_CHECKPOINT.value, texts, _TOP_K.value,
                                              dtype=_DTYPE.value, quantize=_QUANTIZE.value)
  for text, res in zip(texts, results, strict=True):
    per_mask = [res] if isinstance(res[0], dict) else res
    if _JSON.value:
      print(json.dumps({"text": text, "masks": per_mask}))
      continue
    print(text)
    for m, cands in enumerate(per_mask):
      shown = "  ".join(f"{c['token_str']} {c['score']:.3f}" for c in cands)
      print(f"  [MASK] {m + 1}: {shown}")


def run():
  common.run(main)


if __name__ == "__main__":
  run()
