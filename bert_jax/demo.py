"""`make demo`: pretrain a small encoder on the embedded World English Bible on this machine.

Prepares the corpus (bert-base-uncased WordPiece vocabulary, 32-verse documents, held-out
documents for evaluation), pretrains bert_jax/configs/pretrain.py:budget (ModernBERT family, MLM
only; `--config=...:demo_bert` for the BERT-compatible MLM + NSP demo) for
`--config.train.max_train_seconds` (10 minutes; the budget recipe fits its schedule to it),
evaluates MLM (and NSP) accuracy on the held-out documents, masked at 15%, beside the unigram
baseline (always predicting the most frequent masked token), writes WORKDIR/eval_results.json,
WORKDIR/curves.png, TensorBoard logs and WORKDIR/run/model, and shows fill-mask top-3 for a few
sentences (`fill_mask_examples`).

  python -m bert_jax.cli.demo --workdir=demo_workdir [--config.train.max_train_seconds=60]

`run_demo` is the library function behind it (bert_jax/cli/demo.py) and the notebooks.
"""
from __future__ import annotations

import json
import os

import numpy as np

RESOURCES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "resources")
VOCAB = os.path.join(RESOURCES, "bert-base-uncased-vocab.txt")


def prepare_corpus(workdir: str, doc_lines: int = 32) -> str:
  """The embedded Bible as a prepared dataset under WORKDIR/data (reused when present)."""
  from bert_jax.data import default_corpus_path, prepare
  data_dir = os.path.join(workdir, "data")
  if os.path.isfile(os.path.join(data_dir, "metadata.json")):
    return data_dir
  prepare(default_corpus_path(), data_dir, VOCAB, layout="lines", doc_lines=doc_lines,
          validation_fraction=0.05, num_workers=min(2, os.cpu_count() or 1))
  return data_dir


def plot_curves(workdir: str) -> str | None:
  """WORKDIR/curves.png: train loss and MLM/NSP accuracy against steps."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8")]
  train = [r for r in rows if "train/loss" in r]
  if not train:
    return None
  steps = [r["step"] for r in train]
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
  # Whichever heads the run has: MLM-only runs (modern_demo) no NSP; RTD (objective=rtd) a
  # generator MLM and a discriminator.
  for key, label in (("mlm", "MLM"), ("nsp", "NSP"), ("gen_mlm", "generator MLM"),
                     ("disc", "discriminator")):
    if f"train/{key}_loss" in train[0]:
      ax1.plot(steps, [r[f"train/{key}_loss"] for r in train], label=f"{label} loss")
      ax2.plot(steps, [r[f"train/{key}_accuracy"] for r in train],
               label=f"{label} accuracy (train)")
  ax1.set_xlabel("step")
  ax1.legend()
  evals = [r for r in rows if "eval/mlm_accuracy" in r]
  if evals:
    ax2.scatter([r["step"] for r in evals], [r["eval/mlm_accuracy"] for r in evals],
                color="k", label="MLM accuracy (held out)", zorder=3)
    base = evals[-1].get("eval/unigram_baseline_mlm_accuracy")
    if base is not None:
      ax2.axhline(base, ls="--", color="gray", label="unigram baseline")
  ax2.set_xlabel("step")
  ax2.legend()
  fig.tight_layout()
  path = os.path.join(workdir, "curves.png")
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


# Genesis 1:1 (a training verse everyone knows), then sentences of held-out documents.
FAMOUS = "In the beginning God created the [MASK] and the earth."


def held_out_sentences(data_dir: str, n: int = 3) -> list[tuple[str, str]]:
  """(text with one word masked, the word) for n sentences of the held-out documents: the
  first 8-30-token sentence of evenly spaced validation documents, its middle whole word of
  4+ letters replaced by [MASK]."""
  import tensorflow_datasets as tfds

  from bert_jax.tokenization import Tokenizer
  tok = Tokenizer.from_vocab(VOCAB)
  docs = tfds.builder_from_directory(data_dir).as_data_source("validation")
  out = []
  for d in range(0, len(docs), max(len(docs) // n, 1)):
    ex = docs[d]
    bounds = np.cumsum([0, *ex["sentence_lengths"]])
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
      pieces = tok.convert_ids_to_tokens(ex["ids"][a:b])
      if not 8 <= len(pieces) <= 30:
        continue
      words = [i for i, p in enumerate(pieces) if p.isalpha() and len(p) >= 4 and
               (i + 1 == len(pieces) or not pieces[i + 1].startswith("##"))]
      if words:
        i = words[len(words) // 2]
        masked = [*ex["ids"][a:i + a], tok.mask_id, *ex["ids"][a + i + 1:b]]
        out.append((tok.decode(masked, skip_special_tokens=False), pieces[i]))
        break
    if len(out) == n:
      break
  return out


def fill_mask_examples(model_dir: str, data_dir: str) -> list[dict]:
  """Top-3 of bert_jax.fill_mask for FAMOUS and a few held-out sentences, as a user runs it."""
  import bert_jax
  model, tokenizer = bert_jax.from_pretrained(model_dir)  # the saved architecture, either family
  examples = [(FAMOUS, "heavens"), *held_out_sentences(data_dir)]
  top = bert_jax.fill_mask(model, tokenizer, [t for t, _ in examples], top_k=3)
  return [{"text": t, "answer": a, "top3": [(c["token_str"], round(c["score"], 4)) for c in cands]}
          for (t, a), cands in zip(examples, top, strict=True)]


def run_demo(config, workdir: str, doc_lines: int = 32) -> dict:
  from bert_jax import allocator, device_dtype, pretraining
  os.makedirs(workdir, exist_ok=True)
  print(device_dtype.describe(), allocator.describe(), flush=True)
  data_dir = prepare_corpus(workdir, doc_lines)
  with config.unlocked():
    config.data.dir = data_dir
    config.data.vocab = config.data.vocab or VOCAB
  summary = pretraining.train_and_evaluate(config, os.path.join(workdir, "run"))
  ev = summary["eval"]
  results = {
      "variant": config.get("variant", ""),
      "family": config.model.family,
      "compute_dtype": device_dtype.resolve(config.model.dtype),
      "mlm_accuracy": ev.get("mlm_accuracy"),
      "nsp_accuracy": ev.get("nsp_accuracy"),
      "unigram_baseline_mlm_accuracy": ev.get("unigram_baseline_mlm_accuracy"),
      "mlm_loss": ev.get("mlm_loss"),
      "nsp_loss": ev.get("nsp_loss"),
      "train_steps": summary["step"],
      "schedule_steps": summary.get("num_steps"),
      "train_tokens": summary.get("train_examples", 0) * config.data.seq_len,
      "train_seconds": round(summary["train_seconds"], 1),
      "train_tokens_per_sec": summary["train"].get("tokens_per_sec"),
      "eval_masked_lm_prob": config.data.get("eval_masked_lm_prob") or config.data.masked_lm_prob,
      "status": summary["status"],
  }
  # An RTD run exports the discriminator, which has no masked-LM head to fill masks with.
  if summary["status"] != "preempted" and pretraining.objective_of(config) == "mlm":
    results["fill_mask"] = fill_mask_examples(os.path.join(workdir, "run", "model"), data_dir)
  with open(os.path.join(workdir, "eval_results.json"), "w") as f:
    json.dump(results, f, indent=2)
  results["curves"] = plot_curves(os.path.join(workdir, "run"))
  return results


if __name__ == "__main__":  # python -m bert_jax.demo [--lang=zh]: the CLI (bert_jax/cli/demo.py)
  from bert_jax.cli import demo as _cli
  _cli.run()
