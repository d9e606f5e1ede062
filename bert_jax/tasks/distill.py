"""Knowledge distillation: a smaller classifier (the student) learns a fine-tuned one's outputs.

`configs/finetune.py:task=distill`; `init_from` is the teacher (a fine-tuned classification model
directory, WORKDIR/best of a classification run), the data section reads the teacher's training
texts as the classification task does (the same seeded dev split), `distill.unlabeled_file` adds
texts only the teacher labels. The student has `len(distill.layers)` layers (or
model.num_hidden_layers) and the teacher's width unless model.hidden_size /
num_attention_heads / intermediate_size say otherwise. Its layer i starts as teacher layer
layers[i] (embeddings, pooler and classifier copied too) when the shapes match; a narrower
student starts fresh; a wider one is refused.

The loss, per batch (Hinton et al. 2015; TinyBERT, Jiao et al. 2020; MiniLM, Wang et al. 2020):
  logit_weight * T^2 * KL(softmax(teacher / T) || softmax(student / T))
  + label_weight * cross-entropy(student, gold label)              (labelled rows)
  + hidden_weight * MSE(proj(student hidden i), teacher hidden layers[i])  (embeddings: 0 -> 0)
  + attention_weight * KL(teacher attention || student attention)   (mapped layers, per head)
`proj` is a learned D_student -> D_teacher Dense when the student is narrower (else identity).

Teacher and student run in ONE jitted train step: the train state holds both (and proj), the
teacher's parameters pass through `stop_gradient` and are listed in `Task.frozen`, so the
optimizer never changes them. WORKDIR/best is the student alone, a normal classification model
directory that `bert-jax-predict` reads.
"""
from __future__ import annotations

import dataclasses
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bert_jax import family as family_lib
from bert_jax import layers, train
from bert_jax.errors import ConfigError, DataError, TrainingError
from bert_jax.tasks import classification, common

predict = classification.predict  # A student is a classification model.
WIDTH_FIELDS = ("hidden_size", "num_attention_heads", "intermediate_size")
LAYER_KEY = re.compile(r"^bert\.encoder\.layer\.(\d+)\.(.*)$")


def _fold(key, i):
  return None if key is None else jax.random.fold_in(key, i)


# ----------------------------------------------------------------------------- student shape
def teacher_layers(spec: str, num_student: int, num_teacher: int) -> list[int]:
  """The teacher layer each student layer starts from / learns: `spec` ("0,2,5"), else evenly
  spaced ending at the last (TinyBERT's uniform mapping: 3 of 6 -> 1, 3, 5)."""
  if spec.strip():
    try:
      chosen = [int(p) for p in spec.split(",") if p.strip()]
    except ValueError:
      raise ConfigError(f"distill.layers={spec!r} is not a comma-separated list of teacher layer "
                        f"numbers such as '0,2,5'.") from None
    bad = [i for i in chosen if not 0 <= i < num_teacher]
    if bad or not chosen:
      raise ConfigError(f"distill.layers={spec!r} names layers outside the teacher's 0..."
                        f"{num_teacher - 1}; pick from those.")
    if num_student and num_student != len(chosen):
      raise ConfigError(f"model.num_hidden_layers={num_student} but distill.layers lists "
                        f"{len(chosen)} layers; set one of them to match (or num_hidden_layers=0).")
    return chosen
  if not 0 < num_student <= num_teacher:
    raise ConfigError(f"Set distill.layers (e.g. '0,2,5') or model.num_hidden_layers between 1 "
                      f"and the teacher's {num_teacher} layers (got {num_student}).")
  return [round((i + 1) * num_teacher / num_student) - 1 for i in range(num_student)]


def student_config(teacher_config, model_section, layer_map: list[int]):
  """The student's BertConfig: the teacher's, with the layer count and any width asked for."""
  changes = {"num_hidden_layers": len(layer_map)}
  for f in WIDTH_FIELDS:
    value = int(model_section.get(f, 0) or 0)
    if value:
      changes[f] = value
  return teacher_config.replace(**changes)


def widths(config) -> dict[str, int]:
  return {f: int(getattr(config, f)) for f in WIDTH_FIELDS}


def check_student(student, teacher, init_from_teacher: bool) -> bool:
  """True when the student's layers can start as the teacher's (same widths); refuses a student
  wider than the teacher layers it is initialised from."""
  s, t = widths(student), widths(teacher)
  if init_from_teacher:
    wider = [f"{f}={s[f]} > {t[f]}" for f in WIDTH_FIELDS if s[f] > t[f]]
    if wider:
      raise ConfigError(
          f"The student is wider than the teacher layers it is initialised from "
          f"({', '.join(wider)}); give it the teacher's width or less (model.hidden_size, "
          f"num_attention_heads, intermediate_size), or set distill.init_from_teacher=False.")
  if student.hidden_size % student.num_attention_heads:
    raise ConfigError(f"model.hidden_size={student.hidden_size} is not a multiple of "
                      f"num_attention_heads={student.num_attention_heads}.")
  return init_from_teacher and s == t


def student_init(teacher_flat: dict[str, np.ndarray], layer_map: list[int]) -> dict:
  """The student's parameters from the teacher's flat ones: embeddings, pooler and classifier as
  they are, student layer i <- teacher layer layer_map[i]."""
  from bert_jax import model_dir
  out = {name: value for name, value in teacher_flat.items() if not LAYER_KEY.match(name)}
  for s, t in enumerate(layer_map):
    prefix = f"bert.encoder.layer.{t}."
    for name, value in teacher_flat.items():
      if name.startswith(prefix):
        out[f"bert.encoder.layer.{s}.{name[len(prefix):]}"] = value
  return model_dir.unflatten(out)


# ----------------------------------------------------------------------------- the model
class DistillModel(nnx.Module):
  """What the train state holds: the student, the frozen teacher and the hidden-state projection
  (None unless hidden states are matched across widths)."""

  def __init__(self, student_config, teacher_config, num_labels: int, project: bool, *,
               rngs: nnx.Rngs):
    self.student = family_lib.head_model(student_config, "BertForSequenceClassification", rngs,
                                         num_labels)
    self.teacher = family_lib.head_model(teacher_config, "BertForSequenceClassification", rngs,
                                         num_labels)
    d_s, d_t = student_config.hidden_size, teacher_config.hidden_size
    self.proj = (layers.Dense((d_s,), (d_t,), ("embed",), ("hidden",),
                              init_std=student_config.initializer_range,
                              dtype=student_config.compute_dtype,
                              param_dtype=student_config.param_dtype, rngs=rngs)
                 if project else None)


def forward(model, batch, dropout_rng, *, hidden: bool, attention: bool):
  """A BertForSequenceClassification's logits [B, K] (as its __call__), and its encoder's hidden
  states and attention probabilities when asked."""
  out = model.bert(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                   dropout_rng=_fold(dropout_rng, 0), output_hidden_states=hidden,
                   output_attentions=attention)
  pooled = layers.dropout(out.pooler_output, model.config.hidden_dropout_prob,
                          _fold(dropout_rng, 1))
  return model.classifier(pooled).astype(jnp.float32), out.hidden_states, out.attentions


def soft_kl(teacher_BxK, student_BxK, temperature: float) -> jax.Array:
  """T^2 * KL(softmax(t / T) || softmax(s / T)) per row [B] (Hinton et al.'s scaling keeps the
  gradient size independent of T)."""
  t_logp = jax.nn.log_softmax(teacher_BxK / temperature, -1)
  s_logp = jax.nn.log_softmax(student_BxK / temperature, -1)
  return temperature ** 2 * jnp.sum(jnp.exp(t_logp) * (t_logp - s_logp), -1)


def hidden_loss(student_hidden, teacher_hidden, layer_map, mask_BxL, proj=None) -> jax.Array:
  """Mean squared error between (projected) student hidden states and the teacher's mapped ones,
  over real tokens and the model width; student 0 (embeddings) matches teacher 0, student layer
  i (hidden i + 1) matches teacher layer layer_map[i] (hidden layer_map[i] + 1)."""
  pairs = [(0, 0)] + [(i + 1, t + 1) for i, t in enumerate(layer_map)]
  m_BxLx1 = mask_BxL[..., None].astype(jnp.float32)
  total = jnp.float32(0.0)
  for s, t in pairs:
    h_s = student_hidden[s] if proj is None else proj(student_hidden[s])
    err = jnp.square(h_s.astype(jnp.float32) - teacher_hidden[t].astype(jnp.float32))
    total += jnp.sum(err * m_BxLx1) / (jnp.sum(m_BxLx1) * err.shape[-1])
  return total / len(pairs)


def attention_loss(student_probs, teacher_probs, layer_map, mask_BxL) -> jax.Array:
  """KL(teacher || student) of each mapped layer's attention distributions [B, N, L, M], averaged
  over heads and real query tokens (MiniLM's attention transfer, on every mapped layer)."""
  q_Bx1xL = mask_BxL[:, None, :].astype(jnp.float32)
  total = jnp.float32(0.0)
  for i, t in enumerate(layer_map):
    p_t, p_s = teacher_probs[t].astype(jnp.float32), student_probs[i].astype(jnp.float32)
    kl_BxNxL = jnp.sum(p_t * (jnp.log(p_t + 1e-12) - jnp.log(p_s + 1e-12)), -1)
    total += jnp.sum(kl_BxNxL * q_Bx1xL) / (jnp.sum(q_Bx1xL) * kl_BxNxL.shape[1])
  return total / len(layer_map)


@dataclasses.dataclass(frozen=True)
class LossWeights:
  temperature: float = 2.0
  logit: float = 1.0
  label: float = 0.0
  hidden: float = 0.0
  attention: float = 0.0


def make_loss(weights: LossWeights, layer_map: list[int]):
  """loss_fn(model: DistillModel, batch, dropout_rng) -> (loss, metrics) for train.Task."""
  want_h, want_a = weights.hidden > 0, weights.attention > 0

  def loss_fn(model, batch, dropout_rng):
    graphdef, state = nnx.split(model.teacher)  # Frozen: no gradient reaches the teacher.
    teacher = nnx.merge(graphdef, jax.lax.stop_gradient(state))
    t_logits, t_hidden, t_probs = forward(teacher, batch, None, hidden=want_h, attention=want_a)
    s_logits, s_hidden, s_probs = forward(model.student, batch, dropout_rng, hidden=want_h,
                                          attention=want_a)
    n = jnp.float32(s_logits.shape[0])
    kd = jnp.mean(soft_kl(t_logits, s_logits, weights.temperature))
    loss = weights.logit * kd
    agree = jnp.sum(jnp.argmax(s_logits, -1) == jnp.argmax(t_logits, -1)).astype(jnp.float32)
    metrics = {"kd_loss": (kd * n, n), "teacher_agreement": (agree, n)}
    labels_B = batch["labels"].astype(jnp.int32)
    known_B = (labels_B >= 0).astype(jnp.float32)  # Unlabelled rows carry -1.
    n_known = jnp.sum(known_B)
    correct = jnp.sum((jnp.argmax(s_logits, -1) == labels_B) * known_B)
    metrics["accuracy"] = (correct, n_known)
    if weights.label > 0:
      logp = jax.nn.log_softmax(s_logits, -1)
      nll_B = -jnp.take_along_axis(logp, jnp.maximum(labels_B, 0)[:, None], -1)[:, 0]
      ce = jnp.sum(nll_B * known_B) / jnp.maximum(n_known, 1.0)
      loss += weights.label * ce
      metrics["label_loss"] = (ce * n, n)
    if want_h:
      h = hidden_loss(s_hidden, t_hidden, layer_map, batch["attention_mask"], model.proj)
      loss += weights.hidden * h
      metrics["hidden_loss"] = (h * n, n)
    if want_a:
      a = attention_loss(s_probs, t_probs, layer_map, batch["attention_mask"])
      loss += weights.attention * a
      metrics["attention_loss"] = (a * n, n)
    return loss, metrics

  return loss_fn


# ----------------------------------------------------------------------------- data
class DistillData(classification.ClassificationTask):
  """The teacher's classification data (same columns, labels and seeded dev split), plus
  `distill.unlabeled_file` rows with label -1 in the training arrays."""

  def __init__(self, config, tokenizer, label_names: list[str] | None = None):
    super().__init__(config, tokenizer, label_names)
    if self.regression:
      raise DataError("Distillation here is for classifiers; the data is a regression task.")
    path = config.distill.unlabeled_file
    if path:
      texts = read_unlabeled(path)
      extra = classification.encode(tokenizer, texts, None, self.max_seq_length)
      extra["labels"] = np.full(len(texts), -1, np.int32)
      self.train_arrays = {k: np.concatenate([v, extra[k].astype(v.dtype)])
                           for k, v in self.train_arrays.items()}
      self.stats["unlabeled_rows"] = len(texts)


def read_unlabeled(path) -> list[str]:
  p = pathlib.Path(path)
  if not p.is_file():
    raise DataError(f"distill.unlabeled_file={path} does not exist; give a UTF-8 text file with "
                    f"one text per line.")
  texts = [t.strip() for t in p.read_text(encoding="utf-8").splitlines() if t.strip()]
  if not texts:
    raise DataError(f"distill.unlabeled_file={path} has no non-empty lines.")
  return texts


# ----------------------------------------------------------------------------- the Task
def make_task(config, workdir: str):
  """(train.Task, resolved config, data) for a distillation run (tasks.TASKS["distill"].builder)."""
  from bert_jax import finetune
  from bert_jax import flops as flops_lib
  d = config.distill
  if not config.init_from:
    raise TrainingError("task=distill needs the teacher: set --config.init_from to a fine-tuned "
                        "classification model directory (a classification run's WORKDIR/best).")
  teacher_config, tokenizer, conv = finetune.load_source(config)
  if conv is None:
    raise TrainingError("task=distill learns from the teacher's trained weights; drop "
                        "from_scratch.")
  if family_lib.of_config(teacher_config) != "bert":
    raise TrainingError("task=distill distils BERT-family teachers; this init_from is a "
                        "ModernBERT.")
  arch = conv.info.get("architecture", "BertModel")
  if arch != "BertForSequenceClassification":
    raise TrainingError(f"init_from={config.init_from!r} is a {arch}, not a fine-tuned "
                        f"classifier; fine-tune one first (task=classification) and distil its "
                        f"WORKDIR/best.")
  label_names = list(conv.info.get("label_names") or [])
  for field in ("temperature",):
    if not d[field] > 0:
      raise ConfigError(f"distill.{field} must be positive, got {d[field]}.")
  weights = LossWeights(d.temperature, d.logit_weight, d.label_weight, d.hidden_weight,
                        d.attention_weight)
  if min(weights.logit, weights.label, weights.hidden, weights.attention) < 0 or not (
      weights.logit or weights.label or weights.hidden or weights.attention):
    raise ConfigError("distill.*_weight must be >= 0 with at least one positive.")
  layer_map = teacher_layers(d.layers, int(config.model.num_hidden_layers),
                             teacher_config.num_hidden_layers)
  s_config = student_config(teacher_config, config.model, layer_map)
  copy = check_student(s_config, teacher_config, d.init_from_teacher)
  if weights.attention and s_config.num_attention_heads != teacher_config.num_attention_heads:
    raise ConfigError(f"distill.attention_weight compares heads one to one, but the student has "
                      f"{s_config.num_attention_heads} and the teacher "
                      f"{teacher_config.num_attention_heads}; set model.num_attention_heads="
                      f"{teacher_config.num_attention_heads} or attention_weight=0.")
  try:
    data = DistillData(config, tokenizer, label_names or None)
  except DataError as e:
    raise TrainingError(str(e)) from None
  if data.num_labels != int(conv.info.get("num_labels") or len(label_names) or data.num_labels):
    raise TrainingError(f"The teacher has {conv.info.get('num_labels')} labels but this data "
                        f"{data.num_labels}; distil on the teacher's data.")
  n_train = len(data.train_arrays["input_ids"])
  config = finetune.resolve_schedule(config, n_train)
  seq_len = int(data.train_arrays["input_ids"].shape[1])
  project = bool(weights.hidden) and s_config.hidden_size != teacher_config.hidden_size
  from bert_jax import model_dir
  teacher_params = model_dir.unflatten(conv.params)
  init = {"teacher": teacher_params}
  if copy:
    init["student"] = student_init(conv.params, layer_map)
  tc = config.train
  keep = finetune.best_keeper(data, config, workdir, tokenizer, extra_info={
      "distilled_from": str(config.init_from), "teacher_layers": layer_map,
      "init_from_teacher": copy})
  teacher_scores: dict[str, float] = {}

  def evaluate(model, mesh, step):
    if not teacher_scores:  # The teacher's dev metrics, once, for comparison.
      results, _ = data.evaluate(model.teacher, mesh, tc.eval_batch_size)
      teacher_scores.update({f"teacher_{k}": v for k, v in results.items()
                             if k in data.metric_names})
    return {**keep(model.student, mesh, step), **teacher_scores}

  def train_iter():
    return common.EpochIterator(data.train_arrays, tc.batch_size, tc.seed,
                                jax.process_index(), jax.process_count())

  identity = {"student_config": s_config.shape_identity(),
              "teacher_config": teacher_config.shape_identity(),
              "vocab_fingerprint": tokenizer.fingerprint, "teacher_layers": layer_map,
              "labels": list(data.label_names), "projection": project}
  flops = (flops_lib.train_flops_per_step(s_config, 1, seq_len, 0)
           + flops_lib.train_flops_per_step(teacher_config, 1, seq_len, 0) / 3)  # + forward
  task = train.Task(
      name="finetune-distill",
      model_factory=lambda rngs: DistillModel(s_config, teacher_config, data.num_labels, project,
                                              rngs=rngs),
      loss_fn=make_loss(weights, layer_map),
      train_iter=train_iter,
      init_params=lambda: init,
      identity=identity,
      tokens_per_example=seq_len,
      flops_per_example=flops,
      evaluate=evaluate,
      frozen=("teacher",),
  )
  return task, config, data
