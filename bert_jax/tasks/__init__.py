"""Fine-tuning tasks: classification / regression (incl. GLUE), NER, SQuAD, retrieval
(sentence embeddings), distillation and seq2seq (text generation with a BERT2BERT
encoder-decoder).

`TASKS` is the one registry of them: `bert_jax.finetune` builds a task from it, `bert_jax.predict`
finds a checkpoint's task by its head architecture, and configs/finetune.py takes its task names
from it. A GLUE name is the classification task with that GLUE layout (`data.glue_task`).
"""
from __future__ import annotations

import dataclasses
import importlib

from bert_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  module: str  # defines the task class and `predict(model, tokenizer, info, path, ...)`
  class_name: str  # built as cls(config, tokenizer)
  architecture: str  # the head class of its fine-tuned models (model_info.json)
  metrics: tuple[str, ...]  # what train.metric may name (GLUE's prefixes and f1_TYPE aside)
  # A function of `module`, builder(config, workdir) -> (train.Task, config, data), for a task
  # that is not a fine-tune of init_from (distill); its checkpoints are of the task that owns
  # `architecture`, so it is not that head's task in ARCHITECTURE_TASKS.
  builder: str = ""


TASKS = {
    "classification": TaskSpec("bert_jax.tasks.classification", "ClassificationTask",
                               "BertForSequenceClassification",
                               ("accuracy", "f1", "matthews", "pearson", "spearman", "mse")),
    "ner": TaskSpec("bert_jax.tasks.ner", "NerTask", "BertForTokenClassification",
                    ("f1", "precision", "recall")),
    "squad": TaskSpec("bert_jax.tasks.squad", "SquadTask", "BertForQuestionAnswering",
                      ("exact_match", "f1", "HasAns_exact", "HasAns_f1")),
    "retrieval": TaskSpec("bert_jax.tasks.retrieval", "RetrievalTask", "SentenceEncoder",
                          ("ndcg@10", "recall@1", "recall@10", "mrr@10")),
    # A smaller classifier learns a fine-tuned one's outputs (init_from is the teacher); it
    # saves a classification checkpoint.
    "distill": TaskSpec("bert_jax.tasks.distill", "DistillData", "BertForSequenceClassification",
                        ("accuracy", "f1", "matthews"), builder="make_task"),
    "seq2seq": TaskSpec("bert_jax.tasks.seq2seq", "Seq2SeqTask", "BertEncoderDecoder",
                        ("bleu", "chrf", "rouge1", "rouge2", "rougeL")),
}
GLUE_TASKS = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli")
# Head class -> task, for both families (ModernBertForSequenceClassification, ... as well).
ARCHITECTURE_TASKS = {arch: name for name, spec in TASKS.items() if not spec.builder
                      for arch in (spec.architecture, "Modern" + spec.architecture)}


def task_module(name: str):
  """The module of task `name` (classification, ner, squad, retrieval or seq2seq)."""
  if name not in TASKS:
    raise ConfigError(f"config.task={name!r} is not one of {sorted(TASKS)}.")
  return importlib.import_module(TASKS[name].module)


def task_class(name: str):
  """The class that reads, encodes and scores task `name`'s data."""
  return getattr(task_module(name), TASKS[name].class_name)


def task_builder(name: str):
  """builder(config, workdir) of a task that builds its own train.Task (TaskSpec.builder)."""
  return getattr(task_module(name), TASKS[name].builder)
