"""Predict with a fine-tuned model: one JSON object per input row.

    bert-jax-predict --checkpoint=WORKDIR/best --input=FILE --output=FILE.jsonl

The checkpoint's model_info.json says which task it was trained for (what `bert-jax-finetune`
writes; a converted HF head works too). Inputs and outputs per task:
  classification: CSV / TSV / JSONL with the training columns (or --text_column ...) ->
                  {"text", "label", "probabilities"} (regression: {"text", "score"})
  ner:            CoNLL (tags ignored) or plain text, one sentence a line ->
                  {"tokens", "tags", "entities": [{"type", "start", "end", "text"}]}
  squad:          SQuAD JSON (nested or flat) -> {"id", "question", "answer", "score",
                  "null_score_diff", "n_best"}
`predict_file` is the library function behind the command (bert_jax/cli/predict.py).
"""
from __future__ import annotations

import json
import pathlib

from bert_jax import tasks
from bert_jax.errors import ModelFileError

SQUAD_DEFAULTS = dict(max_seq_length=384, doc_stride=128, max_query_length=64)


class PredictError(ModelFileError):
  """A checkpoint or input that cannot be predicted on, with what to do."""


def checkpoint_task(info: dict, path) -> tuple[str, dict]:
  """(task name, info with defaults) of a model directory's model_info; refuses head-less ones."""
  arch = info.get("architecture", "BertModel")
  task = info.get("task") or tasks.ARCHITECTURE_TASKS.get(arch)
  if task is None or tasks.ARCHITECTURE_TASKS.get(arch) != task:
    raise PredictError(f"{path} is a {arch} without a task head (classification, NER or QA); "
                       f"fine-tune it first with `bert-jax-finetune`.")
  info = dict(info)
  if task == "classification" and not info.get("label_names") and not info.get("regression"):
    n = int(info.get("num_labels") or 0)
    info["regression"] = n == 1
    info["label_names"] = [str(i) for i in range(n)] if n > 1 else []
  if task == "ner" and not info.get("label_names"):
    raise PredictError(f"{path} has no label_names in model_info.json; NER tags cannot be named.")
  if task == "squad":
    info = {**SQUAD_DEFAULTS, **info}
  return task, info


def predict_file(checkpoint, input_path, *, batch_size: int = 32, task: str = "",
                 overrides: dict | None = None, quantize: str = "none") -> list[dict]:
  """Prediction records for `input_path` with the fine-tuned model in `checkpoint`.

  quantize="int8" predicts with int8 weights, "int8_dynamic" with int8 activations too
  (bert_jax.quantization).
  """
  from bert_jax import loading, model_dir, quantization
  from bert_jax.tokenization import Tokenizer
  path = pathlib.Path(checkpoint)
  if not model_dir.is_model_dir(path):
    raise PredictError(f"--checkpoint={checkpoint} is not a bert_jax model directory; use a "
                       f"fine-tuning WORKDIR/best.")
  info = json.loads((path / model_dir.INFO_FILE).read_text(encoding="utf-8"))
  name, info = checkpoint_task(info, path)
  if task and task != name:
    raise PredictError(f"{path} holds a {name} model ({info['architecture']}), which does not "
                       f"fit task {task!r}; use a checkpoint fine-tuned for {task}.")
  if not pathlib.Path(input_path).is_file():
    raise PredictError(f"--input={input_path} does not exist.")
  model = quantization.quantize(loading.load_model(path), quantize)
  tokenizer = Tokenizer.from_dir(path)
  module = tasks.task_module(name)
  return module.predict(model, tokenizer, info, input_path, batch_size, overrides or {})
