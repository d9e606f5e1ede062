"""Why a fine-tuned classifier (or NER tagger) predicted what it did.

    python -m bert_jax.explain --checkpoint=WORKDIR/best --input=FILE --output=DIR

Per input text:
- Token attributions for the predicted label by integrated gradients (Sundararajan et al. 2017)
  on the input word embeddings. The path runs from a baseline to the input's embeddings with the
  position and token-type embeddings unchanged; the baseline replaces every token but [CLS] and
  [SEP] by the [PAD] embedding (`baseline="pad"`) or by zeros (`baseline="zero"`). The path
  integral is Gauss-Legendre quadrature with `steps` nodes (Captum's default method).
  Completeness is checked per example: the attributions must sum to logit(input) -
  logit(baseline) within `tolerance` (1%); when they do not, the steps double up to `max_steps`,
  and an example that still misses is reported (`completeness_ok: false`) with a warning.
- The attention probabilities of every layer and head (softmax outputs, [layers, heads, L, L]),
  and attention rollout (Abnar & Zuidema 2020): per layer the head-averaged attention plus the
  identity for the residual, rows renormalised, multiplied up from the first layer.

The target is a sequence classifier's predicted class logit; for a token classifier (NER) it is
the logit of the tag predicted at one token (default: the first token tagged other than O).
`explain_file` writes one self-contained HTML page and one PNG bar chart per input
(`explain_html.py`) plus `explanations.jsonl`; `explain_texts` returns `Explanation`s.
Dimension letters as in modeling.py; S path points, Y layers.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bert_jax import inference, tasks
from bert_jax.errors import DataError, ExistsError, ModelFileError

BASELINES = ("pad", "zero")
EXPLAINABLE = ("classification", "ner")
CHUNK = 16  # Path points per forward-and-backward pass.
_log = logging.getLogger(__name__)


class ExplainError(ModelFileError):
  """A checkpoint or input that cannot be explained, with what to do."""


@dataclasses.dataclass
class Explanation:
  """One input's attributions and attention, all over its L real tokens."""
  text: str
  tokens: list[str]
  label: str  # the explained label (the prediction)
  label_index: int
  probabilities: dict[str, float]  # at the explained position
  position: int | None  # NER: the token whose tag is explained; None for a sequence label
  attributions_L: np.ndarray
  logit: float  # target logit at the input
  baseline_logit: float  # target logit at the baseline
  completeness_error: float  # |sum(attributions) - (logit - baseline_logit)| / |difference|
  completeness_ok: bool
  steps: int  # quadrature nodes used
  baseline: str
  attentions_YxNxLxL: np.ndarray
  rollout_YxLxL: np.ndarray  # after each layer; the last is the model's rollout

  def record(self) -> dict:
    """What explanations.jsonl holds (attention maps stay in the HTML page)."""
    return {"text": self.text, "tokens": self.tokens, "label": self.label,
            "probabilities": self.probabilities, "position": self.position,
            "attributions": [round(float(a), 6) for a in self.attributions_L],
            "logit": self.logit, "baseline_logit": self.baseline_logit,
            "attribution_sum": float(self.attributions_L.sum()),
            "completeness_error": self.completeness_error,
            "completeness_ok": self.completeness_ok, "steps": self.steps,
            "baseline": self.baseline}


# ----------------------------------------------------------------------------- the model
def _embedding_slot(model: nnx.Module) -> tuple[nnx.Module, str]:
  """(module, attribute) of the word-embedding table: BERT's `word_embeddings`, ModernBERT's
  `tok_embeddings`."""
  embeddings = inference.encoder_of(model).embeddings
  for name in ("word_embeddings", "tok_embeddings"):
    if hasattr(embeddings, name):
      return embeddings, name
  raise ExplainError(f"{type(model).__name__} has no word-embedding table to attribute to.")


class _Given:
  """Stands in for the embedding table: returns fixed word embeddings whatever the ids."""

  def __init__(self, x_SxLxD):
    self.x_SxLxD = x_SxLxD

  def __call__(self, ids_SxL):
    return self.x_SxLxD


def _logits_from_embeddings(graphdef, state, e_SxLxD, ids_SxL, mask_SxL, types_SxL):
  """The head's f32 logits ([S, C] or [S, L, C]) with word embeddings `e` fed in."""
  model = nnx.merge(graphdef, state)
  owner, name = _embedding_slot(model)
  setattr(owner, name, _Given(e_SxLxD))
  return model(ids_SxL, mask_SxL, types_SxL).astype(jnp.float32)


def _path(x_LxD, base_LxD, alphas_S):
  return base_LxD[None] + alphas_S[:, None, None] * (x_LxD - base_LxD)[None]


def _tile(a_L, s: int):
  return jnp.broadcast_to(a_L[None], (s, a_L.shape[0]))


@functools.partial(jax.jit, static_argnames=("graphdef",))
def path_logits(graphdef, state, ids_L, mask_L, types_L, x_LxD, base_LxD, alphas_S):
  """Logits at points `alphas` on the straight path base -> x: [S, C] or [S, L, C]."""
  s = alphas_S.shape[0]
  return _logits_from_embeddings(graphdef, state, _path(x_LxD, base_LxD, alphas_S),
                                 _tile(ids_L, s), _tile(mask_L, s), _tile(types_L, s))


@functools.partial(jax.jit, static_argnames=("graphdef",))
def path_gradients(graphdef, state, ids_L, mask_L, types_L, x_LxD, base_LxD, alphas_S,
                   label, position):
  """d target / d embeddings at points `alphas` on the path: [S, L, D]. `position` < 0 targets
  a sequence logit [S, C], else the token logit [S, position, label]."""
  s = alphas_S.shape[0]

  def total(e_SxLxD):
    logits = _logits_from_embeddings(graphdef, state, e_SxLxD, _tile(ids_L, s),
                                     _tile(mask_L, s), _tile(types_L, s))
    if logits.ndim == 3:
      logits = logits[:, jnp.maximum(position, 0)]
    return logits[:, label].sum()

  return jax.grad(total)(_path(x_LxD, base_LxD, alphas_S))


@functools.partial(jax.jit, static_argnames=("graphdef",))
def attention_probs(graphdef, state, ids_BxL, mask_BxL, types_BxL):
  """Every layer's attention probabilities, stacked: [B, Y, N, L, M] f32."""
  encoder = inference.encoder_of(nnx.merge(graphdef, state))
  out = encoder(ids_BxL, mask_BxL, types_BxL, output_attentions=True)
  return jnp.stack(out.attentions, axis=1).astype(jnp.float32)


def gauss_legendre(steps: int) -> tuple[np.ndarray, np.ndarray]:
  """Nodes in (0, 1) and weights summing to 1 for integrating over [0, 1]."""
  t, w = np.polynomial.legendre.leggauss(steps)
  return ((t + 1) / 2).astype(np.float32), (w / 2).astype(np.float64)


def integrated_gradients(graphdef, state, inputs: dict, x_LxD, base_LxD, label: int,
                         position: int, steps: int) -> np.ndarray:
  """Per-token attributions [L]: (x - base) . integral of the gradient along the path."""
  alphas, weights = gauss_legendre(steps)
  pad = -len(alphas) % CHUNK
  alphas = np.concatenate([alphas, np.zeros(pad, np.float32)])
  weights = np.concatenate([weights, np.zeros(pad)])
  avg_LxD = np.zeros(x_LxD.shape, np.float64)
  for i in range(0, len(alphas), CHUNK):
    g_SxLxD = path_gradients(graphdef, state, *inputs, x_LxD, base_LxD,
                             jnp.asarray(alphas[i:i + CHUNK]), label, position)
    avg_LxD += np.tensordot(weights[i:i + CHUNK], np.asarray(g_SxLxD, np.float64), axes=1)
  diff_LxD = np.asarray(x_LxD, np.float64) - np.asarray(base_LxD, np.float64)
  return (diff_LxD * avg_LxD).sum(-1)


def attention_rollout(attentions_YxNxLxL: np.ndarray, residual: float = 0.5) -> np.ndarray:
  """Attention rollout after each layer, [Y, L, L]; row l says how much of token l's
  representation flows from each input token (rows sum to 1).

  Abnar & Zuidema (2020): A_y = residual * I + (1 - residual) * mean over heads, rows
  renormalised; rollout_y = A_y @ rollout_{y-1}, rollout_0 = A_0.
  """
  a_YxLxL = np.asarray(attentions_YxNxLxL, np.float64).mean(axis=1)
  a_YxLxL = residual * np.eye(a_YxLxL.shape[-1]) + (1.0 - residual) * a_YxLxL
  a_YxLxL /= a_YxLxL.sum(-1, keepdims=True)
  out, roll_LxL = [], np.eye(a_YxLxL.shape[-1])
  for a_LxL in a_YxLxL:
    roll_LxL = a_LxL @ roll_LxL
    out.append(roll_LxL)
  return np.stack(out)


# ----------------------------------------------------------------------------- explaining
def _softmax(z):
  p = np.exp(z - z.max())
  return p / p.sum()


def _relative_gap(total: float, delta: float) -> float:
  return abs(total - delta) / max(abs(delta), 1e-6)


def explain_one(model: nnx.Module, tokenizer, ids: list[int], types: list[int], *,
                label_names: list[str], text: str = "", position: int | None = None,
                baseline: str = "pad", steps: int = 32, max_steps: int = 256,
                tolerance: float = 0.01, graph=None) -> Explanation:
  """Integrated gradients and attention for one encoded input (`ids` with its specials).

  `position`: for a token classifier, the token whose predicted tag is explained (default: the
  first word tagged other than O or "O"-like, else the first word); ignored for sequences.
  """
  if baseline not in BASELINES:
    raise ExplainError(f"baseline={baseline!r} is not one of {', '.join(BASELINES)}.")
  graphdef, state = graph or nnx.split(model)
  n = len(ids)
  length = inference.bucket(n, max(n, model.config.max_position_embeddings),
                            inference.MIN_BUCKET)
  arrays = inference.pad_rows([ids], [types], length, 1, tokenizer.pad_id)
  ids_L, types_L, mask_L = (jnp.asarray(arrays[k][0]) for k in
                            ("input_ids", "token_type_ids", "attention_mask"))
  owner, name = _embedding_slot(model)
  x_LxD = getattr(owner, name)(ids_L)
  special_L = jnp.isin(ids_L, jnp.asarray([tokenizer.cls_id, tokenizer.sep_id])) | (mask_L == 0)
  fill_LxD = (getattr(owner, name)(jnp.full_like(ids_L, tokenizer.pad_id)) if baseline == "pad"
              else jnp.zeros_like(x_LxD))
  base_LxD = jnp.where(special_L[:, None], x_LxD, fill_LxD)
  inputs = (ids_L, mask_L, types_L)

  ends = np.asarray(path_logits(graphdef, state, *inputs, x_LxD, base_LxD,
                                jnp.asarray([1.0, 0.0], jnp.float32)))
  per_token = ends.ndim == 3
  if per_token:
    if position is None:
      tags = ends[0, 1:n - 1].argmax(-1)
      outside = {i for i, t in enumerate(label_names) if t.upper() == "O"}
      hits = [p + 1 for p, t in enumerate(tags) if int(t) not in outside]
      position = hits[0] if hits else min(1, n - 1)
    if not 0 <= position < n:
      raise DataError(f"position={position} is outside the input's {n} tokens.")
    at_input, at_base = ends[0, position], ends[1, position]
  else:
    position, at_input, at_base = None, ends[0], ends[1]
  label = int(at_input.argmax())
  delta = float(at_input[label] - at_base[label])

  used, attributions, gap = steps, None, np.inf
  while True:
    attributions = integrated_gradients(graphdef, state, inputs, x_LxD, base_LxD, label,
                                        -1 if position is None else position, used)[:n]
    gap = _relative_gap(float(attributions.sum()), delta)
    if gap <= tolerance or used * 2 > max_steps:
      break
    used *= 2
  if gap > tolerance:
    _log.warning("Integrated gradients for %r: attributions sum to %.4g but the logit moved by "
                 "%.4g (%.1f%% off) after %d steps; treat them with care.", text[:40],
                 attributions.sum(), delta, 100 * gap, used)
  attn = np.asarray(attention_probs(graphdef, state, ids_L[None], mask_L[None], types_L[None]))
  attn_YxNxLxL = attn[0, :, :, :n, :n]
  names = label_names or [str(i) for i in range(len(at_input))]
  # A regression head (one output) has a score, not probabilities.
  scores = at_input if len(at_input) == 1 else _softmax(at_input)
  return Explanation(
      text=text, tokens=tokenizer.convert_ids_to_tokens(ids), label=names[label],
      label_index=label,
      probabilities={k: round(float(p), 6) for k, p in zip(names, scores, strict=True)},
      position=position, attributions_L=attributions, logit=float(at_input[label]),
      baseline_logit=float(at_base[label]), completeness_error=gap,
      completeness_ok=bool(gap <= tolerance), steps=used, baseline=baseline,
      attentions_YxNxLxL=attn_YxNxLxL, rollout_YxLxL=attention_rollout(attn_YxNxLxL))


def encode_texts(tokenizer, texts: list[str], pairs: list[str] | None,
                 max_seq_length: int) -> list[tuple[list[int], list[int]]]:
  """(ids, token types) per text, with [CLS] / [SEP], truncated to max_seq_length."""
  enc = tokenizer(texts, pairs, max_length=max_seq_length, padding="longest", truncation=True)
  out = []
  for ids, types, mask in zip(enc["input_ids"], enc["token_type_ids"], enc["attention_mask"],
                              strict=True):
    n = int(mask.sum())
    out.append(([int(i) for i in ids[:n]], [int(t) for t in types[:n]]))
  return out


def explain_texts(model: nnx.Module, tokenizer, texts: list[str], *,
                  pairs: list[str] | None = None, label_names: list[str] | None = None,
                  max_seq_length: int = 128, **kwargs) -> list[Explanation]:
  """One `Explanation` per text (`kwargs`: explain_one's baseline, steps, ...)."""
  graph = nnx.split(model)
  rows = encode_texts(tokenizer, texts, pairs, max_seq_length)
  return [explain_one(model, tokenizer, ids, types, label_names=list(label_names or []),
                      text=text, graph=graph, **kwargs)
          for text, (ids, types) in zip(texts, rows, strict=True)]


# ----------------------------------------------------------------------------- files
def checkpoint_info(checkpoint) -> tuple[str, dict]:
  """(task, model_info) of a checkpoint explain can work on; anything else is an ExplainError."""
  from bert_jax import model_dir, predict
  path = pathlib.Path(checkpoint)
  if not model_dir.is_model_dir(path):
    raise ExplainError(f"--checkpoint={checkpoint} is not a bert_jax model directory; use a "
                       "fine-tuning WORKDIR/best.")
  info = json.loads((path / model_dir.INFO_FILE).read_text(encoding="utf-8"))
  arch = info.get("architecture", "BertModel")
  if tasks.ARCHITECTURE_TASKS.get(arch) not in EXPLAINABLE:
    raise ExplainError(f"{path} is a {arch} without a classification or token-classification "
                       "head, so there is no prediction to explain; fine-tune it first "
                       "(bert-jax-finetune, task=classification or ner).")
  task, info = predict.checkpoint_task(info, path)
  if task == "classification" and info.get("regression"):
    info["label_names"] = ["score"]
  return task, info


def read_inputs(task: str, info: dict, input_path, overrides: dict | None = None):
  """(texts, pairs or None, display texts, token rows) from a plain-text file (one text a
  line), a table the classifier reads (CSV / TSV / JSONL), or NER's CoNLL / text."""
  from bert_jax.tasks import classification, ner
  path = pathlib.Path(input_path)
  if not path.is_file():
    raise DataError(f"--input={input_path} does not exist.")
  overrides = overrides or {}
  if task == "ner":
    conll = (overrides.get("format") == "conll"
             or "conll" in path.name.lower() and overrides.get("format") != "text")
    sentences = ner.read_conll(path, need_tags=False) if conll else ner.read_text(path)
    return [" ".join(w) for w, _ in sentences], None
  if path.suffix.lower() == ".txt" and not overrides.get("format"):
    texts = [l.strip() for l in path.read_text(encoding="utf-8-sig").splitlines() if l.strip()]
    if not texts:
      raise DataError(f"{path} is empty; write one text a line.")
    return texts, None
  ex = classification.read_for_predict(path, info, overrides)
  return ex["text"], ex.get("pair")


def explain_file(checkpoint, input_path, output, *, overwrite: bool = False,
                 max_examples: int = 0, overrides: dict | None = None, **kwargs) -> list[dict]:
  """Explains every input row (or the first `max_examples`) with the model in `checkpoint`;
  writes OUTPUT/example_NNN.html and .png and OUTPUT/explanations.jsonl. Returns the records.

  Everything is checked before the model loads, and files are written only at the end, into a
  new directory: a refused checkpoint or input leaves nothing on disk.
  """
  from bert_jax import explain_html, loading, model_dir
  from bert_jax.tokenization import Tokenizer
  out = pathlib.Path(output)
  if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
    raise ExistsError(f"--output={out} already exists; choose another directory or pass "
                      "--overwrite.")
  task, info = checkpoint_info(checkpoint)
  texts, pairs = read_inputs(task, info, input_path, overrides)
  if max_examples:
    texts, pairs = texts[:max_examples], pairs[:max_examples] if pairs else None
  # f32 whatever the checkpoint trained in: bf16 rounding would blur the completeness check.
  model = loading.load_model(checkpoint, dtype="float32")
  tokenizer = Tokenizer.from_dir(checkpoint)
  explanations = explain_texts(model, tokenizer, texts, pairs=pairs,
                               label_names=list(info.get("label_names") or []),
                               max_seq_length=int(info.get("max_seq_length", 128)), **kwargs)

  records = []

  def write(tmp: pathlib.Path):
    for i, e in enumerate(explanations):
      stem = f"example_{i:03d}"
      explain_html.write_bar_chart(e, tmp / f"{stem}.png")
      (tmp / f"{stem}.html").write_text(explain_html.page(e, title=f"{stem}: {task}"),
                                        encoding="utf-8")
      records.append({"html": f"{stem}.html", "png": f"{stem}.png", **e.record()})
    with open(tmp / "explanations.jsonl", "w", encoding="utf-8") as f:
      for r in records:
        f.write(json.dumps(r, ensure_ascii=False) + "\n")

  model_dir.atomic_write_dir(out, write, overwrite=True)
  return records


if __name__ == "__main__":
  from bert_jax.cli import explain as _cli
  _cli.run()
