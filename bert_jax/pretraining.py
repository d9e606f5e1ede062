"""Pretraining (MLM + NSP/SOP) as a `train.Task`, and `train_and_evaluate(config, workdir)`,
the library function behind `bert-jax-pretrain` (bert_jax/cli/pretrain.py), `make demo` and
the notebooks. `model.objective=rtd` trains ELECTRA's replaced-token detection instead
(electra.py) on the same data and loop, and exports the discriminator.

With `model.family=modern` the task trains a ModernBertForMaskedLM on the masked-LM loss alone
(`mlm_only_loss`: the same MLM terms and metrics, no NSP head; the batches' NSP labels are
ignored) through the same loop, data and export."""
from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bert_jax import family as family_lib
from bert_jax import flops as flops_lib
from bert_jax import train
from bert_jax.configuration import BertConfig, preset
from bert_jax.errors import ConfigError
from bert_jax.heads import BertForPreTraining
from bert_jax.modern_modeling import ModernBertForMaskedLM


def bert_config_from(model_cfg, vocab_size: int) -> BertConfig:
  """BertConfig from the config's `model` section (a preset plus non-zero overrides)."""
  overrides = {k: model_cfg[k] for k in ("num_hidden_layers", "hidden_size",
                                          "num_attention_heads", "intermediate_size")
               if model_cfg[k]}
  overrides["max_position_embeddings"] = model_cfg.max_position_embeddings
  overrides.update(family_lib.compute_settings(model_cfg))  # dropout, dtype ("auto" resolved)
  return preset(model_cfg.preset, vocab_size=vocab_size, **overrides)


def label_scores(logp_XxV: jax.Array, labels_X: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(log-probability of each label [X], 1.0 where the label is the most probable [X]) from
  log-probabilities over the last axis. The hit compares against the log-softmax's own maximum
  (computed anyway) instead of an argmax, which over a 30,522-way vocabulary is a variadic reduce
  (~4% of a MiniLM-sized step on CPU); exact ties count as hits."""
  label_X = jnp.take_along_axis(logp_XxV, labels_X[..., None], axis=-1)[..., 0]
  return label_X, (label_X >= jnp.max(logp_XxV, axis=-1)).astype(jnp.float32)


def mlm_terms(mlm_logits_BxPxV, batch: dict):
  """(summed NLL, weight, correct count) of the masked-LM predictions at the masked positions."""
  w_BxP = batch["masked_lm_weights"].astype(jnp.float32)
  logp_BxP, hit_BxP = label_scores(jax.nn.log_softmax(mlm_logits_BxPxV, axis=-1),
                                   batch["masked_lm_ids"])
  return -jnp.sum(logp_BxP * w_BxP), jnp.sum(w_BxP), jnp.sum(hit_BxP * w_BxP)


def mlm_only_loss(model: ModernBertForMaskedLM, batch: dict, dropout_rng):
  """Masked-LM cross-entropy alone (ModernBERT: no NSP), with pretraining_loss's MLM metrics."""
  mlm_logits = model(batch["input_ids"], batch["input_mask"], None, batch.get("position_ids"),
                     masked_positions=batch["masked_lm_positions"],
                     packed_segment_ids=batch.get("packed_segment_ids"), dropout_rng=dropout_rng)
  mlm_sum, mlm_w, mlm_correct = mlm_terms(mlm_logits, batch)
  loss = mlm_sum / jnp.maximum(mlm_w, 1.0)
  return loss, {"mlm_loss": (mlm_sum, mlm_w), "mlm_accuracy": (mlm_correct, mlm_w)}


def pretraining_loss(model: BertForPreTraining, batch: dict, dropout_rng):
  """Masked-LM cross-entropy at the masked positions plus NSP/SOP cross-entropy."""
  out = model(batch["input_ids"], batch["input_mask"], batch["segment_ids"],
              batch.get("position_ids"), masked_positions=batch["masked_lm_positions"],
              packed_segment_ids=batch.get("packed_segment_ids"),
              cls_positions=batch.get("cls_positions"), dropout_rng=dropout_rng)
  mlm_sum, mlm_w, mlm_correct = mlm_terms(out.mlm_logits, batch)

  labels = batch["next_sentence_labels"]
  nsp_w = batch.get("next_sentence_weights", jnp.ones(labels.shape, jnp.float32))
  nsp_logp = jax.nn.log_softmax(out.nsp_logits, axis=-1)
  nsp_nll = -jnp.take_along_axis(nsp_logp, labels[..., None], axis=-1)[..., 0]
  nsp_sum, nsp_wsum = jnp.sum(nsp_nll * nsp_w), jnp.sum(nsp_w)
  nsp_correct = jnp.sum((jnp.argmax(out.nsp_logits, -1) == labels) * nsp_w)

  loss = mlm_sum / jnp.maximum(mlm_w, 1.0) + nsp_sum / jnp.maximum(nsp_wsum, 1.0)
  return loss, {
      "mlm_loss": (mlm_sum, mlm_w), "mlm_accuracy": (mlm_correct, mlm_w),
      "nsp_loss": (nsp_sum, nsp_wsum), "nsp_accuracy": (nsp_correct, nsp_wsum),
  }


def pretraining_eval_metrics(model: BertForPreTraining, batch: dict):
  """The loss's metrics without dropout, plus the histogram of the masked tokens' ids.

  The histogram (summed over the global batch, so over every process) gives the unigram
  baseline in `_summarize`.
  """
  from bert_jax import electra
  if isinstance(model, electra.ElectraForRTD):
    loss_fn = electra.rtd_loss
  elif isinstance(model, ModernBertForMaskedLM):
    loss_fn = mlm_only_loss
  else:
    loss_fn = pretraining_loss
  _, metrics = loss_fn(model, batch, None)
  ids_BxP = batch["masked_lm_ids"]
  masked_BxP = (batch["masked_lm_weights"] > 0).astype(jnp.float32)
  vocab_size = model.config.vocab_size
  hist_V = jnp.zeros((vocab_size,), jnp.float32).at[ids_BxP.reshape(-1)].add(
      masked_BxP.reshape(-1))
  metrics["masked_id_histogram"] = (hist_V, jnp.sum(masked_BxP))
  return metrics


def _summarize(means: dict, sums: dict) -> dict:
  """Adds the unigram baseline: accuracy of always predicting the most frequent masked token."""
  hist = sums.get("masked_id_histogram", (None,))[0]
  if hist is not None and np.sum(hist) > 0:
    means["unigram_baseline_mlm_accuracy"] = float(np.max(hist) / np.sum(hist))
    means["unigram_baseline_token_id"] = int(np.argmax(hist))
  if "replaced_fraction" in means:  # RTD: the always-"original" accuracy to beat.
    means["disc_original_baseline_accuracy"] = 1.0 - means["replaced_fraction"]
  return means


def _resolve_vocab(config) -> str:
  """The vocabulary to train with: the config's, else the one stored with the dataset."""
  if config.data.vocab:
    if not os.path.isfile(config.data.vocab):
      raise train.TrainingError(f"data.vocab={config.data.vocab!r} does not exist; pass the "
                                f"vocabulary file the dataset was prepared with.")
    return config.data.vocab
  stored = os.path.join(config.data.dir, "tokenizer")
  if os.path.isdir(stored):
    return stored
  raise train.TrainingError(
      f"The dataset {config.data.dir} does not carry its vocabulary (prepared by an older "
      f"version); set --config.data.vocab to the vocabulary it was prepared with.")


def _load_tokenizer(path: str):
  from bert_jax.tokenization import Tokenizer
  return Tokenizer.from_dir(path) if os.path.isdir(path) else Tokenizer.from_vocab(path)


def model_task(config, vocab_size: int) -> train.Task:
  """The pretraining Task without data: model, loss, tokens and FLOPs per example.

  `make_task` adds the dataset to it; `bert_jax.aot` compiles its train step for TPU topologies.
  """
  bert_config = family_lib.model_config_from(config.model, vocab_size)
  d = config.data
  if d.seq_len > bert_config.max_position_embeddings:
    raise train.TrainingError(
        f"data.seq_len={d.seq_len} exceeds model.max_position_embeddings="
        f"{bert_config.max_position_embeddings}; shorten the sequences or raise the limit.")

  def no_data():
    raise train.TrainingError("This pretraining task has no dataset; build it with "
                              "make_task(config) to train.")

  modern = family_lib.of_config(bert_config) == "modern"
  if objective_of(config) == "rtd":
    return _rtd_model_task(config, bert_config, modern, no_data)
  model_cls = ModernBertForMaskedLM if modern else BertForPreTraining
  return train.Task(
      name="pretraining",
      model_factory=lambda rngs: model_cls(bert_config, rngs=rngs),
      loss_fn=mlm_only_loss if modern else pretraining_loss,
      train_iter=no_data,
      identity={("modern_config" if modern else "bert_config"): bert_config.shape_identity()},
      tokens_per_example=d.seq_len,
      flops_per_example=flops_lib.train_flops_per_step(bert_config, 1, d.seq_len,
                                                       d.max_predictions),
  )


def objective_of(config) -> str:
  """model.objective: "mlm" (BERT's MLM + NSP/SOP, ModernBERT's MLM) or "rtd" (ELECTRA)."""
  from bert_jax import electra
  objective = config.model.get("objective", "mlm") or "mlm"
  if objective not in electra.OBJECTIVES:
    raise ConfigError(f"model.objective={objective!r}; use one of {', '.join(electra.OBJECTIVES)}.")
  return objective


def _rtd_model_task(config, bert_config, modern: bool, no_data) -> train.Task:
  """ELECTRA replaced-token detection (electra.py): generator + discriminator, one step."""
  import functools

  from bert_jax import electra
  if modern:
    raise ConfigError("model.objective=rtd trains a BERT discriminator; set model.family=bert "
                      "(ModernBERT is trained with objective=mlm).")
  m, d = config.model, config.data
  gen_config = electra.generator_config(bert_config, m.get("generator_fraction", 0.25),
                                        m.get("generator_layers", 0))
  seq_flops = (flops_lib.train_flops_per_step(bert_config, 1, d.seq_len, 0)
               + flops_lib.train_flops_per_step(gen_config, 1, d.seq_len, d.max_predictions))
  return train.Task(
      name="pretraining_rtd",
      model_factory=lambda rngs: electra.ElectraForRTD(bert_config, gen_config, rngs=rngs),
      loss_fn=functools.partial(electra.rtd_loss, rtd_weight=m.get("rtd_weight", 50.0)),
      train_iter=no_data,
      identity={"bert_config": bert_config.shape_identity(), "objective": "rtd",
                "generator_config": gen_config.shape_identity()},
      tokens_per_example=d.seq_len,
      flops_per_example=seq_flops,
  )


def make_task(config) -> train.Task:
  """The pretraining Task for `config` (reads the dataset's metadata, checks the vocabulary)."""
  from bert_jax import input_pipeline
  from bert_jax.data import mask_schedule
  from bert_jax.data import shards as data_shards

  data_dir = config.data.dir
  if not data_dir or not os.path.isdir(data_dir):
    raise train.TrainingError(
        f"config.data.dir={data_dir!r} is not a prepared dataset directory; create one with "
        f"`bert-jax-prepare --input=... --output_dir=DIR --vocab=VOCAB` and pass "
        f"--config.data.dir=DIR.")
  tokenizer = _load_tokenizer(_resolve_vocab(config))
  input_pipeline.check_vocab(data_dir, tokenizer)
  task = model_task(config, tokenizer.vocab_size)
  bert_config = family_lib.model_config_from(config.model, tokenizer.vocab_size)
  d = config.data
  shards = data_shards.local_shards(d.num_shards)
  num_shards = d.num_shards or jax.process_count()
  if config.train.batch_size % num_shards:
    raise train.TrainingError(
        f"train.batch_size={config.train.batch_size} is not a multiple of the {num_shards} data "
        f"shards; change the batch size or data.num_shards.")
  per_shard = config.train.batch_size // num_shards
  common = dict(seq_len=d.seq_len, max_predictions=d.max_predictions,
                masked_lm_prob=d.masked_lm_prob, short_seq_prob=d.short_seq_prob,
                whole_word_mask=d.whole_word_mask, nsp_mode=d.nsp_mode, pack=d.pack,
                tokenizer=tokenizer, process_count=num_shards)
  # The training rate: constant (masked_lm_prob) or a schedule ending at it; checked up front.
  schedule = mask_schedule.from_config(d, config.train.num_steps)
  mask_schedule.check_capacity(schedule, d.seq_len, d.max_predictions, d.nsp_mode)
  scheduled = None if schedule.kind == "constant" else schedule

  def train_iter():
    return data_shards.ShardedIterator({s: iter(input_pipeline.create_pretraining_dataset(
        data_dir, "train", batch_size=per_shard, seed=config.train.seed, process_index=s,
        masking_schedule=scheduled, **common)) for s in shards})

  # Held-out rows may be masked at another rate (modern variants: BERT's 15%, for comparison),
  # never on the training schedule: the same rows at every evaluation of every recipe.
  eval_prob = d.get("eval_masked_lm_prob", 0.0)
  if not 0.0 <= eval_prob < 1.0:  # Checked here: the held-out rows are first built at evaluation.
    raise ConfigError(f"data.eval_masked_lm_prob={eval_prob} must be in [0, 1) (0: evaluate at "
                      f"data.masked_lm_prob, e.g. 0.15 for BERT's rate).")
  eval_common = dict(common, masked_lm_prob=eval_prob or d.masked_lm_prob)
  # data.eval_nsp_mode=none evaluates a BERT trained on NSP pairs on the contiguous MLM-only rows
  # a ModernBERT run is evaluated on: the same held-out tokens masked the same way.
  if d.get("eval_nsp_mode", ""):
    eval_common["nsp_mode"] = d.eval_nsp_mode

  def eval_batches():
    its = data_shards.ShardedIterator({s: iter(input_pipeline.create_pretraining_dataset(
        data_dir, "validation", batch_size=per_shard, seed=config.train.seed + 1,
        num_epochs=None, shuffle=False, process_index=s, **eval_common)) for s in shards})
    # A fixed count on every process (repeating a small split) keeps multi-host evaluation in
    # lockstep; the batches are the same at every evaluation.
    for _ in range(d.eval_batches):
      yield next(its)

  def init_params():
    return load_init_params(config.init_from, bert_config)

  if config.init_from:  # Refuse another family before train.run writes anything.
    _check_init_family(config.init_from, bert_config)

  return dataclasses.replace(
      task,
      train_iter=train_iter,
      eval_batches=eval_batches,
      init_params=init_params if config.init_from else None,
      identity={**task.identity, "vocab_fingerprint": tokenizer.fingerprint},
      eval_metrics=pretraining_eval_metrics,
      summarize=_summarize,
  )


def load_init_params(path: str, bert_config) -> dict:
  """Parameters of a bert_jax model directory for `init_from`, checked against the model (its
  family first: a BERT checkpoint cannot start a ModernBERT, nor the reverse)."""
  from bert_jax import model_dir
  if not model_dir.is_model_dir(path):
    raise train.TrainingError(
        f"init_from={path!r} is not a bert_jax model directory (bert_config.json, params/); "
        f"convert a checkpoint with `bert-jax-convert` or point at a pretraining WORKDIR/model.")
  _check_init_family(path, bert_config)
  src_config, _, params = model_dir.read_model_dir(path)
  if src_config.shape_identity() != bert_config.shape_identity():
    raise train.TrainingError(
        f"init_from={path!r} has model shape {src_config.shape_identity()} but the config asks "
        f"for {bert_config.shape_identity()}; make the model section match the checkpoint.")
  return params


def _check_init_family(path: str, bert_config) -> None:
  """Refuses an init_from of the other model family (reads only its bert_config.json)."""
  from bert_jax import model_dir
  cfg_path = os.path.join(path, model_dir.CONFIG_FILE)
  if not os.path.isfile(cfg_path):
    return  # load_init_params names what is missing.
  with open(cfg_path, encoding="utf-8") as f:
    have = "modern" if json.load(f).get("model_type") == "modernbert" else "bert"
  want = family_lib.of_config(bert_config)
  if have != want:
    raise train.TrainingError(
        f"init_from={path!r} holds a {family_lib.DISPLAY[have]} checkpoint but the config trains "
        f"model.family={want}; set --config.model.family={have} or start from a "
        f"{family_lib.DISPLAY[want]} checkpoint.")


def train_and_evaluate(config, workdir: str) -> dict:
  """Pretrains per `config` in `workdir`; exports WORKDIR/model and returns the run summary."""
  task = make_task(config)
  summary = train.run(task, config, workdir)
  if summary["status"] != "preempted" and jax.process_index() == 0:
    export_model(summary, config, workdir)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump({k: summary[k] for k in ("status", "step", "num_steps", "train_examples",
                                         "train_seconds", "train", "eval")}, f, indent=2)
  return summary


def export_model(summary: dict, config, workdir: str) -> str:
  """Writes the trained parameters as a bert_jax model directory WORKDIR/model."""
  from bert_jax import model_dir
  params = jax.device_get(summary["state"].params)
  path = os.path.join(workdir, "model")
  tokenizer = _load_tokenizer(_resolve_vocab(config))
  if objective_of(config) == "rtd":  # The discriminator alone: an ElectraForPreTraining.
    model = nnx.merge(summary["graphdef"], params)
    flat = {k: v for k, v in model_dir.model_params(model).items()
            if not k.startswith("generator.")}
    model_dir.write_model_dir(path, model.config, {"architecture": "ElectraForPreTraining",
                                                   "objective": "rtd"}, flat, tokenizer,
                              overwrite=True)
    return path
  model = nnx.merge(summary["graphdef"], params)
  model_dir.save_model_dir(path, model, tokenizer, overwrite=True)
  return path
