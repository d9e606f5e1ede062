r"""Train a WordPiece or SentencePiece vocabulary from text (`vocab.train_vocab`).

  bert-jax-vocab --input='corpus/*.txt' --output=/tmp/vocab.txt --kind=wordpiece \
      --vocab_size=30522
  bert-jax-vocab --input=bible --output=/tmp/spm.model --kind=unigram --vocab_size=8000
"""
from __future__ import annotations

from absl import app, flags

from bert_jax.cli import common
from bert_jax.data import default_corpus_path
from bert_jax.vocab import KINDS, train_vocab

_INPUT = flags.DEFINE_list("input", None, "Text files or globs; 'bible' is the embedded corpus.")
_OUTPUT = flags.DEFINE_string("output", None, "vocab.txt (wordpiece) or NAME.model.")
_KIND = flags.DEFINE_enum("kind", "wordpiece", KINDS, "Vocabulary type.")
_SIZE = flags.DEFINE_integer("vocab_size", 30522, "Vocabulary size.")
_LOWER = flags.DEFINE_enum("lowercase", "auto", ["auto", "true", "false"],
                           "Lower-case the text (auto: yes for wordpiece, no for SentencePiece).")
_MAX_LINES = flags.DEFINE_integer("max_lines", 0, "Train on at most this many lines (0: all).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing output.")

flags.declare_key_flag(common.VERBOSE)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments {argv[1:]}.")
  if not _INPUT.value or not _OUTPUT.value:
    raise app.UsageError("--input and --output are required.")
  inputs = [default_corpus_path() if i == "bible" else i for i in _INPUT.value]
  print(train_vocab(inputs, _OUTPUT.value, kind=_KIND.value, vocab_size=_SIZE.value,
                    lowercase={"auto": None, "true": True, "false": False}[_LOWER.value],
                    max_lines=_MAX_LINES.value, overwrite=_OVERWRITE.value))


def run():
  common.run(main)


if __name__ == "__main__":
  run()
