"""Train a vocabulary from text: WordPiece (vocab.txt, via `tokenizers`) or SentencePiece.

  bert-jax-vocab --input='corpus/*.txt' --output=/tmp/vocab.txt --kind=wordpiece \
      --vocab_size=30522
  bert-jax-vocab --input=bible --output=/tmp/spm.model --kind=unigram --vocab_size=8000

WordPiece on Chinese text gives a bert-base-chinese-style vocabulary: every CJK character of the
corpus a token of its own, `##` pieces for the Latin words and numbers in it.
SentencePiece models get <pad>=0, <unk>=1 and control pieces [CLS]=2, [SEP]=3, [MASK]=4, which
`tokenization.Tokenizer` picks up by name. Lower-casing defaults to on for WordPiece (the tokenizer
guesses it back from the vocabulary) and off for SentencePiece (the tokenizer's default there); a
lower-cased SentencePiece model needs `do_lower_case=True` (`--do_lower_case=true`) when used.
`train_vocab` is the library function behind `bert-jax-vocab` (bert_jax/cli/vocab.py).
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence

from bert_jax.data import DataError, reading

KINDS = ("wordpiece", "unigram", "bpe")
WORDPIECE_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _lines(files: Sequence[str], max_lines: int) -> Iterator[str]:
  n = 0
  for path in files:
    unit = reading.Unit(0, path, 0, -1, 0)
    counts = {"bytes": 0, "skipped_lines": 0}
    for _, text in reading._decoded(unit, counts):  # noqa: SLF001 - same line reader as prepare
      if text:
        yield text
        n += 1
        if max_lines and n >= max_lines:
          return


def train_vocab(inputs, output: str, *, kind: str = "wordpiece", vocab_size: int = 30522,
                lowercase: bool | None = None, max_lines: int = 0, overwrite: bool = False) -> str:
  """Trains a vocabulary on the lines of `inputs`; returns the written path (`output`)."""
  if lowercase is None:
    lowercase = kind == "wordpiece"
  if kind not in KINDS:
    raise DataError(f"kind={kind!r}; use one of {', '.join(KINDS)}.")
  if kind != "wordpiece" and not output.endswith(".model"):
    raise DataError(f"A SentencePiece output must end in .model, got {output}.")
  if os.path.exists(output) and not overwrite:
    raise DataError(f"{output} exists; pass --overwrite to replace it.")
  files = [f for f in reading.expand_inputs(inputs) if reading.check_file(f) is None]
  if not files:
    raise DataError("No usable UTF-8 text among the inputs.")
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  if kind == "wordpiece":
    from tokenizers import BertWordPieceTokenizer
    tok = BertWordPieceTokenizer(lowercase=lowercase, clean_text=True, handle_chinese_chars=True)
    # As bert-base-chinese: every CJK character of the corpus is a token (the tokenizer splits
    # them one by one, so they are words of their own), whatever limit_alphabet keeps of the rest.
    cjk = sorted({c for line in _lines(files, max_lines) for c in line if reading.is_cjk(c)})
    if len(cjk) + len(WORDPIECE_SPECIALS) >= vocab_size:
      raise DataError(f"The corpus holds {len(cjk)} distinct CJK characters, more than "
                      f"vocab_size={vocab_size} leaves room for; raise --vocab_size.")
    tok.train_from_iterator(_lines(files, max_lines), vocab_size=vocab_size, min_frequency=2,
                            special_tokens=WORDPIECE_SPECIALS, limit_alphabet=1000 + len(cjk),
                            initial_alphabet=cjk, wordpieces_prefix="##", show_progress=False)
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    tmp = output + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      f.writelines(t + "\n" for t, _ in vocab)
    os.replace(tmp, output)
    return output
  import sentencepiece as spm
  lines = _lines(files, max_lines)
  if lowercase:
    lines = (line.lower() for line in lines)
  with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(output))) as tmpdir:
    prefix = os.path.join(tmpdir, "spm")
    try:
      spm.SentencePieceTrainer.train(
          sentence_iterator=lines, model_prefix=prefix, vocab_size=vocab_size,
          model_type=kind, pad_id=0, unk_id=1, bos_id=-1, eos_id=-1,
          control_symbols=["[CLS]", "[SEP]", "[MASK]"], character_coverage=0.9995,
          input_sentence_size=2_000_000, shuffle_input_sentence=True, minloglevel=2)
    except RuntimeError as e:
      raise DataError(f"SentencePiece training failed: {e}") from None
    os.replace(prefix + ".model", output)
    os.replace(prefix + ".vocab", output[:-len(".model")] + ".vocab")
  return output
