"""Fine-tune BERT on classification / regression (incl. GLUE), NER, SQuAD or retrieval (sentence
embeddings) with the one train loop.

`finetune_and_evaluate(config, workdir)` is the library function behind `bert-jax-finetune`
(bert_jax/cli/finetune.py) and the notebooks. It builds a `train.Task` from the task's data,
trains with `train.run` (checkpoints, resume, logging, sharding), keeps WORKDIR/best by the task
metric (a bert_jax model directory that `bert-jax-predict` reads) and writes that model's dev
predictions to WORKDIR/dev_predictions.jsonl.

`model.family` says which family the model is (bert or modern, i.e. ModernBERT): init_from must be
a checkpoint of that family, and a fresh model is built from that family's preset. The tasks
build the family's head class (ModernBertForSequenceClassification, ...), which takes the same
inputs, so data, loss and metrics are the same code for both.
"""
from __future__ import annotations

import json
import math
import os
import pathlib

import jax

from bert_jax import family as family_lib
from bert_jax import train

LOWER_IS_BETTER = ("mse",)
DEFAULT_VOCAB = pathlib.Path(__file__).parent / "resources" / "bert-base-uncased-vocab.txt"


# ----------------------------------------------------------------------------- model source
def load_source(config):
  """(bert_config, tokenizer, converted checkpoint or None) for init_from or a fresh model."""
  from bert_jax import convert as convert_lib
  from bert_jax.tokenization import Tokenizer
  m = config.model
  want = family_lib.check_config_family(m)
  compute = family_lib.compute_settings(m)  # Applied over init_from's config too.
  if config.init_from:
    if not os.path.exists(config.init_from):
      raise train.TrainingError(f"init_from={config.init_from!r} does not exist; point it at a "
                                f"bert_jax model directory, a HF folder or a TF1 checkpoint.")
    try:
      conv = convert_lib.read_any(config.init_from)
    except convert_lib.ConversionError as e:
      raise train.TrainingError(f"init_from={config.init_from!r}: {e}") from None
    have = family_lib.of_config(conv.config)
    if have != want:
      raise train.TrainingError(
          f"init_from={config.init_from!r} holds a {family_lib.DISPLAY[have]} checkpoint but "
          f"model.family={want}; set --config.model.family={have} to fine-tune it.")
    tokenizer = Tokenizer.from_vocab(config.data.vocab) if config.data.vocab else conv.tokenizer
    if tokenizer is None:
      raise train.TrainingError(f"init_from={config.init_from!r} has no vocabulary; pass "
                                f"--config.data.vocab=VOCAB.")
    if tokenizer.vocab_size > conv.config.vocab_size:
      raise train.TrainingError(f"The vocabulary has {tokenizer.vocab_size} tokens but the "
                                f"checkpoint's embeddings only {conv.config.vocab_size}.")
    bert_config = conv.config.replace(**compute)
    return bert_config, tokenizer, (None if config.from_scratch else conv)
  if config.from_scratch:
    raise train.TrainingError("from_scratch=True takes the architecture from init_from; set "
                              "--config.init_from too, or drop from_scratch.")
  tokenizer = Tokenizer.from_vocab(config.data.vocab or DEFAULT_VOCAB)
  return family_lib.model_config_from(m, tokenizer.vocab_size), tokenizer, None


def init_params_from(conv, architecture: str, task_data, new_head: bool) -> dict:
  """The parameter tree to overlay on a fresh model: the whole checkpoint when it already is
  this task's model with the same labels, else its encoder only (the head stays fresh)."""
  from bert_jax import model_dir
  src_arch = conv.info.get("architecture", "BertModel")
  flat = conv.params
  if src_arch == architecture and not new_head:
    src_labels = list(conv.info.get("label_names") or [])
    src_n = conv.info.get("num_labels")
    fits = (src_labels == list(task_data.label_names)) if src_labels else (
        src_n is None or int(src_n) == task_data.num_labels)
    if not fits:
      raise train.TrainingError(
          f"init_from is a {src_arch} for {src_labels or src_n} labels but this data has "
          f"{task_data.label_names or task_data.num_labels}; set --config.new_head=True to train "
          f"a new head on its encoder.")
    return model_dir.unflatten(flat)
  enc = family_lib.ENCODER_PREFIX[family_lib.of_config(conv.config)]  # bert | model
  if any(k.startswith(enc + ".") for k in flat):
    flat = {k[len(enc) + 1:]: v for k, v in flat.items() if k.startswith(enc + ".")}
  return {enc: model_dir.unflatten(flat)}


# ----------------------------------------------------------------------------- the Task
def resolve_schedule(config, num_train: int, per_epoch: int | None = None):
  """A copy of config with num_steps, warmup_steps and eval_every made concrete (`per_epoch`:
  the batches of an epoch, by default num_train // batch_size)."""
  config = config.copy_and_resolve_references()
  tc = config.train
  per_epoch = per_epoch or max(1, num_train // tc.batch_size)
  with config.unlocked():
    if tc.num_steps <= 0:
      tc.num_steps = max(1, int(math.ceil(tc.num_epochs * per_epoch)))
    if config.optimizer.warmup_steps < 0:
      config.optimizer.warmup_steps = int(config.optimizer.warmup_fraction * tc.num_steps)
    if tc.eval_every < 0:
      tc.eval_every = per_epoch
  return config


def _best_value(path: pathlib.Path):
  try:
    info = json.loads((path / "model_info.json").read_text())
    return float(info["metric_value"])
  except (OSError, ValueError, KeyError, TypeError):
    return None


def best_keeper(data, config, workdir: str, tokenizer, extra_info: dict | None = None):
  """evaluate(model, mesh, step) -> dev metrics; a model better than the best so far (by
  data.metric) becomes WORKDIR/best, with its dev predictions in WORKDIR/dev_predictions.jsonl."""
  from bert_jax import model_dir
  from bert_jax.tasks import common
  metric, tc = data.metric, config.train
  best_dir = pathlib.Path(workdir) / "best"
  best = {"value": _best_value(best_dir)}

  def evaluate(model, mesh, step):
    results, records = data.evaluate(model, mesh, tc.eval_batch_size)
    if metric not in results:
      raise train.TrainingError(f"train.metric={metric!r} is not among this task's metrics "
                                f"{sorted(results)}.")
    value = results[metric]
    lower = metric in LOWER_IS_BETTER
    old = best["value"]
    if value != value or (old is not None and (value >= old if lower else value <= old)):
      return results  # NaN or no better than the best so far.
    best["value"] = value
    if jax.process_index() == 0:
      extra = {**data.info(), "metric": metric, "metric_value": value, "step": int(step),
               "eval": results, "init_from": config.init_from, **(extra_info or {})}
      if hasattr(data, "save_best"):  # retrieval: a sentence-transformers folder
        data.save_best(model, tokenizer, best_dir, extra)
      else:
        model_dir.save_model_dir(best_dir, model, tokenizer, overwrite=True, extra_info=extra)
      common.write_jsonl(pathlib.Path(workdir) / "dev_predictions.jsonl", records)
    return results

  return evaluate


def make_task(config, workdir: str):
  """(train.Task, resolved config, task data) for `config`."""
  from bert_jax import flops as flops_lib
  from bert_jax import tasks
  from bert_jax.errors import DataError
  from bert_jax.tasks import common, packing
  packed = packing.enabled(config)
  builder = tasks.TASKS[config.task].builder  # A task that builds its own train.Task (distill).
  if builder:
    return tasks.task_builder(config.task)(config, workdir)
  bert_config, tokenizer, conv = load_source(config)
  try:
    data = tasks.task_class(config.task)(config, tokenizer)
  except DataError as e:
    raise train.TrainingError(str(e)) from None
  arch = family_lib.counterpart(tasks.TASKS[config.task].architecture,
                                family_lib.of_config(bert_config))
  known = tasks.TASKS[config.task].metrics
  if data.metric.split("_", 1)[-1] not in known and data.metric not in known \
      and not data.metric.startswith("f1_"):
    raise train.TrainingError(f"train.metric={data.metric!r} is not a {config.task} metric; "
                              f"use one of {', '.join(known)}.")
  n_train = len(next(iter(data.train_arrays.values())))
  tc = config.train

  def train_iter():
    if packed:
      return packing.PackedEpochIterator(
          data.train_arrays, tc.batch_size, tc.seed, jax.process_index(), jax.process_count(),
          multiple=jax.device_count() * config.optimizer.grad_accum_steps)
    return common.EpochIterator(data.train_arrays, tc.batch_size, tc.seed,
                                jax.process_index(), jax.process_count(),
                                buckets=getattr(data, "length_buckets", None),
                                lengths=getattr(data, "train_lengths", None))

  try:
    probe = train_iter() if packed else None
  except DataError as e:
    raise train.TrainingError(str(e)) from None
  config = resolve_schedule(config, n_train, probe and probe.steps_per_epoch)
  arrays = data.train_arrays
  seq_len = int(arrays["input_ids"].shape[1] if "input_ids" in arrays else data.max_seq_length)
  # The loop counts train.batch_size "examples" a step; a packed step feeds R rows of seq_len.
  slots = probe.rows_per_batch / tc.batch_size if probe else 1.0
  sequences = getattr(data, "sequences_per_example", 1)  # retrieval: query, positive, negatives
  if seq_len > bert_config.max_position_embeddings:
    raise train.TrainingError(f"data.max_seq_length={seq_len} exceeds the model's "
                              f"max_position_embeddings={bert_config.max_position_embeddings}.")
  if conv is None:
    init = None
  elif hasattr(data, "init_params"):  # seq2seq: a warm start of both encoder and decoder
    init = data.init_params(conv)
  else:
    init = init_params_from(conv, arch, data, config.new_head)
  evaluate = best_keeper(data, config, workdir, tokenizer)

  identity = {"bert_config": bert_config.shape_identity(),
              "vocab_fingerprint": tokenizer.fingerprint, "architecture": arch,
              "labels": list(data.label_names), "num_labels": data.num_labels}
  task = train.Task(
      name=f"finetune-{config.task}",
      model_factory=lambda rngs: data.make_model(bert_config, rngs),
      loss_fn=data.loss_fn,
      train_iter=train_iter,
      init_params=(lambda: init) if init is not None else None,
      identity=identity,
      tokens_per_example=seq_len * sequences * slots,
      seq_len=seq_len,
      flops_per_example=sequences * slots * flops_lib.train_flops_per_step(bert_config, 1,
                                                                            seq_len, 0),
      evaluate=evaluate,
  )
  return task, config, data


def finetune_and_evaluate(config, workdir: str) -> dict:
  """Fine-tunes per `config` in `workdir` (resuming if it holds a checkpoint).

  Returns train.run's summary plus `best` ({metric, value, path}) and `data_stats`.
  """
  task, config, data = make_task(config, workdir)
  summary = train.run(task, config, workdir)
  best_dir = pathlib.Path(workdir) / "best"
  summary["best"] = {"metric": data.metric, "value": _best_value(best_dir),
                     "path": str(best_dir)}
  summary["num_train_examples"] = int(len(next(iter(data.train_arrays.values()))))
  summary["config"] = config
  if jax.process_index() == 0:
    keys = ("status", "step", "train_seconds", "train", "eval", "best", "num_train_examples")
    tmp = pathlib.Path(workdir) / ".summary.json.tmp"
    tmp.write_text(json.dumps({k: summary[k] for k in keys}, indent=2, default=float))
    tmp.replace(pathlib.Path(workdir) / "summary.json")
  return summary
