r"""Prepare pretraining data (`data.prepare`): text files -> tokenized TFDS (ArrayRecord) documents.

  bert-jax-prepare --input='corpus/*.txt.gz' --output_dir=/data/wiki \
      --vocab=vocab.txt --num_workers=8
  # Chinese with whole-word masking (jieba words; pip install 'bert_jax[zh]'), then pretrain
  # with --config.data.whole_word_mask=True:
  bert-jax-prepare --input=zh.txt --layout=documents --output_dir=/data/zh \
      --vocab=vocab-zh.txt --whole_word_segmenter=jieba
  # The embedded Bible (one verse a line, no blank lines): 32 verses per document.
  bert-jax-prepare --input=bible --layout=lines --doc_lines=32 \
      --output_dir=/tmp/bible --vocab=bert_jax/resources/bert-base-uncased-vocab.txt

  # The same dataset through Apache Beam (pip install 'bert_jax[beam]'); Dataflow, Flink, Spark:
  # see docs/data.md.
  bert-jax-prepare --input='corpus/*.txt' --output_dir=/data/wiki --vocab=vocab.txt \
      --engine=beam --beam_options="--runner=DirectRunner --direct_num_workers=2 \
      --direct_running_mode=multi_processing"
  # On Dataflow, with input and output on GCS (pip install 'apache-beam[gcp]'):
  bert-jax-prepare --input='gs://B/corpus/*.txt.gz' --output_dir=gs://B/data/wiki \
      --vocab=vocab.txt --engine=beam --beam_options="--runner=DataflowRunner --project=P \
      --region=R --temp_location=gs://B/tmp --setup_file=./setup.py"

Rerun the same command to finish an interrupted preparation. On several hosts, run it on each
with --host_index/--host_count and a shared --output_dir; host 0 writes the dataset at the end.
"""
from __future__ import annotations

import json
import sys

from absl import app, flags

from bert_jax.cli import common
from bert_jax.data import default_corpus_path, prepare
from bert_jax.data.preparation import ENGINES
from bert_jax.data.reading import LAYOUTS
from bert_jax.data.segmentation import SEGMENTERS

_INPUT = flags.DEFINE_list("input", None, "Text files, folders or globs (.txt, .gz); 'bible' is "
                           "the embedded World English Bible.")
_OUTPUT = flags.DEFINE_string("output_dir", None, "Dataset folder to create (a gs:// URL with "
                              "--engine=beam).")
_VOCAB = flags.DEFINE_string("vocab", None, "WordPiece vocab.txt or SentencePiece .model.")
_LAYOUT = flags.DEFINE_enum("layout", "sentences", LAYOUTS,
                            "sentences: a sentence a line, blank line between documents; lines: a "
                            "sentence a line, --doc_lines lines per document; documents: a "
                            "document a line.")
_DOC_LINES = flags.DEFINE_integer("doc_lines", None, "Lines per document for --layout=lines "
                                  "(default 32); a cap per document for 'sentences'.")
_VAL = flags.DEFINE_float("validation_fraction", 0.01, "Share of documents held out.")
_WORKERS = flags.DEFINE_integer("num_workers", 1, "Worker processes on this host.")
_HOST_INDEX = flags.DEFINE_integer("host_index", 0, "This host's index.")
_HOST_COUNT = flags.DEFINE_integer("host_count", 1, "Number of hosts sharing the work.")
_LOWER = flags.DEFINE_enum("do_lower_case", "auto", ["auto", "true", "false"],
                           "Lower-case text (auto: guessed from the vocabulary).")
_CHUNK = flags.DEFINE_float("chunk_mb", 32, "Split plain-text files into ranges of this size.")
_ENGINE = flags.DEFINE_enum("engine", "local", ENGINES, "local: --num_workers processes on this "
                            "host; beam: an Apache Beam pipeline (same dataset).")
_BEAM_OPTIONS = flags.DEFINE_string("beam_options", "", "Beam pipeline flags for --engine=beam, "
                                    "e.g. '--runner=DirectRunner --direct_num_workers=2'.")
_ON_BAD_FILE = flags.DEFINE_enum("on_bad_file", "skip", ["skip", "fail"], "A file that breaks "
                                 "while being read: skip it (listed in the statistics) or stop.")
_SEGMENTER = flags.DEFINE_enum("whole_word_segmenter", "", ("", *SEGMENTERS), "Segment each "
                               "sentence into words (jieba: Chinese; pip install 'bert_jax[zh]') "
                               "and store word starts for data.whole_word_mask=True.")
_MAX_UNK = flags.DEFINE_float("max_unk_rate", 0.5, "Refuse a vocabulary that turns more than this "
                              "share of a sample of the text into [UNK].")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing dataset.")

flags.declare_key_flag(common.VERBOSE)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments {argv[1:]}; pass inputs with --input.")
  for flag in (_INPUT, _OUTPUT, _VOCAB):
    if not flag.value:
      raise app.UsageError(f"--{flag.name} is required.")
  inputs = [default_corpus_path() if i == "bible" else i for i in _INPUT.value]
  lower = {"auto": None, "true": True, "false": False}[_LOWER.value]
  stats = prepare(inputs, _OUTPUT.value, _VOCAB.value, layout=_LAYOUT.value,
                  doc_lines=_DOC_LINES.value, validation_fraction=_VAL.value,
                  num_workers=_WORKERS.value, host_index=_HOST_INDEX.value,
                  host_count=_HOST_COUNT.value, overwrite=_OVERWRITE.value,
                  do_lower_case=lower, chunk_mb=_CHUNK.value, engine=_ENGINE.value,
                  beam_options=_BEAM_OPTIONS.value, on_bad_file=_ON_BAD_FILE.value,
                  whole_word_segmenter=_SEGMENTER.value, max_unk_rate=_MAX_UNK.value)
  for s in stats["skipped_file_list"]:
    print(f"skipped {s['path']}: {s['reason']}", file=sys.stderr)
  print(json.dumps({k: v for k, v in stats.items() if k != "skipped_file_list"}, indent=1))


def run():
  common.run(main)


if __name__ == "__main__":
  run()
