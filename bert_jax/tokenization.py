"""Tokenizers: BERT WordPiece from a `vocab.txt`, SentencePiece from a `.model` file, and any
Hugging Face `tokenizer.json` (ModernBERT's byte-level BPE) through `tokenizers`.

WordPiece runs in Rust through `tokenizers` with the pipeline BERT uses (clean text, split CJK
characters, lower-case and strip accents for uncased vocabularies, split on punctuation, greedy
longest-match WordPiece), so ids equal `transformers.BertTokenizerFast`'s.

SentencePiece models rarely hold BERT's special pieces. Each of [CLS] / [SEP] / [MASK] / [PAD] is
taken, in order, from a piece of that name (`[CLS]`, ...), else from the model's own control
symbol (`<s>` for [CLS], `</s>` for [SEP], `<pad>` for [PAD]); whatever is still missing gets a
new id appended after the model's pieces, so `vocab_size` = pieces + appended specials. For the
botchan test model (pieces `<unk>`=0, `<s>`=1, `</s>`=2) that gives [CLS]=1, [SEP]=2, [PAD]=1000,
[MASK]=1001 and vocab_size 1002.

A `tokenizer.json` (kind "tokenizers") is run as the file defines it (normalizer, pre-tokenizer,
model, decoder), so ids equal `transformers.AutoTokenizer`'s on the same folder; the special
tokens are those its `tokenizer_config.json` names (`cls_token`, ...), else [CLS] / [SEP] / [PAD]
/ [UNK] / [MASK], else <s> / </s> / <pad> / <unk> / <mask>. A folder with a vocab.txt keeps
loading it as WordPiece (BERT's HF folders carry both).
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
from collections.abc import Sequence

import numpy as np

from bert_jax.errors import ConfigError, MissingFileError, ModelFileError

WORDPIECE_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
CONFIG_FILE = "tokenizer_config.json"
VOCAB_FILE = "vocab.txt"
SPM_FILE = "spiece.model"
TOKENIZER_JSON = "tokenizer.json"
SPECIAL_MAP_FILE = "special_tokens_map.json"
# A special token's names in tokenizer_config.json order of preference after the config's own.
_SPECIAL_CANDIDATES = {"pad": ("[PAD]", "<pad>"), "unk": ("[UNK]", "<unk>"),
                       "cls": ("[CLS]", "<s>"), "sep": ("[SEP]", "</s>"),
                       "mask": ("[MASK]", "<mask>")}


def _guess_lower_case(tokens: Sequence[str]) -> bool:
  """An uncased vocabulary has (almost) no upper-case letters outside its [SPECIAL] tokens."""
  plain = [t for t in tokens if not (t.startswith("[") and t.endswith("]"))]
  upper = sum(any(c.isupper() for c in t) for t in plain)
  return upper < 0.01 * max(1, len(plain))


def _truncate_pair(n_a: int, n_b: int, budget: int) -> tuple[int, int]:
  """Lengths kept by `tokenizers`' `longest_first` strategy (HF's truncation=True)."""
  if n_a + n_b <= budget:
    return n_a, n_b
  n1, n2 = min(n_a, n_b), max(n_a, n_b)
  n2 = n1 if n1 > budget else max(n1, budget - n1)
  if n1 + n2 > budget:
    n1, n2 = budget // 2, budget // 2 + budget % 2
  return (n2, n1) if n_a > n_b else (n1, n2)


class Tokenizer:
  """One tokenizer API over WordPiece (`kind="wordpiece"`) and SentencePiece (`"sentencepiece"`).

  Build it with `from_vocab(path)` or `from_dir(model_dir)`; `encode` / `encode_batch` return ids
  without special tokens (the data pipeline adds them), `__call__` returns padded model inputs.
  """

  def __init__(self, *, kind: str, vocab_path: pathlib.Path, do_lower_case: bool,
               strip_accents: bool | None = None, tokenize_chinese_chars: bool = True):
    self.kind = kind
    self.vocab_path = pathlib.Path(vocab_path)
    self.do_lower_case = bool(do_lower_case)
    self.strip_accents = strip_accents
    self.tokenize_chinese_chars = tokenize_chinese_chars
    digest = hashlib.sha256(self.vocab_path.read_bytes())
    digest.update(f"|kind={kind}|lower={self.do_lower_case}|accents={strip_accents}".encode())
    self.fingerprint = digest.hexdigest()[:16]
    if kind == "wordpiece":
      self._init_wordpiece()
    elif kind == "sentencepiece":
      self._init_sentencepiece()
    elif kind == "tokenizers":
      self._init_tokenizers()
    else:
      raise ConfigError(f"Unknown tokenizer kind {kind!r}; use 'wordpiece', 'sentencepiece' or "
                        "'tokenizers'.")
    self.special_ids = frozenset(
        {self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id})

  # ---------------------------------------------------------------- construction
  @classmethod
  def from_vocab(cls, path, do_lower_case: bool | None = None, *,
                 strip_accents: bool | None = None) -> "Tokenizer":
    """A WordPiece `vocab.txt`, a SentencePiece `.model` file or a HF `tokenizer.json`.

    `do_lower_case=None` guesses from a vocab.txt (uncased vocabularies have no upper case) and
    means False for SentencePiece.
    """
    path = pathlib.Path(path)
    if not path.is_file():
      raise MissingFileError(f"Vocabulary file {path} does not exist; pass a vocab.txt or a "
                             "SentencePiece .model file.")
    if path.suffix == ".model":
      return cls(kind="sentencepiece", vocab_path=path, do_lower_case=bool(do_lower_case))
    if path.suffix == ".json":
      return cls(kind="tokenizers", vocab_path=path, do_lower_case=False)
    if do_lower_case is None:
      tokens = path.read_text(encoding="utf-8").splitlines()
      do_lower_case = _guess_lower_case(tokens)
    return cls(kind="wordpiece", vocab_path=path, do_lower_case=do_lower_case,
               strip_accents=strip_accents)

  @classmethod
  def from_dir(cls, path) -> "Tokenizer":
    """A bert_jax model directory or a HF / Google folder holding the vocabulary."""
    path = pathlib.Path(path)
    cfg = {}
    if (path / CONFIG_FILE).is_file():
      cfg = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    lower = cfg.get("do_lower_case")
    model_file = cfg.get("model_file")
    if model_file and (path / model_file).is_file():
      return cls.from_vocab(path / model_file, lower)
    if (path / VOCAB_FILE).is_file():
      return cls.from_vocab(path / VOCAB_FILE, lower, strip_accents=cfg.get("strip_accents"))
    models = sorted(path.glob("*.model")) if path.is_dir() else []
    if (path / SPM_FILE).is_file():
      models = [path / SPM_FILE]
    if models:
      return cls.from_vocab(models[0], lower)
    if (path / TOKENIZER_JSON).is_file():  # ModernBERT's BPE: no vocab.txt.
      return cls.from_vocab(path / TOKENIZER_JSON)
    raise MissingFileError(f"No vocab.txt, SentencePiece .model or tokenizer.json in {path}; copy "
                           "the model's vocabulary there or build the tokenizer with "
                           "Tokenizer.from_vocab.")

  def _init_wordpiece(self):
    import tokenizers
    from tokenizers import decoders, models, normalizers, pre_tokenizers

    tokens = self.vocab_path.read_text(encoding="utf-8").splitlines()
    vocab = {}
    for i, tok in enumerate(tokens):
      vocab.setdefault(tok, i)  # A duplicated line keeps its first id, as transformers does.
    missing = [t for t in WORDPIECE_SPECIALS if t not in vocab]
    if missing:
      raise ModelFileError(f"{self.vocab_path} lacks the special tokens {missing}; a BERT "
                           "vocab.txt needs [PAD], [UNK], [CLS], [SEP] and [MASK].")
    tok = tokenizers.Tokenizer(models.WordPiece(vocab, unk_token="[UNK]",
                                                max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=self.tokenize_chinese_chars,
        strip_accents=self.strip_accents, lowercase=self.do_lower_case)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    # As in transformers: special tokens written literally in the text map to their ids.
    tok.add_special_tokens(list(WORDPIECE_SPECIALS))
    self._tok = tok
    self._id_to_token = {i: t for t, i in vocab.items()}
    self.vocab_size = len(tokens)
    self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (
        vocab[t] for t in WORDPIECE_SPECIALS)

  def _init_sentencepiece(self):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(self.vocab_path))
    self._sp = sp
    n = sp.get_piece_size()
    pieces = {sp.id_to_piece(i): i for i in range(n)}
    self._added: dict[int, str] = {}

    def pick(names, own_id, new_name):
      for name in names:
        if name in pieces:
          return pieces[name]
      if own_id is not None and own_id >= 0:
        return own_id
      new = n + len(self._added)
      self._added[new] = new_name
      return new

    self.unk_id = sp.unk_id()
    self.cls_id = pick(("[CLS]",), sp.bos_id(), "[CLS]")
    self.sep_id = pick(("[SEP]",), sp.eos_id(), "[SEP]")
    self.pad_id = pick(("[PAD]", "<pad>"), sp.pad_id(), "[PAD]")
    self.mask_id = pick(("[MASK]", "<mask>"), None, "[MASK]")
    self.vocab_size = n + len(self._added)
    self._sp_size = n

  def _init_tokenizers(self):
    import tokenizers

    try:
      tok = tokenizers.Tokenizer.from_file(str(self.vocab_path))
    except Exception as e:  # noqa: BLE001 - tokenizers raises a bare Exception for bad files.
      raise ModelFileError(f"{self.vocab_path} is not a tokenizer.json the tokenizers library "
                           f"reads ({str(e).splitlines()[0][:120]}).") from None
    tok.no_padding()  # Padding and truncation are __call__'s, as for the other kinds.
    tok.no_truncation()
    cfg_path = self.vocab_path.parent / CONFIG_FILE
    self._hf_config = (json.loads(cfg_path.read_text(encoding="utf-8"))
                       if cfg_path.is_file() else {})
    ids = {}
    for name, candidates in _SPECIAL_CANDIDATES.items():
      named = self._hf_config.get(f"{name}_token")
      named = named.get("content") if isinstance(named, dict) else named
      found = [tok.token_to_id(t) for t in ((named,) if named else ()) + candidates]
      found = [i for i in found if i is not None]
      if not found:
        raise ModelFileError(f"{self.vocab_path} has no {name} token (tried "
                             f"{[named] if named else []}{list(candidates)}); a BERT-style model "
                             "needs [CLS], [SEP], [PAD], [UNK] and [MASK] or their <s> names.")
      ids[name] = found[0]
    self._tok = tok
    self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
    self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (
        ids[n] for n in ("pad", "unk", "cls", "sep", "mask"))

  # ---------------------------------------------------------------- text -> ids
  def _normalize_sp(self, text: str) -> str:
    return text.lower() if self.do_lower_case else text

  def tokenize(self, text: str) -> list[str]:
    if self.kind != "sentencepiece":
      return self._tok.encode(text, add_special_tokens=False).tokens
    return self._sp.encode(self._normalize_sp(text), out_type=str)

  def encode(self, text: str) -> list[int]:
    """Ids of `text` without special tokens."""
    if self.kind != "sentencepiece":
      return self._tok.encode(text, add_special_tokens=False).ids
    return self._sp.encode(self._normalize_sp(text))

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    """Ids of many texts without special tokens (parallel in Rust / C++)."""
    texts = list(texts)
    if self.kind != "sentencepiece":
      return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]
    return self._sp.encode([self._normalize_sp(t) for t in texts])

  def encode_batch_offsets(self, texts: Sequence[str]) -> list[tuple[list[int], list]]:
    """(ids, [(start, end) character offsets in the text]) per text, without special tokens."""
    if self.kind == "sentencepiece":
      raise ConfigError("Character offsets (whole-word segmentation) need a WordPiece or "
                        "tokenizer.json vocabulary, not a SentencePiece model.")
    return [(e.ids, e.offsets) for e in self._tok.encode_batch(list(texts),
                                                               add_special_tokens=False)]

  def convert_tokens_to_ids(self, tokens):
    if isinstance(tokens, str):
      return self._token_to_id(tokens)
    return [self._token_to_id(t) for t in tokens]

  def _token_to_id(self, token: str) -> int:
    if self.kind != "sentencepiece":
      i = self._tok.token_to_id(token)
      return self.unk_id if i is None else i
    for i, name in self._added.items():
      if name == token:
        return i
    return self._sp.piece_to_id(token)

  def convert_ids_to_tokens(self, ids):
    if isinstance(ids, (int, np.integer)):
      return self._id_to_token_one(int(ids))
    return [self._id_to_token_one(int(i)) for i in ids]

  def _id_to_token_one(self, i: int) -> str:
    if not 0 <= i < self.vocab_size:
      raise ValueError(f"Token id {i} is outside the vocabulary [0, {self.vocab_size}).")
    if self.kind == "wordpiece":
      return self._id_to_token[i]
    if self.kind == "tokenizers":
      return self._tok.id_to_token(i) or ""
    return self._added[i] if i in self._added else self._sp.id_to_piece(i)

  def decode(self, ids, skip_special_tokens: bool = True) -> str:
    ids = [int(i) for i in np.asarray(ids).reshape(-1)]
    if self.kind != "sentencepiece":
      return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)
    out, pieces = [], []
    for i in ids:
      if i in self.special_ids and skip_special_tokens:
        continue
      if i in self._added or (i in self.special_ids and i != self.unk_id):
        if pieces:
          out.append(self._sp.decode(pieces))
          pieces = []
        out.append(self.convert_ids_to_tokens(i))
      else:
        pieces.append(i)
    if pieces:
      out.append(self._sp.decode(pieces))
    return " ".join(out)

  def word_start_mask(self) -> np.ndarray:
    """bool [vocab_size]: the token begins a word (for whole-word masking).

    WordPiece: not a `##` continuation; SentencePiece: starts with '▁'; a tokenizer.json: starts
    with byte-level BPE's 'Ġ' or '▁'. Special tokens count as word starts (each is a word of its
    own).
    """
    mask = np.zeros(self.vocab_size, bool)
    for i in range(self.vocab_size):
      tok = self._id_to_token_one(i)
      if self.kind == "wordpiece":
        mask[i] = not tok.startswith("##")
      elif self.kind == "tokenizers":
        mask[i] = tok.startswith(("\u0120", "\u2581"))
      else:
        mask[i] = tok.startswith("▁")
    mask[list(self.special_ids)] = True
    return mask

  # ---------------------------------------------------------------- model inputs
  def __call__(self, texts, text_pairs=None, *, max_length: int = 512,
               padding: str | bool = "longest", truncation: bool = True,
               return_tensors: str = "np") -> dict:
    """`[CLS] a [SEP]` or `[CLS] a [SEP] b [SEP]` rows as int32 [B, L] arrays.

    Returns `input_ids`, `token_type_ids` (0 for a, 1 for b and its [SEP]) and `attention_mask`.
    `padding`: "longest" (in the batch), "max_length", or False (all rows must then be equally
    long). Truncation follows `longest_first`, as transformers does.
    """
    if isinstance(texts, str):
      texts = [texts]
      if isinstance(text_pairs, str):
        text_pairs = [text_pairs]
    texts = list(texts)
    if text_pairs is not None:
      text_pairs = list(text_pairs)
      if len(text_pairs) != len(texts):
        raise ValueError(f"Got {len(texts)} texts but {len(text_pairs)} text_pairs; pass one "
                         "pair per text.")
    if padding not in ("longest", "max_length", False, True):
      raise ValueError(f"padding={padding!r} is not one of 'longest', 'max_length', False.")
    if return_tensors not in ("np", "jax"):
      raise ValueError(f"return_tensors={return_tensors!r} is not 'np' or 'jax'.")
    ids_a = self.encode_batch(texts)
    ids_b = self.encode_batch(text_pairs) if text_pairs is not None else None
    rows, types = [], []
    for k, a in enumerate(ids_a):
      b = ids_b[k] if ids_b is not None else None
      if truncation:
        budget = max_length - (3 if b is not None else 2)
        if budget < 0:
          raise ValueError(f"max_length={max_length} cannot hold the special tokens.")
        n_a, n_b = _truncate_pair(len(a), len(b) if b is not None else 0, budget)
        a, b = a[:n_a], (b[:n_b] if b is not None else None)
      row = [self.cls_id, *a, self.sep_id]
      tt = [0] * len(row)
      if b is not None:
        row += [*b, self.sep_id]
        tt += [1] * (len(b) + 1)
      rows.append(row)
      types.append(tt)
    longest = max(len(r) for r in rows)
    if padding == "max_length":
      width = max(max_length, longest)
    elif padding in ("longest", True):
      width = longest
    else:
      if any(len(r) != longest for r in rows):
        raise ValueError("Rows differ in length and padding=False; use padding='longest'.")
      width = longest
    input_ids = np.full((len(rows), width), self.pad_id, np.int32)
    token_type_ids = np.zeros((len(rows), width), np.int32)
    attention_mask = np.zeros((len(rows), width), np.int32)
    for k, (row, tt) in enumerate(zip(rows, types, strict=True)):
      input_ids[k, :len(row)] = row
      token_type_ids[k, :len(row)] = tt
      attention_mask[k, :len(row)] = 1
    out = {"input_ids": input_ids, "token_type_ids": token_type_ids,
           "attention_mask": attention_mask}
    if return_tensors == "jax":
      import jax.numpy as jnp
      out = {k: jnp.asarray(v) for k, v in out.items()}
    return out

  # ---------------------------------------------------------------- saving
  def save(self, directory) -> None:
    """Writes the vocabulary and `tokenizer_config.json` (loadable by from_dir and, for WordPiece,
    by transformers' BertTokenizerFast)."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = {"kind": self.kind, "do_lower_case": self.do_lower_case}
    if self.kind == "wordpiece":
      shutil.copyfile(self.vocab_path, directory / VOCAB_FILE)
      cfg.update(tokenizer_class="BertTokenizer", strip_accents=self.strip_accents,
                 tokenize_chinese_chars=self.tokenize_chinese_chars, unk_token="[UNK]",
                 sep_token="[SEP]", pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]",
                 model_max_length=512)
      self._hf_tokenizer().save(str(directory / "tokenizer.json"))
    elif self.kind == "tokenizers":
      # The file as it came (transformers reads it as is), with the config it came with.
      if self.vocab_path.resolve() != (directory / TOKENIZER_JSON).resolve():
        shutil.copyfile(self.vocab_path, directory / TOKENIZER_JSON)
      special_map, dst_map = self.vocab_path.parent / SPECIAL_MAP_FILE, directory / SPECIAL_MAP_FILE
      if special_map.is_file() and special_map.resolve() != dst_map.resolve():
        shutil.copyfile(special_map, dst_map)
      names = {n: self.convert_ids_to_tokens(getattr(self, f"{n}_id"))
               for n in _SPECIAL_CANDIDATES}
      cfg = {"tokenizer_class": "PreTrainedTokenizerFast",
             **{f"{n}_token": t for n, t in names.items()}, **self._hf_config, "kind": self.kind}
    else:
      shutil.copyfile(self.vocab_path, directory / SPM_FILE)
      cfg.update(model_file=SPM_FILE,
                 special_ids={"pad": self.pad_id, "unk": self.unk_id, "cls": self.cls_id,
                              "sep": self.sep_id, "mask": self.mask_id})
    tmp = directory / (CONFIG_FILE + ".tmp")
    tmp.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, directory / CONFIG_FILE)

  def _hf_tokenizer(self):
    """A copy of the Rust tokenizer with BERT's [CLS]/[SEP] template, as tokenizer.json holds."""
    import tokenizers
    from tokenizers import processors

    tok = tokenizers.Tokenizer.from_str(self._tok.to_str())
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A:0 [SEP]:0", pair="[CLS] $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", self.cls_id), ("[SEP]", self.sep_id)])
    return tok

  def __repr__(self):
    return (f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size}, "
            f"do_lower_case={self.do_lower_case}, path={str(self.vocab_path)!r})")
