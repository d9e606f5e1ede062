r"""Explain a fine-tuned classifier's (or NER tagger's) predictions (`explain.explain_file`).

  bert-jax-explain --checkpoint=WORKDIR/best --input=FILE --output=DIR

Per input row: integrated-gradients token attributions for the predicted label (completeness
checked to 1%), attention maps of every layer and head and attention rollout, written as
DIR/example_NNN.html (self-contained) and DIR/example_NNN.png (attribution bar chart), plus
DIR/explanations.jsonl. FILE: a .txt file (one text a line), the table the classifier reads
(CSV / TSV / JSONL), or for NER CoNLL or plain text. Method and baseline: bert_jax/explain.py.
"""
from __future__ import annotations

from absl import app, flags

from bert_jax import explain
from bert_jax.cli import common

_CHECKPOINT = flags.DEFINE_string("checkpoint", None,
                                  "A fine-tuned classification or NER model directory.")
_INPUT = flags.DEFINE_string("input", None, "Texts to explain (.txt, CSV/TSV/JSONL, CoNLL).")
_OUTPUT = flags.DEFINE_string("output", None, "A new directory for the HTML pages and PNGs.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing --output directory.")
_MAX_EXAMPLES = flags.DEFINE_integer("max_examples", 20, "Explain at most this many rows "
                                     "(0: all).")
_BASELINE = flags.DEFINE_enum("baseline", "pad", list(explain.BASELINES),
                              "Integrated-gradients baseline for every token but [CLS]/[SEP]: "
                              "the [PAD] embedding or zeros.")
_STEPS = flags.DEFINE_integer("steps", 32, "Gauss-Legendre steps along the path (doubled up to "
                              "--max_steps while completeness is off by more than 1%).")
_MAX_STEPS = flags.DEFINE_integer("max_steps", 256, "The most steps to try.")
_OVERRIDES = common.define_table_overrides()
for _flag in _OVERRIDES:  # defined in common, listed by this tool's --help
  flags.declare_key_flag(_flag.name)
flags.mark_flags_as_required(["checkpoint", "input", "output"])
flags.declare_key_flag(common.VERBOSE)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  common.quiet_logs()
  if _STEPS.value < 1 or _MAX_STEPS.value < _STEPS.value:
    raise explain.ExplainError(f"--steps={_STEPS.value} must be at least 1 and at most "
                               f"--max_steps={_MAX_STEPS.value}.")
  records = explain.explain_file(
      _CHECKPOINT.value, _INPUT.value, _OUTPUT.value, overwrite=_OVERWRITE.value,
      max_examples=_MAX_EXAMPLES.value, overrides={f.name: f.value for f in _OVERRIDES},
      baseline=_BASELINE.value, steps=_STEPS.value, max_steps=_MAX_STEPS.value)
  off = [r for r in records if not r["completeness_ok"]]
  print(f"wrote {len(records)} explanations to {_OUTPUT.value} "
        f"({len(records) - len(off)} within 1% completeness"
        + (f"; {len(off)} not: see their pages" if off else "") + ")")


def run():
  common.run(main)


if __name__ == "__main__":
  run()
