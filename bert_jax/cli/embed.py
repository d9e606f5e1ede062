r"""Sentence or token embeddings of a text file, one text a line
(`sentence_embedding.embed_checkpoint_file`).

  bert-jax-embed --checkpoint=DIR --input=lines.txt --output=out/emb
    -> out/emb.npy (float32 [rows, D], or [tokens, D] with --pooling=tokens)
       out/emb.jsonl (one object per row: its 1-based line number in the input, ...)

A sentence-transformers checkpoint (all-MiniLM-L6-v2, ...) gives the pooling, normalisation and
max_length unless the flags say otherwise.
"""
from __future__ import annotations

from absl import app, flags

from bert_jax import sentence_embedding
from bert_jax.cli import common

_CHECKPOINT = flags.DEFINE_string("checkpoint", None,
                                  "bert_jax directory, HF folder or TF1 checkpoint.")
_INPUT = flags.DEFINE_string("input", None, "UTF-8 text file, one text per line.")
_OUTPUT = flags.DEFINE_string("output", None, "Output prefix: writes PREFIX.npy and PREFIX.jsonl.")
_POOLING = flags.DEFINE_enum("pooling", None, list(sentence_embedding.POOLINGS),
                             "Default: the checkpoint's sentence-transformers pooling, else mean.")
_NORMALIZE = flags.DEFINE_enum("normalize", "auto", ["auto", "true", "false"],
                               "L2-normalise; auto: as the checkpoint's modules.json says.")
_MAX_LENGTH = flags.DEFINE_integer("max_length", None, "Truncation length in tokens (default: "
                                   "the checkpoint's max_seq_length, else the model's limit).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Texts per forward pass.")
_DTYPE = flags.DEFINE_string("dtype", None,
                             "Compute dtype: bfloat16, float32 or auto (bf16 where this device "
                             "computes it natively, else f32); default: the checkpoint's.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace existing output files.")
_QUANTIZE = common.define_quantize()
flags.declare_key_flag(common.VERBOSE)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments {argv[1:]}; use --input=FILE --output=PREFIX.")
  for flag in (_CHECKPOINT, _INPUT, _OUTPUT):
    if not flag.value:
      raise app.UsageError(f"--{flag.name} is required.")
  common.quiet_logs()
  summary = sentence_embedding.embed_checkpoint_file(
      _CHECKPOINT.value, _INPUT.value, _OUTPUT.value, pooling=_POOLING.value,
      normalize={"auto": None, "true": True, "false": False}[_NORMALIZE.value],
      batch_size=_BATCH_SIZE.value, max_length=_MAX_LENGTH.value, dtype=_DTYPE.value,
      overwrite=_OVERWRITE.value, quantize=_QUANTIZE.value)
  print(f"wrote {summary['vectors']} x {summary['dim']} float32 to {summary['npy']} and the index "
        f"of {summary['rows']} lines to {summary['index']}")
  if summary["truncated"]:
    print(f"{summary['truncated']} lines were longer than {summary['max_length']} tokens and were "
          "truncated (marked in the index).")


def run():
  common.run(main)


if __name__ == "__main__":
  run()
